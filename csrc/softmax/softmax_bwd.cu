// Softmax backward dispatcher: DType -> the explicit instantiation in instantiations/softmax_bwd_<dtype>.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "softmax/softmax_bwd.h"
#include "softmax/softmax_bwd_launch.h"
#include "softmax/softmax_split.h"

namespace fastattn {

int64_t softmax_bwd_workspace_floats(int64_t rows, int64_t n, DType dtype) {
  (void)dtype;
  return softmax_split::plan(rows, n).splits * rows;  // one partial dot product per (row, split)
}

cudaError_t softmax_bwd(const SoftmaxBwdParams& params, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return softmax_bwd_launch<float>(params, stream);
    case DType::kFloat16:
      return softmax_bwd_launch<__half>(params, stream);
    case DType::kBFloat16:
      return softmax_bwd_launch<__nv_bfloat16>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastattn
