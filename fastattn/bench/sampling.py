"""Sampling cases (temperature 0.8, top-k 50, top-p 0.9 from float32 logits) against the Hugging Face-style
torch code (topk + sort + cumsum + multinomial), sort-based top-p alone, and softmax + torch.multinomial alone.

The floor is one read of the logits at the measured copy bandwidth (formulas.sampling_floor_bytes). A draw has
no relative error: the error column is the fraction of drawn tokens outside the set the float64 reference
filter keeps (0 is right), and is left empty for the baselines that do not filter the same way.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

import fastattn
from fastattn import reference

from . import formulas
from .core import DTYPES, Case, Options, Provider, generator, launcher, ours, randn

TEMPERATURE, TOP_K, TOP_P = 0.8, 50, 0.9
SHAPES = [(1, 32768), (32, 32768), (128, 32768), (512, 32768), (1, 131072), (128, 131072), (512, 131072)]
SHAPES_QUICK = [(1, 32768), (128, 32768), (1, 131072), (128, 131072), (512, 131072)]
SHAPES_CPU = [(4, 1000), (3, 5003)]


def hf_style(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """What transformers' generate does with TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper
    before softmax + torch.multinomial (the same code, inlined so the baseline needs no transformers)."""
    scores = logits / temperature
    k = min(top_k, scores.size(-1))
    scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], float("-inf"))
    return _top_p_multinomial(scores, top_p)


def _top_p_multinomial(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False  # min_tokens_to_keep = 1
    remove = remove.scatter(1, sorted_indices, remove)
    probs = F.softmax(scores.masked_fill(remove, float("-inf")), dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1)


def sort_top_p(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    return _top_p_multinomial(logits / temperature, top_p)


def multinomial_only(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.multinomial(F.softmax(logits / temperature, dim=-1), num_samples=1).squeeze(1)


def _inputs(b, v, dtype, seed):
    def make(device):
        g = generator(device, seed)
        return {"logits": randn((b, v), dtype, device, g, scale=2.0),
                "seeds": torch.randint(0, 1 << 62, (b,), generator=g, device=device, dtype=torch.int64)}
    return make


def _check(inp: dict, out) -> float:
    """Fraction of draws outside the float64 reference's kept set (or not a valid token id)."""
    logits = inp["logits"]
    if "_ref" not in inp:
        z = reference.top_k_top_p_filter(logits.to(torch.float64), top_k=TOP_K, top_p=TOP_P,
                                         temperature=TEMPERATURE)
        inp["_ref"] = torch.isfinite(z)
    kept = inp["_ref"]
    tok = out.to(torch.int64)
    valid = (tok >= 0) & (tok < logits.shape[1])
    inside = kept.gather(1, tok.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1) & valid
    return float((~inside).float().mean().item())


def _op(backend: str):
    def build(inp):
        logits, seeds = inp["logits"], inp["seeds"]
        return lambda: fastattn.sample(logits, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, seed=seeds,
                                       backend=backend)
    return build


def _raw(backend: str):
    def build(inp):
        f = launcher("sampling", backend, "sample")
        logits, seeds = inp["logits"], inp["seeds"]
        return lambda: f(logits, None, TEMPERATURE, None, TOP_K, None, TOP_P, None, 0.0, seeds)
    return build


def cases(opts: Options) -> List[Case]:
    out = []
    shapes = SHAPES_CPU if opts.cpu else (SHAPES_QUICK if opts.quick else SHAPES)
    for dt in opts.dtype_list(["fp32"]):
        if dt not in DTYPES:
            continue
        dtype = DTYPES[dt]
        for b, v in shapes:
            provs = ours("fastattn-{}", ("triton", "cuda", "torch"), _op, host_timing=True)
            provs += ours("raw-{}", ("triton", "cuda"), _raw, host_timing=True)
            provs += [
                Provider("hf-torch", "baseline", lambda inp: (lambda: hf_style(inp["logits"], TEMPERATURE, TOP_K,
                                                                                TOP_P)), host_timing=True),
                Provider("torch-top-p-sort", "baseline", lambda inp: (lambda: sort_top_p(inp["logits"], TEMPERATURE,
                                                                                         TOP_P)),
                         checked=False, host_timing=True, note="top-p only (no top-k)"),
                Provider("torch-multinomial", "baseline", lambda inp: (lambda: multinomial_only(inp["logits"],
                                                                                                TEMPERATURE)),
                         checked=False, host_timing=True, note="softmax + multinomial, no filtering"),
            ]
            floor = formulas.sampling_floor_bytes(b, v, dtype.itemsize)
            out.append(Case(
                section="sampling", label=f"B={b} V={v} {dt}", params={"B": b, "V": v, "size": b * v, "dtype": dt},
                make_inputs=_inputs(b, v, dtype, seed=b + v), providers=provs, check=_check,
                err_kind="out-of-set draws", nbytes=floor, floor_bytes=floor, metric="gbps", x="size",
                group_by=("dtype",), weight=0.3,
                notes=[f"temperature {TEMPERATURE}, top-k {TOP_K}, top-p {TOP_P}; GB/s counts one read of the "
                       "logits (the floor)."]))
    return out
