"""Backend names, availability and per-call resolution.

Every public op takes ``backend=`` ("auto", "triton", "cuda", "torch"). ``resolve`` turns that into the
concrete backend that runs the call, or raises ``BackendUnavailable`` saying why the asked-for one cannot.
Nothing here touches the GPU at import time: availability is probed lazily and cached.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Callable, Iterator, Optional

import torch

BACKENDS = ("auto", "triton", "cuda", "torch")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this call (no GPU, extension not built, unsupported input, ...)."""


_default_backend: contextvars.ContextVar[str] = contextvars.ContextVar("fastattn_backend", default="auto")


def check_backend_name(backend: str) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Make ``backend`` the default for every op called with ``backend="auto"`` inside the block."""
    token = _default_backend.set(check_backend_name(backend))
    try:
        yield
    finally:
        _default_backend.reset(token)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_status() -> "bool | str":
    """True when Triton kernels can run on CUDA tensors, or (interpreted) on CPU tensors; else the reason."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"triton is not importable ({e.__class__.__name__}: {e})"
    if triton_interpreted():
        return True
    if not torch.cuda.is_available():
        return "no CUDA GPU (set TRITON_INTERPRET=1 before importing triton to run Triton kernels on the CPU)"
    return True


def cuda_status() -> "bool | str":
    """True when the compiled extension fastattn._C is loaded and a GPU is present; else the reason."""
    from . import _cuda

    st = _cuda.status()
    if st is not True:
        return st
    if not torch.cuda.is_available():
        return "the CUDA extension is built but there is no CUDA GPU"
    return True


def available_backends() -> dict:
    """Map each backend to True, or to a string saying why it cannot run on this machine."""
    return {"torch": True, "triton": triton_status(), "cuda": cuda_status()}


# An op's support check: given the backend name, return None if it can run the call, else the reason.
SupportCheck = Callable[[str], Optional[str]]


def resolve(backend: str, device: torch.device, op: str, unsupported: SupportCheck) -> str:
    """Pick the backend for one call of ``op`` on ``device``.

    ``unsupported(name)`` reports call-specific limits (dtype, head dim, ...) of the "triton" and "cuda"
    kernels. "auto" prefers cuda, then triton, on a GPU and the torch reference on the CPU; it never
    picks a backend whose kernel would not support the call.
    """
    backend = check_backend_name(backend)
    if backend == "auto":
        backend = _default_backend.get()
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        for name in ("cuda", "triton"):
            if _machine_status(name, device) is True and unsupported(name) is None:
                return name
        return "torch"
    status = _machine_status(backend, device)
    if status is not True:
        raise BackendUnavailable(f"fastattn.{op}: backend {backend!r} is unavailable: {status}")
    why = unsupported(backend)
    if why is not None:
        raise BackendUnavailable(f"fastattn.{op}: backend {backend!r} does not support this call: {why}")
    return backend


def _machine_status(name: str, device: torch.device) -> "bool | str":
    if name == "triton":
        st = triton_status()
        if st is not True:
            return st
        if device.type == "cuda":
            return True if torch.cuda.is_available() else "no CUDA GPU"
        if device.type == "cpu" and triton_interpreted():
            return True
        return (f"Triton kernels need CUDA tensors (got {device.type}); on the CPU they run only under "
                "TRITON_INTERPRET=1 set before triton is imported")
    if name == "cuda":
        st = cuda_status()
        if st is not True:
            return st
        if device.type != "cuda":
            return f"the CUDA extension needs CUDA tensors (got {device.type})"
        return _cuda_arch_status(device.index if device.index is not None else torch.cuda.current_device())
    raise AssertionError(name)


@functools.lru_cache(maxsize=None)
def _cuda_arch_status(index: int) -> "bool | str":
    """The extension carries machine code for sm_80 and sm_90a only (setup.py): other cards can't run it."""
    major, minor = torch.cuda.get_device_capability(index)
    if major in (8, 9):
        return True
    return f"the CUDA extension is built for compute capability 8.x and 9.0, this GPU is {major}.{minor}"
