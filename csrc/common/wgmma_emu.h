// What wgmma.mma_async.m64nNk16.f32.{f16,bf16} computes, as plain host functions: the shared-memory matrix
// descriptor decoded, the address of each operand element under the descriptor's canonical layout and swizzle
// (PTX ISA, "Shared Memory Matrix Layout", "Matrix Descriptor Format"), and the warpgroup's accumulator and
// A-register fragments. The core of the CPU emulation of csrc/common/wgmma.cuh. Host-only, no CUDA.
//
// Layouts, in bytes for 16-bit elements (T = 8 elements = one 16-byte chunk), W the swizzle width (32, 64, 128)
// and the operand seen as MN x K (A: M x K, B: N x K; "K-major": K contiguous; "MN-major": M or N contiguous):
//   K-major,  no swizzle: (mn % 8) * 16 + (mn / 8) * SBO + (k % 8) * 2 + (k / 8) * LBO       (8 x 16 B core matrices)
//   K-major,  swizzled:   (mn % 8) * W  + (mn / 8) * SBO + k * 2                             (LBO unused)
//   MN-major, no swizzle: (mn % 8) * 2  + (mn / 8) * SBO + (k % 8) * 16 + (k / 8) * LBO
//   MN-major, swizzled:   (mn % (W/2)) * 2 + (mn / (W/2)) * LBO + (k % 8) * W + (k / 8) * SBO
// added to the start address, then swizzled: address bits [4, 4 + b) ^= bits [7, 7 + b), b = log2(W / 16)
// (CuTe's Swizzle<b, 4, 3> on byte addresses). The XOR is taken on the shared-memory address itself, so a
// swizzled pattern must start on a (8 W)-byte boundary: this emulation requires base offset 0 and a start
// address in the first row of its pattern (K-major: start % W + 32 <= W, the k slice within one row;
// MN-major: start % W == 0), and aborts otherwise instead of guessing.
//
// Fragments (warp w = thread / 32 of the warpgroup, lane l, g = l / 4, t = l % 4):
//   D (64 x N, f32): register i = 4 j + r holds row 16 w + g + 8 (r / 2), column 8 j + 2 t + (r % 2).
//   A in registers (64 x 16): register r holds row 16 w + g + 8 (r % 2), columns 8 (r / 2) + 2 t + {0, 1}
//   (the lower column in the low half), i.e. mma.m16n8k16's A fragment per warp, the warps stacked along M.
// Numerics: products exact, each output's sum plus accumulator formed in double and rounded once to fp32 (the
// hardware may truncate the aligned sum: compare with a tolerance).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/warp_matrix_emu.h"

namespace fastattn {
namespace emu_wgmma {

constexpr int kWarpgroupThreads = 128;

struct Desc {
  uint32_t start;        // shared-memory byte address
  uint32_t lbo, sbo;     // bytes
  int base_offset;       // bits 49-51
  int swizzle_bytes;     // 0 (none), 32, 64, 128
};

inline Desc decode(uint64_t desc) {
  Desc d;
  d.start = static_cast<uint32_t>(desc & 0x3fffu) << 4;
  d.lbo = static_cast<uint32_t>((desc >> 16) & 0x3fffu) << 4;
  d.sbo = static_cast<uint32_t>((desc >> 32) & 0x3fffu) << 4;
  d.base_offset = static_cast<int>((desc >> 49) & 0x7u);
  static const int kWidth[4] = {0, 128, 64, 32};
  d.swizzle_bytes = kWidth[(desc >> 62) & 0x3u];
  return d;
}

inline uint32_t swizzle(uint32_t addr, int w) {
  if (w == 0) return addr;
  const uint32_t mask = static_cast<uint32_t>(w / 16 - 1);
  return addr ^ (((addr >> 7) & mask) << 4);
}

// Returns "" or why the descriptor is outside what this emulation models.
inline std::string check(const Desc& d, bool mn_major) {
  char buf[256];
  if (d.swizzle_bytes == 0) return "";
  if (d.base_offset != 0) {
    std::snprintf(buf, sizeof buf, "base offset %d (only 0, a pattern on its natural boundary, is emulated)",
                  d.base_offset);
    return buf;
  }
  const uint32_t w = static_cast<uint32_t>(d.swizzle_bytes);
  const uint32_t in_row = d.start % w;
  if ((d.start / w) % 8 != 0 || (mn_major ? in_row != 0 : in_row + 32 > w)) {
    std::snprintf(buf, sizeof buf,
                  "start address 0x%x is not in the first row of a %u-byte swizzle pattern on a %u-byte boundary%s",
                  d.start, w, 8 * w, mn_major ? " at a row start" : " (or its 32-byte k slice crosses the row)");
    return buf;
  }
  return "";
}

// Shared-memory byte address of element (mn, k) of an operand under descriptor d.
inline uint32_t element_address(const Desc& d, bool mn_major, int mn, int k) {
  const uint32_t m = static_cast<uint32_t>(mn), kk = static_cast<uint32_t>(k);
  const uint32_t w = static_cast<uint32_t>(d.swizzle_bytes);
  uint32_t off;
  if (!mn_major) {
    off = w == 0 ? (m % 8) * 16 + (m / 8) * d.sbo + (kk % 8) * 2 + (kk / 8) * d.lbo
                 : (m % 8) * w + (m / 8) * d.sbo + kk * 2;
  } else {
    off = w == 0 ? (m % 8) * 2 + (m / 8) * d.sbo + (kk % 8) * 16 + (kk / 8) * d.lbo
                 : (m % (w / 2)) * 2 + (m / (w / 2)) * d.lbo + (kk % 8) * w + (kk / 8) * d.sbo;
  }
  return swizzle(d.start + off, d.swizzle_bytes);
}

// (row, col) of accumulator register i of warpgroup thread `thread`.
inline void d_position(int thread, int i, int* row, int* col) {
  const int w = thread / 32, l = thread % 32, g = l / 4, t = l % 4, j = i / 4, r = i % 4;
  *row = 16 * w + g + 8 * (r / 2);
  *col = 8 * j + 2 * t + (r % 2);
}

// (row, col) of the low half of A register r of warpgroup thread `thread` (the high half is col + 1).
inline void a_position(int thread, int r, int* row, int* col) {
  const int w = thread / 32, l = thread % 32, g = l / 4, t = l % 4;
  *row = 16 * w + g + 8 * (r % 2);
  *col = 8 * (r / 2) + 2 * t;
}

// Reads a 16-bit element at shared address `addr`; `window` maps shared address 0 to host memory and
// [lo, hi) is the valid range. Returns false when out of range.
inline bool read16(const unsigned char* window, uint32_t lo, uint32_t hi, uint32_t addr, uint16_t* out) {
  if (addr < lo || addr + 2 > hi) return false;
  std::memcpy(out, window + addr, 2);
  return true;
}

struct Operands {
  int n;                      // 8 .. 256, multiple of 8
  emu_matrix::Elem elem;
  bool a_in_regs;
  const uint32_t (*a_regs)[4];  // [128][4] when a_in_regs
  uint64_t desc_a, desc_b;
  bool trans_b;               // B MN-major (N contiguous)
};

// Fills a (64 x 16) and b (16 x n) as doubles; returns "" or the error (an address out of range, a layout the
// emulation does not model).
inline std::string load_operands(const Operands& op, const unsigned char* window, uint32_t lo, uint32_t hi,
                                 double (*a)[16], double (*b)[256]) {
  char buf[256];
  if (op.a_in_regs) {
    for (int th = 0; th < kWarpgroupThreads; ++th)
      for (int r = 0; r < 4; ++r) {
        int row, col;
        a_position(th, r, &row, &col);
        for (int h = 0; h < 2; ++h)
          a[row][col + h] = emu_matrix::elem_to_float(emu_matrix::reg_half(op.a_regs[th][r], h), op.elem);
      }
  } else {
    const Desc da = decode(op.desc_a);
    const std::string why = check(da, false);
    if (!why.empty()) return "A descriptor: " + why;
    for (int m = 0; m < 64; ++m)
      for (int k = 0; k < 16; ++k) {
        uint16_t v;
        const uint32_t addr = element_address(da, false, m, k);
        if (!read16(window, lo, hi, addr, &v)) {
          std::snprintf(buf, sizeof buf, "A element (%d, %d) at shared address 0x%x is outside the dynamic shared "
                        "memory [0x%x, 0x%x)", m, k, addr, lo, hi);
          return buf;
        }
        a[m][k] = emu_matrix::elem_to_float(v, op.elem);
      }
  }
  const Desc db = decode(op.desc_b);
  const std::string why = check(db, op.trans_b);
  if (!why.empty()) return "B descriptor: " + why;
  for (int nn = 0; nn < op.n; ++nn)
    for (int k = 0; k < 16; ++k) {
      uint16_t v;
      const uint32_t addr = element_address(db, op.trans_b, nn, k);
      if (!read16(window, lo, hi, addr, &v)) {
        std::snprintf(buf, sizeof buf, "B element (k %d, n %d) at shared address 0x%x is outside the dynamic shared "
                      "memory [0x%x, 0x%x)", k, nn, addr, lo, hi);
        return buf;
      }
      b[k][nn] = emu_matrix::elem_to_float(v, op.elem);
    }
  return "";
}

// Accumulator i of `thread` after D = A B (+ c when scale_d).
inline float mma_output(const double (*a)[16], const double (*b)[256], int thread, int i, bool scale_d, float c) {
  int row, col;
  d_position(thread, i, &row, &col);
  double acc = scale_d ? static_cast<double>(c) : 0.0;
  for (int k = 0; k < 16; ++k) acc += a[row][k] * b[k][col];
  return static_cast<float>(acc);
}

}  // namespace emu_wgmma
}  // namespace fastattn
