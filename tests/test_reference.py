"""The PyTorch reference (fastattn.reference) against independent definitions: PyTorch's own math, explicit loops
and autograd. Everything else in the suite trusts this file's subject, so it is checked from first principles.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from fastattn import reference
from _utils import assert_rel, randn

f64 = torch.float64


def naive_attention(q, k, v, causal=False, scale=None, bias=None, kpm=None):
    """Row by row, with explicit index loops for the masks: slow, obviously right, float64."""
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(b, hq, sq, d, dtype=f64)
    for bi in range(b):
        for h in range(hq):
            kh = h // (hq // hkv)
            for i in range(sq):
                s = (k[bi, kh].double() @ q[bi, h, i].double()) * scale
                if bias is not None:
                    s = s + bias.expand(b, hq, sq, sk)[bi, h, i].double()
                allowed = torch.ones(sk, dtype=torch.bool)
                for j in range(sk):
                    if causal and j > i + sk - sq:
                        allowed[j] = False
                    if kpm is not None and not kpm[bi, j]:
                        allowed[j] = False
                s = s.masked_fill(~allowed, float("-inf"))
                if torch.isinf(s).all() and (s < 0).all():
                    continue  # nothing to attend to: zeros
                out[bi, h, i] = torch.softmax(s, 0) @ v[bi, kh].double()
    return out


CASES = [
    # b, hq, hkv, sq, sk, d, causal
    (2, 4, 2, 5, 7, 8, False),
    (1, 3, 3, 9, 4, 5, True),   # Sq > Sk: early rows see nothing under bottom-right causal
    (2, 2, 1, 4, 11, 6, True),  # Sq < Sk: a decode-like prefill with a cache
    (1, 2, 2, 1, 1, 3, False),
]


@pytest.mark.parametrize("b,hq,hkv,sq,sk,d,causal", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_kpm", [False, True])
def test_attention_matches_naive(b, hq, hkv, sq, sk, d, causal, with_bias, with_kpm):
    q, k, v = randn(b, hq, sq, d, dtype=f64, seed=1), randn(b, hkv, sk, d, dtype=f64, seed=2), \
        randn(b, hkv, sk, d, dtype=f64, seed=3)
    bias = randn(1, hq, sq, sk, dtype=f64, seed=4) if with_bias else None
    kpm = None
    if with_kpm:
        kpm = torch.rand(b, sk, generator=torch.Generator().manual_seed(5)) > 0.3
        kpm[0] = False  # one sequence with every key padded: its rows must be zeros
    out, lse = reference.attention(q, k, v, causal=causal, bias=bias, key_padding_mask=kpm)
    assert_rel(out, naive_attention(q, k, v, causal, None, bias, kpm), 1e-12)
    assert lse.shape == (b, hq, sq) and lse.dtype == f64
    if with_kpm:
        assert torch.isneginf(lse[0]).all() and (out[0] == 0).all()


def test_attention_matches_torch_sdpa_math():
    q, k, v = randn(2, 4, 13, 16, dtype=f64, seed=1), randn(2, 4, 13, 16, dtype=f64, seed=2), \
        randn(2, 4, 13, 16, dtype=f64, seed=3)
    bias = randn(2, 1, 13, 13, dtype=f64, seed=4)
    for causal in (False, True):
        mask = bias if not causal else bias.masked_fill(~torch.ones(13, 13, dtype=torch.bool).tril(), float("-inf"))
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        out, _ = reference.attention(q, k, v, causal=causal, bias=bias, scale=0.3)
        assert_rel(out, ref, 1e-12)


def test_lse_is_logsumexp_of_scores():
    q, k, v = randn(1, 2, 6, 4, dtype=f64, seed=1), randn(1, 2, 9, 4, dtype=f64, seed=2), randn(1, 2, 9, 4, dtype=f64, seed=3)
    _, lse = reference.attention(q, k, v, scale=0.7)
    assert_rel(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.7, -1), 1e-12)


@pytest.mark.parametrize("b,hq,hkv,sq,sk,d,causal", CASES[:3])
@pytest.mark.parametrize("bias_shape", [None, (1, "hq", "sq", "sk"), ("b", 1, 1, "sk")])
def test_attention_backward_matches_autograd(b, hq, hkv, sq, sk, d, causal, bias_shape):
    q = randn(b, hq, sq, d, dtype=f64, seed=1, requires_grad=True)
    k = randn(b, hkv, sk, d, dtype=f64, seed=2, requires_grad=True)
    v = randn(b, hkv, sk, d, dtype=f64, seed=3, requires_grad=True)
    bias = None
    if bias_shape is not None:
        dims = {"b": b, "hq": hq, "sq": sq, "sk": sk}
        bias = randn(*[dims.get(s, s) for s in bias_shape], dtype=f64, seed=4, requires_grad=True)
    kpm = torch.ones(b, sk, dtype=torch.bool)
    kpm[-1, -2:] = False
    out, lse = reference.attention(q, k, v, causal=causal, bias=bias, key_padding_mask=kpm)
    dout = randn(*out.shape, dtype=f64, seed=6)
    inputs = [q, k, v] + ([bias] if bias is not None else [])
    want = torch.autograd.grad(out, inputs, dout)
    got = reference.attention_backward(dout, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(),
                                       causal=causal, scale=None, bias=None if bias is None else bias.detach(),
                                       key_padding_mask=kpm, bias_requires_grad=bias is not None)
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, want):
        assert g.shape == w.shape, name
        assert_rel(g, w, 1e-10, name)


def test_decode_ignores_positions_past_length():
    b, hq, hkv, smax, d = 3, 4, 2, 10, 8
    q = randn(b, hq, d, dtype=f64, seed=1)
    kc, vc = randn(b, hkv, smax, d, dtype=f64, seed=2), randn(b, hkv, smax, d, dtype=f64, seed=3)
    lens = torch.tensor([10, 3, 0], dtype=torch.int32)
    for i, n in enumerate(lens.tolist()):
        kc[i, :, n:] = float("nan")
        vc[i, :, n:] = float("nan")
    out = reference.decode_attention(q, kc, vc, lens)
    assert not torch.isnan(out).any()
    for i, n in enumerate(lens.tolist()):
        want = naive_attention(q[i:i + 1, :, None], kc[i:i + 1, :, :n], vc[i:i + 1, :, :n])[:, :, 0]
        assert_rel(out[i:i + 1], want, 1e-12, f"sequence {i}")


@pytest.mark.parametrize("shape,dim", [((3, 17), -1), ((4, 5, 6), 1), ((1,), 0), ((2, 1000), 1)])
def test_softmax_matches_torch(shape, dim):
    x = randn(*shape, dtype=f64, seed=1)
    assert_rel(reference.softmax(x, 0.7, dim), torch.softmax(x / 0.7, dim), 1e-14)
    t_shape = list(shape)
    t_shape[dim] = 1
    t = torch.rand(t_shape, dtype=f64, generator=torch.Generator().manual_seed(2)) + 0.2
    assert_rel(reference.softmax(x, t, dim), torch.softmax(x / t, dim), 1e-14)


def test_softmax_special_rows():
    x = randn(4, 9, dtype=f64, seed=1)
    x[1] = float("-inf")
    x[2, 3] = float("nan")
    y = reference.softmax(x, 1.0, -1)
    assert (y[1] == 0).all()
    assert torch.isnan(y[2]).all()
    assert_rel(y[[0, 3]], torch.softmax(x[[0, 3]], -1), 1e-14)


def test_softmax_backward_matches_autograd():
    x = randn(5, 11, dtype=f64, seed=1, requires_grad=True)
    t = torch.full((5, 1), 0.6, dtype=f64)
    y = torch.softmax(x / t, -1)
    g = randn(5, 11, dtype=f64, seed=2)
    (want,) = torch.autograd.grad(y, x, g)
    assert_rel(reference.softmax_backward(g, y.detach(), t, -1), want, 1e-12)


def brute_force_filter(x, k, p, mp):
    """Definitions of docs/api.md applied token by token in float64."""
    v = x.shape[0]
    keep = torch.ones(v, dtype=torch.bool)
    if k > 0:
        for j in range(v):
            keep[j] = int((x > x[j]).sum()) < k
    z = x.masked_fill(~keep, float("-inf"))
    pr = torch.softmax(z, 0)
    if p < 1:
        for j in range(v):
            if keep[j]:
                keep[j] = float(pr[pr > pr[j]].sum()) < p
    z = x.masked_fill(~keep, float("-inf"))
    pr = torch.softmax(z, 0)
    if mp > 0:
        keep &= pr >= mp * pr.max()
    return keep


@pytest.mark.parametrize("k,p,mp", [(0, 1.0, 0.0), (5, 1.0, 0.0), (0, 0.6, 0.0), (7, 0.8, 0.0), (0, 1.0, 0.2),
                                    (10, 0.9, 0.05), (1, 1.0, 0.0), (50, 1.0, 0.0)])
def test_filter_matches_brute_force(k, p, mp):
    logits = randn(6, 37, dtype=f64, seed=k + 3)
    logits[0, :5] = logits[0, 5]  # ties at many places
    out = reference.top_k_top_p_filter(logits, top_k=k, top_p=p, min_p=mp, temperature=0.8)
    for r in range(6):
        want = brute_force_filter(logits[r] / 0.8, k, p, mp)
        assert torch.equal(torch.isfinite(out[r]), want), f"row {r}"
        assert_rel(out[r][want], logits[r][want] / 0.8, 1e-15)


def test_filter_ties_at_top_k_boundary_are_kept():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 0.0]], dtype=f64)
    out = reference.top_k_top_p_filter(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[True, False, True, True, True, False]]


def test_uniform_from_seed_is_uniform_and_per_seed():
    u = reference.uniform_from_seed(torch.arange(100000))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.005
    assert torch.equal(reference.uniform_from_seed(torch.tensor([7, 7, 8]))[:2],
                       reference.uniform_from_seed(torch.tensor([7]))[[0, 0]])
