// Softmax backward with temperature: kernels and the per-dtype launcher template.
//
// Included only by instantiations/softmax_bwd_<dtype>.cu.
//
// Math (per row r, fp32): dot = sum_j dy_j * y_j;  dx_j = y_j * (dy_j - dot) * inv_t[r].
// Nothing to special-case: an all -inf forward row has y == 0, hence dx == 0; a NaN anywhere makes dot NaN and
// so the whole row NaN (as the reference).
//
// Layout: dy, y, dx are (rows, n), element stride 1, int64 row strides. A row is cut into a scalar head (up to
// the first 16-byte boundary of y), whole 16-byte chunks and a scalar tail (split3 below); the chunks use one
// 128-bit access per tensor when all three rows share y's offset modulo 16 bytes, else element accesses.
//
// Three schemes; the launcher picks by (rows, n):
//
// 1. softmax_bwd_regs_kernel<T, ROW_THREADS, K>: dy and y held in registers as raw 16-byte chunks (K each per
//    thread, K * kChunk <= 16 values per tensor), one read of dy and y and one write of dx (the minimum).
//    Grid: ceil(rows / rows_per_block) CTAs (capped, grid-stride); block 128 threads: a warp per row
//    (ROW_THREADS == 32) or ROW_THREADS threads per row. Thread tid owns chunks tid, tid + ROW_THREADS, ...
//    Invariant: nchunk <= K * ROW_THREADS (the launcher's n bound).
// 2. softmax_bwd_two_pass_kernel<T, THREADS>: wider rows, one CTA per row. Pass 1 streams dy and y for the dot,
//    pass 2 re-reads them (mostly L2 hits) and writes dx: 2 + 2 reads, 1 write.
// 3. Row split (softmax_split.h): few wide rows. softmax_bwd_partial_kernel: grid (splits, rows), each CTA
//    writes the dot of its piece to workspace[row * splits + piece]; softmax_bwd_apply_kernel: same grid, each
//    CTA sums the row's partials in piece order and writes dx for its piece. Same traffic as 2, spread over
//    rows * splits CTAs.
// 4. softmax_bwd_cluster_kernel<T, THREADS> (sm_90 only; v3): rows wider than registers held in the
//    distributed shared memory of a cluster of 2, 4 or 8 CTAs (softmax_cluster.h; as the forward's kernel 4).
//    CTA `rank` copies its piece of dy and y (raw, in T: 2 * sizeof(T) bytes per element) into its dynamic
//    shared memory while summing dy * y, pushes the piece's dot into every CTA's slot `rank`
//    (st.shared::cluster), one cluster barrier, the row's dot from the slots in rank order, dx from shared
//    memory. Slots alternate between two sets by row parity: a peer may push the next row's dot before this CTA
//    has read this row's (it cannot push the row after, which needs this CTA at the next barrier).
//    Dynamic shared memory: 64 floats (2 x 16 slots, 32 warp partials), then dy's piece, then y's.
//    Global traffic: 1 read of dy and y, 1 write of dx (the minimum); one cluster barrier per row.
#pragma once

#include <cstdint>

#include "common/cluster.cuh"
#include "common/device_utils.cuh"
#include "common/launch.cuh"
#include "softmax/softmax_cluster.h"
#include "softmax/softmax_bwd_launch.h"
#include "softmax/softmax_split.h"

namespace fastattn {
namespace softmax_bwd_detail {

constexpr int64_t kMaxGridX = 2147483647;

// RowSplit for three rows: vectorized only when dy, y and dx have the same offset modulo 16 bytes.
template <typename T>
__device__ __forceinline__ RowSplit split3(const T* dy, const T* y, const T* dx, int64_t n) {
  const auto a = static_cast<unsigned>(reinterpret_cast<uintptr_t>(y) % 16);
  RowSplit s = split_row(y, dx, n);
  if (static_cast<unsigned>(reinterpret_cast<uintptr_t>(dy) % 16) != a) {
    s.vectorized = false;
    s.head = 0;
    s.nchunk = n / kChunk<T>;
    s.tail = static_cast<int>(n - s.nchunk * kChunk<T>);
  }
  return s;
}

// A chunk kept raw in registers (4 registers whatever the dtype: 16-bit rows need half the registers of fp32
// values), converted to fp32 where it is used.
template <typename T>
__device__ __forceinline__ uint4 load_raw(const T* __restrict__ p, bool vectorized) {
  uint4 raw;
  if (vectorized) {
    raw = *reinterpret_cast<const uint4*>(p);
  } else if constexpr (sizeof(T) == 4) {  // built lane by lane: no local-memory round trip
    raw.x = __float_as_uint(to_float(p[0]));
    raw.y = __float_as_uint(to_float(p[1]));
    raw.z = __float_as_uint(to_float(p[2]));
    raw.w = __float_as_uint(to_float(p[3]));
  } else {
    T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < kChunk<T>; ++i) v[i] = p[i];
  }
  return raw;
}
template <typename T>
__device__ __forceinline__ float raw_at(const uint4& raw, int i) {
  return to_float(reinterpret_cast<const T*>(&raw)[i]);
}

__device__ __forceinline__ float row_inv_t(const SoftmaxBwdParams& p, int64_t row) {
  return p.inv_temperature != nullptr ? p.inv_temperature[row] : p.inv_temp;
}

template <typename T, int ROW_THREADS, int K>
__global__ void __launch_bounds__(ROW_THREADS < 128 ? 128 : ROW_THREADS, ROW_THREADS < 128 ? 4 : 1)
    softmax_bwd_regs_kernel(const SoftmaxBwdParams p) {
  constexpr int kVec = kChunk<T>;
  constexpr int kRowsPerBlock = ROW_THREADS < 128 ? 128 / ROW_THREADS : 1;
  __shared__ float smem_dot[ROW_THREADS / 32];

  const int tid = static_cast<int>(threadIdx.x) % ROW_THREADS;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / ROW_THREADS; row < p.rows;
       row += row_step) {
    const T* __restrict__ dy = static_cast<const T*>(p.dy) + row * p.dy_row_stride;
    const T* __restrict__ y = static_cast<const T*>(p.y) + row * p.y_row_stride;
    T* __restrict__ dx = static_cast<T*>(p.dx) + row * p.dx_row_stride;
    const RowSplit sp = split3(dy, y, dx, p.n);
    const int64_t tail0 = sp.head + sp.nchunk * kVec;
    const bool has_head = tid < sp.head;
    const bool has_tail = tid < sp.tail;

    float g_head = 0.f, y_head = 0.f, g_tail = 0.f, y_tail = 0.f;
    uint4 g[K], yv[K];  // raw chunks; chunk k of this thread is chunk k * ROW_THREADS + tid
    float dot = 0.f;
    if (has_head) {
      g_head = to_float(dy[tid]);
      y_head = to_float(y[tid]);
      dot += g_head * y_head;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = static_cast<int64_t>(k) * ROW_THREADS + tid;
      if (c < sp.nchunk) {  // why: the last of the K * ROW_THREADS slots may lie past the row
        g[k] = load_raw(dy + sp.head + c * kVec, sp.vectorized);
        yv[k] = load_raw(y + sp.head + c * kVec, sp.vectorized);
#pragma unroll
        for (int i = 0; i < kVec; ++i) dot += raw_at<T>(g[k], i) * raw_at<T>(yv[k], i);
      }
    }
    if (has_tail) {
      g_tail = to_float(dy[tail0 + tid]);
      y_tail = to_float(y[tail0 + tid]);
      dot += g_tail * y_tail;
    }
    dot = row_allreduce<ROW_THREADS>(dot, smem_dot, SumOp());
    const float it = row_inv_t(p, row);

    if (has_head) dx[tid] = from_float<T>(y_head * (g_head - dot) * it);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = static_cast<int64_t>(k) * ROW_THREADS + tid;
      if (c < sp.nchunk) {
        float out[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] = raw_at<T>(yv[k], i) * (raw_at<T>(g[k], i) - dot) * it;
        store_chunk(dx + sp.head + c * kVec, sp.vectorized, out);
      }
    }
    if (has_tail) dx[tail0 + tid] = from_float<T>(y_tail * (g_tail - dot) * it);
    if constexpr (ROW_THREADS > 32) __syncthreads();  // why: smem_dot is rewritten by the next row's reduction
  }
}

// Thread tid's part of sum(dy * y) over elements [0, n) of one (piece of a) row, THREADS threads.
template <typename T, int THREADS>
__device__ __forceinline__ float partial_dot(const T* __restrict__ dy, const T* __restrict__ y, const T* dx,
                                             int64_t n, int tid) {
  constexpr int kVec = kChunk<T>;
  const RowSplit sp = split3(dy, y, dx, n);
  float dot = 0.f;
  if (tid < sp.head) dot += to_float(dy[tid]) * to_float(y[tid]);
#pragma unroll 2
  for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
    float a[kVec], b[kVec];
    load_chunk(dy + sp.head + c * kVec, sp.vectorized, a);
    load_chunk(y + sp.head + c * kVec, sp.vectorized, b);
#pragma unroll
    for (int i = 0; i < kVec; ++i) dot += a[i] * b[i];
  }
  const int64_t tail0 = sp.head + sp.nchunk * kVec;
  if (tid < sp.tail) dot += to_float(dy[tail0 + tid]) * to_float(y[tail0 + tid]);
  return dot;
}

// dx = y * (dy - dot) * it over elements [0, n) of one (piece of a) row.
template <typename T, int THREADS>
__device__ __forceinline__ void apply(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                      int64_t n, int tid, float dot, float it) {
  constexpr int kVec = kChunk<T>;
  const RowSplit sp = split3(dy, y, dx, n);
  if (tid < sp.head) dx[tid] = from_float<T>(to_float(y[tid]) * (to_float(dy[tid]) - dot) * it);
#pragma unroll 2
  for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
    float a[kVec], b[kVec];
    load_chunk(dy + sp.head + c * kVec, sp.vectorized, a);
    load_chunk(y + sp.head + c * kVec, sp.vectorized, b);
#pragma unroll
    for (int i = 0; i < kVec; ++i) a[i] = b[i] * (a[i] - dot) * it;
    store_chunk(dx + sp.head + c * kVec, sp.vectorized, a);
  }
  const int64_t tail0 = sp.head + sp.nchunk * kVec;
  if (tid < sp.tail) {
    const int64_t j = tail0 + tid;
    dx[j] = from_float<T>(to_float(y[j]) * (to_float(dy[j]) - dot) * it);
  }
}

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS) softmax_bwd_two_pass_kernel(const SoftmaxBwdParams p) {
  __shared__ float smem_dot[THREADS / 32];
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* dy = static_cast<const T*>(p.dy) + row * p.dy_row_stride;
    const T* y = static_cast<const T*>(p.y) + row * p.y_row_stride;
    T* dx = static_cast<T*>(p.dx) + row * p.dx_row_stride;
    const float dot = row_allreduce<THREADS>(partial_dot<T, THREADS>(dy, y, dx, p.n, tid), smem_dot, SumOp());
    apply<T, THREADS>(dy, y, dx, p.n, tid, dot, row_inv_t(p, row));
    __syncthreads();  // why: smem_dot is rewritten by the next row's reduction
  }
}

// Grid (splits, rows): piece blockIdx.x of row blockIdx.y.
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS) softmax_bwd_partial_kernel(const SoftmaxBwdParams p, int64_t chunk) {
  __shared__ float smem_dot[THREADS / 32];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = blockIdx.y, piece = blockIdx.x;
  const int64_t j0 = piece * chunk;
  const int64_t len = (p.n - j0 < chunk) ? p.n - j0 : chunk;
  const T* dy = static_cast<const T*>(p.dy) + row * p.dy_row_stride + j0;
  const T* y = static_cast<const T*>(p.y) + row * p.y_row_stride + j0;
  const T* dx = static_cast<const T*>(p.dx) + row * p.dx_row_stride + j0;
  const float dot = row_allreduce<THREADS>(partial_dot<T, THREADS>(dy, y, dx, len, tid), smem_dot, SumOp());
  if (tid == 0) p.workspace[row * gridDim.x + piece] = dot;
}

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS) softmax_bwd_apply_kernel(const SoftmaxBwdParams p, int64_t chunk) {
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = blockIdx.y, piece = blockIdx.x;
  float dot = 0.f;
  for (unsigned s = 0; s < gridDim.x; ++s) dot += p.workspace[row * gridDim.x + s];  // fixed order
  const int64_t j0 = piece * chunk;
  const int64_t len = (p.n - j0 < chunk) ? p.n - j0 : chunk;
  apply<T, THREADS>(static_cast<const T*>(p.dy) + row * p.dy_row_stride + j0,
                    static_cast<const T*>(p.y) + row * p.y_row_stride + j0,
                    static_cast<T*>(p.dx) + row * p.dx_row_stride + j0, len, tid, dot, row_inv_t(p, row));
}

template <typename T, int ROW_THREADS, int K>
cudaError_t launch_regs(const SoftmaxBwdParams& p, cudaStream_t stream) {
  constexpr int kRowsPerBlock = ROW_THREADS < 128 ? 128 / ROW_THREADS : 1;
  const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const dim3 grid(static_cast<unsigned>(blocks < kMaxGridX ? blocks : kMaxGridX));
  FASTATTN_LAUNCH((softmax_bwd_regs_kernel<T, ROW_THREADS, K>), grid, ROW_THREADS * kRowsPerBlock, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace softmax_bwd_detail

// Kernel choice (the same widths for every dtype: 16 fp32 values of dy and 16 of y per thread at most):
//   n <=   512  warp per row        n <= 2048  128 threads per row    n <= 4096   256 threads per row
//   n <=  8192  512 threads         n <= 16384 1024 threads
//   wider, sm_90: a cluster of 2-8 CTAs per row (softmax_cluster::plan: up to 196,608 fp32 / 393,216 16-bit)
//   wider: row split when softmax_split::plan says so (few rows), else two-pass with 1024 threads per row.
namespace softmax_bwd_detail {

constexpr int64_t kClusterHeaderFloats = 64;

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS) softmax_bwd_cluster_kernel(const SoftmaxBwdParams p, int64_t piece) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  constexpr int kVec = kChunk<T>;
  constexpr int kSlots = softmax_cluster::kSlots;
  static_assert(THREADS >= kSlots && THREADS <= 1024, "cluster kernel shape");
  FASTATTN_DYNAMIC_SHARED(float, smem);
  float* const red = smem + 2 * kSlots;
  T* const g_s = reinterpret_cast<T*>(smem + kClusterHeaderFloats);  // dy's piece (16-byte aligned)
  T* const y_s = g_s + piece;  // piece is a multiple of 8 elements: still 16-byte aligned

  const unsigned rank = cluster::ctarank(), csize = cluster::nctarank();
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t j0 = static_cast<int64_t>(rank) * piece;
  const int64_t len = p.n - j0 >= piece ? piece : (p.n > j0 ? p.n - j0 : 0);
  const int64_t nclusters = gridDim.x / csize;
  int parity = 0;
  for (int64_t row = blockIdx.x / csize; row < p.rows; row += nclusters, parity ^= 1) {
    const T* __restrict__ dy = static_cast<const T*>(p.dy) + row * p.dy_row_stride + j0;
    const T* __restrict__ y = static_cast<const T*>(p.y) + row * p.y_row_stride + j0;
    T* __restrict__ dx = static_cast<T*>(p.dx) + row * p.dx_row_stride + j0;
    const RowSplit sp = split3(dy, y, dx, len);
    const int64_t tail0 = sp.head + sp.nchunk * kVec;
    const int64_t scal = sp.nchunk * kVec;  // head scalars, then tail scalars, after the chunks
    float* const slots = smem + parity * kSlots;

    // Copy the piece once into shared memory, summing dy * y.
    float dot = 0.f;
    if (tid < sp.head) {
      g_s[scal + tid] = dy[tid];
      y_s[scal + tid] = y[tid];
      dot += to_float(dy[tid]) * to_float(y[tid]);
    }
#pragma unroll 4
    for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
      const uint4 g = load_raw(dy + sp.head + c * kVec, sp.vectorized);
      const uint4 v = load_raw(y + sp.head + c * kVec, sp.vectorized);
      *reinterpret_cast<uint4*>(g_s + c * kVec) = g;
      *reinterpret_cast<uint4*>(y_s + c * kVec) = v;
#pragma unroll
      for (int i = 0; i < kVec; ++i) dot += raw_at<T>(g, i) * raw_at<T>(v, i);
    }
    if (tid < sp.tail) {
      g_s[scal + sp.head + tid] = dy[tail0 + tid];
      y_s[scal + sp.head + tid] = y[tail0 + tid];
      dot += to_float(dy[tail0 + tid]) * to_float(y[tail0 + tid]);
    }
    const float piece_dot = row_allreduce<THREADS>(dot, red, SumOp());
    if (tid < static_cast<int>(csize)) cluster::map_shared_rank(slots, tid)[rank] = piece_dot;
    cluster::sync();  // every CTA's dot is in every CTA's slots (this row's parity)
    float total = 0.f;
    for (unsigned r = 0; r < csize; ++r) total += slots[r];
    const float it = row_inv_t(p, row);

    // dx = y (dy - dot) / T: the row's only write.
    if (tid < sp.head) dx[tid] = from_float<T>(to_float(y_s[scal + tid]) * (to_float(g_s[scal + tid]) - total) * it);
#pragma unroll 4
    for (int64_t c = tid; c < sp.nchunk; c += THREADS) {
      const uint4 g = *reinterpret_cast<const uint4*>(g_s + c * kVec);
      const uint4 v = *reinterpret_cast<const uint4*>(y_s + c * kVec);
      float out[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) out[i] = raw_at<T>(v, i) * (raw_at<T>(g, i) - total) * it;
      store_chunk(dx + sp.head + c * kVec, sp.vectorized, out);
    }
    if (tid < sp.tail) {
      const int64_t k = scal + sp.head + tid;
      dx[tail0 + tid] = from_float<T>(to_float(y_s[k]) * (to_float(g_s[k]) - total) * it);
    }
    // Why: the next row's head/tail split may differ (row strides change the alignment), so its copies could
    // overwrite elements other threads of this CTA are still reading.
    __syncthreads();
  }
#else
  (void)p;
  (void)piece;
  __trap();  // sm_80 and older: no clusters (softmax_bwd_launch never picks this kernel there)
#endif
}

template <typename T>
cudaError_t launch_cluster(const SoftmaxBwdParams& p, const softmax_cluster::Plan& plan, cudaStream_t stream) {
  const int64_t clusters_max = kMaxGridX / plan.csize;
  const int64_t clusters = p.rows < clusters_max ? p.rows : clusters_max;
  const dim3 grid(static_cast<unsigned>(clusters * plan.csize));
  const size_t smem = static_cast<size_t>(kClusterHeaderFloats) * sizeof(float) + 2 * plan.piece * sizeof(T);
  FASTATTN_LAUNCH_CLUSTER((softmax_bwd_cluster_kernel<T, softmax_cluster::kThreads>), grid,
                          softmax_cluster::kThreads, dim3(plan.csize, 1, 1), smem, stream, p, plan.piece);
  return cudaGetLastError();
}

}  // namespace softmax_bwd_detail

template <typename T>
cudaError_t softmax_bwd_launch(const SoftmaxBwdParams& p, cudaStream_t stream) {
  using namespace softmax_bwd_detail;
  if (p.rows == 0 || p.n == 0) return cudaSuccess;
  constexpr int K = 16 / kChunk<T>;  // chunks per thread per tensor: 4 (fp32) or 2 (16-bit)
  const int64_t n = p.n;
  if (n <= 32 * 16) return launch_regs<T, 32, (K < 2 ? 1 : K)>(p, stream);
  if (n <= 128 * 16) return launch_regs<T, 128, K>(p, stream);
  if (n <= 256 * 16) return launch_regs<T, 256, K>(p, stream);
  if (n <= 512 * 16) return launch_regs<T, 512, K>(p, stream);
  if (n <= 1024 * 16) return launch_regs<T, 1024, K>(p, stream);
  if (softmax_cluster::enabled()) {  // sm_90: dy and y of the row in a cluster's shared memory (v3)
    const softmax_cluster::Plan cplan = softmax_cluster::plan(n, 2 * sizeof(T));
    if (cplan.csize > 0) return launch_cluster<T>(p, cplan, stream);
  }
  const softmax_split::Plan plan = softmax_split::plan(p.rows, n);
  if (plan.splits > 1 && p.workspace != nullptr) {
    const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(p.rows));
    FASTATTN_LAUNCH((softmax_bwd_partial_kernel<T, 512>), grid, 512, 0, stream, p, plan.chunk);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    FASTATTN_LAUNCH((softmax_bwd_apply_kernel<T, 512>), grid, 512, 0, stream, p, plan.chunk);
    return cudaGetLastError();
  }
  const dim3 grid(static_cast<unsigned>(p.rows < kMaxGridX ? p.rows : kMaxGridX));
  FASTATTN_LAUNCH((softmax_bwd_two_pass_kernel<T, 1024>), grid, 1024, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace fastattn
