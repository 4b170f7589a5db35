"""Every op is a torch.library custom op with a fake kernel and autograd: opcheck, and torch.compile without
graph breaks. Runs each op through the "torch" backend on the CPU; the kernel test files repeat opcheck for
their backends.
"""
import pytest
import torch

import fastattn
from fastattn.ops import attention as attn_ops
from fastattn.ops import sampling as sampling_ops
from fastattn.ops import softmax as softmax_ops
from _utils import randn


def _attention_samples():
    q, k, v = randn(2, 4, 5, 8, seed=1), randn(2, 2, 7, 8, seed=2), randn(2, 2, 7, 8, seed=3)
    kpm = torch.ones(2, 7, dtype=torch.bool)
    kpm[1, 5:] = False
    yield (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), None, None, False, 0.35, "torch")
    bias = randn(1, 4, 5, 7, seed=4, requires_grad=True)
    yield (q, k, v, bias, kpm, True, 0.35, "torch")
    yield (q.detach(), k.detach(), v.detach(), bias.detach().expand(2, 4, 5, 7), None, True, 0.2, "torch")


@pytest.mark.parametrize("i", range(3))
def test_opcheck_attention_fwd(i):
    args = list(_attention_samples())[i]
    torch.library.opcheck(attn_ops.attention_fwd, args)


def test_opcheck_attention_bwd():
    q, k, v = randn(1, 2, 3, 4, seed=1), randn(1, 1, 5, 4, seed=2), randn(1, 1, 5, 4, seed=3)
    bias = randn(1, 2, 3, 5, seed=4)
    out, lse = attn_ops.attention_fwd(q, k, v, bias, None, True, 0.5, "torch")
    dout = randn(*out.shape, seed=5)
    for with_bias_grad in (False, True):
        torch.library.opcheck(attn_ops.attention_bwd,
                              (dout, q, k, v, out, lse, bias, None, True, 0.5, with_bias_grad, "torch"))


def test_opcheck_decode_attention():
    q, kc, vc = randn(2, 4, 8, seed=1), randn(2, 2, 6, 8, seed=2), randn(2, 2, 6, 8, seed=3)
    torch.library.opcheck(attn_ops.decode_attention_op,
                          (q, kc, vc, torch.tensor([6, 2], dtype=torch.int32), 0.3, "torch"))


def test_opcheck_softmax():
    x = randn(3, 4, 9, seed=1, requires_grad=True)
    torch.library.opcheck(softmax_ops.softmax_fwd, (x, None, 0.7, 2, "torch"))
    t = torch.rand(3, 1, 9) + 0.5
    torch.library.opcheck(softmax_ops.softmax_fwd, (x, t, 1.0, 1, "torch"))
    y = softmax_ops.softmax_fwd(x.detach(), None, 0.7, 2, "torch")
    torch.library.opcheck(softmax_ops.softmax_bwd, (randn(3, 4, 9, seed=2), y, None, 0.7, 2, "torch"))


def test_opcheck_sampling():
    logits = randn(3, 20, seed=1)
    seeds = torch.tensor([1, 2, 3])
    torch.library.opcheck(sampling_ops.sample_op, (logits, None, 0.8, None, 5, None, 0.9, None, 0.0, seeds, "torch"))
    per_row = (torch.tensor([0.5, 0.0, 1.0]), 1.0, torch.tensor([0, 3, 1]), 0, torch.tensor([0.9, 1.0, 0.5]), 1.0,
               torch.tensor([0.0, 0.1, 0.0]), 0.0)
    torch.library.opcheck(sampling_ops.sample_op, (logits, *per_row, seeds, "torch"))
    torch.library.opcheck(sampling_ops.filter_op, (logits, *per_row, "torch"))


def test_compile_fullgraph_without_breaks():
    torch._dynamo.reset()

    def step(q, k, v, logits):
        o = fastattn.attention(q, k, v, causal=True)
        p = fastattn.softmax(o.sum(-1), 0.5)
        tok = fastattn.sample(logits, temperature=0.7, top_k=5, top_p=0.9, seed=3)
        return o, p, tok

    q, k, v = randn(1, 2, 5, 8, seed=1), randn(1, 2, 5, 8, seed=2), randn(1, 2, 5, 8, seed=3)
    logits = randn(2, 30, seed=4)
    compiled = torch.compile(step, fullgraph=True)  # inductor, as users run it
    got = compiled(q, k, v, logits)
    want = step(q, k, v, logits)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])  # Inductor may fuse o.sum(-1) with another rounding
    assert torch.equal(got[2], want[2])


def test_compile_training_step():
    torch._dynamo.reset()
    q, k, v = (randn(1, 2, 6, 8, seed=i, requires_grad=True) for i in range(3))
    bias = randn(1, 2, 6, 6, seed=4, requires_grad=True)

    def loss(q, k, v, bias):
        return fastattn.attention(q, k, v, bias=bias, causal=True).square().sum()

    grads = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(q, k, v, bias),
                                (q, k, v, bias))
    want = torch.autograd.grad(loss(q, k, v, bias), (q, k, v, bias))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)


def test_backend_resolution_traces_under_compile():
    """_dispatch.select runs inside compiled code: its probes must be constants to dynamo, never graph breaks,
    also for a CUDA device on a machine without one (the answer is then a reason string)."""
    torch._dynamo.reset()
    from fastattn.ops import _dispatch

    def pick(x):
        on_gpu = _dispatch.select("auto", "softmax", "softmax", "softmax_fwd", torch.device("cuda"), x.dtype)
        with_default = _dispatch.select("auto", "softmax", "softmax", "softmax_fwd", x.device, x.dtype)
        return x + (1.0 if on_gpu is with_default else 2.0)

    x = torch.ones(3)
    assert torch.equal(torch.compile(pick, fullgraph=True, backend="eager")(x), pick(x))
    with fastattn.use_backend("torch"):
        torch._dynamo.reset()
        assert torch.equal(torch.compile(pick, fullgraph=True, backend="eager")(x), pick(x))


def test_constant_mark_is_the_one_torch_sets():
    """fastattn._backend marks its probes the way torch.compiler.assume_constant_result does, without
    importing torch._dynamo at fastattn's import; if torch renames the mark, this fails before compile breaks."""
    def probe():
        return 1

    marked = torch.compiler.assume_constant_result(probe)
    assert getattr(marked, "_dynamo_marked_constant", False) is True


def test_import_loads_neither_triton_nor_dynamo():
    """TRITON_INTERPRET=1 set after `import fastattn` must still work, so that import must not load triton."""
    import subprocess
    import sys

    code = "import sys, fastattn; print('triton' in sys.modules, 'torch._dynamo' in sys.modules)"
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
