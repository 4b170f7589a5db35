"""fastattn.models: Encoder, Decoder, EncoderDecoder on tiny random configs (CPU, torch backend); loading from
Hugging Face models gives their outputs; the KV cache, GQA and ALiBi paths agree with full forwards; training
parity between the Triton and torch attention backends (under the interpreter on the CPU)."""
import math

import pytest
import torch

import fastattn
from fastattn.models import (ATTN_BACKENDS, Decoder, DecoderConfig, Encoder, EncoderConfig, EncoderDecoder,
                             EncoderDecoderConfig, alibi_slopes)
from _utils import assert_rel

# Triton tests run on the GPU when there is one, else on the CPU under the interpreter (tests/conftest.py).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TINY_DEC = dict(vocab_size=61, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)


def _tiny_decoder(seed=0, backend="torch", **kw):
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(**{**TINY_DEC, **kw}), attn_backend=backend).eval()


def _ids(shape, vocab, seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------------

DECODER_VARIANTS = {
    "mha": {},
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "alibi": dict(position="alibi"),
    "alibi_gqa_6heads": dict(position="alibi", n_heads=6, d_model=36, n_kv_heads=3),
}


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.parametrize("variant", list(DECODER_VARIANTS))
def test_decoder_cache_matches_full_forward(variant, backend):
    """Prefill + one-token decode steps through the KV cache give the logits of a full causal forward."""
    model = _tiny_decoder(backend=backend, **DECODER_VARIANTS[variant])
    ids = _ids((3, 11), model.config.vocab_size)
    with torch.no_grad():
        full = model(ids)                                    # (B, 11, V)
        cache = model.new_cache(3, 16)
        steps = [model(ids[:, :6], cache)]                   # prompt of 6
        for t in range(6, 11):
            steps.append(model(ids[:, t:t + 1], cache))
    assert cache.lengths.tolist() == [11, 11, 11]
    assert_rel(torch.cat(steps, dim=1), full, 1e-5, "cached logits")


@pytest.mark.parametrize("position", ["learned", "alibi"])
def test_decoder_cache_rules(position):
    model = _tiny_decoder(position=position)
    ids = _ids((2, 4), 61)
    cache = model.new_cache(2, 8)
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, t:t + 1], cache) for t in range(4)]   # a one-token prompt, then decode steps
        assert_rel(torch.cat(steps, dim=1), full, 1e-5)
        with pytest.raises(ValueError, match="empty KVCache"):
            model(_ids((2, 2), 61), cache)


def test_decoder_uses_decode_attention(monkeypatch):
    calls = {"decode": 0}
    real = fastattn.decode_attention

    def counting(*a, **k):
        calls["decode"] += 1
        return real(*a, **k)

    monkeypatch.setattr(fastattn, "decode_attention", counting)
    model = _tiny_decoder()
    model.generate(_ids((2, 4), 61), 3, temperature=0)
    assert calls["decode"] == 2 * model.config.n_layers    # the prompt is a prefill; 2 decode steps after it


def test_alibi_slopes_match_bloom():
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    for h in (4, 6, 12):
        mask = torch.ones(1, 5)
        ref = bloom.build_alibi_tensor(mask, h, torch.float32)   # (H, 1, S) = slope_h * position
        assert_rel(alibi_slopes(h), ref[:, 0, 1], 1e-6, f"slopes for {h} heads")


def test_alibi_has_no_position_limit():
    """ALiBi indexes nothing by position: no position embedding, and sequences may outgrow max_seq_len."""
    model = _tiny_decoder(position="alibi")
    assert model.wpe is None
    with torch.no_grad():
        assert torch.isfinite(model(_ids((1, 40), 61))).all()


def test_generate_sampling_is_seeded_and_rowwise():
    model = _tiny_decoder()
    ids = _ids((2, 5), 61)
    a = model.generate(ids, 6, temperature=1.0, top_k=20, top_p=0.9, seed=123)
    b = model.generate(ids, 6, temperature=1.0, top_k=20, top_p=0.9, seed=123)
    c = model.generate(ids, 6, temperature=1.0, top_k=20, top_p=0.9, seed=124)
    assert a.shape == (2, 11) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :5], ids)
    # Per-row seeds: a row's continuation does not depend on the rest of the batch.
    seeds = torch.tensor([7, 99])
    both = model.generate(ids, 6, seed=seeds)
    alone = model.generate(ids[1:], 6, seed=seeds[1:])
    assert torch.equal(both[1:], alone)


def test_generate_greedy_matches_argmax_of_full_forward():
    model = _tiny_decoder(n_kv_heads=2)
    out = model.generate(_ids((2, 4), 61), 5, temperature=0)
    with torch.no_grad():
        logits = model(out[:, :-1])
    assert torch.equal(out[:, 4:], logits[:, 3:].argmax(-1))


def test_generate_respects_max_seq_len():
    model = _tiny_decoder()
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(_ids((1, 30), 61), 5)


def test_attn_backend_switch():
    model = _tiny_decoder()
    ids = _ids((2, 7), 61)
    with torch.no_grad():
        a = model(ids)
        model.attn_backend = "sdpa"
        assert all(b.attn.backend == "sdpa" for b in model.blocks)
        b = model(ids)
    assert_rel(b, a, 1e-5)
    with pytest.raises(ValueError, match="attn_backend"):
        model.attn_backend = "flash"
    with pytest.raises(ValueError, match="attn_backend"):
        Decoder(DecoderConfig(**TINY_DEC), attn_backend="nope")
    assert set(ATTN_BACKENDS) == {"auto", "triton", "cuda", "torch", "sdpa"}


def test_decoder_trains():
    model = _tiny_decoder(n_kv_heads=2).train()
    ids = _ids((2, 12), 61)
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 61), ids[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_validation():
    with pytest.raises(ValueError, match="n_kv_heads"):
        DecoderConfig(n_heads=4, n_kv_heads=3, d_model=32)
    with pytest.raises(ValueError, match="position"):
        DecoderConfig(position="rope")
    with pytest.raises(ValueError, match="n_heads"):
        EncoderConfig(d_model=30, n_heads=4)


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_full_size_presets():
    """The configs the GPU benchmarks build (on the meta device here: no memory, no time)."""
    with torch.device("meta"):
        gpt2 = Decoder(DecoderConfig.gpt2_small())
        bert = Encoder(EncoderConfig.bert_base())
        t5 = EncoderDecoder(EncoderDecoderConfig.t5_small())
    assert round(_n_params(gpt2) / 1e6) == 124           # GPT-2 small, tied lm_head
    assert round(_n_params(bert) / 1e6) == 109           # BERT-base with pooler
    assert round(_n_params(t5) / 1e6) == 61              # T5-small (60.5M), tied lm_head
    assert DecoderConfig.gpt2_small(n_layers=2).n_layers == 2


# ----------------------------------------------------------------------------------------------------------
# Hugging Face parity
# ----------------------------------------------------------------------------------------------------------

def _quiet_hf():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_decoder_from_hf_gpt2(backend):
    T = _quiet_hf()
    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=71, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                        bos_token_id=0, eos_token_id=0, attn_implementation="eager")).eval()
    ids = _ids((2, 9), 71)
    model = Decoder.from_hf(hf, attn_backend=backend)
    assert not model.training and model.config.tie_embeddings
    with torch.no_grad():
        assert_rel(model(ids), hf(ids).logits, 1e-5, "logits")
        greedy = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, 6, temperature=0), greedy)


def test_decoder_from_hf_rejects_other_models():
    T = _quiet_hf()
    bert = T.BertModel(T.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=8))
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        Decoder.from_hf(bert)
    with pytest.raises(TypeError, match="BertModel"):
        Encoder.from_hf(T.GPT2LMHeadModel(T.GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2)))


def _bert(T, **kw):
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=83, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=40, max_position_embeddings=32, attn_implementation="eager", **kw)
    return T.BertModel(cfg).eval()


def _padded(B, S, vocab, lengths, seed=2):
    ids = _ids((B, S), vocab, seed)
    mask = (torch.arange(S).view(1, S) < torch.tensor(lengths).view(B, 1)).long()
    return ids, mask


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_encoder_from_hf_bert(backend):
    T = _quiet_hf()
    hf = _bert(T)
    ids, mask = _padded(3, 10, 83, [10, 6, 3])
    types = _ids((3, 10), 2, seed=4)
    model = Encoder.from_hf(hf, attn_backend=backend)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        h = model(ids, mask, types)
    real = mask.bool().unsqueeze(-1)
    assert_rel(h.masked_fill(~real, 0), ref.last_hidden_state.masked_fill(~real, 0), 1e-5, "hidden states")
    assert_rel(model.pool(h), ref.pooler_output, 1e-5, "pooler")


def _t5(T, **kw):
    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=79, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16, decoder_start_token_id=0,
                     attn_implementation="eager", **kw)
    return T.T5ForConditionalGeneration(cfg).eval()


@pytest.mark.parametrize("variant", ["t5", "t5_v1_1"])
@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_encoder_decoder_from_hf_t5(variant, backend):
    T = _quiet_hf()
    kw = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if variant == "t5_v1_1" else {}
    hf = _t5(T, **kw)
    ids, mask = _padded(2, 13, 79, [13, 8])
    dec = _ids((2, 7), 79, seed=5)
    model = EncoderDecoder.from_hf(hf, attn_backend=backend)
    assert model.config.gated_ff == (variant == "t5_v1_1")
    assert model.config.scale_decoder_output == (variant == "t5")
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        assert_rel(model(ids, dec, mask), ref, 1e-5, "logits")
        greedy = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(model.generate(ids, 5, mask), greedy)


def test_encoder_decoder_bias_gets_gradients():
    """The relative position bias is a learned, differentiable input of every attention call."""
    torch.manual_seed(0)
    cfg = EncoderDecoderConfig(vocab_size=40, d_model=16, n_heads=2, head_dim=8, d_ff=24, n_layers=1,
                               rel_buckets=8, rel_max_distance=16)
    model = EncoderDecoder(cfg, attn_backend="torch")
    logits = model(_ids((2, 6), 40), _ids((2, 5), 40, seed=3))
    logits.square().mean().backward()
    for name in ("enc_pos_bias", "dec_pos_bias"):
        g = getattr(model, name).embedding.weight.grad
        assert g is not None and g.abs().sum() > 0, name


# ----------------------------------------------------------------------------------------------------------
# Training parity between attention backends
# ----------------------------------------------------------------------------------------------------------

def _train_losses(backend: str, steps: int, device: str):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=32, max_seq_len=16, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                        d_ff=64)
    model = Decoder(cfg, attn_backend=backend).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = _ids((4, 9), 32, seed=11).to(device)             # four sequences to memorise
    losses = []
    for step in range(steps):
        batch = data[(step % 2) * 2:(step % 2) * 2 + 2]      # (2, 9)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.triton
def test_training_parity_triton_vs_torch():
    steps = 30
    triton_losses = _train_losses("triton", steps, TRITON_DEVICE)
    torch_losses = _train_losses("torch", steps, TRITON_DEVICE)
    assert torch_losses[-1] < torch_losses[0] - 0.3, "the tiny model should learn"
    for step, (a, b) in enumerate(zip(triton_losses, torch_losses)):
        assert math.isclose(a, b, rel_tol=1e-4), f"step {step}: triton {a} vs torch {b}"


@pytest.mark.triton
def test_models_on_triton_small():
    """One forward of each model, and a cached generate, under the Triton backend."""
    torch.manual_seed(0)
    dev = TRITON_DEVICE
    dec = _tiny_decoder(n_kv_heads=2).to(dev)
    ids = _ids((2, 6), 61).to(dev)
    enc = Encoder(EncoderConfig(vocab_size=50, max_seq_len=16, d_model=32, n_layers=1, n_heads=2, d_ff=40))
    enc = enc.to(dev).eval()
    ids_e, mask = (t.to(dev) for t in _padded(2, 7, 50, [7, 4]))
    t5 = EncoderDecoder(EncoderDecoderConfig(vocab_size=40, d_model=16, n_heads=2, head_dim=8, d_ff=24,
                                             n_layers=1, rel_buckets=8, rel_max_distance=16)).to(dev).eval()
    with torch.no_grad():
        want = (dec(ids), enc(ids_e, mask), t5(ids_e % 40, ids[:, :5] % 40, mask), dec.generate(ids, 3, temperature=0))
        for m in (dec, enc, t5):
            m.attn_backend = "triton"
        got = (dec(ids), enc(ids_e, mask), t5(ids_e % 40, ids[:, :5] % 40, mask),
               dec.generate(ids, 3, temperature=0))
    real = mask.bool().unsqueeze(-1)
    assert_rel(got[0], want[0], 1e-4, "decoder")
    assert_rel(got[1].masked_fill(~real, 0), want[1].masked_fill(~real, 0), 1e-4, "encoder")
    assert_rel(got[2], want[2], 1e-4, "encoder-decoder")
    assert torch.equal(got[3], want[3])


@pytest.mark.triton
def test_encoder_training_with_attention_dropout_triton_vs_torch():
    """A few optimiser steps of a small encoder with attention dropout 0.1 (BERT's setting), once on the Triton
    kernels and once on the torch backend from the same initial weights and seeds: both draw fastattn's
    dropout stream, so the losses agree step by step to float32 rounding (1e-5), while another seed, or no
    dropout, moves the first loss by far more (the loss is linear in the output, so the mask shows)."""
    dev = TRITON_DEVICE
    ids, mask = (t.to(dev) for t in _padded(3, 9, 50, [9, 6, 3]))
    target = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(1)).to(dev)

    def run(backend, attn_dropout=0.1, seed=100):
        torch.manual_seed(0)
        enc = Encoder(EncoderConfig(vocab_size=50, max_seq_len=16, d_model=32, n_layers=2, n_heads=2, d_ff=40,
                                    attn_dropout=attn_dropout), attn_backend=backend).to(dev).train()
        opt = torch.optim.SGD(enc.parameters(), lr=0.5)
        losses = []
        for step in range(3):
            torch.manual_seed(seed + step)
            loss = (enc(ids, mask) * target).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    torch_losses = run("torch")
    triton_losses = run("triton")
    for a, b in zip(triton_losses, torch_losses):
        assert abs(a - b) <= 1e-5 * abs(b)
    for other in (run("torch", seed=200), run("torch", attn_dropout=0.0)):
        assert abs(other[0] - torch_losses[0]) > 1e-4 * abs(torch_losses[0])
    assert torch_losses[-1] < torch_losses[0]


@pytest.mark.triton
@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_decoder_models_train_with_attention_dropout_triton_vs_torch(family):
    """As the encoder test above, for the Decoder (GPT-2's attn_pdrop) and the EncoderDecoder (T5's dropout on
    the attention weights): the same losses on the Triton and torch backends step by step, and a different seed
    or no attention dropout moves them (a loss linear in the logits, so the mask shows)."""
    from fastattn.models import EncoderDecoder, EncoderDecoderConfig
    dev = TRITON_DEVICE
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 40, (2, 9), generator=g).to(dev)
    dec_ids = torch.randint(1, 40, (2, 6), generator=g).to(dev)
    target = torch.randn(2, 9, 40, generator=g).to(dev)

    def run(backend, attn_dropout=0.1, seed=100):
        torch.manual_seed(0)
        if family == "decoder":
            model = Decoder(DecoderConfig(vocab_size=40, max_seq_len=16, d_model=32, n_layers=2, n_heads=2,
                                          attn_dropout=attn_dropout), attn_backend=backend)
        else:
            model = EncoderDecoder(EncoderDecoderConfig(vocab_size=40, d_model=16, n_heads=2, head_dim=8, d_ff=24,
                                                        n_layers=2, rel_buckets=8, rel_max_distance=16,
                                                        attn_dropout=attn_dropout), attn_backend=backend)
        model = model.to(dev).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        losses, scales = [], []
        for step in range(3):
            torch.manual_seed(seed + step)
            logits = model(ids) if family == "decoder" else model(ids, dec_ids)
            loss = (logits * target[:, :logits.shape[1]]).mean()   # linear in the output, so the mask shows
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            scales.append((logits * target[:, :logits.shape[1]]).abs().mean().item())
        return losses, scales

    # The loss is a mean of products of both signs, so it can be far smaller than its terms: rounding is
    # measured against the mean size of the terms, not against the loss itself.
    torch_losses, scales = run("torch")
    triton_losses, _ = run("triton")
    for a, b, scale in zip(triton_losses, torch_losses, scales):
        assert abs(a - b) <= 1e-5 * scale, (a, b, scale)
    for other, _ in (run("torch", seed=200), run("torch", attn_dropout=0.0)):
        assert abs(other[0] - torch_losses[0]) > 1e-3 * scales[0], (other[0], torch_losses[0], scales[0])
