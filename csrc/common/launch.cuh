// One kernel source, two builds: the launch and the dynamic shared memory spelled once for nvcc and for the
// CPU emulation (csrc/emu, compiled by g++ with FASTATTN_EMULATE).
//
//   FASTATTN_LAUNCH(kernel, grid, block, smem_bytes, stream, args...)
//       nvcc: kernel<<<grid, block, smem_bytes, stream>>>(args...); emulated: runs the grid on the CPU before
//       returning. `kernel` must name a __global__ function at compile time; put a template-id in parentheses:
//       FASTATTN_LAUNCH((my_kernel<T, 128>), grid, 128, 0, stream, params). Check cudaGetLastError() after it.
//   FASTATTN_DYNAMIC_SHARED(T, name)
//       inside a kernel: `name` is the block's dynamic shared memory (the launch's smem_bytes) as T*, 16-byte
//       aligned. nvcc: extern __shared__ __align__(16) T name[]; emulated: a pointer to the block's buffer.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#if defined(__CUDACC__)

namespace fastattn {
template <auto Kernel, typename... Args>
inline void launch_kernel(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  Kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
}
}  // namespace fastattn
#define FASTATTN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::fastattn::launch_kernel<kernel>(grid, block, smem, stream, ##__VA_ARGS__)
#define FASTATTN_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]

#elif defined(FASTATTN_EMULATE)

#define FASTATTN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::fastattn_emu::launch<kernel>(__FILE__, __LINE__, grid, block, smem, stream, ##__VA_ARGS__)
#define FASTATTN_DYNAMIC_SHARED(T, name) T* const name = static_cast<T*>(::fastattn_emu::detail::dynamic_shared())

#else
#error "kernel sources compile with nvcc, or with the host compiler for the emulation (-DFASTATTN_EMULATE)"
#endif
