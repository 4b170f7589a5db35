"""Train a few steps of fastattn.models.Decoder with its sequence sharded across ranks (context parallelism).

Every attention layer runs fastattn.distributed.ring_attention: each rank holds a shard of the sequence (the
zigzag layout by default, which balances causal work), and the keys and values travel round the ring. The rest
of the model (embeddings, MLPs, norms, the loss) is per token and runs on the local shard as it is.

    torchrun --nproc_per_node=2 examples/ring_train.py                      # CPU: gloo
    torchrun --nproc_per_node=8 examples/ring_train.py --seq-len 65536 --d-model 1024 --layers 8 --heads 16 \\
        --kv-heads 4 --dtype bfloat16                                       # one node of GPUs: NCCL
    torchrun --nproc_per_node=8 examples/ring_train.py --cp 4               # 2 data-parallel replicas x 4 ranks

``--cp`` ranks form one context-parallel group (a torch.distributed subgroup); with world size W there are
W / cp data-parallel replicas, each training on its own batch. Gradients are summed over the whole world. At
step 0 every rank also runs the unsharded model on its replica's whole batch and prints how far the sharded
loss is from it (it should be at rounding level; ``--no-check`` skips this for sequences one device can't hold).

The data is synthetic: each row repeats a random motif of ``--period`` tokens (a fixed batch, so that a few
steps show the loss falling); a token is predictable from one period back, which often lies on another rank's
shard.
"""
from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

import fastattn
from fastattn.distributed import ring_attention, shard_sequence
from fastattn.models import Decoder, DecoderConfig


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=2, help="sequences per data-parallel replica")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (sharded over --cp ranks)")
    p.add_argument("--period", type=int, default=24, help="length of the repeated motif in the data")
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--cp", type=int, default=0, help="context-parallel group size (default: the world size)")
    p.add_argument("--layout", default="zigzag", choices=("zigzag", "contiguous"))
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "cuda", "torch"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="at step 0, compare with the unsharded model on the whole batch (needs its memory)")
    return p.parse_args()


def sharded_logits(model: Decoder, idx: torch.Tensor, pos: torch.Tensor, group, layout: str) -> torch.Tensor:
    """The Decoder's forward on a sequence shard: idx, pos (B, S/W) token ids and their global positions.

    Same weights and maths as Decoder.forward without a cache; only attention sees beyond the shard."""
    x = model.drop(model.wte(idx) + model.wpe(pos))                        # (B, S/W, C)
    for blk in model.blocks:
        a = blk.attn
        h = blk.ln_1(x)
        B, S, _ = h.shape
        H, Hkv, D = a.n_heads, a.n_kv_heads, a.head_dim
        qkv = a.qkv(h).view(B, S, H + 2 * Hkv, D)                          # (B, S/W, H + 2*Hkv, D)
        q, k, v = qkv.transpose(1, 2).split([H, Hkv, Hkv], dim=1)          # (B, H, S/W, D), (B, Hkv, S/W, D) x2
        y = ring_attention(q, k, v, causal=True, group=group, layout=layout,
                           backend="auto" if a.backend == "sdpa" else a.backend)   # (B, H, S/W, D)
        y = y.transpose(1, 2).reshape(B, S, H * D)                         # (B, S/W, H*D)
        x = x + blk.drop(a.proj(y))
        x = x + blk.drop(blk.mlp(blk.ln_2(x)))
    return model.lm_head(model.ln_f(x))                                    # (B, S/W, V)


def make_batch(args, replica: int, device) -> torch.Tensor:
    """(B, S) token ids: each row repeats a random motif of args.period tokens (the same on every rank of a
    replica, and at every step: a few steps then show the loss falling)."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + replica)
    motif = torch.randint(0, args.vocab, (args.batch, args.period), generator=g)
    reps = -(-args.seq_len // args.period)
    return motif.repeat(1, reps)[:, : args.seq_len].to(device)


def main():
    args = parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=5))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    cp = args.cp or world
    if world % cp:
        raise SystemExit(f"--cp {cp} must divide the world size {world}")
    # Context-parallel groups: consecutive ranks (on one node they share the fastest links). Every rank creates
    # every group, as torch.distributed.new_group requires.
    groups = [dist.new_group(list(range(i, i + cp))) for i in range(0, world, cp)]
    replica = rank // cp
    group = groups[replica]
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    config = DecoderConfig(vocab_size=args.vocab, max_seq_len=args.seq_len, d_model=args.d_model,
                           n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads)
    model = Decoder(config, attn_backend=args.backend).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    if rank == 0:
        n = sum(p.numel() for p in model.parameters())
        print(f"world {world} = {world // cp} replicas x {cp} context-parallel ranks ({dist.get_backend()}), "
              f"layout {args.layout}, {n / 1e6:.2f}M parameters, sequence {args.seq_len} "
              f"({args.seq_len // cp} tokens per rank), backends {fastattn.available_backends()}", flush=True)

    shard = lambda t: shard_sequence(t, 1, group=group, layout=args.layout)  # noqa: E731 - (B, S) -> (B, S/W)
    pos = shard(torch.arange(args.seq_len, device=device).view(1, -1))    # (1, S/W) global positions
    for step in range(args.steps):
        t0 = time.perf_counter()
        idx = make_batch(args, replica, device)                      # (B, S), the replica's whole batch
        targets = torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], -100)], dim=1)  # next token; none at the end
        idx_l, tgt_l = shard(idx), shard(targets)                          # (B, S/W) each
        logits = sharded_logits(model, idx_l, pos, group, args.layout)
        loss_sum = F.cross_entropy(logits.float().flatten(0, 1), tgt_l.flatten(), ignore_index=-100,
                                   reduction="sum")
        n_tokens = args.batch * (args.seq_len - 1)                         # the replica's predicted tokens
        # Each rank's share of the replica's mean loss; the replicas' losses are averaged.
        (loss_sum / (n_tokens * (world // cp))).backward()
        for p in model.parameters():                                       # sum every rank's share
            dist.all_reduce(p.grad)
        loss = loss_sum.detach().clone()
        dist.all_reduce(loss, group=group)
        loss = loss.item() / n_tokens
        if step == 0 and args.check:  # the same batch through the unsharded model, on each rank
            with torch.no_grad():
                full = model(idx)
                ref = F.cross_entropy(full.float().flatten(0, 1), targets.flatten(), ignore_index=-100).item()
            print(f"rank {rank}: step 0 sharded loss {loss:.6f}, unsharded {ref:.6f}, |diff| {abs(loss - ref):.2e}",
                  flush=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if rank == 0:
            tok_s = world // cp * args.batch * args.seq_len / dt
            print(f"step {step}: loss {loss:.4f}  {dt * 1e3:.0f} ms  {tok_s:,.0f} tokens/s (all replicas)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
