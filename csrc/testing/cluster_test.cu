// The cluster reduction test kernel (interface and modes in cluster_test.h).
#include <cstdint>

#include <cuda_runtime.h>

#include "common/cluster.cuh"
#include "common/launch.cuh"
#include "testing/cluster_test.h"

namespace fastattn {
namespace testing {
namespace {

constexpr int kClusterTestThreads = 128;

// Grid: rows * cluster CTAs along x, clusters of `cluster` CTAs along x (cluster c is row c).
// Dynamic shared memory (floats): [0, 4) the block's warp partials, [4] this CTA's partial, [8, 8 + 16) rank
// 0's slots for pushed partials.
__global__ void __launch_bounds__(kClusterTestThreads)
    cluster_reduce_test_kernel(const float* x, float* out, int64_t n, int mode) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  FASTATTN_DYNAMIC_SHARED(float, smem);
  const unsigned rank = cluster::ctarank(), csize = cluster::nctarank();
  const int64_t row = blockIdx.x / csize;
  const int64_t chunk = (n + csize - 1) / csize;
  const int64_t j0 = rank * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
  const int tid = static_cast<int>(threadIdx.x);
  float v = 0.f;
  for (int64_t j = j0 + tid; j < j1; j += kClusterTestThreads) v += x[row * n + j];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (tid % 32 == 0) smem[tid / 32] = v;
  __syncthreads();
  if (tid == 0) {
    float part = 0.f;
    for (int w = 0; w < kClusterTestThreads / 32; ++w) part += smem[w];
    smem[4] = part;
    if (mode == kClusterPush) cluster::map_shared_rank(smem, 0)[8 + rank] = part;  // st.shared::cluster
    out[row * (1 + csize) + 1 + rank] = 1000.f * rank + csize;
  }
  if (mode != kClusterMissingBarrier) cluster::sync();  // partials written (release) -> visible (acquire)
  if (rank == 0 && tid == 0) {
    float total = 0.f;
    for (unsigned r = 0; r < csize; ++r)
      total += mode == kClusterPush ? smem[8 + r] : cluster::map_shared_rank(smem, r)[4];  // ld.shared::cluster
    out[row * (1 + csize)] = total;
  }
  // Pull: rank 0 reads its peers' memory after the first barrier, so no peer may exit before it is done.
  if (mode == kClusterPull || mode == kClusterMissingBarrier) cluster::sync();
#else
  __trap();  // clusters need sm_90 (cluster_reduce_test checks the device first)
#endif
}

}  // namespace

cudaError_t cluster_reduce_test(const float* x, float* out, int64_t rows, int64_t n, int cluster, int mode,
                                cudaStream_t stream) {
  if (rows < 0 || n < 0 || cluster < 1 || cluster > 16 || mode < kClusterPull || mode > kClusterEarlyExit ||
      rows * cluster > 65535 * 16)
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
#if defined(__CUDACC__)
  int device = 0, major = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (major < 9) return cudaErrorNotSupported;
#endif
  const dim3 grid(static_cast<unsigned>(rows * cluster));
  FASTATTN_LAUNCH_CLUSTER(cluster_reduce_test_kernel, grid, kClusterTestThreads, dim3(cluster, 1, 1),
                          (8 + 16) * sizeof(float), stream, x, out, n, mode);
  return cudaGetLastError();
}

}  // namespace testing
}  // namespace fastattn
