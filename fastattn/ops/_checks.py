"""Input checks shared by the public ops: each error names the argument and what was expected."""
from __future__ import annotations

import numbers
import os
from typing import Iterable, Optional

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# FASTATTN_STRICT_CHECKS=1: also range-check the values inside tensor arguments (per-row sampling parameters,
# softmax temperatures, decode cache lengths). Off by default: reading a tensor's values synchronises the device
# on every call, so without it such values get a documented defined result (clamping) instead. For debugging.
STRICT = os.environ.get("FASTATTN_STRICT_CHECKS", "0") == "1"


def tensor(name: str, t, *, ndim: Optional[int] = None, dtypes: Optional[Iterable[torch.dtype]] = None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    return t


def same_device(*named: tuple) -> None:
    """named: (name, tensor) pairs, tensors may be None; all must share the first one's device."""
    named = [(n, t) for n, t in named if t is not None]
    first_name, first = named[0]
    for n, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{n} is on {t.device} but {first_name} is on {first.device}: all tensors must "
                             "be on one device")


def same_dtype(*named: tuple) -> None:
    first_name, first = named[0]
    for n, t in named[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {first_name} has {first.dtype}: they must match")


def finite_scale(scale) -> Optional[float]:
    """The softmax scale of attention, decode_attention and SDPA: None (the default 1/sqrt(D)) or any finite
    real number, as PyTorch's SDPA takes it: 0 gives uniform weights over the visible keys, a negative scale
    favours the least similar keys. NaN or infinity raises ValueError, a non-number TypeError."""
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not (scale == scale) or scale in (float("inf"), float("-inf")):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def broadcastable(name: str, t: Tensor, shape: tuple, what: str) -> None:
    if t.dim() > len(shape):
        raise ValueError(f"{name} must be broadcastable to {what} {tuple(shape)}, got shape {tuple(t.shape)}")
    for got, want in zip(reversed(t.shape), reversed(shape)):
        if got != 1 and got != want:
            raise ValueError(f"{name} must be broadcastable to {what} {tuple(shape)}, got shape {tuple(t.shape)}")


def is_compiling() -> bool:
    return torch.compiler.is_compiling()
