// Test-only kernels for the emulator's warp collectives, barriers with predicates and atomics
// (tests/test_emu.py compares them with expectations computed in Python). Built by the emulated build only.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/launch.cuh"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

enum Op : int {
  kShfl = 0,
  kShflUp = 1,
  kShflDown = 2,
  kShflXor = 3,
  kBallot = 4,
  kAny = 5,
  kAll = 6,
  kMatchAny = 7,
  kReduceAdd = 8,
  kReduceMin = 9,
  kReduceMax = 10,
  kSyncwarp = 11,
};

// One warp collective per thread of a 1-D block. Lanes outside `mask` skip it and write -7.
// in[t]: the value (or predicate) of thread t; arg[t]: its source lane / delta / lane mask.
__global__ void collective_kernel(int op, unsigned mask, int width, const int* in, const int* arg, int* out) {
  const int t = static_cast<int>(threadIdx.x);
  const int lane = t % 32;
  int r = -7;
  if (mask >> lane & 1u) {
    const int v = in[t];
    switch (op) {
      case kShfl: r = __shfl_sync(mask, v, arg[t], width); break;
      case kShflUp: r = __shfl_up_sync(mask, v, static_cast<unsigned>(arg[t]), width); break;
      case kShflDown: r = __shfl_down_sync(mask, v, static_cast<unsigned>(arg[t]), width); break;
      case kShflXor: r = __shfl_xor_sync(mask, v, arg[t], width); break;
      case kBallot: r = static_cast<int>(__ballot_sync(mask, v)); break;
      case kAny: r = __any_sync(mask, v); break;
      case kAll: r = __all_sync(mask, v); break;
      case kMatchAny: r = static_cast<int>(__match_any_sync(mask, v)); break;
      case kReduceAdd: r = __reduce_add_sync(mask, v); break;
      case kReduceMin: r = __reduce_min_sync(mask, v); break;
      case kReduceMax: r = __reduce_max_sync(mask, v); break;
      case kSyncwarp: __syncwarp(mask); r = v; break;
    }
  }
  out[t] = r;
}

// Shuffles of 8- and 2-byte types: out64[t] = in64[t ^ 1] (as double), out16 likewise for __half bits.
__global__ void wide_shuffle_kernel(const double* in64, double* out64, const __half* in16, __half* out16) {
  const int t = static_cast<int>(threadIdx.x);
  out64[t] = __shfl_xor_sync(0xffffffffu, in64[t], 1);
  out16[t] = __shfl_xor_sync(0xffffffffu, in16[t], 1);
}

// __syncthreads_count / _and / _or over a 2-D block, and threadIdx/blockIdx/blockDim/gridDim.
__global__ void barrier_pred_kernel(const int* pred, int* out) {
  const int t = static_cast<int>(threadIdx.x + threadIdx.y * blockDim.x);
  const int b = static_cast<int>(blockIdx.x + blockIdx.y * gridDim.x);
  const int n = static_cast<int>(blockDim.x * blockDim.y);
  const int p = pred[b * n + t];
  const int count = __syncthreads_count(p);
  const int all = __syncthreads_and(p);
  const int any = __syncthreads_or(p);
  if (t == 0) {
    out[b * 3 + 0] = count;
    out[b * 3 + 1] = all;
    out[b * 3 + 2] = any;
  }
}

// Every thread of every block adds to float/int counters, raises an int max, and raises a float max through
// an atomicCAS loop on its bits.
__global__ void atomics_kernel(const float* xf, const int* xi, int n, float* fsum, int* isum, int* imax,
                               unsigned* fmax_bits) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  atomicAdd(fsum, xf[i]);
  atomicAdd(isum, xi[i]);
  atomicMax(imax, xi[i]);
  unsigned old = *fmax_bits;
  while (__uint_as_float(old) < xf[i]) {
    const unsigned seen = atomicCAS(fmax_bits, old, __float_as_uint(xf[i]));
    if (seen == old) break;
    old = seen;
  }
}

// Dynamic shared memory: each block reverses its slice of x through the block's buffer.
__global__ void dynamic_smem_kernel(const float* x, float* y) {
  FASTATTN_DYNAMIC_SHARED(float, buf);
  const int t = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  const int base = static_cast<int>(blockIdx.x) * n;
  buf[t] = x[base + t];
  __syncthreads();
  y[base + t] = buf[n - 1 - t];
}

// Reads shared memory nobody wrote in this block: the emulator fills it with 0xff bytes (NaN as float).
__global__ void unwritten_smem_kernel(float* out) {
  __shared__ float s[64];
  FASTATTN_DYNAMIC_SHARED(float, d);
  if (threadIdx.x == 0) {
    out[2 * blockIdx.x] = s[blockIdx.x % 64];
    out[2 * blockIdx.x + 1] = d[0];
    s[blockIdx.x % 64] = 1.0f;  // a value the next block must not see
    d[0] = 1.0f;
  }
}

}  // namespace

EXPORT int emu_collective(int op, unsigned mask, int width, int threads, const int* in, const int* arg, int* out) {
  FASTATTN_LAUNCH(collective_kernel, dim3(1), dim3(threads), 0, nullptr, op, mask, width, in, arg, out);
  return static_cast<int>(cudaGetLastError());
}

EXPORT int emu_wide_shuffle(const double* in64, double* out64, const void* in16, void* out16) {
  FASTATTN_LAUNCH(wide_shuffle_kernel, dim3(1), dim3(32), 0, nullptr, in64, out64,
                  static_cast<const __half*>(in16), static_cast<__half*>(out16));
  return static_cast<int>(cudaGetLastError());
}

EXPORT int emu_barrier_pred(int gx, int gy, int bx, int by, const int* pred, int* out) {
  FASTATTN_LAUNCH(barrier_pred_kernel, dim3(gx, gy), dim3(bx, by), 0, nullptr, pred, out);
  return static_cast<int>(cudaGetLastError());
}

EXPORT int emu_atomics(const float* xf, const int* xi, int n, int threads, float* fsum, int* isum, int* imax,
                       unsigned* fmax_bits) {
  FASTATTN_LAUNCH(atomics_kernel, dim3((n + threads - 1) / threads), dim3(threads), 0, nullptr, xf, xi, n, fsum,
                  isum, imax, fmax_bits);
  return static_cast<int>(cudaGetLastError());
}

EXPORT int emu_dynamic_smem(const float* x, float* y, int blocks, int threads) {
  FASTATTN_LAUNCH(dynamic_smem_kernel, dim3(blocks), dim3(threads), threads * sizeof(float), nullptr, x, y);
  return static_cast<int>(cudaGetLastError());
}

EXPORT int emu_unwritten_smem(float* out, int blocks) {
  FASTATTN_LAUNCH(unwritten_smem_kernel, dim3(blocks), dim3(32), 16, nullptr, out);
  return static_cast<int>(cudaGetLastError());
}

// A launch CUDA refuses: 2048 threads per block. Returns the error cudaGetLastError gives.
EXPORT int emu_bad_launch(int* out) {
  FASTATTN_LAUNCH(collective_kernel, dim3(1), dim3(2048), 0, nullptr, 11, 0xffffffffu, 32, out, out, out);
  return static_cast<int>(cudaGetLastError());
}
