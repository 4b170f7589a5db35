// Sort-free sampling / filtering: the kernel and the per-dtype launcher template.
//
// Included only by instantiations/sampling_<dtype>.cu.
//
// Every filter keeps an upper set {z >= tau} of the row, so the kernel finds thresholds by radix selection on
// order-preserving 32-bit keys of z (never sorting): three levels of 11, 11 and 10 bits, each one pass over the
// row that histograms the digit of the elements sharing the prefix found so far (2048 shared-memory bins) and
// counts what lies above the prefix; a walk of the bins from the top picks the digit.
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
// Grid: one CTA of kThreads = 512 threads per row (grid-stride over rows). Passes over the row (each reads
// the row, coalesced, thread tid takes elements tid, tid + 512, ...):
//   pass 1: max z, first argmax, NaN / +inf flags, and the level-1 count histogram when top-k is on;
//   top-k: 2 more passes; top-p: 3 passes; min-p / no filter: 1 mass pass when the kept mass is not known
//   from the search; draw: inverse CDF in vocabulary order, 512 elements per step (a block scan of the
//   fixed-point masses), stopping at the token (about half a pass).
//   Filter mode replaces the draw by one pass writing z or -inf.
// Shared memory: 2048 x (4 + 8) B histograms + reduction scratch (~24.7 KB static).
// Randomness: u = (SplitMix64(SplitMix64(seed) ^ 0) >> 11) * 2^-53, exactly reference.uniform_from_seed;
// the token is the first kept index whose inclusive prefix mass exceeds floor(u * W), W the kept mass.
#pragma once

#include <cfloat>
#include <cstdint>

#include "common/device_utils.cuh"
#include "common/launch.cuh"
#include "sampling/sampling_launch.h"

namespace fastattn {
namespace sampling_detail {

constexpr int kThreads = 512;
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

// (kThreads, 1): without a minimum of one block per SM ptxas aims sm_80 at 64 registers, where this kernel sat
// exactly at the limit: the parameter clamps tipped it into spills (32 B). 78 registers on sm_80 (1 block/SM).
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) sampling_kernel(const SamplingParams p, float scale) {
  __shared__ Shared sh;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t V = p.vocab;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* __restrict__ x = static_cast<const T*>(p.logits) + row * p.row_stride;
    const float t = row_param(p.temperature, row, p.temperature_val, 0.f, INFINITY);
    const int64_t k = row_param_int(p.top_k, row, p.top_k_val);
    const float top_p = row_param(p.top_p, row, p.top_p_val, FLT_MIN, 1.f);
    const float min_p = row_param(p.min_p, row, p.min_p_val, 0.f, 1.f);
    const bool greedy = t == 0.f;
    const float tdiv = greedy ? 1.f : t;  // greedy rows work on the undivided logits
    const bool k_on = k > 0 && k < V && !greedy;
    const bool p_on = top_p < 1.f && !greedy;
    const bool mp_on = min_p > 0.f && !greedy;

    // ---- pass 1: max, first argmax, NaN / +inf, level-1 count histogram (top-k) ------------------------
    __syncthreads();  // why: the previous row's last reads of shared memory are done
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

    // ---- thresholds -------------------------------------------------------------------------------------------
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
      // ---- filter output ----------------------------------------------------------------------------------
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
      continue;
    }

    // ---- draw -------------------------------------------------------------------------------------------------
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
  FASTATTN_LAUNCH((sampling_kernel<T>), grid, kThreads, 0, stream, p, scale);
  return cudaGetLastError();
}

}  // namespace fastattn
