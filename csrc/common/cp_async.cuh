// Asynchronous global -> shared copies (cp.async, sm_80+), per thread:
//   cp_async_4 / _8 / _16 (dst, src)           copy 4, 8 or 16 bytes; dst in shared memory, src in global
//                                               memory, both aligned to the copy size. 4 and 8 bytes go
//                                               through L1 (.ca), 16 bytes bypass it (.cg).
//   cp_async_zfill<Bytes>(dst, src, src_bytes) copy the first src_bytes (0..Bytes) of src and zero the rest
//                                               of dst: a ragged tile edge without a branch (src is not read
//                                               when src_bytes == 0, but must still be a valid address).
//   cp_async_commit_group()                     close the group of this thread's copies issued since the
//                                               last commit (an empty group counts too).
//   cp_async_wait_group<N>()                    wait until at most the N newest committed groups of this
//                                               thread are pending: every older one has landed. Copies not
//                                               yet committed are not waited for.
//   cp_async_wait_all()                         commit, then wait for everything.
// A copy is visible to its own thread after the wait that covers it, and to other threads only after that
// wait and then a __syncthreads() (or __syncwarp() within a warp). Nothing is promised before the wait.
//
// nvcc device code: inline PTX, sm_80 or newer. Host compiler with FASTATTN_EMULATE: the source bytes are
// read when the copy is issued, and the copy lands in shared memory as late as the hardware may land it,
// inside the wait that covers it, so a missing wait reads stale data; copies still pending when the thread
// exits land then. FASTATTN_EMU_CP_ASYNC=at_issue lands each copy as early as the hardware may instead, when
// it is issued: then a missing barrier before a buffer is refilled (other threads still reading it) shows.
// The two catch different bugs; run the tests both ways (at_wait is the default).
#pragma once

#include <cstdint>

#include "common/fragment_layout.h"  // FASTATTN_CALL_SITE

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "csrc/common/cp_async.cuh needs sm_80 or newer (cp.async, ldmatrix, mma.m16n8k16): TORCH_CUDA_ARCH_LIST >= 8.0"
#endif

#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "emu/emu.h"
#endif

namespace fastattn {
namespace detail {

#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
// The emulated thread's pending copies live behind fastattn_emu::thread_slot(kCpAsyncSlot).
constexpr int kCpAsyncSlot = 0;

struct CpAsyncCopy {
  void* dst;
  int bytes;
  unsigned char data[16];  // the source bytes read at issue, zero-filled past src_bytes
};

struct CpAsyncState {
  std::vector<CpAsyncCopy> open;                  // issued since the last commit
  std::deque<std::vector<CpAsyncCopy>> pending;   // committed and not yet landed, oldest first
};

enum class CpAsyncLanding { kAtWait, kAtIssue };

// The landing mode, from FASTATTN_EMU_CP_ASYNC (at_wait or at_issue) on first use; tests may change it.
inline CpAsyncLanding& cp_async_landing() {
  static CpAsyncLanding mode = [] {
    const char* env = std::getenv("FASTATTN_EMU_CP_ASYNC");
    if (env == nullptr || *env == 0 || std::strcmp(env, "at_wait") == 0) return CpAsyncLanding::kAtWait;
    if (std::strcmp(env, "at_issue") == 0) return CpAsyncLanding::kAtIssue;
    fastattn_emu::fail("FASTATTN_EMU_CP_ASYNC must be at_wait or at_issue, got '%s'", env);
  }();
  return mode;
}

inline void cp_async_land(std::vector<CpAsyncCopy>& group) {
  for (const CpAsyncCopy& c : group) std::memcpy(c.dst, c.data, static_cast<size_t>(c.bytes));
  group.clear();
}

// At thread exit: everything still pending lands (oldest first), then the state is freed.
inline void cp_async_at_exit(void* slot_ptr) {
  void** slot = static_cast<void**>(slot_ptr);
  auto* st = static_cast<CpAsyncState*>(*slot);
  if (st == nullptr) return;
  for (auto& group : st->pending) cp_async_land(group);
  cp_async_land(st->open);
  delete st;
  *slot = nullptr;
}

inline CpAsyncState& cp_async_state() {
  void*& slot = fastattn_emu::thread_slot(kCpAsyncSlot);
  if (slot == nullptr) {
    slot = new CpAsyncState;
    fastattn_emu::on_thread_exit(&cp_async_at_exit, &slot);
  }
  return *static_cast<CpAsyncState*>(slot);
}

[[noreturn]] inline void cp_async_fail(const char* what, int bytes, const void* dst, const void* src, const char* file,
                                       int line) {
  fastattn_emu::fail("cp.async of %d bytes at %s:%d: %s (dst %p, src %p)", bytes, file, line, what, dst, src);
}

template <int Bytes>
inline void cp_async_emulated(void* dst, const void* src, int src_bytes, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(dst) % Bytes != 0)
    cp_async_fail("dst is not aligned to the copy size", Bytes, dst, src, file, line);
  if (reinterpret_cast<uintptr_t>(src) % Bytes != 0)
    cp_async_fail("src is not aligned to the copy size", Bytes, dst, src, file, line);
  if (src_bytes < 0 || src_bytes > Bytes)
    cp_async_fail("src_bytes outside [0, copy size]", Bytes, dst, src, file, line);
  CpAsyncCopy c;
  c.dst = dst;
  c.bytes = Bytes;
  std::memset(c.data, 0, sizeof(c.data));
  if (src_bytes > 0) std::memcpy(c.data, src, static_cast<size_t>(src_bytes));
  if (cp_async_landing() == CpAsyncLanding::kAtIssue) {
    std::memcpy(dst, c.data, static_cast<size_t>(Bytes));
    return;
  }
  cp_async_state().open.push_back(c);
}
#endif

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ uint32_t smem_addr_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

}  // namespace detail

// Copy Bytes (4, 8 or 16) from global `src` to shared `dst`; the first src_bytes are copied, the rest zeroed.
template <int Bytes>
__device__ __forceinline__ void cp_async_zfill(void* dst, const void* src, int src_bytes FASTATTN_CALL_SITE) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(detail::smem_addr_u32(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(detail::smem_addr_u32(dst)), "l"(src),
                 "n"(Bytes), "r"(src_bytes)
                 : "memory");
  }
#elif defined(FASTATTN_EMULATE)
  detail::cp_async_emulated<Bytes>(dst, src, src_bytes, call_file, call_line);
#else
  (void)dst;
  (void)src;
  (void)src_bytes;
#endif
}

// Copy Bytes (4, 8 or 16) from global `src` to shared `dst`.
template <int Bytes>
__device__ __forceinline__ void cp_async(void* dst, const void* src FASTATTN_CALL_SITE) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(detail::smem_addr_u32(dst)), "l"(src)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(detail::smem_addr_u32(dst)), "l"(src),
                 "n"(Bytes)
                 : "memory");
  }
#elif defined(FASTATTN_EMULATE)
  detail::cp_async_emulated<Bytes>(dst, src, Bytes, call_file, call_line);
#else
  (void)dst;
  (void)src;
#endif
}

__device__ __forceinline__ void cp_async_4(void* dst, const void* src FASTATTN_CALL_SITE) {
  cp_async<4>(dst, src FASTATTN_CALL_SITE_FWD);
}
__device__ __forceinline__ void cp_async_8(void* dst, const void* src FASTATTN_CALL_SITE) {
  cp_async<8>(dst, src FASTATTN_CALL_SITE_FWD);
}
__device__ __forceinline__ void cp_async_16(void* dst, const void* src FASTATTN_CALL_SITE) {
  cp_async<16>(dst, src FASTATTN_CALL_SITE_FWD);
}

__device__ __forceinline__ void cp_async_commit_group() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(FASTATTN_EMULATE)
  detail::CpAsyncState& st = detail::cp_async_state();
  st.pending.push_back(std::move(st.open));
  st.open.clear();
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  static_assert(N >= 0, "cp_async_wait_group<N>: N must be >= 0");
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif defined(FASTATTN_EMULATE)
  detail::CpAsyncState& st = detail::cp_async_state();
  while (st.pending.size() > static_cast<size_t>(N)) {
    detail::cp_async_land(st.pending.front());
    st.pending.pop_front();
  }
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif defined(FASTATTN_EMULATE)
  cp_async_commit_group();
  cp_async_wait_group<0>();
#endif
}

}  // namespace fastattn
