"""Plain PyTorch definitions of every fastattn op: the "torch" backend, the CPU path and the test oracle.

Everything here favours clarity over speed (attention materialises the full score matrix). Inputs are
computed in float32, or in float64 when given float64, and results come back in the input's dtype, so the
same code is both the low-precision baseline and, fed float64 tensors, the ground truth the tests use.
No input validation happens here: the public functions in ``fastattn.ops`` validate first.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _broadcast_to_batch(value, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A Python number or a (B,) tensor, as a (B,) tensor of ``dtype``."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype).reshape(-1).expand(batch)
    return torch.full((batch,), value, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------

def attention_mask(sq: int, sk: int, causal: bool, key_padding_mask: Optional[Tensor],
                   device: torch.device) -> Optional[Tensor]:
    """Boolean (B or 1, 1, Sq, Sk) mask, True = attend; None when nothing is masked.

    Causal is aligned bottom-right: query i sees keys j <= i + (Sk - Sq).
    """
    mask = None
    if causal:
        i = torch.arange(sq, device=device).view(sq, 1)
        j = torch.arange(sk, device=device).view(1, sk)
        mask = (j <= i + (sk - sq)).view(1, 1, sq, sk)
    if key_padding_mask is not None:
        # why shape[0] and not -1: with Sk = 0 the view has no elements and -1 would be ambiguous
        kpm = key_padding_mask.to(device=device, dtype=torch.bool).view(key_padding_mask.shape[0], 1, 1, sk)
        mask = kpm if mask is None else mask & kpm
    return mask


def _scores(q: Tensor, k: Tensor, scale: float, bias: Optional[Tensor], mask: Optional[Tensor]) -> Tensor:
    """Scaled, biased and masked scores (B, Hq, Sq, Sk) in the compute dtype; K is (B, Hq, Sk, D)."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.to(s.dtype)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s


def _expand_kv(t: Tensor, hq: int) -> Tensor:
    """(B, Hkv, S, D) -> (B, Hq, S, D): query head h reads KV head h // (Hq // Hkv)."""
    return t.repeat_interleave(hq // t.shape[1], dim=1) if t.shape[1] != hq else t


def _probs(s: Tensor, lse: Tensor) -> Tensor:
    """exp(s - lse), with rows that attend to nothing (lse = -inf) set to zero instead of NaN."""
    p = torch.exp(s - lse.unsqueeze(-1))
    return torch.where(torch.isneginf(lse).unsqueeze(-1), torch.zeros_like(p), p)


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: Optional[float] = None,
              bias: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
              seed: int = 0, offset: int = 0, dropout_factor: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Returns (out in q's dtype, lse (B, Hq, Sq): float32, float64 for float64 inputs).

    lse is the log-sum-exp of the scaled, biased, masked scores; -inf for a row with no key to attend to,
    whose output is zeros. dropout_p > 0: the probabilities are dropped by dropout_keep(.., seed, offset), the
    stream the Triton kernels draw, and the kept ones scaled by 1 / (1 - dropout_p); lse is of the scores.
    dropout_factor: the (B, Hq, Sq, Sk) factors themselves (0 or 1 / (1 - p)) instead of (seed, offset), for a
    slice of a larger call whose (b * H + h, query) counters the slice's own indices would not give.
    """
    b, hq, sq, d = q.shape
    sk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    cd = _compute_dtype(q)
    qc, kc, vc = q.to(cd), _expand_kv(k, hq).to(cd), _expand_kv(v, hq).to(cd)
    mask = attention_mask(sq, sk, causal, key_padding_mask, q.device)
    s = _scores(qc, kc, scale, bias, mask)
    lse = torch.logsumexp(s, dim=-1)  # -inf where the row is fully masked
    p = _probs(s, lse)
    if dropout_factor is not None:
        p = p * dropout_factor.to(cd)
    elif dropout_p > 0.0:
        p = p * _dropout_scale(b, hq, sq, sk, dropout_p, seed, offset, q.device, cd)
    out = torch.matmul(p, vc)
    lse_out = lse if cd == torch.float64 else lse.float()
    return out.to(q.dtype), lse_out


def attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *,
                       causal: bool, scale: Optional[float], bias: Optional[Tensor],
                       key_padding_mask: Optional[Tensor], bias_requires_grad: bool, dropout_p: float = 0.0,
                       seed: int = 0, offset: int = 0, dropout_factor: Optional[Tensor] = None
                       ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients (dq, dk, dv, dbias) by recomputing P from the saved lse (the FlashAttention scheme), and the
    dropout mask from (seed, offset) (or dropout_factor, as in attention).

    dbias is the gradient of the full (B, Hq, Sq, Sk) score bias, summed down to bias's own shape.
    """
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    cd = _compute_dtype(q)
    qc, kc, vc = q.to(cd), _expand_kv(k, hq).to(cd), _expand_kv(v, hq).to(cd)
    do, o = dout.to(cd), out.to(cd)
    mask = attention_mask(sq, sk, causal, key_padding_mask, q.device)
    s = _scores(qc, kc, scale, bias, mask)
    if lse.dtype != cd:  # a float32 lse of float64 inputs: recompute it, keeping the gradients float64-exact
        lse = torch.logsumexp(s, dim=-1)
    p = _probs(s, lse.to(cd))                                    # (B, Hq, Sq, Sk)
    if dropout_factor is not None:
        z = dropout_factor.to(cd)
    else:
        z = _dropout_scale(b, hq, sq, sk, dropout_p, seed, offset, q.device, cd) if dropout_p > 0.0 else None
    dv = torch.matmul((p if z is None else p * z).transpose(-1, -2), do)   # (B, Hq, Sk, Dv)
    dp = torch.matmul(do, vc.transpose(-1, -2))                  # (B, Hq, Sq, Sk), d loss / d (dropped P)
    if z is not None:
        dp = dp * z
    delta = (do * o).sum(-1, keepdim=True)                       # (B, Hq, Sq, 1) = rowsum(P * dP)
    ds = p * (dp - delta)                                        # gradient of the biased scores
    dq = torch.matmul(ds, kc) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qc) * scale
    if hkv != hq:  # sum the gradients of the query heads that share one KV head
        dk = dk.view(b, hkv, hq // hkv, sk, d).sum(2)
        dv = dv.view(b, hkv, hq // hkv, sk, v.shape[3]).sum(2)
    dbias = None
    if bias is not None and bias_requires_grad:
        dbias = _sum_to_shape(ds, bias.shape).to(bias.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias


# ----------------------------------------------------------------------------------------------------------
# Attention dropout: the counter-based stream the kernels draw (Philox4x32-10), in PyTorch
# ----------------------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _mulhilo(a: int, x: Tensor) -> Tuple[Tensor, Tensor]:
    """(high, low) 32-bit halves of the 64-bit product a * x, for a < 2^32 and int64 x in [0, 2^32), in 16-bit
    limbs so that nothing overflows int64."""
    ah, al = a >> 16, a & 0xFFFF
    xh, xl = x >> 16, x & 0xFFFF
    t = ((ah * xl + al * xh) << 16) + al * xl                   # < 2^50
    return ah * xh + (t >> 32), t & _M32


def dropout_threshold(p: float) -> int:
    """A score is kept iff its 16-bit draw is >= this: round(p * 2^16) (half to even), so it is dropped with
    probability t / 65536, p at a resolution of 2^-16 (2^-17 worst case). 65536 (p within 2^-17 of 1): no
    16-bit draw reaches it, every score is dropped."""
    return min(int(round(p * 65536.0)), 65536)


def _philox4x32_10(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, seed: int) -> Tuple[Tensor, ...]:
    """Philox4x32-10 keyed by the 64-bit seed on int64 counter words in [0, 2^32): the four output words."""
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        hi_b, lo_b = _mulhilo(0xCD9E8D57, c2)
        hi_a, lo_a = _mulhilo(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def dropout_keep(b: int, h: int, sq: int, sk: int, p: float, seed: int, offset: int,
                 device: torch.device) -> Tensor:
    """bool (B, H, Sq, Sk): which attention probabilities survive dropout p for (seed, offset). One
    Philox4x32-10 (Salmon et al. 2011, the generator of triton.language.philox) keyed by the 64-bit seed on
    the counter (j // 8, i, b * H + h, offset) draws the 8 keys 8 (j // 8) .. + 7 of query i: its output words
    r0..r3 split into 8 16-bit values, key j taking word (j % 8) // 2, the low half if j is even, the high
    half if odd; kept iff that value >= dropout_threshold(p) = round(p * 2^16), so p is applied at 1/65536
    resolution. Bit for bit what the Triton and CUDA kernels draw, so a test can compare a dropped-out result
    exactly."""
    bh = torch.arange(b * h, device=device, dtype=torch.int64).view(b, h)
    return dropout_keep_at(bh, torch.arange(sq, device=device, dtype=torch.int64), sk, p, seed, offset)


def dropout_keep_at(bh: Tensor, rows: Tensor, sk: int, p: float, seed: int, offset: int) -> Tensor:
    """dropout_keep for some (batch, head) pairs and query rows only: bool (*bh.shape, len(rows), Sk), where
    bh holds int64 values b * H + h and rows int64 query indices (a slice of a large call, as the benchmark
    checks). Philox runs on the (..., len(rows), ceil(Sk / 8)) grid of key groups; its 16-bit halves are
    then laid out along the keys."""
    groups = (sk + 7) // 8
    shape = tuple(bh.shape) + (rows.numel(), groups)
    c0 = torch.arange(groups, device=bh.device, dtype=torch.int64).expand(shape)
    c1 = rows.to(bh.device, torch.int64).view(-1, 1).expand(shape)
    c2 = bh.to(torch.int64).view(tuple(bh.shape) + (1, 1)).expand(shape)
    c3 = torch.full(shape, offset & _M32, dtype=torch.int64, device=bh.device)
    words = torch.stack(_philox4x32_10(c0, c1, c2, c3, seed), dim=-1)          # (..., R, G, 4): r0..r3
    halves = torch.stack((words & 0xFFFF, words >> 16), dim=-1)                  # (..., R, G, 4, 2): lo, hi
    u16 = halves.reshape(shape[:-1] + (groups * 8,))[..., :sk]                   # key 8 g + 2 w + half
    return u16 >= dropout_threshold(p)


def _dropout_scale(b, h, sq, sk, p, seed, offset, device, dtype) -> Tensor:
    """The factor each probability is multiplied by: 1 / (1 - p) where kept, 0 where dropped."""
    keep = dropout_keep(b, h, sq, sk, p, seed, offset, device)
    return keep.to(dtype) * (1.0 / (1.0 - p))


def _sum_to_shape(t: Tensor, shape) -> Tensor:
    """Sum a (B, H, Sq, Sk) gradient down to a shape that broadcasts to it."""
    shape = tuple(shape)
    lead = t.dim() - len(shape)
    if lead:
        t = t.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1)
    if dims:
        t = t.sum(dim=dims, keepdim=True)
    return t


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, *,
                     scale: Optional[float] = None) -> Tensor:
    """One query token per sequence: q (B, Hq, D) against the first cache_seqlens[b] cache positions.

    Positions past a sequence's length are never read into the result (they may hold anything, NaN too).
    """
    b, hq, d = q.shape
    smax = k_cache.shape[2]
    pos = torch.arange(smax, device=q.device).view(1, smax)
    valid = pos < cache_seqlens.to(q.device).view(b, 1).long()     # (B, Smax)
    # Zero the invalid positions so that NaN there cannot leak through 0 * NaN in the matmul.
    keep = valid.view(b, 1, smax, 1)
    k = torch.where(keep, k_cache, torch.zeros((), dtype=k_cache.dtype, device=k_cache.device))
    v = torch.where(keep, v_cache, torch.zeros((), dtype=v_cache.dtype, device=v_cache.device))
    out, _ = attention(q.unsqueeze(2), k, v, scale=scale, key_padding_mask=valid)
    return out.squeeze(2)


def sdpa_mask_to_bias(attn_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """An SDPA attn_mask (bool: True = attend; float: added) as an additive float bias."""
    if attn_mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=dtype, device=attn_mask.device)
        return torch.where(attn_mask, zero, torch.full((), float("-inf"), dtype=dtype, device=attn_mask.device))
    return attn_mask.to(dtype)


# ----------------------------------------------------------------------------------------------------------
# Softmax with temperature
# ----------------------------------------------------------------------------------------------------------

def softmax(x: Tensor, temperature=1.0, dim: int = -1) -> Tensor:
    """softmax(x / temperature) along dim in float32 (float64 for float64 x), returned in x's dtype.

    temperature: a positive number or a tensor broadcastable to x with dim reduced to size 1.
    A row of all -inf gives zeros; a row holding NaN gives NaN.
    """
    if x.numel() == 0:
        return torch.empty_like(x)
    cd = _compute_dtype(x)
    t = temperature.to(cd) if isinstance(temperature, Tensor) else temperature
    z = x.to(cd) / t
    m = z.amax(dim=dim, keepdim=True)
    # An all -inf row has max -inf: shifting by 0 instead gives exp(-inf) = 0 everywhere, sum 0, and 0/0 is
    # avoided below. NaN rows keep max NaN and propagate.
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = torch.exp(z - m)
    s = e.sum(dim=dim, keepdim=True)
    y = torch.where(s == 0, torch.zeros_like(e), e / s)
    return y.to(x.dtype)


def softmax_backward(grad: Tensor, y: Tensor, temperature=1.0, dim: int = -1) -> Tensor:
    """dx = y * (g - sum(g * y)) / temperature, in float32, returned in y's dtype."""
    cd = _compute_dtype(y)
    g, yc = grad.to(cd), y.to(cd)
    t = temperature.to(cd) if isinstance(temperature, Tensor) else temperature
    dx = yc * (g - (g * yc).sum(dim=dim, keepdim=True)) / t
    return dx.to(y.dtype)


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------

TINY = torch.finfo(torch.float32).tiny

# Where every backend clamps a sampling parameter given as a tensor, as it loads it ((low, high), None:
# unbounded): temperature below 0 is greedy, top_k below 0 is no top-k, top_p at or below 0 keeps the most
# probable token only, min_p is taken in [0, 1]. NaN stays NaN (as torch.clamp keeps it). The public functions
# range-check numbers instead (they raise); the kernels convert to float32 (int64 for top_k) before clamping.
PARAM_RANGES = dict(temperature=(0.0, None), top_k=(0, None), top_p=(TINY, 1.0), min_p=(0.0, 1.0))


def _sampling_param(name: str, value, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A sampling parameter (a number, or a (B,) or 0-dim tensor) as a (B,) tensor of dtype, clamped."""
    return torch.clamp(_broadcast_to_batch(value, batch, dtype, device), *PARAM_RANGES[name])


def top_k_top_p_filter(logits: Tensor, *, top_k=0, top_p=1.0, min_p=0.0, temperature=1.0) -> Tensor:
    """Logits / temperature with the tokens that top-k, then top-p, then min-p remove set to -inf.

    Float32 result (float64 for float64 logits). Rows with temperature 0 are greedy: they keep only the
    first maximal logit, undivided. A row with +inf logits keeps just those; a row holding NaN comes back all
    NaN. Tensor parameters are clamped into PARAM_RANGES.
    """
    b, v = logits.shape
    cd = _compute_dtype(logits)
    dev = logits.device
    x = logits.to(cd)
    t = _sampling_param("temperature", temperature, b, cd, dev)
    k = _sampling_param("top_k", top_k, b, torch.int64, dev)
    p_top = _sampling_param("top_p", top_p, b, cd, dev)
    p_min = _sampling_param("min_p", min_p, b, cd, dev)
    greedy = t == 0
    z = x / torch.where(greedy, torch.ones_like(t), t).unsqueeze(1)
    neg_inf = torch.tensor(float("-inf"), dtype=cd, device=dev)

    # top-k: keep j iff fewer than k logits are strictly larger, i.e. z_j >= the k-th largest value.
    if v > 0:
        kk = torch.where((k <= 0) | (k > v), torch.full_like(k, v), k)
        sorted_z = torch.sort(z, dim=1, descending=True).values
        kth = sorted_z.gather(1, (kk - 1).unsqueeze(1))          # (B, 1)
        z = torch.where(z >= kth, z, neg_inf)

    # top-p: keep j iff the mass of tokens strictly more probable than j is < top_p.
    probs = softmax(z, 1.0, dim=1).to(torch.float64)
    sorted_p = torch.sort(probs, dim=1, descending=True).values
    excl = torch.nn.functional.pad(torch.cumsum(sorted_p, dim=1), (1, 0))[:, :-1]  # mass before position
    n_greater = torch.searchsorted((-sorted_p).contiguous(), (-probs).contiguous())  # how many are strictly larger
    # n_greater < V since p_j is not above itself; the clamp only guards NaN rows, which end up all NaN anyway.
    mass_greater = excl.gather(1, n_greater.clamp(max=v - 1))
    keep_p = (mass_greater < p_top.to(torch.float64).unsqueeze(1)) | (p_top.unsqueeze(1) >= 1)
    z = torch.where(keep_p, z, neg_inf)

    # min-p: keep j iff p_j >= min_p * max p, i.e. z_j - max z >= log(min_p) (independent of normalisation).
    zmax = z.amax(dim=1, keepdim=True)
    with torch.no_grad():
        log_min_p = torch.log(p_min).unsqueeze(1)
    keep_m = (z - zmax >= log_min_p) | (p_min.unsqueeze(1) == 0)
    z = torch.where(keep_m, z, neg_inf)

    # Greedy rows: only the first maximal logit survives, with its undivided value.
    if bool(greedy.any()):
        first = torch.nn.functional.one_hot(x.argmax(dim=1), v).bool() if v > 0 else torch.zeros_like(x, dtype=torch.bool)
        zg = torch.where(first, x, neg_inf)
        z = torch.where(greedy.unsqueeze(1), zg, z)
    # A row with +inf logits (after the temperature) puts all its mass on them: those are what it keeps.
    zt = x / torch.where(greedy, torch.ones_like(t), t).unsqueeze(1)
    inf_row = torch.isposinf(zt).any(dim=1, keepdim=True)
    z = torch.where(inf_row, torch.where(torch.isposinf(zt), zt, neg_inf), z)
    nan_row = torch.isnan(x).any(dim=1, keepdim=True)
    return torch.where(nan_row, torch.full_like(z, float("nan")), z)


_MASK64 = (1 << 64) - 1


def _splitmix64(x: Tensor) -> Tensor:
    """The SplitMix64 finaliser on int64 tensors (wrapping arithmetic, logical shifts emulated)."""
    def shr(t: Tensor, n: int) -> Tensor:
        return (t >> n) & ((1 << (64 - n)) - 1)

    def c(u: int) -> int:  # an unsigned 64-bit constant as the int64 with the same bits
        return u - (1 << 64) if u >= 1 << 63 else u

    x = x + c(0x9E3779B97F4A7C15)
    x = (x ^ shr(x, 30)) * c(0xBF58476D1CE4E5B9)
    x = (x ^ shr(x, 27)) * c(0x94D049BB133111EB)
    return x ^ shr(x, 31)


def uniform_from_seed(seeds: Tensor, offset: int = 0) -> Tensor:
    """One float64 uniform in [0, 1) per int64 seed, from a counter-based hash of (seed, offset)."""
    h = _splitmix64(_splitmix64(seeds.to(torch.int64)) ^ offset)
    top53 = (h >> 11) & ((1 << 53) - 1)
    return top53.to(torch.float64) * (1.0 / (1 << 53))


def sample(logits: Tensor, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seeds: Tensor) -> Tensor:
    """Token ids (B,) int64: greedy where temperature is 0, else one draw from the filtered distribution.

    ``seeds`` is an int64 (B,) tensor; a row's token depends only on its own logits, parameters and seed.
    The draw inverts the CDF of the kept tokens in index order at u = uniform_from_seed(seed).
    A row holding NaN, or with no finite logit to choose from, yields -1.
    """
    b, v = logits.shape
    z = top_k_top_p_filter(logits, top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature)
    bad = torch.isnan(z).any(dim=1) | torch.isneginf(z).all(dim=1) | torch.isposinf(z).any(dim=1)
    zmax = z.amax(dim=1, keepdim=True)
    zmax = torch.where(torch.isfinite(zmax), zmax, torch.zeros_like(zmax))
    w = torch.exp((z - zmax).to(torch.float64))                   # unnormalised kept probabilities
    cdf = torch.cumsum(w, dim=1)
    u = uniform_from_seed(seeds.to(logits.device)) * cdf[:, -1]
    tok = torch.searchsorted(cdf, u.unsqueeze(1), right=True).squeeze(1)
    # u * total < total, so tok < V except by rounding; then fall back to the last kept token.
    last_kept = (v - 1) - torch.argmax(torch.flip(w > 0, dims=[1]).to(torch.int8), dim=1)
    tok = torch.where(tok >= v, last_kept, tok)
    return torch.where(bad, torch.full_like(tok, -1), tok)
