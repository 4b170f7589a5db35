"""The draws of fastattn.sample follow the filtered distribution (Hugging Face order: temperature, top-k,
top-p, min-p): a chi-square goodness-of-fit test and per-token binomial bounds over many fixed-seed draws,
plus a hard check that no draw ever falls outside the kept set.

CPU: the torch backend, 100,000 draws per case (one to three seconds). Interpreted Triton rows cost 0.1-0.3 s each,
far too slow for a statistical test, so on the CPU the Triton kernel is tied to these draws instead by
test_sampling_triton.py (same kept set exactly; the same token as the reference for the same seed). GPU
(marker gpu): the Triton kernel itself, 4 million draws per case.

Every test is deterministic (fixed seeds) and its thresholds sit at a tail probability of 1e-6 for a correct
sampler; each also shows its power: the same counts must reject a distribution 1% of mass away.
"""
import math

import pytest
import torch

import fastattn
from fastattn import reference
from _utils import HAS_GPU, require_backend

LOGITS = [2.0, 1.5, 1.4, 0.3, 0.0, -0.2, -1.0, 1.0, 0.5, -3.0, 0.8, -0.5]
CASES = {
    "topk_topp": dict(temperature=0.9, top_k=6, top_p=0.9),
    "minp": dict(temperature=0.9, min_p=0.05),
    "topp_only": dict(temperature=1.3, top_p=0.7),
    "none": dict(temperature=0.9),
}
Z_TAIL = 4.753  # standard normal upper quantile at 1e-6


def chi2_quantile(k: int, z: float = Z_TAIL) -> float:
    """Upper quantile of chi-square with k degrees of freedom at the tail of z (Wilson-Hilferty)."""
    c = 2.0 / (9.0 * k)
    return k * (1.0 - c + z * math.sqrt(c)) ** 3


def _draws(n: int, params: dict, backend: str, device: str):
    x = torch.tensor([LOGITS], device=device).repeat(n, 1)
    seeds = torch.arange(n, dtype=torch.int64, device=device) * 2654435761 + 17
    tok = fastattn.sample(x, seed=seeds, backend=backend, **params)
    z = reference.top_k_top_p_filter(x[:1].cpu(), **params)[0]
    return tok, torch.softmax(z.double(), 0)


def _check(tok: torch.Tensor, p: torch.Tensor, n: int):
    v = p.numel()
    assert tok.shape == (n,) and tok.dtype == torch.int64
    assert bool(((tok >= 0) & (tok < v)).all()), "a token id outside [0, V)"
    counts = torch.bincount(tok, minlength=v).double().cpu()
    kept = p > 0
    assert counts[~kept].sum() == 0, f"draws outside the kept set: {counts[~kept].tolist()}"
    e = p[kept] * n
    assert float(e.min()) >= 5, "too few draws for the chi-square approximation"

    def chi2(expected):
        return float(((counts[kept] - expected) ** 2 / expected).sum())

    k = int(kept.sum()) - 1
    limit = chi2_quantile(max(k, 1))
    stat = chi2(e)
    assert stat < limit, f"chi2 {stat:.1f} >= {limit:.1f} (dof {k}): counts {counts.tolist()} vs {(p * n).tolist()}"
    # Per token: |count - np| within Z_TAIL binomial standard deviations (plus one for the continuity).
    sd = torch.sqrt(e * (1 - p[kept]))
    worst = float(((counts[kept] - e).abs() / (sd + 1e-300)).max())
    assert worst < Z_TAIL + 1.0 / float(sd.min()), f"a token's count is {worst:.1f} sd from its expectation"
    # Power: moving 1% of the mass from the most to the least probable kept token must be rejected.
    if k >= 1:
        q = p[kept].clone()
        hi, lo = int(q.argmax()), int(q.argmin())
        q[hi] -= 0.01
        q[lo] += 0.01
        assert chi2(q * n) > limit, "the test cannot tell a 1% shift of mass: too few draws"


@pytest.mark.parametrize("case", list(CASES))
def test_reference_draws_follow_filtered_distribution(case):
    n = 100_000
    tok, p = _draws(n, CASES[case], "torch", "cpu")
    _check(tok, p, n)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("case", list(CASES))
def test_triton_draws_follow_filtered_distribution_gpu(case):
    """The kernel on a GPU: 4 million draws, none outside the kept set, the same statistics."""
    require_backend("triton")
    n = 4_000_000
    tok, p = _draws(n, CASES[case], "triton", "cuda")
    _check(tok, p, n)


@pytest.mark.gpu
@pytest.mark.triton
def test_triton_never_draws_outside_kept_set_gpu():
    """A wide vocabulary with per-row parameters: over 2 million draws no token is ever outside its row's kept
    set (the reference's filter, exact)."""
    require_backend("triton")
    b, v, reps = 64, 4096, 32
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(b, v, generator=g) * 3).cuda()
    params = dict(temperature=(torch.rand(b, generator=g) + 0.3).cuda(),
                  top_k=torch.randint(0, 200, (b,), generator=g).cuda(),
                  top_p=(torch.rand(b, generator=g) * 0.6 + 0.4).cuda(),
                  min_p=torch.where(torch.rand(b, generator=g) < 0.5, 0.0, 0.02).cuda())
    kept = reference.top_k_top_p_filter(x, **params) > float("-inf")
    xs = x.repeat(1024, 1)                       # row i is x[i % b]
    ps = {k: t.repeat(1024) for k, t in params.items()}
    row = torch.arange(b * 1024, device="cuda") % b
    for r in range(reps):
        seeds = torch.arange(b * 1024, dtype=torch.int64, device="cuda") + r * b * 1024
        tok = fastattn.sample(xs, seed=seeds, backend="triton", **ps)
        assert bool(((tok >= 0) & (tok < v)).all()), f"rep {r}: a token id outside [0, V)"
        assert bool(kept[row, tok].all()), f"rep {r}: a draw outside its row's kept set"
