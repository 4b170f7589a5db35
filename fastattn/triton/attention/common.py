"""Host-side pieces every attention launcher shares: the supported dtypes and sizes, the reasons a call is not
taken, head-dim padding, length buckets, the device guard, the dot precision and the bias / key-padding
arguments."""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import triton
from torch import Tensor

from ..._backend import triton_interpreted

_INTERPRETED = triton_interpreted()
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
_MAX_GRID_YZ = 65535  # CUDA's limit on the 2nd and 3rd grid dimensions (heads, batch)


def _head_dim_pad(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _bucket(n: int) -> int:
    """A power of two >= n, so that autotuning runs once per length bucket, not once per length."""
    return triton.next_power_of_2(max(n, 1))


def _device_guard(t: Tensor):
    """Launch on t's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _precision(dtype: torch.dtype) -> Tuple[bool, str]:
    """(COMPUTE_F32, DOT_PRECISION): fp32 tiles under the interpreter or for fp32 inputs, with exact fp32 dots."""
    f32 = _INTERPRETED or dtype == torch.float32
    return f32, ("ieee" if f32 else "tf32")


def _head_meta(q: Tensor, d: int, dv: int) -> dict:
    """The constexprs every kernel takes from the head dims and dtype. q/k (HEAD_DIM) and v/out (HEAD_DIM_V)
    tiles share one padded width HEAD_DIM_PAD, the next power of two >= both (>= 16); each has its own mask."""
    compute_f32, precision = _precision(q.dtype)
    d_pad = _head_dim_pad(max(d, dv))
    return dict(HEAD_DIM=d, HEAD_DIM_V=dv, HEAD_DIM_PAD=d_pad, EVEN_D=d == d_pad, EVEN_DV=dv == d_pad,
                COMPUTE_F32=compute_f32, DOT_PRECISION=precision)


def _unsupported_common(q: Tensor, tensors, d: int) -> Optional[str]:
    if q.dtype not in _DTYPES:
        return f"dtype {str(q.dtype).replace('torch.', '')} (the Triton kernels take float16, bfloat16, float32)"
    if d > MAX_HEAD_DIM:
        return f"head dim {d} > {MAX_HEAD_DIM}"
    if q.device.type == "cuda":
        if not all(t.is_cuda for t in tensors):
            return "all tensors must be on the GPU"
    elif not (_INTERPRETED and q.device.type == "cpu"):
        return f"device {q.device.type} (needs cuda, or cpu under TRITON_INTERPRET=1)"
    return None


def _bias_args(bias: Optional[Tensor], shape, dummy: Tensor):
    """(tensor, 4 strides, BIAS_KIND): 0 none, 1 a full (Sq, Sk) tile per (b, h), 2 one key vector per (b, h)
    (stride 0 along Sq: the common (B, 1, 1, Sk) / ALiBi-per-key case, loaded as a vector)."""
    if bias is None:
        return dummy, (0, 0, 0, 0), 0
    e = bias.expand(shape)  # broadcast dims get stride 0
    return e, e.stride(), (2 if e.stride(2) == 0 else 1)


def _kpm_args(key_padding_mask: Optional[Tensor], dummy: Tensor):
    if key_padding_mask is None:
        return dummy, 0, False
    kpm = key_padding_mask.contiguous().view(torch.uint8)  # (B, Sk), 1 = real
    return kpm, kpm.stride(0), True


def _offset32(offset: int) -> int:
    """The dropout offset as the kernels take it: its low 32 bits (the stream's fourth counter word, as
    fastattn.reference.dropout_keep uses it) as a signed 32-bit integer. why: a 64-bit argument (fastattn.ops
    draws offsets below 2^62) makes the counter tile int64, which tl.philox cannot bitcast to its uint32 words:
    the compile fails (the interpreter accepts it)."""
    low = int(offset) & 0xFFFFFFFF
    return low - (1 << 32) if low >= 1 << 31 else low


def _dropout_args(p: float, seed: int, offset: int) -> Tuple[int, int, int, float]:
    """(seed, rng_offset, drop_threshold, inv_keep) kernel arguments of attention dropout p (unused when p = 0):
    an entry is kept iff its 16-bit draw >= drop_threshold = round(p * 2^16) (tiles._dropout_keep; p at 1/65536
    resolution, 65536 drops all); kept ones are scaled by inv_keep. rng_offset: _offset32(offset)."""
    if not p:
        return 0, 0, 0, 1.0
    from ...reference import dropout_threshold
    return int(seed), _offset32(offset), dropout_threshold(p), 1.0 / (1.0 - p)
