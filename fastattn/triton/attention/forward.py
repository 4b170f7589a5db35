"""Attention forward: the portable pointer kernel (every GPU Triton supports, and the interpreter) and its
launcher, which hands Hopper calls to the TMA variant (tma.py) when that is opted in."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import configs
from .common import (_MAX_GRID_YZ, _bias_args, _bucket, _device_guard, _dropout_args, _head_meta, _kpm_args,
                     _unsupported_common)
from .tiles import (LOG2E, _LN2, _bh_base, _bias_ptrs, _col_tile, _dropout_keep, _key_range, _load_key_block,
                    _load_rows, _masked_scores, _normalise, _online_softmax_step, _query_program, _row_tile,
                    _store_tile)
from .tma import _attention_fwd_tma, _use_hopper_forward


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, bias_base, kpm_base,
                    stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                    offs_m, offs_d, row_ok, d_ok, dv_ok, lo, hi, Sq, Sk, qk_scale,
                    bh, seed, rng_offset, drop_threshold, DROPOUT: tl.constexpr,
                    MASKED: tl.constexpr, CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr,
                    HAS_KPM: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, COMPUTE_F32: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online softmax over the key blocks [lo, hi) for one query block. MASKED blocks are the ones that cross the
    causal diagonal or the end of the keys; the others skip those masks (the bias and key padding are data and
    apply to every block)."""
    offs_n = lo + tl.arange(0, BLOCK_N)                                          # (BLOCK_N,)
    kT_ptrs = _col_tile(k_base, offs_n, offs_d, stride_kn, stride_kd)            # (D_PAD, BLOCK_N)
    v_ptrs = _row_tile(v_base, offs_n, offs_d, stride_vn, stride_vd)             # (BLOCK_N, D_PAD)
    b_ptrs = _bias_ptrs(bias_base, offs_m, offs_n, stride_bm, stride_bn, BIAS_KIND=BIAS_KIND)
    for start_n in range(lo, hi, BLOCK_N):
        kT, cols, col_ok = _load_key_block(kT_ptrs, start_n, d_ok, Sk, MASKED=MASKED, EVEN_D=EVEN_D,
                                           COMPUTE_F32=COMPUTE_F32, BLOCK_N=BLOCK_N)    # (D_PAD, BLOCK_N)
        s = _masked_scores(q, kT, b_ptrs, kpm_base, cols, col_ok, offs_m, row_ok, Sq, Sk, qk_scale,
                           MASKED=MASKED, CAUSAL=CAUSAL, BIAS_KIND=BIAS_KIND, HAS_KPM=HAS_KPM,
                           DOT_PRECISION=DOT_PRECISION)                         # (BLOCK_M, BLOCK_N) fp32, log2
        if BIAS_KIND != 0:
            b_ptrs += BLOCK_N * stride_bn
        p, m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc)
        if DROPOUT:
            # the normaliser l keeps every probability; only the P.V product loses the dropped ones
            keep = _dropout_keep(seed, rng_offset, bh, offs_m, start_n, drop_threshold, BLOCK_N=BLOCK_N,
                                 KEYS_FIRST=False)
            p = tl.where(keep, p, 0.0)
        v = _load_rows(v_ptrs, col_ok, dv_ok, CHECK_ROWS=MASKED, EVEN_D=EVEN_DV, COMPUTE_F32=COMPUTE_F32)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)       # (BLOCK_M, D_PAD) fp32
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
                     seed, rng_offset, drop_threshold, inv_keep,
                     HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                     EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
                     CAUSAL: tl.constexpr, BIAS_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                     COMPUTE_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Forward. Grid (cdiv(Sq, BLOCK_M), Hq, B): one program per query block of one (batch, query head).

    The program keeps its Q tile (BLOCK_M, D_PAD) in registers and streams the K/V blocks of KV head h // GROUP,
    keeping the running max m, sum l and unnormalised output acc (FlashAttention-2). Keys [0, n_full) are seen
    by every row of the block and run unmasked; [n_full, hi) cross the causal diagonal or the end of the keys
    and run masked; keys >= hi are invisible to every row and are skipped (_key_range). Writes out
    (B, Hq, Sq, D) in Out's dtype and lse (B, Hq, Sq) float32 (natural log; -inf for a row with nothing to
    attend to, whose out is 0). SQ_BUCKET and SK_BUCKET are only part of the autotuning key. DROPOUT: the
    probabilities are dropped by the stream of (seed, rng_offset) (tiles._dropout_keep) before P.V, and out is
    scaled by inv_keep = 1 / (1 - p); lse stays that of the scores.
    """
    m_lo, offs_m, h, b, hk = _query_program(GROUP, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M)  # offs_m (BLOCK_M,)
    offs_d = tl.arange(0, HEAD_DIM_PAD)                                          # (D_PAD,)
    row_ok = offs_m < Sq
    d_ok = offs_d < HEAD_DIM                                                     # q, k lanes
    dv_ok = offs_d < HEAD_DIM_V                                                  # v, out lanes

    q_ptrs = _row_tile(_bh_base(Q, b, h, stride_qb, stride_qh), offs_m, offs_d, stride_qm, stride_qd)
    q = _load_rows(q_ptrs, row_ok, d_ok, CHECK_ROWS=True, EVEN_D=EVEN_D, COMPUTE_F32=COMPUTE_F32)  # (BLOCK_M, D_PAD)
    k_base = _bh_base(K, b, hk, stride_kb, stride_kh)
    v_base = _bh_base(V, b, hk, stride_vb, stride_vh)
    bias_base = _bh_base(Bias, b, h, stride_bb, stride_bh)
    kpm_base = Kpm + b.to(tl.int64) * stride_kpmb
    bh = b.to(tl.int64) * Hq + h
    n_full, hi = _key_range(m_lo, Sq, Sk, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)                          # running max, log2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)                                        # running sum of exp2
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)                          # unnormalised output
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, bias_base, kpm_base,
                                    stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                                    offs_m, offs_d, row_ok, d_ok, dv_ok, 0, n_full, Sq, Sk, qk_scale,
                                    bh, seed, rng_offset, drop_threshold, DROPOUT=DROPOUT,
                                    MASKED=False, CAUSAL=CAUSAL, BIAS_KIND=BIAS_KIND, HAS_KPM=HAS_KPM,
                                    EVEN_D=EVEN_D, EVEN_DV=EVEN_DV, COMPUTE_F32=COMPUTE_F32,
                                    DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, bias_base, kpm_base,
                                    stride_kn, stride_kd, stride_vn, stride_vd, stride_bm, stride_bn,
                                    offs_m, offs_d, row_ok, d_ok, dv_ok, n_full, hi, Sq, Sk, qk_scale,
                                    bh, seed, rng_offset, drop_threshold, DROPOUT=DROPOUT,
                                    MASKED=True, CAUSAL=CAUSAL, BIAS_KIND=BIAS_KIND, HAS_KPM=HAS_KPM,
                                    EVEN_D=EVEN_D, EVEN_DV=EVEN_DV, COMPUTE_F32=COMPUTE_F32,
                                    DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N)

    out, lse2 = _normalise(acc, l_i, m_i)                                        # (BLOCK_M, D_PAD), (BLOCK_M,)
    if DROPOUT:
        out = out * inv_keep
    o_ptrs = _row_tile(_bh_base(Out, b, h, stride_ob, stride_oh), offs_m, offs_d, stride_om, stride_od)
    _store_tile(o_ptrs, out, row_ok, dv_ok)
    tl.store(Lse + bh * Sq + offs_m, lse2 * _LN2, mask=row_ok)                   # natural log


_attn_fwd_tuned = configs.tuned("fwd", _attn_fwd_kernel)


def unsupported_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                          key_padding_mask: Optional[Tensor], causal: bool, dropout_p: float = 0.0) -> Optional[str]:
    """None if the Triton kernels run this attention call, else a short reason. Cheap: shapes and dtypes only.
    Every dropout_p in [0, 1) runs (the Philox stream of the dropout module)."""
    why = _unsupported_common(q, [t for t in (k, v, bias, key_padding_mask) if t is not None],
                              max(q.shape[-1], v.shape[-1]))
    if why is not None:
        return why
    if q.shape[0] > _MAX_GRID_YZ or q.shape[1] > _MAX_GRID_YZ:
        return f"batch or heads > {_MAX_GRID_YZ}"
    if bias is not None and (bias.dim() != 4 or not bias.is_floating_point()):
        return "bias must be a 4-D float tensor"
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        return "key_padding_mask must be bool"
    return None


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], key_padding_mask: Optional[Tensor],
                  causal: bool, scale: float, dropout_p: float = 0.0, seed: int = 0, offset: int = 0
                  ) -> Tuple[Tensor, Tensor]:
    """(out (B, Hq, Sq, Dv) in q's dtype, contiguous; lse (B, Hq, Sq) float32). See the package docstring.
    dropout_p > 0: attention dropout with the stream of (seed, offset) (tiles._dropout_keep)."""
    b, hq, sq, d = q.shape
    hkv, sk, dv = k.shape[1], k.shape[2], v.shape[3]
    out = torch.empty((b, hq, sq, dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if sk == 0:  # nothing to attend to
        return out.zero_(), lse.fill_(float("-inf"))
    if not dropout_p and _use_hopper_forward(q, k, v, bias, key_padding_mask):
        with _device_guard(q):
            _attention_fwd_tma(q, k, v, causal, scale, out, lse)
        return out, lse
    bias_t, bs, bias_kind = _bias_args(bias, (b, hq, sq, sk), q)
    kpm, kpm_stride, has_kpm = _kpm_args(key_padding_mask, q)
    args = (q, k, v, bias_t, kpm, out, lse, *q.stride(), *k.stride(), *v.stride(), *bs, kpm_stride,
            *out.stride(), hq, sq, sk, hq // hkv, scale * LOG2E, _bucket(sq), _bucket(sk),
            *_dropout_args(dropout_p, seed, offset))
    meta = dict(_head_meta(q, d, dv), CAUSAL=bool(causal), BIAS_KIND=bias_kind, HAS_KPM=has_kpm,
                DROPOUT=dropout_p > 0)
    with _device_guard(q):
        configs.launch_pass("fwd", _attn_fwd_kernel, _attn_fwd_tuned,
                            lambda m: (triton.cdiv(sq, m["BLOCK_M"]), hq, b), args, meta, q.dtype, bias_t)
    return out, lse
