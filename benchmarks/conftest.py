"""pytest-benchmark harness for fastattn: `pytest benchmarks --benchmark-only`.

The cases and providers are fastattn.bench's (the same plan as `python -m fastattn.bench --quick`, or the full
one with --bench-full / FASTATTN_BENCH_FULL=1); each test is one provider on one case, grouped per case so the
providers line up. Kept apart from tests/ (pytest.ini's testpaths), so `pytest tests` never collects it.

TRITON_INTERPRET must be set before anything imports triton, so this runs first. Without a GPU the tiny CPU
cases run (torch and SDPA baselines only: the Triton interpreter and torch.compile are no speed measurements).
"""
import os

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

HAS_PLUGIN = importlib.util.find_spec("pytest_benchmark") is not None


def pytest_addoption(parser):
    group = parser.getgroup("fastattn-bench")
    group.addoption("--bench-full", action="store_true", default=False,
                    help="fastattn: run the full plan (every docs/benchmarks.md shape) instead of the quick one")
    group.addoption("--bench-op", action="append", default=None,
                    help="fastattn: sections to run (attention, decode, mask, softmax, sampling, e2e), repeatable")


if not HAS_PLUGIN:
    @pytest.fixture
    def benchmark():
        pytest.skip("pytest-benchmark is not installed (pip install pytest-benchmark)")
