"""Loader and thin wrappers for the compiled CUDA extension ``fastattn._C``, or its emulated build.

``fastattn._C`` registers C++/CUDA ops in the ``fastattn`` namespace (csrc/binding.cpp); this module loads it
lazily on the first ``status()`` call, registers the ops' fake (meta) kernels, and exposes one function per
kernel for fastattn/ops/*. Importing this module loads nothing and never touches the GPU.

With FASTATTN_CUDA_EMULATE=1 set before fastattn is imported, ``status()`` builds (or finds cached) and loads
the emulated build instead (fastattn/_emu.py): the same csrc kernels compiled for the CPU, whose ops have the
same names and schemas and take CPU tensors. ``build()`` says which one "cuda" is.

Kernel functions here (the set fastattn/ops checks with ``hasattr``):
    softmax_fwd(x2d, inv_temperature, inv_temp) -> y2d
"""
from __future__ import annotations

import importlib
import threading
from typing import Optional

import torch
from torch import Tensor

from . import _emu

_NOT_BUILT = "extension not built (FASTATTN_BUILD_CUDA=0 or no nvcc at install)"
_OPS = ("softmax_fwd_cuda",)  # every op csrc/binding.cpp defines; all must be present

_status: "bool | str | None" = None
_lock = threading.Lock()


def status() -> "bool | str":
    """True when fastattn._C is loaded and registered its ops, else a human-readable reason. Cached."""
    global _status
    if _status is None:
        with _lock:
            if _status is None:
                _status = _load_emulated() if _emu.emulated() else _load()
    return _status


def build() -> "str | None":
    """Which build "cuda" is: "emulated" (FASTATTN_CUDA_EMULATE=1), "nvcc" (fastattn._C), None when neither loads."""
    if status() is not True:
        return None
    return "emulated" if _emu.emulated() else "nvcc"


def _load() -> "bool | str":
    try:
        importlib.import_module("fastattn._C")
    except ModuleNotFoundError as e:
        if e.name == "fastattn._C":
            return _NOT_BUILT
        return f"fastattn._C failed to import: {e}"
    except (ImportError, OSError) as e:  # e.g. undefined symbol: built against another torch
        return f"fastattn._C failed to load ({e.__class__.__name__}: {e}); rebuild it against this torch"
    missing = [name for name in _OPS if not hasattr(torch.ops.fastattn, name)]
    if missing:
        return f"fastattn._C is loaded but lacks the ops {missing}: a stale build, reinstall fastattn"
    _register_fakes()
    return True


def _load_emulated() -> "bool | str":
    """Build (or find in the cache) and load the emulated library; it registers the ops for CPU tensors."""
    try:
        if _emu.asan_requested() and not _emu.asan_loaded():
            return ("FASTATTN_EMU_ASAN=1: the AddressSanitizer build needs libasan loaded first; start the process "
                    f"with LD_PRELOAD={_emu.asan_preload()} (and ASAN_OPTIONS=detect_leaks=0)")
        lib = _emu.build_extension()
    except _emu.EmuBuildError as e:
        return f"the emulated CUDA build (FASTATTN_CUDA_EMULATE=1) is unavailable: {e}"
    try:
        torch.ops.load_library(str(lib))
    except OSError as e:
        return f"the emulated CUDA build {lib} failed to load ({e})"
    missing = [name for name in _OPS if not hasattr(torch.ops.fastattn, name)]
    if missing:
        return f"the emulated CUDA build {lib} lacks the ops {missing}"
    _register_fakes()
    return True


def _register_fakes() -> None:
    """Fake kernels for the C++ ops (shape/dtype/device only), for FakeTensor, torch.compile and meta tensors.

    Registered from this module because csrc/binding.cpp names it with m.set_python_module("fastattn._cuda").
    They check what the CUDA kernels' TORCH_CHECKs check that depends on metadata only.
    """

    @torch.library.register_fake("fastattn::softmax_fwd_cuda")
    def _softmax_fwd_cuda_fake(x: Tensor, inv_temperature: Optional[Tensor], inv_temp: float) -> Tensor:
        torch._check(x.dim() == 2, lambda: f"fastattn::softmax_fwd_cuda: x must be 2-D, got shape {tuple(x.shape)}")
        torch._check(
            x.dtype in (torch.float32, torch.float16, torch.bfloat16),
            lambda: f"fastattn::softmax_fwd_cuda: x must be float32, float16 or bfloat16, got {x.dtype}",
        )
        if inv_temperature is not None:
            torch._check(
                inv_temperature.dtype == torch.float32 and inv_temperature.numel() == x.shape[0],
                lambda: "fastattn::softmax_fwd_cuda: inv_temperature must be float32 with one element per row",
            )
        # The CUDA kernel always returns a new contiguous tensor (never x's strides).
        return x.new_empty(x.shape)


def _require() -> None:
    st = status()
    if st is not True:
        raise RuntimeError(f"fastattn CUDA extension unavailable: {st}")


def softmax_fwd(x2d: Tensor, inv_temperature: Optional[Tensor], inv_temp: float) -> Tensor:
    """softmax(x2d * inv_t) along the last dim, fp32 math, result in x2d's dtype (new contiguous tensor).

    x2d: CUDA (rows, n) float32/float16/bfloat16 with stride 1 along n; inv_temperature: None or a contiguous
    float32 CUDA tensor of rows elements (1 / T per row); otherwise inv_temp (1 / T) applies to every row.
    (CPU tensors in the emulated build.)
    """
    if _status is not True:
        _require()
    return torch.ops.fastattn.softmax_fwd_cuda(x2d, inv_temperature, float(inv_temp))
