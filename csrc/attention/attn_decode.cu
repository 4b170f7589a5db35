// Decode attention dispatcher: (DType, head dim) -> the explicit instantiation compiled in
// instantiations/attn_decode_hdim<D>_<dtype>.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention/attn_decode.h"
#include "attention/attn_decode_launch.h"

namespace fastattn {

int attn_decode_key_block(int head_dim) { return attn_decode_block_n(head_dim); }

template <typename T>
static cudaError_t attn_decode_dim(const AttnDecodeParams& params, int head_dim, cudaStream_t stream) {
  switch (head_dim) {
    case 32:
      return attn_decode_launch<T, 32>(params, stream);
    case 64:
      return attn_decode_launch<T, 64>(params, stream);
    case 96:
      return attn_decode_launch<T, 96>(params, stream);
    case 128:
      return attn_decode_launch<T, 128>(params, stream);
    case 256:
      return attn_decode_launch<T, 256>(params, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t attn_decode(const AttnDecodeParams& params, DType dtype, int head_dim, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16:
      return attn_decode_dim<__half>(params, head_dim, stream);
    case DType::kBFloat16:
      return attn_decode_dim<__nv_bfloat16>(params, head_dim, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace fastattn
