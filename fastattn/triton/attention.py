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
is deterministic (bit-identical from run to run): dk/dv of a KV head are accumulated by one program over every
query block of every query head of its group, dq by one program per query block, with no atomics anywhere. It
is two launches: dq (which also computes Delta = rowsum(out * dout) for its rows), then dk/dv. This recomputes
P and dP in both, 7 block matmuls per (query block, key block) pair against 5 for a fused pass; a fused pass
would need dq summed across key blocks, by atomics (not deterministic), by ordered semaphores (programs waiting
on each other, which can stall or deadlock when a head has more key blocks than the chip runs at once), or
through an fp32 workspace of one dq partial per key block (n_key_blocks x the size of q in fp32: 1 GB at 16k
tokens, S = 1k, D = 128; 17 GB at S = 16k), each of which costs more than the recomputation.

Block shapes (GPU). Each kernel is autotuned among at most four (BLOCK_M, BLOCK_N, warps, stages) configs per
head-dim class (<= 64, 128, 256) and dtype class (16-bit, float32), chosen from ptxas register and spill
counts on sm_90a (_SHAPES; configs whose shared memory or, with a full bias tile, register estimate does not
fit are pruned before compiling). The tuning is cached per length bucket, head dim, causal, bias and mask kind
and dtypes. On a cold machine each kernel variant first compiles all its configs (a few seconds each).
FASTATTN_TRITON_AUTOTUNE=0 turns autotuning off: each launch takes one fixed config per (head dim, dtype, causal,
pass, full bias tile or not), the first that fits in _SHAPES (fixed_shape), and compiles only that; decode takes
_DECODE_SHAPES[0]. The variable is read at every launch, so it can be set at any time.

Hopper forward, OPT-IN AND NOT YET VALIDATED ON A GPU. With FASTATTN_TRITON_HOPPER=1 (read at every launch), on
a GPU of compute capability 9.x, a forward with 16-bit q, k, v, no bias or key padding, D a power of two and
TMA-compatible strides (tma_forward_supports) runs _attn_fwd_tma_kernel instead: Q/K/V blocks come through host
TMA tensor descriptors (no per-thread addresses: ~50-90 fewer registers than the pointer kernel in ptxas), and
some of its configs let Triton warp-specialise the key loop (a loading warp group and two computing ones, with
setmaxnreg). Without the variable, or on any other GPU or input, the portable kernels below run, unchanged; the
backward always does. The TMA kernel is tested for correctness under the interpreter and compiled for sm_90a,
but has never launched: the gpu-marked tests run both forwards against the reference so that a GPU session can
validate it, measure it, and then make it the default on 9.x.

Not yet run on a GPU at all: every kernel was developed and tested under the interpreter and compiled ahead of
time for sm_90a (wgmma on every attention dot, no spills at D = 64 and 128 in bf16) without a launch; the
autotuned and fixed configs, the SM count for decode splits and the device guard have never executed. The
portable kernels use pointer loads that Triton software-pipelines (cp.async, num_stages) and tl.dot, which it
lowers to wgmma on Hopper.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

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
def _bias_ptrs(bias_base, offs_m, offs_n, stride_bm, stride_bn, BIAS_KIND: tl.constexpr):
    """Pointers to the first key block's bias for _masked_scores; bias_base itself when there is no bias."""
    if BIAS_KIND == 1:
        return bias_base + offs_m.to(tl.int64)[:, None] * stride_bm + offs_n.to(tl.int64)[None, :] * stride_bn
    elif BIAS_KIND == 2:
        return bias_base + offs_n.to(tl.int64) * stride_bn                      # (BLOCK_N,) one row for all
    else:
        return bias_base


@triton.jit
def _masked_scores(q, kT, b_ptrs, kpm_base, cols, col_ok, offs_m, row_ok, Sq, Sk, qk_scale,
                   MASKED: tl.constexpr, CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """The scaled (log2 units), biased and masked scores (BLOCK_M, BLOCK_N) fp32 of one query block against one
    key block, as the forward and the dQ pass both need them. b_ptrs points at this key block's bias: a
    (BLOCK_M, BLOCK_N) tile for BIAS_KIND 1, one (BLOCK_N,) row for all queries for BIAS_KIND 2, unused for 0."""
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
        # why: the last key block runs past Sk; those lanes must weigh 0 (in the backward, exp2 of a finite
        # s - lse there could even overflow)
        keep = col_ok[None, :]
        if CAUSAL:
            # why: bottom-right causal, query i sees key j only if j <= i + Sk - Sq
            keep = keep & (cols[None, :] <= offs_m[:, None] + (Sk - Sq))
        s = tl.where(keep, s, float("-inf"))
    if HAS_KPM:
        # why: padding keys (False in key_padding_mask) take no part in any row's softmax, nor its gradient
        real = tl.load(kpm_base + cols, mask=col_ok, other=0) != 0            # (BLOCK_N,)
        s = tl.where(real[None, :], s, float("-inf"))
    return s


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
    b_ptrs = _bias_ptrs(bias_base, offs_m, offs_n, stride_bm, stride_bn, BIAS_KIND)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)                                   # (BLOCK_N,)
        col_ok = cols < Sk
        kT = _load_cols(kT_ptrs, col_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)      # (D_PAD, BLOCK_N)
        s = _masked_scores(q, kT, b_ptrs, kpm_base, cols, col_ok, offs_m, row_ok, Sq, Sk, qk_scale,
                           MASKED, CAUSAL, BIAS_KIND, HAS_KPM, DOT_PRECISION)   # (BLOCK_M, BLOCK_N) fp32, log2
        if BIAS_KIND != 0:
            b_ptrs += BLOCK_N * stride_bn
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
# Forward on Hopper: TMA tensor descriptors (opt-in, FASTATTN_TRITON_HOPPER=1; see the module docstring)
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, b, hk, offs_m, lo, hi, Sq, Sk, qk_scale,
                        MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                        COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        BLOCK_N: tl.constexpr, WARP_SPEC: tl.constexpr):
    """_attn_fwd_inner with K and V blocks fetched by the TMA engine (rows past Sk arrive as zeros). WARP_SPEC
    asks Triton to split the loop into a loading warp group and computing ones (num_warps=4 configs)."""
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
        k = desc_k.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)         # (BLOCK_N, D)
        if COMPUTE_F32:
            k = k.to(tl.float32)
        s = tl.dot(q, k.T, input_precision=DOT_PRECISION) * qk_scale             # (BLOCK_M, BLOCK_N) fp32, log2
        if MASKED:
            cols = start_n + tl.arange(0, BLOCK_N)
            keep = cols[None, :] < Sk  # why: the zero rows past Sk must weigh 0, not exp2(0 - m)
            if CAUSAL:
                # why: bottom-right causal, query i sees key j only if j <= i + Sk - Sq
                keep = keep & (cols[None, :] <= offs_m[:, None] + (Sk - Sq))
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))                                    # (BLOCK_M,)
        # why: all -inf so far (a row that sees no key yet) would give -inf - (-inf) = NaN; shift by 0 instead
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])                                     # (BLOCK_M, BLOCK_N) fp32
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = desc_v.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)         # (BLOCK_N, D)
        if COMPUTE_F32:
            v = v.to(tl.float32)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)       # (BLOCK_M, D) fp32
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_tma_kernel(desc_q, desc_k, desc_v, desc_o, Lse, Hq, Sq, Sk, GROUP, qk_scale,
                         SQ_BUCKET, SK_BUCKET,
                         HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, COMPUTE_F32: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         WARP_SPEC: tl.constexpr):
    """Forward for 16-bit q, k, v without bias or key padding, D a power of two >= 16. Grid, order, loop split
    and outputs as in _attn_fwd_kernel. desc_q/k/v/o are host tensor descriptors over the 4-D (B, H, S, D)
    tensors with blocks (1, 1, rows, D): the TMA engine fetches each Q/K/V block into shared memory in one
    instruction (no per-thread addresses), zero-fills rows past the sequence, and the output store drops them.
    SQ_BUCKET and SK_BUCKET are only part of the autotuning key.
    """
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    hk = h // GROUP
    m_lo = start_m * BLOCK_M
    offs_m = m_lo + tl.arange(0, BLOCK_M)                                        # (BLOCK_M,)
    q = desc_q.load([b, h, m_lo, 0]).reshape(BLOCK_M, HEAD_DIM)                  # (BLOCK_M, D)
    if COMPUTE_F32:  # the interpreter (COMPUTE_F32 as in _load_rows)
        q = q.to(tl.float32)

    if CAUSAL:
        last_row = tl.minimum(m_lo + BLOCK_M, Sq) - 1
        hi = tl.maximum(tl.minimum(Sk, last_row + (Sk - Sq) + 1), 0)   # keys < hi: visible to the last row
        full = tl.maximum(tl.minimum(Sk, m_lo + (Sk - Sq) + 1), 0)     # keys < full: visible to the first row
    else:
        hi = Sk
        full = Sk
    n_full = (full // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if WARP_SPEC:
        # one loop, every block masked: Triton 3.6 warp-specialises a single straight-line loop only (a second
        # loop, or a branch in the loop, made its pass fail or do nothing)
        acc, l_i, m_i = _attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, b, hk, offs_m, 0, hi, Sq, Sk,
                                            qk_scale, True, CAUSAL, HEAD_DIM, COMPUTE_F32, DOT_PRECISION, BLOCK_N,
                                            True)
    else:
        acc, l_i, m_i = _attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, b, hk, offs_m, 0, n_full, Sq, Sk,
                                            qk_scale, False, CAUSAL, HEAD_DIM, COMPUTE_F32, DOT_PRECISION, BLOCK_N,
                                            False)
        acc, l_i, m_i = _attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, b, hk, offs_m, n_full, hi, Sq, Sk,
                                            qk_scale, True, CAUSAL, HEAD_DIM, COMPUTE_F32, DOT_PRECISION, BLOCK_N,
                                            False)

    # why: l == 0 exactly when the row saw no key (every p was 0); it returns 0, not 0/0
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]                                                  # (BLOCK_M, D) fp32
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * _LN2)   # (BLOCK_M,) natural log
    desc_o.store([b, h, m_lo, 0], out.to(desc_o.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))
    tl.store(Lse + (b.to(tl.int64) * Hq + h) * Sq + offs_m, lse, mask=offs_m < Sq)


# ----------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, real, col_ok, offs_n, offs_d, d_ok, q_tile, do_tile,
                         Q, DOut, Lse, Delta, Bias, DBias, b, hk,
                         stride_qb, stride_qh, stride_qm, stride_dob, stride_doh, stride_dom,
                         stride_bb, stride_bh, stride_bm, stride_bn, stride_dbb, stride_dbh, stride_dbm,
                         lo, n_lo, hi_lo, n_hi, Hq, Sq, Sk, GROUP, qk_scale,
                         MASKED: tl.constexpr, DB_SLOT: tl.constexpr, CAUSAL: tl.constexpr,
                         BIAS_KIND: tl.constexpr, DBIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                         EVEN_D: tl.constexpr, COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
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
        q_ptrs = Q + (b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
                      + start_m.to(tl.int64) * stride_qm) + q_tile
        do_ptrs = DOut + (b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
                          + start_m.to(tl.int64) * stride_dom) + do_tile
        q = _load_rows(q_ptrs, row_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)        # (BLOCK_M, D_PAD)
        do = _load_rows(do_ptrs, row_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)      # (BLOCK_M, D_PAD)
        if MASKED:
            # why other=+inf: rows past Sq get p = exp2(s - inf) = 0 and add nothing
            lse2 = tl.load(Lse + bh * Sq + rows, mask=row_ok, other=float("inf")) * _LOG2E    # (BLOCK_M,)
            delta = tl.load(Delta + bh * Sq + rows, mask=row_ok, other=0.0)                  # (BLOCK_M,)
        else:
            lse2 = tl.load(Lse + bh * Sq + rows) * _LOG2E
            delta = tl.load(Delta + bh * Sq + rows)
        # why: a row with nothing to attend to has lse = -inf and only -inf scores; s - (+inf) gives p = 0, not NaN
        lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
        sT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale     # (BLOCK_N, BLOCK_M) log2
        if BIAS_KIND == 1:
            bT_ptrs = (Bias + b.to(tl.int64) * stride_bb + h.to(tl.int64) * stride_bh
                       + rows.to(tl.int64)[None, :] * stride_bm + offs_n.to(tl.int64)[:, None] * stride_bn)
            # why: bias rows past Sq and columns past Sk do not exist
            sT += tl.load(bT_ptrs, mask=row_ok[None, :] & col_ok[:, None], other=0.0).to(tl.float32) * _LOG2E
        if BIAS_KIND == 2:
            b_ptrs = Bias + b.to(tl.int64) * stride_bb + h.to(tl.int64) * stride_bh + offs_n.to(tl.int64) * stride_bn
            sT += tl.load(b_ptrs, mask=col_ok, other=0.0).to(tl.float32)[:, None] * _LOG2E
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
            dbT_ptrs = (DBias + b.to(tl.int64) * stride_dbb + h.to(tl.int64) * stride_dbh
                        + rows.to(tl.int64)[None, :] * stride_dbm + offs_n.to(tl.int64)[:, None])
            # why: the gradient buffer has no rows past Sq and no columns past Sk
            tl.store(dbT_ptrs, dsT.to(DBias.dtype.element_ty), mask=row_ok[None, :] & col_ok[:, None])
        if DBIAS_KIND == 2:
            db_row += tl.sum(dsT, 1)                                             # (BLOCK_N,)
            # why: the sum of one head ends at its last block of this loop; written once, so no read-back
            last = i == n_per - 1
            db_ptrs = (DBias + b.to(tl.int64) * stride_dbb + h.to(tl.int64) * stride_dbh
                       + DB_SLOT * stride_dbm + offs_n)
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
                          HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, EVEN_D: tl.constexpr,
                          CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, DBIAS_KIND: tl.constexpr,
                          HAS_KPM: tl.constexpr, COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
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
    # offsets of a query block's tile from its first row (loop-invariant)
    q_tile = offs_mb.to(tl.int64)[:, None] * stride_qm + offs_d[None, :] * stride_qd            # (BLOCK_M, D_PAD)
    do_tile = offs_mb.to(tl.int64)[:, None] * stride_dom + offs_d[None, :] * stride_dod         # (BLOCK_M, D_PAD)

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
        dk, dv, k, v, real, col_ok, offs_n, offs_d, d_ok, q_tile, do_tile, Q, DOut, Lse, Delta, Bias, DBias, b, hk,
        stride_qb, stride_qh, stride_qm, stride_dob, stride_doh, stride_dom,
        stride_bb, stride_bh, stride_bm, stride_bn, stride_dbb, stride_dbh, stride_dbm,
        a_end, (b_end - a_end) // BLOCK_M, 0, 0, Hq, Sq, Sk, GROUP, qk_scale,
        False, 0, CAUSAL, BIAS_KIND, DBIAS_KIND, HAS_KPM, EVEN_D, COMPUTE_F32, DOT_PRECISION, BLOCK_M, BLOCK_N)
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, real, col_ok, offs_n, offs_d, d_ok, q_tile, do_tile, Q, DOut, Lse, Delta, Bias, DBias, b, hk,
        stride_qb, stride_qh, stride_qm, stride_dob, stride_doh, stride_dom,
        stride_bb, stride_bh, stride_bm, stride_bn, stride_dbb, stride_dbh, stride_dbm,
        lo, tl.cdiv(a_end - lo, BLOCK_M), b_end, tl.cdiv(Sq - b_end, BLOCK_M), Hq, Sq, Sk, GROUP, qk_scale,
        True, 1, CAUSAL, BIAS_KIND, DBIAS_KIND, HAS_KPM, EVEN_D, COMPUTE_F32, DOT_PRECISION, BLOCK_M, BLOCK_N)

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
    b_ptrs = _bias_ptrs(bias_base, offs_m, offs_n, stride_bm, stride_bn, BIAS_KIND)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)                                   # (BLOCK_N,)
        col_ok = cols < Sk
        kT = _load_cols(kT_ptrs, col_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)      # (D_PAD, BLOCK_N)
        vT = _load_cols(vT_ptrs, col_ok, d_ok, MASKED, EVEN_D, COMPUTE_F32)      # (D_PAD, BLOCK_N)
        s = _masked_scores(q, kT, b_ptrs, kpm_base, cols, col_ok, offs_m, row_ok, Sq, Sk, qk_scale,
                           MASKED, CAUSAL, BIAS_KIND, HAS_KPM, DOT_PRECISION)   # (BLOCK_M, BLOCK_N) log2
        if BIAS_KIND != 0:
            b_ptrs += BLOCK_N * stride_bn
        p = tl.math.exp2(s - lse2[:, None])                                      # (BLOCK_M, BLOCK_N) fp32
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)                       # (BLOCK_M, BLOCK_N)
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
                        HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, EVEN_D: tl.constexpr,
                        CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                        COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward dq, and Delta for the dk/dv kernel. Grid (cdiv(Sq, BLOCK_M), Hq, B): one program per query
    block of one (batch, query head); launched first.

    Computes Delta = rowsum(out * dout) (float32 (B, Hq, Sq): the row sum of P * dP in every dS = P * (dP -
    Delta)) from one read of its out rows and writes it for _attn_bwd_dkdv_kernel, which runs next. Keeps Q, dO
    (BLOCK_M, D_PAD), lse and Delta of its rows on chip, streams the K/V blocks the rows can see (same split
    into unmasked and masked blocks as the forward) and accumulates dq += dS K in float32; writes dq * scale.
    It alone owns these rows: deterministic.
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
    o_ptrs = (Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
              + offs_m.to(tl.int64)[:, None] * stride_om + offs_d[None, :] * stride_od)
    o = _load_rows(o_ptrs, row_ok, d_ok, True, EVEN_D, COMPUTE_F32)              # (BLOCK_M, D_PAD)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)                     # (BLOCK_M,) fp32
    tl.store(Delta + bh * Sq + offs_m, delta, mask=row_ok)

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
# Block shapes: autotuned among a few per head-dim class, or one fixed pick (GPU only; the interpreter launches
# the raw kernels with _INTERP_BLOCKS)
# ----------------------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per pass and head-dim class (HEAD_DIM_PAD <= 64, 128, 256); BLOCK_M
# is the query block, BLOCK_N the key block. At most four a class, so that a cold machine compiles few; the first
# of each list is the fixed pick of FASTATTN_TRITON_AUTOTUNE=0. From ptxas -v on sm_90a, bf16 (benchmarks/NOTES.md,
# kernel v2): every first pick compiles to wgmma with no register spill at D = 64 and 128 (dk/dv 64x128 at
# D=128 without causal: 16 bytes), and fits the shared memory of an H100 with room.
_SHAPES = {
    ("fwd", 64): [(128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("fwd", 128): [(128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3)],
    ("fwd", 256): [(128, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2)],
    ("dq", 64): [(128, 128, 8, 2), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("dq", 128): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 2)],
    ("dq", 256): [(128, 32, 8, 2), (64, 64, 8, 2)],
    # dk/dv: the key block is the wide one (it owns the dk, dv accumulators); 8 warps = two warpgroups
    ("dkdv", 64): [(64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 3)],
    ("dkdv", 128): [(64, 128, 8, 2), (32, 128, 8, 2), (32, 128, 8, 3)],
    ("dkdv", 256): [(32, 64, 8, 2), (16, 64, 8, 2)],
}
# float32 inputs: exact fp32 dots run on the CUDA cores and hold both operands in registers, so small tiles
_SHAPES_F32 = {"fwd": [(32, 32, 4, 2), (16, 32, 4, 2)], "dq": [(32, 32, 4, 2), (16, 32, 4, 2)],
               "dkdv": [(32, 32, 4, 2), (16, 32, 4, 2)]}
# Hopper forward (TMA): (BLOCK_M, BLOCK_N, num_warps, num_stages, warp-specialised); every one compiled for sm_90a
# within the shared memory of an H100 (ptxas, kernel v2 in benchmarks/NOTES.md). Triton 3.6 warp-specialises
# these loops only at num_warps=4 (a loading warp group plus two computing ones, 384 threads).
_HOPPER_SHAPES = {
    64: [(128, 128, 8, 3, False), (64, 128, 4, 3, True), (128, 64, 8, 3, False)],
    128: [(128, 128, 8, 2, False), (64, 128, 4, 2, True), (128, 64, 8, 3, False), (64, 64, 4, 3, True)],
    256: [(128, 64, 8, 2, False)],  # (64, 64, 4, 2, True) needs 224.1 KB of the 227: too close to list
}
# decode: (BLOCK_N, num_warps, num_stages); memory-bound, so deep pipelines of mid-size K/V tiles
_DECODE_SHAPES = [(64, 4, 3), (64, 4, 2), (128, 8, 3), (32, 4, 4)]
_SMEM_BUDGET = 200 * 1024  # bytes of shared memory a config may plan for (an H100/H200 SM has 227 KB)
_INTERP_BLOCKS = {"fwd": (_INTERP_BLOCK, _INTERP_BLOCK), "dq": (_INTERP_BLOCK, _INTERP_BLOCK),
                  "dkdv": (_INTERP_BLOCK, 2 * _INTERP_BLOCK)}  # dk/dv: several query blocks per key block


def autotune_enabled() -> bool:
    """FASTATTN_TRITON_AUTOTUNE=0 turns autotuning off (read at every launch); see the module docstring."""
    return os.environ.get("FASTATTN_TRITON_AUTOTUNE", "1") != "0"


def _shape_list(pass_: str, d_pad: int, f32: bool):
    return _SHAPES_F32[pass_] if f32 else _SHAPES[(pass_, min(max(d_pad, 64), 256))]


def _smem_bytes(pass_: str, shape, d: int, esize: int, bias_esize: int = 0) -> int:
    """Shared memory a config plans for: the resident tiles plus `stages` copies of the streamed ones (fwd: Q +
    K/V blocks; dq: Q, dO + K/V blocks; dk/dv: K, V + Q/dO blocks), and of the full bias tile when bias_esize > 0.
    Matches the compiler's figure within 1 KB without bias, and bounds it with."""
    bm, bn, _, stages = shape
    bias = stages * bm * bn * bias_esize
    if pass_ == "fwd":
        return (bm * d + stages * 2 * bn * d) * esize + bias
    if pass_ == "dq":
        return (2 * bm * d + stages * 2 * bn * d) * esize + bias
    return (2 * bn * d + stages * 2 * bm * d) * esize + bias


def _fits(pass_: str, shape, d: int, esize: int, bias_esize: int) -> bool:
    """Within _SMEM_BUDGET; with a full (BLOCK_M, BLOCK_N) bias tile (bias_esize > 0) also within a register
    estimate: fp32 accumulators (dk/dv: two (BLOCK_N, D); else (BLOCK_M, D)) plus the score-sized fp32 tiles
    (fwd: s/p and the bias; backward: s/p, dp, ds and the bias) per thread below 224. The estimate separates the
    configs that spilled with a full bias in ptxas on sm_90a from those that did not; without a bias every
    listed config was checked directly."""
    bm, bn, warps, _ = shape
    if _smem_bytes(pass_, shape, d, esize, bias_esize) > _SMEM_BUDGET:
        return False
    if not bias_esize:
        return True
    acc = 2 * bn * d if pass_ == "dkdv" else bm * d
    tiles = 3 if pass_ == "fwd" else 4
    return (acc + tiles * bm * bn) / (32 * warps) < 224


def _shapes_for(pass_: str, d_pad: int, f32: bool, esize: int, bias_esize: int = 0):
    """The listed shapes for this pass, head dim and dtype that fit, in order of preference. Never empty: if none
    fits, the one needing the least shared memory."""
    listed = _shape_list(pass_, d_pad, f32)
    fit = [s for s in listed if _fits(pass_, s, d_pad, esize, bias_esize)]
    return fit or [min(listed, key=lambda s: _smem_bytes(pass_, s, d_pad, esize, bias_esize))]


def fixed_shape(pass_: str, d_pad: int, dtype: torch.dtype, causal: bool, bias_esize: int = 0
                ) -> Tuple[int, int, int, int]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) used without autotuning for pass "fwd", "dq" or "dkdv": one
    per head-dim class, dtype class (16-bit or float32), causal or not, and whether a full bias tile is read
    (bias_esize: its element size, else 0). Causal and not share a pick: at these query blocks the causal
    diagonal costs the same with every listed key block, and ptxas gave the same registers within a few."""
    del causal
    return _shapes_for(pass_, d_pad, dtype == torch.float32, dtype.itemsize, bias_esize)[0]


def _config_shape(c) -> Tuple[int, int, int, int]:
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages


def _prune(configs, named_args, *, pass_, **kwargs):
    """Autotuning keeps the configs that _shapes_for lists, in its order; configs outside every list (a test
    pinning one) are kept as they are."""
    q, bias = named_args.get("Q"), named_args.get("Bias")
    esize = q.element_size() if q is not None else 2
    bias_esize = bias.element_size() if kwargs.get("BIAS_KIND") == 1 and bias is not None else 0
    shapes = _shapes_for(pass_, kwargs["HEAD_DIM_PAD"], kwargs["COMPUTE_F32"], esize, bias_esize)
    by_shape = {_config_shape(c): c for c in configs}
    return [by_shape[s] for s in shapes if s in by_shape] or list(configs)


def _all_configs(pass_: str):
    shapes = [s for (p, _), lst in _SHAPES.items() if p == pass_ for s in lst] + _SHAPES_F32[pass_]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in dict.fromkeys(shapes)]


def _tuned(pass_: str, kernel, extra_key=()):
    return triton.autotune(_all_configs(pass_), key=_ATTN_KEY + list(extra_key),
                           prune_configs_by={"early_config_prune": functools.partial(_prune, pass_=pass_)})(kernel)


_ATTN_KEY = ["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM_PAD", "CAUSAL", "BIAS_KIND", "HAS_KPM"]  # (+ dtypes, by Triton)
_attn_fwd_tuned = _tuned("fwd", _attn_fwd_kernel)
_attn_bwd_dq_tuned = _tuned("dq", _attn_bwd_dq_kernel)
_attn_bwd_dkdv_tuned = _tuned("dkdv", _attn_bwd_dkdv_kernel, ["DBIAS_KIND"])
_decode_split_tuned = triton.autotune(
    [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s) for n, w, s in _DECODE_SHAPES],
    key=["SMAX_BUCKET", "HEAD_DIM_PAD", "BLOCK_G", "SINGLE_SPLIT"])(_decode_split_kernel)
_KERNELS = {"fwd": (_attn_fwd_kernel, _attn_fwd_tuned), "dq": (_attn_bwd_dq_kernel, _attn_bwd_dq_tuned),
            "dkdv": (_attn_bwd_dkdv_kernel, _attn_bwd_dkdv_tuned)}


def _hopper_shapes(d: int):
    return _HOPPER_SHAPES[min(max(d, 64), 256)]


def _tma_block_shapes(nargs) -> None:
    """Autotuning pre-hook: the descriptors' block shapes follow the config's BLOCK_M and BLOCK_N."""
    d, bm, bn = nargs["HEAD_DIM"], nargs["BLOCK_M"], nargs["BLOCK_N"]
    nargs["desc_q"].block_shape = nargs["desc_o"].block_shape = [1, 1, bm, d]
    nargs["desc_k"].block_shape = nargs["desc_v"].block_shape = [1, 1, bn, d]


def _prune_hopper(configs, named_args, **kwargs):
    listed = _hopper_shapes(kwargs["HEAD_DIM"])
    by_shape = {(*_config_shape(c), c.kwargs["WARP_SPEC"]): c for c in configs}
    return [by_shape[s] for s in listed if s in by_shape] or list(configs)


_attn_fwd_tma_tuned = triton.autotune(
    [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "WARP_SPEC": ws}, num_warps=w, num_stages=st,
                   pre_hook=_tma_block_shapes)
     for m, n, w, st, ws in dict.fromkeys(s for lst in _HOPPER_SHAPES.values() for s in lst)],
    key=["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM", "CAUSAL"],
    prune_configs_by={"early_config_prune": _prune_hopper})(_attn_fwd_tma_kernel)


def _launch(pass_: str, grid, args, meta, dtype: torch.dtype, bias: Optional[Tensor]) -> None:
    """Launch pass "fwd", "dq" or "dkdv"; grid maps {"BLOCK_M", "BLOCK_N"} to the launch grid. Interpreted: the
    small fixed blocks; else autotuned, or the fixed_shape pick when FASTATTN_TRITON_AUTOTUNE=0."""
    kernel, tuned = _KERNELS[pass_]
    if _INTERPRETED:
        blocks = dict(zip(("BLOCK_M", "BLOCK_N"), _INTERP_BLOCKS[pass_]))
        kernel[grid(blocks)](*args, **meta, **blocks)
    elif autotune_enabled():
        tuned[grid](*args, **meta)
    else:
        bias_esize = bias.element_size() if meta["BIAS_KIND"] == 1 else 0
        bm, bn, warps, stages = fixed_shape(pass_, meta["HEAD_DIM_PAD"], dtype, meta["CAUSAL"], bias_esize)
        blocks = dict(BLOCK_M=bm, BLOCK_N=bn)
        kernel[grid(blocks)](*args, **meta, **blocks, num_warps=warps, num_stages=stages)


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


def hopper_enabled() -> bool:
    """FASTATTN_TRITON_HOPPER=1 opts in to the TMA forward on compute capability 9.x (read at every launch)."""
    return os.environ.get("FASTATTN_TRITON_HOPPER", "0") == "1"


def tma_forward_supports(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                         key_padding_mask: Optional[Tensor]) -> bool:
    """Whether _attn_fwd_tma_kernel handles this call: 16-bit q, k, v, no bias or key padding, D a power of two
    in [16, 256], and what a TMA descriptor needs: 16-byte aligned bases and strides, unit stride along D."""
    d = q.shape[-1]
    if bias is not None or key_padding_mask is not None or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if d != _head_dim_pad(d) or d > MAX_HEAD_DIM:
        return False
    for t in (q, k, v):
        if t.dtype != q.dtype or t.stride(-1) != 1 or t.data_ptr() % 16:
            return False
        if any(st <= 0 or (st * t.element_size()) % 16 for st in t.stride()[:-1]):
            return False
    return True


def _use_hopper_forward(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                        key_padding_mask: Optional[Tensor]) -> bool:
    """The TMA forward runs only when opted in, on a capability 9.x GPU, for a call it supports."""
    return (hopper_enabled() and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9
            and tma_forward_supports(q, k, v, bias, key_padding_mask))


def _attention_fwd_tma(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, out: Tensor, lse: Tensor,
                       shape: Optional[Tuple[int, int, int, int, bool]] = None) -> None:
    """Fill out and lse with _attn_fwd_tma_kernel (the caller checked tma_forward_supports). shape (BLOCK_M,
    BLOCK_N, num_warps, num_stages, warp-specialised) pins a config (tests); else autotuned, or the first of
    _HOPPER_SHAPES when FASTATTN_TRITON_AUTOTUNE=0, or 16 x 16 blocks under the interpreter, where Triton emulates
    the descriptors: that is how the CPU tests check this kernel."""
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]

    def desc(t: Tensor, rows: int) -> TensorDescriptor:
        return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, d])

    args = [hq, sq, sk, hq // hkv, scale * LOG2E, _bucket(sq), _bucket(sk)]
    compute_f32, precision = _precision(q.dtype)
    meta = dict(HEAD_DIM=d, CAUSAL=bool(causal), COMPUTE_F32=compute_f32, DOT_PRECISION=precision)
    if shape is None and (_INTERPRETED or not autotune_enabled()):
        shape = (_INTERP_BLOCK, _INTERP_BLOCK, 4, 1, False) if _INTERPRETED else _hopper_shapes(d)[0]
    if shape is not None:
        bm, bn, warps, stages, ws = shape
        descs = (desc(q, bm), desc(k, bn), desc(v, bn), desc(out, bm))
        _attn_fwd_tma_kernel[(triton.cdiv(sq, bm), hq, b)](*descs, lse, *args, **meta, BLOCK_M=bm, BLOCK_N=bn,
                                                           WARP_SPEC=ws, num_warps=warps, num_stages=stages)
    else:  # block shapes set per config by _tma_block_shapes
        descs = (desc(q, 16), desc(k, 16), desc(v, 16), desc(out, 16))
        _attn_fwd_tma_tuned[lambda m: (triton.cdiv(sq, m["BLOCK_M"]), hq, b)](*descs, lse, *args, **meta)


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
    if _use_hopper_forward(q, k, v, bias, key_padding_mask):
        with _device_guard(q):
            _attention_fwd_tma(q, k, v, causal, scale, out, lse)
        return out, lse
    bias_t, bs, bias_kind = _bias_args(bias, (b, hq, sq, sk), q)
    kpm, kpm_stride, has_kpm = _kpm_args(key_padding_mask, q)
    compute_f32, precision = _precision(q.dtype)
    d_pad = _head_dim_pad(d)
    args = (q, k, v, bias_t, kpm, out, lse, *q.stride(), *k.stride(), *v.stride(), *bs, kpm_stride,
            *out.stride(), hq, sq, sk, hq // hkv, scale * LOG2E, _bucket(sq), _bucket(sk))
    meta = dict(HEAD_DIM=d, HEAD_DIM_PAD=d_pad, EVEN_D=d == d_pad, CAUSAL=bool(causal), BIAS_KIND=bias_kind,
                HAS_KPM=has_kpm, COMPUTE_F32=compute_f32, DOT_PRECISION=precision)
    with _device_guard(q):
        _launch("fwd", lambda m: (triton.cdiv(sq, m["BLOCK_M"]), hq, b), args, meta, q.dtype, bias_t)
    return out, lse


def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, bias: Optional[Tensor],
                  key_padding_mask: Optional[Tensor], causal: bool, scale: float, bias_requires_grad: bool
                  ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """(dq, dk, dv, dbias or None): contiguous, in the inputs' dtypes and shapes; dbias in bias's shape and dtype.

    Two launches: dq and Delta = rowsum(out * dout) (one program per query block); then dk/dv (one program per
    key block and KV head, looping over the GQA group). dbias: the dk/dv kernel writes dS into a float32 buffer
    (B, Hq, Sq, Sk), or (B, Hq, 2, Sk) summed over the queries in registers when bias is constant along Sq (one
    row per loop of the kernel); torch then sums it over bias's broadcast dims (deterministic). A bias with no
    broadcast dim gets its gradient written directly, in its own dtype. The buffer is O(Sq * Sk) only when bias
    itself varies along Sq.
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
            # one slot for the unmasked loop and one for the masked loop of the dk/dv kernel; heads with no block
            # in a loop write nothing there, hence zeros
            dbias_kind, db_buf = 2, torch.zeros((b, hq, 2, sk), dtype=torch.float32, device=q.device)
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
    dq_args = (q, k, v, bias_t, kpm, out, dout, lse, delta, dq, *q.stride(), *k.stride(), *v.stride(), *bs,
               kpm_stride, *out.stride(), *dout.stride(), *dq.stride(), hq, sq, sk, hq // hkv, qk_scale, scale,
               _bucket(sq), _bucket(sk))
    with _device_guard(q):
        # dq first: it also writes Delta, which the dk/dv kernel reads
        _launch("dq", lambda m: (triton.cdiv(sq, m["BLOCK_M"]), hq, b), dq_args, common, q.dtype, bias_t)
        _launch("dkdv", lambda m: (triton.cdiv(sk, m["BLOCK_N"]), hkv, b), dkdv_args,
                dict(common, DBIAS_KIND=dbias_kind), q.dtype, bias_t)

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
        elif autotune_enabled():
            _decode_split_tuned[grid](*args, **meta)
        else:
            bn, warps, stages = _DECODE_SHAPES[0]
            _decode_split_kernel[grid](*args, **meta, BLOCK_N=bn, num_warps=warps, num_stages=stages)
        if not single:
            _decode_combine_kernel[(hq, b)](o_part, l_part, out, *out.stride(), hq, splits, HEAD_DIM=d,
                                            HEAD_DIM_PAD=d_pad, BLOCK_S=triton.next_power_of_2(splits))
    return out
