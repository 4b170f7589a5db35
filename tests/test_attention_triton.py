"""Triton attention kernels (the package fastattn/triton/attention/): forward, backward and decode against the float64
reference, through the public API (backend="triton") and the launchers directly.

Without a GPU the kernels run under TRITON_INTERPRET=1 on a tiny grid of odd sizes (seconds each). With a GPU the
same cases run compiled, plus a larger FlashAttention-like grid (marked gpu) checked with FlashAttention's rule:
our error against float64 is at most 2x (3x for gradients) the error of PyTorch's own attention computed in the
input's low precision.
"""
import math

import pytest
import torch
import triton

import fastattn
from fastattn import reference
from fastattn.ops import attention as attn_ops
from fastattn.triton import attention as tri
from _utils import HAS_GPU, REL_TOL, assert_rel, lowp_attention, randn, rel_err

pytestmark = pytest.mark.triton

DEV = "cuda" if HAS_GPU else "cpu"
LOWP = (torch.float16, torch.bfloat16)
DT_IDS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _one_config_per_kernel(request):
    """On a GPU, pin every autotuned kernel to one config that fits every head dim and dtype, so that the grid
    compiles each kernel variant once instead of benchmarking all configs for every shape bucket (tuning
    itself is tested by test_gpu_autotuned). Under the interpreter the launchers never autotune."""
    if not HAS_GPU or request.function.__name__ == "test_gpu_autotuned":
        yield
        return
    tuned = {"fwd": tri._attn_fwd_tuned, "dq": tri._attn_bwd_dq_tuned, "dkdv": tri._attn_bwd_dkdv_tuned}
    pins = {tuned[p]: ({"BLOCK_M": m, "BLOCK_N": n}, w, st) for p, (m, n, w, st) in PINNED}
    pins[tri._decode_split_tuned] = ({"BLOCK_N": 64}, 4, 2)
    saved = {kern: kern.configs for kern in pins}
    for kern, (kw, warps, stages) in pins.items():  # PINNED fit shared memory: test_every_pickable_config_fits
        kern.configs = [triton.Config(kw, num_warps=warps, num_stages=stages)]
    try:
        yield
    finally:
        for kern, configs in saved.items():
            kern.configs = configs


def _inputs(b, hq, hkv, sq, sk, d, dtype, seed=0, bshd=False, requires_grad=False, dv=None):
    """q (B, Hq, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv = dv or D); with bshd, (B, S, H, D) tensors
    transposed: strided views."""
    def make(h, s, sd, width=d):
        if bshd:
            return randn(b, s, h, width, dtype=dtype, device=DEV, seed=sd).transpose(1, 2).requires_grad_(requires_grad)
        return randn(b, h, s, width, dtype=dtype, device=DEV, seed=sd, requires_grad=requires_grad)
    return make(hq, sq, seed), make(hkv, sk, seed + 1), make(hkv, sk, seed + 2, dv or d)


def _f64(t):
    if t is None or not t.is_floating_point():
        return t
    return t.detach().double().requires_grad_(t.requires_grad)


def _ref_with_grads(q, k, v, dout, *, causal, scale, bias=None, kpm=None):
    """float64 reference out, lse and (via torch autograd through the reference) dq, dk, dv, dbias."""
    q64, k64, v64, b64 = _f64(q), _f64(k), _f64(v), _f64(bias)
    out, lse = reference.attention(q64, k64, v64, causal=causal, scale=scale, bias=b64, key_padding_mask=kpm)
    grads = [None] * 4
    if dout is not None:
        inputs = [t for t in (q64, k64, v64, b64) if t is not None and t.requires_grad]
        got = torch.autograd.grad(out, inputs, dout.double())
        it = iter(got)
        grads = [next(it) if t is not None and t.requires_grad else None for t in (q64, k64, v64, b64)]
    return out.detach(), lse.detach(), grads


def _check(what, got, ref64, lowp, dtype, grad=False):
    """Interpreted, or float32: a few units of the dtype's rounding. Compiled low precision: FlashAttention's
    rule, err(ours) <= 2x (3x for gradients) err(PyTorch in the input dtype) + a small floor."""
    base = rel_err(lowp, ref64) if lowp is not None else float("inf")
    if dtype == torch.float32 or not HAS_GPU or not math.isfinite(base):  # (a NaN baseline must not pass all)
        assert_rel(got, ref64, REL_TOL[dtype] * (2 if grad else 1), what)
        return
    mult = 3.0 if grad else 2.0
    budget = mult * base + REL_TOL[dtype] / 10
    assert_rel(got, ref64, budget, what + f" (FlashAttention rule, PyTorch {DT_IDS[dtype]} err x{mult:g})")


def _assert_lse(got, want, tol):
    """lse: -inf exactly where the reference has it (rows with nothing to attend to), close elsewhere."""
    want = want.to(got.device)
    empty = torch.isneginf(want)
    assert torch.equal(torch.isneginf(got), empty), "lse: -inf rows differ from the reference"
    assert_rel(got.masked_fill(empty, 0.0), want.masked_fill(empty, 0.0), tol, "lse")


def _run_case(b, hq, hkv, sq, sk, d, dtype, *, causal=False, scale=None, bias_shape=None, kpm=None, grads=True,
              bshd=False, seed=0, dv=None):
    """Forward (and backward) through fastattn.attention(backend="triton"), checked against float64. dv: a
    value head dim unlike D."""
    q, k, v = _inputs(b, hq, hkv, sq, sk, d, dtype, seed=seed, bshd=bshd, requires_grad=grads, dv=dv)
    dv = v.shape[-1]
    bias = None
    if bias_shape is not None:
        bias = randn(*bias_shape, dtype=dtype, device=DEV, seed=seed + 7, requires_grad=grads)
    scale_v = 1.0 / math.sqrt(d) if scale is None else scale
    out, lse = fastattn.attention(q, k, v, causal=causal, scale=scale, bias=bias, key_padding_mask=kpm,
                                  return_lse=True, backend="triton")
    assert out.shape == (b, hq, sq, dv) and out.dtype == dtype
    assert lse.shape == (b, hq, sq) and lse.dtype == torch.float32
    dout = randn(b, hq, sq, dv, dtype=dtype, device=DEV, seed=seed + 9) if grads else None
    ref_out, ref_lse, ref_grads = _ref_with_grads(q, k, v, dout, causal=causal, scale=scale_v, bias=bias, kpm=kpm)
    lowp_out, lowp_grads = None, [None] * 4
    if HAS_GPU and dtype in LOWP:
        leaves = [t.detach().requires_grad_(grads) if t is not None else None for t in (q, k, v, bias)]
        lowp_out = lowp_attention(*leaves[:3], causal=causal, scale=scale_v, bias=leaves[3], kpm=kpm)
        if grads:
            lowp_out.backward(dout)
            lowp_grads = [t.grad if t is not None else None for t in leaves]
    _check("out", out, ref_out, lowp_out, dtype)
    _assert_lse(lse, ref_lse, 1e-5 if dtype == torch.float32 else 2e-3)
    if grads:
        got = torch.autograd.grad(out, [t for t in (q, k, v, bias) if t is not None], dout)
        for name, g, r, lp in zip(("dq", "dk", "dv", "dbias"), got, ref_grads, lowp_grads):
            _check(name, g, r, lp, dtype, grad=True)
    return out, lse


# ----------------------------------------------------------------------------------------------------------
# Forward and backward: tiny odd sizes (interpreted), also run compiled on a GPU
# ----------------------------------------------------------------------------------------------------------

# (B, Hq, Hkv, Sq, Sk, D, causal): GQA, MQA, Sq != Sk both ways, causal with rows that see no key (Sq > Sk).
CASES = {
    "mha-sq5-sk37-d40": (2, 2, 2, 5, 37, 40, False),
    "gqa4:2-causal-sq17<sk37-d16": (1, 4, 2, 17, 37, 16, True),
    "mqa4:1-causal-sq37>sk17-d24": (1, 4, 1, 37, 17, 24, True),
    "gqa4:2-sq33>sk20-d80": (1, 4, 2, 33, 20, 80, False),
    "causal-sq1-sk1-d16": (2, 2, 2, 1, 1, 16, True),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=DT_IDS.get)
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_forward(case, dtype):
    b, hq, hkv, sq, sk, d, causal = CASES[case]
    out, _ = _run_case(b, hq, hkv, sq, sk, d, dtype, causal=causal, grads=False)
    if causal and sq > sk:  # rows i < Sq - Sk see no key: exactly zero
        assert (out[:, :, : sq - sk] == 0).all()


@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_backward(case):
    b, hq, hkv, sq, sk, d, causal = CASES[case]
    _run_case(b, hq, hkv, sq, sk, d, torch.float32, causal=causal, seed=3)


@pytest.mark.parametrize("dtype", LOWP, ids=DT_IDS.get)
def test_backward_low_precision(dtype):
    _run_case(1, 4, 2, 19, 23, 40, dtype, causal=True, seed=5)


@pytest.mark.parametrize("bias_shape", ["1,H,Sq,Sk", "B,1,1,Sk", "1,1,Sq,Sk", "B,H,Sq,Sk", "B,H,1,Sk"], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_bias_broadcast_and_dbias(bias_shape, causal):
    b, hq, hkv, sq, sk, d = 2, 4, 2, 11, 21, 16
    sizes = {"B": b, "H": hq, "Sq": sq, "Sk": sk, "1": 1}
    shape = tuple(sizes[s] for s in bias_shape.split(","))
    _run_case(b, hq, hkv, sq, sk, d, torch.float32, causal=causal, bias_shape=shape, seed=11)


@pytest.mark.parametrize("sq,sk,causal", [(50, 70, True), (70, 50, True), (50, 70, False)],
                         ids=["causal-sq50<sk70", "causal-sq70>sk50", "full-sq50-sk70"])
def test_backward_many_blocks(sq, sk, causal):
    """Several key blocks and query blocks per program under the interpreter's blocks (dk/dv 16 x 32): the dk/dv
    kernel's unmasked loop, its masked diagonal and tail blocks, across the GQA group in one flat loop, and the
    per-head bias-gradient rows (bias constant along Sq) written from both loops."""
    _run_case(1, 4, 2, sq, sk, 16, torch.float32, causal=causal, bias_shape=(1, 4, 1, sk), seed=sq + sk)


def test_key_padding_mask_with_fully_padded_row():
    b, hq, hkv, sq, sk, d = 3, 2, 1, 9, 21, 16
    kpm = torch.rand(b, sk, generator=torch.Generator().manual_seed(0)) > 0.4
    kpm[1] = False  # batch row 1: every key is padding
    kpm = kpm.to(DEV)
    out, lse = _run_case(b, hq, hkv, sq, sk, d, torch.float32, kpm=kpm, bias_shape=(1, hq, sq, sk), seed=13)
    assert (out[1] == 0).all() and torch.isneginf(lse[1]).all()


def test_custom_scale_bf16_with_everything():
    kpm = torch.ones(2, 29, dtype=torch.bool, device=DEV)
    kpm[0, 20:] = False
    _run_case(2, 4, 2, 7, 29, 40, torch.bfloat16, causal=True, scale=0.37, bias_shape=(2, 1, 1, 29), kpm=kpm,
              seed=17)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=DT_IDS.get)
def test_noncontiguous_bshd_inputs(dtype):
    """(B, S, H, D) tensors viewed as (B, H, S, D): the kernels read them in place, through the API and the
    launchers; the bias is an expanded view with stride 0."""
    _run_case(2, 4, 2, 13, 18, 24, dtype, causal=True, bshd=True, bias_shape=(1, 4, 13, 18), seed=19)
    q, k, v = _inputs(2, 4, 2, 13, 18, 24, dtype, seed=21, bshd=True)
    assert not q.is_contiguous()
    bias = randn(1, 1, 1, 18, device=DEV, seed=22).expand(2, 4, 13, 18)
    out, lse = tri.attention_fwd(q, k, v, bias, None, False, 0.3)
    ref_out, ref_lse, _ = _ref_with_grads(q, k, v, None, causal=False, scale=0.3, bias=bias)
    assert_rel(out, ref_out, REL_TOL[dtype])
    _assert_lse(lse, ref_lse, 2e-3)
    dout = randn(2, 13, 4, 24, dtype=dtype, device=DEV, seed=23).transpose(1, 2)
    dq, dk, dv, dbias = tri.attention_bwd(dout, q, k, v, out, lse, bias, None, False, 0.3, True)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape and dbias.shape == bias.shape
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dbias).all()


@pytest.mark.parametrize("d", [8, 16, 40, 64, 80, 96, 128, 256])
def test_head_dims_interpreted(d):
    """Every head dim once, tiny (big dims are slow under the interpreter); 256 also through the backward."""
    _run_case(1, 2, 1, 3, 17, d, torch.float16, causal=d == 96, grads=d in (8, 40, 256), seed=d)


# (D, Dv): a value head dim unlike the query's (multi-head latent attention); both tiles pad to the larger
@pytest.mark.parametrize("d,dv", [(16, 8), (8, 40), (40, 24), (24, 80), (64, 32)], ids=lambda x: str(x))
def test_value_head_dim_unlike_query(d, dv):
    """Dv != D through the forward and both backward passes: GQA, causal with Sq != Sk, a full bias tile and key
    padding, odd sizes; out and dv are (.., Dv), dq and dk (.., D)."""
    kpm = torch.rand(2, 37, generator=torch.Generator().manual_seed(d)) > 0.25
    kpm[:, 0] = True
    _run_case(2, 4, 2, 19, 37, d, torch.float32, causal=True, bias_shape=(1, 4, 19, 37), kpm=kpm, seed=d, dv=dv)
    _run_case(1, 2, 2, 33, 20, d, torch.bfloat16, seed=dv, dv=dv)


def test_value_head_dim_unlike_query_decode_and_sdpa(monkeypatch):
    q, kc, vc, seqlens = _decode_inputs(2, 4, 2, 45, 24, torch.float32, [45, 17], seed=3, dv=40)
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.2)
    for splits in (1, 3):
        out = tri.decode_attention(q, kc, vc, seqlens, 0.2, num_splits=splits)
        assert out.shape == (2, 4, 40)
        assert_rel(out, want, REL_TOL[torch.float32])
    # the SDPA drop-in keeps Ev != E in the kernels (no PyTorch fallback)
    monkeypatch.setattr(attn_ops, "_torch_sdpa", None)
    q, k = randn(2, 3, 5, 8, device=DEV, seed=1), randn(2, 3, 6, 8, device=DEV, seed=2)
    v = randn(2, 3, 6, 4, device=DEV, seed=3)
    with fastattn.use_backend("triton"):
        out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    assert_rel(out, want, REL_TOL[torch.float32])
    # the TMA forward reads one block width for q, k, v and out: it declines Dv != D
    q16, k16, v16 = (randn(1, 2, 32, w, dtype=torch.float16, device=DEV, seed=i) for i, w in enumerate((64, 64, 32)))
    assert not tri.tma_forward_supports(q16, k16, v16, None, None)
    assert "head dim 300" in tri.unsupported_attention(q16, k16, randn(1, 2, 32, 300, device=DEV), None, None, False)


def test_empty():
    for b, sq, sk in ((0, 4, 5), (1, 0, 5), (1, 4, 0)):
        q, k, v = _inputs(b, 2, 1, sq, sk, 16, torch.float16, requires_grad=True)
        bias = randn(1, 2, sq, sk, dtype=torch.float16, device=DEV, requires_grad=True)
        out, lse = fastattn.attention(q, k, v, bias=bias, return_lse=True, backend="triton")
        assert out.shape == (b, 2, sq, 16) and lse.shape == (b, 2, sq)
        assert (out == 0).all() and torch.isneginf(lse).all()
        out.sum().backward()
        for t in (q, k, v, bias):
            assert t.grad.shape == t.shape and (t.grad == 0).all()


def test_no_keys_with_key_padding_mask_matches_torch_backend():
    """Sk = 0 with a (B, 0) key_padding_mask, and decode with Smax = 0: the Triton kernels and the torch backend
    (the CPU default, and the oracle) both give zeros and lse -inf. The reference used to crash here, viewing the
    empty mask as (-1, 1, 1, 0)."""
    q, k, v = _inputs(2, 2, 1, 3, 0, 16, torch.float32)
    kpm = torch.ones(2, 0, dtype=torch.bool, device=DEV)
    for backend in ("triton", "torch"):
        out, lse = fastattn.attention(q, k, v, key_padding_mask=kpm, return_lse=True, backend=backend)
        assert out.shape == (2, 2, 3, 16) and (out == 0).all() and torch.isneginf(lse).all()
        dec = fastattn.decode_attention(q[:, :, 0], k, v, torch.zeros(2, dtype=torch.int32, device=DEV),
                                        backend=backend)
        assert dec.shape == (2, 2, 16) and (dec == 0).all()


def test_nan_in_nan_out_and_masked_nan_does_not_leak():
    q, k, v = _inputs(1, 2, 1, 9, 20, 16, torch.float32, seed=29)
    q[0, 0, 2] = float("nan")    # one query row: that row only becomes NaN
    k[0, 0, 19] = float("nan")   # the last key: causal rows that cannot see it stay finite
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True, backend="triton")
    ref_out, ref_lse, _ = _ref_with_grads(q, k, v, None, causal=True, scale=0.25)
    assert torch.isnan(out[0, 0, 2]).all() and torch.isnan(out[0, :, 8]).all()
    assert torch.isfinite(out[0, 1, :8]).all()
    assert_rel(out, ref_out, REL_TOL[torch.float32])   # rel_err also demands the same NaN positions
    _assert_lse(lse, ref_lse, 1e-5)


def test_sdpa_bool_mask_becomes_minus_inf_bias():
    """fastattn.scaled_dot_product_attention turns a general bool mask into a -inf bias: a fully masked query row
    must still give zeros and finite gradients through the Triton kernels."""
    q, k, v = _inputs(1, 2, 2, 6, 11, 16, torch.float32, seed=43, requires_grad=True)
    mask = torch.rand(6, 11, generator=torch.Generator().manual_seed(2)) > 0.5
    mask[3] = False
    mask = mask.to(DEV)
    with fastattn.use_backend("triton"):
        out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    bias = reference.sdpa_mask_to_bias(mask, torch.float64).view(1, 1, 6, 11)
    dout = randn(1, 2, 6, 16, device=DEV, seed=44)
    q64, k64, v64 = q.detach().double(), k.detach().double(), v.detach().double()
    ref_out, ref_lse = reference.attention(q64, k64, v64, scale=0.25, bias=bias)
    # torch autograd through a -inf bias gives NaN for the masked row; the FlashAttention-style reference
    # backward (P recomputed from lse, 0 where lse = -inf) is the contract
    ref_grads = reference.attention_backward(dout.double(), q64, k64, v64, ref_out, ref_lse, causal=False,
                                             scale=0.25, bias=bias, key_padding_mask=None, bias_requires_grad=False)
    assert (out[:, :, 3] == 0).all()
    assert_rel(out, ref_out, REL_TOL[torch.float32])
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for g, r in zip(grads, ref_grads[:3]):
        assert_rel(g, r, 2 * REL_TOL[torch.float32])
    assert (grads[0][:, :, 3] == 0).all()  # dq of the row that sees nothing


def test_backward_is_deterministic():
    q, k, v = _inputs(2, 4, 2, 21, 19, 16, torch.float16, seed=31, requires_grad=True)
    bias = randn(2, 1, 1, 19, dtype=torch.float16, device=DEV, seed=32, requires_grad=True)
    dout = randn(2, 4, 21, 16, dtype=torch.float16, device=DEV, seed=33)

    def grads():
        out = fastattn.attention(q, k, v, causal=True, bias=bias, backend="triton")
        return torch.autograd.grad(out, (q, k, v, bias), dout)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


def test_opcheck_attention_fwd():
    q, k, v = _inputs(1, 2, 1, 4, 5, 16, torch.float32, seed=37, requires_grad=True)
    torch.library.opcheck(attn_ops.attention_fwd, (q, k, v, None, None, True, 0.5, "triton"))


def test_unsupported_reasons():
    q, k, v = _inputs(1, 2, 1, 4, 5, 16, torch.float32)
    assert tri.unsupported_attention(q, k, v, None, None, False) is None
    assert "float64" in tri.unsupported_attention(q.double(), k.double(), v.double(), None, None, False)
    big = torch.zeros(1, 1, 2, 272, device=DEV)
    assert "head dim" in tri.unsupported_attention(big, big, big, None, None, False)
    assert "float64" in tri.unsupported_decode(q[:, :, 0].double(), k.double(), v.double(),
                                              torch.zeros(1, dtype=torch.int32))
    with pytest.raises(fastattn.BackendUnavailable, match="float64"):
        fastattn.attention(q.double(), k.double(), v.double(), backend="triton")


def test_block_shapes_few_fitting_and_a_fixed_pick():
    """The GPU-only config tables, without a launch, for each arch family (sm_90, sm_80) and with dropout or not:
    at most four configs per pass and head-dim class; pruning keeps the fitting ones in order (a pinned config
    outside every list stays); FASTATTN_TRITON_AUTOTUNE=0 picks the first, for every head dim, dtype and causal;
    a full bias tile narrows the widest picks (they spilled)."""
    for arch, dropout in ((90, False), (90, True), (80, False), (80, True)):
        for pass_ in ("fwd", "dq", "dkdv"):
            configs = tri._all_configs(pass_)
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                f32 = dtype == torch.float32
                for d in (16, 32, 64, 128, 256):
                    listed = tri._shape_list(pass_, d, f32, arch, dropout)
                    assert 1 <= len(listed) <= 4
                    for bias_kind, bias_dtype in ((0, None), (2, dtype), (1, dtype), (1, torch.float32)):
                        bias_esize = bias_dtype.itemsize if bias_kind == 1 else 0
                        shapes = tri._shapes_for(pass_, d, f32, dtype.itemsize, bias_esize, arch, dropout)
                        assert shapes and set(shapes) <= set(listed)
                        named = {"Q": torch.empty(1, dtype=dtype), "Bias": torch.empty(1, dtype=bias_dtype or dtype)}
                        kept = tri._prune(configs, named, pass_=pass_, arch=arch, HEAD_DIM_PAD=d, COMPUTE_F32=f32,
                                          BIAS_KIND=bias_kind, DROPOUT=dropout)
                        assert [tri._config_shape(c) for c in kept] == shapes
                        for causal in (False, True):
                            pick = tri.fixed_shape(pass_, d, dtype, causal, bias_esize, arch, dropout)
                            assert pick == shapes[0]
                            # within a block's shared memory even when nothing fits the budget (D=256 with a bias)
                            assert (tri._smem_bytes(pass_, pick, d, dtype.itemsize, bias_esize)
                                    <= SMEM_PER_BLOCK[f"sm_{arch}"])
            pinned = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=2)]
            assert tri._prune(pinned, {}, pass_=pass_, arch=arch, HEAD_DIM_PAD=64, COMPUTE_F32=False) == pinned
        # A full bias tile never widens a pick: its score tile is at most the bias-free pick's.
        for pass_ in ("fwd", "dq", "dkdv"):
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                for d in (16, 32, 64, 128, 256):
                    plain = tri.fixed_shape(pass_, d, dtype, False, 0, arch, dropout)
                    for bias_esize in (2, 4):
                        biased = tri.fixed_shape(pass_, d, dtype, False, bias_esize, arch, dropout)
                        assert biased[0] * biased[1] <= plain[0] * plain[1], (arch, pass_, d, dtype, bias_esize)


def test_arch_and_shared_memory_tables():
    """The per-arch shared memory: the opt-in maximum of one block (A100 163 KB, H100 227 KB, Ada 99 KB) less the
    headroom; sm_90 keeps the 200 KB budget its lists were chosen in; sm_89 uses the sm_80 lists, sm_100 sm_90's."""
    assert tri.smem_per_block(80) == 163 * 1024 and tri.smem_per_block(90) == 227 * 1024
    assert tri.smem_per_block(89) == 99 * 1024
    assert tri.smem_budget(90) == 200 * 1024 and tri.smem_budget(80) == 136 * 1024
    assert tri._shape_list("fwd", 128, False, 89) == tri._shape_list("fwd", 128, False, 80)
    assert tri._shape_list("fwd", 128, False, 100) == tri._shape_list("fwd", 128, False, 90)
    for arch in (80, 90):
        for pass_ in ("fwd", "dq", "dkdv"):
            for d in (64, 128, 256):
                for dropout in (False, True):
                    pick = tri.fixed_shape(pass_, d, torch.bfloat16, False, 0, arch, dropout)
                    assert tri._smem_bytes(pass_, pick, d, 2) <= tri.smem_budget(arch), (arch, pass_, d, dropout)


# Shared memory one block may use (the opt-in maximum): A100 (sm_80) 163 KB, H100/H200 (sm_90) 227 KB.
SMEM_PER_BLOCK = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}
# The configs the _one_config_per_kernel fixture pins on a GPU, as (pass, (BLOCK_M, BLOCK_N, warps, stages)): small
# enough for float32 at D=256 with a float32 bias within an A100's 163 KB (the 64x32 / 32x32 pins needed 192-208).
PINNED = [("fwd", (16, 32, 4, 2)), ("dq", (16, 16, 4, 2)), ("dkdv", (16, 16, 4, 2))]


def _pickable(arch: int):
    """Every (pass, head dim class, dtype, bias element size, config) the launchers can launch on a GPU of
    compute capability ``arch``, with dropout or not: all the configs autotuning keeps (_shapes_for), whose first
    is the FASTATTN_TRITON_AUTOTUNE=0 pick."""
    for pass_ in ("fwd", "dq", "dkdv"):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for d in (16, 32, 64, 128, 256):
                for bias_esize in (0, 2, 4):
                    for dropout in (False, True):
                        for shape in tri._shapes_for(pass_, d, dtype == torch.float32, dtype.itemsize, bias_esize,
                                                     arch, dropout):
                            yield pass_, d, dtype, bias_esize, shape


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_every_pickable_config_fits_shared_memory(arch):
    """Property of the config tables: every config a launcher can pick on ``arch``, and every config the GPU
    tests pin, fits one block's shared memory there by its tile formula (_smem_bytes: resident tiles, stages of
    streamed ones, the bias tile). (Once an sm_80 pick needed 192 KB of the A100's 163: one budget for every GPU.)
    Their register spills: the static report (python -m fastattn.bench --static) compiles the picks per arch."""
    budget = SMEM_PER_BLOCK[arch]
    cc = int(arch[3:])
    over = [(p, d, str(dt), be, sh, tri._smem_bytes(p, sh, d, dt.itemsize, be) // 1024)
            for p, d, dt, be, sh in _pickable(cc) if tri._smem_bytes(p, sh, d, dt.itemsize, be) > budget]
    for pass_, shape in PINNED:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for d in (16, 32, 64, 128, 256):
                for be in (0, 2, 4):
                    need = tri._smem_bytes(pass_, shape, d, dtype.itemsize, be)
                    if need > budget:
                        over.append(("pinned " + pass_, d, str(dtype), be, shape, need // 1024))
    assert not over, f"configs over {budget // 1024} KB on {arch} (pass, D, dtype, bias bytes, config, KB): {over}"


def test_dropout_offset_reaches_the_kernels_as_32_bits():
    """fastattn.ops draws 64-bit dropout offsets; the stream uses their low 32 bits, and the kernels take those as
    an int32 (a 64-bit argument made the counter tile int64, which tl.philox cannot bitcast to its uint32 words:
    no dropout kernel compiled on a GPU; the interpreter accepted it). The mask stays the reference's."""
    from fastattn.triton.attention.common import _dropout_args
    for off in (0, 1, 7, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 2 ** 31 + 5, 2 ** 62 - 1):
        got = _dropout_args(0.1, 5, off)[1]
        assert -2 ** 31 <= got < 2 ** 31 and got & 0xFFFFFFFF == off & 0xFFFFFFFF, off
    seed, off = 2 ** 61 + 3, 2 ** 40 + 2 ** 31 + 5
    got = tri.dropout_mask(1, 2, 9, 21, 0.3, seed, off, DEV)
    assert torch.equal(got, reference.dropout_keep(1, 2, 9, 21, 0.3, seed, off, torch.device(DEV)))


@pytest.mark.parametrize("flag,want", [(None, True), ("1", True), ("0", False)])
def test_autotune_switch(monkeypatch, flag, want):
    if flag is None:
        monkeypatch.delenv("FASTATTN_TRITON_AUTOTUNE", raising=False)
    else:
        monkeypatch.setenv("FASTATTN_TRITON_AUTOTUNE", flag)
    assert tri.autotune_enabled() is want


@pytest.mark.gpu
def test_gpu_fixed_shapes_without_autotuning(monkeypatch):
    """FASTATTN_TRITON_AUTOTUNE=0: the fixed picks launch the raw kernels (no autotuner) and stay correct."""
    monkeypatch.setenv("FASTATTN_TRITON_AUTOTUNE", "0")
    for d in (64, 128):
        for causal in (False, True):
            _run_case(2, 4, 2, 1000, 1000, d, torch.bfloat16, causal=causal, seed=71 + d)


# ----------------------------------------------------------------------------------------------------------
# Hopper forward: TMA tensor descriptors, opt-in (FASTATTN_TRITON_HOPPER=1); interpreted here, compiled on 9.x
# ----------------------------------------------------------------------------------------------------------

def _is_hopper():
    return HAS_GPU and torch.cuda.get_device_capability()[0] == 9


def _tma_shape(d, warp_spec):
    """Interpreted: 16 x 16 blocks. Compiled: the first listed config with this warp specialisation."""
    if not HAS_GPU:
        return (16, 16, 4, 1, warp_spec)
    return next(s for s in tri._hopper_shapes(d) if s[4] == warp_spec)


def _check_tma_forward(b, hq, hkv, sq, sk, d, dtype, causal, shape, bshd=False, seed=0):
    q, k, v = _inputs(b, hq, hkv, sq, sk, d, dtype, seed=seed, bshd=bshd)
    assert tri.tma_forward_supports(q, k, v, None, None)
    out = torch.empty((b, hq, sq, d), dtype=dtype, device=DEV)
    lse = torch.empty((b, hq, sq), dtype=torch.float32, device=DEV)
    scale = 1.0 / math.sqrt(d)
    tri._attention_fwd_tma(q, k, v, causal, scale, out, lse, shape)
    ref_out, ref_lse, _ = _ref_with_grads(q, k, v, None, causal=causal, scale=scale)
    lowp = lowp_attention(q, k, v, causal=causal, scale=scale) if HAS_GPU else None
    _check("out", out, ref_out, lowp, dtype)
    _assert_lse(lse, ref_lse, 2e-3)
    if causal and sq > sk:
        assert (out[:, :, : sq - sk] == 0).all()


TMA_CASES = {
    "gqa4:2-causal-sq37<sk45-d16": (2, 4, 2, 37, 45, 16, True),
    "mqa2:1-causal-sq45>sk20-d32": (1, 2, 1, 45, 20, 32, True),
    "mha-sq19-sk33-d64": (1, 2, 2, 19, 33, 64, False),
}


@pytest.mark.parametrize("warp_spec", [False, True], ids=["split-loops", "one-warp-specialised-loop"])
@pytest.mark.parametrize("dtype", LOWP, ids=DT_IDS.get)
@pytest.mark.parametrize("case", list(TMA_CASES), ids=str)
def test_tma_forward(case, dtype, warp_spec):
    """The TMA kernel itself (both loop structures), against float64: under the interpreter it emulates the
    descriptors (zero rows past each sequence, the output store dropping rows past Sq)."""
    if HAS_GPU and not _is_hopper():
        pytest.skip("the TMA forward is for compute capability 9.x")
    b, hq, hkv, sq, sk, d, causal = TMA_CASES[case]
    _check_tma_forward(b, hq, hkv, sq, sk, d, dtype, causal, _tma_shape(d, warp_spec), seed=sq + d)


def test_tma_forward_strided_bshd():
    """(B, S, H, D) memory viewed as (B, H, S, D): 4-D descriptors with the strides as they are."""
    if HAS_GPU and not _is_hopper():
        pytest.skip("the TMA forward is for compute capability 9.x")
    _check_tma_forward(2, 4, 2, 21, 30, 32, torch.float16, True, _tma_shape(32, False), bshd=True, seed=81)


def test_tma_forward_eligibility_and_opt_in(monkeypatch):
    """What the TMA path takes (16-bit, no bias or mask, D a power of two, 16-byte aligned strides), and that it
    runs only with FASTATTN_TRITON_HOPPER=1 on a 9.x GPU: never on the CPU, never by default."""
    q, k, v = _inputs(1, 2, 1, 8, 8, 64, torch.bfloat16)
    assert tri.tma_forward_supports(q, k, v, None, None)
    assert not tri.tma_forward_supports(q, k, v, torch.zeros(1, 1, 8, 8, device=DEV), None)
    assert not tri.tma_forward_supports(q, k, v, None, torch.ones(1, 8, dtype=torch.bool, device=DEV))
    assert not tri.tma_forward_supports(q.float(), k.float(), v.float(), None, None)
    q40, k40, v40 = _inputs(1, 2, 1, 8, 8, 40, torch.bfloat16)
    assert not tri.tma_forward_supports(q40, k40, v40, None, None)            # D not a power of two
    qs = randn(1, 2, 8, 65, dtype=torch.bfloat16, device=DEV)[..., :64]       # row stride 130 bytes
    assert not tri.tma_forward_supports(qs, k, v, None, None)
    monkeypatch.delenv("FASTATTN_TRITON_HOPPER", raising=False)
    assert not tri.hopper_enabled() and not tri._use_hopper_forward(q, k, v, None, None)
    monkeypatch.setenv("FASTATTN_TRITON_HOPPER", "1")
    assert tri.hopper_enabled()
    assert tri._use_hopper_forward(q, k, v, None, None) is _is_hopper()


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gpu_hopper_forward_both_paths(monkeypatch, d, causal):
    """On a 9.x GPU: forward + backward through the public API with the portable forward and with the TMA forward
    (fixed configs, no tuning), both held to FlashAttention's rule against float64; also a (B, S, H, D) view."""
    if not _is_hopper():
        pytest.skip("the TMA forward is for compute capability 9.x")
    monkeypatch.setenv("FASTATTN_TRITON_AUTOTUNE", "0")
    q, k, v = _inputs(1, 2, 1, 8, 8, d, torch.bfloat16)
    for flag in ("0", "1"):
        monkeypatch.setenv("FASTATTN_TRITON_HOPPER", flag)
        assert tri._use_hopper_forward(q, k, v, None, None) is (flag == "1")
        _run_case(2, 4, 2, 1000, 1000, d, torch.bfloat16, causal=causal, seed=91 + d)
        _run_case(2, 4, 2, 257, 300, d, torch.bfloat16, causal=causal, bshd=True, seed=93 + d)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("d", [64, 128, 256])
def test_gpu_hopper_every_config(d):
    """Every listed TMA config (warp-specialised ones included) compiles, launches and is right, causal and not."""
    if not _is_hopper():
        pytest.skip("the TMA forward is for compute capability 9.x")
    for shape in tri._hopper_shapes(d):
        for causal in (False, True):
            _check_tma_forward(2, 4, 2, 1000, 1000, d, torch.bfloat16, causal, shape, seed=d)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_hopper_autotuned(monkeypatch):
    if not _is_hopper():
        pytest.skip("the TMA forward is for compute capability 9.x")
    monkeypatch.setenv("FASTATTN_TRITON_HOPPER", "1")
    monkeypatch.setenv("FASTATTN_TRITON_AUTOTUNE", "1")
    _run_case(2, 4, 2, 1000, 1000, 128, torch.bfloat16, causal=True, seed=95)


# ----------------------------------------------------------------------------------------------------------
# Decode
# ----------------------------------------------------------------------------------------------------------

def _decode_inputs(b, hq, hkv, smax, d, dtype, lengths, seed=0, dv=None):
    q = randn(b, hq, d, dtype=dtype, device=DEV, seed=seed)
    kc = randn(b, hkv, smax, d, dtype=dtype, device=DEV, seed=seed + 1)
    vc = randn(b, hkv, smax, dv or d, dtype=dtype, device=DEV, seed=seed + 2)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEV)
    for i, n in enumerate(lengths):  # positions past the length must never be read
        kc[i, :, n:] = float("nan")
        vc[i, :, n:] = float("nan")
    return q, kc, vc, seqlens


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=DT_IDS.get)
@pytest.mark.parametrize("hq,hkv", [(4, 2), (4, 1), (2, 2)], ids=["gqa4:2", "mqa4:1", "mha2"])
def test_decode(hq, hkv, dtype):
    q, kc, vc, seqlens = _decode_inputs(3, hq, hkv, 37, 40, dtype, [37, 0, 20], seed=hq + hkv)
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.2)
    out = fastattn.decode_attention(q, kc, vc, seqlens, scale=0.2, backend="triton")
    assert out.shape == q.shape and out.dtype == dtype
    assert (out[1] == 0).all()  # length 0: zeros
    assert_rel(out, want, REL_TOL[dtype])
    for splits in (1, 3):  # one program per (batch, KV head), and several with the log-sum-exp combine
        assert_rel(tri.decode_attention(q, kc, vc, seqlens, 0.2, num_splits=splits), want, REL_TOL[dtype])


def test_decode_out_of_range_lengths_never_read_outside_the_cache():
    """The public op rejects such lengths; the launcher alone clamps them: > Smax reads the whole cache, < 0
    reads nothing (zeros)."""
    q, kc, vc, _ = _decode_inputs(2, 4, 2, 21, 16, torch.float32, [21, 21], seed=47)
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), torch.tensor([21, 0]), scale=0.3)
    for splits in (1, 2):
        got = tri.decode_attention(q, kc, vc, torch.tensor([40, -3], dtype=torch.int32, device=DEV), 0.3,
                                   num_splits=splits)
        assert_rel(got, want, REL_TOL[torch.float32])


def test_decode_strided_and_empty():
    # q (B, 1, Hq, D)-style strided view, caches in (B, Smax, Hkv, D) memory viewed as (B, Hkv, Smax, D)
    q = randn(2, 8, 3, 16, device=DEV, seed=41)[:, :, 1]
    kc = randn(2, 19, 2, 16, device=DEV, seed=42).transpose(1, 2)
    vc = randn(2, 19, 2, 16, device=DEV, seed=43).transpose(1, 2)
    seqlens = torch.tensor([19, 5], dtype=torch.int32, device=DEV)
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.25)
    assert_rel(fastattn.decode_attention(q, kc, vc, seqlens, backend="triton"), want, REL_TOL[torch.float32])
    empty = fastattn.decode_attention(q[:0], kc[:0], vc[:0], seqlens[:0], backend="triton")
    assert empty.shape == (0, 8, 16)
    no_cache = fastattn.decode_attention(q, kc[:, :, :0], vc[:, :, :0], torch.zeros(2, dtype=torch.int32,
                                                                                     device=DEV), backend="triton")
    assert (no_cache == 0).all()


# ----------------------------------------------------------------------------------------------------------
# GPU grid: FlashAttention-like sizes, compiled kernels, FlashAttention's error rule
# ----------------------------------------------------------------------------------------------------------

GPU_SHAPES = [(113, 203), (1023, 1024), (512, 256)]


def _gpu_grid():
    """Every (Sq, Sk) x causal x head dim x dtype; the bf16 D=64/128 part runs by default (a few compiles, for
    the device check), the rest with --runslow."""
    for sq, sk in GPU_SHAPES:
        for causal in (False, True):
            for d in (64, 96, 128, 256):
                for dtype in LOWP:
                    quick = dtype == torch.bfloat16 and d in (64, 128) and sq != 512
                    yield pytest.param(sq, sk, causal, d, dtype, marks=() if quick else pytest.mark.slow,
                                       id=f"{sq}x{sk}-{'causal' if causal else 'full'}-d{d}-{DT_IDS[dtype]}")


@pytest.mark.gpu
@pytest.mark.parametrize("sq,sk,causal,d,dtype", list(_gpu_grid()))
def test_gpu_grid(sq, sk, causal, d, dtype):
    _run_case(2, 4, 2, sq, sk, d, dtype, causal=causal, seed=sq + sk + d)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow)],
                         ids=DT_IDS.get)
def test_gpu_bias_kpm(dtype):
    kpm = torch.rand(2, 300, generator=torch.Generator().manual_seed(1)) > 0.2
    kpm[1, :] = False
    kpm = kpm.to(DEV)
    _run_case(2, 4, 2, 257, 300, 64, dtype, causal=True, bias_shape=(2, 4, 257, 300), kpm=kpm, seed=51)
    _run_case(2, 4, 2, 257, 300, 128, dtype, bias_shape=(2, 1, 1, 300), kpm=kpm, seed=52)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_autotuned():
    """The real autotuner (pruning, then benchmarking every kept config) on one forward + backward shape."""
    _run_case(2, 4, 2, 1000, 1000, 128, torch.bfloat16, causal=True, seed=61)


@pytest.mark.gpu
@pytest.mark.parametrize("b,smax,dtype", [
    (1, 8192, torch.bfloat16), (16, 1000, torch.bfloat16),
    pytest.param(3, 333, torch.float16, marks=pytest.mark.slow),
    pytest.param(1, 8192, torch.float16, marks=pytest.mark.slow),
], ids=["b1-8192-bf16", "b16-1000-bf16", "b3-333-fp16", "b1-8192-fp16"])
def test_gpu_decode(b, smax, dtype):
    """Long caches: the split count comes from the SM count (several splits at B=1), NaN past each length."""
    lengths = [smax - 7 * i for i in range(b)]
    if b > 1:
        lengths[-1] = 0
    q, kc, vc, seqlens = _decode_inputs(b, 32, 8, smax, 128, dtype, lengths, seed=b)
    want = reference.decode_attention(q.double(), kc.double(), vc.double(), seqlens, scale=0.1)
    out = fastattn.decode_attention(q, kc, vc, seqlens, scale=0.1, backend="triton")
    assert_rel(out, want, REL_TOL[dtype])
