// Host test of the fragment layouts (csrc/common/fragment_layout.h) and of the emulation cores of mma and
// ldmatrix (csrc/common/warp_matrix_emu.h), the 32 lanes of a warp simulated in a loop. Built and run by
// tests/test_cuda_primitives.py with the host compiler; prints "OK <checks>" and exits 0, or prints each
// failure and exits 1.
//
// What it checks:
//   - spot values of each layout against the PTX ISA's figures (not derived from the formulas under test);
//   - each layout covers its matrix exactly once;
//   - the f16 / bf16 decoding of the emulation equals the toolkit's __half2float / __bfloat162float on all
//     65536 bit patterns;
//   - mma: D assembled from the 32 lanes' emulated fragments equals A * B + C computed plainly (fp32-level
//     tolerance), for f16 and bf16, random values and special ones;
//   - ldmatrix: x1 / x2 / x4, plain and .trans, from padded shared-memory-like rows, deliver exactly the mma
//     A and B fragments, and never read the addresses of lanes the instruction ignores.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/fragment_layout.h"
#include "common/mma.cuh"  // pack2 / load_pair only (host-callable); mma itself needs a device or the emulation
#include "common/warp_matrix_emu.h"

using fastattn::frag::RowCol;
namespace frag = fastattn::frag;
namespace emu = fastattn::emu_matrix;

static int g_checks = 0, g_failures = 0;

#define CHECK(cond, ...)                                          \
  do {                                                            \
    ++g_checks;                                                   \
    if (!(cond)) {                                                \
      ++g_failures;                                               \
      if (g_failures <= 20) {                                     \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                 \
        std::printf("\n");                                        \
      }                                                           \
    }                                                             \
  } while (0)

static bool same(RowCol a, int row, int col) { return a.row == row && a.col == col; }

// Values read off the PTX ISA figures for m16n8k16 (.f16/.bf16) and ldmatrix.
static void test_spot_values() {
  // A: lane 0 holds a0 = (0, 0..1), a1 = (8, 0..1), a2 = (0, 8..9), a3 = (8, 8..9).
  CHECK(same(frag::mma_a(0, 0, 0), 0, 0) && same(frag::mma_a(0, 0, 1), 0, 1), "A lane 0 a0");
  CHECK(same(frag::mma_a(0, 1, 0), 8, 0) && same(frag::mma_a(0, 2, 1), 0, 9) && same(frag::mma_a(0, 3, 0), 8, 8),
        "A lane 0 a1..a3");
  // lane 5: group 1, thread 1 -> a0 = (1, 2..3), a3 = (9, 10..11); lane 31: a3 = (15, 14..15).
  CHECK(same(frag::mma_a(5, 0, 0), 1, 2) && same(frag::mma_a(5, 3, 1), 9, 11), "A lane 5");
  CHECK(same(frag::mma_a(31, 3, 0), 15, 14) && same(frag::mma_a(31, 3, 1), 15, 15), "A lane 31");
  // B (k, n): lane 5 holds b0 = (2..3, 1), b1 = (10..11, 1); lane 30: b1 = (12..13, 7).
  CHECK(same(frag::mma_b(5, 0, 0), 2, 1) && same(frag::mma_b(5, 0, 1), 3, 1) && same(frag::mma_b(5, 1, 1), 11, 1),
        "B lane 5");
  CHECK(same(frag::mma_b(30, 1, 0), 12, 7) && same(frag::mma_b(30, 1, 1), 13, 7), "B lane 30");
  // C: lane 5 holds c0 = (1, 2), c1 = (1, 3), c2 = (9, 2), c3 = (9, 3); lane 31: c3 = (15, 7).
  CHECK(same(frag::mma_c(5, 0), 1, 2) && same(frag::mma_c(5, 1), 1, 3) && same(frag::mma_c(5, 2), 9, 2) &&
            same(frag::mma_c(5, 3), 9, 3),
        "C lane 5");
  CHECK(same(frag::mma_c(31, 3), 15, 7), "C lane 31");
  // ldmatrix: lane 9 receives (row 2, cols 2..3); with .trans (rows 2..3, col 2). Row r of matrix j: lane 8j+r.
  CHECK(same(frag::ldmatrix_element(9, 0, false), 2, 2) && same(frag::ldmatrix_element(9, 1, false), 2, 3),
        "ldmatrix lane 9");
  CHECK(same(frag::ldmatrix_element(9, 0, true), 2, 2) && same(frag::ldmatrix_element(9, 1, true), 3, 2),
        "ldmatrix.trans lane 9");
  CHECK(same(frag::ldmatrix_element(7, 1, true), 7, 1), "ldmatrix.trans lane 7");
  CHECK(frag::ldmatrix_address_lane(2, 5) == 21, "ldmatrix address lane");
}

static void test_coverage() {
  int a[16][16] = {}, b[16][8] = {}, c[16][8] = {}, lm[2][8][8] = {};
  for (int l = 0; l < 32; ++l) {
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) ++a[frag::mma_a(l, r, h).row][frag::mma_a(l, r, h).col];
    for (int r = 0; r < 2; ++r)
      for (int h = 0; h < 2; ++h) ++b[frag::mma_b(l, r, h).row][frag::mma_b(l, r, h).col];
    for (int i = 0; i < 4; ++i) ++c[frag::mma_c(l, i).row][frag::mma_c(l, i).col];
    for (int t = 0; t < 2; ++t)
      for (int h = 0; h < 2; ++h) ++lm[t][frag::ldmatrix_element(l, h, t).row][frag::ldmatrix_element(l, h, t).col];
  }
  bool ok = true;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) ok &= a[i][j] == 1;
  CHECK(ok, "A layout covers 16 x 16 once");
  ok = true;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) ok &= b[i][j] == 1 && c[i][j] == 1;
  CHECK(ok, "B and C layouts cover 16 x 8 once");
  ok = true;
  for (int t = 0; t < 2; ++t)
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 8; ++j) ok &= lm[t][i][j] == 1;
  CHECK(ok, "ldmatrix layouts cover 8 x 8 once");
}

static void test_conversions() {
  int bad_h = 0, bad_b = 0;
  for (uint32_t v = 0; v < 65536; ++v) {
    const uint16_t bits = static_cast<uint16_t>(v);
    __half_raw hr;
    hr.x = bits;
    __nv_bfloat16_raw br;
    br.x = bits;
    const __half h(hr);
    const __nv_bfloat16 bf(br);
    const float want_h = __half2float(h), got_h = emu::f16_bits_to_float(bits);
    const float want_b = __bfloat162float(bf), got_b = emu::bf16_bits_to_float(bits);
    if (!(std::memcmp(&want_h, &got_h, 4) == 0 || (std::isnan(want_h) && std::isnan(got_h)))) ++bad_h;
    if (!(std::memcmp(&want_b, &got_b, 4) == 0 || (std::isnan(want_b) && std::isnan(got_b)))) ++bad_b;
  }
  CHECK(bad_h == 0, "%d f16 bit patterns decode differently from __half2float", bad_h);
  CHECK(bad_b == 0, "%d bf16 bit patterns decode differently from __bfloat162float", bad_b);
}

static uint16_t to_bits(float x, emu::Elem e) {
  uint16_t bits;
  if (e == emu::Elem::kF16) {
    const __half h = __float2half_rn(x);
    std::memcpy(&bits, &h, 2);
  } else {
    const __nv_bfloat16 b = __float2bfloat16_rn(x);
    std::memcpy(&bits, &b, 2);
  }
  return bits;
}

// Fragments of all lanes from plain matrices, through the layouts.
static void fill_deposits(emu::MmaDeposit* dep, const uint16_t (&a)[16][16], const uint16_t (&b)[16][8],
                          const float (&c)[16][8]) {
  for (int l = 0; l < 32; ++l) {
    for (int r = 0; r < 4; ++r) {
      dep[l].a[r] = 0;
      for (int h = 0; h < 2; ++h) {
        const RowCol e = frag::mma_a(l, r, h);
        dep[l].a[r] |= uint32_t(a[e.row][e.col]) << (16 * h);
      }
    }
    for (int r = 0; r < 2; ++r) {
      dep[l].b[r] = 0;
      for (int h = 0; h < 2; ++h) {
        const RowCol e = frag::mma_b(l, r, h);
        dep[l].b[r] |= uint32_t(b[e.row][e.col]) << (16 * h);
      }
    }
    for (int i = 0; i < 4; ++i) dep[l].c[i] = c[frag::mma_c(l, i).row][frag::mma_c(l, i).col];
  }
}

static void run_mma_case(emu::Elem e, const float (&af)[16][16], const float (&bf)[16][8], const float (&cf)[16][8],
                         const char* name) {
  uint16_t a[16][16], b[16][8];
  float av[16][16], bv[16][8];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      a[i][j] = to_bits(af[i][j], e);
      av[i][j] = emu::elem_to_float(a[i][j], e);
    }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      b[i][j] = to_bits(bf[i][j], e);
      bv[i][j] = emu::elem_to_float(b[i][j], e);
    }
  emu::MmaDeposit dep[32];
  fill_deposits(dep, a, b, cf);
  float d[16][8];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) d[i][j] = NAN;
  float out[32][4];
  emu::mma_m16n8k16_warp(dep, e, out);
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) d[frag::mma_c(l, i).row][frag::mma_c(l, i).col] = out[l][i];
  int bad = 0;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      float ref = cf[i][j], mag = std::fabs(cf[i][j]);  // plain fp32 accumulation, k in order
      for (int k = 0; k < 16; ++k) {
        ref += av[i][k] * bv[k][j];
        mag += std::fabs(av[i][k] * bv[k][j]);
      }
      const bool ok = std::isnan(ref) ? std::isnan(d[i][j])
                      : std::isinf(ref) ? d[i][j] == ref
                                        : std::fabs(d[i][j] - ref) <= 2e-6f * mag + 1e-30f;
      if (!ok && ++bad <= 3) std::printf("  %s: D[%d][%d] = %.9g, plain product %.9g\n", name, i, j, d[i][j], ref);
    }
  CHECK(bad == 0, "%s: %d of 128 outputs differ from the plain product", name, bad);
}

static void test_mma() {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (emu::Elem e : {emu::Elem::kF16, emu::Elem::kBF16}) {
    const char* tag = e == emu::Elem::kF16 ? "f16" : "bf16";
    for (int trial = 0; trial < 20; ++trial) {
      float a[16][16], b[16][8], c[16][8];
      for (auto& row : a)
        for (float& v : row) v = normal(rng) * 4.0f;
      for (auto& row : b)
        for (float& v : row) v = normal(rng) * 4.0f;
      for (auto& row : c)
        for (float& v : row) v = normal(rng) * 16.0f;
      char name[64];
      std::snprintf(name, sizeof name, "mma %s random #%d", tag, trial);
      run_mma_case(e, a, b, c, name);
    }
    // Special values: a NaN row of A, an infinite column of B (all of one sign), a subnormal and -0.
    float a[16][16], b[16][8], c[16][8];
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) a[i][j] = 0.25f * ((i * 7 + j * 3) % 11) + 0.125f;
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 8; ++j) {
        b[i][j] = -0.5f * ((i * 5 + j) % 7) - 0.25f;
        c[i][j] = (i + j) % 2 ? -0.0f : 3.0f;
      }
    a[3][5] = NAN;
    b[9][6] = INFINITY;
    a[10][2] = e == emu::Elem::kF16 ? 3.0e-6f : 1.0e-39f;  // subnormal in f16 / bf16
    char name[64];
    std::snprintf(name, sizeof name, "mma %s special values", tag);
    run_mma_case(e, a, b, c, name);
  }
}

// A "shared memory" tile with padded rows: m[r][c] at base + r * stride + c (uint16 elements).
struct Tile {
  static constexpr int kStride = 24;
  alignas(16) uint16_t data[16 * kStride];
  uint16_t* row(int r) { return data + r * kStride; }
};

// The registers ldmatrix.x{num}{.trans} gives each lane, the lanes' row addresses from `addr_of(lane)`;
// lanes at and above 8 * num get nullptr, which must never be read.
template <typename AddrOf>
static void run_ldmatrix(int num, bool trans, AddrOf addr_of, uint32_t (&regs)[32][4]) {
  const void* addr[32];
  for (int l = 0; l < 32; ++l) addr[l] = l < 8 * num ? addr_of(l) : nullptr;
  for (int l = 0; l < 32; ++l) CHECK(emu::ldmatrix_lane(addr, num, trans, l, regs[l]) == -1, "aligned rows");
  // A misaligned row address of a lane the instruction reads is reported; one of an ignored lane is not.
  const void* saved = addr[8 * num - 1];
  addr[8 * num - 1] = static_cast<const char*>(saved) + 2;
  uint32_t scratch[4];
  CHECK(emu::ldmatrix_lane(addr, num, trans, 0, scratch) == 8 * num - 1, "misaligned row address reported");
  addr[8 * num - 1] = saved;
}

static void test_ldmatrix() {
  uint16_t a[16][16], b[16][8 * 2];  // distinct bit patterns: A (M x K), B (K x N, two n tiles)
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      a[i][j] = static_cast<uint16_t>(0x1000 + i * 16 + j);
      b[i][j] = static_cast<uint16_t>(0x5000 + i * 16 + j);
    }
  Tile sa, sat, sb, sbt;  // A, A^T, B, B^T
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      sa.row(i)[j] = a[i][j];
      sat.row(j)[i] = a[i][j];
      sb.row(i)[j] = b[i][j];
      sbt.row(j)[i] = b[i][j];
    }
  auto want_a = [&](int l, int r) {  // the mma A register r of lane l
    return uint32_t(a[frag::mma_a(l, r, 0).row][frag::mma_a(l, r, 0).col]) |
           uint32_t(a[frag::mma_a(l, r, 1).row][frag::mma_a(l, r, 1).col]) << 16;
  };
  auto want_b = [&](int l, int nt, int r) {  // the mma B register r of lane l for n tile nt
    return uint32_t(b[frag::mma_b(l, r, 0).row][8 * nt + frag::mma_b(l, r, 0).col]) |
           uint32_t(b[frag::mma_b(l, r, 1).row][8 * nt + frag::mma_b(l, r, 1).col]) << 16;
  };
  uint32_t regs[32][4];
  for (bool trans : {false, true}) {
    // A register q = quadrant (rows 8 (q & 1), cols 8 (q >> 1)); from A (plain) or A^T (.trans).
    auto a_row = [&](int q, int r) -> const void* {
      return trans ? sat.row(8 * (q >> 1) + r) + 8 * (q & 1) : sa.row(8 * (q & 1) + r) + 8 * (q >> 1);
    };
    // B register q = 2 nt + khalf; from B^T (plain) or B (.trans).
    auto b_row = [&](int q, int r) -> const void* {
      return trans ? sb.row(8 * (q & 1) + r) + 8 * (q >> 1) : sbt.row(8 * (q >> 1) + r) + 8 * (q & 1);
    };
    for (int num : {1, 2, 4}) {
      int bad_a = 0, bad_b = 0;
      for (int call = 0; call < 4 / num; ++call) {
        run_ldmatrix(num, trans, [&](int l) { return a_row(num * call + l / 8, l % 8); }, regs);
        for (int l = 0; l < 32; ++l)
          for (int j = 0; j < num; ++j) bad_a += regs[l][j] != want_a(l, num * call + j);
        run_ldmatrix(num, trans, [&](int l) { return b_row(num * call + l / 8, l % 8); }, regs);
        for (int l = 0; l < 32; ++l)
          for (int j = 0; j < num; ++j) {
            const int q = num * call + j;
            bad_b += regs[l][j] != want_b(l, q >> 1, q & 1);
          }
      }
      CHECK(bad_a == 0, "ldmatrix.x%d%s: %d registers differ from the mma A fragment", num, trans ? ".trans" : "",
            bad_a);
      CHECK(bad_b == 0, "ldmatrix.x%d%s: %d registers differ from the mma B fragment", num, trans ? ".trans" : "",
            bad_b);
    }
  }
}

// pack2<T>(lo, hi): round to nearest even, lo in the low half (the lower column / k of the fragment pair).
static void test_pack2() {
  CHECK(fastattn::pack2<__half>(1.0f, -2.0f) == 0xC0003C00u, "pack2<__half>(1, -2) = 0x%08x",
        fastattn::pack2<__half>(1.0f, -2.0f));
  CHECK(fastattn::pack2<__nv_bfloat16>(1.0f, -2.0f) == 0xC0003F80u, "pack2<bf16>(1, -2) = 0x%08x",
        fastattn::pack2<__nv_bfloat16>(1.0f, -2.0f));
  // Ties to even: 1 + 2^-11 is halfway between f16 1 and its successor, 1 + 2^-8 between bf16 1 and its.
  CHECK(fastattn::pack2<__half>(1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f) == ((0x3C02u << 16) | 0x3C00u), "f16 ties");
  CHECK(fastattn::pack2<__nv_bfloat16>(1.0f + 0x1p-8f, 0.0f) == 0x3F80u, "bf16 ties");
  const uint16_t pair[2] = {0x1234, 0xABCD};
  __half_raw raw[2];
  raw[0].x = pair[0];
  raw[1].x = pair[1];
  alignas(4) const __half h[2] = {__half(raw[0]), __half(raw[1])};
  CHECK(fastattn::load_pair(h) == 0xABCD1234u, "load_pair puts p[0] in the low half");
}

int main() {
  test_spot_values();
  test_pack2();
  test_coverage();
  test_conversions();
  test_mma();
  test_ldmatrix();
  if (g_failures) {
    std::printf("FAILED %d of %d checks\n", g_failures, g_checks);
    return 1;
  }
  std::printf("OK %d checks\n", g_checks);
  return 0;
}
