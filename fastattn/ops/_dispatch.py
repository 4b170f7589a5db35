"""Which backend runs a call: one Backend object per (backend, op family), asked in order.

Each Backend knows where its kernels live (loaded once per process) and says, for one call, why it cannot take
it (``reasons``: an empty list when it can). ``select`` walks the order that ``backend=`` asks for:

- an explicit "triton" / "cuda" / "torch": that backend, or BackendUnavailable with its reasons;
- "auto" (or the default set by ``fastattn.use_backend``): on a CUDA GPU, the backends of ``AUTO_ORDER`` for the
  op family and the GPU's architecture, first that fits, then the torch reference; on any other device the
  reference, which is the fastest thing there. ``explain`` gives every backend's reasons for a call.

The benchmark suite's raw-launcher providers look kernels up through the same objects (``backend_for``).
Everything a call asks here is either a cached probe (a constant to torch.compile, see fastattn._backend) or
plain attribute reads, and a kernel module is imported by an import statement (which dynamo traces), never by
importlib, so a call resolves inside torch.compile(fullgraph=True) too.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from .. import _backend
from .._backend import BackendUnavailable

FAMILIES = ("attention", "softmax", "sampling")

# "auto" on a CUDA GPU: the kernel backends to try, fastest first, per op family and compute capability major
# (the torch reference always comes last). To be filled from measured benchmark results
# (benchmarks/results/<gpu>/, `python -m fastattn.bench`). NOT MEASURED YET: no GPU run has been recorded, so
# the entries are the order fastattn started with (the CUDA extension before Triton), except where the static
# report's predictions put the newer CUDA kernels behind Triton's.
AUTO_ORDER: Dict[str, Dict[int, Tuple[str, ...]]] = {
    # Static predictions (benchmarks/NOTES.md): CUDA attention v1 ~0.6-0.8x SDPA-flash, below the Triton kernels'
    # prediction; Triton sampling v2 memory-bound at 128 x 128k, CUDA sampling v1 issue-bound (~120 µs).
    "attention": {8: ("triton", "cuda"), 9: ("triton", "cuda")},
    "softmax": {8: ("cuda", "triton"), 9: ("cuda", "triton")},
    "sampling": {8: ("triton", "cuda"), 9: ("triton", "cuda")},
}
AUTO_ORDER_MEASURED = False
_AUTO_OTHER_ARCH = ("cuda", "triton")  # a GPU the table has no row for (the extension then says why not)


def _load_triton(family: str):
    # Import statements, not importlib.import_module: dynamo traces these (at most once per process).
    if family == "attention":
        from ..triton import attention as m
    elif family == "softmax":
        from ..triton import softmax as m
    else:
        from ..triton import sampling as m
    return m


def _load_cuda(family: str):
    from .. import _cuda as m
    return m


class Backend:
    """One backend's kernels for one op family: where they live and what calls they cannot take."""

    def __init__(self, name: str, family: str):
        self.name = name
        self.family = family
        self._kernels = None

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.family!r})"

    @property
    def kernels(self):
        """The module holding this backend's kernels for the family (None for the torch reference)."""
        if self.name == "torch":
            return None
        load = _load_triton if self.name == "triton" else _load_cuda
        if torch.compiler.is_compiling():
            # While dynamo traces: the import statements only, no cache to fill, since an attribute that the
            # trace itself changes makes a guard dynamo cannot build (a module imported in the trace).
            return load(self.family)
        if self._kernels is None:
            self._kernels = load(self.family)
        return self._kernels

    def machine_reason(self, device: torch.device) -> Optional[str]:
        """Why this backend cannot run on ``device`` on this machine, or None."""
        if self.name == "torch":
            return None
        st = _backend._machine_status(self.name, device)
        return None if st is True else st

    def reasons(self, device: torch.device, fn: str, dtype: torch.dtype, probe: Optional[str] = None,
                args: tuple = ()) -> List[str]:
        """Why this backend cannot run kernel ``fn`` for this call: an empty list when it can.

        ``probe`` names the kernel module's own check of the call (e.g. head dim, strides), called with
        ``args``; it returns None or a reason. It must depend on metadata only (shapes, strides, dtypes,
        devices), never on values or addresses: decode_attention keeps its answer per call metadata.
        """
        if self.name == "torch":
            return []
        why = self.machine_reason(device)
        if why is not None:
            return [why]
        if dtype == torch.float64:
            return ["float64 runs on the torch backend only"]
        m = self.kernels
        if not hasattr(m, fn):
            return [f"it has no {fn} kernel yet"]
        if probe is not None:
            check = getattr(m, probe, None)
            if check is not None:
                why = check(*args)
                if why is not None:
                    return [why]
        return []


BACKENDS: Dict[str, Dict[str, Backend]] = {
    family: {name: Backend(name, family) for name in ("cuda", "triton", "torch")} for family in FAMILIES
}


def backend_for(family: str, name: str) -> Backend:
    """The Backend object of ``name`` ("triton", "cuda", "torch") for an op family."""
    return BACKENDS[family][name]


def auto_order(family: str, device: torch.device) -> Tuple[str, ...]:
    """The backends "auto" tries for this family on ``device``, in order (ending with "torch")."""
    if device.type != "cuda":
        return ("torch",)
    arch = _backend.gpu_arch_major(device.index)
    return AUTO_ORDER[family].get(arch, _AUTO_OTHER_ARCH) + ("torch",)


def select(backend: str, family: str, op: str, fn: str, device: torch.device, dtype: torch.dtype,
           probe: Optional[str] = None, args: tuple = ()) -> Backend:
    """The Backend that runs one call of ``op`` (public name, for messages) through kernel ``fn``."""
    if backend == "auto":
        backend = _backend._default_name()
    elif backend not in _backend.BACKENDS:
        _backend.check_backend_name(backend)
    table = BACKENDS[family]
    if backend == "auto":
        for name in auto_order(family, device):
            b = table[name]
            if not b.reasons(device, fn, dtype, probe, args):
                return b
        raise AssertionError("the torch reference takes every call")
    b = table[backend]
    why = b.reasons(device, fn, dtype, probe, args)
    if why:
        if b.machine_reason(device) is not None:
            raise BackendUnavailable(f"fastattn.{op}: backend {backend!r} is unavailable: {why[0]}")
        raise BackendUnavailable(f"fastattn.{op}: backend {backend!r} does not support this call: "
                                 + "; ".join(why))
    return b


def explain(family: str, fn: str, device: torch.device, dtype: torch.dtype, probe: Optional[str] = None,
            args: tuple = ()) -> Dict[str, List[str]]:
    """Every backend's reasons for not taking this call ([] = it can), in the order "auto" asks them."""
    order = auto_order(family, device)
    names = order + tuple(n for n in ("cuda", "triton", "torch") if n not in order)
    return {n: BACKENDS[family][n].reasons(device, fn, dtype, probe, args) for n in names}


def eager_kernel_call(backend: Backend) -> bool:
    """True when a call may go straight to a kernel launcher instead of through its custom op.

    A custom-op call costs ~7-16 µs of host time, which one-token decode steps and small softmax/sampling
    calls feel. Ops without autograd on the path take this route in eager mode; torch.compile (and anything
    tracing through dynamo) still sees the op, its fake kernel and its schema.
    """
    return backend.name != "torch" and not torch.compiler.is_compiling()
