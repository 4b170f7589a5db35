"""Fused multi-head attention in Triton: forward, backward (FlashAttention-2 recomputation) and decode.

Kernels and launchers only; the custom ops, fakes and autograd that call them are in fastattn/ops/attention.py.

Layout: q (B, Hq, Sq, D), k and v (B, Hkv, Sk, D) with Hq % Hkv == 0, any strides (each kernel takes all four
strides of every tensor, so a (B, S, H, D) tensor transposed to (B, H, S, D) is read in place). Query head h
reads KV head h // (Hq // Hkv): GQA/MQA without materialising repeats. bias is a 4-D view expanded to
(B, Hq, Sq, Sk): broadcast dims have stride 0 and a bias that is constant along Sq is read as one key vector.
key_padding_mask is bool (B, Sk), True = real. Causal is aligned bottom-right: query i sees keys j <= i + Sk - Sq.
Head dims 1..256: tiles are padded to HEAD_DIM_PAD, the next power of two >= 16, and the padding lanes are masked
(read as 0, never written). Offsets are int64 (batch and head bases, row offsets), so no tensor size overflows.

Numerics. Scores live in log2 units: s2 = q.k * (scale * log2 e) + bias * log2 e, so each softmax exponential is
one exp2. Every kernel loads its tiles, multiplies on the tensor cores in the input dtype (p is rounded to it
before the P.V product, as in FlashAttention) and accumulates in float32; lse and the softmax statistics are
float32. float32 inputs are multiplied with input_precision="ieee" (true fp32 products, no TF32: on a GPU this
leaves the tensor cores unused and is several times slower than bf16, but gives the accuracy float32 users ask
for; the tests hold it to 1e-5 of float64). Under TRITON_INTERPRET=1 (CPU) every tile is converted to float32 after its
load, since the interpreter has no bf16 arithmetic; results are then slightly more accurate than on a GPU.
A row with no key to attend to (causal with Sq > Sk, all keys padded, a -inf bias) gives out 0 and lse -inf;
NaN inputs give NaN outputs. Every loop bound comes from the shapes or cache_seqlens, never from the data.

Memory is O(S): the forward writes out and lse, the backward recomputes P from lse, block by block. The backward
is deterministic: dk/dv of a KV head are accumulated by one program over every query block of every query head
of its group, dq by one program per query block, with no atomics anywhere.

Not yet run on a GPU: the kernels were developed and tested under the interpreter, and compiled ahead of time
for sm_90 (every kernel, wgmma on the attention dots) without a launch; the autotuned configs, the SM count for
decode splits and the device guard have never executed. No TMA descriptors or warp specialisation are used: the
portable pointer kernels below are the only path (Triton lowers tl.dot to wgmma on Hopper and software-pipelines
the loads with num_stages).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._backend import triton_interpreted

_INTERPRETED = triton_interpreted()
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
_MAX_GRID_YZ = 65535  # CUDA's limit on the 2nd and 3rd grid dimensions (heads, batch)

LOG2E = 1.4426950408889634  # scores are kept in log2 units: exp(x) = exp2(x * LOG2E)
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)

# Block sizes under the interpreter (no autotuning there): small, so that odd test sizes cross block edges.
_INTERP_BLOCK = 16


# ----------------------------------------------------------------------------------------------------------
# Tile helpers
# ----------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, bias_base, kpm_base,
                    stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                    offs_m, offs_d, row_ok, d_ok, lo, hi, Sq, Sk, qk_scale,
                    MASKED: tl.constexpr, CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr,
                    HAS_KPM: tl.constexpr, EVEN_D: tl.constexpr, COMPUTE_F32: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online softmax over the key blocks [lo, hi) for one query block. MASKED blocks are the ones that cross the
    causal diagonal or the end of the keys; the others skip those masks (the bias and key padding are data and
    apply to every block)."""
    offs_n = lo + tl.arange(0, BLOCK_N)                                          # (BLOCK_N,)
    kT_ptrs = k_base + offs_n.to(tl.int64)[None, :] * stride_kn + offs_d[:, None] * stride_kd  # (D_PAD, BLOCK_N)
    v_ptrs = v_base + offs_n.to(tl.int64)[:, None] * stride_vn + offs_d[None, :] * stride_vd   # (BLOCK_N, D_PAD)
    if BIAS_KIND == 1:
        b_ptrs = bias_base + offs_m.to(tl.int64)[:, None] * stride_bm + offs_n.to(tl.int64)[None, :] * stride_bn
    if BIAS_KIND == 2:
        b_ptrs = bias_base + offs_n.to(tl.int64) * stride_bn                    # (BLOCK_N,) one row for all
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)                                   # (BLOCK_N,)
        col_ok = cols < Sk
        kT = _load_cols(kT_ptrs, col_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)      # (D_PAD, BLOCK_N)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale             # (BLOCK_M, BLOCK_N) fp32, log2
        if BIAS_KIND == 1:
            # why row_ok: the last query block runs past Sq, and the bias has no rows there
            if MASKED:
                bmask = row_ok[:, None] & col_ok[None, :]
            else:
                bmask = row_ok[:, None]
            s += tl.load(b_ptrs, mask=bmask, other=0.0).to(tl.float32) * _LOG2E
            b_ptrs += BLOCK_N * stride_bn
        if BIAS_KIND == 2:
            s += tl.load(b_ptrs, mask=col_ok, other=0.0).to(tl.float32)[None, :] * _LOG2E
            b_ptrs += BLOCK_N * stride_bn
        if MASKED:
            keep = col_ok[None, :]  # why: the last key block runs past Sk; those lanes must weigh 0
            if CAUSAL:
                # why: bottom-right causal, query i sees key j only if j <= i + Sk - Sq
                keep = keep & (cols[None, :] <= offs_m[:, None] + (Sk - Sq))
            s = tl.where(keep, s, float("-inf"))
        if HAS_KPM:
            # why: padding keys (False in key_padding_mask) take no part in any row's softmax
            real = tl.load(kpm_base + cols, mask=col_ok, other=0) != 0            # (BLOCK_N,)
            s = tl.where(real[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))                                    # (BLOCK_M,)
        # why: a row whose scores are all -inf so far would compute -inf - (-inf) = NaN; shift it by 0 instead,
        # so its p and alpha are exactly 0 (NaN scores still propagate through p)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])                                     # (BLOCK_M, BLOCK_N) fp32
        alpha = tl.math.exp2(m_i - m_use)                                        # (BLOCK_M,)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _load_rows(v_ptrs, col_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)        # (BLOCK_N, D_PAD)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)       # (BLOCK_M, D_PAD) fp32
        m_i = m_new
        kT_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, Bias, Kpm, Out, Lse,
                     stride_qb, stride_qh, stride_qm, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_bb, stride_bh, stride_bm, stride_bn,
                     stride_kpmb,
                     stride_ob, stride_oh, stride_om, stride_od,
                     Hq, Sq, Sk, GROUP, qk_scale,
                     SQ_BUCKET, SK_BUCKET,
                     HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, EVEN_D: tl.constexpr,
                     CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                     COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Forward. Grid (cdiv(Sq, BLOCK_M), Hq, B): one program per query block of one (batch, query head).

    The program keeps its Q tile (BLOCK_M, D_PAD) in registers and streams the K/V blocks of KV head h // GROUP,
    keeping the running max m, sum l and unnormalised output acc (FlashAttention-2). Keys [0, n_full) are seen
    by every row of the block and run unmasked; [n_full, hi) cross the causal diagonal or the end of the keys
    and run masked; keys >= hi are invisible to every row and are skipped. Writes out (B, Hq, Sq, D) in Out's
    dtype and lse (B, Hq, Sq) float32 (natural log; -inf for a row with nothing to attend to, whose out is 0).
    SQ_BUCKET and SK_BUCKET are only part of the autotuning key.
    """
    if CAUSAL:
        # heavy blocks (the last query rows see the most keys) first, for a better tail
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    hk = h // GROUP
    m_lo = start_m * BLOCK_M
    offs_m = m_lo + tl.arange(0, BLOCK_M)                                        # (BLOCK_M,)
    offs_d = tl.arange(0, HEAD_DIM_PAD)                                          # (D_PAD,)
    row_ok = offs_m < Sq
    d_ok = offs_d < HEAD_DIM

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    bias_base = Bias + b.to(tl.int64) * stride_bb + h.to(tl.int64) * stride_bh
    kpm_base = Kpm + b.to(tl.int64) * stride_kpmb
    q_ptrs = q_base + offs_m.to(tl.int64)[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = _load_rows(q_ptrs, row_ok, d_ok, True, EVEN_D, COMPUTE_F32)              # (BLOCK_M, D_PAD)

    if CAUSAL:
        last_row = tl.minimum(m_lo + BLOCK_M, Sq) - 1
        hi = tl.maximum(tl.minimum(Sk, last_row + (Sk - Sq) + 1), 0)   # keys < hi: visible to the last row
        full = tl.maximum(tl.minimum(Sk, m_lo + (Sk - Sq) + 1), 0)     # keys < full: visible to the first row
    else:
        hi = Sk
        full = Sk
    n_full = (full // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)                          # running max, log2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)                                        # running sum of exp2
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)                          # unnormalised output
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, bias_base, kpm_base,
                                    stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                                    offs_m, offs_d, row_ok, d_ok, 0, n_full, Sq, Sk, qk_scale,
                                    False, CAUSAL, BIAS_KIND, HAS_KPM, EVEN_D, COMPUTE_F32, DOT_PRECISION,
                                    BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, bias_base, kpm_base,
                                    stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                                    offs_m, offs_d, row_ok, d_ok, n_full, hi, Sq, Sk, qk_scale,
                                    True, CAUSAL, BIAS_KIND, HAS_KPM, EVEN_D, COMPUTE_F32, DOT_PRECISION,
                                    BLOCK_N)

    # why: l == 0 exactly when the row saw no key (every p was 0); it returns 0, not 0/0
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]                                                  # (BLOCK_M, D_PAD) fp32
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * _LN2)   # (BLOCK_M,) natural log
    o_ptrs = (Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
              + offs_m.to(tl.int64)[:, None] * stride_om + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    lse_ptrs = Lse + (b.to(tl.int64) * Hq + h) * Sq + offs_m
    tl.store(lse_ptrs, lse, mask=row_ok)


# ----------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_delta_kernel(Out, DOut, Delta,
                           stride_ob, stride_oh, stride_om, stride_od,
                           stride_dob, stride_doh, stride_dom, stride_dod,
                           Hq, Sq,
                           HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Backward preprocessing. Grid (cdiv(Sq, BLOCK_M), Hq, B). Delta[b, h, i] = sum_d out * dout (float32,
    contiguous (B, Hq, Sq)): the row sum of P * dP that every ds = P * (dP - Delta) needs. One read of out and
    dout, one float per row written."""
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)                 # (BLOCK_M,)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    mask = (offs_m < Sq)[:, None] & (offs_d < HEAD_DIM)[None, :]                # why: tile edges past Sq and D
    o = tl.load(Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
                + offs_m.to(tl.int64)[:, None] * stride_om + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(DOut + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
                 + offs_m.to(tl.int64)[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)                     # (BLOCK_M,) fp32
    tl.store(Delta + (b.to(tl.int64) * Hq + h) * Sq + offs_m, delta, mask=offs_m < Sq)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, db_row, k, v, bias_row, real, col_ok,
                         q_base, do_base, lse_base, delta_base, bias_base, db_base,
                         stride_qm, stride_qd, stride_dom, stride_dod, stride_bm, stride_bn, stride_dbm,
                         offs_n, offs_d, d_ok, lo, hi, Sq, Sk, qk_scale,
                         MASKED: tl.constexpr, CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr,
                         DBIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr, EVEN_D: tl.constexpr,
                         COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr):
    """Accumulate dk, dv (BLOCK_N, D_PAD) of one key block over the query blocks [lo, hi) of one query head,
    working on transposed tiles (keys along rows). MASKED query blocks cross the causal diagonal or the end of
    the queries. Stores the bias gradient tile (DBIAS_KIND 1) or sums it over the queries (DBIAS_KIND 2)."""
    offs_m = lo + tl.arange(0, BLOCK_M)                                          # (BLOCK_M,)
    q_ptrs = q_base + offs_m.to(tl.int64)[:, None] * stride_qm + offs_d[None, :] * stride_qd     # (BLOCK_M, D_PAD)
    do_ptrs = do_base + offs_m.to(tl.int64)[:, None] * stride_dom + offs_d[None, :] * stride_dod  # (BLOCK_M, D_PAD)
    if BIAS_KIND == 1:
        bT_ptrs = bias_base + offs_m.to(tl.int64)[None, :] * stride_bm + offs_n.to(tl.int64)[:, None] * stride_bn
    if DBIAS_KIND == 1:
        dbT_ptrs = db_base + offs_m.to(tl.int64)[None, :] * stride_dbm + offs_n.to(tl.int64)[:, None]
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)                                   # (BLOCK_M,)
        row_ok = rows < Sq
        q = _load_rows(q_ptrs, row_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)        # (BLOCK_M, D_PAD)
        do = _load_rows(do_ptrs, row_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)      # (BLOCK_M, D_PAD)
        # why other=+inf: rows past Sq get p = exp2(s - inf) = 0 and add nothing
        lse2 = tl.load(lse_base + rows, mask=row_ok, other=float("inf")) * _LOG2E    # (BLOCK_M,)
        # why: a row with nothing to attend to has lse = -inf and only -inf scores; s - (+inf) gives p = 0, not NaN
        lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)                # (BLOCK_M,)
        sT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale     # (BLOCK_N, BLOCK_M) log2
        if BIAS_KIND == 1:
            # why: bias rows past Sq and columns past Sk do not exist
            sT += tl.load(bT_ptrs, mask=row_ok[None, :] & col_ok[:, None], other=0.0).to(tl.float32) * _LOG2E
            bT_ptrs += BLOCK_M * stride_bm
        if BIAS_KIND == 2:
            sT += bias_row[:, None]
        if MASKED and CAUSAL:
            # why: bottom-right causal, query i sees key j only if j <= i + Sk - Sq
            sT = tl.where(offs_n[:, None] <= rows[None, :] + (Sk - Sq), sT, float("-inf"))
        if HAS_KPM:
            # why: padding keys got probability 0 in the forward and get no gradient
            sT = tl.where(real[:, None], sT, float("-inf"))
        pT = tl.math.exp2(sT - lse2[None, :])                                    # (BLOCK_N, BLOCK_M) fp32
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)      # (BLOCK_N, D_PAD)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)             # (BLOCK_N, BLOCK_M)
        dsT = pT * (dpT - delta[None, :])                                        # d loss / d (biased score)
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)      # (BLOCK_N, D_PAD), times scale later
        if DBIAS_KIND == 1:
            # why: the gradient buffer has no rows past Sq and no columns past Sk
            tl.store(dbT_ptrs, dsT.to(db_base.dtype.element_ty), mask=row_ok[None, :] & col_ok[:, None])
            dbT_ptrs += BLOCK_M * stride_dbm
        if DBIAS_KIND == 2:
            db_row += tl.sum(dsT, 1)                                             # (BLOCK_N,)
        q_ptrs += BLOCK_M * stride_qm
        do_ptrs += BLOCK_M * stride_dom
    return dk, dv, db_row


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, Bias, Kpm, DOut, Lse, Delta, DK, DV, DBias,
                          stride_qb, stride_qh, stride_qm, stride_qd,
                          stride_kb, stride_kh, stride_kn, stride_kd,
                          stride_vb, stride_vh, stride_vn, stride_vd,
                          stride_bb, stride_bh, stride_bm, stride_bn,
                          stride_kpmb,
                          stride_dob, stride_doh, stride_dom, stride_dod,
                          stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                          stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                          stride_dbb, stride_dbh, stride_dbm,
                          Hq, Sq, Sk, GROUP, qk_scale, scale,
                          SQ_BUCKET, SK_BUCKET,
                          HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, EVEN_D: tl.constexpr,
                          CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, DBIAS_KIND: tl.constexpr,
                          HAS_KPM: tl.constexpr, COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward dk, dv. Grid (cdiv(Sk, BLOCK_N), Hkv, B): one program per key block of one (batch, KV head).

    The program keeps K, V (BLOCK_N, D_PAD) in registers and, for each of the GROUP query heads sharing this KV
    head, streams the query blocks that can see its keys, recomputing P^T = exp2(s^T - lse) and accumulating
    dv += P^T dO and dk += dS^T Q in float32. It alone owns these dk/dv rows: the GQA group sum is a loop, not
    an atomic, so the result is deterministic. Query blocks [lo, a_end) cross the causal diagonal and run
    masked, [a_end, b_end) run unmasked, [b_end, Sq) is the partial last block. Rows before lo see none of
    these keys. The bias gradient dS goes to DBias (float buffer (B, Hq, Sq or 1, Sk), contiguous along Sk):
    tile by tile (DBIAS_KIND 1), or summed over the queries in registers when the bias is constant along Sq
    (DBIAS_KIND 2).
    """
    start_n = tl.program_id(0)
    hk = tl.program_id(1)
    b = tl.program_id(2)
    n_lo = start_n * BLOCK_N
    offs_n = n_lo + tl.arange(0, BLOCK_N)                                        # (BLOCK_N,)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    col_ok = offs_n < Sk
    d_ok = offs_d < HEAD_DIM

    k_ptrs = (K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
              + offs_n.to(tl.int64)[:, None] * stride_kn + offs_d[None, :] * stride_kd)
    v_ptrs = (V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
              + offs_n.to(tl.int64)[:, None] * stride_vn + offs_d[None, :] * stride_vd)
    k = _load_rows(k_ptrs, col_ok, d_ok, True, EVEN_D, COMPUTE_F32)              # (BLOCK_N, D_PAD)
    v = _load_rows(v_ptrs, col_ok, d_ok, True, EVEN_D, COMPUTE_F32)              # (BLOCK_N, D_PAD)
    if HAS_KPM:
        # why col_ok: past Sk there is no mask entry; those keys count as padding
        real = tl.load(Kpm + b.to(tl.int64) * stride_kpmb + offs_n, mask=col_ok, other=0) != 0   # (BLOCK_N,)
    else:
        real = col_ok

    if CAUSAL:
        first = tl.maximum(n_lo - (Sk - Sq), 0)                     # first query row that sees a key of the block
        every = tl.maximum(n_lo + BLOCK_N - 1 - (Sk - Sq), 0)       # rows >= every see all its keys
        lo = (first // BLOCK_M) * BLOCK_M
        a_end = tl.minimum(tl.maximum(tl.cdiv(every, BLOCK_M) * BLOCK_M, lo), Sq)
    else:
        lo = 0
        a_end = 0
    b_end = tl.maximum(a_end, (Sq // BLOCK_M) * BLOCK_M)

    dk = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        bh = b.to(tl.int64) * Hq + h
        q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        do_base = DOut + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        bias_base = Bias + b.to(tl.int64) * stride_bb + h.to(tl.int64) * stride_bh
        db_base = DBias + b.to(tl.int64) * stride_dbb + h.to(tl.int64) * stride_dbh
        lse_base = Lse + bh * Sq
        delta_base = Delta + bh * Sq
        if BIAS_KIND == 2:
            bias_row = tl.load(bias_base + offs_n.to(tl.int64) * stride_bn, mask=col_ok, other=0.0)
            bias_row = bias_row.to(tl.float32) * _LOG2E                          # (BLOCK_N,)
        else:
            bias_row = tl.zeros([BLOCK_N], tl.float32)
        db_row = tl.zeros([BLOCK_N], tl.float32)                                 # (BLOCK_N,) sum over queries
        dk, dv, db_row = _attn_bwd_dkdv_inner(
            dk, dv, db_row, k, v, bias_row, real, col_ok, q_base, do_base, lse_base, delta_base, bias_base,
            db_base, stride_qm, stride_qd, stride_dom, stride_dod, stride_bm, stride_bn, stride_dbm,
            offs_n, offs_d, d_ok, lo, a_end, Sq, Sk, qk_scale,
            True, CAUSAL, BIAS_KIND, DBIAS_KIND, HAS_KPM, EVEN_D, COMPUTE_F32, DOT_PRECISION, BLOCK_M)
        dk, dv, db_row = _attn_bwd_dkdv_inner(
            dk, dv, db_row, k, v, bias_row, real, col_ok, q_base, do_base, lse_base, delta_base, bias_base,
            db_base, stride_qm, stride_qd, stride_dom, stride_dod, stride_bm, stride_bn, stride_dbm,
            offs_n, offs_d, d_ok, a_end, b_end, Sq, Sk, qk_scale,
            False, CAUSAL, BIAS_KIND, DBIAS_KIND, HAS_KPM, EVEN_D, COMPUTE_F32, DOT_PRECISION, BLOCK_M)
        dk, dv, db_row = _attn_bwd_dkdv_inner(
            dk, dv, db_row, k, v, bias_row, real, col_ok, q_base, do_base, lse_base, delta_base, bias_base,
            db_base, stride_qm, stride_qd, stride_dom, stride_dod, stride_bm, stride_bn, stride_dbm,
            offs_n, offs_d, d_ok, b_end, Sq, Sq, Sk, qk_scale,
            True, CAUSAL, BIAS_KIND, DBIAS_KIND, HAS_KPM, EVEN_D, COMPUTE_F32, DOT_PRECISION, BLOCK_M)
        if DBIAS_KIND == 2:
            tl.store(db_base + offs_n, db_row.to(DBias.dtype.element_ty), mask=col_ok)

    tile_ok = col_ok[:, None] & d_ok[None, :]  # why: tile edges past Sk and D
    dk_ptrs = (DK + b.to(tl.int64) * stride_dkb + hk.to(tl.int64) * stride_dkh
               + offs_n.to(tl.int64)[:, None] * stride_dkn + offs_d[None, :] * stride_dkd)
    dv_ptrs = (DV + b.to(tl.int64) * stride_dvb + hk.to(tl.int64) * stride_dvh
               + offs_n.to(tl.int64)[:, None] * stride_dvn + offs_d[None, :] * stride_dvd)
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=tile_ok)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=tile_ok)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, bias_base, kpm_base,
                       stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                       offs_m, offs_d, row_ok, d_ok, lo, hi, Sq, Sk, qk_scale,
                       MASKED: tl.constexpr, CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr,
                       HAS_KPM: tl.constexpr, EVEN_D: tl.constexpr, COMPUTE_F32: tl.constexpr,
                       DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Accumulate dq (BLOCK_M, D_PAD) of one query block over the key blocks [lo, hi); masks as in the forward."""
    offs_n = lo + tl.arange(0, BLOCK_N)
    kT_ptrs = k_base + offs_n.to(tl.int64)[None, :] * stride_kn + offs_d[:, None] * stride_kd  # (D_PAD, BLOCK_N)
    vT_ptrs = v_base + offs_n.to(tl.int64)[None, :] * stride_vn + offs_d[:, None] * stride_vd  # (D_PAD, BLOCK_N)
    if BIAS_KIND == 1:
        b_ptrs = bias_base + offs_m.to(tl.int64)[:, None] * stride_bm + offs_n.to(tl.int64)[None, :] * stride_bn
    if BIAS_KIND == 2:
        b_ptrs = bias_base + offs_n.to(tl.int64) * stride_bn
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)                                   # (BLOCK_N,)
        col_ok = cols < Sk
        kT = _load_cols(kT_ptrs, col_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)      # (D_PAD, BLOCK_N)
        vT = _load_cols(vT_ptrs, col_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)      # (D_PAD, BLOCK_N)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale             # (BLOCK_M, BLOCK_N) log2
        if BIAS_KIND == 1:
            # why row_ok: the last query block runs past Sq, and the bias has no rows there
            if MASKED:
                bmask = row_ok[:, None] & col_ok[None, :]
            else:
                bmask = row_ok[:, None]
            s += tl.load(b_ptrs, mask=bmask, other=0.0).to(tl.float32) * _LOG2E
            b_ptrs += BLOCK_N * stride_bn
        if BIAS_KIND == 2:
            s += tl.load(b_ptrs, mask=col_ok, other=0.0).to(tl.float32)[None, :] * _LOG2E
            b_ptrs += BLOCK_N * stride_bn
        if MASKED:
            keep = col_ok[None, :]  # why: keys past Sk must get p = 0 (exp2 of a finite s - lse could even overflow)
            if CAUSAL:
                # why: bottom-right causal, query i sees key j only if j <= i + Sk - Sq
                keep = keep & (cols[None, :] <= offs_m[:, None] + (Sk - Sq))
            s = tl.where(keep, s, float("-inf"))
        if HAS_KPM:
            # why: padding keys got probability 0 in the forward
            real = tl.load(kpm_base + cols, mask=col_ok, other=0) != 0
            s = tl.where(real[None, :], s, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])                                      # (BLOCK_M, BLOCK_N) fp32
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)                       # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=DOT_PRECISION)   # (BLOCK_M, D_PAD)
        kT_ptrs += BLOCK_N * stride_kn
        vT_ptrs += BLOCK_N * stride_vn
    return dq


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, Bias, Kpm, DOut, Lse, Delta, DQ,
                        stride_qb, stride_qh, stride_qm, stride_qd,
                        stride_kb, stride_kh, stride_kn, stride_kd,
                        stride_vb, stride_vh, stride_vn, stride_vd,
                        stride_bb, stride_bh, stride_bm, stride_bn,
                        stride_kpmb,
                        stride_dob, stride_doh, stride_dom, stride_dod,
                        stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                        Hq, Sq, Sk, GROUP, qk_scale, scale,
                        SQ_BUCKET, SK_BUCKET,
                        HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, EVEN_D: tl.constexpr,
                        CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                        COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward dq. Grid (cdiv(Sq, BLOCK_M), Hq, B): one program per query block of one (batch, query head).

    Keeps Q, dO (BLOCK_M, D_PAD), lse and Delta of its rows in registers, streams the K/V blocks the rows can
    see (same split into unmasked and masked blocks as the forward) and accumulates dq += dS K in float32;
    writes dq * scale. It alone owns these rows: deterministic.
    """
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    hk = h // GROUP
    m_lo = start_m * BLOCK_M
    offs_m = m_lo + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    row_ok = offs_m < Sq
    d_ok = offs_d < HEAD_DIM

    q_ptrs = (Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
              + offs_m.to(tl.int64)[:, None] * stride_qm + offs_d[None, :] * stride_qd)
    do_ptrs = (DOut + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
               + offs_m.to(tl.int64)[:, None] * stride_dom + offs_d[None, :] * stride_dod)
    q = _load_rows(q_ptrs, row_ok, d_ok, True, EVEN_D, COMPUTE_F32)              # (BLOCK_M, D_PAD)
    do = _load_rows(do_ptrs, row_ok, d_ok, True, EVEN_D, COMPUTE_F32)            # (BLOCK_M, D_PAD)
    bh = b.to(tl.int64) * Hq + h
    # why other=+inf: rows past Sq get p = 0 (their dq is not stored, but must stay finite)
    lse2 = tl.load(Lse + bh * Sq + offs_m, mask=row_ok, other=float("inf")) * _LOG2E      # (BLOCK_M,)
    # why: a row with nothing to attend to has lse = -inf and only -inf scores; +inf gives p = 0, not NaN
    lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
    delta = tl.load(Delta + bh * Sq + offs_m, mask=row_ok, other=0.0)           # (BLOCK_M,)

    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    bias_base = Bias + b.to(tl.int64) * stride_bb + h.to(tl.int64) * stride_bh
    kpm_base = Kpm + b.to(tl.int64) * stride_kpmb
    if CAUSAL:
        last_row = tl.minimum(m_lo + BLOCK_M, Sq) - 1
        hi = tl.maximum(tl.minimum(Sk, last_row + (Sk - Sq) + 1), 0)
        full = tl.maximum(tl.minimum(Sk, m_lo + (Sk - Sq) + 1), 0)
    else:
        hi = Sk
        full = Sk
    n_full = (full // BLOCK_N) * BLOCK_N

    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, bias_base, kpm_base,
                            stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                            offs_m, offs_d, row_ok, d_ok, 0, n_full, Sq, Sk, qk_scale,
                            False, CAUSAL, BIAS_KIND, HAS_KPM, EVEN_D, COMPUTE_F32, DOT_PRECISION, BLOCK_N)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, bias_base, kpm_base,
                            stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                            offs_m, offs_d, row_ok, d_ok, n_full, hi, Sq, Sk, qk_scale,
                            True, CAUSAL, BIAS_KIND, HAS_KPM, EVEN_D, COMPUTE_F32, DOT_PRECISION, BLOCK_N)
    dq_ptrs = (DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh
               + offs_m.to(tl.int64)[:, None] * stride_dqm + offs_d[None, :] * stride_dqd)
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# Decode (flash-decoding)
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _decode_split_kernel(Q, K, V, Seqlens, Out, OPart, LPart,
                         stride_qb, stride_qh, stride_qd,
                         stride_kb, stride_kh, stride_kn, stride_kd,
                         stride_vb, stride_vh, stride_vn, stride_vd,
                         stride_ob, stride_oh, stride_od,
                         Hq, GROUP, Smax, split_len, num_splits, qk_scale,
                         SMAX_BUCKET,
                         HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, EVEN_D: tl.constexpr,
                         BLOCK_G: tl.constexpr, SINGLE_SPLIT: tl.constexpr, COMPUTE_F32: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Decode, one split. Grid (num_splits, Hkv, B): one program per (split of the cache, batch, KV head).

    The GROUP query heads that share KV head hk form the rows of one Q tile (BLOCK_G >= 16 rows for the tensor
    cores, the extra rows zero), so each K/V block is read once for the whole group. The program covers cache
    positions [split * split_len, min((split + 1) * split_len, cache_seqlens[b])) and never reads past the
    sequence's length (cache_seqlens[b] is clamped to Smax; a negative one reads nothing). With one split it
    writes the normalised output (B, Hq, D) directly; otherwise it writes its normalised partial output OPart
    (B, Hq, num_splits, D) float32 and partial log2-sum-exp LPart (B, Hq, num_splits) float32 (-inf for a split
    with no keys) for _decode_combine_kernel.
    SMAX_BUCKET is only part of the autotuning key.
    """
    split = tl.program_id(0)
    hk = tl.program_id(1)
    b = tl.program_id(2)
    # why the clamp to [0, Smax]: a bad cache_seqlens entry must not make the kernel read outside the cache
    seqlen = tl.minimum(tl.load(Seqlens + b), Smax)
    lo = split * split_len
    hi = tl.minimum(lo + split_len, seqlen)   # hi <= lo (negative length too): no key, output 0
    offs_g = tl.arange(0, BLOCK_G)                                               # (BLOCK_G,) query heads
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    g_ok = offs_g < GROUP
    d_ok = offs_d < HEAD_DIM
    heads = hk * GROUP + offs_g

    q_ptrs = (Q + b.to(tl.int64) * stride_qb + heads.to(tl.int64)[:, None] * stride_qh
              + offs_d[None, :] * stride_qd)
    q = _load_rows(q_ptrs, g_ok, d_ok, True, EVEN_D, COMPUTE_F32)                # (BLOCK_G, D_PAD)
    offs_n = lo + tl.arange(0, BLOCK_N)
    kT_ptrs = (K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
               + offs_n.to(tl.int64)[None, :] * stride_kn + offs_d[:, None] * stride_kd)   # (D_PAD, BLOCK_N)
    v_ptrs = (V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
              + offs_n.to(tl.int64)[:, None] * stride_vn + offs_d[None, :] * stride_vd)    # (BLOCK_N, D_PAD)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM_PAD], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        # why: positions past the split's end or cache_seqlens[b] may hold anything (NaN): never load them
        col_ok = cols < hi
        kT = _load_cols(kT_ptrs, col_ok, d_ok, True, EVEN_D, COMPUTE_F32)        # (D_PAD, BLOCK_N)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale             # (BLOCK_G, BLOCK_N) log2
        s = tl.where(col_ok[None, :], s, float("-inf"))                          # why: unloaded keys weigh 0
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # why: the zero rows past GROUP see finite scores, but a NaN-free shift is needed for all-masked rows
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])                                     # (BLOCK_G, BLOCK_N)
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _load_rows(v_ptrs, col_ok, d_ok, True, EVEN_D, COMPUTE_F32)          # (BLOCK_N, D_PAD)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)      # (BLOCK_G, D_PAD)
        m_i = m_new
        kT_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn

    empty = l_i == 0.0  # why: a split (or a sequence) with no keys: output 0 and weight 0, not 0/0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]                                                  # (BLOCK_G, D_PAD) fp32
    tile_ok = g_ok[:, None] & d_ok[None, :]  # why: padding rows past GROUP and the head-dim padding
    if SINGLE_SPLIT:
        o_ptrs = (Out + b.to(tl.int64) * stride_ob + heads.to(tl.int64)[:, None] * stride_oh
                  + offs_d[None, :] * stride_od)
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=tile_ok)
    else:
        row = (b.to(tl.int64) * Hq + heads) * num_splits + split                 # (BLOCK_G,) into (B, Hq, splits)
        tl.store(OPart + row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=tile_ok)
        tl.store(LPart + row, tl.where(empty, float("-inf"), m_i + tl.math.log2(l_safe)), mask=g_ok)


@triton.jit
def _decode_combine_kernel(OPart, LPart, Out, stride_ob, stride_oh, stride_od, Hq, num_splits,
                           HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_S: tl.constexpr):
    """Decode, merge. Grid (Hq, B): one program per (batch, query head) merges its num_splits partial outputs
    with weights 2^(lse_s - max lse) (log-sum-exp in log2 units) and writes out (B, Hq, D) in Out's dtype; a
    sequence with no keys at all gives 0."""
    h = tl.program_id(0)
    b = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)                                               # (BLOCK_S,) splits
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    s_ok = offs_s < num_splits
    d_ok = offs_d < HEAD_DIM
    row = (b.to(tl.int64) * Hq + h) * num_splits + offs_s
    lse = tl.load(LPart + row, mask=s_ok, other=float("-inf"))                  # (BLOCK_S,) why: padding splits
    o = tl.load(OPart + row[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None] & d_ok[None, :],
                other=0.0)                                                       # (BLOCK_S, D_PAD)
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # why: no split had keys; every weight is then 0, not NaN
    w = tl.math.exp2(lse - m)                                                    # (BLOCK_S,)
    den = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(den == 0.0, 1.0, den)            # (D_PAD,)
    tl.store(Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_d * stride_od,
             out.to(Out.dtype.element_ty), mask=d_ok)


# ----------------------------------------------------------------------------------------------------------
# Autotuning (GPU only; the interpreter launches the raw kernels with _INTERP_BLOCK)
# ----------------------------------------------------------------------------------------------------------

def _configs(shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


# (BLOCK_M, BLOCK_N, num_warps, num_stages): the shapes FlashAttention-2 and the Triton tutorial use on
# A100/H100 for head dims 16..256; _prune keeps those that fit. BLOCK_M is the query block, BLOCK_N the key block.
_FWD_CONFIGS = _configs([(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3),
                         (64, 64, 4, 4), (128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)])
_BWD_CONFIGS = _configs([(64, 128, 8, 2), (64, 64, 4, 2), (32, 128, 8, 2), (32, 64, 4, 3), (64, 64, 8, 3),
                         (64, 64, 8, 2), (32, 32, 4, 2), (16, 64, 4, 2)])
_SMEM_BUDGET = 200 * 1024  # bytes of shared memory a config may plan for (an H100/H200 SM has 227 KB)


def _prune(configs, named_args, *, backward=False, **kwargs):
    """Keep the configs whose tiles fit at this head dim and dtype, so tuning does not compile hopeless ones:
    fp32 accumulators <= 128 registers a thread (forward: acc (BLOCK_M, D); backward: dk + dv (BLOCK_N, D) or
    dq (BLOCK_M, D)), and the pipelined K/V (forward) or Q/dO (backward) stages within _SMEM_BUDGET."""
    d = kwargs["HEAD_DIM_PAD"]
    q = named_args.get("Q")
    esize = q.element_size() if q is not None else 2
    kept = []
    for c in configs:
        bm, bn, w, st = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages
        if backward:
            regs = 2 * max(bm, bn) * d <= 128 * 32 * w
            smem = (2 * bn * d + st * 2 * bm * d) * esize
        else:
            regs = bm * d <= 128 * 32 * w
            smem = (bm * d + st * 2 * bn * d) * esize
        if regs and smem <= _SMEM_BUDGET:
            kept.append(c)
    return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))]


_ATTN_KEY = ["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM_PAD", "CAUSAL", "BIAS_KIND", "HAS_KPM"]
_attn_fwd_tuned = triton.autotune(_FWD_CONFIGS, key=_ATTN_KEY,
                                  prune_configs_by={"early_config_prune": _prune})(_attn_fwd_kernel)
_BWD_PRUNE = {"early_config_prune": functools.partial(_prune, backward=True)}
_attn_bwd_dq_tuned = triton.autotune(_BWD_CONFIGS, key=_ATTN_KEY, prune_configs_by=_BWD_PRUNE)(_attn_bwd_dq_kernel)
_attn_bwd_dkdv_tuned = triton.autotune(_BWD_CONFIGS, key=_ATTN_KEY + ["DBIAS_KIND"],
                                       prune_configs_by=_BWD_PRUNE)(_attn_bwd_dkdv_kernel)
_decode_split_tuned = triton.autotune(
    [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)
     for n, w, s in [(64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 3), (32, 4, 4)]],
    key=["SMAX_BUCKET", "HEAD_DIM_PAD", "BLOCK_G", "SINGLE_SPLIT"])(_decode_split_kernel)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------

def _head_dim_pad(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _bucket(n: int) -> int:
    """A power of two >= n, so that autotuning runs once per length bucket, not once per length."""
    return triton.next_power_of_2(max(n, 1))


def _device_guard(t: Tensor):
    """Launch on t's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _precision(dtype: torch.dtype) -> Tuple[bool, str]:
    """(COMPUTE_F32, DOT_PRECISION): fp32 tiles under the interpreter or for fp32 inputs, with exact fp32 dots."""
    f32 = _INTERPRETED or dtype == torch.float32
    return f32, ("ieee" if f32 else "tf32")


def _unsupported_common(q: Tensor, tensors, d: int) -> Optional[str]:
    if q.dtype not in _DTYPES:
        return f"dtype {str(q.dtype).replace('torch.', '')} (the Triton kernels take float16, bfloat16, float32)"
    if d > MAX_HEAD_DIM:
        return f"head dim {d} > {MAX_HEAD_DIM}"
    if q.device.type == "cuda":
        if not all(t.is_cuda for t in tensors):
            return "all tensors must be on the GPU"
    elif not (_INTERPRETED and q.device.type == "cpu"):
        return f"device {q.device.type} (needs cuda, or cpu under TRITON_INTERPRET=1)"
    return None


def unsupported_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                          key_padding_mask: Optional[Tensor], causal: bool) -> Optional[str]:
    """None if the Triton kernels run this attention call, else a short reason. Cheap: shapes and dtypes only."""
    why = _unsupported_common(q, [t for t in (k, v, bias, key_padding_mask) if t is not None], q.shape[-1])
    if why is not None:
        return why
    if q.shape[0] > _MAX_GRID_YZ or q.shape[1] > _MAX_GRID_YZ:
        return f"batch or heads > {_MAX_GRID_YZ}"
    if bias is not None and (bias.dim() != 4 or not bias.is_floating_point()):
        return "bias must be a 4-D float tensor"
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        return "key_padding_mask must be bool"
    return None


def _bias_args(bias: Optional[Tensor], shape, dummy: Tensor):
    """(tensor, 4 strides, BIAS_KIND): 0 none, 1 a full (Sq, Sk) tile per (b, h), 2 one key vector per (b, h)
    (stride 0 along Sq: the common (B, 1, 1, Sk) / ALiBi-per-key case, loaded as a vector)."""
    if bias is None:
        return dummy, (0, 0, 0, 0), 0
    e = bias.expand(shape)  # broadcast dims get stride 0
    return e, e.stride(), (2 if e.stride(2) == 0 else 1)


def _kpm_args(key_padding_mask: Optional[Tensor], dummy: Tensor):
    if key_padding_mask is None:
        return dummy, 0, False
    kpm = key_padding_mask.contiguous().view(torch.uint8)  # (B, Sk), 1 = real
    return kpm, kpm.stride(0), True


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], key_padding_mask: Optional[Tensor],
                  causal: bool, scale: float) -> Tuple[Tensor, Tensor]:
    """(out (B, Hq, Sq, D) in q's dtype, contiguous; lse (B, Hq, Sq) float32). See the module docstring."""
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    out = torch.empty((b, hq, sq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if sk == 0:  # nothing to attend to
        return out.zero_(), lse.fill_(float("-inf"))
    bias_t, bs, bias_kind = _bias_args(bias, (b, hq, sq, sk), q)
    kpm, kpm_stride, has_kpm = _kpm_args(key_padding_mask, q)
    compute_f32, precision = _precision(q.dtype)
    d_pad = _head_dim_pad(d)
    args = (q, k, v, bias_t, kpm, out, lse, *q.stride(), *k.stride(), *v.stride(), *bs, kpm_stride,
            *out.stride(), hq, sq, sk, hq // hkv, scale * LOG2E, _bucket(sq), _bucket(sk))
    meta = dict(HEAD_DIM=d, HEAD_DIM_PAD=d_pad, EVEN_D=d == d_pad, CAUSAL=bool(causal), BIAS_KIND=bias_kind,
                HAS_KPM=has_kpm, COMPUTE_F32=compute_f32, DOT_PRECISION=precision)
    with _device_guard(q):
        if _INTERPRETED:
            grid = (triton.cdiv(sq, _INTERP_BLOCK), hq, b)
            _attn_fwd_kernel[grid](*args, **meta, BLOCK_M=_INTERP_BLOCK, BLOCK_N=_INTERP_BLOCK)
        else:
            _attn_fwd_tuned[lambda m: (triton.cdiv(sq, m["BLOCK_M"]), hq, b)](*args, **meta)
    return out, lse


def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, bias: Optional[Tensor],
                  key_padding_mask: Optional[Tensor], causal: bool, scale: float, bias_requires_grad: bool
                  ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """(dq, dk, dv, dbias or None): contiguous, in the inputs' dtypes and shapes; dbias in bias's shape and dtype.

    Three launches: Delta = rowsum(out * dout); dk/dv (one program per key block and KV head, looping over the
    GQA group); dq (one program per query block). dbias: the dk/dv kernel writes dS into a float32 buffer
    (B, Hq, Sq, Sk), or (B, Hq, 1, Sk) summed over the queries in registers when bias is constant along Sq;
    torch then sums it over bias's other broadcast dims (deterministic). A bias with no broadcast dim gets its
    gradient written directly, in its own dtype. The buffer is O(Sq * Sk) only when bias itself varies along Sq.
    """
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    dq = torch.empty((b, hq, sq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, hkv, sk, d), dtype=k.dtype, device=k.device)
    dv = torch.empty((b, hkv, sk, d), dtype=v.dtype, device=v.device)
    want_dbias = bias is not None and bias_requires_grad
    if q.numel() == 0 or k.numel() == 0:  # no score at all: every gradient is 0
        dbias = torch.zeros(bias.shape, dtype=bias.dtype, device=bias.device) if want_dbias else None
        return dq.zero_(), dk.zero_(), dv.zero_(), dbias

    full = (b, hq, sq, sk)
    bias_t, bs, bias_kind = _bias_args(bias, full, q)
    kpm, kpm_stride, has_kpm = _kpm_args(key_padding_mask, q)
    dbias_kind, db_buf = 0, q
    if want_dbias:
        if bias.shape[2] == 1 and sq > 1:
            dbias_kind, db_buf = 2, torch.empty((b, hq, 1, sk), dtype=torch.float32, device=q.device)
        else:
            direct = tuple(bias.shape) == full
            dbias_kind = 1
            db_buf = torch.zeros(full, dtype=bias.dtype if direct else torch.float32, device=q.device)
    db_strides = db_buf.stride()[:3] if dbias_kind else (0, 0, 0)

    lse = lse.contiguous()
    dout = dout.to(q.dtype)  # tl.dot needs both operands in one dtype
    delta = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
    compute_f32, precision = _precision(q.dtype)
    d_pad = _head_dim_pad(d)
    even_d = d == d_pad
    qk_scale = scale * LOG2E
    common = dict(HEAD_DIM=d, HEAD_DIM_PAD=d_pad, EVEN_D=even_d, CAUSAL=bool(causal), BIAS_KIND=bias_kind,
                  HAS_KPM=has_kpm, COMPUTE_F32=compute_f32, DOT_PRECISION=precision)
    dkdv_args = (q, k, v, bias_t, kpm, dout, lse, delta, dk, dv, db_buf, *q.stride(), *k.stride(), *v.stride(),
                 *bs, kpm_stride, *dout.stride(), *dk.stride(), *dv.stride(), *db_strides,
                 hq, sq, sk, hq // hkv, qk_scale, scale, _bucket(sq), _bucket(sk))
    dq_args = (q, k, v, bias_t, kpm, dout, lse, delta, dq, *q.stride(), *k.stride(), *v.stride(), *bs,
               kpm_stride, *dout.stride(), *dq.stride(), hq, sq, sk, hq // hkv, qk_scale, scale,
               _bucket(sq), _bucket(sk))
    with _device_guard(q):
        blk = _INTERP_BLOCK if _INTERPRETED else min(128, 8192 // d_pad)  # <= 64 fp32 values a thread per tile
        _attn_bwd_delta_kernel[(triton.cdiv(sq, blk), hq, b)](
            out, dout, delta, *out.stride(), *dout.stride(), hq, sq, HEAD_DIM=d, HEAD_DIM_PAD=d_pad, BLOCK_M=blk)
        if _INTERPRETED:
            fixed = dict(BLOCK_M=_INTERP_BLOCK, BLOCK_N=_INTERP_BLOCK)
            _attn_bwd_dkdv_kernel[(triton.cdiv(sk, _INTERP_BLOCK), hkv, b)](*dkdv_args, **common,
                                                                             DBIAS_KIND=dbias_kind, **fixed)
            _attn_bwd_dq_kernel[(triton.cdiv(sq, _INTERP_BLOCK), hq, b)](*dq_args, **common, **fixed)
        else:
            _attn_bwd_dkdv_tuned[lambda m: (triton.cdiv(sk, m["BLOCK_N"]), hkv, b)](*dkdv_args, **common,
                                                                                     DBIAS_KIND=dbias_kind)
            _attn_bwd_dq_tuned[lambda m: (triton.cdiv(sq, m["BLOCK_M"]), hq, b)](*dq_args, **common)

    dbias = None
    if want_dbias:
        dbias = _sum_to(db_buf, bias.shape).to(bias.dtype)
    return dq, dk, dv, dbias


def _sum_to(t: Tensor, shape) -> Tensor:
    """Sum a (B, Hq, Sq or 1, Sk) gradient over the dims where shape has 1 (a no-op when shapes match)."""
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


# ----------------------------------------------------------------------------------------------------------
# Decode launchers
# ----------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    """Streaming multiprocessors of GPU ``index``; asked once per device, on first use (never at import)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


# Under the interpreter: pretend a 4-SM chip and allow 16-key splits, so that small tests take the split path.
_INTERP_SMS, _INTERP_MIN_SPLIT = 4, 16
_MIN_SPLIT, _MAX_SPLITS = 256, 128


def _decode_num_splits(b: int, hkv: int, smax: int, device: torch.device) -> int:
    """Key splits per (batch, KV head): enough programs for ~2 waves of the chip, each split >= _MIN_SPLIT keys
    (below that the combine costs more than the parallelism gives)."""
    if _INTERPRETED:
        sms, min_split = _INTERP_SMS, _INTERP_MIN_SPLIT
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
        sms, min_split = _sm_count(index), _MIN_SPLIT
    want = triton.cdiv(2 * sms, max(b * hkv, 1))
    return max(1, min(want, triton.cdiv(smax, min_split), _MAX_SPLITS))


def unsupported_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor) -> Optional[str]:
    """None if the Triton decode kernels run this call, else a short reason. Cheap: shapes and dtypes only."""
    why = _unsupported_common(q, (k_cache, v_cache, cache_seqlens), q.shape[-1])
    if why is not None:
        return why
    if q.shape[0] > _MAX_GRID_YZ or k_cache.shape[1] > _MAX_GRID_YZ:
        return f"batch or heads > {_MAX_GRID_YZ}"
    return None


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, scale: float,
                     num_splits: Optional[int] = None) -> Tensor:
    """out (B, Hq, D) in q's dtype: q (B, Hq, D) against the first cache_seqlens[b] positions of the caches
    (B, Hkv, Smax, D). num_splits: key splits per (batch, KV head); default from the SM count (flash-decoding).
    With more than one split, partial results go through a float32 (B, Hq, splits, D) buffer and a combine."""
    b, hq, d = q.shape
    hkv, smax = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty((b, hq, d), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if smax == 0:
        return out.zero_()
    seqlens = cache_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    splits = num_splits if num_splits is not None else _decode_num_splits(b, hkv, smax, q.device)
    splits = max(1, min(int(splits), smax))
    split_len = triton.cdiv(triton.cdiv(smax, splits), 16) * 16   # a multiple of 16 keys, for aligned loads
    splits = triton.cdiv(smax, split_len)
    single = splits == 1
    group = hq // hkv
    if single:
        o_part, l_part = out, out  # unused
    else:
        o_part = torch.empty((b, hq, splits, d), dtype=torch.float32, device=q.device)
        l_part = torch.empty((b, hq, splits), dtype=torch.float32, device=q.device)
    compute_f32, precision = _precision(q.dtype)
    d_pad = _head_dim_pad(d)
    args = (q, k_cache, v_cache, seqlens, out, o_part, l_part, *q.stride(), *k_cache.stride(), *v_cache.stride(),
            *out.stride(), hq, group, smax, split_len, splits, scale * LOG2E, _bucket(smax))
    meta = dict(HEAD_DIM=d, HEAD_DIM_PAD=d_pad, EVEN_D=d == d_pad, BLOCK_G=max(16, triton.next_power_of_2(group)),
                SINGLE_SPLIT=single, COMPUTE_F32=compute_f32, DOT_PRECISION=precision)
    grid = (splits, hkv, b)
    with _device_guard(q):
        if _INTERPRETED:
            _decode_split_kernel[grid](*args, **meta, BLOCK_N=_INTERP_BLOCK)
        else:
            _decode_split_tuned[grid](*args, **meta)
        if not single:
            _decode_combine_kernel[(hq, b)](o_part, l_part, out, *out.stride(), hq, splits, HEAD_DIM=d,
                                            HEAD_DIM_PAD=d_pad, BLOCK_S=triton.next_power_of_2(splits))
    return out
