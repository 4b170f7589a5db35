// Test-only kernels that misuse the tensor-core and async-copy primitives, each in a way the emulation must
// stop with a message (tests/test_cuda_primitives.py runs them in a subprocess, built with the emulator into
// a plain shared library called through ctypes). The lines the messages must name carry "PLANTED:" markers.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cp_async.cuh"
#include "common/launch.cuh"
#include "common/ldmatrix.cuh"
#include "common/mma.cuh"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// BUG: half of the warp issues the f16 mma, the other half the bf16 one.
__global__ void mixed_mma_kernel(float* out) {
  const uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  const float c[4] = {0, 0, 0, 0};
  float d[4];
  if (threadIdx.x < 16) {
    fastattn::mma_m16n8k16<__half>(d, a, b, c);  // PLANTED: f16 half
  } else {
    fastattn::mma_m16n8k16<__nv_bfloat16>(d, a, b, c);  // PLANTED: bf16 half
  }
  out[threadIdx.x] = d[0];
}

// BUG: a block of 16 threads: the mma needs all 32 lanes of the warp.
__global__ void partial_warp_mma_kernel(float* out) {
  const uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  const float c[4] = {0, 0, 0, 0};
  float d[4];
  fastattn::mma_m16n8k16<__half>(d, a, b, c);  // PLANTED: partial warp
  out[threadIdx.x] = d[0];
}

// BUG: lane 5 gives a row address 2 bytes past a 16-byte boundary.
__global__ void misaligned_ldmatrix_kernel(float* out) {
  __shared__ __align__(16) uint16_t tile[8 * 8 * 4];
  for (int i = threadIdx.x; i < 8 * 8 * 4; i += 32) tile[i] = static_cast<uint16_t>(i);
  __syncwarp();
  const int lane = threadIdx.x;
  uint32_t r[4];
  fastattn::ldmatrix_x4(r, tile + 8 * lane + (lane == 5 ? 1 : 0));  // PLANTED: misaligned row
  out[lane] = static_cast<float>(r[0]);
}

// BUG: a 16-byte copy to a destination that is only 8-byte aligned.
__global__ void misaligned_cp_async_kernel(const float* src, float* out) {
  __shared__ __align__(16) float buf[32 * 4 + 2];
  fastattn::cp_async_16(buf + 4 * threadIdx.x + 2, src + 4 * threadIdx.x);  // PLANTED: misaligned dst
  fastattn::cp_async_wait_all();
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
}

// BUG: the last thread's 16-byte copy reads past the end of src (n floats); the ASan variant reports it.
__global__ void oob_cp_async_kernel(const float* src, float* out, int n) {
  __shared__ __align__(16) float buf[32 * 4];
  const float* from = src + 4 * threadIdx.x + (threadIdx.x == 31 ? 4 : 0);
  fastattn::cp_async_16(buf + 4 * threadIdx.x, from);  // PLANTED: oob source
  fastattn::cp_async_wait_all();
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < n) out[threadIdx.x] = buf[threadIdx.x];
}

}  // namespace

EXPORT int planted_mixed_mma(float* out) {
  FASTATTN_LAUNCH(mixed_mma_kernel, dim3(1), dim3(32), 0, nullptr, out);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_partial_warp_mma(float* out) {
  FASTATTN_LAUNCH(partial_warp_mma_kernel, dim3(1), dim3(16), 0, nullptr, out);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_misaligned_ldmatrix(float* out) {
  FASTATTN_LAUNCH(misaligned_ldmatrix_kernel, dim3(1), dim3(32), 0, nullptr, out);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_misaligned_cp_async(const float* src, float* out) {
  FASTATTN_LAUNCH(misaligned_cp_async_kernel, dim3(1), dim3(32), 0, nullptr, src, out);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_oob_cp_async(const float* src, float* out, int n) {
  FASTATTN_LAUNCH(oob_cp_async_kernel, dim3(1), dim3(32), 0, nullptr, src, out, n);
  return static_cast<int>(cudaGetLastError());
}
