// Test-only kernels with planted bugs, each of a kind the emulator must catch (tests/test_emu.py):
// a missing barrier, a shared buffer reused by two reductions, a divergent barrier, lanes of a warp at
// different collectives, a deadlock, and out-of-bounds global and shared reads (the ASan variant).
#include <cuda_runtime.h>

#include "common/launch.cuh"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// y[t] = x[t] + x[(t + 1) % n] through shared memory. BUG (when `barrier` is 0): no __syncthreads between
// the writes and the reads, so a thread reads its neighbour's slot before the neighbour wrote it.
__global__ void neighbour_kernel(const float* x, float* y, int barrier) {
  __shared__ float s[256];
  const int t = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  s[t] = x[t];
  if (barrier) __syncthreads();
  y[t] = s[t] + s[(t + 1) % n];
}

// The sum and the sum of squares of x over the block, by two block reductions. BUG (when `reuse` is 1): both
// reductions use the same shared buffer, so a warp that runs ahead overwrites partial sums of the first
// reduction before slower warps have read them. Only some schedules (warp_greedy) expose it.
__global__ void two_reductions_kernel(const float* x, float* out, int reuse) {
  __shared__ float a[32];
  __shared__ float b[32];
  float* second = reuse ? a : b;
  const int t = static_cast<int>(threadIdx.x), warps = static_cast<int>(blockDim.x) / 32;
  const float v = x[blockIdx.x * blockDim.x + t];
  float s = warp_sum(v);
  if (t % 32 == 0) a[t / 32] = s;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < warps; ++w) total += a[w];
  float q = warp_sum(v * v);
  if (t % 32 == 0) second[t / 32] = q;
  __syncthreads();
  float total_sq = 0.f;
  for (int w = 0; w < warps; ++w) total_sq += second[w];
  out[(blockIdx.x * blockDim.x + t) * 2] = total;
  out[(blockIdx.x * blockDim.x + t) * 2 + 1] = total_sq;
}

// BUG: a __syncthreads inside a branch that only half of the block takes.
__global__ void divergent_barrier_kernel(float* y) {
  if (threadIdx.x < blockDim.x / 2) {
    __syncthreads();  // PLANTED: divergent barrier
  }
  y[threadIdx.x] = 1.0f;
}

// BUG: two different __syncthreads, one per half of the block.
__global__ void split_barrier_kernel(float* y) {
  if (threadIdx.x < blockDim.x / 2) {
    __syncthreads();  // PLANTED: first half
  } else {
    __syncthreads();  // PLANTED: second half
  }
  y[threadIdx.x] = 1.0f;
}

// BUG: lanes 0-15 shuffle while lanes 16-31 ballot, both with the full mask.
__global__ void mixed_collectives_kernel(int* y) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  int r;
  if (lane < 16) {
    r = __shfl_xor_sync(0xffffffffu, lane, 1);  // PLANTED: shuffle
  } else {
    r = static_cast<int>(__ballot_sync(0xffffffffu, lane & 1));  // PLANTED: ballot
  }
  y[threadIdx.x] = r;
}

// BUG: lanes 0-15 wait in a full-mask shuffle for lanes 16-31, which wait at a __syncthreads for them.
__global__ void deadlock_kernel(int* y) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  int r = lane;
  if (lane < 16) {
    r = __shfl_sync(0xffffffffu, lane, 0);  // PLANTED: waits for lanes 16-31
  } else {
    __syncthreads();  // PLANTED: waits for lanes 0-15
  }
  y[threadIdx.x] = r;
}

// BUG: a shuffle whose mask leaves out lanes that exited early.
__global__ void exited_lane_kernel(int* y) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (lane >= 8) return;
  y[threadIdx.x] = __shfl_down_sync(0xffffffffu, lane, 1);  // PLANTED: lanes 8-31 have exited
}

// BUG: the API for emulated primitives (emu.h): lanes of one warp at rendezvous named differently.
__global__ void mixed_sync_points_kernel(int* y) {
  const int lane = fastattn_emu::lane_id();
  if (lane % 2 == 0) {
    fastattn_emu::warp_sync_point(0xffffffffu, "mma.m16n8k16");  // PLANTED: even lanes
  } else {
    fastattn_emu::warp_sync_point(0xffffffffu, "ldmatrix.x4");  // PLANTED: odd lanes
  }
  y[threadIdx.x] = lane;
}

// The same API used correctly: per-warp scratch exchange between two rendezvous, thread slots and exit hooks.
__global__ void sync_point_exchange_kernel(int* y, int* exits) {
  const int lane = fastattn_emu::lane_id(), warp = fastattn_emu::warp_id_in_block();
  int* scratch = static_cast<int*>(fastattn_emu::warp_scratch());
  scratch[lane] = 100 * warp + lane;
  fastattn_emu::warp_sync_point(0xffffffffu, "exchange: written");
  const int got = scratch[31 - lane];
  fastattn_emu::warp_sync_point(0xffffffffu, "exchange: read");
  void*& slot = fastattn_emu::thread_slot(3);
  if (slot != nullptr) y[threadIdx.x] = -1;  // slots start null
  slot = exits + threadIdx.x;
  fastattn_emu::on_thread_exit([](void* p) { *static_cast<int*>(p) += 1; }, slot);
  y[threadIdx.x] = got;
}

// BUG: reads one element past the end of x (global memory); caught by the ASan variant.
__global__ void oob_global_kernel(const float* x, float* y, int n) {
  const int t = static_cast<int>(threadIdx.x);
  if (t < n) y[t] = x[t] + x[t + 1];  // PLANTED: x[n] for t == n - 1
}

// BUG: reads one element past the end of a static __shared__ array; caught by the ASan variant.
__global__ void oob_shared_kernel(float* y) {
  __shared__ float s[32];
  const int t = static_cast<int>(threadIdx.x);
  s[t] = static_cast<float>(t);
  __syncthreads();
  y[t] = s[t + 1];  // PLANTED: s[32] for t == 31
}

// BUG: reads one element past the end of the dynamic shared buffer; caught by the ASan variant.
__global__ void oob_dynamic_shared_kernel(float* y) {
  FASTATTN_DYNAMIC_SHARED(float, s);
  const int t = static_cast<int>(threadIdx.x);
  s[t] = static_cast<float>(t);
  __syncthreads();
  y[t] = s[t + 1];  // PLANTED: s[blockDim.x] for the last thread
}

}  // namespace

EXPORT int planted_neighbour(const float* x, float* y, int n, int barrier) {
  FASTATTN_LAUNCH(neighbour_kernel, dim3(1), dim3(n), 0, nullptr, x, y, barrier);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_two_reductions(const float* x, float* out, int blocks, int threads, int reuse) {
  FASTATTN_LAUNCH(two_reductions_kernel, dim3(blocks), dim3(threads), 0, nullptr, x, out, reuse);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_divergent_barrier(float* y) {
  FASTATTN_LAUNCH(divergent_barrier_kernel, dim3(1), dim3(64), 0, nullptr, y);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_split_barrier(float* y) {
  FASTATTN_LAUNCH(split_barrier_kernel, dim3(1), dim3(64), 0, nullptr, y);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_mixed_collectives(int* y) {
  FASTATTN_LAUNCH(mixed_collectives_kernel, dim3(1), dim3(32), 0, nullptr, y);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_deadlock(int* y) {
  FASTATTN_LAUNCH(deadlock_kernel, dim3(1), dim3(64), 0, nullptr, y);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_exited_lane(int* y) {
  FASTATTN_LAUNCH(exited_lane_kernel, dim3(1), dim3(32), 0, nullptr, y);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_mixed_sync_points(int* y) {
  FASTATTN_LAUNCH(mixed_sync_points_kernel, dim3(1), dim3(32), 0, nullptr, y);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int sync_point_exchange(int* y, int* exits) {
  FASTATTN_LAUNCH(sync_point_exchange_kernel, dim3(2), dim3(64), 0, nullptr, y, exits);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_oob_global(const float* x, float* y, int n) {
  FASTATTN_LAUNCH(oob_global_kernel, dim3(1), dim3(n), 0, nullptr, x, y, n);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_oob_shared(float* y) {
  FASTATTN_LAUNCH(oob_shared_kernel, dim3(1), dim3(32), 0, nullptr, y);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_oob_dynamic_shared(float* y, int n) {
  FASTATTN_LAUNCH(oob_dynamic_shared_kernel, dim3(1), dim3(n), n * sizeof(float), nullptr, y);
  return static_cast<int>(cudaGetLastError());
}
