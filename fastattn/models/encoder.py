"""Encoder: a BERT-like bidirectional transformer (post-norm), with a key padding mask.

``Encoder.from_hf`` loads a Hugging Face ``BertModel`` (e.g. sentence-transformers' all-MiniLM-L6-v2).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn

from .common import Attention, SwitchesAttnBackend, activation, check_attn_backend, copy_, hf_activation


@dataclass
class EncoderConfig:
    vocab_size: int = 30522
    max_seq_len: int = 512
    type_vocab_size: int = 2
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    activation: str = "gelu"          # exact (erf) GELU, as BERT
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0              # hidden and embedding dropout
    attn_dropout: float = 0.0         # attention dropout on the probabilities (BERT's attention_probs_dropout_prob)
    pooler: bool = True               # BERT's tanh(W h[CLS] + b)

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")

    @classmethod
    def bert_base(cls, **overrides) -> "EncoderConfig":
        """BERT-base (110M): 12 layers, 12 heads, d_model 768, d_ff 3072."""
        return replace(cls(), **overrides)


class Layer(nn.Module):
    """Post-norm: x = ln(x + attn(x)), then x = ln(x + ff(x))."""

    def __init__(self, config: EncoderConfig, backend: str):
        super().__init__()
        c = config
        self.attn = Attention(c.d_model, c.n_heads, c.d_model // c.n_heads, bias=True, backend=backend,
                              dropout=c.attn_dropout)
        self.ln_attn = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.fc = nn.Linear(c.d_model, c.d_ff)
        self.act = activation(c.activation)
        self.proj = nn.Linear(c.d_ff, c.d_model)
        self.ln_ff = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
        x = self.ln_attn(x + self.drop(self.attn(x, key_padding_mask=key_padding_mask)))
        return self.ln_ff(x + self.drop(self.proj(self.act(self.fc(x)))))


class Encoder(SwitchesAttnBackend):
    def __init__(self, config: EncoderConfig, attn_backend: str = "auto"):
        super().__init__()
        c = self.config = config
        self._attn_backend = check_attn_backend(attn_backend)
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model)
        self.type_emb = nn.Embedding(c.type_vocab_size, c.d_model)
        self.ln_emb = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(Layer(c, attn_backend) for _ in range(c.n_layers))
        self.pooler = nn.Linear(c.d_model, c.d_model) if c.pooler else None
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None) -> Tensor:
        """Hidden states (B, S, C) of token ids (B, S); attention_mask (B, S): 1/True = real token, 0 = padding."""
        B, S = input_ids.shape
        pos = torch.arange(S, device=input_ids.device).view(1, S)                # (1, S)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.tok_emb(input_ids) + self.pos_emb(pos) + self.type_emb(types)   # (B, S, C)
        x = self.drop(self.ln_emb(x))
        kpm = None if attention_mask is None else attention_mask.bool()           # (B, S), True = real token
        for layer in self.layers:
            x = layer(x, kpm)
        return x

    def pool(self, hidden: Tensor) -> Tensor:
        """BERT's pooled output tanh(W h[CLS] + b): (B, C)."""
        if self.pooler is None:
            raise ValueError("this Encoder was built with pooler=False")
        return torch.tanh(self.pooler(hidden[:, 0]))

    @staticmethod
    def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Mean of the real tokens' hidden states (sentence-transformers' pooling): (B, C)."""
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)                         # (B, S, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    @classmethod
    def from_hf(cls, model, attn_backend: str = "auto") -> "Encoder":
        """An Encoder with the weights of a Hugging Face BertModel (or a BertFor* model's .bert); same outputs."""
        bert = getattr(model, "bert", model)
        hf = bert.config
        if getattr(hf, "model_type", None) != "bert":
            raise TypeError(f"Encoder.from_hf expects a BertModel, got {type(model).__name__}")
        if getattr(hf, "position_embedding_type", "absolute") != "absolute" or hf.is_decoder:
            raise NotImplementedError("only the absolute-position, bidirectional BERT is supported")
        config = EncoderConfig(vocab_size=hf.vocab_size, max_seq_len=hf.max_position_embeddings,
                               type_vocab_size=hf.type_vocab_size, d_model=hf.hidden_size,
                               n_layers=hf.num_hidden_layers, n_heads=hf.num_attention_heads,
                               d_ff=hf.intermediate_size, activation=hf_activation(hf.hidden_act),
                               layer_norm_eps=hf.layer_norm_eps, pooler=getattr(bert, "pooler", None) is not None)
        p = next(bert.parameters())
        with torch.device(p.device):  # initialise where the weights live, then take their dtype
            ours = cls(config, attn_backend=attn_backend).to(dtype=p.dtype)
        e = bert.embeddings
        pairs = [(ours.tok_emb, e.word_embeddings), (ours.pos_emb, e.position_embeddings),
                 (ours.type_emb, e.token_type_embeddings), (ours.ln_emb, e.LayerNorm)]
        for layer, h in zip(ours.layers, bert.encoder.layer):
            a = h.attention
            pairs += [(layer.attn.q, a.self.query), (layer.attn.k, a.self.key), (layer.attn.v, a.self.value),
                      (layer.attn.o, a.output.dense), (layer.ln_attn, a.output.LayerNorm),
                      (layer.fc, h.intermediate.dense), (layer.proj, h.output.dense), (layer.ln_ff, h.output.LayerNorm)]
        if ours.pooler is not None:
            pairs.append((ours.pooler, bert.pooler.dense))
        for dst, src in pairs:
            for name, t in dst.named_parameters():
                copy_(t, getattr(src, name), f"{type(src).__name__}.{name}")
        return ours.train(model.training)
