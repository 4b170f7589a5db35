"""Attention forward on Hopper through TMA tensor descriptors: OPT-IN (FASTATTN_TRITON_HOPPER=1) AND NOT YET
VALIDATED ON A GPU; see the package docstring. Same block order, loop split, online softmax and epilogue as the
pointer forward (forward.py), from the same tile helpers; only the loads and the output store differ."""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from . import configs
from .common import _INTERPRETED, MAX_HEAD_DIM, _bucket, _head_dim_pad, _precision
from .configs import _INTERP_BLOCK, _hopper_shapes, autotune_enabled
from .tiles import LOG2E, _LN2, _bound_mask, _key_range, _normalise, _online_softmax_step, _query_program


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
            # why: the zero rows past Sk must weigh 0, not exp2(0 - m); and the causal diagonal
            cols = start_n + tl.arange(0, BLOCK_N)
            s = _bound_mask(s, cols, cols < Sk, offs_m, Sq, Sk, CAUSAL=CAUSAL)
        p, m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc)
        v = desc_v.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)         # (BLOCK_N, D)
        if COMPUTE_F32:
            v = v.to(tl.float32)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)       # (BLOCK_M, D) fp32
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
    m_lo, offs_m, h, b, hk = _query_program(GROUP, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M)  # offs_m (BLOCK_M,)
    q = desc_q.load([b, h, m_lo, 0]).reshape(BLOCK_M, HEAD_DIM)                  # (BLOCK_M, D)
    if COMPUTE_F32:  # the interpreter (COMPUTE_F32 as in _load_rows)
        q = q.to(tl.float32)
    n_full, hi = _key_range(m_lo, Sq, Sk, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if WARP_SPEC:
        # one loop, every block masked: Triton 3.6 warp-specialises a single straight-line loop only (a second
        # loop, or a branch in the loop, made its pass fail or do nothing)
        acc, l_i, m_i = _attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, b, hk, offs_m, 0, hi, Sq, Sk,
                                            qk_scale, MASKED=True, CAUSAL=CAUSAL, HEAD_DIM=HEAD_DIM,
                                            COMPUTE_F32=COMPUTE_F32, DOT_PRECISION=DOT_PRECISION,
                                            BLOCK_N=BLOCK_N, WARP_SPEC=True)
    else:
        acc, l_i, m_i = _attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, b, hk, offs_m, 0, n_full, Sq, Sk,
                                            qk_scale, MASKED=False, CAUSAL=CAUSAL, HEAD_DIM=HEAD_DIM,
                                            COMPUTE_F32=COMPUTE_F32, DOT_PRECISION=DOT_PRECISION,
                                            BLOCK_N=BLOCK_N, WARP_SPEC=False)
        acc, l_i, m_i = _attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, b, hk, offs_m, n_full, hi, Sq, Sk,
                                            qk_scale, MASKED=True, CAUSAL=CAUSAL, HEAD_DIM=HEAD_DIM,
                                            COMPUTE_F32=COMPUTE_F32, DOT_PRECISION=DOT_PRECISION,
                                            BLOCK_N=BLOCK_N, WARP_SPEC=False)

    out, lse2 = _normalise(acc, l_i, m_i)                                        # (BLOCK_M, D), (BLOCK_M,)
    desc_o.store([b, h, m_lo, 0], out.to(desc_o.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))
    tl.store(Lse + (b.to(tl.int64) * Hq + h) * Sq + offs_m, lse2 * _LN2, mask=offs_m < Sq)


_attn_fwd_tma_tuned = configs.tuned_hopper(_attn_fwd_tma_kernel)


def hopper_enabled() -> bool:
    """FASTATTN_TRITON_HOPPER=1 opts in to the TMA forward on compute capability 9.x (read at every launch)."""
    return os.environ.get("FASTATTN_TRITON_HOPPER", "0") == "1"


def tma_forward_supports(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                         key_padding_mask: Optional[Tensor]) -> bool:
    """Whether _attn_fwd_tma_kernel handles this call: 16-bit q, k, v, no bias or key padding, D a power of two
    in [16, 256] and Dv = D, and what a TMA descriptor needs: 16-byte aligned bases and strides, unit stride along D."""
    d = q.shape[-1]
    if bias is not None or key_padding_mask is not None or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if d != _head_dim_pad(d) or d > MAX_HEAD_DIM or v.shape[-1] != d:  # one block width for q, k, v, out
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
    else:  # block shapes set per config by configs._tma_block_shapes
        descs = (desc(q, 16), desc(k, 16), desc(v, 16), desc(out, 16))
        _attn_fwd_tma_tuned[lambda m: (triton.cdiv(sq, m["BLOCK_M"]), hq, b)](*descs, lse, *args, **meta)
