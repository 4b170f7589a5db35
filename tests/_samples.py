"""One sample-input generator per op family, for opcheck and the torch.compile comparison (test_samples.py).

Each generator yields ``Sample``s for one backend: the custom op with its arguments exactly as the public
function would call it, and the public function itself over the same tensors. The inputs vary along axes
(dtype including float64, memory layout, head counts, sequence lengths, bias broadcast shape, per-row tensor
parameters, empty batch, ...), combined by ``grid``: mode "cover" (the default run: every value of every axis
at least once, in few cases), "each" (each value alone around a base case, with every bias broadcast shape)
and "full" (the cross product of the axes that interact); the last two are for the tests marked slow. Samples a backend declines for a documented reason (float64 on the kernel
backends, say) are left out for that backend, asking the backend's own ``reasons``, the dispatcher's check.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Sequence

import torch

import fastattn
from fastattn.ops import _dispatch
from fastattn.ops import attention as attn_ops
from fastattn.ops import sampling as sampling_ops
from fastattn.ops import softmax as softmax_ops

ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
DT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


@dataclass
class Sample:
    id: str
    op: object                       # the torch.library custom op
    args: tuple                      # its arguments, as the public function passes them (backend last)
    public: Callable                 # public(*tensors) -> a tensor or a tuple of tensors, through the public API
    tensors: tuple                   # public's arguments
    grad_inputs: tuple = ()          # indices into tensors whose gradients the compile test compares
    exact: bool = False              # outputs must match exactly (token ids)
    meta: Dict[str, object] = field(default_factory=dict)

    def resolve_args(self) -> tuple:
        """The op's arguments (built on first use where they need a kernel run, as the backward ops' do)."""
        if callable(self.args):
            self.args = self.args()
        return self.args


# In "cover" mode the i-th values of the axes meet: each axis lists its values so that a layout never meets
# a size that makes it contiguous after all (a transposed (1, V) tensor, say).
def grid(axes: Dict[str, Sequence], mode: str, edge: Sequence[str] = (), product: Sequence[str] = None
         ) -> Iterator[Dict[str, object]]:
    """Cases over named axes (the first value of each is its base):

    - "cover" (the default run): case i gives every axis its i-th value (its base once it has run out), so
      that every value of every axis appears, most in combination, in as many cases as the longest axis has
      values; the ``edge`` axes (empty batch, say, where nothing else would be exercised) take their other
      values alone, in cases of their own.
    - "each": the base, then each other value of each axis alone.
    - "full": the cross product of the ``product`` axes (all when None), the others cycling through their
      "each" cases alongside.
    """
    names = list(axes)
    base = {n: axes[n][0] for n in names}
    if mode == "full":
        crossed = [n for n in names if product is None or n in product]
        rest = {n: axes[n] for n in names if n not in crossed}
        others = list(grid(rest, "each")) if rest else [{}]
        for i, combo in enumerate(itertools.product(*(axes[n] for n in crossed))):
            yield {**base, **others[i % len(others)], **dict(zip(crossed, combo))}
        return
    if mode == "each":
        yield dict(base)
        for n in names:
            for value in axes[n][1:]:
                yield {**base, n: value}
        return
    assert mode == "cover", mode
    mixed = [n for n in names if n not in edge]
    for i in range(max(len(axes[n]) for n in mixed)):
        yield {**base, **{n: axes[n][i] for n in mixed if i < len(axes[n])}}
    for n in edge:
        for value in axes[n][1:]:
            yield {**base, n: value}


def _case_id(case: Dict[str, object]) -> str:
    parts = []
    for k, v in case.items():
        if isinstance(v, torch.dtype):
            v = DT[v]
        elif isinstance(v, tuple):
            v = "x".join(str(x) for x in v)
        parts.append(f"{k}={v}")
    return ",".join(parts)


def _rand(shape, dtype, seed, scale=1.0, device="cpu"):
    """Seeded normal data, drawn on the CPU, then moved (views are taken after the move, on the device)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)


def _laid_out(shape, dtype, seed, layout: str, expand_dim: int = 1, scale: float = 1.0, device="cpu"):
    """A random tensor of ``shape`` in memory layout ``layout``:
    contiguous; transposed (dims 1 and 2 swapped in memory, e.g. (B, S, H, D) viewed as (B, H, S, D));
    expanded (stride 0 along ``expand_dim``); sliced (every other element of the last dim of a wider one)."""
    shape = tuple(shape)
    if layout == "contiguous" or 0 in shape:  # an empty tensor has no layout to speak of (and opcheck's input
        # cloning cannot take an empty strided view)
        return _rand(shape, dtype, seed, scale, device)
    if layout == "transposed":
        if len(shape) < 3:
            return _rand(shape[::-1], dtype, seed, scale, device).t()
        swapped = list(shape)
        swapped[1], swapped[2] = swapped[2], swapped[1]
        return _rand(swapped, dtype, seed, scale, device).transpose(1, 2)
    if layout == "expanded":
        one = list(shape)
        one[expand_dim] = 1
        return _rand(one, dtype, seed, scale, device).expand(shape)
    if layout == "sliced":
        wide = shape[:-1] + (2 * shape[-1],)
        return _rand(wide, dtype, seed, scale, device)[..., ::2]
    raise AssertionError(layout)


def _backend_takes(backend: str, family: str, fn: str, device, dtype, probe=None, args=()) -> bool:
    b = _dispatch.backend_for(family, backend)
    if b.machine_reason(torch.device(device)) is not None:
        return True  # the caller's backend check reports the machine; never hide it here
    return not b.reasons(torch.device(device), fn, dtype, probe, args)


def _grad_ok(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------------------
# Attention: fastattn::attention_fwd, fastattn::attention_bwd
# ----------------------------------------------------------------------------------------------------------

# Every shape broadcastable to (B, Hq, Sq, Sk) with 4 dims (each dim 1 or full), then fewer dims.
def bias_shapes(b, hq, sq, sk) -> List[tuple]:
    four = [tuple(n if keep else 1 for n, keep in zip((b, hq, sq, sk), mask))
            for mask in itertools.product((True, False), repeat=4)]
    return four + [(hq, sq, sk), (sq, sk), (1, sk), (sk,)]


_ATTN_BASE = dict(b=2, hq=4, hkv=2, sq=5, sk=7, d=8)
ATTN_BIAS_DEFAULT = ["none", (1, 4, 5, 7), (2, 1, 1, 7), (1, 1, 5, 1), (2, 4, 5, 7), (5, 7), "expanded"]


def attention_axes(mode: str) -> Dict[str, Sequence]:
    b, hq, sq, sk = (_ATTN_BASE[n] for n in ("b", "hq", "sq", "sk"))
    return {
        "dtype": list(ALL_DTYPES),
        "layout": ["contiguous", "sliced", "transposed", "expanded"],
        "heads": [(4, 2), (4, 4), (4, 1)],                       # (Hq, Hkv): GQA, MHA, MQA
        "seq": [(5, 7), (7, 5), (6, 6), (1, 9)],                 # (Sq, Sk)
        "causal": [True, False],
        "bias": ATTN_BIAS_DEFAULT if mode == "cover" else ["none"] + bias_shapes(b, hq, sq, sk) + ["expanded"],
        "kpm": ["none", "ragged"],                               # ragged: one batch row pads, one sees no key
        "batch": [2, 0],
        "d": [8, 12, 32],                                        # 32: a head dim the CUDA kernels take
    }


# The axes whose cross product the slow run covers (the others cycle through their one-at-a-time cases).
FULL_AXES = ("dtype", "layout")
ATTN_FULL_AXES = ("dtype", "layout", "bias", "causal")


def _attention_cases(mode: str):
    yield from grid(attention_axes(mode), mode, edge=("batch",), product=ATTN_FULL_AXES)


def _attention_inputs(case, seed=0, device="cpu"):
    dtype, layout = case["dtype"], case["layout"]
    hq, hkv = case["heads"]
    sq, sk = case["seq"]
    b, d = case["batch"], case["d"]
    q = _laid_out((b, hq, sq, d), dtype, seed + 1, layout if layout != "expanded" else "contiguous", device=device)
    k = _laid_out((b, hkv, sk, d), dtype, seed + 2, layout, device=device)
    v = _laid_out((b, hkv, sk, d), dtype, seed + 3, layout, device=device)
    bias = None
    bshape = case["bias"]
    full_shape = (b, hq, sq, sk)
    if bshape == "expanded":  # a (1, Hq, 1, Sk) bias expanded: stride 0 along batch and queries
        bias = _rand((1, hq, 1, sk), dtype, seed + 4, device=device).expand(full_shape)
    elif bshape != "none":
        # The default shapes are written for the base sizes: adapt each dim kept at full size to this case.
        base = (_ATTN_BASE["b"], _ATTN_BASE["hq"], _ATTN_BASE["sq"], _ATTN_BASE["sk"])
        lead = 4 - len(bshape)
        shape = tuple(full_shape[lead + i] if n == base[lead + i] and n != 1 else n for i, n in enumerate(bshape))
        bias = _rand(shape, dtype, seed + 4, device=device)
    kpm = None
    if case["kpm"] == "ragged":
        kpm = torch.ones(b, sk, dtype=torch.bool, device=device)
        if b > 0:
            kpm[0, max(sk - 2, 1):] = False
        if b > 1:
            kpm[1, :] = False       # this row sees no key: zeros out, lse -inf
    return q, k, v, bias, kpm


def attention_samples(backend: str, device: str = "cpu", mode: str = "cover") -> Iterator[Sample]:
    """fastattn::attention_fwd samples, with gradients for float32/float64 (fp16/bf16 forward only)."""
    for i, case in enumerate(_attention_cases(mode)):
        q, k, v, bias, kpm = (None if t is None else t for t in _attention_inputs(case, seed=10 * i, device=device))
        scale = 0.35 if i % 2 else None
        causal = case["causal"]
        bias4 = None if bias is None else bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
        if not _backend_takes(backend, "attention", "attention_fwd", device, q.dtype, "unsupported_attention",
                              (q, k, v, bias4, kpm, causal)):
            continue
        grad = _grad_ok(q.dtype) and q.shape[0] > 0
        if grad:
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            if bias is not None and i % 2 == 0:
                bias = bias.detach().requires_grad_()
                bias4 = bias.reshape(bias4.shape)
        scale_f = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

        def public(q, k, v, bias, kpm, _c=causal, _s=scale, _b=backend):
            return fastattn.attention(q, k, v, causal=_c, scale=_s, bias=bias, key_padding_mask=kpm,
                                      return_lse=True, backend=_b)

        grads = tuple(j for j, t in enumerate((q, k, v, bias)) if t is not None and t.requires_grad)
        yield Sample(f"attention[{_case_id(case)}]", attn_ops.attention_fwd,
                     (q, k, v, bias4, kpm, causal, scale_f, backend), public, (q, k, v, bias, kpm), grads,
                     meta={**case, "base": i == 0})


def attention_bwd_samples(backend: str, device: str = "cpu", mode: str = "cover") -> Iterator[Sample]:
    """fastattn::attention_bwd samples: out and lse from the same backend's forward, a strided dout, and
    both values of bias_requires_grad where there is a bias."""
    def build(fwd_args, bias_grad, layout):
        q, k, v, bias4, kpm, causal, scale, _ = fwd_args
        q, k, v = (t.detach() for t in (q, k, v))
        bias4 = None if bias4 is None else bias4.detach()
        out, lse = attn_ops.attention_fwd(q, k, v, bias4, kpm, causal, scale, backend)
        dout = _laid_out(tuple(out.shape), out.dtype, 99, layout if layout == "transposed" else "contiguous",
                         device=device)
        return (dout, q, k, v, out, lse, bias4, kpm, causal, scale, bias_grad, backend)

    for s in attention_samples(backend, device, mode):
        q, k, v, bias4, kpm, causal, scale, _ = s.args
        if not _backend_takes(backend, "attention", "attention_bwd", device, q.dtype, "unsupported_attention",
                              (q, k, v, bias4, kpm, causal)):
            continue
        for bias_grad in ((False, True) if bias4 is not None else (False,)):
            yield Sample(f"attention_bwd[{s.id[10:-1]},dbias={bias_grad}]", attn_ops.attention_bwd,
                         lambda a=s.args, g=bias_grad, lay=s.meta["layout"]: build(a, g, lay),
                         None, (), meta=s.meta)


# ----------------------------------------------------------------------------------------------------------
# decode_attention: fastattn::decode_attention
# ----------------------------------------------------------------------------------------------------------

def decode_axes(mode: str) -> Dict[str, Sequence]:
    return {
        "dtype": list(ALL_DTYPES),
        "layout": ["contiguous", "sliced", "transposed", "expanded", "q_strided"],
        "heads": [(4, 2), (4, 4), (4, 1)],
        "lens": ["mixed", "full", "int64"],    # mixed: one empty sequence, one full, one partial
        "batch": [3, 0],
        "d": [8, 32],                          # 32: a head dim the CUDA kernels take
    }


def decode_samples(backend: str, device: str = "cpu", mode: str = "cover") -> Iterator[Sample]:
    smax = 9
    for i, case in enumerate(grid(decode_axes(mode), mode, edge=("batch",), product=FULL_AXES)):
        dtype, layout, (hq, hkv), b, d = case["dtype"], case["layout"], case["heads"], case["batch"], case["d"]
        if layout == "q_strided":  # q (B, Hq, D) as a view of a (Hq, B, D) tensor; contiguous caches
            q = _rand((hq, b, d), dtype, i, device=device)
            q = q.transpose(0, 1) if b > 0 else q.reshape(b, hq, d)
            cache_layout = "contiguous"
        else:
            q = _rand((b, hq, d), dtype, i, device=device)
            cache_layout = layout
        if cache_layout == "sliced" and b > 0:  # the first Smax positions of a longer cache: strided along heads
            kc = _rand((b, hkv, smax + 4, d), dtype, i + 1, device=device)[:, :, :smax]
            vc = _rand((b, hkv, smax + 4, d), dtype, i + 2, device=device)[:, :, :smax]
        else:
            kc = _laid_out((b, hkv, smax, d), dtype, i + 1, cache_layout, device=device)
            vc = _laid_out((b, hkv, smax, d), dtype, i + 2, cache_layout, device=device)
        pattern = {"mixed": [0, smax, 4], "full": [smax] * 3, "int64": [2, 7, smax]}[case["lens"]]
        lens = torch.tensor((pattern * b)[:b], dtype=torch.int64 if case["lens"] == "int64" else torch.int32)
        q, kc, vc, lens = (t.to(device) for t in (q, kc, vc, lens))
        lens32 = lens.to(torch.int32)
        if not _backend_takes(backend, "attention", "decode_attention", device, dtype, "unsupported_decode",
                              (q, kc, vc, lens32)):
            continue
        scale = 0.3 if i % 2 else None
        scale_f = 1.0 / math.sqrt(d) if scale is None else scale

        def public(q, kc, vc, lens, _s=scale, _b=backend):
            return fastattn.decode_attention(q, kc, vc, lens, scale=_s, backend=_b)

        yield Sample(f"decode[{_case_id(case)}]", attn_ops.decode_attention_op,
                     (q, kc, vc, lens32, scale_f, backend), public, (q, kc, vc, lens), meta={**case, "base": i == 0})


# ----------------------------------------------------------------------------------------------------------
# softmax: fastattn::softmax_fwd, fastattn::softmax_bwd
# ----------------------------------------------------------------------------------------------------------

def softmax_axes(mode: str) -> Dict[str, Sequence]:
    return {
        "dtype": list(ALL_DTYPES),
        "layout": ["contiguous", "sliced", "transposed", "expanded"],
        "dim": [-1, 0, 1],
        "temperature": ["float", "per_row", "broadcast"],   # 0.7; a tensor per row; a tensor over fewer dims
        "shape": [(3, 4, 9), (3, 1, 33)],
        "empty": ["no", "rows", "width"],                   # no rows (a 0 leading dim), or rows of width 0
    }


def _softmax_temperature(kind, shape, dim, dtype, seed):
    if kind == "float":
        return 0.7
    tshape = list(shape)
    tshape[dim] = 1
    if kind == "broadcast":  # without the leading dim: broadcasts over it (or it is dim itself, of size 1)
        tshape = tshape[1:]
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*tshape, generator=g) + 0.5).to(dtype)


def softmax_samples(backend: str, device: str = "cpu", mode: str = "cover") -> Iterator[Sample]:
    """fastattn::softmax_fwd samples (with gradients for float32/float64)."""
    for i, case in enumerate(grid(softmax_axes(mode), mode, edge=("empty",), product=FULL_AXES + ("dim",))):
        dtype, layout, dim, shape = case["dtype"], case["layout"], case["dim"], case["shape"]
        if case["empty"] != "no":
            shape = (0,) + shape[1:] if case["empty"] == "rows" else shape[:-1] + (0,)
        x = _laid_out(shape, dtype, i, layout, device=device)
        if not _backend_takes(backend, "softmax", "softmax_fwd", device, dtype):
            continue
        t = _softmax_temperature(case["temperature"], shape, dim, dtype, i + 100)
        if isinstance(t, torch.Tensor):
            t = t.to(device)
            t_op, temp = t.reshape((1,) * (x.dim() - t.dim()) + tuple(t.shape)), 1.0
        else:
            t_op, temp = None, t
        if _grad_ok(dtype) and x.numel() > 0:
            x = x.detach().requires_grad_()

        def public(x, t, _d=dim, _t=t, _b=backend):
            return fastattn.softmax(x, _t if t is None else t, _d, backend=_b)

        tt = t if isinstance(t, torch.Tensor) else None
        yield Sample(f"softmax[{_case_id(case)}]", softmax_ops.softmax_fwd,
                     (x, t_op, temp, dim % x.dim(), backend), public, (x, tt),
                     (0,) if x.requires_grad else (), meta={**case, "base": i == 0})


def softmax_bwd_samples(backend: str, device: str = "cpu", mode: str = "cover") -> Iterator[Sample]:
    """fastattn::softmax_bwd samples: y from the same backend's forward, grad in the sample's layout."""
    def build(fwd_args, layout):
        x, t_op, temp, dim, _ = fwd_args
        y = softmax_ops.softmax_fwd(x.detach(), t_op, temp, dim, backend)
        g = _laid_out(tuple(y.shape), y.dtype, 7, layout, device=device)
        return (g, y, t_op, temp, dim, backend)

    for s in softmax_samples(backend, device, mode):
        if not _backend_takes(backend, "softmax", "softmax_bwd", device, s.args[0].dtype):
            continue
        yield Sample(f"softmax_bwd[{s.id[8:-1]}]", softmax_ops.softmax_bwd,
                     lambda a=s.args, lay=s.meta["layout"]: build(a, lay), None, (), meta=s.meta)


# ----------------------------------------------------------------------------------------------------------
# Sampling: fastattn::sample, fastattn::top_k_top_p_filter
# ----------------------------------------------------------------------------------------------------------

def sampling_axes(mode: str) -> Dict[str, Sequence]:
    return {
        "dtype": list(ALL_DTYPES),
        "layout": ["contiguous", "sliced", "transposed", "expanded"],
        "params": ["scalar", "per_row", "mixed", "off", "greedy"],
        "batch": [4, 1],
        "vocab": [20, 1, 67],
        "empty": ["no", "yes"],                             # an empty batch
    }


def _sampling_params(kind: str, b: int, device):
    def row(values, dtype=torch.float32):
        return torch.tensor((values * b)[:b], dtype=dtype, device=device)

    if kind == "scalar":
        return dict(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05)
    if kind == "per_row":  # a greedy row, rows with each filter off, and some with all three on
        return dict(temperature=row([0.5, 0.0, 1.0, 1.3]), top_k=row([0, 3, 1, 8], torch.int64),
                    top_p=row([0.9, 1.0, 0.5, 0.8]), min_p=row([0.0, 0.1, 0.0, 0.2]))
    if kind == "mixed":
        return dict(temperature=0.9, top_k=row([4, 0, 2, 7], torch.int32), top_p=0.95,
                    min_p=row([0.0, 0.3, 0.05, 0.0], torch.float64))
    if kind == "off":
        return dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    if kind == "greedy":
        return dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)
    raise AssertionError(kind)


def sampling_samples(backend: str, device: str = "cpu", mode: str = "cover") -> Iterator[Sample]:
    """fastattn::sample and fastattn::top_k_top_p_filter samples, per-row parameters as the public functions
    pass them (validated and converted by the same code)."""
    for i, case in enumerate(grid(sampling_axes(mode), mode, edge=("empty",), product=FULL_AXES + ("params",))):
        dtype, layout, b, v = case["dtype"], case["layout"], case["batch"], case["vocab"]
        b = 0 if case["empty"] == "yes" else b
        # expanded: every row the same memory (stride 0 along the batch)
        logits = _laid_out((b, v), dtype, i, layout, expand_dim=0, scale=3.0, device=device)
        if not _backend_takes(backend, "sampling", "sample", device, dtype):
            continue
        params = _sampling_params(case["params"], b, device)
        (tt, t), (kt, k), (pt, p), (mt, m) = sampling_ops._checked_params(logits, **params)
        seed = torch.arange(b, dtype=torch.int64, device=device) * 7919 + i
        tensors = (logits, seed) + tuple(params[n] for n in ("temperature", "top_k", "top_p", "min_p")
                                         if isinstance(params[n], torch.Tensor))
        names = [n for n in ("temperature", "top_k", "top_p", "min_p") if isinstance(params[n], torch.Tensor)]

        def public_sample(logits, seed, *ts, _p=params, _n=names, _b=backend):
            kw = {**_p, **dict(zip(_n, ts))}
            return fastattn.sample(logits, seed=seed, backend=_b, **kw)

        def public_filter(logits, seed, *ts, _p=params, _n=names, _b=backend):
            kw = {**_p, **dict(zip(_n, ts))}
            return fastattn.top_k_top_p_filter(logits, backend=_b, **kw)

        cid = _case_id(case)
        yield Sample(f"sample[{cid}]", sampling_ops.sample_op, (logits, tt, t, kt, k, pt, p, mt, m, seed, backend),
                     public_sample, tensors, exact=True, meta={**case, "base": i == 0})
        if _backend_takes(backend, "sampling", "top_k_top_p_filter", device, dtype):
            yield Sample(f"filter[{cid}]", sampling_ops.filter_op, (logits, tt, t, kt, k, pt, p, mt, m, backend),
                         public_filter, tensors, exact=True, meta={**case, "base": i == 0})


FAMILIES = {
    "attention": attention_samples,
    "attention_bwd": attention_bwd_samples,
    "decode": decode_samples,
    "softmax": softmax_samples,
    "softmax_bwd": softmax_bwd_samples,
    "sampling": sampling_samples,
}
