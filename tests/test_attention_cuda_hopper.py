"""The Hopper attention forward (csrc/attention/attn_fwd_sm90_kernel.cuh: wgmma, 2 warpgroups) against the float64
reference, through fastattn.attention(backend="cuda") with FASTATTN_CUDA_HOPPER=1.

Under FASTATTN_CUDA_EMULATE=1 the flag alone selects the kernel, which then runs on the CPU emulation of wgmma
(csrc/common/wgmma.cuh); on a GPU it is chosen only on sm_90 with sm_90a code in the extension. Every test checks
through the kernel's launch counter that the Hopper kernel (not the mma.sync one) produced the result, or, for
what it declines (bias, key padding mask, other head dims), that it did not. No GPU has run these yet.
"""
import ctypes
import math

import pytest
import torch

import fastattn
from fastattn import _backend, _cuda, _emu, reference
from _utils import HAS_GPU, REL_TOL, assert_rel, lowp_attention, randn, rel_err, same_bits_over_schedules

pytestmark = pytest.mark.cuda_kernel

EMULATED = _backend.cuda_emulated()
DEV = "cpu" if EMULATED else "cuda"
LOWP = (torch.float16, torch.bfloat16)
DT_IDS = {torch.float16: "fp16", torch.bfloat16: "bf16"}
ON_HOPPER = EMULATED or (HAS_GPU and torch.cuda.get_device_capability() == (9, 0))
hopper_only = pytest.mark.skipif(not ON_HOPPER, reason="the wgmma kernel needs an sm_90 GPU (or the emulation)")


def _launches() -> int:
    assert _cuda.status() is True, _cuda.status()
    if EMULATED:
        path = str(_emu.build_extension())
    else:
        import fastattn._C as ext
        path = ext.__file__
    lib = ctypes.CDLL(path)
    lib.fastattn_attn_fwd_sm90_launches.restype = ctypes.c_ulonglong
    return int(lib.fastattn_attn_fwd_sm90_launches())


@pytest.fixture
def hopper(monkeypatch):
    monkeypatch.setenv("FASTATTN_CUDA_HOPPER", "1")


def _inputs(b, hq, hkv, sq, sk, d, dtype, seed, bshd=False):
    def make(h, s, sd):
        if bshd:
            return randn(b, s, h, d, dtype=dtype, device=DEV, seed=sd).transpose(1, 2)
        return randn(b, h, s, d, dtype=dtype, device=DEV, seed=sd)
    return make(hq, sq, seed), make(hkv, sk, seed + 1), make(hkv, sk, seed + 2)


def _run(q, k, v, *, causal, scale=None, bias=None, kpm=None, expect_hopper=True):
    d = q.shape[-1]
    before = _launches()
    out, lse = fastattn.attention(q, k, v, causal=causal, scale=scale, bias=bias, key_padding_mask=kpm,
                                  return_lse=True, backend="cuda")
    ran = _launches() - before
    assert ran == (1 if expect_hopper else 0), f"Hopper kernel launches: {ran}, expected {int(expect_hopper)}"
    scale_v = 1.0 / math.sqrt(d) if scale is None else scale
    f = lambda t: None if t is None else t.double()  # noqa: E731
    ref_out, ref_lse = reference.attention(f(q), f(k), f(v), causal=causal, scale=scale_v, bias=f(bias),
                                           key_padding_mask=kpm)
    assert out.shape == q.shape and out.dtype == q.dtype
    if HAS_GPU and not EMULATED:
        lowp = lowp_attention(q, k, v, causal=causal, scale=scale_v, bias=bias, kpm=kpm)
        budget = 2.0 * rel_err(lowp, ref_out) + REL_TOL[q.dtype] / 10
        assert_rel(out, ref_out, budget, "out (FlashAttention rule)")
    else:
        assert_rel(out, ref_out, REL_TOL[q.dtype], "out")
    empty = torch.isneginf(ref_lse.to(lse.device))
    assert torch.equal(torch.isneginf(lse), empty), "lse: -inf rows differ"
    assert_rel(lse.masked_fill(empty, 0.0), ref_lse.to(lse.device).masked_fill(empty, 0.0), 2e-3, "lse")
    return out, lse


# (B, Hq, Hkv, Sq, Sk, D, causal). BN is 128 keys at D = 64 and 64 at D = 128; a CTA takes 128 query rows.
CASES = {
    "mha-sq5-sk37-d64": (2, 2, 2, 5, 37, 64, False),
    "gqa4:2-causal-sq17<sk70-d64": (1, 4, 2, 17, 70, 64, True),
    "mqa3:1-causal-sq75>sk29-d128": (1, 3, 1, 75, 29, 128, True),  # rows that see no key: zeros, lse -inf
    "causal-sq1-sk1-d128": (2, 1, 1, 1, 1, 128, True),
    "gqa2:1-sq9-sk150-d128": (1, 2, 1, 9, 150, 128, False),  # 3 key blocks: a stage is refilled
    "causal-sq133-sk133-d64": (1, 1, 1, 133, 133, 64, True),  # 2 query tiles, the second warpgroup's rows ragged
}


@hopper_only
@pytest.mark.parametrize("dtype", LOWP, ids=DT_IDS.get)
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_hopper_forward(case, dtype, hopper):
    b, hq, hkv, sq, sk, d, causal = CASES[case]
    q, k, v = _inputs(b, hq, hkv, sq, sk, d, dtype, seed=sum(CASES[case][:6]))
    _run(q, k, v, causal=causal)


@hopper_only
def test_hopper_three_blocks_d64_causal_sq_lt_sk(hopper):
    """D = 64 (128-key blocks) with 3 key blocks, causal aligned bottom-right (Sq < Sk), a custom scale."""
    q, k, v = _inputs(1, 2, 1, 70, 300, 64, torch.bfloat16, seed=5)
    _run(q, k, v, causal=True, scale=0.3)


@hopper_only
@pytest.mark.parametrize("dtype", LOWP, ids=DT_IDS.get)
def test_hopper_noncontiguous_bshd(dtype, hopper):
    q, k, v = _inputs(2, 4, 2, 33, 47, 128, dtype, seed=9, bshd=True)
    assert not q.is_contiguous()
    _run(q, k, v, causal=False)


@hopper_only
def test_hopper_nan_in_nan_out(hopper):
    q, k, v = _inputs(1, 1, 1, 20, 30, 64, torch.float16, seed=13)
    q = q.clone()
    q[0, 0, 3, 7] = float("nan")
    out, _ = fastattn.attention(q, k, v, causal=False, return_lse=True, backend="cuda")
    assert torch.isnan(out[0, 0, 3]).all()
    others = torch.ones(20, dtype=torch.bool)
    others[3] = False
    assert torch.isfinite(out[0, 0, others]).all()


@hopper_only
def test_declined_calls_take_the_mma_sync_kernel(hopper):
    """Bias, key padding mask, dropout and head dims other than 64 / 128 go to the existing kernel."""
    q, k, v = _inputs(1, 2, 2, 17, 40, 64, torch.float16, seed=21)
    bias = randn(1, 2, 17, 40, dtype=torch.float16, device=DEV, seed=22)
    _run(q, k, v, causal=False, bias=bias, expect_hopper=False)
    kpm = torch.ones(1, 40, dtype=torch.bool, device=DEV)
    kpm[0, 5:9] = False
    _run(q, k, v, causal=True, kpm=kpm, expect_hopper=False)
    q, k, v = _inputs(1, 1, 1, 9, 20, 32, torch.bfloat16, seed=23)
    _run(q, k, v, causal=False, expect_hopper=False)
    q, k, v = _inputs(1, 2, 2, 17, 40, 64, torch.bfloat16, seed=24)
    before = _launches()
    out = fastattn.attention(q, k, v, causal=True, dropout_p=0.25, backend="cuda")  # checked by the dropout tests
    assert _launches() == before and torch.isfinite(out).all()


@hopper_only
def test_flag_off_takes_the_mma_sync_kernel(monkeypatch):
    monkeypatch.delenv("FASTATTN_CUDA_HOPPER", raising=False)
    q, k, v = _inputs(1, 1, 1, 9, 20, 64, torch.bfloat16, seed=31)
    _run(q, k, v, causal=False, expect_hopper=False)


@pytest.mark.skipif(not EMULATED, reason="thread schedules and copy landing are settings of the emulation")
def test_hopper_schedules_and_early_copy_landing(hopper):
    """Bit-identical results under every thread schedule, with cp.async copies landing at their wait and at issue.
    Landing at issue under warp_greedy (a warp runs as far as it can) is what exposes a stage refilled while the
    other warpgroup still reads it: without the barrier that ends each key block, this test fails."""
    cases = [(1, 2, 1, 9, 150, 128, False), (1, 1, 1, 70, 300, 64, True)]
    for b, hq, hkv, sq, sk, d, causal in cases:
        q, k, v = _inputs(b, hq, hkv, sq, sk, d, torch.bfloat16, seed=sq + sk)
        same_bits_over_schedules(lambda: (_run(q, k, v, causal=causal)[0],))
