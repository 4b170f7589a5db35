"""Tensor-core and async-copy primitives (csrc/common/{mma,ldmatrix,cp_async}.cuh) against plain matrix products.

The kernels under test are csrc/testing/primitives_test.cu, built into both CUDA builds: on a GPU they run the
inline PTX, under FASTATTN_CUDA_EMULATE=1 the CPU emulation (fragments exchanged through the warp's scratch
area, cp.async landing only at its wait_group). The same tests run both ways, so the first GPU run checks the
emulation against the hardware. Tests of what only the emulation promises (a missing wait reads stale data,
pending copies are untouched) skip on the GPU, where the outcome of such a race is unspecified.

The fragment layouts themselves and the emulation's cores are also checked by a host C++ program
(tests/cpp/fragment_layout_test.cpp) that simulates the 32 lanes in a loop; it needs only a C++ compiler.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastattn import _backend, _cuda, _emu
from _utils import assert_aborted, assert_matches_product, run_ctypes_script

ROOT = Path(__file__).resolve().parents[1]
EMULATED = _backend.cuda_emulated()
MMA_DTYPES = (torch.float16, torch.bfloat16)
DT = {torch.float16: "f16", torch.bfloat16: "bf16"}
SENTINEL = -12345.0  # kCpAsyncSentinel in csrc/testing/primitives_test.h
CP_THREADS = 64
LDMATRIX_MODES = {0: "x4", 1: "x2", 2: "x1", 3: "x4.trans", 4: "x2.trans", 5: "x1.trans"}
GEMM_CORRECT, GEMM_MISSING_WAIT, GEMM_MISSING_BARRIER = 0, 1, 2  # testing::GemmPlanted
SCHEDULES = ("forward", "reversed", "random", "warp_greedy")

# Runs the test kernels: fastattn._C on a GPU, or the emulated build on the CPU (conftest skips centrally).
kernels = pytest.mark.cuda_kernel
emulation_only = pytest.mark.skipif(
    not EMULATED, reason="what a missing wait reads is unspecified on hardware; only the emulation promises it"
)


def device() -> str:
    return "cpu" if EMULATED else "cuda"


def ops():
    assert _cuda.status() is True, _cuda.status()
    return torch.ops.fastattn


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(shape, dtype, seed, scale=1.0) -> torch.Tensor:
    """Fresh random values, rounded to dtype on the CPU, then moved to the kernels' device."""
    return (torch.randn(shape, generator=gen(seed)) * scale).to(dtype).to(device())


# ------------------------------------------------------------------------------------------------------------
# Host test of the layouts (no kernel build involved)
# ------------------------------------------------------------------------------------------------------------
def test_fragment_layouts_host(tmp_path):
    cxx = os.environ.get("CXX") or "g++"
    exe = tmp_path / "fragment_layout_test"
    build = subprocess.run(
        [cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc'}",
         f"-isystem{_emu.cuda_include_dir()}",
         str(ROOT / "tests" / "cpp" / "fragment_layout_test.cpp"), "-o", str(exe)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, f"{cxx} failed:\n{build.stderr}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("OK"), run.stdout + run.stderr


# ------------------------------------------------------------------------------------------------------------
# mma.m16n8k16
# ------------------------------------------------------------------------------------------------------------
def special_inputs(dtype):
    """Mixed magnitudes, zeros of both signs, a subnormal, a NaN in row 3 of a, +inf in column 6 of b."""
    a = rand((16, 16), torch.float32, 11).cpu()
    a[0] *= 1e3
    a[1] *= 1e-3
    a[2, :4] = torch.tensor([0.0, -0.0, 1.0, -1.0])
    a[3, 5] = float("nan")
    a[10, 2] = 3.0e-6 if dtype == torch.float16 else 1.0e-39  # subnormal in f16 / bf16
    b = rand((16, 8), torch.float32, 12).cpu()
    b[:, 6] = b[:, 6].abs() + 0.5  # positive column, so +inf in it gives +inf (not inf - inf) where a > 0
    b[9, 6] = float("inf")
    a[:, 9] = a[:, 9].abs() + 0.25
    c = rand((16, 8), torch.float32, 13).cpu()
    c[5, 1] = -0.0
    return a.to(dtype).to(device()), b.to(dtype).to(device()), c.to(device())


@kernels
@pytest.mark.parametrize("dtype", MMA_DTYPES, ids=DT.get)
@pytest.mark.parametrize("case", ["random", "large_c", "special"])
def test_mma(dtype, case):
    if case == "special":
        a, b, c = special_inputs(dtype)
    else:
        seed = 1 if case == "random" else 2
        a = rand((16, 16), dtype, seed, 2.0)
        b = rand((16, 8), dtype, seed + 100, 2.0)
        c = rand((16, 8), torch.float32, seed + 200, 1.0 if case == "random" else 1e4)
    d = ops()._test_mma_cuda(a, b, c)
    assert d.dtype == torch.float32 and d.device.type == device()
    assert_matches_product(d, a, b, c, f"mma {DT[dtype]} {case}")
    if case == "special":
        assert torch.isnan(d[3]).all(), "a NaN in row 3 of a makes row 3 of d NaN"
        assert (d[:, 6] == float("inf")).sum() > 0


# ------------------------------------------------------------------------------------------------------------
# ldmatrix x1 / x2 / x4, plain and .trans, feeding mma
# ------------------------------------------------------------------------------------------------------------
@kernels
@pytest.mark.parametrize("dtype", MMA_DTYPES, ids=DT.get)
@pytest.mark.parametrize("b_mode", sorted(LDMATRIX_MODES), ids=lambda m: "B_" + LDMATRIX_MODES[m])
@pytest.mark.parametrize("a_mode", sorted(LDMATRIX_MODES), ids=lambda m: "A_" + LDMATRIX_MODES[m])
def test_ldmatrix_feeds_mma(a_mode, b_mode, dtype):
    seed = 1000 + 10 * a_mode + b_mode
    a = rand((16, 16), dtype, seed)
    b = rand((16, 16), dtype, seed + 1)
    c = rand((16, 16), torch.float32, seed + 2)
    d = ops()._test_ldmatrix_cuda(a, b, c, a_mode, b_mode)
    assert_matches_product(d, a, b, c, f"ldmatrix A {LDMATRIX_MODES[a_mode]}, B {LDMATRIX_MODES[b_mode]}")


# ------------------------------------------------------------------------------------------------------------
# cp.async 4 / 8 / 16 bytes, commit / wait ordering, zero fill
# ------------------------------------------------------------------------------------------------------------
def cp_async_expected(src: torch.Tensor, nbytes: int) -> torch.Tensor:
    """Stages 0-3 of the kernel's output (see cp_async_test_kernel): thread i reads thread 63 - i's copy."""
    f = nbytes // 4
    s = src.cpu().view(4, CP_THREADS, f)
    want = s.flip(1).clone()  # position i holds the chunk of thread 63 - i
    zfill = torch.zeros(CP_THREADS, f)
    for t in range(CP_THREADS):  # stage 2: thread t copied only its first 4 * (t % (f + 1)) bytes
        keep = t % (f + 1)
        zfill[t, :keep] = s[2, t, :keep]
    want[2] = zfill.flip(0)
    return want.reshape(4, CP_THREADS * f)


def cp_async_src(nbytes: int, seed: int) -> torch.Tensor:
    return rand((4, CP_THREADS * nbytes // 4), torch.float32, seed) + 5.0  # never the sentinel, never 0


@kernels
@pytest.mark.parametrize("nbytes", [4, 8, 16])
def test_cp_async(nbytes):
    src = cp_async_src(nbytes, 40 + nbytes)
    out = ops()._test_cp_async_cuda(src, nbytes, False).cpu()
    assert out.shape == (6, CP_THREADS * nbytes // 4)
    torch.testing.assert_close(out[:4], cp_async_expected(src, nbytes), rtol=0, atol=0)
    pending_now = out[4:]  # groups not yet waited for when read: untouched in the emulation, racy on hardware
    landed = cp_async_expected(src, nbytes)[1:3]
    if EMULATED:
        assert (pending_now == SENTINEL).all(), "a copy landed before the wait_group that covers it"
    else:
        assert ((pending_now == SENTINEL) | (pending_now == landed)).all()


@kernels
@emulation_only
@pytest.mark.parametrize("nbytes", [4, 8, 16])
def test_cp_async_missing_wait_reads_stale_data(nbytes):
    src = cp_async_src(nbytes, 50 + nbytes)
    out = ops()._test_cp_async_cuda(src, nbytes, True).cpu()
    want = cp_async_expected(src, nbytes)
    # Group 0 was waited for; group 1 (read after only wait_group<2>) shows the old contents: the test of
    # test_cp_async would fail on this output.
    torch.testing.assert_close(out[0], want[0], rtol=0, atol=0)
    assert (out[1] == SENTINEL).all()
    assert not torch.equal(out[:4], want)


# ------------------------------------------------------------------------------------------------------------
# A GEMM from the primitives: cp.async -> shared -> ldmatrix (x4, x4.trans) -> mma, two-stage pipeline
# ------------------------------------------------------------------------------------------------------------
@kernels
@pytest.mark.parametrize("dtype", MMA_DTYPES, ids=DT.get)
@pytest.mark.parametrize("mnk", [(64, 64, 64), (128, 192, 96), (64, 128, 32)], ids=lambda s: "x".join(map(str, s)))
def test_gemm(mnk, dtype):
    m, n, k = mnk
    a = rand((m, k), dtype, 7 + m + k, 1.5)
    b = rand((k, n), dtype, 8 + n + k, 1.5)
    c = ops()._test_gemm_cuda(a, b, GEMM_CORRECT)
    assert c.dtype == torch.float32 and c.shape == (m, n)
    assert_matches_product(c, a, b, None, f"gemm {m}x{n}x{k} {DT[dtype]}")


@kernels
@pytest.mark.parametrize("dtype", MMA_DTYPES, ids=DT.get)
def test_gemm_odd_values(dtype):
    """Rows and columns of very different magnitudes, signed zeros, a NaN (its row of c only) and an inf."""
    m, n, k = 64, 64, 96
    a = rand((m, k), torch.float32, 70).cpu()
    b = rand((k, n), torch.float32, 71).cpu()
    a[0] *= 300.0
    a[1] *= 1e-4
    b[:, 2] *= 1e-3
    a[4, :8] = -0.0
    a[5, 40] = float("nan")
    b[:, 9] = b[:, 9].abs() + 0.1
    a[:, 77] = a[:, 77].abs() + 0.1
    b[77, 9] = float("inf")
    a, b = a.to(dtype).to(device()), b.to(dtype).to(device())
    c = ops()._test_gemm_cuda(a, b, GEMM_CORRECT)
    assert_matches_product(c, a, b, None, f"gemm odd values {DT[dtype]}")
    assert torch.isnan(c[5]).all() and not torch.isnan(c[6]).any()


@kernels
@emulation_only
@pytest.mark.parametrize("dtype", MMA_DTYPES, ids=DT.get)
def test_gemm_missing_wait_reads_stale_tile(dtype):
    """The planted bug (no empty commit group after the last tile, so wait_group<1> leaves the last k tile in
    flight) computes with the stale contents of that stage: with k = 96 that is k tile 0 again."""
    m, n, k = 64, 64, 96
    a = rand((m, k), dtype, 80)
    b = rand((k, n), dtype, 81)
    c = ops()._test_gemm_cuda(a, b, GEMM_MISSING_WAIT)
    a64, b64 = a.cpu().double(), b.cpu().double()
    stale = a64[:, :64] @ b64[:64] + a64[:, :32] @ b64[:32]  # tiles 0, 1, then tile 0 again
    with pytest.raises(AssertionError):
        assert_matches_product(c, a, b, None, "planted missing wait")
    torch.testing.assert_close(c.cpu().double(), stale, rtol=1e-5, atol=1e-5)


class EmulationSettings:
    """The emulated extension's schedule and cp.async landing mode, set through ctypes and restored after."""

    def __init__(self):
        self.lib = _emu.load_settings(_emu.build_extension())
        self.lib.fastattn_emu_set_cp_async_landing.argtypes = [ctypes.c_char_p]

    def set(self, schedule: str, landing: str):
        assert self.lib.fastattn_emu_set_schedule(schedule.encode()) == 0
        assert self.lib.fastattn_emu_set_cp_async_landing(landing.encode()) == 0

    def restore(self):
        self.set("rotate", "at_wait")


@pytest.fixture
def emu_settings():
    ops()  # loads the emulated extension
    settings = EmulationSettings()
    yield settings
    settings.restore()


@kernels
@emulation_only
@pytest.mark.parametrize("dtype", MMA_DTYPES, ids=DT.get)
def test_gemm_same_bits_under_every_schedule_and_landing(dtype, emu_settings):
    """No race in the pipeline: every thread order, with copies landing as late or as early as the hardware may
    land them, gives the same bits (each mma chain has a fixed order)."""
    a = rand((128, 96), dtype, 90)
    b = rand((96, 64), dtype, 91)
    outs = {}
    for landing in ("at_wait", "at_issue"):
        for schedule in SCHEDULES:
            emu_settings.set(schedule, landing)
            outs[landing, schedule] = ops()._test_gemm_cuda(a, b, GEMM_CORRECT)
    first = outs["at_wait", "forward"]
    assert_matches_product(first, a, b, None, "gemm")
    for key, out in outs.items():
        assert torch.equal(out, first), key


@kernels
@emulation_only
def test_gemm_missing_barrier_caught_when_copies_land_early(emu_settings):
    """The planted missing __syncthreads before a stage is refilled: with copies landing at issue, a warp that
    runs ahead overwrites the stage while the others still read it (seen under warp_greedy, which lets a warp
    run as far as it can). Copies landing only at their wait hide this bug (the refill lands after the next
    barrier), which is why both modes are run here."""
    a = rand((64, 128), torch.float16, 92)
    b = rand((128, 64), torch.float16, 93)
    wrong = []
    for schedule in SCHEDULES:
        emu_settings.set(schedule, "at_issue")
        c = ops()._test_gemm_cuda(a, b, GEMM_MISSING_BARRIER)
        try:
            assert_matches_product(c, a, b, None, "planted missing barrier")
        except AssertionError:
            wrong.append(schedule)
        emu_settings.set(schedule, "at_wait")
        assert_matches_product(ops()._test_gemm_cuda(a, b, GEMM_MISSING_BARRIER), a, b, None, "late landing")
    assert wrong, "no schedule exposed the missing barrier"


@kernels
@emulation_only
def test_cp_async_early_landing_still_orders_groups(emu_settings):
    """With copies landing at issue, the wait/commit test reads the right data (nothing can be stale)."""
    for nbytes in (4, 8, 16):
        src = cp_async_src(nbytes, 60 + nbytes)
        emu_settings.set("forward", "at_issue")
        out = ops()._test_cp_async_cuda(src, nbytes, False).cpu()
        torch.testing.assert_close(out[:4], cp_async_expected(src, nbytes), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument
# ------------------------------------------------------------------------------------------------------------
@kernels
def test_bad_inputs_are_rejected():
    f16 = rand((16, 16), torch.float16, 1)
    with pytest.raises(RuntimeError, match="a must be float16 or bfloat16"):
        ops()._test_mma_cuda(f16.float(), rand((16, 8), torch.float16, 2), rand((16, 8), torch.float32, 3))
    with pytest.raises(RuntimeError, match="b must be contiguous with shape"):
        ops()._test_mma_cuda(f16, rand((8, 16), torch.float16, 2), rand((16, 8), torch.float32, 3))
    with pytest.raises(RuntimeError, match="b must have a's dtype"):
        ops()._test_mma_cuda(f16, rand((16, 8), torch.bfloat16, 2), rand((16, 8), torch.float32, 3))
    with pytest.raises(RuntimeError, match="a_mode and b_mode"):
        ops()._test_ldmatrix_cuda(f16, f16, rand((16, 16), torch.float32, 3), 6, 0)
    with pytest.raises(RuntimeError, match="bytes must be 4, 8 or 16"):
        ops()._test_cp_async_cuda(rand((4, 64), torch.float32, 4), 2, False)
    with pytest.raises(RuntimeError, match="multiples of 64"):
        ops()._test_gemm_cuda(rand((48, 64), torch.float16, 5), rand((64, 64), torch.float16, 6), GEMM_CORRECT)


# ------------------------------------------------------------------------------------------------------------
# Misuse the emulation must stop with a message naming the kernel and the line (tests/cpp/primitives_planted.cu,
# a plain emulated library called through ctypes in a subprocess, since the emulator aborts the process)
# ------------------------------------------------------------------------------------------------------------
PLANTED = ROOT / "tests" / "cpp" / "primitives_planted.cu"


def planted_line(marker: str) -> str:
    hits = [i + 1 for i, line in enumerate(PLANTED.read_text().splitlines()) if f"PLANTED: {marker}" in line]
    assert len(hits) == 1, marker
    return f"primitives_planted.cu:{hits[0]}"


def run_planted(call: str, asan: bool = False):
    lib = _emu.build("primitives_planted", [PLANTED], asan=asan, watch=[PLANTED.parent])
    code = textwrap.dedent(f"""
        import ctypes
        lib = ctypes.CDLL({str(lib)!r})
        f = (ctypes.c_float * 1024)()
        src = ctypes.cast(ctypes.create_string_buffer(512), ctypes.c_void_p)  # exactly 128 floats
        rc = lib.{call}
        print("returned", rc, flush=True)
    """)
    return run_ctypes_script(code, asan=asan, timeout=300)


def test_lanes_at_different_mma_kinds_abort():
    run = run_planted("planted_mixed_mma(f)")
    assert_aborted(run, "mixed_mma_kernel", "mma.sync.m16n8k16.f16", "mma.sync.m16n8k16.bf16",
                   planted_line("f16 half"), planted_line("bf16 half"))


def test_mma_in_a_partial_warp_aborts():
    run = run_planted("planted_partial_warp_mma(f)")
    assert_aborted(run, "partial_warp_mma_kernel", "mma.sync.m16n8k16.f16", planted_line("partial warp"))


def test_misaligned_ldmatrix_row_aborts():
    run = run_planted("planted_misaligned_ldmatrix(f)")
    assert_aborted(run, "misaligned_ldmatrix_kernel", "ldmatrix.m8n8.x4", "lane 5 is not 16-byte aligned",
                   planted_line("misaligned row"))


def test_misaligned_cp_async_aborts():
    run = run_planted("planted_misaligned_cp_async(src, f)")
    assert_aborted(run, "misaligned_cp_async_kernel", "cp.async of 16 bytes", "dst is not aligned",
                   planted_line("misaligned dst"))


def test_out_of_bounds_cp_async_source_is_reported_by_asan():
    run = run_planted("planted_oob_cp_async(src, f, 32)", asan=True)
    assert_aborted(run, "AddressSanitizer: heap-buffer-overflow", "READ of size 16", planted_line("oob source"),
                   "oob_cp_async_kernel")


@emulation_only
@kernels
@pytest.mark.slow  # builds the ASan variant of the emulated extension (~40 s of CPU the first time)
def test_primitive_kernels_under_asan():
    """Every test-kernel path (both mma types, the 36 ldmatrix mode pairs, cp.async 4/8/16 with and without the
    planted missing wait, GEMMs) in the AddressSanitizer variant: no out-of-bounds shared or global access."""
    code = textwrap.dedent("""
        import torch
        from fastattn import _cuda
        assert _cuda.status() is True, _cuda.status()
        ops = torch.ops.fastattn
        for dt in (torch.float16, torch.bfloat16):
            a, b = torch.randn(16, 16).to(dt), torch.randn(16, 16).to(dt)
            c = torch.randn(16, 16)
            ref = a.double() @ b.double() + c.double()
            d = ops._test_mma_cuda(a, b[:, :8].contiguous(), c[:, :8].contiguous())
            assert (d.double() - ref[:, :8]).abs().max() < 1e-4
            for am in range(6):
                for bm in range(6):
                    d = ops._test_ldmatrix_cuda(a, b, c, am, bm)
                    assert (d.double() - ref).abs().max() < 1e-4, (am, bm)
            for m, n, k in ((64, 64, 64), (128, 64, 96)):
                x, y = torch.randn(m, k).to(dt), torch.randn(k, n).to(dt)
                z = ops._test_gemm_cuda(x, y, 0)
                assert (z.double() - x.double() @ y.double()).abs().max() < 1e-3
                ops._test_gemm_cuda(x, y, 1)
                ops._test_gemm_cuda(x, y, 2)
        for nbytes in (4, 8, 16):
            for planted in (False, True):
                ops._test_cp_async_cuda(torch.randn(4, 16 * nbytes), nbytes, planted)
        print("asan-ok")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTATTN_CUDA_EMULATE="1", FASTATTN_EMU_ASAN="1",
               LD_PRELOAD=_emu.asan_preload(), ASAN_OPTIONS="detect_leaks=0", PYTHONMALLOC="malloc")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0 and "asan-ok" in run.stdout, run.stderr[-5000:]


# ------------------------------------------------------------------------------------------------------------
# Thread-block clusters (csrc/common/cluster.cuh, csrc/testing/cluster_test.cu): a row sum reduced across the
# CTAs of a cluster through distributed shared memory, against the float64 sum. On a GPU: sm_90 or newer.
# ------------------------------------------------------------------------------------------------------------
CLUSTER_PULL, CLUSTER_PUSH, CLUSTER_MISSING_BARRIER, CLUSTER_EARLY_EXIT = 0, 1, 2, 3  # testing::ClusterTestMode
CLUSTER_TEST = ROOT / "csrc" / "testing" / "cluster_test.cu"


def needs_clusters():
    if not EMULATED and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("thread-block clusters need sm_90")


def assert_cluster_sums(out: torch.Tensor, x: torch.Tensor, cluster: int, what: str):
    out = out.cpu()
    assert out.shape == (x.shape[0], 1 + cluster)
    ref = x.double().sum(1)
    scale = x.double().abs().sum(1)  # fp32 partial sums: error <= n * eps * sum |x|
    err = ((out[:, 0].double() - ref).abs() / scale).max().item()
    assert err < 1e-6, f"{what}: relative error {err}"
    want = torch.tensor([1000.0 * r + cluster for r in range(cluster)])
    assert torch.equal(out[:, 1:], want.expand(x.shape[0], cluster)), f"{what}: special registers {out[0, 1:]}"


@kernels
@pytest.mark.parametrize("mode", [CLUSTER_PULL, CLUSTER_PUSH], ids=["pull", "push"])
@pytest.mark.parametrize("cluster", [1, 2, 3, 4, 8, 16])
def test_cluster_reduction_matches_float64(cluster, mode):
    """Mapped loads (pull: rank 0 reads every peer) and mapped stores (push: every CTA writes rank 0's slot)
    after a cluster barrier give the row sums; odd row lengths leave some CTAs a short or empty slice."""
    needs_clusters()
    x = rand((5, 1000 + 37 * cluster), torch.float32, 70 + cluster, scale=3.0)
    x[1, :7] = x[1, :7] * 1e4  # a few large values: a partial lost or counted twice is far off
    assert_cluster_sums(ops()._test_cluster_reduce_cuda(x, cluster, mode), x, cluster, f"mode {mode}")
    short = rand((2, cluster - 1 if cluster > 1 else 1), torch.float32, 90)  # fewer elements than CTAs
    assert_cluster_sums(ops()._test_cluster_reduce_cuda(short, cluster, mode), short, cluster, "short rows")


@kernels
@emulation_only
@pytest.mark.parametrize("cluster", [2, 8])
def test_cluster_reduction_same_bits_under_every_schedule(cluster, emu_settings):
    x = rand((3, 5000), torch.float32, 80)
    outs = {}
    for schedule in SCHEDULES:
        emu_settings.set(schedule, "at_wait")
        for mode in (CLUSTER_PULL, CLUSTER_PUSH):
            outs[schedule, mode] = ops()._test_cluster_reduce_cuda(x, cluster, mode)
            assert_cluster_sums(outs[schedule, mode], x, cluster, f"{schedule} mode {mode}")
    first = outs["forward", CLUSTER_PULL]
    for key, out in outs.items():
        assert torch.equal(out, first), key


@kernels
@emulation_only
@pytest.mark.parametrize("cluster", [2, 4, 16])
def test_cluster_missing_barrier_reads_poison(cluster, emu_settings):
    """The planted missing cluster barrier: rank 0 reads its peers' partials before they are written. Rank 0
    runs ahead under the forward (round robin from rank 0's thread 0) and warp_greedy (lowest thread first)
    schedules, and finds the NaN that shared memory starts as; with the barrier the same schedules are exact."""
    x = rand((3, 4000), torch.float32, 81)
    for schedule in ("forward", "warp_greedy"):
        emu_settings.set(schedule, "at_wait")
        out = ops()._test_cluster_reduce_cuda(x, cluster, CLUSTER_MISSING_BARRIER).cpu()
        assert bool(torch.isnan(out[:, 0]).all()), (schedule, out[:, 0])
        assert_cluster_sums(ops()._test_cluster_reduce_cuda(x, cluster, CLUSTER_PULL), x, cluster, schedule)


@kernels
@emulation_only
def test_cluster_early_exit_aborts():
    """The planted missing final barrier: peers exit while rank 0 may still read their shared memory. Caught
    whichever runs first (a mapping after the target's last cluster wait, checked at the target's exit, or a
    mapping of a CTA that has exited), under every schedule."""
    line = [i + 1 for i, s in enumerate(CLUSTER_TEST.read_text().splitlines()) if "ld.shared::cluster" in s]
    assert len(line) == 1
    for schedule in SCHEDULES:
        code = textwrap.dedent(f"""
            import torch
            from fastattn import _cuda, _emu
            assert _cuda.status() is True, _cuda.status()
            lib = _emu.load_settings(_emu.build_extension())
            assert lib.fastattn_emu_set_schedule({schedule!r}.encode()) == 0
            out = torch.ops.fastattn._test_cluster_reduce_cuda(torch.randn(2, 3000), 4, {CLUSTER_EARLY_EXIT})
            print("returned", out.shape, flush=True)
        """)
        run = run_ctypes_script(code, asan=False, timeout=600)
        assert_aborted(run, "cluster_reduce_test_kernel", f"cluster_test.cu:{line[0]}", "cluster barrier")
        assert ("may still access its shared memory" in run.stderr or "has exited" in run.stderr), run.stderr


CLUSTER_PLANTED = ROOT / "tests" / "cpp" / "cluster_planted.cu"


def cluster_planted_line(marker: str) -> str:
    hits = [i + 1 for i, s in enumerate(CLUSTER_PLANTED.read_text().splitlines()) if f"PLANTED: {marker}" in s]
    assert len(hits) == 1, marker
    return f"cluster_planted.cu:{hits[0]}"


def run_cluster_planted(call: str):
    lib = _emu.build("cluster_planted", [CLUSTER_PLANTED], watch=[CLUSTER_PLANTED.parent])
    code = textwrap.dedent(f"""
        import ctypes
        lib = ctypes.CDLL({str(lib)!r})
        f = (ctypes.c_float * 1024)()
        rc = lib.{call}
        print("returned", rc, flush=True)
    """)
    return run_ctypes_script(code, asan=False, timeout=300)


def test_cluster_thread_exiting_before_the_cluster_barrier_aborts():
    run = run_cluster_planted("planted_exit_without_arrive(f)")
    assert_aborted(run, "exit_without_arrive_kernel", "divergent cluster barrier",
                   cluster_planted_line("cluster barrier"))


def test_cluster_bad_rank_aborts():
    run = run_cluster_planted("planted_bad_rank(f)")
    assert_aborted(run, "bad_rank_kernel", "rank 2 is not a CTA of the cluster", cluster_planted_line("bad rank"))


def test_cluster_static_shared_map_aborts():
    run = run_cluster_planted("planted_static_map(f)")
    assert_aborted(run, "static_map_kernel", "not in this CTA's dynamic shared memory",
                   cluster_planted_line("static map"))


def test_cluster_wait_without_arrive_aborts():
    run = run_cluster_planted("planted_wait_without_arrive(f)")
    assert_aborted(run, "wait_without_arrive_kernel", "without a barrier.cluster.arrive",
                   cluster_planted_line("lone wait"))


def test_cluster_shape_not_dividing_the_grid_is_a_launch_error():
    run = run_cluster_planted("planted_bad_cluster_shape(f)")
    assert run.returncode == 0 and "returned 9" in run.stdout, (run.stdout, run.stderr)  # InvalidConfiguration
