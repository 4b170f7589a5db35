"""Context parallelism on torch.distributed: exact attention over a sequence sharded across ranks (ring attention).

Each rank of a process group holds a shard of the sequence: its queries and its keys/values. The key/value blocks
travel round the ring (rank r sends to r+1 and receives from r-1, ``batch_isend_irecv``), one step per rank; while
the next block is in flight, the rank runs fastattn's attention kernel on the block in hand (the same custom op,
``fastattn::attention_fwd``, on any backend). Each block's partial output and log-sum-exp merge into running fp32
accumulators (float64 for float64 inputs), so the result equals ``fastattn.attention`` over the whole sequence.

Layouts of the sequence (W ranks, sequence S):
- ``"contiguous"``: rank r holds chunk r of W equal chunks. Causal work is unbalanced: rank W-1 attends to every
  block, rank 0 to its own only.
- ``"zigzag"`` (default): the sequence is cut into 2W equal chunks and rank r holds chunks r and 2W-1-r, so every
  rank does the same causal work. With the block of rank s in hand, rank r's (query chunk, key chunk) pairs are
  (r, s), (r, 2W-1-s), (2W-1-r, s), (2W-1-r, 2W-1-s), and for causal attention:
    s == r: the local shard against itself, causal (its chunk r sees nothing of 2W-1-r, which follows it);
    s <  r: both query chunks against key chunk s only, in full (2W-1-s lies after both query chunks);
    s >  r: query chunk 2W-1-r only, against both key chunks in full (chunk r precedes both key chunks).
  Every step but the first is then one non-causal call of half the block pairs.

The backward (``torch.autograd.Function``) runs the kernels' backward, ``fastattn::attention_bwd``, on the same
pairs with the global output and log-sum-exp (which make each block's gradient exact on its own): dQ accumulates
where it is, and the dK/dV of each block travels round the ring behind its keys and values, each rank adding its
share, until it is back with its owner after W steps. The transfers overlap the next block's kernels.

Every call first agrees on its arguments across the group with one small all-reduce (shapes, dtype, flags, the
backend each rank picked), so a bad call raises the same error on every rank instead of leaving the others
waiting in the ring. A rank that never makes the call at all is caught only by the group's timeout (the
``timeout=`` of ``torch.distributed.init_process_group`` / ``new_group``).
"""
from __future__ import annotations

import math
import struct
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import reference
from ._backend import BackendUnavailable
from .ops import _checks, _dispatch
from .ops.attention import ATTN_DTYPES, _check_qkv, attention_bwd, attention_fwd

LAYOUTS = ("zigzag", "contiguous")

__all__ = ["LAYOUTS", "gather_sequence", "ring_attention", "shard_sequence"]

# Message tags (gloo matches point-to-point messages by peer and tag; NCCL ignores tags and keeps order).
_TAG_KV, _TAG_DKV = 11, 13  # the mask, sent with K/V, gets 21


# ----------------------------------------------------------------------------------------------------------
# The group: who we are in the ring
# ----------------------------------------------------------------------------------------------------------

class _Ring:
    """This rank's place in ``group``: world size, rank in the group, global ranks of its ring neighbours."""

    def __init__(self, group, fn: str):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"fastattn.distributed.{fn} needs torch.distributed initialised first "
                               "(torch.distributed.init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError(f"fastattn.distributed.{fn}: this process (global rank {dist.get_rank()}) is not a "
                             "member of the given group")
        self.world = dist.get_world_size(group)
        ranks = dist.get_process_group_ranks(group) if group is not None else list(range(self.world))
        self.next = ranks[(self.rank + 1) % self.world]  # global ranks: what P2POp's peer= takes
        self.prev = ranks[(self.rank - 1) % self.world]
        self.backend = str(dist.get_backend(group))

    def comm_device(self, t) -> torch.device:
        """Where a small control tensor for a collective must live: the CPU for gloo, else t's device (the
        current GPU when t is not a GPU tensor, e.g. a bad argument, so that NCCL can still carry the error)."""
        if self.backend == "gloo":
            return torch.device("cpu")
        if isinstance(t, Tensor) and t.is_cuda:
            return t.device
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    def exchange(self, send: Sequence[Tensor], tag: int) -> Tuple[List[Tensor], list]:
        """Post sends of ``send`` to the next rank and receives of the same shapes from the previous one.

        Returns the receive buffers and the requests; nothing is complete until every request is waited on.
        """
        recv = [torch.empty_like(t) for t in send]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group, tag + 10 * i) for i, t in enumerate(send)]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group, tag + 10 * i) for i, t in enumerate(recv)]
        return recv, dist.batch_isend_irecv(ops)


def _wait(reqs) -> None:
    for r in reqs:
        r.wait()


def _check_layout(layout) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _chunk_ids(layout: str, world: int, rank: int) -> Tuple[int, ...]:
    """The chunks of the sequence rank ``rank`` holds, in order, out of 2W (zigzag) or W (contiguous)."""
    return (rank, 2 * world - 1 - rank) if layout == "zigzag" else (rank,)


def _n_chunks(layout: str, world: int) -> int:
    return 2 * world if layout == "zigzag" else world


def _dim(x: Tensor, dim: int, fn: str) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"fastattn.distributed.{fn}: dim must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"fastattn.distributed.{fn}: dim={dim} is out of range for a {x.dim()}-D tensor")
    return dim % x.dim()


# ----------------------------------------------------------------------------------------------------------
# Agreement: one small all-reduce, so that a bad call raises on every rank
# ----------------------------------------------------------------------------------------------------------

def _agree(ring: _Ring, device: torch.device, fn: str, names: Sequence[str], values: Sequence[int],
           local_error: Optional[BaseException]) -> None:
    """Raise on every rank when any rank's call is bad, or when the ranks' ``values`` differ.

    values: integers every rank must share (shapes, flags); local_error: the error this rank's own checks
    raised, or None. One all-reduce (MIN over the values and their negations gives min and max at once).
    """
    ok = 0 if local_error is not None else 1
    vals = [ok] + [int(v) for v in values]
    t = torch.tensor(vals + [-v for v in vals], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=ring.group)
    got = t.tolist()  # the one host sync of a call (ring_attention(validate=False) skips it)
    n = len(vals)
    lo, hi = got[:n], [-x for x in got[n:]]
    if local_error is not None:
        raise local_error
    if lo[0] == 0:
        raise ValueError(f"fastattn.distributed.{fn}: another rank of the group rejected its arguments (see the "
                         "error on that rank); every rank raises so that none waits in the ring")
    diff = [i for i in range(len(names)) if lo[i + 1] != hi[i + 1]]
    if diff:
        show = lambda i, x: _show(names[i], x)  # noqa: E731
        raise ValueError(f"fastattn.distributed.{fn}: the ranks of the group disagree on "
                         + ", ".join(f"{names[i]} (from {show(i, lo[i + 1])} to {show(i, hi[i + 1])})" for i in diff)
                         + f"; rank {ring.rank} of {ring.world} has "
                         + ", ".join(f"{names[i]}={show(i, values[i])}" for i in diff))


_DTYPE_IDS = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}
_BACKEND_IDS = {"torch": 1, "triton": 2, "cuda": 3}


_VALUE_NAMES = {
    "dtype": {v: str(k).replace("torch.", "") for k, v in _DTYPE_IDS.items()},
    "backend": {v: k for k, v in _BACKEND_IDS.items()},
    "layout": dict(enumerate(LAYOUTS)),
    "device type": {0: "cpu", 1: "cuda"},
}


def _show(name: str, x: int):
    """A signature entry as a reader knows it (codes back to names, the scale's bits back to a float)."""
    if name == "scale" and x != -1:
        return struct.unpack("<d", struct.pack("<q", x))[0]
    return _VALUE_NAMES.get(name, {}).get(x, x)


def _float_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


# ----------------------------------------------------------------------------------------------------------
# Sharding and gathering
# ----------------------------------------------------------------------------------------------------------

def shard_sequence(x: Tensor, dim: int = 2, *, group=None, layout: str = "zigzag") -> Tensor:
    """This rank's shard of ``x`` along ``dim`` (the sequence; 2 for (B, H, S, D), 1 for (B, S) token ids).

    With W ranks in ``group`` (default: the whole world), ``"contiguous"`` gives rank r chunk r of W equal
    chunks and ``"zigzag"`` gives chunks r and 2W-1-r of 2W, concatenated. The size along ``dim`` must divide
    into those chunks (ValueError otherwise). Differentiable; no communication (every rank passes the whole x).
    """
    _checks.tensor("x", x)
    _check_layout(layout)
    d = _dim(x, dim, "shard_sequence")
    ring = _Ring(group, "shard_sequence")
    n = _n_chunks(layout, ring.world)
    size = x.shape[d]
    if size % n:
        raise ValueError(f"fastattn.distributed.shard_sequence: the sequence length {size} (dim {dim}) must divide "
                         f"into {n} equal chunks for layout={layout!r} with {ring.world} ranks")
    c = size // n
    parts = [x.narrow(d, i * c, c) for i in _chunk_ids(layout, ring.world, ring.rank)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=d)


def _unshard(pieces: List[Tensor], d: int, layout: str) -> Tensor:
    """The whole tensor from every rank's shard (in group rank order)."""
    if layout == "contiguous":
        return torch.cat(pieces, dim=d)
    w = len(pieces)
    halves = [p.chunk(2, dim=d) for p in pieces]  # rank r: (chunk r, chunk 2W-1-r)
    return torch.cat([halves[r][0] for r in range(w)] + [halves[r][1] for r in reversed(range(w))], dim=d)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_local, d, layout, ring):
        ctx.d, ctx.layout, ctx.ring = d, layout, ring
        x_local = x_local.contiguous()
        pieces = [torch.empty_like(x_local) for _ in range(ring.world)]
        dist.all_gather(pieces, x_local, group=ring.group)
        return _unshard(pieces, d, layout)

    @staticmethod
    def backward(ctx, grad):
        ring = ctx.ring
        # Each rank's loss may use the whole gathered tensor: this rank's shard gets the sum of every rank's
        # gradient for it (an all-reduce, then this rank's part).
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ring.group)
        n = _n_chunks(ctx.layout, ring.world)
        c = grad.shape[ctx.d] // n
        parts = [grad.narrow(ctx.d, i * c, c) for i in _chunk_ids(ctx.layout, ring.world, ring.rank)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=ctx.d)), None, None, None


def gather_sequence(x_local: Tensor, dim: int = 2, *, group=None, layout: str = "zigzag") -> Tensor:
    """The whole tensor on every rank, from each rank's shard ``x_local`` (the inverse of shard_sequence).

    Every rank must pass a shard of the same shape and dtype (checked first: a mismatch raises on every rank).
    Differentiable: the gradient of a rank's shard is the sum over the ranks of the gradients reaching the
    gathered tensor, as when the training loss is the sum of every rank's loss.
    """
    _checks.tensor("x_local", x_local)
    _check_layout(layout)
    ring = _Ring(group, "gather_sequence")
    err = None
    d = dim
    try:
        d = _dim(x_local, dim, "gather_sequence")
        if layout == "zigzag" and x_local.shape[d] % 2:
            raise ValueError(f"fastattn.distributed.gather_sequence: a zigzag shard holds two equal chunks, so its "
                             f"length along dim {dim} must be even, got {x_local.shape[d]}")
    except (TypeError, ValueError) as e:
        err = e
    shape = list(x_local.shape) + [-1] * (8 - x_local.dim()) if x_local.dim() <= 8 else [-2] * 8
    names = ["ndim", "dtype"] + [f"shape[{i}]" for i in range(8)]
    _agree(ring, ring.comm_device(x_local), "gather_sequence", names,
           [x_local.dim(), _DTYPE_IDS.get(x_local.dtype, 99 + x_local.element_size())] + shape, err)
    if ring.world == 1:
        return x_local
    return _Gather.apply(x_local, d, layout, ring)


# ----------------------------------------------------------------------------------------------------------
# Ring attention
# ----------------------------------------------------------------------------------------------------------

def _pairs(layout: str, causal: bool, rank: int, src: int, sq: int, sk: int):
    """The kernel calls for this rank's queries against the block of rank ``src``: (query slice, key slice,
    causal) triples over local positions, [] when every score is masked. See the module docstring."""
    full_q, full_k = slice(0, sq), slice(0, sk)
    if not causal:
        return [(full_q, full_k, False)]
    if src == rank:
        return [(full_q, full_k, True)]
    if layout == "contiguous":
        return [(full_q, full_k, False)] if src < rank else []
    c = sq // 2
    if src < rank:
        return [(full_q, slice(0, c), False)]
    return [(slice(c, sq), full_k, False)]


def _block_forward(q: Tensor, k: Tensor, v: Tensor, kpm: Optional[Tensor], causal: bool, scale: float,
                   backend: str) -> Tuple[Tensor, Tensor]:
    """One block's (out, lse). float64 (the torch backend only) goes to the reference itself, whose lse stays
    float64: the op's lse is float32 for every dtype, which would cost the merge float64's precision."""
    if q.dtype == torch.float64:
        return reference.attention(q, k, v, causal=causal, scale=scale, key_padding_mask=kpm)
    return attention_fwd(q, k, v, None, kpm, causal, scale, backend)


def _merge(out: Tensor, lse: Tensor, o_part: Tensor, l_part: Tensor) -> None:
    """out, lse (accumulators, in place) <- the softmax-weighted union of themselves and a partial result.

    A row that has seen no key yet (lse = -inf) takes the partial as it is; rows with no key in either stay
    zero with lse -inf; NaN propagates."""
    l_part = l_part.to(lse.dtype)
    new = torch.logaddexp(lse, l_part)
    ref = torch.where(torch.isneginf(new), torch.zeros_like(new), new)  # avoids -inf - -inf = NaN
    w_old = torch.exp(lse - ref).unsqueeze(-1)
    w_new = torch.exp(l_part - ref).unsqueeze(-1)
    out.mul_(w_old).add_(o_part.to(out.dtype) * w_new)
    lse.copy_(new)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _kv_message(k: Tensor, v: Tensor, kpm: Optional[Tensor]) -> List[Tensor]:
    """What travels round the ring in one step: K and V stacked (2, B, Hkv, S, D), and the padding mask as
    uint8 (B, S) when there is one (not every backend sends bool)."""
    msg = [torch.stack([k, v])]
    if kpm is not None:
        msg.append(kpm.to(torch.uint8).contiguous())
    return msg


def _unpack(msg: List[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    kpm = msg[1].bool() if len(msg) > 1 else None
    return msg[0][0], msg[0][1], kpm


def _ring_forward(ring: _Ring, layout: str, q: Tensor, k: Tensor, v: Tensor, kpm: Optional[Tensor],
                  causal: bool, scale: float, backend: str) -> Tuple[Tensor, Tensor]:
    b, hq, sq, _ = q.shape
    sk = k.shape[2]
    acc = _acc_dtype(q.dtype)
    out = torch.zeros((b, hq, sq, v.shape[-1]), dtype=acc, device=q.device)
    lse = torch.full((b, hq, sq), float("-inf"), dtype=acc, device=q.device)
    if sk == 0 or sq == 0:
        return out.to(q.dtype), lse
    msg = _kv_message(k, v, kpm) if ring.world > 1 else None
    kc, vc, mc = k, v, kpm
    for step in range(ring.world):
        src = (ring.rank - step) % ring.world
        reqs = []
        if step + 1 < ring.world:  # the next block travels while this one is computed
            nxt, reqs = ring.exchange(msg, _TAG_KV)
        for qs, ks, blk_causal in _pairs(layout, causal, ring.rank, src, sq, sk):
            o_p, l_p = _block_forward(q[:, :, qs], kc[:, :, ks], vc[:, :, ks],
                                      None if mc is None else mc[:, ks], blk_causal, scale, backend)
            _merge(out[:, :, qs], lse[:, :, qs], o_p, l_p)
        if reqs:
            _wait(reqs)
            msg = nxt
            kc, vc, mc = _unpack(msg)
    return out.to(q.dtype), lse


def _ring_backward(ring: _Ring, layout: str, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, kpm: Optional[Tensor],
                   out: Tensor, lse: Tensor, causal: bool, scale: float, backend: str
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    sq, sk = q.shape[2], k.shape[2]
    acc = _acc_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    if sk == 0 or sq == 0:
        return dq.to(q.dtype), torch.zeros_like(k), torch.zeros_like(v)
    msg = _kv_message(k, v, kpm) if ring.world > 1 else None
    kc, vc, mc = k, v, kpm
    dkv_recv, dkv_reqs = None, []  # the dK/dV accumulator of the block in hand, arriving from the previous rank
    for step in range(ring.world):
        src = (ring.rank - step) % ring.world
        kv_reqs = []
        if step + 1 < ring.world:
            nxt, kv_reqs = ring.exchange(msg, _TAG_KV)
        dkv = torch.zeros((2,) + tuple(k.shape), dtype=acc, device=k.device)  # this rank's share for block src
        for qs, ks, blk_causal in _pairs(layout, causal, ring.rank, src, sq, sk):
            dq_p, dk_p, dv_p, _ = attention_bwd(dout[:, :, qs], q[:, :, qs], kc[:, :, ks], vc[:, :, ks],
                                                out[:, :, qs], lse[:, :, qs], None,
                                                None if mc is None else mc[:, ks], blk_causal, scale, False,
                                                backend)
            dq[:, :, qs] += dq_p
            dkv[0][:, :, ks] += dk_p
            dkv[1][:, :, ks] += dv_p
        if ring.world > 1:
            if step > 0:  # add the shares of the ranks the block has already visited
                _wait(dkv_reqs)
                dkv += dkv_recv
            # on to the next rank; after the last step the next rank is the block's owner
            (dkv_recv,), dkv_reqs = ring.exchange([dkv], _TAG_DKV)
        if kv_reqs:
            _wait(kv_reqs)
            msg = nxt
            kc, vc, mc = _unpack(msg)
    if ring.world > 1:
        _wait(dkv_reqs)
        dkv = dkv_recv
    return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kpm, causal, scale, backend, layout, ring):
        out, lse = _ring_forward(ring, layout, q, k, v, kpm, causal, scale, backend)
        ctx.save_for_backward(q, k, v, kpm, out, lse)
        ctx.causal, ctx.scale, ctx.backend, ctx.layout, ctx.ring = causal, scale, backend, layout, ring
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, kpm, out, lse = ctx.saved_tensors
        # The lse output is for inspection: gradients through it are not propagated (as in fastattn.attention).
        dq, dk, dv = _ring_backward(ctx.ring, ctx.layout, dout, q, k, v, kpm, out, lse, ctx.causal, ctx.scale,
                                    ctx.backend)
        return dq, dk, dv, None, None, None, None, None, None


_SIG_NAMES = ["batch", "query heads", "key/value heads", "local query length", "local key length", "head dim",
              "value head dim", "dtype", "device type", "causal", "layout", "key_padding_mask given", "scale",
              "backend", "requires grad", "return_lse"]


def ring_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: Optional[float] = None,
                   group=None, layout: str = "zigzag", return_lse: bool = False,
                   key_padding_mask: Optional[Tensor] = None, backend: str = "auto", bias: Optional[Tensor] = None,
                   validate: bool = True):
    """Exact attention over a sequence sharded across the ranks of ``group``; returns this rank's output shard.

    q: (B, Hq, S/W, D), k, v: (B, Hkv, S/W, D), this rank's shards in ``layout`` (as shard_sequence cuts them)
    of a sequence spread over the W ranks of ``group`` (default: the whole world). The result is exactly
    ``fastattn.attention(q, k, v, causal=causal, scale=scale, key_padding_mask=...)`` over the whole sequence,
    cut the same way: (B, Hq, S/W, D), and with ``return_lse`` the float32
    log-sum-exp shard (B, Hq, S/W). Hq % Hkv == 0 (GQA/MQA).

    key_padding_mask: bool (B, S/W), this rank's shard of the (B, S) mask (True = real token); it travels with
    the keys. causal: query i sees keys j <= i of the whole sequence (queries and keys are sharded alike, so
    the local lengths must match). Without causal the local query and key lengths may differ.
    layout: "zigzag" (default; balanced causal work, local length even) or "contiguous".
    backend: as for fastattn.attention ("auto" picks per device; every rank must end up with the same one).
    bias: not supported (NotImplementedError): a (B, Hq, S, S) bias would have to be cut along both sequence
    axes and its tiles sent round with the keys.
    validate: True (default) agrees on shapes, dtype and flags across the group first (one small all-reduce and
    a host sync), so that a bad call raises on every rank; False skips that, and then a call that differs
    between ranks fails only by the group's timeout.

    Differentiable in q, k and v (the backward runs the ring again, passing dK/dV round): when one rank runs
    the backward, every rank of the group must. Every rank must make the call, in the same order as its other
    collectives. Not traceable by torch.compile (the point-to-point messages); compile the layers around it.
    """
    ring = _Ring(group, "ring_attention")
    err: Optional[BaseException] = None
    sig = [-1] * len(_SIG_NAMES)
    chosen = None
    try:
        if bias is not None:
            raise NotImplementedError(
                "fastattn.distributed.ring_attention: bias is not supported (a (B, Hq, S, S) bias would have to be "
                "cut along both sequence axes and its tiles sent round the ring with the keys); use "
                "key_padding_mask for padding, or fastattn.attention on the gathered sequence")
        _check_layout(layout)
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        _checks.tensor("q", q, ndim=4, dtypes=ATTN_DTYPES + (torch.float64,))
        _check_qkv(q, k, v)
        b, hq, sq, d = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        if causal and sq != sk:
            raise ValueError(f"causal ring attention needs queries and keys sharded alike: the local query length "
                             f"{sq} must equal the local key length {sk}")
        if layout == "zigzag" and causal and sq % 2:
            raise ValueError(f"a zigzag shard holds two equal chunks of the sequence, so its local length must be "
                             f"even, got {sq} (the sequence must divide into 2W = {2 * ring.world} chunks)")
        if key_padding_mask is not None:
            _checks.tensor("key_padding_mask", key_padding_mask, ndim=2, dtypes=(torch.bool,))
            if tuple(key_padding_mask.shape) != (b, sk):
                raise ValueError(f"key_padding_mask must be this rank's (B, S/W) = ({b}, {sk}) shard, got "
                                 f"{tuple(key_padding_mask.shape)}")
            _checks.same_device(("q", q), ("key_padding_mask", key_padding_mask))
        scale = _checks.finite_scale(scale)
        scale = 1.0 / math.sqrt(d) if scale is None else scale
        chosen = _dispatch.select(backend, "attention", "ring_attention", "attention_fwd", q.device, q.dtype,
                                  "unsupported_attention", (q, k, v, None, key_padding_mask, causal))
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        sig = [b, hq, hkv, sq, sk, d, v.shape[-1], _DTYPE_IDS[q.dtype], 1 if q.device.type == "cuda" else 0,
               int(causal), LAYOUTS.index(layout), int(key_padding_mask is not None), _float_bits(scale),
               _BACKEND_IDS[chosen.name], int(grad), int(bool(return_lse))]
    except (TypeError, ValueError, NotImplementedError, BackendUnavailable) as e:
        err = e
    if validate:
        _agree(ring, ring.comm_device(q), "ring_attention", _SIG_NAMES, sig, err)
    elif err is not None:
        raise err
    out, lse = _RingAttention.apply(q, k, v, key_padding_mask, causal, scale, chosen.name, layout, ring)
    # lse is float32 for every dtype, as fastattn.attention's (the ring merges in float64 for float64 inputs).
    return (out, lse.float()) if return_lse else out
