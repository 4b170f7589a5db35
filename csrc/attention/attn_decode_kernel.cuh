// Decode attention kernels (flash-decoding) and the definition of attn_decode_launch<T, D>.
//
// attn_decode_split_kernel<T, D>
//   Grid (splits, Hkv * ceil(G / 16), B), one warp. The warp's 16 MMA rows are up to 16 query heads of one GQA
//   group (rows past the group are zero-filled and never written), so K and V of a KV head are read once for
//   the whole group. Keys [lo, hi) = [s * split_len, min((s + 1) * split_len, len)) with len the clamped cache
//   length, in blocks of 32 through a 2-stage cp.async pipeline (as the forward: prefetch block n + 1, wait for
//   block n, barrier, compute, barrier); key rows past hi are zero-filled, never read. Per block: S = Q K^T on
//   mma.m16n8k16, online softmax in log2 units (exp2, scale * log2 e folded in), O += P V (V by ldmatrix.trans).
//   One split: out = O / l in q's dtype (0 when the sequence is empty). Several: the normalised fp32 partial
//   and its log2-sum-exp (-inf for an empty split) go to o_part / lse_part.
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

constexpr int kDecodeKeyBlock = 32;

template <int D>
struct AttnDecodeConfig {
  static constexpr int kRows = 16;  // query heads per CTA (one MMA tile)
  static constexpr int kBlockN = kDecodeKeyBlock;
  static constexpr int kThreads = 32;
  static constexpr size_t kSmemBytes = static_cast<size_t>(kRows + 4 * kBlockN) * D * 2;
};

template <typename T, int D>
__global__ void __launch_bounds__(32, 1) attn_decode_split_kernel(const AttnDecodeParams p) {
  using Cfg = AttnDecodeConfig<D>;
  constexpr int BN = Cfg::kBlockN, kRows = Cfg::kRows, kThreads = Cfg::kThreads;
  constexpr int KD = D / 16, NT = BN / 8, KS = BN / 16, OT = D / 8;
  constexpr float kNegInf = -__builtin_huge_valf();

  FASTATTN_DYNAMIC_SHARED(uint16_t, smem_raw);
  T* const sQ = reinterpret_cast<T*>(smem_raw);
  T* const sK = sQ + kRows * D;
  T* const sV = sK + 2 * BN * D;

  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
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

  const int64_t rows[2] = {g, g + 8};  // rows (query heads h0 + row) this thread holds
  if (n_blocks == 0) {  // empty split / sequence (uniform over the CTA)
    for (int r = 0; r < 2; ++r) {
      if (rows[r] >= rows_q) continue;
      const int64_t h = h0 + rows[r];
      for (int c = t; c < D; c += 4) {
        if (single) static_cast<T*>(p.out)[(b * p.heads_q + h) * D + c] = from_float<T>(0.0f);
        else p.o_part[((b * p.heads_q + h) * p.num_splits + split) * D + c] = 0.0f;
      }
      if (!single && t == 0) p.lse_part[(b * p.heads_q + h) * p.num_splits + split] = kNegInf;
    }
    return;
  }

  const T* qb = static_cast<const T*>(p.q) + b * p.q_stride[0] + h0 * p.q_stride[1];
  const T* kb = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* vb = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  auto load_kv = [&](int stage, int nb) {
    const int64_t n0 = lo + static_cast<int64_t>(nb) * BN;
    const int valid = static_cast<int>(hi - n0 < BN ? hi - n0 : BN);
    attn::load_tile_async<T, BN, D, kThreads>(sK + stage * BN * D, kb + n0 * p.k_stride[2], p.k_stride[2], valid,
                                              lane);
    attn::load_tile_async<T, BN, D, kThreads>(sV + stage * BN * D, vb + n0 * p.v_stride[2], p.v_stride[2], valid,
                                              lane);
  };
  attn::load_tile_async<T, kRows, D, kThreads>(sQ, qb, p.q_stride[1], rows_q, lane);
  cp_async_commit_group();
  load_kv(0, 0);
  cp_async_commit_group();

  float o[OT][4];
#pragma unroll
  for (int i = 0; i < OT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float row_max[2] = {kNegInf, kNegInf}, row_sum[2] = {0.0f, 0.0f};

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int stage = nb & 1;
    if (nb + 1 < n_blocks) load_kv(stage ^ 1, nb + 1);
    cp_async_commit_group();
    cp_async_wait_group<1>();  // Q and block nb have landed
    __syncwarp();
    const T* tK = sK + stage * BN * D;
    const T* tV = sV + stage * BN * D;
    const int64_t n0 = lo + static_cast<int64_t>(nb) * BN;

    float s[NT][4];
#pragma unroll
    for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t a_reg[4];
      attn::load_a_frag<D>(a_reg, sQ, 0, kk, lane);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bf[4];
        attn::load_b_frags_nk<D>(bf, tK, np * 16, kk, lane);
        const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
        mma_m16n8k16<T>(s[2 * np], a_reg, b0, s[2 * np]);
        mma_m16n8k16<T>(s[2 * np + 1], a_reg, b1, s[2 * np + 1]);
      }
    }
    float mx[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t col = n0 + nt * 8 + 2 * t + (i & 1);
        const float x = col < hi ? s[nt][i] * p.scale_log2 : kNegInf;  // keys past the split / length hidden
        s[nt][i] = x;
        mx[i >> 1] = fmaxf(mx[i >> 1], x);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = attn::quad_max(mx[r]);
      m_use[r] = mx[r] == kNegInf ? 0.0f : mx[r];
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
#pragma unroll
    for (int ot = 0; ot < OT; ++ot) {
      o[ot][0] *= alpha[0];
      o[ot][1] *= alpha[0];
      o[ot][2] *= alpha[1];
      o[ot][3] *= alpha[1];
    }
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
    __syncwarp();  // the stage is free for the copies of block nb + 2
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = attn::quad_sum(row_sum[r]);
    const float inv = l == 0.0f ? 0.0f : 1.0f / l;
    if (rows[r] >= rows_q) continue;
    const int64_t h = h0 + rows[r];
    if (single) {
      T* orow = static_cast<T*>(p.out) + (b * p.heads_q + h) * D;
#pragma unroll
      for (int ot = 0; ot < OT; ++ot)
        *reinterpret_cast<uint32_t*>(orow + ot * 8 + 2 * t) = pack2<T>(o[ot][2 * r] * inv, o[ot][2 * r + 1] * inv);
    } else {
      float* orow = p.o_part + ((b * p.heads_q + h) * p.num_splits + split) * D;
#pragma unroll
      for (int ot = 0; ot < OT; ++ot) {
        orow[ot * 8 + 2 * t] = o[ot][2 * r] * inv;
        orow[ot * 8 + 2 * t + 1] = o[ot][2 * r + 1] * inv;
      }
      if (t == 0)
        p.lse_part[(b * p.heads_q + h) * p.num_splits + split] = l == 0.0f ? kNegInf : row_max[r] + log2f(l);
    }
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
