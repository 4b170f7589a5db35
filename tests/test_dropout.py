"""Attention dropout (issue 16, item 2): the counter-based stream the Triton kernels draw equals the reference's
bit for bit; dropped-out results and gradients (through the regenerated mask) equal the reference on the same
stream; the keep rate and the expectation are right statistically; seeds come from torch's generator."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn import reference
from fastattn.ops import attention as attn_ops
from _utils import HAS_GPU, REL_TOL, assert_rel, randn

DEV = "cuda" if HAS_GPU else "cpu"
f64 = torch.float64


def _tri():
    from fastattn.triton import attention as tri
    return tri


@pytest.mark.triton
@pytest.mark.parametrize("b,h,sq,sk,p,seed,offset", [
    (2, 3, 19, 37, 0.3, 12345, 7), (1, 2, 5, 70, 0.1, 2 ** 40 + 17, 2 ** 30), (1, 1, 33, 17, 0.9, 2 ** 62 - 1, 0),
    (1, 1, 1, 3, 0.5, 99, 1), (3, 1, 2, 9, 0.25, 2 ** 33 + 5, 2 ** 32 - 1)])
def test_stream_bits_match_reference(b, h, sq, sk, p, seed, offset):
    got = _tri().dropout_mask(b, h, sq, sk, p, seed, offset, DEV)
    want = reference.dropout_keep(b, h, sq, sk, p, seed, offset, torch.device(DEV))
    assert torch.equal(got, want)
    assert not torch.equal(got, reference.dropout_keep(b, h, sq, sk, p, seed + 1, offset, torch.device(DEV)))


_M32 = 0xFFFFFFFF


def _philox_scalar(seed, counter):
    """Philox4x32-10 (Salmon et al. 2011) on one counter with Python ints, written out independently of
    fastattn.reference: the four output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        pa, pb = c0 * 0xD2511F53, c2 * 0xCD9E8D57
        c0, c1, c2, c3 = ((pb >> 32) ^ c1 ^ k0) & _M32, pb & _M32, ((pa >> 32) ^ c3 ^ k1) & _M32, pa & _M32
        k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def test_philox_scalar_known_answer():
    """The scalar Philox above against the published Random123 known-answer vectors (kat_vectors,
    philox4x32_10): counter 0 / key 0 and counter all ones / key all ones."""
    assert _philox_scalar(0, (0, 0, 0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert _philox_scalar(2 ** 64 - 1, (_M32,) * 4) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)


@pytest.mark.parametrize("b,h,sq,sk,p,seed,offset", [
    (1, 2, 3, 21, 0.3, 12345, 7), (2, 1, 2, 8, 0.6, 2 ** 63 + 11, 2 ** 32 - 1), (1, 1, 2, 1, 0.5, 5, 0)])
def test_stream_definition(b, h, sq, sk, p, seed, offset):
    """The stream's definition, score by score: one Philox call on (j // 8, i, b * H + h, offset) per 8 keys;
    its 8 16-bit values (word w low half, then high half, w = 0..3) land on keys 8 g .. 8 g + 7 in that order
    (Sk need not be a multiple of 8: the last group is cut); kept iff the value >= round(p * 65536)."""
    t16 = round(p * 65536)
    assert reference.dropout_threshold(p) == t16
    want = torch.zeros(b, h, sq, sk, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            for i in range(sq):
                for g in range((sk + 7) // 8):
                    words = _philox_scalar(seed, (g, i, bi * h + hi, offset))
                    u16 = [(w >> s) & 0xFFFF for w in words for s in (0, 16)]
                    for k in range(min(8, sk - 8 * g)):
                        want[bi, hi, i, 8 * g + k] = u16[k] >= t16
    got = reference.dropout_keep(b, h, sq, sk, p, seed, offset, torch.device("cpu"))
    assert torch.equal(got, want)
    rows = torch.tensor([sq - 1, 0])
    bh = torch.tensor([[b * h - 1]])
    sub = reference.dropout_keep_at(bh, rows, sk, p, seed, offset)
    assert torch.equal(sub, want.view(b * h, sq, sk)[b * h - 1][rows].view(1, 1, 2, sk))


def test_threshold_is_16_bit_round_half_even():
    """t16 = round(p * 2^16), ties to even as Python's round; p within 2^-17 of 1 gives 65536, which no 16-bit
    value reaches (everything dropped)."""
    assert reference.dropout_threshold(0.5 / 65536) == 0
    assert reference.dropout_threshold(1.5 / 65536) == 2
    assert reference.dropout_threshold(2.5 / 65536) == 2
    assert reference.dropout_threshold(1 - 3 * 2.0 ** -17) == 65534
    assert reference.dropout_threshold(1 - 2.0 ** -17) == 65536
    assert reference.dropout_threshold(1 - 2.0 ** -30) == 65536
    assert not reference.dropout_keep(1, 1, 4, 19, 1 - 2.0 ** -18, 3, 0, torch.device("cpu")).any()
    assert reference.dropout_keep(1, 1, 4, 19, 0.5 / 65536, 3, 0, torch.device("cpu")).all()


def _inputs(hq, hkv, sq, sk, d, dv, dtype, bias, kpm, seed=0):
    q = randn(2, hq, sq, d, dtype=dtype, device=DEV, seed=seed, requires_grad=True)
    k = randn(2, hkv, sk, d, dtype=dtype, device=DEV, seed=seed + 1, requires_grad=True)
    v = randn(2, hkv, sk, dv, dtype=dtype, device=DEV, seed=seed + 2, requires_grad=True)
    bt = randn(1, hq, sq, sk, dtype=dtype, device=DEV, seed=seed + 3, requires_grad=True) if bias else None
    m = None
    if kpm:
        m = torch.rand(2, sk, generator=torch.Generator().manual_seed(seed)) > 0.2
        m[:, 0] = True
        m = m.to(DEV)
    return q, k, v, bt, m


def _f64(t):
    return None if t is None else t.detach().double().requires_grad_(True)


@pytest.mark.triton
@pytest.mark.parametrize("cfg", [
    dict(hq=2, hkv=2, sq=19, sk=37, d=16, dv=16, causal=False, bias=False, kpm=False, dtype=torch.float32),
    dict(hq=4, hkv=2, sq=33, sk=20, d=24, dv=40, causal=True, bias=True, kpm=True, dtype=torch.float32),
    dict(hq=2, hkv=1, sq=17, sk=45, d=40, dv=40, causal=True, bias=False, kpm=False, dtype=torch.bfloat16),
], ids=["mha", "gqa-causal-bias-kpm-dv", "mqa-causal-bf16"])
def test_triton_equals_reference_on_the_same_stream(cfg):
    """Triton (interpreted on the CPU) against the float64 reference on the same seed: out and every gradient
    within the dtype's tolerance. A different mask moves the result by O(1), so this pins the stream."""
    dtype = cfg["dtype"]
    q, k, v, bias, kpm = _inputs(cfg["hq"], cfg["hkv"], cfg["sq"], cfg["sk"], cfg["d"], cfg["dv"], dtype,
                                 cfg["bias"], cfg["kpm"])
    kw = dict(causal=cfg["causal"], key_padding_mask=kpm, dropout_p=0.25)
    torch.manual_seed(11)
    out = fastattn.attention(q, k, v, bias=bias, backend="triton", **kw)
    q64, k64, v64, b64 = _f64(q), _f64(k), _f64(v), _f64(bias)
    torch.manual_seed(11)
    ref = fastattn.attention(q64, k64, v64, bias=b64, backend="torch", **kw)
    tol = REL_TOL[dtype]
    assert_rel(out, ref, tol, "out")
    torch.manual_seed(12)
    other = fastattn.attention(q64, k64, v64, bias=b64, backend="torch", **kw)
    assert (other - ref).abs().max() > 0.1 * ref.abs().max(), "a different seed must drop other entries"
    g = randn(*out.shape, dtype=dtype, device=DEV, seed=9)
    leaves = [t for t in (q, k, v, bias) if t is not None]
    leaves64 = [t for t in (q64, k64, v64, b64) if t is not None]
    got = torch.autograd.grad(out, leaves, g)
    want = torch.autograd.grad(ref, leaves64, g.double())
    for name, a, w in zip(("dq", "dk", "dv", "dbias"), got, want):
        assert_rel(a, w, 2 * tol, name)


def test_reference_gradients_through_the_mask_gradcheck():
    """The reference's backward (the mask regenerated from the seed) is the derivative of its forward."""
    q, k, v, bias, kpm = _inputs(2, 1, 5, 7, 4, 3, f64, True, True, seed=3)

    def fn(q, k, v, b):
        torch.manual_seed(21)  # one mask for every evaluation gradcheck makes
        return fastattn.attention(q, k, v, bias=b, causal=True, key_padding_mask=kpm, dropout_p=0.4,
                                  backend="torch")
    assert torch.autograd.gradcheck(fn, (q, k, v, bias))


def _binomial_ok(kept: int, n: int, p_keep: float, sigmas: float = 6.0) -> bool:
    return abs(kept - n * p_keep) <= sigmas * math.sqrt(n * p_keep * (1 - p_keep))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_binomial_bounds(p):
    """2^21 draws of the stream: the keep rate, and the rate of horizontally and vertically adjacent pairs both
    kept (no correlation between neighbouring counters), within 6 sigma of the binomial expectation."""
    keep = reference.dropout_keep(4, 8, 256, 256, p, 987654321, 5, torch.device("cpu"))
    q = 1 - reference.dropout_threshold(p) / 65536     # the keep probability at 1/65536 resolution
    n = keep.numel()
    assert _binomial_ok(int(keep.sum()), n, q)
    pairs_h = keep[..., 1:] & keep[..., :-1]
    pairs_v = keep[..., 1:, :] & keep[..., :-1, :]
    assert _binomial_ok(int(pairs_h.sum()), pairs_h.numel(), q ** 2)
    assert _binomial_ok(int(pairs_v.sum()), pairs_v.numel(), q ** 2)
    # the halves of one word (keys 2 w, 2 w + 1), and the words of one call, are no more alike than others
    same_word = keep[..., 0::2] & keep[..., 1::2]
    same_call = keep[..., 0::8] & keep[..., 7::8]
    assert _binomial_ok(int(same_word.sum()), same_word.numel(), q ** 2)
    assert _binomial_ok(int(same_call.sum()), same_call.numel(), q ** 2)
    heads = keep.float().mean(dim=(2, 3))   # every (batch, head) stream at the same rate
    assert (heads - q).abs().max() < 6 * math.sqrt(q * (1 - q) / 65536)
    keys = keep.float().mean(dim=(0, 1, 2)).view(-1, 8).mean(0)   # each of the 8 slots of a call at that rate
    assert (keys - q).abs().max() < 6 * math.sqrt(q * (1 - q) / (n / 8))


@pytest.mark.triton
def test_unbiased_expectation_through_the_kernels():
    """The mean of dropped-out attention over many seeds tends to attention without dropout: every output within
    5 standard errors (estimated from the draws themselves)."""
    q, k, v, _, _ = _inputs(1, 1, 16, 16, 16, 16, torch.float32, False, False, seed=4)
    q, k, v = q.detach(), k.detach(), v.detach()
    want = fastattn.attention(q, k, v, backend="triton")
    torch.manual_seed(0)
    draws = torch.stack([fastattn.attention(q, k, v, dropout_p=0.3, backend="triton") for _ in range(96)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert ((mean - want).abs() <= 5 * se + 1e-6).float().mean() > 0.99
    assert (mean - want).abs().max() < 0.1 * want.abs().max() + 6 * se.max()


def test_seeds_follow_torch_manual_seed():
    q = randn(1, 2, 8, 16, dtype=f64, seed=1)
    torch.manual_seed(3)
    a = fastattn.attention(q, q, q, dropout_p=0.5)
    b = fastattn.attention(q, q, q, dropout_p=0.5)
    torch.manual_seed(3)
    c = fastattn.attention(q, q, q, dropout_p=0.5)
    assert torch.equal(a, c) and not torch.equal(a, b)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, True, "0.1"])
def test_bad_dropout_p(p):
    q = randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="dropout_p"):
        fastattn.attention(q, q, q, dropout_p=p)


@pytest.mark.triton
def test_sdpa_dropout_runs_in_the_kernels(monkeypatch):
    """The SDPA drop-in takes dropout_p itself (no PyTorch fallback): with a fixed seed it equals
    fastattn.attention with the same dropout, top-left causal included."""
    monkeypatch.setattr(attn_ops, "_torch_sdpa", None)
    q, k = randn(2, 3, 5, 8, seed=1, device=DEV), randn(2, 3, 7, 8, seed=2, device=DEV)
    v = randn(2, 3, 7, 8, seed=3, device=DEV)
    with fastattn.use_backend("triton"):
        torch.manual_seed(5)
        got = fastattn.scaled_dot_product_attention(q, k, v, dropout_p=0.2)
        torch.manual_seed(5)
        want = fastattn.attention(q, k, v, dropout_p=0.2)
    assert torch.equal(got, want)
    # and PyTorch's own result has the same expectation: dropout_p=0 agrees exactly
    assert_rel(fastattn.scaled_dot_product_attention(q, k, v, dropout_p=0.0),
               F.scaled_dot_product_attention(q, k, v), 1e-5)
