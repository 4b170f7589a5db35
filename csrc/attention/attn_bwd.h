// Fused attention backward: the torch-free interface seen by the binding.
//
// With s, p, out and lse as in attn_fwd.h and dout = dL/dout:
//   delta[i] = sum_d dout[i, d] out[i, d]                        (preprocess kernel)
//   dp[i, j] = dout[i, :] . v[j, :],  ds[i, j] = p[i, j] (dp[i, j] - delta[i])
//   dv[j] = sum_{i, heads of the group} p[i, j] dout[i],  dk[j] = scale sum ds[i, j] q[i]   (dK/dV kernel)
//   dq[i] = scale sum_j ds[i, j] k[j]                                                      (dQ kernel)
//   dbias[i, j] = ds[i, j] (written to an fp32 (B, Hq, Sq, Sk) buffer when asked; the caller sums broadcast dims)
// Dropout (dropout.enabled): with z[i, j] = keep / (1 - p_drop) regenerated from the forward's stream
// (common/dropout.h), dv uses p z, and dp[i, j] is dout . v times z; ds = p (dp z - delta) as above.
// p is recomputed from lse (0 where lse = -inf: rows that saw no key). Deterministic: every output element is
// summed by one thread in a fixed order, no atomics.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/dropout.h"
#include "common/dtype.h"

namespace fastattn {

struct AttnBwdParams {
  const void* q;              // (B, Hq, Sq, D)  operand requirements as AttnFwdParams
  const void* k;              // (B, Hkv, Sk, D)
  const void* v;              // (B, Hkv, Sk, D)
  const void* out;            // (B, Hq, Sq, D) the forward's output
  const void* dout;           // (B, Hq, Sq, D) same dtype as q
  const float* lse;           // (B, Hq, Sq) fp32, natural-log units
  const void* bias;           // nullptr or (B, Hq, Sq, Sk) through bias_stride
  int bias_dtype;
  const uint8_t* key_padding; // nullptr or (B, Sk)
  float* delta;               // (B, Hq, Sq) fp32 workspace, contiguous
  void* dq;                   // (B, Hq, Sq, D) contiguous, q's dtype
  void* dk;                   // (B, Hkv, Sk, D) contiguous
  void* dv;                   // (B, Hkv, Sk, D) contiguous
  float* dbias;               // nullptr or (B, Hq, Sq, Sk) fp32 contiguous
  int64_t batch, heads_q, heads_kv, seqlen_q, seqlen_k;
  int64_t q_stride[4], k_stride[4], v_stride[4], out_stride[4], dout_stride[4], bias_stride[4];
  int64_t kpm_stride_b;
  int64_t lse_stride[3];
  float scale;                // softmax scale
  float scale_log2;           // scale * log2(e)
  bool causal;
  AttnDropout dropout;        // the forward's attention dropout (enabled = false: none)
};

// Head dims with a compiled backward.
bool attn_bwd_supported_head_dim(int head_dim);

// Three launches on `stream` (delta, dK/dV, dQ); returns the first failing launch's status.
cudaError_t attn_bwd(const AttnBwdParams& params, DType dtype, int head_dim, cudaStream_t stream);

}  // namespace fastattn
