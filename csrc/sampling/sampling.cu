// Sampling dispatcher: DType -> the explicit instantiation in instantiations/sampling_<dtype>.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sampling/sampling.h"
#include "sampling/sampling_launch.h"

namespace fastattn {

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
