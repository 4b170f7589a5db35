"""fastattn.scaled_dot_product_attention takes every rank and broadcast PyTorch's SDPA takes (issue 16, item 1):
results and gradients against torch.nn.functional.scaled_dot_product_attention, the same errors, and the views
that carry the broadcasts (never a copy of q, k or v)."""
import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn.ops import _sdpa_shapes
from fastattn.ops import attention as attn_ops
from _utils import HAS_GPU, assert_rel, randn

f64 = torch.float64
DEV = "cuda" if HAS_GPU else "cpu"


def torch_sdpa(*args, **kw):
    """PyTorch's SDPA by its definition, the math backend (its CPU fast path skips some checks and rejects a
    1-D mask the definition broadcasts)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **kw)


def _mask(kind, shape, seed):
    if kind == "bool":
        m = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.3
        m[..., 0] = True  # every row attends to something: PyTorch gives NaN where fastattn gives 0
        return m
    return randn(*shape, dtype=f64, seed=seed)


# name: (q shape, k shape, v shape, extra kwargs, mask (kind, shape) or None)
FORMS = {
    "q3d_kv4d_batch_broadcast": ((4, 3, 8), (4, 4, 6, 8), (4, 4, 6, 8), {}, None),
    "size1_batch": ((1, 4, 3, 8), (2, 4, 6, 8), (2, 4, 6, 8), {}, None),
    "kv_size1_batch": ((2, 4, 3, 8), (1, 4, 6, 8), (1, 4, 6, 8), {}, None),
    "k_and_v_batches_differ": ((2, 4, 3, 8), (1, 4, 6, 8), (2, 4, 6, 8), {}, None),
    "no_batch_dims": ((6, 8), (6, 8), (6, 8), {}, None),
    "q2d_kv3d": ((5, 8), (2, 6, 8), (2, 6, 8), {}, None),
    "one_kv_head_broadcast_no_gqa": ((2, 4, 3, 8), (2, 1, 6, 8), (2, 1, 6, 8), {}, None),
    "one_q_head_broadcast": ((2, 1, 3, 8), (2, 4, 6, 8), (2, 4, 6, 8), {}, None),
    "gqa_4_2": ((2, 4, 3, 8), (2, 2, 6, 8), (2, 2, 6, 8), dict(enable_gqa=True), None),
    "gqa_k2_v1": ((2, 4, 3, 8), (2, 2, 6, 8), (2, 1, 6, 8), dict(enable_gqa=True), None),
    "gqa_3d": ((4, 3, 8), (2, 6, 8), (2, 6, 8), dict(enable_gqa=True), None),
    "gqa_with_batch_broadcast": ((1, 4, 3, 8), (2, 1, 6, 8), (2, 1, 6, 8), dict(enable_gqa=True), None),
    "5d": ((2, 3, 4, 3, 8), (2, 3, 4, 6, 8), (2, 3, 4, 6, 8), {}, None),
    "5d_crossed_broadcast": ((2, 1, 4, 3, 8), (1, 3, 4, 6, 8), (1, 3, 4, 6, 8), {}, None),
    "5d_kv_broadcast_outer0": ((2, 3, 4, 3, 8), (1, 3, 4, 6, 8), (1, 3, 4, 6, 8), {}, None),
    "5d_kv_broadcast_outer1": ((2, 3, 4, 3, 8), (2, 1, 4, 6, 8), (2, 1, 4, 6, 8), {}, None),
    "causal_top_left_2d_q_3d_kv": ((3, 8), (2, 6, 8), (2, 6, 8), dict(is_causal=True), None),
    "causal_5d": ((2, 1, 2, 5, 8), (1, 3, 2, 5, 8), (1, 3, 2, 5, 8), dict(is_causal=True), None),
    "bool_mask_per_row_column": ((2, 4, 3, 8), (2, 4, 6, 8), (2, 4, 6, 8), {}, ("bool", (3, 1))),
    "float_mask_other_dtype": ((2, 4, 3, 8), (2, 4, 6, 8), (2, 4, 6, 8), {}, ("float32", (3, 6))),
    "bool_key_padding_5d": ((2, 3, 4, 3, 8), (2, 3, 4, 6, 8), (2, 3, 4, 6, 8), {}, ("bool", (2, 3, 1, 1, 6))),
    "bool_mask_5d_head_broadcast": ((2, 3, 4, 3, 8), (2, 3, 4, 6, 8), (2, 3, 4, 6, 8), {},
                                    ("bool", (2, 1, 4, 3, 6))),
    "float_mask_crossed_broadcast": ((2, 1, 4, 3, 8), (1, 3, 4, 6, 8), (1, 3, 4, 6, 8), {},
                                     ("float", (3, 1, 3, 6))),
    "bool_mask_3d": ((4, 3, 8), (4, 6, 8), (4, 6, 8), {}, ("bool", (4, 3, 6))),
    "bool_mask_no_batch": ((5, 8), (6, 8), (6, 8), {}, ("bool", (5, 6))),
    "bool_mask_1d_like_math_backend": ((2, 4, 3, 8), (2, 4, 6, 8), (2, 4, 6, 8), {}, ("bool", (6,))),
    "empty_batch": ((0, 4, 3, 8), (0, 4, 6, 8), (0, 4, 6, 8), {}, None),
    "empty_outer_dim": ((2, 0, 4, 3, 8), (2, 1, 4, 6, 8), (2, 1, 4, 6, 8), {}, None),
}


def _case(name, dtype, requires_grad=False):
    sq, sk, sv, kw, mask = FORMS[name]
    q = randn(*sq, dtype=dtype, device=DEV, seed=1, requires_grad=requires_grad)
    k = randn(*sk, dtype=dtype, device=DEV, seed=2, requires_grad=requires_grad)
    v = randn(*sv, dtype=dtype, device=DEV, seed=3, requires_grad=requires_grad)
    kw = dict(kw)
    if mask is not None:
        kind, shape = mask
        m = _mask("bool" if kind == "bool" else "float", shape, 4)
        if kind == "float32":
            m = m.float()
        elif kind == "float":
            m = m.to(dtype)
        kw["attn_mask"] = m.to(DEV)
    return q, k, v, kw


@pytest.mark.parametrize("name", FORMS)
def test_matches_pytorch_forward_and_gradients(name):
    """float64 on the reference backend: values and every gradient equal PyTorch's to float64 rounding."""
    q, k, v, kw = _case(name, f64, requires_grad=True)
    want = torch_sdpa(q, k, v, **kw)
    got = fastattn.scaled_dot_product_attention(q, k, v, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_rel(got, want, 1e-12)
    if got.numel():
        g = randn(*want.shape, dtype=f64, device=DEV, seed=5)
        gw = torch.autograd.grad(want, (q, k, v), g)
        gg = torch.autograd.grad(got, (q, k, v), g)
        for a, w in zip(gg, gw):
            assert a.shape == w.shape
            assert_rel(a, w, 1e-10)


def test_float_mask_gradient_through_broadcast():
    q, k, v, kw = _case("float_mask_crossed_broadcast", f64, requires_grad=True)
    mask = kw["attn_mask"].requires_grad_(True)
    g = randn(2, 3, 4, 3, 8, dtype=f64, seed=6)
    want = torch.autograd.grad(torch_sdpa(q, k, v, attn_mask=mask), (q, mask), g)
    got = torch.autograd.grad(fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, mask), g)
    for a, w in zip(got, want):
        assert_rel(a, w, 1e-10)


@pytest.mark.triton
@pytest.mark.parametrize("name", [n for n in FORMS if "empty" not in n])
def test_triton_kernels_take_every_form(name):
    """The same forms through the Triton kernels (float32; under the interpreter on the CPU)."""
    q, k, v, kw = _case(name, torch.float32, requires_grad=True)
    if "attn_mask" in kw and kw["attn_mask"].is_floating_point():
        kw["attn_mask"] = kw["attn_mask"].float()
    want = torch_sdpa(q, k, v, **kw)
    with fastattn.use_backend("triton"):
        got = fastattn.scaled_dot_product_attention(q, k, v, **kw)
    assert got.shape == want.shape
    assert_rel(got, want, 1e-5)
    if name in ("size1_batch", "gqa_k2_v1", "5d_kv_broadcast_outer0", "q3d_kv4d_batch_broadcast"):
        g = randn(*want.shape, seed=5, device=DEV)
        with fastattn.use_backend("triton"):
            gg = torch.autograd.grad(fastattn.scaled_dot_product_attention(q, k, v, **kw), (q, k, v), g)
        for a, w in zip(gg, torch.autograd.grad(want, (q, k, v), g)):
            assert_rel(a, w, 1e-5)


@pytest.mark.parametrize("name", [n for n in FORMS if "mask" not in n and "causal" not in n])
def test_views_never_copy_q_k_v(name):
    """The 4-D tensors handed to fastattn.attention are views of the caller's q, k, v (same storage)."""
    q, k, v, kw = _case(name, f64)
    vw = _sdpa_shapes.views(q, k, v, kw.get("enable_gqa", False))
    for t, t4 in ((q, vw.q), (k, vw.k), (v, vw.v)):
        assert t4.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
        assert t4.dim() == 4 + vw.n_prefix
    # only a broadcast over some of several outer dims (5-D here) needs the loop over leading indices
    partial = name in ("5d_kv_broadcast_outer0", "5d_kv_broadcast_outer1", "5d_crossed_broadcast")
    assert vw.n_prefix == (1 if partial else 0)


def test_plain_4d_call_skips_the_shape_normaliser(monkeypatch):
    """The common (B, H, L, E) call goes straight to fastattn.attention: no view building."""
    def boom(*a, **k):
        raise AssertionError("views() called on the plain 4-D path")
    monkeypatch.setattr(_sdpa_shapes, "views", boom)
    q, k = randn(2, 4, 5, 8, dtype=f64, seed=1), randn(2, 2, 6, 8, dtype=f64, seed=2)
    for kw in (dict(), dict(is_causal=True), dict(attn_mask=torch.rand(2, 1, 1, 5) > 0.2)):
        assert_rel(fastattn.scaled_dot_product_attention(q, q, q, **kw),
                   torch_sdpa(q, q, q, **kw), 1e-12)
    assert_rel(fastattn.scaled_dot_product_attention(q, k, k, enable_gqa=True),
               torch_sdpa(q, k, k, enable_gqa=True), 1e-12)


BAD = {
    "query_1d": ((8,), (6, 8), (6, 8), {}),
    "heads_4_vs_2_without_gqa": ((2, 4, 3, 8), (2, 2, 6, 8), (2, 2, 6, 8), {}),
    "gqa_heads_not_dividing": ((2, 4, 3, 8), (2, 3, 6, 8), (2, 3, 6, 8), dict(enable_gqa=True)),
    "batch_dims_do_not_broadcast": ((2, 4, 3, 8), (3, 4, 6, 8), (3, 4, 6, 8), {}),
    "value_length_unlike_key": ((2, 4, 3, 8), (2, 4, 6, 8), (2, 4, 5, 8), {}),
    "key_dim_unlike_query": ((2, 4, 3, 8), (2, 4, 6, 7), (2, 4, 6, 8), {}),
    "mask_enlarges_scores": ((2, 4, 3, 8), (2, 4, 6, 8), (2, 4, 6, 8),
                             dict(attn_mask=torch.ones(3, 2, 4, 3, 6, dtype=torch.bool))),
    "mask_does_not_broadcast": ((2, 4, 3, 8), (2, 4, 6, 8), (2, 4, 6, 8),
                                dict(attn_mask=torch.ones(4, 6, dtype=torch.bool))),
    "integer_mask": ((2, 4, 3, 8), (2, 4, 6, 8), (2, 4, 6, 8),
                     dict(attn_mask=torch.zeros(3, 6, dtype=torch.int64))),
}


@pytest.mark.parametrize("name", BAD)
def test_errors_where_pytorch_errs(name):
    sq, sk, sv, kw = BAD[name]
    q, k, v = randn(*sq, dtype=f64, seed=1), randn(*sk, dtype=f64, seed=2), randn(*sv, dtype=f64, seed=3)
    with pytest.raises(Exception):
        torch_sdpa(q, k, v, **kw)
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        fastattn.scaled_dot_product_attention(q, k, v, **kw)
    if isinstance(info.value, _sdpa_shapes.SdpaShapeError):  # catchable as PyTorch's RuntimeError too
        assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)


def test_enable_gqa_hint_in_the_error():
    q, k = randn(1, 4, 3, 8), randn(1, 2, 3, 8)
    with pytest.raises(RuntimeError, match="enable_gqa"):
        fastattn.scaled_dot_product_attention(q, k, k)


def test_kv_heads_unlike_each_other_under_gqa_go_to_pytorch(monkeypatch):
    """enable_gqa with key and value of different head counts, neither 1: the one form the kernels cannot read
    without repeating K/V; it is handed to PyTorch's SDPA."""
    q, k = randn(2, 4, 3, 8, dtype=f64, seed=1), randn(2, 2, 6, 8, dtype=f64, seed=2)
    v = randn(2, 4, 6, 8, dtype=f64, seed=3)
    assert _sdpa_shapes.views(q, k, v, True) is None
    calls = []

    def counted(*a, **kw):
        calls.append(1)
        return F.scaled_dot_product_attention(*a, **kw)

    monkeypatch.setattr(attn_ops, "_torch_sdpa", counted)
    out = fastattn.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert calls == [1]
    assert_rel(out, torch_sdpa(q, k, v, enable_gqa=True), 1e-12)
