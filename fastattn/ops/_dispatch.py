"""Where each backend's kernels live, and the support checks that fastattn._backend.resolve asks."""
from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch


def kernel_module(backend: str, family: str):
    """The module holding the ``family`` ("attention", "softmax", "sampling") kernels of ``backend``."""
    if backend == "triton":
        return importlib.import_module(f"fastattn.triton.{family}")
    if backend == "cuda":
        from .. import _cuda

        return _cuda
    raise AssertionError(backend)


def support_check(family: str, fn: str, dtype: torch.dtype, probe: Optional[str] = None,
                  probe_args: tuple = ()) -> Callable[[str], Optional[str]]:
    """A resolve() check: None when ``backend`` has the kernel ``fn`` and (if it defines ``probe``) accepts
    ``probe_args``; else why not."""
    def check(backend: str) -> Optional[str]:
        if dtype == torch.float64:
            return "float64 runs on the torch backend only"
        try:
            m = kernel_module(backend, family)
        except ImportError as e:
            return f"its {family} kernels are not available ({e})"
        if not hasattr(m, fn):
            return f"it has no {fn} kernel yet"
        unsupported = getattr(m, probe, None) if probe else None
        return unsupported(*probe_args) if unsupported is not None else None
    return check


def eager_kernel_call(backend: str) -> bool:
    """True when a call may go straight to a kernel launcher instead of through its custom op.

    A custom-op call costs ~7-16 µs of host time, which one-token decode steps and small softmax/sampling
    calls feel. Ops without autograd on the path take this route in eager mode; torch.compile (and anything
    tracing through dynamo) still sees the op, its fake kernel and its schema.
    """
    return backend != "torch" and not torch.compiler.is_compiling()
