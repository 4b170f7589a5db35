"""CUDA sort-free sampling (csrc/sampling/) against reference.top_k_top_p_filter / reference.sample.

Runs the csrc kernel: on a GPU through fastattn._C, on the CPU through the emulated build (marker
`cuda_kernel`: it must run, never skip, under FASTATTN_CUDA_EMULATE=1). The emulated binding fills outputs
with NaN (tokens with -2) before the kernel writes them. The kept set must equal the reference's exactly and a
token must never fall outside it; the kernel draws at the reference's own uniform (all 53 bits) by inverse CDF
in vocabulary order, so tokens equal the reference's except where u * (kept mass) lands within rounding of a
CDF step (fixed-point masses here, float64 there); a chi-square test checks the draws independently of that.
"""
import pytest
import torch

import fastattn
from fastattn import _backend, reference
from _utils import assert_same_filter

pytestmark = pytest.mark.cuda_kernel

EMULATED = _backend.cuda_emulated()
DEV = "cpu" if EMULATED else "cuda"
INF = float("inf")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _logits(b, v, seed, scale=2.0, dtype=torch.float32, ties=False):
    x = torch.randn(b, v, generator=_gen(seed)) * scale
    if ties:
        x = torch.round(x * 2) / 2
    return x.to(dtype=dtype, device=DEV)


def _seeds(b, seed):
    return torch.randint(-(1 << 62), 1 << 62, (b,), generator=_gen(seed)).to(DEV)


def _check_tokens(x, tok, seeds, params, min_agree=1.0, what=""):
    """Hard support check against the float64 filter; agreement with the reference's draws."""
    b, v = x.shape
    tok = tok.cpu()
    kept = reference.top_k_top_p_filter(x.cpu().double(), **_cpu(params)) > -INF
    assert ((tok >= 0) & (tok < v)).all(), f"{what}: token out of range {tok.tolist()}"
    assert kept[torch.arange(b), tok].all(), f"{what}: a token outside the kept set"
    ref = reference.sample(x.cpu(), seeds=seeds.cpu(), **_cpu(params))
    agree = (tok == ref).float().mean().item()
    assert agree >= min_agree, f"{what}: agreement {agree:.3f} with the reference: {tok.tolist()} vs {ref.tolist()}"


def _cpu(params):
    return {k: (t.cpu() if isinstance(t, torch.Tensor) else t) for k, t in params.items()}


FILTER_CASES = [
    dict(top_k=50), dict(top_p=0.9), dict(top_k=40, top_p=0.8), dict(min_p=0.1),
    dict(top_k=200, top_p=0.95, min_p=0.02), dict(top_p=0.5, min_p=0.3, temperature=0.5), dict(),
    dict(top_k=1), dict(top_p=1e-6), dict(temperature=0.0),
]


def _case_id(c):
    return "-".join(f"{k}={v}" for k, v in c.items()) or "none"


@pytest.mark.parametrize("width", [1, 7, 33, 1000, 5000])
@pytest.mark.parametrize("params", FILTER_CASES, ids=_case_id)
def test_filter_and_sample_match_reference(params, width):
    x = _logits(3, width, seed=width)
    params = {"temperature": 0.8, **params}
    out = fastattn.top_k_top_p_filter(x, backend="cuda", **params)
    assert_same_filter(out, reference.top_k_top_p_filter(x, **params), _case_id(params))
    seeds = _seeds(3, width)
    tok = fastattn.sample(x, seed=seeds, backend="cuda", **params)
    assert tok.dtype == torch.int64 and tok.shape == (3,)
    _check_tokens(x, tok, seeds, params, min_agree=1.0, what=_case_id(params))


@pytest.mark.parametrize("kind", ["ties", "neg_inf", "bf16", "fp16", "strided"])
def test_per_row_parameters_dtypes_ties(kind):
    """Per-row parameters (one greedy row, one row without filters), ties, -inf logits, 16-bit inputs and
    rows with a stride larger than V."""
    v = 700
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind, torch.float32)
    x = _logits(4, v + 5, seed=20, ties=kind == "ties", dtype=dtype)
    x = x[:, 3:v + 3] if kind == "strided" else x[:, :v].contiguous()
    if kind == "neg_inf":
        x[:, ::3] = -INF
    params = dict(temperature=torch.tensor([0.7, 1.3, 0.0, 1.0]), top_k=torch.tensor([30, 0, 5, 400]),
                  top_p=torch.tensor([0.9, 0.6, 0.5, 1.0]), min_p=torch.tensor([0.0, 0.05, 0.0, 0.01]))
    params = {k: t.to(DEV) for k, t in params.items()}
    assert_same_filter(fastattn.top_k_top_p_filter(x, backend="cuda", **params),
                        reference.top_k_top_p_filter(x, **params), kind)
    seeds = _seeds(4, 3)
    _check_tokens(x, fastattn.sample(x, seed=seeds, backend="cuda", **params), seeds, params, what=kind)


def test_tie_groups_at_the_threshold():
    x = torch.zeros(3, 300)
    x[:, :10] = 3.0
    x[:, 10:] = torch.randn(3, 290, generator=_gen(21)) * 0.01 - 5.0
    x[:, 50:250] = 1.0  # 200 ties below the 10 largest
    x = x.to(DEV)
    for params in (dict(top_k=15), dict(top_p=0.2), dict(top_p=0.7), dict(top_k=240, top_p=0.99), dict(top_k=10)):
        assert_same_filter(fastattn.top_k_top_p_filter(x, backend="cuda", **params),
                            reference.top_k_top_p_filter(x, **params), str(params))


def test_many_rows_inside_kept_set_and_match_reference():
    b, v = 48, 500
    g = _gen(22)
    x = _logits(b, v, seed=23)
    params = dict(temperature=(torch.rand(b, generator=g) + 0.3).to(DEV),
                  top_k=torch.randint(0, 80, (b,), generator=g).to(DEV),
                  top_p=(torch.rand(b, generator=g) * 0.6 + 0.4).to(DEV),
                  min_p=torch.where(torch.rand(b, generator=g) < 0.5, 0.0, 0.1).to(DEV))
    seeds = _seeds(b, 24)
    _check_tokens(x, fastattn.sample(x, seed=seeds, backend="cuda", **params), seeds, params, min_agree=0.97)


@pytest.mark.triton
def test_tokens_equal_triton_kernel():
    """The Triton kernel draws at the same uniform (24 of its bits): tokens agree but for rounding."""
    b, v = 8, 300
    x = _logits(b, v, seed=30)
    seeds = _seeds(b, 31)
    kw = dict(temperature=0.9, top_k=40, top_p=0.9)
    tc = fastattn.sample(x, seed=seeds, backend="cuda", **kw).cpu()
    tt = fastattn.sample(x.cpu() if not EMULATED else x, seed=seeds.cpu() if not EMULATED else seeds,
                         backend="triton", **kw).cpu()
    assert (tc == tt).float().mean() >= 0.85, f"{tc.tolist()} vs triton {tt.tolist()}"


@pytest.mark.parametrize("n", [600, pytest.param(6000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("params", [dict(top_k=5, top_p=0.9), dict(min_p=0.05), dict()],
                         ids=["topk_topp", "minp", "none"])
def test_draws_follow_filtered_distribution(params, n):
    """Chi-square of n draws (seeds 0..n-1, deterministic) against softmax of the kept logits."""
    v = 10
    x = torch.tensor([[2.0, 1.5, 1.4, 0.3, 0.0, -0.2, -1.0, 1.0, 0.5, -3.0]], device=DEV).repeat(n, 1)
    seeds = torch.arange(n, dtype=torch.int64, device=DEV)
    tok = fastattn.sample(x, seed=seeds, backend="cuda", temperature=0.9, **params).cpu()
    z = reference.top_k_top_p_filter(x[:1].cpu(), temperature=0.9, **params)[0]
    p = torch.softmax(z.double(), 0)
    counts = torch.bincount(tok, minlength=v).double()
    assert counts[p == 0].sum() == 0, "draws outside the kept set"
    e = p[p > 0] * n
    chi2 = float(((counts[p > 0] - e) ** 2 / e).sum())
    assert chi2 < 27.9, f"chi2 {chi2:.1f}: counts {counts.tolist()} vs expected {(p * n).tolist()}"


def test_special_rows():
    """NaN row -> -1 / all NaN; all -inf -> -1 / all -inf; +inf -> -1 / its +inf entries; greedy ties."""
    x = _logits(6, 301, seed=25, ties=True)
    x[0, 10] = float("nan")
    x[1] = -INF
    x[2, [5, 200]] = INF
    x[3, [17, 40, 300]] = 9.0      # tied maxima: the lowest index wins
    x[4] = -INF
    x[4, 123] = 0.5                # one finite logit
    for temperature in (0.0, 0.7, torch.tensor([0.0, 0.7, 0.0, 0.0, 1.0, 0.5], device=DEV)):
        for params in (dict(), dict(top_k=3, top_p=0.5, min_p=0.1)):
            kw = dict(temperature=temperature, **params)
            out = fastattn.top_k_top_p_filter(x, backend="cuda", **kw)
            assert_same_filter(out, reference.top_k_top_p_filter(x, **kw), str(kw))
            tok = fastattn.sample(x, seed=7, backend="cuda", **kw).cpu()
            ref = reference.sample(x, seeds=torch.full((6,), 7, device=DEV), **kw).cpu()
            assert tok[:3].tolist() == [-1, -1, -1] and tok[4] == 123
            assert tok.tolist() == ref.tolist(), f"{kw}: {tok.tolist()} vs {ref.tolist()}"
    assert fastattn.sample(x, temperature=0.0, seed=1, backend="cuda")[3] == 17


def test_vocab_of_one_and_empty_batch():
    x = torch.randn(3, 1, device=DEV)
    assert fastattn.sample(x, top_k=5, top_p=0.3, seed=1, backend="cuda").tolist() == [0, 0, 0]
    assert_same_filter(fastattn.top_k_top_p_filter(x, top_p=0.3, backend="cuda"),
                        reference.top_k_top_p_filter(x, top_p=0.3))
    assert fastattn.sample(torch.randn(0, 5, device=DEV), seed=1, backend="cuda").shape == (0,)


def test_out_of_range_per_row_parameters():
    """top_k above V, huge, negative (clamped to 0 = off) or 1; top_p 0 (clamped to tiny) and 1; min_p 1."""
    x = _logits(5, 257, seed=60)
    params = dict(top_k=torch.tensor([300, 1 << 40, -4, 1, 257], device=DEV),
                  top_p=torch.tensor([0.0, 1.0, 0.3, 1.0, 0.999], device=DEV),
                  min_p=torch.tensor([0.0, 1.0, 0.0, 0.5, 0.0], device=DEV))
    assert_same_filter(fastattn.top_k_top_p_filter(x, backend="cuda", **params),
                        reference.top_k_top_p_filter(x, **_clamped(params)))
    seeds = _seeds(5, 61)
    _check_tokens(x, fastattn.sample(x, seed=seeds, backend="cuda", **params), seeds, _clamped(params))


def _clamped(params):
    """What the kernel makes of them as it loads them (reference.PARAM_RANGES), so what the reference must see."""
    tiny = torch.finfo(torch.float32).tiny
    return dict(top_k=params["top_k"].clamp(min=0), top_p=params["top_p"].clamp(tiny, 1.0),
                min_p=params["min_p"].clamp(0.0, 1.0))


@pytest.mark.parametrize("params", [dict(top_k=50, top_p=0.9), dict(top_p=0.95), dict(min_p=0.05)], ids=_case_id)
def test_wide_row(params):
    """One 70000-wide row (vocabulary-sized), float16."""
    x = _logits(1, 70000, seed=40, scale=3.0, dtype=torch.float16)
    assert_same_filter(fastattn.top_k_top_p_filter(x, backend="cuda", **params),
                        reference.top_k_top_p_filter(x, **params), _case_id(params))
    seeds = _seeds(1, 41)
    _check_tokens(x, fastattn.sample(x, seed=seeds, backend="cuda", **params), seeds, params)


def test_reproducible_and_independent_of_batch_position():
    b, v = 6, 400
    x = _logits(b, v, seed=27)
    seeds = _seeds(b, 28)
    kw = dict(temperature=1.1, top_k=60, top_p=0.9)
    tok = fastattn.sample(x, seed=seeds, backend="cuda", **kw)
    assert torch.equal(tok, fastattn.sample(x, seed=seeds, backend="cuda", **kw))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    tok_p = fastattn.sample(x[perm.to(DEV)], seed=seeds[perm.to(DEV)], backend="cuda", **kw)
    assert torch.equal(tok_p.cpu(), tok.cpu()[perm])
    # an int seed is the same as a tensor of it
    assert torch.equal(fastattn.sample(x, seed=5, backend="cuda", **kw),
                       fastattn.sample(x, seed=torch.full((b,), 5, device=DEV), backend="cuda", **kw))


def test_opcheck_and_bad_inputs():
    x = _logits(3, 100, seed=1)
    torch.library.opcheck(torch.ops.fastattn.top_k_top_p_filter_cuda.default,
                          (x, None, 0.8, torch.tensor([3, 0, 7], device=DEV), 0, None, 0.9, None, 0.0))
    torch.library.opcheck(torch.ops.fastattn.sample_cuda.default,
                          (x, None, 0.8, None, 10, None, 0.9, None, 0.0, _seeds(3, 2), 0))
    with pytest.raises(RuntimeError, match="top_k_t must be int32 or int64, got Float"):
        torch.ops.fastattn.sample_cuda(x, None, 1.0, torch.ones(3, device=DEV), 0, None, 1.0, None, 0.0, None, 1)
    with pytest.raises(RuntimeError, match="top_p_t must be float32, float64, float16 or bfloat16, got Long"):
        torch.ops.fastattn.sample_cuda(x, None, 1.0, None, 0, torch.ones(3, dtype=torch.int64, device=DEV), 1.0,
                                       None, 0.0, None, 1)
    with pytest.raises(RuntimeError, match=r"temperature_t must be a 0-dim tensor or have shape \(rows,\) = \(3\)"):
        torch.ops.fastattn.top_k_top_p_filter_cuda(x, torch.ones(4, device=DEV), 1.0, None, 0, None, 1.0, None, 0.0)
    with pytest.raises(RuntimeError, match="seeds must be a contiguous tensor of rows = 3"):
        torch.ops.fastattn.sample_cuda(x, None, 1.0, None, 0, None, 1.0, None, 0.0,
                                       torch.ones(4, dtype=torch.int64, device=DEV), 0)
    with pytest.raises(RuntimeError, match="logits must be float32, float16 or bfloat16"):
        torch.ops.fastattn.top_k_top_p_filter_cuda(x.double(), None, 1.0, None, 0, None, 1.0, None, 0.0)


@pytest.mark.gpu
@pytest.mark.parametrize("b, v", [(128, 131072), (4, 152064), (512, 32000)])
def test_gpu_large(b, v):
    x = _logits(b, v, seed=b, scale=3.0)
    g = _gen(b)
    params = dict(temperature=(torch.rand(b, generator=g) + 0.3).to(DEV),
                  top_k=torch.randint(0, 200, (b,), generator=g).to(DEV),
                  top_p=(torch.rand(b, generator=g) * 0.6 + 0.4).to(DEV), min_p=0.01)
    assert_same_filter(fastattn.top_k_top_p_filter(x, backend="cuda", **params),
                        reference.top_k_top_p_filter(x, **params))
    seeds = _seeds(b, 3)
    _check_tokens(x, fastattn.sample(x, seed=seeds, backend="cuda", **params), seeds, params, min_agree=0.97)


@pytest.mark.gpu
def test_gpu_frequencies_million_draws():
    """2^20 draws of one filtered row: cosine similarity of the frequencies with the filtered distribution."""
    n, v = 1 << 20, 1000
    x = _logits(1, v, seed=50).repeat(n, 1)
    kw = dict(temperature=0.8, top_k=100, top_p=0.9)
    tok = fastattn.sample(x, seed=torch.arange(n, device=DEV), backend="cuda", **kw)
    freq = torch.bincount(tok, minlength=v).double()
    p = torch.softmax(reference.top_k_top_p_filter(x[:1].double(), **kw)[0], 0).cpu()
    assert freq.cpu()[p == 0].sum() == 0
    assert torch.nn.functional.cosine_similarity(freq.cpu(), p, dim=0) >= 0.99


def test_torch_compile_fullgraph():
    """Through torch.compile: the custom ops' fakes and schemas (fastattn/_cuda.py) trace."""
    x = _logits(4, 300, seed=70)
    seeds = _seeds(4, 71)

    def f(x, seeds):
        z = fastattn.top_k_top_p_filter(x * 1.0, top_k=20, top_p=0.9, backend="cuda")
        return z, fastattn.sample(x, top_k=20, top_p=0.9, seed=seeds, backend="cuda")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    z, tok = compiled(x, seeds)
    z_ref, tok_ref = f(x, seeds)
    assert torch.equal(z, z_ref) and torch.equal(tok, tok_ref)
