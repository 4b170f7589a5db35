// Attention dropout's parameters: the torch-free part shared by the binding (host C++) and the attention kernels.
//
// The stream is fastattn.reference.dropout_keep's (and the Triton kernels' tiles._dropout_keep): for query row i
// of (batch b, query head h), one Philox4x32-10 keyed by the 64-bit seed on the counter (j / 8, i, b * Hq + h,
// offset) draws keys 8 (j / 8) .. + 7: its output words r0..r3 give 8 16-bit values, key j taking word
// (j % 8) / 2, the low half if j is even, the high half if odd, and the probability is kept iff that value >=
// threshold = round(p * 2^16) (p at a resolution of 1/65536), then scaled by 1 / (1 - p). The kernels draw it
// where they need it (forward, dK/dV, dQ) and never store it.
#pragma once

#include <cmath>
#include <cstdint>

namespace fastattn {

constexpr int kPhiloxRounds = 10;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key increments per round (golden ratio, sqrt(3) - 1)
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct AttnDropout {
  uint32_t round_key[kPhiloxRounds][2];  // the seed's key schedule, computed once on the host: the kernels read
                                         // each round's key as an operand from the parameter bank
  uint32_t offset;                       // counter word 3
  uint32_t threshold;                    // kept iff its 16-bit value >= threshold (<= 65536)
  float scale;                           // 1 / (1 - p) for a kept probability
  bool enabled;                          // p > 0: every kernel tests this (uniform branch), no template flag
};

// Parameters for dropout p in [0, 1) with (seed, offset) as drawn by fastattn.ops.attention.dropout_seed.
// threshold: round half to even, as Python's round() in fastattn.reference.dropout_threshold. A p within 2^-17
// of 1 rounds to 65536, which no 16-bit value reaches: everything dropped, as in the reference.
inline AttnDropout make_attn_dropout(double p, int64_t seed, int64_t offset) {
  AttnDropout d{};
  d.enabled = p > 0.0;
  const uint64_t s = static_cast<uint64_t>(seed);
  uint32_t k0 = static_cast<uint32_t>(s), k1 = static_cast<uint32_t>(s >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    d.round_key[r][0] = k0;
    d.round_key[r][1] = k1;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  d.offset = static_cast<uint32_t>(static_cast<uint64_t>(offset));
  const double thr = std::nearbyint(p * 65536.0);
  d.threshold = thr >= 65536.0 ? 65536u : static_cast<uint32_t>(thr);
  d.scale = static_cast<float>(1.0 / (1.0 - p));
  return d;
}

}  // namespace fastattn
