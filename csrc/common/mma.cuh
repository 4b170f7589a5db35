// Warp-wide tensor-core matrix multiply-accumulate, mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}:
//   D (16 x 8, f32) = A (16 x 16, f16/bf16) * B (16 x 8, f16/bf16) + C (16 x 8, f32)
// with the fragments held as csrc/common/fragment_layout.h describes (a[4], b[2] 32-bit registers of two
// 16-bit elements each, c[4] and d[4] floats). All 32 lanes of the warp must call it together, with the
// same element type (it is .sync.aligned); d may alias c.
//
// nvcc device code: inline PTX, sm_80 or newer. Host compiler with FASTATTN_EMULATE: every lane deposits its
// fragments in the warp's scratch area, the warp meets, the first lane past the meeting computes every lane's
// D fragment from all 32 lanes' inputs (csrc/common/warp_matrix_emu.h), each lane takes its own, and the warp
// meets again before the area is reused.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/fragment_layout.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "csrc/common/mma.cuh needs sm_80 or newer (cp.async, ldmatrix, mma.m16n8k16): TORCH_CUDA_ARCH_LIST >= 8.0"
#endif

#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
#include "common/warp_matrix_emu.h"
#include "emu/emu.h"
#endif

namespace fastattn {

template <typename T>
inline constexpr bool kIsMmaInput = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// D = A * B + C for one m16n8k16 tile; T is __half or __nv_bfloat16 (the type of A's and B's elements).
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4] FASTATTN_CALL_SITE) {
  static_assert(kIsMmaInput<T>, "mma_m16n8k16: the input type must be __half or __nv_bfloat16");
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
#elif defined(FASTATTN_EMULATE)
  constexpr bool kF16 = std::is_same_v<T, __half>;
  constexpr const char* what = kF16 ? "mma.sync.m16n8k16.f16" : "mma.sync.m16n8k16.bf16";
  auto* scratch = static_cast<emu_matrix::MmaScratch*>(fastattn_emu::warp_scratch());
  static_assert(sizeof(emu_matrix::MmaScratch) <= fastattn_emu::kWarpScratchBytes, "warp scratch too small");
  const int lane = fastattn_emu::lane_id();
  scratch->done = 0;
  emu_matrix::MmaDeposit& mine = scratch->in[lane];
  for (int i = 0; i < 4; ++i) mine.a[i] = a[i];
  for (int i = 0; i < 2; ++i) mine.b[i] = b[i];
  for (int i = 0; i < 4; ++i) mine.c[i] = c[i];
  fastattn_emu::warp_sync_point(0xffffffffu, what, call_file, call_line);  // every lane has deposited
  if (!scratch->done) {
    emu_matrix::mma_m16n8k16_warp(scratch->in, kF16 ? emu_matrix::Elem::kF16 : emu_matrix::Elem::kBF16, scratch->d);
    scratch->done = 1;
  }
  float out[4];
  for (int i = 0; i < 4; ++i) out[i] = scratch->d[lane][i];
  // Every lane has read: the scratch area is free again.
  fastattn_emu::warp_sync_point(0xffffffffu, what, call_file, call_line);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
#else
  // nvcc's host pass: device functions are parsed but never run here.
  for (int i = 0; i < 4; ++i) d[i] = c[i];
  (void)a;
  (void)b;
#endif
}

// Two values rounded to T and packed into one fragment register, `lo` in the low half (the lower column of
// A or the lower k of B): how a kernel turns f32 results (e.g. softmax probabilities) into an A operand.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  static_assert(kIsMmaInput<T>, "pack2: T must be __half or __nv_bfloat16");
  uint16_t l, h;
  if constexpr (std::is_same_v<T, __half>) {
    const __half lo_h = __float2half_rn(lo), hi_h = __float2half_rn(hi);
    std::memcpy(&l, &lo_h, 2);
    std::memcpy(&h, &hi_h, 2);
  } else {
    const __nv_bfloat16 lo_b = __float2bfloat16_rn(lo), hi_b = __float2bfloat16_rn(hi);
    std::memcpy(&l, &lo_b, 2);
    std::memcpy(&h, &hi_b, 2);
  }
  return static_cast<uint32_t>(l) | (static_cast<uint32_t>(h) << 16);
}

// Two 16-bit elements at p[0], p[1] (4-byte aligned) as one fragment register, p[0] in the low half.
template <typename T>
__device__ __forceinline__ uint32_t load_pair(const T* p) {
  static_assert(kIsMmaInput<T>, "load_pair: T must be __half or __nv_bfloat16");
  return *reinterpret_cast<const uint32_t*>(p);
}

}  // namespace fastattn
