"""The dispatcher (fastattn.ops._dispatch): one Backend object per (backend, op family), an "auto" table,
errors that list every backend's reason, resolution inside torch.compile(fullgraph=True), and a hot path
(decode step + sample) that never synchronises the device.
"""
import pytest
import torch

import fastattn
from fastattn import BackendUnavailable
from fastattn.ops import _checks, _dispatch

from _utils import HAS_GPU, randn


def test_one_backend_object_per_family_with_one_interface():
    for family in _dispatch.FAMILIES:
        objs = {name: _dispatch.backend_for(family, name) for name in ("cuda", "triton", "torch")}
        for name, b in objs.items():
            assert b.name == name and b.family == family
            assert _dispatch.backend_for(family, name) is b  # the same object every time
            for attr in ("kernels", "machine_reason", "reasons"):
                assert hasattr(b, attr)
        assert objs["torch"].kernels is None
        assert objs["torch"].reasons(torch.device("cpu"), "anything", torch.float64) == []


def test_auto_table_covers_every_family_and_says_whether_measured():
    assert set(_dispatch.AUTO_ORDER) == set(_dispatch.FAMILIES)
    for family, rows in _dispatch.AUTO_ORDER.items():
        assert rows, family
        for arch, order in rows.items():
            assert isinstance(arch, int)
            assert set(order) <= {"cuda", "triton"} and len(set(order)) == len(order)
    assert isinstance(_dispatch.AUTO_ORDER_MEASURED, bool)
    # Off a GPU, "auto" is the reference (the fastest thing a CPU has).
    for family in _dispatch.FAMILIES:
        assert _dispatch.auto_order(family, torch.device("cpu")) == ("torch",)


def test_auto_order_on_a_gpu_ends_with_the_reference(monkeypatch):
    monkeypatch.setattr(fastattn._backend, "gpu_arch_major", lambda index=None: 9)
    for family in _dispatch.FAMILIES:
        order = _dispatch.auto_order(family, torch.device("cuda", 0))
        assert order == _dispatch.AUTO_ORDER[family][9] + ("torch",)
    monkeypatch.setattr(fastattn._backend, "gpu_arch_major", lambda index=None: 12)  # no row: the default
    assert _dispatch.auto_order("softmax", torch.device("cuda", 0))[-1] == "torch"


def test_explicit_backend_error_names_the_backend_and_its_reason():
    x = randn(4, 8)
    if _dispatch.backend_for("softmax", "cuda").machine_reason(x.device) is not None:
        with pytest.raises(BackendUnavailable, match=r"backend 'cuda' is unavailable: .+"):
            fastattn.softmax(x, backend="cuda")
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' does not support this call: float64"):
        fastattn.softmax(x.double(), backend="triton")


def test_explain_lists_every_backend_with_its_reasons():
    x = randn(4, 8).double()
    why = _dispatch.explain("softmax", "softmax_fwd", x.device, x.dtype)
    assert set(why) == {"cuda", "triton", "torch"}
    assert why["torch"] == []
    assert why["triton"] and all(isinstance(r, str) and r for r in why["triton"])
    assert why["cuda"] and all(isinstance(r, str) and r for r in why["cuda"])
    assert list(why)[0] == "torch"  # the order "auto" asks on this device comes first


def test_a_kernel_probe_reason_reaches_the_error(monkeypatch):
    b = _dispatch.backend_for("attention", "triton")
    if b.machine_reason(torch.device("cpu")) is not None:
        pytest.skip(f"triton cannot run here: {b.machine_reason(torch.device('cpu'))}")
    monkeypatch.setattr(b.kernels, "unsupported_attention", lambda *a: "planted reason 1234")
    q = randn(1, 2, 4, 16)
    with pytest.raises(BackendUnavailable, match="planted reason 1234"):
        fastattn.attention(q, q, q, backend="triton")
    why = _dispatch.explain("attention", "attention_fwd", q.device, q.dtype, "unsupported_attention",
                            (q, q, q, None, None, False))
    assert why["triton"] == ["planted reason 1234"]


def test_missing_kernel_is_a_reason_not_a_crash():
    b = _dispatch.backend_for("softmax", "triton")
    if b.machine_reason(torch.device("cpu")) is not None:
        pytest.skip("triton cannot run here")
    assert b.reasons(torch.device("cpu"), "no_such_kernel", torch.float32) == ["it has no no_such_kernel kernel yet"]


def test_benchmark_provider_lookup_uses_the_dispatcher_objects():
    from fastattn.bench import core
    b = _dispatch.backend_for("softmax", "triton")
    if b.machine_reason(torch.device("cpu")) is None:
        assert core.kernel_module("softmax", "triton", torch.device("cpu")) is b.kernels


@pytest.mark.triton
def test_fullgraph_compile_on_the_triton_backend():
    """Resolution inside compiled code: no importlib, no graph break, the same result as eager."""
    x = randn(5, 33)
    logits = randn(3, 50, seed=1)
    q, k, v = randn(1, 2, 5, 16, seed=2), randn(1, 2, 7, 16, seed=3), randn(1, 2, 7, 16, seed=4)

    def f(x, logits, q, k, v):
        s = fastattn.softmax(x, temperature=0.7, backend="triton")
        tok = fastattn.sample(logits, top_k=5, seed=7, backend="triton")
        o = fastattn.attention(q, k, v, backend="triton")
        return s, tok, o

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="eager")(x, logits, q, k, v)
    want = f(x, logits, q, k, v)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


class _SyncTrap:
    """Makes every way a Python call path turns a tensor into a host value raise."""

    names = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__")

    def __enter__(self):
        self.saved = {n: torch.Tensor.__dict__.get(n) for n in self.names}
        for n in self.names:
            def trap(self_, *a, _n=n, **kw):
                raise AssertionError(f"host sync on the hot path: Tensor.{_n}")
            setattr(torch.Tensor, n, trap)
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            if f is None:
                delattr(torch.Tensor, n)
            else:
                setattr(torch.Tensor, n, f)
        return False


@pytest.mark.parametrize("tensor_params", [False, True])
def test_decode_and_sample_call_path_never_reads_a_tensor_on_the_host(monkeypatch, tensor_params):
    """On the CPU: the Python between the user and the kernels (checks, dispatch, seeds) makes no .item(),
    bool() or int() of a tensor. The kernels are stubbed, so only fastattn's own call path runs."""
    if _dispatch.backend_for("attention", "triton").machine_reason(torch.device("cpu")) is not None:
        pytest.skip("needs the triton kernel modules importable (for the stubs)")
    monkeypatch.setattr(_checks, "STRICT", False)
    att = _dispatch.backend_for("attention", "triton").kernels
    smp = _dispatch.backend_for("sampling", "triton").kernels
    monkeypatch.setattr(att, "decode_attention", lambda q, k, v, lens, scale: torch.empty_like(q))
    monkeypatch.setattr(smp, "sample", lambda logits, *a: torch.empty(logits.shape[0], dtype=torch.int64))
    b, hq, hkv, smax, d, vocab = 3, 4, 2, 9, 16, 40
    q = randn(b, hq, d)
    kc, vc = randn(b, hkv, smax, d, seed=1), randn(b, hkv, smax, d, seed=2)
    lens = torch.tensor([0, 5, 9], dtype=torch.int32)
    logits = randn(b, vocab, seed=3)
    if tensor_params:
        params = dict(temperature=torch.tensor([0.0, 0.5, 1.0]), top_k=torch.tensor([0, 3, 10]),
                      top_p=torch.tensor([1.0, 0.9, 0.5]), min_p=torch.tensor([0.0, 0.1, 0.0]),
                      seed=torch.tensor([1, 2, 3]))
    else:
        params = dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, seed=11)
    with _SyncTrap():
        o = fastattn.decode_attention(q, kc, vc, lens, backend="triton")
        tok = fastattn.sample(logits, backend="triton", **params)
    assert o.shape == q.shape and tok.shape == (b,)


def test_the_trap_catches_a_sync():
    with _SyncTrap():
        with pytest.raises(AssertionError, match="host sync"):
            bool(torch.tensor([1.0]).all())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_decode_step_plus_sample_makes_no_device_sync(backend):
    b, hq, hkv, smax, d, vocab = 4, 8, 2, 256, 128, 32000
    dev = "cuda"
    q = randn(b, hq, d, dtype=torch.float16, device=dev)
    kc = randn(b, hkv, smax, d, dtype=torch.float16, device=dev, seed=1)
    vc = randn(b, hkv, smax, d, dtype=torch.float16, device=dev, seed=2)
    lens = torch.tensor([1, 100, 256, 37], dtype=torch.int32, device=dev)
    logits = randn(b, vocab, device=dev, seed=3)
    temp = torch.tensor([0.0, 0.7, 1.0, 1.3], device=dev)
    top_p = torch.tensor([1.0, 0.9, 0.8, 0.95], device=dev)
    seeds = torch.arange(b, device=dev, dtype=torch.int64)
    def step():
        fastattn.decode_attention(q, kc, vc, lens, backend=backend)
        fastattn.sample(logits, temperature=temp, top_p=top_p, top_k=50, seed=seeds, backend=backend)

    step()  # the first call compiles kernels, which may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


class _OpLog:
    """Records every aten op (factory functions included) that runs on the way to a stubbed kernel."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        log = self.ops = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                log.append(str(func))
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        return False


def test_scalar_hot_paths_run_no_tensor_op(monkeypatch):
    """With Python-number parameters, an int seed, int32 lengths and a contiguous 2-D softmax input, fastattn's
    call path up to the kernel launch creates no tensor and runs no torch op at all (stubbed kernels)."""
    if _dispatch.backend_for("attention", "triton").machine_reason(torch.device("cpu")) is not None:
        pytest.skip("needs the triton kernel modules importable (for the stubs)")
    att = _dispatch.backend_for("attention", "triton").kernels
    smp = _dispatch.backend_for("sampling", "triton").kernels
    smx = _dispatch.backend_for("softmax", "triton").kernels
    q, kc = randn(2, 4, 16), randn(2, 2, 9, 16, seed=1)
    lens = torch.tensor([3, 9], dtype=torch.int32)
    logits, x = randn(2, 40, seed=2), randn(3, 17, seed=3)
    outs = dict(q=torch.empty_like(q), tok=torch.empty(2, dtype=torch.int64), f=torch.empty_like(logits),
                s=torch.empty_like(x))
    monkeypatch.setattr(att, "decode_attention", lambda *a: outs["q"])
    monkeypatch.setattr(smp, "sample", lambda *a: outs["tok"])
    monkeypatch.setattr(smp, "top_k_top_p_filter", lambda *a: outs["f"])
    monkeypatch.setattr(smx, "softmax_fwd", lambda *a: outs["s"])
    with _OpLog() as log:
        assert fastattn.decode_attention(q, kc, kc, lens, backend="triton") is outs["q"]
        assert fastattn.sample(logits, temperature=0.8, top_k=5, top_p=0.9, min_p=0.01, seed=3,
                               backend="triton") is outs["tok"]
        assert fastattn.top_k_top_p_filter(logits, top_k=5, top_p=0.9, backend="triton") is outs["f"]
        assert fastattn.softmax(x, temperature=0.5, backend="triton") is outs["s"]
    assert log.ops == []
    with _OpLog() as log:  # the log sees ops: the check above can fail
        fastattn.decode_attention(q, kc, kc, lens.long(), backend="triton")
    assert log.ops


@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=pytest.mark.cuda_kernel)])
def test_tensor_parameter_hot_paths_run_no_tensor_op(monkeypatch, backend):
    """With (B,) tensor parameters already on the device (float32 or another float dtype, int32 or int64 top_k,
    strided views, 0-dim tensors) and an int64 (B,) seed tensor, sample and top_k_top_p_filter run no torch op
    at all before the launch: the kernels clamp what they load (stubbed kernels)."""
    if _dispatch.backend_for("sampling", backend).machine_reason(torch.device("cpu")) is not None:
        pytest.skip(f"needs the {backend} sampling kernels loadable here (for the stubs)")
    monkeypatch.setattr(_checks, "STRICT", False)
    smp = _dispatch.backend_for("sampling", backend).kernels
    b = 3
    logits = randn(b, 40, seed=2)
    outs = dict(tok=torch.empty(b, dtype=torch.int64), f=torch.empty_like(logits))
    monkeypatch.setattr(smp, "sample", lambda *a: outs["tok"])
    monkeypatch.setattr(smp, "top_k_top_p_filter", lambda *a: outs["f"])
    sets = [
        dict(temperature=torch.tensor([-1.0, 0.5, 1.0]), top_k=torch.tensor([-1, 3, 10]),
             top_p=torch.tensor([0.0, 0.9, 2.0]), min_p=torch.tensor([0.0, 0.1, 1.5])),
        dict(temperature=torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64), top_k=torch.tensor([0, 3, 10],
             dtype=torch.int32), top_p=torch.rand(b, 2)[:, 1], min_p=torch.tensor(0.05, dtype=torch.bfloat16)),
        dict(temperature=torch.tensor(0.7, dtype=torch.float16), top_p=torch.tensor([0.5, 0.9, 1.0]), top_k=7),
    ]
    seeds = torch.tensor([1, 2, 3])
    for params in sets:
        with _OpLog() as log:
            assert fastattn.sample(logits, seed=seeds, backend=backend, **params) is outs["tok"]
            assert fastattn.sample(logits, seed=5, backend=backend, **params) is outs["tok"]
            assert fastattn.top_k_top_p_filter(logits, backend=backend, **params) is outs["f"]
        assert log.ops == [], f"{sorted(params)}: torch ops on the call path: {log.ops}"
    seeds32 = seeds.int()
    with _OpLog() as log:  # the log sees ops (an int32 seed tensor is converted): the check above can fail
        fastattn.sample(logits, seed=seeds32, backend=backend, **sets[0])
    assert log.ops


def test_host_benchmark_runs_and_restores_the_kernels():
    from fastattn.bench import host
    if _dispatch.backend_for("sampling", "triton").machine_reason(torch.device("cpu")) is not None:
        pytest.skip("triton cannot run here")
    before = {(c.family, c.fn): getattr(_dispatch.backend_for(c.family, "triton").kernels, c.fn)
              for c in host.cases(torch.device("cpu"))}
    rows = host.measure(torch.device("cpu"), "triton", n=5, rounds=1)
    assert [name for name, _ in rows] == [c.name for c in host.cases(torch.device("cpu"))]
    for _, r in rows:
        assert r["stub"] > 0 and r["bare op (stub run)"] > 0
    for (family, fn), f in before.items():
        assert getattr(_dispatch.backend_for(family, "triton").kernels, fn) is f
    assert "stub / bare" in host.report(rows, torch.device("cpu"), "triton")


def test_host_timing_loop_without_cuda_sync(monkeypatch):
    """bench.host and timing.host_time share timing.loop_time; sync=False never touches CUDA (CPU stubs)."""
    from fastattn.bench import timing
    calls = []

    def no_sync():
        raise AssertionError("synchronised")

    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    assert timing.loop_time(lambda: calls.append(1), 7, sync=False) > 0 and len(calls) == 7
    assert timing.host_time(lambda: sum(range(100)), rep_ms=2.0, sync=False) > 0
    with pytest.raises(AssertionError, match="synchronised"):
        timing.loop_time(lambda: None, 1, sync=True)


@pytest.mark.triton
def test_decode_launch_plan_gives_the_same_answers_as_the_checked_path():
    """The second call with the same metadata takes the kept plan: new values still give the reference's
    answers, and a call with other metadata (here a wrong shape) is checked afresh."""
    from fastattn import reference
    from fastattn.ops import attention as attn_ops
    from _utils import rel_err

    attn_ops._DECODE_PLANS.clear()
    for step in range(3):
        q = randn(2, 4, 16, seed=10 + step)
        kc, vc = randn(2, 2, 11, 16, seed=20 + step), randn(2, 2, 11, 16, seed=30 + step)
        lens = torch.tensor([step + 1, 11 - step], dtype=torch.int32)
        out = fastattn.decode_attention(q, kc, vc, lens, backend="triton")
        want = reference.decode_attention(q.double(), kc.double(), vc.double(), lens)
        assert rel_err(out, want) < 1e-5
        assert len(attn_ops._DECODE_PLANS) == 1
    with pytest.raises(ValueError, match="k_cache and v_cache must have the same"):
        fastattn.decode_attention(q, kc, vc[:, :, :5], lens, backend="triton")
    if _dispatch.backend_for("attention", "cuda").reasons(q.device, "decode_attention", q.dtype):
        with pytest.raises(BackendUnavailable):  # a plan for "triton" never serves another backend's call
            fastattn.decode_attention(q, kc, vc, lens, backend="cuda")


@pytest.mark.triton
def test_fullgraph_compile_with_grad_in_a_fresh_process():
    """In a process where no kernel module is loaded yet, the first compiled call loads it while tracing:
    that must not become a guard the trace itself invalidates (it did: "Unexpected type <class 'module'>")."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import os
        os.environ.setdefault("TRITON_INTERPRET", "1")
        import torch, fastattn
        x = torch.randn(4, 8, requires_grad=True)
        q = torch.randn(1, 2, 5, 16, requires_grad=True)
        def f(x, q):
            s = fastattn.softmax(x, temperature=0.7, backend="triton").square().sum()
            return s + fastattn.attention(q, q, q, causal=True, backend="triton").square().sum()
        loss = torch.compile(f, fullgraph=True, backend="aot_eager")(x, q)
        loss.backward()
        want_x, want_q = x.grad.clone(), q.grad.clone()
        x.grad = q.grad = None
        f(x, q).backward()
        torch.testing.assert_close(want_x, x.grad)
        torch.testing.assert_close(want_q, q.grad)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.cuda_kernel
def test_dropout_reaches_the_cuda_kernels():
    """The CUDA attention kernels take dropout (the probe has no reason against it) and draw the reference's
    stream: with the same torch seed, backend="cuda" equals backend="torch"."""
    q = randn(1, 2, 8, 32, dtype=torch.float16, seed=5)
    from fastattn import _cuda
    assert _cuda.unsupported_attention(q, q, q, None, None, False, 0.1) is None
    torch.manual_seed(3)
    got = fastattn.attention(q, q, q, dropout_p=0.1, backend="cuda")
    torch.manual_seed(3)
    want = fastattn.attention(q.double(), q.double(), q.double(), dropout_p=0.1, backend="torch")
    assert (got.double() - want).abs().max() <= 4e-3 * want.abs().max()
