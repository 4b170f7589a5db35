"""Reference models built on fastattn: readable, small, and loadable from Hugging Face weights.

- ``Encoder`` (BERT-like), from ``EncoderConfig``; ``Encoder.from_hf(BertModel)``.
- ``Decoder`` (GPT-like, KV cache, GQA and ALiBi options), from ``DecoderConfig``;
  ``Decoder.from_hf(GPT2LMHeadModel)``; ``Decoder.generate`` samples with ``fastattn.sample``, takes ragged
  (padded) prompts with ``attention_mask`` and stops at ``eos_token_id``.
- ``EncoderDecoder`` (T5-like, relative position bias), from ``EncoderDecoderConfig``;
  ``EncoderDecoder.from_hf(T5ForConditionalGeneration)``; ``EncoderDecoder.generate`` decodes with a KV cache
  (``Seq2SeqCache``) and samples with ``fastattn.sample``.

Each takes ``attn_backend=`` ("auto", "triton", "cuda", "torch", or "sdpa" for PyTorch's own SDPA as a
baseline), settable later as ``model.attn_backend = ...``. Full-size configs for benchmarks:
``DecoderConfig.gpt2_small()``, ``EncoderConfig.bert_base()``, ``EncoderDecoderConfig.t5_small()``.
"""
from .common import ATTN_BACKENDS
from .decoder import Decoder, DecoderConfig, KVCache, alibi_slopes
from .encoder import Encoder, EncoderConfig
from .encoder_decoder import EncoderDecoder, EncoderDecoderConfig, Seq2SeqCache

__all__ = [
    "ATTN_BACKENDS",
    "Decoder",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "KVCache",
    "Seq2SeqCache",
    "alibi_slopes",
]
