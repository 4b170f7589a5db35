// Thread-block clusters (sm_90): launch with a cluster shape, the CTA's rank, the cluster barrier and mapped
// (distributed) shared memory. One source for both builds, like launch.cuh:
//
//   FASTATTN_LAUNCH_CLUSTER(kernel, grid, block, cluster, smem_bytes, stream, args...)
//       nvcc: cudaLaunchKernelEx with cudaLaunchAttributeClusterDimension = cluster (the kernel's dynamic shared
//       memory limit raised to smem_bytes first, and non-portable sizes allowed past 8 CTAs); emulated: the CTAs
//       of each cluster run together on the CPU (csrc/emu). Check cudaGetLastError() after it. The grid must be
//       a multiple of the cluster shape.
//   cluster::ctarank(), cluster::nctarank()   %cluster_ctarank (x fastest within the cluster), %cluster_nctarank
//   cluster::arrive() / cluster::wait()       barrier.cluster.arrive.release / barrier.cluster.wait.acquire
//                                             (every thread of every CTA of the cluster; .aligned: the whole warp
//                                             executes it together)
//   cluster::sync()                           arrive() then wait()
//   cluster::map_shared_rank(p, rank)         mapa: p's address in CTA `rank`'s shared memory (generic pointer;
//                                             plain loads and stores reach the peer: ld/st.shared::cluster)
//
// Rules (the emulation aborts on each; on a GPU they are undefined behaviour): a peer's shared memory is read
// only after a cluster barrier that follows its writes; a CTA does not exit while peers may still access its
// shared memory (a cluster barrier after their last access); in the emulation only the dynamic buffer
// (FASTATTN_DYNAMIC_SHARED) is mapped. Device code needs sm_90: for older targets the functions trap (the
// launcher must not pick a cluster kernel there; softmax_fwd_launch asks the device first).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "common/launch.cuh"

#if defined(__CUDACC__)

namespace fastattn {
template <auto Kernel, typename... Args>
inline void launch_cluster_kernel(dim3 grid, dim3 block, dim3 cluster, size_t smem, cudaStream_t stream,
                                  Args&&... args) {
  // Errors of these calls stay for cudaGetLastError (the launcher reports them).
  if (smem > 48 * 1024) cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (cluster.x * cluster.y * cluster.z > 8) cudaFuncSetAttribute(Kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = cluster.x;
  attribute[0].val.clusterDim.y = cluster.y;
  attribute[0].val.clusterDim.z = cluster.z;
  config.attrs = attribute;
  config.numAttrs = 1;
  cudaLaunchKernelEx(&config, Kernel, std::forward<Args>(args)...);
}
}  // namespace fastattn
#define FASTATTN_LAUNCH_CLUSTER(kernel, grid, block, cluster, smem, stream, ...) \
  ::fastattn::launch_cluster_kernel<kernel>(grid, block, cluster, smem, stream, ##__VA_ARGS__)

namespace fastattn {
namespace cluster {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ unsigned ctarank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ unsigned nctarank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
__device__ __forceinline__ void wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
template <typename T>
__device__ __forceinline__ T* map_shared_rank(T* p, unsigned rank) {
  uint64_t out;
  asm volatile("mapa.u64 %0, %1, %2;" : "=l"(out) : "l"(reinterpret_cast<uint64_t>(p)), "r"(rank));
  return reinterpret_cast<T*>(out);
}
#else  // device code for sm_80 (never launched there) and the host pass
__device__ __forceinline__ unsigned ctarank() { __trap(); return 0; }
__device__ __forceinline__ unsigned nctarank() { __trap(); return 1; }
__device__ __forceinline__ void arrive() { __trap(); }
__device__ __forceinline__ void wait() { __trap(); }
template <typename T>
__device__ __forceinline__ T* map_shared_rank(T* p, unsigned) { __trap(); return p; }
#endif
__device__ __forceinline__ void sync() {
  arrive();
  wait();
}
}  // namespace cluster
}  // namespace fastattn

#elif defined(FASTATTN_EMULATE)

#define FASTATTN_LAUNCH_CLUSTER(kernel, grid, block, cluster, smem, stream, ...) \
  ::fastattn_emu::launch_cluster<kernel>(__FILE__, __LINE__, grid, block, cluster, smem, stream, ##__VA_ARGS__)

namespace fastattn {
namespace cluster {
inline unsigned ctarank() { return static_cast<unsigned>(::fastattn_emu::detail::cluster_ctarank()); }
inline unsigned nctarank() { return static_cast<unsigned>(::fastattn_emu::detail::cluster_nctarank()); }
inline void arrive(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fastattn_emu::detail::cluster_arrive(file, line);
}
inline void wait(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fastattn_emu::detail::cluster_wait(file, line);
}
inline void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fastattn_emu::detail::cluster_arrive(file, line);
  ::fastattn_emu::detail::cluster_wait(file, line);
}
template <typename T>
inline T* map_shared_rank(T* p, unsigned rank, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<T*>(::fastattn_emu::detail::map_shared_rank(p, rank, file, line));
}
}  // namespace cluster
}  // namespace fastattn

#else
#error "kernel sources compile with nvcc, or with the host compiler for the emulation (-DFASTATTN_EMULATE)"
#endif
