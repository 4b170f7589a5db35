// Which matrix element each lane of a warp holds in each register, for the tensor-core instructions that
// csrc/common/{mma,ldmatrix}.cuh wrap. Pure integer functions, usable on the host (tests, the CPU emulation)
// and on the device (kernels that load fragments with plain loads).
//
// Sources: PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" and "Warp-level matrix
// load instruction: ldmatrix". Notation: lane l in [0, 32), g = l / 4 (the "group"), t = l % 4 (the thread in
// its group). A 32-bit register of a 16-bit fragment holds two elements; `half` 0 is the low 16 bits.
//
//   mma.m16n8k16 A (16 x 16, M x K):  reg r, half h  ->  row g + 8 * (r & 1),  col 2t + h + 8 * (r >> 1)
//   mma.m16n8k16 B (16 x 8,  K x N):  reg r, half h  ->  k   2t + h + 8 * r,   n   g
//   mma.m16n8k16 C/D (16 x 8, f32):   reg i          ->  row g + 8 * (i >> 1), col 2t + (i & 1)
//   ldmatrix.m8n8 (matrix j, in register j): the 8 row addresses of matrix j come from lanes 8j .. 8j+7
//     (lane 8j + r gives row r); lane l receives, half h:
//       plain   stored element (row g,      col 2t + h)
//       .trans  stored element (row 2t + h, col g)        -- the matrix is read as column-major
//   So ldmatrix.x4 of the four 8x8 quadrants of a row-major 16 x 16 A tile, quadrant j = (rows 8 * (j & 1),
//   cols 8 * (j >> 1)), yields exactly the A fragment; ldmatrix.x2.trans of a row-major K x N tile (k-rows
//   0-7 then 8-15) yields the B fragment; ldmatrix.x2 (plain) of an N x K (i.e. B transposed) tile too.
#pragma once

#if defined(__CUDACC__)
#define FASTATTN_HD __host__ __device__ __forceinline__
#else
#define FASTATTN_HD inline
#endif

// The caller's file:line, as trailing defaulted parameters of the primitives in the emulated build only, so
// the emulation's messages (a lane at a different collective, a misaligned address) name the kernel's line.
// FASTATTN_CALL_SITE_FWD passes them on from one primitive to another.
#if !defined(__CUDACC__) && defined(FASTATTN_EMULATE)
#define FASTATTN_CALL_SITE , const char *call_file = __builtin_FILE(), int call_line = __builtin_LINE()
#define FASTATTN_CALL_SITE_FWD , call_file, call_line
#else
#define FASTATTN_CALL_SITE
#define FASTATTN_CALL_SITE_FWD
#endif

namespace fastattn {
namespace frag {

constexpr int kWarpSize = 32;

struct RowCol {
  int row;
  int col;
};

FASTATTN_HD constexpr int group_of(int lane) { return lane >> 2; }   // g
FASTATTN_HD constexpr int thread_in_group(int lane) { return lane & 3; }  // t

// mma.m16n8k16 operand A (M x K = 16 x 16, row-major): the element in `half` of register `reg` (0..3).
FASTATTN_HD constexpr RowCol mma_a(int lane, int reg, int half) {
  return {group_of(lane) + 8 * (reg & 1), 2 * thread_in_group(lane) + half + 8 * (reg >> 1)};
}

// mma.m16n8k16 operand B (K x N = 16 x 8): {k, n} of `half` of register `reg` (0..1).
FASTATTN_HD constexpr RowCol mma_b(int lane, int reg, int half) {
  return {2 * thread_in_group(lane) + half + 8 * reg, group_of(lane)};
}

// mma.m16n8k16 accumulator C/D (M x N = 16 x 8, f32): {row, col} of register `reg` (0..3).
FASTATTN_HD constexpr RowCol mma_c(int lane, int reg) {
  return {group_of(lane) + 8 * (reg >> 1), 2 * thread_in_group(lane) + (reg & 1)};
}

// ldmatrix.m8n8: the lane whose address is row `row` (0..7) of matrix `matrix` (0..3).
FASTATTN_HD constexpr int ldmatrix_address_lane(int matrix, int row) { return 8 * matrix + row; }

// ldmatrix.m8n8: the element of the stored 8 x 8 matrix (row = the address given by lane 8j + row) that lands
// in `half` of the register of `lane` for that matrix; `trans` for the .trans form.
FASTATTN_HD constexpr RowCol ldmatrix_element(int lane, int half, bool trans) {
  return trans ? RowCol{2 * thread_in_group(lane) + half, group_of(lane)}
               : RowCol{group_of(lane), 2 * thread_in_group(lane) + half};
}

}  // namespace frag
}  // namespace fastattn
