"""EncoderDecoder: a T5-like sequence-to-sequence transformer.

T5's quirks, all visible here: scores are not scaled by 1/sqrt(d) (scale=1.0); positions enter only as a learned
relative position bias, computed once per stack and handed to every layer's attention as the additive ``bias``;
RMS layer norms without bias; the decoder cross-attends to the encoder output. ``EncoderDecoder.from_hf`` loads a
Hugging Face ``T5ForConditionalGeneration``. ``generate`` decodes with a ``Seq2SeqCache``: the decoder's own keys
and values grow by one position a step, the encoder output's are projected once, and each step attends with
fastattn.attention, the relative position bias row of the new position as its additive bias.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .common import (Attention, DecodeStep, EosStop, RMSNorm, SwitchesAttnBackend, activation, check_attn_backend,
                     copy_, draw, graph_steps, hf_activation, keep_graph_step, row_seeds)


@dataclass
class EncoderDecoderConfig:
    vocab_size: int = 32128
    d_model: int = 512
    n_heads: int = 8
    head_dim: int = 64                # T5's d_kv: need not be d_model / n_heads
    d_ff: int = 2048
    n_layers: int = 6                 # encoder layers
    n_decoder_layers: Optional[int] = None  # None: = n_layers
    rel_buckets: int = 32
    rel_max_distance: int = 128
    activation: str = "relu"
    gated_ff: bool = False            # T5 v1.1 / flan-T5: act(wi_0 x) * wi_1 x
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    attn_dropout: float = 0.0         # attention dropout on the probabilities, in training (T5: dropout_rate)
    tie_embeddings: bool = True       # lm_head shares the input embedding
    scale_decoder_output: bool = True  # T5 (not v1.1) scales the decoder output by d_model^-0.5 before lm_head
    decoder_start_token_id: int = 0

    def __post_init__(self):
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers

    @classmethod
    def t5_small(cls, **overrides) -> "EncoderDecoderConfig":
        """T5-small (60M): 6 + 6 layers, 8 heads, d_model 512, d_ff 2048."""
        return replace(cls(), **overrides)


class RelativePositionBias(nn.Module):
    """T5's bucketed relative position bias: (1, H, Sq, Sk), one learned scalar per (bucket, head)."""

    def __init__(self, config: EncoderDecoderConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.buckets, self.max_distance = config.rel_buckets, config.rel_max_distance
        self.embedding = nn.Embedding(config.rel_buckets, config.n_heads)

    def bucket(self, rel: Tensor) -> Tensor:
        """rel = key position - query position -> bucket ids: exact for small distances, log-spaced beyond."""
        n, out = self.buckets, torch.zeros_like(rel)
        if self.bidirectional:
            n //= 2
            out += (rel > 0).long() * n   # keys to the right get the upper half of the buckets
            rel = rel.abs()
        else:
            rel = -torch.clamp(rel, max=0)  # the decoder never looks right: distance to the left
        exact = n // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(self.max_distance / exact)
                         * (n - exact)).long()
        large = torch.clamp(large, max=n - 1)
        return out + torch.where(rel < exact, rel, large)

    def at(self, pos: Tensor, sk: int) -> Tensor:
        """The bias of one query at position ``pos`` (an int64 () tensor) against keys 0 .. sk-1: (1, H, 1, Sk)."""
        rel = torch.arange(sk, device=pos.device).view(1, sk) - pos                               # (1, Sk)
        return self.embedding(self.bucket(rel)).permute(2, 0, 1).unsqueeze(0)   # (1, Sk, H) -> (1, H, 1, Sk)

    def forward(self, sq: int, sk: int) -> Tensor:
        """Query i sits at position i + sk - sq: aligned bottom-right, like causal attention, so that Sq new decoder
        tokens against Sk cached ones get the last Sq rows of the (Sk, Sk) bias."""
        dev = self.embedding.weight.device
        q_pos = torch.arange(sk - sq, sk, device=dev).view(sq, 1)                                 # (Sq, 1)
        rel = torch.arange(sk, device=dev).view(1, sk) - q_pos                                     # (Sq, Sk)
        return self.embedding(self.bucket(rel)).permute(2, 0, 1).unsqueeze(0)   # (Sq, Sk, H) -> (1, H, Sq, Sk)


class FeedForward(nn.Module):
    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        c = config
        self.wi = nn.Linear(c.d_model, c.d_ff * (2 if c.gated_ff else 1), bias=False)  # [wi_0; wi_1] when gated
        self.act = activation(c.activation)
        self.wo = nn.Linear(c.d_ff, c.d_model, bias=False)
        self.gated = c.gated_ff

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            gate, up = self.wi(x).chunk(2, dim=-1)                       # (B, S, F) each
            return self.wo(self.act(gate) * up)
        return self.wo(self.act(self.wi(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderDecoderConfig, backend: str):
        super().__init__()
        c = config
        self.norm_attn = RMSNorm(c.d_model, c.layer_norm_eps)
        self.attn = Attention(c.d_model, c.n_heads, c.head_dim, bias=False, scale=1.0, backend=backend,
                              dropout=c.attn_dropout)
        self.norm_ff = RMSNorm(c.d_model, c.layer_norm_eps)
        self.ff = FeedForward(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, pos_bias: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
        x = x + self.drop(self.attn(self.norm_attn(x), bias=pos_bias, key_padding_mask=key_padding_mask))
        return x + self.drop(self.ff(self.norm_ff(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: EncoderDecoderConfig, backend: str):
        super().__init__()
        c = config
        self.norm_self = RMSNorm(c.d_model, c.layer_norm_eps)
        self.self_attn = Attention(c.d_model, c.n_heads, c.head_dim, bias=False, scale=1.0, backend=backend,
                                   dropout=c.attn_dropout)
        self.norm_cross = RMSNorm(c.d_model, c.layer_norm_eps)
        self.cross_attn = Attention(c.d_model, c.n_heads, c.head_dim, bias=False, scale=1.0, backend=backend,
                                    dropout=c.attn_dropout)
        self.norm_ff = RMSNorm(c.d_model, c.layer_norm_eps)
        self.ff = FeedForward(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, pos_bias: Tensor, memory: Optional[Tensor], memory_mask: Optional[Tensor],
                cache: Optional["Seq2SeqCache"] = None, layer: int = 0) -> Tensor:
        """x (B, T, C): the decoder tokens, or with ``cache`` the T new ones after cache.length cached ones;
        pos_bias (1, H, T, cache.length + T) then."""
        h = self.norm_self(x)
        if cache is not None and cache.static:  # one token at cache.pos; the mask keeps later positions out
            k, v = self.self_attn.kv(h)                                  # (B, H, 1, D) each
            cache.k[layer].index_copy_(2, cache.pos.view(1), k)
            cache.v[layer].index_copy_(2, cache.pos.view(1), v)
            x = x + self.drop(self.self_attn(h, bias=pos_bias, key_padding_mask=cache.valid,
                                             kv=(cache.k[layer], cache.v[layer])))
            cross = cache.cross[layer]
        elif cache is None:
            x = x + self.drop(self.self_attn(h, causal=True, bias=pos_bias))
            cross = None
        else:  # append the new keys and values, then attend to all of them (causal aligned bottom-right)
            L, T = cache.length, x.shape[1]
            k, v = self.self_attn.kv(h)                                  # (B, H, T, D) each
            cache.k[layer][:, :, L:L + T] = k
            cache.v[layer][:, :, L:L + T] = v
            kv = (cache.k[layer][:, :, :L + T], cache.v[layer][:, :, :L + T])            # (B, H, L + T, D) each
            x = x + self.drop(self.self_attn(h, causal=True, bias=pos_bias, kv=kv))
            cross = cache.cross[layer]
        x = x + self.drop(self.cross_attn(self.norm_cross(x), memory, key_padding_mask=memory_mask, kv=cross))
        return x + self.drop(self.ff(self.norm_ff(x)))


class Seq2SeqCache:
    """The decoder's KV cache for EncoderDecoder.generate, built by ``EncoderDecoder.new_cache``.

    k[i], v[i]: (B, H, max_len, D), the self-attention keys and values of decoder layer i, filled at positions
    [0, length) (every sequence decodes in step from the start token, so one length serves all); cross[i]: (k, v)
    (B, H, S, D), layer i's cross-attention keys and values of the encoder output, projected once.
    """

    def __init__(self, k: List[Tensor], v: List[Tensor], cross: List[Tuple[Tensor, Tensor]], static: bool = False):
        self.k, self.v, self.cross = k, v, cross
        self.max_len = k[0].shape[2] if k else 0
        self.length = 0
        # static: one token a step at position ``pos`` (an int64 () tensor on the device, so that every step has
        # the same shapes and no host value, as a CUDA graph needs); attention covers the whole cache with
        # ``valid`` (B, max_len), True at positions <= pos. ``length`` is then not kept.
        self.static = static
        self.pos = torch.zeros((), dtype=torch.int64, device=k[0].device) if k else None
        self.valid: Optional[Tensor] = None


class EncoderDecoder(SwitchesAttnBackend):
    def __init__(self, config: EncoderDecoderConfig, attn_backend: str = "auto"):
        super().__init__()
        c = self.config = config
        self._attn_backend = check_attn_backend(attn_backend)
        self.shared = nn.Embedding(c.vocab_size, c.d_model)
        self.enc_pos_bias = RelativePositionBias(c, bidirectional=True)
        self.enc_layers = nn.ModuleList(EncoderLayer(c, attn_backend) for _ in range(c.n_layers))
        self.enc_norm = RMSNorm(c.d_model, c.layer_norm_eps)
        self.dec_pos_bias = RelativePositionBias(c, bidirectional=False)
        self.dec_layers = nn.ModuleList(DecoderLayer(c, attn_backend) for _ in range(c.n_decoder_layers))
        self.dec_norm = RMSNorm(c.d_model, c.layer_norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.drop = nn.Dropout(c.dropout)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=c.d_model ** -0.5)
        if c.tie_embeddings:
            self.lm_head.weight = self.shared.weight

    def encode(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Encoder output (B, S, C); attention_mask (B, S): 1/True = real token."""
        S = input_ids.shape[1]
        kpm = None if attention_mask is None else attention_mask.bool()    # (B, S)
        bias = self.enc_pos_bias(S, S)                                       # (1, H, S, S), shared by all layers
        x = self.drop(self.shared(input_ids))                                # (B, S, C)
        for layer in self.enc_layers:
            x = layer(x, bias, kpm)
        return self.drop(self.enc_norm(x))

    def new_cache(self, memory: Tensor, max_len: int, static: bool = False) -> Seq2SeqCache:
        """An empty decoder cache for up to max_len decoder tokens, with the cross-attention keys and values of
        the encoder output memory (B, S, C). static: decode one token a step at a device-side position (the
        cache of generate, and what a CUDA graph can capture); see Seq2SeqCache."""
        c, (B, _, _) = self.config, memory.shape
        shape = (B, c.n_heads, max_len, c.head_dim)
        k = [memory.new_zeros(shape) for _ in self.dec_layers]
        v = [memory.new_zeros(shape) for _ in self.dec_layers]
        return Seq2SeqCache(k, v, [layer.cross_attn.kv(memory) for layer in self.dec_layers], static)

    def decode(self, decoder_input_ids: Tensor, memory: Optional[Tensor], attention_mask: Optional[Tensor] = None,
               *, cache: Optional[Seq2SeqCache] = None) -> Tensor:
        """Logits (B, T, V) of the decoder inputs (B, T) given the encoder output memory (B, S, C) and its mask.

        With ``cache``: decoder_input_ids are the T tokens after the cache.length cached ones (one a step when
        generating); their keys and values join the cache, cross-attention uses the cache's (memory may be None),
        and cache.length grows by T.
        """
        T = decoder_input_ids.shape[1]
        if cache is not None and cache.static:
            return self._decode_static(decoder_input_ids, memory, attention_mask, cache)
        L = 0 if cache is None else cache.length
        if cache is not None and L + T > cache.max_len:
            raise ValueError(f"the cache holds {cache.max_len} decoder tokens: {L} cached + {T} new do not fit")
        kpm = None if attention_mask is None else attention_mask.bool()    # (B, S)
        bias = self.dec_pos_bias(T, L + T)                                   # (1, H, T, L + T): rows L .. L+T-1
        x = self.drop(self.shared(decoder_input_ids))                        # (B, T, C)
        for i, layer in enumerate(self.dec_layers):
            x = layer(x, bias, memory, kpm, cache, i)
        if cache is not None:
            cache.length += T
        x = self.drop(self.dec_norm(x))
        if self.config.scale_decoder_output:
            x = x * self.config.d_model ** -0.5
        return self.lm_head(x)

    def _decode_static(self, tok: Tensor, memory: Optional[Tensor], attention_mask: Optional[Tensor],
                       cache: Seq2SeqCache) -> Tensor:
        """decode() of one token per sequence (B, 1) at cache.pos, against the whole static cache."""
        B, T = tok.shape
        if T != 1:
            raise ValueError(f"a static Seq2SeqCache takes one decoder token a step, got {T}")
        # Positions past cache.max_len are not checked here (that would read cache.pos on the host): generate
        # sizes the cache for every step it takes.
        kpm = None if attention_mask is None else attention_mask.bool()    # (B, S)
        bias = self.dec_pos_bias.at(cache.pos, cache.max_len)                # (1, H, 1, max_len)
        j = torch.arange(cache.max_len, device=tok.device).view(1, -1)       # (1, max_len)
        cache.valid = (j <= cache.pos).expand(B, -1).contiguous()            # (B, max_len)
        x = self.drop(self.shared(tok))                                      # (B, 1, C)
        for i, layer in enumerate(self.dec_layers):
            x = layer(x, bias, memory, kpm, cache, i)
        cache.pos += 1
        x = self.drop(self.dec_norm(x))
        if self.config.scale_decoder_output:
            x = x * self.config.d_model ** -0.5
        return self.lm_head(x)

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, attention_mask: Optional[Tensor] = None, *,
                 temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, seed=None,
                 generator: Optional[torch.Generator] = None, eos_token_id: Union[None, int, Sequence[int]] = None,
                 pad_token_id: Optional[int] = None, use_cache: bool = True, cuda_graph: bool = False) -> Tensor:
        """Decoder tokens (B, 1 + n), n <= max_new_tokens, starting from decoder_start_token_id.

        Each step draws with fastattn.sample: greedy by default (temperature 0); temperature, top_k, top_p,
        min_p, seed and generator as in Decoder.generate (per-row seed tensors make rows batch-independent).
        eos_token_id (an int or several): a finished row emits pad_token_id (default: the eos id) from then on, and
        generation stops once every row has finished. use_cache=False reruns the whole decoder every step (a
        reference for the cached path). The cache is static (max_new_tokens positions, one token a step at a
        device-side position); cuda_graph=True (a CUDA model only) captures that step in a CUDA graph and replays
        it, as Decoder.generate does; the captured graph is kept for later calls with the same batch size,
        input length, max_new_tokens and sampling settings.
        """
        B, dev = input_ids.shape[0], input_ids.device
        if not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph must be a bool, got {type(cuda_graph).__name__}")
        if cuda_graph and (not use_cache or dev.type != "cuda" or self.shared.weight.device.type != "cuda"):
            raise ValueError("cuda_graph=True needs use_cache=True and the model and input_ids on a CUDA device, got "
                             f"input_ids on {dev} and the model on {self.shared.weight.device}; use cuda_graph=False")
        memory = self.encode(input_ids, attention_mask)                      # (B, S, C)
        seeds = row_seeds(seed, B, dev)
        stop = EosStop(eos_token_id, pad_token_id, B, dev)
        start = self.config.decoder_start_token_id
        out = [torch.full((B, 1), start, dtype=torch.long, device=dev)]     # (B, 1)
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, generator=generator)
        if not use_cache:
            for t in range(max_new_tokens):
                logits = self.decode(torch.cat(out, 1), memory, attention_mask)[:, -1]             # (B, V)
                tok = stop(draw(logits, t, seeds, **sampling))               # (B,)
                out.append(tok.view(B, 1))
                if stop.done:
                    break
            return torch.cat(out, 1)
        if max_new_tokens < 1:
            return out[0]
        mask = None if attention_mask is None else attention_mask.to(dev).bool()
        key = DecodeStep.key(B, max_new_tokens, self.shared.weight, seeds, stop, sampling, tuple(memory.shape),
                             mask is None)
        step = graph_steps(self).get(key) if cuda_graph else None
        if step is None:
            cache = self.new_cache(memory, max_new_tokens, static=True)
            mask_buf = None if mask is None else mask.clone()
            step = DecodeStep(lambda tok: self.decode(tok.view(B, 1), None, mask_buf, cache=cache)[:, -1], dev, B,
                              seeds, stop, sampling, key, cache=cache, mask=mask_buf)
            if cuda_graph:
                keep_graph_step(self, step)
        else:  # the captured step's buffers take this call's encoder output, mask and settings
            step.reset(seeds, stop, sampling)
            step.cache.pos.zero_()
            for (k, v), layer in zip(step.cache.cross, self.dec_layers):
                nk, nv = layer.cross_attn.kv(memory)
                k.copy_(nk)
                v.copy_(nv)
            if mask is not None:
                step.mask.copy_(mask)
        step.tok.fill_(start)
        for t in range(max_new_tokens):
            if t and step.stop.done:
                break
            out.append(step(cuda_graph).clone().view(B, 1))                 # (B,) -> (B, 1); the buffer is reused
        return torch.cat(out, 1)

    @classmethod
    def from_hf(cls, model, attn_backend: str = "auto") -> "EncoderDecoder":
        """An EncoderDecoder with the weights of a Hugging Face T5ForConditionalGeneration (same logits)."""
        hf = model.config
        if getattr(hf, "model_type", None) != "t5" or not hasattr(model, "lm_head"):
            raise TypeError(f"EncoderDecoder.from_hf expects a T5ForConditionalGeneration, got {type(model).__name__}")
        config = EncoderDecoderConfig(
            vocab_size=hf.vocab_size, d_model=hf.d_model, n_heads=hf.num_heads, head_dim=hf.d_kv, d_ff=hf.d_ff,
            n_layers=hf.num_layers, n_decoder_layers=hf.num_decoder_layers,
            rel_buckets=hf.relative_attention_num_buckets, rel_max_distance=hf.relative_attention_max_distance,
            activation=hf_activation(hf.dense_act_fn), gated_ff=hf.is_gated_act, layer_norm_eps=hf.layer_norm_epsilon,
            tie_embeddings=model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr(),
            scale_decoder_output=bool(getattr(hf, "scale_decoder_outputs", hf.tie_word_embeddings)),
            decoder_start_token_id=getattr(hf, "decoder_start_token_id", None) or 0)
        p = next(model.parameters())
        with torch.device(p.device):  # initialise where the weights live, then take their dtype
            ours = cls(config, attn_backend=attn_backend).to(dtype=p.dtype)

        def attn(dst: Attention, src) -> None:
            for a, b in ((dst.q, src.q), (dst.k, src.k), (dst.v, src.v), (dst.o, src.o)):
                copy_(a.weight, b.weight, "attention")

        def ff(dst: FeedForward, src) -> None:
            wi = torch.cat([src.wi_0.weight, src.wi_1.weight]) if config.gated_ff else src.wi.weight
            copy_(dst.wi.weight, wi, "DenseReluDense.wi")
            copy_(dst.wo.weight, src.wo.weight, "DenseReluDense.wo")

        copy_(ours.shared.weight, model.shared.weight, "shared")
        enc, dec = model.encoder, model.decoder
        copy_(ours.enc_pos_bias.embedding.weight, enc.block[0].layer[0].SelfAttention.relative_attention_bias.weight,
              "encoder relative_attention_bias")
        copy_(ours.dec_pos_bias.embedding.weight, dec.block[0].layer[0].SelfAttention.relative_attention_bias.weight,
              "decoder relative_attention_bias")
        for layer, blk in zip(ours.enc_layers, enc.block):
            copy_(layer.norm_attn.weight, blk.layer[0].layer_norm.weight, "layer_norm")
            attn(layer.attn, blk.layer[0].SelfAttention)
            copy_(layer.norm_ff.weight, blk.layer[1].layer_norm.weight, "layer_norm")
            ff(layer.ff, blk.layer[1].DenseReluDense)
        for layer, blk in zip(ours.dec_layers, dec.block):
            copy_(layer.norm_self.weight, blk.layer[0].layer_norm.weight, "layer_norm")
            attn(layer.self_attn, blk.layer[0].SelfAttention)
            copy_(layer.norm_cross.weight, blk.layer[1].layer_norm.weight, "layer_norm")
            attn(layer.cross_attn, blk.layer[1].EncDecAttention)
            copy_(layer.norm_ff.weight, blk.layer[2].layer_norm.weight, "layer_norm")
            ff(layer.ff, blk.layer[2].DenseReluDense)
        copy_(ours.enc_norm.weight, enc.final_layer_norm.weight, "encoder.final_layer_norm")
        copy_(ours.dec_norm.weight, dec.final_layer_norm.weight, "decoder.final_layer_norm")
        if not config.tie_embeddings:
            copy_(ours.lm_head.weight, model.lm_head.weight, "lm_head")
        return ours.train(model.training)
