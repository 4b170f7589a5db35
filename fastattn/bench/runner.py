"""Plans the cases for a mode and the filters, runs every provider of every case, and returns result rows.

A provider that cannot run becomes a row 'unavailable: reason' (or 'skipped: reason', 'error: ...'), never a
crash. After an error the CUDA context is checked: if it is lost (a kernel faulted), the remaining rows are
marked skipped and the report is still written. In quick mode every section gets a share of a time budget, so
that a slow compile or autotune in one section cannot eat the others' time.
"""
from __future__ import annotations

import gc
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from fastattn import BackendUnavailable

from . import attention, decode, formulas, models, sampling, softmax, timing
from .core import Case, Options, Provider, Skipped, Unavailable

SECTIONS = ("softmax", "sampling", "decode", "attention_fwd", "attention_bwd", "mask_fwd", "mask_bwd",
            "dropout_fwd", "dropout_bwd", "e2e")
SECTION_TITLES = {
    "attention_fwd": "Attention forward",
    "attention_bwd": "Attention backward",
    "decode": "Decode attention (one query token, KV cache)",
    "mask_fwd": "Attention with masks and biases, forward",
    "mask_bwd": "Attention with a learnable bias, backward",
    "dropout_fwd": "Attention with dropout, forward, against the same call without it",
    "dropout_bwd": "Attention with dropout, backward, against the same call without it",
    "softmax": "Softmax with temperature",
    "sampling": "Sampling (temperature, top-k, top-p)",
    "e2e": "End-to-end models",
}
OP_ALIASES = {
    "attention": ("attention_fwd", "attention_bwd"),
    "attn": ("attention_fwd", "attention_bwd"),
    "mask": ("mask_fwd", "mask_bwd"),
    "masks": ("mask_fwd", "mask_bwd"),
    "bias": ("mask_fwd", "mask_bwd"),
    "dropout": ("dropout_fwd", "dropout_bwd"),
    "models": ("e2e",),
    "model": ("e2e",),
    "sample": ("sampling",),
}
# Shares of the quick-mode budget (the time left is split again at the start of each section).
QUICK_SHARES = {"softmax": 1.2, "sampling": 0.4, "decode": 0.5, "attention_fwd": 1.5, "attention_bwd": 1.5,
                "mask_fwd": 1.4, "mask_bwd": 0.8, "dropout_fwd": 0.3, "dropout_bwd": 0.3, "e2e": 1.2}


def sections_for(ops: Optional[List[str]]) -> List[str]:
    if not ops:
        return list(SECTIONS)
    out = []
    for op in ops:
        names = OP_ALIASES.get(op, (op,))
        for n in names:
            if n not in SECTIONS:
                raise ValueError(f"unknown op {op!r}: choose from {', '.join(list(SECTIONS) + list(OP_ALIASES))}")
            if n not in out:
                out.append(n)
    return [s for s in SECTIONS if s in out]


def plan(opts: Options, ops: Optional[List[str]] = None) -> Tuple[List[Case], List[str]]:
    """The cases to run, in run order, with providers filtered; and 'skipped: ...' notes for whole groups."""
    sections = sections_for(ops)
    notes: List[str] = []
    cases: List[Case] = []
    if "attention_fwd" in sections or "attention_bwd" in sections:
        cases += attention.plain_cases(opts)
    if "mask_fwd" in sections or "mask_bwd" in sections:
        cases += attention.mask_cases(opts)
    if "dropout_fwd" in sections or "dropout_bwd" in sections:
        cases += attention.dropout_cases(opts)
    if "decode" in sections:
        cases += decode.cases(opts)
    if "softmax" in sections:
        cases += softmax.cases(opts)
    if "sampling" in sections:
        cases += sampling.cases(opts)
    if "e2e" in sections:
        c, n = models.cases(opts)
        cases += c
        notes += n
    cases = [c for c in cases if c.section in sections]
    backends = opts.backends or (["triton", "cuda", "torch"] if (opts.cpu or not opts.quick) else ["triton", "cuda"])
    for c in cases:
        c.providers = [p for p in c.providers if _keep(p, backends, opts.baselines)]
    cases = [c for c in cases if c.providers]
    order = {s: i for i, s in enumerate(SECTIONS)}
    cases.sort(key=lambda c: order[c.section])  # stable: keeps each section's own order
    return cases, notes


def _keep(p: Provider, backends: List[str], baselines: Optional[List[str]]) -> bool:
    if p.backend is not None:
        return p.backend in backends
    return baselines is None or any(b in p.name for b in baselines)


@dataclass
class Row:
    section: str
    case_id: str
    label: str
    params: Dict
    provider: str
    kind: str
    status: str = "ok"
    time_ms: Optional[float] = None
    p20_ms: Optional[float] = None
    p80_ms: Optional[float] = None
    reps: Optional[int] = None
    host_ms: Optional[float] = None
    tflops: Optional[float] = None
    gbps: Optional[float] = None
    tokps: Optional[float] = None
    pct_ceiling: Optional[float] = None
    err: Optional[float] = None
    err_kind: str = ""
    floor_ms: Optional[float] = None
    speedups: Dict[str, float] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Settings:
    timed: bool                 # False on the CPU: correctness only
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    wall_reps: int = 3
    budget_s: Optional[float] = None
    progress: bool = True
    verbose: bool = True


def _short(e: BaseException, limit: int = 240) -> str:
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else type(e).__name__
    for line in msg[1:]:  # keep a reason that follows a generic first line
        if len(text) > 60:
            break
        text += " " + line.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Context:
    lost: Optional[str] = None


def _cuda_healthy() -> bool:
    try:
        torch.cuda.synchronize()
        return True
    except Exception:  # noqa: BLE001 - a sticky CUDA error: every later call fails too
        return False


def _run_one(case: Case, prov: Provider, inputs: dict, device: torch.device, st: Settings,
             ceilings: timing.Ceilings, ctx: _Context) -> Row:
    row = Row(case.section, case.id, case.label, dict(case.params), prov.name, prov.kind,
              err_kind=case.err_kind if prov.checked else "", note=prov.note)
    if ctx.lost:
        row.status = f"skipped: {ctx.lost}"
        return row
    fn = out = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy overflow notes from the interpreter, SDPA hints, ...
            fn = prov.build(inputs)
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if prov.checked:
                row.err = case.check(inputs, out)
            out = None
            if st.timed:
                if case.timing == "wall":
                    t = timing.wall_time(fn, reps=st.wall_reps)
                else:
                    t = timing.device_time(fn, warmup_ms=st.warmup_ms, rep_ms=st.rep_ms)
                row.time_ms, row.p20_ms, row.p80_ms, row.reps = t.median_ms, t.p20_ms, t.p80_ms, t.reps
                if prov.host_timing:
                    row.host_ms = timing.host_time(fn, rep_ms=st.rep_ms / 2)
                _fill_rates(row, case, ceilings)
    except (Unavailable, BackendUnavailable, NotImplementedError) as e:
        row.status = f"unavailable: {_short(e)}"
    except Skipped as e:
        row.status = f"skipped: {_short(e)}"
    except torch.cuda.OutOfMemoryError:
        row.status = "skipped: out of GPU memory"
    except Exception as e:  # noqa: BLE001 - any failure is a row, never a crash
        row.status = f"error: {type(e).__name__}: {_short(e)}"
        if device.type == "cuda" and not _cuda_healthy():
            ctx.lost = f"the CUDA context was lost after {prov.name} failed on {case.id}"
    finally:
        fn = out = None
        if row.status.startswith("error") and st.verbose:
            _log(f"    {prov.name}: {row.status}")
    return row


def _fill_rates(row: Row, case: Case, c: timing.Ceilings) -> None:
    row.tflops = formulas.tflops(case.flops, row.time_ms)
    row.gbps = formulas.gbps(case.nbytes, row.time_ms)
    if case.metric == "tokps" and row.time_ms:
        row.tokps = case.params["B"] * case.params.get("new", 1) / (row.time_ms * 1e-3)
    if case.metric == "tflops" and row.tflops and c.matmul_tflops:
        row.pct_ceiling = 100.0 * row.tflops / c.matmul_tflops
    elif case.metric == "gbps" and row.gbps and c.copy_gbps:
        row.pct_ceiling = 100.0 * row.gbps / c.copy_gbps
    if case.floor_bytes:
        row.floor_ms = formulas.floor_ms(case.floor_bytes, c.copy_gbps)


def _speedups(rows: List[Row]) -> None:
    base = {r.provider: r.time_ms for r in rows if r.kind == "baseline" and r.time_ms}
    for r in rows:
        if r.time_ms:
            r.speedups = {b: t / r.time_ms for b, t in base.items() if b != r.provider}


_progress_bar = None


def _log(msg: str) -> None:
    if _progress_bar is not None:
        _progress_bar.write(msg)
    else:
        print(msg, flush=True)


def _case_line(case: Case, rows: List[Row]) -> str:
    parts = []
    for r in rows:
        if r.status != "ok":
            parts.append(f"{r.provider}: {r.status.split(':')[0]}")
        elif r.time_ms is not None:
            rate = (f"{r.tflops:.0f} TF/s" if r.tflops else f"{r.gbps:.0f} GB/s" if r.gbps else
                    f"{r.tokps:.0f} tok/s" if r.tokps else "")
            parts.append(f"{r.provider} {_fmt_ms(r.time_ms)} {rate}".rstrip())
        else:
            err = "—" if r.err is None else f"{r.err:.1e}"
            parts.append(f"{r.provider} err {err}")
    return f"  {case.section} {case.label}: " + "; ".join(parts)


def _fmt_ms(ms: float) -> str:
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.2f} ms"


def run(cases: List[Case], device: torch.device, st: Settings, ceilings: timing.Ceilings,
        start: Optional[float] = None) -> List[Row]:
    global _progress_bar
    start = time.monotonic() if start is None else start
    deadline = start + st.budget_s if st.budget_s else None
    ctx = _Context()
    rows: List[Row] = []
    total = sum(len(c.providers) for c in cases)
    bar = None
    if st.progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr,
                       mininterval=0.5 if sys.stderr.isatty() else 15.0)
        except ImportError:
            bar = None
    _progress_bar = bar
    try:
        by_section: Dict[str, List[Case]] = {}
        for c in cases:
            by_section.setdefault(c.section, []).append(c)
        sections = list(by_section)
        for si, section in enumerate(sections):
            section_deadline = None
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                weights = [QUICK_SHARES.get(s, 1.0) for s in sections[si:]]
                section_deadline = time.monotonic() + left * weights[0] / sum(weights)
            _log(f"== {SECTION_TITLES.get(section, section)} ({len(by_section[section])} cases)")
            for case in by_section[section]:
                if bar is not None:
                    bar.set_postfix_str(f"{case.section} {case.label}"[:60], refresh=False)
                t_case = time.monotonic()
                case_rows = _run_case(case, device, st, ceilings, ctx, section_deadline)
                rows += case_rows
                if bar is not None:
                    bar.update(len(case.providers))
                if st.verbose:
                    _log(_case_line(case, case_rows) + f" [{time.monotonic() - t_case:.1f} s]")
    finally:
        if bar is not None:
            bar.close()
        _progress_bar = None
    return rows


def _run_case(case: Case, device, st: Settings, ceilings, ctx: _Context, section_deadline) -> List[Row]:
    def all_rows(status: str) -> List[Row]:
        return [Row(case.section, case.id, case.label, dict(case.params), p.name, p.kind, status=status,
                    err_kind=case.err_kind if p.checked else "", note=p.note) for p in case.providers]

    if ctx.lost:
        return all_rows(f"skipped: {ctx.lost}")
    if section_deadline is not None and time.monotonic() > section_deadline:
        return all_rows("skipped: time budget of this mode spent (run without --quick, or filter with --op)")
    try:
        inputs = case.make_inputs(device)
    except torch.cuda.OutOfMemoryError:
        return all_rows("skipped: inputs do not fit in GPU memory")
    except Exception as e:  # noqa: BLE001
        return all_rows(f"error: making inputs failed: {type(e).__name__}: {_short(e)}")
    try:
        rows = [_run_one(case, p, inputs, device, st, ceilings, ctx) for p in case.providers]
    finally:
        inputs = None
        gc.collect()
        if device.type == "cuda" and not ctx.lost:
            torch.cuda.empty_cache()
    _speedups(rows)
    return rows


def geomean(xs: List[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))
