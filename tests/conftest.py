"""Test harness: the Triton interpreter and the emulated CUDA build on GPU-less machines, markers that skip in
one place, input factories.

TRITON_INTERPRET must be set before anything imports triton, and FASTATTN_CUDA_EMULATE before fastattn is
imported, so this runs first (set either to 0 beforehand to opt out). Nothing here initialises CUDA:
torch.cuda.is_available() only asks the driver whether a device exists.
"""
import os

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


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("FASTATTN_SLOW") == "1"
    triton_ok = _backend.triton_status()
    from fastattn import _cuda
    ext_ok = _cuda.status()
    emulated = _backend.cuda_emulated()
    skips = {
        "gpu": None if HAS_GPU else "needs a CUDA GPU",
        # Under emulation these must fail, not skip, when the emulated build is unavailable.
        "cuda_ext": None if ext_ok is True or emulated else f"CUDA extension unavailable: {ext_ok}",
        "cuda_kernel": (None if (ext_ok is True and HAS_GPU) or emulated
                        else f"CUDA kernels cannot run here: {_backend.cuda_status()}"),
        "native_cuda_ext": ("checks fastattn._C itself; FASTATTN_CUDA_EMULATE=1 loads the emulated build"
                            if emulated else None if ext_ok is True else f"CUDA extension unavailable: {ext_ok}"),
        "triton": None if triton_ok is True else f"Triton unavailable: {triton_ok}",
        "slow": None if run_slow else "slow: run with --runslow or FASTATTN_SLOW=1",
    }
    for item in items:
        for marker, why in skips.items():
            if why is not None and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))
                break
