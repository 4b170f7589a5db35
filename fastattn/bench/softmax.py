"""Softmax-with-temperature cases against torch.softmax(x / T), eager and torch.compile'd (static shapes).

docs/benchmarks.md's shapes (rows × width): 1×32k, 64×32k, 256×128k, 4096×32k, 4096×128k, in fp32 and bf16, T = 0.8.
The figure of merit is GB/s of one read plus one write (formulas.softmax_bytes) against the copy ceiling.
"""
from __future__ import annotations

from typing import List

import torch

import fastattn
from fastattn import reference

from . import formulas
from .core import DTYPES, Case, Options, Provider, Unavailable, generator, launcher, max_rel_err, ours, randn

TEMPERATURE = 0.8
SHAPES_FULL = [(1, 32768), (64, 32768), (256, 131072), (4096, 32768), (4096, 131072)]
SHAPES_QUICK = [(1, 32768), (4096, 131072)]  # each shape is a torch.compile: few in quick mode
SHAPES_CPU = [(3, 1000), (2, 4097)]


def _inputs(rows, n, dtype, seed):
    def make(device):
        return {"x": randn((rows, n), dtype, device, generator(device, seed), scale=3.0)}
    return make


def _check(inp: dict, out) -> float:
    rows = inp["x"].shape[0]
    idx = torch.tensor(sorted(set(range(min(rows, 8))) | set(range(max(0, rows - 8), rows))), device=inp["x"].device)
    if "_ref" not in inp:
        inp["_ref"] = reference.softmax(inp["x"][idx].to(torch.float64), TEMPERATURE, -1)
    return max_rel_err([out[idx]], [inp["_ref"]])


def _op(backend: str):
    def build(inp):
        return lambda: fastattn.softmax(inp["x"], TEMPERATURE, backend=backend)
    return build


def _raw(backend: str):
    def build(inp):
        f = launcher("softmax", backend, "softmax_fwd")
        x = inp["x"]
        return lambda: f(x, None, 1.0 / TEMPERATURE)
    return build


def _eager(inp):
    x = inp["x"]
    return lambda: torch.softmax(x / TEMPERATURE, -1)


def _softmax_t(x):
    return torch.softmax(x / TEMPERATURE, -1)


def _compiled(inp):
    if inp["x"].device.type != "cuda":
        raise Unavailable("torch.compile is timed on the GPU only (the CPU mode checks correctness)")
    torch._dynamo.reset()
    fn = torch.compile(_softmax_t, dynamic=False)
    x = inp["x"]
    return lambda: fn(x)


def cases(opts: Options) -> List[Case]:
    out = []
    shapes = SHAPES_CPU if opts.cpu else (SHAPES_QUICK if opts.quick else SHAPES_FULL)
    for dt in opts.dtype_list(["fp32", "bf16"]):
        if dt not in DTYPES:
            continue
        dtype = DTYPES[dt]
        for rows, n in shapes:
            provs = ours("fastattn-{}", ("triton", "cuda", "torch"), _op, host_timing=True)
            provs += ours("raw-{}", ("triton", "cuda"), _raw, host_timing=True)
            provs.append(Provider("torch-eager", "baseline", _eager, host_timing=True))
            provs.append(Provider("torch-compile", "baseline", _compiled, host_timing=True))
            out.append(Case(
                section="softmax", label=f"{rows}×{n} {dt}", params={"rows": rows, "N": n, "size": rows * n,
                                                                    "dtype": dt},
                make_inputs=_inputs(rows, n, dtype, seed=rows + n), providers=provs, check=_check,
                nbytes=formulas.softmax_bytes(rows, n, dtype.itemsize), metric="gbps", x="size", group_by=("dtype",),
                weight=0.5))
    return out
