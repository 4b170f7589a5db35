// Warp-wide loads of 8 x 8 matrices of 16-bit elements from shared memory into mma fragments,
// ldmatrix.sync.aligned.m8n8.x{1,2,4}{,.trans}.shared.b16:
//   ldmatrix_x1 / _x2 / _x4 (r, row)        r[j] = this lane's part of matrix j (row g, cols 2t, 2t+1)
//   ldmatrix_x1_trans / _x2_trans / _x4_trans  the transposed matrix j (rows 2t, 2t+1 of column g)
// `row` is this lane's row address: lanes 8j .. 8j+7 give rows 0-7 of matrix j (lanes 8 * num and above are
// ignored, as on the hardware), each 16 bytes, 16-byte aligned, in shared memory. All 32 lanes call it
// together (.sync.aligned). Layouts: csrc/common/fragment_layout.h.
//
// Ordering: a lane reads rows that other lanes (or warps) wrote, so a __syncwarp() / __syncthreads() must
// separate the writes of a tile from its ldmatrix; the wrapper adds no memory clobber of its own.
//
// nvcc device code: inline PTX, sm_80 or newer. Host compiler with FASTATTN_EMULATE: lanes deposit their
// addresses in the warp's scratch area, meet, each reads its elements from the rows of the others
// (csrc/common/warp_matrix_emu.h), and meet again.
#pragma once

#include <cstdint>

#include "common/fragment_layout.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "csrc/common/ldmatrix.cuh needs sm_80 or newer (cp.async, ldmatrix, mma.m16n8k16): TORCH_CUDA_ARCH_LIST >= 8.0"
#endif

#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
#include "common/warp_matrix_emu.h"
#include "emu/emu.h"
#endif

namespace fastattn {
namespace detail {

#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
template <int Num, bool Trans>
inline void ldmatrix_emulated(uint32_t (&r)[Num], const void* row, const char* call_file, int call_line) {
  static constexpr const char* kWhat[2][3] = {
      {"ldmatrix.m8n8.x1", "ldmatrix.m8n8.x2", "ldmatrix.m8n8.x4"},
      {"ldmatrix.m8n8.x1.trans", "ldmatrix.m8n8.x2.trans", "ldmatrix.m8n8.x4.trans"}};
  const char* what = kWhat[Trans][Num == 1 ? 0 : Num == 2 ? 1 : 2];
  auto* addrs = static_cast<const void**>(fastattn_emu::warp_scratch());
  const int lane = fastattn_emu::lane_id();
  addrs[lane] = row;
  fastattn_emu::warp_sync_point(0xffffffffu, what, call_file, call_line);  // every lane has given its row address
  uint32_t out[Num];
  const int bad = emu_matrix::ldmatrix_lane(addrs, Num, Trans, lane, out);
  if (bad >= 0)
    fastattn_emu::fail("%s at %s:%d: the row address %p of lane %d is not 16-byte aligned", what, call_file, call_line,
                       addrs[bad], bad);
  // Every lane has read: the scratch area is free again.
  fastattn_emu::warp_sync_point(0xffffffffu, what, call_file, call_line);
  for (int j = 0; j < Num; ++j) r[j] = out[j];
}
#endif

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

}  // namespace detail

__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* row FASTATTN_CALL_SITE) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(detail::smem_u32(row)));
#elif defined(FASTATTN_EMULATE)
  detail::ldmatrix_emulated<1, false>(r, row, call_file, call_line);
#else
  r[0] = 0;
  (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row FASTATTN_CALL_SITE) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(detail::smem_u32(row)));
#elif defined(FASTATTN_EMULATE)
  detail::ldmatrix_emulated<2, false>(r, row, call_file, call_line);
#else
  r[0] = r[1] = 0;
  (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row FASTATTN_CALL_SITE) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(detail::smem_u32(row)));
#elif defined(FASTATTN_EMULATE)
  detail::ldmatrix_emulated<4, false>(r, row, call_file, call_line);
#else
  r[0] = r[1] = r[2] = r[3] = 0;
  (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* row FASTATTN_CALL_SITE) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(detail::smem_u32(row)));
#elif defined(FASTATTN_EMULATE)
  detail::ldmatrix_emulated<1, true>(r, row, call_file, call_line);
#else
  r[0] = 0;
  (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row FASTATTN_CALL_SITE) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(detail::smem_u32(row)));
#elif defined(FASTATTN_EMULATE)
  detail::ldmatrix_emulated<2, true>(r, row, call_file, call_line);
#else
  r[0] = r[1] = 0;
  (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row FASTATTN_CALL_SITE) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(detail::smem_u32(row)));
#elif defined(FASTATTN_EMULATE)
  detail::ldmatrix_emulated<4, true>(r, row, call_file, call_line);
#else
  r[0] = r[1] = r[2] = r[3] = 0;
  (void)row;
#endif
}

}  // namespace fastattn
