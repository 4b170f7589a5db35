// The Hopper attention forward (attn_fwd_sm90_kernel.cuh: wgmma, sm_90a), behind a flag: attn_fwd() takes it
// when attn_fwd_sm90_enabled() says so, and the mma.sync kernel otherwise. Host-only, torch-free.
#pragma once

#include <cuda_runtime_api.h>

#include "attention/attn_fwd.h"
#include "common/dtype.h"

namespace fastattn {

// True when FASTATTN_CUDA_HOPPER=1 (read on every call) and the call is one the kernel takes: fp16 / bf16, head
// dim 64 or 128, no bias, no key padding mask, no dropout; under nvcc also the current device is sm_90 and the extension
// holds sm_90a code (a one-time probe per device: a tiny kernel and a synchronous copy). The emulated build
// needs only the flag, so that the tests run the kernel on the CPU.
bool attn_fwd_sm90_enabled(const AttnFwdParams& params, DType dtype, int head_dim);

// Launches the Hopper kernel (dtype fp16 / bf16, head dim 64 / 128; others: cudaErrorInvalidValue).
cudaError_t attn_fwd_sm90(const AttnFwdParams& params, DType dtype, int head_dim, cudaStream_t stream);

template <typename T, int D>
cudaError_t attn_fwd_sm90_launch(const AttnFwdParams& params, cudaStream_t stream);

}  // namespace fastattn

// Launches of the Hopper kernel so far in this process (tests check that the flag took effect; ctypes).
extern "C" __attribute__((visibility("default"))) unsigned long long fastattn_attn_fwd_sm90_launches(void);
