// Softmax forward dispatcher: DType -> the explicit instantiation compiled in instantiations/softmax_fwd_<dtype>.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "softmax/softmax_fwd.h"
#include "softmax/softmax_fwd_launch.h"
#include "softmax/softmax_split.h"

namespace fastattn {

int64_t softmax_fwd_workspace_floats(int64_t rows, int64_t n, DType dtype) {
  (void)dtype;
  return 2 * softmax_split::plan(rows, n).splits * rows;  // (max, sum) per (row, piece)
}

cudaError_t softmax_fwd(const SoftmaxFwdParams& params, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return softmax_fwd_launch<float>(params, stream);
    case DType::kFloat16:
      return softmax_fwd_launch<__half>(params, stream);
    case DType::kBFloat16:
      return softmax_fwd_launch<__nv_bfloat16>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastattn
