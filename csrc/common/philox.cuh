// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011) as a device
// function, and attention dropout's keep test built on it (the stream of common/dropout.h).
//
// Plain 32-bit integer C++: the 32 x 32 -> 64-bit products compile to one IMAD.WIDE.U32 each on the GPU and to
// ordinary multiplies in the emulated build (no __umulhi needed). The round keys come precomputed
// (AttnDropout::round_key), so a round is 2 wide multiplies and 2 three-input XORs (LOP3) per counter.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "common/dropout.h"

namespace fastattn {

// First output word of Philox4x32-10 on the counter (c0, c1, c2, c3) with the key schedule rk. (Only word 0 is
// returned: the last round's other words are dead and the compiler drops their products.)
__device__ __forceinline__ uint32_t philox4x32_10_word0(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                        const uint32_t (&rk)[kPhiloxRounds][2]) {
#pragma unroll
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const uint64_t pa = static_cast<uint64_t>(c0) * 0xD2511F53u;
    const uint64_t pb = static_cast<uint64_t>(c2) * 0xCD9E8D57u;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ rk[r][0];
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ rk[r][1];
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
  }
  return c0;
}

// Whether the probability of (query row, key col) of (batch, query head) bh = b * Hq + h survives dropout.
__device__ __forceinline__ bool dropout_keep(const AttnDropout& d, uint32_t bh, int64_t row, int64_t col) {
  return philox4x32_10_word0(static_cast<uint32_t>(col), static_cast<uint32_t>(row), bh, d.offset, d.round_key) >=
         d.threshold;
}

}  // namespace fastattn
