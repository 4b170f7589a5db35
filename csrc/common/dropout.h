// Attention dropout's parameters: the torch-free part shared by the binding (host C++) and the attention kernels.
//
// The stream is fastattn.reference.dropout_keep's (and the Triton kernels' tiles._dropout_keep): for the score
// of query row i and key j of (batch b, query head h), Philox4x32-10 keyed by the 64-bit seed on the counter
// (j, i, b * Hq + h, offset) gives its first output word r, and the probability is kept iff r >= threshold =
// round(p * 2^32), then scaled by 1 / (1 - p). The kernels draw it where they need it (forward, dK/dV, dQ) and
// never store it.
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
  uint32_t threshold;                    // kept iff r >= threshold
  float scale;                           // 1 / (1 - p) for a kept probability
  bool enabled;                          // p > 0: every kernel tests this (uniform branch), no template flag
};

// Parameters for dropout p in [0, 1) with (seed, offset) as drawn by fastattn.ops.attention.dropout_seed.
// threshold: round half to even, as Python's round() in fastattn.reference.dropout_threshold. A p so close to 1
// that round(p * 2^32) = 2^32 drops everything: threshold 0 (keep all) with scale 0 is the same result.
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
  const double thr = std::nearbyint(p * 4294967296.0);
  if (thr >= 4294967296.0) {
    d.threshold = 0;
    d.scale = 0.0f;
  } else {
    d.threshold = static_cast<uint32_t>(thr);
    d.scale = static_cast<float>(1.0 / (1.0 - p));
  }
  return d;
}

}  // namespace fastattn
