// Tile helpers shared by the attention kernels: swizzled shared-memory tiles of (rows x D) 16-bit elements,
// filled by cp.async from strided global rows, read by ldmatrix into mma.m16n8k16 fragments.
//
// Layout of a tile in shared memory: row r (0..R-1) holds D elements as C = D / 8 chunks of 16 bytes; logical
// chunk c of row r is stored at chunk position swizzle<C>(r, c) of that row (an XOR of c with bits of r).
// ldmatrix reads, per 8x8 matrix, the same logical chunk of 8 consecutive rows: the swizzle puts those 8
// chunks in 8 different 16-byte bank groups (all 32 banks, no conflict), for every C used here (4, 8, 12, 16,
// 32). cp.async writes whole rows (consecutive threads take consecutive chunks), also conflict-free.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cp_async.cuh"
#include "common/ldmatrix.cuh"
#include "common/mma.cuh"

namespace fastattn {
namespace attn {

// Chunk position of logical chunk c of row r in a tile with C chunks per row. The 16-byte unit index of
// (r, c) is r * C + swizzle: its value mod 8 must differ over 8 consecutive rows for a fixed c.
//   C % 8 == 0: c ^ (r % 8).
//   C == 4 (D = 32): r * 4 mod 8 alternates 0, 4, so XOR the 2 low bits with (r / 2) % 4.
//   C == 12 (D = 96): chunks 0-7 as C % 8 == 0 (r * 12 mod 8 flips bit 2 on odd rows, a permutation of the
//   XOR pattern), chunks 8-11 as C == 4.
template <int C>
__device__ __forceinline__ int swizzle(int r, int c) {
  static_assert(C == 4 || C == 12 || C % 8 == 0, "swizzle: unsupported chunks per row");
  if constexpr (C % 8 == 0) {
    return c ^ (r & 7);
  } else if constexpr (C == 4) {
    return c ^ ((r >> 1) & 3);
  } else {
    return c < 8 ? (c ^ (r & 7)) : (8 + ((c - 8) ^ ((r >> 1) & 3)));
  }
}

// Element offset of (row r, element 8 * c) of a swizzled tile of D columns.
template <int D>
__device__ __forceinline__ int tile_offset(int r, int c) {
  return r * D + swizzle<D / 8>(r, c) * 8;
}

// Issue the cp.async copies of a (R x D) tile: rows [0, rows_valid) from global `base` (row stride `row_stride`
// elements, 16-byte aligned, unit stride along D), rows past rows_valid zero-filled without reading (their
// source address is `base`, a valid one). kThreads threads share the R * D / 8 chunks evenly.
template <typename T, int R, int D, int kThreads>
__device__ __forceinline__ void load_tile_async(T* tile, const T* base, int64_t row_stride, int rows_valid, int tid) {
  constexpr int C = D / 8;
  constexpr int kPerThread = R * C / kThreads;
  static_assert(kPerThread * kThreads == R * C, "tile chunks must divide evenly among the threads");
  // Partly unrolled when a thread has many copies (the one-warp decode kernel): fully unrolled, their
  // addresses stay live at once and cost registers.
#pragma unroll 8
  for (int i = 0; i < kPerThread; ++i) {
    const int q = tid + i * kThreads;
    const int r = q / C, c = q % C;
    const bool ok = r < rows_valid;
    const T* src = ok ? base + static_cast<int64_t>(r) * row_stride + c * 8 : base;
    cp_async_zfill<16>(tile + tile_offset<D>(r, c), src, ok ? 16 : 0);
  }
}

// A fragment (16 x 16, rows row0.., cols 16 * kk..) of a row-major swizzled tile: ldmatrix.x4 of its four 8x8
// quadrants; matrix j = lane / 8 is (rows + 8 (j & 1), cols + 8 (j >> 1)).
template <int D>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const void* tile, int row0, int kk, int lane) {
  const int r = row0 + 8 * ((lane >> 3) & 1) + (lane & 7);
  const int c = 2 * kk + (lane >> 4);
  ldmatrix_x4(a, static_cast<const uint16_t*>(tile) + tile_offset<D>(r, c));
}

// B fragments of two n tiles (8 rows each, rows row0.. and row0 + 8..) for k step kk, from a tile stored N x K
// (row = n, col = k; e.g. K for S = Q K^T): ldmatrix.x4 (plain), matrix j = (rows + 8 (j >> 1), cols + 8 (j & 1)).
// b[0..1] belong to n tile 0, b[2..3] to n tile 1.
template <int D>
__device__ __forceinline__ void load_b_frags_nk(uint32_t (&b)[4], const void* tile, int row0, int kk, int lane) {
  const int r = row0 + 8 * (lane >> 4) + (lane & 7);
  const int c = 2 * kk + ((lane >> 3) & 1);
  ldmatrix_x4(b, static_cast<const uint16_t*>(tile) + tile_offset<D>(r, c));
}

// B fragments of two n tiles (cols 16 * np.., 8 each) for the k rows k0 .. k0 + 15, from a tile stored K x N
// (row = k, col = n; e.g. V for O = P V): ldmatrix.x4.trans, matrix j = (k rows + 8 (j & 1), n cols + 8 (j >> 1)).
// b[0..1] belong to n tile 2 np, b[2..3] to n tile 2 np + 1.
template <int D>
__device__ __forceinline__ void load_b_frags_kn(uint32_t (&b)[4], const void* tile, int k0, int np, int lane) {
  const int r = k0 + 8 * ((lane >> 3) & 1) + (lane & 7);
  const int c = 2 * np + (lane >> 4);
  ldmatrix_x4_trans(b, static_cast<const uint16_t*>(tile) + tile_offset<D>(r, c));
}

// Quad (the 4 lanes holding one accumulator row) reductions.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// One element of the additive bias, whose dtype is chosen at run time (DType of common/dtype.h as int).
__device__ __forceinline__ float load_bias(const void* bias, int dtype, int64_t off) {
  if (dtype == 0) return static_cast<const float*>(bias)[off];
  if (dtype == 1) return __half2float(static_cast<const __half*>(bias)[off]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[off]);
}

}  // namespace attn
}  // namespace fastattn
