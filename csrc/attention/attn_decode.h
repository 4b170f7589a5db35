// Decode attention (one new query token per sequence against a KV cache): the torch-free interface.
//
//   out[b, h, :] = softmax_j(scale q[b, h] . k[b, h / G, j]) v[b, h / G, j],   j < len_b = clamp(seqlens[b], 0, Smax)
// Positions j >= len_b are never read. len_b == 0 gives zeros. Split over the keys (flash-decoding): split s
// takes keys [s * split_len, (s + 1) * split_len); with more than one split, each writes a normalised fp32
// partial and its log2-sum-exp, and a combine kernel merges them.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/dtype.h"

namespace fastattn {

struct AttnDecodeParams {
  const void* q;              // (B, Hq, D), unit stride along D, strides multiples of 8 elements
  const void* k;              // (B, Hkv, Smax, D)
  const void* v;              // (B, Hkv, Smax, D)
  const int32_t* seqlens;     // (B,) contiguous
  void* out;                  // (B, Hq, D) contiguous, q's dtype
  float* o_part;              // (B, Hq, splits, D) fp32 contiguous (splits > 1)
  float* lse_part;            // (B, Hq, splits) fp32 contiguous, log2 units (splits > 1)
  int64_t batch, heads_q, heads_kv, max_seqlen;
  int64_t q_stride[3], k_stride[4], v_stride[4];
  int64_t split_len;          // keys per split, a multiple of the kernel's key block
  int num_splits;
  float scale_log2;
};

// Keys per block of the decode kernel: split_len must be a multiple of it.
int attn_decode_key_block(int head_dim);

// One or two launches (split kernel, then combine when num_splits > 1) on `stream`.
cudaError_t attn_decode(const AttnDecodeParams& params, DType dtype, int head_dim, cudaStream_t stream);

}  // namespace fastattn
