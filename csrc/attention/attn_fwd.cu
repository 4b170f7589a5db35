// Attention forward dispatcher: (DType, head dim) -> the explicit instantiation compiled in
// instantiations/attn_fwd_hdim<D>_<dtype>.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention/attn_fwd.h"
#include "attention/attn_fwd_launch.h"
#include "attention/attn_fwd_sm90.h"

namespace fastattn {

bool attn_fwd_supported_head_dim(int head_dim) {
  switch (head_dim) {
    case 32:
    case 64:
    case 96:
    case 128:
    case 256:
      return true;
    default:
      return false;
  }
}

template <typename T>
static cudaError_t attn_fwd_dim(const AttnFwdParams& params, int head_dim, cudaStream_t stream) {
  switch (head_dim) {
    case 32:
      return attn_fwd_launch<T, 32>(params, stream);
    case 64:
      return attn_fwd_launch<T, 64>(params, stream);
    case 96:
      return attn_fwd_launch<T, 96>(params, stream);
    case 128:
      return attn_fwd_launch<T, 128>(params, stream);
    case 256:
      return attn_fwd_launch<T, 256>(params, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t attn_fwd(const AttnFwdParams& params, DType dtype, int head_dim, cudaStream_t stream) {
  // Hopper path (wgmma), behind FASTATTN_CUDA_HOPPER=1 (attn_fwd_sm90.h); the mma.sync kernel otherwise.
  if (attn_fwd_sm90_enabled(params, dtype, head_dim)) return attn_fwd_sm90(params, dtype, head_dim, stream);
  switch (dtype) {
    case DType::kFloat16:
      return attn_fwd_dim<__half>(params, head_dim, stream);
    case DType::kBFloat16:
      return attn_fwd_dim<__nv_bfloat16>(params, head_dim, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace fastattn
