"""Sampling from logits: public functions, checks and custom ops (fastattn::sample, fastattn::top_k_top_p_filter).

Each sampling parameter reaches the kernels either as a Python number or as a (B,) tensor (one per row);
seeds always as an int64 (B,) tensor, so that a row's draw depends on its own seed only.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import reference
from . import _checks, _dispatch

LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SEED_RANGE = 1 << 62
_INT_DTYPES = (torch.int32, torch.int64)


def _kernel_module(backend: str):
    return _dispatch.backend_for("sampling", backend).kernels


def _param(t: Optional[Tensor], value):
    return value if t is None else t


@torch.library.custom_op("fastattn::sample", mutates_args=())
def sample_op(logits: Tensor, temperature_t: Optional[Tensor], temperature: float, top_k_t: Optional[Tensor],
              top_k: int, top_p_t: Optional[Tensor], top_p: float, min_p_t: Optional[Tensor], min_p: float,
              seeds: Tensor, backend: str) -> Tensor:
    """Token ids (B,) int64. Each parameter is the (B,) tensor when given, else the number beside it."""
    if backend == "torch":
        return reference.sample(logits, temperature=_param(temperature_t, temperature), top_k=_param(top_k_t, top_k),
                                top_p=_param(top_p_t, top_p), min_p=_param(min_p_t, min_p), seeds=seeds)
    return _kernel_module(backend).sample(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p,
                                          min_p_t, min_p, seeds)


@sample_op.register_fake
def _(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p, seeds, backend):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


@torch.library.custom_op("fastattn::top_k_top_p_filter", mutates_args=())
def filter_op(logits: Tensor, temperature_t: Optional[Tensor], temperature: float, top_k_t: Optional[Tensor],
              top_k: int, top_p_t: Optional[Tensor], top_p: float, min_p_t: Optional[Tensor], min_p: float,
              backend: str) -> Tensor:
    if backend == "torch":
        # Contiguous like the kernels' result and the fake (the reference keeps strided logits' strides).
        return reference.top_k_top_p_filter(logits, temperature=_param(temperature_t, temperature),
                                            top_k=_param(top_k_t, top_k), top_p=_param(top_p_t, top_p),
                                            min_p=_param(min_p_t, min_p)).contiguous()
    return _kernel_module(backend).top_k_top_p_filter(logits, temperature_t, temperature, top_k_t, top_k, top_p_t,
                                                      top_p, min_p_t, min_p)


@filter_op.register_fake
def _(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p, backend):
    dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty(logits.shape, dtype=dt)


# ----------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------

def _check_param(name: str, integer: bool, ok, expected: str, value, b: int, device):
    """Returns (tensor or None, number); a number out of range raises, naming the argument.

    A tensor parameter (a (B,) tensor of any stride, or a 0-dim tensor for every row; int32/int64 for top_k,
    any float dtype for the others) goes to the kernels as it is: no torch op runs for it here. Its values are
    not range-checked, since that would synchronise the device on every call: each backend clamps them where it
    loads them instead (reference.PARAM_RANGES), which gives every value a defined result.
    FASTATTN_STRICT_CHECKS=1 checks them too (and synchronises), raising as for a number.
    """
    if isinstance(value, Tensor):
        dtypes = _INT_DTYPES if integer else _checks.FLOAT_DTYPES
        if value.dtype not in dtypes:
            _checks.tensor(name, value, dtypes=dtypes)  # raises, naming the argument
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != b):
            raise ValueError(f"{name} must be a number or a tensor of shape (B,) = ({b},), got shape "
                             f"{tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but logits is on {device}: all tensors must be on "
                             "one device")
        if _checks.STRICT and not _checks.is_compiling() and value.numel() and not bool(ok(value).all()):
            raise ValueError(f"{name} must be {expected} (every element of the {name} tensor)")
        return value, (0 if integer else 0.0)
    tp = type(value)
    if not (tp is int or (tp is float and not integer)) and (  # exact int / float: no ABC checks (host time)
            isinstance(value, bool) or not isinstance(value, numbers.Real)
            or (integer and not isinstance(value, numbers.Integral))):
        raise TypeError(f"{name} must be {'an int' if integer else 'a float'} or a (B,) tensor, got "
                        f"{type(value).__name__}")
    number = int(value) if integer else float(value)
    if not ok(number):  # the predicates use only comparisons and &, so they take numbers and tensors alike
        raise ValueError(f"{name} must be {expected}, got {value}")
    return None, number


# (name, integer, range predicate, what the message says): the predicates use only comparisons and &, so they
# take numbers and tensors alike.
_PARAMS = (
    ("temperature", False, lambda t: (t >= 0) & (t < float("inf")), "a finite float >= 0"),
    ("top_k", True, lambda t: t >= 0, "an int >= 0"),
    ("top_p", False, lambda t: (t > 0) & (t <= 1), "in (0, 1]"),
    ("min_p", False, lambda t: (t >= 0) & (t < 1), "in [0, 1)"),
)


def _checked_params(logits: Tensor, temperature, top_k, top_p, min_p):
    _checks.tensor("logits", logits, ndim=2, dtypes=LOGIT_DTYPES)
    b, v = logits.shape
    if v == 0:
        raise ValueError("logits must have a vocabulary size V > 0, got shape "
                         f"{tuple(logits.shape)}")
    dev = logits.device
    return (_check_param(*_PARAMS[0], temperature, b, dev), _check_param(*_PARAMS[1], top_k, b, dev),
            _check_param(*_PARAMS[2], top_p, b, dev), _check_param(*_PARAMS[3], min_p, b, dev))


def _seeds(logits: Tensor, generator, seed, int_ok: bool = False):
    """The int64 (B,) seed of each row; with int_ok, an int seed comes back as the int (one for every row)."""
    b = logits.shape[0]
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator is not None and generator.device.type != logits.device.type:
            raise ValueError(f"generator is on {generator.device} but logits is on {logits.device}")
        return torch.randint(0, _SEED_RANGE, (b,), generator=generator, device=logits.device, dtype=torch.int64)
    if isinstance(seed, Tensor):
        _checks.tensor("seed", seed, dtypes=(torch.int64, torch.int32))
        if seed.dim() > 1 or (seed.dim() == 1 and seed.shape[0] != b):
            raise ValueError(f"seed must be an int or an int64 tensor of shape (B,) = ({b},), got shape "
                             f"{tuple(seed.shape)}")
        if seed.dim() == 1 and seed.dtype == torch.int64 and seed.device == logits.device and seed.is_contiguous():
            return seed  # the common per-row form, as it is (the kernels only read it)
        return seed.to(device=logits.device, dtype=torch.int64).reshape(-1).expand(b).contiguous()
    if type(seed) is not int and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or an int64 (B,) tensor, got {type(seed).__name__}")
    if not -(1 << 63) <= int(seed) < (1 << 63):
        raise ValueError(f"seed must fit in int64, got {seed}")
    if int_ok:
        return int(seed)
    return torch.full((b,), int(seed), dtype=torch.int64, device=logits.device)


# ----------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------

def sample(logits: Tensor, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, generator=None, seed=None,
           backend: str = "auto") -> Tensor:
    """Draw one token id per row of logits (B, V): LongTensor (B,).

    Hugging Face order: divide by temperature, then top-k, then top-p, then min-p, then draw. temperature 0 is
    greedy (argmax, lowest index among ties); top_k 0, top_p 1 and min_p 0 switch their filter off. Each
    parameter is a number or a (B,) tensor. top-k keeps j iff fewer than k logits are strictly larger (ties
    kept); top-p keeps j iff the mass strictly more probable than j is < top_p; min-p keeps j iff
    p_j >= min_p * max p. Randomness from ``generator`` or ``seed`` (an int, or an int64 (B,) tensor, one per
    row): a row's token depends only on its own logits, parameters and seed. A row holding NaN (or with no
    finite logit) yields -1.
    """
    (tt, t), (kt, k), (pt, p), (mt, m) = _checked_params(logits, temperature, top_k, top_p, min_p)
    chosen = _dispatch.select(backend, "sampling", "sample", "sample", logits.device, logits.dtype)
    if _dispatch.eager_kernel_call(chosen):
        # Straight to the launcher (no gradient, a fresh output); an int seed goes through as it is, sparing a
        # seed tensor and its launch.
        seeds = _seeds(logits, generator, seed, int_ok=True)
        return chosen.kernels.sample(logits, tt, t, kt, k, pt, p, mt, m, seeds)
    seeds = _seeds(logits, generator, seed)
    return sample_op(logits, tt, t, kt, k, pt, p, mt, m, seeds, chosen.name)


def top_k_top_p_filter(logits: Tensor, *, top_k=0, top_p=1.0, min_p=0.0, temperature=1.0,
                       backend: str = "auto") -> Tensor:
    """logits / temperature (float32) with the tokens that top-k, top-p and min-p remove set to -inf.

    Same parameters and rules as ``sample``; rows with temperature 0 keep only their first maximal logit.
    """
    (tt, t), (kt, k), (pt, p), (mt, m) = _checked_params(logits, temperature, top_k, top_p, min_p)
    chosen = _dispatch.select(backend, "sampling", "top_k_top_p_filter", "top_k_top_p_filter", logits.device,
                              logits.dtype)
    if _dispatch.eager_kernel_call(chosen):  # no gradient, a fresh output: straight to the launcher
        return chosen.kernels.top_k_top_p_filter(logits, tt, t, kt, k, pt, p, mt, m)
    return filter_op(logits, tt, t, kt, k, pt, p, mt, m, chosen.name)
