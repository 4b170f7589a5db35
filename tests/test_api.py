"""The public API of ../shared/API.md through the "torch" backend: contracts, gradients, bad input, backends."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn import reference
from _utils import DTYPES, REL_TOL, assert_rel, randn

f64 = torch.float64


def ref64(q, k, v, **kw):
    return reference.attention(q.double(), k.double(), v.double(),
                               **{n: (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
                                  for n, t in kw.items()})


# ----------------------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_gqa_cross_causal_bias_kpm(dtype):
    b, hq, hkv, sq, sk, d = 2, 6, 2, 5, 9, 12
    q, k, v = randn(b, hq, sq, d, dtype=dtype, seed=1), randn(b, hkv, sk, d, dtype=dtype, seed=2), \
        randn(b, hkv, sk, d, dtype=dtype, seed=3)
    bias = randn(1, hq, sq, sk, dtype=dtype, seed=4)
    kpm = torch.ones(b, sk, dtype=torch.bool)
    kpm[1, 6:] = False
    out, lse = fastattn.attention(q, k, v, causal=True, bias=bias, key_padding_mask=kpm, scale=0.4,
                                  return_lse=True, backend="torch")
    want, want_lse = ref64(q, k, v, causal=True, bias=bias, key_padding_mask=kpm, scale=0.4)
    assert out.dtype == dtype and out.shape == (b, hq, sq, d)
    assert lse.dtype == torch.float32 and lse.shape == (b, hq, sq)
    assert_rel(out, want, REL_TOL[dtype])
    assert_rel(lse, want_lse, 1e-5)


def test_attention_gqa_equals_repeated_kv():
    q, k, v = randn(2, 8, 7, 16, seed=1), randn(2, 2, 7, 16, seed=2), randn(2, 2, 7, 16, seed=3)
    out = fastattn.attention(q, k, v, backend="torch")
    rep = fastattn.attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), backend="torch")
    assert_rel(out, rep, 1e-6)


def test_attention_fully_masked_rows_are_zero_not_nan():
    q, k, v = randn(1, 2, 6, 8, seed=1), randn(1, 2, 3, 8, seed=2), randn(1, 2, 3, 8, seed=3)
    out = fastattn.attention(q, k, v, causal=True, backend="torch")  # Sq > Sk: first 3 rows see no key
    assert (out[:, :, :3] == 0).all()
    assert not torch.isnan(out).any()
    q.requires_grad_(True)
    out = fastattn.attention(q, k, v, causal=True, backend="torch")
    (g,) = torch.autograd.grad(out.sum(), q)
    assert not torch.isnan(g).any() and (g[:, :, :3] == 0).all()


def test_attention_nan_in_nan_out():
    q, k, v = randn(1, 1, 4, 8, seed=1), randn(1, 1, 4, 8, seed=2), randn(1, 1, 4, 8, seed=3)
    q[0, 0, 2, 0] = float("nan")
    out = fastattn.attention(q, k, v, backend="torch")
    assert torch.isnan(out[0, 0, 2]).all() and not torch.isnan(out[0, 0, [0, 1, 3]]).any()


def test_attention_noncontiguous_bshd_views():
    q = randn(2, 9, 4, 8, seed=1).transpose(1, 2)  # (B, S, H, D) -> (B, H, S, D) without a copy
    k = randn(2, 11, 2, 8, seed=2).transpose(1, 2)
    v = randn(2, 11, 2, 8, seed=3).transpose(1, 2)
    assert not q.is_contiguous()
    assert_rel(fastattn.attention(q, k, v, backend="torch"), ref64(q, k, v)[0], 1e-5)


def test_attention_empty_inputs():
    q, k, v = randn(2, 2, 0, 8), randn(2, 2, 5, 8), randn(2, 2, 5, 8)
    assert fastattn.attention(q, k, v, backend="torch").shape == (2, 2, 0, 8)
    q, k, v = randn(2, 2, 3, 8), randn(2, 2, 0, 8), randn(2, 2, 0, 8)
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend="torch")
    assert (out == 0).all() and torch.isneginf(lse).all()


@pytest.mark.parametrize("bias_shape", [(2, 3, 5, 7), (1, 3, 5, 7), (2, 1, 1, 7), (5, 7), (7,)])
def test_attention_gradients(bias_shape):
    q = randn(2, 3, 5, 8, dtype=f64, seed=1, requires_grad=True)
    k = randn(2, 3, 7, 8, dtype=f64, seed=2, requires_grad=True)
    v = randn(2, 3, 7, 8, dtype=f64, seed=3, requires_grad=True)
    bias = randn(*bias_shape, dtype=f64, seed=4, requires_grad=True)
    out = fastattn.attention(q, k, v, bias=bias, causal=True, backend="torch")
    # Independent: the same maths written with differentiable torch ops.
    s = q @ k.transpose(-1, -2) / math.sqrt(8) + bias
    s = s.masked_fill(~torch.ones(5, 7, dtype=torch.bool).tril(2), float("-inf"))
    want_out = torch.softmax(s, -1) @ v
    g = randn(*out.shape, dtype=f64, seed=5)
    got = torch.autograd.grad(out, (q, k, v, bias), g)
    want = torch.autograd.grad(want_out, (q, k, v, bias), g)
    assert_rel(out, want_out, 1e-12)
    for name, a, w in zip(("dq", "dk", "dv", "dbias"), got, want):
        assert a.shape == w.shape
        assert_rel(a, w, 1e-10, name)


def test_attention_gradcheck():
    q = randn(1, 2, 3, 4, dtype=f64, seed=1, requires_grad=True)
    k = randn(1, 1, 5, 4, dtype=f64, seed=2, requires_grad=True)
    v = randn(1, 1, 5, 4, dtype=f64, seed=3, requires_grad=True)
    bias = randn(1, 2, 3, 5, dtype=f64, seed=4, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, b: fastattn.attention(q, k, v, bias=b, causal=True, backend="torch"), (q, k, v, bias))


# ----------------------------------------------------------------------------------------------------------
# scaled_dot_product_attention: same behaviour as PyTorch's
# ----------------------------------------------------------------------------------------------------------

SDPA_CASES = {
    "plain": dict(),
    "causal_square": dict(is_causal=True),
    "causal_top_left_sq_lt_sk": dict(is_causal=True, sk=9),
    "bool_mask_4d": dict(mask=("bool", (2, 3, 5, 5))),
    "bool_key_padding": dict(mask=("bool", (2, 1, 1, 5))),
    "float_mask_broadcast": dict(mask=("float", (5, 5))),
    "scale": dict(scale=0.25),
    "gqa": dict(hkv=1, enable_gqa=True),
    "three_dim": dict(three_dim=True),
}


@pytest.mark.parametrize("name", SDPA_CASES)
def test_sdpa_matches_pytorch(name):
    c = SDPA_CASES[name]
    sk = c.get("sk", 5)
    shape_q = (2, 5, 8) if c.get("three_dim") else (2, 3, 5, 8)
    shape_k = (2, sk, 8) if c.get("three_dim") else (2, c.get("hkv", 3), sk, 8)
    q, k, v = randn(*shape_q, dtype=f64, seed=1), randn(*shape_k, dtype=f64, seed=2), randn(*shape_k, dtype=f64, seed=3)
    mask = None
    if "mask" in c:
        kind, shape = c["mask"]
        if kind == "bool":
            mask = torch.rand(shape, generator=torch.Generator().manual_seed(4)) > 0.3
            mask[..., 0] = True  # keep every row attending to something: PyTorch's NaN-vs-zero policy differs
        else:
            mask = randn(*shape, dtype=f64, seed=4)
    kw = dict(attn_mask=mask, is_causal=c.get("is_causal", False), scale=c.get("scale"),
              enable_gqa=c.get("enable_gqa", False))
    want = F.scaled_dot_product_attention(q, k, v, **kw)
    got = fastattn.scaled_dot_product_attention(q, k, v, **kw)
    assert got.shape == want.shape
    assert_rel(got, want, 1e-12)


def test_sdpa_gradients_match_pytorch():
    q = randn(2, 3, 5, 8, dtype=f64, seed=1, requires_grad=True)
    k = randn(2, 3, 6, 8, dtype=f64, seed=2, requires_grad=True)
    v = randn(2, 3, 6, 8, dtype=f64, seed=3, requires_grad=True)
    mask = randn(1, 3, 5, 6, dtype=f64, seed=4, requires_grad=True)
    g = randn(2, 3, 5, 8, dtype=f64, seed=5)
    want = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v, mask), g)
    got = torch.autograd.grad(fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v, mask), g)
    for a, w in zip(got, want):
        assert_rel(a, w, 1e-10)


def test_sdpa_fully_masked_row_gives_zeros():
    q, k, v = randn(1, 1, 3, 4), randn(1, 1, 3, 4), randn(1, 1, 3, 4)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    mask[..., 1, :] = False
    out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (out[..., 1, :] == 0).all() and not torch.isnan(out).any()


def test_sdpa_errors_like_pytorch():
    q, k = randn(1, 4, 3, 8), randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="enable_gqa"):
        fastattn.scaled_dot_product_attention(q, k, k)
    with pytest.raises(ValueError, match="is_causal"):
        fastattn.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(3, 3, dtype=torch.bool), is_causal=True)


def test_sdpa_can_replace_torch_function(monkeypatch):
    q = randn(1, 2, 4, 8, seed=1)
    monkeypatch.setattr(F, "scaled_dot_product_attention", fastattn.scaled_dot_product_attention)
    out = F.scaled_dot_product_attention(q, q, q, dropout_p=0.0)
    monkeypatch.undo()
    assert_rel(out, F.scaled_dot_product_attention(q, q, q), 1e-6)


# ----------------------------------------------------------------------------------------------------------
# decode_attention
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention(dtype):
    b, hq, hkv, smax, d = 3, 8, 2, 13, 16
    q = randn(b, hq, d, dtype=dtype, seed=1)
    kc, vc = randn(b, hkv, smax, d, dtype=dtype, seed=2), randn(b, hkv, smax, d, dtype=dtype, seed=3)
    lens = torch.tensor([13, 5, 1], dtype=torch.int32)
    for i, n in enumerate(lens.tolist()):
        kc[i, :, n:] = float("nan")
        vc[i, :, n:] = float("nan")
    out = fastattn.decode_attention(q, kc, vc, lens, backend="torch")
    assert out.shape == (b, hq, d) and out.dtype == dtype
    for i, n in enumerate(lens.tolist()):
        want, _ = ref64(q[i:i + 1, :, None], kc[i:i + 1, :, :n], vc[i:i + 1, :, :n])
        assert_rel(out[i:i + 1], want[:, :, 0], REL_TOL[dtype], f"sequence {i}")


def test_decode_attention_bad_lengths(monkeypatch):
    q, kc = randn(2, 2, 4), randn(2, 2, 6, 4)
    with pytest.raises(ValueError, match="cache_seqlens"):
        fastattn.decode_attention(q, kc, kc, torch.tensor([1], dtype=torch.int32))
    # Lengths outside [0, Smax] are clamped (checking them would synchronise a GPU); strict mode raises.
    out = fastattn.decode_attention(q, kc, kc, torch.tensor([7, -2], dtype=torch.int32), backend="torch")
    want = fastattn.decode_attention(q, kc, kc, torch.tensor([6, 0], dtype=torch.int32), backend="torch")
    assert torch.equal(out, want) and (out[1] == 0).all()
    monkeypatch.setattr(fastattn.ops._checks, "STRICT", True)
    with pytest.raises(ValueError, match="cache_seqlens"):
        fastattn.decode_attention(q, kc, kc, torch.tensor([7, 1], dtype=torch.int32))


# ----------------------------------------------------------------------------------------------------------
# softmax
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((3, 1), -1), ((5, 1001), -1), ((4, 7, 6), 1), ((2, 3, 4), 0)])
def test_softmax(dtype, shape, dim):
    x = randn(*shape, dtype=dtype, seed=1, scale=3)
    y = fastattn.softmax(x, 0.7, dim, backend="torch")
    assert y.dtype == dtype and y.shape == x.shape
    assert_rel(y, torch.softmax(x.double() / 0.7, dim), REL_TOL[dtype])
    t_shape = list(shape)
    t_shape[dim] = 1
    t = torch.rand(t_shape, generator=torch.Generator().manual_seed(2)) + 0.3
    assert_rel(fastattn.softmax(x, t.to(dtype), dim, backend="torch"),
               torch.softmax(x.double() / t.to(dtype).double(), dim), REL_TOL[dtype])


def test_softmax_gradient():
    x = randn(4, 9, dtype=f64, seed=1, requires_grad=True)
    t = torch.tensor([[0.5], [1.0], [2.0], [3.0]], dtype=f64)
    assert torch.autograd.gradcheck(lambda x: fastattn.softmax(x, t, backend="torch"), (x,))
    assert torch.autograd.gradcheck(lambda x: fastattn.softmax(x, 0.3, 0, backend="torch"), (x,))


def test_softmax_special_values_and_empty():
    x = randn(3, 6, seed=1)
    x[0] = float("-inf")
    x[1, 2] = float("nan")
    y = fastattn.softmax(x)
    assert (y[0] == 0).all() and torch.isnan(y[1]).all() and not torch.isnan(y[2]).any()
    assert fastattn.softmax(torch.randn(0, 5)).shape == (0, 5)
    assert fastattn.softmax(torch.randn(4, 0)).shape == (4, 0)


def test_softmax_bad_input(monkeypatch):
    monkeypatch.setattr(fastattn.ops._checks, "STRICT", True)  # for the per-row temperature values below
    x = randn(3, 6)
    with pytest.raises(ValueError, match="temperature"):
        fastattn.softmax(x, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        fastattn.softmax(x, -1.0)
    with pytest.raises(ValueError, match="temperature"):
        fastattn.softmax(x, torch.ones(3, 6))
    with pytest.raises(ValueError, match="temperature"):
        fastattn.softmax(x, torch.tensor([[1.0], [0.0], [1.0]]))
    with pytest.raises(ValueError, match="dim"):
        fastattn.softmax(x, 1.0, dim=2)
    with pytest.raises(TypeError, match="x"):
        fastattn.softmax(torch.ones(3, dtype=torch.int64))


# ----------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------

def test_sample_greedy_lowest_index_among_ties():
    logits = randn(4, 50, seed=1)
    logits[2, 10] = logits[2, 30] = 100.0
    tok = fastattn.sample(logits, temperature=0.0, backend="torch")
    assert tok.dtype == torch.int64 and tok.tolist() == logits.argmax(1).tolist()
    assert tok[2] == 10


def test_sample_stays_inside_kept_set():
    logits = randn(16, 300, seed=2, scale=2)
    kept = torch.isfinite(fastattn.top_k_top_p_filter(logits, top_k=20, top_p=0.8, min_p=0.02, temperature=0.9))
    for s in range(20):
        tok = fastattn.sample(logits, temperature=0.9, top_k=20, top_p=0.8, min_p=0.02, seed=s, backend="torch")
        assert kept[torch.arange(16), tok].all()


def test_sample_distribution_matches_filtered_softmax():
    v = 12
    logits = randn(1, v, seed=3)
    params = dict(temperature=0.7, top_k=8, top_p=0.9)
    probs = torch.softmax(fastattn.top_k_top_p_filter(logits, **params).double(), -1)[0]
    n = 20000
    toks = fastattn.sample(logits.expand(n, v), seed=torch.arange(n), backend="torch", **params)
    freq = torch.bincount(toks, minlength=v).double() / n
    assert (freq[probs == 0] == 0).all()
    assert 0.5 * (freq - probs).abs().sum() < 0.02  # total variation; ~0.007 expected at n = 20000


def test_sample_row_independent_of_batch_position():
    logits = randn(8, 100, seed=4)
    seeds = torch.arange(100, 108)
    a = fastattn.sample(logits, top_p=0.95, seed=seeds, backend="torch")
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    b = fastattn.sample(logits[perm], top_p=0.95, seed=seeds[perm], backend="torch")
    assert torch.equal(a[perm], b)
    c = fastattn.sample(logits[3:4], top_p=0.95, seed=seeds[3:4], backend="torch")
    assert c.item() == a[3].item()
    assert torch.equal(fastattn.sample(logits, seed=5), fastattn.sample(logits, seed=5))


def test_sample_generator_reproducible():
    logits = randn(4, 100, seed=5)
    t1 = fastattn.sample(logits, generator=torch.Generator().manual_seed(3))
    t2 = fastattn.sample(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2)


def test_sample_per_row_parameters():
    logits = randn(3, 40, seed=6)
    tok = fastattn.sample(logits, temperature=torch.tensor([0.0, 1.0, 0.0]), top_k=torch.tensor([0, 1, 0]),
                          seed=1, backend="torch")
    assert tok.tolist() == logits.argmax(1).tolist()  # greedy rows, and top-1 on the middle row


def test_sample_nan_row_and_edge_rows():
    logits = randn(4, 30, seed=7)
    logits[1, 4] = float("nan")
    logits[2] = float("-inf")
    tok = fastattn.sample(logits, top_k=5, seed=0, backend="torch")
    assert tok[1] == -1 and tok[2] == -1 and tok[0] >= 0 and tok[3] >= 0
    one = fastattn.sample(randn(3, 1), top_k=7, top_p=0.01, seed=0)
    assert one.tolist() == [0, 0, 0]
    tiny = fastattn.sample(logits[[0]], top_p=1e-9, seed=0)
    assert tiny.item() == logits[0].argmax().item()


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(min_p=1.0), "min_p"), (dict(min_p=-0.1), "min_p"),
    (dict(top_k=torch.tensor([1, 2, 3])), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(seed=torch.tensor([1, 2, 3])), "seed"),
])
def test_sample_bad_parameters(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fastattn.sample(randn(2, 10), **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(top_p=torch.tensor([0.5, 0.0])), "top_p"), (dict(top_k=torch.tensor([1, -2])), "top_k"),
    (dict(temperature=torch.tensor([1.0, -1.0])), "temperature"), (dict(min_p=torch.tensor([0.0, 1.0])), "min_p"),
])
def test_sample_tensor_parameters_checked_in_strict_mode(kw, match, monkeypatch):
    monkeypatch.setattr(fastattn.ops._checks, "STRICT", True)
    with pytest.raises(ValueError, match=match):
        fastattn.sample(randn(2, 10), **kw)


def test_sample_tensor_parameters_out_of_range_are_clamped():
    """Without strict mode, tensor parameters are not checked (a device sync) but clamped to their ranges."""
    logits = randn(4, 40, seed=3, scale=3)
    got = fastattn.sample(logits, temperature=torch.tensor([-1.0, 0.5, 0.9, 1.0]),
                          top_k=torch.tensor([-3, 5, 0, 2]), top_p=torch.tensor([0.0, 2.0, 0.8, 1.0]),
                          min_p=torch.tensor([0.1, -1.0, 0.0, 1.5]), seed=11, backend="torch")
    want = fastattn.sample(logits, temperature=torch.tensor([0.0, 0.5, 0.9, 1.0]),
                           top_k=torch.tensor([0, 5, 0, 2]),
                           top_p=torch.tensor([torch.finfo(torch.float32).tiny, 1.0, 0.8, 1.0]),
                           min_p=torch.tensor([0.1, 0.0, 0.0, 1.0]), seed=11, backend="torch")
    assert torch.equal(got, want)
    assert got[0] == logits[0].argmax()


def test_sample_bad_logits():
    with pytest.raises(ValueError, match="logits"):
        fastattn.sample(torch.randn(2, 0))
    with pytest.raises(ValueError, match="logits"):
        fastattn.sample(torch.randn(10))
    with pytest.raises(TypeError, match="logits"):
        fastattn.sample(torch.ones(2, 3, dtype=torch.int32))


# ----------------------------------------------------------------------------------------------------------
# bad input for attention
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,exc,match", [
    ("rank", ValueError, "q must have 4 dimensions"),
    ("hq_not_multiple", ValueError, "multiple"),
    ("kv_shape", ValueError, "same shape"),
    ("head_dim", ValueError, "D=8"),
    ("batch", ValueError, "B=2"),
    ("dtype_mix", TypeError, "dtype"),
    ("int_dtype", TypeError, "q must have dtype"),
    ("device_mix", ValueError, "device"),
    ("bias_shape", ValueError, "bias must be broadcastable"),
    ("kpm_dtype", TypeError, "key_padding_mask"),
    ("kpm_shape", ValueError, "key_padding_mask must have shape"),
    ("scale", ValueError, "scale"),
    ("backend", ValueError, "backend"),
])
def test_attention_bad_input(case, exc, match):
    q, k, v = randn(2, 4, 5, 8), randn(2, 2, 7, 8), randn(2, 2, 7, 8)
    kw = {}
    if case == "rank":
        q = q[0]
    elif case == "hq_not_multiple":
        k, v = randn(2, 3, 7, 8), randn(2, 3, 7, 8)
    elif case == "kv_shape":
        v = randn(2, 2, 6, 8)
    elif case == "head_dim":
        k, v = randn(2, 2, 7, 4), randn(2, 2, 7, 4)
    elif case == "batch":
        k, v = randn(3, 2, 7, 8), randn(3, 2, 7, 8)
    elif case == "dtype_mix":
        k = k.half()
    elif case == "int_dtype":
        q, k, v = q.long(), k.long(), v.long()
    elif case == "device_mix":
        k = k.to("meta")
    elif case == "bias_shape":
        kw["bias"] = randn(5, 5)
    elif case == "kpm_dtype":
        kw["key_padding_mask"] = torch.ones(2, 7)
    elif case == "kpm_shape":
        kw["key_padding_mask"] = torch.ones(2, 5, dtype=torch.bool)
    elif case == "scale":
        kw["scale"] = float("nan")
    elif case == "backend":
        kw["backend"] = "cudnn"
    with pytest.raises(exc, match=match):
        fastattn.attention(q, k, v, **kw)


# ----------------------------------------------------------------------------------------------------------
# backends
# ----------------------------------------------------------------------------------------------------------

def test_available_backends_reports_reasons():
    av = fastattn.available_backends()
    assert set(av) == {"torch", "triton", "cuda"} and av["torch"] is True
    for name in ("triton", "cuda"):
        assert av[name] is True or (isinstance(av[name], str) and av[name])


def test_cuda_backend_on_cpu_tensors():
    """CPU tensors: the emulated CUDA build (FASTATTN_CUDA_EMULATE=1) runs them; otherwise a clear error."""
    x = randn(2, 5)
    assert issubclass(fastattn.BackendUnavailable, RuntimeError)
    if fastattn._backend.cuda_emulated():
        assert fastattn.available_backends()["cuda"] is True and fastattn._backend.cuda_build() == "emulated"
        assert_rel(fastattn.softmax(x, backend="cuda"), torch.softmax(x.double(), -1), 1e-5)
        with pytest.raises(fastattn.BackendUnavailable, match="CPU tensors"):
            fastattn.softmax(x.to("meta"), backend="cuda")
        return
    with pytest.raises(fastattn.BackendUnavailable, match="cuda"):
        fastattn.softmax(x, backend="cuda")


def test_use_backend_sets_the_default():
    x = randn(2, 5)
    with fastattn.use_backend("torch"):
        assert_rel(fastattn.softmax(x), torch.softmax(x.double(), -1), 1e-6)
    with pytest.raises(ValueError, match="backend"):
        with fastattn.use_backend("nope"):
            pass
    if fastattn._backend._machine_status("cuda", x.device) is not True:
        with fastattn.use_backend("cuda"):
            with pytest.raises(fastattn.BackendUnavailable):
                fastattn.softmax(x)


def test_filter_row_with_plus_inf_keeps_only_those():
    logits = randn(3, 12, seed=8)
    logits[1, 4] = float("inf")
    out = fastattn.top_k_top_p_filter(logits, top_k=3, top_p=0.5, backend="torch")
    assert out[1, 4] == float("inf") and torch.isneginf(out[1, torch.arange(12) != 4]).all()
    assert torch.isfinite(out[[0, 2]]).sum(1).min() >= 1
    assert fastattn.sample(logits, top_p=0.5, seed=0, backend="torch")[1] == -1


@pytest.mark.triton
@pytest.mark.parametrize("shape,dim", [((3, 0), -1), ((0, 5), -1), ((2, 0, 4), 1)])
def test_softmax_empty_on_kernel_backend(shape, dim):
    x = torch.randn(shape)
    assert fastattn.softmax(x, 0.5, dim, backend="triton").shape == shape
