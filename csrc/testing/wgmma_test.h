// Test kernel of the Hopper warpgroup MMA primitives (csrc/common/wgmma.cuh), built into both CUDA builds so
// that tests/test_cuda_wgmma.py runs the same kernel on the emulation and, on an sm_90 GPU, on the hardware
// (the first run there checks the emulation's reading of the PTX ISA layouts). Torch-free; tensors contiguous,
// row-major; the launcher returns the launch status.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/dtype.h"

namespace fastattn {
namespace testing {

// How an operand sits in shared memory, i.e. which descriptor reads it (or A from registers).
enum WgmmaOperandMode : int {
  kWgKNone = 0,   // K-major, no swizzle (8 x 16-byte core matrices; padded row-group stride)
  kWgK128 = 1,    // K-major, 128-byte swizzle
  kWgK64 = 2,     // K-major, 64-byte swizzle
  kWgK32 = 3,     // K-major, 32-byte swizzle
  kWgMNNone = 4,  // MN-major (B only: N contiguous), no swizzle
  kWgMN128 = 5,
  kWgMN64 = 6,
  kWgMN32 = 7,
  kWgRegs = 8,    // A only: from registers (the m16n8k16 A fragment per warp)
};
constexpr int kWgmmaModes = 9;

// Bugs the tests must catch.
enum WgmmaPlanted : int {
  kWgCorrect = 0,
  kWgWrongSwizzle = 1,     // B's descriptor says "no swizzle" for data stored swizzled
  kWgMissingWait = 2,      // the accumulators are stored before wgmma.wait_group
  kWgMissingFence = 3,     // no wgmma.fence before the first wgmma (the emulation aborts)
  kWgWarpSkips = 4,        // warp 3 of warpgroup 0 leaves before the wgmma (the emulation aborts)
  kWgOverwriteEarly = 5,   // B's shared memory is zeroed after the wgmma is issued, before its wait
};

// d (64 W x n f32) = a (64 W x k) * b (k x n) + c (64 W x n f32; nullptr: no accumulator input, scale-d 0),
// W = warpgroups (1 or 2) of 128 threads, each computing its 64 rows with k / 16 chained wgmma.m64nNk16.
// k in {16, 32, 48, 64}; n in {8, 64, 128, 256}; a_mode a K-major mode or kWgRegs; b_mode any but kWgRegs;
// dtype kFloat16 or kBFloat16. Other values: cudaErrorInvalidValue; a GPU that is not sm_90:
// cudaErrorNotSupported.
cudaError_t wgmma_test(const void* a, const void* b, const float* c, float* d, int warpgroups, int k, int n,
                       DType dtype, int a_mode, int b_mode, int planted, cudaStream_t stream);

}  // namespace testing
}  // namespace fastattn
