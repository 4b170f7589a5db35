// Attention backward dispatcher: (DType, head dim) -> the explicit instantiation compiled in
// instantiations/attn_bwd_hdim<D>_<dtype>.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention/attn_bwd.h"
#include "attention/attn_bwd_launch.h"

namespace fastattn {

bool attn_bwd_supported_head_dim(int head_dim) {
  switch (head_dim) {
    case 32:
    case 64:
    case 96:
    case 128:
      return true;
    default:  // 256: the dK/dV accumulators (2 x 16 x 256 fp32 per warp) do not fit this kernel's registers
      return false;
  }
}

template <typename T>
static cudaError_t attn_bwd_dim(const AttnBwdParams& params, int head_dim, cudaStream_t stream) {
  switch (head_dim) {
    case 32:
      return attn_bwd_launch<T, 32>(params, stream);
    case 64:
      return attn_bwd_launch<T, 64>(params, stream);
    case 96:
      return attn_bwd_launch<T, 96>(params, stream);
    case 128:
      return attn_bwd_launch<T, 128>(params, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t attn_bwd(const AttnBwdParams& params, DType dtype, int head_dim, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16:
      return attn_bwd_dim<__half>(params, head_dim, stream);
    case DType::kBFloat16:
      return attn_bwd_dim<__nv_bfloat16>(params, head_dim, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace fastattn
