// What mma.sync.m16n8k16 and ldmatrix.m8n8 compute, as plain host functions over all 32 lanes' inputs: the
// core of their CPU emulation (csrc/common/{mma,ldmatrix}.cuh under FASTATTN_EMULATE, where the lanes
// exchange their inputs through the warp's scratch area) and of the host layout test
// (tests/cpp/fragment_layout_test.cpp, which fills the inputs of 32 lanes in a loop). Host-only, no CUDA.
//
// Numerics of the emulated mma: the 16 products are exact (f16 x f16 and bf16 x bf16 fit in a double), their
// sum plus the accumulator is formed in double and rounded once to fp32. The hardware also forms the products
// exactly but may truncate the aligned sum, so results agree to a few fp32 ulps of the largest term, not
// bit for bit; compare with a tolerance, as the GPU tests do.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/fragment_layout.h"

namespace fastattn {
namespace emu_matrix {

enum class Elem { kF16, kBF16 };

// IEEE binary16 bits -> float (exact, including subnormals, infinities and NaN payloads' sign).
inline float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  float mag;
  if (exp == 0) {
    mag = std::ldexp(static_cast<float>(man), -24);  // zero or subnormal: man * 2^-24
  } else if (exp == 31) {
    mag = man ? std::nanf("") : INFINITY;
  } else {
    mag = std::ldexp(static_cast<float>(man | 0x400u), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &mag, 4);
  bits |= sign;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// bfloat16 bits -> float: the upper half of an fp32.
inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline float elem_to_float(uint16_t h, Elem e) {
  return e == Elem::kF16 ? f16_bits_to_float(h) : bf16_bits_to_float(h);
}

inline uint16_t reg_half(uint32_t reg, int half) { return static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu); }

// What one lane deposits for mma.m16n8k16: its A, B and C fragments.
struct MmaDeposit {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

// D fragments of all 32 lanes for D = A * B + C, the A, B, C fragments of all 32 lanes given in `all`.
inline void mma_m16n8k16_warp(const MmaDeposit* all, Elem elem, float (*d)[4]) {
  double a[16][16], b[16][8];
  for (int l = 0; l < frag::kWarpSize; ++l) {
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) {
        const frag::RowCol rc = frag::mma_a(l, r, h);
        a[rc.row][rc.col] = elem_to_float(reg_half(all[l].a[r], h), elem);
      }
    for (int r = 0; r < 2; ++r)
      for (int h = 0; h < 2; ++h) {
        const frag::RowCol kn = frag::mma_b(l, r, h);
        b[kn.row][kn.col] = elem_to_float(reg_half(all[l].b[r], h), elem);
      }
  }
  for (int l = 0; l < frag::kWarpSize; ++l)
    for (int i = 0; i < 4; ++i) {
      const frag::RowCol rc = frag::mma_c(l, i);
      double acc = static_cast<double>(all[l].c[i]);
      for (int k = 0; k < 16; ++k) acc += a[rc.row][k] * b[k][rc.col];
      d[l][i] = static_cast<float>(acc);
    }
}

// The warp's scratch area during an emulated mma: every lane's inputs, then every lane's D, computed once by
// the first lane past the rendezvous (`done` is cleared by each lane before it deposits: no lane can still be
// reading the previous results then, since all passed the closing rendezvous of the previous mma).
struct MmaScratch {
  MmaDeposit in[frag::kWarpSize];
  float d[frag::kWarpSize][4];
  int done;
};

// Registers 0..num-1 of `lane` for ldmatrix.m8n8.x{num}{.trans}.b16, the row addresses of all 32 lanes
// given in `addr` (only lanes 0 .. 8 * num - 1 are read, as on the hardware). Each row address must be
// 16-byte aligned: returns -1, or the first lane whose (used) address is not, in which case `out` is unset.
inline int ldmatrix_lane(const void* const* addr, int num, bool trans, int lane, uint32_t* out) {
  for (int l = 0; l < 8 * num; ++l)
    if (reinterpret_cast<uintptr_t>(addr[l]) % 16 != 0) return l;
  for (int j = 0; j < num; ++j) {
    uint32_t reg = 0;
    for (int h = 0; h < 2; ++h) {
      const frag::RowCol rc = frag::ldmatrix_element(lane, h, trans);
      const int src_lane = frag::ldmatrix_address_lane(j, rc.row);
      const unsigned char* row = static_cast<const unsigned char*>(addr[src_lane]);
      uint16_t v;
      std::memcpy(&v, row + 2 * rc.col, 2);
      reg |= static_cast<uint32_t>(v) << (16 * h);
    }
    out[j] = reg;
  }
  return -1;
}

}  // namespace emu_matrix
}  // namespace fastattn
