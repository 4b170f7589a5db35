"""Shapes for the SDPA drop-in: every rank and broadcast torch.nn.functional.scaled_dot_product_attention
accepts, as the 4-D (B, H, S, D) views fastattn.attention takes, through views only (stride-0 expands and
reshapes that never copy q, k, v or the mask).

PyTorch's rules (its math path): query (..., L, E), key (..., S, E), value (..., S, Ev), each at least 2-D. The
dims before the last two broadcast against each other as in matmul (size-1 dims and missing leading dims);
dim -3 counts as the head dim, so with enable_gqa=True key and value may have fewer heads than the query, each
dividing the query's (repeat_interleave semantics); without it a key/value head dim of 1 simply broadcasts. The
mask broadcasts to the score shape (batch dims of query and key, L, S) and may not enlarge it.

Mapping: the broadcast batch shape ``lead`` = (*outer, H); the outer dims fold into one batch dim B (a view of
the expanded tensor), H is the query head dim. Key/value keep their own head count Hkv where it differs
(GQA/MQA in the kernels, no repeat); a key or value with one head where the other has Hkv is expanded along
heads with stride 0. When the outer dims of some tensor cannot fold into one (a broadcast over some of several
outer dims), the leading ones that do not fold stay apart and the caller loops over them (``prefix``).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor


class SdpaShapeError(ValueError, RuntimeError):
    """A shape SDPA rejects. Both a ValueError (fastattn's convention) and a RuntimeError (what PyTorch's SDPA
    raises), so code written against either keeps catching it."""


class SdpaViews(NamedTuple):
    q: Tensor                 # (*prefix, B, H, L, E)
    k: Tensor                 # (*prefix, B, Hkv, S, E)
    v: Tensor                 # (*prefix, B, Hkv, S, Ev)
    outer: Tuple[int, ...]    # the batch dims before the head dim; prefix = outer[:n_prefix]
    n_prefix: int             # leading outer dims not folded into B (0 for every common shape)
    heads: int                # H
    out_shape: Tuple[int, ...]  # the shape PyTorch returns: lead + (L, Ev)


def _heads(t: Tensor) -> int:
    return t.shape[-3] if t.dim() >= 3 else 1


def _pad(t: Tensor, rank: int) -> Tensor:
    """t viewed with leading size-1 dims up to ``rank`` dims (a view, never a copy)."""
    return t.view((1,) * (rank - t.dim()) + tuple(t.shape)) if t.dim() < rank else t


def _broadcast(what: str, *shapes) -> Tuple[int, ...]:
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError as e:  # where PyTorch's matmul broadcast fails too
        raise SdpaShapeError(f"scaled_dot_product_attention: the batch dims of {what} do not broadcast "
                             f"({', '.join(str(tuple(x)) for x in shapes)}): {e}") from None


def _fold(t: Tensor, outer, n_prefix: int) -> Optional[Tensor]:
    """t (*outer, h, s, e), possibly with stride-0 dims, as (*outer[:n_prefix], prod(outer[n_prefix:]), h, s, e)
    by a view; None when those strides do not fold into one."""
    try:
        return t.view(*outer[:n_prefix], math.prod(outer[n_prefix:]), *t.shape[-3:])
    except RuntimeError:
        return None


def kv_heads(query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool) -> Tuple[int, int, int, bool]:
    """(H, Hk, Hv, gqa): the query's heads and the key's and value's as PyTorch reads them. gqa: enable_gqa
    and some key/value head count differs from the query's (then each must divide it, as PyTorch checks)."""
    hq, hk, hv = _heads(query), _heads(key), _heads(value)
    gqa = enable_gqa and not (hq == hk == hv)
    if gqa and (min(query.dim(), key.dim(), value.dim()) < 3 or hq % hk or hq % hv):
        raise SdpaShapeError(f"scaled_dot_product_attention: with enable_gqa=True the number of heads of key "
                           f"({hk}) and value ({hv}) must divide the query's ({hq}), on inputs of at least 3 "
                           "dimensions")
    return hq, hk, hv, gqa


def views(query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool) -> Optional[SdpaViews]:
    """The 4-D views of q, k, v (see the module docstring), or None for the one broadcast the kernels cannot
    read without a copy: with enable_gqa, key and value with different head counts, neither of them 1."""
    for n, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() < 2:
            raise SdpaShapeError(f"scaled_dot_product_attention: {n} must have at least 2 dimensions (..., L, E), "
                               f"got shape {tuple(t.shape)}")
    if key.shape[-1] != query.shape[-1]:
        raise SdpaShapeError(f"scaled_dot_product_attention: key's last dim must equal query's E="
                           f"{query.shape[-1]}, got key {tuple(key.shape)}")
    if value.shape[-2] != key.shape[-2]:
        raise SdpaShapeError(f"scaled_dot_product_attention: value must have key's sequence length S="
                           f"{key.shape[-2]} in dim -2, got value {tuple(value.shape)}")
    hq, hk, hv, gqa = kv_heads(query, key, value, enable_gqa)
    qb, kb, vb = query.shape[:-2], key.shape[:-2], value.shape[:-2]
    if gqa:  # for broadcasting, the key/value head dims stand for the query's
        kb, vb = kb[:-1] + (hq,), vb[:-1] + (hq,)
    if not gqa and 1 not in (hq, hk) and hq != hk and min(query.dim(), key.dim()) >= 3:
        raise SdpaShapeError(f"scaled_dot_product_attention: query has {hq} heads but key/value have {hk}: pass "
                             "enable_gqa=True for GQA/MQA")
    lead = _broadcast("query, key and value", qb, kb, vb)
    outer, heads = (lead[:-1], lead[-1]) if lead else ((), 1)
    # key/value heads in the kernels: their own under GQA; else H or 1 (a broadcast head dim, or none)
    if not gqa:
        hk, hv = (kb[-1] if kb else 1), (vb[-1] if vb else 1)
    if hk != hv and 1 not in (hk, hv):
        return None
    hkv = max(hk, hv)
    rank = len(outer) + 3
    q = _pad(query, rank).expand(*outer, heads, *query.shape[-2:])
    k = _pad(key, rank).expand(*outer, hkv, *key.shape[-2:])
    v = _pad(value, rank).expand(*outer, hkv, *value.shape[-2:])
    for n_prefix in range(len(outer) + 1):
        folded = [_fold(t, outer, n_prefix) for t in (q, k, v)]
        if all(f is not None for f in folded):
            break
    q4, k4, v4 = folded
    out_shape = _broadcast("query, key and value", qb, kb, vb) + (query.shape[-2], value.shape[-1])
    return SdpaViews(q4, k4, v4, tuple(outer), n_prefix, heads, out_shape)


def score_batch_shape(query: Tensor, key: Tensor, enable_gqa: bool) -> Tuple[int, ...]:
    """The batch dims of the score tensor q k^T (the mask broadcasts to them and may not enlarge them)."""
    qb, kb = query.shape[:-2], key.shape[:-2]
    if enable_gqa and len(kb) and len(qb) and kb[-1] != qb[-1]:
        kb = kb[:-1] + (qb[-1],)
    return _broadcast("query and key", qb, kb)


def mask_view(mask: Tensor, vw: SdpaViews) -> Tensor:
    """An attn_mask (or the bias made from it) broadcast like the scores, as
    (*prefix, B or 1, H or 1, L or 1, S or 1): size-1 dims stay size 1 where the mask broadcasts (so the kernels
    read it as a row or a vector, and its gradient is summed small), the outer dims are folded like q's."""
    rank = len(vw.outer) + 3
    m = _pad(mask, rank)
    mo = m.shape[:len(vw.outer)]
    tail = m.shape[len(vw.outer):]
    if all(n == 1 for n in mo[vw.n_prefix:]):   # broadcast along every folded dim: keep B = 1
        m = m.expand(*vw.outer[:vw.n_prefix], *mo[vw.n_prefix:], *tail)
        return m.reshape(*vw.outer[:vw.n_prefix], 1, *tail)   # only size-1 dims merge: a view
    m = m.expand(*vw.outer, *tail)
    folded = _fold(m, vw.outer, vw.n_prefix)
    if folded is None:  # the mask's strides do not fold where q's did: this copies the mask (never q, k or v)
        folded = m.reshape(*vw.outer[:vw.n_prefix], math.prod(vw.outer[vw.n_prefix:]), *tail)
    return folded
