"""Per-row sampling parameters given as tensors, on every sampling backend that runs here.

fastattn/ops/sampling.py hands such tensors to the backends as they are (no torch op on the call path): each
backend converts what it loads to float32 (int64 for top_k) and clamps it into reference.PARAM_RANGES, with NaN
kept as torch.clamp keeps it. So out-of-range values, other dtypes, strided views and 0-dim tensors must give
exactly the tokens and filtered logits of the same backend called with the float32 / int64 contiguous tensors
that `.to(...)` then `torch.clamp` make of them (what the Python path handed the kernels before).
"""
import pytest
import torch

import fastattn
from fastattn import _backend, reference

from _utils import HAS_GPU

INF, NAN = float("inf"), float("nan")

BACKENDS = [
    pytest.param("torch", id="torch"),
    pytest.param("triton", marks=pytest.mark.triton, id="triton"),
    pytest.param("cuda", marks=pytest.mark.cuda_kernel, id="cuda"),
]


def _dev(backend):
    if backend == "cuda":
        return "cpu" if _backend.cuda_emulated() else "cuda"
    return "cuda" if HAS_GPU else "cpu"


def _logits(b, v, seed, dev):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, v, generator=g) * 2.0).to(dev)


def _clamped(params, b):
    """What the Python path made of the parameters before the kernels clamped them: (B,) contiguous float32
    (int64 for top_k) tensors, clamped with torch.clamp."""
    out = {}
    for name, t in params.items():
        want = torch.int64 if name == "top_k" else torch.float32
        lo, hi = reference.PARAM_RANGES[name]
        out[name] = torch.clamp(t.reshape(-1).expand(b).to(want), lo, hi).contiguous()
    return out


def _strided(values, dtype, dev):
    """A (B,) view with element stride 3 into a larger buffer (the other elements poison: NaN or huge)."""
    buf = torch.full((len(values), 3), NAN if dtype.is_floating_point else 1 << 30, dtype=torch.float64)
    buf[:, 0] = torch.tensor(values, dtype=torch.float64)
    view = buf.to(dtype=dtype, device=dev)[:, 0]
    assert view.stride(0) == 3
    return view


def _assert_same(backend, x, params, seeds, what):
    b = x.shape[0]
    ref = _clamped(params, b)
    got = fastattn.sample(x, seed=seeds, backend=backend, **params)
    want = fastattn.sample(x, seed=seeds, backend=backend, **ref)
    assert torch.equal(got.cpu(), want.cpu()), f"{what}: tokens {got.tolist()} vs clamped {want.tolist()}"
    fg = fastattn.top_k_top_p_filter(x, backend=backend, **params).cpu()
    fw = fastattn.top_k_top_p_filter(x, backend=backend, **ref).cpu()
    torch.testing.assert_close(fg, fw, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: filter: {m}")
    return got.cpu()


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_tensor_parameters_are_their_clamped_values(backend):
    dev = _dev(backend)
    b, v = 7, 67
    x = _logits(b, v, seed=1, dev=dev)
    seeds = torch.arange(b, dtype=torch.int64, device=dev) * 977 + 5
    params = dict(
        temperature=torch.tensor([-1.0, -0.0, 0.7, -1e-30, 1.3, 0.9, 1.0], device=dev),
        top_k=torch.tensor([-3, 5, -(1 << 40), 1 << 50, 0, 3, -1], device=dev),
        top_p=torch.tensor([0.0, -2.0, 2.0, 0.8, -1e-38, 1.5, 0.3], device=dev),
        min_p=torch.tensor([1.5, -1.0, 0.0, 0.05, -0.0, 0.2, 2.0], device=dev),
    )
    tok = _assert_same(backend, x, params, seeds, backend)
    # The clamped meaning, row by row: temperature <= 0 is greedy; top_p <= 0 and min_p >= 1 keep the argmax.
    amax = x.cpu().argmax(1)
    for r in (0, 1, 3, 6):  # greedy (temperature -1, -0, -1e-30), min_p 2 (clamped to 1)
        assert tok[r] == amax[r], f"row {r}: {tok[r]} vs argmax {amax[r]}"
    assert tok[4] == amax[4]  # top_p -1e-38 -> tiny: the most probable token only


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_tensor_parameters_as_torch_clamp_leaves_them(backend):
    """torch.clamp keeps NaN (and +inf temperature): each backend must do with them what it did before."""
    dev = _dev(backend)
    b, v = 5, 41
    x = _logits(b, v, seed=2, dev=dev)
    seeds = torch.arange(b, dtype=torch.int64, device=dev) + 100
    params = dict(temperature=torch.tensor([NAN, 1.0, 0.8, 1.0, 0.5], device=dev),
                  top_k=torch.tensor([0, 4, 0, 0, 2], device=dev),
                  top_p=torch.tensor([0.9, NAN, 1.0, 0.5, INF], device=dev),
                  min_p=torch.tensor([0.0, 0.0, NAN, -INF, 0.1], device=dev))
    _assert_same(backend, x, params, seeds, f"{backend} NaN")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fdtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_other_dtypes_strided_and_0dim_parameters(backend, fdtype):
    dev = _dev(backend)
    b, v = 6, 53
    x = _logits(b, v, seed=3, dev=dev)
    seeds = torch.arange(b, dtype=torch.int64, device=dev) * 31 + 7
    params = dict(
        temperature=_strided([-0.5, 0.75, 1.25, 0.5, 2.0, 1.0], fdtype, dev),
        top_k=torch.tensor([-2, 3, 0, 70, 5, 1], dtype=torch.int32, device=dev),
        top_p=torch.tensor([0.0, 0.875, 1.5, 0.5, 0.25, 0.75], dtype=fdtype, device=dev),
        min_p=torch.tensor(0.0625, dtype=fdtype, device=dev),  # 0-dim: every row
    )
    _assert_same(backend, x, params, seeds, f"{backend} {fdtype}")
    # and the int32 top_k strided, the float ones 0-dim
    params = dict(temperature=torch.tensor(-1.0, dtype=fdtype, device=dev),
                  top_k=_strided([2, -1, 4, 9, 1, 3], torch.int32, dev),
                  top_p=_strided([0.5, 0.25, 1.0, 0.0, 0.875, 0.75], fdtype, dev))
    tok = _assert_same(backend, x, params, seeds, f"{backend} {fdtype} 0-dim temperature")
    assert torch.equal(tok, x.cpu().argmax(1))  # temperature -1 everywhere: greedy


def test_tensor_parameters_reach_the_kernel_as_given(monkeypatch):
    """No conversion, copy or clamp on the Python side: the launcher gets the caller's tensors themselves."""
    from fastattn.ops import _dispatch
    smp = _dispatch.backend_for("sampling", "triton").kernels
    seen = {}

    def stub(logits, tt, t, kt, k, pt, p, mt, m, seeds):
        seen.update(tt=tt, kt=kt, pt=pt, mt=mt, seeds=seeds)
        return torch.empty(logits.shape[0], dtype=torch.int64)

    monkeypatch.setattr(smp, "sample", stub)
    x = _logits(4, 10, seed=4, dev="cpu")
    temp = torch.tensor([-1.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    top_k = torch.tensor([1, -2, 3, 4], dtype=torch.int32)
    top_p = torch.rand(4, 2)[:, 1]
    min_p = torch.tensor(0.5, dtype=torch.bfloat16)
    seeds = torch.arange(4)
    fastattn.sample(x, temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seeds, backend="triton")
    assert seen["tt"] is temp and seen["kt"] is top_k and seen["pt"] is top_p and seen["mt"] is min_p
    assert seen["seeds"] is seeds


@pytest.mark.parametrize("kw,match", [
    (dict(top_k=torch.tensor([1.0, 2.0])), "top_k must have dtype in \\(int32, int64\\)"),
    (dict(temperature=torch.tensor([1, 2])), "temperature must have dtype in"),
    (dict(top_p=torch.tensor([True, False])), "top_p must have dtype in"),
    (dict(min_p=torch.zeros(2, 1)), "min_p must be a number or a tensor of shape"),
    (dict(top_k=True), "top_k must be an int"), (dict(temperature="1"), "temperature must be a float"),
    (dict(top_k=2.0), "top_k must be an int"), (dict(seed=1.5), "seed must be an int"),
])
def test_bad_parameter_types_name_the_argument(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fastattn.sample(torch.randn(2, 10), backend="torch", **kw)
