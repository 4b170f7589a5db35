// Softmax forward with temperature: kernels and the per-dtype launcher template.
//
// Included only by instantiations/softmax_fwd_<dtype>.cu, which instantiate softmax_fwd_launch<T> once each.
//
// Math (per row r, all in fp32):
//   s    = inv_t[r] * log2(e)                 temperature and the exp -> exp2 change of base folded together
//   t_j  = x_j * s                            the row in the log2 domain
//   m    = max_j t_j                          fmaxf: NaN never wins the max
//   mu   = (m == -inf) ? 0 : m                why: an all -inf row must give exp2(-inf - 0) = 0, not NaN
//   e_j  = exp2(t_j - mu),  sum = sum_j e_j   sum >= 1 unless the row is all -inf (sum == 0) or has a NaN
//   y_j  = e_j * inv,  inv = (sum == 0) ? 0 : 1 / sum
//                                             all -inf row -> zeros; a NaN makes sum and so every y_j NaN
//   (+inf in a row gives inf - inf = NaN, as torch.softmax does.)
// exp2f and the division are the accurate (non fast-math) versions; subnormals are kept.
//
// Layout: x and y are (rows, n) with element stride 1 along n and int64 row strides. Each row is cut into a
// scalar head (up to the first 16-byte boundary), whole 16-byte chunks (one 128-bit load/store when x and y
// are equally aligned) and a scalar tail; see split_row in common/device_utils.cuh.
//
// Two kernels; the launcher picks by n (kChunk = 16 / sizeof(T): 4 for fp32, 8 for fp16/bf16):
//
// 1. softmax_fwd_regs_kernel<T, ROW_THREADS, K> -- the row is held in registers.
//    Grid: ceil(rows / rows_per_block) CTAs (capped, grid-stride over rows); block: 128 threads, a warp per row
//    (ROW_THREADS == 32, 4 rows per CTA), or ROW_THREADS threads per row (one row per CTA).
//    Thread `tid` of a row owns chunks tid, tid + ROW_THREADS, ... (K of them, coalesced across the row's
//    threads), plus head element tid and tail element tid when those exist.
//    Invariant: nchunk <= K * ROW_THREADS, guaranteed by the launcher's n <= K * ROW_THREADS * kChunk.
//    Global traffic: 1 read + 1 write of the row (the minimum); one exp2 per element; two row reductions.
//
// 2. softmax_fwd_two_pass_kernel<T, THREADS, UNROLL> -- rows too wide for registers (n > 4096 chunks).
//    Grid: one CTA of THREADS threads per row (grid-stride over rows).
//    Pass 1 streams the row keeping a per-thread online (max m, sum s): per batch of UNROLL chunks,
//      m' = max(m, batch max), s = s * exp2(m - mu(m')) + sum exp2(t - mu(m')), then the row merges the
//      per-thread pairs (max reduction, rescale, sum reduction).
//    Pass 2 re-reads the row and writes y.
//    Global traffic: 2 reads + 1 write of the row (the second read mostly hits L2 for rows of up to a few MB);
//    (1 + 1 / (UNROLL * kChunk)) + 1 exp2 per element.
#pragma once

#include <cstdint>

#include "common/device_utils.cuh"
#include "common/launch.cuh"
#include "softmax/softmax_fwd_launch.h"

namespace fastattn {
namespace softmax_detail {

constexpr int64_t kMaxGridX = 2147483647;  // grid-stride loops cover rows beyond this

// mu(m): the shift used in exp2(t - mu). Why: for m == -inf (all -inf row, or no element seen yet)
// exp2(-inf - (-inf)) would be NaN; shifting by 0 gives exp2(-inf) = 0 instead.
__device__ __forceinline__ float shift_of(float m) { return m == -INFINITY ? 0.f : m; }

// 1 / sum, except an all -inf row (sum == 0) gives 0 so that y = 0 * 0 = 0. A NaN sum stays NaN.
__device__ __forceinline__ float inverse_sum(float sum) { return sum == 0.f ? 0.f : 1.f / sum; }

__device__ __forceinline__ float row_scale(const SoftmaxFwdParams& p, int64_t row) {
  return (p.inv_temperature != nullptr ? p.inv_temperature[row] : p.inv_temp) * kLog2e;
}

template <typename T, int ROW_THREADS, int K>
__global__ void __launch_bounds__(ROW_THREADS < 128 ? 128 : ROW_THREADS)
    softmax_fwd_regs_kernel(const SoftmaxFwdParams p) {
  constexpr int kVec = kChunk<T>;
  constexpr int kRowsPerBlock = ROW_THREADS < 128 ? 128 / ROW_THREADS : 1;
  __shared__ float smem_max[ROW_THREADS / 32];
  __shared__ float smem_sum[ROW_THREADS / 32];

  const int tid = static_cast<int>(threadIdx.x) % ROW_THREADS;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / ROW_THREADS; row < p.rows;
       row += row_step) {
    const T* __restrict__ x = static_cast<const T*>(p.x) + row * p.x_row_stride;
    T* __restrict__ y = static_cast<T*>(p.y) + row * p.y_row_stride;
    const float s = row_scale(p, row);
    const RowSplit sp = split_row(x, y, p.n);
    const int64_t tail0 = sp.head + sp.nchunk * kVec;
    const bool has_head = tid < sp.head;
    const bool has_tail = tid < sp.tail;

    // Load and scale: t = x * s.
    float t_head = 0.f, t_tail = 0.f;
    float t[K][kVec];  // (K, kVec) fp32: chunk k of this thread is chunk index k * ROW_THREADS + tid
    float m = -INFINITY;
    if (has_head) {
      t_head = to_float(x[tid]) * s;
      m = fmaxf(m, t_head);
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = static_cast<int64_t>(k) * ROW_THREADS + tid;
      if (c < sp.nchunk) {  // why: the last chunks of the K * ROW_THREADS slots may lie past the row
        load_chunk(x + sp.head + c * kVec, sp.vectorized, t[k]);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          t[k][i] *= s;
          m = fmaxf(m, t[k][i]);
        }
      }
    }
    if (has_tail) {
      t_tail = to_float(x[tail0 + tid]) * s;
      m = fmaxf(m, t_tail);
    }
    const float mu = shift_of(row_allreduce<ROW_THREADS>(m, smem_max, MaxOp()));

    // Exponentiate in place and sum.
    float sum = 0.f;
    if (has_head) {
      t_head = exp2f(t_head - mu);
      sum += t_head;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (static_cast<int64_t>(k) * ROW_THREADS + tid < sp.nchunk) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          t[k][i] = exp2f(t[k][i] - mu);
          sum += t[k][i];
        }
      }
    }
    if (has_tail) {
      t_tail = exp2f(t_tail - mu);
      sum += t_tail;
    }
    const float inv = inverse_sum(row_allreduce<ROW_THREADS>(sum, smem_sum, SumOp()));

    // Normalise and store.
    if (has_head) y[tid] = from_float<T>(t_head * inv);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = static_cast<int64_t>(k) * ROW_THREADS + tid;
      if (c < sp.nchunk) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) t[k][i] *= inv;
        store_chunk(y + sp.head + c * kVec, sp.vectorized, t[k]);
      }
    }
    if (has_tail) y[tail0 + tid] = from_float<T>(t_tail * inv);
  }
}

// Online update of a thread's (m, sum) with `count` new values t[0..count) (already in the log2 domain).
template <int N>
__device__ __forceinline__ void online_update(float& m, float& sum, const float (&t)[N], int count) {
  float batch_max = -INFINITY;
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (i < count) batch_max = fmaxf(batch_max, t[i]);
  const float m_new = fmaxf(m, batch_max);
  const float mu = shift_of(m_new);
  // m == m_new (finite) rescales by exactly 1; m == -inf rescales by 0 (sum is then 0, or NaN which stays NaN).
  sum *= exp2f(m - mu);
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (i < count) sum += exp2f(t[i] - mu);
  m = m_new;
}

template <typename T, int THREADS, int UNROLL>
__global__ void __launch_bounds__(THREADS) softmax_fwd_two_pass_kernel(const SoftmaxFwdParams p) {
  constexpr int kVec = kChunk<T>;
  __shared__ float smem_max[THREADS / 32];
  __shared__ float smem_sum[THREADS / 32];

  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* __restrict__ x = static_cast<const T*>(p.x) + row * p.x_row_stride;
    T* __restrict__ y = static_cast<T*>(p.y) + row * p.y_row_stride;
    const float s = row_scale(p, row);
    const RowSplit sp = split_row(x, y, p.n);
    const int64_t tail0 = sp.head + sp.nchunk * kVec;
    const bool has_head = tid < sp.head;
    const bool has_tail = tid < sp.tail;

    // Pass 1: per-thread online (m, sum).
    float m = -INFINITY, sum = 0.f;
    if (has_head) {
      const float th[1] = {to_float(x[tid]) * s};
      online_update(m, sum, th, 1);
    }
    for (int64_t c0 = tid; c0 < sp.nchunk; c0 += static_cast<int64_t>(THREADS) * UNROLL) {
      float t[UNROLL * kVec];  // (UNROLL, kVec) fp32: chunks c0, c0 + THREADS, ...
      int count = 0;
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int64_t c = c0 + static_cast<int64_t>(u) * THREADS;
        if (c < sp.nchunk) {  // why: the last batch of the row may be partial
          float v[kVec];
          load_chunk(x + sp.head + c * kVec, sp.vectorized, v);
#pragma unroll
          for (int i = 0; i < kVec; ++i) t[u * kVec + i] = v[i] * s;
          count += kVec;  // chunks are filled in order u = 0, 1, ..., so the valid values are t[0..count)
        }
      }
      online_update(m, sum, t, count);
    }
    if (has_tail) {
      const float tt[1] = {to_float(x[tail0 + tid]) * s};
      online_update(m, sum, tt, 1);
    }

    // Merge the per-thread pairs: shift every sum to the row max, then add.
    const float mu = shift_of(row_allreduce<THREADS>(m, smem_max, MaxOp()));
    const float inv = inverse_sum(row_allreduce<THREADS>(sum * exp2f(m - mu), smem_sum, SumOp()));

    // Pass 2: recompute t = x * s from x (L2-resident for rows up to a few MB) and write y.
    if (has_head) y[tid] = from_float<T>(exp2f(to_float(x[tid]) * s - mu) * inv);
#pragma unroll 4
    for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
      float v[kVec];
      load_chunk(x + sp.head + c * kVec, sp.vectorized, v);
#pragma unroll
      for (int i = 0; i < kVec; ++i) v[i] = exp2f(v[i] * s - mu) * inv;
      store_chunk(y + sp.head + c * kVec, sp.vectorized, v);
    }
    if (has_tail) y[tail0 + tid] = from_float<T>(exp2f(to_float(x[tail0 + tid]) * s - mu) * inv);
  }
}

template <typename T, int ROW_THREADS, int K>
cudaError_t launch_regs(const SoftmaxFwdParams& p, cudaStream_t stream) {
  constexpr int kRowsPerBlock = ROW_THREADS < 128 ? 128 / ROW_THREADS : 1;
  const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const dim3 grid(static_cast<unsigned>(blocks < kMaxGridX ? blocks : kMaxGridX));
  FASTATTN_LAUNCH((softmax_fwd_regs_kernel<T, ROW_THREADS, K>), grid, ROW_THREADS * kRowsPerBlock, 0, stream, p);
  return cudaGetLastError();
}

template <typename T, int THREADS, int UNROLL>
cudaError_t launch_two_pass(const SoftmaxFwdParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.rows < kMaxGridX ? p.rows : kMaxGridX));
  FASTATTN_LAUNCH((softmax_fwd_two_pass_kernel<T, THREADS, UNROLL>), grid, THREADS, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace softmax_detail

// Kernel choice by row width n (fp32 / 16-bit widths in parentheses). K * kChunk <= 32 fp32 values per thread
// keeps the 1024-thread CTA under its 64-register limit without spills.
//   n <=    32 * kChunk   (128 /   256)  warp per row, 1 chunk per thread
//   n <=   128 * kChunk   (512 /  1024)  warp per row, 4 chunks per thread
//   n <=   512 * kChunk  (2048 /  4096)  128-thread CTA per row, 4 chunks per thread
//   n <=  1024 * kChunk  (4096 /  8192)  256-thread CTA per row
//   n <=  2048 * kChunk  (8192 / 16384)  512-thread CTA per row
//   n <=  4096 * kChunk (16384 / 32768)  1024-thread CTA per row
//   wider                                 two-pass, 1024-thread CTA per row
template <typename T>
cudaError_t softmax_fwd_launch(const SoftmaxFwdParams& p, cudaStream_t stream) {
  using namespace softmax_detail;
  if (p.rows == 0 || p.n == 0) return cudaSuccess;
  constexpr int64_t kVec = kChunk<T>;
  const int64_t n = p.n;
  if (n <= 32 * kVec) return launch_regs<T, 32, 1>(p, stream);
  if (n <= 128 * kVec) return launch_regs<T, 32, 4>(p, stream);
  if (n <= 512 * kVec) return launch_regs<T, 128, 4>(p, stream);
  if (n <= 1024 * kVec) return launch_regs<T, 256, 4>(p, stream);
  if (n <= 2048 * kVec) return launch_regs<T, 512, 4>(p, stream);
  if (n <= 4096 * kVec) return launch_regs<T, 1024, 4>(p, stream);
  return launch_two_pass<T, 1024, 16 / kChunk<T>>(p, stream);  // 16 fp32 values in flight per thread
}

}  // namespace fastattn
