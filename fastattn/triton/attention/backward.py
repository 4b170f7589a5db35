"""Attention backward (FlashAttention-2 recomputation, deterministic, two launches): the dQ pass, which also
writes Delta = rowsum(out * dout), then the dK/dV pass; and their launcher. See the package docstring."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import configs
from .common import _bias_args, _bucket, _device_guard, _dropout_args, _head_meta, _kpm_args
from .tiles import (LOG2E, _LOG2E, _bh_base, _bias_ptrs, _causal_visible, _col_tile, _dropout_keep, _key_range,
                    _load_cols, _load_key_block, _load_lse2, _load_rows, _masked_scores, _query_program,
                    _row_tile, _store_tile)


# ----------------------------------------------------------------------------------------------------------
# dK, dV
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, real, col_ok, offs_n, offs_d, d_ok, dv_ok, q_tile, do_tile,
                         Q, DOut, Lse, Delta, Bias, DBias, b, hk,
                         stride_qb, stride_qh, stride_qm, stride_dob, stride_doh, stride_dom,
                         stride_bb, stride_bh, stride_bm, stride_bn, stride_dbb, stride_dbh, stride_dbm,
                         lo, n_lo, hi_lo, n_hi, Hq, Sq, Sk, GROUP, qk_scale,
                         seed, rng_offset, drop_threshold, inv_keep, DROPOUT: tl.constexpr,
                         MASKED: tl.constexpr, DB_SLOT: tl.constexpr, CAUSAL: tl.constexpr,
                         BIAS_KIND: tl.constexpr, DBIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                         EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, COMPUTE_F32: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Accumulate dk, dv (BLOCK_N, D_PAD) of one key block over n_lo query blocks from row lo and n_hi query
    blocks from row hi_lo, for each of the GROUP query heads of KV head hk, on transposed tiles (keys along rows).

    One flat loop over (query head, query block) pairs, not a loop over heads around a loop over blocks: the
    nested form kept more values live across the two loop levels and spilled the dk/dv accumulators (ptxas on
    sm_90), and the flat loop also lets the load pipeline run on across heads. MASKED blocks cross the causal
    diagonal or the end of the queries. The bias gradient goes out tile by tile (DBIAS_KIND 1), or summed over
    this loop's query blocks of one head into slot DB_SLOT of a (B, Hq, 2, Sk) buffer (DBIAS_KIND 2).
    """
    n_per = n_lo + n_hi
    offs_mb = tl.arange(0, BLOCK_M)                                              # (BLOCK_M,) rows in the block
    db_row = tl.zeros([BLOCK_N], tl.float32)                                     # (BLOCK_N,) DBIAS_KIND 2
    key0 = tl.program_id(0) * BLOCK_N                                            # this program's key block
    for t in range(0, GROUP * n_per):
        g = t // n_per
        i = t - g * n_per
        if MASKED:
            start_m = tl.where(i < n_lo, lo + i * BLOCK_M, hi_lo + (i - n_lo) * BLOCK_M)
        else:
            start_m = lo + i * BLOCK_M
        h = hk * GROUP + g
        bh = b.to(tl.int64) * Hq + h
        rows = start_m + offs_mb                                                 # (BLOCK_M,)
        row_ok = rows < Sq
        q_ptrs = _bh_base(Q, b, h, stride_qb, stride_qh) + start_m.to(tl.int64) * stride_qm + q_tile
        do_ptrs = _bh_base(DOut, b, h, stride_dob, stride_doh) + start_m.to(tl.int64) * stride_dom + do_tile
        q = _load_rows(q_ptrs, row_ok, d_ok, CHECK_ROWS=MASKED, EVEN_D=EVEN_D, COMPUTE_F32=COMPUTE_F32)
        do = _load_rows(do_ptrs, row_ok, dv_ok, CHECK_ROWS=MASKED, EVEN_D=EVEN_DV, COMPUTE_F32=COMPUTE_F32)
        lse2 = _load_lse2(Lse + bh * Sq + rows, row_ok, CHECK_ROWS=MASKED)      # (BLOCK_M,)
        if MASKED:
            delta = tl.load(Delta + bh * Sq + rows, mask=row_ok, other=0.0)      # (BLOCK_M,)
        else:
            delta = tl.load(Delta + bh * Sq + rows)
        sT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale     # (BLOCK_N, BLOCK_M) log2
        if BIAS_KIND == 1:
            bT_ptrs = (_bh_base(Bias, b, h, stride_bb, stride_bh)
                       + rows.to(tl.int64)[None, :] * stride_bm + offs_n.to(tl.int64)[:, None] * stride_bn)
            # why: bias rows past Sq and columns past Sk do not exist
            sT += tl.load(bT_ptrs, mask=row_ok[None, :] & col_ok[:, None], other=0.0).to(tl.float32) * _LOG2E
        if BIAS_KIND == 2:
            b_ptrs = _bh_base(Bias, b, h, stride_bb, stride_bh) + offs_n.to(tl.int64) * stride_bn
            sT += tl.load(b_ptrs, mask=col_ok, other=0.0).to(tl.float32)[:, None] * _LOG2E
        if MASKED and CAUSAL:
            sT = tl.where(_causal_visible(rows[None, :], offs_n[:, None], Sq, Sk), sT, float("-inf"))
        if HAS_KPM:
            # why: padding keys got probability 0 in the forward and get no gradient
            sT = tl.where(real[:, None], sT, float("-inf"))
        pT = tl.math.exp2(sT - lse2[None, :])                                    # (BLOCK_N, BLOCK_M) fp32
        if DROPOUT:
            # the forward's mask, regenerated: Z = keep / (1 - p) scales P in P.V, hence dV and dP
            keepT = _dropout_keep(seed, rng_offset, bh, rows, key0, drop_threshold, BLOCK_N=BLOCK_N,
                                  KEYS_FIRST=True)
            dv = tl.dot(tl.where(keepT, pT * inv_keep, 0.0).to(do.dtype), do, dv, input_precision=DOT_PRECISION)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            dpT = tl.where(keepT, dpT * inv_keep, 0.0)                           # (BLOCK_N, BLOCK_M)
        else:
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # (BLOCK_N, D_PAD)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)         # (BLOCK_N, BLOCK_M)
        dsT = pT * (dpT - delta[None, :])                                        # d loss / d (biased score)
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)      # (BLOCK_N, D_PAD), times scale later
        if DBIAS_KIND == 1:
            dbT_ptrs = (_bh_base(DBias, b, h, stride_dbb, stride_dbh)
                        + rows.to(tl.int64)[None, :] * stride_dbm + offs_n.to(tl.int64)[:, None])
            # why: the gradient buffer has no rows past Sq and no columns past Sk
            tl.store(dbT_ptrs, dsT.to(DBias.dtype.element_ty), mask=row_ok[None, :] & col_ok[:, None])
        if DBIAS_KIND == 2:
            db_row += tl.sum(dsT, 1)                                             # (BLOCK_N,)
            # why: the sum of one head ends at its last block of this loop; written once, so no read-back
            last = i == n_per - 1
            db_ptrs = _bh_base(DBias, b, h, stride_dbb, stride_dbh) + DB_SLOT * stride_dbm + offs_n
            tl.store(db_ptrs, db_row, mask=col_ok & last)
            db_row = tl.where(last, 0.0, db_row)
    return dk, dv


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
                          seed, rng_offset, drop_threshold, inv_keep,
                          HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                          EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
                          CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, DBIAS_KIND: tl.constexpr,
                          HAS_KPM: tl.constexpr, COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward dk, dv. Grid (cdiv(Sk, BLOCK_N), Hkv, B): one program per key block of one (batch, KV head).

    The program keeps K, V (BLOCK_N, D_PAD) on chip and, for each of the GROUP query heads sharing this KV head,
    streams the query blocks that can see its keys, recomputing P^T = exp2(s^T - lse) and accumulating
    dv += P^T dO and dk += dS^T Q in float32. It alone owns these dk/dv rows: the GQA group sum is a loop, not
    an atomic, so the result is deterministic. Query blocks [lo, a_end) cross the causal diagonal and
    [b_end, Sq) is the partial last block: these run masked, in one loop; [a_end, b_end) run unmasked in
    another. Rows before lo see none of these keys. Each loop covers all GROUP heads (_attn_bwd_dkdv_inner).
    The bias gradient dS goes to DBias (float buffer (B, Hq, Sq, Sk), or (B, Hq, 2, Sk) summed over the
    queries in registers when the bias is constant along Sq; contiguous along Sk).
    """
    start_n = tl.program_id(0)
    hk = tl.program_id(1)
    b = tl.program_id(2)
    n_lo = start_n * BLOCK_N
    offs_n = n_lo + tl.arange(0, BLOCK_N)                                        # (BLOCK_N,)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    offs_mb = tl.arange(0, BLOCK_M)
    col_ok = offs_n < Sk
    d_ok = offs_d < HEAD_DIM                                                     # q, k lanes
    dv_ok = offs_d < HEAD_DIM_V                                                  # v, out lanes

    k_ptrs = _row_tile(_bh_base(K, b, hk, stride_kb, stride_kh), offs_n, offs_d, stride_kn, stride_kd)
    v_ptrs = _row_tile(_bh_base(V, b, hk, stride_vb, stride_vh), offs_n, offs_d, stride_vn, stride_vd)
    k = _load_rows(k_ptrs, col_ok, d_ok, CHECK_ROWS=True, EVEN_D=EVEN_D, COMPUTE_F32=COMPUTE_F32)  # (BLOCK_N, D_PAD)
    v = _load_rows(v_ptrs, col_ok, dv_ok, CHECK_ROWS=True, EVEN_D=EVEN_DV, COMPUTE_F32=COMPUTE_F32)  # (BLOCK_N, D_PAD)
    if HAS_KPM:
        # why col_ok: past Sk there is no mask entry; those keys count as padding
        real = tl.load(Kpm + b.to(tl.int64) * stride_kpmb + offs_n, mask=col_ok, other=0) != 0   # (BLOCK_N,)
    else:
        real = col_ok
    # offsets of a query block's tile from its first row (loop-invariant)
    q_tile = _row_tile(0, offs_mb, offs_d, stride_qm, stride_qd)                 # (BLOCK_M, D_PAD)
    do_tile = _row_tile(0, offs_mb, offs_d, stride_dom, stride_dod)              # (BLOCK_M, D_PAD)

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
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, real, col_ok, offs_n, offs_d, d_ok, dv_ok, q_tile, do_tile, Q, DOut, Lse, Delta, Bias, DBias,
        b, hk,
        stride_qb, stride_qh, stride_qm, stride_dob, stride_doh, stride_dom,
        stride_bb, stride_bh, stride_bm, stride_bn, stride_dbb, stride_dbh, stride_dbm,
        a_end, (b_end - a_end) // BLOCK_M, 0, 0, Hq, Sq, Sk, GROUP, qk_scale,
        seed, rng_offset, drop_threshold, inv_keep, DROPOUT=DROPOUT,
        MASKED=False, DB_SLOT=0, CAUSAL=CAUSAL, BIAS_KIND=BIAS_KIND, DBIAS_KIND=DBIAS_KIND, HAS_KPM=HAS_KPM,
        EVEN_D=EVEN_D, EVEN_DV=EVEN_DV, COMPUTE_F32=COMPUTE_F32, DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N)
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, real, col_ok, offs_n, offs_d, d_ok, dv_ok, q_tile, do_tile, Q, DOut, Lse, Delta, Bias, DBias,
        b, hk,
        stride_qb, stride_qh, stride_qm, stride_dob, stride_doh, stride_dom,
        stride_bb, stride_bh, stride_bm, stride_bn, stride_dbb, stride_dbh, stride_dbm,
        lo, tl.cdiv(a_end - lo, BLOCK_M), b_end, tl.cdiv(Sq - b_end, BLOCK_M), Hq, Sq, Sk, GROUP, qk_scale,
        seed, rng_offset, drop_threshold, inv_keep, DROPOUT=DROPOUT,
        MASKED=True, DB_SLOT=1, CAUSAL=CAUSAL, BIAS_KIND=BIAS_KIND, DBIAS_KIND=DBIAS_KIND, HAS_KPM=HAS_KPM,
        EVEN_D=EVEN_D, EVEN_DV=EVEN_DV, COMPUTE_F32=COMPUTE_F32, DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N)

    dk_ptrs = _row_tile(_bh_base(DK, b, hk, stride_dkb, stride_dkh), offs_n, offs_d, stride_dkn, stride_dkd)
    dv_ptrs = _row_tile(_bh_base(DV, b, hk, stride_dvb, stride_dvh), offs_n, offs_d, stride_dvn, stride_dvd)
    _store_tile(dk_ptrs, dk * scale, col_ok, d_ok)
    _store_tile(dv_ptrs, dv, col_ok, dv_ok)


# ----------------------------------------------------------------------------------------------------------
# dQ (and Delta)
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, bias_base, kpm_base,
                       stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                       offs_m, offs_d, row_ok, d_ok, dv_ok, lo, hi, Sq, Sk, qk_scale,
                       bh, seed, rng_offset, drop_threshold, inv_keep, DROPOUT: tl.constexpr,
                       MASKED: tl.constexpr, CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr,
                       HAS_KPM: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
                       COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Accumulate dq (BLOCK_M, D_PAD) of one query block over the key blocks [lo, hi); masks as in the forward."""
    offs_n = lo + tl.arange(0, BLOCK_N)
    kT_ptrs = _col_tile(k_base, offs_n, offs_d, stride_kn, stride_kd)            # (D_PAD, BLOCK_N)
    vT_ptrs = _col_tile(v_base, offs_n, offs_d, stride_vn, stride_vd)            # (D_PAD, BLOCK_N)
    b_ptrs = _bias_ptrs(bias_base, offs_m, offs_n, stride_bm, stride_bn, BIAS_KIND=BIAS_KIND)
    for start_n in range(lo, hi, BLOCK_N):
        kT, cols, col_ok = _load_key_block(kT_ptrs, start_n, d_ok, Sk, MASKED=MASKED, EVEN_D=EVEN_D,
                                           COMPUTE_F32=COMPUTE_F32, BLOCK_N=BLOCK_N)    # (D_PAD, BLOCK_N)
        vT = _load_cols(vT_ptrs, col_ok, dv_ok, CHECK_COLS=MASKED, EVEN_D=EVEN_DV, COMPUTE_F32=COMPUTE_F32)
        s = _masked_scores(q, kT, b_ptrs, kpm_base, cols, col_ok, offs_m, row_ok, Sq, Sk, qk_scale,
                           MASKED=MASKED, CAUSAL=CAUSAL, BIAS_KIND=BIAS_KIND, HAS_KPM=HAS_KPM,
                           DOT_PRECISION=DOT_PRECISION)                         # (BLOCK_M, BLOCK_N) log2
        if BIAS_KIND != 0:
            b_ptrs += BLOCK_N * stride_bn
        p = tl.math.exp2(s - lse2[:, None])                                      # (BLOCK_M, BLOCK_N) fp32
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)                       # (BLOCK_M, BLOCK_N)
        if DROPOUT:  # d loss / d P = Z * d loss / d (dropped P), with the forward's mask regenerated
            keep = _dropout_keep(seed, rng_offset, bh, offs_m, start_n, drop_threshold, BLOCK_N=BLOCK_N,
                                 KEYS_FIRST=False)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=DOT_PRECISION)   # (BLOCK_M, D_PAD)
        kT_ptrs += BLOCK_N * stride_kn
        vT_ptrs += BLOCK_N * stride_vn
    return dq


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, Bias, Kpm, Out, DOut, Lse, Delta, DQ,
                        stride_qb, stride_qh, stride_qm, stride_qd,
                        stride_kb, stride_kh, stride_kn, stride_kd,
                        stride_vb, stride_vh, stride_vn, stride_vd,
                        stride_bb, stride_bh, stride_bm, stride_bn,
                        stride_kpmb,
                        stride_ob, stride_oh, stride_om, stride_od,
                        stride_dob, stride_doh, stride_dom, stride_dod,
                        stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                        Hq, Sq, Sk, GROUP, qk_scale, scale,
                        SQ_BUCKET, SK_BUCKET,
                        seed, rng_offset, drop_threshold, inv_keep,
                        HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                        EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
                        CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                        COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward dq, and Delta for the dk/dv kernel. Grid (cdiv(Sq, BLOCK_M), Hq, B): one program per query
    block of one (batch, query head); launched first.

    Computes Delta = rowsum(out * dout) (float32 (B, Hq, Sq): the row sum of P * dP in every dS = P * (dP -
    Delta)) from one read of its out rows and writes it for _attn_bwd_dkdv_kernel, which runs next. Keeps Q, dO
    (BLOCK_M, D_PAD), lse and Delta of its rows on chip, streams the K/V blocks the rows can see (same split
    into unmasked and masked blocks as the forward) and accumulates dq += dS K in float32; writes dq * scale.
    It alone owns these rows: deterministic.
    """
    m_lo, offs_m, h, b, hk = _query_program(GROUP, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M)  # offs_m (BLOCK_M,)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    row_ok = offs_m < Sq
    d_ok = offs_d < HEAD_DIM                                                     # q, k lanes
    dv_ok = offs_d < HEAD_DIM_V                                                  # v, out lanes

    q_ptrs = _row_tile(_bh_base(Q, b, h, stride_qb, stride_qh), offs_m, offs_d, stride_qm, stride_qd)
    do_ptrs = _row_tile(_bh_base(DOut, b, h, stride_dob, stride_doh), offs_m, offs_d, stride_dom, stride_dod)
    q = _load_rows(q_ptrs, row_ok, d_ok, CHECK_ROWS=True, EVEN_D=EVEN_D, COMPUTE_F32=COMPUTE_F32)     # (BLOCK_M, D_PAD)
    do = _load_rows(do_ptrs, row_ok, dv_ok, CHECK_ROWS=True, EVEN_D=EVEN_DV,
                    COMPUTE_F32=COMPUTE_F32)                                     # (BLOCK_M, D_PAD)
    bh = b.to(tl.int64) * Hq + h
    lse2 = _load_lse2(Lse + bh * Sq + offs_m, row_ok, CHECK_ROWS=True)          # (BLOCK_M,)
    o_ptrs = _row_tile(_bh_base(Out, b, h, stride_ob, stride_oh), offs_m, offs_d, stride_om, stride_od)
    o = _load_rows(o_ptrs, row_ok, dv_ok, CHECK_ROWS=True, EVEN_D=EVEN_DV, COMPUTE_F32=COMPUTE_F32)   # (BLOCK_M, D_PAD)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)                     # (BLOCK_M,) fp32
    tl.store(Delta + bh * Sq + offs_m, delta, mask=row_ok)

    k_base = _bh_base(K, b, hk, stride_kb, stride_kh)
    v_base = _bh_base(V, b, hk, stride_vb, stride_vh)
    bias_base = _bh_base(Bias, b, h, stride_bb, stride_bh)
    kpm_base = Kpm + b.to(tl.int64) * stride_kpmb
    n_full, hi = _key_range(m_lo, Sq, Sk, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)

    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, bias_base, kpm_base,
                            stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                            offs_m, offs_d, row_ok, d_ok, dv_ok, 0, n_full, Sq, Sk, qk_scale,
                            bh, seed, rng_offset, drop_threshold, inv_keep, DROPOUT=DROPOUT,
                            MASKED=False, CAUSAL=CAUSAL, BIAS_KIND=BIAS_KIND, HAS_KPM=HAS_KPM, EVEN_D=EVEN_D,
                            EVEN_DV=EVEN_DV, COMPUTE_F32=COMPUTE_F32, DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, bias_base, kpm_base,
                            stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                            offs_m, offs_d, row_ok, d_ok, dv_ok, n_full, hi, Sq, Sk, qk_scale,
                            bh, seed, rng_offset, drop_threshold, inv_keep, DROPOUT=DROPOUT,
                            MASKED=True, CAUSAL=CAUSAL, BIAS_KIND=BIAS_KIND, HAS_KPM=HAS_KPM, EVEN_D=EVEN_D,
                            EVEN_DV=EVEN_DV, COMPUTE_F32=COMPUTE_F32, DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N)
    dq_ptrs = _row_tile(_bh_base(DQ, b, h, stride_dqb, stride_dqh), offs_m, offs_d, stride_dqm, stride_dqd)
    _store_tile(dq_ptrs, dq * scale, row_ok, d_ok)


_attn_bwd_dq_tuned = configs.tuned("dq", _attn_bwd_dq_kernel)
_attn_bwd_dkdv_tuned = configs.tuned("dkdv", _attn_bwd_dkdv_kernel, ["DBIAS_KIND"])


# ----------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------

def _dbias_buffer(bias: Optional[Tensor], want: bool, full, q: Tensor) -> Tuple[int, Tensor]:
    """(DBIAS_KIND, buffer): 0 and a dummy without a bias gradient; 2 and a float32 (B, Hq, 2, Sk) buffer when
    bias is constant along Sq (one row for the unmasked loop and one for the masked loop of the dk/dv kernel;
    heads with no block in a loop write nothing there, hence zeros); else 1 and a (B, Hq, Sq, Sk) buffer, in
    bias's dtype when bias has no broadcast dim (written directly), else float32."""
    if not want:
        return 0, q
    if bias.shape[2] == 1 and full[2] > 1:
        return 2, torch.zeros((full[0], full[1], 2, full[3]), dtype=torch.float32, device=q.device)
    direct = tuple(bias.shape) == full
    return 1, torch.zeros(full, dtype=bias.dtype if direct else torch.float32, device=q.device)


def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, bias: Optional[Tensor],
                  key_padding_mask: Optional[Tensor], causal: bool, scale: float, bias_requires_grad: bool,
                  dropout_p: float = 0.0, seed: int = 0, offset: int = 0
                  ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """(dq, dk, dv, dbias or None): contiguous, in the inputs' dtypes and shapes; dbias in bias's shape and dtype.

    Two launches: dq and Delta = rowsum(out * dout) (one program per query block); then dk/dv (one program per
    key block and KV head, looping over the GQA group). dbias: the dk/dv kernel writes dS into a float32 buffer
    (B, Hq, Sq, Sk), or (B, Hq, 2, Sk) summed over the queries in registers when bias is constant along Sq (one
    row per loop of the kernel); torch then sums it over bias's broadcast dims (deterministic). A bias with no
    broadcast dim gets its gradient written directly, in its own dtype. The buffer is O(Sq * Sk) only when bias
    itself varies along Sq. dropout_p, seed, offset: the forward's dropout, whose mask both kernels regenerate.
    """
    b, hq, sq, d = q.shape
    hkv, sk, dv_dim = k.shape[1], k.shape[2], v.shape[3]
    dq = torch.empty((b, hq, sq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, hkv, sk, d), dtype=k.dtype, device=k.device)
    dv = torch.empty((b, hkv, sk, dv_dim), dtype=v.dtype, device=v.device)
    want_dbias = bias is not None and bias_requires_grad
    if q.numel() == 0 or k.numel() == 0:  # no score at all: every gradient is 0
        dbias = torch.zeros(bias.shape, dtype=bias.dtype, device=bias.device) if want_dbias else None
        return dq.zero_(), dk.zero_(), dv.zero_(), dbias

    full = (b, hq, sq, sk)
    bias_t, bs, bias_kind = _bias_args(bias, full, q)
    kpm, kpm_stride, has_kpm = _kpm_args(key_padding_mask, q)
    dbias_kind, db_buf = _dbias_buffer(bias, want_dbias, full, q)
    db_strides = db_buf.stride()[:3] if dbias_kind else (0, 0, 0)

    lse = lse.contiguous()
    dout = dout.to(q.dtype)  # tl.dot needs both operands in one dtype
    delta = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
    qk_scale = scale * LOG2E
    common = dict(_head_meta(q, d, dv_dim), CAUSAL=bool(causal), BIAS_KIND=bias_kind, HAS_KPM=has_kpm,
                  DROPOUT=dropout_p > 0)
    drop = _dropout_args(dropout_p, seed, offset)
    dkdv_args = (q, k, v, bias_t, kpm, dout, lse, delta, dk, dv, db_buf, *q.stride(), *k.stride(), *v.stride(),
                 *bs, kpm_stride, *dout.stride(), *dk.stride(), *dv.stride(), *db_strides,
                 hq, sq, sk, hq // hkv, qk_scale, scale, _bucket(sq), _bucket(sk), *drop)
    dq_args = (q, k, v, bias_t, kpm, out, dout, lse, delta, dq, *q.stride(), *k.stride(), *v.stride(), *bs,
               kpm_stride, *out.stride(), *dout.stride(), *dq.stride(), hq, sq, sk, hq // hkv, qk_scale, scale,
               _bucket(sq), _bucket(sk), *drop)
    with _device_guard(q):
        # dq first: it also writes Delta, which the dk/dv kernel reads
        configs.launch_pass("dq", _attn_bwd_dq_kernel, _attn_bwd_dq_tuned,
                            lambda m: (triton.cdiv(sq, m["BLOCK_M"]), hq, b), dq_args, common, q.dtype, bias_t)
        configs.launch_pass("dkdv", _attn_bwd_dkdv_kernel, _attn_bwd_dkdv_tuned,
                            lambda m: (triton.cdiv(sk, m["BLOCK_N"]), hkv, b), dkdv_args,
                            dict(common, DBIAS_KIND=dbias_kind), q.dtype, bias_t)

    dbias = None
    if want_dbias:
        dbias = _sum_to(db_buf, bias.shape).to(bias.dtype)
    return dq, dk, dv, dbias


def _sum_to(t: Tensor, shape) -> Tensor:
    """Sum a (B, Hq, Sq or 1, Sk) gradient over the dims where shape has 1 (a no-op when shapes match)."""
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t

