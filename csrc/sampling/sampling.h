// Sort-free top-k / top-p / min-p sampling and filtering from logits: the torch-free interface of the binding.
//
// Semantics (fastattn.reference.top_k_top_p_filter / sample): z = logits / T in fp32 (T == 0: greedy on the
// undivided logits, lowest index among maxima); top-k keeps j iff fewer than k logits are strictly larger;
// top-p keeps j iff the mass (after top-k) of the tokens strictly more probable than j is < top_p of the
// top-k mass; min-p keeps j iff z_j - max z >= log(min_p); the draw inverts the CDF of the kept tokens in
// vocabulary order at the reference's counter-based uniform of the row's seed. A NaN row gives token -1 and
// an all-NaN filter row; a row with no finite logit or a +inf logit gives token -1 (the filter keeps the +inf
// entries of such a row).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/dtype.h"

namespace fastattn {

// A per-row sampling parameter as the caller gave it: element row * stride (stride 0: one value for every row)
// of a tensor of `type`; ptr == nullptr: the number beside it in SamplingParams is used. The kernel converts
// the element to float (int64 for top_k) and clamps it (sampling_detail::row_param).
enum class ParamType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3, kInt32 = 4, kInt64 = 5 };
struct RowParam {
  const void* ptr;
  int64_t stride;  // elements
  ParamType type;
};

struct SamplingParams {
  const void* logits;  // (rows, vocab), element stride 1 along vocab
  int64_t rows;
  int64_t vocab;
  int64_t row_stride;  // elements
  // Each parameter: a (rows,) tensor when its ptr is set (clamped as the kernel reads it: temperature into
  // [0, inf], top_k into [0, inf), top_p into [FLT_MIN, 1], min_p into [0, 1]; NaN kept), else the value
  // (range-checked by the caller).
  RowParam temperature;
  float temperature_val;
  RowParam top_k;
  int64_t top_k_val;
  RowParam top_p;
  float top_p_val;
  RowParam min_p;
  float min_p_val;
  const int64_t* seeds;  // (rows,) int64, or nullptr -> seed_val for every row
  int64_t seed_val;
  int64_t* tokens;   // sample: (rows,) int64 out; nullptr in filter mode
  float* filtered;   // filter: (rows, vocab) fp32 contiguous out; nullptr in sample mode
};

// Launches on `stream`; cudaSuccess without a launch when rows == 0 or vocab == 0.
cudaError_t sampling(const SamplingParams& params, DType dtype, cudaStream_t stream);

}  // namespace fastattn
