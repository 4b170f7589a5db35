// Sampling dispatcher: DType -> the explicit instantiation in instantiations/sampling_<dtype>.cu; the row split.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sampling/sampling.h"
#include "sampling/sampling_launch.h"

namespace fastattn {

int64_t sampling_splits(int64_t rows, int64_t vocab, DType dtype) {
  using namespace sampling_detail;
  if (rows <= 0 || rows > kSplitMaxRows || vocab <= 0 || vocab > INT32_MAX) return 1;
  const int64_t esize = dtype == DType::kFloat32 ? 4 : 2;
  const int64_t ch = chunk_elems(esize);
  const int64_t nch = (vocab + ch - 1) / ch;
  if (nch < 2 * kMinChunksPerSplit) return 1;
  int64_t cps = (nch + kMaxSplits - 1) / kMaxSplits;
  if (cps < kMinChunksPerSplit) cps = kMinChunksPerSplit;
  return (nch + cps - 1) / cps;
}

int64_t sampling_workspace_bytes(int64_t rows, int64_t vocab, DType dtype) {
  const int64_t s = sampling_splits(rows, vocab, dtype);
  return s > 1 ? rows * s * sampling_detail::kWsSlotBytes : 0;
}

cudaError_t sampling(const SamplingParams& params, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return sampling_launch<float>(params, stream);
    case DType::kFloat16:
      return sampling_launch<__half>(params, stream);
    case DType::kBFloat16:
      return sampling_launch<__nv_bfloat16>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastattn
