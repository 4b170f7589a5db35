// Device helpers shared by the kernels: fp32 conversions, 16-byte chunk loads/stores, row reductions.
// Torch-free; include only from .cu / .cuh files.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace fastattn {

constexpr float kLog2e = 1.4426950408889634f;  // log2(e): exp(x) == exp2(x * log2(e))

// ---------------------------------------------------------------------------------------------
// Conversions. All arithmetic is done in fp32; stores round to nearest even.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---------------------------------------------------------------------------------------------
// 16-byte chunks: kChunk<T> consecutive elements, moved with one 128-bit access when `vectorized`
// (the address is then 16-byte aligned) and with kChunk<T> scalar accesses otherwise.
// ---------------------------------------------------------------------------------------------
template <typename T>
inline constexpr int kChunk = 16 / static_cast<int>(sizeof(T));

template <typename T>
__device__ __forceinline__ void load_chunk(const T* __restrict__ p, bool vectorized, float (&out)[kChunk<T>]) {
  if (vectorized) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kChunk<T>; ++i) out[i] = to_float(v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kChunk<T>; ++i) out[i] = to_float(p[i]);
  }
}

template <typename T>
__device__ __forceinline__ void store_chunk(T* __restrict__ p, bool vectorized, const float (&in)[kChunk<T>]) {
  if (vectorized) {
    uint32_t w[4];
    if constexpr (sizeof(T) == 4) {
#pragma unroll
      for (int i = 0; i < 4; ++i) w[i] = __float_as_uint(in[i]);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const T lo = from_float<T>(in[2 * i]), hi = from_float<T>(in[2 * i + 1]);
        unsigned short blo, bhi;
        memcpy(&blo, &lo, 2);
        memcpy(&bhi, &hi, 2);
        w[i] = static_cast<uint32_t>(blo) | (static_cast<uint32_t>(bhi) << 16);
      }
    }
#if defined(__CUDA_ARCH__)
    // Inline PTX: with a plain uint4 store nvcc folds this branch into the scalar one below (both store the
    // same bytes) and emits four STG.E per chunk instead of one STG.E.128.
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(p)), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
                 : "memory");
#else
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
#endif
  } else {
#pragma unroll
    for (int i = 0; i < kChunk<T>; ++i) p[i] = from_float<T>(in[i]);
  }
}

// How one row of n elements is cut into 16-byte chunks:
//   [0, head)                         scalar elements before the first 16-byte boundary of x
//   [head, head + nchunk * kChunk)    whole chunks
//   [head + nchunk * kChunk, n)       `tail` (< kChunk) scalar elements
// The chunks are `vectorized` only when x and y share the same offset modulo 16 bytes (then both are
// aligned at the same element); otherwise head == 0 and the chunks are moved element by element.
struct RowSplit {
  int head;
  int tail;
  int64_t nchunk;
  bool vectorized;
};

template <typename T>
__device__ __forceinline__ RowSplit split_row(const T* x, const T* y, int64_t n) {
  const auto ax = static_cast<unsigned>(reinterpret_cast<uintptr_t>(x) % 16);
  const auto ay = static_cast<unsigned>(reinterpret_cast<uintptr_t>(y) % 16);
  RowSplit s;
  s.vectorized = ax == ay && ax % sizeof(T) == 0;
  int64_t head = s.vectorized ? ((16 - ax) % 16) / sizeof(T) : 0;
  head = head < n ? head : n;
  s.head = static_cast<int>(head);
  s.nchunk = (n - head) / kChunk<T>;
  s.tail = static_cast<int>(n - head - s.nchunk * kChunk<T>);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Reductions over the ROW_THREADS threads that own one row. Every thread gets the result.
// The xor butterfly gives bitwise-identical results on all lanes (fp add/max are commutative).
// ---------------------------------------------------------------------------------------------
struct MaxOp {
  // fmaxf ignores NaN: NaN reaches the output through the sum instead (see softmax_fwd_kernel.cuh).
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

template <typename Op>
__device__ __forceinline__ float warp_allreduce(float v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// ROW_THREADS == 32: the row belongs to one warp, no shared memory or barrier.
// ROW_THREADS  > 32: the row is the whole CTA; `smem` holds ROW_THREADS / 32 floats. A caller that reduces
// twice in a row must pass two different buffers (the second barrier is what makes reusing the first safe).
template <int ROW_THREADS, typename Op>
__device__ __forceinline__ float row_allreduce(float v, float* smem, Op op) {
  static_assert(ROW_THREADS % 32 == 0 && ROW_THREADS <= 1024, "ROW_THREADS must be a multiple of 32, <= 1024");
  v = warp_allreduce(v, op);
  if constexpr (ROW_THREADS == 32) {
    return v;
  } else {
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) smem[warp] = v;
    __syncthreads();
    float r = smem[0];
#pragma unroll
    for (int w = 1; w < ROW_THREADS / 32; ++w) r = op(r, smem[w]);
    return r;
  }
}

}  // namespace fastattn
