"""Host time of the small, latency-bound ops: ``python -m fastattn.bench --host``.

At one token per decode step the GPU work of decode_attention and sample is a few microseconds, so the Python
between the caller and the kernel launch decides tokens per second. This mode times, per call:

- ``stub``: fastattn's public call with the backend's kernel function replaced by a stub that returns a
  preallocated output, so only fastattn's own checks, dispatch and argument preparation run (any machine);
- ``launch`` (a GPU only): the real call, back to back without synchronising, which is max(host, GPU) per call;
- ``launcher`` (a GPU only): the backend's kernel function called directly (what the stub replaced);
- ``bare op``: a plain torch op on the call's main input in the same process, ``clone()``, the yardstick.

The figure to watch is stub / bare op: the target is at most 3 (issue: decode hot path). Timings interleave the
providers over several rounds and keep each one's best round, so that noise from other processes on the machine
hits all of them alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch

import fastattn
from ..ops import _dispatch
from . import timing


@dataclass
class HostCase:
    name: str
    family: str
    fn: str                              # the kernel function of the backend module that a stub replaces
    call: Callable[[str], object]        # call(backend) -> the public call's result
    main_input: torch.Tensor             # what the bare op clones
    stub_out: Callable[[], object]       # the preallocated result the stub returns


def cases(device: torch.device) -> List[HostCase]:
    """The decode-step calls: one token's logits (1 x 32000, fp32), GPT-2-small-like decode shapes."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 32000, generator=g).to(device)
    temp_t = torch.full((1,), 0.8, device=device)
    top_p_t = torch.full((1,), 0.9, device=device)
    seeds = torch.ones(1, dtype=torch.int64, device=device)
    dt = torch.float16 if device.type == "cuda" else torch.float32
    q = torch.randn(1, 32, 128, generator=g).to(device, dt)
    kc = torch.randn(1, 8, 1024, 128, generator=g).to(device, dt)
    lens = torch.full((1,), 700, dtype=torch.int32, device=device)
    x = torch.randn(8, 4096, generator=g).to(device)
    tok = torch.zeros(1, dtype=torch.int64, device=device)
    filt = torch.empty_like(logits)
    qo = torch.empty_like(q)
    xo = torch.empty_like(x)
    return [
        HostCase("sample, scalar params", "sampling", "sample",
                 lambda b: fastattn.sample(logits, temperature=0.8, top_k=50, top_p=0.9, seed=1, backend=b),
                 logits, lambda: tok),
        HostCase("sample, (B,) tensor params", "sampling", "sample",
                 lambda b: fastattn.sample(logits, temperature=temp_t, top_k=50, top_p=top_p_t, seed=seeds,
                                           backend=b),
                 logits, lambda: tok),
        HostCase("top_k_top_p_filter, scalar", "sampling", "top_k_top_p_filter",
                 lambda b: fastattn.top_k_top_p_filter(logits, top_k=50, top_p=0.9, backend=b), logits,
                 lambda: filt),
        HostCase("decode_attention, GQA 32/8, D=128", "attention", "decode_attention",
                 lambda b: fastattn.decode_attention(q, kc, kc, lens, backend=b), q, lambda: qo),
        HostCase("softmax, 8 x 4096", "softmax", "softmax_fwd",
                 lambda b: fastattn.softmax(x, backend=b), x, lambda: xo),
    ]


def _best(fns: Dict[str, Callable[[], object]], *, n: int, rounds: int, sync: bool,
          round_s: float = 0.02) -> Dict[str, float]:
    """Best of ``rounds`` rounds of each fn in µs per call, interleaved; a round is n calls (timing.loop_time),
    fewer for a slow fn (~round_s)."""
    reps = {}
    for k, f in fns.items():  # warm-up (compiles, caches), then a count that keeps a round near round_s
        f()
        reps[k] = max(3, min(n, int(round_s / max(timing.loop_time(f, 3, sync=sync), 1e-9))))
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            best[k] = min(best[k], timing.loop_time(f, reps[k], sync=sync) * 1e6)
    return best


def measure(device: torch.device, backend: str, *, n: int = 400, rounds: int = 41) -> List[Tuple[str, Dict[str, float]]]:
    """[(case name, {provider: µs per call})] for every case, on ``device`` through ``backend``."""
    out = []
    gpu = device.type == "cuda"
    for case in cases(device):
        b = _dispatch.backend_for(case.family, backend)
        why = b.machine_reason(device)
        if why is not None:
            out.append((case.name, {"unavailable": why}))
            continue
        module = b.kernels
        main = case.main_input
        fns: Dict[str, Callable[[], object]] = {"bare op": main.clone}
        if gpu or module is None:  # the torch reference has no kernel to stub: its whole call is timed
            fns["launch"] = lambda c=case: c.call(backend)
        res = _best(fns, n=n, rounds=rounds, sync=gpu) if len(fns) > 1 else {}
        if module is None:
            res["bare op (stub run)"] = res["bare op"]
            out.append((case.name, res))
            continue
        real = getattr(module, case.fn)
        stub_val = case.stub_out()
        setattr(module, case.fn, lambda *a, **k: stub_val)
        try:
            stub = _best({"bare op": main.clone, "stub": lambda c=case: c.call(backend)}, n=n, rounds=rounds,
                         sync=False)
        finally:
            setattr(module, case.fn, real)
        res["stub"] = stub["stub"]
        res["bare op (stub run)"] = stub["bare op"]
        out.append((case.name, res))
    return out


def report(rows, device: torch.device, backend: str) -> str:
    lines = [f"## Host time per call, backend={backend!r}, device {device} "
             f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU, kernels stubbed'})",
             "",
             "| call | stub µs | bare op µs | stub / bare | launch µs | launch / bare |",
             "|---|---|---|---|---|---|"]
    for name, r in rows:
        if "unavailable" in r:
            lines.append(f"| {name} | unavailable: {r['unavailable']} | | | | |")
            continue
        bare = r["bare op (stub run)"]
        launch = r.get("launch")
        stub = f"{r['stub']:.2f} | {bare:.2f} | {r['stub'] / bare:.1f}x" if "stub" in r else f"n/a | {bare:.2f} | n/a"
        lines.append(f"| {name} | {stub} | "
                     + (f"{launch:.2f} | {launch / r['bare op']:.1f}x |" if launch is not None else "n/a | n/a |"))
    lines += ["", "stub: fastattn's Python up to the kernel launch (the kernel function replaced by a stub); bare "
              "op: clone() of the call's main input in the same process and round; target stub / bare <= 3. launch: the real "
              "call back to back (on a GPU: max(host, GPU) per call; for the torch reference: its whole call)."]
    return "\n".join(lines)


def main(device: torch.device, backend: str = "triton", *, quick: bool = False) -> str:
    rows = measure(device, backend, rounds=9 if quick else 41)  # many short rounds: robust to a loaded machine
    return report(rows, device, backend)
