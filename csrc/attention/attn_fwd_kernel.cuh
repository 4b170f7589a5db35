// Fused attention forward kernel (FlashAttention-2 scheme) and the definition of attn_fwd_launch<T, D>.
//
// attn_fwd_kernel<T, D>
//   Grid (ceil(Sq / 64), Hq, B); 128 threads = 4 warps; warp w owns query rows m0 + 16 w .. + 16 of the CTA's
//   64-row tile. Query head h reads KV head h / (Hq / Hkv) (GQA / MQA by index, no repeat).
//   Shared memory (dynamic, 16-bit elements, swizzled tiles of attn_tile.cuh): Q (64 x D), then two stages of
//   K (BN x D) and two of V (BN x D); BN = 64 for D <= 128, 32 for D = 256.
//   Pipeline: Q and key block 0 are requested by cp.async up front; in iteration n the copies of key block
//   n + 1 (K and V) are issued into the other stage, then wait_group<1> + __syncthreads make block n visible;
//   a __syncthreads at the end of the iteration frees its stage for the copies of block n + 2.
//   Per key block and warp: S (16 x BN) = Q K^T on mma.m16n8k16 (Q fragments kept in registers for D <= 128,
//   re-read by ldmatrix for D = 256; K by ldmatrix, V by ldmatrix.trans), fp32 accumulators.
//   Scores in log2 units: s2 = acc * scale * log2(e) + bias * log2(e); the online softmax keeps per row the
//   running max m and the per-thread partial sum l, rescales O by exp2(m_old - m_new) and adds P V, where P is
//   exp2(s2 - m) rounded to T (as FlashAttention). Only the blocks that cross the causal diagonal or the end
//   of the keys run the causal / bounds mask; the key padding mask and the bias apply to every block when given.
//   Invariant: after iteration n, o = sum_{j < 64 (n + 1)} exp2(s2_j - m) v_j and l = sum exp2(s2_j - m) over
//   the keys of blocks 0..n, m = max over them (-inf when all are hidden; then exp2 uses 0 for m).
//   Dropout (p.dropout.enabled, a uniform runtime branch, no template flag): after l has taken P, each entry of
//   P is zeroed unless its bit of attn::dropout_keep_bits is set (attn_dropout.cuh: one Philox4x32-10 per 8 keys
//   of a row, counter (key / 8, query row, b * Hq + h, offset), 16-bit draws, each call made by one lane of the
//   quad and shuffled to the others); the epilogue multiplies by 1 / (1 - p).
//   lse is of the undropped softmax.
//   Epilogue: out = o / l (0 when l == 0: no visible key), lse = (m + log2 l) ln 2 (-inf when l == 0).
//   Global reads: q once; k, v once per (query tile, head); bias and the key padding mask once per score.
//   Writes: out and lse once. Rows past Sq are computed on zero-filled Q rows but never written; key rows past
//   Sk are zero-filled (never read from global memory) and hidden by the bounds mask.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention/attn_fwd.h"
#include "attention/attn_dropout.cuh"
#include "attention/attn_fwd_launch.h"
#include "attention/attn_tile.cuh"
#include "common/cp_async.cuh"
#include "common/device_utils.cuh"
#include "common/launch.cuh"
#include "common/ldmatrix.cuh"
#include "common/mma.cuh"

namespace fastattn {

namespace attn {

// What block_scores needs about the rows this thread holds.
struct ScoreCtx {
  const AttnFwdParams& p;
  const int64_t (&rows)[2];          // the thread's two query rows
  const int64_t (&bias_row_off)[2];  // bias offsets of those rows (batch, head and row strides applied)
  const uint8_t* kpm;                // this batch's key padding row, or nullptr
  int64_t sk, sq, diag;              // row i sees keys j <= i + diag (causal)
  int t;                             // thread in its quad
};

// Scores of one key block (C fragments of S, n0 = its first key), turned into log2 units with the bias and the
// key padding mask applied; kMask: also the causal and the bounds mask (only blocks crossing the diagonal or Sk).
template <bool kMask, int NT>
__device__ __forceinline__ void block_scores(float (&s)[NT][4], int64_t n0, const ScoreCtx& c) {
  constexpr float kNegInf = -__builtin_huge_valf();
  const AttnFwdParams& p = c.p;
  const bool has_bias = p.bias != nullptr;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = c.rows[i >> 1];
      const int64_t col = n0 + nt * 8 + 2 * c.t + (i & 1);
      float x = s[nt][i] * p.scale_log2;
      const bool col_ok = !kMask || col < c.sk;
      if (has_bias && row < c.sq && col_ok)
        x += load_bias(p.bias, p.bias_dtype, c.bias_row_off[i >> 1] + col * p.bias_stride[3]) * kLog2e;
      if (c.kpm != nullptr && col_ok && c.kpm[col] == 0) x = kNegInf;
      if constexpr (kMask) {
        if (!col_ok || (p.causal && col > row + c.diag)) x = kNegInf;
      }
      s[nt][i] = x;
    }
}

}  // namespace attn

template <int D>
struct AttnFwdConfig {
  static constexpr int kBlockM = 64;                  // query rows per CTA (16 per warp)
  static constexpr int kBlockN = D <= 128 ? 64 : 32;  // keys per block
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr bool kQInRegs = D <= 128;          // Q fragments held for the whole kernel (D / 4 registers)
  static constexpr size_t kSmemBytes = static_cast<size_t>(kBlockM + 4 * kBlockN) * D * 2;
};

template <typename T, int D>
__global__ void __launch_bounds__(AttnFwdConfig<D>::kThreads) attn_fwd_kernel(const AttnFwdParams p) {
  using Cfg = AttnFwdConfig<D>;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, kThreads = Cfg::kThreads;
  constexpr int KD = D / 16;   // k steps of S = Q K^T
  constexpr int NT = BN / 8;   // n tiles of S
  constexpr int KS = BN / 16;  // k steps of O += P V
  constexpr int OT = D / 8;    // n tiles of O
  constexpr float kNegInf = -__builtin_huge_valf();
  static_assert(D % 16 == 0 && NT % 2 == 0 && OT % 2 == 0, "tile shapes");

  FASTATTN_DYNAMIC_SHARED(uint16_t, smem_raw);
  T* const sQ = reinterpret_cast<T*>(smem_raw);
  T* const sK = sQ + BM * D;       // 2 stages of BN x D
  T* const sV = sK + 2 * BN * D;   // 2 stages of BN x D

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t hk = h / (p.heads_q / p.heads_kv);
  const int64_t sq = p.seqlen_q, sk = p.seqlen_k;
  const int rows_q = static_cast<int>(sq - m0 < BM ? sq - m0 : BM);

  const T* qb = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + m0 * p.q_stride[2];
  const T* kb = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* vb = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  T* ob = static_cast<T*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1];
  float* lb = p.lse + b * p.lse_stride[0] + h * p.lse_stride[1];

  // Keys [0, n_end) can be visible to some row of this tile: causal, the last valid row m0 + rows_q - 1 sees
  // keys j <= m0 + rows_q - 1 + Sk - Sq.
  const int64_t diag = sk - sq;  // row i sees keys j <= i + diag (causal)
  int64_t n_end = sk;
  if (p.causal && m0 + rows_q + diag < n_end) n_end = m0 + rows_q + diag;
  const int n_blocks = n_end > 0 ? static_cast<int>((n_end + BN - 1) / BN) : 0;

  if (n_blocks == 0) {  // no row of the tile sees any key: zeros and -inf (uniform over the CTA: no barrier)
    for (int e = tid; e < rows_q * D; e += kThreads) ob[(m0 + e / D) * p.out_stride[2] + e % D] = from_float<T>(0.0f);
    for (int r = tid; r < rows_q; r += kThreads) lb[(m0 + r) * p.lse_stride[2]] = kNegInf;
    return;
  }

  auto load_kv = [&](int stage, int nb) {
    const int64_t n0 = static_cast<int64_t>(nb) * BN;
    const int rows = static_cast<int>(sk - n0 < BN ? sk - n0 : BN);
    attn::load_tile_async<T, BN, D, kThreads>(sK + stage * BN * D, kb + n0 * p.k_stride[2], p.k_stride[2], rows, tid);
    attn::load_tile_async<T, BN, D, kThreads>(sV + stage * BN * D, vb + n0 * p.v_stride[2], p.v_stride[2], rows, tid);
  };

  attn::load_tile_async<T, BM, D, kThreads>(sQ, qb, p.q_stride[2], rows_q, tid);
  cp_async_commit_group();
  load_kv(0, 0);
  cp_async_commit_group();

  uint32_t qf[Cfg::kQInRegs ? KD : 1][4];  // Q fragments (rows 16 warp.., k step kk)
  if constexpr (Cfg::kQInRegs) {
    cp_async_wait_group<1>();  // Q has landed (key block 0 may still be in flight)
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) attn::load_a_frag<D>(qf[kk], sQ, warp * 16, kk, lane);
  }

  float o[OT][4];  // (16 x D) accumulator of the warp, C fragments
#pragma unroll
  for (int i = 0; i < OT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float row_max[2] = {kNegInf, kNegInf};  // rows g and g + 8 of the warp, log2 units
  float row_sum[2] = {0.0f, 0.0f};        // this thread's part of the row sums

  const int64_t r_lo = m0 + warp * 16 + g;  // the two query rows this thread holds
  const int64_t rows[2] = {r_lo, r_lo + 8};
  const bool has_kpm = p.key_padding != nullptr;
  const int64_t bias_row_off[2] = {
      b * p.bias_stride[0] + h * p.bias_stride[1] + rows[0] * p.bias_stride[2],
      b * p.bias_stride[0] + h * p.bias_stride[1] + rows[1] * p.bias_stride[2]};
  const uint8_t* kpm = has_kpm ? p.key_padding + b * p.kpm_stride_b : nullptr;
  const uint32_t bh = static_cast<uint32_t>(b * p.heads_q + h);  // dropout's counter word 2

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int stage = nb & 1;
    if (nb + 1 < n_blocks) load_kv(stage ^ 1, nb + 1);
    cp_async_commit_group();  // (an empty group after the last block keeps the wait count uniform)
    cp_async_wait_group<1>();  // everything but the newest group: Q and key block nb have landed
    __syncthreads();
    const T* tK = sK + stage * BN * D;
    const T* tV = sV + stage * BN * D;
    const int64_t n0 = static_cast<int64_t>(nb) * BN;

    float s[NT][4];  // (16 x BN) scores of the warp
#pragma unroll
    for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t a_reg[4];
      if constexpr (Cfg::kQInRegs) {
#pragma unroll
        for (int r = 0; r < 4; ++r) a_reg[r] = qf[kk][r];
      } else {
        attn::load_a_frag<D>(a_reg, sQ, warp * 16, kk, lane);
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bf[4];
        attn::load_b_frags_nk<D>(bf, tK, np * 16, kk, lane);
        const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
        mma_m16n8k16<T>(s[2 * np], a_reg, b0, s[2 * np]);
        mma_m16n8k16<T>(s[2 * np + 1], a_reg, b1, s[2 * np + 1]);
      }
    }

    const bool needs_mask = n0 + BN > sk || (p.causal && n0 + BN - 1 > m0 + diag);
    const attn::ScoreCtx ctx{p, rows, bias_row_off, kpm, sk, sq, diag, t};
    if (needs_mask) {
      attn::block_scores<true, NT>(s, n0, ctx);
    } else {
      attn::block_scores<false, NT>(s, n0, ctx);
    }

    // Online softmax: new row maxima, rescale of the running sums and of O, P = exp2(s - m).
    float mx[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = attn::quad_max(mx[r]);
      m_use[r] = mx[r] == kNegInf ? 0.0f : mx[r];  // every score so far hidden: exp2(-inf - 0) = 0, no NaN
      alpha[r] = exp2f(row_max[r] - m_use[r]);
      row_max[r] = mx[r];
      row_sum[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float e = exp2f(s[nt][i] - m_use[i >> 1]);
        s[nt][i] = e;
        row_sum[i >> 1] += e;
      }
    if (p.dropout.enabled) {  // uniform: the normaliser l keeps every probability, only P V loses the dropped
      const uint32_t keep_bits = attn::dropout_keep_bits<NT, true>(p.dropout, bh, rows[0], rows[1], n0, lane);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (!((keep_bits >> (4 * nt + i)) & 1u)) s[nt][i] = 0.0f;
    }
#pragma unroll
    for (int ot = 0; ot < OT; ++ot) {
      o[ot][0] *= alpha[0];
      o[ot][1] *= alpha[0];
      o[ot][2] *= alpha[1];
      o[ot][3] *= alpha[1];
    }

    // O += P V: the C fragments of S n tiles 2 ks, 2 ks + 1 are the A fragment of k step ks.
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const uint32_t a_reg[4] = {pack2<T>(s[2 * ks][0], s[2 * ks][1]), pack2<T>(s[2 * ks][2], s[2 * ks][3]),
                                 pack2<T>(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                 pack2<T>(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
      for (int np = 0; np < OT / 2; ++np) {
        uint32_t bf[4];
        attn::load_b_frags_kn<D>(bf, tV, ks * 16, np, lane);
        const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
        mma_m16n8k16<T>(o[2 * np], a_reg, b0, o[2 * np]);
        mma_m16n8k16<T>(o[2 * np + 1], a_reg, b1, o[2 * np + 1]);
      }
    }
    __syncthreads();  // every warp is done with this stage before the next iteration's copies overwrite it
  }

  // Epilogue: normalise, write out (pairs of T) and lse.
  constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = attn::quad_sum(row_sum[r]);
    // NaN stays NaN; dropout: the kept probabilities are scaled by 1 / (1 - p) here, once per row
    const float inv = l == 0.0f ? 0.0f : (p.dropout.enabled ? p.dropout.scale : 1.0f) / l;
    const int64_t row = rows[r];
    if (row < sq) {
      T* orow = ob + row * p.out_stride[2];
#pragma unroll
      for (int ot = 0; ot < OT; ++ot)
        *reinterpret_cast<uint32_t*>(orow + ot * 8 + 2 * t) = pack2<T>(o[ot][2 * r] * inv, o[ot][2 * r + 1] * inv);
      if (t == 0) lb[row * p.lse_stride[2]] = l == 0.0f ? kNegInf : (row_max[r] + log2f(l)) * kLn2;
    }
  }
}

template <typename T, int D>
cudaError_t attn_fwd_launch(const AttnFwdParams& p, cudaStream_t stream) {
  using Cfg = AttnFwdConfig<D>;
  const int64_t m_blocks = (p.seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM;
  if (m_blocks > 0x7fffffff || p.heads_q > 65535 || p.batch > 65535) return cudaErrorInvalidValue;
#if defined(__CUDACC__)
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(attn_fwd_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(Cfg::kSmemBytes));
    if (err != cudaSuccess) return err;
  }
#endif
  const dim3 grid(static_cast<unsigned>(m_blocks), static_cast<unsigned>(p.heads_q), static_cast<unsigned>(p.batch));
  FASTATTN_LAUNCH((attn_fwd_kernel<T, D>), grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
  return cudaGetLastError();
}

}  // namespace fastattn
