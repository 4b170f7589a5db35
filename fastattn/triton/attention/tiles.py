"""Shared @triton.jit tile helpers of the attention kernels: pointers, masked loads, the block order, the causal
key range, the biased and masked score tile, one online-softmax step and the normalising epilogue.

Every helper is inlined into the kernels that call it (Triton inlines jit calls), so factoring a block out here
costs nothing at run time. Scores are in log2 units throughout (see the package docstring).
"""
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are kept in log2 units: exp(x) = exp2(x * LOG2E)
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------------------------------------
# Pointers and loads
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _bh_base(ptr, b, h, stride_b, stride_h):
    """ptr advanced to batch b, head h, with int64 offsets (so no tensor size overflows)."""
    return ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def _row_tile(base, rows, offs_d, stride_r, stride_d):
    """Pointers (rows, HEAD_DIM_PAD) to a row-major tile: one sequence position (or head) per row."""
    return base + rows.to(tl.int64)[:, None] * stride_r + offs_d[None, :] * stride_d


@triton.jit
def _col_tile(base, cols, offs_d, stride_c, stride_d):
    """Pointers (HEAD_DIM_PAD, cols) to a transposed tile (K^T or V^T): one sequence position per column."""
    return base + cols.to(tl.int64)[None, :] * stride_c + offs_d[:, None] * stride_d


@triton.jit
def _load_rows(ptrs, rows_ok, d_ok, CHECK_ROWS: tl.constexpr, EVEN_D: tl.constexpr, COMPUTE_F32: tl.constexpr):
    """Load a (rows, HEAD_DIM_PAD) tile, masking rows past the sequence only where asked (CHECK_ROWS) and the
    head-dim padding only where D is not a power of two; masked lanes read 0 so they add nothing to a dot."""
    if CHECK_ROWS:
        if EVEN_D:
            x = tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=rows_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    if COMPUTE_F32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_cols(ptrs, cols_ok, d_ok, CHECK_COLS: tl.constexpr, EVEN_D: tl.constexpr, COMPUTE_F32: tl.constexpr):
    """Load a transposed (HEAD_DIM_PAD, cols) tile (K^T or V^T); masks as in _load_rows."""
    if CHECK_COLS:
        if EVEN_D:
            x = tl.load(ptrs, mask=cols_ok[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=cols_ok[None, :] & d_ok[:, None], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d_ok[:, None], other=0.0)
    if COMPUTE_F32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_tile(ptrs, x, rows_ok, d_ok):
    """Store a (rows, HEAD_DIM_PAD) fp32 tile in the pointers' dtype. why the mask: the tile's edges past the
    sequence (or the group of heads) and the head-dim padding are not part of the tensor."""
    tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=rows_ok[:, None] & d_ok[None, :])


@triton.jit
def _load_lse2(ptrs, rows_ok, CHECK_ROWS: tl.constexpr):
    """The forward's lse of a query block's rows (BLOCK_M,), in log2 units, for recomputing p = exp2(s - lse2).
    why other=+inf (rows past Sq) and -inf -> +inf (a row with nothing to attend to, whose scores are all
    -inf): both give p = 0 exactly, not NaN, and such rows add nothing to any gradient."""
    if CHECK_ROWS:
        lse2 = tl.load(ptrs, mask=rows_ok, other=float("inf")) * _LOG2E
    else:
        lse2 = tl.load(ptrs) * _LOG2E
    return tl.where(lse2 == float("-inf"), float("inf"), lse2)


# ----------------------------------------------------------------------------------------------------------
# Block order and causal bounds
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _query_program(GROUP, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """(m_lo, offs_m, h, b, hk) of a program of the grid (cdiv(Sq, BLOCK_M), Hq, B): its first query row and
    rows (BLOCK_M,), query head, batch and KV head. Causal: the heavy blocks (the last query rows see the most
    keys) run first, for a better tail."""
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    h = tl.program_id(1)
    m_lo = start_m * BLOCK_M
    return m_lo, m_lo + tl.arange(0, BLOCK_M), h, tl.program_id(2), h // GROUP


@triton.jit
def _causal_visible(q_rows, k_cols, Sq, Sk):
    """Bottom-right causal: query i sees key j only if j <= i + Sk - Sq (arguments broadcast against each other)."""
    return k_cols <= q_rows + (Sk - Sq)


@triton.jit
def _key_range(m_lo, Sq, Sk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(n_full, hi) for the query block starting at row m_lo: keys [0, n_full) (whole key blocks) are seen by
    every row of the block and run unmasked; [n_full, hi) cross the causal diagonal or the end of the keys and run
    masked; keys >= hi are invisible to every row and are skipped."""
    if CAUSAL:
        last_row = tl.minimum(m_lo + BLOCK_M, Sq) - 1
        hi = tl.maximum(tl.minimum(Sk, last_row + (Sk - Sq) + 1), 0)   # keys < hi: visible to the last row
        full = tl.maximum(tl.minimum(Sk, m_lo + (Sk - Sq) + 1), 0)     # keys < full: visible to the first row
    else:
        hi = Sk
        full = Sk
    return (full // BLOCK_N) * BLOCK_N, hi


# ----------------------------------------------------------------------------------------------------------
# Scores, the online softmax and the epilogue
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _bias_ptrs(bias_base, offs_m, offs_n, stride_bm, stride_bn, BIAS_KIND: tl.constexpr):
    """Pointers to the first key block's bias for _masked_scores; bias_base itself when there is no bias."""
    if BIAS_KIND == 1:
        return bias_base + offs_m.to(tl.int64)[:, None] * stride_bm + offs_n.to(tl.int64)[None, :] * stride_bn
    elif BIAS_KIND == 2:
        return bias_base + offs_n.to(tl.int64) * stride_bn                      # (BLOCK_N,) one row for all
    else:
        return bias_base


@triton.jit
def _bound_mask(s, cols, col_ok, offs_m, Sq, Sk, CAUSAL: tl.constexpr):
    """s (BLOCK_M, BLOCK_N) with -inf where a key is past Sk or, causal, after the query's diagonal.
    why: the last key block runs past Sk, and those lanes must weigh 0 (in the backward, exp2 of a finite
    s - lse there could even overflow)."""
    keep = col_ok[None, :]
    if CAUSAL:
        keep = keep & _causal_visible(offs_m[:, None], cols[None, :], Sq, Sk)
    return tl.where(keep, s, float("-inf"))


@triton.jit
def _load_key_block(kT_ptrs, start_n, d_ok, Sk, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
                    COMPUTE_F32: tl.constexpr, BLOCK_N: tl.constexpr):
    """(kT, cols, col_ok): K^T (D_PAD, BLOCK_N) of the key block at start_n, its key indices (BLOCK_N,) and which
    are < Sk. Only MASKED blocks (the last, or those crossing the causal diagonal) check the key bound."""
    cols = start_n + tl.arange(0, BLOCK_N)                                       # (BLOCK_N,)
    col_ok = cols < Sk
    kT = _load_cols(kT_ptrs, col_ok, d_ok, CHECK_COLS=MASKED, EVEN_D=EVEN_D, COMPUTE_F32=COMPUTE_F32)
    return kT, cols, col_ok


@triton.jit
def _masked_scores(q, kT, b_ptrs, kpm_base, cols, col_ok, offs_m, row_ok, Sq, Sk, qk_scale,
                   MASKED: tl.constexpr, CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """The scaled (log2 units), biased and masked scores (BLOCK_M, BLOCK_N) fp32 of one query block against one
    key block, as the forward and the dQ pass both need them. b_ptrs points at this key block's bias: a
    (BLOCK_M, BLOCK_N) tile for BIAS_KIND 1, one (BLOCK_N,) row for all queries for BIAS_KIND 2, unused for 0.
    MASKED blocks cross the causal diagonal or the end of the keys; the others skip those masks (the bias and
    key padding are data and apply to every block)."""
    s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
    if BIAS_KIND == 1:
        # why row_ok: the last query block runs past Sq, and the bias has no rows there
        if MASKED:
            bmask = row_ok[:, None] & col_ok[None, :]
        else:
            bmask = row_ok[:, None]
        s += tl.load(b_ptrs, mask=bmask, other=0.0).to(tl.float32) * _LOG2E
    if BIAS_KIND == 2:
        s += tl.load(b_ptrs, mask=col_ok, other=0.0).to(tl.float32)[None, :] * _LOG2E
    if MASKED:
        s = _bound_mask(s, cols, col_ok, offs_m, Sq, Sk, CAUSAL=CAUSAL)
    if HAS_KPM:
        # why: padding keys (False in key_padding_mask) take no part in any row's softmax, nor its gradient
        real = tl.load(kpm_base + cols, mask=col_ok, other=0) != 0            # (BLOCK_N,)
        s = tl.where(real[None, :], s, float("-inf"))
    return s


@triton.jit
def _online_softmax_step(s, m_i, l_i, acc):
    """One key block of the online softmax (FlashAttention-2): from the block's scores s (rows, BLOCK_N) in log2
    units, the new running max m (rows,), the rescaled running sum l and accumulator acc (rows, D), and the
    block's unnormalised probabilities p (rows, BLOCK_N) fp32, which the caller multiplies into acc with V.
    Returns (p, m, l, acc)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))                                        # (rows,)
    # why: a row whose scores are all -inf so far would compute -inf - (-inf) = NaN; shift it by 0 instead,
    # so its p and alpha are exactly 0 (NaN scores still propagate through p)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_use[:, None])                                         # (rows, BLOCK_N) fp32
    alpha = tl.math.exp2(m_i - m_use)                                            # (rows,)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    return p, m_new, l_i, acc


@triton.jit
def _normalise(acc, l_i, m_i):
    """The epilogue of the online softmax: (out = acc / l (rows, D) fp32, lse2 = m + log2 l (rows,), log2
    units). why: l == 0 exactly when a row saw no key (every p was 0); it returns out 0 and lse2 -inf, not 0/0."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_safe))
    return out, lse2


# ----------------------------------------------------------------------------------------------------------
# Attention dropout: a counter-based stream (Philox4x32-10), regenerated in the backward, never stored
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _dropout_keep(seed, rng_offset, bh, rows, start_n, drop_threshold, BLOCK_N: tl.constexpr,
                  KEYS_FIRST: tl.constexpr):
    """Which probabilities of a tile survive dropout, for the query rows `rows` (1-D) and the BLOCK_N keys from
    start_n (a multiple of 8) of (batch, query head) bh = b * Hq + h: one Philox4x32-10 keyed by seed (64
    bits) on the counter (j // 8, i, bh, rng_offset) draws the 8 keys of group j // 8 of query i; its words
    r0..r3 give 8 16-bit values, key j taking word (j % 8) // 2, the low half if j is even, the high half if
    odd, and the score is kept iff that value >= drop_threshold = round(p * 2^16) (p at 1/65536 resolution).
    Philox runs on a (rows, BLOCK_N // 8) tile; its halves are interleaved along the keys. The result is
    (rows, BLOCK_N), or (BLOCK_N, rows) with KEYS_FIRST (the dK/dV kernel's transposed tile).
    fastattn.reference.dropout_keep computes the same bits in PyTorch."""
    tl.static_assert(BLOCK_N % 8 == 0, "dropout draws keys in groups of 8")
    groups = start_n // 8 + tl.arange(0, BLOCK_N // 8)                          # (BLOCK_N // 8,)
    c0 = groups[None, :] + rows[:, None] * 0                                     # (rows, BLOCK_N // 8) int32
    c1 = rows[:, None] + groups[None, :] * 0
    c2 = c0 * 0 + bh.to(tl.int32)
    c3 = c0 * 0 + rng_offset
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)                             # uint32 each
    m: tl.constexpr = rows.shape[0]
    # join appends its axis last: element (.., g, a, c) of join(join(r0, r2), join(r1, r3)) is word 2 a + c, so
    # the row-major reshape puts word w of group g at 4 g + w
    words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (m, BLOCK_N // 2))
    u16 = tl.reshape(tl.join(words & 0xFFFF, words >> 16), (m, BLOCK_N)).to(tl.int32)   # key 8 g + 2 w + half
    if KEYS_FIRST:
        u16 = tl.trans(u16)
    return u16 >= drop_threshold
