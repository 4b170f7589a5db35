"""Attention: public functions, checks, custom ops (fastattn::attention_fwd/bwd, decode_attention), fakes and
autograd. The kernels live in fastattn.triton.attention and the CUDA extension; the reference in
fastattn.reference.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, reference
from . import _checks, _dispatch, _sdpa_shapes

ATTN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# PyTorch's own SDPA, captured before anyone assigns fastattn's to F.scaled_dot_product_attention; used for
# the calls fastattn does not handle, all of them listed here:
_PYTORCH_FALLBACKS = (
    "dropout_p >= 1: every probability dropped (PyTorch's definition of that edge)",
    "enable_gqa with key and value of different head counts, neither of them 1: the kernels read one KV head "
    "count, and a view cannot repeat heads without copying K or V",
)
# A value head dim unlike the query's (Dv != D) is not among them: the Triton kernels and the reference take it
# (fastattn.attention, decode_attention); a backend that cannot says so in its unsupported_attention.
_torch_sdpa = torch.nn.functional.scaled_dot_product_attention


def _kernel_module(backend: str):
    return _dispatch.backend_for("attention", backend).kernels


# ----------------------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------------------

@torch.library.custom_op("fastattn::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], key_padding_mask: Optional[Tensor],
                  causal: bool, scale: float, backend: str, dropout_p: float = 0.0, seed: int = 0,
                  offset: int = 0) -> Tuple[Tensor, Tensor]:
    """(out (B, Hq, Sq, Dv) in q's dtype, lse (B, Hq, Sq) float32). bias is 4-D, broadcastable. dropout_p > 0:
    attention dropout drawn from the counter-based stream of (seed, offset) (fastattn.reference.dropout_keep)."""
    if backend == "torch":
        out, lse = reference.attention(q, k, v, causal=causal, scale=scale, bias=bias,
                                       key_padding_mask=key_padding_mask, dropout_p=dropout_p, seed=seed,
                                       offset=offset)
        # The reference keeps float64 row statistics for float64 inputs; the op's lse is float32 for every
        # dtype (the contract, and the fake). Its float64 backward recomputes them from the scores instead.
        return out, lse.float()
    if dropout_p:
        return _kernel_module(backend).attention_fwd(q, k, v, bias, key_padding_mask, causal, scale, dropout_p,
                                                     seed, offset)
    return _kernel_module(backend).attention_fwd(q, k, v, bias, key_padding_mask, causal, scale)


@attention_fwd.register_fake
def _(q, k, v, bias, key_padding_mask, causal, scale, backend, dropout_p=0.0, seed=0, offset=0):
    b, hq, sq, _ = q.shape
    return q.new_empty((b, hq, sq, v.shape[-1])), q.new_empty((b, hq, sq), dtype=torch.float32)


@torch.library.custom_op("fastattn::attention_bwd", mutates_args=())
def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, bias: Optional[Tensor],
                  key_padding_mask: Optional[Tensor], causal: bool, scale: float, bias_requires_grad: bool,
                  backend: str, dropout_p: float = 0.0, seed: int = 0, offset: int = 0
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dbias); dbias has bias's shape when bias_requires_grad, else it is empty. The dropout mask
    of the forward is regenerated from (seed, offset)."""
    if backend == "torch":
        dq, dk, dv, dbias = reference.attention_backward(
            dout, q, k, v, out, lse, causal=causal, scale=scale, bias=bias, key_padding_mask=key_padding_mask,
            bias_requires_grad=bias_requires_grad, dropout_p=dropout_p, seed=seed, offset=offset)
    elif dropout_p:
        dq, dk, dv, dbias = _kernel_module(backend).attention_bwd(
            dout, q, k, v, out, lse, bias, key_padding_mask, causal, scale, bias_requires_grad, dropout_p, seed,
            offset)
    else:
        dq, dk, dv, dbias = _kernel_module(backend).attention_bwd(
            dout, q, k, v, out, lse, bias, key_padding_mask, causal, scale, bias_requires_grad)
    if dbias is None:
        dbias = q.new_empty((0,))
    return dq, dk, dv, dbias


@attention_bwd.register_fake
def _(dout, q, k, v, out, lse, bias, key_padding_mask, causal, scale, bias_requires_grad, backend, dropout_p=0.0,
      seed=0, offset=0):
    dbias = bias.new_empty(bias.shape) if (bias is not None and bias_requires_grad) else q.new_empty((0,))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias


def _fwd_setup_context(ctx, inputs, output):
    q, k, v, bias, key_padding_mask, causal, scale, backend = inputs[:8]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias, key_padding_mask)
    ctx.causal, ctx.scale, ctx.backend = causal, scale, backend
    ctx.dropout = tuple(inputs[8:])   # (dropout_p, seed, offset) when given: the mask is regenerated, not saved


def _fwd_backward(ctx, dout, dlse):
    q, k, v, out, lse, bias, key_padding_mask = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dbias = attention_bwd(dout, q, k, v, out, lse, bias, key_padding_mask, ctx.causal,
                                      ctx.scale, bias_grad, ctx.backend, *ctx.dropout)
    # The lse output is for inspection: gradients through it are not propagated (as in FlashAttention).
    return (dq, dk, dv, (dbias if bias_grad else None)) + (None,) * (4 + len(ctx.dropout))


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
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must have the same shape but for the head dim, (B, Hkv, Sk, D) and (B, Hkv, "
                         f"Sk, Dv), got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k must have shape (B={b}, Hkv, Sk, D={d}) to match q {tuple(q.shape)}, got "
                         f"{tuple(k.shape)}")
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"the number of query heads Hq={hq} must be a multiple of the key/value heads "
                         f"Hkv={hkv} (GQA/MQA)")
    if d == 0 or v.shape[3] == 0:
        raise ValueError(f"q, k and v must have head dims D, Dv > 0, got D={d}, Dv={v.shape[3]}")


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: Optional[float] = None,
              bias: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None, return_lse: bool = False,
              dropout_p: float = 0.0, backend: str = "auto"):
    """Fused multi-head attention softmax(q k^T * scale + bias) v over (B, H, S, D) tensors.

    q: (B, Hq, Sq, D); k: (B, Hkv, Sk, D), v: (B, Hkv, Sk, Dv) with Hq % Hkv == 0 (GQA/MQA); Sq may differ
    from Sk, and Dv from D (multi-head latent attention); the output is (B, Hq, Sq, Dv).
    causal: query i attends to keys j <= i + (Sk - Sq) (aligned bottom-right, as in FlashAttention).
    bias: float tensor broadcastable to (B, Hq, Sq, Sk), added to the scaled scores; differentiable.
    key_padding_mask: bool (B, Sk), True = real token. scale: default 1/sqrt(D).
    A row with no key to attend to returns zeros. return_lse: also return the float32 (B, Hq, Sq) log-sum-exp
    of the scaled scores (-inf for such rows). Differentiable in q, k, v and bias.
    dropout_p in [0, 1): attention dropout on the probabilities (whenever > 0: the caller decides, as with
    SDPA), kept ones scaled by 1 / (1 - dropout_p). The mask comes from a counter-based stream keyed by a seed
    and offset drawn from torch's default CPU generator (reproducible under torch.manual_seed, no device sync);
    the backward regenerates it. The torch backend draws the same stream, bit for bit.
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
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    chosen = _dispatch.select(backend, "attention", "attention", "attention_fwd", q.device, q.dtype,
                              "unsupported_attention", (q, k, v, bias, key_padding_mask, causal,
                                                                 float(dropout_p)))
    if dropout_p > 0.0:
        seed, offset = dropout_seed()
        out, lse = attention_fwd(q, k, v, bias, key_padding_mask, causal, scale, chosen.name, float(dropout_p),
                                 seed, offset)
    else:
        out, lse = attention_fwd(q, k, v, bias, key_padding_mask, causal, scale, chosen.name)
    return (out, lse) if return_lse else out


def dropout_seed() -> Tuple[int, int]:
    """(seed, offset) of one dropout call, from torch's default CPU generator: a 62-bit seed for Philox and a
    31-bit counter offset. CPU, so drawing them never synchronises a GPU."""
    seed, offset = torch.randint(0, 2 ** 62, (2,), dtype=torch.int64).tolist()
    return seed, offset % (2 ** 31)


# Launch plans of decode_attention: call metadata -> (kernel function, scale). Only eager kernel calls are kept
# (the backend's support probe must depend on metadata only, as _dispatch.Backend.reasons requires).
_DECODE_PLANS: dict = {}
_MAX_PLANS = 64


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, *,
                     scale: Optional[float] = None, backend: str = "auto") -> Tensor:
    """Attention of one new query token per sequence against a KV cache.

    q: (B, Hq, D); k_cache: (B, Hkv, Smax, D), v_cache: (B, Hkv, Smax, Dv); cache_seqlens: int32 (B,), how many
    cache positions of each sequence are valid (positions past it are never read). Returns (B, Hq, Dv). A
    sequence of length 0 returns zeros. Lengths outside [0, Smax] are clamped to that range on every device and
    backend, since checking them would synchronise the device on every decode step; FASTATTN_STRICT_CHECKS=1 checks them
    (synchronising) and raises instead.
    """
    plan_key = None
    if isinstance(q, Tensor) and isinstance(k_cache, Tensor) and isinstance(v_cache, Tensor) \
            and isinstance(cache_seqlens, Tensor) and isinstance(backend, str) and not _checks.STRICT \
            and not torch.compiler.is_compiling():
        # A decode step repeats the previous step's call with new values: every check below and the backend
        # choice depend on metadata only, so their outcome is kept per metadata (a "launch plan").
        plan_key = (q.shape, q.stride(), q.dtype, q.device, k_cache.shape, k_cache.stride(), k_cache.dtype,
                    k_cache.device, v_cache.shape, v_cache.stride(), v_cache.dtype, v_cache.device,
                    cache_seqlens.shape, cache_seqlens.dtype, cache_seqlens.device, scale, backend,
                    _backend._default_name())
        plan = _DECODE_PLANS.get(plan_key)
        if plan is not None:
            return plan[0](q, k_cache, v_cache, cache_seqlens, plan[1])
    _checks.tensor("q", q, ndim=3, dtypes=ATTN_DTYPES + (torch.float64,))
    _checks.tensor("k_cache", k_cache, ndim=4)
    _checks.tensor("v_cache", v_cache, ndim=4)
    _checks.tensor("cache_seqlens", cache_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    _checks.same_dtype(("q", q), ("k_cache", k_cache), ("v_cache", v_cache))
    _checks.same_device(("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("cache_seqlens", cache_seqlens))
    b, hq, d = q.shape
    if k_cache.shape[:3] != v_cache.shape[:3] or v_cache.shape[3] == 0:
        raise ValueError(f"k_cache and v_cache must have the same (B, Hkv, Smax) and head dims > 0, got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
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
    lens = cache_seqlens if cache_seqlens.dtype == torch.int32 else cache_seqlens.to(torch.int32)
    if _dispatch.eager_kernel_call(chosen):  # one call per layer per generated token: skip the op's dispatch
        if plan_key is not None and lens is cache_seqlens:
            if len(_DECODE_PLANS) >= _MAX_PLANS:
                _DECODE_PLANS.clear()
            _DECODE_PLANS[plan_key] = (chosen.kernels.decode_attention, scale)
        return chosen.kernels.decode_attention(q, k_cache, v_cache, lens, scale)
    return decode_attention_op(q, k_cache, v_cache, lens, scale, chosen.name)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """Drop-in for torch.nn.functional.scaled_dot_product_attention (same signature and semantics).

    Inputs are (..., L, E) / (..., S, E), at least 2-D, with every broadcast PyTorch accepts: leading dims
    broadcast against each other (size-1 and missing dims, no batch dims at all), dim -3 is the head dim (with
    enable_gqa, key/value may have fewer heads dividing the query's; without it a single key/value head
    broadcasts). All of it through views of q, k, v, never copies (fastattn/ops/_sdpa_shapes.py). attn_mask is
    bool (True = attend) or float (added to the scores) and broadcasts to the scores (..., L, S); is_causal is
    aligned top-left, as in PyTorch. A value head dim unlike the query's (Ev != E) runs in fastattn's kernels.
    A query row with nothing to attend to returns zeros. dropout_p runs in fastattn's kernels (see
    fastattn.attention; a different random stream than PyTorch's, so results agree in distribution, not bit
    for bit). The calls fastattn hands to PyTorch's own SDPA are listed in _PYTORCH_FALLBACKS.
    """
    for n, t in (("query", query), ("key", key), ("value", value)):
        _checks.tensor(n, t)
    if is_causal and attn_mask is not None:  # RuntimeError, as PyTorch raises it
        raise RuntimeError("scaled_dot_product_attention: an explicit attn_mask must not be set when "
                           "is_causal=True (pass one or the other)")
    if dropout_p >= 1.0:  # _PYTORCH_FALLBACKS
        return _torch_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                           scale=scale, enable_gqa=enable_gqa)
    if _plain_4d(query, key, value, enable_gqa):  # the common call: no reshaping at all
        vw = _sdpa_shapes.SdpaViews(query, key, value, (query.shape[0],), 0, query.shape[1],
                                    tuple(query.shape[:-1]) + (value.shape[-1],))
    else:
        vw = _sdpa_shapes.views(query, key, value, enable_gqa)
        if vw is None:  # _PYTORCH_FALLBACKS
            return _torch_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                               scale=scale, enable_gqa=enable_gqa)
    sq, sk = query.shape[-2], key.shape[-2]
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
        if not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
            raise TypeError(f"attn_mask must be bool or a float tensor, got {attn_mask.dtype}")
        scores = _sdpa_shapes.score_batch_shape(query, key, enable_gqa) + (sq, sk)
        _checks.broadcastable("attn_mask", attn_mask, scores, "the scores (..., L, S) =")
        m = _sdpa_shapes.mask_view(attn_mask, vw) if attn_mask.dtype == torch.bool else None
        if m is not None and m.shape[-3] == 1 and m.shape[-2] == 1:
            # varies only along the batch and the keys: a key padding mask (B, Sk), one row per batch
            key_padding_mask = m[..., 0, 0, :].expand(*m.shape[:-4], vw.q.shape[-4], sk)
        else:
            bias = _sdpa_shapes.mask_view(reference.sdpa_mask_to_bias(
                attn_mask, query.dtype if attn_mask.dtype == torch.bool else attn_mask.dtype), vw)

    if vw.n_prefix == 0:
        out = attention(vw.q, vw.k, vw.v, causal=causal, scale=scale, bias=bias, key_padding_mask=key_padding_mask,
                        dropout_p=dropout_p)
    else:  # outer dims whose broadcast strides do not fold into one batch dim: one call per leading index
        out = torch.stack([
            attention(vw.q[i], vw.k[i], vw.v[i], causal=causal, scale=scale, dropout_p=dropout_p,
                      bias=None if bias is None else bias[i],
                      key_padding_mask=None if key_padding_mask is None else key_padding_mask[i])
            for i in itertools.product(*map(range, vw.outer[:vw.n_prefix]))])
    return out.reshape(vw.out_shape)


def _plain_4d(query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool) -> bool:
    """(B, H, L, E) query with (B, Hkv, S, E) key and value, Hkv = H (or dividing it under enable_gqa)."""
    if not (query.dim() == key.dim() == value.dim() == 4):
        return False
    b, hq = query.shape[:2]
    hk = key.shape[1]
    return (key.shape[0] == b and key.shape[:3] == value.shape[:3] and key.shape[3] == query.shape[3]
            and (hk == hq or (enable_gqa and hk > 0 and hq % hk == 0)))
