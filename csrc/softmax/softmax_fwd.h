// Softmax forward with temperature: the torch-free interface seen by the binding.
//
//   y[r, :] = softmax(x[r, :] * inv_t[r])      inv_t[r] = inv_temperature ? inv_temperature[r] : inv_temp
//
// computed in fp32, stored in x's dtype. A row of all -inf gives zeros; a NaN in a row makes the whole row NaN.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/dtype.h"

namespace fastattn {

struct SoftmaxFwdParams {
  const void* x;                 // (rows, n), element stride 1 along n
  void* y;                       // (rows, n), same dtype as x, element stride 1 along n
  const float* inv_temperature;  // (rows,) fp32, 1 / T per row; nullptr -> use inv_temp
  float inv_temp;                // scalar 1 / T used when inv_temperature == nullptr
  float* workspace;              // softmax_fwd_workspace_floats(rows, n, dtype) floats; nullptr when that is 0
  int64_t rows;
  int64_t n;
  int64_t x_row_stride;  // elements between consecutive rows of x
  int64_t y_row_stride;  // elements between consecutive rows of y
};

// Floats of scratch a launch needs: the row-split plan for few wide rows (softmax_split.h); 0 otherwise.
int64_t softmax_fwd_workspace_floats(int64_t rows, int64_t n, DType dtype);

// Launches on `stream`; returns the launch status (cudaSuccess when rows == 0 or n == 0: nothing launched).
cudaError_t softmax_fwd(const SoftmaxFwdParams& params, DType dtype, cudaStream_t stream);

}  // namespace fastattn
