"""Drop-in modules: ``fastattn.nn.MultiheadAttention`` replaces ``torch.nn.MultiheadAttention``.

It is a subclass with the same constructor, parameters (so the same state_dict) and forward signature; only the
attention itself runs on ``fastattn.attention``. ``MultiheadAttention.from_torch(module)`` converts an existing
module, weights included.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

import fastattn

__all__ = ["MultiheadAttention"]


class MultiheadAttention(torch.nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` with the attention computed by fastattn.

    Same masks and conventions as PyTorch: ``key_padding_mask`` (N, S) and ``attn_mask`` (L, S) or (N*H, L, S)
    are bool (True = may NOT attend) or float (added to the scores); ``is_causal`` is a hint that ``attn_mask``
    is the causal mask (PyTorch's top-left alignment); ``batch_first`` both ways and unbatched inputs.

    Differences, by design:
    - ``need_weights=True`` (PyTorch's default) runs PyTorch's own implementation, since fused attention never
      forms the weights (a one-time warning says so): pass ``need_weights=False``.
    - Attention dropout (``dropout > 0`` in training mode) runs in fastattn's kernels, on fastattn's own random
      stream (see ``fastattn.attention``): the same distribution as PyTorch's, not the same draws.
    - A query row that may attend to no key returns zeros, where PyTorch returns NaN.
    ``backend`` (keyword only, fastattn's "auto", "triton", "cuda" or "torch") picks the attention backend.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *, backend: str = "auto"):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, add_bias_kv=add_bias_kv,
                         add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=batch_first, device=device,
                         dtype=dtype)
        self.backend = backend

    @classmethod
    def from_torch(cls, module: torch.nn.MultiheadAttention, *, backend: str = "auto") -> "MultiheadAttention":
        """A fastattn MultiheadAttention with ``module``'s configuration, weights, device, dtype and mode."""
        if not isinstance(module, torch.nn.MultiheadAttention):
            raise TypeError(f"from_torch expects a torch.nn.MultiheadAttention, got {type(module).__name__}")
        p = next(module.parameters())
        new = cls(module.embed_dim, module.num_heads, dropout=module.dropout, bias=module.in_proj_bias is not None,
                  add_bias_kv=module.bias_k is not None, add_zero_attn=module.add_zero_attn, kdim=module.kdim,
                  vdim=module.vdim, batch_first=module.batch_first, device=p.device, dtype=p.dtype, backend=backend)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}, " \
               f"backend={self.backend!r}"

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        if need_weights:
            _warn_once("need_weights=True: fastattn never forms the attention weights, so this call runs "
                       "torch.nn.MultiheadAttention's own implementation; pass need_weights=False to use fastattn")
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=True,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as in torch.nn.MultiheadAttention)")
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)       # (1, L, E)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)  # (1, S)
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        N, L, E = query.shape
        H, D = self.num_heads, self.head_dim

        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)  # (N, L|S, E)

        # Masks in fastattn's terms: additive float biases, and kpm bool (N, S) with True = real key.
        am_bias = None
        if attn_mask is not None:
            am_bias = _as_bias(attn_mask, q.dtype)
            am_bias = am_bias.view(N, H, L, -1) if am_bias.dim() == 3 else am_bias   # (N*H, L, S) -> (N, H, L, S)
        kpm, kp_bias = None, None
        if key_padding_mask is not None:
            if key_padding_mask.dtype == torch.bool:
                kpm = ~key_padding_mask                                   # PyTorch's True = ignore -> True = keep
            else:
                kp_bias = _as_bias(key_padding_mask, q.dtype).view(N, 1, 1, -1)     # (N, 1, 1, S)

        extra = 0   # key columns appended after the projected keys: bias_k/bias_v, then a zero key
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(N, 1, E)], dim=1)        # (N, S+1, E)
            v = torch.cat([v, self.bias_v.expand(N, 1, E)], dim=1)
            extra += 1
        q = q.view(N, L, H, D).transpose(1, 2)                            # (N, H, L, D)
        k = k.view(N, -1, H, D).transpose(1, 2)                           # (N, H, S', D)
        v = v.view(N, -1, H, D).transpose(1, 2)                           # (N, H, S', D)
        if self.add_zero_attn:
            zeros = k.new_zeros(N, H, 1, D)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)   # (N, H, S'+1, D)
            extra += 1
        if extra:  # the appended keys are never masked (PyTorch pads both masks with "attend")
            am_bias = None if am_bias is None else F.pad(am_bias, (0, extra))
            kp_bias = None if kp_bias is None else F.pad(kp_bias, (0, extra))
            kpm = None if kpm is None else F.pad(kpm, (0, extra), value=True)
        S = k.shape[2]

        causal = False
        if is_causal:  # a hint that attn_mask is PyTorch's (top-left) causal mask: trusted, as PyTorch does
            if L == S:
                causal, am_bias = True, None
            elif key_padding_mask is None:  # PyTorch then uses SDPA's is_causal: top-left, whatever attn_mask is
                am_bias = _as_bias(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), q.dtype)
        bias = kp_bias if am_bias is None else (am_bias if kp_bias is None else am_bias + kp_bias)

        y = fastattn.attention(q, k, v, causal=causal, bias=bias, key_padding_mask=kpm,
                               dropout_p=self.dropout if self.training else 0.0,
                               backend=self.backend)                      # (N, H, L, D)
        y = y.transpose(1, 2).reshape(N, L, E)                            # (N, L, E)
        y = self.out_proj(y)
        if not batched:
            y = y.squeeze(0)                                              # (L, E)
        elif not self.batch_first:
            y = y.transpose(0, 1)                                         # (L, N, E)
        return y, None


def _as_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A PyTorch MHA mask as an additive bias: bool True = masked -> -inf; float masks as they are."""
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"only bool and floating masks are supported, got {mask.dtype}")
    return mask.to(dtype)


_warned = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)
