"""The suite's vocabulary: a Case (one op at one shape, with its inputs, reference check and FLOP/byte count)
and its Providers (ours and the baselines), plus the helpers every op module shares.

A provider's ``build(inputs)`` returns a zero-argument function to time; it raises ``Unavailable`` (or
fastattn.BackendUnavailable, or NotImplementedError) when it cannot run here, and ``Skipped`` when it was left
out on purpose (not enough memory, a mode that excludes it). Either becomes a row, never a crash.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

import fastattn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
OUR_BACKENDS = ("triton", "cuda", "torch")


class Unavailable(Exception):
    """The provider cannot run on this machine or for this input: reported as 'unavailable: reason'."""


class Skipped(Exception):
    """The provider was left out on purpose (memory, mode): reported as 'skipped: reason'."""


@dataclass
class Provider:
    name: str
    kind: str  # "ours": fastattn kernels; "baseline": what users would pick instead; "reference": fastattn's torch path
    build: Callable[[dict], Callable[[], Any]]
    checked: bool = True       # False: its output is not the same function (e.g. multinomial without filters)
    host_timing: bool = False  # also time back-to-back calls including host dispatch (small ops)
    backend: Optional[str] = None  # "triton" / "cuda" / "torch" for fastattn providers, for --backend
    note: str = ""


@dataclass
class Case:
    section: str                      # attention_fwd, attention_bwd, decode, mask_fwd, mask_bwd, softmax, ...
    label: str                        # human-readable shape
    params: Dict[str, Any]            # the shape as columns (B, H, S, D, causal, dtype, ...)
    make_inputs: Callable[[torch.device], dict]
    providers: List[Provider]
    check: Callable[[dict, Any], Optional[float]]  # (inputs, provider output) -> error against float64
    err_kind: str = "max rel err"
    flops: Optional[float] = None
    nbytes: Optional[float] = None
    metric: str = "tflops"            # the throughput column: "tflops" (vs matmul ceiling) or "gbps" (vs copy)
    x: Optional[str] = None           # the plot's x axis (a key of params)
    group_by: tuple = ()              # the params that name one plot (its lines are the providers)
    timing: str = "device"            # "device": CUDA-event medians; "wall": whole-call wall time (end to end)
    floor_bytes: Optional[float] = None
    weight: float = 1.0               # rough relative cost, for ordering and budgets
    notes: List[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        parts = [self.section] + [f"{k}{_fmt_param(v)}" if k not in ("dtype", "variant", "model") else str(v)
                                  for k, v in self.params.items() if k not in ("pass", "size")]
        return "-".join(parts)

    def plot_key(self) -> tuple:
        return (self.section,) + tuple((k, self.params[k]) for k in self.group_by if k in self.params)


def _fmt_param(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


# ----------------------------------------------------------------------------------------------------------
# Errors against the float64 reference
# ----------------------------------------------------------------------------------------------------------

def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| in float64; NaN where the reference has none (or vice versa) gives inf.

    The same measure as tests/_utils.rel_err, so the report's errors compare with the test budgets.
    """
    o = out.detach().to(ref.device, torch.float64)
    r = ref.detach().to(torch.float64)
    if o.shape != r.shape:
        raise AssertionError(f"output shape {tuple(o.shape)} != reference {tuple(r.shape)}")
    if o.numel() == 0:
        return 0.0
    if not torch.equal(torch.isnan(o), torch.isnan(r)):
        return math.inf
    o, r = torch.nan_to_num(o, nan=0.0), torch.nan_to_num(r, nan=0.0)
    both_inf = torch.isinf(o) & torch.isinf(r) & (torch.sign(o) == torch.sign(r))
    o, r = torch.where(both_inf, 0.0, o), torch.where(both_inf, 0.0, r)
    if torch.isinf(o).any() or torch.isinf(r).any():
        return math.inf
    denom = r.abs().max().item()
    err = (o - r).abs().max().item()
    return err / denom if denom > 0 else err


def max_rel_err(outs, refs) -> float:
    return max(rel_err(o, r) for o, r in zip(outs, refs))


# ----------------------------------------------------------------------------------------------------------
# Helpers for building providers
# ----------------------------------------------------------------------------------------------------------

def randn(shape, dtype, device, gen: torch.Generator, scale: float = 1.0, requires_grad: bool = False):
    """Random normal data made on the device itself (never zeros: they hide unwritten outputs)."""
    t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    if scale != 1.0:
        t = t * scale
    return t.to(dtype).requires_grad_(requires_grad)


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def require_memory(nbytes: float, what: str, device: torch.device) -> None:
    """Skip a provider whose working set would not fit (leaving room for the inputs and the reference)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = 0.8 * free
    else:
        budget = 2 * 2**30  # the CPU mode is for small shapes only
    if nbytes > budget:
        raise Skipped(f"{what} needs ~{nbytes / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB free")


def kernel_module(op: str, backend: str, device: Optional[torch.device] = None):
    """fastattn's kernel module for an op family, found as fastattn.ops finds it, for the raw-launcher providers."""
    from fastattn.ops import _dispatch

    b = _dispatch.backend_for(op, backend)
    why = b.machine_reason(device if device is not None else _default_device())
    if why is not None:
        raise Unavailable(f"backend {backend!r}: {why}")
    return b.kernels


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def launcher(op: str, backend: str, fn: str):
    m = kernel_module(op, backend)
    f = getattr(m, fn, None)
    if f is None:
        raise Unavailable(f"{m.__name__} has no {fn} launcher yet")
    return f


def ours(name_fmt: str, backends, make: Callable[[str], Callable[[dict], Callable[[], Any]]], *,
         host_timing: bool = False, kind: str = "ours") -> List[Provider]:
    """One provider per fastattn backend, named name_fmt.format(backend)."""
    return [Provider(name_fmt.format(b), "reference" if b == "torch" else kind, make(b), host_timing=host_timing,
                     backend=b) for b in backends]


@dataclass
class Options:
    """What to run: the mode, the device kind, and the filters from the command line."""
    mode: str = "quick"                      # "quick" or "full"
    device: str = "cuda"                     # "cuda" or "cpu" (correctness only, tiny shapes)
    dtypes: Optional[List[str]] = None       # None: each op's defaults
    head_dims: Optional[List[int]] = None
    seqlens: Optional[List[int]] = None
    backends: Optional[List[str]] = None     # fastattn backends to include; None: the mode's default
    baselines: Optional[List[str]] = None    # substrings of baseline names to keep; None: all
    passes: Optional[List[str]] = None       # "fwd", "bwd"

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    @property
    def cpu(self) -> bool:
        return self.device == "cpu"

    def dtype_list(self, default: List[str]) -> List[str]:
        return [d for d in (self.dtypes or default)]

    def keep_seq(self, s: int) -> bool:
        return self.seqlens is None or s in self.seqlens

    def keep_head_dim(self, d: int) -> bool:
        return self.head_dims is None or d in self.head_dims

    def keep_pass(self, p: str) -> bool:
        return self.passes is None or p in self.passes


def require_supported(op: str, backend: str, fn: str, probe: str, *args) -> None:
    """Ask the backend whether it takes this call of kernel ``fn``, exactly as fastattn.ops does."""
    from fastattn.ops import _dispatch

    why = _dispatch.backend_for(op, backend).reasons(args[0].device, fn, args[0].dtype, probe, args)
    if why:
        raise Unavailable(f"{backend} does not support this call: {'; '.join(why)}")