// Softmax backward with temperature: the torch-free interface seen by the binding.
//
//   dx[r, :] = y[r, :] * (dy[r, :] - sum_j dy[r, j] * y[r, j]) * inv_t[r]
//   inv_t[r] = inv_temperature ? inv_temperature[r] : inv_temp
//
// fp32 math, stored in y's dtype (dy has y's dtype). NaN in dy or y gives a NaN row (through the dot product).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/dtype.h"

namespace fastattn {

struct SoftmaxBwdParams {
  const void* dy;                // (rows, n), element stride 1 along n
  const void* y;                 // (rows, n), element stride 1 along n
  void* dx;                      // (rows, n), element stride 1 along n
  const float* inv_temperature;  // (rows,) fp32 1 / T per row; nullptr -> inv_temp
  float inv_temp;
  float* workspace;  // softmax_bwd_workspace_floats(rows, n, dtype) floats (nullptr when that is 0)
  int64_t rows;
  int64_t n;
  int64_t dy_row_stride;
  int64_t y_row_stride;
  int64_t dx_row_stride;
};

// Floats of scratch the launch needs (the row-split plan for few wide rows; 0 otherwise).
int64_t softmax_bwd_workspace_floats(int64_t rows, int64_t n, DType dtype);

// Launches on `stream`; cudaSuccess without a launch when rows == 0 or n == 0.
cudaError_t softmax_bwd(const SoftmaxBwdParams& params, DType dtype, cudaStream_t stream);

}  // namespace fastattn
