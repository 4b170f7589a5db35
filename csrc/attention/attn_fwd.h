// Fused attention forward: the torch-free interface seen by the binding.
//
//   out[b, h, i, :] = sum_j p[i, j] v[b, h / G, j, :],   p = softmax_j(s),   lse[b, h, i] = log sum_j exp(s[i, j])
//   s[i, j] = scale * q[b, h, i, :] . k[b, h / G, j, :] + bias[b, h, i, j]     (G = Hq / Hkv: GQA / MQA)
// with key j hidden from query i (s = -inf) when key_padding_mask[b, j] is false, or, causal, when
// j > i + Sk - Sq (aligned bottom-right). A row with no visible key gives out = 0 and lse = -inf.
// fp16 / bf16 inputs, fp32 accumulation and softmax, out rounded to the input dtype, lse in fp32.
// Dropout (dropout.enabled): p[i, j] is replaced by p[i, j] z[i, j] in the sum for out, z = keep / (1 - p_drop)
// from the stream of common/dropout.h; lse stays that of the undropped softmax.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/dropout.h"
#include "common/dtype.h"

namespace fastattn {

struct AttnFwdParams {
  const void* q;                  // (B, Hq, Sq, D), unit stride along D, other strides multiples of 8 elements
  const void* k;                  // (B, Hkv, Sk, D), same requirements; 16-byte aligned bases
  const void* v;                  // (B, Hkv, Sk, D)
  const void* bias;               // nullptr, or (B, Hq, Sq, Sk) through bias_stride (0 where broadcast)
  int bias_dtype;                 // DType of bias (fp32, fp16 or bf16)
  const uint8_t* key_padding;     // nullptr, or (B, Sk) 1 = real key, 0 = padding; unit stride along Sk
  void* out;                      // (B, Hq, Sq, D), q's dtype, unit stride along D
  float* lse;                     // (B, Hq, Sq) fp32, natural-log units
  int64_t batch, heads_q, heads_kv, seqlen_q, seqlen_k;
  int64_t q_stride[4], k_stride[4], v_stride[4], bias_stride[4], out_stride[4];  // (b, h, s, d) in elements
  int64_t kpm_stride_b;
  int64_t lse_stride[3];          // (b, h, s)
  float scale_log2;               // scale * log2(e): scores are kept in log2 units
  bool causal;
  AttnDropout dropout;            // attention dropout (enabled = false: none)
};

// Head dims with a compiled kernel.
bool attn_fwd_supported_head_dim(int head_dim);

// Launches on `stream`; returns the launch status. dtype: fp16 or bf16 (others: cudaErrorInvalidValue), like
// an unsupported head dim. Requires seqlen_q, seqlen_k, batch, heads > 0 (the binding returns earlier otherwise).
cudaError_t attn_fwd(const AttnFwdParams& params, DType dtype, int head_dim, cudaStream_t stream);

}  // namespace fastattn
