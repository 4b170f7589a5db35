// Test kernels of the tensor-core and async-copy primitives; the interface and what each computes are in
// primitives_test.h. Each kernel is small on purpose: one warp (mma, ldmatrix), two warps (cp.async), or one
// 128-thread block per 64 x 64 output tile (the GEMM that chains cp.async -> shared -> ldmatrix -> mma the
// way the attention kernels do).
#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cp_async.cuh"
#include "common/fragment_layout.h"
#include "common/launch.cuh"
#include "common/ldmatrix.cuh"
#include "common/mma.cuh"
#include "testing/primitives_test.h"

namespace fastattn {
namespace testing {
namespace {

// ---------------------------------------------------------------------------------------------------------
// mma: one warp, fragments by plain loads at the positions fragment_layout.h gives: A's pairs are adjacent
// in a row (load_pair), B's are not (two elements through fp32, packed by pack2: exact for f16/bf16 values).
// ---------------------------------------------------------------------------------------------------------
__device__ __forceinline__ float elem_to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float elem_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void __launch_bounds__(32) mma_test_kernel(const T* a, const T* b, const float* c, float* d) {
  const int lane = threadIdx.x;  // a: (16, 16) row-major; b: (16, 8) k x n row-major
  uint32_t ra[4], rb[2];
  float rc[4], rd[4];
  for (int r = 0; r < 4; ++r) {
    const frag::RowCol e = frag::mma_a(lane, r, 0);  // half 1 is (e.row, e.col + 1)
    ra[r] = load_pair(a + e.row * 16 + e.col);
  }
  for (int r = 0; r < 2; ++r) {
    const frag::RowCol lo = frag::mma_b(lane, r, 0), hi = frag::mma_b(lane, r, 1);
    rb[r] = pack2<T>(elem_to_float(b[lo.row * 8 + lo.col]), elem_to_float(b[hi.row * 8 + hi.col]));
  }
  for (int i = 0; i < 4; ++i) {
    const frag::RowCol e = frag::mma_c(lane, i);
    rc[i] = c[e.row * 8 + e.col];
  }
  mma_m16n8k16<T>(rd, ra, rb, rc);
  for (int i = 0; i < 4; ++i) {
    const frag::RowCol e = frag::mma_c(lane, i);
    d[e.row * 8 + e.col] = rd[i];
  }
}

// ---------------------------------------------------------------------------------------------------------
// ldmatrix: one warp. A and B are stored in shared memory both ways (row-major and transposed), rows padded
// to kStride elements (48 bytes: still 16-byte aligned, and the lanes' addresses are not one contiguous
// block), and the fragments come from ldmatrix of one of kLdmatrixModes kinds.
// Fragment register q of A (0..3) is the 8 x 8 quadrant (rows 8 * (q & 1), cols 8 * (q >> 1)); register
// q = 2 * ntile + khalf of B is (k rows 8 * khalf, n cols 8 * ntile).
// ---------------------------------------------------------------------------------------------------------
constexpr int kStride = 24;

template <int Num, bool Trans>
__device__ __forceinline__ void ldsm(uint32_t (&r)[Num], const void* row) {
  if constexpr (Num == 1) {
    if constexpr (Trans) ldmatrix_x1_trans(r, row); else ldmatrix_x1(r, row);
  } else if constexpr (Num == 2) {
    if constexpr (Trans) ldmatrix_x2_trans(r, row); else ldmatrix_x2(r, row);
  } else {
    if constexpr (Trans) ldmatrix_x4_trans(r, row); else ldmatrix_x4(r, row);
  }
}

// Row address of this lane for A's register q: the row-major copy (plain ldmatrix) or the K x M copy (.trans).
__device__ __forceinline__ const uint16_t* a_row(const uint16_t* sa, const uint16_t* sat, bool trans, int q, int r) {
  return trans ? sat + (8 * (q >> 1) + r) * kStride + 8 * (q & 1) : sa + (8 * (q & 1) + r) * kStride + 8 * (q >> 1);
}

// Row address of this lane for B's register q: the N x K copy (plain ldmatrix) or the K x N copy (.trans).
__device__ __forceinline__ const uint16_t* b_row(const uint16_t* sb, const uint16_t* sbt, bool trans, int q, int r) {
  return trans ? sb + (8 * (q & 1) + r) * kStride + 8 * (q >> 1) : sbt + (8 * (q >> 1) + r) * kStride + 8 * (q & 1);
}

// The 4 registers of A (or of B's two n tiles) with ldmatrix.x{Num}: 4 / Num calls, call i covering
// registers Num * i .. Num * i + Num - 1; in each call lane l addresses row l % 8 of matrix (l / 8) % Num.
template <int Num, bool Trans, bool IsA>
__device__ __forceinline__ void load_fragments(uint32_t (&out)[4], const uint16_t* s, const uint16_t* st,
                                               int lane) {
  for (int i = 0; i < 4 / Num; ++i) {
    const int q = Num * i + (lane / 8) % Num;
    const uint16_t* row = IsA ? a_row(s, st, Trans, q, lane % 8) : b_row(s, st, Trans, q, lane % 8);
    uint32_t r[Num];
    ldsm<Num, Trans>(r, row);
    for (int j = 0; j < Num; ++j) out[Num * i + j] = r[j];
  }
}

template <bool IsA>
__device__ __forceinline__ void load_by_mode(uint32_t (&out)[4], int mode, const uint16_t* s, const uint16_t* st,
                                             int lane) {
  switch (mode) {
    case 0: load_fragments<4, false, IsA>(out, s, st, lane); break;
    case 1: load_fragments<2, false, IsA>(out, s, st, lane); break;
    case 2: load_fragments<1, false, IsA>(out, s, st, lane); break;
    case 3: load_fragments<4, true, IsA>(out, s, st, lane); break;
    case 4: load_fragments<2, true, IsA>(out, s, st, lane); break;
    default: load_fragments<1, true, IsA>(out, s, st, lane); break;
  }
}

template <typename T>
__global__ void __launch_bounds__(32)
    ldmatrix_test_kernel(const T* a, const T* b, const float* c, float* d, int a_mode, int b_mode) {
  __shared__ __align__(16) uint16_t sa[16 * kStride];   // A, row-major (M x K)
  __shared__ __align__(16) uint16_t sat[16 * kStride];  // A transposed (K x M)
  __shared__ __align__(16) uint16_t sb[16 * kStride];   // B, row-major (K x N)
  __shared__ __align__(16) uint16_t sbt[16 * kStride];  // B transposed (N x K)
  const int lane = threadIdx.x;
  const uint16_t* a16 = reinterpret_cast<const uint16_t*>(a);
  const uint16_t* b16 = reinterpret_cast<const uint16_t*>(b);
  for (int e = lane; e < 256; e += 32) {
    const int row = e / 16, col = e % 16;
    sa[row * kStride + col] = a16[e];
    sat[col * kStride + row] = a16[e];
    sb[row * kStride + col] = b16[e];
    sbt[col * kStride + row] = b16[e];
  }
  __syncwarp();
  uint32_t fa[4], fb[4];
  load_by_mode<true>(fa, a_mode, sa, sat, lane);
  load_by_mode<false>(fb, b_mode, sb, sbt, lane);
  for (int nt = 0; nt < 2; ++nt) {
    float rc[4], rd[4];
    for (int i = 0; i < 4; ++i) {
      const frag::RowCol e = frag::mma_c(lane, i);
      rc[i] = c[e.row * 16 + 8 * nt + e.col];
    }
    const uint32_t rb[2] = {fb[2 * nt], fb[2 * nt + 1]};
    mma_m16n8k16<T>(rd, fa, rb, rc);
    for (int i = 0; i < 4; ++i) {
      const frag::RowCol e = frag::mma_c(lane, i);
      d[e.row * 16 + 8 * nt + e.col] = rd[i];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// cp.async: 64 threads (two warps); thread i reads what thread 63 - i (in the other warp) copied, so the data
// must cross threads through wait + __syncthreads. Output stages (each 64 * kFloats floats):
//   0: buffer 0 after wait_group<2>     1: buffer 1 after wait_group<1>   2: buffer 2 after wait_group<0>
//   3: buffer 0 again (a fourth copy) after wait_all
//   4: buffer 1 after wait_group<2>     5: buffer 2 after wait_group<1>   (still pending: only the
//      emulation promises they are unchanged, the hardware may have landed them already)
// ---------------------------------------------------------------------------------------------------------
constexpr int kCpThreads = 64;

template <int Bytes>
__global__ void __launch_bounds__(kCpThreads) cp_async_test_kernel(const float* src, float* out, bool planted) {
  constexpr int kFloats = Bytes / 4;
  __shared__ __align__(16) float buf[3][kCpThreads * kFloats];
  const int i = threadIdx.x;
  const int partner = kCpThreads - 1 - i;
  for (int s = 0; s < 3; ++s)
    for (int f = 0; f < kFloats; ++f) buf[s][i * kFloats + f] = kCpAsyncSentinel;
  __syncthreads();
  auto src_at = [&](int stage) { return src + (stage * kCpThreads + i) * kFloats; };
  auto read = [&](int stage, int b) {
    for (int f = 0; f < kFloats; ++f) out[(stage * kCpThreads + i) * kFloats + f] = buf[b][partner * kFloats + f];
  };
  cp_async<Bytes>(&buf[0][i * kFloats], src_at(0));
  cp_async_commit_group();
  cp_async<Bytes>(&buf[1][i * kFloats], src_at(1));
  cp_async_commit_group();
  cp_async_zfill<Bytes>(&buf[2][i * kFloats], src_at(2), 4 * (i % (kFloats + 1)));
  cp_async_commit_group();

  // Each read is followed by a barrier, so no thread's next wait (which lands its copies) runs before every
  // thread has read.
  cp_async_wait_group<2>();
  __syncthreads();
  read(0, 0);
  read(4, 1);
  __syncthreads();
  if (!planted) cp_async_wait_group<1>();
  __syncthreads();
  read(1, 1);
  read(5, 2);
  __syncthreads();
  cp_async_wait_group<0>();
  __syncthreads();
  read(2, 2);
  __syncthreads();  // also: every read of buffer 0 is done before the fourth copy overwrites it
  cp_async<Bytes>(&buf[0][i * kFloats], src_at(3));
  cp_async_wait_all();
  __syncthreads();
  read(3, 0);
}

// ---------------------------------------------------------------------------------------------------------
// GEMM: grid (n / 64, m / 64), 128 threads = 2 x 2 warps, warp (wm, wn) owns rows 32 wm .. +32 and cols
// 32 wn .. +32 of the block tile (2 x 4 mma tiles). k advances 32 at a time through two shared stages:
//   commit tile 0; for each kt: commit tile kt + 1 (an empty group after the last tile), wait_group<1>
//   (tile kt has landed), __syncthreads, 2 k16 steps of ldmatrix + mma, __syncthreads (stage free again).
// Rows of the stages are padded by 8 elements (16 bytes) so the 8 row addresses of an ldmatrix fall in
// different banks. Global reads: a and b once per block row / column of tiles; writes: c once.
// ---------------------------------------------------------------------------------------------------------
constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kSA = kBK + 8;  // A stage row stride (elements)
constexpr int kSB = kBN + 8;  // B stage row stride (elements)
constexpr int kGemmThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_test_kernel(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ c, int64_t n, int64_t k,
                     int planted) {
  __shared__ __align__(16) T sa[2][kBM * kSA];  // (64, 32) tile of a per stage
  __shared__ __align__(16) T sb[2][kBK * kSB];  // (32, 64) tile of b per stage
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp >> 1, wn = warp & 1;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kBM, col0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int64_t k_tiles = k / kBK;

  // 16-byte copies (8 elements); a fixed count per thread, so the loops unroll completely.
  constexpr int kCopiesA = kBM * kBK / 8 / kGemmThreads, kCopiesB = kBK * kBN / 8 / kGemmThreads;
  static_assert(kCopiesA * kGemmThreads * 8 == kBM * kBK && kCopiesB * kGemmThreads * 8 == kBK * kBN, "tiling");
  auto load_tile = [&](int stage, int64_t kt) {
#pragma unroll
    for (int i = 0; i < kCopiesA; ++i) {
      const int q = tid + i * kGemmThreads, r = q / (kBK / 8), cc = q % (kBK / 8);
      cp_async_16(&sa[stage][r * kSA + cc * 8], a + (row0 + r) * k + kt * kBK + cc * 8);
    }
#pragma unroll
    for (int i = 0; i < kCopiesB; ++i) {
      const int q = tid + i * kGemmThreads, r = q / (kBN / 8), cc = q % (kBN / 8);
      cp_async_16(&sb[stage][r * kSB + cc * 8], b + (kt * kBK + r) * n + col0 + cc * 8);
    }
  };

  float acc[2][4][4];  // (m tile, n tile, C fragment register)
  for (int mi = 0; mi < 2; ++mi)
    for (int ni = 0; ni < 4; ++ni)
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.0f;

  load_tile(0, 0);
  cp_async_commit_group();
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    if (kt + 1 < k_tiles) {
      load_tile(static_cast<int>((kt + 1) & 1), kt + 1);
      cp_async_commit_group();
    } else if (planted != kGemmMissingWait) {
      cp_async_commit_group();  // empty group: keeps "all but the newest group" == "up to tile kt"
    }
    cp_async_wait_group<1>();
    __syncthreads();
    const T* ta = sa[kt & 1];
    const T* tb = sb[kt & 1];
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      uint32_t fa[2][4], fb[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        // matrix j = lane / 8 of the x4 is the quadrant (rows + 8 (j & 1), cols + 8 (j >> 1)).
        const int r = wm * 32 + mi * 16 + 8 * ((lane / 8) & 1) + lane % 8;
        ldmatrix_x4(fa[mi], ta + r * kSA + ks * 16 + 8 * (lane / 16));
      }
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        // matrix j of the x4.trans: k rows + 8 (j & 1), n cols + 8 (j >> 1) -> B registers of n tiles 2np, 2np+1.
        const int kr = ks * 16 + 8 * ((lane / 8) & 1) + lane % 8;
        uint32_t t4[4];
        ldmatrix_x4_trans(t4, tb + kr * kSB + wn * 32 + np * 16 + 8 * (lane / 16));
        fb[2 * np][0] = t4[0];
        fb[2 * np][1] = t4[1];
        fb[2 * np + 1][0] = t4[2];
        fb[2 * np + 1][1] = t4[3];
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_m16n8k16<T>(acc[mi][ni], fa[mi], fb[ni], acc[mi][ni]);
    }
    if (planted != kGemmMissingBarrier) __syncthreads();  // the next iteration refills this stage
  }

  const int g = frag::group_of(lane), t = frag::thread_in_group(lane);
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t row = row0 + wm * 32 + mi * 16 + g + 8 * half;
        const int64_t col = col0 + wn * 32 + ni * 8 + 2 * t;
        *reinterpret_cast<float2*>(c + row * n + col) = make_float2(acc[mi][ni][2 * half], acc[mi][ni][2 * half + 1]);
      }
}

bool is_mma_dtype(DType dtype) { return dtype == DType::kFloat16 || dtype == DType::kBFloat16; }

}  // namespace

cudaError_t mma_test(const void* a, const void* b, const float* c, float* d, DType dtype, cudaStream_t stream) {
  if (dtype == DType::kFloat16) {
    FASTATTN_LAUNCH((mma_test_kernel<__half>), 1, 32, 0, stream, static_cast<const __half*>(a),
                    static_cast<const __half*>(b), c, d);
  } else if (dtype == DType::kBFloat16) {
    FASTATTN_LAUNCH((mma_test_kernel<__nv_bfloat16>), 1, 32, 0, stream, static_cast<const __nv_bfloat16*>(a),
                    static_cast<const __nv_bfloat16*>(b), c, d);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t ldmatrix_test(const void* a, const void* b, const float* c, float* d, DType dtype, int a_mode,
                          int b_mode, cudaStream_t stream) {
  if (a_mode < 0 || a_mode >= kLdmatrixModes || b_mode < 0 || b_mode >= kLdmatrixModes) return cudaErrorInvalidValue;
  if (dtype == DType::kFloat16) {
    FASTATTN_LAUNCH((ldmatrix_test_kernel<__half>), 1, 32, 0, stream, static_cast<const __half*>(a),
                    static_cast<const __half*>(b), c, d, a_mode, b_mode);
  } else if (dtype == DType::kBFloat16) {
    FASTATTN_LAUNCH((ldmatrix_test_kernel<__nv_bfloat16>), 1, 32, 0, stream, static_cast<const __nv_bfloat16*>(a),
                    static_cast<const __nv_bfloat16*>(b), c, d, a_mode, b_mode);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t cp_async_test(const float* src, float* out, int bytes, bool planted_missing_wait, cudaStream_t stream) {
  switch (bytes) {
    case 4:
      FASTATTN_LAUNCH((cp_async_test_kernel<4>), 1, kCpThreads, 0, stream, src, out, planted_missing_wait);
      break;
    case 8:
      FASTATTN_LAUNCH((cp_async_test_kernel<8>), 1, kCpThreads, 0, stream, src, out, planted_missing_wait);
      break;
    case 16:
      FASTATTN_LAUNCH((cp_async_test_kernel<16>), 1, kCpThreads, 0, stream, src, out, planted_missing_wait);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t gemm_test(const void* a, const void* b, float* c, int64_t m, int64_t n, int64_t k, DType dtype,
                      int planted, cudaStream_t stream) {
  if (!is_mma_dtype(dtype) || m < 0 || n < 0 || k < kBK || m % kBM || n % kBN || k % kBK) return cudaErrorInvalidValue;
  if (planted < kGemmCorrect || planted > kGemmMissingBarrier) return cudaErrorInvalidValue;
  if (m / kBM > 65535) return cudaErrorInvalidValue;
  if (m == 0 || n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(n / kBN), static_cast<unsigned>(m / kBM));
  if (dtype == DType::kFloat16) {
    FASTATTN_LAUNCH((gemm_test_kernel<__half>), grid, kGemmThreads, 0, stream, static_cast<const __half*>(a),
                    static_cast<const __half*>(b), c, n, k, planted);
  } else {
    FASTATTN_LAUNCH((gemm_test_kernel<__nv_bfloat16>), grid, kGemmThreads, 0, stream,
                    static_cast<const __nv_bfloat16*>(a), static_cast<const __nv_bfloat16*>(b), c, n, k, planted);
  }
  return cudaGetLastError();
}

}  // namespace testing
}  // namespace fastattn

#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
extern "C" __attribute__((visibility("default"))) int fastattn_emu_set_cp_async_landing(const char* mode) {
  using fastattn::detail::CpAsyncLanding;
  if (std::strcmp(mode, "at_wait") == 0) {
    fastattn::detail::cp_async_landing() = CpAsyncLanding::kAtWait;
  } else if (std::strcmp(mode, "at_issue") == 0) {
    fastattn::detail::cp_async_landing() = CpAsyncLanding::kAtIssue;
  } else {
    return -1;
  }
  return 0;
}
#endif
