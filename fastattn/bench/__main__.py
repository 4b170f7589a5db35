"""Command line of the benchmark suite: ``python -m fastattn.bench`` and the ``fastattn-bench`` console script."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional


def _csv(kind):
    def parse(s: str):
        return [kind(x) for x in s.split(",") if x.strip()]
    return parse


def _flat(xs):
    return None if not xs else [y for x in xs for y in x]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fastattn-bench",
        description="Benchmark every fastattn op against every baseline on this GPU (correctness only on a CPU).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a subset of the shapes, at most ~2 minutes on an H100")
    mode.add_argument("--full", action="store_true", help="every docs/benchmarks.md shape (the default)")
    p.add_argument("--static", action="store_true",
                   help="no GPU needed: compile every CUDA kernel and the Triton configs the launchers pick, print "
                        "registers, spills, occupancy, instruction mix and issue-time estimates "
                        "(fastattn/bench/static.py; `--static --help` for its options)")
    p.add_argument("--op", action="append", type=_csv(str), metavar="OPS",
                   help="sections to run, comma-separated: attention (attention_fwd, attention_bwd), decode, mask "
                        "(mask_fwd, mask_bwd), dropout (dropout_fwd, dropout_bwd), softmax, sampling, e2e")
    p.add_argument("--dtype", action="append", type=_csv(str), metavar="DTYPES",
                   help="dtypes, comma-separated (bf16, fp16, fp32); default: each op's own")
    p.add_argument("--head-dim", action="append", type=_csv(int), metavar="DS", help="head dims for attention/decode")
    p.add_argument("--seqlen", action="append", type=_csv(int), metavar="SS",
                   help="sequence lengths (attention, masks) or KV lengths (decode)")
    p.add_argument("--pass", dest="passes", action="append", type=_csv(str), metavar="PASSES", help="fwd, bwd")
    p.add_argument("--backend", action="append", type=_csv(str), metavar="BACKENDS",
                   help="fastattn backends to run: triton, cuda, torch (default: triton,cuda on a GPU in quick "
                        "mode, all three otherwise); baselines still run")
    p.add_argument("--baseline", action="append", type=_csv(str), metavar="NAMES",
                   help="keep only baselines whose name contains one of these (e.g. sdpa-cudnn,flex)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="cpu: the correctness-only mode, also on a GPU machine")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<gpu>/<mode>)")
    p.add_argument("--no-save", action="store_true", help="print the report, write nothing")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--budget", type=float,
                   help="seconds for the whole run; sections that run out are marked skipped (default: 100 in "
                        "quick mode on a GPU, 240 in the CPU quick mode, none otherwise; 0 = none)")
    p.add_argument("--host", action="store_true",
                   help="time fastattn's host-side work per call of the small decode-step ops (kernels stubbed; "
                        "with the real launch too on a GPU) against a bare torch op, and exit")
    p.add_argument("--list", action="store_true", help="print the plan (cases × providers) and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="no per-case lines while running")
    p.add_argument("--strict", action="store_true", help="exit 1 if any row is an error")
    return p.parse_args(argv)


def _filter_tag(args) -> str:
    """A folder suffix naming the filters, so that filtered runs (e.g. a full run split by --op to fit a time
    limit) do not overwrite each other's results."""
    parts = []
    for name in ("op", "dtype", "head_dim", "seqlen", "passes", "backend", "baseline"):
        vals = _flat(getattr(args, name))
        if vals:
            parts.append(f"{name.replace('_', '')}-{'-'.join(str(v) for v in vals)}")
    return "_".join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    t_start = time.monotonic()
    raw = sys.argv[1:] if argv is None else list(argv)
    if "--static" in raw:  # a mode of its own (own options; must decide about TRITON_INTERPRET before triton loads)
        from .static import main as static_main
        return static_main(raw)
    args = parse_args(argv)
    import torch  # noqa: F401 - importing torch does not import triton

    has_gpu = torch.cuda.is_available()
    if args.device == "cuda" and not has_gpu and not args.list:
        print("fastattn-bench: --device cuda but no CUDA GPU is visible; running the CPU correctness mode.",
              file=sys.stderr)
    use_gpu = has_gpu and args.device != "cpu"
    plan_gpu = use_gpu or (args.list and args.device == "cuda")  # --list --device cuda shows the GPU plan anywhere
    if not has_gpu:
        # The Triton interpreter must be chosen before anything imports triton. (With a GPU and --device cpu,
        # the Triton rows are simply unavailable: switching the interpreter on would change later GPU runs
        # in the same process.)
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("fastattn-bench: triton was imported before TRITON_INTERPRET=1 could be set: Triton rows may "
                  "be unavailable", file=sys.stderr)
        os.environ.setdefault("TRITON_INTERPRET", "1")

    from . import env as envmod
    from . import report, runner, timing
    from .core import Options

    if args.host:
        from . import host
        device = torch.device("cuda" if use_gpu else "cpu")
        backends = _flat(args.backend) or ["triton"]
        md = "\n\n".join(host.main(device, b, quick=args.quick) for b in backends)
        print(md)
        if not args.no_save:
            env = envmod.collect(device)
            out = args.out or report.default_out_dir(env, "host")
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.md").write_text(md + "\n")
            print(f"fastattn-bench: wrote {out}/report.md", flush=True)
        return 0

    mode = "full" if not args.quick else "quick"
    opts = Options(mode=mode, device="cuda" if plan_gpu else "cpu", dtypes=_flat(args.dtype),
                   head_dims=_flat(args.head_dim), seqlens=_flat(args.seqlen), backends=_flat(args.backend),
                   baselines=_flat(args.baseline), passes=_flat(args.passes))
    try:
        cases, notes = runner.plan(opts, _flat(args.op))
    except ValueError as e:
        print(f"fastattn-bench: {e}", file=sys.stderr)
        return 2
    if args.list:
        for c in cases:
            print(f"{c.id}  [{', '.join(p.name for p in c.providers)}]")
        for n in notes:
            print(n)
        print(f"{len(cases)} cases, {sum(len(c.providers) for c in cases)} runs ({opts.device}, {mode} mode)")
        return 0

    device = torch.device("cuda" if use_gpu else "cpu")
    if use_gpu:
        torch.cuda.set_device(device)
        device = torch.device("cuda", torch.cuda.current_device())
        import torch._dynamo
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    env = envmod.collect(device)
    command = "python -m fastattn.bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                   else sys.argv[1:]))
    label = mode if use_gpu else "cpu correctness"
    print(f"fastattn-bench: {env['gpu']}, {mode} mode, {len(cases)} cases, "
          f"{sum(len(c.providers) for c in cases)} runs; torch {env['torch']}, triton {env['triton']}, "
          f"git {env['git_sha']}", flush=True)
    if not use_gpu:
        print("fastattn-bench: no GPU: checking correctness only (small shapes, Triton under the interpreter); "
              "speed figures need a GPU.", flush=True)
    for n in notes:
        print(n, flush=True)

    ceilings = timing.Ceilings()
    if use_gpu:
        ceilings = timing.measure_ceilings(quick=args.quick)
        print(f"ceilings: copy {ceilings.copy_gbps:.0f} GB/s, bf16 matmul {ceilings.matmul_tflops:.0f} TFLOP/s",
              flush=True)
    budget = args.budget
    if budget is None:
        budget = (100.0 if use_gpu else 240.0) if args.quick else 0.0
    st = runner.Settings(timed=use_gpu, warmup_ms=10.0 if args.quick else 25.0,
                         rep_ms=40.0 if args.quick else 100.0, wall_reps=2 if args.quick else 3,
                         budget_s=budget or None, progress=not args.no_progress, verbose=not args.quiet)
    rows = runner.run(cases, device, st, ceilings, start=t_start)
    elapsed = time.monotonic() - t_start
    md = report.markdown(rows, env, ceilings, label, command, use_gpu, notes, cases, elapsed)
    print()
    print(md)
    if not args.no_save:
        out = args.out or report.default_out_dir(env, mode, _filter_tag(args))
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(md)
        report.write_csv(out / "results.csv", rows, env, label)
        report.write_json(out / "results.json", rows, env, ceilings, label, command, notes)
        plots = [] if (args.no_plots or not use_gpu) else report.write_plots(out, rows, cases, env)
        print(f"fastattn-bench: wrote {out}/report.md, results.csv, results.json and {len(plots)} plots "
              f"in {time.monotonic() - t_start:.0f} s", flush=True)
    if args.strict and any(r.status.startswith("error") for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
