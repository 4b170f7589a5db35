// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011) as a device
// function, and attention dropout's 8-key draw built on it (the stream of common/dropout.h).
//
// Plain 32-bit integer C++: the 32 x 32 -> 64-bit products compile to one IMAD.WIDE.U32 each on the GPU and to
// ordinary multiplies in the emulated build (no __umulhi needed). The round keys come precomputed
// (AttnDropout::round_key), so a round is 2 wide multiplies and 2 three-input XORs (LOP3) per counter.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "common/dropout.h"

namespace fastattn {

// Philox4x32-10 on the counter c (in place: c becomes the four output words) with the key schedule rk.
__device__ __forceinline__ void philox4x32_10(uint32_t (&c)[4], const uint32_t (&rk)[kPhiloxRounds][2]) {
#pragma unroll
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const uint64_t pa = static_cast<uint64_t>(c[0]) * 0xD2511F53u;
    const uint64_t pb = static_cast<uint64_t>(c[2]) * 0xCD9E8D57u;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c[1] ^ rk[r][0];
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c[3] ^ rk[r][1];
    c[1] = static_cast<uint32_t>(pb);
    c[3] = static_cast<uint32_t>(pa);
    c[0] = n0;
    c[2] = n2;
  }
}

// The keep bits of the 8 keys 8 group .. 8 group + 7 of query row `row` of (batch, query head) bh = b * Hq + h:
// bit k (key 8 group + k) is set iff the 16-bit value k of one Philox call on (group, row, bh, offset) -- word
// k / 2, its low half if k is even, high if odd -- is >= the threshold.
__device__ __forceinline__ uint32_t dropout_keep_byte(const AttnDropout& d, uint32_t bh, int64_t row, int64_t group) {
  uint32_t c[4] = {static_cast<uint32_t>(group), static_cast<uint32_t>(row), bh, d.offset};
  philox4x32_10(c, d.round_key);
  uint32_t bits = 0;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    bits |= static_cast<uint32_t>((c[w] & 0xFFFFu) >= d.threshold) << (2 * w);
    bits |= static_cast<uint32_t>((c[w] >> 16) >= d.threshold) << (2 * w + 1);
  }
  return bits;
}

}  // namespace fastattn
