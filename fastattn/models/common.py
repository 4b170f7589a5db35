"""What the reference models share: the one switch that picks the attention backend, and small layers.

Every attention call of Encoder, Decoder and EncoderDecoder goes through ``attend`` (or ``attend_decode`` for
one new token against a KV cache), so changing ``model.attn_backend`` changes every layer at once. The generate
methods share ``row_seeds``, ``draw`` and ``EosStop``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastattn

# "auto", "triton", "cuda", "torch": fastattn's backends (see fastattn.attention). "sdpa": PyTorch's own
# F.scaled_dot_product_attention on the same model, the baseline for end-to-end comparisons.
ATTN_BACKENDS = ("auto", "triton", "cuda", "torch", "sdpa")


def check_attn_backend(name: str) -> str:
    if name not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {name!r}")
    return name


def attend(q: Tensor, k: Tensor, v: Tensor, *, backend: str, causal: bool = False, scale: Optional[float] = None,
           bias: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None,
           dropout_p: float = 0.0) -> Tensor:
    """The switch. q (B, Hq, Sq, D), k/v (B, Hkv, Sk, D) -> (B, Hq, Sq, D); causal aligned bottom-right,
    bias added to the scaled scores, key_padding_mask bool (B, Sk) with True = real token; dropout_p: attention
    dropout (fastattn's stream on its backends, PyTorch's on "sdpa")."""
    if backend != "sdpa":
        return fastattn.attention(q, k, v, causal=causal, scale=scale, bias=bias,
                                  key_padding_mask=key_padding_mask, dropout_p=dropout_p, backend=backend)
    sq, sk = q.shape[2], k.shape[2]
    mask = None                                                      # bool, True = attend
    if causal:
        i = torch.arange(sq, device=q.device).view(sq, 1)                       # (Sq, 1)
        mask = torch.arange(sk, device=q.device).view(1, sk) <= i + (sk - sq)   # (Sq, Sk), bottom-right
    if key_padding_mask is not None:
        kpm = key_padding_mask.view(-1, 1, 1, sk)                    # (B, 1, 1, Sk)
        mask = kpm if mask is None else mask & kpm
    if bias is not None:
        mask = bias if mask is None else torch.where(mask, bias, float("-inf")).to(bias.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, dropout_p=dropout_p,
                                          enable_gqa=q.shape[1] != k.shape[1])


def attend_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor, *, backend: str,
                  scale: Optional[float] = None) -> Tensor:
    """One new token per sequence: q (B, Hq, D) against the first cache_seqlens[b] cache positions
    (k_cache, v_cache: (B, Hkv, Smax, D)) -> (B, Hq, D)."""
    if backend != "sdpa":
        return fastattn.decode_attention(q, k_cache, v_cache, cache_seqlens, scale=scale, backend=backend)
    smax = k_cache.shape[2]
    valid = torch.arange(smax, device=q.device).view(1, smax) < cache_seqlens.view(-1, 1)   # (B, Smax)
    out = attend(q.unsqueeze(2), k_cache, v_cache, backend="sdpa", scale=scale,
                 key_padding_mask=valid)                             # q as (B, Hq, 1, D)
    return out.squeeze(2)                                            # (B, Hq, 1, D) -> (B, Hq, D)


class UsesAttend(nn.Module):
    """Base of every layer that calls ``attend``: ``self.backend`` is its switch position."""
    backend: str


class Attention(UsesAttend):
    """Multi-head attention with separate q, k, v, o projections (BERT's and T5's layout).

    Self-attention when ``context`` is None, cross-attention over ``context`` otherwise. The scores are
    q k^T * scale (+ bias); T5 uses scale=1.0 (its weights absorb 1/sqrt(d)).
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, *, bias: bool, scale: Optional[float] = None,
                 backend: str = "auto", dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.dropout = dropout   # attention dropout on the probabilities, in training mode
        self.scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
        self.backend = check_attn_backend(backend)
        inner = n_heads * head_dim
        self.q = nn.Linear(d_model, inner, bias=bias)
        self.k = nn.Linear(d_model, inner, bias=bias)
        self.v = nn.Linear(d_model, inner, bias=bias)
        self.o = nn.Linear(inner, d_model, bias=bias)

    def kv(self, src: Tensor) -> Tuple[Tensor, Tensor]:
        """Keys and values of src (B, Sk, C): (B, H, Sk, D) each. A decoder caches them: its own, step by step,
        and the encoder output's once for cross-attention."""
        B, Sk, _ = src.shape
        k = self.k(src).view(B, Sk, self.n_heads, self.head_dim).transpose(1, 2)   # (B, H, Sk, D)
        v = self.v(src).view(B, Sk, self.n_heads, self.head_dim).transpose(1, 2)   # (B, H, Sk, D)
        return k, v

    def forward(self, x: Tensor, context: Optional[Tensor] = None, *, causal: bool = False,
                bias: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None,
                kv: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """kv: precomputed (k, v) (B, H, Sk, D) to attend to instead of projecting x or context (a KV cache)."""
        B, S, _ = x.shape
        q = self.q(x).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)      # (B, H, S, D)
        k, v = kv if kv is not None else self.kv(x if context is None else context)
        y = attend(q, k, v, backend=self.backend, causal=causal, scale=self.scale, bias=bias,
                   key_padding_mask=key_padding_mask,
                   dropout_p=self.dropout if self.training else 0.0)              # (B, H, S, D)
        y = y.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim)          # (B, S, H*D)
        return self.o(y)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias; statistics in float32."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


ACTIVATIONS = {
    "gelu": F.gelu,                                             # exact (erf), BERT
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),       # GPT-2's gelu_new, T5 v1.1's gated-gelu
    "relu": F.relu,                                             # T5
    "silu": F.silu,
}

# Hugging Face activation names -> ours.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                  "silu": "silu", "swish": "silu"}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def hf_activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise NotImplementedError(f"activation {name!r} of the Hugging Face model is not supported "
                                  f"(supported: {tuple(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


class SwitchesAttnBackend(nn.Module):
    """A model's one switch: ``model.attn_backend = name`` points every attention layer below it at ``name``."""

    @property
    def attn_backend(self) -> str:
        return self._attn_backend

    @attn_backend.setter
    def attn_backend(self, name: str) -> None:
        check_attn_backend(name)
        for m in self.modules():
            if isinstance(m, UsesAttend):
                m.backend = name
        self._attn_backend = name


def copy_(dst: Tensor, src: Tensor, what: str) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"{what}: shape {tuple(src.shape)} of the Hugging Face weight does not match "
                         f"{tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(src)


# ----------------------------------------------------------------------------------------------------------
# Generation helpers: per-row seeds, one sampling step, stopping at end-of-sequence tokens
# ----------------------------------------------------------------------------------------------------------

def row_seeds(seed, batch: int, device: torch.device) -> Optional[Tensor]:
    """Base seeds (B,) int64 of generate, or None (then a generator or torch's global RNG draws).

    seed: an int (row b gets seed + b * 2**20), or an int or int64 tensor of shape () or (B,), one seed per row,
    which makes each row's tokens independent of the rest of the batch.
    """
    if seed is None:
        return None
    if isinstance(seed, Tensor):
        return seed.to(device=device, dtype=torch.int64).reshape(-1).expand(batch)          # (B,)
    return int(seed) + (torch.arange(batch, device=device, dtype=torch.int64) << 20)      # (B,)


def draw(logits: Tensor, step: Union[int, Tensor], seeds: Optional[Tensor], *, temperature, top_k, top_p, min_p,
         generator: Optional[torch.Generator]) -> Tensor:
    """One token per row of logits (B, V) with fastattn.sample: (B,) int64. Step t (an int, or an int64 () tensor
    on the logits' device, as a captured decode step has it) draws with seeds + t * 2**40."""
    return fastattn.sample(logits.float(), temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                           seed=None if seeds is None else seeds + (step << 40), generator=generator)


class EosStop:
    """End-of-sequence handling of generate, as in Hugging Face: once a row has emitted one of eos_token_id (an
    int or a sequence of ints), it emits pad_token_id (default: the first eos id) at every later step; ``done``
    tells when every row has finished. Without eos_token_id it changes nothing and is never done."""

    def __init__(self, eos_token_id: Union[None, int, Sequence[int]], pad_token_id: Optional[int], batch: int,
                 device: torch.device):
        self.eos, self.pad, self.ids = None, pad_token_id, None
        if eos_token_id is not None:
            ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise TypeError(f"eos_token_id must be an int or a non-empty sequence of ints, got {eos_token_id!r}")
            self.ids = tuple(ids)
            self.eos = torch.tensor(ids, dtype=torch.int64, device=device)                   # (E,)
            self.pad = ids[0] if pad_token_id is None else int(pad_token_id)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)                  # (B,)

    def __call__(self, tok: Tensor) -> Tensor:
        """tok (B,) drawn this step -> the tokens to emit, with finished rows held at pad_token_id."""
        if self.eos is None:
            return tok
        tok = torch.where(self.finished, torch.full_like(tok, self.pad), tok)
        self.finished |= torch.isin(tok, self.eos)
        return tok

    @property
    def done(self) -> bool:
        return self.eos is not None and bool(self.finished.all())   # one host sync a step, only with an eos id


# ----------------------------------------------------------------------------------------------------------
# The decode step of generate over static buffers, eager or replayed from a CUDA graph
# ----------------------------------------------------------------------------------------------------------

class DecodeStep:
    """One decode step of generate: ``logits_fn(tok)`` (the model on the last tokens (B,), against its static
    KV cache) then the draw, over buffers updated in place, eager or replayed from a captured CUDA graph.

    State on the device only: the last token ``tok`` (B,), the step number ``t`` (int64 ()), the per-row base
    seeds, the eos bookkeeping and the model's cache (fixed shapes), so that a captured step is the same work as
    an eager one and no host value enters the graph. Python-number sampling settings are constants of the
    captured graph (hence part of ``key``); tensor settings are copied into static buffers.
    """

    def __init__(self, logits_fn, device: torch.device, batch: int, seeds: Optional[Tensor], stop: EosStop,
                 sampling: dict, key: tuple, *, cache=None, mask: Optional[Tensor] = None):
        self.logits_fn, self.stop, self.key_ = logits_fn, stop, key
        # The buffers logits_fn works on, kept with the step so that a later call with the same key reuses them
        # (the caller resets them): the model's static KV cache, and (EncoderDecoder) its encoder padding mask
        # buffer, None without a mask.
        self.cache = cache
        self.mask = mask
        self.seeds = None if seeds is None else seeds.clone()
        self.sampling = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in sampling.items()}
        self.tok = torch.zeros(batch, dtype=torch.int64, device=device)   # (B,)
        self.t = torch.zeros((), dtype=torch.int64, device=device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.graph_ready = False

    @staticmethod
    def key(batch: int, max_len: int, weight: Tensor, seeds: Optional[Tensor], stop: EosStop, sampling: dict,
            *extra) -> tuple:
        def k(v):
            return ("tensor", v.dtype, tuple(v.shape)) if isinstance(v, Tensor) else v
        eos = None if stop.eos is None else (stop.ids, stop.pad)
        gen = sampling.get("generator")
        return (batch, max_len, weight.dtype, weight.device, seeds is None, id(gen) if gen is not None else None,
                eos) + tuple(k(sampling[n]) for n in ("temperature", "top_k", "top_p", "min_p")) + extra

    def reset(self, seeds: Optional[Tensor], stop: EosStop, sampling: dict) -> None:
        """Reuse these buffers (and a captured graph) for a new generate call with the same key; the caller
        resets its cache."""
        for n, v in sampling.items():
            if isinstance(v, Tensor):
                self.sampling[n].copy_(v)
        if seeds is not None:
            self.seeds.copy_(seeds)
        self.stop.finished.copy_(stop.finished)
        self.t.zero_()

    def _draw(self, logits: Tensor) -> None:
        tok = self.stop(draw(logits, self.t, self.seeds, **self.sampling))   # (B,)
        self.tok.copy_(tok)
        self.t += 1

    def first(self, logits: Tensor) -> Tensor:
        """Step 0: the draw from the prompt's logits (always eager)."""
        self._draw(logits)
        return self.tok

    def _body(self) -> None:
        self._draw(self.logits_fn(self.tok))

    def __call__(self, cuda_graph: bool) -> Tensor:
        """The next token (B,), in a buffer the next step overwrites. With cuda_graph: the first call runs the
        step eagerly on a side stream (a warm-up, as CUDA graphs want) and captures it; later calls replay it."""
        if not cuda_graph:
            self._body()
        elif self.graph_ready:
            self.graph.replay()
        else:
            dev = self.tok.device
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                self._body()
            torch.cuda.current_stream(dev).wait_stream(side)
            # Capture records the step's kernels without running them: the buffers keep their values.
            self.graph = torch.cuda.CUDAGraph()
            gen = self.sampling.get("generator")
            if gen is not None:
                self.graph.register_generator_state(gen)
            with torch.cuda.graph(self.graph):
                self._body()
            self.graph_ready = True
        return self.tok


def graph_steps(model: nn.Module) -> dict:
    """The model's captured decode step, by key (at most one: the newest settings)."""
    return model.__dict__.setdefault("_graph_steps_", {})


def keep_graph_step(model: nn.Module, step: DecodeStep) -> None:
    steps = graph_steps(model)
    steps.clear()
    steps[step.key_] = step
