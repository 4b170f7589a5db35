"""Turns result rows into the markdown report, CSV, JSON and PNG plots, and writes them to one folder."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

from . import env as envmod
from .core import Case
from .runner import SECTION_TITLES, Row, geomean
from .timing import Ceilings

# The H200 ceilings of docs/benchmarks.md, for information only: speedups are always against baselines measured in the same run.
ANCHOR_CEILINGS = {"card": "H200 (docs/benchmarks.md, 2026-11-26)", "copy_gbps": 4252.0, "matmul_tflops": 687.0,
                   "h100_copy_gbps": "3000-3350"}
ENV_COLUMNS = ("gpu", "driver", "torch", "triton", "cuda_runtime", "git_sha", "date")
# The report reads from attention down; the run order (runner.SECTIONS) puts the cheap sections first instead.
REPORT_ORDER = ("attention_fwd", "attention_bwd", "mask_fwd", "mask_bwd", "dropout_fwd", "dropout_bwd", "decode", "softmax", "sampling", "e2e")


def _ms(ms: Optional[float]) -> str:
    if ms is None:
        return ""
    if ms < 1:
        return f"{ms * 1e3:.1f} µs"
    if ms < 1000:
        return f"{ms:.3f} ms"
    return f"{ms / 1e3:.2f} s"


def _num(x: Optional[float], fmt: str = "{:.1f}") -> str:
    return "" if x is None else fmt.format(x)


def _err(r: Row) -> str:
    if r.err is None:
        return "—" if r.status == "ok" else ""
    if math.isinf(r.err):
        return "**inf (NaN/Inf mismatch)**"
    if r.err_kind == "out-of-set draws":
        return f"{r.err:.3g}"
    return f"{r.err:.2e}"


def _baselines(rows: List[Row]) -> List[str]:
    seen: List[str] = []
    for r in rows:
        if r.kind == "baseline" and r.provider not in seen:
            seen.append(r.provider)
    return seen


def _no_mask_overheads(rows: List[Row]) -> Dict[int, float]:
    """For mask rows of ours: time / our own unmasked time at the same shape (from the attention section)."""
    plain = {}
    for r in rows:
        if r.section in ("attention_fwd", "attention_bwd") and r.time_ms:
            p = r.params
            plain[(r.section[-3:], r.provider, p["B"], p["H"], p["S"], p["D"], p["causal"], p["dtype"])] = r.time_ms
    out = {}
    for i, r in enumerate(rows):
        if r.section.startswith("mask_") and r.time_ms and r.kind == "ours":
            p = r.params
            t = plain.get((r.section[-3:], r.provider, p["B"], p["H"], p["S"], p["D"], p["causal"], p["dtype"]))
            if t:
                out[i] = r.time_ms / t
    return out


# Errors under these are rounding of the output dtype (or tf32 dots for fp32) whatever the baselines got.
_ERR_FLOOR = {"bf16": 1e-2, "fp16": 2e-3, "fp32": 1e-3}


def accuracy_flags(rows: List[Row]) -> List[tuple]:
    """fastattn rows whose error is suspicious: NaN/Inf where the reference has none, a draw outside the kept
    set, or a relative error above 3x the worst baseline's in the same case (FlashAttention's test rule is
    2x PyTorch's own error, 3x for gradients)."""
    worst: Dict[str, float] = {}
    for r in rows:
        if r.kind == "baseline" and r.err is not None and r.err_kind == "max rel err" and not math.isinf(r.err):
            worst[r.case_id] = max(worst.get(r.case_id, 0.0), r.err)
    out = []
    for r in rows:
        if r.err is None or r.kind == "baseline":
            continue
        if math.isinf(r.err) or math.isnan(r.err):
            out.append((r, "NaN or Inf where the float64 reference has none"))
        elif r.err_kind == "out-of-set draws" and r.err > 0:
            out.append((r, f"{r.err:.3g} of the draws fall outside the top-k/top-p set"))
        elif (r.err_kind == "max rel err" and r.case_id in worst and r.err > 3 * worst[r.case_id]
              and r.err > _ERR_FLOOR.get(r.params.get("dtype"), 0.0)):
            out.append((r, f"relative error {r.err:.2e} is over 3x the worst baseline's ({worst[r.case_id]:.2e})"))
    return out


def summary_rows(rows: List[Row]) -> List[dict]:
    """Per section, per fastattn provider and baseline: min / geomean / max speedup over the cases timed."""
    out = []
    for section in REPORT_ORDER:
        srows = [r for r in rows if r.section == section]
        for ours in dict.fromkeys(r.provider for r in srows if r.kind == "ours"):
            for base in _baselines(srows):
                xs = [r.speedups[base] for r in srows if r.provider == ours and base in r.speedups]
                if xs:
                    out.append({"section": section, "ours": ours, "baseline": base, "cases": len(xs),
                                "min": min(xs), "geomean": geomean(xs), "max": max(xs)})
    return out


def markdown(rows: List[Row], env: dict, ceilings: Ceilings, mode: str, command: str, timed: bool,
             notes: List[str], cases: List[Case], elapsed_s: float) -> str:
    L: List[str] = []
    if timed:
        L.append(f"# fastattn benchmark: {env.get('gpu')} ({mode} mode)")
    else:
        L.append("# fastattn correctness check on the CPU")
    L.append("")
    L.append(f"{env.get('date')} · git `{env.get('git_sha')}` · torch {env.get('torch')} · "
             f"triton {env.get('triton')}"
             f" · CUDA {env.get('cuda_runtime')} · driver {env.get('driver')}"
             + (f" · cuDNN {env['cudnn']}" if env.get("cudnn") else "") + f" · {elapsed_s:.0f} s")
    L.append("")
    L.append(f"Command: `{command}`")
    L.append("")
    if not timed:
        L.append("> **CPU mode: this run checked correctness only** (small shapes on the CPU; Triton kernels run "
                 f"under the interpreter when there is no GPU, TRITON_INTERPRET={env.get('triton_interpret')}). "
                 "Speed figures need a GPU: run `python -m fastattn.bench --quick` (or the full suite) on one.")
        L.append("")
    else:
        L.append("## Ceilings measured at start")
        L.append("")
        L.append("| ceiling | measured here | docs/benchmarks.md (H200, info only) |")
        L.append("|---|---|---|")
        L.append(f"| device-to-device copy (bytes read + written) | {_num(ceilings.copy_gbps, '{:.0f}')} GB/s | "
                 f"{ANCHOR_CEILINGS['copy_gbps']:.0f} GB/s (H100: ~3000-3350) |")
        L.append(f"| bf16 matmul 8192³ | {_num(ceilings.matmul_tflops, '{:.0f}')} TFLOP/s | "
                 f"{ANCHOR_CEILINGS['matmul_tflops']:.0f} TFLOP/s |")
        L.append("")
        L.append("Percentages below are of these measured ceilings (TFLOP/s against the matmul rate, GB/s against "
                 "the copy bandwidth). Speedups are against baselines timed in this same run.")
        L.append("")
        summ = summary_rows(rows)
        if summ:
            L.append("## Summary: speedup of fastattn over each baseline (time of baseline / time of ours)")
            L.append("")
            L.append("| section | ours | baseline | cases | min | geomean | max |")
            L.append("|---|---|---|---|---|---|---|")
            for s in summ:
                L.append(f"| {s['section']} | {s['ours']} | {s['baseline']} | {s['cases']} | {s['min']:.2f}× | "
                         f"{s['geomean']:.2f}× | {s['max']:.2f}× |")
            L.append("")
    counts: Dict[str, int] = {}
    for r in rows:
        k = r.status.split(":")[0]
        counts[k] = counts.get(k, 0) + 1
    L.append("Rows: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".")
    L.append("")
    errors = [r for r in rows if r.status.startswith("error")]
    inaccurate = accuracy_flags(rows)
    if errors or inaccurate:
        L.append("## Problems")
        L.append("")
        for r in errors:
            L.append(f"- {r.case_id} / {r.provider}: {r.status}")
        for r, why in inaccurate:
            L.append(f"- {r.case_id} / {r.provider}: {why}")
        L.append("")
    for n in notes:
        L.append(f"- {n}")
    if notes:
        L.append("")
    overheads = _no_mask_overheads(rows)
    index = {id(r): i for i, r in enumerate(rows)}
    case_notes = {c.id: c.notes for c in cases}
    for section in REPORT_ORDER:
        srows = [r for r in rows if r.section == section]
        if not srows:
            continue
        L.append(f"## {SECTION_TITLES[section]}")
        L.append("")
        seen_notes = []
        for r in srows:
            for n in case_notes.get(r.case_id, []):
                if n not in seen_notes:
                    seen_notes.append(n)
        for n in seen_notes:
            L.append(f"_{n}_")
            L.append("")
        L += _section_table(srows, timed, overheads, index)
        L.append("")
    if timed:
        L.append("Method (benchmarks/NOTES.md): CUDA-event medians of reps that each start with a flushed L2; "
                 "'spread' is the 20th-80th percentile range; 'µs/call b2b' is the wall time per call of "
                 "back-to-back calls, host dispatch included; end-to-end generation is timed as whole calls.")
        L.append("")
    L.append("Errors: max |out - ref| / max |ref| against fastattn.reference in float64 (the max over outputs: "
             "for backward over dq, dk, dv and dbias); for sampling, the fraction of drawn tokens outside the "
             "set the float64 reference keeps.")
    return "\n".join(L) + "\n"


def _section_table(srows: List[Row], timed: bool, overheads: Dict[int, float], index: Dict[int, int]) -> List[str]:
    bases = _baselines(srows)
    has = lambda attr: any(getattr(r, attr) is not None for r in srows)  # noqa: E731
    cols = ["shape", "provider"]
    if timed:
        cols += ["time", "spread"]
        if has("tflops"):
            cols += ["TFLOP/s"]
        if has("gbps"):
            cols += ["GB/s"]
        if has("tokps"):
            cols += ["tok/s"]
        if has("pct_ceiling"):
            cols += ["% ceiling"]
        if has("host_ms"):
            cols += ["µs/call b2b"]
        if has("floor_ms"):
            cols += ["× floor"]
    else:
        cols += ["status"]
    kinds = sorted({r.err_kind for r in srows if r.err_kind})
    cols += [kinds[0] if len(kinds) == 1 else "error"]
    show_overhead = any(index[id(r)] in overheads for r in srows)
    if show_overhead:
        cols += ["vs own no-mask"]
    if timed:
        cols += [f"vs {b}" for b in bases]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    last_case = None
    for r in srows:
        shape = r.label if r.case_id != last_case else ""
        last_case = r.case_id
        cells = [shape, r.provider + (f" ({r.note})" if r.note else "")]
        ok = r.status == "ok"
        if timed:
            if ok and r.time_ms is not None:
                cells += [_ms(r.time_ms), f"{_ms(r.p20_ms)}–{_ms(r.p80_ms)}"]
            else:
                cells += [r.status if not ok else "", ""]
            if "TFLOP/s" in cols:
                cells.append(_num(r.tflops))
            if "GB/s" in cols:
                cells.append(_num(r.gbps, "{:.0f}"))
            if "tok/s" in cols:
                cells.append(_num(r.tokps, "{:.0f}"))
            if "% ceiling" in cols:
                cells.append(_num(r.pct_ceiling, "{:.0f}%"))
            if "µs/call b2b" in cols:
                cells.append(_num(None if r.host_ms is None else r.host_ms * 1e3))
            if "× floor" in cols:
                cells.append(_num(r.time_ms / r.floor_ms if (r.time_ms and r.floor_ms) else None, "{:.0f}×"))
        else:
            cells.append(r.status)
        cells.append(_err(r))
        if show_overhead:
            o = overheads.get(index[id(r)])
            cells.append("" if o is None else f"{(o - 1) * 100:+.0f}%")
        if timed:
            cells += ["" if b not in r.speedups else f"{r.speedups[b]:.2f}×" for b in bases]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def write_csv(path: Path, rows: List[Row], env: dict, mode: str) -> None:
    param_keys: List[str] = []
    bases: List[str] = []
    for r in rows:
        for k in r.params:
            if k not in param_keys:
                param_keys.append(k)
        for b in r.speedups:
            if b not in bases:
                bases.append(b)
    fields = list(ENV_COLUMNS) + ["mode", "section", "case_id", "label"] + param_keys + [
        "provider", "kind", "status", "time_ms", "p20_ms", "p80_ms", "reps", "host_ms", "tflops", "gbps", "tokps",
        "pct_ceiling", "err", "err_kind", "floor_ms"] + [f"speedup_vs_{b}" for b in bases]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            d = {k: env.get(k, "") for k in ENV_COLUMNS}
            d.update(mode=mode, section=r.section, case_id=r.case_id, label=r.label, provider=r.provider, kind=r.kind,
                     status=r.status, time_ms=r.time_ms, p20_ms=r.p20_ms, p80_ms=r.p80_ms, reps=r.reps,
                     host_ms=r.host_ms, tflops=r.tflops, gbps=r.gbps, tokps=r.tokps, pct_ceiling=r.pct_ceiling,
                     err=r.err, err_kind=r.err_kind, floor_ms=r.floor_ms)
            d.update({k: r.params.get(k, "") for k in param_keys})
            d.update({f"speedup_vs_{b}": r.speedups.get(b, "") for b in bases})
            w.writerow({k: ("" if v is None else v) for k, v in d.items()})


def write_json(path: Path, rows: List[Row], env: dict, ceilings: Ceilings, mode: str, command: str,
               notes: List[str]) -> None:
    def clean(x):
        if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
            return str(x)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x
    doc = {"env": env, "mode": mode, "command": command, "ceilings": vars(ceilings), "anchors": ANCHOR_CEILINGS,
           "notes": notes, "summary": summary_rows(rows), "rows": [clean(r.as_dict()) for r in rows]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)


def write_plots(folder: Path, rows: List[Row], cases: List[Case], env: dict) -> List[Path]:
    """One PNG per plot group: throughput (TFLOP/s, GB/s or tok/s) against the case's x axis, a line per
    provider. Returns the files written; none when matplotlib is missing or nothing was timed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plots are optional
        return []
    by_id = {c.id: c for c in cases}
    groups: Dict[tuple, Dict[str, list]] = {}
    meta: Dict[tuple, Case] = {}
    for r in rows:
        c = by_id.get(r.case_id)
        if c is None or c.x is None or r.time_ms is None:
            continue
        y = {"tflops": r.tflops, "gbps": r.gbps, "tokps": r.tokps}.get(c.metric)
        if y is None:
            continue
        key = c.plot_key()
        meta.setdefault(key, c)
        groups.setdefault(key, {}).setdefault(r.provider, []).append((c.params[c.x], y))
    written = []
    for key, lines in groups.items():
        c = meta[key]
        if max(len(v) for v in lines.values()) < 2 and len(lines) < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for prov, pts in lines.items():
            pts.sort()
            style = "-o" if prov.startswith(("fastattn", "raw")) else "--s"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=prov, markersize=4)
        ax.set_xscale("log", base=2)
        xs = sorted({p[0] for pts in lines.values() for p in pts})
        ax.set_xticks(xs)
        ax.set_xticklabels([_human(x) for x in xs], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel({"S": "sequence length", "KV": "KV cache length", "size": "elements"}.get(c.x, c.x))
        ax.set_ylabel({"tflops": "TFLOP/s", "gbps": "GB/s", "tokps": "tokens/s"}[c.metric])
        title = SECTION_TITLES.get(c.section, c.section) + " — " + ", ".join(f"{k}={v}" for k, v in key[1:])
        ax.set_title(f"{title}\n{env.get('gpu')}, git {env.get('git_sha')}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = envmod.slug("-".join([c.section] + [f"{k}{v}" for k, v in key[1:]])) + ".png"
        path = folder / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _human(x) -> str:
    for div, suffix in ((2**30, "G"), (2**20, "M"), (2**10, "k")):
        if x >= div and x % (div // 4 or 1) == 0:
            v = x / div
            return f"{v:g}{suffix}"
    return str(x)


def default_out_dir(env: dict, mode: str, tag: str = "") -> Path:
    """benchmarks/results/<gpu>/<mode>[_<filters>] in the repository (or under the current directory when
    fastattn is installed without its repository)."""
    root = envmod.REPO_ROOT / "benchmarks"
    base = root if root.is_dir() else Path(os.getcwd()) / "benchmarks"
    gpu = "cpu" if env.get("gpu", "").startswith("none") else envmod.slug(env.get("gpu", "unknown"))
    folder = mode + (f"_{tag}" if tag else "")
    return base / "results" / gpu / "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in folder)
