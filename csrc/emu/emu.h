// fastattn_emu: a strict SIMT emulation that runs our CUDA C++ kernels on the CPU (g++ -std=c++17).
//
// Included (through the shim headers in csrc/emu/include/) by every kernel translation unit of the emulated
// build, i.e. when FASTATTN_EMULATE is defined and nvcc is not compiling. Under nvcc this header is never
// included; kernel sources are the same for both builds (launches go through FASTATTN_LAUNCH,
// csrc/common/launch.cuh).
//
// Model (see csrc/README.md, "The emulated build"):
// - Each CUDA thread of a block is a fiber (ucontext) with its own stack; the blocks of a grid run one after
//   another on the launching OS thread (launches are serialised process-wide). A fiber runs until it reaches a
//   synchronisation point (__syncthreads, a warp collective) or exits; then the scheduler picks the next one
//   in the order FASTATTN_EMU_SCHEDULE asks for (forward, reversed, random, warp_greedy, or rotate: the four
//   in turn, one per launch).
// - Barriers are real barriers and strict: every thread of the block must reach the same __syncthreads (the
//   same file:line); a thread that exits while others wait, threads waiting at different __syncthreads, lanes
//   of a warp at different warp collectives or with different masks, a mask that leaves out the caller or
//   names exited lanes, a shuffle reading a lane outside its mask, and deadlocks all abort the process with a
//   message naming the kernel, the block, the threads and the file:line of each barrier involved.
// - Shared memory (static __shared__ and the dynamic buffer) and the per-warp scratch areas are filled with
//   0xff bytes (NaN as float, half and bfloat16; -1 as int) before each block.
// - Warp shuffles follow the PTX ISA's shfl.sync definition exactly (segment mask from width, clamp).
#pragma once

#if defined(__CUDACC__)
#error "csrc/emu/emu.h is the CPU emulation; nvcc must not include it"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include <cuda_runtime_api.h>  // the shim in csrc/emu/include: the toolkit's types (cudaError_t, dim3, uint3)
#include <vector_functions.h>
#include <vector_types.h>

// ------------------------------------------------------------------------------------------------------------
// Qualifiers. The toolkit's host_defines.h turns them into GNU attributes g++ ignores; make them plain C++.
// __shared__ variables are function-local statics: one copy, which is right because blocks run one at a time.
// Outside ASan they go to one linker section, which the runtime fills with 0xff before each block; under ASan
// they stay ordinary statics, which ASan pads with redzones (it does not instrument user sections).
// ------------------------------------------------------------------------------------------------------------
#undef __device__
#undef __host__
#undef __global__
#undef __shared__
#undef __constant__
#undef __launch_bounds__
#undef __grid_constant__
#undef __noinline__
#undef __forceinline__
#define __device__
#define __host__
#define __global__
#define __constant__ static
#define __grid_constant__
#define __launch_bounds__(...)
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#if defined(FASTATTN_EMU_ASAN)
#define __shared__ static
#else
#define __shared__ static __attribute__((section("fastattn_emu_smem"), aligned(16)))
#endif

namespace fastattn_emu {

constexpr int kWarpSize = 32;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kWarpScratchBytes = 16384;  // per warp, 16-byte aligned (warp_scratch)
constexpr size_t kMaxDynamicSharedBytes = 227 * 1024;  // sm_90's per-block limit (opt-in)
constexpr int kThreadSlots = 8;
constexpr int kMaxClusterSize = 16;  // CTAs per cluster: sm_90's non-portable limit (8 portable)

// ---- API for emulated primitives (tensor-core / cp.async emulation, branch `prim`): keep stable ----------
int lane_id();            // threadIdx's linear index % 32
int warp_id_in_block();   // threadIdx's linear index / 32
void* warp_scratch();     // kWarpScratchBytes per warp of the current block, 16-byte aligned, 0xff-filled
// A rendezvous of the lanes in `mask` (the caller must be one of them) that also checks they all reached the
// same collective `what` (compared as strings) with the same mask; aborts naming both otherwise.
void warp_sync_point(unsigned mask, const char* what, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE());
void*& thread_slot(int i);                          // per emulated thread, i in [0, 8); nullptr at thread start
void on_thread_exit(void (*fn)(void*), void* arg);  // called (last registered first) when the thread finishes
// Aborts the process with a printf-style message plus the kernel, block, thread and schedule.
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
const char* kernel_name();  // of the kernel now running ("" outside a launch)
// ---- Warpgroup-level primitives (wgmma emulation, csrc/common/wgmma.cuh) ---------------------------------------
// A rendezvous of the block's threads [first, first + count) (whole warps; the caller one of them): every one of
// them must arrive at the same `what` and file:line; one that exited, or a thread of the range at another
// rendezvous, aborts naming both. Threads outside the range are not involved.
void group_sync_point(int first, int count, const char* what, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE());
int thread_linear_id();     // threadIdx's linear index
int block_thread_count();   // blockDim.x * blockDim.y * blockDim.z
size_t dynamic_shared_bytes();  // of the launch (the buffer detail::dynamic_shared() points to)

// ---- Runtime state read by the builtins below -----------------------------------------------------------------
namespace detail {

struct ThreadPublic {
  uint3 tid;     // threadIdx
  int linear;    // x + y * blockDim.x + z * blockDim.x * blockDim.y
  int lane;      // linear % 32
  int warp;      // linear / 32
  void* slots[kThreadSlots];
};

extern ThreadPublic* g_cur;  // the emulated thread now running
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

enum CollectiveKind : int {
  kShflIdx = 0,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kSyncwarp,
  kSyncPoint,
  kMatchAny,
  kReduceAdd,
  kReduceMin,
  kReduceMax,
};

// One warp collective: deposits `value` (and `arg`: source lane, delta, lane mask or predicate), waits for
// every lane of `mask`, returns this lane's result. `what` names it in messages (and is compared for
// kSyncPoint); width is the shuffle segment width (32 for the others).
uint64_t warp_collective(int kind, unsigned mask, uint64_t value, int arg, int width, const char* what,
                         const char* file, int line);
// __syncthreads and its counting forms (kind 0: plain, 1: count, 2: and, 3: or); returns the count/and/or.
int block_barrier(int kind, int pred, const char* file, int line);
void* dynamic_shared();

using Body = void (*)(void*);
void launch(const char* pretty_kernel, const char* file, int line, dim3 grid, dim3 block, size_t smem,
            Body body, void* args);

// ---- thread-block clusters (csrc/common/cluster.cuh is the kernels' interface) ----------------------------
// A cluster launch runs the CTAs of one cluster together: all their threads are fibers of one scheduling pool.
// Each CTA has its own dynamic shared memory (and its own copy of the static __shared__ section, swapped in
// when one of its threads runs; under ASan the statics are one copy: keep a cluster kernel's shared data in
// FASTATTN_DYNAMIC_SHARED). A bad shape (over 16 CTAs, not dividing the grid) sets
// cudaErrorInvalidConfiguration.
void launch_cluster(const char* pretty_kernel, const char* file, int line, dim3 grid, dim3 block, dim3 cluster,
                    size_t smem, Body body, void* args);
int cluster_ctarank();   // %cluster_ctarank: x + y * cluster.x + z * cluster.x * cluster.y of the CTA in its cluster
int cluster_nctarank();  // %cluster_nctarank
dim3 cluster_dim();      // %cluster_nctaid
// barrier.cluster.arrive (release) / barrier.cluster.wait (acquire), strict: every thread of every CTA of the
// cluster arrives at every phase, at the same file:line; arrive twice without a wait, a wait without an
// arrive, a thread exiting while others have arrived (or arriving after one exited without it) abort.
void cluster_arrive(const char* file, int line);
void cluster_wait(const char* file, int line);
// mapa: the address in CTA `rank`'s dynamic shared memory at the offset `p` has in the caller's. Aborts when p
// is not in the caller's dynamic buffer, rank is out of range, or CTA `rank` has exited; a CTA that exits
// while a peer has mapped its memory since the last cluster barrier it waited on aborts too.
void* map_shared_rank(const void* p, unsigned rank, const char* file, int line);

template <typename T>
inline uint64_t to_bits(const T& v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffles move up to 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <auto Kernel>
const char* pretty_name() {
  return __PRETTY_FUNCTION__;  // "... [with auto Kernel = softmax_fwd_regs_kernel<float, 32, 1>]"
}

template <auto Kernel, typename Tuple>
void run_kernel(void* args) {
  std::apply(Kernel, *static_cast<const Tuple*>(args));  // each thread gets its own copy of the arguments
}

}  // namespace detail

// The emulated cudaLaunchKernelEx with a cluster-dimension attribute (FASTATTN_LAUNCH_CLUSTER).
template <auto Kernel, typename... Args>
void launch_cluster(const char* file, int line, dim3 grid, dim3 block, dim3 cluster, size_t smem,
                    cudaStream_t /*stream*/, Args&&... args) {
  using Tuple = std::tuple<std::decay_t<Args>...>;
  Tuple tuple(std::forward<Args>(args)...);
  detail::launch_cluster(detail::pretty_name<Kernel>(), file, line, grid, block, cluster, smem,
                         &detail::run_kernel<Kernel, Tuple>, &tuple);
}

// The emulated `kernel<<<grid, block, smem, stream>>>(args...)`: runs the whole grid before returning; a
// bad configuration sets the error cudaGetLastError returns, like CUDA.
template <auto Kernel, typename... Args>
void launch(const char* file, int line, dim3 grid, dim3 block, size_t smem, cudaStream_t /*stream*/,
            Args&&... args) {
  using Tuple = std::tuple<std::decay_t<Args>...>;
  Tuple tuple(std::forward<Args>(args)...);
  detail::launch(detail::pretty_name<Kernel>(), file, line, grid, block, smem,
                 &detail::run_kernel<Kernel, Tuple>, &tuple);
}

}  // namespace fastattn_emu

// ------------------------------------------------------------------------------------------------------------
// Built-in variables.
// ------------------------------------------------------------------------------------------------------------
#define threadIdx (static_cast<const uint3&>(::fastattn_emu::detail::g_cur->tid))
#define blockIdx (static_cast<const uint3&>(::fastattn_emu::detail::g_block_idx))
#define blockDim (static_cast<const dim3&>(::fastattn_emu::detail::g_block_dim))
#define gridDim (static_cast<const dim3&>(::fastattn_emu::detail::g_grid_dim))
#ifndef warpSize
#define warpSize 32
#endif

// ------------------------------------------------------------------------------------------------------------
// Barriers, warp collectives. The trailing file/line defaults take the caller's location (GCC builtins).
// ------------------------------------------------------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fastattn_emu::detail::block_barrier(0, 0, file, line);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::fastattn_emu::detail::block_barrier(1, pred, file, line);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::fastattn_emu::detail::block_barrier(2, pred, file, line);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::fastattn_emu::detail::block_barrier(3, pred, file, line);
}

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::fastattn_emu::detail::warp_collective(::fastattn_emu::detail::kSyncwarp, mask, 0, 0, 32, "__syncwarp",
                                          file, line);
}

#define FASTATTN_EMU_SHFL(NAME, KIND)                                                                        \
  template <typename T>                                                                                     \
  inline T NAME(unsigned mask, T var, int arg, int width = 32, const char* file = __builtin_FILE(),         \
                int line = __builtin_LINE()) {                                                              \
    namespace d = ::fastattn_emu::detail;                                                                   \
    return d::from_bits<T>(d::warp_collective(d::KIND, mask, d::to_bits(var), arg, width, #NAME, file, line)); \
  }
FASTATTN_EMU_SHFL(__shfl_sync, kShflIdx)
FASTATTN_EMU_SHFL(__shfl_up_sync, kShflUp)
FASTATTN_EMU_SHFL(__shfl_down_sync, kShflDown)
FASTATTN_EMU_SHFL(__shfl_xor_sync, kShflXor)
#undef FASTATTN_EMU_SHFL

inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  namespace d = ::fastattn_emu::detail;
  return static_cast<unsigned>(d::warp_collective(d::kBallot, mask, 0, pred != 0, 32, "__ballot_sync", file, line));
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  namespace d = ::fastattn_emu::detail;
  return static_cast<int>(d::warp_collective(d::kAny, mask, 0, pred != 0, 32, "__any_sync", file, line));
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  namespace d = ::fastattn_emu::detail;
  return static_cast<int>(d::warp_collective(d::kAll, mask, 0, pred != 0, 32, "__all_sync", file, line));
}
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T value, const char* file = __builtin_FILE(),
                                 int line = __builtin_LINE()) {
  namespace d = ::fastattn_emu::detail;
  return static_cast<unsigned>(d::warp_collective(d::kMatchAny, mask, d::to_bits(value), 0, 32,
                                                  "__match_any_sync", file, line));
}
#define FASTATTN_EMU_REDUCE(NAME, KIND, T)                                                                   \
  inline T NAME(unsigned mask, T value, const char* file = __builtin_FILE(), int line = __builtin_LINE()) { \
    namespace d = ::fastattn_emu::detail;                                                                   \
    return static_cast<T>(d::warp_collective(d::KIND, mask, d::to_bits(value), std::is_signed<T>::value,    \
                                             32, #NAME, file, line));                                       \
  }
FASTATTN_EMU_REDUCE(__reduce_add_sync, kReduceAdd, unsigned)
FASTATTN_EMU_REDUCE(__reduce_add_sync, kReduceAdd, int)
FASTATTN_EMU_REDUCE(__reduce_min_sync, kReduceMin, unsigned)
FASTATTN_EMU_REDUCE(__reduce_min_sync, kReduceMin, int)
FASTATTN_EMU_REDUCE(__reduce_max_sync, kReduceMax, unsigned)
FASTATTN_EMU_REDUCE(__reduce_max_sync, kReduceMax, int)
#undef FASTATTN_EMU_REDUCE

// ------------------------------------------------------------------------------------------------------------
// Atomics. Emulated threads only switch at synchronisation points and launches are serialised, so a plain
// read-modify-write is atomic with respect to every other emulated thread. Each returns the old value.
// ------------------------------------------------------------------------------------------------------------
#define FASTATTN_EMU_ATOMIC(NAME, T, EXPR)   \
  inline T NAME(T* address, T val) {         \
    const T old = *address;                  \
    *address = (EXPR);                       \
    return old;                              \
  }
FASTATTN_EMU_ATOMIC(atomicAdd, int, old + val)
FASTATTN_EMU_ATOMIC(atomicAdd, unsigned, old + val)
FASTATTN_EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
FASTATTN_EMU_ATOMIC(atomicAdd, float, old + val)
FASTATTN_EMU_ATOMIC(atomicAdd, double, old + val)
FASTATTN_EMU_ATOMIC(atomicSub, int, old - val)
FASTATTN_EMU_ATOMIC(atomicSub, unsigned, old - val)
FASTATTN_EMU_ATOMIC(atomicExch, int, val)
FASTATTN_EMU_ATOMIC(atomicExch, unsigned, val)
FASTATTN_EMU_ATOMIC(atomicExch, unsigned long long, val)
FASTATTN_EMU_ATOMIC(atomicExch, float, val)
FASTATTN_EMU_ATOMIC(atomicMax, int, old > val ? old : val)
FASTATTN_EMU_ATOMIC(atomicMax, unsigned, old > val ? old : val)
FASTATTN_EMU_ATOMIC(atomicMax, long long, old > val ? old : val)
FASTATTN_EMU_ATOMIC(atomicMax, unsigned long long, old > val ? old : val)
FASTATTN_EMU_ATOMIC(atomicMin, int, old < val ? old : val)
FASTATTN_EMU_ATOMIC(atomicMin, unsigned, old < val ? old : val)
FASTATTN_EMU_ATOMIC(atomicMin, long long, old < val ? old : val)
FASTATTN_EMU_ATOMIC(atomicMin, unsigned long long, old < val ? old : val)
FASTATTN_EMU_ATOMIC(atomicAnd, int, old & val)
FASTATTN_EMU_ATOMIC(atomicAnd, unsigned, old & val)
FASTATTN_EMU_ATOMIC(atomicAnd, unsigned long long, old & val)
FASTATTN_EMU_ATOMIC(atomicOr, int, old | val)
FASTATTN_EMU_ATOMIC(atomicOr, unsigned, old | val)
FASTATTN_EMU_ATOMIC(atomicOr, unsigned long long, old | val)
FASTATTN_EMU_ATOMIC(atomicXor, int, old ^ val)
FASTATTN_EMU_ATOMIC(atomicXor, unsigned, old ^ val)
FASTATTN_EMU_ATOMIC(atomicXor, unsigned long long, old ^ val)
FASTATTN_EMU_ATOMIC(atomicInc, unsigned, old >= val ? 0u : old + 1u)
FASTATTN_EMU_ATOMIC(atomicDec, unsigned, (old == 0u || old > val) ? val : old - 1u)
#undef FASTATTN_EMU_ATOMIC

#define FASTATTN_EMU_CAS(T)                                   \
  inline T atomicCAS(T* address, T compare, T val) {          \
    const T old = *address;                                   \
    if (old == compare) *address = val;                       \
    return old;                                               \
  }
FASTATTN_EMU_CAS(int)
FASTATTN_EMU_CAS(unsigned)
FASTATTN_EMU_CAS(unsigned long long)
FASTATTN_EMU_CAS(unsigned short)
#undef FASTATTN_EMU_CAS

inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ------------------------------------------------------------------------------------------------------------
// Device intrinsics the kernels may use (accurate versions: no fast-math on either build).
// ------------------------------------------------------------------------------------------------------------
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float __int_as_float(int v) { return ::fastattn_emu::detail::from_bits<float>(static_cast<uint32_t>(v)); }
inline float __uint_as_float(unsigned v) { return ::fastattn_emu::detail::from_bits<float>(v); }
inline int __float_as_int(float v) { return static_cast<int>(static_cast<uint32_t>(::fastattn_emu::detail::to_bits(v))); }
inline unsigned __float_as_uint(float v) { return static_cast<uint32_t>(::fastattn_emu::detail::to_bits(v)); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
inline unsigned __brev(unsigned v) {
  v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
  v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
  v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
  v = ((v >> 8) & 0x00ff00ffu) | ((v & 0x00ff00ffu) << 8);
  return (v >> 16) | (v << 16);
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float v) { return v != v ? 0.0f : (v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v)); }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
