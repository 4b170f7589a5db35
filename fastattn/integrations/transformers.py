"""Hugging Face transformers integration: ``import fastattn.integrations.transformers`` registers "fastattn".

After the import, ``AutoModel.from_pretrained(..., attn_implementation="fastattn")`` and
``model.set_attn_implementation("fastattn")`` route every attention layer of BERT, RoBERTa, GPT-2, Llama, Mistral,
Qwen2, T5 and BART (and other models written against ``AttentionInterface``) through ``fastattn.attention``.

Three pieces:
- ``attention_forward``, registered with ``AttentionInterface``: takes (B, H, S, D) query/key/value as transformers
  passes them and returns ((B, S, H, D), None), like transformers' own "sdpa" function, whose semantics it mirrors
  (``is_causal``, masks, GQA, T5's ``position_bias``, cross-attention, decode steps with a KV cache).
- ``mask_forward``, registered with ``AttentionMaskInterface``: builds exactly the boolean mask "sdpa" gets (or None
  where sdpa would rely on ``is_causal``), and tags it with its structure (causal or not, the key padding mask), so
  that the attention function can hand fastattn a causal flag and a (B, Sk) key padding mask instead of a dense
  (B, 1, Sq, Sk) bias. Without a registered mask function transformers would build no padding mask at all.
- A fix for ``set_attn_implementation``: transformers 5.x skips sub-models whose config class equals the parent's,
  so T5's encoder and decoder stacks (which hold deep copies of the config) silently kept their old
  implementation. Only the T5 family's classes (T5, MT5, UMT5, LongT5: the ones whose stacks deep-copy the
  config) get the fix, and it acts only on requests that involve a fastattn implementation; every other model,
  and ``PreTrainedModel`` itself, keeps transformers' own method.

Attention dropout (training with ``attention_dropout > 0``) runs in fastattn's kernels (``dropout_p`` of
``fastattn.attention``; fastattn's own random stream, so the same distribution as "sdpa", not the same draws).
The backend is "auto" (choose per call; ``with fastattn.use_backend(...)`` sets it for a
block); ``register(name, backend=...)`` registers further names pinned to one backend.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

import fastattn

try:
    from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, sdpa_mask
except ImportError as e:  # pragma: no cover - exercised only without the extra installed
    raise ImportError("fastattn.integrations.transformers needs Hugging Face transformers: "
                      "pip install 'fastattn[transformers]'") from e

NAME = "fastattn"
_registered_names = set()
_warned = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


# ----------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskStructure:
    """What a mask built by ``mask_forward`` means: query i (of this chunk) may see key j iff
    key_padding_mask[b, j] and, when causal, j <= i + offset."""
    causal: bool
    offset: int
    key_padding_mask: Optional[Tensor]   # bool (B, Sk), True = real token; None = no padding
    q_length: int
    kv_length: int


def mask_forward(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                 mask_function=causal_mask_function, attention_mask: Optional[Tensor] = None, **kwargs):
    """The mask "sdpa" gets: bool (B, 1, Sq, Sk), True = attend, or None where is_causal (or nothing) suffices.

    When the mask is plain causal or bidirectional, optionally with padding, it is tagged with its
    ``MaskStructure`` (attribute ``_fastattn_structure``); any tensor derived from it loses the tag, so a model
    that edits its mask falls back to the dense path and stays correct.
    """
    mask = sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask, **kwargs)
    plain = mask_function is causal_mask_function or mask_function is bidirectional_mask_function
    if (mask is not None and plain and not kwargs.get("use_vmap", False) and isinstance(q_offset, int)
            and isinstance(kv_offset, int)):
        kpm = None
        if attention_mask is not None:
            kpm = attention_mask.to(device=mask.device, dtype=torch.bool)
            if kpm.shape[-1] < kv_offset + kv_length:  # sdpa_mask pads a short 2-D mask with False
                kpm = torch.nn.functional.pad(kpm, (0, kv_offset + kv_length - kpm.shape[-1]))
            kpm = kpm[:, kv_offset:kv_offset + kv_length].expand(batch_size, kv_length)
        mask._fastattn_structure = MaskStructure(causal=mask_function is causal_mask_function,
                                                 offset=q_offset - kv_offset, key_padding_mask=kpm,
                                                 q_length=q_length, kv_length=kv_length)
    return mask


# ----------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------

def attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Optional[Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                      is_causal: Optional[bool] = None, position_bias: Optional[Tensor] = None, *,
                      backend: str = "auto", **kwargs):
    """transformers' attention function contract: query (B, Hq, Sq, D), key (B, Hkv, Sk, D), value
    (B, Hkv, Sk, Dv) -> (attn_output (B, Sq, Hq, Dv), None). Mirrors transformers' "sdpa" function."""
    if kwargs.get("output_attentions", False):
        _warn_once("output_attentions", "fastattn does not return attention weights (output_attentions=True): "
                   "they are None, as with 'sdpa'; use attn_implementation='eager' to get them")
    for name in ("s_aux", "sinks", "softcap"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"fastattn's transformers integration does not support {name!r}")
    sliding_window = kwargs.get("sliding_window")

    sq, sk = query.shape[2], key.shape[2]
    causal, bias, kpm = False, None, None
    if attention_mask is None:
        # As in sdpa: rely on is_causal (top-left in PyTorch), except for one query, which sees every key.
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True)) and sq > 1
        if causal and sliding_window is not None and sk > sliding_window:
            raise NotImplementedError("a sliding window needs a mask; transformers should have built one")
        if causal and sk > sq:  # a prefill into an empty static cache: only the first Sq keys can be seen
            key, value = key[:, :, :sq], value[:, :, :sq]
            position_bias = None if position_bias is None else position_bias[..., :sq]
            sk = sq
    elif attention_mask.dtype == torch.bool:
        st = getattr(attention_mask, "_fastattn_structure", None)
        usable = (st is not None and st.q_length == sq and st.kv_length == sk
                  and (st.key_padding_mask is None or st.key_padding_mask.shape[0] == query.shape[0])
                  and (not st.causal or 0 <= st.offset <= sk - sq))
        if usable:
            causal, kpm = st.causal, st.key_padding_mask
            if causal and st.offset < sk - sq:  # e.g. a static cache: keys past Sq + offset are never visible
                n = sq + st.offset
                key, value = key[:, :, :n], value[:, :, :n]
                kpm = None if kpm is None else kpm[:, :n]
                position_bias = None if position_bias is None else position_bias[..., :n]
        else:
            bias = torch.zeros_like(attention_mask, dtype=query.dtype).masked_fill_(
                ~attention_mask, float("-inf"))                          # (B or 1, 1 or H, Sq, Sk)
    else:  # an additive float mask (e.g. one the user prepared)
        bias = attention_mask
    if position_bias is not None:  # T5: (1 or B, H, Sq, Sk), added to the (unscaled) scores
        bias = position_bias if bias is None else bias + position_bias

    grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if sq == 1 and bias is None and kpm is None and not grad and not dropout:
        # A decode step against the whole cache: fastattn.decode_attention's case.
        seqlens = torch.full((query.shape[0],), key.shape[2], dtype=torch.int32, device=query.device)
        out = fastattn.decode_attention(query[:, :, 0], key, value, seqlens, scale=scaling,
                                        backend=backend).unsqueeze(2)   # (B, H, D) -> (B, H, 1, D)
    else:
        out = fastattn.attention(query, key, value, causal=causal, scale=scaling, bias=bias, key_padding_mask=kpm,
                                 dropout_p=dropout, backend=backend)     # (B, H, Sq, Dv)
    return out.transpose(1, 2).contiguous(), None                        # (B, Sq, H, D)


# ----------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------

def register(name: str = NAME, backend: str = "auto") -> None:
    """Register ``name`` with transformers' AttentionInterface and AttentionMaskInterface, running fastattn on
    ``backend`` ("auto" follows ``fastattn.use_backend``). Importing this module registers "fastattn"."""
    fn = attention_forward if backend == "auto" else functools.partial(attention_forward, backend=backend)
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, mask_forward)
    _registered_names.add(name)


_original_set_attn_implementation = PreTrainedModel.set_attn_implementation
# Model families whose stacks are PreTrainedModels holding deep copies of the parent's config (T5Stack and its
# copies), by transformers module: the classes that get the fixed set_attn_implementation.
STACKED_FAMILIES = {"t5": "T5PreTrainedModel", "mt5": "MT5PreTrainedModel", "umt5": "UMT5PreTrainedModel",
                    "longt5": "LongT5PreTrainedModel"}
_patched_classes: list = []


def _set_attn_implementation(self, attn_implementation, *args, **kwargs):
    """PreTrainedModel.set_attn_implementation, then, when the old or the new implementation is a fastattn one, the
    same implementation for every sub-model whose config transformers left behind (T5's stacks)."""
    out = _original_set_attn_implementation(self, attn_implementation, *args, **kwargs)
    if isinstance(attn_implementation, str):
        propagate_attn_implementation(self)
    return out


def _install_stack_fix() -> None:
    for family, cls_name in STACKED_FAMILIES.items():
        try:
            mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ImportError:  # a transformers without this family
            continue
        cls = getattr(mod, cls_name, None)
        if cls is None or "set_attn_implementation" in vars(cls):  # absent, or it has its own: leave it
            continue
        cls.set_attn_implementation = _set_attn_implementation
        _patched_classes.append(cls)


def propagate_attn_implementation(model: torch.nn.Module) -> None:
    """Give each sub-model of ``model`` the model's own attention implementation, where either is a fastattn one."""
    impl = model.config._attn_implementation
    for sub in model.modules():
        cfg = getattr(sub, "config", None)
        if sub is model or not isinstance(sub, PreTrainedModel) or cfg is None or cfg is model.config:
            continue
        if cfg.__class__ is not model.config.__class__:
            continue  # a genuinely different sub-model (e.g. a vision tower): transformers handles those
        if cfg._attn_implementation != impl and (impl in _registered_names
                                                 or cfg._attn_implementation in _registered_names):
            cfg._attn_implementation_internal = impl


def attn_implementations(model: torch.nn.Module) -> dict:
    """{module name: attention implementation} for every module holding a config: to check routing."""
    return {name: m.config._attn_implementation for name, m in model.named_modules()
            if hasattr(getattr(m, "config", None), "_attn_implementation")}


register()
_install_stack_fix()

__all__ = ["NAME", "STACKED_FAMILIES", "MaskStructure", "attention_forward", "attn_implementations", "mask_forward",
           "propagate_attn_implementation", "register"]
