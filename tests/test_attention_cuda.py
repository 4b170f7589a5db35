"""CUDA C++ attention kernels (csrc/attention/) against the float64 reference, through the public API
(backend="cuda") and fastattn._cuda's launchers.

Without a GPU the kernels run in the emulated build (FASTATTN_CUDA_EMULATE=1, set by conftest): the same csrc
sources compiled for the CPU, each CUDA thread a fiber, the tensor-core primitives emulated by their PTX fragment
layouts. Emulation is slow, so the cases here are tiny and odd-sized (S <= 80, two cases with 140-150 keys so
that a pipeline stage is refilled, D in {32, 64} and one case of each larger head dim; more cases are marked
slow); outputs are filled with NaN by the emulated binding before the kernel runs (poisoned), so an element the
kernel fails to write fails the test. The gpu-marked cases are larger and hold the kernels to
FlashAttention's rule (error <= 2x PyTorch's own low-precision error against float64).
"""
import math

import pytest
import torch

import fastattn
from fastattn import _backend, _cuda, reference
from fastattn.ops import attention as attn_ops
from _utils import HAS_GPU, REL_TOL, assert_rel, lowp_attention, randn, rel_err, same_bits_over_schedules

pytestmark = pytest.mark.cuda_kernel

EMULATED = _backend.cuda_emulated()
DEV = "cpu" if EMULATED else "cuda"
LOWP = (torch.float16, torch.bfloat16)
DT_IDS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _inputs(b, hq, hkv, sq, sk, d, dtype, seed=0, bshd=False):
    """q (B, Hq, Sq, D), k, v (B, Hkv, Sk, D); with bshd, (B, S, H, D) tensors transposed: strided views."""
    def make(h, s, sd):
        if bshd:
            return randn(b, s, h, d, dtype=dtype, device=DEV, seed=sd).transpose(1, 2)
        return randn(b, h, s, d, dtype=dtype, device=DEV, seed=sd)
    return make(hq, sq, seed), make(hkv, sk, seed + 1), make(hkv, sk, seed + 2)


def _ref(q, k, v, *, causal, scale, bias=None, kpm=None):
    f = lambda t: None if t is None else t.double()  # noqa: E731
    return reference.attention(f(q), f(k), f(v), causal=causal, scale=scale, bias=f(bias), key_padding_mask=kpm)


def _assert_lse(got, want, tol=2e-3):
    """lse: -inf exactly where the reference has it (rows with nothing to attend to), close elsewhere."""
    want = want.to(got.device)
    empty = torch.isneginf(want)
    assert torch.equal(torch.isneginf(got), empty), "lse: -inf rows differ from the reference"
    assert_rel(got.masked_fill(empty, 0.0), want.masked_fill(empty, 0.0), tol, "lse")


def _check_out(out, ref, lowp, dtype):
    if lowp is None:
        assert_rel(out, ref, REL_TOL[dtype], "out")
        return
    budget = 2.0 * rel_err(lowp, ref) + REL_TOL[dtype] / 10
    assert_rel(out, ref, budget, "out (FlashAttention rule, 2x PyTorch's low-precision error)")


def _run_fwd(b, hq, hkv, sq, sk, d, dtype, *, causal=False, scale=None, bias_shape=None, bias_dtype=None, kpm=None,
             bshd=False, seed=0):
    q, k, v = _inputs(b, hq, hkv, sq, sk, d, dtype, seed=seed, bshd=bshd)
    bias = None
    if bias_shape is not None:
        bias = randn(*bias_shape, dtype=bias_dtype or dtype, device=DEV, seed=seed + 7)
    scale_v = 1.0 / math.sqrt(d) if scale is None else scale
    out, lse = fastattn.attention(q, k, v, causal=causal, scale=scale, bias=bias, key_padding_mask=kpm,
                                  return_lse=True, backend="cuda")
    assert out.shape == (b, hq, sq, d) and out.dtype == dtype and out.device.type == DEV
    assert lse.shape == (b, hq, sq) and lse.dtype == torch.float32
    ref_out, ref_lse = _ref(q, k, v, causal=causal, scale=scale_v, bias=bias, kpm=kpm)
    lowp = None
    if HAS_GPU and not EMULATED:
        lowp = lowp_attention(q, k, v, causal=causal, scale=scale_v, bias=bias, kpm=kpm)
    _check_out(out, ref_out, lowp, dtype)
    _assert_lse(lse, ref_lse)
    return out, lse


# ----------------------------------------------------------------------------------------------------------
# Forward: tiny odd sizes (emulated on the CPU; also run on a GPU)
# ----------------------------------------------------------------------------------------------------------

# (B, Hq, Hkv, Sq, Sk, D, causal): GQA, MQA, Sq != Sk both ways, causal rows that see no key (Sq > Sk), several
# query tiles (64 rows) and key blocks (64 keys, 32 at D = 256), ragged edges, more key blocks than stages.
CASES = {
    "mha-sq5-sk37-d32": (2, 2, 2, 5, 37, 32, False),
    "gqa4:2-causal-sq17<sk70-d64": (1, 4, 2, 17, 70, 64, True),
    "mqa3:1-causal-sq75>sk29-d32": (1, 3, 1, 75, 29, 32, True),
    "gqa4:2-sq66>sk20-d64": (1, 4, 2, 66, 20, 64, False),
    "causal-sq1-sk1-d64": (2, 1, 1, 1, 1, 64, True),
    "causal-sq80-sk80-d32": (1, 1, 1, 80, 80, 32, True),
    # 3 key blocks: the 2-stage pipeline refills a stage (a missing barrier before the refill shows here)
    "gqa2:1-sq9-sk150-d32": (1, 2, 1, 9, 150, 32, False),
    "causal-sq66-sk140-d32": (1, 1, 1, 66, 140, 32, True),
}


@pytest.mark.parametrize("dtype", LOWP, ids=DT_IDS.get)
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_forward(case, dtype):
    b, hq, hkv, sq, sk, d, causal = CASES[case]
    out, lse = _run_fwd(b, hq, hkv, sq, sk, d, dtype, causal=causal, seed=sq + sk)
    if causal and sq > sk:  # rows i < Sq - Sk see no key: exactly zero, lse -inf
        assert (out[:, :, : sq - sk] == 0).all() and torch.isneginf(lse[:, :, : sq - sk]).all()


@pytest.mark.parametrize("d,causal,dtype", [(96, True, torch.float16), (128, False, torch.bfloat16),
                                            (128, True, torch.float16), (256, True, torch.bfloat16)],
                         ids=["d96-causal-fp16", "d128-bf16", "d128-causal-fp16", "d256-causal-bf16"])
def test_forward_head_dims(d, causal, dtype):
    _run_fwd(1, 2, 1, 19, 41, d, dtype, causal=causal, seed=d)


@pytest.mark.parametrize("bias_shape", ["1,H,Sq,Sk", "B,1,1,Sk", "1,1,Sq,Sk", "B,H,Sq,Sk", "B,H,1,Sk"], ids=str)
def test_bias_broadcast(bias_shape):
    b, hq, hkv, sq, sk, d = 2, 4, 2, 11, 21, 32
    sizes = {"B": b, "H": hq, "Sq": sq, "Sk": sk, "1": 1}
    shape = tuple(sizes[s] for s in bias_shape.split(","))
    _run_fwd(b, hq, hkv, sq, sk, d, torch.float16, causal=bias_shape.startswith("B"), bias_shape=shape, seed=11)


@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["f32", "bf16", "f64"])
def test_bias_dtypes(bias_dtype):
    """A bias of another float dtype than q: read as it is (fp32 / fp16 / bf16), float64 converted to fp32."""
    _run_fwd(1, 2, 2, 9, 13, 32, torch.float16, bias_shape=(1, 2, 9, 13), bias_dtype=bias_dtype, seed=12)


def test_bias_expanded_view_stride0():
    """An explicitly expanded bias (strides 0 along B, H and Sq) through the launcher."""
    q, k, v = _inputs(2, 2, 1, 7, 30, 32, torch.bfloat16, seed=14)
    bias = randn(1, 1, 1, 30, device=DEV, seed=15).expand(2, 2, 7, 30)
    assert bias.stride()[:3] == (0, 0, 0)
    out, lse = _cuda.attention_fwd(q, k, v, bias, None, False, 0.3)
    ref_out, ref_lse = _ref(q, k, v, causal=False, scale=0.3, bias=bias)
    assert_rel(out, ref_out, REL_TOL[torch.bfloat16])
    _assert_lse(lse, ref_lse)


def test_key_padding_mask_with_fully_padded_row():
    b, hq, hkv, sq, sk, d = 3, 2, 1, 9, 70, 32
    kpm = torch.rand(b, sk, generator=torch.Generator().manual_seed(0)) > 0.4
    kpm[1] = False  # batch row 1: every key is padding
    kpm = kpm.to(DEV)
    out, lse = _run_fwd(b, hq, hkv, sq, sk, d, torch.float16, kpm=kpm, bias_shape=(1, hq, sq, sk), seed=13)
    assert (out[1] == 0).all() and torch.isneginf(lse[1]).all()


def test_minus_inf_bias_row_gives_zeros():
    q, k, v = _inputs(1, 2, 2, 6, 11, 32, torch.float16, seed=16)
    bias = torch.zeros(1, 1, 6, 11, device=DEV)
    bias[0, 0, 3] = float("-inf")
    out, lse = fastattn.attention(q, k, v, bias=bias, return_lse=True, backend="cuda")
    ref_out, ref_lse = _ref(q, k, v, causal=False, scale=1 / math.sqrt(32), bias=bias)
    assert (out[:, :, 3] == 0).all() and torch.isneginf(lse[:, :, 3]).all()
    assert_rel(out, ref_out, REL_TOL[torch.float16])
    _assert_lse(lse, ref_lse)


def test_custom_scale_bf16_with_everything():
    kpm = torch.ones(2, 29, dtype=torch.bool, device=DEV)
    kpm[0, 20:] = False
    _run_fwd(2, 4, 2, 7, 29, 64, torch.bfloat16, causal=True, scale=0.37, bias_shape=(2, 1, 1, 29), kpm=kpm, seed=17)


@pytest.mark.parametrize("dtype", LOWP, ids=DT_IDS.get)
def test_noncontiguous_bshd_inputs(dtype):
    """(B, S, H, D) tensors viewed as (B, H, S, D): read in place (no copy) through strides."""
    q, k, v = _inputs(2, 4, 2, 13, 18, 32, dtype, seed=19, bshd=True)
    assert not q.is_contiguous() and _cuda._aligned(q) is q and _cuda._aligned(k) is k
    _run_fwd(2, 4, 2, 13, 18, 32, dtype, causal=True, bshd=True, bias_shape=(1, 4, 13, 18), seed=19)


def test_unaligned_views_are_copied():
    """A view whose row stride is not a multiple of 8 elements, or a misaligned base: copied, still right."""
    base = randn(1, 2, 10, 40, dtype=torch.float16, device=DEV, seed=23)
    q = base[..., 3:35]  # D = 32, address offset 6 bytes, row stride 40
    k = randn(1, 2, 12, 33, dtype=torch.float16, device=DEV, seed=24)[..., :32]  # row stride 33
    v = randn(1, 2, 12, 32, dtype=torch.float16, device=DEV, seed=25)
    assert _cuda._aligned(q) is not q and _cuda._aligned(k) is not k and _cuda._aligned(v) is v
    out, lse = _cuda.attention_fwd(q, k, v, None, None, True, 0.2)
    ref_out, ref_lse = _ref(q, k, v, causal=True, scale=0.2)
    assert_rel(out, ref_out, REL_TOL[torch.float16])
    _assert_lse(lse, ref_lse)


def test_nan_in_nan_out_and_masked_nan_does_not_leak():
    q, k, v = _inputs(1, 2, 1, 9, 20, 32, torch.float16, seed=29)
    q[0, 0, 2] = float("nan")    # one query row: that row only becomes NaN
    k[0, 0, 19] = float("nan")   # the last key: causal rows that cannot see it stay finite
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True, backend="cuda")
    ref_out, ref_lse = _ref(q, k, v, causal=True, scale=1 / math.sqrt(32))
    assert torch.isnan(out[0, 0, 2]).all() and torch.isnan(out[0, :, 8]).all()
    assert torch.isfinite(out[0, 1, :8]).all()
    assert_rel(out, ref_out, REL_TOL[torch.float16])  # rel_err also demands the same NaN positions
    assert torch.isnan(lse[0, 0, 2]) and torch.isnan(lse[0, :, 8]).all()


def test_empty():
    for b, sq, sk in ((0, 4, 5), (1, 0, 5), (1, 4, 0)):
        q, k, v = _inputs(b, 2, 1, sq, sk, 32, torch.float16)
        out, lse = fastattn.attention(q, k, v, return_lse=True, backend="cuda")
        assert out.shape == (b, 2, sq, 32) and lse.shape == (b, 2, sq)
        assert (out == 0).all() and torch.isneginf(lse).all()


def test_unsupported_reasons_and_auto():
    """Calls the kernels cannot take get a reason from the probe (metadata only), so "auto" moves on and
    backend="cuda" raises BackendUnavailable naming it."""
    q, k, v = _inputs(1, 2, 1, 4, 5, 32, torch.float16)
    assert _cuda.unsupported_attention(q, k, v, None, None, False) is None
    assert "float32" in _cuda.unsupported_attention(q.float(), k.float(), v.float(), None, None, False)
    q48 = torch.zeros(1, 2, 4, 48, dtype=torch.float16, device=DEV)
    assert "head dim 48" in _cuda.unsupported_attention(q48, q48, q48, None, None, False)
    with pytest.raises(fastattn.BackendUnavailable, match="float32"):
        fastattn.attention(q.float(), k.float(), v.float(), backend="cuda")
    with pytest.raises(fastattn.BackendUnavailable, match="head dim 48"):
        fastattn.attention(q48, q48, q48, backend="cuda")
    assert "head dim" in _cuda.unsupported_attention(q48, q48, q48, None, None, False)


def test_binding_rejects_bad_inputs():
    q, k, v = _inputs(1, 2, 1, 4, 5, 32, torch.float16)
    op = torch.ops.fastattn.attn_fwd_cuda
    with pytest.raises(RuntimeError, match="head dim 48"):
        z = torch.zeros(1, 2, 4, 48, dtype=torch.float16, device=DEV)
        op(z, z, z, None, None, False, 1.0)
    with pytest.raises(RuntimeError, match="k's dtype|q's dtype"):
        op(q, k.bfloat16(), v, None, None, False, 1.0)
    with pytest.raises(RuntimeError, match="stride 1 along D"):
        op(q, randn(1, 1, 5, 33, dtype=torch.float16, device=DEV)[..., :32], v, None, None, False, 1.0)
    with pytest.raises(RuntimeError, match="does not broadcast"):
        op(q, k, v, torch.zeros(1, 3, 4, 5, device=DEV), None, False, 1.0)


def test_opcheck_attn_fwd_cuda():
    q, k, v = _inputs(1, 2, 1, 4, 5, 32, torch.float16, seed=37)
    torch.library.opcheck(torch.ops.fastattn.attn_fwd_cuda.default, (q, k, v, None, None, True, 0.5),
                          test_utils=("test_schema", "test_faketensor"))


# ----------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------

def _f64(t):
    if t is None or not t.is_floating_point():
        return t
    return t.detach().double().requires_grad_(t.requires_grad)


def _run_bwd(b, hq, hkv, sq, sk, d, dtype, *, causal=False, scale=None, bias_shape=None, kpm=None, bshd=False,
             seed=0):
    """Forward + backward through fastattn.attention(backend="cuda") against float64 autograd of the reference.
    Gradient budget: FlashAttention's rule, 3x the error of PyTorch's own attention computed in the input dtype
    (on the CPU too: P and dS are rounded to fp16/bf16 before their products, as on the GPU), plus a floor."""
    q, k, v = _inputs(b, hq, hkv, sq, sk, d, dtype, seed=seed, bshd=bshd)
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    bias = None
    if bias_shape is not None:
        bias = randn(*bias_shape, dtype=dtype, device=DEV, seed=seed + 7, requires_grad=True)
    scale_v = 1.0 / math.sqrt(d) if scale is None else scale
    out = fastattn.attention(q, k, v, causal=causal, scale=scale, bias=bias, key_padding_mask=kpm, backend="cuda")
    dout = randn(b, hq, sq, d, dtype=dtype, device=DEV, seed=seed + 9)
    leaves = [t for t in (q, k, v, bias) if t is not None]
    got = torch.autograd.grad(out, leaves, dout)
    r64 = [_f64(t) for t in leaves]
    ref_out, _ = reference.attention(*r64[:3], causal=causal, scale=scale_v, bias=r64[3] if bias is not None else None,
                                     key_padding_mask=kpm)
    want = torch.autograd.grad(ref_out, r64, dout.double())
    lp = [t.detach().requires_grad_(True) for t in leaves]
    lowp_out = lowp_attention(*lp[:3], causal=causal, scale=scale_v, bias=lp[3] if bias is not None else None,
                               kpm=kpm)
    lowp = torch.autograd.grad(lowp_out, lp, dout)
    for name, g, w, l in zip(("dq", "dk", "dv", "dbias"), got, want, lowp):
        assert g.shape == w.shape and g.dtype == dtype, name
        budget = 3.0 * rel_err(l, w) + REL_TOL[dtype] / 10
        assert_rel(g, w, budget, f"{name} (3x PyTorch {DT_IDS[dtype]} err {rel_err(l, w):.3g})")
    return got


BWD_CASES = {
    "mha-sq5-sk37-d32": (2, 2, 2, 5, 37, 32, False),
    "gqa4:2-causal-sq17<sk70-d64": (1, 4, 2, 17, 70, 64, True),
    "mqa3:1-causal-sq75>sk29-d32": (1, 3, 1, 75, 29, 32, True),
    "gqa4:2-sq66>sk20-d64": (1, 4, 2, 66, 20, 64, False),
}


@pytest.mark.parametrize("case", list(BWD_CASES), ids=str)
def test_backward(case):
    b, hq, hkv, sq, sk, d, causal = BWD_CASES[case]
    _run_bwd(b, hq, hkv, sq, sk, d, torch.float16, causal=causal, seed=3 + sq)


@pytest.mark.parametrize("d,dtype", [(32, torch.bfloat16), (96, torch.float16), (128, torch.bfloat16)],
                         ids=["d32-bf16", "d96-fp16", "d128-bf16"])
def test_backward_dtypes_head_dims(d, dtype):
    _run_bwd(1, 2, 1, 19, 41, d, dtype, causal=True, seed=d + 1)


@pytest.mark.parametrize("bias_shape", ["1,H,Sq,Sk", "B,1,1,Sk", "B,H,Sq,Sk", "B,H,1,Sk"], ids=str)
def test_dbias_broadcast(bias_shape):
    b, hq, hkv, sq, sk, d = 2, 4, 2, 11, 21, 32
    sizes = {"B": b, "H": hq, "Sq": sq, "Sk": sk, "1": 1}
    shape = tuple(sizes[s] for s in bias_shape.split(","))
    _run_bwd(b, hq, hkv, sq, sk, d, torch.float16, causal=bias_shape == "B,H,1,Sk", bias_shape=shape, seed=11)


def test_dbias_causal_with_skipped_query_blocks():
    """Causal, D = 128 (16-row query blocks in dK/dV): the key block 64.. skips queries 0..31, whose dbias must
    still be written (0), not left as the buffer's contents (NaN in the emulated build)."""
    _run_bwd(1, 2, 1, 40, 70, 128, torch.float16, causal=True, bias_shape=(1, 2, 40, 70), seed=27)


def test_backward_key_padding_bshd():
    kpm = torch.rand(2, 29, generator=torch.Generator().manual_seed(4)) > 0.3
    kpm[1] = False  # every key padded: zero gradients for that batch row
    kpm = kpm.to(DEV)
    dq, dk, dv = _run_bwd(2, 4, 2, 13, 29, 32, torch.bfloat16, kpm=kpm, bshd=True, scale=0.4, seed=21)
    assert (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()


def test_backward_is_deterministic():
    q, k, v = _inputs(2, 4, 2, 21, 70, 32, torch.float16, seed=31)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    bias = randn(2, 1, 1, 70, dtype=torch.float16, device=DEV, seed=32, requires_grad=True)
    dout = randn(2, 4, 21, 32, dtype=torch.float16, device=DEV, seed=33)

    def grads():
        out = fastattn.attention(q, k, v, causal=True, bias=bias, backend="cuda")
        return torch.autograd.grad(out, (q, k, v, bias), dout)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_backward_every_forward_case_bf16(case):
    b, hq, hkv, sq, sk, d, causal = CASES[case]
    _run_bwd(b, hq, hkv, sq, sk, d, torch.bfloat16, causal=causal, seed=5 + sk)


@pytest.mark.slow
@pytest.mark.parametrize("d", [64, 96, 128])
def test_backward_everything_slow(d):
    kpm = torch.rand(2, 83, generator=torch.Generator().manual_seed(d)) > 0.25
    kpm = kpm.to(DEV)
    _run_bwd(2, 4, 2, 70, 83, d, torch.float16, causal=True, bias_shape=(2, 4, 70, 83), kpm=kpm, bshd=True,
             seed=d + 3)


def test_backward_head_dim_256_is_refused():
    q, k, v = _inputs(1, 2, 1, 4, 5, 256, torch.float16)
    assert _cuda.unsupported_attention(q, k, v, None, None, False) is None  # forward only: fine
    q.requires_grad_(True)
    assert "backward" in _cuda.unsupported_attention(q, k, v, None, None, False)
    with pytest.raises(fastattn.BackendUnavailable, match="backward"):
        fastattn.attention(q, k, v, backend="cuda")


# ----------------------------------------------------------------------------------------------------------
# Decode
# ----------------------------------------------------------------------------------------------------------

def _decode_inputs(b, hq, hkv, smax, d, dtype, lengths, seed=0):
    q = randn(b, hq, d, dtype=dtype, device=DEV, seed=seed)
    kc = randn(b, hkv, smax, d, dtype=dtype, device=DEV, seed=seed + 1)
    vc = randn(b, hkv, smax, d, dtype=dtype, device=DEV, seed=seed + 2)
    for i, n in enumerate(lengths):  # positions past the length must never be read
        n = max(0, min(n, smax))
        kc[i, :, n:] = float("nan")
        vc[i, :, n:] = float("nan")
    return q, kc, vc, torch.tensor(lengths, dtype=torch.int32, device=DEV)


@pytest.mark.parametrize("dtype", LOWP, ids=DT_IDS.get)
@pytest.mark.parametrize("hq,hkv,d", [(4, 2, 32), (4, 1, 64), (2, 2, 32), (20, 1, 32)],
                         ids=["gqa4:2-d32", "mqa4:1-d64", "mha2-d32", "mqa20:1-two-row-tiles-d32"])
def test_decode(hq, hkv, d, dtype):
    q, kc, vc, seqlens = _decode_inputs(3, hq, hkv, 77, d, dtype, [77, 0, 40], seed=hq + hkv)
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.2)
    out = fastattn.decode_attention(q, kc, vc, seqlens, scale=0.2, backend="cuda")
    assert out.shape == q.shape and out.dtype == dtype
    assert (out[1] == 0).all()  # length 0: zeros
    assert_rel(out, want, REL_TOL[dtype])
    for splits in (1, 3):  # one CTA per (batch, KV head, tile), and several with the log-sum-exp combine
        assert_rel(_cuda.decode_attention(q, kc, vc, seqlens, 0.2, num_splits=splits), want, REL_TOL[dtype])


@pytest.mark.parametrize("d", [128, 256])
def test_decode_large_head_dims(d):
    q, kc, vc, seqlens = _decode_inputs(2, 4, 2, 45, d, torch.bfloat16, [45, 17], seed=d)
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.1)
    for splits in (1, 2):
        assert_rel(_cuda.decode_attention(q, kc, vc, seqlens, 0.1, num_splits=splits), want, REL_TOL[torch.bfloat16])


def test_decode_out_of_range_lengths_are_clamped():
    """> Smax reads the whole cache, < 0 reads nothing (zeros); nothing outside the cache is read."""
    q, kc, vc, _ = _decode_inputs(2, 4, 2, 50, 32, torch.float16, [50, 50], seed=47)
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), torch.tensor([50, 0]), scale=0.3)
    for splits in (1, 2):
        got = _cuda.decode_attention(q, kc, vc, torch.tensor([90, -3], dtype=torch.int32, device=DEV), 0.3,
                                     num_splits=splits)
        assert_rel(got, want, REL_TOL[torch.float16])


def test_decode_strided_nan_and_empty():
    # q a (B, Hq, D) view with strided heads, caches in (B, Smax, Hkv, D) memory viewed as (B, Hkv, Smax, D)
    q = randn(2, 8, 3, 32, dtype=torch.float16, device=DEV, seed=41)[:, :, 1]
    kc = randn(2, 39, 2, 32, dtype=torch.float16, device=DEV, seed=42).transpose(1, 2)
    vc = randn(2, 39, 2, 32, dtype=torch.float16, device=DEV, seed=43).transpose(1, 2)
    seqlens = torch.tensor([39, 5], dtype=torch.int32, device=DEV)
    q[0, 3, 0] = float("nan")  # NaN in -> that head's output NaN
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.25)
    got = fastattn.decode_attention(q, kc, vc, seqlens, scale=0.25, backend="cuda")
    assert torch.isnan(got[0, 3]).all() and torch.isfinite(got[1]).all()
    assert_rel(got, want, REL_TOL[torch.float16])
    assert fastattn.decode_attention(q[:0], kc[:0], vc[:0], seqlens[:0], backend="cuda").shape == (0, 8, 32)
    no_cache = fastattn.decode_attention(q, kc[:, :, :0], vc[:, :, :0], torch.zeros(2, dtype=torch.int32, device=DEV),
                                         backend="cuda")
    assert (no_cache == 0).all()


def test_decode_num_splits_heuristic():
    dev = torch.device(DEV)
    sms = _cuda._EMU_SMS if EMULATED else _cuda._sm_count(dev)
    assert _cuda.decode_num_splits(1, 8, 1, 8192, dev) > 1  # one KV head, one sequence: split over the keys
    assert _cuda.decode_num_splits(64, 32, 8, 8192, dev) == 1  # the batch fills the chip
    assert _cuda.decode_num_splits(1, 8, 1, 16, dev) == 1  # too few keys to split
    for b, hq, hkv in [(1, 32, 8), (1, 8, 1), (2, 40, 2), (3, 4, 4)]:  # one wave: at most one CTA per SM
        tiles = b * hkv * -(-(hq // hkv) // 16)
        splits = _cuda.decode_num_splits(b, hq, hkv, 1 << 20, dev)
        assert splits == max(1, min(sms // tiles, _cuda._MAX_SPLITS)), (b, hq, hkv, splits)
    assert "float32" in _cuda.unsupported_decode(torch.zeros(1, 2, 32), torch.zeros(1, 1, 4, 32),
                                                 torch.zeros(1, 1, 4, 32), torch.zeros(1, dtype=torch.int32))


def _decode_block(d):
    """Keys per pipeline block of the decode kernel (16 per key group, 4 key groups; 2 at D = 256)."""
    return 32 if d == 256 else 64


@pytest.mark.parametrize("dtype", LOWP, ids=DT_IDS.get)
@pytest.mark.parametrize("d", [32, 64, 96, 128, 256])
def test_decode_ragged_lengths_across_key_groups_and_splits(d, dtype):
    """B > 1 ragged lengths against the block of 4 key groups x 16 keys: 0 and 1 key, fewer keys than one key
    group / than the 4 groups (idle warps), one past and one short of a block, and a cache long enough that the
    pipeline refills every stage (> stages + 1 blocks). Each split count puts split edges inside sequences and
    leaves the short ones with empty splits (-inf partials). Checked per sequence against float64."""
    blk = _decode_block(d)
    stages = {32: 6, 64: 4, 96: 4, 128: 3, 256: 3}[d]
    smax = (stages + 2) * blk + 9
    lengths = [0, 1, 5, blk // 4 + 1, blk - 1, blk + 1, 2 * blk + 3, smax]
    q, kc, vc, seqlens = _decode_inputs(len(lengths), 8, 2, smax, d, dtype, lengths, seed=d + len(lengths))
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.15)
    for splits in (None, 1, 2, 3, 7):
        got = _cuda.decode_attention(q, kc, vc, seqlens, 0.15, num_splits=splits)
        assert got.shape == q.shape and got.dtype == dtype
        assert (got[0] == 0).all(), f"splits={splits}: an empty sequence gives zeros"
        for i in range(1, len(lengths)):
            assert_rel(got[i], want[i], REL_TOL[dtype], f"splits={splits}, length {lengths[i]}")


@pytest.mark.parametrize("d", [32, 128, 256])
def test_decode_nan_query_head_with_splits(d):
    """NaN in one query head reaches that head only, through the key-group merge and the split combine."""
    q, kc, vc, seqlens = _decode_inputs(2, 8, 2, 200, d, torch.bfloat16, [200, 70], seed=d + 5)
    q[0, 5, 3] = float("nan")
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.1)
    for splits in (1, 3):
        got = _cuda.decode_attention(q, kc, vc, seqlens, 0.1, num_splits=splits)
        assert torch.isnan(got[0, 5]).all() and torch.isfinite(got[0, :5]).all() and torch.isfinite(got[1]).all()
        assert_rel(got, want, REL_TOL[torch.bfloat16])


# ----------------------------------------------------------------------------------------------------------
# Races: every thread order and cp.async landing time the emulation can produce gives the same bits
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not EMULATED, reason="thread orders and copy landing times are the emulation's settings")
def test_same_bits_under_every_schedule_and_landing():
    """Forward, backward and decode over 3+ key blocks (a pipeline stage is refilled) with every warp's rows in
    use: a missing barrier or wait would make some (schedule, landing) pair differ or fail the reference."""
    q, k, v = _inputs(1, 2, 1, 66, 140, 32, torch.float16, seed=61)
    dout = randn(1, 2, 66, 32, dtype=torch.float16, device=DEV, seed=62)
    qd, kc, vc, lens = _decode_inputs(2, 4, 2, 140, 32, torch.float16, [140, 100], seed=63)

    def run():
        out, lse = _cuda.attention_fwd(q, k, v, None, None, True, 0.2)
        grads = _cuda.attention_bwd(dout, q, k, v, out, lse, None, None, True, 0.2, False)[:3]
        return (out, lse, *grads, _cuda.decode_attention(qd, kc, vc, lens, 0.2, num_splits=1))
    first = same_bits_over_schedules(run)
    ref_out, ref_lse = _ref(q, k, v, causal=True, scale=0.2)
    assert_rel(first[0], ref_out, REL_TOL[torch.float16])
    _assert_lse(first[1], ref_lse)
    want = reference.decode_attention(qd.double(), kc.double(), vc.double(), lens, scale=0.2)
    assert_rel(first[5], want, REL_TOL[torch.float16])


@pytest.mark.skipif(not EMULATED, reason="thread orders and copy landing times are the emulation's settings")
def test_decode_same_bits_under_every_schedule_and_landing():
    """Decode with every pipeline stage refilled (> stages + 1 blocks per split) at D = 32 (6 stages) and
    D = 128 (3 stages), ragged lengths, one and several splits: a missing wait or barrier (a stage refilled while
    a warp still reads it, a block read before it lands, the key-group merge reading a warp's partial early)
    would make some (schedule, landing) pair differ or fail the reference."""
    cases = [_decode_inputs(2, 8, 2, 8 * 64 + 5, 32, torch.float16, [8 * 64 + 5, 3 * 64 - 7], seed=71),
             _decode_inputs(2, 4, 1, 5 * 64 + 3, 128, torch.bfloat16, [5 * 64 + 3, 64 + 1], seed=72)]
    first = same_bits_over_schedules(lambda: [_cuda.decode_attention(q, kc, vc, lens, 0.2, num_splits=splits)
                                              for q, kc, vc, lens in cases for splits in (1, 2)])
    for i, (q, kc, vc, lens) in enumerate(cases):
        want = reference.decode_attention(q.double(), kc.double(), vc.double(), lens, scale=0.2)
        for j in range(2):
            assert_rel(first[2 * i + j], want, REL_TOL[q.dtype])


# ----------------------------------------------------------------------------------------------------------
# Attention dropout: the kernels draw fastattn.reference.dropout_keep's stream (common/philox.cuh), the
# backward regenerates it
# ----------------------------------------------------------------------------------------------------------

def _seed_of(call_seed):
    """The (seed, offset) fastattn.attention draws after torch.manual_seed(call_seed)."""
    torch.manual_seed(call_seed)
    return attn_ops.dropout_seed()


def _visible(b, hq, sq, sk, causal, kpm):
    m = reference.attention_mask(sq, sk, causal, kpm, torch.device(DEV))
    return torch.ones(b, hq, sq, sk, dtype=torch.bool) if m is None else m.expand(b, hq, sq, sk).cpu()


def _run_dropout(b, hq, hkv, sq, sk, d, dtype, p, *, causal=False, scale=None, bias_shape=None, kpm=None,
                 bshd=False, seed=0, call_seed=1234):
    """fastattn.attention(backend="cuda", dropout_p=p) forward and backward after torch.manual_seed(call_seed)
    against the float64 reference on the same (seed, offset): out within FlashAttention's rule (2x the error
    of PyTorch's attention in the input dtype with the same mask), gradients 3x, lse that of the undropped
    softmax. Returns (out, grads, seed, offset)."""
    q, k, v = _inputs(b, hq, hkv, sq, sk, d, dtype, seed=seed, bshd=bshd)
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    bias = None
    if bias_shape is not None:
        bias = randn(*bias_shape, dtype=dtype, device=DEV, seed=seed + 7, requires_grad=True)
    scale_v = 1.0 / math.sqrt(d) if scale is None else scale
    torch.manual_seed(call_seed)
    out, lse = fastattn.attention(q, k, v, causal=causal, scale=scale, bias=bias, key_padding_mask=kpm,
                                  dropout_p=p, return_lse=True, backend="cuda")
    rseed, roff = _seed_of(call_seed)
    dout = randn(b, hq, sq, d, dtype=dtype, device=DEV, seed=seed + 9)
    leaves = [t for t in (q, k, v, bias) if t is not None]
    got = torch.autograd.grad(out, leaves, dout)

    r64 = [_f64(t) for t in leaves]
    ref_out, ref_lse = reference.attention(*r64[:3], causal=causal, scale=scale_v,
                                           bias=r64[3] if bias is not None else None, key_padding_mask=kpm,
                                           dropout_p=p, seed=rseed, offset=roff)
    want = torch.autograd.grad(ref_out, r64, dout.double())
    z = reference._dropout_scale(b, hq, sq, sk, p, rseed, roff, torch.device(DEV), torch.float64)
    lp = [t.detach().requires_grad_(True) for t in leaves]
    lowp_out = lowp_attention(*lp[:3], causal=causal, scale=scale_v, bias=lp[3] if bias is not None else None,
                              kpm=kpm, dropout_factor=z)
    lowp = torch.autograd.grad(lowp_out, lp, dout)

    assert out.shape == (b, hq, sq, d) and out.dtype == dtype
    assert_rel(out, ref_out, 2.0 * rel_err(lowp_out, ref_out) + REL_TOL[dtype] / 10, "out (dropout)")
    # lse is of the undropped softmax: the reference's without dropout
    _assert_lse(lse, _ref(q.detach(), k.detach(), v.detach(), causal=causal, scale=scale_v,
                          bias=None if bias is None else bias.detach(), kpm=kpm)[1])
    _assert_lse(lse, ref_lse)
    for name, g, w, l in zip(("dq", "dk", "dv", "dbias"), got, want, lowp):
        assert g.shape == w.shape and g.dtype == dtype, name
        budget = 3.0 * rel_err(l, w) + REL_TOL[dtype] / 10
        assert_rel(g, w, budget, f"{name} (dropout; 3x PyTorch {DT_IDS[dtype]} err {rel_err(l, w):.3g})")
    # the mask matters: the same call without dropout, or with another mask, is far from this one
    other = reference.attention(*r64[:3], causal=causal, scale=scale_v,
                                bias=r64[3] if bias is not None else None, key_padding_mask=kpm,
                                dropout_p=p, seed=rseed + 1, offset=roff)[0]
    assert rel_err(out, other) > 5 * rel_err(out, ref_out), "another mask must give another result"
    return out, got, rseed, roff


# (B, Hq, Hkv, Sq, Sk, D, causal, dtype, p, bias_shape, kpm, bshd)
DROPOUT_CASES = {
    "gqa4:2-causal-sq17<sk70-d64-bias": (1, 4, 2, 17, 70, 64, True, torch.float16, 0.25, (1, 4, 17, 70), False,
                                         False),
    "mqa3:1-causal-sq75>sk29-d32-kpm": (2, 3, 1, 75, 29, 32, True, torch.bfloat16, 0.4, None, True, False),
    "mha-sq66-sk150-d32-bshd": (1, 2, 2, 66, 150, 32, False, torch.float16, 0.1, None, False, True),
    "gqa2:1-causal-sq19-sk41-d128": (1, 2, 1, 19, 41, 128, True, torch.bfloat16, 0.3, (1, 1, 19, 41), False,
                                     False),
    "mha-sq5-sk37-d96-bias-b,1,1,sk": (2, 2, 2, 5, 37, 96, False, torch.float16, 0.5, (2, 1, 1, 37), True, False),
}


@pytest.mark.parametrize("case", list(DROPOUT_CASES), ids=str)
def test_dropout_equals_reference_on_the_same_stream(case):
    """Output, lse and dq, dk, dv, dbias through the regenerated mask against the float64 reference drawing the
    same stream: GQA/MQA, causal (rows that see no key included), key padding, bias, strided inputs, head dims
    32 to 128 and sizes that are no multiple of any tile."""
    b, hq, hkv, sq, sk, d, causal, dtype, p, bias_shape, has_kpm, bshd = DROPOUT_CASES[case]
    kpm = None
    if has_kpm:
        kpm = torch.rand(b, sk, generator=torch.Generator().manual_seed(sq)) > 0.3
        kpm[:, 0] = True
        kpm = kpm.to(DEV)
    _run_dropout(b, hq, hkv, sq, sk, d, dtype, p, causal=causal, bias_shape=bias_shape, kpm=kpm, bshd=bshd,
                 seed=sq + sk)


@pytest.mark.parametrize("d,sk,causal", [(64, 64, True), (32, 150, False)], ids=["d64-sk64-causal", "d32-sk150"])
def test_dropout_mask_is_the_reference_stream_exactly(d, sk, causal):
    """Which probabilities are dropped, bit for bit: with V the one-hot rows of keys [w, w + D) (zero elsewhere)
    out[.., i, c] = P[i, w + c] z[i, w + c], zero exactly where the kernel dropped a probability (P > 0 for every
    visible key here). Windows cover every key; the mask must equal reference.dropout_keep on every visible
    entry, across query tiles (Sq = 70) and key blocks (Sk = 150)."""
    b, hq, hkv, sq, p = 2, 2, 1, 70, 0.35
    q, k, _ = _inputs(b, hq, hkv, sq, sk, d, torch.float16, seed=d + sk)
    seed, offset = _seed_of(77)
    keep = reference.dropout_keep(b, hq, sq, sk, p, seed, offset, torch.device(DEV))
    vis = _visible(b, hq, sq, sk, causal, None)
    got = torch.zeros(b, hq, sq, sk, dtype=torch.bool)
    for w in range(0, sk, d):
        n = min(d, sk - w)
        v = torch.zeros(b, hkv, sk, d, dtype=torch.float16, device=DEV)
        v[:, :, w:w + n, :n] = torch.eye(n, dtype=torch.float16, device=DEV)
        torch.manual_seed(77)
        out = fastattn.attention(q, k, v, causal=causal, scale=0.1, dropout_p=p, backend="cuda")
        got[..., w:w + n] = (out[..., :n] != 0).cpu()
        # kept entries are P / (1 - p): against the reference in float64
        ref = reference.attention(q.double(), k.double(), v.double(), causal=causal, scale=0.1, dropout_p=p,
                                  seed=seed, offset=offset)[0]
        assert_rel(out, ref, REL_TOL[torch.float16], f"window {w}")
    assert torch.equal(got & vis, keep.cpu() & vis), "the kernel's keep mask differs from reference.dropout_keep"
    assert not got[~vis].any(), "a hidden key got weight"


def test_dropout_keep_rate_within_binomial_bounds():
    """The kernel's keep rate over 2 x 2 x 64 x 64 draws (from the one-hot V as above) within 6 sigma of
    1 - p, per (batch, head) stream too."""
    b, hq, sq, sk, d, p = 2, 2, 64, 64, 64, 0.3
    q, k, _ = _inputs(b, hq, hq, sq, sk, d, torch.float16, seed=5)
    v = torch.eye(sk, dtype=torch.float16, device=DEV).expand(b, hq, sk, d).contiguous()
    torch.manual_seed(2024)
    out = fastattn.attention(q, k, v, scale=0.1, dropout_p=p, backend="cuda")
    kept = (out != 0).cpu()
    n = kept.numel()
    assert abs(int(kept.sum()) - n * (1 - p)) <= 6 * math.sqrt(n * p * (1 - p))
    per_head = kept.float().mean(dim=(2, 3))
    assert (per_head - (1 - p)).abs().max() <= 6 * math.sqrt(p * (1 - p) / (sq * sk))


def test_dropout_p0_is_the_plain_path_and_grads_follow_the_seed():
    """dropout_p = 0 (any seed) gives the bits of the call without dropout, forward and backward; with
    dropout, the same torch seed gives the same bits and another seed other ones."""
    q, k, v = _inputs(1, 2, 1, 21, 45, 32, torch.float16, seed=41)
    dout = randn(1, 2, 21, 32, dtype=torch.float16, device=DEV, seed=42)
    base = _cuda.attention_fwd(q, k, v, None, None, True, 0.3)
    zero = _cuda.attention_fwd(q, k, v, None, None, True, 0.3, 0.0, 12345, 6)
    assert all(torch.equal(a, b) for a, b in zip(base, zero))
    gb = _cuda.attention_bwd(dout, q, k, v, base[0], base[1], None, None, True, 0.3, False)[:3]
    gz = _cuda.attention_bwd(dout, q, k, v, base[0], base[1], None, None, True, 0.3, False, 0.0, 12345, 6)[:3]
    assert all(torch.equal(a, b) for a, b in zip(gb, gz))

    def run(call_seed):
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        torch.manual_seed(call_seed)
        out = fastattn.attention(qq, kk, vv, causal=True, dropout_p=0.2, backend="cuda")
        return (out, *torch.autograd.grad(out, (qq, kk, vv), dout))

    a, b, c = run(5), run(5), run(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_dropout_nearly_one_drops_everything():
    """round(p 2^16) = 2^16 (p within 2^-17 of 1): no 16-bit draw reaches the threshold, every probability
    dropped, as in the reference: out and every gradient 0, lse still that of the scores."""
    p = 1.0 - 2.0 ** -34
    q, k, v = _inputs(1, 2, 1, 9, 20, 32, torch.float16, seed=3)
    out, lse = _cuda.attention_fwd(q, k, v, None, None, False, 0.3, p, 99, 1)
    ref_out, ref_lse = reference.attention(q.double(), k.double(), v.double(), scale=0.3, dropout_p=p, seed=99,
                                           offset=1)
    assert (ref_out == 0).all() and (out == 0).all()
    _assert_lse(lse, ref_lse)
    dout = randn(1, 2, 9, 32, dtype=torch.float16, device=DEV, seed=4)
    for g in _cuda.attention_bwd(dout, q, k, v, out, lse, None, None, False, 0.3, False, p, 99, 1)[:3]:
        assert (g == 0).all()


@pytest.mark.skipif(not EMULATED, reason="thread orders are the emulation's settings")
def test_dropout_same_bits_under_every_schedule():
    """Forward and backward with dropout over several key blocks and query tiles: the same bits whatever the
    order the threads run in (no thread's mask depends on another's)."""
    q, k, v = _inputs(1, 2, 1, 66, 140, 32, torch.float16, seed=71)
    dout = randn(1, 2, 66, 32, dtype=torch.float16, device=DEV, seed=72)
    bias = randn(1, 2, 66, 140, dtype=torch.float16, device=DEV, seed=73)

    def run():
        out, lse = _cuda.attention_fwd(q, k, v, bias, None, True, 0.2, 0.3, 2 ** 61 + 5, 2 ** 31 - 1)
        grads = _cuda.attention_bwd(dout, q, k, v, out, lse, bias, None, True, 0.2, True, 0.3, 2 ** 61 + 5,
                                    2 ** 31 - 1)
        return (out, lse, *grads)
    first = same_bits_over_schedules(run, landings=("at_wait",))
    ref = reference.attention(q.double(), k.double(), v.double(), causal=True, scale=0.2, bias=bias.double(),
                              dropout_p=0.3, seed=2 ** 61 + 5, offset=2 ** 31 - 1)[0]
    assert_rel(first[0], ref, REL_TOL[torch.float16])


def test_dropout_binding_checks_and_opcheck():
    q, k, v = _inputs(1, 2, 1, 4, 5, 32, torch.float16, seed=8)
    for p in (1.0, -0.1, float("nan")):
        with pytest.raises(RuntimeError, match="dropout_p"):
            torch.ops.fastattn.attn_fwd_cuda(q, k, v, None, None, False, 1.0, p, 0, 0)
    out, lse = _cuda.attention_fwd(q, k, v, None, None, False, 1.0)
    with pytest.raises(RuntimeError, match="dropout_p"):
        torch.ops.fastattn.attn_bwd_cuda(out, q, k, v, out, lse, None, None, False, 1.0, False, 1.5, 0, 0)
    torch.library.opcheck(torch.ops.fastattn.attn_fwd_cuda.default, (q, k, v, None, None, True, 0.5, 0.2, 123, 4),
                          test_utils=("test_schema", "test_faketensor"))
    assert _cuda.unsupported_attention(q, k, v, None, None, False, dropout_p=0.1) is None


# ----------------------------------------------------------------------------------------------------------
# GPU: larger sizes, FlashAttention's rule
# ----------------------------------------------------------------------------------------------------------

GPU_SHAPES = [(113, 203), (1023, 1024), (512, 256)]


@pytest.mark.gpu
@pytest.mark.parametrize("d", [32, 64, 96, 128, 256])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sq,sk", GPU_SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("dtype", LOWP, ids=DT_IDS.get)
def test_gpu_forward(sq, sk, causal, d, dtype):
    _run_fwd(2, 4, 2, sq, sk, d, dtype, causal=causal, seed=sq + sk + d)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sq,sk", GPU_SHAPES, ids=lambda s: str(s))
def test_gpu_backward(sq, sk, causal, d):
    _run_bwd(2, 4, 2, sq, sk, d, torch.bfloat16, causal=causal, seed=sq + sk + d)


@pytest.mark.gpu
@pytest.mark.parametrize("b,smax,dtype", [(1, 8192, torch.bfloat16), (16, 1000, torch.bfloat16),
                                          (3, 333, torch.float16)], ids=["b1-8192-bf16", "b16-1000-bf16", "b3-333-fp16"])
def test_gpu_decode(b, smax, dtype):
    lengths = [smax - 7 * i for i in range(b)]
    if b > 1:
        lengths[-1] = 0
    q, kc, vc, seqlens = _decode_inputs(b, 32, 8, smax, 128, dtype, lengths, seed=b)
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.1)
    assert_rel(fastattn.decode_attention(q, kc, vc, seqlens, scale=0.1, backend="cuda"), want, REL_TOL[dtype])


@pytest.mark.gpu
def test_gpu_forward_bias_kpm_bshd():
    kpm = torch.rand(2, 300, generator=torch.Generator().manual_seed(1)) > 0.2
    kpm[1, :] = False
    kpm = kpm.to(DEV)
    _run_fwd(2, 4, 2, 257, 300, 64, torch.bfloat16, causal=True, bias_shape=(2, 4, 257, 300), kpm=kpm, seed=51)
    _run_fwd(2, 4, 2, 257, 300, 128, torch.float16, bias_shape=(2, 1, 1, 300), kpm=kpm, bshd=True, seed=52)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("sq,sk", [(113, 203), (1023, 1024)], ids=lambda s: str(s))
def test_gpu_dropout(sq, sk, d):
    """Dropout on the GPU: out and gradients against the float64 reference on the same stream (FlashAttention's
    rule with the same mask), causal GQA with a bias."""
    _run_dropout(2, 4, 2, sq, sk, d, torch.bfloat16, 0.1, causal=True, bias_shape=(1, 4, sq, sk), seed=sq + d)
