"""Loader and thin wrappers for the compiled CUDA extension ``fastattn._C``, or its emulated build.

``fastattn._C`` registers C++/CUDA ops in the ``fastattn`` namespace (csrc/binding.cpp); this module loads it
lazily on the first ``status()`` call, registers the ops' fake (meta) kernels, and exposes one function per
kernel for fastattn/ops/*. Importing this module loads nothing and never touches the GPU.

With FASTATTN_CUDA_EMULATE=1 set before fastattn is imported, ``status()`` builds (or finds cached) and loads
the emulated build instead (fastattn/_emu.py): the same csrc kernels compiled for the CPU, whose ops have the
same names and schemas and take CPU tensors. ``build()`` says which one "cuda" is.

Kernel functions here (the set fastattn/ops checks with ``hasattr``), with the signatures of
fastattn/triton/attention's for attention:
    softmax_fwd(x2d, inv_temperature, inv_temp) -> y2d
    softmax_bwd(grad2d, y2d, inv_temperature, inv_temp) -> dx2d
    sample(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p, seeds) -> tokens
    top_k_top_p_filter(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p) -> z
    attention_fwd(q, k, v, bias, key_padding_mask, causal, scale, dropout_p=0.0, seed=0, offset=0) -> (out, lse)
    attention_bwd(dout, q, k, v, out, lse, bias, key_padding_mask, causal, scale, bias_requires_grad,
                  dropout_p=0.0, seed=0, offset=0) -> (dq, dk, dv, dbias or None)
    decode_attention(q, k_cache, v_cache, cache_seqlens, scale) -> out
    unsupported_decode(q, k_cache, v_cache, cache_seqlens) -> None or a reason (metadata only)
    unsupported_attention(q, k, v, bias, key_padding_mask, causal, dropout_p=0.0) -> None or a reason (metadata only)
"""
from __future__ import annotations

import importlib
import threading
from typing import Optional

import torch
from torch import Tensor

from . import _emu

_OPS = ("softmax_fwd_cuda", "attn_fwd_cuda", "attn_bwd_cuda", "attn_decode_cuda")  # every op csrc/binding.cpp defines; all must be present
# ---- cudasmp: softmax backward, sampling ----
_OPS += ("softmax_bwd_cuda", "sample_cuda", "top_k_top_p_filter_cuda")
# ---- end cudasmp ----

_status: "bool | str | None" = None
_lock = threading.Lock()


def status() -> "bool | str":
    """True when fastattn._C is loaded and registered its ops, else a human-readable reason. Cached."""
    global _status
    if _status is None:
        with _lock:
            if _status is None:
                _status = _load_emulated() if _emu.emulated() else _load()
    return _status


def build() -> "str | None":
    """Which build "cuda" is: "emulated" (FASTATTN_CUDA_EMULATE=1), "nvcc" (fastattn._C), None when neither loads."""
    if status() is not True:
        return None
    return "emulated" if _emu.emulated() else "nvcc"


def _load() -> "bool | str":
    try:
        importlib.import_module("fastattn._C")
    except ModuleNotFoundError as e:
        if e.name == "fastattn._C":
            return not_built_reason()
        return f"fastattn._C failed to import: {e}"
    except (ImportError, OSError) as e:  # e.g. undefined symbol: built against another torch
        return (f"fastattn._C failed to load ({e.__class__.__name__}: {e}){_built_against()}; rebuild it against "
                f"this torch: {_REINSTALL}")
    missing = [name for name in _OPS if not hasattr(torch.ops.fastattn, name)]
    if missing:
        return f"fastattn._C is loaded but lacks the ops {missing}: a stale build, reinstall fastattn"
    _register_fakes()
    return True


def _load_emulated() -> "bool | str":
    """Build (or find in the cache) and load the emulated library; it registers the ops for CPU tensors."""
    try:
        if _emu.asan_requested() and not _emu.asan_loaded():
            return ("FASTATTN_EMU_ASAN=1: the AddressSanitizer build needs libasan loaded first; start the process "
                    f"with LD_PRELOAD={_emu.asan_preload()} (and ASAN_OPTIONS=detect_leaks=0)")
        lib = _emu.build_extension()
    except (_emu.EmuBuildError, OSError) as e:  # OSError: e.g. the cache folder is not writable
        return f"the emulated CUDA build (FASTATTN_CUDA_EMULATE=1) is unavailable: {e}"
    try:
        torch.ops.load_library(str(lib))
    except OSError as e:
        return f"the emulated CUDA build {lib} failed to load ({e})"
    missing = [name for name in _OPS if not hasattr(torch.ops.fastattn, name)]
    if missing:
        return f"the emulated CUDA build {lib} lacks the ops {missing}"
    _register_fakes()
    return True


# ----------------------------------------------------------------------------------------------------------
# Why the extension is missing: the build record fastattn/_build_info.py, written by setup.py (git-ignored)
# ----------------------------------------------------------------------------------------------------------
_REINSTALL = "pip install --no-build-isolation ."


def _build_info():
    """The module setup.py wrote when this copy of fastattn was built, or None (never built: a bare checkout)."""
    try:
        from . import _build_info as info
    except ImportError:
        return None
    return info


def not_built_reason() -> str:
    """Why fastattn._C is not there, as the build recorded it, with the command that builds it."""
    info = _build_info()
    if info is None:
        return ("extension not built: this fastattn was never built by setup.py (a source checkout on the path, "
                f"no fastattn/_build_info.py); to build it: {_REINSTALL} (add -e for an editable install)")
    if getattr(info, "BUILT_CUDA", False):
        return ("extension missing: setup.py chose to build fastattn._C, but the module is not installed (the "
                f"build failed, or the file was removed); rebuild it: {_REINSTALL}")
    reason = getattr(info, "REASON", None) or "no reason recorded"
    fix = getattr(info, "FIX", None)
    return f"extension not built at install: {reason}" + (f"; to build it: {fix}" if fix else "")


def _built_against() -> str:
    """' (built against torch X, this is torch Y)' when the build record names another torch, else ''."""
    info = _build_info()
    built = getattr(info, "TORCH", None) if info is not None else None
    if built and built != torch.__version__:
        return f" (built against torch {built}, this is torch {torch.__version__})"
    return ""


def _register_fakes() -> None:
    """Fake kernels for the C++ ops (shape/dtype/device only), for FakeTensor, torch.compile and meta tensors.

    Registered from this module because csrc/binding.cpp names it with m.set_python_module("fastattn._cuda").
    They check what the CUDA kernels' TORCH_CHECKs check that depends on metadata only.
    """

    @torch.library.register_fake("fastattn::softmax_fwd_cuda")
    def _softmax_fwd_cuda_fake(x: Tensor, inv_temperature: Optional[Tensor], inv_temp: float) -> Tensor:
        torch._check(x.dim() == 2, lambda: f"fastattn::softmax_fwd_cuda: x must be 2-D, got shape {tuple(x.shape)}")
        torch._check(
            x.dtype in (torch.float32, torch.float16, torch.bfloat16),
            lambda: f"fastattn::softmax_fwd_cuda: x must be float32, float16 or bfloat16, got {x.dtype}",
        )
        if inv_temperature is not None:
            torch._check(
                inv_temperature.dtype == torch.float32 and inv_temperature.numel() == x.shape[0],
                lambda: "fastattn::softmax_fwd_cuda: inv_temperature must be float32 with one element per row",
            )
        # The CUDA kernel always returns a new contiguous tensor (never x's strides).
        return x.new_empty(x.shape)

    _register_fakes_cudasmp()
    @torch.library.register_fake("fastattn::attn_fwd_cuda")
    def _attn_fwd_cuda_fake(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                            key_padding_mask: Optional[Tensor], causal: bool, scale: float, dropout_p: float = 0.0,
                            seed: int = 0, offset: int = 0):
        torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4,
                     lambda: "fastattn::attn_fwd_cuda: q, k and v must be 4-D (B, H, S, D)")
        torch._check(q.dtype in (torch.float16, torch.bfloat16),
                     lambda: f"fastattn::attn_fwd_cuda: q must be float16 or bfloat16, got {q.dtype}")
        torch._check(q.shape[-1] in ATTN_HEAD_DIMS,
                     lambda: f"fastattn::attn_fwd_cuda: head dim {q.shape[-1]} has no kernel {ATTN_HEAD_DIMS}")
        b, hq, sq, d = q.shape
        return q.new_empty((b, hq, sq, d)), q.new_empty((b, hq, sq), dtype=torch.float32)

    @torch.library.register_fake("fastattn::attn_bwd_cuda")
    def _attn_bwd_cuda_fake(dout, q, k, v, out, lse, bias, key_padding_mask, causal: bool, scale: float,
                            bias_requires_grad: bool, dropout_p: float = 0.0, seed: int = 0, offset: int = 0):
        torch._check(q.dtype in (torch.float16, torch.bfloat16),
                     lambda: f"fastattn::attn_bwd_cuda: q must be float16 or bfloat16, got {q.dtype}")
        torch._check(q.shape[-1] in ATTN_BWD_HEAD_DIMS,
                     lambda: f"fastattn::attn_bwd_cuda: head dim {q.shape[-1]} has no backward {ATTN_BWD_HEAD_DIMS}")
        b, hq, sq, _ = q.shape
        dbias = (q.new_empty((b, hq, sq, k.shape[2]), dtype=torch.float32) if bias_requires_grad
                 else q.new_empty((0,), dtype=torch.float32))
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias

    @torch.library.register_fake("fastattn::attn_decode_cuda")
    def _attn_decode_cuda_fake(q, k_cache, v_cache, cache_seqlens, scale: float, num_splits: int):
        torch._check(q.dim() == 3, lambda: "fastattn::attn_decode_cuda: q must be (B, Hq, D)")
        torch._check(q.dtype in (torch.float16, torch.bfloat16),
                     lambda: f"fastattn::attn_decode_cuda: q must be float16 or bfloat16, got {q.dtype}")
        return q.new_empty(q.shape)


def _require() -> None:
    st = status()
    if st is not True:
        raise RuntimeError(f"fastattn CUDA extension unavailable: {st}")


def softmax_fwd(x2d: Tensor, inv_temperature: Optional[Tensor], inv_temp: float) -> Tensor:
    """softmax(x2d * inv_t) along the last dim, fp32 math, result in x2d's dtype (new contiguous tensor).

    x2d: CUDA (rows, n) float32/float16/bfloat16 with stride 1 along n; inv_temperature: None or a contiguous
    float32 CUDA tensor of rows elements (1 / T per row); otherwise inv_temp (1 / T) applies to every row.
    (CPU tensors in the emulated build.)
    """
    if _status is not True:
        _require()
    return torch.ops.fastattn.softmax_fwd_cuda(x2d, inv_temperature, float(inv_temp))


# ---- cudasmp: softmax backward, sampling (csrc/softmax/softmax_bwd*, csrc/sampling/) ----------------------------
def _register_fakes_cudasmp() -> None:
    @torch.library.register_fake("fastattn::softmax_bwd_cuda")
    def _softmax_bwd_cuda_fake(dy: Tensor, y: Tensor, inv_temperature: Optional[Tensor], inv_temp: float) -> Tensor:
        torch._check(y.dim() == 2, lambda: f"fastattn::softmax_bwd_cuda: y must be 2-D, got shape {tuple(y.shape)}")
        torch._check(
            y.dtype in (torch.float32, torch.float16, torch.bfloat16),
            lambda: f"fastattn::softmax_bwd_cuda: y must be float32, float16 or bfloat16, got {y.dtype}",
        )
        torch._check(dy.shape == y.shape and dy.dtype == y.dtype,
                     lambda: "fastattn::softmax_bwd_cuda: dy must match y's shape and dtype")
        if inv_temperature is not None:
            torch._check(
                inv_temperature.dtype == torch.float32 and inv_temperature.numel() == y.shape[0],
                lambda: "fastattn::softmax_bwd_cuda: inv_temperature must be float32 with one element per row",
            )
        return y.new_empty(y.shape)

    def _check_logits(logits: Tensor, op: str) -> None:
        torch._check(logits.dim() == 2, lambda: f"fastattn::{op}: logits must be 2-D (B, V), got {tuple(logits.shape)}")
        torch._check(
            logits.dtype in (torch.float32, torch.float16, torch.bfloat16),
            lambda: f"fastattn::{op}: logits must be float32, float16 or bfloat16, got {logits.dtype}",
        )

    @torch.library.register_fake("fastattn::sample_cuda")
    def _sample_cuda_fake(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p,
                          seeds, seed):
        _check_logits(logits, "sample_cuda")
        return logits.new_empty((logits.shape[0],), dtype=torch.int64)

    @torch.library.register_fake("fastattn::top_k_top_p_filter_cuda")
    def _filter_cuda_fake(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p):
        _check_logits(logits, "top_k_top_p_filter_cuda")
        return logits.new_empty(logits.shape, dtype=torch.float32)


def softmax_bwd(grad2d: Tensor, y2d: Tensor, inv_temperature: Optional[Tensor], inv_temp: float) -> Tensor:
    """dx = y * (g - sum(g * y)) * inv_t along the last dim, fp32 math, y2d's dtype (new contiguous tensor).

    grad2d, y2d: (rows, n) with y2d's dtype and device, stride 1 along n; inv_temperature / inv_temp as in
    softmax_fwd.
    """
    if _status is not True:
        _require()
    return torch.ops.fastattn.softmax_bwd_cuda(grad2d, y2d, inv_temperature, float(inv_temp))


def _logits_rows(logits: Tensor) -> Tensor:
    return logits if logits.shape[1] <= 1 or logits.stride(1) == 1 else logits.contiguous()


def sample(logits: Tensor, temperature_t: Optional[Tensor], temperature: float, top_k_t: Optional[Tensor],
           top_k: int, top_p_t: Optional[Tensor], top_p: float, min_p_t: Optional[Tensor], min_p: float,
           seeds) -> Tensor:
    """One token id per row of logits (B, V) fp32/fp16/bf16: int64 (B,), -1 for a NaN / non-finite row.

    The same signature as fastattn.triton.sampling.sample: each *_t is None or a (B,) tensor of any stride (or
    0-dim; any float dtype, int32/int64 for top_k) that the kernel clamps as it reads it, else the number beside
    it is used for every row; seeds is an int64 (B,) tensor or one int for every row.
    """
    if _status is not True:
        _require()
    logits = _logits_rows(logits)
    if isinstance(seeds, Tensor):
        return torch.ops.fastattn.sample_cuda(logits, temperature_t, float(temperature), top_k_t, int(top_k),
                                              top_p_t, float(top_p), min_p_t, float(min_p), seeds.contiguous(), 0)
    return torch.ops.fastattn.sample_cuda(logits, temperature_t, float(temperature), top_k_t, int(top_k), top_p_t,
                                          float(top_p), min_p_t, float(min_p), None, int(seeds))


def top_k_top_p_filter(logits: Tensor, temperature_t: Optional[Tensor], temperature: float,
                       top_k_t: Optional[Tensor], top_k: int, top_p_t: Optional[Tensor], top_p: float,
                       min_p_t: Optional[Tensor], min_p: float) -> Tensor:
    """logits / T as float32 (B, V) with the tokens top-k, top-p and min-p remove set to -inf (the semantics
    of fastattn.triton.sampling.top_k_top_p_filter)."""
    if _status is not True:
        _require()
    return torch.ops.fastattn.top_k_top_p_filter_cuda(_logits_rows(logits), temperature_t, float(temperature),
                                                      top_k_t, int(top_k), top_p_t, float(top_p), min_p_t,
                                                      float(min_p))
# ---- end cudasmp ----
# ----------------------------------------------------------------------------------------------------------
# Attention (csrc/attention/)
# ----------------------------------------------------------------------------------------------------------

ATTN_HEAD_DIMS = (32, 64, 96, 128, 256)  # the compiled head dims (csrc/generate.py ATTN_HEAD_DIMS)
ATTN_BWD_HEAD_DIMS = (32, 64, 96, 128)  # with a backward (csrc/generate.py ATTN_BWD_HEAD_DIMS)
_ATTN_DTYPES = (torch.float16, torch.bfloat16)
_MAX_GRID_YZ = 65535
_BIAS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernel_device() -> str:
    return "cpu" if _emu.emulated() else "cuda"


def _unsupported_common(q: Tensor, tensors, d: int) -> Optional[str]:
    if q.dtype not in _ATTN_DTYPES:
        return (f"dtype {str(q.dtype).replace('torch.', '')} (the CUDA attention kernels take float16 and "
                "bfloat16 only)")
    if d not in ATTN_HEAD_DIMS:
        return f"head dim {d} (the CUDA attention kernels are compiled for {ATTN_HEAD_DIMS})"
    dev = _kernel_device()
    if any(t.device.type != dev for t in (q, *tensors)):
        return f"all tensors must be {dev} tensors for the {'emulated ' if dev == 'cpu' else ''}CUDA kernels"
    return None


def unsupported_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                          key_padding_mask: Optional[Tensor], causal: bool, dropout_p: float = 0.0) -> Optional[str]:
    """None if the CUDA kernels run this attention call, else a short reason. Shapes, dtypes, devices only.
    dropout_p: the kernels draw fastattn.reference.dropout_keep's stream themselves (any p in [0, 1))."""
    why = _unsupported_common(q, [t for t in (k, v, bias, key_padding_mask) if t is not None], q.shape[-1])
    if why is not None:
        return why
    if q.shape[0] > _MAX_GRID_YZ or q.shape[1] > _MAX_GRID_YZ:
        return f"batch or heads > {_MAX_GRID_YZ}"
    if bias is not None and (bias.dim() != 4 or not bias.is_floating_point()):
        return "bias must be a 4-D float tensor"
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        return "key_padding_mask must be bool"
    if q.shape[-1] not in ATTN_BWD_HEAD_DIMS and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, bias)):
        return (f"head dim {q.shape[-1]} with inputs that require grad (the CUDA attention backward is compiled "
                f"for {ATTN_BWD_HEAD_DIMS})")
    return None


def _aligned(t: Tensor) -> Tensor:
    """t itself when the kernels can read it in place (unit stride along D, other strides multiples of 8 elements,
    16-byte aligned address), else a contiguous copy."""
    ok = t.stride(-1) == 1 or t.shape[-1] <= 1
    ok = ok and all(st % 8 == 0 or n <= 1 for st, n in zip(t.stride()[:-1], t.shape[:-1]))
    if ok and t.data_ptr() % 16 == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], key_padding_mask: Optional[Tensor],
                  causal: bool, scale: float, dropout_p: float = 0.0, seed: int = 0, offset: int = 0):
    """(out (B, Hq, Sq, D) in q's dtype, contiguous; lse (B, Hq, Sq) float32): csrc/attention/attn_fwd_kernel.cuh.

    q (B, Hq, Sq, D), k, v (B, Hkv, Sk, D), float16 / bfloat16, any strides: (B, S, H, D) views transposed to
    (B, H, S, D) are read in place; a tensor whose strides or address cp.async cannot read is copied first.
    bias: 4-D, broadcastable to (B, Hq, Sq, Sk), read through its expanded (stride 0) view; a float64 bias is
    converted to float32. key_padding_mask: bool (B, Sk), True = real key. dropout_p > 0: the probabilities
    are dropped by the stream of (seed, offset) (fastattn.reference.dropout_keep, bit for bit) before P V and the
    kept ones scaled by 1 / (1 - dropout_p); lse stays that of the undropped softmax.
    """
    if _status is not True:
        _require()
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    if bias is not None and bias.dtype not in _BIAS_DTYPES:
        bias = bias.to(torch.float32)
    if key_padding_mask is not None and key_padding_mask.shape[-1] > 1 and key_padding_mask.stride(-1) != 1:
        key_padding_mask = key_padding_mask.contiguous()
    return torch.ops.fastattn.attn_fwd_cuda(q, k, v, bias, key_padding_mask, bool(causal), float(scale),
                                            float(dropout_p), int(seed), int(offset))


def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, bias: Optional[Tensor],
                  key_padding_mask: Optional[Tensor], causal: bool, scale: float, bias_requires_grad: bool,
                  dropout_p: float = 0.0, seed: int = 0, offset: int = 0):
    """(dq, dk, dv, dbias or None): contiguous, in the inputs' shapes and dtype; dbias in bias's shape and dtype.

    csrc/attention/attn_bwd_kernel.cuh: delta = rowsum(dout * out), then a dK/dV kernel (key blocks, the GQA
    group looped inside) and a dQ kernel, P recomputed from lse; deterministic, no atomics. dbias: the dK/dV
    kernel writes dS into a float32 (B, Hq, Sq, Sk) buffer, summed here over bias's broadcast dims.
    dropout_p, seed, offset: the forward's dropout; both kernels regenerate its mask (never stored).
    """
    if _status is not True:
        _require()
    dout = dout.to(q.dtype)
    q, k, v, out, dout = _aligned(q), _aligned(k), _aligned(v), _aligned(out), _aligned(dout)
    want_dbias = bias is not None and bias_requires_grad
    bias_k = bias
    if bias_k is not None and bias_k.dtype not in _BIAS_DTYPES:
        bias_k = bias_k.to(torch.float32)
    if key_padding_mask is not None and key_padding_mask.shape[-1] > 1 and key_padding_mask.stride(-1) != 1:
        key_padding_mask = key_padding_mask.contiguous()
    dq, dk, dv, db = torch.ops.fastattn.attn_bwd_cuda(dout, q, k, v, out, lse.contiguous(), bias_k,
                                                      key_padding_mask, bool(causal), float(scale), want_dbias,
                                                      float(dropout_p), int(seed), int(offset))
    dbias = None
    if want_dbias:
        dims = tuple(i for i, n in enumerate(bias.shape) if n == 1 and db.shape[i] != 1)
        dbias = (db.sum(dim=dims, keepdim=True) if dims else db).to(bias.dtype)
    return dq, dk, dv, dbias


# Decode splits (flash-decoding): one wave of CTAs, about one per SM. A CTA (4 warps, a 3-6 stage cp.async
# pipeline) keeps 40-72 KB of K/V in flight, above the ~32 KB per SM that Little's law asks for at an H200's
# copy bandwidth and ~1 us loaded latency (benchmarks/NOTES.md, CUDA decode v2), so more CTAs than SMs would only
# add partials to combine; when the batch x KV heads x 16-head tiles already reach the SM count, no split (and
# no combine launch). Each split keeps >= _MIN_SPLIT keys. The SM count is asked once per device (cached),
# never per call. The emulated build pretends a 4-SM chip and allows one-block splits, so that the small tests
# take the split + combine path.
_MIN_SPLIT, _MAX_SPLITS = 128, 128
_EMU_SMS, _EMU_MIN_SPLIT = 4, 32
_sm_counts: dict = {}


def _sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    n = _sm_counts.get(index)
    if n is None:
        n = _sm_counts[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return n


def decode_num_splits(b: int, hq: int, hkv: int, smax: int, device: torch.device) -> int:
    """Key splits per (batch, KV head, 16-head tile): SMs // tiles (one wave), >= 1, each >= _MIN_SPLIT keys."""
    if _emu.emulated():
        sms, min_split = _EMU_SMS, _EMU_MIN_SPLIT
    else:
        sms, min_split = _sm_count(device), _MIN_SPLIT
    tiles = max(1, b * hkv * -(-(hq // max(hkv, 1)) // 16))
    return max(1, min(sms // tiles, -(-smax // min_split), _MAX_SPLITS))


def unsupported_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor) -> Optional[str]:
    """None if the CUDA decode kernels run this call, else a short reason. Shapes, dtypes, devices only."""
    why = _unsupported_common(q, (k_cache, v_cache, cache_seqlens), q.shape[-1])
    if why is not None:
        return why
    if q.shape[0] > _MAX_GRID_YZ:
        return f"batch > {_MAX_GRID_YZ}"
    return None


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, scale: float,
                     num_splits: Optional[int] = None) -> Tensor:
    """out (B, Hq, D) in q's dtype: csrc/attention/attn_decode_kernel.cuh. q (B, Hq, D) against the first
    clamp(cache_seqlens[b], 0, Smax) positions of the caches (B, Hkv, Smax, D), any strides with unit stride along
    D ((B, Smax, Hkv, D) caches viewed transposed are read in place). num_splits: key splits (default: the
    heuristic above); with more than one, fp32 partials and a log-sum-exp combine launch."""
    if _status is not True:
        _require()
    q, k_cache, v_cache = _aligned(q), _aligned(k_cache), _aligned(v_cache)
    seqlens = cache_seqlens if cache_seqlens.dtype == torch.int32 else cache_seqlens.to(torch.int32)
    seqlens = seqlens.contiguous()
    if num_splits is None:
        b, hq, _ = q.shape
        num_splits = decode_num_splits(b, hq, k_cache.shape[1], k_cache.shape[2], q.device)
    return torch.ops.fastattn.attn_decode_cuda(q, k_cache, v_cache, seqlens, float(scale), int(num_splits))
