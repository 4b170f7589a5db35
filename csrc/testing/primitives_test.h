// Small test kernels for the tensor-core and async-copy primitives (csrc/common/{mma,ldmatrix,cp_async}.cuh),
// built into both the GPU extension and the CPU emulation so that tests/test_cuda_primitives.py runs the
// same kernels both ways: the first GPU run checks the emulation against the hardware. Torch-free; all
// tensors contiguous, row-major; launchers return the launch status.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/dtype.h"

namespace fastattn {
namespace testing {

// One warp, one mma.m16n8k16, fragments loaded and stored with plain loads through the layout functions:
//   d (16 x 8 f32) = a (16 x 16) * b (16 x 8, k x n) + c (16 x 8 f32); dtype kFloat16 or kBFloat16.
cudaError_t mma_test(const void* a, const void* b, const float* c, float* d, DType dtype, cudaStream_t stream);

// How the ldmatrix test loads A (16 x 16, M x K) and B (16 x 16, K x N) from shared memory.
//   a_mode: 0 x4, 1 x2 (twice), 2 x1 (four times) from A stored row-major;
//           3 x4.trans, 4 x2.trans, 5 x1.trans from A stored transposed (K x M).
//   b_mode: 0 x4, 1 x2, 2 x1 from B stored transposed (N x K);
//           3 x4.trans, 4 x2.trans, 5 x1.trans from B stored row-major (K x N).
constexpr int kLdmatrixModes = 6;

// One warp: a, b to shared memory (padded rows), fragments by ldmatrix in the given modes, two mma:
//   d (16 x 16 f32) = a (16 x 16) * b (16 x 16) + c (16 x 16 f32).
cudaError_t ldmatrix_test(const void* a, const void* b, const float* c, float* d, DType dtype, int a_mode,
                          int b_mode, cudaStream_t stream);

// Copies of `bytes` (4, 8 or 16) per thread by 64 threads through cp.async into three shared buffers,
// committed as three groups (the third one zero-filling past a per-thread src_bytes) and read back, by
// another thread (of the other warp), after wait_group<2>, <1>, <0>; then a fourth copy reuses buffer 0
// and is read after wait_all. Shared memory starts filled with kCpAsyncSentinel.
//   src: 4 * 64 * bytes / 4 floats (stage s, thread i: floats [(s * 64 + i) * bytes / 4, + bytes / 4)).
//   out: the same shape: stage s, position i holds what thread i read of thread partner(i)'s copy.
// planted_missing_wait: the read of group 1 follows only wait_group<2> (a bug the tests must catch).
constexpr float kCpAsyncSentinel = -12345.0f;
cudaError_t cp_async_test(const float* src, float* out, int bytes, bool planted_missing_wait,
                          cudaStream_t stream);

// c (m x n f32) = a (m x k) * b (k x n), 64 x 64 tiles per 128-thread block, k in steps of 32 through a
// two-stage cp.async pipeline, ldmatrix.x4 for A, ldmatrix.x4.trans for B, mma.m16n8k16.
// m, n multiples of 64, k a multiple of 32 (else cudaErrorInvalidValue). `planted` picks a bug the tests
// must catch: kGemmMissingWait: the tail commits no empty group, so the last k tile is read before it
// lands; kGemmMissingBarrier: no __syncthreads between computing on a stage and refilling it.
enum GemmPlanted : int { kGemmCorrect = 0, kGemmMissingWait = 1, kGemmMissingBarrier = 2 };
cudaError_t gemm_test(const void* a, const void* b, float* c, int64_t m, int64_t n, int64_t k, DType dtype,
                      int planted, cudaStream_t stream);

}  // namespace testing
}  // namespace fastattn

#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
// Emulated build only: when emulated cp.async copies land, "at_wait" (default) or "at_issue"
// (csrc/common/cp_async.cuh); returns 0, or -1 for another name. Exported for the tests (ctypes).
extern "C" __attribute__((visibility("default"))) int fastattn_emu_set_cp_async_landing(const char* mode);
#endif
