"""Block shapes and launch heuristics: the configs each pass is autotuned among, the fixed pick without
autotuning, the shared-memory and register estimates that prune them, the autotuning wrappers, one launch
function for the three ways a kernel runs (interpreted, autotuned, fixed) and decode's split count.

GPU only, except the interpreter blocks: the interpreter launches the raw kernels with _INTERP_BLOCKS.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Tuple

import torch
import triton

from .common import _INTERPRETED

# Block sizes under the interpreter (no autotuning there): small, so that odd test sizes cross block edges.
_INTERP_BLOCK = 16
_INTERP_BLOCKS = {"fwd": (_INTERP_BLOCK, _INTERP_BLOCK), "dq": (_INTERP_BLOCK, _INTERP_BLOCK),
                  "dkdv": (_INTERP_BLOCK, 2 * _INTERP_BLOCK)}  # dk/dv: several query blocks per key block

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per pass and head-dim class (HEAD_DIM_PAD <= 64, 128, 256); BLOCK_M
# is the query block, BLOCK_N the key block. At most four a class, so that a cold machine compiles few; the first
# of each list is the fixed pick of FASTATTN_TRITON_AUTOTUNE=0. Lists per GPU family (_family): sm_90 and later
# (wgmma, one operand straight from shared memory) and sm_80-sm_89 (mma.sync, both operands in registers), and
# with dropout (DROPOUT) their own lists where the Philox draws spilled the plain pick. From ptxas -v, bf16
# (benchmarks/NOTES.md, kernel v2 and v4).
# sm_90: every first pick compiles to wgmma with no register spill at D = 64 and 128 (dk/dv 64x128 at D=128
# without causal: 16 bytes), and fits the shared memory of an H100 with room.
_SHAPES = {
    ("fwd", 64): [(128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("fwd", 128): [(128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3)],
    ("fwd", 256): [(128, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2)],
    ("dq", 64): [(128, 128, 8, 2), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("dq", 128): [(128, 64, 8, 2), (128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 2)],
    ("dq", 256): [(128, 32, 8, 2), (64, 64, 8, 2)],
    # dk/dv: the key block is the wide one (it owns the dk, dv accumulators); 8 warps = two warpgroups
    ("dkdv", 64): [(64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 3)],
    ("dkdv", 128): [(64, 128, 8, 2), (32, 128, 8, 2), (32, 128, 8, 3)],
    ("dkdv", 256): [(32, 64, 8, 2), (16, 64, 8, 2)],
}
# sm_90 with dropout, where the plain pick spilled: Philox4x32-10 keeps four counter words per score entry live
# through its ten rounds, next to the accumulators, so narrower score tiles (sm_90a, bf16, causal and not: fwd
# D=128 128x128 52 B spilled, 128x64 none; dk/dv D=128 64x128 140 B, 32x128 none; the other classes' plain picks
# compile with no spill under dropout too and keep their lists)
_SHAPES_DROPOUT = {
    ("fwd", 64): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3)],
    ("fwd", 128): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3)],
    ("fwd", 256): [(128, 32, 8, 2), (64, 32, 4, 2)],
    ("dq", 64): [(128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("dkdv", 128): [(32, 128, 8, 2), (32, 128, 8, 3)],
    # D=256: 32x64 spilled 120-152 B and 16x64 32-40 B; a 32-key block (mma.sync, not wgmma: M < 64) none
    ("dkdv", 256): [(64, 32, 8, 2), (32, 32, 8, 2)],
}
# sm_80 - sm_89: both mma.sync operands live in registers, so the sm_90 picks spill there (sm_80, bf16: fwd D=128
# 128x128 312 B, dq D=128 128x64 464 B, dk/dv D=128 64x128 72 B, D=256 fwd 120 B and dq 192 B). The first picks
# below (64-row blocks in the backward, 64- or 32-key blocks in the forward) compile on sm_80 with no spill, with
# dropout too except where the dropout list below has its own, and fit an A100's shared memory; where the first
# does not fit with a float32 bias tile, a later one does.
_SHAPES_SM80 = {
    ("fwd", 64): [(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    ("fwd", 128): [(128, 64, 8, 3), (64, 64, 4, 2)],
    ("fwd", 256): [(64, 32, 8, 2)],
    ("dq", 64): [(64, 32, 4, 2), (64, 32, 8, 2)],   # 128x64 and 64x64 spilled 8-68 B at D=64
    ("dq", 128): [(64, 64, 8, 2)],
    ("dq", 256): [(64, 32, 8, 2), (32, 32, 4, 2)],
    ("dkdv", 64): [(64, 128, 8, 2), (32, 128, 8, 2)],
    ("dkdv", 128): [(64, 64, 8, 2)],
    ("dkdv", 256): [(32, 32, 8, 2)],
}
# sm_80 - sm_89 with dropout, where the plain pick spilled (fwd D=64 128x128: 16 B; dk/dv D=64 64x128: 16 B)
_SHAPES_SM80_DROPOUT = {
    ("fwd", 64): [(128, 64, 8, 3), (64, 64, 4, 3)],
    ("dkdv", 64): [(32, 128, 8, 2)],
}
# float32 inputs: exact fp32 dots run on the CUDA cores and hold both operands in registers, so small tiles;
# the 16x16 blocks are for D=256 within an A100's shared memory (4-byte tiles), every arch shares these lists
_SHAPES_F32 = {"fwd": [(32, 32, 4, 2), (16, 32, 4, 2), (16, 16, 4, 2)],
               "dq": [(32, 32, 4, 2), (16, 32, 4, 2), (16, 16, 4, 2)],
               "dkdv": [(32, 32, 4, 2), (16, 32, 4, 2), (16, 16, 4, 2)]}
# Hopper forward (TMA): (BLOCK_M, BLOCK_N, num_warps, num_stages, warp-specialised); every one compiled for sm_90a
# within the shared memory of an H100 (ptxas, kernel v2 in benchmarks/NOTES.md). Triton 3.6 warp-specialises
# these loops only at num_warps=4 (a loading warp group plus two computing ones, 384 threads).
_HOPPER_SHAPES = {
    64: [(128, 128, 8, 3, False), (64, 128, 4, 3, True), (128, 64, 8, 3, False)],
    128: [(128, 128, 8, 2, False), (64, 128, 4, 2, True), (128, 64, 8, 3, False), (64, 64, 4, 3, True)],
    256: [(128, 64, 8, 2, False)],  # (64, 64, 4, 2, True) needs 224.1 KB of the 227: too close to list
}
# decode: (BLOCK_N, num_warps, num_stages); memory-bound, so deep pipelines of mid-size K/V tiles
_DECODE_SHAPES = [(64, 4, 3), (64, 4, 2), (128, 8, 3), (32, 4, 4)]

# Shared memory one thread block may use (the opt-in maximum, cudaDevAttrMaxSharedMemoryPerBlockOptin) by compute
# capability, from the CUDA C++ Programming Guide's table of compute capabilities: A100 / Orin 163 KB, A10-A40 /
# Ada 99 KB, H100 / H200 and B200 227 KB, consumer Blackwell 99 KB. Another capability: the device's own figure.
_SMEM_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024,
                   100: 227 * 1024, 120: 99 * 1024}
# A config plans for the per-block maximum less this headroom (the compiler's scratch for layout conversions and
# barriers beside the tiles _smem_bytes counts): on sm_90 227 - 27 = 200 KB, the budget the sm_90 lists were
# chosen in; on an A100 136 KB.
_SMEM_HEADROOM = 27 * 1024
_SMEM_BUDGET = _SMEM_PER_BLOCK[90] - _SMEM_HEADROOM   # sm_90's (the default arch of the table helpers)
DEFAULT_ARCH = 90  # the table helpers' arch when none is given (tests, tools)


def autotune_enabled() -> bool:
    """FASTATTN_TRITON_AUTOTUNE=0 turns autotuning off (read at every launch); see the package docstring."""
    return os.environ.get("FASTATTN_TRITON_AUTOTUNE", "1") != "0"


# ----------------------------------------------------------------------------------------------------------
# The GPU: its arch and shared memory
# ----------------------------------------------------------------------------------------------------------

def current_arch() -> int:
    """Compute capability (major * 10 + minor) of the GPU Triton launches on now: the current device, which the
    launchers set to the inputs' (_device_guard). Asked of Triton's driver, as Triton's own launch does."""
    return triton.runtime.driver.active.get_current_target().arch


@functools.lru_cache(maxsize=None)
def smem_per_block(arch: int) -> int:
    """Bytes of shared memory one block may use on a GPU of compute capability ``arch``: the table's figure, else
    the current device's opt-in maximum when it has this capability, else the smallest in the table."""
    if arch in _SMEM_PER_BLOCK:
        return _SMEM_PER_BLOCK[arch]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        if major * 10 + minor == arch:
            return torch.cuda.get_device_properties(torch.cuda.current_device()).shared_memory_per_block_optin
    return min(_SMEM_PER_BLOCK.values())


def smem_budget(arch: int) -> int:
    """Bytes of shared memory a config may plan for on ``arch``: smem_per_block less _SMEM_HEADROOM."""
    return smem_per_block(arch) - _SMEM_HEADROOM


def _family(arch: int) -> int:
    """90 for wgmma GPUs (sm_90 and later), 80 for mma.sync ones (sm_80 - sm_89): which lists apply."""
    return 90 if arch >= 90 else 80


# ----------------------------------------------------------------------------------------------------------
# Which shapes fit
# ----------------------------------------------------------------------------------------------------------

_TABLES = {(90, False): _SHAPES, (90, True): _SHAPES_DROPOUT, (80, False): _SHAPES_SM80,
           (80, True): _SHAPES_SM80_DROPOUT}


def _shape_list(pass_: str, d_pad: int, f32: bool, arch: int = DEFAULT_ARCH, dropout: bool = False):
    """The listed shapes of a pass, head-dim class and dtype class on ``arch``, with dropout or not: the dropout
    list of the arch family where it has one for this class, else its plain list."""
    if f32:
        return _SHAPES_F32[pass_]
    key = (pass_, min(max(d_pad, 64), 256))
    fam = _family(arch)
    if dropout and key in _TABLES[(fam, True)]:
        return _TABLES[(fam, True)][key]
    return _TABLES[(fam, False)][key]


def _smem_bytes(pass_: str, shape, d: int, esize: int, bias_esize: int = 0) -> int:
    """Shared memory a config plans for: the resident tiles plus `stages` copies of the streamed ones (fwd: Q +
    K/V blocks; dq: Q, dO + K/V blocks; dk/dv: K, V + Q/dO blocks), and of the full bias tile when bias_esize > 0.
    Matches the compiler's figure within 1 KB without bias, and bounds it with."""
    bm, bn, _, stages = shape
    bias = stages * bm * bn * bias_esize
    if pass_ == "fwd":
        return (bm * d + stages * 2 * bn * d) * esize + bias
    if pass_ == "dq":
        return (2 * bm * d + stages * 2 * bn * d) * esize + bias
    return (2 * bn * d + stages * 2 * bm * d) * esize + bias


def _fits(pass_: str, shape, d: int, esize: int, bias_esize: int, arch: int = DEFAULT_ARCH) -> bool:
    """Within smem_budget(arch); with a full (BLOCK_M, BLOCK_N) bias tile (bias_esize > 0) also within a register
    estimate: fp32 accumulators (dk/dv: two (BLOCK_N, D); else (BLOCK_M, D)) plus the score-sized fp32 tiles
    (fwd: s/p and the bias; backward: s/p, dp, ds and the bias) per thread below 224. The estimate separates the
    configs that spilled with a full bias in ptxas on sm_90a from those that did not; without a bias every
    listed config was checked directly."""
    bm, bn, warps, _ = shape
    if _smem_bytes(pass_, shape, d, esize, bias_esize) > smem_budget(arch):
        return False
    if not bias_esize:
        return True
    acc = 2 * bn * d if pass_ == "dkdv" else bm * d
    tiles = 3 if pass_ == "fwd" else 4
    return (acc + tiles * bm * bn) / (32 * warps) < 224


def _shapes_for(pass_: str, d_pad: int, f32: bool, esize: int, bias_esize: int = 0, arch: int = DEFAULT_ARCH,
                dropout: bool = False):
    """The listed shapes for this pass, head dim, dtype, arch and dropout that fit, in order of preference. Never
    empty: if none fits, the one needing the least shared memory."""
    listed = _shape_list(pass_, d_pad, f32, arch, dropout)
    fit = [s for s in listed if _fits(pass_, s, d_pad, esize, bias_esize, arch)]
    return fit or [min(listed, key=lambda s: _smem_bytes(pass_, s, d_pad, esize, bias_esize))]


def fixed_shape(pass_: str, d_pad: int, dtype: torch.dtype, causal: bool, bias_esize: int = 0,
                arch: int = DEFAULT_ARCH, dropout: bool = False) -> Tuple[int, int, int, int]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) used without autotuning for pass "fwd", "dq" or "dkdv": one
    per head-dim class, dtype class (16-bit or float32), causal or not, whether a full bias tile is read
    (bias_esize: its element size, else 0), arch (compute capability) and dropout. Causal and not share a pick:
    at these query blocks the causal diagonal costs the same with every listed key block, and ptxas gave the
    same registers within a few."""
    del causal
    return _shapes_for(pass_, d_pad, dtype == torch.float32, dtype.itemsize, bias_esize, arch, dropout)[0]


def _hopper_shapes(d: int):
    return _HOPPER_SHAPES[min(max(d, 64), 256)]


# ----------------------------------------------------------------------------------------------------------
# Autotuning wrappers
# ----------------------------------------------------------------------------------------------------------

# (+ the dtypes, which Triton adds)
_ATTN_KEY = ["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM_PAD", "CAUSAL", "BIAS_KIND", "HAS_KPM", "DROPOUT"]


def _config_shape(c) -> Tuple[int, int, int, int]:
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages


def _prune(configs, named_args, *, pass_, arch=None, **kwargs):
    """Autotuning keeps the configs that _shapes_for lists for the current GPU (arch: its compute capability,
    asked of the driver when None) and the launch's DROPOUT, in its order; configs outside every list (a test
    pinning one) are kept as they are."""
    q, bias = named_args.get("Q"), named_args.get("Bias")
    esize = q.element_size() if q is not None else 2
    bias_esize = bias.element_size() if kwargs.get("BIAS_KIND") == 1 and bias is not None else 0
    shapes = _shapes_for(pass_, kwargs["HEAD_DIM_PAD"], kwargs["COMPUTE_F32"], esize, bias_esize,
                         current_arch() if arch is None else arch, bool(kwargs.get("DROPOUT", False)))
    by_shape = {_config_shape(c): c for c in configs}
    return [by_shape[s] for s in shapes if s in by_shape] or list(configs)


def _all_configs(pass_: str):
    shapes = [s for table in _TABLES.values() for (p, _), lst in table.items() if p == pass_ for s in lst]
    shapes += _SHAPES_F32[pass_]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in dict.fromkeys(shapes)]


def tuned(pass_: str, kernel, extra_key=()):
    """The autotuned wrapper of a kernel of pass "fwd", "dq" or "dkdv"."""
    return triton.autotune(_all_configs(pass_), key=_ATTN_KEY + list(extra_key),
                           prune_configs_by={"early_config_prune": functools.partial(_prune, pass_=pass_)})(kernel)


def tuned_decode(kernel):
    return triton.autotune(
        [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s) for n, w, s in _DECODE_SHAPES],
        key=["SMAX_BUCKET", "HEAD_DIM_PAD", "BLOCK_G", "SINGLE_SPLIT"])(kernel)


def _tma_block_shapes(nargs) -> None:
    """Autotuning pre-hook: the descriptors' block shapes follow the config's BLOCK_M and BLOCK_N."""
    d, bm, bn = nargs["HEAD_DIM"], nargs["BLOCK_M"], nargs["BLOCK_N"]
    nargs["desc_q"].block_shape = nargs["desc_o"].block_shape = [1, 1, bm, d]
    nargs["desc_k"].block_shape = nargs["desc_v"].block_shape = [1, 1, bn, d]


def _prune_hopper(configs, named_args, **kwargs):
    listed = _hopper_shapes(kwargs["HEAD_DIM"])
    by_shape = {(*_config_shape(c), c.kwargs["WARP_SPEC"]): c for c in configs}
    return [by_shape[s] for s in listed if s in by_shape] or list(configs)


def tuned_hopper(kernel):
    return triton.autotune(
        [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "WARP_SPEC": ws}, num_warps=w, num_stages=st,
                       pre_hook=_tma_block_shapes)
         for m, n, w, st, ws in dict.fromkeys(s for lst in _HOPPER_SHAPES.values() for s in lst)],
        key=["SQ_BUCKET", "SK_BUCKET", "HEAD_DIM", "CAUSAL"],
        prune_configs_by={"early_config_prune": _prune_hopper})(kernel)


# ----------------------------------------------------------------------------------------------------------
# Launch
# ----------------------------------------------------------------------------------------------------------

def launch(kernel, tuned_kernel, grid: Callable[[dict], tuple], args, meta: dict, *, interp_blocks: dict,
           fixed: Callable[[], Tuple[dict, int, int]]) -> None:
    """Run kernel one of three ways. Interpreted: with interp_blocks (small, fixed). On a GPU: autotuned
    (tuned_kernel), or, when FASTATTN_TRITON_AUTOTUNE=0, with fixed() -> (blocks, num_warps, num_stages).
    grid maps the block constexprs ({"BLOCK_M": .., "BLOCK_N": ..}) to the launch grid."""
    if _INTERPRETED:
        kernel[grid(interp_blocks)](*args, **meta, **interp_blocks)
    elif autotune_enabled():
        tuned_kernel[grid](*args, **meta)
    else:
        blocks, warps, stages = fixed()
        kernel[grid(blocks)](*args, **meta, **blocks, num_warps=warps, num_stages=stages)


def launch_pass(pass_: str, kernel, tuned_kernel, grid, args, meta, dtype: torch.dtype, bias) -> None:
    """launch() for pass "fwd", "dq" or "dkdv", with its interpreter blocks and its fixed_shape pick."""
    def fixed():
        bias_esize = bias.element_size() if meta["BIAS_KIND"] == 1 else 0
        bm, bn, warps, stages = fixed_shape(pass_, meta["HEAD_DIM_PAD"], dtype, meta["CAUSAL"], bias_esize,
                                            current_arch(), bool(meta["DROPOUT"]))
        return dict(BLOCK_M=bm, BLOCK_N=bn), warps, stages

    interp = dict(zip(("BLOCK_M", "BLOCK_N"), _INTERP_BLOCKS[pass_]))
    launch(kernel, tuned_kernel, grid, args, meta, interp_blocks=interp, fixed=fixed)


# ----------------------------------------------------------------------------------------------------------
# Decode: how many key splits (flash-decoding)
# ----------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    """Streaming multiprocessors of GPU ``index``; asked once per device, on first use (never at import)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


# Under the interpreter: pretend a 4-SM chip and allow 16-key splits, so that small tests take the split path.
_INTERP_SMS, _INTERP_MIN_SPLIT = 4, 16
_MIN_SPLIT, _MAX_SPLITS = 256, 128


def _decode_num_splits(b: int, hkv: int, smax: int, device: torch.device) -> int:
    """Key splits per (batch, KV head): enough programs for ~2 waves of the chip, each split >= _MIN_SPLIT keys
    (below that the combine costs more than the parallelism gives)."""
    if _INTERPRETED:
        sms, min_split = _INTERP_SMS, _INTERP_MIN_SPLIT
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
        sms, min_split = _sm_count(index), _MIN_SPLIT
    want = triton.cdiv(2 * sms, max(b * hkv, 1))
    return max(1, min(want, triton.cdiv(smax, min_split), _MAX_SPLITS))
