"""Test harness: the Triton interpreter and the emulated CUDA build on GPU-less machines, backend markers that
skip in one place (or fail, where the backend is expected), input factories.

TRITON_INTERPRET must be set before anything imports triton, and FASTATTN_CUDA_EMULATE before fastattn is
imported, so this runs first (set either to 0 beforehand to opt out). Nothing here initialises CUDA:
torch.cuda.is_available() only asks the driver whether a device exists.
"""
import os
import pathlib

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("FASTATTN_CUDA_EMULATE", "1")  # backend="cuda" on CPU tensors (csrc/emu)

import pytest  # noqa: E402

import fastattn  # noqa: E402
from fastattn import _backend  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    for line in (
        "gpu: needs a CUDA GPU",
        "cuda_ext: needs the compiled extension fastattn._C, or its emulated build (FASTATTN_CUDA_EMULATE=1)",
        "cuda_kernel: runs the CUDA kernels: fastattn._C on a GPU, or the emulated build on the CPU",
        "native_cuda_ext: needs the nvcc build fastattn._C itself (not the emulated one)",
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
    emulated = _backend.cuda_emulated()
    built = any(pathlib.Path(fastattn.__file__).parent.glob("_C*.so"))
    ext_why = None if ext_ok is True else f"CUDA extension unavailable: {ext_ok}"
    return {
        # An installed triton must run here (compiled on a GPU, interpreted otherwise): not running fails.
        "triton": (None if triton_ok is True else f"Triton unavailable: {triton_ok}",
                   "triton" in expected_backends()),
        # Under emulation the emulated build must load; a built extension must load; a pure-Python install (no
        # _C file) legitimately has none.
        "cuda_ext": (ext_why, emulated or built or "cuda" in expected_backends()),
        # The CUDA kernels themselves: the nvcc build on a GPU, or the emulated build on the CPU.
        "cuda_kernel": (None if ext_ok is True and (HAS_GPU or emulated)
                        else ext_why or "CUDA kernels need a GPU or FASTATTN_CUDA_EMULATE=1",
                        emulated or (HAS_GPU and built) or "cuda" in expected_backends()),
        # Checks of fastattn._C itself: not expected when the emulated build stands in for it.
        "native_cuda_ext": ("checks fastattn._C itself; FASTATTN_CUDA_EMULATE=1 loads the emulated build"
                            if emulated else ext_why, (not emulated) and built),
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
