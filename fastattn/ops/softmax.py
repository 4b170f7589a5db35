"""Softmax with temperature: public function, checks, custom ops (fastattn::softmax_fwd/bwd), fakes, autograd.

The Triton and CUDA kernels see a contiguous 2-D (rows, n) view, softmax along the last axis, with either a
scalar inverse temperature or a float32 (rows,) tensor of them; this file does the reshaping around them.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import reference
from . import _checks, _dispatch

SOFTMAX_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _kernel_module(backend: str):
    return _dispatch.backend_for("softmax", backend).kernels


def _rows(x: Tensor, dim: int) -> Tuple[Tensor, tuple]:
    """x with ``dim`` moved last, as a contiguous (rows, n) tensor, and the moved shape to undo it."""
    moved = x.movedim(dim, -1)
    rows = math.prod(moved.shape[:-1])  # not reshape(-1, n): that cannot infer -1 when n == 0
    return moved.reshape(rows, moved.shape[-1]).contiguous(), tuple(moved.shape)


def _row_inv_temperature(t: Tensor, x: Tensor, dim: int) -> Tensor:
    """A temperature tensor broadcastable to x (dim of size 1) as float32 (rows,) of 1 / t."""
    shape = list(x.shape)
    shape[dim] = 1
    rows = t.expand(shape).movedim(dim, -1).reshape(-1)
    return torch.reciprocal(rows.to(torch.float32))


def _run_rows(fn, x: Tensor, other: Optional[Tensor], temperature: Optional[Tensor], temp: float, dim: int):
    if (temperature is None and x.dim() == 2 and dim == 1 and x.is_contiguous()
            and (other is None or other.is_contiguous())):
        # The common call (rows of a contiguous matrix, one temperature): no view to make or undo.
        return fn(x, None, 1.0 / temp) if other is None else fn(other, x, None, 1.0 / temp)
    x2, moved_shape = _rows(x, dim)
    args = (x2,) if other is None else (_rows(other, dim)[0], x2)
    inv_t = None if temperature is None else _row_inv_temperature(temperature, x, dim)
    y2 = fn(*args, inv_t, 1.0 / temp)
    return y2.view(moved_shape).movedim(-1, dim)


@torch.library.custom_op("fastattn::softmax_fwd", mutates_args=())
def softmax_fwd(x: Tensor, temperature: Optional[Tensor], temp: float, dim: int, backend: str) -> Tensor:
    """softmax(x / t) along dim, t = temperature (broadcastable, dim of size 1) if given, else the float temp."""
    if backend == "torch":
        # Contiguous like the kernels' result and the fake (the reference keeps a strided x's strides).
        return reference.softmax(x, temp if temperature is None else temperature, dim).contiguous()
    return _kernel_forward(x, temperature, temp, dim, backend)


def _kernel_forward(x: Tensor, temperature: Optional[Tensor], temp: float, dim: int, backend: str) -> Tensor:
    return _run_rows(_kernel_module(backend).softmax_fwd, x, None, temperature, temp, dim).contiguous()


@softmax_fwd.register_fake
def _(x, temperature, temp, dim, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastattn::softmax_bwd", mutates_args=())
def softmax_bwd(grad: Tensor, y: Tensor, temperature: Optional[Tensor], temp: float, dim: int,
                backend: str) -> Tensor:
    """dx = y * (g - sum(g * y)) / t along dim."""
    if backend == "torch":
        return reference.softmax_backward(grad, y, temp if temperature is None else temperature, dim).contiguous()
    return _run_rows(_kernel_module(backend).softmax_bwd, y, grad, temperature, temp, dim).contiguous()


@softmax_bwd.register_fake
def _(grad, y, temperature, temp, dim, backend):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, temperature, temp, dim, backend = inputs
    ctx.save_for_backward(output, temperature)
    ctx.temp, ctx.dim, ctx.backend = temp, dim, backend


def _backward(ctx, grad):
    y, temperature = ctx.saved_tensors
    backend = ctx.backend
    if backend != "torch" and _dispatch.backend_for("softmax", backend).reasons(y.device, "softmax_bwd", y.dtype):
        # The forward's backend has no backward kernel for this call: the first of "auto"'s order that has.
        backend = _dispatch.select("auto", "softmax", "softmax", "softmax_bwd", y.device, y.dtype).name
    dx = softmax_bwd(grad.contiguous(), y, temperature, ctx.temp, ctx.dim, backend)
    return dx, None, None, None, None


softmax_fwd.register_autograd(_backward, setup_context=_setup_context)


def softmax(x: Tensor, temperature=1.0, dim: int = -1, *, backend: str = "auto") -> Tensor:
    """softmax(x / temperature) along ``dim``, computed in float32 and returned in x's dtype.

    temperature: a positive number, or a tensor broadcastable to x with ``dim`` reduced to size 1 (one
    temperature per row; its values are not checked, which would synchronise the device: a non-positive one
    gives softmax(x / t) as written; FASTATTN_STRICT_CHECKS=1 raises instead). Rows may be up to 256k wide. A row of all -inf returns zeros; NaN propagates.
    Differentiable in x.
    """
    _checks.tensor("x", x, dtypes=SOFTMAX_DTYPES)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    nd = max(x.dim(), 1)
    if not -nd <= dim < nd:
        raise ValueError(f"dim must be in [{-nd}, {nd - 1}] for x of shape {tuple(x.shape)}, got {dim}")
    if x.dim() == 0:
        x1 = x.reshape(1)
        return softmax(x1, temperature, 0, backend=backend).reshape(())
    dim = dim % x.dim()
    if isinstance(temperature, Tensor):
        _checks.tensor("temperature", temperature, dtypes=_checks.FLOAT_DTYPES)
        _checks.same_device(("x", x), ("temperature", temperature))
        want = list(x.shape)
        want[dim] = 1
        tshape = (1,) * (x.dim() - temperature.dim()) + tuple(temperature.shape)
        if temperature.dim() > x.dim() or tshape[dim] != 1:
            raise ValueError(f"temperature must be broadcastable to {tuple(want)} (x's shape with dim {dim} "
                             f"reduced to 1), got shape {tuple(temperature.shape)}")
        _checks.broadcastable("temperature", temperature, tuple(want), "x's shape with dim reduced to 1,")
        temperature = temperature.reshape(tshape)
        # The values are not checked (that would synchronise the device on every call): a non-positive one
        # gives softmax(x / t) as written. FASTATTN_STRICT_CHECKS=1 checks them.
        if _checks.STRICT and not _checks.is_compiling() and temperature.numel() and not bool((temperature > 0).all()):
            raise ValueError("temperature must be positive (every element of the temperature tensor)")
        temp = 1.0
    else:
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"temperature must be a positive float or a tensor, got {type(temperature).__name__}")
        temp = float(temperature)
        if not temp > 0 or temp == float("inf"):
            raise ValueError(f"temperature must be a positive finite float, got {temperature}")
        temperature = None
    chosen = _dispatch.select(backend, "softmax", "softmax", "softmax_fwd", x.device, x.dtype)
    if _dispatch.eager_kernel_call(chosen) and not (x.requires_grad and torch.is_grad_enabled()):
        return _kernel_forward(x, temperature, temp, dim, chosen.name)
    return softmax_fwd(x, temperature, temp, dim, chosen.name)
