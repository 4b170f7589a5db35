"""Softmax with temperature along the last axis of a contiguous (rows, n) tensor: Triton kernels and launchers.

    y  = softmax(x * inv_t)              computed in float32, stored in x's dtype
    dx = y * (g - sum(g * y)) * inv_t    (the backward, from the saved output y)

inv_t is one float per row (a float32 (rows,) tensor) or one Python float for all rows. The scale is folded
into exp2: a = x * (inv_t * log2 e), so that y = exp2(a - max a) / sum exp2(a - max a).

Three schemes, picked by a fixed rule in ``_plan`` (no autotuning: row-wise ops are memory bound and the
rule is what Liger and the Triton tutorial use):

- "rows":   the row fits in registers (n <= MAX_FUSED): each program holds a (BLOCK_R, BLOCK_N) tile of
            BLOCK_R whole rows. One read of x and one write of y: the bandwidth floor.
- "online": the row is too wide for registers and there are many rows: one program per row streams it in
            BLOCK_N tiles, a running (max, sum) in pass 1, then pass 2 re-reads the tiles (last tile first, so
            the most recently read bytes, still in L2, are read again first) and writes y.
            Two reads of x (the second mostly from L2) and one write.
- "split":  few rows, each long (rows < the number of SMs): a row is cut into chunks of CHUNK elements and
            every chunk gets its own program, so that a single row is read by many SMs at once. Kernel 1
            writes each chunk's (max, sum); kernel 2 merges the row's partials, re-reads its chunk (from L2:
            it was read microseconds before) and writes y. One read from DRAM, one from L2, one write, two
            launches.

Special rows: a row of all -inf has max -inf; it is shifted by 0 instead, every exp2 is 0, the sum is 0 and
the row comes back as zeros (never 0/0). A NaN in a row makes its sum NaN, so the whole row (and only that
row) is NaN, as in the reference. A +inf makes the row NaN (inf - inf), as in the reference.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = 1.4426950408889634

# Widest row kept whole in registers: 32k fp32 values = 128 KiB, half the register file of one SM (compiled
# for sm_90: 63 registers a thread at 32 warps, no spill). The backward holds two rows (g and y): 16k (at
# 32k it spills 104 B a thread).
MAX_FUSED = 32768
MAX_FUSED_BWD = 16384
# Tile width of the online scheme (32 warps, one program per SM, as the rows kernel: 132 rows in flight on an
# H200 instead of 528 at 8k tiles, so that more of the second pass hits L2; see benchmarks/NOTES.md), and the
# smallest and largest chunk of the split scheme.
ONLINE_BLOCK = 32768
MIN_CHUNK = 2048
# A rows-kernel tile holds at least this many elements, so narrow rows are batched BLOCK_R to a program.
MIN_TILE = 4096
# The split scheme is used for rows at least this wide when there are fewer rows than SMs.
SPLIT_MIN_N = 8192


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    """SMs of the GPU (asked lazily, once per device); under the interpreter a small fixed number."""
    if device.type != "cuda":
        return 4
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _warps(tile: int) -> int:
    """About 32 fp32 values per thread: 4 warps for tiles up to 4k, 32 warps for a 32k row."""
    return max(4, min(32, tile // 1024))


def _plan(rows: int, n: int, device: torch.device, max_fused: Optional[int], split_chunk: Optional[int],
          default_max_fused: int = MAX_FUSED):
    """(scheme, BLOCK_R, BLOCK_N, chunks, num_warps). ``max_fused`` and ``split_chunk`` override the rule
    (tests use them to reach the online and split schemes at small widths)."""
    max_fused = default_max_fused if max_fused is None else max_fused
    if split_chunk is None and n >= SPLIT_MIN_N and rows < _sm_count(device):
        # Aim for about two programs per SM, in chunks of at least MIN_CHUNK elements.
        want_chunks = triton.cdiv(2 * _sm_count(device), rows)
        split_chunk = min(max(MIN_CHUNK, triton.next_power_of_2(triton.cdiv(n, want_chunks))), MAX_FUSED)
        if split_chunk >= n:  # one chunk per row: the rows kernel does the same in one launch
            split_chunk = None
    if split_chunk is not None:
        chunk = triton.next_power_of_2(split_chunk)
        return "split", 1, chunk, triton.cdiv(n, chunk), _warps(chunk)
    block_n = triton.next_power_of_2(n)
    if block_n <= max_fused:
        block_r = max(1, min(MIN_TILE // block_n, triton.next_power_of_2(rows)))
        return "rows", block_r, block_n, 1, _warps(block_r * block_n)
    block_n = min(ONLINE_BLOCK, triton.next_power_of_2(max_fused))
    return "online", 1, block_n, triton.cdiv(n, block_n), _warps(block_n)


@triton.jit
def _row_inv_t(inv_t_ptr, rows, row_ok, inv_temp, HAS_INV_T: tl.constexpr):
    """1 / T for each row in ``rows`` (a scalar or a vector of row indices; row_ok masks padding rows)."""
    if HAS_INV_T:
        return tl.load(inv_t_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    return tl.zeros(rows.shape, tl.float32) + inv_temp


@triton.jit
def _shift(m):
    """The max a row is shifted by: 0 for a row of all -inf (so exp2 gives 0, not NaN)."""
    return tl.where(m == float("-inf"), 0.0, m)


# --------------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------------

@triton.jit
def _softmax_fwd_rows_kernel(x_ptr, y_ptr, inv_t_ptr, inv_temp, n_rows, n_cols,
                             HAS_INV_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (cdiv(rows, BLOCK_R),). Program p holds rows [p*BLOCK_R, (p+1)*BLOCK_R) whole (n_cols <= BLOCK_N).
    Reads x once, writes y once."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)          # (BLOCK_R,)
    cols = tl.arange(0, BLOCK_N)                                         # (BLOCK_N,)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < n_cols)                   # (BLOCK_R, BLOCK_N)
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    c = _row_inv_t(inv_t_ptr, rows, row_ok, inv_temp, HAS_INV_T) * 1.4426950408889634   # (BLOCK_R,) fp32
    # Padding columns read as -inf: exp2(-inf) = 0 adds nothing to the sum.
    x = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
    a = x * c[:, None]                                                   # (BLOCK_R, BLOCK_N) fp32
    m = _shift(tl.max(a, axis=1))                                        # (BLOCK_R,)
    e = tl.exp2(a - m[:, None])
    s = tl.sum(e, axis=1)
    # s == 0 only for a row of all -inf: zeros. s is NaN for a row holding NaN: the row is NaN.
    r = tl.where(s == 0.0, 0.0, 1.0 / s)
    tl.store(y_ptr + offs, (e * r[:, None]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_fwd_online_kernel(x_ptr, y_ptr, inv_t_ptr, inv_temp, n_cols, n_tiles,
                               HAS_INV_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (rows,). Pass 1 streams the row in BLOCK_N tiles keeping a running max m and a running sum
    s = sum exp2(a - m) (rescaled when m grows). Its last tile (the only partial one: n_tiles = cdiv(n_cols,
    BLOCK_N), so the other tiles need no mask) stays in registers: pass 2 writes it first without reading it
    again, then re-reads the other tiles, newest first (the bytes read most recently, still in L2), and writes y."""
    row = tl.program_id(0)
    base = row.to(tl.int64) * n_cols
    c = _row_inv_t(inv_t_ptr, row, True, inv_temp, HAS_INV_T) * 1.4426950408889634
    cols = tl.arange(0, BLOCK_N)
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.zeros([], tl.float32)
    for t in range(0, n_tiles - 1):
        a = tl.load(x_ptr + base + t * BLOCK_N + cols).to(tl.float32) * c
        m_new = tl.maximum(m, tl.max(a, axis=0))
        sh = _shift(m_new)
        # m == -inf (nothing finite yet): exp2(-inf - sh) = 0 scales the (zero) sum.
        s = s * tl.exp2(m - sh) + tl.sum(tl.exp2(a - sh), axis=0)
        m = m_new
    o_last = (n_tiles - 1) * BLOCK_N + cols
    a_last = tl.load(x_ptr + base + o_last, mask=o_last < n_cols, other=float("-inf")).to(tl.float32) * c
    m_new = tl.maximum(m, tl.max(a_last, axis=0))
    sh = _shift(m_new)
    s = s * tl.exp2(m - sh) + tl.sum(tl.exp2(a_last - sh), axis=0)
    r = tl.where(s == 0.0, 0.0, 1.0 / s)
    tl.store(y_ptr + base + o_last, (tl.exp2(a_last - sh) * r).to(y_ptr.dtype.element_ty), mask=o_last < n_cols)
    for i in range(1, n_tiles):
        o = (n_tiles - 1 - i) * BLOCK_N + cols
        a = tl.load(x_ptr + base + o).to(tl.float32) * c
        tl.store(y_ptr + base + o, (tl.exp2(a - sh) * r).to(y_ptr.dtype.element_ty))


@triton.jit
def _softmax_fwd_partial_kernel(x_ptr, part_ptr, inv_t_ptr, inv_temp, n_cols, n_chunks,
                                HAS_INV_T: tl.constexpr, CHUNK: tl.constexpr):
    """Grid (rows, chunks). Writes part[row, chunk] = (max a, sum exp2(a - max a)) over the chunk."""
    row = tl.program_id(0)
    ch = tl.program_id(1)
    c = _row_inv_t(inv_t_ptr, row, True, inv_temp, HAS_INV_T) * 1.4426950408889634
    o = ch * CHUNK + tl.arange(0, CHUNK)
    a = tl.load(x_ptr + row.to(tl.int64) * n_cols + o, mask=o < n_cols, other=float("-inf")).to(tl.float32) * c
    m = tl.max(a, axis=0)
    s = tl.sum(tl.exp2(a - _shift(m)), axis=0)
    p = part_ptr + (row.to(tl.int64) * n_chunks + ch) * 2
    tl.store(p, m)
    tl.store(p + 1, s)


@triton.jit
def _merge_partials(part_ptr, row, n_chunks, BLOCK_C: tl.constexpr):
    """The row's (shift, 1 / sum) from its chunks' (max, sum) partials."""
    k = tl.arange(0, BLOCK_C)
    p = part_ptr + (row.to(tl.int64) * n_chunks + k) * 2
    pm = tl.load(p, mask=k < n_chunks, other=float("-inf"))              # (BLOCK_C,)
    ps = tl.load(p + 1, mask=k < n_chunks, other=0.0)
    sh = _shift(tl.max(pm, axis=0))
    s = tl.sum(ps * tl.exp2(pm - sh), axis=0)  # a chunk of all -inf has ps = 0 and exp2(-inf) = 0
    return sh, tl.where(s == 0.0, 0.0, 1.0 / s)


@triton.jit
def _softmax_fwd_split_kernel(x_ptr, y_ptr, part_ptr, inv_t_ptr, inv_temp, n_cols, n_chunks,
                              HAS_INV_T: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (rows, chunks). Merges the row's partials, re-reads its chunk (an L2 hit) and writes y."""
    row = tl.program_id(0)
    ch = tl.program_id(1)
    c = _row_inv_t(inv_t_ptr, row, True, inv_temp, HAS_INV_T) * 1.4426950408889634
    sh, r = _merge_partials(part_ptr, row, n_chunks, BLOCK_C)
    o = ch * CHUNK + tl.arange(0, CHUNK)
    offs = row.to(tl.int64) * n_cols + o
    a = tl.load(x_ptr + offs, mask=o < n_cols, other=float("-inf")).to(tl.float32) * c
    tl.store(y_ptr + offs, (tl.exp2(a - sh) * r).to(y_ptr.dtype.element_ty), mask=o < n_cols)


# --------------------------------------------------------------------------------------------------------
# Backward: dx = y * (g - sum(g * y)) * inv_t
# --------------------------------------------------------------------------------------------------------

@triton.jit
def _softmax_bwd_rows_kernel(g_ptr, y_ptr, dx_ptr, inv_t_ptr, inv_temp, n_rows, n_cols,
                             HAS_INV_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (cdiv(rows, BLOCK_R),), whole rows in registers: reads g and y once, writes dx once."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < n_cols)
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    it = _row_inv_t(inv_t_ptr, rows, row_ok, inv_temp, HAS_INV_T)                # (BLOCK_R,)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)               # (BLOCK_R, BLOCK_N)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dot = tl.sum(g * y, axis=1)                                                  # (BLOCK_R,)
    dx = y * (g - dot[:, None]) * it[:, None]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_online_kernel(g_ptr, y_ptr, dx_ptr, inv_t_ptr, inv_temp, n_cols, n_tiles,
                               HAS_INV_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (rows,). Pass 1: dot = sum(g * y) over BLOCK_N tiles; pass 2 (last tile first): dx."""
    row = tl.program_id(0)
    base = row.to(tl.int64) * n_cols
    it = _row_inv_t(inv_t_ptr, row, True, inv_temp, HAS_INV_T)
    cols = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for t in range(0, n_tiles):
        o = t * BLOCK_N + cols
        g = tl.load(g_ptr + base + o, mask=o < n_cols, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + base + o, mask=o < n_cols, other=0.0).to(tl.float32)
        acc += g * y
    dot = tl.sum(acc, axis=0)
    for i in range(0, n_tiles):
        o = (n_tiles - 1 - i) * BLOCK_N + cols
        g = tl.load(g_ptr + base + o, mask=o < n_cols, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + base + o, mask=o < n_cols, other=0.0).to(tl.float32)
        tl.store(dx_ptr + base + o, (y * (g - dot) * it).to(dx_ptr.dtype.element_ty), mask=o < n_cols)


@triton.jit
def _softmax_bwd_partial_kernel(g_ptr, y_ptr, part_ptr, n_cols, n_chunks, CHUNK: tl.constexpr):
    """Grid (rows, chunks). part[row, chunk] = sum(g * y) over the chunk."""
    row = tl.program_id(0)
    ch = tl.program_id(1)
    o = ch * CHUNK + tl.arange(0, CHUNK)
    offs = row.to(tl.int64) * n_cols + o
    g = tl.load(g_ptr + offs, mask=o < n_cols, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=o < n_cols, other=0.0).to(tl.float32)
    tl.store(part_ptr + row.to(tl.int64) * n_chunks + ch, tl.sum(g * y, axis=0))


@triton.jit
def _softmax_bwd_split_kernel(g_ptr, y_ptr, dx_ptr, part_ptr, inv_t_ptr, inv_temp, n_cols, n_chunks,
                              HAS_INV_T: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (rows, chunks). dot = sum of the row's partials; re-reads its chunk of g and y, writes dx."""
    row = tl.program_id(0)
    ch = tl.program_id(1)
    it = _row_inv_t(inv_t_ptr, row, True, inv_temp, HAS_INV_T)
    k = tl.arange(0, BLOCK_C)
    dot = tl.sum(tl.load(part_ptr + row.to(tl.int64) * n_chunks + k, mask=k < n_chunks, other=0.0), axis=0)
    o = ch * CHUNK + tl.arange(0, CHUNK)
    offs = row.to(tl.int64) * n_cols + o
    g = tl.load(g_ptr + offs, mask=o < n_cols, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=o < n_cols, other=0.0).to(tl.float32)
    tl.store(dx_ptr + offs, (y * (g - dot) * it).to(dx_ptr.dtype.element_ty), mask=o < n_cols)


# --------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------

def _inv_t_args(inv_t: Optional[Tensor], inv_temp: float, like: Tensor):
    if inv_t is None:
        return like, float(inv_temp), False  # the pointer is never read when HAS_INV_T is False
    assert inv_t.dtype == torch.float32 and inv_t.is_contiguous() and inv_t.numel() == like.shape[0]
    return inv_t, 1.0, True


def softmax_fwd(x2d: Tensor, inv_t: Optional[Tensor], inv_temp: float, *, max_fused: Optional[int] = None,
                split_chunk: Optional[int] = None) -> Tensor:
    """y = softmax(x2d * inv_t) along the last axis, float32 math, x2d's dtype out.

    x2d: contiguous (rows, n) fp16/bf16/fp32. inv_t: None or float32 (rows,) of 1 / T per row; else the
    float inv_temp for every row. max_fused / split_chunk override the scheme rule (see ``_plan``).
    """
    assert x2d.dim() == 2 and x2d.is_contiguous(), "softmax_fwd takes a contiguous (rows, n) tensor"
    rows, n = x2d.shape
    y = torch.empty_like(x2d)
    if rows == 0 or n == 0:
        return y
    it, temp, has_it = _inv_t_args(inv_t, inv_temp, x2d)
    scheme, block_r, block_n, chunks, warps = _plan(rows, n, x2d.device, max_fused, split_chunk)
    if scheme == "rows":
        _softmax_fwd_rows_kernel[(triton.cdiv(rows, block_r),)](
            x2d, y, it, temp, rows, n, HAS_INV_T=has_it, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=warps)
    elif scheme == "online":
        _softmax_fwd_online_kernel[(rows,)](
            x2d, y, it, temp, n, chunks, HAS_INV_T=has_it, BLOCK_N=block_n, num_warps=warps)
    else:
        part = torch.empty((rows, chunks, 2), dtype=torch.float32, device=x2d.device)
        _softmax_fwd_partial_kernel[(rows, chunks)](
            x2d, part, it, temp, n, chunks, HAS_INV_T=has_it, CHUNK=block_n, num_warps=warps)
        _softmax_fwd_split_kernel[(rows, chunks)](
            x2d, y, part, it, temp, n, chunks, HAS_INV_T=has_it, CHUNK=block_n,
            BLOCK_C=triton.next_power_of_2(chunks), num_warps=warps)
    return y


def softmax_bwd(grad2d: Tensor, y2d: Tensor, inv_t: Optional[Tensor], inv_temp: float, *,
                max_fused: Optional[int] = None, split_chunk: Optional[int] = None) -> Tensor:
    """dx = y * (g - sum(g * y)) * inv_t along the last axis, float32 math, y2d's dtype out."""
    assert grad2d.shape == y2d.shape and grad2d.is_contiguous() and y2d.is_contiguous()
    rows, n = y2d.shape
    dx = torch.empty_like(y2d)
    if rows == 0 or n == 0:
        return dx
    it, temp, has_it = _inv_t_args(inv_t, inv_temp, y2d)
    scheme, block_r, block_n, chunks, warps = _plan(rows, n, y2d.device, max_fused, split_chunk, MAX_FUSED_BWD)
    if scheme == "rows":
        _softmax_bwd_rows_kernel[(triton.cdiv(rows, block_r),)](
            grad2d, y2d, dx, it, temp, rows, n, HAS_INV_T=has_it, BLOCK_R=block_r, BLOCK_N=block_n,
            num_warps=warps)
    elif scheme == "online":
        _softmax_bwd_online_kernel[(rows,)](
            grad2d, y2d, dx, it, temp, n, chunks, HAS_INV_T=has_it, BLOCK_N=block_n, num_warps=warps)
    else:
        part = torch.empty((rows, chunks), dtype=torch.float32, device=y2d.device)
        _softmax_bwd_partial_kernel[(rows, chunks)](grad2d, y2d, part, n, chunks, CHUNK=block_n, num_warps=warps)
        _softmax_bwd_split_kernel[(rows, chunks)](
            grad2d, y2d, dx, part, it, temp, n, chunks, HAS_INV_T=has_it, CHUNK=block_n,
            BLOCK_C=triton.next_power_of_2(chunks), num_warps=warps)
    return dx
