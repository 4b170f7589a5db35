"""Sort-free top-k / top-p / min-p sampling and filtering from logits (B, V): Triton kernel and launchers.

Semantics (docs/api.md, reference.top_k_top_p_filter / reference.sample): z = logits / T (T == 0: greedy argmax,
lowest index among ties); top-k keeps j iff fewer than k logits are strictly larger; top-p keeps j iff the
mass, after top-k and renormalised, of the tokens strictly more probable than j is < top_p; min-p keeps j iff
p_j >= min_p * max p; then one token is drawn. A row holding NaN, with no finite logit (all -inf) or with a
+inf logit yields -1.

Every filter keeps an upper set {z >= tau}, so the kernel looks for thresholds, never sorts the vocabulary:

- tau_k is the k-th largest z (a count criterion: count(z > tau_k) < k <= count(z >= tau_k));
- tau_p is the smallest z in {z >= tau_k} whose "mass strictly above", G(z) = sum_{z_i > z} e_i with
  e_i = exp(z_i - max z), is < top_p * S_k, S_k = sum_{z_i >= tau_k} e_i (a mass criterion);
- min-p keeps z - max z >= log(min_p), evaluated per element exactly as the reference does.

Fast top-k path (v2; one scalar 0 < k <= CAP for every row, k <= BLOCK): a first launch (FAST) reads
each row twice with a handful of instructions per logit and no division. Since T > 0 is finite, z = x / T
orders like x, so
  pass 1 on the raw x: per lane (BLOCK lanes) the max and its first index, and a NaN count; max z is the
      max x divided once;
  Lx = the k-th largest of the BLOCK lane maxima (a 32-step bisection of plain counts): the k lanes above it
      hold k distinct elements, so the k-th largest x is >= Lx, and {x >= Lx} is ~k elements when k << BLOCK;
  compaction pass: the indices of x >= xc (xc a relative 2^-20 below Lx, so that nothing below xc can tie
      in z with a kept element; checked: z(xc) < z(Lx)) go to fixed slots (the r-th candidate of a lane to
      slot r * lanes + lane rank; only lanes whose max is >= xc hold any), no scan per tile;
  registers: the (<= CAP) candidates are divided exactly, packed as key(z) << 32 | index and resolved by the
      same pairwise code as below (tau_k, S_k, tau_p, min-p, draw), so tokens are the v1 path's.
  A row it cannot resolve so (more than CAP candidates: wide tie groups or lane collisions at the threshold,
  or a lane with more than its slots) is flagged, and a second launch of the v1 kernel (RESUME) redoes just
  the flagged rows; the others read their flag and skip every pass. Other parameter sets use the v1 kernel
  alone:

One program per row (grid (B,)), BLOCK-wide tiles of the row, several passes over it:

  pass 1 (one DRAM read): max m, S = sum e (online), first argmax, NaN / +inf counts, and a level-1 count
      histogram of z in NB linear bins of width W1 below "top" = (first tile's max) + HEADROOM.
      If the row's max ends above top (rare) the histogram is redone against top = m (one more pass).
  search (per criterion): the level-1 bins locate the threshold (counts exactly; masses within the bounds
      count * exp(bin edges)); that bin range becomes an interval [klo, khi] of order-preserving integer
      keys of z. A zoom pass then computes, exactly, the count and mass of elements above the interval,
      inside it and above its midpoint, a NB-bin count histogram of the keys inside it, and compacts
      (key << 32 | index) the elements above the interval into workspace[0:CAP] and those inside into
      workspace[CAP:2CAP] (stopping at CAP each).
        * above and inside both fit: every candidate is in the workspace. Each candidate's rank and the mass
          before it in the order "z descending" come from pairwise comparisons of at most 2 * CAP
          candidates (no sort); tau_k, S_k, tau_p, min-p and the draw are all resolved there exactly.
        * only the inside fits: tau is resolved there, with the above-interval count / mass as a base.
        * a single key value inside (a tie group larger than CAP): tau is that value.
        * otherwise the interval shrinks to the sub-bins that may hold the threshold, intersected with
          the half on the threshold's side of the midpoint (so it at least halves), and the zoom repeats.
  draw (only if the kept set was not resolved in registers): inverse CDF in vocabulary order at
      u * (kept mass), the kept mass being known from the search (or from pass 1 when nothing is filtered);
      the pass stops at the tile holding the token (half a pass on average). When min-p cuts below tau,
      one more pass measures the kept mass first.

Reads of the logits per row (counted under the interpreter at V = 32k). top-k 50 with or without top-p /
min-p: 2 (pass 1 + one zoom pass that also compacts; the rest in registers). top-p alone: 2 on peaked
(LM-like) rows, whose kept set fits in registers; on flat rows (20k tokens kept) pass 1 + 2-3 zoom passes +
~0.6 of a draw pass. No filter: ~1.6 (pass 1 + the draw pass up to the token). min-p alone: ~2.6 (its kept
mass needs a pass). Greedy: 1. Passes after the first re-read a row read microseconds before, mostly from L2.

Randomness: the reference's counter-based generator, u = SplitMix64(SplitMix64(seed) ^ 0) (24 bits), from
the row's own int64 seed; the draw inverts the CDF of the kept tokens in vocabulary order, as the reference
does. So a row's token depends only on its logits, parameters and seed, identical inputs give identical
tokens (no atomics, fixed tiling), and tokens equal the reference's except where u * (kept mass) falls within
float32 rounding of a CDF step (the kept mass is summed in float32 here, float64 there).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl
from torch import Tensor

# Level-1 histogram: NB bins of width W1 (in units of z) below top = first-tile max + HEADROOM: 64 logits,
# so the row's max may exceed the first tile's by 24 before pass 1 must be redone, and 40 logits below it
# (exp(-40) ~ 4e-18) are resolved. The zoom passes use NB sub-bins as well.
NB = 512
W1 = 0.125
HEADROOM = 24.0
# Candidates resolved in registers: up to CAP above the interval plus CAP inside it (2 * CAP sorted).
CAP = 128
# Candidates are ranked against JC-wide chunks: (2 * CAP, JC) comparisons at a time.
JC = 32
# Tile width along the vocabulary, and warps: 8 fp32 per thread per per-lane accumulator. Compiled for sm_90
# (no GPU run yet) this is the widest tile without register spills (255 registers, 1 program per SM); 4096
# wide with 16 warps spills ~200 B per thread.
BLOCK = 2048
NUM_WARPS = 8
# The fast path gathers its candidate lanes TJ tiles at a time ((CAP, TJ) elements per step).
TJ = 16
# Zoom passes are bounded (each at least halves a 2^32 key interval, so ~33 suffice); never loops forever.
MAX_ZOOM = 48

_KEY_MIN = tl.constexpr(-2139095041)  # key(-inf)
_KEY_MAX = tl.constexpr(2139095040)   # key(+inf)
_TINY = tl.constexpr(torch.finfo(torch.float32).tiny)  # top_p's lower clamp (reference.PARAM_RANGES)


@triton.jit
def _key(z):
    """Order-preserving int32 key of fp32 z (-0.0 canonicalised to +0.0, as float compares treat them)."""
    z = tl.where(z == 0.0, 0.0, z)
    b = z.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _unkey(k):
    """The fp32 value of an int32 key."""
    b = k ^ ((k >> 31) & 0x7FFFFFFF)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _load_z(x_row, o, V, tdiv):
    """z = x / T in fp32 (IEEE division, as the reference); lanes past V read -inf (callers mask them)."""
    x = tl.load(x_row + o, mask=o < V, other=float("-inf")).to(tl.float32)
    return tl.math.div_rn(x, tdiv)


@triton.jit
def _bin1(z, top, NB: tl.constexpr, W1: tl.constexpr):
    """Level-1 bin of z: floor((top - z) / W1) clamped to [0, NB - 1]; -inf lands in the last bin."""
    d = (top - z) * (1.0 / W1)
    d = tl.minimum(tl.maximum(d, 0.0), NB - 1.0)
    return d.to(tl.int32)


@triton.jit
def _level1_pass(x_row, V, tdiv, n_tiles, top, BLOCK: tl.constexpr, NB: tl.constexpr, W1: tl.constexpr):
    """Level-1 count histogram against a known top (used when pass 1's provisional top was too low)."""
    cols = tl.arange(0, BLOCK)
    hist = tl.zeros([NB], tl.int32)
    for t in range(0, n_tiles):
        o = t * BLOCK + cols
        z = _load_z(x_row, o, V, tdiv)
        hist += tl.histogram(_bin1(z, top, NB, W1), NB, mask=o < V)
    return hist


@triton.jit
def _level1_interval(hist, top, m, target, tau_k, MASS: tl.constexpr, NB: tl.constexpr, W1: tl.constexpr):
    """The key interval [klo, khi] of the level-1 bins that may hold the threshold.

    Count criterion: the bin holding the target-th largest z (bins count from the top). Mass criterion: the
    bins that are neither surely kept (an upper bound of the mass up to and including them is < target) nor
    surely removed (a lower bound of the mass strictly before them is >= target); bounds are
    count * exp(bin edge - m), restricted to z >= tau_k.
    """
    b = tl.arange(0, NB)
    mg = (tl.abs(top) + NB * W1) * 1e-6  # covers the rounding of (top - z) / W1
    if MASS:
        vlo = top - (b + 1).to(tl.float32) * W1 - mg
        vhi = top - b.to(tl.float32) * W1 + mg
        vlo = tl.where(b == NB - 1, float("-inf"), vlo)
        cnt = hist.to(tl.float32)
        # A bin straddling tau_k may hold excluded elements: lower bound 0. A bin entirely below: nothing.
        lo = tl.where((vlo >= tau_k) & (hist > 0), cnt * tl.exp(tl.minimum(vlo - m, 0.0)) * (1.0 - 1e-5), 0.0)
        hi = tl.where((vhi >= tau_k) & (hist > 0), cnt * tl.exp(tl.minimum(vhi - m, 0.0)) * (1.0 + 1e-5), 0.0)
        uc = tl.cumsum(hi, 0)                    # upper bound of the mass of bins <= b
        lc_prev = tl.cumsum(lo, 0) - lo          # lower bound of the mass of bins < b
        b1 = tl.minimum(tl.sum((uc < target).to(tl.int32), 0), NB - 1)
        b2 = tl.sum((lc_prev < target).to(tl.int32), 0) - 1
        bad = b1 > b2
        b1 = tl.where(bad, 0, b1)
        b2 = tl.where(bad, NB - 1, b2)
    else:
        cum = tl.cumsum(hist, 0)
        b1 = tl.minimum(tl.sum((cum < target).to(tl.int32), 0), NB - 1)
        b2 = b1
    zhi = top - b1.to(tl.float32) * W1 + mg
    zlo = top - (b2 + 1).to(tl.float32) * W1 - mg
    zlo = tl.where(b2 == NB - 1, float("-inf"), zlo)
    return _key(zlo).to(tl.int64), _key(zhi).to(tl.int64)


@triton.jit
def _list_load(ws_row, n_above, n_in, m, FULL: tl.constexpr, CAP: tl.constexpr, JC: tl.constexpr):
    """The compacted candidates and, for each, its place in the order "z descending" without sorting.

    Slots [0, CAP) hold the elements above the interval (used when FULL), [CAP, 2*CAP) those inside.
    Each slot is key << 32 | index, unique, so the order is total (ties in z broken by index). Returns
    (P, v, e, valid, rank, excl): rank = how many candidates precede, excl = their mass sum (e = exp(v - m)).
    Both come from (2*CAP, JC) comparisons against JC-wide chunks re-read from the workspace (L1 hits).
    """
    tl.debug_barrier()  # the workspace was written by other threads of this program
    offs = tl.arange(0, 2 * CAP)
    if FULL:
        na = n_above
    else:
        na = n_above * 0
    ni = tl.minimum(n_in, CAP)
    valid = (offs < na) | ((offs >= CAP) & (offs - CAP < ni))
    P = tl.load(ws_row + offs, mask=valid, other=-9223372036854775808)        # (2*CAP,) int64
    v = tl.where(valid, _unkey((P >> 32).to(tl.int32)), float("-inf"))
    e = tl.where(valid, tl.exp(v - m), 0.0)
    rank = tl.zeros([2 * CAP], tl.int32)
    excl = tl.zeros([2 * CAP], tl.float32)
    jc = tl.arange(0, JC)
    for half in range(0, 2):
        n_half = tl.where(half == 0, na, ni)
        for c in range(0, tl.cdiv(n_half, JC)):
            jo = c * JC + jc
            ok = jo < n_half
            pj = tl.load(ws_row + half * CAP + jo, mask=ok, other=-9223372036854775808)   # (JC,)
            ej = tl.where(ok, tl.exp(_unkey((pj >> 32).to(tl.int32)) - m), 0.0)
            gt = pj[None, :] > P[:, None]                                               # (2*CAP, JC)
            rank += tl.sum(gt.to(tl.int32), 1)
            excl += tl.sum(tl.where(gt, ej[None, :], 0.0), 1)
    tl.debug_barrier()  # reads done before the workspace is written again
    return P, v, e, valid, rank, excl


@triton.jit
def _list_topp(v, e, valid, excl, tau_k, base_e, target):
    """tau_p over the candidates: the smallest v >= tau_k whose mass strictly before it in the order
    (base_e + excl) is < target, and the mass of {v >= tau_p} (plus base_e). The first candidate of a run
    of equal v has exactly the mass strictly above it, so ties are kept or removed together."""
    ink = valid & (v >= tau_k)
    tau_p = tl.min(tl.where(ink & (base_e + excl < target), v, float("inf")), 0)
    w = base_e + tl.sum(tl.where(ink & (v >= tau_p), e, 0.0), 0)
    return tau_p, w


@triton.jit
def _list_draw(ws_row, n_above, n_in, P, v, e, valid, tau, mp_on, lmp, m, u, CAP: tl.constexpr,
               JC: tl.constexpr):
    """Inverse-CDF draw at u over the kept candidates {v >= tau, min-p} in vocabulary order, as the
    reference draws: the first kept index whose inclusive mass exceeds u * (kept mass). The mass of the
    kept candidates with a lower index comes from (2*CAP, JC) comparisons against re-read chunks (the
    workspace still holds all candidates: this is only called when every one fits)."""
    kept = valid & (v >= tau) & ((v - m >= lmp) | (mp_on == 0))
    idx = (P & 0xFFFFFFFF).to(tl.int32)
    pre = tl.zeros([2 * CAP], tl.float32)
    jc = tl.arange(0, JC)
    for half in range(0, 2):
        n_half = tl.where(half == 0, n_above, tl.minimum(n_in, CAP))
        for c in range(0, tl.cdiv(n_half, JC)):
            jo = c * JC + jc
            ok = jo < n_half
            pj = tl.load(ws_row + half * CAP + jo, mask=ok, other=0)                   # (JC,)
            vj = _unkey((pj >> 32).to(tl.int32))
            kj = ok & (vj >= tau) & ((vj - m >= lmp) | (mp_on == 0))
            ej = tl.where(kj, tl.exp(vj - m), 0.0)
            before = (pj & 0xFFFFFFFF).to(tl.int32)[None, :] < idx[:, None]            # (2*CAP, JC)
            pre += tl.sum(tl.where(before, ej[None, :], 0.0), 1)
    tl.debug_barrier()  # reads done before the workspace is written again
    cum = pre + tl.where(kept, e, 0.0)   # the computed sums are monotone along the index order
    target = u * tl.max(tl.where(kept, cum, 0.0), 0)
    first = tl.min(tl.where(kept & (cum > target), idx, 2147483647), 0)
    # Rounding can leave no candidate above target: then the last kept one (highest index, e > 0).
    last = tl.max(tl.where(kept & (e > 0.0), idx, -1), 0)
    return tl.where(first < 2147483647, first, last)


@triton.jit
def _splitmix64(x):
    """The SplitMix64 finaliser on uint64 (wrapping), as reference._splitmix64."""
    x = x + 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _uniform(seed):
    """reference.uniform_from_seed(seed, 0) truncated to 24 bits: a float32 in [0, 1)."""
    h = _splitmix64(_splitmix64(seed.to(tl.uint64, bitcast=True)))
    return (h >> 40).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _mass_pass(x_row, V, tdiv, n_tiles, m, tau, lmp, BLOCK: tl.constexpr):
    """Mass of the kept set {z >= tau, z - m >= log(min_p)}: needed only when min-p cuts below tau."""
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(0, n_tiles):
        o = i * BLOCK + cols
        z = _load_z(x_row, o, V, tdiv)
        acc += tl.where((o < V) & (z >= tau) & (z - m >= lmp), tl.exp(z - m), 0.0)
    return tl.sum(acc, 0)


@triton.jit
def _draw_pass(x_row, V, tdiv, n_tiles, m, tau, mp_on, lmp, target, BLOCK: tl.constexpr):
    """Inverse-CDF draw in vocabulary order over the kept set: the first index whose running mass exceeds
    target (= u * kept mass); stops at the tile where it is found (on average half a pass)."""
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([], tl.float32)
    tok = tl.full([], -1, tl.int32)
    last = tl.full([], -1, tl.int32)
    i = 0
    while (tok < 0) & (i < n_tiles):
        o = i * BLOCK + cols
        z = _load_z(x_row, o, V, tdiv)
        keep = (o < V) & (z >= tau) & ((z - m >= lmp) | (mp_on == 0))
        e = tl.where(keep, tl.exp(z - m), 0.0)
        cum = acc + tl.cumsum(e, 0)
        first = tl.min(tl.where(keep & (cum > target), o, 2147483647), 0)
        tok = tl.where(first < 2147483647, first, -1)
        last = tl.maximum(last, tl.max(tl.where(e > 0.0, o, -1), 0))
        acc = tl.max(cum, 0)
        i += 1
    # Rounding can leave target at or above the total: the last kept token, as the reference does.
    return tl.where(tok >= 0, tok, last)


@triton.jit
def _stats_pass(x_row, V, tdiv, n_tiles, m, BLOCK: tl.constexpr, NB: tl.constexpr, W1: tl.constexpr):
    """The level-1 count histogram below top = m and S = sum exp(z - m), for a row whose max m is known
    (the fast top-k path's fallback: its pass 1 computes neither)."""
    cols = tl.arange(0, BLOCK)
    hist = tl.zeros([NB], tl.int32)
    acc = tl.zeros([BLOCK], tl.float32)
    for t in range(0, n_tiles):
        o = t * BLOCK + cols
        z = _load_z(x_row, o, V, tdiv)
        hist += tl.histogram(_bin1(z, m, NB, W1), NB, mask=o < V)
        acc += tl.where(o < V, tl.exp(z - m), 0.0)
    return hist, tl.sum(acc, 0)


@triton.jit
def _kth_largest_key(kv, k):
    """The k-th largest of the int32 keys kv (1 <= k <= kv's length): a 32-step bisection on the key value,
    each step one plain count (no sort, no histogram). Invariant: count(kv >= lo) >= k > count(kv > hi)."""
    lo = tl.full([], _KEY_MIN, tl.int64)
    hi = tl.full([], _KEY_MAX, tl.int64)
    kv64 = kv.to(tl.int64)
    for _s in tl.static_range(32):
        mid = lo + ((hi - lo + 1) >> 1)
        ge = tl.sum((kv64 >= mid).to(tl.int32), 0) >= k
        lo = tl.where(ge, mid, lo)
        hi = tl.where(ge, hi, mid - 1)
    return lo


@triton.jit
def _gather_candidates(x_row, V, n_tiles, xc, lane_on, ws_row, CAP: tl.constexpr, BLOCK: tl.constexpr,
                       TJ: tl.constexpr):
    """Indices of the elements with x >= xc into ws_row[CAP : 2 * CAP] (stopping at CAP), reading only the
    lanes that can hold any: lane l (elements l, l + BLOCK, ...) iff its max is >= xc (lane_on). Their ids
    go to ws_row[0 : CAP]; then (CAP lanes, TJ tiles) gathers, once to count per lane, once to store at the
    lane's exclusive prefix (order: lane, then tile). Returns (candidates, lanes); every candidate is stored
    iff lanes <= CAP and candidates <= CAP."""
    on = lane_on.to(tl.int32)
    n_l = tl.sum(on, 0)
    rank = tl.cumsum(on, 0) - on
    lanes = tl.arange(0, BLOCK)
    tl.store(ws_row + rank, lanes.to(tl.int64), mask=lane_on & (rank < CAP))
    tl.debug_barrier()
    li = tl.arange(0, CAP)
    lane = tl.load(ws_row + li, mask=li < n_l, other=0).to(tl.int32)
    tj = tl.arange(0, TJ)
    cnt = tl.zeros([CAP], tl.int32)
    for ta in range(0, n_tiles, TJ):
        o = lane[:, None] + (ta + tj)[None, :] * BLOCK
        ok = (li < n_l)[:, None] & (o < V)
        x = tl.load(x_row + o, mask=ok, other=float("-inf")).to(tl.float32)
        cnt += tl.sum((ok & (x >= xc)).to(tl.int32), 1)
    base = tl.cumsum(cnt, 0) - cnt
    n_c = tl.sum(cnt, 0)
    run = base
    for tb in range(0, n_tiles, TJ):
        o = lane[:, None] + (tb + tj)[None, :] * BLOCK
        ok = (li < n_l)[:, None] & (o < V)
        x = tl.load(x_row + o, mask=ok, other=float("-inf")).to(tl.float32)
        f = (ok & (x >= xc)).to(tl.int32)
        pos = run[:, None] + tl.cumsum(f, 1) - f
        tl.store(ws_row + CAP + pos, o.to(tl.int64), mask=(f != 0) & (pos < CAP))
        run += tl.sum(f, 1)
    return n_c, n_l


@triton.jit
def _search(x_row, V, tdiv, n_tiles, m, hist, top, ws_row, target, tau_k, p_on, p, mp_on, lmp, u,
            MASS: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr, W1: tl.constexpr, CAP: tl.constexpr,
            JC: tl.constexpr, MAX_ZOOM: tl.constexpr):
    """Find the threshold for one criterion. Count (MASS False): tau = target-th largest z; also returns
    S_k = mass of {z >= tau}. Mass (MASS True): tau = tau_p over {z >= tau_k} for mass target; also returns
    the kept mass. Returns (tau, mass, done, tok, tau_all): done when every candidate was in registers, in
    which case tau_all is the final threshold (top-k and top-p) and tok the token drawn."""
    klo, khi = _level1_interval(hist, top, m, target, tau_k, MASS, NB, W1)
    kmin_k = _key(tau_k).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    bins = tl.arange(0, NB)
    tau = tau_k
    mass = tl.zeros([], tl.float32)
    done = tl.zeros([], tl.int32)      # 1: tau found; 2: everything resolved in registers
    tok = tl.full([], -1, tl.int32)
    tau_all = tau_k
    last_mass = tl.zeros([], tl.float32)   # e_above + e_in of the latest zoom pass
    use_bounds = tl.full([], 1, tl.int1)
    it = 0
    while (done == 0) & (it < MAX_ZOOM):
        it += 1
        # Sub-bins of the keys inside [klo, khi]: (key - klo) >> sh, fewer than NB of them.
        sh = 0
        while ((khi - klo) >> sh) >= NB:
            sh += 1
        kmid = klo + ((khi - klo) >> 1)
        # Per-lane accumulators, reduced once after the pass (no block-wide reduction per tile).
        n_k_v = tl.zeros([BLOCK], tl.int32)
        n_mid_v = tl.zeros([BLOCK], tl.int32)
        e_above_v = tl.zeros([BLOCK], tl.float32)
        e_in_v = tl.zeros([BLOCK], tl.float32)
        e_mid_v = tl.zeros([BLOCK], tl.float32)
        kin_min_v = tl.full([BLOCK], _KEY_MAX, tl.int32)
        kin_max_v = tl.full([BLOCK], _KEY_MIN, tl.int32)
        sub = tl.zeros([NB], tl.int32)
        n_above = tl.zeros([], tl.int32)  # running counts: the next compaction slots
        n_in = tl.zeros([], tl.int32)
        tl.debug_barrier()  # earlier reads of the workspace are done
        x_next = tl.load(x_row + cols, mask=cols < V, other=float("-inf"))
        for t in range(0, n_tiles):
            o = t * BLOCK + cols
            x = x_next.to(tl.float32)
            # Prefetch the next tile (past the end: fully masked, no traffic) to keep bytes in flight.
            x_next = tl.load(x_row + o + BLOCK, mask=o + BLOCK < V, other=float("-inf"))
            z = tl.math.div_rn(x, tdiv)
            zc = tl.where(z == 0.0, 0.0, z)
            kb32 = zc.to(tl.int32, bitcast=True)
            k32 = kb32 ^ ((kb32 >> 31) & 0x7FFFFFFF)                    # _key(z), inlined
            kz = k32.to(tl.int64)
            ink = (o < V) & (kz >= kmin_k)           # the elements this criterion ranges over
            above = ink & (kz > khi)
            inside = ink & (kz >= klo) & (kz <= khi)
            mid = inside & (kz > kmid)
            e = tl.exp(z - m)
            n_k_v += ink.to(tl.int32)
            n_mid_v += mid.to(tl.int32)
            e_above_v += tl.where(above, e, 0.0)
            e_in_v += tl.where(inside, e, 0.0)
            e_mid_v += tl.where(mid, e, 0.0)
            kin_min_v = tl.minimum(kin_min_v, tl.where(inside, k32, _KEY_MAX))
            kin_max_v = tl.maximum(kin_max_v, tl.where(inside, k32, _KEY_MIN))
            sb = tl.minimum((tl.maximum(kz - klo, 0) >> sh), NB - 1).to(tl.int32)
            sub += tl.histogram(sb, NB, mask=inside)
            # Compaction in index order: slot = running count + exclusive prefix count in the tile.
            # One scan counts both sets (above in the low 16 bits, inside in the high bits).
            flags = above.to(tl.int32) + (inside.to(tl.int32) << 16)
            cs = tl.cumsum(flags, 0) - flags
            packed = (kz << 32) | o.to(tl.int64)
            pa = n_above + (cs & 0xFFFF)
            tl.store(ws_row + pa, packed, mask=above & (pa < CAP))
            pi = n_in + (cs >> 16)
            tl.store(ws_row + CAP + pi, packed, mask=inside & (pi < CAP))
            tot = tl.max(cs + flags, 0)  # the inclusive scan's last value
            n_above += tot & 0xFFFF
            n_in += tot >> 16
        n_k = tl.sum(n_k_v, 0)
        n_mid = tl.sum(n_mid_v, 0)
        e_above = tl.sum(e_above_v, 0)
        e_in = tl.sum(e_in_v, 0)
        e_mid = tl.sum(e_mid_v, 0)
        kin_min = tl.min(kin_min_v, 0).to(tl.int64)
        kin_max = tl.max(kin_max_v, 0).to(tl.int64)
        last_mass = e_above + e_in
        # Is the threshold inside [klo, khi]? (It is, unless a level-1 bound was too tight: then restart
        # from the whole key range, where it always is.)
        if MASS:
            below = n_k - n_above - n_in
            wrong = (e_above >= target) | ((e_above + e_in < target) & (below > 0))
        else:
            wrong = (n_above >= target) | (n_above + n_in < target)
        if wrong:
            klo = tl.full([], _KEY_MIN, tl.int64)
            khi = tl.full([], _KEY_MAX, tl.int64)
            use_bounds = tl.full([], 0, tl.int1)  # from now on only the exact halving
        elif (n_in <= CAP) & (n_above <= CAP):
            # Every candidate (all of {z >= klo} in range) is in the workspace: finish in registers.
            P, v, e, valid, rank, excl = _list_load(ws_row, n_above, n_in, m, True, CAP, JC)
            if MASS:
                tau, mass = _list_topp(v, e, valid, excl, tau_k, 0.0, target)
                tau_all = tau
            else:
                tau = tl.max(tl.where(valid & (rank == target - 1), v, float("-inf")), 0)
                mass = tl.sum(tl.where(valid & (v >= tau), e, 0.0), 0)
                tau_all = tau
                if p_on:
                    tau_all, _w = _list_topp(v, e, valid, excl, tau, 0.0, p * mass)
            tok = _list_draw(ws_row, n_above, n_in, P, v, e, valid, tau_all, mp_on, lmp, m, u, CAP, JC)
            done = 2
        elif n_in <= CAP:
            # The inside is in the workspace; the elements above it count through (n_above, e_above).
            P, v, e, valid, rank, excl = _list_load(ws_row, n_above, n_in, m, False, CAP, JC)
            if MASS:
                tau, mass = _list_topp(v, e, valid, excl, tau_k, e_above, target)
            else:
                tau = tl.max(tl.where(valid & (rank == target - 1 - n_above), v, float("-inf")), 0)
                mass = e_above + tl.sum(tl.where(valid & (v >= tau), e, 0.0), 0)
            done = 1
        elif kin_min == kin_max:
            # One value inside, more than CAP times: it is the threshold, kept whole.
            tau = _unkey(kin_min.to(tl.int32))
            mass = e_above + e_in
            done = 1
        else:
            # Shrink: the sub-bins that may hold the threshold, within the occupied keys, within the half
            # of [klo, khi] on the threshold's side of kmid.
            if MASS:
                ka = tl.minimum(klo + (bins.to(tl.int64) << sh), khi)    # bins past khi are empty
                kb = tl.minimum(ka + (tl.full([], 1, tl.int64) << sh) - 1, khi)
                vlo = tl.minimum(tl.maximum(_unkey(ka.to(tl.int32)), tau_k), m)
                vhi = tl.minimum(_unkey(kb.to(tl.int32)), m)
                cnt = sub.to(tl.float32)
                lo = tl.where(sub > 0, cnt * tl.exp(vlo - m) * (1.0 - 1e-5), 0.0)
                hi = tl.where(sub > 0, cnt * tl.exp(vhi - m) * (1.0 + 1e-5), 0.0)
                u_ge = tl.sum(hi, 0) - tl.cumsum(hi, 0) + hi      # upper bound of the mass of bins >= b
                l_gt = tl.sum(lo, 0) - tl.cumsum(lo, 0)           # lower bound of the mass of bins > b
                bh = tl.sum((e_above + u_ge >= target).to(tl.int32), 0) - 1
                bl = NB - tl.sum((e_above + l_gt < target).to(tl.int32), 0)
                upper = e_above + e_mid < target                  # kmid's side: exact
            else:
                c_ge = n_above + tl.sum(sub, 0) - tl.cumsum(sub, 0) + sub
                bh = tl.sum((c_ge >= target).to(tl.int32), 0) - 1
                bl = bh
                upper = n_above + n_mid < target
            if use_bounds & (bl >= 0) & (bl <= bh):
                new_lo = klo + (bl.to(tl.int64) << sh)
                new_hi = tl.minimum(klo + ((bh.to(tl.int64) + 1) << sh) - 1, khi)
            else:  # the bounds disagree (rounding): keep the whole interval, the halving still progresses
                new_lo = klo
                new_hi = khi
            # upper: every element above kmid is kept (count / mass up to kmid is below target), so the
            # threshold is at or below kmid; else it is above kmid.
            half_lo = tl.where(upper, klo, kmid + 1)
            half_hi = tl.where(upper, kmid, khi)
            klo = tl.maximum(tl.maximum(new_lo, half_lo), kin_min)
            khi = tl.minimum(tl.minimum(new_hi, half_hi), kin_max)
            klo = tl.minimum(klo, khi)
    if done == 0:
        # Unreachable in exact arithmetic (each zoom at least halves the interval); a rounding-level
        # disagreement between passes could cycle. Take the interval's lower end rather than loop on.
        tau = _unkey(klo.to(tl.int32))
        mass = last_mass
    return tau, mass, done, tok, tau_all


@triton.jit
def _row_param(ptr, stride, row, val, HAS_T: tl.constexpr, DT: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr):
    """A row's sampling parameter: with HAS_T, element row * stride of the tensor at ptr (any dtype), converted
    to DT and clamped into [LO, HI] (HI None: unbounded; NaN stays NaN, as torch.clamp keeps it; the ranges of
    reference.PARAM_RANGES); else the number val (range-checked by the caller)."""
    if HAS_T:
        x = tl.load(ptr + row.to(tl.int64) * stride).to(DT)
        x = tl.where(x < LO, LO, x)
        if HI is not None:
            x = tl.where(x > HI, HI, x)
    else:
        x = tl.zeros([], DT) + val
    return x


@triton.jit
def _sampling_kernel(
    x_ptr, stride_b, V, n_tiles,
    t_ptr, t_s, t_val, k_ptr, k_s, k_val, p_ptr, p_s, p_val, mp_ptr, mp_s, mp_val,
    seed_ptr, seed_val, out_ptr, ws_ptr, flag_ptr,
    HAS_SEED_T: tl.constexpr, HAS_T_T: tl.constexpr, HAS_K_T: tl.constexpr, HAS_P_T: tl.constexpr, HAS_MP_T: tl.constexpr,
    USE_K: tl.constexpr, USE_P: tl.constexpr, USE_MP: tl.constexpr, FILTER: tl.constexpr,
    FAST: tl.constexpr, RESUME: tl.constexpr, NEED_AMAX: tl.constexpr, TJ: tl.constexpr,
    BLOCK: tl.constexpr, NB: tl.constexpr, W1: tl.constexpr, HEADROOM: tl.constexpr, CAP: tl.constexpr,
    JC: tl.constexpr, MAX_ZOOM: tl.constexpr,
):
    """Grid (B,). Row b of x (row stride stride_b, unit column stride). FILTER False: out[b] = token (int64);
    FILTER True: out[b, :] = z with the removed tokens at -inf (float32, contiguous)."""
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_b
    ws_row = ws_ptr + row.to(tl.int64) * (2 * CAP)
    t = _row_param(t_ptr, t_s, row, t_val, HAS_T_T, tl.float32, 0.0, None)
    greedy = t == 0.0
    tdiv = tl.where(greedy, 1.0, t)  # greedy rows work on the undivided logits
    k = _row_param(k_ptr, k_s, row, k_val, HAS_K_T, tl.int64, 0, None)
    p = _row_param(p_ptr, p_s, row, p_val, HAS_P_T, tl.float32, _TINY, 1.0)
    mp = _row_param(mp_ptr, mp_s, row, mp_val, HAS_MP_T, tl.float32, 0.0, 1.0)
    # Which filters act on this row (the USE_* flags drop the code of filters no row uses).
    k_on = tl.full([], 0, tl.int1)
    p_on = tl.full([], 0, tl.int1)
    mp_on = tl.full([], 0, tl.int1)
    if USE_K:
        k_on = (k > 0) & (k < V) & (t != 0.0)
    if USE_P:
        p_on = (p < 1.0) & (t != 0.0)
    if USE_MP:
        mp_on = (mp > 0.0) & (t != 0.0)
    lmp = tl.log(tl.where(mp_on, mp, 1.0))
    search = k_on | p_on

    cols = tl.arange(0, BLOCK)
    tau = tl.full([], float("-inf"), tl.float32)
    tau_k = tl.full([], float("-inf"), tl.float32)
    done = tl.zeros([], tl.int32)
    tok = tl.full([], -1, tl.int32)
    # The row's uniform: counter 0 of its own seed (the reference's generator).
    if HAS_SEED_T:
        u = _uniform(tl.load(seed_ptr + row))
    else:
        u = _uniform(tl.zeros([], tl.int64) + seed_val)
    if FAST:
        # ---- fast top-k path (one scalar k <= CAP for every row): pass 1 on the raw logits x ----------
        # T >= 0 is finite, so z = x / tdiv orders like x: per lane the max and its first index, NaN count;
        # the row's max z is the max x divided once (IEEE division is monotone).
        mx_v = tl.full([BLOCK], float("-inf"), tl.float32)
        a_v = tl.zeros([BLOCK], tl.int32)
        n_full = V // BLOCK
        x_next = tl.load(x_row + cols, mask=(cols < V) & (n_full > 0), other=float("-inf"))
        for i in range(0, n_full):
            x = x_next.to(tl.float32)
            # Prefetch the next full tile: one scalar predicate, no per-element bound.
            x_next = tl.load(x_row + (i + 1) * BLOCK + cols, mask=i + 1 < n_full, other=float("-inf"))
            if NEED_AMAX:
                a_v = tl.where(x > mx_v, i * BLOCK + cols, a_v)   # strict: a lane keeps its first max
            mx_v = tl.maximum(mx_v, x, propagate_nan=tl.PropagateNan.ALL)   # NaN sticks: the row is bad
        o = n_full * BLOCK + cols   # the partial tail tile (if any), once
        x = tl.load(x_row + o, mask=o < V, other=float("-inf")).to(tl.float32)
        if NEED_AMAX:
            a_v = tl.where(x > mx_v, o, a_v)
        mx_v = tl.maximum(mx_v, x, propagate_nan=tl.PropagateNan.ALL)
        n_nan = tl.sum((mx_v != mx_v).to(tl.int32), 0)   # lanes that met a NaN
        mx = tl.max(tl.where(mx_v != mx_v, float("-inf"), mx_v), 0)
        m = tl.math.div_rn(mx, tdiv)
        amax = tl.min(tl.where(mx_v == mx, a_v, 2147483647), 0)   # lowest index among the maxima (greedy)
        bad = (n_nan > 0) | (m == float("inf")) | (m == float("-inf"))
        work = (bad == 0) & (t != 0.0)
        s = tl.zeros([], tl.float32)
        s_k = s
        w_kept = s
        need = tl.full([], 0, tl.int1)   # the row needs the v1 kernel
        if work & k_on:
            # The k-th largest of the BLOCK lane maxima, Lx, is <= the row's k-th largest x (the k lanes
            # above it hold k distinct elements), and {x >= Lx} is ~k elements when k << BLOCK. Candidates:
            # x >= xc, a relative 2^-20 below Lx, so that every x mapping to the same z as Lx is in; checked:
            # z(xc) < z(Lx) (else fall back), so no element below xc can tie with a kept one.
            lx = _unkey(_kth_largest_key(_key(mx_v), k).to(tl.int32))
            xc = lx - (tl.abs(lx) * 9.5367431640625e-07 + 1e-30)
            xc = tl.where(lx == float("-inf"), lx, xc)
            sep = (tl.math.div_rn(xc, tdiv) < tl.math.div_rn(lx, tdiv)) | (lx == float("-inf"))
            n_c, n_l = _gather_candidates(x_row, V, n_tiles, xc, mx_v >= xc, ws_row, CAP, BLOCK, TJ)
            if sep & (n_c >= k) & (n_c <= CAP) & (n_l <= CAP):
                # Every element of the top-k set is a candidate: key(z) << 32 | index in their slots, z
                # divided exactly here (at most CAP of them), then resolved as the zoom's register path
                # does (its results do not depend on the slots' order).
                tl.debug_barrier()
                jj = tl.arange(0, CAP)
                okj = jj < n_c
                idx = tl.load(ws_row + CAP + jj, mask=okj, other=0)
                zj = tl.math.div_rn(tl.load(x_row + idx, mask=okj, other=0.0).to(tl.float32), tdiv)
                tl.store(ws_row + CAP + jj, (_key(zj).to(tl.int64) << 32) | idx, mask=okj)
                zero = tl.zeros([], tl.int32)
                P, v, e, valid, rank, excl = _list_load(ws_row, zero, n_c, m, True, CAP, JC)
                tau_k = tl.max(tl.where(valid & (rank == k - 1), v, float("-inf")), 0)
                s_k = tl.sum(tl.where(valid & (v >= tau_k), e, 0.0), 0)
                tau = tau_k
                if p_on:
                    tau, _w = _list_topp(v, e, valid, excl, tau_k, 0.0, p * s_k)
                tok = _list_draw(ws_row, zero, n_c, P, v, e, valid, tau, mp_on, lmp, m, u, CAP, JC)
                done = 2
            else:
                # Many ties or lane collisions near the threshold: this row is left to the v1 kernel,
                # launched after this one (RESUME), which redoes it from scratch.
                need = tl.full([], 1, tl.int1)
        tl.store(flag_ptr + row, need.to(tl.int32))
    else:
        # ---- pass 1: max, sum, argmax, NaN / +inf counts, level-1 histogram ---------------------------
        need = tl.full([], 1, tl.int1)
        if RESUME:  # after the fast kernel: only the rows it flagged (the others run no pass: 0 tiles)
            need = tl.load(flag_ptr + row) != 0
            n_tiles = tl.where(need, n_tiles, 0)
        top = tl.max(_load_z(x_row, cols, tl.where(need, V, 0), tdiv), 0) + HEADROOM  # skipped rows: no read
        # Per lane: running max, sum of exp(z - max), first index of the max, NaN and +inf counts.
        m_v = tl.full([BLOCK], float("-inf"), tl.float32)
        s_v = tl.zeros([BLOCK], tl.float32)
        a_v = tl.zeros([BLOCK], tl.int32)
        nan_v = tl.zeros([BLOCK], tl.int32)
        pinf_v = tl.zeros([BLOCK], tl.int32)
        hist = tl.zeros([NB], tl.int32)
        x_next = tl.load(x_row + cols, mask=cols < V, other=float("-inf"))
        for i in range(0, n_tiles):
            o = i * BLOCK + cols
            x = x_next.to(tl.float32)
            x_next = tl.load(x_row + o + BLOCK, mask=o + BLOCK < V, other=float("-inf"))  # prefetch
            z = tl.math.div_rn(x, tdiv)
            nan_v += (z != z).to(tl.int32)
            pinf_v += (z == float("inf")).to(tl.int32)
            a_v = tl.where(z > m_v, o, a_v)   # strict: a lane keeps its first occurrence of its max
            m_new = tl.maximum(m_v, z)
            sh = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_v = s_v * tl.exp(m_v - sh) + tl.exp(z - sh)
            m_v = m_new
            if search:
                hist += tl.histogram(_bin1(z, top, NB, W1), NB, mask=o < V)
        m = tl.max(m_v, 0)
        sh = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(s_v * tl.exp(m_v - sh), 0)
        amax = tl.min(tl.where(m_v == m, a_v, 2147483647), 0)   # lowest index among the maxima
        n_nan = tl.sum(nan_v, 0)
        n_pinf = tl.sum(pinf_v, 0)
        bad = (n_nan > 0) | (n_pinf > 0) | (m == float("-inf"))
        work = (bad == 0) & (t != 0.0) & need

        # ---- thresholds --------------------------------------------------------------------------------
        if work & search & (m > top):
            top = m
            hist = _level1_pass(x_row, V, tdiv, n_tiles, top, BLOCK, NB, W1)
        s_k = s
        w_kept = s  # mass of {z >= tau}
        if work & k_on:
            tau_k, s_k, done, tok, tau = _search(x_row, V, tdiv, n_tiles, m, hist, top, ws_row, k, tau_k,
                                                 p_on, p, mp_on, lmp, u, False, BLOCK, NB, W1, CAP, JC,
                                                 MAX_ZOOM)
            if done != 2:
                tau = tau_k
                w_kept = s_k
        if work & p_on & (done != 2):
            tau_p, w_p, done, tok, tau_all = _search(x_row, V, tdiv, n_tiles, m, hist, top, ws_row, p * s_k,
                                                    tau_k, p_on, p, mp_on, lmp, u, True, BLOCK, NB, W1, CAP,
                                                    JC, MAX_ZOOM)
            tau = tl.maximum(tau_k, tau_p)
            w_kept = w_p

    # ---- output ----------------------------------------------------------------------------------------
    if FAST:
        n_out = tl.where(need, 0, n_tiles)   # flagged rows are written by the v1 kernel
    else:
        n_out = tl.where(need, n_tiles, 0)
    if FILTER:
        out_row = out_ptr + row.to(tl.int64) * V
        for i in range(0, n_out):
            o = i * BLOCK + cols
            z = _load_z(x_row, o, V, tdiv)
            keep = (z >= tau) & ((z - m >= lmp) | (mp_on == 0))
            y = tl.where(keep, z, float("-inf"))
            y = tl.where(greedy, tl.where(o == amax, z, float("-inf")), y)
            # A +inf logit (not greedy): the distribution is its +inf tokens.
            y = tl.where(work | greedy | (n_nan > 0) | (z == float("inf")), y, float("-inf"))
            y = tl.where(n_nan > 0, float("nan"), y)
            tl.store(out_row + o, y, mask=o < V)
    else:
        # (FAST: every working row was resolved in registers (done == 2) or flagged: no draw pass here.)
        if not FAST:
            if work & (done != 2):
                if mp_on & (tau - m < lmp):  # min-p removes part of {z >= tau}: its mass is not known
                    w_kept = _mass_pass(x_row, V, tdiv, n_tiles, m, tau, lmp, BLOCK)
                tok = _draw_pass(x_row, V, tdiv, n_tiles, m, tau, mp_on, lmp, u * w_kept, BLOCK)
        tok = tl.where(greedy, amax, tok)
        tok = tl.where(bad, -1, tok)
        if FAST:
            tl.store(out_ptr + row, tok.to(tl.int64), mask=need == 0)
        else:
            tl.store(out_ptr + row, tok.to(tl.int64), mask=need)


# --------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------

_FLOAT_PARAM = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_INT_PARAM = (torch.int64, torch.int32)


def _param(t: Optional[Tensor], value, dtypes):
    """(pointer tensor or None, element stride, scalar, has tensor). The kernel reads a (B,) tensor of any
    stride (a 0-dim one for every row: stride 0) and dtype in dtypes, and clamps what it reads (_row_param)."""
    if t is None:
        return None, 0, value, False
    assert t.dtype in dtypes and t.dim() <= 1, f"per-row parameter must be a (B,) tensor of {dtypes}"
    return t, (t.stride(0) if t.dim() else 0), value, True


def _run(logits: Tensor, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p,
         seeds: Union[Tensor, int], out: Tensor, filter_mode: bool, *, block: Optional[int] = None,
         cap: Optional[int] = None) -> Optional[Tensor]:
    """Launches the kernels; returns the fast kernel's per-row flags (1: left to the v1 kernel), None
    where the fast path does not apply (tests check which path rows took)."""
    b, v = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    dev = logits.device
    block = min(BLOCK if block is None else block, triton.next_power_of_2(v))
    cap = CAP if cap is None else cap
    assert cap & (cap - 1) == 0 and block & (block - 1) == 0
    tt, ts, tv, has_t = _param(temperature_t, float(temperature), _FLOAT_PARAM)
    kt, ks, kv, has_k = _param(top_k_t, int(top_k), _INT_PARAM)
    pt, ps, pv, has_p = _param(top_p_t, float(top_p), _FLOAT_PARAM)
    mt, ms, mv, has_mp = _param(min_p_t, float(min_p), _FLOAT_PARAM)
    use_k = has_k or 0 < kv < v
    use_p = has_p or pv < 1.0
    use_mp = has_mp or mv > 0.0
    has_seed_t = isinstance(seeds, Tensor)
    # The fast top-k path: one k for every row, within the candidate capacity and the lane count.
    fast = (not has_k) and 0 < kv < v and kv <= cap and kv <= block
    dummy = out  # never read where a scalar is used
    ws = torch.empty((b, 2 * cap) if (use_k or use_p) else (1,), dtype=torch.int64, device=dev)
    flags = torch.empty((b,) if fast else (1,), dtype=torch.int32, device=dev)
    args = (logits, logits.stride(0), v, triton.cdiv(v, block),
            tt if has_t else dummy, ts, tv, kt if has_k else dummy, ks, min(kv, 1 << 62),
            pt if has_p else dummy, ps, pv, mt if has_mp else dummy, ms, mv,
            seeds if has_seed_t else dummy, 0 if has_seed_t else int(seeds), out, ws, flags)
    meta = dict(HAS_SEED_T=has_seed_t, HAS_T_T=has_t, HAS_K_T=has_k, HAS_P_T=has_p, HAS_MP_T=has_mp,
                USE_K=use_k, USE_P=use_p, USE_MP=use_mp, FILTER=filter_mode, NEED_AMAX=has_t or tv == 0.0,
                TJ=TJ,
                BLOCK=block, NB=NB, W1=W1, HEADROOM=HEADROOM, CAP=cap, JC=min(JC, cap), MAX_ZOOM=MAX_ZOOM,
                num_warps=NUM_WARPS if block >= 2048 else 4)
    if fast:
        # The fast kernel resolves almost every row; the v1 kernel then redoes only the rows it flagged
        # (the others return after reading their flag). Stream order, no host sync.
        _sampling_kernel[(b,)](*args, FAST=True, RESUME=False, maxnreg=168, **meta)
    _sampling_kernel[(b,)](*args, FAST=False, RESUME=fast, **meta)
    return flags if fast else None


def sample(logits: Tensor, temperature_t: Optional[Tensor], temperature: float, top_k_t: Optional[Tensor],
           top_k: int, top_p_t: Optional[Tensor], top_p: float, min_p_t: Optional[Tensor], min_p: float,
           seeds: Union[Tensor, int], *, block: Optional[int] = None, cap: Optional[int] = None) -> Tensor:
    """One token id per row of logits (B, V) fp16/bf16/fp32: int64 (B,), -1 for a NaN / non-finite row.

    Each *_t is None or a (B,) tensor of any stride (0-dim: one value for every row; any float dtype, int32 or
    int64 for top_k), clamped as the kernel reads it (reference.PARAM_RANGES), else the number beside it is
    used for every row. seeds: int64 (B,), or one int for every row (saves building a seed tensor on the
    decode path). block / cap override the tile width and candidate capacity (tests use small ones to
    reach every path at small V).
    """
    b, v = logits.shape
    out = torch.empty((b,), dtype=torch.int64, device=logits.device)
    if b == 0:
        return out
    if isinstance(seeds, Tensor):
        assert seeds.dtype == torch.int64 and seeds.numel() == b
        seeds = seeds.contiguous()
    else:
        assert -(1 << 63) <= int(seeds) < (1 << 63)
    assert v > 0
    _run(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p, seeds, out,
         False, block=block, cap=cap)
    return out


def top_k_top_p_filter(logits: Tensor, temperature_t: Optional[Tensor], temperature: float,
                       top_k_t: Optional[Tensor], top_k: int, top_p_t: Optional[Tensor], top_p: float,
                       min_p_t: Optional[Tensor], min_p: float, *, block: Optional[int] = None,
                       cap: Optional[int] = None) -> Tensor:
    """logits / T as float32 (B, V) with the tokens top-k, top-p and min-p remove set to -inf; greedy rows
    keep only their first maximal logit (undivided); NaN rows are all NaN; a row with a +inf logit keeps
    only its +inf entries."""
    b, v = logits.shape
    out = torch.empty((b, v), dtype=torch.float32, device=logits.device)
    if b == 0 or v == 0:
        return out
    _run(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p, 0, out, True,
         block=block, cap=cap)
    return out
