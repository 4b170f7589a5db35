"""Decode attention (flash-decoding): one query row per (batch, query head) against the first cache_seqlens[b]
positions of a KV cache, split along the cache, then the splits merged; and the launcher."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import configs
from .common import _MAX_GRID_YZ, _bucket, _device_guard, _head_meta, _unsupported_common
from .configs import _DECODE_SHAPES, _INTERP_BLOCK, _decode_num_splits
from .tiles import (LOG2E, _bh_base, _col_tile, _load_cols, _load_rows, _normalise, _online_softmax_step,
                    _row_tile, _store_tile)


@triton.jit
def _decode_split_kernel(Q, K, V, Seqlens, Out, OPart, LPart,
                         stride_qb, stride_qh, stride_qd,
                         stride_kb, stride_kh, stride_kn, stride_kd,
                         stride_vb, stride_vh, stride_vn, stride_vd,
                         stride_ob, stride_oh, stride_od,
                         Hq, GROUP, Smax, split_len, num_splits, qk_scale,
                         SMAX_BUCKET,
                         HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                         EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, BLOCK_G: tl.constexpr,
                         SINGLE_SPLIT: tl.constexpr, COMPUTE_F32: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Decode, one split. Grid (num_splits, Hkv, B): one program per (split of the cache, batch, KV head).

    The GROUP query heads that share KV head hk form the rows of one Q tile (BLOCK_G >= 16 rows for the tensor
    cores, the extra rows zero), so each K/V block is read once for the whole group. The program covers cache
    positions [split * split_len, min((split + 1) * split_len, cache_seqlens[b])) and never reads past the
    sequence's length (cache_seqlens[b] is clamped to Smax; a negative one reads nothing). With one split it
    writes the normalised output (B, Hq, D) directly; otherwise it writes its normalised partial output OPart
    (B, Hq, num_splits, Dv) float32 and partial log2-sum-exp LPart (B, Hq, num_splits) float32 (-inf for a split
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
    d_ok = offs_d < HEAD_DIM                                                     # q, k lanes
    dv_ok = offs_d < HEAD_DIM_V                                                  # v, out lanes
    heads = hk * GROUP + offs_g

    q_ptrs = _row_tile(Q + b.to(tl.int64) * stride_qb, heads, offs_d, stride_qh, stride_qd)
    q = _load_rows(q_ptrs, g_ok, d_ok, CHECK_ROWS=True, EVEN_D=EVEN_D, COMPUTE_F32=COMPUTE_F32)  # (BLOCK_G, D_PAD)
    offs_n = lo + tl.arange(0, BLOCK_N)
    kT_ptrs = _col_tile(_bh_base(K, b, hk, stride_kb, stride_kh), offs_n, offs_d, stride_kn, stride_kd)
    v_ptrs = _row_tile(_bh_base(V, b, hk, stride_vb, stride_vh), offs_n, offs_d, stride_vn, stride_vd)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM_PAD], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        # why: positions past the split's end or cache_seqlens[b] may hold anything (NaN): never load them
        col_ok = cols < hi
        kT = _load_cols(kT_ptrs, col_ok, d_ok, CHECK_COLS=True, EVEN_D=EVEN_D, COMPUTE_F32=COMPUTE_F32)
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale             # (BLOCK_G, BLOCK_N) log2
        s = tl.where(col_ok[None, :], s, float("-inf"))                          # why: unloaded keys weigh 0
        p, m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc)
        v = _load_rows(v_ptrs, col_ok, dv_ok, CHECK_ROWS=True, EVEN_D=EVEN_DV, COMPUTE_F32=COMPUTE_F32)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)      # (BLOCK_G, D_PAD)
        kT_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn

    # a split (or a sequence) with no keys: output 0 and weight 0 (lse2 -inf)
    out, lse2 = _normalise(acc, l_i, m_i)                                        # (BLOCK_G, D_PAD), (BLOCK_G,)
    if SINGLE_SPLIT:
        o_ptrs = _row_tile(Out + b.to(tl.int64) * stride_ob, heads, offs_d, stride_oh, stride_od)
        _store_tile(o_ptrs, out, g_ok, dv_ok)  # why g_ok: padding rows past GROUP are not heads of this group
    else:
        row = (b.to(tl.int64) * Hq + heads) * num_splits + split                 # (BLOCK_G,) into (B, Hq, splits)
        _store_tile(OPart + row[:, None] * HEAD_DIM_V + offs_d[None, :], out, g_ok, dv_ok)
        tl.store(LPart + row, lse2, mask=g_ok)


@triton.jit
def _decode_combine_kernel(OPart, LPart, Out, stride_ob, stride_oh, stride_od, Hq, num_splits,
                           HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_S: tl.constexpr):
    """Decode, merge. Grid (Hq, B): one program per (batch, query head) merges its num_splits partial outputs
    with weights 2^(lse_s - max lse) (log-sum-exp in log2 units) and writes out (B, Hq, D) in Out's dtype; a
    sequence with no keys at all gives 0. HEAD_DIM is the value head dim here (the width of out)."""
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
    tl.store(_bh_base(Out, b, h, stride_ob, stride_oh) + offs_d * stride_od, out.to(Out.dtype.element_ty),
             mask=d_ok)


_decode_split_tuned = configs.tuned_decode(_decode_split_kernel)


def unsupported_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor) -> Optional[str]:
    """None if the Triton decode kernels run this call, else a short reason. Cheap: shapes and dtypes only."""
    why = _unsupported_common(q, (k_cache, v_cache, cache_seqlens), max(q.shape[-1], v_cache.shape[-1]))
    if why is not None:
        return why
    if q.shape[0] > _MAX_GRID_YZ or k_cache.shape[1] > _MAX_GRID_YZ:
        return f"batch or heads > {_MAX_GRID_YZ}"
    return None


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, scale: float,
                     num_splits: Optional[int] = None) -> Tensor:
    """out (B, Hq, Dv) in q's dtype: q (B, Hq, D) against the first cache_seqlens[b] positions of the caches
    k_cache (B, Hkv, Smax, D) and v_cache (B, Hkv, Smax, Dv). num_splits: key splits per (batch, KV head);
    default from the SM count (flash-decoding).
    With more than one split, partial results go through a float32 (B, Hq, splits, D) buffer and a combine."""
    b, hq, d = q.shape
    hkv, smax, dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    out = torch.empty((b, hq, dv), dtype=q.dtype, device=q.device)
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
        o_part = torch.empty((b, hq, splits, dv), dtype=torch.float32, device=q.device)
        l_part = torch.empty((b, hq, splits), dtype=torch.float32, device=q.device)
    head = _head_meta(q, d, dv)
    args = (q, k_cache, v_cache, seqlens, out, o_part, l_part, *q.stride(), *k_cache.stride(), *v_cache.stride(),
            *out.stride(), hq, group, smax, split_len, splits, scale * LOG2E, _bucket(smax))
    meta = dict(head, BLOCK_G=max(16, triton.next_power_of_2(group)), SINGLE_SPLIT=single)

    def fixed():
        bn, warps, stages = _DECODE_SHAPES[0]
        return dict(BLOCK_N=bn), warps, stages

    with _device_guard(q):
        configs.launch(_decode_split_kernel, _decode_split_tuned, lambda m: (splits, hkv, b), args, meta,
                       interp_blocks=dict(BLOCK_N=_INTERP_BLOCK), fixed=fixed)
        if not single:
            _decode_combine_kernel[(hq, b)](o_part, l_part, out, *out.stride(), hq, splits,
                                            HEAD_DIM=dv, HEAD_DIM_PAD=head["HEAD_DIM_PAD"],
                                            BLOCK_S=triton.next_power_of_2(splits))
    return out
