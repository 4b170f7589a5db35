"""Attention cases: forward and backward against every SDPA backend, and attention with masks and biases
against SDPA with the same mask and against FlexAttention.

Shapes follow docs/benchmarks.md: 16k tokens per batch (B = 16384 / S) and hidden 2048 (H = 2048 / D). Errors are
measured on a slice (the last batch, the first and last heads), against fastattn.reference run in float64 in
query chunks so that even S = 16k fits; heads and batches are independent, so the slice is exact.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F

import fastattn
from fastattn import reference

from . import formulas
from .core import (DTYPES, Case, Options, Provider, Unavailable, generator, max_rel_err, ours, randn,
                   require_memory)

TOKENS, HIDDEN = 16384, 2048
SEQS_FULL = [512, 1024, 2048, 4096, 8192, 16384]
SEQS_QUICK = [1024, 4096, 16384]
MASK_SEQS_FULL = [1024, 2048, 4096, 8192]
MASK_SEQS_QUICK = [1024, 4096]
FLEX_SEQS_QUICK = [1024]  # each FlexAttention shape is a fresh compile: quick mode compiles few


def _sdpa_backends():
    from torch.nn.attention import SDPBackend
    return {
        "sdpa-flash": SDPBackend.FLASH_ATTENTION,
        "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa-math": SDPBackend.MATH,
    }


# ----------------------------------------------------------------------------------------------------------
# float64 reference, chunked over queries
# ----------------------------------------------------------------------------------------------------------

def _select(t: Optional[torch.Tensor], b_idx, h_idx) -> Optional[torch.Tensor]:
    """t[b_idx][:, h_idx] for (B, H, ...) tensors, where dims of size 1 broadcast (bias (1, H, Sq, Sk))."""
    if t is None:
        return None
    if t.shape[0] != 1:
        t = t[b_idx]
    if t.dim() > 1 and t.shape[1] != 1:
        t = t[:, h_idx]
    return t


def reference_f64(q, k, v, *, causal: bool, bias=None, kpm=None, dout=None, bias_grad: bool = False,
                  dropout=None, max_chunk_bytes: float = 2**30):
    """float64 attention (and its gradients when dout is given) over query chunks.

    Returns out, or (out, dq, dk, dv, dbias). Causal is aligned bottom-right, as fastattn.attention (equal to
    SDPA's top-left alignment for the square shapes used here). A chunk's causal mask is passed as an additive
    bias, so each chunk is exact; dk and dv add up over the chunks, dq and dbias are concatenated.
    """
    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    bias = None if bias is None else bias.detach().to(torch.float64)
    do = None if dout is None else dout.detach().to(torch.float64)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    scale = 1.0 / math.sqrt(d)
    chunk = int(max(16, min(sq, max_chunk_bytes // (8 * 6 * b * h * sk))))
    outs, dqs, dbs = [], [], []
    dk = torch.zeros_like(k) if do is not None else None
    dv = torch.zeros_like(v) if do is not None else None
    for a in range(0, sq, chunk):
        e = min(sq, a + chunk)
        cb = None
        if bias is not None:
            assert bias.shape[-2] == sq, "the chunked reference takes biases with a full query axis"
            cb = bias[..., a:e, :]
        if causal:
            i = torch.arange(a, e, device=q.device).view(-1, 1) + (sk - sq)
            j = torch.arange(sk, device=q.device).view(1, -1)
            m = torch.zeros((e - a, sk), dtype=torch.float64, device=q.device).masked_fill(j > i, float("-inf"))
            m = m.view(1, 1, e - a, sk)
            cb = m if cb is None else cb + m
        qc = q[:, :, a:e]
        z = None if dropout is None else dropout(a, e)
        out_c, lse_c = reference.attention(qc, k, v, causal=False, scale=scale, bias=cb, key_padding_mask=kpm,
                                           dropout_factor=z)
        outs.append(out_c)
        if do is not None:
            want_db = bias_grad and bias is not None
            dq_c, dk_c, dv_c, db_c = reference.attention_backward(
                do[:, :, a:e], qc, k, v, out_c, lse_c, causal=False, scale=scale, bias=cb, key_padding_mask=kpm,
                bias_requires_grad=want_db, dropout_factor=z)
            dqs.append(dq_c)
            dk += dk_c
            dv += dv_c
            if want_db:
                dbs.append(db_c)
    out = torch.cat(outs, dim=2)
    if do is None:
        return out
    dbias = torch.cat(dbs, dim=-2) if dbs else None
    return out, torch.cat(dqs, dim=2), dk, dv, dbias


def _slice_idx(inp: dict):
    """(batches, heads) the error is measured on: the last batch (every batch when a bias shared by the batch
    gets a gradient, which sums over them) and the first and last heads."""
    b, h = inp["q"].shape[0], inp["q"].shape[1]
    dev = inp["q"].device
    heads = sorted({0, h - 1})
    every_batch = inp.get("bias_grad") and inp["bias"].shape[0] == 1
    batches = list(range(b)) if every_batch else [b - 1]
    return torch.tensor(batches, device=dev), torch.tensor(heads, device=dev)


def _check(inp: dict, out) -> float:
    """Error of one provider's output (fwd: out; bwd: (dq, dk, dv[, dbias])) on the reference slice."""
    bi, hi = _slice_idx(inp)
    if "_ref" not in inp:
        sel = {n: _select(inp.get(n), bi, hi) for n in ("q", "k", "v", "bias", "dout")}
        kpm = inp.get("kpm")
        kpm = None if kpm is None else kpm[bi]
        inp["_ref"] = reference_f64(sel["q"], sel["k"], sel["v"], causal=inp["causal"], bias=sel["bias"], kpm=kpm,
                                    dout=sel["dout"], bias_grad=inp.get("bias_grad", False),
                                    dropout=_dropout_factors(inp, bi, hi))
    ref = inp["_ref"]
    if isinstance(ref, torch.Tensor):
        return max_rel_err([_select(out, bi, hi)], [ref])
    outs = [_select(t, bi, hi) for t in out[:3]]
    refs = list(ref[1:4])
    if ref[4] is not None:
        outs.append(_select(out[3], bi, hi))
        refs.append(ref[4])
    return max_rel_err(outs, refs)


def _dropout_factors(inp: dict, bi, hi):
    """For a dropout case: (a, e) -> the dropout factors of the slice's batches bi and heads hi, query rows
    a..e, from the (p, seed, offset) every provider's call draws (see _dropout_inputs)."""
    if "dropout" not in inp:
        return None
    p, seed, offset = inp["dropout"]
    h, sk = inp["q"].shape[1], inp["k"].shape[2]
    bh = bi.view(-1, 1) * h + hi.view(1, -1)

    def factors(a, e):
        rows = torch.arange(a, e, device=bh.device)
        keep = reference.dropout_keep_at(bh, rows, sk, p, seed, offset)
        return keep.to(torch.float64) * (1.0 / (1.0 - p))
    return factors


# ----------------------------------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------------------------------

def _grads_fn(out: torch.Tensor, inp: dict) -> Callable[[], Any]:
    """The backward pass to time: gradients of out w.r.t. q, k, v (and bias when it requires grad)."""
    wrt = [inp["q"], inp["k"], inp["v"]]
    if inp.get("bias_grad"):
        wrt.append(inp["bias"])
    dout = inp["dout"]
    return lambda: torch.autograd.grad(out, wrt, dout, retain_graph=True)


def _fastattn(passname: str, dropout_p: float = 0.0):
    """fastattn.attention with the case's mask/bias. Where the inputs carry a CPU generator state (the dropout
    cases), every call restores it first, so each call draws the same dropout (seed, offset); the dropout cases'
    'no dropout' baselines (dropout_p = 0) restore it too, so the restore's cost cancels in the ratio."""
    def make(backend: str):
        def build(inp):
            if backend == "torch":
                _reference_memory(inp, passname, "the torch reference", *((24, 52) if dropout_p else (20, 44)))
            state = inp.get("rng_state")

            def fwd():
                if state is not None:
                    torch.set_rng_state(state)
                return fastattn.attention(inp["q"], inp["k"], inp["v"], causal=inp["causal"], bias=inp.get("bias"),
                                          key_padding_mask=inp.get("kpm"), dropout_p=dropout_p, backend=backend)
            if passname == "fwd":
                return fwd
            return _grads_fn(fwd(), inp)
        return build
    return make


def _reference_memory(inp: dict, passname: str, what: str, fwd_bytes: int = 20, bwd_bytes: int = 44) -> None:
    """Materialising providers hold a few (B, H, Sq, Sk) float32 tensors: skip them where that won't fit."""
    q, k = inp["q"], inp["k"]
    elems = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
    require_memory(elems * (fwd_bytes if passname == "fwd" else bwd_bytes), what, q.device)


def _sdpa_call(be, q, k, v, **kw):
    """SDPA restricted to one backend; 'No available kernel' becomes Unavailable with SDPA's own reason."""
    from torch.nn.attention import sdpa_kernel
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(q, k, v, **kw)
        except RuntimeError as e:
            msg = str(e)
            if "No available kernel" in msg or "No viable backend" in msg:
                # SDPA explains in warnings: "<Backend> kernel not used because:" then the reasons.
                why = [str(w.message).strip().splitlines()[0] for w in caught]
                why = [w for w in why if w and "not used because" not in w]
                raise Unavailable("; ".join(dict.fromkeys(why[:3])) if why else msg.splitlines()[0]) from None
            raise


def _sdpa_provider(name: str, passname: str) -> Provider:
    def build(inp):
        be = _sdpa_backends()[name] if name in _sdpa_backends() else None
        if name == "sdpa-math":
            _reference_memory(inp, passname, "the math backend", 16, 40)
        q, k, v = inp["q"], inp["k"], inp["v"]
        kw = {}
        if inp.get("sdpa_mask") is not None:
            kw["attn_mask"] = inp["sdpa_mask"]
        else:
            kw["is_causal"] = inp["causal"]

        if be is None:  # default dispatch: SDPA picks its fastest backend for this mask
            def fwd():
                return F.scaled_dot_product_attention(q, k, v, **kw)
        else:
            _sdpa_call(be, q, k, v, **kw)  # raises Unavailable if this backend refuses the call

            def fwd():
                return _sdpa_call(be, q, k, v, **kw)
        if passname == "fwd":
            return fwd
        return _grads_fn(fwd(), inp)
    return Provider(name, "baseline", build)


def _flex_provider(passname: str, cpu: bool) -> Provider:
    def build(inp):
        try:
            from torch.nn.attention.flex_attention import flex_attention
        except ImportError as e:
            raise Unavailable(f"FlexAttention is not in this torch ({e})") from e
        q, k, v = inp["q"], inp["k"], inp["v"]
        if cpu:  # eager flex on the CPU: the same function, computed densely (no compile in the CPU mode)
            fn = flex_attention
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        else:
            torch._dynamo.reset()
            fn = torch.compile(flex_attention, dynamic=False)
        score_mod, block_mask = inp["flex"](q.device)

        def fwd():
            return fn(q, k, v, score_mod=score_mod, block_mask=block_mask)
        if passname == "fwd":
            return fwd
        return _grads_fn(fwd(), inp)
    return Provider("flex" if not cpu else "flex (eager)", "baseline", build)


# ----------------------------------------------------------------------------------------------------------
# Plain attention cases
# ----------------------------------------------------------------------------------------------------------

def _qkv_inputs(b, h, s, d, dtype, causal: bool, passname: str, seed: int):
    def make(device):
        g = generator(device, seed)
        grad = passname == "bwd"
        inp = {"q": randn((b, h, s, d), dtype, device, g, requires_grad=grad),
               "k": randn((b, h, s, d), dtype, device, g, requires_grad=grad),
               "v": randn((b, h, s, d), dtype, device, g, requires_grad=grad),
               "causal": causal}
        if grad:
            inp["dout"] = randn((b, h, s, d), dtype, device, g)
        return inp
    return make


def _budget_shapes(dims, seqs):
    """(B, H, S, D) at the token and hidden budget: B = 16384 / S, H = 2048 / D."""
    return [(max(1, TOKENS // s), max(1, HIDDEN // d), s, d) for d in dims for s in seqs]


def _plain_shapes(opts: Options):
    if opts.cpu:  # odd sizes, small enough for the Triton interpreter
        return [(2, 3, 97, 64), (1, 2, 128, 128)]
    dims = [64, 128, 256] if not opts.quick else [64, 128]
    seqs = SEQS_QUICK if opts.quick else SEQS_FULL
    if opts.head_dims is not None:
        dims = opts.head_dims
    if opts.seqlens is not None:
        seqs = opts.seqlens
    return _budget_shapes(dims, seqs)


def plain_cases(opts: Options) -> List[Case]:
    cases = []
    for passname in ("fwd", "bwd"):
        if not opts.keep_pass(passname):
            continue
        for dt in opts.dtype_list(["bf16"]):
            if dt not in DTYPES:
                continue
            for b, h, s, d in _plain_shapes(opts):
                if opts.cpu and (not opts.keep_head_dim(d) or not opts.keep_seq(s)):
                    continue
                for causal in (False, True):
                    provs = ours("fastattn-{}", ("triton", "cuda", "torch"), _fastattn(passname))
                    provs += [_sdpa_provider(n, passname) for n in _sdpa_backends()]
                    params = {"pass": passname, "B": b, "H": h, "S": s, "D": d, "causal": causal, "dtype": dt}
                    flops = formulas.attention_flops(passname, b, h, s, s, d, causal)
                    cases.append(Case(
                        section=f"attention_{passname}",
                        label=f"B={b} H={h} S={s} D={d}{' causal' if causal else ''} {dt}",
                        params=params, make_inputs=_qkv_inputs(b, h, s, d, DTYPES[dt], causal, passname, seed=s + d),
                        providers=provs, check=_check, flops=flops, metric="tflops", x="S",
                        group_by=("D", "causal", "dtype"), weight=flops / 1e12 + 1))
    if opts.quick and not opts.cpu:
        # Headline shapes first (D = 128, S near 4k, non-causal): if autotuning or compiles eat the section's
        # share of the quick budget, the shapes that matter most have run.
        cases.sort(key=lambda c: (c.section, c.params["D"] != 128, abs(math.log2(c.params["S"]) - 12),
                                  c.params["causal"]))
    return cases


# ----------------------------------------------------------------------------------------------------------
# Attention with masks and biases
# ----------------------------------------------------------------------------------------------------------

def alibi_slopes(h: int) -> torch.Tensor:
    """The ALiBi head slopes 2^(-8 (i + 1) / H), float32 (H,)."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=torch.float32)


def _mask_inputs(variant: str, b, h, s, d, dtype, passname: str, seed: int):
    """q, k, v (+ dout) and the variant's mask in each provider's form: fastattn's bias / key_padding_mask,
    SDPA's attn_mask, and FlexAttention's (score_mod, block_mask) factory."""
    def make(device):
        inp = _qkv_inputs(b, h, s, d, dtype, variant == "alibi-causal", passname, seed)(device)
        g = generator(device, seed + 1)
        if variant == "t5-bias":
            grad = passname == "bwd"
            bias = randn((1, h, s, s), dtype, device, g, requires_grad=grad)
            inp.update(bias=bias, bias_grad=grad, sdpa_mask=bias)

            def flex(dev):
                def score_mod(score, bb, hh, qi, ki):
                    return score + bias[0, hh, qi, ki]
                return score_mod, None
        elif variant == "key-padding":
            lengths = torch.randint(s // 2, s + 1, (b,), generator=g, device=device)
            lengths[-1] = s // 2 + 1  # at least one row with real padding, on the batch the error slice reads
            kpm = torch.arange(s, device=device).view(1, s) < lengths.view(b, 1)  # (B, S), True = real token
            inp.update(kpm=kpm, sdpa_mask=kpm.view(b, 1, 1, s))

            def flex(dev):
                from torch.nn.attention.flex_attention import create_block_mask

                def mask_mod(bb, hh, qi, ki):
                    return ki < lengths[bb]
                return None, create_block_mask(mask_mod, b, None, s, s, device=dev)
        elif variant == "alibi-causal":
            slopes = alibi_slopes(h).to(device)
            i = torch.arange(s, device=device, dtype=torch.float32).view(s, 1)
            j = torch.arange(s, device=device, dtype=torch.float32).view(1, s)
            alibi = (slopes.view(h, 1, 1) * (j - i)).unsqueeze(0)              # (1, H, S, S): slope_h · (j - i)
            bias = alibi.to(dtype)
            sdpa = alibi.masked_fill(j > i, float("-inf")).to(dtype)           # SDPA gets the causal part too
            inp.update(bias=bias, sdpa_mask=sdpa, causal=True)

            def flex(dev):
                from torch.nn.attention.flex_attention import create_block_mask

                def score_mod(score, bb, hh, qi, ki):
                    return score + slopes[hh] * (ki - qi)

                def causal_mod(bb, hh, qi, ki):
                    return ki <= qi
                return score_mod, create_block_mask(causal_mod, None, None, s, s, device=dev)
        else:
            raise AssertionError(variant)
        inp["flex"] = flex
        return inp
    return make


MASK_VARIANTS = (("t5-bias", ("fwd", "bwd")), ("key-padding", ("fwd",)), ("alibi-causal", ("fwd",)))


def mask_cases(opts: Options) -> List[Case]:
    cases = []
    if opts.cpu:
        shapes = [(2, 2, 80, 64)]
    else:
        shapes = _budget_shapes(opts.head_dims or ([64] if opts.quick else [64, 128]),
                                opts.seqlens or (MASK_SEQS_QUICK if opts.quick else MASK_SEQS_FULL))
    for passname in ("fwd", "bwd"):
        if not opts.keep_pass(passname):
            continue
        for dt in opts.dtype_list(["bf16"]):
            if dt not in DTYPES or dt == "fp32":
                continue  # SDPA takes a float mask only in q's dtype; fp32 masks are not the point here
            for b, h, s, d in shapes:
                for variant, passes in MASK_VARIANTS:
                    if passname not in passes:
                        continue
                    causal = variant == "alibi-causal"
                    provs = ours("fastattn-{}", ("triton", "cuda", "torch"), _fastattn(passname))
                    provs.append(_sdpa_provider("sdpa", passname))
                    if opts.cpu or not opts.quick or (s in FLEX_SEQS_QUICK and passname == "fwd"):
                        provs.append(_flex_provider(passname, opts.cpu))  # each is a compile: few in quick
                    flops = formulas.attention_flops(passname, b, h, s, s, d, causal)
                    params = {"pass": passname, "variant": variant, "B": b, "H": h, "S": s, "D": d,
                              "causal": causal, "dtype": dt}
                    cases.append(Case(
                        section=f"mask_{passname}", label=f"{variant} B={b} H={h} S={s} D={d} {dt}", params=params,
                        make_inputs=_mask_inputs(variant, b, h, s, d, DTYPES[dt], passname, seed=s + d + 7),
                        providers=provs, check=_check, flops=flops, metric="tflops", x="S",
                        group_by=("variant", "D", "dtype"), weight=flops / 1e12 + 3,
                        notes=["FLOPs are counted dense (as without the mask), halved for causal."]))
    return cases


# ----------------------------------------------------------------------------------------------------------
# Attention dropout: its cost over the same call without it (the target: at most 15%, as FlashAttention's)
# ----------------------------------------------------------------------------------------------------------

DROPOUT_P = 0.1
DROPOUT_SEQS_FULL = [1024, 4096, 16384]
DROPOUT_SEQS_QUICK = [4096]


def _dropout_inputs(b, h, s, d, dtype, causal: bool, passname: str, seed: int, p: float):
    """q, k, v (+ dout), and a fixed state of torch's default CPU generator that every provider restores before
    its call, so that each call draws the same dropout (seed, offset) (recorded for the float64 check)."""
    def make(device):
        from fastattn.ops.attention import dropout_seed
        inp = _qkv_inputs(b, h, s, d, dtype, causal, passname, seed)(device)
        inp["rng_state"] = torch.Generator().manual_seed(seed + 5).get_state()
        saved = torch.get_rng_state()
        try:
            torch.set_rng_state(inp["rng_state"])
            drop_seed, drop_offset = dropout_seed()  # what fastattn.attention draws right after the restore
        finally:
            torch.set_rng_state(saved)
        inp["dropout"] = (p, drop_seed, drop_offset)
        return inp
    return make


def _sdpa_dropout_provider(passname: str, p: float) -> Provider:
    def build(inp):
        be = _sdpa_backends()["sdpa-flash"]
        q, k, v = inp["q"], inp["k"], inp["v"]
        _sdpa_call(be, q, k, v, is_causal=inp["causal"], dropout_p=p)

        def fwd():
            return _sdpa_call(be, q, k, v, is_causal=inp["causal"], dropout_p=p)
        if passname == "fwd":
            return fwd
        return _grads_fn(fwd(), inp)
    return Provider("sdpa-flash dropout", "baseline", build, checked=False,
                    note="PyTorch's own dropout stream: not the same mask, so no error column")


def dropout_cases(opts: Options) -> List[Case]:
    cases = []
    if opts.cpu:
        shapes = [(2, 3, 97, 64)]
    else:
        shapes = _budget_shapes(opts.head_dims or ([128] if opts.quick else [64, 128]),
                                opts.seqlens or (DROPOUT_SEQS_QUICK if opts.quick else DROPOUT_SEQS_FULL))
    for passname in ("fwd", "bwd"):
        if not opts.keep_pass(passname):
            continue
        for dt in opts.dtype_list(["bf16"]):
            if dt not in DTYPES:
                continue
            for b, h, s, d in shapes:
                for causal in ((False,) if opts.quick and not opts.cpu else (False, True)):
                    provs = ours("fastattn-{}", ("triton", "cuda", "torch"), _fastattn(passname, DROPOUT_P))
                    base = ours("fastattn-{} no dropout", ("triton", "cuda"), _fastattn(passname, 0.0),
                                kind="baseline")
                    for prov in base:
                        prov.checked = False  # a different function (no dropout): no error column
                    provs += base + [_sdpa_dropout_provider(passname, DROPOUT_P)]
                    params = {"pass": passname, "B": b, "H": h, "S": s, "D": d, "causal": causal, "dtype": dt,
                              "p": DROPOUT_P}
                    flops = formulas.attention_flops(passname, b, h, s, s, d, causal)
                    cases.append(Case(
                        section=f"dropout_{passname}", label=f"p={DROPOUT_P} B={b} H={h} S={s} D={d}"
                                                 f"{' causal' if causal else ''} {dt}",
                        params=params,
                        make_inputs=_dropout_inputs(b, h, s, d, DTYPES[dt], causal, passname, s + d + 11, DROPOUT_P),
                        providers=provs, check=_check, flops=flops, metric="tflops", x="S",
                        group_by=("D", "causal", "dtype"), weight=flops / 1e12 + 2,
                        notes=[f"Dropout cost = time of ours with p = {DROPOUT_P} over the 'no dropout' baseline of "
                               "the same backend (target: at most 1.15x, i.e. a speedup over it of at least 0.87). "
                               "FLOPs counted as without dropout."]))
    return cases
