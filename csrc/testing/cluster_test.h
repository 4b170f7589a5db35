// Test kernel of the thread-block cluster primitives (csrc/common/cluster.cuh), built into both the GPU
// extension (sm_90 only at run time) and the CPU emulation, for tests/test_cuda_primitives.py. Torch-free.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastattn {
namespace testing {

// out (rows, 1 + cluster) f32: out[r, 0] = sum of x[r, :] (x (rows, n) f32, contiguous), reduced by one cluster
// of `cluster` CTAs (128 threads each) per row: CTA `rank` sums its contiguous slice of the row into its
// shared memory, and the partials meet through distributed shared memory in rank order; out[r, 1 + rank] =
// 1000 * rank + nctarank as CTA `rank` read its special registers.
//   kClusterPull: cluster barrier; rank 0 reads every peer's partial (mapped load); a second cluster barrier
//     keeps the peers' shared memory alive until then.
//   kClusterPush: every CTA stores its partial into rank 0's slot `rank` (mapped store); cluster barrier;
//     rank 0 sums its slots.
//   Planted bugs the tests must catch: kClusterMissingBarrier (pull without the first barrier: rank 0 may read
//   a partial not yet written), kClusterEarlyExit (pull without the second barrier: a peer may exit before
//   rank 0 has read its shared memory).
// cluster in [1, 16], rows * cluster <= 65535 * 16; else cudaErrorInvalidValue.
enum ClusterTestMode : int { kClusterPull = 0, kClusterPush = 1, kClusterMissingBarrier = 2, kClusterEarlyExit = 3 };
cudaError_t cluster_reduce_test(const float* x, float* out, int64_t rows, int64_t n, int cluster, int mode,
                                cudaStream_t stream);

}  // namespace testing
}  // namespace fastattn
