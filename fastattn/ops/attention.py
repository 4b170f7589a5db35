"""Attention: public functions, checks, custom ops (fastattn::attention_fwd/bwd, decode_attention), fakes and
autograd. The kernels live in fastattn.triton.attention and the CUDA extension; the reference in
fastattn.reference.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import reference
from . import _checks, _dispatch

ATTN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# PyTorch's own SDPA, captured before anyone assigns fastattn's to F.scaled_dot_product_attention; used for
# the calls fastattn does not handle (dropout during training, value head dim unlike the query's).
_torch_sdpa = torch.nn.functional.scaled_dot_product_attention


def _kernel_module(backend: str):
    return _dispatch.backend_for("attention", backend).kernels


# ----------------------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------------------

@torch.library.custom_op("fastattn::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], key_padding_mask: Optional[Tensor],
                  causal: bool, scale: float, backend: str) -> Tuple[Tensor, Tensor]:
    """(out (B, Hq, Sq, D) in q's dtype, lse (B, Hq, Sq) float32). bias is 4-D, broadcastable."""
    if backend == "torch":
        out, lse = reference.attention(q, k, v, causal=causal, scale=scale, bias=bias,
                                       key_padding_mask=key_padding_mask)
        # The reference keeps float64 row statistics for float64 inputs; the op's lse is float32 for every
        # dtype (the contract, and the fake). Its float64 backward recomputes them from the scores instead.
        return out, lse.float()
    return _kernel_module(backend).attention_fwd(q, k, v, bias, key_padding_mask, causal, scale)


@attention_fwd.register_fake
def _(q, k, v, bias, key_padding_mask, causal, scale, backend):
    b, hq, sq, _ = q.shape
    return q.new_empty((b, hq, sq, v.shape[-1])), q.new_empty((b, hq, sq), dtype=torch.float32)


@torch.library.custom_op("fastattn::attention_bwd", mutates_args=())
def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, bias: Optional[Tensor],
                  key_padding_mask: Optional[Tensor], causal: bool, scale: float, bias_requires_grad: bool,
                  backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dbias); dbias has bias's shape when bias_requires_grad, else it is empty."""
    if backend == "torch":
        dq, dk, dv, dbias = reference.attention_backward(
            dout, q, k, v, out, lse, causal=causal, scale=scale, bias=bias, key_padding_mask=key_padding_mask,
            bias_requires_grad=bias_requires_grad)
    else:
        dq, dk, dv, dbias = _kernel_module(backend).attention_bwd(
            dout, q, k, v, out, lse, bias, key_padding_mask, causal, scale, bias_requires_grad)
    if dbias is None:
        dbias = q.new_empty((0,))
    return dq, dk, dv, dbias


@attention_bwd.register_fake
def _(dout, q, k, v, out, lse, bias, key_padding_mask, causal, scale, bias_requires_grad, backend):
    dbias = bias.new_empty(bias.shape) if (bias is not None and bias_requires_grad) else q.new_empty((0,))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias


def _fwd_setup_context(ctx, inputs, output):
    q, k, v, bias, key_padding_mask, causal, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias, key_padding_mask)
    ctx.causal, ctx.scale, ctx.backend = causal, scale, backend


def _fwd_backward(ctx, dout, dlse):
    q, k, v, out, lse, bias, key_padding_mask = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dbias = attention_bwd(dout, q, k, v, out, lse, bias, key_padding_mask, ctx.causal,
                                      ctx.scale, bias_grad, ctx.backend)
    # The lse output is for inspection: gradients through it are not propagated (as in FlashAttention).
    return dq, dk, dv, (dbias if bias_grad else None), None, None, None, None


attention_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


@torch.library.custom_op("fastattn::decode_attention", mutates_args=())
def decode_attention_op(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, scale: float,
                        backend: str) -> Tensor:
    if backend == "torch":
        return reference.decode_attention(q, k_cache, v_cache, cache_seqlens, scale=scale)
    return _kernel_module(backend).decode_attention(q, k_cache, v_cache, cache_seqlens, scale)


@decode_attention_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, scale, backend):
    return q.new_empty(q.shape)


# ----------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------

def _check_qkv(q, k, v):
    _checks.tensor("q", q, ndim=4, dtypes=ATTN_DTYPES + (torch.float64,))
    _checks.tensor("k", k, ndim=4)
    _checks.tensor("v", v, ndim=4)
    _checks.same_dtype(("q", q), ("k", k), ("v", v))
    _checks.same_device(("q", q), ("k", k), ("v", v))
    b, hq, sq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, Hkv, Sk, D), got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k must have shape (B={b}, Hkv, Sk, D={d}) to match q {tuple(q.shape)}, got "
                         f"{tuple(k.shape)}")
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"the number of query heads Hq={hq} must be a multiple of the key/value heads "
                         f"Hkv={hkv} (GQA/MQA)")
    if d == 0:
        raise ValueError("q, k and v must have a head dim D > 0")


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: Optional[float] = None,
              bias: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None, return_lse: bool = False,
              backend: str = "auto"):
    """Fused multi-head attention softmax(q k^T * scale + bias) v over (B, H, S, D) tensors.

    q: (B, Hq, Sq, D); k, v: (B, Hkv, Sk, D) with Hq % Hkv == 0 (GQA/MQA); Sq may differ from Sk.
    causal: query i attends to keys j <= i + (Sk - Sq) (aligned bottom-right, as in FlashAttention).
    bias: float tensor broadcastable to (B, Hq, Sq, Sk), added to the scaled scores; differentiable.
    key_padding_mask: bool (B, Sk), True = real token. scale: default 1/sqrt(D).
    A row with no key to attend to returns zeros. return_lse: also return the float32 (B, Hq, Sq) log-sum-exp
    of the scaled scores (-inf for such rows). Differentiable in q, k, v and bias.
    """
    _check_qkv(q, k, v)
    b, hq, sq, d = q.shape
    sk = k.shape[2]
    scale = _checks.finite_scale(scale)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if bias is not None:
        _checks.tensor("bias", bias, dtypes=_checks.FLOAT_DTYPES)
        _checks.broadcastable("bias", bias, (b, hq, sq, sk), "(B, Hq, Sq, Sk) =")
        _checks.same_device(("q", q), ("bias", bias))
        bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape)) if bias.dim() < 4 else bias
    if key_padding_mask is not None:
        _checks.tensor("key_padding_mask", key_padding_mask, ndim=2, dtypes=(torch.bool,))
        if tuple(key_padding_mask.shape) != (b, sk):
            raise ValueError(f"key_padding_mask must have shape (B, Sk) = ({b}, {sk}), got "
                             f"{tuple(key_padding_mask.shape)}")
        _checks.same_device(("q", q), ("key_padding_mask", key_padding_mask))
    chosen = _dispatch.select(backend, "attention", "attention", "attention_fwd", q.device, q.dtype,
                              "unsupported_attention", (q, k, v, bias, key_padding_mask, causal))
    out, lse = attention_fwd(q, k, v, bias, key_padding_mask, causal, scale, chosen.name)
    return (out, lse) if return_lse else out


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, *,
                     scale: Optional[float] = None, backend: str = "auto") -> Tensor:
    """Attention of one new query token per sequence against a KV cache.

    q: (B, Hq, D); k_cache, v_cache: (B, Hkv, Smax, D); cache_seqlens: int32 (B,), how many cache positions of
    each sequence are valid (positions past it are never read). Returns (B, Hq, D). A sequence of length 0
    returns zeros. Lengths outside [0, Smax] are clamped to that range on every device and backend, since
    checking them would synchronise the device on every decode step; FASTATTN_STRICT_CHECKS=1 checks them
    (synchronising) and raises instead.
    """
    _checks.tensor("q", q, ndim=3, dtypes=ATTN_DTYPES + (torch.float64,))
    _checks.tensor("k_cache", k_cache, ndim=4)
    _checks.tensor("v_cache", v_cache, ndim=4)
    _checks.tensor("cache_seqlens", cache_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    _checks.same_dtype(("q", q), ("k_cache", k_cache), ("v_cache", v_cache))
    _checks.same_device(("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("cache_seqlens", cache_seqlens))
    b, hq, d = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    if k_cache.shape[0] != b or k_cache.shape[3] != d:
        raise ValueError(f"k_cache must have shape (B={b}, Hkv, Smax, D={d}) to match q {tuple(q.shape)}, got "
                         f"{tuple(k_cache.shape)}")
    hkv, smax = k_cache.shape[1], k_cache.shape[2]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"the number of query heads Hq={hq} must be a multiple of the cache heads Hkv={hkv}")
    if cache_seqlens.shape[0] != b:
        raise ValueError(f"cache_seqlens must have shape (B,) = ({b},), got {tuple(cache_seqlens.shape)}")
    # Not checked by default: the check would synchronise every decode step. The kernels and the reference
    # clamp each length to [0, Smax] instead (no position outside the cache is ever read).
    if _checks.STRICT and not _checks.is_compiling() and cache_seqlens.numel():
        lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
        if lo < 0 or hi > smax:
            raise ValueError(f"cache_seqlens must lie in [0, Smax={smax}], got values in [{lo}, {hi}]")
    scale = _checks.finite_scale(scale)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    chosen = _dispatch.select(backend, "attention", "decode_attention", "decode_attention", q.device, q.dtype,
                              "unsupported_decode", (q, k_cache, v_cache, cache_seqlens))
    lens = cache_seqlens.to(torch.int32)
    if _dispatch.eager_kernel_call(chosen):  # one call per layer per generated token: skip the op's dispatch
        return chosen.kernels.decode_attention(q, k_cache, v_cache, lens, scale)
    return decode_attention_op(q, k_cache, v_cache, lens, scale, chosen.name)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """Drop-in for torch.nn.functional.scaled_dot_product_attention (same signature and semantics).

    Inputs are (N, ..., L, E) / (N, ..., S, E); attn_mask is bool (True = attend) or float (added to the
    scores) and broadcasts to (N, ..., L, S); is_causal is aligned top-left, as in PyTorch. A query row with
    nothing to attend to returns zeros. Calls with dropout_p > 0, or a value head dim unlike the query's, are
    passed to PyTorch's own implementation: fastattn's kernels have no dropout.
    """
    for n, t in (("query", query), ("key", key), ("value", value)):
        _checks.tensor(n, t)
        if t.dim() < 3:
            raise ValueError(f"{n} must have at least 3 dimensions (N, ..., L, E), got shape {tuple(t.shape)}")
    if is_causal and attn_mask is not None:  # RuntimeError, as PyTorch raises it
        raise RuntimeError("scaled_dot_product_attention: an explicit attn_mask must not be set when "
                           "is_causal=True (pass one or the other)")
    if dropout_p or value.shape[-1] != query.shape[-1]:
        return _torch_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                           scale=scale, enable_gqa=enable_gqa)
    lead = query.shape[:-2]
    if query.dim() == 3:  # (N, L, E): one head
        q4, k4, v4 = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    else:  # (N, ..., H, L, E): fold the extra leading dims into the batch
        q4 = query.reshape(-1, *query.shape[-3:])
        k4 = key.reshape(-1, *key.shape[-3:])
        v4 = value.reshape(-1, *value.shape[-3:])
    hq, hkv = q4.shape[1], k4.shape[1]
    if hq != hkv and not enable_gqa:
        raise ValueError(f"query has {hq} heads but key/value have {hkv}: pass enable_gqa=True for GQA/MQA")
    b, _, sq, _ = q4.shape
    sk = k4.shape[2]
    bias = None
    key_padding_mask = None
    causal = False
    if is_causal:
        if sq == sk:
            causal = True
        else:  # PyTorch aligns is_causal top-left: key j is visible to query i iff j <= i.
            i = torch.arange(sq, device=query.device).view(sq, 1)
            j = torch.arange(sk, device=query.device).view(1, sk)
            attn_mask = j <= i
    if attn_mask is not None:
        _checks.tensor("attn_mask", attn_mask)
        _checks.broadcastable("attn_mask", attn_mask, tuple(lead) + (sq, sk), "(N, ..., L, S) =")
        full = attn_mask.expand(tuple(lead) + (sq, sk))
        full = full.unsqueeze(1) if query.dim() == 3 else full.reshape(b, hq, sq, sk)
        if attn_mask.dtype == torch.bool and _is_key_padding(attn_mask, query.dim()):
            key_padding_mask = full[:, 0, 0, :]   # (B, Sk): one mask row per batch, shared by heads and queries
        else:
            bias = reference.sdpa_mask_to_bias(attn_mask, query.dtype if attn_mask.dtype == torch.bool
                                               else attn_mask.dtype)
            bias = bias.expand(tuple(lead) + (sq, sk))
            bias = bias.unsqueeze(1) if query.dim() == 3 else bias.reshape(b, hq, sq, sk)
    out = attention(q4, k4, v4, causal=causal, scale=scale, bias=bias, key_padding_mask=key_padding_mask)
    return out.reshape(query.shape[:-1] + (value.shape[-1],))


def _is_key_padding(mask: Tensor, qdim: int) -> bool:
    """True for a bool mask that varies only along the batch and key axes, e.g. (N, 1, 1, S) or (1, S)."""
    shape = (1,) * (qdim - mask.dim()) + tuple(mask.shape)
    return all(n == 1 for n in shape[1:-1])
