// Hopper attention forward (wgmma, sm_90a) and the definition of attn_fwd_sm90_launch<T, D>. Behind a flag
// (attn_fwd_sm90.h): same semantics as attn_fwd_kernel for what it takes (causal, Sq != Sk, GQA / MQA, lse,
// custom scale); no bias, no key padding mask (those go to the mma.sync kernel).
//
// attn_fwd_sm90_kernel<T, D>, D in {64, 128}
//   Grid (ceil(Sq / 128), Hq, B); 256 threads = 2 warpgroups; warpgroup w owns query rows m0 + 64 w .. + 64 of
//   the CTA's 128-row tile, and within it warp v rows 16 v .. + 16 (the wgmma accumulator layout). Query head h
//   reads KV head h / (Hq / Hkv).
//   Shared memory (dynamic, aligned up to 1024 bytes): Q (128 x D), then three stages of K (BN x D) and of V
//   (BN x D); BN = 128 for D = 64, 64 for D = 128. Every tile is stored in panels of 64 columns (128 bytes a
//   row), panel p at p * rows * 128 bytes, row r at r * 128 in it, its 16-byte chunk c at (c ^ r % 8) * 16:
//   the 128-byte swizzle of the wgmma canonical layouts, so that Q and K are K-major operands (descriptor SBO
//   1024 between 8-row groups, k steps of 32 bytes inside a row, a new panel every 4 steps) and V an N-major
//   one (LBO = BN * 128 between d panels, SBO = 1024 between 8-key groups, 2048 bytes per k step).
//   Pipeline (no warp specialisation, no TMA): every thread issues cp.async for Q and key block 0; iteration n
//   waits for block n (wait_group<0>, fence.proxy.async, __syncthreads: this barrier also tells that both
//   warpgroups are done with block n - 2), then issues the copies of block n + 1 into the stage of block n - 2.
//   Per key block and warpgroup: S_n (64 x BN) = Q K_n^T by D / 16 chained wgmma.m64n{BN}k16 (Q and K from
//   shared memory) and, in the same window, O += P_{n-1} V_{n-1} by BN / 16 wgmma.m64n{D}k16 with P from
//   registers (the accumulators of keys 16 s .. 16 s + 15 packed into the A fragment) and V N-major from
//   shared memory; wait_group<1> lets S_n land while P V runs on, the online softmax of block n runs on the
//   accumulator fragments (thread rows g and g + 8 of its warp, the 4 lanes of a quad sharing a row, as with
//   mma.sync), then wait_group<0>, O rescaled by exp2(m_{n-1} - m_n), P_n packed. After the loop, the last
//   P V. (FA3's intra-warpgroup overlap; no ping-pong between the warpgroups.)
//   Scores in log2 units (scale * log2 e folded in); only blocks crossing the causal diagonal or Sk are
//   masked. Invariant: after iteration n, o = sum exp2(s2_j - m) v_j over the keys of blocks 0..n-1 (block
//   n's P is in registers), l = sum exp2(s2_j - m) over blocks 0..n, m their maximum. Epilogue as
//   attn_fwd_kernel: out = o / l (0 when l == 0), lse = (m + log2 l) ln 2
//   (-inf when l == 0).
//   Global reads: q once; k, v once per (128-row query tile, head). Writes: out and lse once. Rows past Sq
//   are computed on zero-filled Q rows and never written; keys past Sk are zero-filled and masked.
// Compiled for sm_90a only: in any other device pass the body is a trap and the launcher is never called
// (attn_fwd_sm90_enabled checks the device).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention/attn_fwd.h"
#include "attention/attn_fwd_sm90.h"
#include "attention/attn_tile.cuh"
#include "common/cp_async.cuh"
#include "common/device_utils.cuh"
#include "common/launch.cuh"
#include "common/mma.cuh"
#include "common/wgmma.cuh"

namespace fastattn {

template <int D>
struct AttnFwdSm90Config {
  static constexpr int kWarpgroups = 2;
  static constexpr int kBlockM = 64 * kWarpgroups;   // query rows per CTA
  static constexpr int kBlockN = D == 64 ? 128 : 64;  // keys per block
  static constexpr int kThreads = 128 * kWarpgroups;
  static constexpr int kStages = 3;                   // K/V stages: block n + 1 loading, n in S, n - 1 in P V
  static constexpr size_t kSmemBytes = 1024 + static_cast<size_t>(kBlockM + 2 * kStages * kBlockN) * D * 2;
};

namespace attn90 {

// Byte offset of 16-byte chunk c (of D / 8) of row r in a swizzled tile of R rows.
template <int R>
__device__ __forceinline__ uint32_t chunk_offset(int r, int c) {
  return static_cast<uint32_t>((c >> 3) * R * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

// cp.async of an (R x D) tile: rows [0, rows_valid) from `base` (row stride in elements), the others zero-filled
// without reading (their source is `base`, a valid address).
template <typename T, int R, int D, int kThreads>
__device__ __forceinline__ void load_tile(unsigned char* tile, const T* base, int64_t row_stride, int rows_valid,
                                          int tid) {
  constexpr int kChunks = R * D / 8;
  static_assert(kChunks % kThreads == 0, "chunks per thread");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int e = tid + i * kThreads, r = e / (D / 8), c = e % (D / 8);
    const bool ok = r < rows_valid;
    const T* src = ok ? base + r * row_stride + c * 8 : base;
    cp_async_zfill<16>(tile + chunk_offset<R>(r, c), src, ok ? 16 : 0);
  }
}

}  // namespace attn90

template <typename T, int D>
__global__ void __launch_bounds__(AttnFwdSm90Config<D>::kThreads) attn_fwd_sm90_kernel(const AttnFwdParams p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // no wgmma in this device pass: never launched there
#else
  using Cfg = AttnFwdSm90Config<D>;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, kThreads = Cfg::kThreads;
  constexpr int KD = D / 16;   // k steps of S = Q K^T
  constexpr int KS = BN / 16;  // k steps of O += P V
  constexpr float kNegInf = -__builtin_huge_valf();
  static_assert(D == 64 || D == 128, "head dims of the sm90 kernel");

  FASTATTN_DYNAMIC_SHARED(unsigned char, smem_raw);
  unsigned char* const sQ = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~static_cast<uintptr_t>(1023));
  constexpr int kStages = Cfg::kStages;
  constexpr int kStageBytes = BN * D * 2;
  unsigned char* const sK = sQ + BM * D * 2;  // kStages stages of BN x D
  unsigned char* const sV = sK + kStages * kStageBytes;

  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid & 31;
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

  const int64_t diag = sk - sq;  // row i sees keys j <= i + diag (causal)
  int64_t n_end = sk;
  if (p.causal && m0 + rows_q + diag < n_end) n_end = m0 + rows_q + diag;
  const int n_blocks = n_end > 0 ? static_cast<int>((n_end + BN - 1) / BN) : 0;

  if (n_blocks == 0) {  // no row of the tile sees any key (uniform over the CTA: no barrier)
    for (int e = tid; e < rows_q * D; e += kThreads) ob[(m0 + e / D) * p.out_stride[2] + e % D] = from_float<T>(0.0f);
    for (int r = tid; r < rows_q; r += kThreads) lb[(m0 + r) * p.lse_stride[2]] = kNegInf;
    return;
  }

  auto load_kv = [&](int stage, int nb) {
    const int64_t n0 = static_cast<int64_t>(nb) * BN;
    const int rows = static_cast<int>(sk - n0 < BN ? sk - n0 : BN);
    attn90::load_tile<T, BN, D, kThreads>(sK + stage * BN * D * 2, kb + n0 * p.k_stride[2], p.k_stride[2], rows, tid);
    attn90::load_tile<T, BN, D, kThreads>(sV + stage * BN * D * 2, vb + n0 * p.v_stride[2], p.v_stride[2], rows, tid);
  };
  attn90::load_tile<T, BM, D, kThreads>(sQ, qb, p.q_stride[2], rows_q, tid);
  load_kv(0, 0);
  cp_async_commit_group();

  // Descriptors (start addresses advanced per k step / stage below).
  const uint64_t q_desc = make_wgmma_desc(sQ + wg * 64 * 128, 16, 1024, WgmmaSwizzle::k128B);
  const uint64_t k_desc = make_wgmma_desc(sK, 16, 1024, WgmmaSwizzle::k128B);
  const uint64_t v_desc = make_wgmma_desc(sV, BN * 128, 1024, WgmmaSwizzle::k128B);

  float o[D / 2];  // (64 x D) accumulator of the warpgroup
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float row_max[2] = {kNegInf, kNegInf};  // rows g and g + 8 of the warp, log2 units
  float row_sum[2] = {0.0f, 0.0f};        // this thread's part of the row sums
  const int64_t r_lo = m0 + wg * 64 + warp * 16 + g;
  const int64_t rows[2] = {r_lo, r_lo + 8};

  // S of block nb and P V of block nb - 1 are in flight together; the softmax of block nb runs while P V of
  // block nb - 1 computes, and O is rescaled once that has landed.
  uint32_t pa[KS][4];  // P of the previous block as A fragments (keys 16 ks .. 16 ks + 15 in step ks)
  auto issue_pv = [&](int stage) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
      wgmma_rs<T, D, true>(o, pa[ks], wgmma_desc_advance(v_desc, stage * kStageBytes + ks * 16 * 128), 1);
    wgmma_commit_group();
  };
  // Block nb: wait for its copies, issue those of block nb + 1 (into the stage of block nb - 2).
  auto next_block = [&](int nb) {
    cp_async_wait_group<0>();  // Q and key block nb have landed (block nb + 1 is not issued yet)
    fence_proxy_async_shared();
    // Block nb visible to every thread; both warpgroups are done with block nb - 2 (its P V was waited for in the
    // previous iteration), so its stage can be refilled with block nb + 1.
    __syncthreads();
    if (nb + 1 < n_blocks) load_kv((nb + 1) % kStages, nb + 1);
    cp_async_commit_group();
  };
  float s[BN / 2];  // (64 x BN) scores of the warpgroup
  auto issue_s = [&](int nb) {
    const int stage = nb % kStages;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk)  // k step kk: panel kk / 4 of the tiles, 32 bytes a step in a 128-byte row
      wgmma_ss<T, BN, false>(s, wgmma_desc_advance(q_desc, (kk >> 2) * BM * 128 + (kk & 3) * 32),
                             wgmma_desc_advance(k_desc, stage * kStageBytes + (kk >> 2) * BN * 128 + (kk & 3) * 32),
                             kk > 0 ? 1 : 0);
    wgmma_commit_group();
  };
  // Scores of block nb (landed) to P, with the running max and sums updated; returns nothing, leaves the
  // rescale factors in alpha.
  float alpha[2];
  auto softmax = [&](int nb) {
    const int64_t n0 = static_cast<int64_t>(nb) * BN;
    const bool needs_mask = n0 + BN > sk || (p.causal && n0 + BN - 1 > m0 + diag);
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      float x = s[i] * p.scale_log2;
      if (needs_mask) {
        const int64_t row = rows[(i >> 1) & 1];
        const int64_t col = n0 + 8 * (i >> 2) + 2 * t + (i & 1);
        if (col >= sk || (p.causal && col > row + diag)) x = kNegInf;
      }
      s[i] = x;
    }
    float mx[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
    float m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = attn::quad_max(mx[r]);
      m_use[r] = mx[r] == kNegInf ? 0.0f : mx[r];  // every score so far hidden: exp2(-inf - 0) = 0, no NaN
      alpha[r] = exp2f(row_max[r] - m_use[r]);
      row_max[r] = mx[r];
      row_sum[r] *= alpha[r];
    }
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      const float e = exp2f(s[i] - m_use[(i >> 1) & 1]);
      s[i] = e;
      row_sum[(i >> 1) & 1] += e;
    }
  };
  // This block's P as the A fragments of the next P V: accumulators of n tiles 2 ks, 2 ks + 1 form step ks.
  auto pack_p = [&] {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      pa[ks][0] = pack2<T>(s[8 * ks + 0], s[8 * ks + 1]);
      pa[ks][1] = pack2<T>(s[8 * ks + 2], s[8 * ks + 3]);
      pa[ks][2] = pack2<T>(s[8 * ks + 4], s[8 * ks + 5]);
      pa[ks][3] = pack2<T>(s[8 * ks + 6], s[8 * ks + 7]);
    }
  };

  // Block 0: S alone (O is still zero: no rescale, no P V).
  next_block(0);
  wgmma_fence();
  issue_s(0);
  wgmma_wait_group<0>();
  wgmma_fence_operands(s);
  softmax(0);
  pack_p();
  for (int nb = 1; nb < n_blocks; ++nb) {
    next_block(nb);
    wgmma_fence();  // s was read and pa, o written since the last wgmma
    issue_s(nb);
    issue_pv((nb - 1) % kStages);
    wgmma_wait_group<1>();  // S of block nb has landed; P V of block nb - 1 may still run
    wgmma_fence_operands(s);
    softmax(nb);
    wgmma_wait_group<0>();  // P V of block nb - 1 has landed: O is in registers again
    wgmma_fence_operands(o);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i >> 1) & 1];
    pack_p();
  }
  // P V of the last block.
  wgmma_fence();
  issue_pv((n_blocks - 1) % kStages);
  wgmma_wait_group<0>();
  wgmma_fence_operands(o);

  // Epilogue: normalise, write out (pairs of T) and lse.
  constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = attn::quad_sum(row_sum[r]);
    const float inv = l == 0.0f ? 0.0f : 1.0f / l;  // NaN stays NaN
    const int64_t row = rows[r];
    if (row < sq) {
      T* orow = ob + row * p.out_stride[2];
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        *reinterpret_cast<uint32_t*>(orow + 8 * j + 2 * t) =
            pack2<T>(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
      if (t == 0) lb[row * p.lse_stride[2]] = l == 0.0f ? kNegInf : (row_max[r] + log2f(l)) * kLn2;
    }
  }
#endif
}

template <typename T, int D>
cudaError_t attn_fwd_sm90_launch(const AttnFwdParams& p, cudaStream_t stream) {
  using Cfg = AttnFwdSm90Config<D>;
  const int64_t m_blocks = (p.seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM;
  if (m_blocks > 0x7fffffff || p.heads_q > 65535 || p.batch > 65535) return cudaErrorInvalidValue;
#if defined(__CUDACC__)
  const cudaError_t err = cudaFuncSetAttribute(attn_fwd_sm90_kernel<T, D>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(Cfg::kSmemBytes));
  if (err != cudaSuccess) return err;
#endif
  const dim3 grid(static_cast<unsigned>(m_blocks), static_cast<unsigned>(p.heads_q), static_cast<unsigned>(p.batch));
  FASTATTN_LAUNCH((attn_fwd_sm90_kernel<T, D>), grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
  return cudaGetLastError();
}

}  // namespace fastattn
