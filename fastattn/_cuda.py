"""Loader and thin wrappers for the compiled CUDA extension ``fastattn._C``, or its emulated build.

``fastattn._C`` registers C++/CUDA ops in the ``fastattn`` namespace (csrc/binding.cpp); this module loads it
lazily on the first ``status()`` call, registers the ops' fake (meta) kernels, and exposes one function per
kernel for fastattn/ops/*. Importing this module loads nothing and never touches the GPU.

With FASTATTN_CUDA_EMULATE=1 set before fastattn is imported, ``status()`` builds (or finds cached) and loads
the emulated build instead (fastattn/_emu.py): the same csrc kernels compiled for the CPU, whose ops have the
same names and schemas and take CPU tensors. ``build()`` says which one "cuda" is.

Kernel functions here (the set fastattn/ops checks with ``hasattr``):
    softmax_fwd(x2d, inv_temperature, inv_temp) -> y2d
    softmax_bwd(grad2d, y2d, inv_temperature, inv_temp) -> dx2d
    sample(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p, seeds) -> tokens
    top_k_top_p_filter(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p) -> z
"""
from __future__ import annotations

import importlib
import threading
from typing import Optional

import torch
from torch import Tensor

from . import _emu

_OPS = ("softmax_fwd_cuda",)  # every op csrc/binding.cpp defines; all must be present
# ---- cudasmp: softmax backward, sampling ----
_OPS += ("softmax_bwd_cuda", "sample_cuda", "top_k_top_p_filter_cuda")
# ---- end cudasmp ----

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
            return not_built_reason()
        return f"fastattn._C failed to import: {e}"
    except (ImportError, OSError) as e:  # e.g. undefined symbol: built against another torch
        return (f"fastattn._C failed to load ({e.__class__.__name__}: {e}){_built_against()}; rebuild it against "
                f"this torch: {_REINSTALL}")
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
    except (_emu.EmuBuildError, OSError) as e:  # OSError: e.g. the cache folder is not writable
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


# ----------------------------------------------------------------------------------------------------------
# Why the extension is missing: the build record fastattn/_build_info.py, written by setup.py (git-ignored)
# ----------------------------------------------------------------------------------------------------------
_REINSTALL = "pip install --no-build-isolation ."


def _build_info():
    """The module setup.py wrote when this copy of fastattn was built, or None (never built: a bare checkout)."""
    try:
        from . import _build_info as info
    except ImportError:
        return None
    return info


def not_built_reason() -> str:
    """Why fastattn._C is not there, as the build recorded it, with the command that builds it."""
    info = _build_info()
    if info is None:
        return ("extension not built: this fastattn was never built by setup.py (a source checkout on the path, "
                f"no fastattn/_build_info.py); to build it: {_REINSTALL} (add -e for an editable install)")
    if getattr(info, "BUILT_CUDA", False):
        return ("extension missing: setup.py chose to build fastattn._C, but the module is not installed (the "
                f"build failed, or the file was removed); rebuild it: {_REINSTALL}")
    reason = getattr(info, "REASON", None) or "no reason recorded"
    fix = getattr(info, "FIX", None)
    return f"extension not built at install: {reason}" + (f"; to build it: {fix}" if fix else "")


def _built_against() -> str:
    """' (built against torch X, this is torch Y)' when the build record names another torch, else ''."""
    info = _build_info()
    built = getattr(info, "TORCH", None) if info is not None else None
    if built and built != torch.__version__:
        return f" (built against torch {built}, this is torch {torch.__version__})"
    return ""


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

    _register_fakes_cudasmp()


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


# ---- cudasmp: softmax backward, sampling (csrc/softmax/softmax_bwd*, csrc/sampling/) ----------------------------
def _register_fakes_cudasmp() -> None:
    @torch.library.register_fake("fastattn::softmax_bwd_cuda")
    def _softmax_bwd_cuda_fake(dy: Tensor, y: Tensor, inv_temperature: Optional[Tensor], inv_temp: float) -> Tensor:
        torch._check(y.dim() == 2, lambda: f"fastattn::softmax_bwd_cuda: y must be 2-D, got shape {tuple(y.shape)}")
        torch._check(
            y.dtype in (torch.float32, torch.float16, torch.bfloat16),
            lambda: f"fastattn::softmax_bwd_cuda: y must be float32, float16 or bfloat16, got {y.dtype}",
        )
        torch._check(dy.shape == y.shape and dy.dtype == y.dtype,
                     lambda: "fastattn::softmax_bwd_cuda: dy must match y's shape and dtype")
        if inv_temperature is not None:
            torch._check(
                inv_temperature.dtype == torch.float32 and inv_temperature.numel() == y.shape[0],
                lambda: "fastattn::softmax_bwd_cuda: inv_temperature must be float32 with one element per row",
            )
        return y.new_empty(y.shape)

    def _check_logits(logits: Tensor, op: str) -> None:
        torch._check(logits.dim() == 2, lambda: f"fastattn::{op}: logits must be 2-D (B, V), got {tuple(logits.shape)}")
        torch._check(
            logits.dtype in (torch.float32, torch.float16, torch.bfloat16),
            lambda: f"fastattn::{op}: logits must be float32, float16 or bfloat16, got {logits.dtype}",
        )

    @torch.library.register_fake("fastattn::sample_cuda")
    def _sample_cuda_fake(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p,
                          seeds, seed):
        _check_logits(logits, "sample_cuda")
        return logits.new_empty((logits.shape[0],), dtype=torch.int64)

    @torch.library.register_fake("fastattn::top_k_top_p_filter_cuda")
    def _filter_cuda_fake(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p):
        _check_logits(logits, "top_k_top_p_filter_cuda")
        return logits.new_empty(logits.shape, dtype=torch.float32)


def softmax_bwd(grad2d: Tensor, y2d: Tensor, inv_temperature: Optional[Tensor], inv_temp: float) -> Tensor:
    """dx = y * (g - sum(g * y)) * inv_t along the last dim, fp32 math, y2d's dtype (new contiguous tensor).

    grad2d, y2d: (rows, n) with y2d's dtype and device, stride 1 along n; inv_temperature / inv_temp as in
    softmax_fwd.
    """
    if _status is not True:
        _require()
    return torch.ops.fastattn.softmax_bwd_cuda(grad2d, y2d, inv_temperature, float(inv_temp))


def _logits_rows(logits: Tensor) -> Tensor:
    return logits if logits.shape[1] <= 1 or logits.stride(1) == 1 else logits.contiguous()


def sample(logits: Tensor, temperature_t: Optional[Tensor], temperature: float, top_k_t: Optional[Tensor],
           top_k: int, top_p_t: Optional[Tensor], top_p: float, min_p_t: Optional[Tensor], min_p: float,
           seeds) -> Tensor:
    """One token id per row of logits (B, V) fp32/fp16/bf16: int64 (B,), -1 for a NaN / non-finite row.

    The same signature as fastattn.triton.sampling.sample: each *_t is None or a contiguous (B,) tensor
    (float32; int64 for top_k), else the number beside it is used for every row; seeds is an int64 (B,) tensor
    or one int for every row.
    """
    if _status is not True:
        _require()
    logits = _logits_rows(logits)
    if isinstance(seeds, Tensor):
        return torch.ops.fastattn.sample_cuda(logits, temperature_t, float(temperature), top_k_t, int(top_k),
                                              top_p_t, float(top_p), min_p_t, float(min_p), seeds.contiguous(), 0)
    return torch.ops.fastattn.sample_cuda(logits, temperature_t, float(temperature), top_k_t, int(top_k), top_p_t,
                                          float(top_p), min_p_t, float(min_p), None, int(seeds))


def top_k_top_p_filter(logits: Tensor, temperature_t: Optional[Tensor], temperature: float,
                       top_k_t: Optional[Tensor], top_k: int, top_p_t: Optional[Tensor], top_p: float,
                       min_p_t: Optional[Tensor], min_p: float) -> Tensor:
    """logits / T as float32 (B, V) with the tokens top-k, top-p and min-p remove set to -inf (the semantics
    of fastattn.triton.sampling.top_k_top_p_filter)."""
    if _status is not True:
        _require()
    return torch.ops.fastattn.top_k_top_p_filter_cuda(_logits_rows(logits), temperature_t, float(temperature),
                                                      top_k_t, int(top_k), top_p_t, float(top_p), min_p_t,
                                                      float(min_p))
# ---- end cudasmp ----
