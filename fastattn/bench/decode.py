"""Decode cases: one query token per sequence against a full KV cache, against SDPA with enable_gqa.

docs/benchmarks.md's shapes: 32 query heads, 8 KV heads, D = 128; B in {1, 16, 64}; KV length in {1k, 8k, 32k}.
The figure of merit is GB/s of K + V read (formulas.decode_bytes) against the measured copy ceiling.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F

import fastattn
from fastattn import reference

from . import formulas
from .core import (DTYPES, Case, Options, Provider, generator, launcher, max_rel_err, ours, randn, require_memory,
                   require_supported)

HQ, HKV, HEAD_DIM = 32, 8, 128
BATCHES = [1, 16, 64]
KV_FULL = [1024, 8192, 32768]
KV_QUICK = [1024, 32768]


def _inputs(b, hq, hkv, l, d, dtype, seed):
    def make(device):
        g = generator(device, seed)
        return {"q": randn((b, hq, d), dtype, device, g),
                "k": randn((b, hkv, l, d), dtype, device, g),
                "v": randn((b, hkv, l, d), dtype, device, g),
                "seqlens": torch.full((b,), l, dtype=torch.int32, device=device)}
    return make


def _check(inp: dict, out) -> float:
    b = inp["q"].shape[0]
    idx = torch.tensor(sorted({0, b - 1}), device=inp["q"].device)
    if "_ref" not in inp:
        q, k, v = (inp[n][idx].to(torch.float64) for n in ("q", "k", "v"))
        inp["_ref"] = reference.decode_attention(q, k, v, inp["seqlens"][idx])
    return max_rel_err([out[idx]], [inp["_ref"]])


def _op(backend: str):
    def build(inp):
        if backend == "torch":  # the reference expands K and V to every query head, in float32
            q, k = inp["q"], inp["k"]
            require_memory(2 * k.numel() * (q.shape[1] // k.shape[1]) * 4 * 2, "the torch reference", q.device)
        return lambda: fastattn.decode_attention(inp["q"], inp["k"], inp["v"], inp["seqlens"], backend=backend)
    return build


def _raw(backend: str):
    def build(inp):
        q, k, v, sl = inp["q"], inp["k"], inp["v"], inp["seqlens"]
        require_supported("attention", backend, "decode_attention", "unsupported_decode", q, k, v, sl)
        f = launcher("attention", backend, "decode_attention")
        scale = 1.0 / math.sqrt(q.shape[-1])
        return lambda: f(q, k, v, sl, scale)
    return build


def _sdpa(inp):
    q = inp["q"].unsqueeze(2)  # (B, Hq, 1, D)
    k, v = inp["k"], inp["v"]
    return lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True).squeeze(2)


def cases(opts: Options) -> List[Case]:
    out = []
    if opts.cpu:
        shapes = [(2, 4, 2, 77, 64), (1, 8, 1, 300, 128)]
    else:
        d = HEAD_DIM if opts.head_dims is None else None
        dims = [d] if d else opts.head_dims
        kvs = opts.seqlens or (KV_QUICK if opts.quick else KV_FULL)
        shapes = [(b, HQ, HKV, l, dd) for dd in dims for b in BATCHES for l in kvs]
    for dt in opts.dtype_list(["bf16"]):
        if dt not in DTYPES:
            continue
        dtype = DTYPES[dt]
        for b, hq, hkv, l, d in shapes:
            if opts.cpu and not opts.keep_head_dim(d):
                continue
            provs = ours("fastattn-{}", ("triton", "cuda", "torch"), _op, host_timing=True)
            provs += ours("raw-{}", ("triton", "cuda"), _raw, host_timing=True)
            provs.append(Provider("sdpa", "baseline", _sdpa, host_timing=True))
            nbytes = formulas.decode_bytes(b, hkv, l, d, dtype.itemsize)
            out.append(Case(
                section="decode", label=f"B={b} Hq={hq} Hkv={hkv} KV={l} D={d} {dt}",
                params={"B": b, "Hq": hq, "Hkv": hkv, "KV": l, "D": d, "dtype": dt},
                make_inputs=_inputs(b, hq, hkv, l, d, dtype, seed=b + l), providers=provs, check=_check,
                nbytes=nbytes, metric="gbps", x="KV",
                group_by=("B", "Hq", "Hkv", "D", "dtype"), weight=0.3))
    return out
