// fastattn-static: no-matmul (the probe kernel only; the wgmma kernel is in the instantiations)
// Hopper attention forward: the flag, the device check and the (dtype, head dim) dispatch to the explicit
// instantiations in instantiations/attn_fwd_sm90_hdim<D>_<dtype>.cu.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention/attn_fwd_sm90.h"

namespace fastattn {
namespace {

std::atomic<unsigned long long> g_sm90_launches{0};

#if defined(__CUDACC__)
__global__ void sm90a_probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

// Whether the current device is sm_90 and runs this extension's sm_90a code; probed once per device.
bool device_runs_sm90a() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return false;
  }
  const int known = cache[dev].load();
  if (known != 0) return known == 1;
  int major = 0, minor = 0, flag = 0;
  bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
            minor == 0;
  if (ok) {
    int* d_flag = nullptr;
    ok = cudaMalloc(&d_flag, sizeof(int)) == cudaSuccess;
    if (ok) {
      sm90a_probe_kernel<<<1, 1>>>(d_flag);
      ok = cudaMemcpy(&flag, d_flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess && flag == 1;
      cudaFree(d_flag);
    }
  }
  cudaGetLastError();  // a failed probe leaves no error behind for the caller's launch check
  cache[dev].store(ok ? 1 : 2);
  return ok;
}
#endif

template <typename T>
cudaError_t sm90_dim(const AttnFwdParams& params, int head_dim, cudaStream_t stream) {
  switch (head_dim) {
    case 64:
      return attn_fwd_sm90_launch<T, 64>(params, stream);
    case 128:
      return attn_fwd_sm90_launch<T, 128>(params, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

bool attn_fwd_sm90_enabled(const AttnFwdParams& params, DType dtype, int head_dim) {
  const char* flag = std::getenv("FASTATTN_CUDA_HOPPER");
  if (flag == nullptr || std::strcmp(flag, "1") != 0) return false;
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16) return false;
  if (head_dim != 64 && head_dim != 128) return false;
  if (params.bias != nullptr || params.key_padding != nullptr || params.dropout.enabled) return false;
#if defined(__CUDACC__)
  return device_runs_sm90a();
#else
  return true;
#endif
}

cudaError_t attn_fwd_sm90(const AttnFwdParams& params, DType dtype, int head_dim, cudaStream_t stream) {
  cudaError_t err;
  switch (dtype) {
    case DType::kFloat16:
      err = sm90_dim<__half>(params, head_dim, stream);
      break;
    case DType::kBFloat16:
      err = sm90_dim<__nv_bfloat16>(params, head_dim, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  if (err == cudaSuccess) g_sm90_launches.fetch_add(1);
  return err;
}

}  // namespace fastattn

extern "C" unsigned long long fastattn_attn_fwd_sm90_launches(void) { return fastattn::g_sm90_launches.load(); }
