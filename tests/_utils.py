"""Shared test helpers: seeded random inputs (never zeros), float64 references, relative-error checks."""
from __future__ import annotations

import os

import torch

HAS_GPU = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Relative-error budgets for a kernel's output against the float64 reference, by input dtype: a few units of
# the dtype's rounding, since outputs are rounded once to it after float32 accumulation.
REL_TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5, torch.float64: 1e-12}


def devices():
    """The devices the tests run on here: always the CPU, and CUDA when there is a GPU."""
    return ["cpu"] + (["cuda"] if HAS_GPU else [])


def randn(*shape, dtype=torch.float32, device="cpu", seed=0, scale=1.0, requires_grad=False) -> torch.Tensor:
    """Seeded standard normal data, never all zeros; generated in float32 on the CPU then moved."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float32) * scale
    t = t.to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like t filled with NaN: memory a kernel must overwrite before anyone reads it."""
    return torch.full_like(t, float("nan"))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (in float64). NaNs must match positions: a NaN mismatch gives inf."""
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    assert o.shape == r.shape, f"shape {tuple(o.shape)} != reference {tuple(r.shape)}"
    if o.numel() == 0:
        return 0.0
    if not torch.equal(torch.isnan(o), torch.isnan(r)):
        return float("inf")
    o, r = torch.nan_to_num(o, nan=0.0), torch.nan_to_num(r, nan=0.0)
    denom = r.abs().max().item()
    err = (o - r).abs().max().item()
    return err / denom if denom > 0 else err


def assert_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "output") -> None:
    """Fails with the error, the budget and the first few worst indices."""
    err = rel_err(out, ref)
    if err <= tol:
        return
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    diff = (torch.nan_to_num(o, nan=1e300) - torch.nan_to_num(r, nan=0.0)).abs().flatten()
    worst = torch.topk(diff, min(5, diff.numel())).indices
    idx = [tuple(int(i) for i in torch.unravel_index(w, o.shape)) for w in worst]
    rows = ", ".join(f"{i}: {o[i].item():.6g} vs {r[i].item():.6g}" for i in idx)
    raise AssertionError(f"{what}: relative error {err:.3g} > {tol:.3g}; worst at {rows}")


# ----------------------------------------------------------------------------------------------------------
# Which backends must run here: a test for one of them fails, never skips, when the backend is unavailable.
# ----------------------------------------------------------------------------------------------------------

def expected_backends() -> frozenset:
    """The backends this machine is expected to run; FASTATTN_EXPECT_BACKENDS (comma-separated) overrides.

    torch always. triton wherever the triton package is installed (with a GPU it runs compiled, without one the
    conftest sets TRITON_INTERPRET=1). cuda with FASTATTN_CUDA_EMULATE=1 (the CPU build of the kernels), or on a
    GPU machine where the extension fastattn/_C*.so was built (a pure-Python install legitimately has none).
    """
    import importlib.util
    import pathlib

    override = os.environ.get("FASTATTN_EXPECT_BACKENDS")
    if override is not None:
        return frozenset(n.strip() for n in override.split(",") if n.strip())
    want = {"torch"}
    if importlib.util.find_spec("triton") is not None:
        want.add("triton")
    pkg = pathlib.Path(__file__).resolve().parent.parent / "fastattn"
    built = any(pkg.glob("_C*.so")) or any(pkg.glob("_C*.pyd"))
    if os.environ.get("FASTATTN_CUDA_EMULATE") == "1" or (HAS_GPU and built):
        want.add("cuda")
    return frozenset(want)


def backend_unavailable(name: str):
    """None when backend ``name`` runs here; else the reason it does not."""
    import fastattn

    st = fastattn.available_backends()[name]
    return None if st is True else st


def require_backend(name: str) -> None:
    """Fail when an expected backend is unavailable here; skip (with the reason) when it is not expected."""
    import pytest

    why = backend_unavailable(name)
    if why is None:
        return
    if name in expected_backends():
        pytest.fail(f"backend {name!r} is expected on this machine but unavailable: {why}", pytrace=False)
    pytest.skip(f"backend {name!r} unavailable here: {why}")


def run_ctypes_script(code: str, *, asan: bool, timeout: float):
    """Run ``code`` (Python that loads an emulated test library with ctypes and prints "returned <rc>") in a
    fresh process with this checkout on the path; asan: with libasan preloaded, as the AddressSanitizer build
    needs. Returns the CompletedProcess: a planted bug aborts it."""
    import subprocess
    import sys
    from pathlib import Path

    from fastattn import _emu

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    if asan:
        env.update(LD_PRELOAD=_emu.asan_preload(), ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
                   PYTHONMALLOC="malloc")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


def assert_aborted(run, *needles):
    """The process of run_ctypes_script aborted before returning, and its stderr names every needle."""
    assert run.returncode != 0 and "returned" not in run.stdout, (run.returncode, run.stdout, run.stderr)
    for needle in needles:
        assert needle in run.stderr, f"{needle!r} not in:\n{run.stderr}"


def lowp_attention(q, k, v, *, causal, scale, bias=None, kpm=None, dropout_factor=None):
    """PyTorch's own attention in the input dtype (FlashAttention's `upcast=False` reference): the baseline
    error that FlashAttention's test rule scales. dropout_factor: (B, Hq, Sq, Sk) factors applied to P (a
    dropped-out call). Differentiable."""
    from fastattn import reference

    hq = q.shape[1]
    k = k.repeat_interleave(hq // k.shape[1], dim=1)
    v = v.repeat_interleave(hq // v.shape[1], dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.to(s.dtype)
    mask = reference.attention_mask(q.shape[2], k.shape[2], causal, kpm, q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if mask is not None:
        p = p.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # rows with no key: 0, not NaN
    if dropout_factor is not None:
        p = p * dropout_factor.to(p.dtype)
    return torch.matmul(p, v)


def assert_same_filter(out, ref, what=""):
    """A top_k_top_p_filter result against the reference's: same kept set (finite entries), same values there,
    NaN rows alike."""
    inf = float("inf")
    assert out.shape == ref.shape and out.dtype == torch.float32, what
    out, ref = out.cpu(), ref.cpu().float()
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"{what}: NaN rows differ"
    kept_o, kept_r = out > -inf, ref > -inf
    if not torch.equal(kept_o, kept_r):
        rows = (kept_o != kept_r).any(1).nonzero().flatten().tolist()
        raise AssertionError(f"{what}: kept sets differ in rows {rows}: kept {kept_o.sum(1).tolist()} vs "
                             f"reference {kept_r.sum(1).tolist()}")
    fin = kept_o & ~torch.isnan(out)
    assert torch.equal(out[fin], ref[fin]), f"{what}: kept values differ"


EMU_SCHEDULES = ("forward", "reversed", "random", "warp_greedy")


def same_bits_over_schedules(fn, *, landings=("at_wait", "at_issue")):
    """fn() (a sequence of tensors) run under every thread schedule of the CUDA emulation and every cp.async
    landing time in landings, the defaults restored after; asserts that every run gives the same bits and returns
    the first run's tensors. A missing barrier or wait makes some (landing, schedule) pair differ."""
    import ctypes

    from fastattn import _emu

    lib = _emu.load_settings(_emu.build_extension())
    lib.fastattn_emu_set_cp_async_landing.argtypes = [ctypes.c_char_p]
    runs = {}
    try:
        for landing in landings:
            for sch in EMU_SCHEDULES:
                assert lib.fastattn_emu_set_schedule(sch.encode()) == 0
                assert lib.fastattn_emu_set_cp_async_landing(landing.encode()) == 0
                runs[(landing, sch)] = tuple(fn())
    finally:
        lib.fastattn_emu_set_schedule(b"rotate")
        lib.fastattn_emu_set_cp_async_landing(b"at_wait")
    first = next(iter(runs.values()))
    for key, got in runs.items():
        assert len(got) == len(first), key
        for a, b in zip(got, first):
            assert torch.equal(a, b), key
    return first


def assert_matches_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c, what: str):
    """out (fp32) against a @ b + c in float64 of the same (rounded) inputs (c may be None).

    Bound: an fp32-accumulated product is off by at most a few fp32 ulps of sum |a_ik b_kj| + |c_ij| per chained
    mma; 8e-6 of that magnitude covers K <= 256 with room. Non-finite references must match exactly (NaN where
    the reference is NaN, the same infinity).
    """
    a64, b64 = a.cpu().double(), b.cpu().double()
    c64 = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64) if c is None else c.cpu().double()
    ref = a64 @ b64 + c64
    mag = a64.abs() @ b64.abs() + c64.abs()
    out = out.cpu().double()
    assert out.shape == ref.shape, what
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), \
        f"{what}: NaN positions differ ({int(torch.isnan(out).sum())} NaN out)"
    assert torch.equal(out[~finite & ~torch.isnan(ref)], ref[~finite & ~torch.isnan(ref)]), f"{what}: infinities differ"
    err = (out - ref).abs()[finite]
    bound = (8e-6 * mag + 1e-30)[finite]
    bad = err > bound
    if bad.any():
        idx = torch.nonzero(finite)[bad.nonzero()[0, 0]].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {int(finite.sum())} outputs off; first at {idx}: "
            f"got {out[tuple(idx)].item()}, want {ref[tuple(idx)].item()} "
            f"(max err / magnitude {float((err / (mag[finite] + 1e-30)).max()):.3g})")
