"""Fused multi-head attention in Triton: forward, backward (FlashAttention-2 recomputation) and decode.

Kernels and launchers only; the custom ops, fakes and autograd that call them are in fastattn/ops/attention.py.

Modules (each kernel keeps the name it had when this package was one file, attention.py; every name below is
also exported here, so `from fastattn.triton import attention` gives the whole family):
- tiles.py: the shared @triton.jit tile helpers (pointers, masked loads and stores, the block order, the causal
  key range, the biased and masked score tile, one online-softmax step, the normalising epilogue).
- forward.py: _attn_fwd_kernel (+ _attn_fwd_tuned), attention_fwd, unsupported_attention.
- backward.py: _attn_bwd_dq_kernel, _attn_bwd_dkdv_kernel (+ _tuned), attention_bwd.
- decode.py: _decode_split_kernel (+ _tuned), _decode_combine_kernel, decode_attention, unsupported_decode.
- tma.py: the Hopper TMA forward _attn_fwd_tma_kernel (+ _tuned), hopper_enabled, tma_forward_supports.
- configs.py: the block shapes, their shared-memory and register checks, fixed_shape, the autotuning
  wrappers, the one launch function, decode's split count.
- dropout.py: _dropout_mask_kernel, dropout_mask (the keep mask of one call, for tests).
- common.py: the host-side checks and arguments every launcher shares.
Ahead-of-time compilation takes the jit functions by these names: KERNELS below maps each to its object.

Layout: q (B, Hq, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv) with Hq % Hkv == 0, any strides (each kernel
takes all four strides of every tensor, so a (B, S, H, D) tensor transposed to (B, H, S, D) is read in place).
Query head h reads KV head h // (Hq // Hkv): GQA/MQA without materialising repeats. bias is a 4-D view expanded to
(B, Hq, Sq, Sk): broadcast dims have stride 0 and a bias that is constant along Sq is read as one key vector.
key_padding_mask is bool (B, Sk), True = real. Causal is aligned bottom-right: query i sees keys j <= i + Sk - Sq.
Head dims 1..256: tiles are padded to HEAD_DIM_PAD, the next power of two >= 16, and the padding lanes are masked
(read as 0, never written). The value head dim Dv may differ from D (multi-head latent attention): out, dout and
dv are (.., Dv); q/k tiles and v/out tiles share the one padded width (the larger of the two), each with its
own lane mask (HEAD_DIM, HEAD_DIM_V), so the smaller one carries zero lanes through its dots (a specialised
tiling would save that work; not done). The TMA forward takes Dv = D only. Offsets are int64 (batch and head
bases, row offsets), so no tensor size overflows.

Dropout (dropout_p > 0, training): the probabilities P are dropped by a counter-based stream, Philox4x32-10
keyed by a 64-bit seed on the counter (key // 8, query, b * Hq + h, offset), one call's four words giving the
16-bit draws of 8 adjacent keys (tiles._dropout_keep; p at 1/65536 resolution), and the kept ones scaled by
1 / (1 - p). Nothing is stored: both backward passes regenerate the mask of each tile they recompute.
fastattn.reference.dropout_keep draws the same bits in PyTorch. The TMA forward declines dropout.

Numerics. Scores live in log2 units: s2 = q.k * (scale * log2 e) + bias * log2 e, so each softmax exponential is
one exp2. Every kernel loads its tiles, multiplies on the tensor cores in the input dtype (p is rounded to it
before the P.V product, as in FlashAttention) and accumulates in float32; lse and the softmax statistics are
float32. float32 inputs are multiplied with input_precision="ieee" (true fp32 products, no TF32: on a GPU this
leaves the tensor cores unused and is several times slower than bf16, but gives the accuracy float32 users ask
for; the tests hold it to 1e-5 of float64). Under TRITON_INTERPRET=1 (CPU) every tile is converted to float32 after its
load, since the interpreter has no bf16 arithmetic; results are then slightly more accurate than on a GPU.
A row with no key to attend to (causal with Sq > Sk, all keys padded, a -inf bias) gives out 0 and lse -inf;
NaN inputs give NaN outputs. Every loop bound comes from the shapes or cache_seqlens, never from the data.

Memory is O(S): the forward writes out and lse, the backward recomputes P from lse, block by block. The backward
is deterministic (bit-identical from run to run): dk/dv of a KV head are accumulated by one program over every
query block of every query head of its group, dq by one program per query block, with no atomics anywhere. It
is two launches: dq (which also computes Delta = rowsum(out * dout) for its rows), then dk/dv. This recomputes
P and dP in both, 7 block matmuls per (query block, key block) pair against 5 for a fused pass; a fused pass
would need dq summed across key blocks, by atomics (not deterministic), by ordered semaphores (programs waiting
on each other, which can stall or deadlock when a head has more key blocks than the chip runs at once), or
through an fp32 workspace of one dq partial per key block (n_key_blocks x the size of q in fp32: 1 GB at 16k
tokens, S = 1k, D = 128; 17 GB at S = 16k), each of which costs more than the recomputation.

Block shapes (GPU). Each kernel is autotuned among at most four (BLOCK_M, BLOCK_N, warps, stages) configs per
head-dim class (<= 64, 128, 256) and dtype class (16-bit, float32), chosen from ptxas register and spill
counts, per GPU family and with dropout or not (sm_90 and later: _SHAPES, _SHAPES_DROPOUT from sm_90a; sm_80 -
sm_89: _SHAPES_SM80, _SHAPES_SM80_DROPOUT from sm_80); configs whose shared memory (within the GPU's per-block
maximum less a headroom, configs.smem_budget) or, with a full bias tile, register estimate does not fit are
pruned before compiling. The tuning is cached per length bucket, head dim, causal, bias and mask kind
and dtypes. On a cold machine each kernel variant first compiles all its configs (a few seconds each).
FASTATTN_TRITON_AUTOTUNE=0 turns autotuning off: each launch takes one fixed config per (head dim, dtype, causal,
pass, full bias tile or not, arch, dropout), the first that fits in its list (fixed_shape), and compiles only
that; decode takes _DECODE_SHAPES[0]. The variable is read at every launch, so it can be set at any time.

Hopper forward, OPT-IN AND NOT YET VALIDATED ON A GPU. With FASTATTN_TRITON_HOPPER=1 (read at every launch), on
a GPU of compute capability 9.x, a forward with 16-bit q, k, v, no bias or key padding, D a power of two and
TMA-compatible strides (tma_forward_supports) runs _attn_fwd_tma_kernel instead: Q/K/V blocks come through host
TMA tensor descriptors (no per-thread addresses: ~50-90 fewer registers than the pointer kernel in ptxas), and
some of its configs let Triton warp-specialise the key loop (a loading warp group and two computing ones, with
setmaxnreg). Without the variable, or on any other GPU or input, the portable kernels (forward.py) run, unchanged; the
backward always does. The TMA kernel is tested for correctness under the interpreter and compiled for sm_90a,
but has never launched: the gpu-marked tests run both forwards against the reference so that a GPU session can
validate it, measure it, and then make it the default on 9.x.

Not yet run on a GPU at all: every kernel was developed and tested under the interpreter and compiled ahead of
time for sm_90a (wgmma on every attention dot, no spills at D = 64 and 128 in bf16) without a launch; the
autotuned and fixed configs, the SM count for decode splits and the device guard have never executed. The
portable kernels use pointer loads that Triton software-pipelines (cp.async, num_stages) and tl.dot, which it
lowers to wgmma on Hopper.
"""
from .backward import (_attn_bwd_dkdv_kernel, _attn_bwd_dkdv_tuned, _attn_bwd_dq_kernel, _attn_bwd_dq_tuned,
                       _sum_to, attention_bwd)
from .common import (_DTYPES, _INTERPRETED, _MAX_GRID_YZ, MAX_HEAD_DIM, _bias_args, _bucket, _device_guard,
                     _head_dim_pad, _kpm_args, _precision, _unsupported_common)
from .configs import (_ATTN_KEY, _DECODE_SHAPES, _HOPPER_SHAPES, _INTERP_BLOCK, _INTERP_BLOCKS, _SHAPES,
                      _SHAPES_F32, _SMEM_BUDGET, _all_configs, _config_shape, _decode_num_splits, _fits,
                      _hopper_shapes, _prune, _prune_hopper, _shape_list, _shapes_for, _smem_bytes,
                      autotune_enabled, current_arch, fixed_shape, smem_budget, smem_per_block)
from .dropout import _dropout_mask_kernel, dropout_mask
from .decode import (_decode_combine_kernel, _decode_split_kernel, _decode_split_tuned, decode_attention,
                     unsupported_decode)
from .forward import _attn_fwd_kernel, _attn_fwd_tuned, attention_fwd, unsupported_attention
from .tiles import LOG2E
from .tma import (_attention_fwd_tma, _attn_fwd_tma_kernel, _attn_fwd_tma_tuned, _use_hopper_forward,
                  hopper_enabled, tma_forward_supports)

# Every kernel by the name it has had since attention.py (ahead-of-time compilation looks them up here).
KERNELS = {
    "_attn_fwd_kernel": _attn_fwd_kernel,
    "_attn_fwd_tma_kernel": _attn_fwd_tma_kernel,
    "_attn_bwd_dq_kernel": _attn_bwd_dq_kernel,
    "_attn_bwd_dkdv_kernel": _attn_bwd_dkdv_kernel,
    "_decode_split_kernel": _decode_split_kernel,
    "_decode_combine_kernel": _decode_combine_kernel,
    "_dropout_mask_kernel": _dropout_mask_kernel,
}

__all__ = ["KERNELS", "LOG2E", "MAX_HEAD_DIM", "attention_bwd", "attention_fwd", "autotune_enabled",
           "decode_attention", "fixed_shape", "hopper_enabled", "tma_forward_supports", "unsupported_attention",
           "unsupported_decode"]
