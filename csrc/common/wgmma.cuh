// Hopper warpgroup tensor-core MMA (wgmma, sm_90a), per warpgroup of 128 threads (4 consecutive warps, the
// first a multiple of 4):
//   make_wgmma_desc(ptr, lbo, sbo, swizzle)  the 64-bit shared-memory matrix descriptor (start address, leading
//                                            and stride byte offsets, swizzle mode; PTX ISA "Matrix Descriptor")
//   wgmma_fence()                            wgmma.fence: before the first wgmma and whenever the accumulator or
//                                            A registers were touched by other instructions since
//   wgmma_ss<T, N, kTransB>(d, da, db, sd)   D (64 x N f32) = A (64 x 16, descriptor da, K-major) x B (16 x N,
//                                            descriptor db: K-major, or N-major when kTransB) + (sd ? D : 0)
//   wgmma_rs<T, N, kTransB>(d, a, db, sd)    the same with A from registers (a[4], mma.m16n8k16's A fragment
//                                            per warp, warp w holding rows 16 w ..)
//   wgmma_commit_group(), wgmma_wait_group<N>()  close the batch of wgmma issued since the last commit; wait
//                                            until at most N batches are pending. The accumulators must not be
//                                            read or written between a wgmma and the wait that covers it, nor
//                                            the shared operands overwritten.
//   wgmma_fence_operands(d)                  (nvcc) keeps the compiler from moving accesses of d across the
//                                            asynchronous window; a no-op in the emulation
//   fence_proxy_async_shared()               fence.proxy.async.shared::cta: makes this thread's generic-proxy
//                                            writes to shared memory (plain stores, cp.async) visible to wgmma,
//                                            which reads through the async proxy; then a barrier
// T is __half or __nv_bfloat16; N a multiple of 8 in [8, 256] with a statement in wgmma_ops.inc; d has N / 2
// floats. Layouts and the fragment positions: csrc/common/wgmma_emu.h.
//
// nvcc: inline PTX, compiled for sm_90a only (__CUDA_ARCH_FEAT_SM90_ALL); in any other device pass the
// functions trap, so a kernel using them must not run there (guard its body; see the sm90 attention kernel).
// Host compiler with FASTATTN_EMULATE: the 128 threads of the warpgroup meet at every wgmma_ss / wgmma_rs and at
// every wgmma_wait_group (fastattn_emu::group_sync_point: strict, all four warps must arrive, at the same
// line). At issue each thread's accumulator inputs are saved and its accumulators filled with NaN; the product
// is formed, from shared memory as it is then, only inside the wait that covers its batch, where the results
// land. So a read of the accumulators before the wait sees NaN, and shared operands overwritten before the
// wait are read overwritten. Aborts: a wgmma with no wgmma_fence since the thread's last wait (or kernel
// start; stricter than the PTX ISA, which allows it when no register was touched in between); threads of a
// warpgroup issuing different wgmma (shape, type, descriptors, scale) or waiting with different numbers of
// commits; a thread that exits with wgmma pending; descriptors outside the dynamic shared memory or in a
// layout the emulation does not model (wgmma_emu.h). Not emulated: the proxy fence (a no-op), the rule that
// consecutive wgmma on the same accumulators need no fence only when of the same shape.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/fragment_layout.h"  // FASTATTN_CALL_SITE

#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
#include <deque>
#include <string>
#include <vector>

#include "common/wgmma_emu.h"
#include "emu/emu.h"
extern "C" unsigned long long fastattn_emu_launch_count(void);
#endif

// The caller's file:line for a primitive with no other parameter (emulated build only).
#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
#define FASTATTN_CALL_SITE_FIRST const char *call_file = __builtin_FILE(), int call_line = __builtin_LINE()
#else
#define FASTATTN_CALL_SITE_FIRST
#endif

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FASTATTN_WGMMA_DEVICE 1  // device pass with wgmma (sm_90a)
#elif defined(__CUDA_ARCH__)
#define FASTATTN_WGMMA_STUB 1    // device pass without wgmma (sm_80, sm_90 without "a"): the functions trap
#endif

namespace fastattn {

enum class WgmmaSwizzle : int { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };  // the descriptor's encoding

namespace detail {

#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
constexpr int kWgmmaSlot = 6;  // fastattn_emu::thread_slot index of the per-thread wgmma state

struct WgmmaOp {
  int n = 0;
  bool bf16 = false, a_in_regs = false, trans_b = false;
  int scale_d = 0;
  uint64_t desc_a = 0, desc_b = 0;
  int group = 0;  // the issuing threads' commit count: the batch it belongs to
  const char* file = "";
  int line = 0;
  int deposited = 0;
  bool done = false;
  uint32_t a[emu_wgmma::kWarpgroupThreads][4];
  float* d[emu_wgmma::kWarpgroupThreads];
  bool chained[emu_wgmma::kWarpgroupThreads];  // accumulates onto a pending wgmma's result
  std::vector<float> c;                         // [128][n / 2] accumulator inputs saved at issue
};

struct WgmmaWarpgroup {
  unsigned long long launch = 0;  // identity: (launch, block, index)
  uint3 block = {0, 0, 0};
  int index = 0;
  int live = 0;                   // threads attached (first wgmma call) and not yet exited
  std::deque<WgmmaOp> ops;        // not yet retired, oldest first; ops[s - base] is the thread's s-th wgmma
  long base = 0;
  long waits_done = 0;
  int wait_commits[emu_wgmma::kWarpgroupThreads];
};

struct WgmmaThread {
  WgmmaWarpgroup* wg = nullptr;
  int first = 0;          // first thread of the warpgroup
  long issued = 0;        // wgmma issued by this thread
  int commits = 0;
  long waits = 0;
  bool fenced = false;
  const char* last_file = "";
  int last_line = 0;
};

// The state of warpgroup `index` of the running block. Blocks run one after another, or one cluster's CTAs
// together: an entry whose threads have all exited (or of another launch) is reused.
inline WgmmaWarpgroup& wgmma_warpgroup(int index) {
  static std::vector<WgmmaWarpgroup*> groups;  // never freed: a few per warpgroup index in use
  const unsigned long long launch = fastattn_emu_launch_count();
  const uint3 b = blockIdx;
  WgmmaWarpgroup* free_entry = nullptr;
  for (auto& e : groups) {
    WgmmaWarpgroup& g = *e;
    const bool stale = g.launch != launch || g.live == 0;
    if (!stale && g.index == index && g.block.x == b.x && g.block.y == b.y && g.block.z == b.z) return g;
    if (stale && free_entry == nullptr) free_entry = &g;
  }
  if (free_entry == nullptr) {
    groups.push_back(new WgmmaWarpgroup);
    free_entry = groups.back();
  }
  WgmmaWarpgroup& g = *free_entry;
  g.launch = launch;
  g.block = b;
  g.index = index;
  g.live = 0;
  g.ops.clear();
  g.base = 0;
  g.waits_done = 0;
  return g;
}

inline void wgmma_at_exit(void* slot_ptr) {
  void** slot = static_cast<void**>(slot_ptr);
  auto* ts = static_cast<WgmmaThread*>(*slot);
  if (ts == nullptr) return;
  for (const WgmmaOp& op : ts->wg->ops)
    if (!op.done)
      fastattn_emu::fail("a thread exits with a wgmma.mma_async (%s:%d) still pending: no wgmma.wait_group covers "
                         "it", op.file, op.line);
  --ts->wg->live;
  delete ts;
  *slot = nullptr;
}

inline WgmmaThread& wgmma_thread() {
  void*& slot = fastattn_emu::thread_slot(kWgmmaSlot);
  if (slot == nullptr) {
    auto* ts = new WgmmaThread;
    const int linear = fastattn_emu::thread_linear_id();
    ts->first = linear / emu_wgmma::kWarpgroupThreads * emu_wgmma::kWarpgroupThreads;
    if (ts->first + emu_wgmma::kWarpgroupThreads > fastattn_emu::block_thread_count())
      fastattn_emu::fail("wgmma: thread %d is in no whole warpgroup (the block has %d threads; a warpgroup is 128)",
                         linear, fastattn_emu::block_thread_count());
    ts->wg = &wgmma_warpgroup(linear / emu_wgmma::kWarpgroupThreads);
    ++ts->wg->live;
    slot = ts;
    fastattn_emu::on_thread_exit(&wgmma_at_exit, &slot);
  }
  return *static_cast<WgmmaThread*>(slot);
}

// Shared address space of the emulation: the dynamic shared buffer, placed so that an address's low 10 bits
// are the host pointer's (the 128-byte swizzle XORs address bits 4-9).
inline uintptr_t wgmma_window() {
  return reinterpret_cast<uintptr_t>(fastattn_emu::detail::dynamic_shared()) & ~static_cast<uintptr_t>(1023);
}

inline uint32_t emu_shared_address(const void* p, const char* file, int line) {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(fastattn_emu::detail::dynamic_shared());
  const uintptr_t hi = lo + fastattn_emu::dynamic_shared_bytes();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a < lo || a >= hi)
    fastattn_emu::fail("make_wgmma_desc (%s:%d): %p is not in the dynamic shared memory [%p, %p) (the emulation "
                       "gives descriptors to FASTATTN_DYNAMIC_SHARED memory only)",
                       file, line, p, reinterpret_cast<void*>(lo), reinterpret_cast<void*>(hi));
  return static_cast<uint32_t>(a - wgmma_window());
}

inline void wgmma_complete(WgmmaOp& op) {
  static double a[64][16], b[16][256];
  emu_wgmma::Operands o;
  o.n = op.n;
  o.elem = op.bf16 ? emu_matrix::Elem::kBF16 : emu_matrix::Elem::kF16;
  o.a_in_regs = op.a_in_regs;
  o.a_regs = op.a;
  o.desc_a = op.desc_a;
  o.desc_b = op.desc_b;
  o.trans_b = op.trans_b;
  const uintptr_t window = wgmma_window();
  const uint32_t lo = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(fastattn_emu::detail::dynamic_shared()) - window);
  const uint32_t hi = lo + static_cast<uint32_t>(fastattn_emu::dynamic_shared_bytes());
  const std::string why =
      emu_wgmma::load_operands(o, reinterpret_cast<const unsigned char*>(window), lo, hi, a, b);
  if (!why.empty()) fastattn_emu::fail("wgmma.mma_async (%s:%d): %s", op.file, op.line, why.c_str());
  const int nd = op.n / 2;
  for (int th = 0; th < emu_wgmma::kWarpgroupThreads; ++th)
    for (int i = 0; i < nd; ++i) {
      const float c = op.chained[th] ? op.d[th][i] : op.c[static_cast<size_t>(th) * nd + i];
      op.d[th][i] = emu_wgmma::mma_output(a, b, th, i, op.scale_d != 0, c);
    }
  op.done = true;
}

inline void wgmma_issue(int n, bool bf16, bool a_in_regs, bool trans_b, float* d, const uint32_t* a, uint64_t desc_a,
                        uint64_t desc_b, int scale_d, const char* file, int line) {
  WgmmaThread& ts = wgmma_thread();
  WgmmaWarpgroup& wg = *ts.wg;
  const int me = fastattn_emu::thread_linear_id() - ts.first;
  if (!ts.fenced)
    fastattn_emu::fail("wgmma.mma_async (%s:%d) with no wgmma.fence since this thread's %s: fence before the first "
                       "wgmma and after the accumulators or A registers were touched",
                       file, line, ts.waits > 0 ? "last wgmma.wait_group" : "start");
  const long idx = ts.issued++ - wg.base;
  while (static_cast<long>(wg.ops.size()) <= idx) wg.ops.emplace_back();
  WgmmaOp& op = wg.ops[idx];
  if (op.deposited == 0) {
    op.n = n;
    op.bf16 = bf16;
    op.a_in_regs = a_in_regs;
    op.trans_b = trans_b;
    op.scale_d = scale_d != 0;
    op.desc_a = desc_a;
    op.desc_b = desc_b;
    op.group = ts.commits;
    op.file = file;
    op.line = line;
    op.c.assign(static_cast<size_t>(emu_wgmma::kWarpgroupThreads) * (n / 2), 0.0f);
  } else if (op.n != n || op.bf16 != bf16 || op.a_in_regs != a_in_regs || op.trans_b != trans_b ||
             op.scale_d != (scale_d != 0) || op.desc_a != desc_a || op.desc_b != desc_b || op.group != ts.commits) {
    fastattn_emu::fail("threads of warpgroup %d issued different wgmma: thread %d at %s:%d (n %d, descriptors 0x%llx "
                       "0x%llx, scale_d %d, batch %d) and thread %d at %s:%d (n %d, 0x%llx 0x%llx, %d, batch %d)",
                       ts.first / 128, ts.first, op.file, op.line, op.n, static_cast<unsigned long long>(op.desc_a),
                       static_cast<unsigned long long>(op.desc_b), op.scale_d, op.group, ts.first + me, file, line, n,
                       static_cast<unsigned long long>(desc_a), static_cast<unsigned long long>(desc_b),
                       scale_d != 0, ts.commits);
  }
  bool chained = false;
  for (long s = 0; s < idx; ++s)
    if (!wg.ops[s].done && wg.ops[s].d[me] == d) chained = true;
  op.chained[me] = chained;
  op.d[me] = d;
  if (a_in_regs)
    for (int r = 0; r < 4; ++r) op.a[me][r] = a[r];
  const int nd = n / 2;
  for (int i = 0; i < nd; ++i) {
    if (!chained) op.c[static_cast<size_t>(me) * nd + i] = d[i];
    d[i] = __builtin_nanf("");  // undefined until the wait: reading it early gives NaN
  }
  ++op.deposited;
  ts.last_file = file;
  ts.last_line = line;
  fastattn_emu::group_sync_point(ts.first, emu_wgmma::kWarpgroupThreads, "wgmma.mma_async", file, line);
}

inline void wgmma_wait_emulated(int pending, const char* file, int line) {
  WgmmaThread& ts = wgmma_thread();
  WgmmaWarpgroup& wg = *ts.wg;
  const int me = fastattn_emu::thread_linear_id() - ts.first;
  wg.wait_commits[me] = ts.commits;
  ++ts.waits;
  fastattn_emu::group_sync_point(ts.first, emu_wgmma::kWarpgroupThreads, "wgmma.wait_group", file, line);
  ts.fenced = false;
  if (wg.waits_done >= ts.waits) return;  // another thread of the warpgroup, first past the meeting, did it
  wg.waits_done = ts.waits;
  for (int th = 0; th < emu_wgmma::kWarpgroupThreads; ++th)
    if (wg.wait_commits[th] != ts.commits)
      fastattn_emu::fail("wgmma.wait_group (%s:%d): threads %d and %d of warpgroup %d committed %d and %d batches",
                         file, line, ts.first + me, ts.first + th, ts.first / 128, ts.commits, wg.wait_commits[th]);
  const int limit = ts.commits - pending;  // batches [0, limit) must be complete
  for (WgmmaOp& op : wg.ops)
    if (!op.done && op.group < limit) wgmma_complete(op);
  while (!wg.ops.empty() && wg.ops.front().done) {
    wg.ops.pop_front();
    ++wg.base;
  }
}
#endif

template <int N>
struct WgmmaAsm;
#if defined(FASTATTN_WGMMA_DEVICE)
#include "common/wgmma_ops.inc"
#endif

template <typename T>
inline constexpr bool kIsWgmmaInput = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

}  // namespace detail

// Descriptor of a shared-memory operand starting at `ptr` (16-byte aligned), byte offsets as the layout needs
// (csrc/common/wgmma_emu.h; for a K-major swizzled operand lbo is unused: pass 16).
__device__ __forceinline__ uint64_t make_wgmma_desc(const void* ptr, uint32_t lbo_bytes, uint32_t sbo_bytes,
                                                    WgmmaSwizzle swizzle FASTATTN_CALL_SITE) {
  uint32_t addr = 0;
#if defined(__CUDA_ARCH__)
  addr = static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
#elif defined(FASTATTN_EMULATE)
  addr = detail::emu_shared_address(ptr, call_file, call_line);
#else
  (void)ptr;
#endif
  return static_cast<uint64_t>((addr & 0x3ffffu) >> 4) | (static_cast<uint64_t>((lbo_bytes & 0x3ffffu) >> 4) << 16) |
         (static_cast<uint64_t>((sbo_bytes & 0x3ffffu) >> 4) << 32) |
         (static_cast<uint64_t>(static_cast<int>(swizzle)) << 62);
}

// The descriptor moved by `bytes` (a multiple of 16): the start address field only.
__device__ __forceinline__ uint64_t wgmma_desc_advance(uint64_t desc, uint32_t bytes) {
  return desc + static_cast<uint64_t>(bytes >> 4);
}

__device__ __forceinline__ void wgmma_fence(FASTATTN_CALL_SITE_FIRST) {
#if defined(FASTATTN_WGMMA_DEVICE)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#elif defined(FASTATTN_WGMMA_STUB)
  __trap();
#elif defined(FASTATTN_EMULATE)
  (void)call_file;
  (void)call_line;
  detail::wgmma_thread().fenced = true;
#endif
}

__device__ __forceinline__ void wgmma_commit_group() {
#if defined(FASTATTN_WGMMA_DEVICE)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#elif defined(FASTATTN_WGMMA_STUB)
  __trap();
#elif defined(FASTATTN_EMULATE)
  ++detail::wgmma_thread().commits;
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_wait_group(FASTATTN_CALL_SITE_FIRST) {
  static_assert(N >= 0 && N <= 7, "wgmma_wait_group<N>: N in [0, 7]");
#if defined(FASTATTN_WGMMA_DEVICE)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#elif defined(FASTATTN_WGMMA_STUB)
  __trap();
#elif defined(FASTATTN_EMULATE)
  detail::wgmma_wait_emulated(N, call_file, call_line);
#endif
}

__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(FASTATTN_WGMMA_DEVICE)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#elif defined(FASTATTN_WGMMA_STUB)
  __trap();
#endif
}

// Keeps the compiler from moving reads or writes of the accumulators into the asynchronous window.
template <int K>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[K]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
  for (int i = 0; i < K; ++i) asm volatile("" : "+f"(d[i])::"memory");
#else
  (void)d;
#endif
}

template <typename T, int N, bool kTransB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                         int scale_d FASTATTN_CALL_SITE) {
  static_assert(detail::kIsWgmmaInput<T>, "wgmma_ss: T must be __half or __nv_bfloat16");
  static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma: N must be a multiple of 8 in [8, 256]");
#if defined(FASTATTN_WGMMA_DEVICE)
  detail::WgmmaAsm<N>::template ss<std::is_same_v<T, __nv_bfloat16>, kTransB ? 1 : 0>(d, desc_a, desc_b, scale_d);
#elif defined(FASTATTN_WGMMA_STUB)
  (void)d;
  (void)desc_a;
  (void)desc_b;
  (void)scale_d;
  __trap();
#elif defined(FASTATTN_EMULATE)
  detail::wgmma_issue(N, std::is_same_v<T, __nv_bfloat16>, false, kTransB, d, nullptr, desc_a, desc_b, scale_d,
                      call_file, call_line);
#else
  (void)d;
  (void)desc_a;
  (void)desc_b;
  (void)scale_d;
#endif
}

template <typename T, int N, bool kTransB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                         int scale_d FASTATTN_CALL_SITE) {
  static_assert(detail::kIsWgmmaInput<T>, "wgmma_rs: T must be __half or __nv_bfloat16");
  static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma: N must be a multiple of 8 in [8, 256]");
#if defined(FASTATTN_WGMMA_DEVICE)
  detail::WgmmaAsm<N>::template rs<std::is_same_v<T, __nv_bfloat16>, kTransB ? 1 : 0>(d, a, desc_b, scale_d);
#elif defined(FASTATTN_WGMMA_STUB)
  (void)d;
  (void)a;
  (void)desc_b;
  (void)scale_d;
  __trap();
#elif defined(FASTATTN_EMULATE)
  detail::wgmma_issue(N, std::is_same_v<T, __nv_bfloat16>, true, kTransB, d, a, 0, desc_b, scale_d, call_file,
                      call_line);
#else
  (void)d;
  (void)a;
  (void)desc_b;
  (void)scale_d;
#endif
}

}  // namespace fastattn
