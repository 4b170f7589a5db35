"""Hopper warpgroup MMA primitives (csrc/common/wgmma.cuh) against a float64 matrix product.

The kernel under test is csrc/testing/wgmma_test.cu, built into both CUDA builds. Under FASTATTN_CUDA_EMULATE=1 it
runs on the CPU emulation (the 128 threads of a warpgroup meet at every wgmma and wait; products land only at the
wait; shared operands read through the decoded descriptor and the PTX ISA's canonical layouts); on an sm_90 GPU
the same tests run the inline PTX, which is the first check of the emulation's reading of those layouts. No GPU
has run them yet. Tests of what only the emulation promises (a missing wait reads NaN, a missing fence aborts)
skip on hardware, where such a race is unspecified.
"""
from __future__ import annotations

import textwrap

import pytest
import torch

from fastattn import _backend, _cuda, _emu
from _utils import assert_aborted, assert_matches_product, run_ctypes_script

EMULATED = _backend.cuda_emulated()
K_NONE, K128, K64, K32, MN_NONE, MN128, MN64, MN32, REGS = range(9)  # testing::WgmmaOperandMode
MODE_NAMES = {K_NONE: "k-none", K128: "k-sw128", K64: "k-sw64", K32: "k-sw32", MN_NONE: "mn-none",
              MN128: "mn-sw128", MN64: "mn-sw64", MN32: "mn-sw32", REGS: "regs"}
CORRECT, WRONG_SWIZZLE, MISSING_WAIT, MISSING_FENCE, WARP_SKIPS, OVERWRITE_EARLY = range(6)  # testing::WgmmaPlanted
DTYPES = (torch.float16, torch.bfloat16)
SCHEDULES = ("forward", "reversed", "random", "warp_greedy")


def _hopper() -> bool:
    return EMULATED or (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0))


# Runs the test kernel: fastattn._C on an sm_90 GPU, or the emulated build on the CPU (conftest skips centrally
# when neither is there); on another GPU the kernel does not exist (sm_90a only).
hopper_only = pytest.mark.skipif(not _hopper(), reason="wgmma needs an sm_90 GPU (or the emulation)")
emulation_only = pytest.mark.skipif(not EMULATED, reason="only the emulation promises what a missing wait reads")


def device() -> str:
    return "cpu" if EMULATED else "cuda"


def ops():
    assert _cuda.status() is True, _cuda.status()
    return torch.ops.fastattn


def rand(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype).to(device())


def run(a, b, c, wgs, a_mode, b_mode, planted=CORRECT):
    return ops()._test_wgmma_cuda(a, b, c, wgs, a_mode, b_mode, planted)


# Every B layout with A from shared memory (128-byte swizzle) and from registers, and every A layout with the
# B layouts a kernel uses (K-major and MN-major 128-byte swizzle).
B_CASES = [(a_mode, b_mode) for a_mode in (K128, REGS) for b_mode in range(8)]
A_CASES = [(a_mode, b_mode) for a_mode in (K_NONE, K64, K32) for b_mode in (K128, MN128)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f16", "bf16"])
@pytest.mark.parametrize("a_mode,b_mode", B_CASES + A_CASES,
                         ids=[f"A-{MODE_NAMES[a]}-B-{MODE_NAMES[b]}" for a, b in B_CASES + A_CASES])
@pytest.mark.parametrize("k,n", [(16, 64), (64, 128)])
@pytest.mark.cuda_kernel
@hopper_only
def test_wgmma_layouts(dtype, a_mode, b_mode, k, n):
    a = rand((64, k), dtype, 1 + k + n)
    b = rand((k, n), dtype, 2 + k + n)
    c = rand((64, n), torch.float32, 3 + k + n)
    names = f"{MODE_NAMES[a_mode]} x {MODE_NAMES[b_mode]}"
    assert_matches_product(run(a, b, c, 1, a_mode, b_mode), a, b, c, f"c given, {names}")
    assert_matches_product(run(a, b, None, 1, a_mode, b_mode), a, b, None, f"no c, {names}")


@pytest.mark.cuda_kernel
@hopper_only
@pytest.mark.parametrize("n", [8, 256])
@pytest.mark.parametrize("a_mode,b_mode", [(K128, K128), (REGS, MN128), (K_NONE, MN_NONE)])
def test_wgmma_two_warpgroups_and_n_extremes(n, a_mode, b_mode):
    """Two warpgroups in one CTA (each its own 64 rows, B shared), N = 8 and 256, k = 48 (three chained steps)."""
    for dtype in DTYPES:
        a = rand((128, 48), dtype, 10 + n)
        b = rand((48, n), dtype, 11 + n)
        c = rand((128, n), torch.float32, 12 + n)
        assert_matches_product(run(a, b, c, 2, a_mode, b_mode), a, b, c, f"2 warpgroups n={n}")


@pytest.mark.cuda_kernel
@hopper_only
def test_wgmma_special_values():
    """Mixed magnitudes, signed zeros, subnormals, NaN and inf propagate as in the float64 product."""
    for dtype in DTYPES:
        a = rand((64, 32), torch.float32, 21).cpu()
        a[0] *= 1e3
        a[1] *= 1e-3
        a[2, :4] = torch.tensor([0.0, -0.0, 1.0, -1.0])
        a[3, 5] = float("nan")
        a[10, 2] = 3.0e-6 if dtype == torch.float16 else 1.0e-39
        b = rand((32, 64), torch.float32, 22).cpu()
        b[:, 6] = b[:, 6].abs() + 0.5
        a[:, 9] = a[:, 9].abs() + 0.25
        b[9, 6] = float("inf")
        a, b = a.to(dtype).to(device()), b.to(dtype).to(device())
        c = rand((64, 64), torch.float32, 23)
        for a_mode, b_mode in ((K128, K128), (REGS, MN128)):
            assert_matches_product(run(a, b, c, 1, a_mode, b_mode), a, b, c,
                                   f"special values {MODE_NAMES[a_mode]}")


@pytest.mark.cuda_kernel
@emulation_only
def test_wgmma_same_result_under_every_schedule(schedule):
    a = rand((128, 64), torch.bfloat16, 31)
    b = rand((64, 128), torch.bfloat16, 32)
    outs = []
    for name in SCHEDULES:
        schedule(name)
        outs.append(run(a, b, None, 2, REGS, MN128))
    assert_matches_product(outs[0], a, b, None, "schedules")
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


@pytest.fixture
def schedule():
    """Sets the emulated extension's thread schedule (ctypes), restored to "rotate" after."""
    ops()
    lib = _emu.load_settings(_emu.build_extension())

    def set_(name: str):
        assert lib.fastattn_emu_set_schedule(name.encode()) == 0

    yield set_
    set_("rotate")


# ---- planted bugs ------------------------------------------------------------------------------------------------
@pytest.mark.cuda_kernel
@emulation_only
def test_wrong_swizzle_is_caught():
    """B stored with the 128-byte swizzle, read through a descriptor without it (the reads stay inside B's
    shared memory for this K-major B): a wrong product."""
    for k in (16, 32, 64):
        a = rand((64, k), torch.float16, 41 + k)
        b = rand((k, 64), torch.float16, 42 + k)
        with pytest.raises(AssertionError):
            assert_matches_product(run(a, b, None, 1, K128, K128, WRONG_SWIZZLE), a, b, None,
                                   "planted wrong swizzle")


@pytest.mark.cuda_kernel
@emulation_only
def test_missing_wait_reads_nan():
    a = rand((64, 16), torch.bfloat16, 43)
    b = rand((16, 64), torch.bfloat16, 44)
    c = rand((64, 64), torch.float32, 45)
    out = run(a, b, c, 1, REGS, K128, MISSING_WAIT)
    assert torch.isnan(out).all(), "accumulators read before wgmma.wait_group must be NaN in the emulation"


@pytest.mark.cuda_kernel
@emulation_only
def test_shared_operand_overwritten_before_wait_is_caught():
    a = rand((64, 32), torch.float16, 46)
    b = rand((32, 64), torch.float16, 47)
    with pytest.raises(AssertionError):
        assert_matches_product(run(a, b, None, 1, K128, MN128, OVERWRITE_EARLY), a, b, None,
                               "planted early overwrite")


def _run_planted(planted: int, b_mode: int = K128, k: int = 16):
    code = textwrap.dedent(f"""
        import torch
        from fastattn import _cuda
        assert _cuda.status() is True, _cuda.status()
        a = torch.randn(64, {k}).half(); b = torch.randn({k}, 64).half()
        torch.ops.fastattn._test_wgmma_cuda(a, b, None, 1, {K128}, {b_mode}, {planted})
        print("returned", flush=True)
    """)
    return run_ctypes_script(code, asan=False, timeout=600)


@pytest.mark.cuda_kernel
@emulation_only
def test_missing_fence_aborts():
    run_ = _run_planted(MISSING_FENCE)
    assert_aborted(run_, "wgmma_test_kernel", "wgmma.mma_async", "with no wgmma.fence", "wgmma_test.cu:")


@pytest.mark.cuda_kernel
@emulation_only
def test_wrong_swizzle_reading_outside_shared_memory_aborts():
    """The same planted bug on an N-major B of k = 32: the unswizzled reading leaves B's buffer; the emulation stops
    with the element and address rather than read past the dynamic shared memory."""
    run_ = _run_planted(WRONG_SWIZZLE, MN128, 32)
    assert_aborted(run_, "wgmma_test_kernel", "wgmma.mma_async", "is outside the dynamic shared memory")


@pytest.mark.cuda_kernel
@emulation_only
def test_warp_missing_from_the_warpgroup_aborts():
    run_ = _run_planted(WARP_SKIPS)
    assert_aborted(run_, "wgmma_test_kernel", "wgmma.mma_async", "threads 0-127")


@pytest.mark.cuda_kernel
@hopper_only
def test_bad_inputs_are_rejected():
    a = rand((64, 16), torch.float16, 1)
    b = rand((16, 64), torch.float16, 2)
    with pytest.raises(RuntimeError, match="k must be 16, 32, 48 or 64"):
        run(rand((64, 8), torch.float16, 3), rand((8, 64), torch.float16, 4), None, 1, K128, K128)
    with pytest.raises(RuntimeError, match="n must be 8, 64, 128 or 256"):
        run(a, rand((16, 32), torch.float16, 4), None, 1, K128, K128)
    with pytest.raises(RuntimeError, match="a_mode must be"):
        run(a, b, None, 1, MN128, K128)
    with pytest.raises(RuntimeError, match="b_mode must be"):
        run(a, b, None, 1, K128, REGS)
    with pytest.raises(RuntimeError, match="warpgroups must be 1 or 2"):
        run(a, b, None, 3, K128, K128)


def test_generated_wgmma_statements_are_current():
    """csrc/common/wgmma_ops.inc is what csrc/common/wgmma_ops_gen.py writes (no kernel build involved)."""
    import subprocess
    import sys
    from pathlib import Path

    gen = Path(__file__).resolve().parents[1] / "csrc" / "common" / "wgmma_ops_gen.py"
    run_ = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True, timeout=60)
    assert run_.returncode == 0, "csrc/common/wgmma_ops.inc is stale: run python csrc/common/wgmma_ops_gen.py"
