// Attention dropout on mma.m16n8k16 C fragments: which scores of a warp's tile survive, as one bit each.
//
// A thread holds, for n tile nt (0..NT-1) and register i (0..3), the element at fragment row frow[i >> 1]
// (rows g and g + 8 of the warp's 16) and column col0 + 8 nt + 2 t + (i & 1) (t = lane % 4). The forward and
// the dQ kernel have query rows and key columns; the dK/dV kernel has key rows and query columns (S^T).
//
// Why bits, drawn in a loop that is not unrolled: one Philox4x32-10 per score is ~40 integer instructions and
// ~8 live registers; unrolled over the tile, the compiler interleaves several draws and the dK/dV kernels (at
// 247-255 registers) spill. Drawn one at a time into a 32-bit mask while the fragments are live, it costs one
// register more than no dropout; applying a bit is a shift and a select.
#pragma once

#include <cstdint>

#include "common/dropout.h"
#include "common/philox.cuh"

namespace fastattn {
namespace attn {

// Bit 4 nt + i set iff that element is kept. kRowIsQuery: fragment rows are query rows (forward, dQ), else keys.
template <int NT, bool kRowIsQuery>
__device__ __forceinline__ uint32_t dropout_keep_bits(const AttnDropout& d, uint32_t bh, int64_t frow0,
                                                      int64_t frow1, int64_t col0, int t) {
  static_assert(NT * 4 <= 32, "one bit per element of the tile in a 32-bit mask");
  uint32_t bits = 0;
#pragma unroll 1
  for (int e = 0; e < NT * 4; ++e) {
    const int64_t frow = (e & 2) ? frow1 : frow0;
    const int64_t fcol = col0 + 8 * (e >> 2) + 2 * t + (e & 1);
    const bool keep = kRowIsQuery ? dropout_keep(d, bh, frow, fcol) : dropout_keep(d, bh, fcol, frow);
    bits |= static_cast<uint32_t>(keep) << e;
  }
  return bits;
}

// The factor of element (nt, i): scale if kept, 0 if dropped.
__device__ __forceinline__ float dropout_factor(uint32_t bits, int e, float scale) {
  return (bits >> e) & 1u ? scale : 0.0f;
}

}  // namespace attn
}  // namespace fastattn
