"""fastattn.distributed on the CPU: gloo process groups of 2 and 4 ranks, started here (torch.multiprocessing).

Each world size is started once per test session and runs every one of its cases in the same process group (a
group costs seconds to start on a loaded machine); the workers write their measurements to JSON, and the tests
below assert on them, one test per case. Every wait is bounded: the group has a timeout, and the parent kills
the workers and fails if they have not finished by a deadline, so a bug that hangs the ring cannot hang CI.

The oracle is single-process fastattn.attention on the whole (gathered) sequence, forward and gradients, with
the same backend and dtype; float64 must agree to 1e-10.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastattn
from fastattn import distributed as fdist

GROUP_TIMEOUT_S = 60      # torch.distributed's own timeout on every collective and message of the group
DEADLINE_S = 300          # the parent's bound on a whole world's run (spawn, every case, shutdown)
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
DTYPE_NAMES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
               "float16": torch.float16}
GPU_WORLD = 2             # the NCCL cases need this many GPUs


# ----------------------------------------------------------------------------------------------------------
# Cases (plain dicts, so that they pickle to the workers and name the tests)
# ----------------------------------------------------------------------------------------------------------

def _case(world, dtype="float64", causal=True, layout="zigzag", hq=4, hkv=2, kpm=True, backend="torch",
          group="world", chunk=None, b=2, d=8, device="cpu", k_chunk=None):
    chunk = chunk or (5 if world == 2 else 3)            # odd chunk lengths
    k_chunk = k_chunk or chunk                           # keys longer than queries: non-causal only
    n = 2 * world if layout == "zigzag" else world
    name = (f"{'' if device == 'cpu' else device + '-'}w{world}-{dtype}-{'causal' if causal else 'full'}-{layout}"
            f"-h{hq}kv{hkv}{'-kpm' if kpm else ''}-{backend}{'' if group == 'world' else '-' + group}"
            f"{'' if device == 'cpu' else f'-s{n * chunk}d{d}'}{'' if k_chunk == chunk else f'-sk{n * k_chunk}'}")
    return dict(name=name, world=world, dtype=dtype, causal=causal, layout=layout, hq=hq, hkv=hkv, kpm=kpm,
                backend=backend, group=group, b=b, s=n * chunk, d=d, device=device, sk=n * k_chunk)


def _cases(world):
    out = []
    for layout in ("zigzag", "contiguous"):
        for causal in (True, False):
            out.append(_case(world, causal=causal, layout=layout))                        # GQA + padding
    out.append(_case(world, causal=True, hq=3, hkv=3, kpm=False))                        # MHA, no mask
    out.append(_case(world, causal=True, hq=4, hkv=1, kpm=True, layout="contiguous"))    # MQA
    out.append(_case(world, dtype="float32", causal=True, layout="zigzag"))
    out.append(_case(world, dtype="float32", causal=False, layout="contiguous", kpm=False))
    out.append(_case(world, causal=False, layout="zigzag", k_chunk=7))                  # Sk != Sq
    if world == 2:  # the Triton kernels under the interpreter, one small case
        out.append(_case(world, dtype="float32", causal=True, layout="zigzag", hq=2, hkv=1, b=1, d=16,
                         backend="triton"))
    if world == 4:  # any process group: two rings of 2 beside each other, and rings of 1
        out.append(_case(world, causal=True, layout="zigzag", group="pairs", chunk=5))
        out.append(_case(world, causal=False, layout="contiguous", group="pairs", chunk=5))
        out.append(_case(world, causal=True, layout="zigzag", group="single", chunk=5))
    return out


def _gpu_cases():
    """NCCL on GPU_WORLD GPUs: the kernels in 16-bit on odd lengths, against single-GPU fastattn.attention."""
    w, out = GPU_WORLD, []
    for backend in ("triton", "auto"):
        for dtype, d in (("bfloat16", 128), ("float16", 64)):
            for layout in ("zigzag", "contiguous"):
                out.append(_case(w, dtype=dtype, causal=True, layout=layout, hq=8, hkv=2, kpm=True, b=2, d=d,
                                 chunk=173, backend=backend, device="cuda"))
            out.append(_case(w, dtype=dtype, causal=False, layout="zigzag", hq=4, hkv=4, kpm=False, b=1, d=d,
                             chunk=256, backend=backend, device="cuda"))
    return out


CASES = {(2, "cpu"): _cases(2), (4, "cpu"): _cases(4), (GPU_WORLD, "cuda"): _gpu_cases()}

# Bad calls (world of 2): name -> the text every rank's error must contain, per rank.
BAD = {
    "shapes-differ": ("disagree on local query length",) * 2,
    "dtype-differs": ("disagree on dtype (from float32 to float64)",) * 2,
    "causal-differs": ("disagree on causal",) * 2,
    "odd-zigzag": ("local length must be even",) * 2,
    "bias-on-one-rank": ("bias is not supported", "another rank of the group rejected its arguments"),
    "bad-kpm-on-one-rank": ("another rank of the group rejected its arguments", "key_padding_mask must be"),
    "shard-not-dividing": ("must divide into 4 equal chunks",) * 2,
    "gather-shapes-differ": ("disagree on shape[2]",) * 2,
    "heads-not-dividing": ("must be a multiple of the key/value heads",) * 2,
    "scale-differs": ("disagree on scale (from 0.25 to 0.5)",) * 2,
    "grad-on-one-rank": ("disagree on requires grad",) * 2,
}


# ----------------------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------------------

def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64, with -inf required at the same places (lse of rows with no key)."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return float("inf")
    if not torch.equal(torch.isneginf(a), torch.isneginf(b)) or torch.isnan(a).any() or torch.isnan(b).any():
        return float("inf")
    fin = torch.isfinite(b)
    if not fin.any():
        return 0.0
    denom = b[fin].abs().max().item()
    err = (a[fin] - b[fin]).abs().max().item()
    return err / denom if denom > 0 else err


def _group_for(spec, rank, world):
    """(group, its ranks) for a case; every rank creates every group, as new_group requires."""
    if spec["group"] == "pairs":
        groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
        return groups[rank % 2], [[0, 2], [1, 3]][rank % 2]
    if spec["group"] == "single":
        groups = [dist.new_group([r]) for r in range(world)]
        return groups[rank], [rank]
    return None, list(range(world))


def _run_case(spec, rank, world):
    dtype = DTYPE_NAMES[spec["dtype"]]
    dev = torch.device("cuda", rank) if spec["device"] == "cuda" else torch.device("cpu")
    group, members = _group_for(spec, rank, world)
    b, hq, hkv, s, sk, d = spec["b"], spec["hq"], spec["hkv"], spec["s"], spec["sk"], spec["d"]
    g = torch.Generator().manual_seed(1000 + members[0])           # the same whole tensors on a group's ranks
    q64, k64, v64, do64 = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
                           for h, n in ((hq, s), (hkv, sk), (hkv, sk), (hq, s)))
    q, k, v, dout = (t.to(device=dev, dtype=dtype) for t in (q64, k64, v64, do64))
    kpm = None
    if spec["kpm"]:
        kpm = torch.rand(b, sk, generator=g) < 0.7
        n = 2 * len(members) if spec["layout"] == "zigzag" else len(members)
        kpm[0, : sk // n] = False   # a whole chunk of padding: fully masked blocks, and causal rows with no key
        kpm = kpm.to(dev)
    causal, layout, backend = spec["causal"], spec["layout"], spec["backend"]

    # Oracle: one process, the whole sequence.
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out_r, lse_r = fastattn.attention(qr, kr, vr, causal=causal, key_padding_mask=kpm, return_lse=True,
                                      backend=backend)
    out_r.backward(dout)

    shard = lambda t, dim=2: fdist.shard_sequence(t, dim, group=group, layout=layout)  # noqa: E731
    ql, kl, vl = (shard(t).detach().requires_grad_() for t in (q, k, v))
    kpm_l = None if kpm is None else shard(kpm, 1)
    out_l, lse_l = fdist.ring_attention(ql, kl, vl, causal=causal, group=group, layout=layout, return_lse=True,
                                        key_padding_mask=kpm_l, backend=backend)
    out_l.backward(shard(dout))
    whole = fdist.gather_sequence(out_l.detach(), group=group, layout=layout)
    extra = {}
    if dtype in (torch.float16, torch.bfloat16):
        # Low precision: the ring and the single-device call each against a float64 reference, so the test can
        # ask that the ring be no less accurate than one device (FlashAttention's rule) rather than equal to it.
        q6, k6, v6 = (t.detach().double().requires_grad_() for t in (q, k, v))
        o6 = fastattn.attention(q6, k6, v6, causal=causal, key_padding_mask=kpm, backend="torch")
        o6.backward(dout.double())
        for name, ring_t, one_t, ref_t in (("out", out_l, out_r, o6), ("dq", ql.grad, qr.grad, q6.grad),
                                          ("dk", kl.grad, kr.grad, k6.grad), ("dv", vl.grad, vr.grad, v6.grad)):
            extra[name + "_ring64"] = _max_rel(ring_t, shard(ref_t))
            extra[name + "_one64"] = _max_rel(one_t, ref_t)
    return extra | {
        "out": _max_rel(out_l, shard(out_r)),
        "lse": _max_rel(lse_l, shard(lse_r)),
        "dq": _max_rel(ql.grad, shard(qr.grad)),
        "dk": _max_rel(kl.grad, shard(kr.grad)),
        "dv": _max_rel(vl.grad, shard(vr.grad)),
        "gathered": _max_rel(whole, out_r),
        "lse_dtype": str(lse_l.dtype),
        "out_dtype": str(out_l.dtype),
        "empty_rows": int(torch.isneginf(lse_l).sum()),
    }


def _bad_call(name, rank):
    """One bad call; returns the error text (every rank must raise)."""
    x = lambda *shape, dtype=torch.float64: torch.randn(*shape, dtype=dtype)  # noqa: E731
    try:
        if name == "shapes-differ":
            s = 4 if rank == 0 else 6
            fdist.ring_attention(x(1, 2, s, 8), x(1, 2, s, 8), x(1, 2, s, 8), causal=True)
        elif name == "dtype-differs":
            dt = torch.float64 if rank == 0 else torch.float32
            fdist.ring_attention(x(1, 2, 4, 8, dtype=dt), x(1, 2, 4, 8, dtype=dt), x(1, 2, 4, 8, dtype=dt))
        elif name == "causal-differs":
            fdist.ring_attention(x(1, 2, 4, 8), x(1, 2, 4, 8), x(1, 2, 4, 8), causal=rank == 0)
        elif name == "odd-zigzag":
            fdist.ring_attention(x(1, 2, 5, 8), x(1, 2, 5, 8), x(1, 2, 5, 8), causal=True, layout="zigzag")
        elif name == "bias-on-one-rank":
            bias = x(1, 2, 4, 4) if rank == 0 else None
            fdist.ring_attention(x(1, 2, 4, 8), x(1, 2, 4, 8), x(1, 2, 4, 8), bias=bias)
        elif name == "bad-kpm-on-one-rank":
            kpm = torch.ones(1, 4 if rank == 0 else 3, dtype=torch.bool)
            fdist.ring_attention(x(1, 2, 4, 8), x(1, 2, 4, 8), x(1, 2, 4, 8), key_padding_mask=kpm)
        elif name == "shard-not-dividing":
            fdist.shard_sequence(x(1, 2, 10, 8), layout="zigzag")
        elif name == "gather-shapes-differ":
            fdist.gather_sequence(x(1, 2, 4 if rank == 0 else 6, 8), layout="zigzag")
        elif name == "scale-differs":
            fdist.ring_attention(x(1, 2, 4, 8), x(1, 2, 4, 8), x(1, 2, 4, 8), scale=0.25 if rank == 0 else 0.5)
        elif name == "grad-on-one-rank":  # one rank's backward alone would wait in the ring forever
            q = x(1, 2, 4, 8).requires_grad_(rank == 0)
            fdist.ring_attention(q, x(1, 2, 4, 8), x(1, 2, 4, 8))
        elif name == "heads-not-dividing":
            fdist.ring_attention(x(1, 3, 4, 8), x(1, 2, 4, 8), x(1, 2, 4, 8))
        else:
            raise KeyError(name)
    except Exception as e:  # noqa: BLE001 - the test inspects the type and text
        return f"{type(e).__name__}: {e}"
    return "no error"


def _ring_still_works(rank, world):
    """After the bad calls, good calls still give the right answers (no message left over in the ring):
    validated and not, under no_grad, with a scale, and on an empty sequence."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 4 * world, 8, generator=g, dtype=torch.float64) for _ in range(3))
    sh = lambda t: fdist.shard_sequence(t)  # noqa: E731
    errs = []
    for validate in (True, False):
        ref = fastattn.attention(q, k, v, causal=True, scale=0.3, backend="torch")
        with torch.no_grad():
            out = fdist.ring_attention(sh(q), sh(k), sh(v), causal=True, scale=0.3, validate=validate)
        errs.append(_max_rel(out, sh(ref)))
    e = torch.randn(1, 2, 0, 8, dtype=torch.float64, requires_grad=True)
    out, lse = fdist.ring_attention(e, e, e, causal=True, return_lse=True)
    out.sum().backward()
    ok = out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0) and e.grad.shape == e.shape
    return max(errs) if ok else float("inf")


def _roundtrip(rank, world):
    """gather_sequence(shard_sequence(x)) == x, both layouts, two dims; shard_sequence is the expected slice."""
    x = torch.arange(2 * 3 * 4 * world * 5, dtype=torch.float64).view(2, 3, 4 * world, 5)
    ok = True
    for layout in fdist.LAYOUTS:
        for dim in (2, -2):
            ok &= torch.equal(fdist.gather_sequence(fdist.shard_sequence(x, dim, layout=layout), dim,
                                                    layout=layout), x)
    c = x.shape[2] // (2 * world)
    zig = torch.cat([x[:, :, rank * c:(rank + 1) * c], x[:, :, (2 * world - 1 - rank) * c:(2 * world - rank) * c]], 2)
    ok &= torch.equal(fdist.shard_sequence(x), zig)
    ids = torch.arange(4 * world).view(1, -1)
    ok &= torch.equal(fdist.shard_sequence(ids, 1, layout="contiguous"), ids[:, rank * 4:(rank + 1) * 4])
    return bool(ok)


def _worker(rank, world, device, port, out_dir):
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world, timeout=timedelta(seconds=GROUP_TIMEOUT_S))
    res = {"cases": {}, "bad": {}, "times": {}}
    try:
        for spec in CASES[(world, device)]:
            t0 = time.perf_counter()
            try:
                res["cases"][spec["name"]] = _run_case(spec, rank, world)
            except Exception as e:  # noqa: BLE001 - reported by that case's test; the others still run
                res["cases"][spec["name"]] = {"error": f"{type(e).__name__}: {e}"}
            res["times"][spec["name"]] = time.perf_counter() - t0
        if device == "cuda":
            return
        res["roundtrip"] = _roundtrip(rank, world)
        if world == 2:
            for name in BAD:
                res["bad"][name] = _bad_call(name, rank)
            res["after_bad"] = _ring_still_works(rank, world)
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RESULTS = {}


def _results(world, tmp_path_factory, device="cpu"):
    key = (world, device)
    if key not in _RESULTS:
        out_dir = str(tmp_path_factory.mktemp(f"ring{world}{device}"))
        ctx = mp.start_processes(_worker, args=(world, device, _free_port(), out_dir), nprocs=world, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + DEADLINE_S
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the {world}-rank group did not finish within {DEADLINE_S} s (a hang)")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        _RESULTS[key] = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(world)]
    return _RESULTS[key]


@pytest.mark.parametrize("spec", CASES[(2, "cpu")] + CASES[(4, "cpu")], ids=lambda c: c["name"])
def test_ring_attention_matches_attention(spec, tmp_path_factory):
    per_rank = [r["cases"][spec["name"]] for r in _results(spec["world"], tmp_path_factory)]
    tol = TOL[DTYPE_NAMES[spec["dtype"]]]
    for rank, m in enumerate(per_rank):
        assert "error" not in m, f"rank {rank}: {m.get('error')}"
        for what in ("out", "lse", "gathered"):
            # lse is float32 for every input dtype (the contract): for float64 inputs both sides are float32
            # roundings of float64 values, at most one float32 ulp apart.
            t = max(tol, 2.0 ** -23) if what == "lse" else tol
            assert m[what] <= t, f"rank {rank}: {what} relative error {m[what]:.3g} > {t:.3g}"
        for what in ("dq", "dk", "dv"):  # gradients: 3x the output's budget (FlashAttention's rule)
            assert m[what] <= 3 * tol, f"rank {rank}: {what} relative error {m[what]:.3g} > {3 * tol:.3g}"
        assert m["out_dtype"] == f"torch.{spec['dtype']}"
        assert m["lse_dtype"] == "torch.float32"  # for every input dtype, as fastattn.attention's lse
    if spec["kpm"] and spec["causal"]:  # the padded first chunk leaves causal rows with no key (lse -inf)
        assert sum(m["empty_rows"] for m in per_rank) > 0


@pytest.mark.parametrize("world", [2, 4])
def test_shard_gather_roundtrip(world, tmp_path_factory):
    assert all(r["roundtrip"] for r in _results(world, tmp_path_factory))


@pytest.mark.parametrize("name", list(BAD))
def test_bad_call_raises_on_every_rank(name, tmp_path_factory):
    results = _results(2, tmp_path_factory)
    for rank, r in enumerate(results):
        msg = r["bad"][name]
        assert BAD[name][rank] in msg, f"rank {rank}: expected an error containing {BAD[name][rank]!r}, got {msg!r}"


def test_ring_works_after_bad_calls(tmp_path_factory):
    assert all(r["after_bad"] <= 1e-10 for r in _results(2, tmp_path_factory))


def test_needs_an_initialised_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="init_process_group"):
        fdist.ring_attention(q, q, q)
    with pytest.raises(RuntimeError, match="init_process_group"):
        fdist.shard_sequence(q)


def test_rejects_bad_layout_before_any_collective():
    with pytest.raises(ValueError, match="layout must be one of"):
        fdist.shard_sequence(torch.randn(1, 1, 4, 8), layout="striped")


@pytest.mark.gpu
@pytest.mark.parametrize("spec", CASES[(GPU_WORLD, "cuda")], ids=lambda c: c["name"])
def test_ring_attention_nccl_matches_one_gpu(spec, tmp_path_factory):
    """NCCL across GPU_WORLD GPUs, 16-bit: the ring no less accurate than one GPU, both against float64."""
    if torch.cuda.device_count() < GPU_WORLD:
        pytest.skip(f"needs {GPU_WORLD} GPUs, found {torch.cuda.device_count()}")
    per_rank = [r["cases"][spec["name"]] for r in _results(GPU_WORLD, tmp_path_factory, "cuda")]
    floor = 4e-3 if spec["dtype"] == "float16" else 3e-2  # tests/_utils.REL_TOL: a few units of the dtype
    for rank, m in enumerate(per_rank):
        assert "error" not in m, f"rank {rank}: {m.get('error')}"
        for what in ("out", "dq", "dk", "dv"):
            ring, one = m[what + "_ring64"], m[what + "_one64"]
            budget = max(2 * one, floor) if what == "out" else max(3 * one, 3 * floor)
            assert ring <= budget, (f"rank {rank}: {what} error {ring:.3g} vs float64 > {budget:.3g} "
                                    f"(one GPU: {one:.3g})")
        assert m["lse"] <= 1e-5, f"rank {rank}: lse relative error {m['lse']:.3g}"


@pytest.mark.slow
def test_example_ring_train_runs_under_torchrun(tmp_path):
    """examples/ring_train.py under torchrun with 2 gloo ranks: runs, and its sharded loss equals the unsharded."""
    import re
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", os.path.join(root, "examples", "ring_train.py"), "--steps", "2",
           "--backend", "torch"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE_S, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    diffs = [float(x) for x in re.findall(r"\|diff\| ([0-9.e+-]+)", r.stdout)]
    assert len(diffs) == 2 and max(diffs) < 1e-5, r.stdout
    assert "step 1: loss" in r.stdout
