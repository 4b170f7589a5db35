"""fastattn.integrations.transformers: the "fastattn" attention implementation on tiny random models of every
supported family (CPU). Each test proves routing (every attention layer calls the registered function, and each
call reaches fastattn.attention or fastattn.decode_attention) and equality with transformers' eager attention:
padding masks, causal, GQA, T5's position_bias, cross-attention, and the KV cache during generate."""
import collections

import pytest
import torch

import fastattn
from _utils import assert_rel

T = pytest.importorskip("transformers")
fi = pytest.importorskip("fastattn.integrations.transformers")
T.logging.set_verbosity_error()

V = 97

# family -> (builder, attention class, kind). kind: "encoder", "causal_lm" or "seq2seq".
FAMILIES = {
    "bert": (lambda: T.BertModel(T.BertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        max_position_embeddings=64, attn_implementation="eager")), "BertSelfAttention", "encoder"),
    "roberta": (lambda: T.RobertaModel(T.RobertaConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        max_position_embeddings=64, pad_token_id=1, attn_implementation="eager")), "RobertaSelfAttention", "encoder"),
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager")), "GPT2Attention", "causal_lm"),
    "llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="eager")), "LlamaAttention",
        "causal_lm"),
    "mistral": (lambda: T.MistralForCausalLM(T.MistralConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, sliding_window=None, attn_implementation="eager")),
        "MistralAttention", "causal_lm"),
    "qwen2": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="eager")), "Qwen2Attention",
        "causal_lm"),
    "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        relative_attention_max_distance=20, decoder_start_token_id=0, attn_implementation="eager")),
        "T5Attention", "seq2seq"),
    "bart": (lambda: T.BartForConditionalGeneration(T.BartConfig(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=64,
        attn_implementation="eager")), "BartAttention", "seq2seq"),
}
GENERATORS = [f for f, (_, _, kind) in FAMILIES.items() if kind != "encoder"]


def _build(family, seed=0):
    torch.manual_seed(seed)
    builder, attn_cls, kind = FAMILIES[family]
    return builder().eval(), attn_cls, kind


def _inputs(kind, B=3, S=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    pad = [0, 3, 1] if kind == "causal_lm" else [0, 3, 5]   # left padding (as for generation), else right
    for b in range(1, B):
        if kind == "causal_lm":
            mask[b, :pad[b]] = 0
        else:
            mask[b, S - pad[b]:] = 0
    kw = dict(input_ids=ids, attention_mask=mask)
    if kind == "seq2seq":
        kw["decoder_input_ids"] = torch.randint(3, V, (B, 5), generator=g)
    return kw


class Recorder:
    """Counts calls of the registered attention function (and which modules made them) and of the fastattn ops."""

    def __init__(self, monkeypatch, name="fastattn"):
        self.modules = set()
        self.calls = collections.Counter()
        self.attention_kwargs = []
        registered = T.AttentionInterface._global_mapping[name]
        attention, decode = fastattn.attention, fastattn.decode_attention

        def iface(module, query, *args, **kwargs):
            self.modules.add(module)
            self.calls["interface"] += 1
            self.calls["one_query"] += query.shape[2] == 1
            return registered(module, query, *args, **kwargs)

        def counted_attention(*args, **kwargs):
            self.calls["attention"] += 1
            self.attention_kwargs.append(kwargs)
            return attention(*args, **kwargs)

        def counted_decode(*args, **kwargs):
            self.calls["decode"] += 1
            return decode(*args, **kwargs)

        monkeypatch.setitem(T.AttentionInterface._global_mapping, name, iface)
        monkeypatch.setattr(fastattn, "attention", counted_attention)
        monkeypatch.setattr(fastattn, "decode_attention", counted_decode)

    def assert_routed(self, model, attn_cls):
        layers = {m for m in model.modules() if type(m).__name__ == attn_cls}
        assert layers, f"no {attn_cls} in the model"
        missed = [n for n, m in model.named_modules() if m in layers and m not in self.modules]
        assert not missed, f"attention layers that did not run through fastattn: {missed}"
        assert self.calls["interface"] == self.calls["attention"] + self.calls["decode"] > 0, dict(self.calls)


def _main_output(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_routes_every_layer_and_matches_eager(family, monkeypatch):
    model, attn_cls, kind = _build(family)
    kw = _inputs(kind)
    with torch.no_grad():
        want = _main_output(model(**kw))
    model.set_attn_implementation("fastattn")
    assert set(fi.attn_implementations(model).values()) == {"fastattn"}, fi.attn_implementations(model)
    rec = Recorder(monkeypatch)
    with torch.no_grad():
        got = _main_output(model(**kw))
    rec.assert_routed(model, attn_cls)
    n_layers = sum(type(m).__name__ == attn_cls for m in model.modules())
    assert rec.calls["interface"] == n_layers          # one call per layer: no layer skipped or run twice
    if kind != "seq2seq":  # padded positions hold arbitrary values in both implementations
        real = kw["attention_mask"].bool().unsqueeze(-1)
        got, want = got.masked_fill(~real, 0), want.masked_fill(~real, 0)
    assert_rel(got, want, 1e-5, f"{family} output")


@pytest.mark.parametrize("family", GENERATORS)
def test_generate_with_kv_cache(family, monkeypatch):
    """Greedy generate on fastattn: each step's logits (computed from the KV cache, one new token per step) equal
    eager attention's logits of the full generated sequence."""
    model, attn_cls, kind = _build(family)
    ids = _inputs(kind, B=2)["input_ids"]
    model.set_attn_implementation("fastattn")
    rec = Recorder(monkeypatch)
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
    rec.assert_routed(model, attn_cls)
    assert rec.calls["one_query"] > 0, "decode steps should attend one new query to the cache"
    if family != "t5":  # T5 adds a position bias to every call, which decode_attention does not take
        assert rec.calls["decode"] > 0, "decode steps should use fastattn.decode_attention"
    step_logits = torch.stack(out.logits, dim=1)                       # (B, 5, V)
    model.set_attn_implementation("eager")
    seq = out.sequences
    with torch.no_grad():
        if kind == "seq2seq":   # sequences = [decoder_start, 5 new tokens]
            want = model(input_ids=ids, decoder_input_ids=seq[:, :-1]).logits
        else:                   # sequences = [prompt, 5 new tokens]
            want = model(input_ids=seq[:, :-1]).logits[:, ids.shape[1] - 1:]
    assert_rel(step_logits, want, 1e-5, f"{family} step logits")


@pytest.mark.parametrize("family", GENERATORS)
def test_generate_with_padding_matches_eager(family):
    model, _, kind = _build(family)
    kw = _inputs(kind, B=3)
    kw.pop("decoder_input_ids", None)
    gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        want = model.generate(**kw, **gen)
        model.set_attn_implementation("fastattn")
        got = model.generate(**kw, **gen)
    assert torch.equal(got.sequences, want.sequences)
    assert_rel(torch.stack(got.logits, 1), torch.stack(want.logits, 1), 1e-5, f"{family} padded step logits")


def test_static_cache_generate_matches_eager():
    """A static cache hands attention more keys than tokens seen (a mask-free prefill, then tensor offsets)."""
    model, _, kind = _build("llama")
    gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
               cache_implementation="static")
    for with_padding in (False, True):
        kw = _inputs(kind, B=2)
        if not with_padding:
            kw.pop("attention_mask")
        with torch.no_grad():
            model.set_attn_implementation("eager")
            want = model.generate(**kw, **gen)
            model.set_attn_implementation("fastattn")
            got = model.generate(**kw, **gen)
        assert torch.equal(got.sequences, want.sequences)
        assert_rel(torch.stack(got.logits, 1), torch.stack(want.logits, 1), 1e-5, f"padding={with_padding}")


def test_masks_reach_fastattn_as_structure(monkeypatch):
    """Padding reaches fastattn as a (B, Sk) key padding mask and causality as a flag, not as a dense bias."""
    for family in ("bert", "llama", "bart"):
        model, _, kind = _build(family)
        model.set_attn_implementation("fastattn")
        rec = Recorder(monkeypatch)
        with torch.no_grad():
            model(**_inputs(kind))
        seen = collections.Counter()
        for kw in rec.attention_kwargs:
            assert kw["bias"] is None, family
            seen[(kw["causal"], kw["key_padding_mask"] is not None)] += 1
        expected = {"bert": {(False, True): 2},            # padded encoder self-attention
                    "llama": {(True, True): 2},            # left-padded causal self-attention
                    "bart": {(False, True): 4,             # encoder self-attention, cross-attention
                             (True, False): 2}}[family]    # decoder self-attention (no decoder padding)
        assert dict(seen) == expected, family
        monkeypatch.undo()


def test_sliding_window_mask():
    """Mistral with a window shorter than the sequence: the mask is not plain causal, so it is passed densely."""
    torch.manual_seed(0)
    model = T.MistralForCausalLM(T.MistralConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=3, attn_implementation="eager")).eval()
    kw = _inputs("causal_lm")
    with torch.no_grad():
        want = model(**kw).logits
        model.set_attn_implementation("fastattn")
        got = model(**kw).logits
    real = kw["attention_mask"].bool().unsqueeze(-1)
    assert_rel(got.masked_fill(~real, 0), want.masked_fill(~real, 0), 1e-5)


def test_training_gradients_match_eager():
    model, _, kind = _build("llama")
    model.train()
    kw = _inputs(kind)
    mask = kw["attention_mask"]
    # Positions whose next-token prediction comes from a padded query are excluded: eager gives those queries a
    # uniform attention over padding, fastattn gives zeros.
    labels = kw["input_ids"].masked_fill(mask == 0, -100)
    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    grads = []
    for impl in ("eager", "fastattn"):
        model.set_attn_implementation(impl)
        model.zero_grad()
        model(**kw, labels=labels).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for (name, _), a, b in zip(model.named_parameters(), *grads):
        assert_rel(b, a, 1e-4, f"grad of {name}")


def test_attention_dropout_runs_in_fastattn(recwarn):
    """attention_dropout > 0 in training runs in fastattn (no fallback to 'sdpa', no warning): reproducible under
    torch.manual_seed, active (the loss differs from eval mode), and the torch and Triton backends draw the same
    stream, so their losses agree."""
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, attention_dropout=0.1, attn_implementation="fastattn")).train()
    ids = _inputs("causal_lm")["input_ids"]
    losses = []
    for backend in ("torch", "torch", "triton"):
        torch.manual_seed(7)
        with fastattn.use_backend(backend):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
    assert not [w for w in recwarn if "dropout" in str(w.message)]
    assert torch.equal(losses[0], losses[1])
    assert_rel(losses[2], losses[0], 1e-5)
    with torch.no_grad():
        eval_loss = model.eval()(input_ids=ids, labels=ids).loss
    assert not torch.equal(eval_loss, losses[0])


def test_t5_stacks_follow_the_requested_implementation(tmp_path):
    """transformers 5.17 skips sub-models whose config class equals the parent's: T5's encoder and decoder stacks
    would keep their old implementation. fastattn propagates requests that involve it."""
    model, _, _ = _build("t5")
    model.set_attn_implementation("fastattn")
    assert model.encoder.config._attn_implementation == "fastattn"
    assert model.decoder.config._attn_implementation == "fastattn"
    model.set_attn_implementation("eager")           # and back again
    assert set(fi.attn_implementations(model).values()) == {"eager"}
    model.save_pretrained(tmp_path)
    loaded = T.T5ForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="fastattn")
    assert set(fi.attn_implementations(loaded).values()) == {"fastattn"}
    auto = T.AutoModelForSeq2SeqLM.from_pretrained(tmp_path, attn_implementation="fastattn")
    assert set(fi.attn_implementations(auto).values()) == {"fastattn"}


def test_stack_fix_is_scoped_to_the_t5_family():
    """Importing the integration leaves PreTrainedModel.set_attn_implementation (and so every other model's)
    as transformers wrote it; only the T5 family's classes get the fix, and it changes nothing for a T5 model
    whose old and new implementations are both transformers' own."""
    from transformers import modeling_utils

    base = T.PreTrainedModel.set_attn_implementation
    assert base is fi._original_set_attn_implementation
    assert base.__module__ == modeling_utils.__name__
    for name in ("BertModel", "GPT2LMHeadModel", "LlamaForCausalLM", "BartForConditionalGeneration"):
        assert getattr(T, name).set_attn_implementation is base, name
    assert T.T5ForConditionalGeneration.set_attn_implementation is fi._set_attn_implementation
    assert T.T5PreTrainedModel in fi._patched_classes
    # Without fastattn involved, a T5 model ends up exactly as transformers' own method leaves it.
    ours, _, _ = _build("t5")
    theirs, _, _ = _build("t5")
    ours.set_attn_implementation("sdpa")
    base(theirs, "sdpa")
    assert fi.attn_implementations(ours) == fi.attn_implementations(theirs)


def test_backend_choice(monkeypatch):
    """register(name, backend=...) pins a backend; the default "fastattn" follows fastattn.use_backend."""
    fi.register("fastattn_torch", backend="torch")
    model, attn_cls, kind = _build("bert")
    kw = _inputs(kind)
    with torch.no_grad():
        want = model(**kw).last_hidden_state
        model.set_attn_implementation("fastattn_torch")
        rec = Recorder(monkeypatch, "fastattn_torch")
        got = model(**kw).last_hidden_state
        rec.assert_routed(model, attn_cls)
        assert all(k["backend"] == "torch" for k in rec.attention_kwargs)
        model.set_attn_implementation("fastattn")
        with fastattn.use_backend("torch"):
            again = model(**kw).last_hidden_state
    real = kw["attention_mask"].bool().unsqueeze(-1)
    for out in (got, again):
        assert_rel(out.masked_fill(~real, 0), want.masked_fill(~real, 0), 1e-5)


def test_output_attentions_warns():
    model, _, kind = _build("bert")
    model.set_attn_implementation("fastattn")
    with pytest.warns(UserWarning, match="attention weights"):
        with torch.no_grad():
            model(**_inputs(kind), output_attentions=True)


@pytest.mark.triton
@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_triton_backend_small(family):
    fi.register("fastattn_triton", backend="triton")
    dev = "cuda" if torch.cuda.is_available() else "cpu"   # the interpreter on the CPU (tests/conftest.py)
    model, _, kind = _build(family)
    model.to(dev)
    kw = {k: v.to(dev) for k, v in _inputs(kind, B=2, S=7).items()}
    with torch.no_grad():
        want = _main_output(model(**kw))
        model.set_attn_implementation("fastattn_triton")
        got = _main_output(model(**kw))
    if kind != "seq2seq":
        real = kw["attention_mask"].bool().unsqueeze(-1)
        got, want = got.masked_fill(~real, 0), want.masked_fill(~real, 0)
    assert_rel(got, want, 1e-4)
