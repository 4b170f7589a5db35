"""Attention dropout's stream as a tensor: the keep mask one call draws (tests and debugging; the attention
kernels draw it tile by tile with tiles._dropout_keep and never store it)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import _device_guard, _offset32
from .tiles import _dropout_keep


@triton.jit
def _dropout_mask_kernel(Mask, Hq, Sq, Sk, seed, rng_offset, drop_threshold,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keep mask (B, Hq, Sq, Sk) uint8 of one dropout call, as the attention kernels draw it (tests and
    debugging only). Grid (cdiv(Sq, BLOCK_M), cdiv(Sk, BLOCK_N), B * Hq)."""
    bh = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _dropout_keep(seed, rng_offset, bh, rows, tl.program_id(1) * BLOCK_N, drop_threshold, BLOCK_N=BLOCK_N,
                         KEYS_FIRST=False)
    ptrs = Mask + (bh.to(tl.int64) * Sq + rows[:, None]) * Sk + cols[None, :]
    tl.store(ptrs, keep.to(tl.uint8), mask=(rows[:, None] < Sq) & (cols[None, :] < Sk))


def dropout_mask(b: int, hq: int, sq: int, sk: int, p: float, seed: int, offset: int, device) -> Tensor:
    """bool (B, Hq, Sq, Sk): the probabilities a call with dropout p, seed and offset keeps."""
    from ...reference import dropout_threshold
    mask = torch.empty((b, hq, sq, sk), dtype=torch.uint8, device=device)
    if mask.numel():
        with _device_guard(mask):
            _dropout_mask_kernel[(triton.cdiv(sq, 16), triton.cdiv(sk, 16), b * hq)](
                mask, hq, sq, sk, seed, _offset32(offset), dropout_threshold(p), BLOCK_M=16, BLOCK_N=16)
    return mask.bool()
