"""Generation of fastattn.models on tiny random configs (CPU, torch backend by default).

Decoder.generate with ragged prompts (attention_mask, left padding as Hugging Face pads, right padding too): each
row generates what it would alone, greedy or sampled with per-row seeds, and what Hugging Face's GPT-2 generates;
eos_token_id stops rows and the whole batch. EncoderDecoder.generate with its KV cache: the same tokens as the
uncached full recompute and as Hugging Face's T5, each decode step one query against the cache.
"""
import pytest
import torch

import fastattn
from fastattn.models import Decoder, DecoderConfig, EncoderDecoder, EncoderDecoderConfig
from _utils import assert_rel

TINY_DEC = dict(vocab_size=61, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
TINY_T5 = dict(vocab_size=40, d_model=16, n_heads=2, head_dim=8, d_ff=24, n_layers=2, rel_buckets=8,
               rel_max_distance=16)
LENGTHS = [7, 3, 5, 1]                                   # ragged prompt lengths, the longest first


def _decoder(backend="torch", **kw):
    """A tiny Decoder with weights drawn 15x larger than GPT-2's init, so that greedy continuations vary from
    step to step and from row to row instead of repeating one token."""
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**{**TINY_DEC, **kw}), attn_backend=backend).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def _t5(backend="torch"):
    """A tiny EncoderDecoder with weights of std 1 (4x T5's init here), for varied greedy continuations."""
    torch.manual_seed(0)
    model = EncoderDecoder(EncoderDecoderConfig(**TINY_T5), attn_backend=backend).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0)
    return model


def _prompts(vocab, lengths=LENGTHS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g) for n in lengths]


def _pad(prompts, side="left", pad_id=0):
    """(ids, mask) (B, max length): each prompt padded with pad_id on the given side, mask 1 on real tokens."""
    S = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), S), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), S, dtype=torch.long)
    for b, p in enumerate(prompts):
        cols = slice(S - len(p), S) if side == "left" else slice(0, len(p))
        ids[b, cols], mask[b, cols] = p, 1
    return ids, mask


def _quiet_hf():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


# ----------------------------------------------------------------------------------------------------------
# Decoder: ragged prompts
# ----------------------------------------------------------------------------------------------------------

VARIANTS = {"mha": {}, "gqa": dict(n_kv_heads=2), "alibi": dict(position="alibi")}


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_prompt_logits_and_cache_match_alone(variant, side):
    """A padded prompt's logits at its real tokens, and the compacted cache after the prefill, are those of the
    prompt alone; one decode step after it too."""
    model = _decoder(**VARIANTS[variant])
    prompts = _prompts(61)
    ids, mask = _pad(prompts, side, pad_id=5)
    nxt = torch.tensor([[11], [12], [13], [14]])
    with torch.no_grad():
        full = model(ids, attention_mask=mask)                       # no cache
        cache = model.new_cache(len(prompts), 10)
        prefill = model(ids, cache, mask)
        step = model(nxt, cache)                                     # (B, 1, V)
        assert cache.lengths.tolist() == [n + 1 for n in LENGTHS]
        for b, p in enumerate(prompts):
            alone_cache = model.new_cache(1, 10)
            alone = model(p.view(1, -1), alone_cache)                # (1, n, V)
            alone_step = model(nxt[b:b + 1], alone_cache)
            real = mask[b].bool()
            assert_rel(full[b, real], alone[0], 1e-5, f"row {b} logits without a cache")
            assert_rel(prefill[b, real], alone[0], 1e-5, f"row {b} prefill logits")
            assert_rel(step[b], alone_step[0], 1e-5, f"row {b} decode step")
            n = len(p) + 1
            assert_rel(cache.k[1][b, :, :n], alone_cache.k[1][0, :, :n], 1e-5, f"row {b} cached keys")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ragged_greedy_generate_matches_alone(variant, side):
    model = _decoder(**VARIANTS[variant])
    prompts = _prompts(61)
    ids, mask = _pad(prompts, side)
    out = model.generate(ids, 6, temperature=0, attention_mask=mask)
    assert out.shape == (4, ids.shape[1] + 6) and torch.equal(out[:, :ids.shape[1]], ids)
    for b, p in enumerate(prompts):
        alone = model.generate(p.view(1, -1), 6, temperature=0)
        assert torch.equal(out[b, ids.shape[1]:], alone[0, len(p):]), f"row {b}"


def test_ragged_sampled_generate_matches_alone_with_row_seeds():
    """Per-row seed tensors: a row's sampled continuation is the same in the padded batch and alone."""
    model = _decoder()
    prompts = _prompts(61)
    ids, mask = _pad(prompts)
    seeds = torch.tensor([3, 1 << 33, 77, 12345])
    kw = dict(temperature=0.9, top_k=30, top_p=0.95)
    out = model.generate(ids, 8, seed=seeds, attention_mask=mask, **kw)
    assert torch.equal(out, model.generate(ids, 8, seed=seeds, attention_mask=mask, **kw))
    assert not torch.equal(out, model.generate(ids, 8, seed=seeds + 1, attention_mask=mask, **kw))
    for b, p in enumerate(prompts):
        alone = model.generate(p.view(1, -1), 8, seed=seeds[b:b + 1], **kw)
        assert torch.equal(out[b, ids.shape[1]:], alone[0, len(p):]), f"row {b}"


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_ragged_decoder_uses_decode_attention(monkeypatch, backend):
    """Decode steps of a padded batch go through fastattn.decode_attention with each row's exact length."""
    seen = []
    real = fastattn.decode_attention

    def recording(q, k, v, cache_seqlens, **kw):
        seen.append(cache_seqlens.tolist())
        return real(q, k, v, cache_seqlens, **kw)

    monkeypatch.setattr(fastattn, "decode_attention", recording)
    model = _decoder(backend=backend)
    ids, mask = _pad(_prompts(61))
    want = model.generate(ids, 3, temperature=0, attention_mask=mask)
    if backend == "sdpa":  # PyTorch's SDPA path: no decode_attention, the same tokens
        assert seen == []
        model.attn_backend = "torch"
        assert torch.equal(model.generate(ids, 3, temperature=0, attention_mask=mask), want)
    else:
        layers = model.config.n_layers
        assert seen == [[n + 1 for n in LENGTHS]] * layers + [[n + 2 for n in LENGTHS]] * layers


def test_ragged_generate_checks():
    model = _decoder()
    ids, mask = _pad(_prompts(61))
    with pytest.raises(ValueError, match="shape of input_ids"):
        model.generate(ids, 2, attention_mask=mask[:, 1:])
    mask[3] = 0
    with pytest.raises(ValueError, match="real token"):
        model.generate(ids, 2, attention_mask=mask)
    # max_seq_len counts real tokens: a prompt padded to 30 with 7 real tokens may generate 25.
    ids30, mask30 = _pad(_prompts(61, [7]) + [torch.ones(30, dtype=torch.long)])
    ids30, mask30 = ids30[:1], mask30[:1]                    # (1, 30), 7 real tokens
    assert model.generate(ids30, 25, temperature=0, attention_mask=mask30).shape == (1, 55)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(ids30, 26, attention_mask=mask30)
    cache = model.new_cache(4, 10)
    with torch.no_grad():
        model(ids, cache)
        with pytest.raises(ValueError, match="attention_mask"):
            model(ids[:, :1], cache, torch.ones(4, 1))


# ----------------------------------------------------------------------------------------------------------
# Decoder: eos
# ----------------------------------------------------------------------------------------------------------

def test_eos_stops_rows_and_the_batch():
    model = _decoder()
    ids, mask = _pad(_prompts(61))
    S = ids.shape[1]
    free = model.generate(ids, 10, temperature=0, attention_mask=mask)[:, S:]   # (4, 10) without eos
    eos = int(free[0, 2])                                   # row 0 emits it at step 2 (or earlier)
    out = model.generate(ids, 10, temperature=0, attention_mask=mask, eos_token_id=eos, pad_token_id=60)[:, S:]
    for b in range(4):
        hits = (free[b] == eos).nonzero()
        if len(hits) == 0:                                  # never finishes: unchanged, full length
            assert out.shape[1] == 10 and torch.equal(out[b], free[b])
            continue
        first = int(hits[0])
        assert torch.equal(out[b, :first + 1], free[b, :first + 1]), f"row {b} before its eos"
        assert (out[b, first + 1:] == 60).all(), f"row {b} pads after its eos"
    # Every row finished: generation stopped at the last row's eos. Stop on any of several ids, pad with eos.
    many = sorted({int(t) for t in free[:, 0]})
    out = model.generate(ids, 10, temperature=0, attention_mask=mask, eos_token_id=many)[:, S:]
    assert out.shape == (4, 1) and torch.equal(out, free[:, :1])


# ----------------------------------------------------------------------------------------------------------
# Decoder: Hugging Face GPT-2 parity
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_ragged_generate_matches_hf_gpt2(backend):
    T = _quiet_hf()
    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=71, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                        initializer_range=0.5, attn_implementation="eager")).eval()
    model = Decoder.from_hf(hf, attn_backend=backend)
    ids, mask = _pad(_prompts(71))
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(ids, 8, temperature=0, attention_mask=mask), want)
        eos = int(want[1, ids.shape[1] + 1])               # row 1 stops at step 1 (or before)
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=eos,
                           pad_token_id=0)
    got = model.generate(ids, 8, temperature=0, attention_mask=mask, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------------------
# EncoderDecoder: cached generate
# ----------------------------------------------------------------------------------------------------------

def test_t5_cached_decode_matches_full_decode():
    """Decoder tokens fed through the cache, one a step or several at once, give the full decoder's logits."""
    model = _t5()
    ids, mask = _pad(_prompts(40), "right")
    dec = torch.randint(0, 40, (4, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        memory = model.encode(ids, mask)
        full = model.decode(dec, memory, mask)                            # (B, 7, V)
        cache = model.new_cache(memory, 8)
        parts = [model.decode(dec[:, :3], None, mask, cache=cache)]      # three at once, then one a step
        parts += [model.decode(dec[:, t:t + 1], None, mask, cache=cache) for t in range(3, 7)]
        assert cache.length == 7
        assert_rel(torch.cat(parts, dim=1), full, 1e-5, "cached decoder logits")
        with pytest.raises(ValueError, match="cache holds 8"):
            model.decode(dec[:, :2], None, mask, cache=cache)


def test_t5_decode_steps_attend_one_query_to_the_cache(monkeypatch):
    """Each cached decode step is one fastattn.attention call per layer: Sq = 1 against the static cache
    (max_new_tokens positions, the same shapes every step), with the relative position bias row of the new
    position and a key mask that admits exactly the positions filled so far."""
    calls = []
    real = fastattn.attention

    def recording(q, k, v, **kw):
        if kw.get("bias") is not None and q.shape[2] == 1:           # decoder self-attention
            calls.append((k.shape[2], tuple(kw["bias"].shape), kw["key_padding_mask"].clone(), kw["bias"].clone()))
        return real(q, k, v, **kw)

    monkeypatch.setattr(fastattn, "attention", recording)
    model = _t5()
    ids, mask = _pad(_prompts(40))
    model.generate(ids, 4, mask)
    L, H, B = model.config.n_decoder_layers, model.config.n_heads, ids.shape[0]
    assert [c[:2] for c in calls] == [(4, (1, H, 1, 4))] * (4 * L)
    for i, (_, _, valid, bias) in enumerate(calls):
        t = i // L                                                   # the step: position t is the new token's
        assert torch.equal(valid, (torch.arange(4) <= t).expand(B, 4))
        want = model.dec_pos_bias(t + 1, t + 1)[:, :, -1:]          # (1, H, 1, t + 1): the dynamic path's row
        assert torch.equal(bias[..., :t + 1], want)


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_t5_cached_generate_matches_uncached(backend):
    model = _t5(backend)
    ids, mask = _pad(_prompts(40))
    greedy = model.generate(ids, 8, mask)
    assert greedy.shape == (4, 9) and (greedy[:, 0] == model.config.decoder_start_token_id).all()
    assert torch.equal(greedy, model.generate(ids, 8, mask, use_cache=False))
    seeds = torch.tensor([5, 6, 7, 8])
    kw = dict(temperature=1.0, top_k=25, top_p=0.9, min_p=0.01, seed=seeds)
    sampled = model.generate(ids, 8, mask, **kw)
    assert torch.equal(sampled, model.generate(ids, 8, mask, use_cache=False, **kw))


def test_t5_sampled_generate_is_seeded_and_rowwise():
    model = _t5()
    ids, mask = _pad(_prompts(40))
    a = model.generate(ids, 8, mask, temperature=1.0, top_p=0.95, seed=11)
    assert torch.equal(a, model.generate(ids, 8, mask, temperature=1.0, top_p=0.95, seed=11))
    assert not torch.equal(a, model.generate(ids, 8, mask, temperature=1.0, top_p=0.95, seed=12))
    seeds = torch.tensor([21, 22, 23, 24])
    both = model.generate(ids, 8, mask, temperature=1.0, seed=seeds)
    for b, p in enumerate(_prompts(40)):
        alone = model.generate(p.view(1, -1), 8, temperature=1.0, seed=seeds[b:b + 1])
        assert torch.equal(both[b], alone[0]), f"row {b}"


@pytest.mark.parametrize("eos", ["config", "early"])
def test_t5_generate_matches_hf(eos):
    T = _quiet_hf()
    torch.manual_seed(0)
    hf = T.T5ForConditionalGeneration(T.T5Config(
        vocab_size=79, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, decoder_start_token_id=0, initializer_factor=10.0,
        attn_implementation="eager")).eval()
    model = EncoderDecoder.from_hf(hf, attn_backend="torch")
    ids, mask = _pad(_prompts(79))
    eos_id = hf.config.eos_token_id
    if eos == "early":                                          # a token row 0 emits at step 2 (or before)
        eos_id = int(model.generate(ids, 3, mask)[0, 3])
    with torch.no_grad():
        want = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=9, do_sample=False,
                           eos_token_id=eos_id, pad_token_id=hf.config.pad_token_id)
    got = model.generate(ids, 9, mask, eos_token_id=eos_id, pad_token_id=hf.config.pad_token_id)
    assert torch.equal(got, want)
    if eos == "early":
        assert (got == eos_id).any()


# ----------------------------------------------------------------------------------------------------------
# Triton backend
# ----------------------------------------------------------------------------------------------------------

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.triton
def test_generate_on_triton_small():
    """Ragged Decoder.generate (prefill with key padding, split-KV decode) and cached EncoderDecoder.generate
    (a bias row over a slice of the cache) give the torch backend's tokens under the Triton backend."""
    dev = TRITON_DEVICE
    dec, t5 = _decoder(n_kv_heads=2).to(dev), _t5().to(dev)
    ids, mask = (t.to(dev) for t in _pad(_prompts(40, [5, 2])))
    want = (dec.generate(ids, 3, temperature=0, attention_mask=mask), t5.generate(ids, 3, mask))
    dec.attn_backend = t5.attn_backend = "triton"
    got = (dec.generate(ids, 3, temperature=0, attention_mask=mask), t5.generate(ids, 3, mask))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
