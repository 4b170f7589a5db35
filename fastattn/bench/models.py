"""End-to-end rows: fastattn.models' Encoder (BERT-like) forward and Decoder (GPT-like) prefill and generation,
against the same model with PyTorch SDPA attention (attn_backend="sdpa") and the Hugging Face model it is built
from (same weights, HF's own SDPA attention).

These rows exist only when fastattn.models and transformers import; otherwise ``cases`` returns no case and a
'skipped: ...' line for the report. The models come from random-weight configs (nothing is downloaded).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, List, Tuple

import torch

from . import formulas
from .core import DTYPES, Case, Options, Provider, Unavailable, max_rel_err

TEMPERATURE, TOP_K, TOP_P = 0.8, 50, 0.9


def _encoder_config(opts: Options):
    from transformers import BertConfig
    if opts.cpu:
        return BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=64), 2, 40
    return BertConfig(max_position_embeddings=512), 32, 512  # BERT-base, 32 × 512 = 16k tokens


def _decoder_config(opts: Options):
    from transformers import GPT2Config
    if opts.cpu:
        return GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                          eos_token_id=0), 2, 8, 4
    return GPT2Config(), 8, 128, (32 if opts.quick else 128)  # GPT-2 small; B, prompt, new tokens


def _generate_batches(opts: Options, b: int) -> List[int]:
    """Batch sizes of the generation rows (issue 17: tokens/s at B = 1, 8, 64)."""
    if opts.cpu:
        return [b]
    return [1, 8] if opts.quick else [1, 8, 64]


def _tensor_out(out: Any) -> torch.Tensor:
    """The main tensor of a model's output: a Tensor, the first of a tuple, or .last_hidden_state / .logits."""
    for attr in ("last_hidden_state", "logits"):
        if hasattr(out, attr):
            return getattr(out, attr)
    if isinstance(out, (tuple, list)):
        return _tensor_out(out[0])
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(f"cannot find the output tensor in a {type(out).__name__}")


def _from_hf(cls, hf, backend: str):
    """cls.from_hf(hf) with attention backend ``backend``, whichever way the model takes it."""
    if not hasattr(cls, "from_hf"):
        raise Unavailable(f"fastattn.models.{cls.__name__} has no from_hf")
    params = inspect.signature(cls.from_hf).parameters
    if "attn_backend" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return cls.from_hf(hf, attn_backend=backend)
    model = cls.from_hf(hf)
    hits = 0
    for m in model.modules():
        if hasattr(m, "attn_backend"):
            m.attn_backend = backend
            hits += 1
    if not hits:
        raise Unavailable(f"{cls.__name__}.from_hf takes no attn_backend and its modules have none to set")
    return model


def _layer_params(n_layers: int, hidden: int, inner: int) -> int:
    """Weights of the transformer blocks (biases and norms left out): 4·h² for q, k, v, o and 2·h·inner for
    the MLP, per layer."""
    return n_layers * (4 * hidden * hidden + 2 * hidden * inner)


def _hf_pair(make_hf, dtype, device):
    """(HF model in dtype on device, the same weights in float64) — built once per case."""
    hf = make_hf().eval()
    hf64 = copy.deepcopy(hf).to(device=device, dtype=torch.float64)
    return hf.to(device=device, dtype=dtype), hf64


def _encoder_case(opts: Options, models, dt: str) -> Case:
    from transformers import BertModel
    cfg, b, s = _encoder_config(opts)
    dtype = DTYPES[dt]

    def make(device):
        hf, hf64 = _hf_pair(lambda: BertModel(cfg), dtype, device)
        g = torch.Generator(device=device).manual_seed(0)
        ids = torch.randint(0, cfg.vocab_size, (b, s), generator=g, device=device)
        return {"hf": hf, "hf64": hf64, "ids": ids}

    def check(inp, out):
        if "_ref" not in inp:
            with torch.inference_mode():
                inp["_ref"] = inp["hf64"](inp["ids"]).last_hidden_state
        return max_rel_err([_tensor_out(out)], [inp["_ref"]])

    def hf_build(inp):
        hf, ids = inp["hf"], inp["ids"]
        return lambda: _infer(lambda: hf(ids).last_hidden_state)

    def ours(backend):
        def build(inp):
            model = _from_hf(models.Encoder, inp["hf"], backend).to(inp["ids"].device).eval()
            ids = inp["ids"]
            return lambda: _infer(lambda: _tensor_out(model(ids)))
        return build

    n = _layer_params(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size)
    flops = formulas.transformer_fwd_flops(n, b * s, cfg.num_hidden_layers, cfg.hidden_size, b, s)
    provs = [Provider(f"fastattn-{bk}", "ours" if bk != "torch" else "reference", ours(bk), backend=bk)
             for bk in ("triton", "cuda", "torch")]
    provs.append(Provider("model-sdpa", "baseline", ours("sdpa"), note="this Encoder, PyTorch SDPA attention"))
    provs.append(Provider("hf-sdpa", "baseline", hf_build))
    return Case(section="e2e", label=f"Encoder (BERT {cfg.num_hidden_layers}L/{cfg.hidden_size}) fwd B={b} S={s} {dt}",
                params={"model": "encoder-fwd", "B": b, "S": s, "dtype": dt}, make_inputs=make, providers=provs,
                check=check, flops=flops, metric="tflops", weight=2)


def _decoder_cases(opts: Options, models, dt: str) -> List[Case]:
    from transformers import GPT2LMHeadModel
    cfg, b, prompt, new = _decoder_config(opts)
    dtype = DTYPES[dt]

    def make(device):
        hf, hf64 = _hf_pair(lambda: GPT2LMHeadModel(cfg), dtype, device)
        g = torch.Generator(device=device).manual_seed(1)
        ids = torch.randint(0, cfg.vocab_size, (b, prompt), generator=g, device=device)
        return {"hf": hf, "hf64": hf64, "ids": ids}

    def check_prefill(inp, out):
        if "_ref" not in inp:
            with torch.inference_mode():
                inp["_ref"] = inp["hf64"](inp["ids"]).logits
        return max_rel_err([_tensor_out(out)], [inp["_ref"]])

    def check_generate(inp, out):
        toks = out if isinstance(out, torch.Tensor) else _tensor_out(out)
        if toks.shape[-1] < prompt + new:
            raise AssertionError(f"generated {toks.shape[-1] - prompt} tokens, expected {new}")
        return None

    def hf_prefill(inp):
        hf, ids = inp["hf"], inp["ids"]
        return lambda: _infer(lambda: hf(ids).logits)

    def hf_generate(inp):
        hf, ids = inp["hf"], inp["ids"]
        mask = torch.ones_like(ids)
        return lambda: _infer(lambda: hf.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=new,
                                                  min_new_tokens=new, temperature=TEMPERATURE, top_k=TOP_K,
                                                  top_p=TOP_P, pad_token_id=cfg.eos_token_id))

    def hf_generate_compiled(inp):
        """Hugging Face's fast path: a static cache and the forward under torch.compile(mode="reduce-overhead")
        (CUDA graphs), as its docs recommend; compiled once here, outside the timing."""
        ids = inp["ids"]
        if ids.device.type != "cuda":
            raise Unavailable("torch.compile(mode='reduce-overhead') captures CUDA graphs: needs a GPU")
        hf = copy.deepcopy(inp["hf"])
        hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)
        mask = torch.ones_like(ids)

        def run():
            return _infer(lambda: hf.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=new,
                                              min_new_tokens=new, temperature=TEMPERATURE, top_k=TOP_K,
                                              top_p=TOP_P, pad_token_id=cfg.eos_token_id,
                                              cache_implementation="static"))
        try:
            run()  # compiles (and warms the graphs) before the timed calls
        except Exception as e:  # noqa: BLE001 - a compile failure is a row, not a crash
            first = str(e).splitlines()[0] if str(e) else ""
            raise Unavailable("Hugging Face generate with a static cache under torch.compile failed here: "
                              f"{type(e).__name__}: {first}") from e
        return run

    def ours_prefill(backend):
        def build(inp):
            model = _from_hf(models.Decoder, inp["hf"], backend).to(inp["ids"].device).eval()
            ids = inp["ids"]
            return lambda: _infer(lambda: _tensor_out(model(ids)))
        return build

    def ours_generate(backend, cuda_graph: bool = False):
        def build(inp):
            model = _from_hf(models.Decoder, inp["hf"], backend).to(inp["ids"].device).eval()
            ids = inp["ids"]
            if cuda_graph and ids.device.type != "cuda":
                raise Unavailable("cuda_graph=True captures a CUDA graph: needs a GPU")

            def run():
                return _infer(lambda: model.generate(ids, new, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P,
                                                     seed=0, cuda_graph=cuda_graph))
            if cuda_graph:
                run()  # the capture happens on the first call: keep it out of the timing
            return run
        return build

    def make_b(bb):
        def make_inputs(device):
            inp = make(device)
            if bb != b:
                g = torch.Generator(device=device).manual_seed(2)
                inp["ids"] = torch.randint(0, cfg.vocab_size, (bb, prompt), generator=g, device=device)
            return inp
        return make_inputs

    n = _layer_params(cfg.n_layer, cfg.n_embd, cfg.n_inner or 4 * cfg.n_embd)
    n += cfg.n_embd * cfg.vocab_size  # the LM head's matmul
    tag = f"Decoder (GPT-2 {cfg.n_layer}L/{cfg.n_embd})"
    flops = formulas.transformer_fwd_flops(n, b * prompt, cfg.n_layer, cfg.n_embd, b, prompt, causal=True)
    out = []
    provs = [Provider(f"fastattn-{bk}", "ours" if bk != "torch" else "reference", ours_prefill(bk), backend=bk)
             for bk in ("triton", "cuda", "torch")]
    provs.append(Provider("model-sdpa", "baseline", ours_prefill("sdpa"), note="this Decoder, PyTorch SDPA attention"))
    provs.append(Provider("hf-sdpa", "baseline", hf_prefill))
    out.append(Case(
        section="e2e", label=f"{tag} prefill B={b} prompt={prompt} {dt}",
        params={"model": "decoder-prefill", "B": b, "S": prompt, "dtype": dt}, make_inputs=make,
        providers=provs, check=check_prefill, err_kind="max rel err", flops=flops, metric="tflops",
        timing="device", weight=2))
    for bb in _generate_batches(opts, b):
        provs = [Provider(f"fastattn-{bk}", "ours" if bk != "torch" else "reference", ours_generate(bk), backend=bk)
                 for bk in ("triton", "cuda", "torch")]
        provs += [Provider(f"fastattn-{bk} cuda-graph", "ours", ours_generate(bk, cuda_graph=True), backend=bk,
                           note="generate(cuda_graph=True): each decode step one graph replay")
                  for bk in ("triton", "cuda")]
        provs.append(Provider("model-sdpa", "baseline", ours_generate("sdpa"), checked=False,
                              note="this Decoder, PyTorch SDPA attention"))
        provs.append(Provider("hf-sdpa", "baseline", hf_generate, checked=False))
        if opts.cpu or not opts.quick or bb == 1:  # a compile per batch size: quick mode compiles one
            provs.append(Provider("hf-static-compiled", "baseline", hf_generate_compiled, checked=False,
                                  note="static cache, forward under torch.compile(mode='reduce-overhead')"))
        out.append(Case(
            section="e2e", label=f"{tag} generate B={bb} prompt={prompt} new={new} {dt}",
            params={"model": "decoder-generate", "B": bb, "S": prompt, "new": new, "dtype": dt},
            make_inputs=make_b(bb), providers=provs, check=check_generate, err_kind="—", metric="tokps",
            timing="wall", weight=4,
            notes=["generate: sampled tokens per second (B × new / time), timed as whole calls; the CUDA-graph "
                   "and compiled rows capture / compile before the timing"]))
    return out


def _infer(fn):
    with torch.inference_mode():
        return fn()


def cases(opts: Options) -> Tuple[List[Case], List[str]]:
    """The e2e cases, and the reasons for any left out (for the report's 'skipped:' lines)."""
    try:
        import fastattn.models as models
    except Exception as e:  # noqa: BLE001 - any import failure means: no e2e rows
        return [], [f"skipped: end-to-end model rows: fastattn.models is not importable ({type(e).__name__}: {e})"]
    try:
        import transformers  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return [], [f"skipped: end-to-end model rows need transformers ({type(e).__name__}: {e})"]
    out, skipped = [], []
    dts = [d for d in opts.dtype_list(["fp32"] if opts.cpu else ["bf16"]) if d in DTYPES]
    for dt in dts[:1]:
        for name, fn in (("Encoder", lambda: [_encoder_case(opts, models, dt)]),
                         ("Decoder", lambda: _decoder_cases(opts, models, dt))):
            if not hasattr(models, name):
                skipped.append(f"skipped: fastattn.models has no {name} yet")
                continue
            try:
                out += fn()
            except Exception as e:  # noqa: BLE001 - a broken config must not stop the suite
                skipped.append(f"skipped: {name} rows could not be set up ({type(e).__name__}: {e})")
    return out, skipped
