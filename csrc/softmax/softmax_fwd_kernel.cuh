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
//
// 3. Row split (softmax_split.h), for few wide rows (rows <= 32, n >= 16384): grid (splits, rows), 512 threads.
//    softmax_fwd_split_stats_kernel: piece blockIdx.x of row blockIdx.y streams its piece with the online
//      (m, sum) of pass 1 above and writes (m, sum relative to shift_of(m)) to workspace[2 * (row * splits +
//      piece)].
//    softmax_fwd_split_norm_kernel: every CTA of the row combines the row's `splits` pairs in piece order
//      (bitwise the same (mu, inv) in each), then re-reads its piece and writes y.
//    Global traffic as the two-pass kernel (2 reads + 1 write), spread over rows * splits CTAs instead of rows.
//
// 4. softmax_fwd_cluster_kernel<T, THREADS> (sm_90 only; v3): rows too wide for one CTA's registers, held
//    whole in the distributed shared memory of a thread-block cluster (common/cluster.cuh).
//    Grid: clusters of `csize` CTAs (2, 4 or 8: softmax_cluster::plan) along x, one cluster per row (grid-stride
//    over rows); block: THREADS threads. CTA `rank` owns the contiguous piece [rank * piece, + piece) of the row
//    (piece a multiple of 8 elements, so every piece starts at the row's 16-byte phase) and keeps it in its
//    dynamic shared memory as fp32 t = x * s.
//    Dynamic shared memory (floats): [0, 16) slots_max, [16, 32) slots_sum (one per rank: the partials pushed
//    by every CTA of the cluster, st.shared::cluster), [32, 64) and [64, 96) the block reductions' warp partials,
//    [96, 96 + piece) the piece (chunks first, then the head and tail scalars).
//    Per row: load the piece (x read once) and its max -> push the max to every CTA's slots_max[rank] ->
//    cluster barrier -> row max from the slots in rank order (the same bits in every CTA) -> e = exp2(t - mu)
//    in place and the piece sum -> push to slots_sum[rank] -> cluster barrier -> total in rank order -> y = e *
//    inv (y written once). After the second barrier no CTA touches a peer's memory, so a CTA may exit (or
//    reuse its slots for the next row) without a third barrier.
//    Global traffic: 1 read + 1 write of the row (the minimum) at any row count; one exp2 per element; two
//    cluster barriers per row.
#pragma once

#include <cstdint>

#include "common/cluster.cuh"
#include "common/device_utils.cuh"
#include "common/launch.cuh"
#include "softmax/softmax_cluster.h"
#include "softmax/softmax_fwd_launch.h"
#include "softmax/softmax_split.h"

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

// Online (m, sum) of this thread over elements [0, len) of one piece (as pass 1 of the two-pass kernel).
template <typename T, int THREADS>
__device__ __forceinline__ void piece_stats(const T* __restrict__ x, const T* y, int64_t len, float s, int tid,
                                            float& m, float& sum) {
  constexpr int kVec = kChunk<T>;
  const RowSplit sp = split_row(x, y, len);
  if (tid < sp.head) {
    const float th[1] = {to_float(x[tid]) * s};
    online_update(m, sum, th, 1);
  }
#pragma unroll 2
  for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
    float v[kVec];
    load_chunk(x + sp.head + c * kVec, sp.vectorized, v);
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] *= s;
    online_update(m, sum, v, kVec);
  }
  if (tid < sp.tail) {
    const float tt[1] = {to_float(x[sp.head + sp.nchunk * kVec + tid]) * s};
    online_update(m, sum, tt, 1);
  }
}

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS) softmax_fwd_split_stats_kernel(const SoftmaxFwdParams p, int64_t chunk) {
  __shared__ float smem_max[THREADS / 32];
  __shared__ float smem_sum[THREADS / 32];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = blockIdx.y, piece = blockIdx.x;
  const int64_t j0 = piece * chunk;
  const int64_t len = (p.n - j0 < chunk) ? p.n - j0 : chunk;
  const T* x = static_cast<const T*>(p.x) + row * p.x_row_stride + j0;
  const T* y = static_cast<const T*>(p.y) + row * p.y_row_stride + j0;
  float m = -INFINITY, sum = 0.f;
  piece_stats<T, THREADS>(x, y, len, row_scale(p, row), tid, m, sum);
  const float mb = row_allreduce<THREADS>(m, smem_max, MaxOp());
  const float sb = row_allreduce<THREADS>(sum * exp2f(m - shift_of(mb)), smem_sum, SumOp());
  if (tid == 0) {
    float* w = p.workspace + 2 * (row * gridDim.x + piece);
    w[0] = mb;
    w[1] = sb;
  }
}

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS) softmax_fwd_split_norm_kernel(const SoftmaxFwdParams p, int64_t chunk) {
  constexpr int kVec = kChunk<T>;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = blockIdx.y, piece = blockIdx.x;
  const float* w = p.workspace + 2 * row * gridDim.x;
  float m = -INFINITY;
  for (unsigned i = 0; i < gridDim.x; ++i) m = fmaxf(m, w[2 * i]);
  const float mu = shift_of(m);
  float total = 0.f;
  for (unsigned i = 0; i < gridDim.x; ++i) {
    // Piece sums are relative to shift_of(their max). An empty (all -inf) piece adds exactly 0, never
    // 0 * exp2(0 - mu), which is 0 * inf = NaN for a very negative mu; a NaN sum stays NaN.
    const float si = w[2 * i + 1];
    total += si == 0.f ? 0.f : si * exp2f(shift_of(w[2 * i]) - mu);
  }
  const float inv = inverse_sum(total);
  const float s = row_scale(p, row);
  const int64_t j0 = piece * chunk;
  const int64_t len = (p.n - j0 < chunk) ? p.n - j0 : chunk;
  const T* __restrict__ x = static_cast<const T*>(p.x) + row * p.x_row_stride + j0;
  T* __restrict__ y = static_cast<T*>(p.y) + row * p.y_row_stride + j0;
  const RowSplit sp = split_row(x, y, len);
  if (tid < sp.head) y[tid] = from_float<T>(exp2f(to_float(x[tid]) * s - mu) * inv);
#pragma unroll 2
  for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
    float v[kVec];
    load_chunk(x + sp.head + c * kVec, sp.vectorized, v);
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = exp2f(v[i] * s - mu) * inv;
    store_chunk(y + sp.head + c * kVec, sp.vectorized, v);
  }
  const int64_t tail0 = sp.head + sp.nchunk * kVec;
  if (tid < sp.tail) y[tail0 + tid] = from_float<T>(exp2f(to_float(x[tail0 + tid]) * s - mu) * inv);
}

// ---- v3: the row in a cluster's distributed shared memory (sm_90; plan in softmax_cluster.h) ------------------
constexpr int kClusterThreads = softmax_cluster::kThreads;
constexpr int kClusterSlots = softmax_cluster::kSlots;
constexpr int64_t kClusterHeaderFloats = 96;  // slots_max, slots_sum, two warp-partial buffers

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS) softmax_fwd_cluster_kernel(const SoftmaxFwdParams p, int64_t piece) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  constexpr int kVec = kChunk<T>;
  static_assert(THREADS >= kClusterSlots && THREADS <= 1024 && kVec % 4 == 0, "cluster kernel shape");
  FASTATTN_DYNAMIC_SHARED(float, smem);
  float* const slots_max = smem;
  float* const slots_sum = smem + kClusterSlots;
  float* const red_max = smem + 2 * kClusterSlots;
  float* const red_sum = smem + 2 * kClusterSlots + 32;
  float* const data = smem + kClusterHeaderFloats;  // 16-byte aligned

  const unsigned rank = cluster::ctarank(), csize = cluster::nctarank();
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t j0 = static_cast<int64_t>(rank) * piece;
  const int64_t len = p.n - j0 >= piece ? piece : (p.n > j0 ? p.n - j0 : 0);  // the last pieces may be short
  const int64_t nclusters = gridDim.x / csize;
  for (int64_t row = blockIdx.x / csize; row < p.rows; row += nclusters) {
    const T* __restrict__ x = static_cast<const T*>(p.x) + row * p.x_row_stride + j0;
    T* __restrict__ y = static_cast<T*>(p.y) + row * p.y_row_stride + j0;
    const float s = row_scale(p, row);
    const RowSplit sp = split_row(x, y, len);
    const int64_t tail0 = sp.head + sp.nchunk * kVec;
    float* const scalars = data + sp.nchunk * kVec;  // head elements, then tail elements
    const bool has_head = tid < sp.head;
    const bool has_tail = tid < sp.tail;

    // Load the piece once: t = x * s into shared memory, and its max.
    float m = -INFINITY;
    if (has_head) {
      const float t = to_float(x[tid]) * s;
      scalars[tid] = t;
      m = fmaxf(m, t);
    }
#pragma unroll 4
    for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
      float v[kVec];
      load_chunk(x + sp.head + c * kVec, sp.vectorized, v);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        v[i] *= s;
        m = fmaxf(m, v[i]);
      }
#pragma unroll
      for (int i = 0; i < kVec; i += 4)
        *reinterpret_cast<float4*>(data + c * kVec + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
    }
    if (has_tail) {
      const float t = to_float(x[tail0 + tid]) * s;
      scalars[sp.head + tid] = t;
      m = fmaxf(m, t);
    }
    const float piece_max = row_allreduce<THREADS>(m, red_max, MaxOp());
    if (tid < static_cast<int>(csize)) cluster::map_shared_rank(slots_max, tid)[rank] = piece_max;
    cluster::sync();  // every CTA's max is in every CTA's slots_max
    float row_max = -INFINITY;
    for (unsigned r = 0; r < csize; ++r) row_max = fmaxf(row_max, slots_max[r]);
    const float mu = shift_of(row_max);

    // e = exp2(t - mu) in place, and the piece's sum.
    float sum = 0.f;
    if (has_head) {
      const float e = exp2f(scalars[tid] - mu);
      scalars[tid] = e;
      sum += e;
    }
#pragma unroll 4
    for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
#pragma unroll
      for (int i = 0; i < kVec; i += 4) {
        float4 v = *reinterpret_cast<const float4*>(data + c * kVec + i);
        v.x = exp2f(v.x - mu);
        v.y = exp2f(v.y - mu);
        v.z = exp2f(v.z - mu);
        v.w = exp2f(v.w - mu);
        sum += (v.x + v.y) + (v.z + v.w);
        *reinterpret_cast<float4*>(data + c * kVec + i) = v;
      }
    }
    if (has_tail) {
      const float e = exp2f(scalars[sp.head + tid] - mu);
      scalars[sp.head + tid] = e;
      sum += e;
    }
    const float piece_sum = row_allreduce<THREADS>(sum, red_sum, SumOp());
    if (tid < static_cast<int>(csize)) cluster::map_shared_rank(slots_sum, tid)[rank] = piece_sum;
    cluster::sync();  // every CTA's sum is in every CTA's slots_sum; no peer access follows in this row
    float total = 0.f;
    for (unsigned r = 0; r < csize; ++r) total += slots_sum[r];
    const float inv = inverse_sum(total);

    // y = e * inv: the row's only write.
    if (has_head) y[tid] = from_float<T>(scalars[tid] * inv);
#pragma unroll 4
    for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
      float v[kVec];
#pragma unroll
      for (int i = 0; i < kVec; i += 4) {
        const float4 e = *reinterpret_cast<const float4*>(data + c * kVec + i);
        v[i] = e.x * inv;
        v[i + 1] = e.y * inv;
        v[i + 2] = e.z * inv;
        v[i + 3] = e.w * inv;
      }
      store_chunk(y + sp.head + c * kVec, sp.vectorized, v);
    }
    if (has_tail) y[tail0 + tid] = from_float<T>(scalars[sp.head + tid] * inv);
    // Why: the next row's head/tail split may differ (row strides change the alignment), so its loads could
    // overwrite elements other threads of this CTA are still storing.
    __syncthreads();
  }
#else
  (void)p;
  (void)piece;
  __trap();  // sm_80 and older: no clusters (softmax_fwd_launch never picks this kernel there)
#endif
}

template <typename T>
cudaError_t launch_cluster(const SoftmaxFwdParams& p, const softmax_cluster::Plan& plan, cudaStream_t stream) {
  const int64_t clusters_max = kMaxGridX / plan.csize;
  const int64_t clusters = p.rows < clusters_max ? p.rows : clusters_max;
  const dim3 grid(static_cast<unsigned>(clusters * plan.csize));
  const size_t smem = static_cast<size_t>(kClusterHeaderFloats + plan.piece) * sizeof(float);
  FASTATTN_LAUNCH_CLUSTER((softmax_fwd_cluster_kernel<T, kClusterThreads>), grid, kClusterThreads,
                          dim3(plan.csize, 1, 1), smem, stream, p, plan.piece);
  return cudaGetLastError();
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
//   wider, sm_90, n <= 393,216            a cluster of 2-8 CTAs per row, the row in their shared memory (v3)
//   wider                                 row split when softmax_split::plan says so (<= 32 rows),
//                                         else two-pass, 1024-thread CTA per row
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
  if (softmax_cluster::enabled()) {  // sm_90: the whole row in a cluster's shared memory (v3)
    const softmax_cluster::Plan cplan = softmax_cluster::plan(n, sizeof(float));  // the piece is kept as fp32
    if (cplan.csize > 0) return launch_cluster<T>(p, cplan, stream);
  }
  const softmax_split::Plan plan = softmax_split::plan(p.rows, n);
  if (plan.splits > 1 && p.workspace != nullptr) {  // few wide rows: each row over several CTAs
    const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(p.rows));
    FASTATTN_LAUNCH((softmax_fwd_split_stats_kernel<T, 512>), grid, 512, 0, stream, p, plan.chunk);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    FASTATTN_LAUNCH((softmax_fwd_split_norm_kernel<T, 512>), grid, 512, 0, stream, p, plan.chunk);
    return cudaGetLastError();
  }
  return launch_two_pass<T, 1024, 16 / kChunk<T>>(p, stream);  // 16 fp32 values in flight per thread
}

}  // namespace fastattn
