"""Decoder: a GPT-like causal language model with a KV cache, in the spirit of nanoGPT.

Options: grouped-query attention as in LLaMA (``n_kv_heads < n_heads``) and ALiBi as in BLOOM
(``position="alibi"``: linear biases on the scores instead of position embeddings). ``Decoder.from_hf`` loads a
Hugging Face ``GPT2LMHeadModel``; ``generate`` samples with ``fastattn.sample`` and attends to the cache with
``fastattn.decode_attention``. Ragged batches come with an ``attention_mask`` (1 = real token), left-padded as
Hugging Face pads for generation (right padding works too): positions count real tokens only, and the KV cache
holds each sequence compacted, so its ``lengths`` are exact ``cache_seqlens`` and padding is never attended to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .common import (DecodeStep, EosStop, SwitchesAttnBackend, UsesAttend, activation, attend, attend_decode,
                     check_attn_backend, copy_, graph_steps, hf_activation, keep_graph_step, row_seeds)


@dataclass
class DecoderConfig:
    vocab_size: int = 50257
    max_seq_len: int = 1024           # longest sequence (prompt + generated tokens) the positions allow
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: Optional[int] = None  # < n_heads: grouped-query attention as in LLaMA; None: = n_heads
    d_ff: Optional[int] = None        # None: 4 * d_model
    position: str = "learned"         # "learned" (GPT-2) or "alibi" (BLOOM)
    activation: str = "gelu_tanh"     # GPT-2's gelu_new
    bias: bool = True
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0              # residual and embedding dropout
    attn_dropout: float = 0.0         # attention dropout on the probabilities (GPT-2's attn_pdrop), in training
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.position not in ("learned", "alibi"):
            raise ValueError(f"position must be 'learned' or 'alibi', got {self.position!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def gpt2_small(cls, **overrides) -> "DecoderConfig":
        """GPT-2 small (124M): 12 layers, 12 heads, d_model 768, 1024 positions."""
        return replace(cls(), **overrides)


def alibi_slopes(n_heads: int) -> Tensor:
    """BLOOM's per-head ALiBi slopes: a geometric sequence, interleaved when n_heads is not a power of 2."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != n_heads:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** (2 * i + 1) for i in range(n_heads - closest)]
    return torch.tensor(slopes, dtype=torch.float32)


class KVCache:
    """Preallocated keys and values of every layer, k[i] and v[i]: (B, Hkv, max_len, D).

    lengths: int32 (B,), how many positions of each sequence are filled (the cache_seqlens of
    fastattn.decode_attention). A prompt fills an empty cache; each decode step appends one token per sequence.
    A padded prompt is stored compacted: sequence b's real tokens at positions [0, lengths[b]) in order, so a
    cache position is the token's position id and no padding lies below lengths[b].
    """

    def __init__(self, config: DecoderConfig, batch: int, max_len: int, *, dtype: torch.dtype,
                 device: torch.device):
        shape = (batch, config.n_kv_heads, max_len, config.head_dim)
        self.k: List[Tensor] = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.v: List[Tensor] = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.int32, device=device)
        self.max_len = max_len
        self.empty = True


class CausalSelfAttention(UsesAttend):
    def __init__(self, config: DecoderConfig, backend: str):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.backend = check_attn_backend(backend)
        self.attn_dropout = config.attn_dropout
        self.qkv = nn.Linear(config.d_model, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=config.bias)
        self.proj = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=config.bias)

    def forward(self, x: Tensor, bias: Optional[Tensor], cache: Optional[KVCache], layer: int,
                kpm: Optional[Tensor] = None, order: Optional[Tensor] = None) -> Tensor:
        """kpm: bool (B, S) of a padded prompt, True = real token; order: (B, S) the prompt's token indices with
        each sequence's real tokens first (in order), the compacted layout the cache stores."""
        B, S, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x).view(B, S, H + 2 * Hkv, D)                     # (B, S, H + 2*Hkv, D)
        q, k, v = qkv.transpose(1, 2).split([H, Hkv, Hkv], dim=1)        # (B, H, S, D), (B, Hkv, S, D) x2
        if cache is None or cache.empty:
            # A padded query row with no real key at or before it (left padding) comes out as zeros; unused.
            y = attend(q, k, v, backend=self.backend, causal=True, bias=bias, key_padding_mask=kpm,
                       dropout_p=self.attn_dropout if self.training else 0.0)                # (B, H, S, D)
            if cache is not None:  # prefill: the prompt fills positions [0, S) of the empty cache
                if order is not None:  # compacted: real tokens to [0, lengths[b]), padding after, never read
                    idx = order.view(B, 1, S, 1).expand(B, Hkv, S, D)    # (B, Hkv, S, D)
                    k, v = k.gather(2, idx), v.gather(2, idx)
                cache.k[layer][:, :, :S] = k
                cache.v[layer][:, :, :S] = v
        else:  # decode: one new token per sequence, at its own position cache.lengths[b]
            rows, pos = torch.arange(B, device=x.device), cache.lengths.long()
            cache.k[layer][rows, :, pos] = k[:, :, 0]                    # (B, Hkv, D) into (b, :, pos[b], :)
            cache.v[layer][rows, :, pos] = v[:, :, 0]
            if bias is None:
                y = attend_decode(q[:, :, 0], cache.k[layer], cache.v[layer], cache.lengths + 1,
                                  backend=self.backend).unsqueeze(2)     # (B, H, D) -> (B, H, 1, D)
            else:  # ALiBi: decode_attention takes no bias, so attend to the whole cache with a padding mask
                valid = torch.arange(cache.max_len, device=x.device).view(1, -1) <= pos.view(B, 1)  # (B, Smax)
                y = attend(q, cache.k[layer], cache.v[layer], backend=self.backend, bias=bias,
                           key_padding_mask=valid)                        # (B, H, 1, D)
        y = y.transpose(1, 2).reshape(B, S, H * D)                       # (B, S, H*D)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.act = activation(config.activation)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-norm: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: DecoderConfig, backend: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, backend)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, bias: Optional[Tensor], cache: Optional[KVCache], layer: int,
                kpm: Optional[Tensor] = None, order: Optional[Tensor] = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), bias, cache, layer, kpm, order))
        return x + self.drop(self.mlp(self.ln_2(x)))


class Decoder(SwitchesAttnBackend):
    def __init__(self, config: DecoderConfig, attn_backend: str = "auto"):
        super().__init__()
        self.config = config
        self._attn_backend = check_attn_backend(attn_backend)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None
        if config.position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_heads), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, attn_backend) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 * n_layers)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch, max_len, dtype=p.dtype, device=p.device)

    def _alibi(self, pos: Tensor, cache: Optional[KVCache]) -> Tensor:
        """ALiBi bias slope_h * (key position - query position) over the position ids pos ((1 or B, S)): (1 or B,
        H, S, S); or (B, H, 1, Smax) when decoding against ``cache``, whose positions are cache positions."""
        slopes = self.alibi_slopes.view(1, -1, 1, 1)                     # (1, H, 1, 1)
        if cache is None:
            rel = pos.unsqueeze(1).unsqueeze(2) - pos.unsqueeze(1).unsqueeze(3)    # (1 or B, 1, S, S): j - i
        else:
            j = torch.arange(cache.max_len, device=slopes.device).view(1, 1, 1, -1)   # (1, 1, 1, Smax)
            rel = j - cache.lengths.view(-1, 1, 1, 1)                    # (B, 1, 1, Smax): j - pos[b]
        return (slopes * rel).to(self.wte.weight.dtype)

    def forward(self, idx: Tensor, cache: Optional[KVCache] = None,
                attention_mask: Optional[Tensor] = None) -> Tensor:
        """Logits (B, S, V) for token ids idx (B, S).

        Without a cache: a whole sequence, causal. With a cache: S > 1 is a prompt filling the empty cache; S == 1
        is one decode step per sequence, at position cache.lengths[b]. Either way cache.lengths grows by the
        number of real tokens. attention_mask (B, S), 1/True = real token, 0 = padding (left, right or anywhere),
        for a whole sequence or a prompt: position ids count real tokens only (Hugging Face's cumsum(mask) - 1),
        padding keys are never attended to, and the logits at padding positions are meaningless.
        """
        B, S = idx.shape
        decoding = cache is not None and not cache.empty
        if decoding and S != 1:
            raise ValueError("a prompt (S > 1) must fill an empty KVCache; decode one token at a time after it")
        kpm = order = None
        if attention_mask is not None:
            if decoding:
                raise ValueError("attention_mask belongs to a prompt; a decode step attends to its sequence's cache, "
                                 "which holds real tokens only")
            if tuple(attention_mask.shape) != (B, S):
                raise ValueError(f"attention_mask must have the shape of input_ids (B, S) = ({B}, {S}), got "
                                 f"{tuple(attention_mask.shape)}")
            kpm = attention_mask.to(device=idx.device, dtype=torch.bool)                  # (B, S)
            if cache is not None:  # stable: real tokens first, in order
                order = torch.sort((~kpm).to(torch.int8), dim=1, stable=True).indices     # (B, S)
        if decoding:
            pos = cache.lengths.long().view(B, 1)                        # (B, 1)
        elif kpm is not None:
            pos = (kpm.long().cumsum(1) - 1).clamp(min=0)                # (B, S); padding: 0, as HF's masked_fill
        else:
            pos = torch.arange(S, device=idx.device).view(1, S)          # (1, S)
        x = self.wte(idx)                                                # (B, S, C)
        if self.wpe is not None:
            x = x + self.wpe(pos)
        bias = self._alibi(pos, cache if decoding else None) if self.config.position == "alibi" else None
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, bias, cache, i, kpm, order)
        if cache is not None:
            cache.lengths += S if kpm is None else kpm.sum(1, dtype=torch.int32)
            cache.empty = False
        return self.lm_head(self.ln_f(x))                                # (B, S, V)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, *, temperature=1.0, top_k=0, top_p=1.0,
                 min_p=0.0, seed=None, generator: Optional[torch.Generator] = None,
                 attention_mask: Optional[Tensor] = None, eos_token_id: Union[None, int, Sequence[int]] = None,
                 pad_token_id: Optional[int] = None, cuda_graph: bool = False) -> Tensor:
        """Continue each prompt (input_ids (B, T)) by up to max_new_tokens tokens: (B, T + n), n <= max_new_tokens.

        Each step draws with fastattn.sample (temperature 0 = greedy). seed: an int (row b at step t draws with
        seed + b * 2**20 + t * 2**40), or an int64 (B,) tensor of per-row seeds, which makes each row's tokens
        independent of the rest of the batch; or pass a generator; neither: torch's global RNG.

        attention_mask (B, T), 1 = real token, 0 = padding: prompts of different lengths, left-padded as Hugging
        Face does for batched generation; each row then generates exactly what it would alone. Right padding is
        handled too (the new tokens still follow the padded prompt in the output).
        eos_token_id (an int or several): a row that emits one is finished and emits pad_token_id (default: the
        eos id) from then on; generation stops early, n < max_new_tokens, once every row has finished (which
        costs one host sync a step, only when eos_token_id is given).

        The KV cache is static: preallocated for T + max_new_tokens positions, every decode step the same shapes,
        the step number a device tensor. cuda_graph=True (a CUDA model only; ValueError otherwise) captures one
        whole decode step (every layer, decode_attention, the sampler, the cache and eos updates) in a CUDA graph
        after one eager step and replays it for every later token; the tokens equal the eager path's. The graph
        and its static buffers stay with the model and are captured again only when the batch size, the cache
        length, the dtype or the sampling settings (numbers, or which parameters are tensors) change.
        """
        B, T = input_ids.shape
        if not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph must be a bool, got {type(cuda_graph).__name__}")
        if cuda_graph and (input_ids.device.type != "cuda" or self.wte.weight.device.type != "cuda"):
            raise ValueError(f"cuda_graph=True needs the model and input_ids on a CUDA device, got input_ids on "
                             f"{input_ids.device} and the model on {self.wte.weight.device}; use cuda_graph=False")
        longest = T
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, T):
                raise ValueError(f"attention_mask must have the shape of input_ids (B, T) = ({B}, {T}), got "
                                 f"{tuple(attention_mask.shape)}")
            lengths = attention_mask.to(input_ids.device).bool().sum(1)  # (B,)
            if bool((lengths == 0).any()):
                raise ValueError("every prompt needs at least one real token (attention_mask row of zeros)")
            longest = int(lengths.max())
        if self.wpe is not None and longest + max_new_tokens > self.config.max_seq_len:
            raise ValueError(f"prompt length {longest} + max_new_tokens {max_new_tokens} exceeds max_seq_len "
                             f"{self.config.max_seq_len}")
        if max_new_tokens < 1:
            return input_ids.clone()
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, generator=generator)
        seeds = row_seeds(seed, B, input_ids.device)
        stop = EosStop(eos_token_id, pad_token_id, B, input_ids.device)
        key = DecodeStep.key(B, T + max_new_tokens, self.wte.weight, seeds, stop, sampling)
        step = graph_steps(self).get(key) if cuda_graph else None
        if step is None:
            cache = self.new_cache(B, T + max_new_tokens)
            step = DecodeStep(lambda tok: self(tok.view(B, 1), cache)[:, -1], cache.lengths.device, B, seeds, stop,
                              sampling, key, cache=cache)
            if cuda_graph:
                keep_graph_step(self, step)
        else:
            step.reset(seeds, stop, sampling)
            step.cache.lengths.zero_()
            step.cache.empty = True
        cache, stop = step.cache, step.stop
        logits = self(input_ids, cache, attention_mask)                  # (B, T, V)
        if attention_mask is None:
            logits = logits[:, -1]                                       # (B, V)
        else:  # each row's last real token: the last column when left-padded
            last = (attention_mask.to(input_ids.device).bool().long()
                    * torch.arange(T, device=input_ids.device)).argmax(1)                 # (B,)
            logits = logits[torch.arange(B, device=input_ids.device), last]               # (B, V)
        out = [input_ids, step.first(logits).clone().view(B, 1)]         # step 0: the prompt's next token
        for t in range(1, max_new_tokens):
            if stop.done:
                break
            tok = step(cuda_graph)
            out.append(tok.clone().view(B, 1))                           # (B,) -> (B, 1); the buffer is reused
        return torch.cat(out, dim=1)

    @classmethod
    def from_hf(cls, model, attn_backend: str = "auto") -> "Decoder":
        """A Decoder with the weights of a Hugging Face GPT2LMHeadModel (same outputs)."""
        hf = model.config
        if getattr(hf, "model_type", None) != "gpt2" or not hasattr(model, "transformer"):
            raise TypeError(f"Decoder.from_hf expects a GPT2LMHeadModel, got {type(model).__name__}")
        if not hf.scale_attn_weights or hf.scale_attn_by_inverse_layer_idx or hf.add_cross_attention:
            raise NotImplementedError("GPT-2 variants with unscaled or layer-scaled attention, or cross-attention, "
                                      "are not supported")
        config = DecoderConfig(vocab_size=hf.vocab_size, max_seq_len=hf.n_positions, d_model=hf.n_embd,
                               n_layers=hf.n_layer, n_heads=hf.n_head, d_ff=hf.n_inner or 4 * hf.n_embd,
                               activation=hf_activation(hf.activation_function), layer_norm_eps=hf.layer_norm_epsilon,
                               tie_embeddings=bool(getattr(hf, "tie_word_embeddings", True)))
        p = next(model.parameters())
        with torch.device(p.device):  # initialise where the weights live, then take their dtype
            ours = cls(config, attn_backend=attn_backend).to(dtype=p.dtype)
        t = model.transformer
        copy_(ours.wte.weight, t.wte.weight, "wte")
        copy_(ours.wpe.weight, t.wpe.weight, "wpe")
        for i, (b, h) in enumerate(zip(ours.blocks, t.h)):
            # GPT-2's Conv1D stores weights as (in, out): transpose into nn.Linear's (out, in).
            pairs = [(b.ln_1, h.ln_1, False), (b.attn.qkv, h.attn.c_attn, True), (b.attn.proj, h.attn.c_proj, True),
                     (b.ln_2, h.ln_2, False), (b.mlp.fc, h.mlp.c_fc, True), (b.mlp.proj, h.mlp.c_proj, True)]
            for dst, src, conv in pairs:
                copy_(dst.weight, src.weight.t() if conv else src.weight, f"h.{i} weight")
                copy_(dst.bias, src.bias, f"h.{i} bias")
        copy_(ours.ln_f.weight, t.ln_f.weight, "ln_f")
        copy_(ours.ln_f.bias, t.ln_f.bias, "ln_f")
        if not config.tie_embeddings:
            copy_(ours.lm_head.weight, model.lm_head.weight, "lm_head")
        return ours.train(model.training)

