// Decode attention kernels (flash-decoding) and the definition of attn_decode_launch<T, D>.
//
// attn_decode_split_kernel<T, D>
//   Grid (splits, Hkv * ceil(G / 16), B), kWarps = 4 warps. The CTA's 16 MMA rows are up to 16 query heads of
//   one GQA group (rows past the group are zero and never written), so K and V of a KV head are read once for
//   the whole group. Keys [lo, hi) = [s * split_len, min((s + 1) * split_len, len)), len the clamped cache
//   length, in blocks of kBlockN keys through a kStages-deep cp.async pipeline shared by the CTA (one barrier
//   per block: wait for block n, barrier, issue block n + kStages - 1 into the stage block n - 1 used, compute
//   block n); key rows past hi are zero-filled, never read, and their scores set to -inf.
//   Warp w = kg + kKeyGroups * ds owns keys [16 kg, 16 kg + 16) of every block (key group kg) and output
//   columns [ds * D / kDSplits, (ds + 1) * D / kDSplits) (D = 256 only splits D in two, so that a warp's
//   accumulator stays at 64 registers; both warps of a key group compute the same scores). Per block a warp
//   runs S = Q K^T on mma.m16n8k16 for its 16 keys (Q fragments held in registers, loaded once from global),
//   the online softmax in log2 units (exp2, scale * log2 e folded in) and O += P V (V by ldmatrix.trans).
//   After the loop the warps' (m, l, O) meet in shared memory (reusing the stages) and are merged:
//   O = sum_kg 2^(m_kg - M) O_kg / L, L = sum_kg 2^(m_kg - M) l_kg, M = max_kg m_kg. One split: out = O in q's
//   dtype (0 when the sequence is empty). Several: the normalised fp32 partial and its log2-sum-exp M + log2 L
//   (-inf for an empty split) go to o_part / lse_part.
//   Global traffic: K and V rows [lo, hi) once each, q once, one (16 x D) output or partial.
//
// attn_decode_combine_kernel
//   Grid (Hq, B), D threads: out = sum_s w_s o_s / sum_s w_s, w_s = exp2(lse_s - max_s lse_s); zeros when every
//   split is empty, NaN when a partial is NaN. Reads each partial once.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention/attn_decode.h"
#include "attention/attn_decode_launch.h"
#include "attention/attn_tile.cuh"
#include "common/cp_async.cuh"
#include "common/device_utils.cuh"
#include "common/launch.cuh"
#include "common/ldmatrix.cuh"
#include "common/mma.cuh"

namespace fastattn {

// Sizes per head dim. Bytes in flight while a block is computed: (kStages - 1) K+V stages, 40-72 KB per CTA
// (benchmarks/NOTES.md, CUDA decode v2, for the Little's-law budget). Shared memory <= 96 KB at every head dim:
// two CTAs per SM on sm_90 (228 KB), and within the 99 KB per-block limit of sm_86/89.
template <int D>
struct AttnDecodeConfig {
  static constexpr int kRows = 16;                       // query heads per CTA (one MMA tile)
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kDSplits = D == 256 ? 2 : 1;      // warps sharing a key group, each its columns
  static constexpr int kKeyGroups = kWarps / kDSplits;   // 16 keys per key group and block
  static constexpr int kBlockN = 16 * kKeyGroups;        // keys per block: 64 (32 at D = 256)
  static_assert(kBlockN == attn_decode_block_n(D), "attn_decode_block_n disagrees with the config");
  static constexpr int kStages = D == 32 ? 6 : D <= 96 ? 4 : 3;  // 48 / 64 / 96 / 96 / 96 KB at D = 32 .. 256
  static constexpr size_t kStageBytes = static_cast<size_t>(2) * kBlockN * D * 2;   // K + V of one block
  static constexpr int kMergeStride = D / kDSplits + 8;  // floats per row of a warp's O in the merge (padded)
  static constexpr size_t kMergeBytes =
      static_cast<size_t>(kWarps) * (kRows * kMergeStride + 2 * kRows) * 4 + kKeyGroups * kRows * 4;
  static constexpr size_t kSmemBytes = kStages * kStageBytes;
  static_assert(kMergeBytes <= kSmemBytes, "the merge reuses the pipeline stages");
  static_assert(kSmemBytes <= 96 * 1024, "decode shared memory above 96 KB");
};

template <typename T, int D>
__global__ void __launch_bounds__(AttnDecodeConfig<D>::kThreads, 1) attn_decode_split_kernel(const AttnDecodeParams p) {
  using Cfg = AttnDecodeConfig<D>;
  constexpr int BN = Cfg::kBlockN, kRows = Cfg::kRows, kThreads = Cfg::kThreads, kStages = Cfg::kStages;
  constexpr int kKeyGroups = Cfg::kKeyGroups, DW = D / Cfg::kDSplits;  // DW: output columns per warp
  constexpr int KD = D / 16, OTW = DW / 8;
  constexpr float kNegInf = -__builtin_huge_valf();

  FASTATTN_DYNAMIC_SHARED(uint16_t, smem_raw);
  T* const sK = reinterpret_cast<T*>(smem_raw);  // kStages x (BN x D), swizzled
  T* const sV = sK + kStages * BN * D;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int kg = warp % kKeyGroups, ds = warp / kKeyGroups;
  const int64_t split = blockIdx.x, b = blockIdx.z;
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t row_tiles = (group + kRows - 1) / kRows;
  const int64_t hk = blockIdx.y / row_tiles;
  const int64_t h0 = hk * group + (blockIdx.y % row_tiles) * kRows;  // first query head of this tile
  const int64_t h_end = (hk + 1) * group;
  const int rows_q = static_cast<int>(h_end - h0 < kRows ? h_end - h0 : kRows);

  int64_t len = p.seqlens[b];
  len = len < 0 ? 0 : (len > p.max_seqlen ? p.max_seqlen : len);
  const int64_t lo = split * p.split_len;
  const int64_t hi = lo + p.split_len < len ? lo + p.split_len : len;
  const int n_blocks = hi > lo ? static_cast<int>((hi - lo + BN - 1) / BN) : 0;
  const bool single = p.num_splits == 1;

  if (n_blocks == 0) {  // empty split / sequence (uniform over the CTA, before any barrier)
    for (int i = tid; i < rows_q * D; i += kThreads) {
      const int64_t h = h0 + i / D;
      const int c = i % D;
      if (single) static_cast<T*>(p.out)[(b * p.heads_q + h) * D + c] = from_float<T>(0.0f);
      else p.o_part[((b * p.heads_q + h) * p.num_splits + split) * D + c] = 0.0f;
    }
    for (int r = tid; r < rows_q; r += kThreads)
      if (!single) p.lse_part[(b * p.heads_q + h0 + r) * p.num_splits + split] = kNegInf;
    return;
  }

  const T* kb = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* vb = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  auto load_kv = [&](int stage, int nb) {
    const int64_t n0 = lo + static_cast<int64_t>(nb) * BN;
    const int valid = static_cast<int>(hi - n0 < BN ? hi - n0 : BN);
    attn::load_tile_async<T, BN, D, kThreads>(sK + stage * BN * D, kb + n0 * p.k_stride[2], p.k_stride[2], valid,
                                              tid);
    attn::load_tile_async<T, BN, D, kThreads>(sV + stage * BN * D, vb + n0 * p.v_stride[2], p.v_stride[2], valid,
                                              tid);
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {  // prologue: blocks 0 .. kStages - 2, one group each (maybe empty)
    if (s < n_blocks) load_kv(s, s);
    cp_async_commit_group();
  }

  // Q A-fragments (16 rows x D) straight from global while the first blocks are in flight: register r of k
  // step kk holds row g + 8 (r & 1), columns 16 kk + 8 (r >> 1) + 2t, +1 (common/fragment_layout.h); rows past
  // the group are zero.
  uint32_t qf[KD][4];
  {
    const T* qb = static_cast<const T*>(p.q) + b * p.q_stride[0] + h0 * p.q_stride[1];
#pragma unroll
    for (int kk = 0; kk < KD; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r & 1);
        qf[kk][r] = row < rows_q ? load_pair<T>(qb + row * p.q_stride[1] + 16 * kk + 8 * (r >> 1) + 2 * t) : 0u;
      }
  }

  float o[OTW][4];  // this warp's O columns [ds * DW, (ds + 1) * DW), rows g and g + 8
#pragma unroll
  for (int i = 0; i < OTW; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float row_max[2] = {kNegInf, kNegInf}, row_sum[2] = {0.0f, 0.0f};  // row_sum: this thread's columns only

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int stage = nb % kStages;
    cp_async_wait_group<kStages - 2>();  // this thread's copies of block nb have landed
    __syncthreads();  // everyone's have, and every warp is done with block nb - 1 (its stage is free)
    if (nb + kStages - 1 < n_blocks) load_kv((nb + kStages - 1) % kStages, nb + kStages - 1);
    cp_async_commit_group();  // (empty groups near the end keep the wait count uniform)

    const int64_t k0 = lo + static_cast<int64_t>(nb) * BN + 16 * kg;  // this warp's first key
    if (k0 >= hi) continue;  // its keys are all past the split's end (last block only; uniform per warp)
    const T* tK = sK + stage * BN * D;
    const T* tV = sV + stage * BN * D;

    // S (16 x 16) = Q K^T over D: two independent accumulator chains per n tile (even / odd k steps).
    float s[2][2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) s[i][j][0] = s[i][j][1] = s[i][j][2] = s[i][j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t bf[4];
      attn::load_b_frags_nk<D>(bf, tK, 16 * kg, kk, lane);
      const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
      mma_m16n8k16<T>(s[kk & 1][0], qf[kk], b0, s[kk & 1][0]);
      mma_m16n8k16<T>(s[kk & 1][1], qf[kk], b1, s[kk & 1][1]);
    }
    float mx[2] = {row_max[0], row_max[1]};
    float sc[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t col = k0 + nt * 8 + 2 * t + (i & 1);
        const float x = col < hi ? (s[0][nt][i] + s[1][nt][i]) * p.scale_log2 : kNegInf;  // past hi: hidden
        sc[nt][i] = x;
        mx[i >> 1] = fmaxf(mx[i >> 1], x);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = attn::quad_max(mx[r]);
      m_use[r] = mx[r] == kNegInf ? 0.0f : mx[r];  // a row with no key yet: exp2(-inf - 0) = 0, never NaN
      alpha[r] = exp2f(row_max[r] - m_use[r]);
      row_max[r] = mx[r];
      row_sum[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float e = exp2f(sc[nt][i] - m_use[i >> 1]);
        sc[nt][i] = e;
        row_sum[i >> 1] += e;
      }
#pragma unroll
    for (int ot = 0; ot < OTW; ++ot) {
      o[ot][0] *= alpha[0];
      o[ot][1] *= alpha[0];
      o[ot][2] *= alpha[1];
      o[ot][3] *= alpha[1];
    }
    // O += P V: P (16 rows x this warp's 16 keys) is the A fragment of one k step.
    const uint32_t pa[4] = {pack2<T>(sc[0][0], sc[0][1]), pack2<T>(sc[0][2], sc[0][3]), pack2<T>(sc[1][0], sc[1][1]),
                            pack2<T>(sc[1][2], sc[1][3])};
#pragma unroll
    for (int np = 0; np < OTW / 2; ++np) {
      uint32_t bf[4];
      attn::load_b_frags_kn<D>(bf, tV, 16 * kg, ds * (OTW / 2) + np, lane);
      const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
      mma_m16n8k16<T>(o[2 * np], pa, b0, o[2 * np]);
      mma_m16n8k16<T>(o[2 * np + 1], pa, b1, o[2 * np + 1]);
    }
  }

  // Merge of the key groups through shared memory (the stages are free once every copy has landed and every
  // warp is past its last block). Per warp: O (16 x kMergeStride floats, row-padded against bank conflicts),
  // then m and l per row; then the per-(key group, row) weights 2^(m_kg - M) / L.
  cp_async_wait_all();
  __syncthreads();
  float* const sMerge = reinterpret_cast<float*>(smem_raw);
  constexpr int kWarpFloats = kRows * Cfg::kMergeStride + 2 * kRows;
  float* const sO = sMerge + warp * kWarpFloats;
  float* const sW = sMerge + Cfg::kWarps * kWarpFloats;  // (kKeyGroups, 16)
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
#pragma unroll
    for (int ot = 0; ot < OTW; ++ot) {
      sO[row * Cfg::kMergeStride + ot * 8 + 2 * t] = o[ot][2 * r];
      sO[row * Cfg::kMergeStride + ot * 8 + 2 * t + 1] = o[ot][2 * r + 1];
    }
    const float l = attn::quad_sum(row_sum[r]);
    if (t == 0) {
      sO[kRows * Cfg::kMergeStride + row] = row_max[r];
      sO[kRows * Cfg::kMergeStride + kRows + row] = l;
    }
  }
  __syncthreads();
  if (tid < kRows && tid < rows_q) {  // row statistics (the ds = 0 warps' copies: every ds has the same)
    float m = kNegInf;
    for (int j = 0; j < kKeyGroups; ++j) m = fmaxf(m, sMerge[j * kWarpFloats + kRows * Cfg::kMergeStride + tid]);
    const float m_use = m == kNegInf ? 0.0f : m;
    float l = 0.0f;
    for (int j = 0; j < kKeyGroups; ++j) {
      const float* st = sMerge + j * kWarpFloats + kRows * Cfg::kMergeStride;
      l += exp2f(st[tid] - m_use) * st[kRows + tid];  // NaN in a group's l (a NaN score) stays NaN
    }
    const float inv = l == 0.0f ? 0.0f : 1.0f / l;
    for (int j = 0; j < kKeyGroups; ++j)
      sW[j * kRows + tid] = exp2f(sMerge[j * kWarpFloats + kRows * Cfg::kMergeStride + tid] - m_use) * inv;
    if (!single)
      p.lse_part[(b * p.heads_q + h0 + tid) * p.num_splits + split] = l == 0.0f ? kNegInf : m + log2f(l);
  }
  __syncthreads();
  for (int i = tid; i < rows_q * D; i += kThreads) {  // consecutive threads: consecutive columns of a row
    const int row = i / D, c = i % D, cd = c / DW, cw = c % DW;
    float y = 0.0f;
#pragma unroll
    for (int j = 0; j < kKeyGroups; ++j)
      y += sW[j * kRows + row] * sMerge[(j + kKeyGroups * cd) * kWarpFloats + row * Cfg::kMergeStride + cw];
    const int64_t h = h0 + row;
    if (single) static_cast<T*>(p.out)[(b * p.heads_q + h) * D + c] = from_float<T>(y);
    else p.o_part[((b * p.heads_q + h) * p.num_splits + split) * D + c] = y;
  }
}

template <typename T>
__global__ void attn_decode_combine_kernel(const AttnDecodeParams p, int head_dim) {
  const int c = threadIdx.x;
  const int64_t h = blockIdx.x, b = blockIdx.y;
  const int64_t row = b * p.heads_q + h;
  const float* lse = p.lse_part + row * p.num_splits;
  float m = -__builtin_huge_valf();
  bool nan = false;  // a NaN partial (NaN in q or in a read key) makes the output NaN; fmaxf would drop it
  for (int s = 0; s < p.num_splits; ++s) {
    m = fmaxf(m, lse[s]);
    nan = nan || lse[s] != lse[s];
  }
  float num = nan ? __builtin_nanf("") : 0.0f, den = 0.0f;
  if (!nan && m != -__builtin_huge_valf()) {
    for (int s = 0; s < p.num_splits; ++s) {
      const float w = exp2f(lse[s] - m);  // 0 for an empty split
      den += w;
      num += w * p.o_part[(row * p.num_splits + s) * head_dim + c];  // an empty split's partial is 0
    }
  }
  const float y = nan ? num : (den == 0.0f ? 0.0f : num / den);
  if (c < head_dim) static_cast<T*>(p.out)[row * head_dim + c] = from_float<T>(y);
}

template <typename T, int D>
cudaError_t attn_decode_launch(const AttnDecodeParams& p, cudaStream_t stream) {
  using Cfg = AttnDecodeConfig<D>;
  if (p.split_len % Cfg::kBlockN != 0 || p.num_splits < 1 || p.batch > 65535) return cudaErrorInvalidValue;
  const int64_t row_tiles = (p.heads_q / p.heads_kv + Cfg::kRows - 1) / Cfg::kRows;
  if (p.heads_kv * row_tiles > 65535) return cudaErrorInvalidValue;
#if defined(__CUDACC__)
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(attn_decode_split_kernel<T, D>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(Cfg::kSmemBytes));
    if (err != cudaSuccess) return err;
  }
#endif
  const dim3 grid(static_cast<unsigned>(p.num_splits), static_cast<unsigned>(p.heads_kv * row_tiles),
                  static_cast<unsigned>(p.batch));
  FASTATTN_LAUNCH((attn_decode_split_kernel<T, D>), grid, Cfg::kThreads, Cfg::kSmemBytes, stream, p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.num_splits == 1) return err;
  const dim3 grid_c(static_cast<unsigned>(p.heads_q), static_cast<unsigned>(p.batch));
  FASTATTN_LAUNCH((attn_decode_combine_kernel<T>), grid_c, D, 0, stream, p, D);
  return cudaGetLastError();
}

}  // namespace fastattn
