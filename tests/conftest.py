"""Test harness: the Triton interpreter on GPU-less machines, backend markers (skip, or fail where expected), input factories.

TRITON_INTERPRET must be set before anything imports triton, so this runs first. Nothing here initialises
CUDA: torch.cuda.is_available() only asks the driver whether a device exists.
"""
import os
import pathlib

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastattn  # noqa: E402
from fastattn import _backend  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    for line in (
        "gpu: needs a CUDA GPU",
        "cuda_ext: needs the compiled extension fastattn._C",
        "triton: needs Triton kernels to run here (a GPU, or the interpreter on the CPU)",
        "slow: long-running; run with --runslow or FASTATTN_SLOW=1",
    ):
        config.addinivalue_line("markers", line)


def _backend_marker_reasons():
    """For the backend markers: (why the backend cannot run here or None, whether it is expected here)."""
    from _utils import expected_backends

    from fastattn import _cuda

    triton_ok = _backend.triton_status()
    ext_ok = _cuda.status()
    built = any(pathlib.Path(fastattn.__file__).parent.glob("_C*.so"))
    return {
        # An installed triton must run here (compiled on a GPU, interpreted otherwise): not running fails.
        "triton": (None if triton_ok is True else f"Triton unavailable: {triton_ok}",
                   "triton" in expected_backends()),
        # A built extension must load; a pure-Python install (no _C file) legitimately has none.
        "cuda_ext": (None if ext_ok is True else f"CUDA extension unavailable: {ext_ok}",
                     built or "cuda" in expected_backends()),
    }


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("FASTATTN_SLOW") == "1"
    skips = {
        "gpu": None if HAS_GPU else "needs a CUDA GPU",
        "slow": None if run_slow else "slow: run with --runslow or FASTATTN_SLOW=1",
    }
    for marker, (why, expected) in _backend_marker_reasons().items():
        skips[marker] = None if expected else why  # expected but unavailable: pytest_runtest_setup fails it
    for item in items:
        for marker, why in skips.items():
            if why is not None and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))
                break


def pytest_runtest_setup(item):
    """A test marked for a backend that is expected here but cannot run fails (never skips)."""
    for marker, (why, expected) in _backend_marker_reasons().items():
        if marker in item.keywords and why is not None and expected:
            pytest.fail(f"{why} (expected on this machine: see tests/_utils.expected_backends)", pytrace=False)
