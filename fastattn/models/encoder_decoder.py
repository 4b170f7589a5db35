"""EncoderDecoder: a T5-like sequence-to-sequence transformer.

T5's quirks, all visible here: scores are not scaled by 1/sqrt(d) (scale=1.0); positions enter only as a learned
relative position bias, computed once per stack and handed to every layer's attention as the additive ``bias``;
RMS layer norms without bias; the decoder cross-attends to the encoder output. ``EncoderDecoder.from_hf`` loads a
Hugging Face ``T5ForConditionalGeneration``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn

from .common import Attention, RMSNorm, activation, check_attn_backend, copy_, hf_activation, set_attn_backend


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

    def forward(self, sq: int, sk: int) -> Tensor:
        dev = self.embedding.weight.device
        rel = torch.arange(sk, device=dev).view(1, sk) - torch.arange(sq, device=dev).view(sq, 1)  # (Sq, Sk)
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
        self.attn = Attention(c.d_model, c.n_heads, c.head_dim, bias=False, scale=1.0, backend=backend)
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
        self.self_attn = Attention(c.d_model, c.n_heads, c.head_dim, bias=False, scale=1.0, backend=backend)
        self.norm_cross = RMSNorm(c.d_model, c.layer_norm_eps)
        self.cross_attn = Attention(c.d_model, c.n_heads, c.head_dim, bias=False, scale=1.0, backend=backend)
        self.norm_ff = RMSNorm(c.d_model, c.layer_norm_eps)
        self.ff = FeedForward(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, pos_bias: Tensor, memory: Tensor, memory_mask: Optional[Tensor]) -> Tensor:
        x = x + self.drop(self.self_attn(self.norm_self(x), causal=True, bias=pos_bias))
        x = x + self.drop(self.cross_attn(self.norm_cross(x), memory, key_padding_mask=memory_mask))
        return x + self.drop(self.ff(self.norm_ff(x)))


class EncoderDecoder(nn.Module):
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

    @property
    def attn_backend(self) -> str:
        return self._attn_backend

    @attn_backend.setter
    def attn_backend(self, name: str) -> None:
        set_attn_backend(self, name)
        self._attn_backend = name

    def encode(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Encoder output (B, S, C); attention_mask (B, S): 1/True = real token."""
        S = input_ids.shape[1]
        kpm = None if attention_mask is None else attention_mask.bool()    # (B, S)
        bias = self.enc_pos_bias(S, S)                                       # (1, H, S, S), shared by all layers
        x = self.drop(self.shared(input_ids))                                # (B, S, C)
        for layer in self.enc_layers:
            x = layer(x, bias, kpm)
        return self.drop(self.enc_norm(x))

    def decode(self, decoder_input_ids: Tensor, memory: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Logits (B, T, V) of the decoder inputs (B, T) given the encoder output memory (B, S, C) and its mask."""
        T = decoder_input_ids.shape[1]
        kpm = None if attention_mask is None else attention_mask.bool()    # (B, S)
        bias = self.dec_pos_bias(T, T)                                       # (1, H, T, T)
        x = self.drop(self.shared(decoder_input_ids))                        # (B, T, C)
        for layer in self.dec_layers:
            x = layer(x, bias, memory, kpm)
        x = self.drop(self.dec_norm(x))
        if self.config.scale_decoder_output:
            x = x * self.config.d_model ** -0.5
        return self.lm_head(x)

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Greedy decoding (B, 1 + max_new_tokens), starting from decoder_start_token_id. No KV cache: each step
        reruns the decoder over the tokens so far (kept simple; the Decoder shows the cached path)."""
        memory = self.encode(input_ids, attention_mask)
        out = torch.full((input_ids.shape[0], 1), self.config.decoder_start_token_id, dtype=torch.long,
                         device=input_ids.device)
        for _ in range(max_new_tokens):
            nxt = self.decode(out, memory, attention_mask)[:, -1].argmax(-1, keepdim=True)   # (B, 1)
            out = torch.cat([out, nxt], dim=1)
        return out

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
