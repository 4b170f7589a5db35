"""Decoder.generate's static decode step (device-side step counter, buffers updated in place) and its CUDA-graph
replay (cuda_graph=True).

On the CPU: the static step gives the tokens of a plain loop over Decoder.forward (greedy, sampled with int and
per-row seeds, per-row temperatures, eos), and cuda_graph=True is refused with a clear error. On a GPU: the
replayed graph gives the eager path's tokens, and a second call with the same settings reuses the captured graph.
"""
import pytest
import torch

import fastattn
from fastattn.models import Decoder, DecoderConfig
from fastattn.models.common import EosStop, draw, graph_steps, row_seeds

TINY = dict(vocab_size=61, max_seq_len=64, d_model=32, n_layers=2, n_heads=4)
VARIANTS = {"mha": {}, "gqa": dict(n_kv_heads=2), "alibi": dict(position="alibi")}


def _decoder(device="cpu", backend="torch", **kw):
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**{**TINY, **kw}), attn_backend=backend).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.to(device)


def _plain_loop(model, ids, n, *, seed=None, eos=None, pad=None, **sampling):
    """Generation written the obvious way: a fresh cache, Decoder.forward one token at a time, Python step ints."""
    B, T = ids.shape
    sampling = {**dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), **sampling}
    seeds = row_seeds(seed, B, ids.device)
    stop = EosStop(eos, pad, B, ids.device)
    cache = model.new_cache(B, T + n)
    with torch.no_grad():
        logits = model(ids, cache)[:, -1]
        out = [ids]
        for t in range(n):
            tok = stop(draw(logits, t, seeds, generator=None, **sampling))
            out.append(tok.view(B, 1))
            if t + 1 == n or stop.done:
                break
            logits = model(tok.view(B, 1), cache)[:, -1]
    return torch.cat(out, 1)


def _prompt(B, T, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 61, (B, T), generator=g).to(device)


CASES = {
    "greedy": dict(temperature=0.0),
    "int-seed": dict(temperature=0.9, top_k=20, top_p=0.9, seed=5),
    "row-seeds": dict(temperature=1.1, min_p=0.05, seed=torch.tensor([3, 1, 4])),
    "row-temps": dict(temperature=torch.tensor([0.0, 0.7, 1.3]), top_p=0.95, seed=9),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_static_step_equals_a_plain_loop(variant, case):
    model = _decoder(**VARIANTS[variant])
    ids = _prompt(3, 5)
    kw = CASES[case]
    want = _plain_loop(model, ids, 12, **kw)
    got = model.generate(ids, 12, **kw)
    assert got.shape == (3, 17)
    assert torch.equal(got, want)


def test_static_step_with_eos_equals_a_plain_loop():
    model = _decoder()
    ids = _prompt(3, 4, seed=2)
    free = model.generate(ids, 10, temperature=0.0)
    eos = int(free[0, 6])  # a token row 0 emits mid-way
    want = _plain_loop(model, ids, 10, temperature=0.0, eos=eos, pad=60)
    got = model.generate(ids, 10, temperature=0.0, eos_token_id=eos, pad_token_id=60)
    assert torch.equal(got, want)
    assert (got[0, 7:] == 60).all()


def test_zero_new_tokens_returns_the_prompt():
    model = _decoder()
    ids = _prompt(2, 3)
    out = model.generate(ids, 0)
    assert torch.equal(out, ids) and out.data_ptr() != ids.data_ptr()


def test_cuda_graph_needs_a_cuda_model():
    model = _decoder()
    with pytest.raises(ValueError, match="cuda_graph=True needs the model and input_ids on a CUDA device"):
        model.generate(_prompt(1, 3), 2, cuda_graph=True)
    with pytest.raises(TypeError, match="cuda_graph must be a bool"):
        model.generate(_prompt(1, 3), 2, cuda_graph=1)


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cuda_graph_tokens_equal_eager(variant, case):
    model = _decoder("cuda", backend="auto", **VARIANTS[variant]).half()
    ids = _prompt(3, 5, device="cuda")
    kw = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in CASES[case].items()}
    want = model.generate(ids, 16, **kw)
    got = model.generate(ids, 16, cuda_graph=True, **kw)
    assert torch.equal(got, want)
    (step,) = graph_steps(model).values()
    graph = step.graph
    again = model.generate(ids, 16, cuda_graph=True, **kw)      # same settings: the captured graph is replayed
    assert torch.equal(again, want)
    assert next(iter(graph_steps(model).values())) is step and step.graph is graph
    ids4 = _prompt(4, 5, seed=3, device="cuda")
    kw4 = {k: (torch.cat([v, v[:1]]) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    assert torch.equal(model.generate(ids4, 9, cuda_graph=True, **kw4), model.generate(ids4, 9, **kw4))
    assert next(iter(graph_steps(model).values())) is not step  # a new batch size: captured again


@pytest.mark.gpu
def test_cuda_graph_eos_stops_like_eager():
    model = _decoder("cuda", backend="auto").half()
    ids = _prompt(3, 4, seed=2, device="cuda")
    free = model.generate(ids, 12, temperature=0.0)
    eos = int(free[1, 7])
    want = model.generate(ids, 12, temperature=0.0, eos_token_id=eos, pad_token_id=60)
    got = model.generate(ids, 12, temperature=0.0, eos_token_id=eos, pad_token_id=60, cuda_graph=True)
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------------------
# EncoderDecoder: the same static step
# ----------------------------------------------------------------------------------------------------------

def _t5(device="cpu", backend="torch"):
    from fastattn.models import EncoderDecoder, EncoderDecoderConfig
    torch.manual_seed(0)
    model = EncoderDecoder(EncoderDecoderConfig(vocab_size=40, d_model=16, n_heads=2, head_dim=8, d_ff=24,
                                                n_layers=2, rel_buckets=8, rel_max_distance=16),
                           attn_backend=backend).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0)
    return model.to(device)


T5_CASES = {"greedy": dict(), "sampled": dict(temperature=0.9, top_p=0.9, seed=torch.tensor([5, 6, 7]))}


@pytest.mark.parametrize("case", list(T5_CASES))
def test_t5_static_step_equals_the_uncached_recompute(case):
    model = _t5()
    ids = _prompt(3, 6) % 40
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    kw = T5_CASES[case]
    got = model.generate(ids, 9, mask, **kw)
    assert torch.equal(got, model.generate(ids, 9, mask, use_cache=False, **kw))


def test_t5_cuda_graph_needs_a_cuda_model():
    model = _t5()
    with pytest.raises(ValueError, match="cuda_graph=True needs use_cache=True and the model and input_ids on a CUDA"):
        model.generate(_prompt(1, 3) % 40, 2, cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(T5_CASES))
def test_t5_cuda_graph_tokens_equal_eager(case):
    model = _t5("cuda", backend="auto").half()
    ids = (_prompt(3, 6) % 40).cuda()
    mask = torch.ones(3, 6, dtype=torch.long, device="cuda")
    mask[1, 4:] = 0
    kw = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in T5_CASES[case].items()}
    want = model.generate(ids, 12, mask, **kw)
    assert torch.equal(model.generate(ids, 12, mask, cuda_graph=True, **kw), want)
    (step,) = graph_steps(model).values()
    ids2 = (_prompt(3, 6, seed=4) % 40).cuda()                  # new inputs, same shapes: the graph is replayed
    assert torch.equal(model.generate(ids2, 12, mask, cuda_graph=True, **kw), model.generate(ids2, 12, mask, **kw))
    assert next(iter(graph_steps(model).values())) is step
