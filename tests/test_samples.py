"""Every custom op over one shared sample set (tests/_samples.py), for every backend that runs here:
torch.library.opcheck (schema, autograd registration, the fake kernel's shapes, dtypes and strides against
the real op, AOT dispatch with dynamic shapes), and torch.compile(fullgraph=True) of the public function
against eager, outputs and gradients.

Backends: "torch" always; "triton" (compiled on a GPU, interpreted on the CPU); "cuda" on a GPU with the
extension, or its emulated CPU build (FASTATTN_CUDA_EMULATE=1). A backend expected on this machine
(tests/_utils.expected_backends) that is unavailable fails these tests; any other unavailable one skips.

The default run takes the representative subset (each input axis varied on its own); the cross product of
the interacting axes is marked slow (--runslow). FASTATTN_COMPILE_BACKEND picks torch.compile's backend for
the comparison (default aot_eager, which runs the fakes, functionalization and the autograd graph; inductor
runs once per op family in test_compile_inductor).
"""
from __future__ import annotations

import os

import pytest
import torch

import fastattn
import _samples
from _utils import HAS_GPU, require_backend

BACKENDS = ("torch", "triton", "cuda")
COMPILE_BACKEND = os.environ.get("FASTATTN_COMPILE_BACKEND", "aot_eager")
_OPCHECK_ALL = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
# Under the Triton interpreter every kernel call takes ~0.1-2 s and opcheck's dynamic AOT check reruns the op
# several times: there it runs on each family's base sample only, the other samples get the rest (the fake
# kernel against the real op's shapes, dtypes and strides included). Compiled backends run all four.
_OPCHECK_INTERPRETED = ("test_schema", "test_autograd_registration", "test_faketensor")


def _interpreted(backend: str) -> bool:
    return backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def device_for(backend: str) -> str:
    if backend == "torch":
        return "cpu"
    return "cuda" if HAS_GPU else "cpu"


def _params(mode: str, compile_only: bool = False):
    out = []
    for backend in BACKENDS:
        dev = device_for(backend)
        for family, gen in _samples.FAMILIES.items():
            for s in gen(backend, dev, mode):
                if compile_only and s.public is None:
                    continue  # a backward op: the forward sample's gradient comparison compiles it
                out.append(pytest.param(backend, s, id=f"{backend}-{s.id}"))
    return out


def pytest_generate_tests(metafunc):
    """Samples are built at collection; the full set only when slow tests run (it is large)."""
    if "s" not in metafunc.fixturenames:
        return
    name = metafunc.function.__name__
    compile_only = name.startswith("test_compile")
    default = _params("cover", compile_only)
    if not name.endswith("_full"):
        metafunc.parametrize("backend,s", default)
        return
    run_slow = metafunc.config.getoption("--runslow") or os.environ.get("FASTATTN_SLOW") == "1"
    ids = {p.id for p in default}
    more = []
    if run_slow:
        # The cross product runs where kernels are compiled; under the interpreter it would take hours.
        for mode in ("each", "full"):
            for p in _params(mode, compile_only):
                if mode == "full" and _interpreted(p.values[0]):
                    continue
                if p.id not in ids:
                    ids.add(p.id)
                    more.append(p)
    metafunc.parametrize("backend,s", more)


def _opcheck(backend, s):
    require_backend(backend)
    utils = _OPCHECK_INTERPRETED if _interpreted(backend) and not s.meta.get("base") else _OPCHECK_ALL
    torch.library.opcheck(s.op, s.resolve_args(), test_utils=utils)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _compare(got, want, what):
    for i, (g, w) in enumerate(zip(_as_tuple(got), _as_tuple(want))):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what}[{i}]: {g.shape}/{g.dtype} vs {w.shape}/{w.dtype}"
        # The same kernel runs on the same values both ways: results agree exactly.
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}[{i}]: {m}")


def _compile_check(backend, s, compile_backend=COMPILE_BACKEND):
    require_backend(backend)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: s.public(*t), fullgraph=True, backend=compile_backend)
    want = s.public(*s.tensors)
    got = compiled(*s.tensors)
    _compare(got, want, "output")
    if s.grad_inputs:
        out_w, out_g = _as_tuple(want)[0], _as_tuple(got)[0]
        w = torch.randn(out_w.shape, generator=torch.Generator().manual_seed(5)).to(out_w)
        inputs = [s.tensors[j] for j in s.grad_inputs]
        gw = torch.autograd.grad((out_w * w).sum(), inputs)
        gg = torch.autograd.grad((out_g * w).sum(), inputs)
        _compare(gg, gw, "grad")


def test_opcheck(backend, s):
    _opcheck(backend, s)


def test_compile_matches_eager(backend, s):
    _compile_check(backend, s)


@pytest.mark.slow
def test_opcheck_full(backend, s):
    _opcheck(backend, s)


@pytest.mark.slow
def test_compile_matches_eager_full(backend, s):
    _compile_check(backend, s)


@pytest.mark.parametrize("family", ["attention", "decode", "softmax", "sampling"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_inductor(backend, family):
    """Inductor, as users compile: the first (base) sample of each family."""
    s = next(iter(_samples.FAMILIES[family](backend, device_for(backend))))
    _compile_check(backend, s, "inductor")


def test_samples_cover_every_axis_value():
    """The default subset holds every value of every axis of every family at least once (checked from
    the torch backend, which declines no sample)."""
    axes = {"attention": _samples.attention_axes("cover"), "decode": _samples.decode_axes("cover"),
            "softmax": _samples.softmax_axes("cover"), "sampling": _samples.sampling_axes("cover")}
    for family, ax in axes.items():
        seen = {n: set() for n in ax}
        for s in _samples.FAMILIES[family]("torch", "cpu"):
            for n in ax:
                seen[n].add(repr(s.meta[n]))
        for n, values in ax.items():
            missing = {repr(v) for v in values} - seen[n]
            assert not missing, f"{family}: axis {n} never takes {missing}"


def test_known_faults_stay_fixed():
    """The two fake/real mismatches issue 12 found: a float64 attention's lse is float32 like the contract
    and the fake; softmax of a transposed input is contiguous like the fake."""
    from fastattn.ops import attention as attn_ops
    from fastattn.ops import softmax as softmax_ops

    q, k, v = (torch.randn(1, 2, 3, 4, dtype=torch.float64) for _ in range(3))
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend="torch")
    assert out.dtype == torch.float64 and lse.dtype == torch.float32
    torch.library.opcheck(attn_ops.attention_fwd, (q, k, v, None, None, False, 0.5, "torch"))
    x = torch.randn(64, 32).t()
    assert softmax_ops.softmax_fwd(x, None, 1.0, 1, "torch").is_contiguous()
    torch.library.opcheck(softmax_ops.softmax_fwd, (x, None, 1.0, 1, "torch"))


def test_float64_gradients_stay_float64_exact():
    """The float32 lse of a float64 call must not cost the float64 backward its precision (gradcheck)."""
    q, k, v = (torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, b: fastattn.attention(q, k, v, bias=b, causal=True,
                                                                          backend="torch"), (q, k, v, bias))
