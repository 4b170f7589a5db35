// Test-only kernels that misuse the thread-block cluster primitives (csrc/common/cluster.cuh), each in a way the
// emulation must stop with a message (tests/test_cuda_primitives.py runs them in a subprocess, built with the
// emulator into a plain shared library called through ctypes). Lines the messages must name carry "PLANTED:".
#include <cuda_runtime.h>

#include "common/cluster.cuh"
#include "common/launch.cuh"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// BUG: thread 5 of rank 1 returns without arriving at the cluster barrier the others wait at.
__global__ void exit_without_arrive_kernel(float* out) {
  if (fastattn::cluster::ctarank() == 1 && threadIdx.x == 5) return;  // PLANTED: early return
  fastattn::cluster::sync();  // PLANTED: cluster barrier
  out[blockIdx.x * 32 + threadIdx.x] = 1.f;
}

// BUG: maps a rank past the cluster's last CTA.
__global__ void bad_rank_kernel(float* out) {
  FASTATTN_DYNAMIC_SHARED(float, smem);
  smem[threadIdx.x] = 1.f;
  fastattn::cluster::sync();
  const float v = *fastattn::cluster::map_shared_rank(smem, fastattn::cluster::nctarank());  // PLANTED: bad rank
  fastattn::cluster::sync();
  out[blockIdx.x * 32 + threadIdx.x] = v;
}

// BUG: a static __shared__ address given to map_shared_rank (the emulation maps the dynamic buffer only).
__global__ void static_map_kernel(float* out) {
  __shared__ float tile[32];
  tile[threadIdx.x] = 1.f;
  fastattn::cluster::sync();
  const float v = *fastattn::cluster::map_shared_rank(tile, 0);  // PLANTED: static map
  fastattn::cluster::sync();
  out[blockIdx.x * 32 + threadIdx.x] = v;
}

// BUG: barrier.cluster.wait with no arrive before it.
__global__ void wait_without_arrive_kernel(float* out) {
  fastattn::cluster::wait();  // PLANTED: lone wait
  out[blockIdx.x * 32 + threadIdx.x] = 1.f;
}

}  // namespace

EXPORT int planted_exit_without_arrive(float* out) {
  FASTATTN_LAUNCH_CLUSTER(exit_without_arrive_kernel, dim3(4), dim3(32), dim3(2, 1, 1), 0, nullptr, out);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_bad_rank(float* out) {
  FASTATTN_LAUNCH_CLUSTER(bad_rank_kernel, dim3(2), dim3(32), dim3(2, 1, 1), 32 * sizeof(float), nullptr, out);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_static_map(float* out) {
  FASTATTN_LAUNCH_CLUSTER(static_map_kernel, dim3(2), dim3(32), dim3(2, 1, 1), 16, nullptr, out);
  return static_cast<int>(cudaGetLastError());
}
EXPORT int planted_wait_without_arrive(float* out) {
  FASTATTN_LAUNCH_CLUSTER(wait_without_arrive_kernel, dim3(2), dim3(32), dim3(2, 1, 1), 0, nullptr, out);
  return static_cast<int>(cudaGetLastError());
}
// A cluster shape that does not divide the grid: cudaErrorInvalidConfiguration, no launch.
EXPORT int planted_bad_cluster_shape(float* out) {
  FASTATTN_LAUNCH_CLUSTER(exit_without_arrive_kernel, dim3(3), dim3(32), dim3(2, 1, 1), 0, nullptr, out);
  return static_cast<int>(cudaGetLastError());
}
