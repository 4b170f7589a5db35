"""Backend names, availability and per-call resolution.

Every public op takes ``backend=`` ("auto", "triton", "cuda", "torch"). This module says whether each backend
can run on this machine and on a given device; fastattn.ops._dispatch picks the backend of each call.
Nothing here touches the GPU at import time: availability is probed lazily and cached.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

import torch

from . import _emu  # reads FASTATTN_CUDA_EMULATE now, when fastattn is imported

BACKENDS = ("auto", "triton", "cuda", "torch")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this call (no GPU, extension not built, unsupported input, ...)."""


_default_backend: contextvars.ContextVar[str] = contextvars.ContextVar("fastattn_backend", default="auto")

# The probes below run real code (imports, driver queries) and their answers do not change while the process
# lives: torch.compile runs them once while tracing and takes the result as a constant, instead of tracing
# into them (dynamo on torch 2.11 cannot trace ContextVar.get or imports).
def _constant(fn):
    """torch.compiler.assume_constant_result without its import of torch._dynamo, which imports triton: fastattn's
    import must not, or TRITON_INTERPRET=1 set afterwards would come too late (Triton's own helpers, tl.max
    and friends, are decorated when triton is imported). The mark is the attribute that function sets;
    tests/test_registration.py checks that it still is."""
    fn._dynamo_marked_constant = True
    return fn


_probed: dict = {}  # probe results, by probe and argument (a plain dict: dynamo traces into lru_cache wrappers)


def _probe_once(key, probe):
    if key not in _probed:
        _probed[key] = probe()
    return _probed[key]


@_constant
def _default_name() -> str:
    """The default set by use_backend; inside torch.compile, the one in force when the call was compiled."""
    return _default_backend.get()


@_constant
def _has_gpu() -> bool:
    return torch.cuda.is_available()


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


@_constant
def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@_constant
def triton_status() -> "bool | str":
    """True when Triton kernels can run on CUDA tensors, or (interpreted) on CPU tensors; else the reason."""
    return _probe_once("triton", _triton_status)


def _triton_status() -> "bool | str":
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"triton is not importable ({e.__class__.__name__}: {e})"
    if triton_interpreted():
        return True
    if not _has_gpu():
        return "no CUDA GPU (set TRITON_INTERPRET=1 before importing triton to run Triton kernels on the CPU)"
    return True


@_constant
def cuda_emulated() -> bool:
    """FASTATTN_CUDA_EMULATE=1 (set before fastattn is imported): "cuda" is the emulated build, on CPU tensors."""
    return _emu.emulated()


@_constant
def cuda_build() -> "str | None":
    """Which build of the CUDA kernels is loaded: "emulated" (FASTATTN_CUDA_EMULATE=1, CPU tensors), "nvcc"
    (fastattn._C, which also needs a GPU to run: see cuda_status), or None when neither loads."""
    from . import _cuda

    return _cuda.build()


@_constant
def cuda_status() -> "bool | str":
    """True when the compiled extension fastattn._C is loaded and a GPU is present, or when the emulated build
    (FASTATTN_CUDA_EMULATE=1) is loaded; else the reason."""
    from . import _cuda

    st = _cuda.status()
    if st is not True:
        return st
    if not cuda_emulated() and not _has_gpu():
        return "the CUDA extension is built but there is no CUDA GPU"
    return True


def available_backends() -> dict:
    """Map each backend to True, or to a string saying why it cannot run on this machine."""
    return {"torch": True, "triton": triton_status(), "cuda": cuda_status()}


@_constant
def gpu_arch_major(index: "int | None") -> int:
    """The compute capability major of CUDA device ``index`` (None: the current one), e.g. 9 for an H100."""
    if not _has_gpu():
        return 0  # a CUDA device named on a machine without one: no backend but the reference can take it
    return _probe_once(("arch", index), lambda: torch.cuda.get_device_capability(index)[0])


def _machine_status(name: str, device: torch.device) -> "bool | str":
    """Whether backend ``name`` runs on ``device`` here: True or the reason. Asked on every call, so cached: the
    answers depend on the machine and on TRITON_INTERPRET, which is fixed once triton has been imported (the
    first answer for "triton" imports it)."""
    key = (name, device.type, device.index)
    st = _machine_cache.get(key)
    if st is None:
        st = _machine_cache[key] = _machine_status_uncached(name, device)
    return st


_machine_cache: dict = {}


def _machine_status_uncached(name: str, device: torch.device) -> "bool | str":
    if name == "triton":
        st = triton_status()
        if st is not True:
            return st
        if device.type == "cuda":
            return True if _has_gpu() else "no CUDA GPU"
        if device.type == "cpu" and triton_interpreted():
            return True
        return (f"Triton kernels need CUDA tensors (got {device.type}); on the CPU they run only under "
                "TRITON_INTERPRET=1 set before triton is imported")
    if name == "cuda":
        st = cuda_status()
        if st is not True:
            return st
        if cuda_emulated():
            if device.type == "cpu":
                return True
            return (f"the emulated CUDA build (FASTATTN_CUDA_EMULATE=1) runs on CPU tensors (got "
                    f"{device.type})")
        if device.type != "cuda":
            return f"the CUDA extension needs CUDA tensors (got {device.type})"
        return _cuda_arch_status(device.index)
    raise AssertionError(name)


@_constant
def _cuda_arch_status(index: "int | None") -> "bool | str":
    """The extension carries machine code for sm_80 and sm_90a only (setup.py): other cards can't run it."""
    def probe():
        major, minor = torch.cuda.get_device_capability(index)  # index None: the current device
        if major in (8, 9):
            return True
        return f"the CUDA extension is built for compute capability 8.x and 9.0, this GPU is {major}.{minor}"
    return _probe_once(("cuda_arch", index), probe)
