"""The one place for the FLOP and byte counts behind every TFLOP/s and GB/s figure the suite reports.

Conventions (as in docs/benchmarks.md and the FlashAttention papers):
- attention forward = 4·B·H·Sq·Sk·D (two matmuls of 2·Sq·Sk·D each per head), halved when causal; backward =
  2.5× forward (five matmuls instead of two). Masks and biases do not change the count: a key-padding mask is
  counted dense, so a masked row compares directly with the unmasked one at the same shape.
- decode reads the valid part of K and V once: 2·B·Hkv·L·D·elem bytes (q and the output are negligible).
- softmax reads x once and writes y once: 2·numel·elem bytes.
- sampling's floor is one read of the logits: B·V·elem bytes.
- the copy ceiling counts bytes read plus bytes written; the matmul ceiling counts 2·M·N·K.
"""
from __future__ import annotations

from typing import Optional


def attention_fwd_flops(b: int, h: int, sq: int, sk: int, d: int, causal: bool = False) -> float:
    flops = 4.0 * b * h * sq * sk * d
    return flops / 2 if causal else flops


def attention_bwd_flops(b: int, h: int, sq: int, sk: int, d: int, causal: bool = False) -> float:
    return 2.5 * attention_fwd_flops(b, h, sq, sk, d, causal)


def attention_flops(passname: str, b: int, h: int, sq: int, sk: int, d: int, causal: bool = False) -> float:
    if passname == "fwd":
        return attention_fwd_flops(b, h, sq, sk, d, causal)
    if passname == "bwd":
        return attention_bwd_flops(b, h, sq, sk, d, causal)
    raise ValueError(f"pass must be 'fwd' or 'bwd', got {passname!r}")


def decode_bytes(b: int, hkv: int, kv_len: int, d: int, elem: int) -> float:
    """K and V read once over the valid cache length."""
    return 2.0 * b * hkv * kv_len * d * elem


def softmax_bytes(rows: int, n: int, elem: int) -> float:
    """One read of x and one write of y."""
    return 2.0 * rows * n * elem


def sampling_floor_bytes(b: int, v: int, elem: int) -> float:
    """One read of the logits: what any sampler must at least move."""
    return 1.0 * b * v * elem


def copy_bytes(numel: int, elem: int) -> float:
    """A device-to-device copy: bytes read plus bytes written."""
    return 2.0 * numel * elem


def matmul_flops(m: int, n: int, k: int) -> float:
    return 2.0 * m * n * k


def transformer_fwd_flops(n_params: int, tokens: int, n_layers: int, hidden: int, b: int, sq: int,
                          sk: Optional[int] = None, causal: bool = False) -> float:
    """Forward FLOPs of a transformer: 2 per weight per token (the matmuls) plus the attention score and value
    matmuls of every layer (attention_fwd_flops with H·D = hidden). n_params should exclude embeddings."""
    sk = sq if sk is None else sk
    return 2.0 * n_params * tokens + n_layers * attention_fwd_flops(b, 1, sq, sk, hidden, causal)


def tflops(flops: Optional[float], ms: Optional[float]) -> Optional[float]:
    if flops is None or not ms:
        return None
    return flops / (ms * 1e-3) / 1e12


def gbps(nbytes: Optional[float], ms: Optional[float]) -> Optional[float]:
    if nbytes is None or not ms:
        return None
    return nbytes / (ms * 1e-3) / 1e9


def floor_ms(nbytes: float, copy_gbps: Optional[float]) -> Optional[float]:
    """The time to move nbytes at the measured copy bandwidth."""
    if not copy_gbps:
        return None
    return nbytes / (copy_gbps * 1e9) * 1e3
