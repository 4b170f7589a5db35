"""fastattn.nn.MultiheadAttention against torch.nn.MultiheadAttention: same weights, same outputs and gradients."""
import pytest
import torch

import fastattn
import fastattn.nn
from _utils import assert_rel, randn

E, H = 24, 3


def _pair(seed=0, **kw):
    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(E, H, **kw)
    if kw.get("add_bias_kv"):  # torch initialises them with normal noise already; make them distinctive
        with torch.no_grad():
            ref.bias_k.normal_()
            ref.bias_v.normal_()
    with torch.no_grad():  # torch zeroes the in/out biases: randomise them so that they are tested
        for name, p in ref.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    return ref.eval(), fastattn.nn.MultiheadAttention.from_torch(ref, backend="torch")


def _inputs(N, L, S, batch_first, kdim=E, vdim=E, seed=1):
    q = randn(N, L, E, seed=seed)
    k = randn(N, S, kdim, seed=seed + 1)
    v = randn(N, S, vdim, seed=seed + 2)
    if not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    return q, k, v


def _kpm(N, S, kind):
    """PyTorch convention: True / -inf = ignore. Every row keeps at least one key."""
    lengths = torch.tensor([S, max(1, S - 3), 2, S - 1][:N])
    pad = torch.arange(S).view(1, S) >= lengths.view(N, 1)
    return pad if kind == "bool" else torch.zeros(N, S).masked_fill(pad, float("-inf"))


def _attn_mask(L, S, kind, N=None):
    shape = (L, S) if N is None else (N * H, L, S)
    g = torch.Generator().manual_seed(5)
    m = torch.rand(shape, generator=g) < 0.3
    m[..., 0] = False  # every query keeps key 0
    if kind == "bool":
        return m
    return torch.randn(shape, generator=g).masked_fill(m, float("-inf"))


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("masks", ["none", "kpm_bool", "kpm_float", "attn_bool", "attn_float_3d", "both"])
def test_matches_torch(batch_first, masks):
    N, L, S = 3, 5, 7
    ref, ours = _pair(batch_first=batch_first)
    q, k, v = _inputs(N, L, S, batch_first)
    kw = {}
    if masks in ("kpm_bool", "both"):
        kw["key_padding_mask"] = _kpm(N, S, "bool")
    if masks == "kpm_float":
        kw["key_padding_mask"] = _kpm(N, S, "float")
    if masks in ("attn_bool", "both"):
        kw["attn_mask"] = _attn_mask(L, S, "bool")
    if masks == "attn_float_3d":
        kw["attn_mask"] = _attn_mask(L, S, "float", N=N)
    want, _ = ref(q, k, v, need_weights=False, **kw)
    got, w = ours(q, k, v, need_weights=False, **kw)
    assert w is None
    assert got.shape == want.shape
    assert_rel(got, want, 1e-5)


@pytest.mark.parametrize("option", ["no_bias", "add_bias_kv", "add_zero_attn", "kdim_vdim"])
def test_constructor_options(option):
    N, L, S = 2, 4, 6
    kw = {"no_bias": dict(bias=False), "add_bias_kv": dict(add_bias_kv=True),
          "add_zero_attn": dict(add_zero_attn=True), "kdim_vdim": dict(kdim=10, vdim=14)}[option]
    ref, ours = _pair(batch_first=True, **kw)
    q, k, v = _inputs(N, L, S, True, kdim=kw.get("kdim", E), vdim=kw.get("vdim", E))
    kpm = _kpm(N, S, "bool")
    am = _attn_mask(L, S, "bool")
    want, _ = ref(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)
    got, _ = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)
    assert_rel(got, want, 1e-5)


@pytest.mark.parametrize("case", ["causal", "causal+kpm", "cross_L<S"])
def test_is_causal_hint(case):
    """is_causal hints that attn_mask is the causal mask; PyTorch aligns it top-left (query i sees keys j <= i)."""
    N, L = 2, 6
    S = L + 3 if case == "cross_L<S" else L
    ref, ours = _pair(batch_first=True)
    x, kv = randn(N, L, E, seed=3), randn(N, S, E, seed=4)
    if S == L:
        kv = x
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)               # True = may not attend
    kpm = _kpm(N, S, "bool") if case == "causal+kpm" else None
    want, _ = ref(x, kv, kv, attn_mask=causal, is_causal=True, key_padding_mask=kpm, need_weights=False)
    got, _ = ours(x, kv, kv, attn_mask=causal, is_causal=True, key_padding_mask=kpm, need_weights=False)
    assert_rel(got, want, 1e-5)
    with pytest.raises(RuntimeError, match="is_causal"):
        ours(x, x, x, is_causal=True, need_weights=False)


def test_unbatched():
    ref, ours = _pair()
    q, k = randn(5, E, seed=1), randn(7, E, seed=2)
    kpm = torch.tensor([False] * 5 + [True] * 2)
    want, _ = ref(q, k, k, key_padding_mask=kpm, need_weights=False)
    got, _ = ours(q, k, k, key_padding_mask=kpm, need_weights=False)
    assert got.shape == (5, E)
    assert_rel(got, want, 1e-5)


def test_gradients_match():
    N, L, S = 2, 5, 6
    ref, ours = _pair(batch_first=True)
    q, k, v = (t.requires_grad_() for t in _inputs(N, L, S, True))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    kpm = _kpm(N, S, "bool")
    ref(q, k, v, key_padding_mask=kpm, need_weights=False)[0].square().sum().backward()
    ours(q2, k2, v2, key_padding_mask=kpm, need_weights=False)[0].square().sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert_rel(b.grad, a.grad, 1e-5, "input grad")
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        assert_rel(b.grad, a.grad, 1e-5, f"grad of {name}")


def test_need_weights_falls_back_to_torch():
    ref, ours = _pair(batch_first=True)
    q, k, v = _inputs(2, 4, 5, True)
    want, want_w = ref(q, k, v)
    with pytest.warns(UserWarning, match="need_weights"):
        got, got_w = ours(q, k, v)
    assert_rel(got, want, 1e-6)
    assert_rel(got_w, want_w, 1e-6)


def test_from_torch_keeps_state_and_mode():
    ref = torch.nn.MultiheadAttention(E, H, dropout=0.1, batch_first=True, dtype=torch.float64).train()
    ours = fastattn.nn.MultiheadAttention.from_torch(ref)
    assert isinstance(ours, torch.nn.MultiheadAttention)
    assert ours.training and ours.batch_first and ours.dropout == 0.1 and ours.in_proj_weight.dtype == torch.float64
    for (n1, a), (n2, b) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b)
    with pytest.raises(TypeError):
        fastattn.nn.MultiheadAttention.from_torch(torch.nn.Linear(2, 2))


def test_training_dropout_runs():
    torch.manual_seed(0)
    m = fastattn.nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True).train()
    x = randn(2, 5, E, requires_grad=True)
    y, _ = m(x, x, x, need_weights=False)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_training_dropout_is_fastattns_reproducible_and_off_in_eval():
    """Dropout in training runs in fastattn.attention (its stream, reproducible under torch.manual_seed); eval
    mode, or dropout 0, gives PyTorch's result."""
    m = fastattn.nn.MultiheadAttention(E, H, dropout=0.3, batch_first=True, dtype=torch.float64).train()
    x = randn(2, 5, E, dtype=torch.float64)
    outs = []
    for _ in range(2):
        torch.manual_seed(4)
        outs.append(m(x, x, x, need_weights=False)[0])
    assert torch.equal(outs[0], outs[1])
    ref = torch.nn.MultiheadAttention(E, H, dropout=0.3, batch_first=True, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    m.eval(), ref.eval()
    want = ref(x, x, x, need_weights=False)[0]
    assert not torch.equal(outs[0], want)
    assert_rel(m(x, x, x, need_weights=False)[0], want, 1e-12)


def test_inside_transformer_layer():
    """Swapped into nn.TransformerEncoderLayer (training mode, so torch's fused fast path is off)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(E, H, dim_feedforward=32, dropout=0.0, batch_first=True).train()
    x = randn(2, 6, E, seed=4)
    kpm = _kpm(2, 6, "bool")
    want = layer(x, src_key_padding_mask=kpm)
    layer.self_attn = fastattn.nn.MultiheadAttention.from_torch(layer.self_attn, backend="torch")
    got = layer(x, src_key_padding_mask=kpm)
    assert_rel(got, want, 1e-5)


@pytest.mark.triton
def test_triton_backend_small():
    dev = "cuda" if torch.cuda.is_available() else "cpu"   # the interpreter on the CPU (tests/conftest.py)
    ref, _ = _pair(batch_first=True)
    ref = ref.to(dev)
    ours = fastattn.nn.MultiheadAttention.from_torch(ref, backend="triton")
    q, k, v = (t.to(dev) for t in _inputs(2, 5, 7, True))
    kpm = _kpm(2, 7, "bool").to(dev)
    want, _ = ref(q, k, v, key_padding_mask=kpm, need_weights=False)
    got, _ = ours(q, k, v, key_padding_mask=kpm, need_weights=False)
    assert_rel(got, want, 1e-4)
