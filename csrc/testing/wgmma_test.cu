// fastattn-static: sm90a-only (wgmma; a trap stub in the sm_80 pass, never launched there)
// Test kernel of the warpgroup MMA primitives; interface and modes in wgmma_test.h. One CTA of 1 or 2
// warpgroups: every thread stores elements of A and B into shared memory at the byte positions of the chosen
// layout (written out here from the PTX ISA's canonical layouts, independently of the descriptor decoding in
// csrc/common/wgmma_emu.h), then each warpgroup runs k / 16 chained wgmma on its 64 rows and stores its
// accumulators through the documented fragment positions.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/launch.cuh"
#include "common/wgmma.cuh"
#include "testing/wgmma_test.h"

namespace fastattn {
namespace testing {
namespace {

constexpr int kMaxK = 64;

__host__ __device__ constexpr int swizzle_width(int mode) {
  return (mode == kWgK128 || mode == kWgMN128) ? 128 : (mode == kWgK64 || mode == kWgMN64) ? 64
         : (mode == kWgK32 || mode == kWgMN32) ? 32 : 0;
}
__host__ __device__ constexpr bool mn_major(int mode) { return mode >= kWgMNNone && mode <= kWgMN32; }
__host__ __device__ constexpr WgmmaSwizzle swizzle_code(int w) {
  return w == 128 ? WgmmaSwizzle::k128B : w == 64 ? WgmmaSwizzle::k64B : w == 32 ? WgmmaSwizzle::k32B
                                                                                 : WgmmaSwizzle::kNone;
}
__host__ __device__ constexpr uint32_t round1024(uint32_t x) { return (x + 1023u) / 1024u * 1024u; }

// Strides of the unswizzled layouts: deliberately padded (not the densest choice) so that a decoder mixing up
// LBO and SBO reads the wrong bytes.
__host__ __device__ constexpr uint32_t k_none_sbo(int k) { return static_cast<uint32_t>(k / 8) * 128u + 128u; }
__host__ __device__ constexpr uint32_t mn_none_sbo(int k) { return static_cast<uint32_t>(k / 8) * 128u + 256u; }

// Bytes of an operand of `rows` (M or N) x k in `mode`.
__host__ __device__ constexpr uint32_t operand_bytes(int mode, int rows, int k) {
  const int w = swizzle_width(mode);
  if (mode == kWgRegs) return 0;
  if (!mn_major(mode)) {
    if (w == 0) return static_cast<uint32_t>(rows / 8) * k_none_sbo(k);
    const int panels = (k * 2 + w - 1) / w;
    return static_cast<uint32_t>(panels * rows * w);
  }
  if (w == 0) return static_cast<uint32_t>(rows / 8) * mn_none_sbo(k);
  const int panels = (rows * 2 + w - 1) / w;
  return static_cast<uint32_t>(panels * k * w);
}

__device__ __forceinline__ uint32_t swizzled(uint32_t off, int w) {
  return w == 0 ? off : off ^ (((off >> 7) & static_cast<uint32_t>(w / 16 - 1)) << 4);
}

// Byte offset (from a 1024-aligned base) of element (r, kk) of a K-major operand of `rows` rows.
__device__ __forceinline__ uint32_t k_major_offset(int mode, int rows, int k, int r, int kk) {
  const int w = swizzle_width(mode);
  if (w == 0)
    return static_cast<uint32_t>(r / 8) * k_none_sbo(k) + static_cast<uint32_t>(kk / 8) * 128u +
           static_cast<uint32_t>(r % 8) * 16u + static_cast<uint32_t>(kk % 8) * 2u;
  const int per_row = w / 2;  // elements of one swizzle row
  const uint32_t off = static_cast<uint32_t>((kk / per_row) * rows * w + r * w + (kk % per_row) * 2);
  return swizzled(off, w);
}

// Byte offset of element (kk, col) of an MN-major B (k rows, `cols` contiguous columns).
__device__ __forceinline__ uint32_t mn_major_offset(int mode, int k, int kk, int col) {
  const int w = swizzle_width(mode);
  if (w == 0)
    return static_cast<uint32_t>(col / 8) * mn_none_sbo(k) + static_cast<uint32_t>(kk / 8) * 128u +
           static_cast<uint32_t>(col % 8) * 2u + static_cast<uint32_t>(kk % 8) * 16u;
  const int per_row = w / 2;
  const uint32_t off = static_cast<uint32_t>((col / per_row) * k * w + kk * w + (col % per_row) * 2);
  return swizzled(off, w);
}

// The descriptor of k step s (k rows 16 s .. 16 s + 15) of an operand at `base`.
__device__ __forceinline__ uint64_t step_desc(const unsigned char* base, int mode, int rows, int k, int s) {
  const int w = swizzle_width(mode);
  if (!mn_major(mode)) {
    if (w == 0) return make_wgmma_desc(base + s * 2 * 128, 128, k_none_sbo(k), WgmmaSwizzle::kNone);
    const int per_row = w / 2;
    const int k0 = 16 * s;
    return make_wgmma_desc(base + (k0 / per_row) * rows * w + (k0 % per_row) * 2, 16, 8 * w, swizzle_code(w));
  }
  if (w == 0) return make_wgmma_desc(base + s * 2 * 128, 128, mn_none_sbo(k), WgmmaSwizzle::kNone);
  return make_wgmma_desc(base + s * 2 * 8 * w, static_cast<uint32_t>(k * w), 8 * w, swizzle_code(w));
}

__device__ __forceinline__ uint16_t bits16(const uint16_t* p, int64_t i) { return p[i]; }

template <typename T, int N>
__global__ void __launch_bounds__(256) wgmma_test_kernel(const uint16_t* a, const uint16_t* b, const float* c,
                                                        float* d, int k, int a_mode, int b_mode, int planted) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // no wgmma in this device pass; the launcher never launches it there
#else
  FASTATTN_DYNAMIC_SHARED(unsigned char, smem_raw);
  unsigned char* const smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~static_cast<uintptr_t>(1023));
  const int nthreads = blockDim.x, tid = threadIdx.x;
  const int wgs = nthreads / 128;
  const uint32_t a_bytes = round1024(operand_bytes(a_mode, 64, k));
  unsigned char* const sb = smem + wgs * a_bytes;
  const uint32_t b_bytes = operand_bytes(b_mode, N, k);

  // A (64 wgs x k) and B (k x N) into shared memory, one element per step.
  if (a_mode != kWgRegs)
    for (int e = tid; e < 64 * wgs * k; e += nthreads) {
      const int row = e / k, kk = e % k;
      unsigned char* base = smem + (row / 64) * a_bytes;
      *reinterpret_cast<uint16_t*>(base + k_major_offset(a_mode, 64, k, row % 64, kk)) = bits16(a, e);
    }
  for (int e = tid; e < k * N; e += nthreads) {
    const int kk = e / N, col = e % N;
    const uint32_t off = mn_major(b_mode) ? mn_major_offset(b_mode, k, kk, col) : k_major_offset(b_mode, N, k, col, kk);
    *reinterpret_cast<uint16_t*>(sb + off) = bits16(b, e);
  }
  fence_proxy_async_shared();  // the plain stores above, visible to wgmma (async proxy), after the barrier
  __syncthreads();

  const int wg = tid / 128, th = tid % 128, warp = th / 32, lane = th % 32, g = lane / 4, t = lane % 4;
  if (planted == kWgWarpSkips && wg == 0 && warp == 3) return;
  const int64_t row0 = 64 * wg;
  float acc[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const int row = 16 * warp + g + 8 * ((i % 4) / 2), col = 8 * (i / 4) + 2 * t + (i % 2);
    acc[i] = c != nullptr ? c[(row0 + row) * N + col] : 0.0f;
  }
  unsigned char* const sa = smem + wg * a_bytes;
  if (planted != kWgMissingFence) wgmma_fence();
  for (int s = 0; s < k / 16; ++s) {
    const int scale_d = (c != nullptr || s > 0) ? 1 : 0;
    uint64_t db = step_desc(sb, b_mode, N, k, s);
    if (planted == kWgWrongSwizzle) db &= ~(static_cast<uint64_t>(3) << 62);
    const bool tb = mn_major(b_mode);
    if (a_mode == kWgRegs) {
      uint32_t ar[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = 16 * warp + g + 8 * (r % 2), col = 16 * s + 8 * (r / 2) + 2 * t;
        const int64_t i = (row0 + row) * k + col;
        ar[r] = static_cast<uint32_t>(a[i]) | (static_cast<uint32_t>(a[i + 1]) << 16);
      }
      if (tb) wgmma_rs<T, N, true>(acc, ar, db, scale_d); else wgmma_rs<T, N, false>(acc, ar, db, scale_d);
    } else {
      const uint64_t da = step_desc(sa, a_mode, 64, k, s);
      if (tb) wgmma_ss<T, N, true>(acc, da, db, scale_d); else wgmma_ss<T, N, false>(acc, da, db, scale_d);
    }
  }
  wgmma_commit_group();
  if (planted == kWgOverwriteEarly)
    for (uint32_t i = static_cast<uint32_t>(th) * 2; i + 2 <= b_bytes; i += 256) *reinterpret_cast<uint16_t*>(sb + i) = 0;
  auto store = [&] {
    wgmma_fence_operands(acc);
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      const int row = 16 * warp + g + 8 * ((i % 4) / 2), col = 8 * (i / 4) + 2 * t + (i % 2);
      d[(row0 + row) * N + col] = acc[i];
    }
  };
  if (planted == kWgMissingWait) {
    store();
    wgmma_wait_group<0>();
  } else {
    wgmma_wait_group<0>();
    store();
  }
#endif
}

template <typename T, int N>
cudaError_t launch_n(const void* a, const void* b, const float* c, float* d, int wgs, int k, int a_mode, int b_mode,
                     int planted, cudaStream_t stream) {
  const size_t smem = 1024 + wgs * round1024(operand_bytes(a_mode, 64, k)) + operand_bytes(b_mode, N, k);
#if defined(__CUDACC__)
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(wgmma_test_kernel<T, N>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
#endif
  FASTATTN_LAUNCH((wgmma_test_kernel<T, N>), dim3(1), dim3(128 * wgs), smem, stream,
                  static_cast<const uint16_t*>(a), static_cast<const uint16_t*>(b), c, d, k, a_mode, b_mode, planted);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_t(const void* a, const void* b, const float* c, float* d, int wgs, int k, int n, int a_mode,
                     int b_mode, int planted, cudaStream_t stream) {
  switch (n) {
    case 8:
      return launch_n<T, 8>(a, b, c, d, wgs, k, a_mode, b_mode, planted, stream);
    case 64:
      return launch_n<T, 64>(a, b, c, d, wgs, k, a_mode, b_mode, planted, stream);
    case 128:
      return launch_n<T, 128>(a, b, c, d, wgs, k, a_mode, b_mode, planted, stream);
    case 256:
      return launch_n<T, 256>(a, b, c, d, wgs, k, a_mode, b_mode, planted, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t wgmma_test(const void* a, const void* b, const float* c, float* d, int warpgroups, int k, int n,
                       DType dtype, int a_mode, int b_mode, int planted, cudaStream_t stream) {
  if (warpgroups < 1 || warpgroups > 2 || k < 16 || k > kMaxK || k % 16 != 0) return cudaErrorInvalidValue;
  if (a_mode < 0 || a_mode >= kWgmmaModes || mn_major(a_mode)) return cudaErrorInvalidValue;
  if (b_mode < 0 || b_mode >= kWgmmaModes || b_mode == kWgRegs) return cudaErrorInvalidValue;
  if (planted < kWgCorrect || planted > kWgOverwriteEarly) return cudaErrorInvalidValue;
#if defined(__CUDACC__)
  int dev = 0, major = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err != cudaSuccess) return err;
  if (major != 9) return cudaErrorNotSupported;
#endif
  switch (dtype) {
    case DType::kFloat16:
      return launch_t<__half>(a, b, c, d, warpgroups, k, n, a_mode, b_mode, planted, stream);
    case DType::kBFloat16:
      return launch_t<__nv_bfloat16>(a, b, c, d, warpgroups, k, n, a_mode, b_mode, planted, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace testing
}  // namespace fastattn
