// Sort-free sampling / filtering: the kernel and the per-dtype launcher template.
//
// Included only by instantiations/sampling_<dtype>.cu.
//
// Two paths in one kernel (runtime switches, one instantiation per dtype):
// - the fast path (v2, see "the fast path" below) for greedy rows and rows with 1 <= top-k <= kFastK (with or
//   without top-p / min-p): pass 1 keeps only per-lane running maxima, a bisection over them bounds the k-th
//   largest, only the ~k lanes above the bound are re-read, and the ~k candidates are resolved pairwise in
//   shared memory. Rows <= kSplitMaxRows are split over several CTAs (mode 1) and merged (mode 2).
// - the general path (v1, general_row) for every other row and for the rows the fast path flags (NaN, +inf,
//   all -inf, tie groups over its capacities): radix selection over the whole row, described here.
// Both paths decide the kept set and draw with the same arithmetic, so a row's token does not depend on the
// path, the split, or its batch position.
//
// General path: every filter keeps an upper set {z >= tau} of the row, so it finds thresholds by radix
// selection on order-preserving 32-bit keys of z (never sorting): three levels of 11, 11 and 10 bits, each one
// pass over the row that histograms the digit of the elements sharing the prefix found so far (2048
// shared-memory bins) and counts what lies above the prefix; a walk of the bins from the top picks the digit.
// - top-k (count criterion): the lowest non-empty bin b with count(above prefix) + count(bins above b) < k
//   holds the k-th largest key; after the last level the prefix IS that key (tau_k), ties kept whole.
// - top-p (mass criterion, restricted to keys >= tau_k): the lowest non-empty bin b whose mass strictly above
//   it, mass(above prefix) + mass(bins above b), is < top_p * S_k holds tau_p. Its largest element has exactly
//   that mass strictly above it, so the bin holds a kept element, and the next level refines inside it.
// - min-p keeps z - max z >= log(min_p), evaluated per element as the reference does.
// Masses are e = exp(z - max z) in fixed point: floor(e * 2^s) as uint64 (s = min(40, 62 - ceil(log2 V)),
// so a row's sum cannot overflow). Integer sums are exact and independent of the order the atomics land in:
// every pass sees bitwise the same masses, the invariant "the threshold lies inside the chosen prefix" holds
// exactly from level to level (no restart path), and identical inputs give identical tokens. Elements with
// e < 2^-s (about 1e-12 of the max) weigh 0: kept by the filter, never drawn.
//
// General path grid: one CTA of kThreads = 512 threads per row. Passes over the row (each reads the row,
// coalesced, thread tid takes elements tid, tid + 512, ...):
//   pass 1: max z, first argmax, NaN / +inf flags, and the level-1 count histogram when top-k is on;
//   top-k: 2 more passes; top-p: 3 passes; min-p / no filter: 1 mass pass when the kept mass is not known
//   from the search; draw: inverse CDF in vocabulary order, 512 elements per step (a block scan of the
//   fixed-point masses), stopping at the token (about half a pass).
//   Filter mode replaces the draw by one pass writing z or -inf.
// Shared memory: the general path's 2048 x (4 + 8) B histograms (~24.7 KB) in a union with the fast path's
// lists (~42.5 KB static in all).
// Randomness: u = (SplitMix64(SplitMix64(seed) ^ 0) >> 11) * 2^-53, exactly reference.uniform_from_seed;
// the token is the first kept index whose inclusive prefix mass exceeds floor(u * W), W the kept mass.
#pragma once

#include <cfloat>
#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/device_utils.cuh"
#include "common/launch.cuh"
#include "sampling/sampling_launch.h"

namespace fastattn {
namespace sampling_detail {

constexpr int kWarps = kThreads / 32;
constexpr int kBins = 2048;
constexpr int64_t kMaxGridX = 2147483647;

struct Shared {
  unsigned int cnt[kBins];
  unsigned long long mass[kBins];
  unsigned long long red_u[kWarps];
  long long red_l[kWarps];
  float red_f[kWarps];
  long long token;
};

struct SumU {
  __device__ __forceinline__ unsigned long long operator()(unsigned long long a, unsigned long long b) const {
    return a + b;
  }
};
struct MaxL {
  __device__ __forceinline__ long long operator()(long long a, long long b) const { return a > b ? a : b; }
};
struct MinL {
  __device__ __forceinline__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};
struct OrL {
  __device__ __forceinline__ long long operator()(long long a, long long b) const { return a | b; }
};
struct MaxF {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Every thread of the CTA gets op over all threads' v. `red` holds kWarps values; safe to call back to back
// with the same buffer (the trailing barrier orders the reads before the next writes).
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, V* red, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  V r = red[0];
#pragma unroll
  for (int i = 1; i < kWarps; ++i) r = op(r, red[i]);
  __syncthreads();
  return r;
}

// Exclusive prefix sum over threads in threadIdx order; `total` gets the sum over the CTA.
__device__ __forceinline__ unsigned long long block_exclusive_scan(unsigned long long v, unsigned long long* red,
                                                                   unsigned long long& total) {
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  unsigned long long incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long t = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += t;
  }
  if (lane == 31) red[w] = incl;
  __syncthreads();
  unsigned long long before = 0, tot = 0;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) {
    if (i < w) before += red[i];
    tot += red[i];
  }
  __syncthreads();
  total = tot;
  return before + incl - v;
}

// Order-preserving key of fp32 z (unsigned compare of keys == float compare of z; -0.0 counts as +0.0).
__device__ __forceinline__ uint32_t key_of(float z) {
  const uint32_t b = __float_as_uint(z == 0.f ? 0.f : z);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float unkey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

template <typename T>
__device__ __forceinline__ float load_z(const T* __restrict__ x, int64_t j, float tdiv) {
  return to_float(x[j]) / tdiv;  // IEEE division (no fast math), as the reference's x / T
}

// floor(exp(z - m) * scale) for z <= m (0 for z = -inf).
__device__ __forceinline__ unsigned long long fixed_mass(float z, float m, float scale) {
  return static_cast<unsigned long long>(expf(z - m) * scale);
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// reference.uniform_from_seed(seed, 0): the top 53 bits of the doubly hashed seed, in [0, 1).
__device__ __forceinline__ double uniform_of(int64_t seed) {
  const uint64_t h = splitmix64(splitmix64(static_cast<uint64_t>(seed)) ^ 0ull);
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

// Radix selection of a threshold key over the elements with key >= kmin (see the header comment).
// MASS false: the k-th largest key (k in [1, count)); MASS true: tau_p for mass target top_p * (mass of the
// domain). With `level0_done` the level-1 count histogram is already in sh.cnt (built by pass 1). Returns the
// key; mass_ge gets the fixed-point mass of {key >= result} within the domain.
template <typename T, bool MASS>
__device__ uint32_t radix_search(Shared& sh, const T* __restrict__ x, int64_t V, float tdiv, float m, float scale,
                                 uint32_t kmin, int64_t k, double top_p, bool level0_done,
                                 unsigned long long& mass_ge) {
  const int tid = static_cast<int>(threadIdx.x);
  uint32_t prefix = 0;
  double target = 0.0;
  for (int level = 0; level < 3; ++level) {
    const int shift = level == 0 ? 21 : (level == 1 ? 10 : 0);
    const int bits = level == 2 ? 10 : 11;
    const int nb = 1 << bits;
    const int hi = shift + bits;  // bits at and above `hi` form the prefix
    const bool need_mass = MASS || level == 2;
    unsigned long long n_above = 0, m_above = 0;
    if (!(level == 0 && level0_done)) {
      __syncthreads();  // why: earlier reads of the histograms are done before they are cleared
      for (int b = tid; b < nb; b += kThreads) {
        sh.cnt[b] = 0;
        sh.mass[b] = 0;
      }
      __syncthreads();
#pragma unroll 4
      for (int64_t j = tid; j < V; j += kThreads) {
        const float z = load_z(x, j, tdiv);
        const uint32_t key = key_of(z);
        if (z != z || key < kmin) continue;  // why: outside the domain (NaN rows never get here)
        const uint64_t top = static_cast<uint64_t>(key) >> hi;
        if (top > prefix) {
          ++n_above;
          if (need_mass) m_above += fixed_mass(z, m, scale);
        } else if (top == prefix) {
          const int d = static_cast<int>((key >> shift) & static_cast<uint32_t>(nb - 1));
          atomicAdd(&sh.cnt[d], 1u);
          if (need_mass) atomicAdd(&sh.mass[d], fixed_mass(z, m, scale));
        }
      }
      __syncthreads();
      n_above = block_reduce(n_above, sh.red_u, SumU());
      if (need_mass) m_above = block_reduce(m_above, sh.red_u, SumU());
    }
    // Walk the bins from the top: thread t owns bins nb-1 - (t*R + i), i < R, in descending order.
    constexpr int kMaxR = kBins / kThreads;
    const int R = nb / kThreads;
    unsigned long long v[kMaxR];
    unsigned int c[kMaxR];
    unsigned long long local = 0;
#pragma unroll
    for (int i = 0; i < kMaxR; ++i) {
      if (i < R) {
        const int b = nb - 1 - (tid * R + i);
        c[i] = sh.cnt[b];
        v[i] = MASS ? sh.mass[b] : static_cast<unsigned long long>(c[i]);
        local += v[i];
      }
    }
    unsigned long long total = 0;
    unsigned long long above = block_exclusive_scan(local, sh.red_u, total);
    if (MASS && level == 0) target = top_p * static_cast<double>(total);  // total = mass of the domain
    long long best = -1;
#pragma unroll
    for (int i = 0; i < kMaxR; ++i) {
      if (i < R) {
        const bool ok = MASS ? static_cast<double>(m_above + above) < target
                             : static_cast<int64_t>(n_above + above) < k;
        if (c[i] > 0 && ok) best = tid * R + i;
        above += v[i];
      }
    }
    best = block_reduce(best, sh.red_l, MaxL());
    if (best < 0) best = 0;  // unreachable (the top non-empty bin always qualifies); stay in range
    const uint32_t digit = static_cast<uint32_t>(nb - 1 - best);
    prefix = (prefix << bits) | digit;
    if (level == 2) {
      unsigned long long mine = 0;
#pragma unroll
      for (int i = 0; i < kMaxR; ++i) {
        if (i < R && static_cast<uint32_t>(nb - 1 - (tid * R + i)) >= digit) mine += sh.mass[nb - 1 - (tid * R + i)];
      }
      mass_ge = m_above + block_reduce(mine, sh.red_u, SumU());
    }
  }
  return prefix;
}

// ---- per-row parameters -----------------------------------------------------------------------------------
struct RowParams {
  float t;
  int64_t k;
  float top_p;
  float min_p;
};

// A row's float parameter: the tensor's element as float, clamped into [lo, hi] with NaN kept (as torch.clamp);
// the number val (checked by the caller) when there is no tensor.
__device__ __forceinline__ float row_param(const RowParam r, int64_t row, float val, float lo, float hi) {
  if (r.ptr == nullptr) return val;
  const int64_t i = row * r.stride;
  float x;
  switch (r.type) {
    case ParamType::kFloat64: x = static_cast<float>(static_cast<const double*>(r.ptr)[i]); break;
    case ParamType::kFloat16: x = to_float(static_cast<const __half*>(r.ptr)[i]); break;
    case ParamType::kBFloat16: x = to_float(static_cast<const __nv_bfloat16*>(r.ptr)[i]); break;
    default: x = static_cast<const float*>(r.ptr)[i]; break;
  }
  x = x < lo ? lo : x;  // comparisons with NaN are false: NaN stays NaN
  return x > hi ? hi : x;
}

// top_k: the int32 / int64 element, below 0 -> 0 (no top-k).
__device__ __forceinline__ int64_t row_param_int(const RowParam r, int64_t row, int64_t val) {
  if (r.ptr == nullptr) return val;
  const int64_t i = row * r.stride;
  const int64_t k = r.type == ParamType::kInt32 ? static_cast<int64_t>(static_cast<const int32_t*>(r.ptr)[i])
                                                : static_cast<const int64_t*>(r.ptr)[i];
  return k < 0 ? 0 : k;
}

// The row's temperature, top-k, top-p and min-p: its entry of the per-row tensor (clamped as it is read:
// temperature into [0, inf], top-k below 0 to 0, top-p into [FLT_MIN, 1], min-p into [0, 1]), else the scalar.
// The one place the kernel reads them (both paths, every mode).
__device__ __forceinline__ RowParams load_row_params(const SamplingParams& p, int64_t row) {
  RowParams r;
  r.t = row_param(p.temperature, row, p.temperature_val, 0.f, INFINITY);
  r.k = row_param_int(p.top_k, row, p.top_k_val);
  r.top_p = row_param(p.top_p, row, p.top_p_val, FLT_MIN, 1.f);
  r.min_p = row_param(p.min_p, row, p.min_p_val, 0.f, 1.f);
  return r;
}

// Filter mode's output row: z where kept, else -inf (a NaN row all NaN; a +inf row its +inf entries; a greedy
// row its first maximum, undivided).
template <typename T>
__device__ void write_filtered(const SamplingParams& p, int64_t row, const T* __restrict__ x, float tdiv,
                               bool nan_row, bool pinf_row, bool greedy, long long amax, uint32_t kf, bool mp_on,
                               float m, float lmp) {
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t V = p.vocab;
  float* __restrict__ out = p.filtered + row * V;
#pragma unroll 4
  for (int64_t j = tid; j < V; j += kThreads) {
    const float z = load_z(x, j, tdiv);
    float yv;
    if (nan_row) {
      yv = NAN;
    } else if (pinf_row) {
      yv = z == INFINITY ? z : -INFINITY;  // the distribution is the row's +inf tokens
    } else if (greedy) {
      yv = j == amax ? z : -INFINITY;
    } else {
      const bool keep = key_of(z) >= kf && (!mp_on || z - m >= lmp);
      yv = keep ? z : -INFINITY;
    }
    out[j] = yv;
  }
}

// ---- the general path (v1): radix selection over the whole row, one CTA -------------------------------------
template <typename T>
__device__ void general_row(Shared& sh, const SamplingParams& p, int64_t row, const RowParams& rp, float scale) {
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t V = p.vocab;
  const T* __restrict__ x = static_cast<const T*>(p.logits) + row * p.row_stride;
  const float t = rp.t;
  const int64_t k = rp.k;
  const float top_p = rp.top_p;
  const float min_p = rp.min_p;
  const bool greedy = t == 0.f;
  const float tdiv = greedy ? 1.f : t;  // greedy rows work on the undivided logits
  const bool k_on = k > 0 && k < V && !greedy;
  const bool p_on = top_p < 1.f && !greedy;
  const bool mp_on = min_p > 0.f && !greedy;

  // ---- pass 1: max, first argmax, NaN / +inf, level-1 count histogram (top-k) --------------------------
  __syncthreads();  // why: earlier reads of shared memory (previous row, or the fast path) are done
  if (k_on)
    for (int b = tid; b < kBins; b += kThreads) sh.cnt[b] = 0;
  __syncthreads();
  float m_t = -INFINITY;
  long long a_t = -1;  // first index of this thread's max (-1: none seen)
  int flags = 0;       // 1: NaN seen, 2: +inf seen
#pragma unroll 4
  for (int64_t j = tid; j < V; j += kThreads) {
    const float z = load_z(x, j, tdiv);
    if (z != z) {
      flags |= 1;
      continue;
    }
    if (z == INFINITY) flags |= 2;
    if (z > m_t || a_t < 0) {  // strict: a thread keeps the first index of its max
      m_t = z;
      a_t = j;
    }
    if (k_on) atomicAdd(&sh.cnt[key_of(z) >> 21], 1u);
  }
  const float m = block_reduce(m_t, sh.red_f, MaxF());
  const long long amax = block_reduce((a_t >= 0 && m_t == m) ? a_t : static_cast<long long>(INT64_MAX), sh.red_l,
                                      MinL());
  const long long fl = block_reduce(static_cast<long long>(flags), sh.red_l, OrL());
  const bool nan_row = (fl & 1) != 0;
  const bool pinf_row = (fl & 2) != 0;
  const bool bad = nan_row || pinf_row || m == -INFINITY;
  const bool work = !bad && !greedy;

  // ---- thresholds -----------------------------------------------------------------------------------------
  uint32_t kf = 0;  // keep key >= kf (0: everything)
  unsigned long long w_kept = 0;
  bool w_known = false;
  if (work && k_on) {
    kf = radix_search<T, false>(sh, x, V, tdiv, m, scale, 0u, k, 0.0, true, w_kept);
    w_known = true;
  }
  if (work && p_on) {
    kf = radix_search<T, true>(sh, x, V, tdiv, m, scale, kf, 0, static_cast<double>(top_p), false, w_kept);
    w_known = true;
  }
  const float lmp = mp_on ? logf(min_p) : 0.f;

  if (p.filtered != nullptr) {
    write_filtered(p, row, x, tdiv, nan_row, pinf_row, greedy, amax, kf, mp_on, m, lmp);
    return;
  }

  // ---- draw -----------------------------------------------------------------------------------------------
  long long tok = -1;
  if (greedy && !bad) tok = amax;
  if (work) {
    // min-p cuts below tau (or there is no tau): the kept mass needs a pass.
    if (mp_on && !(kf != 0 && unkey(kf) - m >= lmp)) w_known = false;
    if (!w_known) {
      unsigned long long wm = 0;
#pragma unroll 4
      for (int64_t j = tid; j < V; j += kThreads) {
        const float z = load_z(x, j, tdiv);
        if (key_of(z) >= kf && (!mp_on || z - m >= lmp)) wm += fixed_mass(z, m, scale);
      }
      w_kept = block_reduce(wm, sh.red_u, SumU());
    }
    const int64_t seed = p.seeds != nullptr ? p.seeds[row] : p.seed_val;
    unsigned long long target = static_cast<unsigned long long>(uniform_of(seed) * static_cast<double>(w_kept));
    if (target >= w_kept) target = w_kept - 1;  // rounding of u * W (w_kept > 0: the max always weighs 2^s)
    tok = amax;  // unreachable fallback
    unsigned long long run = 0;
    if (tid == 0) sh.token = -1;
    for (int64_t j0 = 0; j0 < V; j0 += kThreads) {
      const int64_t j = j0 + tid;
      unsigned long long e = 0;
      if (j < V) {
        const float z = load_z(x, j, tdiv);
        if (key_of(z) >= kf && (!mp_on || z - m >= lmp)) e = fixed_mass(z, m, scale);
      }
      unsigned long long tile = 0;
      const unsigned long long excl = run + block_exclusive_scan(e, sh.red_u, tile);
      if (e > 0 && excl <= target && target < excl + e) sh.token = j;  // exactly one element of the row
      run += tile;
      __syncthreads();
      if (sh.token >= 0) break;  // uniform: every thread reads the same value after the barrier
    }
    if (sh.token >= 0) tok = sh.token;
    __syncthreads();
  }
  if (tid == 0) p.tokens[row] = tok;
}

// ---- the fast path (v2): lane maxima, a bound, a sparse gather, a pairwise resolution ----------------------
// For greedy rows and top-k rows with k <= kFastK (with or without top-p / min-p):
//  1. pass 1 keeps, per lane (thread t, element c of its 16-byte vector: logits j with j % chunk == t * N + c),
//     only the NaN-propagating running max of the raw logits x: one max per element (packed pairs for 16-bit
//     types), no division, no key. z = x / T is monotone in x, so a lane's max z is its max x divided once.
//  2. Lz = a lower bound on the k-th largest lane-max z (its key to 24 bits, by a 24-step bisection of counts
//     over the keys). The k lanes at or above it hold k distinct elements, so the row's (or the piece's) k-th
//     largest z is >= Lz; every element with z >= Lz lies in a lane whose max is >= Lz: about k lanes of the
//     chunk's kThreads * N.
//  3. only those lanes are re-read (one element per chunk each, usually still in L2), divided exactly, and the
//     elements with z >= Lz listed in shared memory: a superset of the top-k set, about k entries.
//  4. the list is resolved pairwise: rank (elements strictly larger) and mass strictly above each entry give
//     top-k and top-p exactly as the general path decides them (same fixed-point masses, same max, same
//     comparisons), min-p per element, and the inverse-CDF draw in vocabulary order at the same uniform. So a
//     row's token does not depend on which path or how many pieces resolved it.
// A NaN, +inf or all -inf row, or a list over its capacity (tie groups at the bound), takes the general path.
// Row split (mode 1 + mode 2): each piece of the row runs 1-3 on its chunks (its k-th largest is <= the row's,
// so its list holds every element of the row's top-k set in the piece) and writes the list to the workspace;
// then one CTA per row merges the lists (cut by the same bisection when longer than kResCap) and resolves as 4.
constexpr int kFastK = 128;                           // top-k up to this takes the fast path
constexpr int kLaneCap = 512;                         // candidate lanes listed
constexpr int kCandCap = 1024;                        // one CTA's list (no split)
constexpr int kMergeCap = 4096;                       // a row's merged lists
constexpr int kMergePerThread = kMergeCap / kThreads;
constexpr int kResCap = kThreads;                     // entries resolved pairwise (one per thread)
static_assert(kWsCap <= kMergeCap && kCandCap <= kMergeCap, "lists fit the merge buffer");

struct FastShared {
  float cz[kMergeCap];  // list: z and index
  int ci[kMergeCap];
  float rz[kResCap];    // the list cut to the top-k set, when longer than kResCap
  int ri[kResCap];
  unsigned long long re[kResCap];  // fixed-point masses of the resolved entries
  int lanes[kLaneCap];
  uint4 cnt[2][kWarps / 4];
  unsigned long long red_u[kWarps];
  long long red_l[kWarps];
  float red_f[kWarps];
  int piece_off[kMaxSplits + 1];
  int nlanes, ncand, nres, mflags;
  float mz;
  long long token;
};

union SharedAll {
  Shared v1;
  FastShared f;
};

__device__ __forceinline__ float fmax_nan(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return (a != a || b != b) ? NAN : fmaxf(a, b);
#endif
}

template <typename T>
__device__ __forceinline__ uint32_t max2_nan(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("max.NaN.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  } else {
    asm("max.NaN.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  }
  return r;
#else
  uint32_t r = 0;
  for (int h = 0; h < 2; ++h) {
    const unsigned short ua = static_cast<unsigned short>(a >> (16 * h)), ub = static_cast<unsigned short>(b >> (16 * h));
    T ta, tb;
    memcpy(&ta, &ua, 2);
    memcpy(&tb, &ub, 2);
    const float fa = to_float(ta), fb = to_float(tb);
    const unsigned short ur = fa != fa ? ua : (fb != fb ? ub : (fa >= fb ? ua : ub));
    r |= static_cast<uint32_t>(ur) << (16 * h);
  }
  return r;
#endif
}

// Running maxima of the N = 16 / sizeof(T) lanes of one thread, as raw bits (16-bit types: packed pairs).
template <typename T>
struct LaneMax {
  static constexpr int N = kChunk<T>;
  static constexpr bool kWide = sizeof(T) == 4;
  static constexpr uint32_t kNegInf16 = std::is_same_v<T, __nv_bfloat16> ? 0xff80u : 0xfc00u;
  uint32_t w[4];
  __device__ __forceinline__ void init() {
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = kWide ? 0xff800000u : (kNegInf16 << 16 | kNegInf16);
  }
  __device__ __forceinline__ void update(const uint4 v) {
    if constexpr (kWide) {
      w[0] = __float_as_uint(fmax_nan(__uint_as_float(w[0]), __uint_as_float(v.x)));
      w[1] = __float_as_uint(fmax_nan(__uint_as_float(w[1]), __uint_as_float(v.y)));
      w[2] = __float_as_uint(fmax_nan(__uint_as_float(w[2]), __uint_as_float(v.z)));
      w[3] = __float_as_uint(fmax_nan(__uint_as_float(w[3]), __uint_as_float(v.w)));
    } else {
      w[0] = max2_nan<T>(w[0], v.x);
      w[1] = max2_nan<T>(w[1], v.y);
      w[2] = max2_nan<T>(w[2], v.z);
      w[3] = max2_nan<T>(w[3], v.w);
    }
  }
  // Element c (a compile-time constant after unrolling) of the thread's vector.
  __device__ __forceinline__ void update_one(int c, T v) {
    if constexpr (kWide) {
      w[c] = __float_as_uint(fmax_nan(__uint_as_float(w[c]), to_float(v)));
    } else {
      unsigned short b;
      memcpy(&b, &v, 2);
      const uint32_t packed = (c & 1) ? (static_cast<uint32_t>(b) << 16 | kNegInf16) : (kNegInf16 << 16 | b);
      w[c >> 1] = max2_nan<T>(w[c >> 1], packed);
    }
  }
  __device__ __forceinline__ float get(int c) const {
    if constexpr (kWide) {
      return __uint_as_float(w[c]);
    } else {
      const unsigned short b = static_cast<unsigned short>(w[c >> 1] >> (16 * (c & 1)));
      T v;
      memcpy(&v, &b, 2);
      return to_float(v);
    }
  }
};

__device__ __forceinline__ uint4 load16(const void* p) { return __ldg(static_cast<const uint4*>(p)); }

// Pass 1 over chunks [ch0, ch1) of the row: whole chunks with 16-byte loads when the row is 16-byte aligned,
// the partial last chunk (and a misaligned row) element by element.
template <typename T>
__device__ __forceinline__ void pass1_lane_max(const T* __restrict__ x, int64_t V, int64_t ch0, int64_t ch1,
                                               LaneMax<T>& lm) {
  constexpr int N = kChunk<T>;
  constexpr int64_t CH = int64_t{kThreads} * N;
  const int64_t off = static_cast<int64_t>(threadIdx.x) * N;
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const int64_t nfull = V / CH;
  const int64_t fend = aligned ? (ch1 < nfull ? ch1 : nfull) : ch0;
  const T* __restrict__ px = x + off;
  int64_t ch = ch0;
  // Four 16-byte loads in flight per thread (32 KB per CTA); no further unrolling (the static report counts
  // these loops' trips as written).
#pragma unroll 1
  for (; ch + 4 <= fend; ch += 4) {  // fastattn-static-loop: pass1
    const uint4 v0 = load16(px + ch * CH), v1 = load16(px + (ch + 1) * CH);
    const uint4 v2 = load16(px + (ch + 2) * CH), v3 = load16(px + (ch + 3) * CH);
    lm.update(v0);
    lm.update(v1);
    lm.update(v2);
    lm.update(v3);
  }
#pragma unroll 1
  for (; ch < fend; ++ch) lm.update(load16(px + ch * CH));  // fastattn-static-loop: pass1-rest
#pragma unroll 1
  for (; ch < ch1; ++ch) {  // fastattn-static-loop: pass1-scalar
#pragma unroll
    for (int c = 0; c < N; ++c) {
      const int64_t j = ch * CH + off + c;
      if (j < V) lm.update_one(c, x[j]);
    }
  }
}

// A lower bound on the k-th largest of the CTA's keys (1 <= k <= the number of keys; unused slots hold 0, below
// every key of a number): the largest K whose low 8 bits are 0 with count(keys >= K) >= k, built bit by bit
// from the top (count is monotone in K), 24 steps of one count each. The k keys >= K hold k distinct elements,
// so K is <= the k-th largest; it is within 2^-15 (relative) of it, which leaves only rare extra candidates.
// `cnt` is 2 x kWarps scratch. Ends with a barrier.
template <int NK>
__device__ uint32_t kth_largest_key_bound(const uint32_t (&keys)[NK], int64_t k, uint4 (&cnt)[2][kWarps / 4]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned kk = static_cast<unsigned>(k);
  uint32_t res = 0;
#pragma unroll 1
  for (int bit = 31; bit >= 8; --bit) {  // fastattn-static-loop: bisection
    const uint32_t cand = res | (1u << bit);
    unsigned c = 0;
#pragma unroll
    for (int i = 0; i < NK; ++i) c += keys[i] >= cand ? 1u : 0u;
    c = __reduce_add_sync(0xffffffffu, c);
    uint4* buf = cnt[bit & 1];
    if (lane == 0) reinterpret_cast<unsigned*>(buf)[warp] = c;
    __syncthreads();  // why: double-buffered: step s + 2 writes this buffer only after barrier s + 1
    unsigned total = 0;
#pragma unroll
    for (int w = 0; w < kWarps / 4; ++w) {
      const uint4 q = buf[w];
      total += q.x + q.y + q.z + q.w;
    }
    if (total >= kk) res = cand;
  }
  __syncthreads();
  return res;
}

struct PieceResult {
  int n;      // entries listed in f.cz / f.ci
  int flags;  // 1: NaN, 2: +inf, 4: over a capacity
  float mz;   // max z of the piece (-inf when empty)
};

// Steps 1-3 over chunks [ch0, ch1) of a row: the list of its elements with z >= Lz in f.cz / f.ci.
template <typename T>
__device__ PieceResult fast_piece(FastShared& f, const T* __restrict__ x, int64_t V, int64_t ch0, int64_t ch1,
                                  bool greedy, float tdiv, int64_t keff, int cap) {
  constexpr int N = kChunk<T>;
  constexpr int64_t CH = int64_t{kThreads} * N;
  const int tid = static_cast<int>(threadIdx.x);
  LaneMax<T> lm;
  lm.init();
  pass1_lane_max<T>(x, V, ch0, ch1, lm);
  // A lane's key, or 0 for a lane with no element in the piece or only -inf ones: such elements weigh 0 and
  // are never drawn, and a -inf kept or removed reads -inf in the filter either way, so the list may leave
  // them out (which keeps a piece of few elements, or a masked one, from listing every lane).
  uint32_t keys[N];
  float mz_t = -INFINITY;
  int fl_t = 0;
#pragma unroll
  for (int c = 0; c < N; ++c) {
    const float v = lm.get(c);
    const float z = greedy ? v : v / tdiv;  // IEEE division, as the reference's x / T
    if (z != z) fl_t |= 1;
    if (z == INFINITY) fl_t |= 2;
    mz_t = fmaxf(mz_t, z);
    const bool real = ch0 < ch1 && ch0 * CH + tid * N + c < V;
    keys[c] = real && z != -INFINITY ? key_of(z) : 0u;
  }
  PieceResult r;
  r.flags = static_cast<int>(block_reduce(static_cast<long long>(fl_t), f.red_l, OrL()));
  r.mz = block_reduce(mz_t, f.red_f, MaxF());
  r.n = 0;
  if (r.flags != 0) return r;  // uniform
  const uint32_t lz = kth_largest_key_bound(keys, keff, f.cnt);
  if (tid == 0) {
    f.nlanes = 0;
    f.ncand = 0;
  }
  __syncthreads();
#pragma unroll
  for (int c = 0; c < N; ++c) {
    if (keys[c] != 0u && keys[c] >= lz) {
      const int s = atomicAdd(&f.nlanes, 1);
      if (s < kLaneCap) f.lanes[s] = tid * N + c;
    }
  }
  __syncthreads();
  const int nl = f.nlanes;
  if (nl > kLaneCap) {
    r.flags |= 4;
    return r;
  }
  // Gather: warp w takes listed lanes w, w + kWarps, ...; its threads take the lane's chunks.
  const int lane = tid % 32, warp = tid / 32;
#pragma unroll 1
  for (int li = warp; li < nl; li += kWarps) {  // fastattn-static-loop: gather-lanes
    const int l = f.lanes[li];
#pragma unroll 1
    for (int64_t ch = ch0 + lane; ch < ch1; ch += 32) {  // fastattn-static-loop: gather
      const int64_t j = ch * CH + l;
      if (j < V) {
        const float z = load_z(x, j, greedy ? 1.f : tdiv);
        if (key_of(z) >= lz && z != -INFINITY) {
          const int s = atomicAdd(&f.ncand, 1);
          if (s < cap) {
            f.cz[s] = z;
            f.ci[s] = static_cast<int>(j);
          }
        }
      }
    }
  }
  __syncthreads();
  r.n = f.ncand;
  if (r.n > cap) r.flags |= 4;
  return r;
}

// Step 4 on the list f.cz / f.ci (every element of the row's top-k set but its -inf ones, m the row's finite
// max z). Writes the token (or the filtered row) and returns true; false (nothing written) when the set
// exceeds kResCap.
template <typename T>
__device__ bool fast_resolve(FastShared& f, const SamplingParams& p, int64_t row, const T* __restrict__ x,
                             const RowParams& rp, bool greedy, int64_t keff, int n, float m, float scale) {
  const int tid = static_cast<int>(threadIdx.x);
  const float* zs = f.cz;
  const int* is = f.ci;
  int nr = n;
  if (n > kResCap) {  // fastattn-static-site: cut (the list cut to {key >= a bound <= its k-th largest})
    uint32_t keys[kMergePerThread];
#pragma unroll
    for (int i = 0; i < kMergePerThread; ++i) {
      const int e = tid + i * kThreads;
      keys[i] = e < n ? key_of(f.cz[e]) : 0u;
    }
    const uint32_t tau = kth_largest_key_bound(keys, keff, f.cnt);
    if (tid == 0) f.nres = 0;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kMergePerThread; ++i) {
      const int e = tid + i * kThreads;
      if (e < n && keys[i] >= tau) {
        const int s = atomicAdd(&f.nres, 1);
        if (s < kResCap) {
          f.rz[s] = f.cz[e];
          f.ri[s] = f.ci[e];
        }
      }
    }
    __syncthreads();
    nr = f.nres;
    if (nr > kResCap) return false;  // uniform
    zs = f.rz;
    is = f.ri;
  }
  const bool p_on = rp.top_p < 1.f && !greedy;
  const bool mp_on = rp.min_p > 0.f && !greedy;
  const float lmp = mp_on ? logf(rp.min_p) : 0.f;
  const bool act = tid < nr;
  const float zj = act ? zs[tid] : -INFINITY;
  const int ij = act ? is[tid] : INT32_MAX;
  const unsigned long long ej = act ? fixed_mass(zj, m, scale) : 0ull;
  if (act) f.re[tid] = ej;
  if (tid == 0) f.token = -1;
  __syncthreads();
  // rank = entries strictly larger; above = their mass (for a top-k entry all of them are in the top-k set).
  int rank = 0;
  unsigned long long above = 0;
  if (act) {
    for (int i = 0; i < nr; ++i) {  // fastattn-static-loop: resolve-rank
      if (zs[i] > zj) {
        ++rank;
        above += f.re[i];
      }
    }
  }
  const bool keep_k = act && rank < keff;  // fewer than k strictly larger
  if (greedy) {  // fastattn-static-site: greedy
    const long long amax = block_reduce(keep_k ? static_cast<long long>(ij) : static_cast<long long>(INT64_MAX),
                                        f.red_l, MinL());
    if (p.filtered != nullptr) {
      write_filtered(p, row, x, 1.f, false, false, true, amax, 0u, false, m, 0.f);
    } else if (tid == 0) {
      p.tokens[row] = amax;
    }
    return true;
  }
  const unsigned long long s_k = block_reduce(keep_k ? ej : 0ull, f.red_u, SumU());
  const bool keep_p = keep_k && (!p_on || static_cast<double>(above) <
                                              static_cast<double>(rp.top_p) * static_cast<double>(s_k));
  const bool keep = keep_p && (!mp_on || zj - m >= lmp);
  if (p.filtered != nullptr) {  // fastattn-static-site: filter
    const long long kf = block_reduce(keep_p ? static_cast<long long>(key_of(zj)) : static_cast<long long>(INT64_MAX),
                                      f.red_l, MinL());
    write_filtered(p, row, x, rp.t, false, false, false, -1, static_cast<uint32_t>(kf), mp_on, m, lmp);
    return true;
  }
  const unsigned long long ek = keep ? ej : 0ull;
  if (act) f.re[tid] = ek;  // every thread finished the rank loop before s_k's reduction
  const unsigned long long w_kept = block_reduce(ek, f.red_u, SumU());  // its barriers publish f.re
  const int64_t seed = p.seeds != nullptr ? p.seeds[row] : p.seed_val;
  unsigned long long target = static_cast<unsigned long long>(uniform_of(seed) * static_cast<double>(w_kept));
  if (target >= w_kept) target = w_kept - 1;  // as the general path
  if (ek > 0) {
    unsigned long long before = 0;  // kept mass at lower vocabulary indices
    for (int i = 0; i < nr; ++i) {  // fastattn-static-loop: resolve-draw
      if (is[i] < ij) before += f.re[i];
    }
    if (before <= target && target < before + ek) f.token = ij;  // exactly one entry
  }
  __syncthreads();
  if (tid == 0) p.tokens[row] = f.token;
  return true;
}

__device__ __forceinline__ bool fast_eligible(const RowParams& rp, int64_t V) {
  return V <= INT32_MAX && (rp.t == 0.f || (rp.k > 0 && rp.k < V && rp.k <= kFastK));
}

// Mode 2: the row's pieces (headers and lists in the workspace) merged into f.cz / f.ci.
__device__ __forceinline__ PieceResult merge_pieces(FastShared& f, const unsigned char* ws, int64_t S) {
  const int tid = static_cast<int>(threadIdx.x);
  if (tid == 0) {
    int off = 0, fl = 0;
    float mz = -INFINITY;
    for (int64_t s = 0; s < S; ++s) {  // fastattn-static-loop: merge-headers
      const int* hdr = reinterpret_cast<const int*>(ws + s * kWsSlotBytes);
      f.piece_off[s] = off;
      off += hdr[0];
      fl |= hdr[1];
      mz = fmaxf(mz, __int_as_float(hdr[2]));
    }
    f.piece_off[S] = off;
    f.mflags = fl | (off > kMergeCap ? 4 : 0);
    f.mz = mz;
  }
  __syncthreads();
  PieceResult r;
  r.n = f.piece_off[S];
  r.flags = f.mflags;
  r.mz = f.mz;
  if (r.flags == 0) {
    for (int64_t s = 0; s < S; ++s) {  // fastattn-static-loop: merge
      const int2* ent = reinterpret_cast<const int2*>(ws + s * kWsSlotBytes + 16);
      const int o = f.piece_off[s], c = f.piece_off[s + 1] - o;
      for (int e = tid; e < c; e += kThreads) {
        const int2 v = ent[e];
        f.cz[o + e] = __int_as_float(v.x);
        f.ci[o + e] = v.y;
      }
    }
  }
  __syncthreads();
  return r;
}

// Mode 1: a piece's header and list to its workspace slot (an empty list when flagged).
__device__ __forceinline__ void write_piece(const FastShared& f, unsigned char* slot, const PieceResult& r) {
  const int tid = static_cast<int>(threadIdx.x);
  int2* ent = reinterpret_cast<int2*>(slot + 16);
  const int n = r.flags != 0 ? 0 : r.n;
  for (int e = tid; e < n; e += kThreads) {  // fastattn-static-loop: ws-write
    ent[e] = make_int2(__float_as_int(f.cz[e]), f.ci[e]);
  }
  if (tid == 0) {
    int* hdr = reinterpret_cast<int*>(slot);
    hdr[0] = n;
    hdr[1] = r.flags;
    hdr[2] = __float_as_int(r.mz);
    hdr[3] = 0;
  }
}

// mode 0: one CTA per row (grid-stride), everything. mode 1: CTA (row, piece) runs the fast path's steps 1-3
// on its piece into the workspace. mode 2: one CTA per row merges its pieces and resolves (or runs the general
// path for the rows the fast path does not take or could not finish). One inlined copy of each step serves
// every mode. (The "fastattn-static" comments name code for the static report's issue estimate.)
template <typename T>
__global__ void __launch_bounds__(kThreads) sampling_kernel(const SamplingParams p, float scale, int mode) {
  __shared__ SharedAll sh;
  constexpr int64_t CH = int64_t{kThreads} * kChunk<T>;
  const int64_t V = p.vocab;
  const int64_t nch = (V + CH - 1) / CH;
  const int64_t S = mode == 0 ? 1 : p.splits;       // pieces of a row
  const int64_t per = mode == 1 ? S : 1;            // CTAs of a row in this launch
  const int64_t cps = mode == 1 ? (nch + S - 1) / S : nch;
  for (int64_t item = blockIdx.x; item < p.rows * per; item += gridDim.x) {  // fastattn-static-loop: rows
    const int64_t row = item / per, piece = item % per;
    __syncthreads();  // why: the previous row's last reads of shared memory are done
    const RowParams rp = load_row_params(p, row);
    bool done = false;
    if (fast_eligible(rp, V)) {
      const bool greedy = rp.t == 0.f;
      const int64_t keff = greedy ? 1 : rp.k;
      const T* __restrict__ x = static_cast<const T*>(p.logits) + row * p.row_stride;
      unsigned char* ws = static_cast<unsigned char*>(p.workspace) + row * S * kWsSlotBytes;
      PieceResult r;
      if (mode != 2) {
        const int64_t ch0 = piece * cps < nch ? piece * cps : nch;
        const int64_t ch1 = ch0 + cps < nch ? ch0 + cps : nch;
        const int cap = mode == 1 ? kWsCap : kCandCap;
        r = fast_piece<T>(sh.f, x, V, ch0, ch1, greedy, greedy ? 1.f : rp.t, keff, cap);  // fastattn-static-site: piece
      } else {
        r = merge_pieces(sh.f, ws, S);  // fastattn-static-site: merge
      }
      if (mode == 1) {
        write_piece(sh.f, ws + piece * kWsSlotBytes, r);  // fastattn-static-site: ws
        done = true;
      } else if (r.flags == 0 && r.mz != -INFINITY) {
        done = fast_resolve<T>(sh.f, p, row, x, rp, greedy, keff, r.n, r.mz, scale);  // fastattn-static-site: resolve
      }
    }
    if (!done && mode != 1) general_row<T>(sh.v1, p, row, rp, scale);  // fastattn-static-site: general
  }
}

}  // namespace sampling_detail

template <typename T>
cudaError_t sampling_launch(const SamplingParams& p, cudaStream_t stream) {
  using namespace sampling_detail;
  if (p.rows == 0 || p.vocab == 0) return cudaSuccess;
  int lg = 0;
  while (lg < 62 && (int64_t{1} << lg) < p.vocab) ++lg;
  const int s = 62 - lg < 40 ? 62 - lg : 40;  // V * 2^s <= 2^62: a row's fixed-point mass never overflows
  const float scale = static_cast<float>(static_cast<double>(uint64_t{1} << s));
  const dim3 grid(static_cast<unsigned>(p.rows < kMaxGridX ? p.rows : kMaxGridX));
  if (p.splits > 1 && p.workspace != nullptr) {  // rows <= kSplitMaxRows: rows * splits CTAs fit the grid
    FASTATTN_LAUNCH((sampling_kernel<T>), dim3(static_cast<unsigned>(p.rows * p.splits)), kThreads, 0, stream, p,
                    scale, 1);  // rows <= kSplitMaxRows, splits <= kMaxSplits
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    FASTATTN_LAUNCH((sampling_kernel<T>), grid, kThreads, 0, stream, p, scale, 2);
  } else {
    FASTATTN_LAUNCH((sampling_kernel<T>), grid, kThreads, 0, stream, p, scale, 0);
  }
  return cudaGetLastError();
}

}  // namespace fastattn
