"""The CUDA emulator itself (csrc/emu): warp collectives, barriers, atomics and shared memory against
expectations computed here from CUDA's documented semantics, and planted bugs it must catch.

The kernels are test-only sources in tests/emu_kernels/, built with the emulator into a plain shared library
(no torch) called through ctypes. Bugs that make the emulator abort the process run in a subprocess, which
checks the message names the kernel and the file:line of each barrier or collective involved. The
out-of-bounds reads need the AddressSanitizer variant: a subprocess with libasan in LD_PRELOAD.

None of this needs a GPU or fastattn._C: only a host C++ compiler, ninja and the CUDA headers. With no
compiler these tests fail (they are what makes the CUDA half testable without a GPU).
"""
import ctypes
import random
import textwrap
from pathlib import Path

import pytest
import torch

from fastattn import _emu
from _utils import assert_aborted, run_ctypes_script

KDIR = Path(__file__).resolve().parent / "emu_kernels"
SCHEDULES = ("forward", "reversed", "random", "warp_greedy")
P = ctypes.c_void_p


def build(asan=False) -> Path:
    return _emu.build("emu_tests", sorted(KDIR.glob("*.cu")), asan=asan, watch=[KDIR])


@pytest.fixture(scope="module")
def lib():
    h = _emu.load_settings(build())
    yield h
    h.fastattn_emu_set_schedule(b"rotate")


def set_schedule(lib, name):
    assert lib.fastattn_emu_set_schedule(name.encode()) == 0
    assert lib.fastattn_emu_schedule().decode() == name


def ptr(t: torch.Tensor) -> P:
    return P(t.data_ptr())


# ------------------------------------------------------------------------------------------------------------
# Warp collectives against CUDA's documented semantics (CUDA C++ Programming Guide, warp shuffle functions)
# ------------------------------------------------------------------------------------------------------------
OPS = {"shfl": 0, "up": 1, "down": 2, "xor": 3, "ballot": 4, "any": 5, "all": 6, "match_any": 7,
       "reduce_add": 8, "reduce_min": 9, "reduce_max": 10, "syncwarp": 11}


def expected(op, mask, width, values, args):
    """What each thread of the block gets (-7 for lanes outside mask, which skip the call)."""
    out = []
    for t, v in enumerate(values):
        lane, base = t % 32, t - t % 32
        if not mask >> lane & 1:
            out.append(-7)
            continue
        lanes = [base + l for l in range(32) if mask >> l & 1 and base + l < len(values)]
        seg = lane // width
        if op == "shfl":
            src = seg * width + args[t] % width  # srcLane outside [0, width) wraps modulo width
        elif op == "up":
            src = lane - args[t] if lane % width >= args[t] else lane
        elif op == "down":
            src = lane + args[t] if lane % width + args[t] < width else lane
        elif op == "xor":
            src = lane ^ args[t]
            src = src if src // width <= seg else lane  # earlier segments yes, later ones: own value
        if op in ("shfl", "up", "down", "xor"):
            assert mask >> src & 1, "test bug: reads outside the mask"
            out.append(values[base + src])
        elif op == "ballot":
            b = sum(1 << (u - base) for u in lanes if values[u])
            out.append(b if b < 2**31 else b - 2**32)
        elif op == "any":
            out.append(int(any(values[u] for u in lanes)))
        elif op == "all":
            out.append(int(all(values[u] for u in lanes)))
        elif op == "match_any":
            b = sum(1 << (u - base) for u in lanes if values[u] == v)
            out.append(b if b < 2**31 else b - 2**32)
        elif op == "reduce_add":
            out.append(sum(values[u] for u in lanes))
        elif op == "reduce_min":
            out.append(min(values[u] for u in lanes))
        elif op == "reduce_max":
            out.append(max(values[u] for u in lanes))
        elif op == "syncwarp":
            out.append(v)
    return out


def run_collective(lib, op, mask, width, values, args):
    n = len(values)
    vin = torch.tensor(values, dtype=torch.int32)
    ain = torch.tensor(args, dtype=torch.int32)
    out = torch.full((n,), 12345, dtype=torch.int32)
    err = lib.emu_collective(OPS[op], ctypes.c_uint(mask), width, n, ptr(vin), ptr(ain), ptr(out))
    assert err == 0
    return out.tolist()


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("op", ["shfl", "up", "down", "xor"])
def test_shuffles_full_mask(lib, op, width, schedule):
    set_schedule(lib, schedule)
    rng = random.Random(width * 7 + len(op))
    n = 64
    values = [rng.randrange(-1000, 1000) for _ in range(n)]
    for trial in range(4):
        if op == "shfl":
            args = [rng.randrange(-40, 40) for _ in range(n)]  # per lane, also outside [0, width)
        else:
            d = [0, 1, width // 2, width - 1, width, 5, 31][trial + (width > 4) * 3 % 4]
            args = [d] * n
        assert run_collective(lib, op, 0xFFFFFFFF, width, values, args) == expected(op, 0xFFFFFFFF, width,
                                                                                    values, args), args[:4]


@pytest.mark.parametrize("mask, width, op, arg", [
    (0x0000FFFF, 16, "xor", 5), (0x0000FFFF, 16, "down", 3), (0x0000FFFF, 16, "up", 7),
    (0x0000FFFF, 8, "shfl", None), (0xFFFF0000, 16, "xor", 9), (0x55555555, 32, "xor", 2),
    (0xF0F0F0F0, 4, "up", 2), (0x00000001, 1, "shfl", None), (0x000000FF, 4, "down", 1),
])
def test_shuffles_partial_mask(lib, mask, width, op, arg):
    set_schedule(lib, "random")
    rng = random.Random(mask)
    values = [rng.randrange(-1000, 1000) for _ in range(64)]
    if op == "shfl":  # sources inside the caller's segment and the mask
        args = []
        for t in range(64):
            lane = t % 32
            if not mask >> lane & 1:
                args.append(0)  # lanes outside the mask do not call the shuffle
                continue
            seg = [l for l in range(lane - lane % width, lane - lane % width + width) if mask >> l & 1]
            args.append(rng.choice(seg) % width + width * rng.randrange(-2, 3))
    else:
        args = [arg] * 64
    assert run_collective(lib, op, mask, width, values, args) == expected(op, mask, width, values, args)


@pytest.mark.parametrize("mask", [0xFFFFFFFF, 0x0000FFFF, 0x80000001, 0xAAAAAAAA, 0x00000004])
@pytest.mark.parametrize("op", ["ballot", "any", "all", "match_any", "reduce_add", "reduce_min",
                                "reduce_max", "syncwarp"])
def test_votes_matches_reductions(lib, op, mask):
    set_schedule(lib, "reversed")
    rng = random.Random(mask ^ len(op))
    for density in (0.0, 0.5, 1.0):
        if op in ("ballot", "any", "all"):
            values = [int(rng.random() < density) for _ in range(64)]
        elif op == "match_any":
            values = [rng.randrange(3) for _ in range(64)]
        else:
            values = [rng.randrange(-2**20, 2**20) for _ in range(64)]
        assert run_collective(lib, op, mask, 32, values, [0] * 64) == expected(op, mask, 32, values, [0] * 64)


def test_partial_last_warp(lib):
    """48 threads: the second warp has lanes 0-15 only; a mask naming those works."""
    values = list(range(100, 148))
    assert run_collective(lib, "xor", 0xFFFF, 16, values, [3] * 48)[32:] == expected(
        "xor", 0xFFFF, 16, values, [3] * 48)[32:]


def test_wide_and_half_shuffles(lib):
    x64 = torch.randn(32, dtype=torch.float64)
    x16 = torch.randn(32).half()
    y64, y16 = torch.full_like(x64, float("nan")), torch.full_like(x16, float("nan"))
    assert lib.emu_wide_shuffle(ptr(x64), ptr(y64), ptr(x16), ptr(y16)) == 0
    swap = torch.arange(32) ^ 1
    assert torch.equal(y64, x64[swap]) and torch.equal(y16, x16[swap])


@pytest.mark.parametrize("grid, block", [((3, 2), (8, 4)), ((1, 1), (1, 1)), ((2, 1), (33, 3))])
def test_syncthreads_count_and_or(lib, grid, block):
    set_schedule(lib, "random")
    nb, nt = grid[0] * grid[1], block[0] * block[1]
    g = torch.Generator().manual_seed(nt)
    pred = (torch.rand(nb, nt, generator=g) < torch.tensor([0.0, 0.5, 1.0, 0.3, 0.9, 0.1])[:nb, None])
    pred = pred.to(torch.int32) * torch.randint(1, 5, (nb, nt), generator=g, dtype=torch.int32)  # any nonzero
    out = torch.full((nb, 3), -1, dtype=torch.int32)
    assert lib.emu_barrier_pred(*grid, *block, ptr(pred), ptr(out)) == 0
    p = pred != 0
    want = torch.stack([p.sum(1), p.all(1), p.any(1)], 1).to(torch.int32)
    assert torch.equal(out, want)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_atomics(lib, schedule):
    set_schedule(lib, schedule)
    n = 1000
    g = torch.Generator().manual_seed(3)
    xf = torch.randint(-50, 50, (n,), generator=g).float() / 4  # exact in fp32 whatever the order
    xi = torch.randint(-10**6, 10**6, (n,), generator=g, dtype=torch.int32)
    fsum = torch.zeros(1)
    isum = torch.zeros(1, dtype=torch.int32)
    imax = torch.full((1,), -2**31, dtype=torch.int32)
    fmax_bits = torch.tensor([float("-inf")]).view(torch.int32).clone()
    assert lib.emu_atomics(ptr(xf), ptr(xi), n, 96, ptr(fsum), ptr(isum), ptr(imax), ptr(fmax_bits)) == 0
    assert fsum.item() == xf.double().sum().item()
    assert isum.item() == int(xi.long().sum())
    assert imax.item() == int(xi.max())
    assert fmax_bits.view(torch.float32).item() == xf.max().item()


def test_dynamic_shared_memory(lib):
    x = torch.randn(5 * 96)
    y = torch.full_like(x, float("nan"))
    assert lib.emu_dynamic_smem(ptr(x), ptr(y), 5, 96) == 0
    assert torch.equal(y, x.view(5, 96).flip(1).reshape(-1))


def test_shared_memory_is_poisoned_before_each_block(lib):
    """Static and dynamic shared memory read before any write in a block: NaN, never the last block's 1.0."""
    out = torch.zeros(2 * 3)
    assert lib.emu_unwritten_smem(ptr(out), 3) == 0
    assert bool(torch.isnan(out).all()), out


def test_bad_launch_configuration_is_an_error(lib):
    out = torch.zeros(4, dtype=torch.int32)
    assert lib.emu_bad_launch(ptr(out)) == 9  # cudaErrorInvalidConfiguration, as on a GPU


def test_unknown_schedule_is_refused(lib):
    assert lib.fastattn_emu_set_schedule(b"sideways") == -1


# ------------------------------------------------------------------------------------------------------------
# Planted bugs: wrong results under some schedule
# ------------------------------------------------------------------------------------------------------------
def neighbour(lib, barrier):
    n = 128
    x = torch.randn(n)
    y = torch.full_like(x, float("nan"))
    assert lib.planted_neighbour(ptr(x), ptr(y), n, barrier) == 0
    return torch.equal(y, x + x.roll(-1))


def test_missing_syncthreads_gives_wrong_results(lib):
    results = {}
    for s in SCHEDULES:
        set_schedule(lib, s)
        assert neighbour(lib, barrier=1), f"the correct kernel fails under {s}"
        results[s] = neighbour(lib, barrier=0)
    assert not all(results.values()), f"the missing __syncthreads went unnoticed under every schedule: {results}"
    assert not results["forward"] and not results["reversed"]


def two_reductions(lib, reuse):
    blocks, threads = 3, 128
    x = torch.randn(blocks, threads)
    out = torch.full((blocks, threads, 2), float("nan"))
    assert lib.planted_two_reductions(ptr(x), ptr(out), blocks, threads, reuse) == 0
    want = torch.stack([x.double().sum(1), (x.double() ** 2).sum(1)], 1)[:, None, :].expand(-1, threads, -1)
    return bool(((out.double() - want).abs() <= 1e-4 * want.abs().max()).all())


def test_shared_buffer_reused_by_two_reductions(lib):
    """The bug seen in the prototype: only the warp-greedy schedule catches it, so every schedule is run."""
    results = {}
    for s in SCHEDULES:
        set_schedule(lib, s)
        assert two_reductions(lib, reuse=0), f"the correct kernel fails under {s}"
        results[s] = two_reductions(lib, reuse=1)
    assert results["warp_greedy"] is False, results
    assert results["forward"] and results["reversed"], results  # why several schedules are needed


# ------------------------------------------------------------------------------------------------------------
# Planted bugs: the emulator aborts naming the kernel and the barrier/collective (in a subprocess)
# ------------------------------------------------------------------------------------------------------------
def line_of(marker: str) -> int:
    lines = (KDIR / "planted.cu").read_text().splitlines()
    hits = [i + 1 for i, l in enumerate(lines) if f"PLANTED: {marker}" in l]
    assert len(hits) == 1, marker
    return hits[0]


def run_planted(call: str, asan=False, schedule="forward"):
    """Runs `call` (a planted_* function of the library `lib`, on ctypes buffers) in a fresh interpreter."""
    path = build(asan)
    code = textwrap.dedent(f"""
        import ctypes
        lib = ctypes.CDLL({str(path)!r})
        f = (ctypes.c_float * 256)()
        i = (ctypes.c_int * 256)()
        assert lib.fastattn_emu_set_schedule({schedule.encode()!r}) == 0
        rc = lib.{call}
        print("returned", rc, flush=True)
    """)
    return run_ctypes_script(code, asan=asan, timeout=120)


@pytest.mark.parametrize("schedule", ["forward", "reversed"])
def test_divergent_barrier_aborts(schedule):
    run = run_planted("planted_divergent_barrier(f)", schedule=schedule)
    assert_aborted(run, "divergent barrier", "divergent_barrier_kernel", f"planted.cu:{line_of('divergent barrier')}",
                   f"schedule {schedule}")


def test_two_different_barriers_abort():
    run = run_planted("planted_split_barrier(f)")
    assert_aborted(run, "divergent barrier", "split_barrier_kernel", f"planted.cu:{line_of('first half')}",
                   f"planted.cu:{line_of('second half')}")


def test_lanes_at_different_collectives_abort():
    run = run_planted("planted_mixed_collectives(i)")
    assert_aborted(run, "different warp collectives", "mixed_collectives_kernel", "__shfl_xor_sync",
                   "__ballot_sync", f"planted.cu:{line_of('shuffle')}", f"planted.cu:{line_of('ballot')}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_deadlock_aborts(schedule):
    run = run_planted("planted_deadlock(i)", schedule=schedule)
    assert_aborted(run, "deadlock", "deadlock_kernel", f"__syncthreads (", f"planted.cu:{line_of('waits for lanes 0-15')}",
                   f"planted.cu:{line_of('waits for lanes 16-31')}", "lanes 0-15 wait at __shfl_sync")


def test_primitive_sync_points_with_different_names_abort():
    run = run_planted("planted_mixed_sync_points(i)")
    assert_aborted(run, "different warp collectives", "mixed_sync_points_kernel", "mma.m16n8k16", "ldmatrix.x4",
                   f"planted.cu:{line_of('even lanes')}", f"planted.cu:{line_of('odd lanes')}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_primitive_api_scratch_slots_and_exit_hooks(lib, schedule):
    set_schedule(lib, schedule)
    y = torch.full((64,), -5, dtype=torch.int32)
    exits = torch.zeros(64, dtype=torch.int32)
    assert lib.sync_point_exchange(ptr(y), ptr(exits)) == 0  # two blocks of 64 threads write y and exits
    t = torch.arange(64)
    assert torch.equal(y, (100 * (t // 32) + 31 - t % 32).int())
    assert torch.equal(exits, torch.full((64,), 2, dtype=torch.int32))  # once per thread per block


def test_shuffle_reading_outside_its_mask_aborts():
    """Lanes 0-15 shuffle among themselves (mask 0xffff) but xor 16 points each at a lane outside the mask."""
    run = run_planted("emu_collective(3, 0xFFFF, 32, 32, i, (ctypes.c_int * 32)(*[16] * 32), i)")
    assert_aborted(run, "collective_kernel", "__shfl_xor_sync (", "lane 0 reads lane 16, which is not in the mask "
                   "0x0000ffff")


def test_collective_with_exited_lanes_aborts():
    run = run_planted("planted_exited_lane(i)")
    assert_aborted(run, "exited_lane_kernel", "__shfl_down_sync", f"planted.cu:{line_of('lanes 8-31 have exited')}")


# ------------------------------------------------------------------------------------------------------------
# Out-of-bounds reads: the AddressSanitizer variant reports them with the kernel's file and line
# ------------------------------------------------------------------------------------------------------------
ASAN_OOB = [
    ("planted_oob_global(f, ctypes.cast(i, ctypes.POINTER(ctypes.c_float)), 200)", "heap-buffer-overflow",
     "PLANTED: x[n]"),
    ("planted_oob_shared(f)", "global-buffer-overflow", "PLANTED: s[32]"),
    ("planted_oob_dynamic_shared(f, 40)", "heap-buffer-overflow", "PLANTED: s[blockDim.x]"),
]


@pytest.mark.parametrize("call, kind, marker", ASAN_OOB, ids=["global", "static_shared", "dynamic_shared"])
def test_out_of_bounds_read_is_reported_by_asan(call, kind, marker):
    if "oob_global" in call:  # a malloc'd buffer of exactly n floats (PYTHONMALLOC=malloc), read at x[n]
        call = ("planted_oob_global(ctypes.cast(ctypes.create_string_buffer(800), ctypes.c_void_p), "
                "ctypes.cast(ctypes.create_string_buffer(800), ctypes.c_void_p), 200)")
    run = run_planted(call, asan=True)
    line = [i + 1 for i, l in enumerate((KDIR / "planted.cu").read_text().splitlines()) if marker in l]
    assert len(line) == 1
    kernel = call.split("(")[0].replace("planted_", "") + "_kernel"
    assert_aborted(run, f"AddressSanitizer: {kind}", "READ of size 4", f"planted.cu:{line[0]}",
                   f"AddressSanitizer error in kernel {{anonymous}}::{kernel}, block (0, 0, 0), thread (")


def test_asan_variant_runs_clean_kernels_without_reports():
    run = run_planted("planted_neighbour(f, i, 64, 1)", asan=True)
    assert run.returncode == 0 and "returned 0" in run.stdout, run.stderr
