"""Every fastattn.bench case × provider as a pytest-benchmark test, grouped per case (shape).

    pytest benchmarks --benchmark-only                          # quick plan on this GPU
    pytest benchmarks --benchmark-only --benchmark-autosave     # save, then on a later commit:
    pytest benchmarks --benchmark-only --benchmark-compare      # compare with the last saved run
    pytest benchmarks --benchmark-only --bench-op softmax --benchmark-columns=median,iqr,rounds

Each round is one call followed by torch.cuda.synchronize(), with the L2 flushed (untimed) before it, so a
round's wall time includes the launch and a sync (~10 µs): use these numbers to compare commits and
providers; `python -m fastattn.bench` reports the CUDA-event medians. Test ids are stable
(<case id>-<provider>), which is what --benchmark-compare matches on.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from fastattn import BackendUnavailable
from fastattn.bench import runner, timing
from fastattn.bench.core import Options, Skipped, Unavailable

HAS_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_GPU else "cpu")


def _plan(full: bool, ops):
    opts = Options(mode="full" if full else "quick", device=DEVICE.type)
    cases, _ = runner.plan(opts, ops)
    return cases


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    cfg = metafunc.config
    full = cfg.getoption("--bench-full", False) or os.environ.get("FASTATTN_BENCH_FULL") == "1"
    ops = cfg.getoption("--bench-op", None)
    ops = [o for x in ops for o in x.split(",")] if ops else None
    params = []
    for case in _plan(full, ops):
        for prov in case.providers:
            pid = f"{case.id}-{prov.name}".replace(" ", "_").replace("(", "").replace(")", "")
            params.append(pytest.param(case, prov, id=pid))
    metafunc.parametrize("case,provider", params)


_inputs_cache: dict = {}


def _inputs(case):
    """The case's inputs, made once and shared by its providers (only one case's inputs are alive at a time)."""
    if case.id not in _inputs_cache:
        _inputs_cache.clear()
        if HAS_GPU:
            torch.cuda.empty_cache()
        _inputs_cache[case.id] = case.make_inputs(DEVICE)
    return _inputs_cache[case.id]


def _cpu_skip(provider) -> str | None:
    if HAS_GPU:
        return None
    if provider.backend == "triton" or provider.name in ("raw-triton", "torch-compile"):
        return "no GPU: the Triton interpreter and torch.compile are not timed on the CPU"
    return None


def test_bench(benchmark, case, provider):
    benchmark.group = case.id
    why = _cpu_skip(provider)
    if why:
        pytest.skip(why)
    inputs = _inputs(case)
    try:
        fn = provider.build(inputs)
        out = fn()
    except (Unavailable, BackendUnavailable, NotImplementedError) as e:
        pytest.skip(f"unavailable: {e}")
    except Skipped as e:
        pytest.skip(f"skipped: {e}")
    if HAS_GPU:
        torch.cuda.synchronize()
    benchmark.extra_info.update(case=case.label, provider=provider.name, kind=provider.kind, flops=case.flops,
                                bytes=case.nbytes)
    if provider.checked:
        benchmark.extra_info["err"] = case.check(inputs, out)
    del out

    if not HAS_GPU:
        benchmark.pedantic(fn, rounds=3, warmup_rounds=0, iterations=1)
        return

    def setup():
        timing._flush_l2()
        torch.cuda.synchronize()

    def target():
        fn()
        torch.cuda.synchronize()

    t0 = time.perf_counter()
    target()
    one = time.perf_counter() - t0
    rounds = max(5, min(200, int(0.3 / max(one, 1e-6))))
    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=2, iterations=1)
