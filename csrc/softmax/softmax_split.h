// The row-split plan shared by the softmax forward and backward (host and device, torch-free).
//
// Few wide rows (e.g. B = 1, V = 152k) would leave all but `rows` SMs idle with one CTA per row, so such a row
// is cut into `splits` contiguous pieces of `chunk` elements, one CTA each: a first kernel writes per-piece
// partials (forward: (max, sum) in the log2 domain; backward: the dot product sum(dy * y)) to a workspace,
// a second one combines the row's partials in a fixed order (every CTA of the row gets bitwise the same
// result, and runs are reproducible) and writes its piece. The plan depends on (rows, n) only, so the binding
// can size the workspace without a device query.
#pragma once

#include <cstdint>

namespace fastattn {
namespace softmax_split {

constexpr int64_t kMinWidth = 16384;   // narrower rows fit one CTA's registers (one read)
constexpr int64_t kMaxRows = 32;       // with more rows than this, rows alone fill a good part of the GPU
constexpr int64_t kChunk = 8192;       // elements per CTA (32 KB of fp32)
constexpr int64_t kMaxSplits = 64;

struct Plan {
  int64_t splits;  // 0: no split
  int64_t chunk;
};

inline Plan plan(int64_t rows, int64_t n) {
  if (rows <= 0 || rows > kMaxRows || n < kMinWidth) return {0, 0};
  int64_t splits = (n + kChunk - 1) / kChunk;
  if (splits > kMaxSplits) splits = kMaxSplits;
  int64_t chunk = (n + splits - 1) / splits;
  chunk = (chunk + 7) / 8 * 8;             // a multiple of 8 elements: every piece starts at the same 16-byte phase
  splits = (n + chunk - 1) / chunk;
  return {splits, chunk};
}

}  // namespace softmax_split
}  // namespace fastattn
