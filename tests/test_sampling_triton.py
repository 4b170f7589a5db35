"""Triton sort-free sampling (fastattn/triton/sampling.py) against reference.top_k_top_p_filter / sample.

The kept set must equal the reference's exactly; a token must never fall outside it. The kernel draws from
the reference's own counter-based uniform by inverse CDF in vocabulary order, so tokens also agree with the
reference's except where u * (kept mass) lands within float32 rounding of a CDF step; a chi-square test checks
the draws against the filtered distribution independently of that.

Interpreted rows cost 0.02-0.3 s each, so batches are small. The launchers take cap / block overrides:
a tiny candidate capacity and tile reach the zoom, partial and tie-group paths at small V.
"""
import pytest
import torch

import fastattn
from fastattn import reference
from fastattn.triton import sampling as tsp

from _utils import HAS_GPU, assert_same_filter

pytestmark = pytest.mark.triton

INF = float("inf")
# (cap, block) overrides: the default, then small enough to force zoom passes, partial resolution and
# the vocabulary-order draw pass at interpreter sizes.
PATHS = {"default": {}, "small_cap": {"cap": 4, "block": 64}, "mid_cap": {"cap": 16, "block": 256}}


def _dev():
    return "cuda" if HAS_GPU else "cpu"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _logits(b, v, seed, scale=2.0, dtype=torch.float32, ties=False):
    x = torch.randn(b, v, generator=_gen(seed)) * scale
    if ties:
        x = torch.round(x * 2) / 2  # many exact ties, also at the top-k / top-p boundaries
    return x.to(device=_dev(), dtype=dtype)


def _seeds(b, seed):
    return torch.randint(-(1 << 62), 1 << 62, (b,), generator=_gen(seed)).to(_dev())


def _launcher_args(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, **kw):
    """The launcher with numbers or (B,) tensors, as the op passes them."""
    def split(v, dtype):
        return (v.to(dtype).contiguous(), 0) if isinstance(v, torch.Tensor) else (None, v)
    (tt, t), (kt, k), (pt, p), (mt, m) = (split(temperature, torch.float32), split(top_k, torch.int64),
                                          split(top_p, torch.float32), split(min_p, torch.float32))
    return tt, t, kt, k, pt, p, mt, m


def _kernel_filter(x, kw, **params):
    return tsp.top_k_top_p_filter(x, *_launcher_args(**params), **kw)


def _kernel_sample(x, seeds, kw, **params):
    return tsp.sample(x, *_launcher_args(**params), seeds, **kw)


FILTER_CASES = [
    dict(top_k=50),
    dict(top_p=0.9),
    dict(top_k=40, top_p=0.8),
    dict(min_p=0.1),
    dict(top_k=200, top_p=0.95, min_p=0.02),
    dict(top_p=0.5, min_p=0.3, temperature=0.5),
    dict(),
]


def _case_id(c):
    return "-".join(f"{k}={v}" for k, v in c.items()) or "none"


@pytest.mark.parametrize("width", [7, 1000])
@pytest.mark.parametrize("params", FILTER_CASES, ids=_case_id)
def test_filter_matches_reference(params, width):
    x = _logits(3, width, seed=width)
    params = {"temperature": 0.8, **params}
    out = fastattn.top_k_top_p_filter(x, backend="triton", **params)
    assert_same_filter(out, reference.top_k_top_p_filter(x, **params), _case_id(params))


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", ["ties", "neg_inf", "bf16", "fp16"])
def test_filter_paths_and_dtypes(kind, path):
    """Per-row parameters (one greedy row), exact ties, -inf logits and 16-bit inputs on every path."""
    v = 700
    x = _logits(4, v, seed=20, ties=kind == "ties",
                dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind, torch.float32))
    if kind == "neg_inf":
        x[:, ::3] = -INF
    params = dict(temperature=torch.tensor([0.7, 1.3, 0.0, 1.0]), top_k=torch.tensor([30, 0, 5, 400]),
                  top_p=torch.tensor([0.9, 0.6, 0.5, 1.0]), min_p=torch.tensor([0.0, 0.05, 0.0, 0.01]))
    params = {k: t.to(_dev()) for k, t in params.items()}
    out = _kernel_filter(x, PATHS[path], **params)
    assert_same_filter(out, reference.top_k_top_p_filter(x, **params), f"{kind}/{path}")


@pytest.mark.parametrize("path", list(PATHS))
def test_tie_group_larger_than_cap(path):
    """A run of equal logits at the threshold longer than the candidate capacity: kept or removed whole."""
    x = torch.zeros(3, 300, device=_dev())
    x[:, :10] = 3.0
    x[:, 10:] = torch.randn(3, 290, generator=_gen(21)).to(_dev()) * 0.01 - 5.0
    x[:, 50:250] = 1.0  # 200 ties below the 10 largest
    for params in (dict(top_k=15), dict(top_p=0.2), dict(top_p=0.7), dict(top_k=240, top_p=0.99)):
        out = _kernel_filter(x, PATHS[path], **params)
        assert_same_filter(out, reference.top_k_top_p_filter(x, **params), f"{params}/{path}")


@pytest.mark.parametrize("path", list(PATHS))
def test_samples_inside_kept_set_and_match_reference(path):
    """Hard check (every token in the reference's kept set) plus agreement with the reference's draws."""
    b, v = 32, 500
    g = _gen(22)
    x = _logits(b, v, seed=23, ties=path == "small_cap")
    params = dict(temperature=(torch.rand(b, generator=g) + 0.3).to(_dev()),
                  top_k=torch.randint(0, 80, (b,), generator=g).to(_dev()),
                  top_p=(torch.rand(b, generator=g) * 0.6 + 0.4).to(_dev()),
                  min_p=torch.where(torch.rand(b, generator=g) < 0.5, 0.0, 0.1).to(_dev()))
    seeds = _seeds(b, 24)
    tok = _kernel_sample(x, seeds, PATHS[path], **params).cpu()
    kept = reference.top_k_top_p_filter(x, **params).cpu() > -INF
    assert ((tok >= 0) & (tok < v)).all()
    assert kept[torch.arange(b), tok].all(), "a token outside the kept set"
    ref = reference.sample(x, seeds=seeds, **params).cpu()
    assert (tok == ref).float().mean() >= 0.9, f"agreement with the reference draws: {(tok == ref).tolist()}"


# The distribution of the draws (chi-square and binomial bounds over 100k draws on the CPU, millions from this
# kernel on a GPU) is tested in test_sampling_stats.py; under the interpreter (0.1-0.3 s a row) this file ties
# the kernel's draws to the reference's for the same seeds instead (test_samples_inside_kept_set_and_match_
# reference above, and test_draw_paths_match_reference below).
@pytest.mark.parametrize("params, block", [(dict(top_k=5, top_p=0.9), 16), (dict(min_p=0.05), 4), (dict(), 4)],
                         ids=["topk_topp", "minp", "none"])
def test_draw_paths_match_reference(params, block):
    """Both draw paths (in registers from the candidates; in vocabulary order across tiles): the same token as
    the reference for the same seed on nearly every row, and never one outside the kept set."""
    n, v = 48, 10
    x = torch.tensor([[2.0, 1.5, 1.4, 0.3, 0.0, -0.2, -1.0, 1.0, 0.5, -3.0]], device=_dev()).repeat(n, 1)
    seeds = torch.arange(n, dtype=torch.int64, device=_dev()) * 7919
    tok = _kernel_sample(x, seeds, {"block": block}, temperature=0.9, **params).cpu()
    kept = reference.top_k_top_p_filter(x[:1], temperature=0.9, **params).cpu()[0] > -INF
    assert kept[tok].all(), "a draw outside the kept set"
    ref = reference.sample(x, temperature=0.9, seeds=seeds, **params).cpu()
    assert (tok == ref).float().mean() >= 0.95, f"agreement with the reference: {(tok == ref).tolist()}"


def test_greedy_exact_with_ties():
    x = _logits(4, 301, seed=25, ties=True)
    x[0, [17, 40, 300]] = 9.0          # tied maxima: the lowest index wins
    x[2, [299, 300]] = 7.0
    x[3] = -INF
    x[3, 123] = 0.5
    t = torch.tensor([0.0, 0.0, 0.0, 0.0], device=_dev())
    for temperature in (0.0, t):
        tok = fastattn.sample(x, temperature=temperature, top_k=3, top_p=0.5, seed=1, backend="triton").cpu()
        assert tok.tolist() == reference.sample(x, temperature=t, seeds=torch.ones(4, dtype=torch.int64,
                                                                                   device=_dev())).tolist()
        assert tok[0] == 17 and tok[2] == 299 and tok[3] == 123
        out = fastattn.top_k_top_p_filter(x, temperature=temperature, backend="triton")
        assert_same_filter(out, reference.top_k_top_p_filter(x, temperature=t), "greedy")


@pytest.mark.parametrize("params", [dict(top_k=1), dict(top_p=1e-6), dict(min_p=0.999), dict(top_k=1, top_p=0.3)],
                         ids=_case_id)
def test_single_kept_token_equals_reference(params):
    x = _logits(4, 999, seed=26)
    tok = fastattn.sample(x, temperature=0.7, seed=torch.arange(4, device=_dev()), backend="triton", **params)
    assert tok.cpu().tolist() == x.argmax(1).cpu().tolist()
    assert_same_filter(fastattn.top_k_top_p_filter(x, temperature=0.7, backend="triton", **params),
                        reference.top_k_top_p_filter(x, temperature=0.7, **params), _case_id(params))


def test_reproducible_and_independent_of_batch():
    b, v = 6, 400
    x = _logits(b, v, seed=27)
    seeds = _seeds(b, 28)
    kw = dict(temperature=1.1, top_k=60, top_p=0.9)
    tok = fastattn.sample(x, seed=seeds, backend="triton", **kw)
    assert torch.equal(tok, fastattn.sample(x, seed=seeds, backend="triton", **kw))
    perm = torch.tensor([3, 5, 0, 1, 4, 2], device=_dev())
    assert torch.equal(fastattn.sample(x[perm], seed=seeds[perm], backend="triton", **kw), tok[perm])
    other = x.clone()
    other[1:] = _logits(b - 1, v, seed=29)
    assert fastattn.sample(other, seed=seeds, backend="triton", **kw)[0] == tok[0]
    assert fastattn.sample(x[:1], seed=seeds[:1], backend="triton", **kw)[0] == tok[0]
    # One int seed for every row (the launcher's allocation-free form) equals the (B,) tensor of it.
    args = (None, 1.1, None, 60, None, 0.9, None, 0.0)
    assert torch.equal(tsp.sample(x, *args, -12345), tsp.sample(x, *args, torch.full((b,), -12345, device=_dev())))


def test_nan_row_gives_minus_one_and_others_unaffected():
    x = _logits(3, 257, seed=30)
    clean = fastattn.sample(x, temperature=0.9, top_p=0.8, seed=7, backend="triton")
    x[1, 100] = float("nan")
    for t in (0.9, 0.0):
        tok = fastattn.sample(x, temperature=t, top_p=0.8, seed=7, backend="triton")
        assert tok[1] == -1
        if t:
            assert tok[0] == clean[0] and tok[2] == clean[2]
    out = fastattn.top_k_top_p_filter(x, top_k=5, backend="triton")
    assert torch.isnan(out[1]).all() and not torch.isnan(out[[0, 2]]).any()


def test_non_finite_rows():
    """All -inf (any temperature) and +inf rows give -1 and never hang; other rows are unaffected."""
    x = _logits(4, 50, seed=31)
    x[0] = -INF
    x[1, 7] = INF
    x[2] = torch.full((50,), 1e38)  # finite logits whose z = x / T overflows to +inf
    for params in (dict(), dict(top_k=3), dict(top_p=0.5), dict(min_p=0.5), dict(temperature=0.0)):
        tok = fastattn.sample(x, seed=3, backend="triton", **{"temperature": 0.1, **params}).cpu()
        greedy = params.get("temperature") == 0.0  # greedy rows are not divided: 1e38 stays finite
        assert tok[:3].tolist() == [-1, -1, 0 if greedy else -1], params
        assert 0 <= tok[3] < 50
    out = fastattn.top_k_top_p_filter(x, top_p=0.5, backend="triton").cpu()
    assert (out[0] == -INF).all()
    assert out[1, 7] == INF and (out[1, torch.arange(50) != 7] == -INF).all()  # only its +inf is kept


def test_v1_topk_ge_v_tiny_top_p():
    x1 = _logits(3, 1, seed=32)
    assert fastattn.sample(x1, top_k=5, top_p=0.1, seed=0, backend="triton").tolist() == [0, 0, 0]
    assert_same_filter(fastattn.top_k_top_p_filter(x1, top_p=0.1, backend="triton"),
                        reference.top_k_top_p_filter(x1, top_p=0.1), "V=1")
    x = _logits(3, 77, seed=33)
    for k in (77, 78, 10 ** 12):
        assert_same_filter(fastattn.top_k_top_p_filter(x, top_k=k, top_p=0.9, backend="triton"),
                            reference.top_k_top_p_filter(x, top_k=k, top_p=0.9), f"top_k={k}")
    for p in (1e-9, 1e-30):
        out = fastattn.top_k_top_p_filter(x, top_p=p, backend="triton")
        assert_same_filter(out, reference.top_k_top_p_filter(x, top_p=p), f"top_p={p}")
        assert ((out > -INF).sum(1) == 1).all()


def test_strided_logits():
    wide = _logits(4, 900, seed=34)
    x = wide[:, :700]  # row stride 900
    params = dict(temperature=0.6, top_k=25, top_p=0.85)
    assert_same_filter(fastattn.top_k_top_p_filter(x, backend="triton", **params),
                        reference.top_k_top_p_filter(x, **params), "row stride")
    xt = _logits(300, 3, seed=35).t()  # column stride 3: the launcher makes it contiguous
    assert_same_filter(fastattn.top_k_top_p_filter(xt, backend="triton", **params),
                        reference.top_k_top_p_filter(xt, **params), "column stride")
    assert torch.equal(fastattn.sample(x, seed=4, backend="triton", **params),
                       fastattn.sample(x.contiguous(), seed=4, backend="triton", **params))


def test_opcheck():
    x = _logits(2, 37, seed=36)
    seeds = _seeds(2, 37)
    k = torch.tensor([3, 0], device=_dev())
    torch.library.opcheck(torch.ops.fastattn.sample.default,
                          (x, None, 0.8, None, 5, None, 0.9, None, 0.0, seeds, "triton"))
    torch.library.opcheck(torch.ops.fastattn.sample.default,
                          (x, None, 1.0, k, 0, None, 1.0, None, 0.1, seeds, "triton"))
    torch.library.opcheck(torch.ops.fastattn.top_k_top_p_filter.default,
                          (x, None, 0.8, None, 5, None, 0.9, None, 0.0, "triton"))


def test_eager_direct_path_equals_the_op():
    """Eager sample() skips the custom-op dispatch; it must give what the op gives, an int seed included."""
    x = _logits(3, 61, seed=37)
    params = dict(temperature=0.7, top_k=9, top_p=0.9)
    direct = fastattn.sample(x, seed=11, backend="triton", **params)
    via_op = torch.ops.fastattn.sample.default(x, None, 0.7, None, 9, None, 0.9, None, 0.0,
                                               torch.full((3,), 11, dtype=torch.int64, device=x.device), "triton")
    assert torch.equal(direct, via_op)
    seeds = _seeds(3, 38)
    assert torch.equal(fastattn.sample(x, seed=seeds, backend="triton", **params),
                       torch.ops.fastattn.sample.default(x, None, 0.7, None, 9, None, 0.9, None, 0.0, seeds, "triton"))


@pytest.mark.gpu
@pytest.mark.parametrize("v", [32000, 131072])
@pytest.mark.parametrize("b", [1, 128])
def test_gpu_sizes(b, v):
    x = torch.randn(b, v, device="cuda") * 3
    seeds = torch.arange(b, device="cuda")
    for params in (dict(temperature=0.8, top_k=50, top_p=0.9), dict(top_p=0.95), dict(min_p=0.05, top_k=1000)):
        assert_same_filter(fastattn.top_k_top_p_filter(x, backend="triton", **params),
                            reference.top_k_top_p_filter(x, **params), f"{b}x{v} {params}")
        tok = fastattn.sample(x, seed=seeds, backend="triton", **params)
        kept = reference.top_k_top_p_filter(x, **params) > -INF
        assert kept[torch.arange(b, device="cuda"), tok].all()
        ref = reference.sample(x, seeds=seeds, **params)
        assert (tok == ref).float().mean() >= 0.95


@pytest.mark.parametrize("ties", [False, True])
def test_fast_topk_path_and_its_fallback(ties):
    """Scalar top-k <= cap takes the fast kernel (pass 1 on raw logits, one compaction pass, registers);
    rows it cannot resolve (tie groups wider than the capacity at the threshold) are flagged and redone by
    the v1 kernel. Both must give the reference's kept set and tokens."""
    b, v = 4, 3000
    x = _logits(b, v, seed=41 + ties, ties=ties)
    seeds = _seeds(b, 7)
    kw = {"cap": 16} if ties else {}
    params = dict(temperature=0.8, top_k=12, top_p=0.9)
    out = torch.empty(b, dtype=torch.int64, device=x.device)
    flags = tsp._run(x, *_launcher_args(**params), seeds, out, False, **kw)
    assert flags is not None
    # Random rows: every one resolved by the fast kernel. Rounded rows (this seed): two have a tie group
    # at the threshold wider than cap 16 and are flagged, two are not: both kernels in one batch.
    flags = flags.cpu().tolist()
    assert flags == ([0, 0, 1, 1] if ties else [0] * b), flags
    ref = reference.sample(x.double(), seeds=seeds, **params)
    assert torch.equal(out.cpu(), ref.cpu())
    filt = torch.full((b, v), float("nan"), device=x.device)
    tsp._run(x, *_launcher_args(**params), 0, filt, True, **kw)
    assert_same_filter(filt, reference.top_k_top_p_filter(x, **params), "fast path")


def test_v1_kernel_wide_rows_default_tiles():
    """Rows wider than the fast kernel's 2048 lanes on the v1 kernel alone (per-row top-k, top-p alone,
    top-k above the capacity with min-p), at the default tiles (v1: 1024 wide, several tiles and a partial
    one): the reference's kept set and tokens."""
    b, v = 3, 4100
    x = _logits(b, v, seed=43)
    seeds = _seeds(b, 44)
    for params in (dict(top_k=torch.tensor([7, 0, 300], device=x.device), top_p=0.9),
                   dict(temperature=0.7, top_p=0.8), dict(top_k=300, min_p=0.05)):
        out = torch.empty(b, dtype=torch.int64, device=x.device)
        assert tsp._run(x, *_launcher_args(**params), seeds, out, False) is None   # not the fast path
        kept = reference.top_k_top_p_filter(x, **params) > -INF
        assert kept[torch.arange(b, device=x.device), out].all(), f"a token outside the kept set: {params}"
        assert torch.equal(out.cpu(), reference.sample(x.double(), seeds=seeds, **params).cpu()), params
        filt = torch.full((b, v), float("nan"), device=x.device)
        tsp._run(x, *_launcher_args(**params), 0, filt, True)
        assert_same_filter(filt, reference.top_k_top_p_filter(x, **params), f"v1 wide {params}")


def test_fast_path_greedy_rows_across_tiles():
    """Greedy rows (per-row temperature 0) on the fast kernel with several full tiles, an odd count (its last
    tile read twice) and an even one, a maximum tied within one lane across tiles: the first index of the
    max, as the reference; a sampled row beside them."""
    for v in (250, 320):   # 64-wide tiles: 3 full + a partial one; 5 full, none partial
        x = _logits(4, v, seed=45)
        x[0, [198, 70]] = 9.0   # lane 6 in tiles 1 and 3: the lower index wins
        x[1, v - 1] = 9.0       # in the last element
        x[2, 5] = 9.0           # in the first tile
        t = torch.tensor([0.0, 0.0, 0.0, 0.9], device=_dev())
        seeds = _seeds(4, 46)
        out = torch.empty(4, dtype=torch.int64, device=x.device)
        assert tsp._run(x, *_launcher_args(temperature=t, top_k=3), seeds, out, False, block=64) is not None
        assert out[:3].cpu().tolist() == [70, v - 1, 5]
        ref = reference.sample(x.double(), temperature=t, top_k=3, seeds=seeds)
        assert out.cpu().tolist() == ref.cpu().tolist()


@pytest.mark.parametrize("v", [2, 3, 5, 16, 17])
def test_tiny_rows_scalar_top_k(v):
    """Scalar top-k on rows of a few logits (tiles under 16 lanes take the v1 kernel, 16 and more the fast
    one): the reference's tokens and kept set."""
    x = _logits(3, v, seed=47 + v)
    seeds = _seeds(3, 48)
    for k in (1, 2):
        if k >= v:
            continue
        params = dict(temperature=0.8, top_k=k, top_p=0.9)
        out = _kernel_sample(x, seeds, {}, **params)
        assert torch.equal(out.cpu(), reference.sample(x.double(), seeds=seeds, **params).cpu()), (v, k)
        assert_same_filter(_kernel_filter(x, {}, **params), reference.top_k_top_p_filter(x, **params), f"{v} {k}")
