// Attention dropout on mma.m16n8k16 C fragments: which scores of a warp's tile survive, as one bit each.
//
// A thread (lane = 4 g + t) holds, for n tile nt (0..NT-1) and register i (0..3), the element at fragment row
// frow[i >> 1] (rows g and g + 8 of the warp's 16) and column col0 + 8 nt + 2 t + (i & 1). The forward and the
// dQ kernel have query rows and key columns; the dK/dV kernel has key rows and query columns (S^T).
//
// One Philox4x32-10 call draws the 8 keys of a (query, 8-key group) pair (common/dropout.h), and a warp's tile
// holds each such pair whole, spread over several lanes, so every call is made by exactly one lane and its keep
// byte (dropout_keep_byte) goes to the others by shuffles:
// - query rows (forward, dQ): pair (row frow[s], n tile nt) = call c = 2 nt + s of the quad (the 4 lanes that
//   share rows g, g + 8); lane t needs bits 2 t, 2 t + 1 of each of the quad's 2 NT bytes (word t, both
//   halves). Lane t makes calls c = t + 4 k and keeps byte k of a word at bits 8 k; from quad lane s's word,
//   lane t takes bits 2 t, 2 t + 1 of each byte, which are its elements 2 c, 2 c + 1 = bits 8 k + 2 s + {0, 1}.
// - key rows (dK/dV): pair (query column col0 + 8 nt + 2 t + h, key group of frow[s]) = call
//   c = 4 nt + 2 s + h of the 8 lanes that share t (and so the query columns); every one of them holds key
//   8 group + g of both groups, so lane g needs bit g of each of the 4 NT bytes. Lane g makes calls c = g + 8 k
//   (byte k at bits 8 k); from lane g' it takes bit g of each byte, its elements c = 8 k + g'.
// Each thread makes NT / 2 calls for its 4 NT scores (one per score before), plus 4 or 8 shuffles. The calls
// run in a loop that is not unrolled: one call is ~40 integer instructions and ~8 live registers, and unrolled
// over the tile the compiler interleaves several and the dK/dV kernels (at 247-255 registers) spill.
#pragma once

#include <cstdint>

#include "common/dropout.h"
#include "common/philox.cuh"

namespace fastattn {
namespace attn {

// Bit 4 nt + i set iff that element is kept. kRowIsQuery: fragment rows are query rows (forward, dQ), else keys.
// col0 (query rows) or frow0 (key rows) is a multiple of 8 plus g; frow1 = frow0 + 8. Every lane of the warp
// calls it together (the shuffles).
template <int NT, bool kRowIsQuery>
__device__ __forceinline__ uint32_t dropout_keep_bits(const AttnDropout& d, uint32_t bh, int64_t frow0,
                                                      int64_t frow1, int64_t col0, int lane) {
  static_assert(NT * 4 <= 32, "one bit per element of the tile in a 32-bit mask");
  constexpr int kSpread = kRowIsQuery ? 4 : 8;  // lanes that share one call's byte
  constexpr int kCalls = kRowIsQuery ? 2 * NT : 4 * NT;
  constexpr int kPerLane = (kCalls + kSpread - 1) / kSpread;
  const int t = lane & 3, g = lane >> 2;
  const int me = kRowIsQuery ? t : g;
  uint32_t mine = 0;
#pragma unroll 1
  for (int k = 0; k < kPerLane; ++k) {
    const int c = me + kSpread * k;
    if (kCalls % kSpread != 0 && c >= kCalls) break;
    uint32_t byte;
    if (kRowIsQuery) {  // c = 2 nt + s: row frow[s], keys col0 + 8 nt ..
      byte = dropout_keep_byte(d, bh, (c & 1) ? frow1 : frow0, (col0 >> 3) + (c >> 1));
    } else {  // c = 4 nt + 2 s + h: query col0 + 8 nt + 2 t + h, keys of frow[s]'s group
      const int64_t q = col0 + 8 * (c >> 2) + 2 * t + (c & 1);
      byte = dropout_keep_byte(d, bh, q, ((c & 2) ? frow1 : frow0) >> 3);
    }
    mine |= byte << (8 * k);
  }
  uint32_t bits = 0;
  if (kRowIsQuery) {
    const int base = lane & ~3;
#pragma unroll
    for (int s = 0; s < 4; ++s)
      bits |= ((__shfl_sync(0xffffffffu, mine, base | s) >> (2 * t)) & 0x03030303u) << (2 * s);
  } else {
    const int kb = static_cast<int>(frow0 & 7);  // this lane's key within its group (= g)
#pragma unroll
    for (int s = 0; s < 8; ++s) bits |= ((__shfl_sync(0xffffffffu, mine, 4 * s + t) >> kb) & 0x01010101u) << s;
  }
  return bits;
}

// The factor of element (nt, i): scale if kept, 0 if dropped.
__device__ __forceinline__ float dropout_factor(uint32_t bits, int e, float scale) {
  return (bits >> e) & 1u ? scale : 0.0f;
}

}  // namespace attn
}  // namespace fastattn
