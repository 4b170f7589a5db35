// Fused attention backward kernels (FlashAttention-2 recomputation) and the definition of attn_bwd_launch<T, D>.
//
// attn_bwd_delta_kernel<T>
//   Grid (ceil(Sq / 4), Hq, B), 128 threads: one warp per query row, delta = sum_d out * dout in fp32.
//
// attn_bwd_dkdv_kernel<T, D>
//   Grid (ceil(Sk / 64), Hkv, B), 4 warps; warp w owns keys n0 + 16 w .. + 16 and accumulates their dK and dV
//   (16 x D fp32 C fragments each) over every query block of every query head of the GQA group, in a fixed
//   order: deterministic, no atomics. K and V (64 x D) are loaded once; per query block (BM rows) Q and dO
//   come by cp.async into swizzled tiles (one stage: wait, barrier, compute, barrier). Per block and warp, on
//   mma.m16n8k16 with keys as the M rows:  S^T = K Q^T,  P^T = exp2(S^T scale log2 e + bias log2 e - lse log2 e)
//   (0 where masked or lse = -inf),  dV += P^T dO,  dP^T = V dO^T,  dS^T = P^T (dP^T - delta),  dK += dS^T Q.
//   dS is also written to the fp32 dbias buffer when asked (one writer per element). Causal: query blocks
//   before the first query that sees key n0 are skipped (their dbias entries are written as 0); every block
//   applies the full mask (v1).
//
//   Dropout (p.dropout.enabled, a uniform runtime branch): z = keep / (1 - p) regenerated per score from the
//   forward's stream (common/philox.cuh), never stored: P^T z goes into dV, dP^T z into dS^T = P^T (dP^T z - delta).
//
// attn_bwd_dq_kernel<T, D>
//   Grid (ceil(Sq / 64), Hq, B), 4 warps of 16 query rows; Q and dO loaded once, K and V per key block (one
//   stage). S = Q K^T, P from lse, dP = dO V^T, dS = P (dP - delta), dQ += dS K; causal key range as the
//   forward's. Dropout as in dK/dV: dS = P (dP z - delta). Writes dq once.
//
// Reads: the dK/dV pass reads q, dout, lse, delta once per (key block, head); the dQ pass k, v once per query
// block. Rows past Sq / keys past Sk are zero-filled in shared memory and have p = 0; they are never written.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention/attn_bwd.h"
#include "attention/attn_bwd_launch.h"
#include "attention/attn_dropout.cuh"
#include "attention/attn_tile.cuh"
#include "common/cp_async.cuh"
#include "common/device_utils.cuh"
#include "common/launch.cuh"
#include "common/ldmatrix.cuh"
#include "common/mma.cuh"

namespace fastattn {

namespace attn {

// p[i, j] recomputed from the raw product acc = q_i . k_j; 0 where key j is hidden from query i (bounds, key
// padding, causal) or where the row saw no key in the forward (lse = -inf). NaN inputs stay NaN.
__device__ __forceinline__ float bwd_prob(const AttnBwdParams& p, float acc, int64_t i, int64_t j, int64_t bias_bh,
                                          const uint8_t* kpm, float lse2, int64_t diag) {
  const bool visible = i < p.seqlen_q && j < p.seqlen_k && (kpm == nullptr || kpm[j] != 0) &&
                       !(p.causal && j > i + diag);
  if (!visible || lse2 == -__builtin_huge_valf()) return 0.0f;
  float s2 = acc * p.scale_log2;
  if (p.bias != nullptr)
    s2 += load_bias(p.bias, p.bias_dtype, bias_bh + i * p.bias_stride[2] + j * p.bias_stride[3]) * kLog2e;
  return exp2f(s2 - lse2);
}

template <typename T, int OT>
__device__ __forceinline__ void store_rows(T* base, int64_t row_stride, int64_t r_lo, int64_t rows_valid,
                                           const float (&acc)[OT][4], float mul, int t) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = r_lo + 8 * r;
    if (row >= rows_valid) continue;
#pragma unroll
    for (int ot = 0; ot < OT; ++ot)
      *reinterpret_cast<uint32_t*>(base + row * row_stride + ot * 8 + 2 * t) =
          pack2<T>(acc[ot][2 * r] * mul, acc[ot][2 * r + 1] * mul);
  }
}

}  // namespace attn

template <int D>
struct AttnBwdConfig {
  static constexpr int kThreads = 128;
  static constexpr int kKeysPerCta = 64;             // dK/dV: 16 keys per warp
  static constexpr int kQBlock = D <= 64 ? 64 : D <= 96 ? 32 : 16;  // dK/dV: query rows per step (D = 128:
                                                                    // 16, or the dK + dV accumulators spill)
  static constexpr int kQRowsPerCta = 64;            // dQ: 16 rows per warp
  static constexpr int kKBlock = D <= 64 ? 64 : 32;   // dQ: keys per step
  static constexpr size_t kDkdvSmem = static_cast<size_t>(2 * kKeysPerCta + 2 * kQBlock) * D * 2;
  static constexpr size_t kDqSmem = static_cast<size_t>(2 * kQRowsPerCta + 2 * kKBlock) * D * 2;
};

template <typename T>
__global__ void __launch_bounds__(128) attn_bwd_delta_kernel(const AttnBwdParams p, int head_dim) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 4 + (threadIdx.x >> 5);
  const int64_t h = blockIdx.y, b = blockIdx.z;
  if (i >= p.seqlen_q) return;  // whole warps: no collective below is split
  const T* o = static_cast<const T*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
  const T* d = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1] + i * p.dout_stride[2];
  float acc = 0.0f;
  for (int c = lane; c < head_dim; c += 32) acc += to_float(o[c]) * to_float(d[c]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) p.delta[(b * p.heads_q + h) * p.seqlen_q + i] = acc;
}

template <typename T, int D>
__global__ void __launch_bounds__(128) attn_bwd_dkdv_kernel(const AttnBwdParams p) {
  using Cfg = AttnBwdConfig<D>;
  constexpr int BN = Cfg::kKeysPerCta, BM = Cfg::kQBlock, kThreads = Cfg::kThreads;
  constexpr int KD = D / 16;   // k steps over D
  constexpr int NQ = BM / 8;   // n tiles over the queries of a block
  constexpr int KQ = BM / 16;  // k steps over the queries
  constexpr int OT = D / 8;    // n tiles over D
  static_assert(NQ % 2 == 0 && OT % 2 == 0, "tile shapes");

  FASTATTN_DYNAMIC_SHARED(uint16_t, smem_raw);
  T* const sK = reinterpret_cast<T*>(smem_raw);
  T* const sV = sK + BN * D;
  T* const sQ = sV + BN * D;
  T* const sO = sQ + BM * D;  // dO

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t hk = blockIdx.y, b = blockIdx.z;
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t sq = p.seqlen_q, sk = p.seqlen_k, diag = sk - sq;
  const int rows_k = static_cast<int>(sk - n0 < BN ? sk - n0 : BN);
  const uint8_t* kpm = p.key_padding != nullptr ? p.key_padding + b * p.kpm_stride_b : nullptr;

  const T* kb = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1] + n0 * p.k_stride[2];
  const T* vb = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1] + n0 * p.v_stride[2];
  attn::load_tile_async<T, BN, D, kThreads>(sK, kb, p.k_stride[2], rows_k, tid);
  attn::load_tile_async<T, BN, D, kThreads>(sV, vb, p.v_stride[2], rows_k, tid);
  cp_async_commit_group();

  // Causal: query i sees key j iff i >= j - diag; the first query that sees key n0.
  int64_t m_first = 0;
  if (p.causal && n0 - diag > 0) m_first = n0 - diag;
  m_first = (m_first / BM) * BM;
  if (p.dbias != nullptr && m_first > 0) {  // the skipped query blocks see none of these keys: their dS is 0
    for (int64_t hh = 0; hh < group; ++hh) {
      float* db = p.dbias + (b * p.heads_q + hk * group + hh) * sq * sk + n0;
      for (int64_t e = tid; e < m_first * rows_k; e += kThreads) db[(e / rows_k) * sk + e % rows_k] = 0.0f;
    }
  }

  float dk[OT][4], dv[OT][4];
#pragma unroll
  for (int i = 0; i < OT; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) dk[i][r] = dv[i][r] = 0.0f;

  const int64_t keys[2] = {n0 + warp * 16 + g, n0 + warp * 16 + g + 8};  // this thread's two key rows

  for (int64_t hh = 0; hh < group; ++hh) {
    const int64_t h = hk * group + hh;
    const T* qh = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
    const T* oh = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1];
    const float* lse_h = p.lse + b * p.lse_stride[0] + h * p.lse_stride[1];
    const float* delta_h = p.delta + (b * p.heads_q + h) * sq;
    const int64_t bias_bh = b * p.bias_stride[0] + h * p.bias_stride[1];
    const uint32_t bh = static_cast<uint32_t>(b * p.heads_q + h);  // dropout's counter word 2
    float* dbias_h = p.dbias != nullptr ? p.dbias + (b * p.heads_q + h) * sq * sk : nullptr;
    for (int64_t m0 = m_first; m0 < sq; m0 += BM) {
      const int rows_q = static_cast<int>(sq - m0 < BM ? sq - m0 : BM);
      attn::load_tile_async<T, BM, D, kThreads>(sQ, qh + m0 * p.q_stride[2], p.q_stride[2], rows_q, tid);
      attn::load_tile_async<T, BM, D, kThreads>(sO, oh + m0 * p.dout_stride[2], p.dout_stride[2], rows_q, tid);
      cp_async_wait_all();
      __syncthreads();

      // S^T (16 keys x BM queries) = K Q^T and dP^T = V dO^T.
      float s[NQ][4], dp[NQ][4];
#pragma unroll
      for (int i = 0; i < NQ; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) s[i][r] = dp[i][r] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        uint32_t ak[4], av[4];
        attn::load_a_frag<D>(ak, sK, warp * 16, kk, lane);
        attn::load_a_frag<D>(av, sV, warp * 16, kk, lane);
#pragma unroll
        for (int np = 0; np < NQ / 2; ++np) {
          uint32_t bq[4], bo[4];
          attn::load_b_frags_nk<D>(bq, sQ, np * 16, kk, lane);
          attn::load_b_frags_nk<D>(bo, sO, np * 16, kk, lane);
          const uint32_t q0[2] = {bq[0], bq[1]}, q1[2] = {bq[2], bq[3]};
          const uint32_t o0[2] = {bo[0], bo[1]}, o1[2] = {bo[2], bo[3]};
          mma_m16n8k16<T>(s[2 * np], ak, q0, s[2 * np]);
          mma_m16n8k16<T>(s[2 * np + 1], ak, q1, s[2 * np + 1]);
          mma_m16n8k16<T>(dp[2 * np], av, o0, dp[2 * np]);
          mma_m16n8k16<T>(dp[2 * np + 1], av, o1, dp[2 * np + 1]);
        }
      }
      // P^T and dS^T in place of s and dp.
      const uint32_t keep_bits = p.dropout.enabled ? attn::dropout_keep_bits<NQ, false>(
                                     p.dropout, bh, keys[0], keys[1], m0, lane) : 0u;
#pragma unroll
      for (int nt = 0; nt < NQ; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int64_t i = m0 + nt * 8 + 2 * t + (r & 1);
          const int64_t j = keys[r >> 1];
          const bool row_ok = i < sq;
          const float lse2 = row_ok ? lse_h[i * p.lse_stride[2]] * kLog2e : -__builtin_huge_valf();
          const float pr = attn::bwd_prob(p, s[nt][r], i, j, bias_bh, kpm, lse2, diag);
          float pz = pr, dpz = dp[nt][r];
          if (p.dropout.enabled) {  // the forward's mask, regenerated: z = keep / (1 - p) scales P in dV and dP
            const float z = attn::dropout_factor(keep_bits, 4 * nt + r, p.dropout.scale);
            pz *= z;
            dpz *= z;
          }
          const float ds = pr * (dpz - (row_ok ? delta_h[i] : 0.0f));
          s[nt][r] = pz;
          dp[nt][r] = ds;
          if (dbias_h != nullptr && row_ok && j < sk) dbias_h[i * sk + j] = ds;
        }
      // dV += P^T dO, dK += dS^T Q (k = the block's queries).
#pragma unroll
      for (int ks = 0; ks < KQ; ++ks) {
        const uint32_t ap[4] = {pack2<T>(s[2 * ks][0], s[2 * ks][1]), pack2<T>(s[2 * ks][2], s[2 * ks][3]),
                                pack2<T>(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                pack2<T>(s[2 * ks + 1][2], s[2 * ks + 1][3])};
        const uint32_t ad[4] = {pack2<T>(dp[2 * ks][0], dp[2 * ks][1]), pack2<T>(dp[2 * ks][2], dp[2 * ks][3]),
                                pack2<T>(dp[2 * ks + 1][0], dp[2 * ks + 1][1]),
                                pack2<T>(dp[2 * ks + 1][2], dp[2 * ks + 1][3])};
#pragma unroll
        for (int np = 0; np < OT / 2; ++np) {
          uint32_t bo[4], bq[4];
          attn::load_b_frags_kn<D>(bo, sO, ks * 16, np, lane);
          attn::load_b_frags_kn<D>(bq, sQ, ks * 16, np, lane);
          const uint32_t o0[2] = {bo[0], bo[1]}, o1[2] = {bo[2], bo[3]};
          const uint32_t q0[2] = {bq[0], bq[1]}, q1[2] = {bq[2], bq[3]};
          mma_m16n8k16<T>(dv[2 * np], ap, o0, dv[2 * np]);
          mma_m16n8k16<T>(dv[2 * np + 1], ap, o1, dv[2 * np + 1]);
          mma_m16n8k16<T>(dk[2 * np], ad, q0, dk[2 * np]);
          mma_m16n8k16<T>(dk[2 * np + 1], ad, q1, dk[2 * np + 1]);
        }
      }
      __syncthreads();  // the Q / dO tiles are free for the next block
    }
  }
  cp_async_wait_all();  // (no block at all: K and V copies still land before exit)

  T* dkb = static_cast<T*>(p.dk) + ((b * p.heads_kv + hk) * sk + n0) * D;
  T* dvb = static_cast<T*>(p.dv) + ((b * p.heads_kv + hk) * sk + n0) * D;
  attn::store_rows<T, OT>(dkb, D, warp * 16 + g, rows_k, dk, p.scale, t);
  attn::store_rows<T, OT>(dvb, D, warp * 16 + g, rows_k, dv, 1.0f, t);
}

template <typename T, int D>
__global__ void __launch_bounds__(128, 1) attn_bwd_dq_kernel(const AttnBwdParams p) {
  using Cfg = AttnBwdConfig<D>;
  constexpr int BM = Cfg::kQRowsPerCta, BN = Cfg::kKBlock, kThreads = Cfg::kThreads;
  constexpr int KD = D / 16;
  constexpr int NT = BN / 8;
  constexpr int KS = BN / 16;
  constexpr int OT = D / 8;
  static_assert(NT % 2 == 0 && OT % 2 == 0, "tile shapes");

  FASTATTN_DYNAMIC_SHARED(uint16_t, smem_raw);
  T* const sQ = reinterpret_cast<T*>(smem_raw);
  T* const sO = sQ + BM * D;  // dO
  T* const sK = sO + BM * D;
  T* const sV = sK + BN * D;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t hk = h / (p.heads_q / p.heads_kv);
  const int64_t sq = p.seqlen_q, sk = p.seqlen_k, diag = sk - sq;
  const int rows_q = static_cast<int>(sq - m0 < BM ? sq - m0 : BM);
  const uint8_t* kpm = p.key_padding != nullptr ? p.key_padding + b * p.kpm_stride_b : nullptr;
  const int64_t bias_bh = b * p.bias_stride[0] + h * p.bias_stride[1];
  const uint32_t bh = static_cast<uint32_t>(b * p.heads_q + h);  // dropout's counter word 2

  const T* qb = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + m0 * p.q_stride[2];
  const T* ob = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1] + m0 * p.dout_stride[2];
  const T* kb = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* vb = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  attn::load_tile_async<T, BM, D, kThreads>(sQ, qb, p.q_stride[2], rows_q, tid);
  attn::load_tile_async<T, BM, D, kThreads>(sO, ob, p.dout_stride[2], rows_q, tid);
  cp_async_commit_group();

  const int64_t rows[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = rows[r] < sq;
    lse2[r] = ok ? p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + rows[r] * p.lse_stride[2]] * kLog2e
                 : -__builtin_huge_valf();
    delta[r] = ok ? p.delta[(b * p.heads_q + h) * sq + rows[r]] : 0.0f;
  }

  int64_t n_end = sk;
  if (p.causal && m0 + rows_q + diag < n_end) n_end = m0 + rows_q + diag;

  float dq[OT][4];
#pragma unroll
  for (int i = 0; i < OT; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.0f;

  for (int64_t n0 = 0; n0 < n_end; n0 += BN) {
    const int rows_k = static_cast<int>(sk - n0 < BN ? sk - n0 : BN);
    attn::load_tile_async<T, BN, D, kThreads>(sK, kb + n0 * p.k_stride[2], p.k_stride[2], rows_k, tid);
    attn::load_tile_async<T, BN, D, kThreads>(sV, vb + n0 * p.v_stride[2], p.v_stride[2], rows_k, tid);
    cp_async_wait_all();
    __syncthreads();

    float s[NT][4], dp[NT][4];
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
      for (int r = 0; r < 4; ++r) s[i][r] = dp[i][r] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t aq[4], ao[4];
      attn::load_a_frag<D>(aq, sQ, warp * 16, kk, lane);
      attn::load_a_frag<D>(ao, sO, warp * 16, kk, lane);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bk[4], bv[4];
        attn::load_b_frags_nk<D>(bk, sK, np * 16, kk, lane);
        attn::load_b_frags_nk<D>(bv, sV, np * 16, kk, lane);
        const uint32_t k0[2] = {bk[0], bk[1]}, k1[2] = {bk[2], bk[3]};
        const uint32_t v0[2] = {bv[0], bv[1]}, v1[2] = {bv[2], bv[3]};
        mma_m16n8k16<T>(s[2 * np], aq, k0, s[2 * np]);
        mma_m16n8k16<T>(s[2 * np + 1], aq, k1, s[2 * np + 1]);
        mma_m16n8k16<T>(dp[2 * np], ao, v0, dp[2 * np]);
        mma_m16n8k16<T>(dp[2 * np + 1], ao, v1, dp[2 * np + 1]);
      }
    }
    const uint32_t keep_bits = p.dropout.enabled ? attn::dropout_keep_bits<NT, true>(
                                   p.dropout, bh, rows[0], rows[1], n0, lane) : 0u;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t i = rows[r >> 1];
        const int64_t j = n0 + nt * 8 + 2 * t + (r & 1);
        const float pr = attn::bwd_prob(p, s[nt][r], i, j, bias_bh, kpm, lse2[r >> 1], diag);
        float dpz = dp[nt][r];
        if (p.dropout.enabled) dpz *= attn::dropout_factor(keep_bits, 4 * nt + r, p.dropout.scale);  // as dK/dV's
        dp[nt][r] = pr * (dpz - delta[r >> 1]);
      }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const uint32_t ad[4] = {pack2<T>(dp[2 * ks][0], dp[2 * ks][1]), pack2<T>(dp[2 * ks][2], dp[2 * ks][3]),
                              pack2<T>(dp[2 * ks + 1][0], dp[2 * ks + 1][1]),
                              pack2<T>(dp[2 * ks + 1][2], dp[2 * ks + 1][3])};
#pragma unroll
      for (int np = 0; np < OT / 2; ++np) {
        uint32_t bk[4];
        attn::load_b_frags_kn<D>(bk, sK, ks * 16, np, lane);
        const uint32_t k0[2] = {bk[0], bk[1]}, k1[2] = {bk[2], bk[3]};
        mma_m16n8k16<T>(dq[2 * np], ad, k0, dq[2 * np]);
        mma_m16n8k16<T>(dq[2 * np + 1], ad, k1, dq[2 * np + 1]);
      }
    }
    __syncthreads();  // K / V tiles free for the next block
  }
  cp_async_wait_all();  // (no key block: the Q / dO copies land before exit)

  T* dqb = static_cast<T*>(p.dq) + ((b * p.heads_q + h) * sq + m0) * D;
  attn::store_rows<T, OT>(dqb, D, warp * 16 + g, rows_q, dq, p.scale, t);
}

template <typename T, int D>
cudaError_t attn_bwd_launch(const AttnBwdParams& p, cudaStream_t stream) {
  using Cfg = AttnBwdConfig<D>;
  if (p.heads_q > 65535 || p.batch > 65535 || p.heads_kv > 65535) return cudaErrorInvalidValue;
#if defined(__CUDACC__)
  if (Cfg::kDkdvSmem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(attn_bwd_dkdv_kernel<T, D>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(Cfg::kDkdvSmem));
    if (err != cudaSuccess) return err;
  }
  if (Cfg::kDqSmem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(attn_bwd_dq_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(Cfg::kDqSmem));
    if (err != cudaSuccess) return err;
  }
#endif
  const unsigned hq = static_cast<unsigned>(p.heads_q), bb = static_cast<unsigned>(p.batch);
  const dim3 grid_delta(static_cast<unsigned>((p.seqlen_q + 3) / 4), hq, bb);
  FASTATTN_LAUNCH((attn_bwd_delta_kernel<T>), grid_delta, 128, 0, stream, p, D);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 grid_kv(static_cast<unsigned>((p.seqlen_k + Cfg::kKeysPerCta - 1) / Cfg::kKeysPerCta),
                     static_cast<unsigned>(p.heads_kv), bb);
  FASTATTN_LAUNCH((attn_bwd_dkdv_kernel<T, D>), grid_kv, Cfg::kThreads, Cfg::kDkdvSmem, stream, p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 grid_q(static_cast<unsigned>((p.seqlen_q + Cfg::kQRowsPerCta - 1) / Cfg::kQRowsPerCta), hq, bb);
  FASTATTN_LAUNCH((attn_bwd_dq_kernel<T, D>), grid_q, Cfg::kThreads, Cfg::kDqSmem, stream, p);
  return cudaGetLastError();
}

}  // namespace fastattn
