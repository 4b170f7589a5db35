"""The compiled extension fastattn._C: loading, op schema, fake kernels, and the CUDA softmax kernel.

Markers (skips happen centrally in conftest): `cuda_ext` needs fastattn._C built and loaded, or its emulated
build; `cuda_kernel` runs the kernels: on a GPU with fastattn._C, or on the CPU with the emulated build
(FASTATTN_CUDA_EMULATE=1, which conftest sets when there is no GPU), on tensors of device DEV; `gpu` and
`native_cuda_ext` mark what only the nvcc build on a GPU can check (streams, no CPU kernel). The kernel tests
compare against a float64 reference with the same tolerances on both builds. Nothing here touches the GPU at
import or collection.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastattn import _backend, _cuda
from _utils import assert_rel, rel_err

OP = "fastattn::softmax_fwd_cuda"
SCHEMA = "fastattn::softmax_fwd_cuda(Tensor x, Tensor? inv_temperature, float inv_temp) -> Tensor"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Budget on max |y - ref| / max |ref| against float64: fp32 math, one rounding to the output dtype.
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
DT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

cuda_ext = pytest.mark.cuda_ext
EMULATED = _backend.cuda_emulated()
DEV = "cpu" if EMULATED else "cuda"  # where the kernels take their tensors
KERNEL_KEY = "CPU" if EMULATED else "CUDA"  # the dispatch key the binding registers the kernels for
OTHER = "meta" if EMULATED else "cpu"  # a device the kernels do not take


def softmax_op(x, inv_temperature, inv_temp):
    return torch.ops.fastattn.softmax_fwd_cuda(x, inv_temperature, inv_temp)


def softmax_op_on_kernel_key(x, inv_temperature, inv_temp):
    keys = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, KERNEL_KEY))
    return torch.ops.fastattn.softmax_fwd_cuda.default.redispatch(keys, x, inv_temperature, inv_temp)


def reference(x: torch.Tensor, inv_t: torch.Tensor) -> torch.Tensor:
    """float64 softmax(x * inv_t) over the last dim (inv_t: (rows,)); an all -inf row gives zeros."""
    z = x.double() * inv_t.double()[:, None]
    y = torch.softmax(z, dim=-1)
    all_neg_inf = (z == float("-inf")).all(dim=-1, keepdim=True)
    return torch.where(all_neg_inf, torch.zeros_like(y), y)


def make_input(rows, n, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, n, generator=g) * scale).to(dtype)


def make_inv_t(rows, per_row, seed=1):
    """(rows,) float32 inverse temperatures, and the argument pair (inv_temperature, inv_temp) for the op."""
    if per_row:
        g = torch.Generator().manual_seed(seed)
        inv_t = 0.25 + 1.75 * torch.rand(rows, generator=g)  # temperatures in [0.57, 4]
        return inv_t, (inv_t.to(DEV), 1.0)
    return torch.full((rows,), 0.7), (None, 0.7)


# ---------------------------------------------------------------------------------------------------------------
# Loader (no extension needed)
# ---------------------------------------------------------------------------------------------------------------
def test_status_reason_when_not_built(monkeypatch):
    def fail(name, *a, **k):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(importlib, "import_module", fail)
    assert _cuda._load() == "extension not built (FASTATTN_BUILD_CUDA=0 or no nvcc at install)"


def test_status_reason_on_broken_build(monkeypatch):
    def fail(name, *a, **k):
        raise ImportError("_C.abi3.so: undefined symbol: _ZN3c105ErrorC2E")

    monkeypatch.setattr(importlib, "import_module", fail)
    why = _cuda._load()
    assert isinstance(why, str) and "undefined symbol" in why and "rebuild" in why


def test_generated_instantiations_are_current():
    generator = Path(__file__).resolve().parents[1] / "csrc" / "generate.py"
    if not generator.is_file():
        pytest.skip("no csrc/ here (installed package)")
    run = subprocess.run([sys.executable, str(generator), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, f"run `python csrc/generate.py`:\n{run.stderr}"


# ---------------------------------------------------------------------------------------------------------------
# Registration, schema and fake kernels (extension built; no GPU needed)
# ---------------------------------------------------------------------------------------------------------------
@cuda_ext
def test_status_true():
    assert _cuda.status() is True


@cuda_ext
def test_schema():
    assert str(torch.ops.fastattn.softmax_fwd_cuda.default._schema) == SCHEMA


@cuda_ext
@pytest.mark.parametrize("key", [KERNEL_KEY, "Meta"])
def test_kernels_registered(key):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(OP, key)


@cuda_ext
def test_kernel_for_one_device_only():
    """The nvcc build registers a CUDA kernel and no CPU one; the emulated build the reverse."""
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(OP, key) == (key == KERNEL_KEY), key
    assert _backend.cuda_build() == ("emulated" if EMULATED else "nvcc")


@pytest.mark.native_cuda_ext
def test_cpu_tensor_has_no_kernel():
    with pytest.raises(NotImplementedError, match="CPU"):  # NotImplementedError is a RuntimeError
        softmax_op(torch.randn(2, 3), None, 1.0)


@cuda_ext
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT.get)
@pytest.mark.parametrize("shape", [(3, 5), (1, 262144), (0, 7), (4, 0)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_t", "row_t"])
def test_meta(shape, dtype, per_row):
    x = torch.empty(shape, dtype=dtype, device="meta")
    inv = torch.empty(shape[0], device="meta") if per_row else None
    y = softmax_op(x, inv, 0.5)
    assert (y.shape, y.dtype, y.device, y.stride()) == (x.shape, dtype, x.device, torch.empty(shape).stride())


@cuda_ext
def test_meta_through_wrapper_on_strided_input():
    """The fake kernel, like the CUDA one, returns a new contiguous tensor whatever x's row stride."""
    x = torch.empty(4, 10, dtype=torch.float16, device="meta")[:, 1:]
    y = _cuda.softmax_fwd(x, None, 2.0)
    assert y.shape == (4, 9) and y.is_contiguous()


@cuda_ext
def test_fake_tensor_mode_cuda_device():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(8, 1000, dtype=torch.bfloat16, device="cuda")
        y = softmax_op(x, torch.empty(8, device="cuda"), 1.0)
    assert isinstance(y, FakeTensor)
    assert (y.shape, y.dtype, y.device.type) == ((8, 1000), torch.bfloat16, "cuda")


@cuda_ext
@pytest.mark.parametrize(
    "x, inv",
    [
        (torch.empty(5, dtype=torch.float32, device="meta"), None),
        (torch.empty(2, 5, dtype=torch.int64, device="meta"), None),
        (torch.empty(2, 5, dtype=torch.float32, device="meta"), torch.empty(3, device="meta")),
    ],
    ids=["1d", "int64", "inv_t_len"],
)
def test_fake_rejects_bad_inputs(x, inv):
    with pytest.raises(RuntimeError, match="softmax_fwd_cuda"):
        softmax_op(x, inv, 1.0)


@cuda_ext
def test_make_fx_traces_the_op():
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(x, inv):
        return softmax_op(x, inv, 1.0) * 2

    gm = make_fx(f, tracing_mode="fake")(torch.randn(3, 7), torch.ones(3))
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.fastattn.softmax_fwd_cuda.default in targets


# ---------------------------------------------------------------------------------------------------------------
# The CUDA kernel against float64 (GPU)
# ---------------------------------------------------------------------------------------------------------------
WIDTHS = (1, 7, 1000, 4097, 32769, 262144)
# Each side of every kernel-choice boundary (softmax_fwd_kernel.cuh): 32/128/512/1024/2048/4096 chunks of 16 B.
BOUNDARY_WIDTHS = sorted({chunks * per_chunk + d for chunks in (32, 128, 512, 1024, 2048, 4096)
                          for per_chunk in (4, 8) for d in (0, 1)})


@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_t", "row_t"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT.get)
@pytest.mark.parametrize("rows", (1, 3, 64), ids=lambda r: f"rows{r}")
@pytest.mark.parametrize("n", WIDTHS, ids=lambda n: f"n{n}")
@pytest.mark.cuda_kernel
def test_softmax_matches_float64(n, rows, dtype, per_row):
    x = make_input(rows, n, dtype, seed=n + rows)
    inv_t, args = make_inv_t(rows, per_row)
    y = softmax_op(x.to(DEV), *args)
    assert (y.shape, y.dtype, y.device.type) == ((rows, n), dtype, DEV) and y.is_contiguous()
    assert_rel(y, reference(x, inv_t), TOL[dtype])


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT.get)
@pytest.mark.parametrize("n", BOUNDARY_WIDTHS, ids=lambda n: f"n{n}")
@pytest.mark.cuda_kernel
def test_kernel_choice_boundaries(n, dtype):
    x = make_input(5, n, dtype, seed=n)
    inv_t, args = make_inv_t(5, per_row=True)
    assert_rel(softmax_op(x.to(DEV), *args), reference(x, inv_t), TOL[dtype])


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT.get)
@pytest.mark.parametrize("n", (7, 1000, 4097, 32769), ids=lambda n: f"n{n}")
@pytest.mark.cuda_kernel
def test_row_strided_input(n, dtype):
    """x = base[:, 1:]: rows start at every alignment relative to y (scalar and vector chunk paths mix)."""
    base = make_input(6, n + 1, dtype, seed=n)
    x = base.to(DEV)[:, 1:]
    inv_t, args = make_inv_t(6, per_row=False)
    assert_rel(softmax_op(x, *args), reference(base[:, 1:], inv_t), TOL[dtype])


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT.get)
@pytest.mark.parametrize("n", (7, 1000, 32769), ids=lambda n: f"n{n}")
@pytest.mark.cuda_kernel
def test_masked_entries_and_all_neg_inf_row(n, dtype):
    """-inf entries give exact zeros; a row of all -inf gives zeros, not NaN; other rows are unaffected."""
    x = make_input(4, n, dtype, seed=n)
    g = torch.Generator().manual_seed(7)
    x[torch.rand(4, n, generator=g) < 0.3] = float("-inf")
    x[:, 0] = 0.0  # every row keeps a finite entry, except row 2:
    x[2] = float("-inf")
    inv_t, args = make_inv_t(4, per_row=True)
    y = softmax_op(x.to(DEV), *args).cpu()
    assert torch.equal(y[2], torch.zeros(n, dtype=dtype))
    assert bool((y[torch.isinf(x)] == 0).all())
    assert_rel(y, reference(x, inv_t), TOL[dtype])


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT.get)
@pytest.mark.parametrize("n", (1, 7, 1000, 32769), ids=lambda n: f"n{n}")
@pytest.mark.cuda_kernel
def test_nan_row_is_nan_and_contained(n, dtype):
    x = make_input(5, n, dtype, seed=n)
    x[3, n // 2] = float("nan")
    inv_t, args = make_inv_t(5, per_row=False)
    y = softmax_op(x.to(DEV), *args).cpu()
    assert bool(torch.isnan(y[3]).all()), "a NaN must make its whole row NaN"
    keep = [0, 1, 2, 4]
    assert not bool(torch.isnan(y[keep]).any()), "a NaN row leaked into other rows"
    assert rel_err(y[keep], reference(x[keep], inv_t[keep])) <= TOL[dtype]


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)], ids=str)
@pytest.mark.cuda_kernel
def test_empty(shape):
    y = softmax_op(torch.empty(shape, device=DEV), None, 1.0)
    assert y.shape == shape and y.device.type == DEV


@pytest.mark.cuda_kernel
@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda: (torch.randn(16, device=DEV), None), "must be 2-D"),
        (lambda: (torch.randn(2, 3, 4, device=DEV), None), "must be 2-D"),
        (lambda: (torch.ones(2, 8, dtype=torch.int64, device=DEV), None), "float32, float16 or bfloat16"),
        (lambda: (torch.randn(2, 8, dtype=torch.float64, device=DEV), None), "float32, float16 or bfloat16"),
        (lambda: (torch.randn(8, 2, device=DEV).t(), None), "stride 1"),
        (lambda: (torch.randn(2, 8, device=DEV), torch.ones(3, device=DEV)), "inv_temperature"),
        (lambda: (torch.randn(2, 8, device=DEV), torch.ones(2, device=DEV, dtype=torch.float16)), "float32"),
        (lambda: (torch.randn(2, 8, device=DEV), torch.ones(2, device=OTHER)), "inv_temperature must be on"),
        (lambda: (torch.randn(2, 8, device=OTHER), None), f"x must be a {'CPU' if EMULATED else 'CUDA'}"),
    ],
    ids=["1d", "3d", "int64", "float64", "transposed", "inv_t_len", "inv_t_dtype", "inv_t_other_device",
         "x_other_device"],
)
def test_bad_inputs_raise(make_args, message):
    x, inv = make_args()
    with pytest.raises(RuntimeError, match=message):
        # Straight to the kernel's device key: a tensor on another device must reach the binding's own check
        # (the dispatcher alone would send a meta tensor to the fake kernel).
        softmax_op_on_kernel_key(x, inv, 1.0)


@pytest.mark.cuda_kernel
def test_wrapper():
    x = make_input(5, 333, torch.float16)
    inv_t, (inv, inv_temp) = make_inv_t(5, per_row=True)
    y = _cuda.softmax_fwd(x.to(DEV), inv, inv_temp)
    assert y.device.type == DEV
    assert_rel(y, reference(x, inv_t), TOL[torch.float16])


@pytest.mark.gpu
@pytest.mark.native_cuda_ext
def test_wrapper_and_stream():
    """_cuda.softmax_fwd runs on the current stream; the result is ready after that stream syncs."""
    x = make_input(64, 4097, torch.bfloat16)
    inv_t, _ = make_inv_t(64, per_row=False)
    s = torch.cuda.Stream()
    xc = x.to(DEV)
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = _cuda.softmax_fwd(xc, None, 0.7)
    s.synchronize()
    assert_rel(y, reference(x, inv_t), TOL[torch.bfloat16])


@pytest.mark.cuda_kernel
@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_t", "row_t"])
def test_opcheck(per_row):
    x = make_input(3, 1000, torch.float16).to(DEV)
    _, (inv, inv_temp) = make_inv_t(3, per_row)
    torch.library.opcheck(torch.ops.fastattn.softmax_fwd_cuda.default, (x, inv, inv_temp))


@pytest.mark.cuda_kernel
def test_torch_compile_fullgraph():
    x = make_input(8, 4097, torch.float32).to(DEV)

    def f(x):
        return softmax_op(x * 2, None, 0.5)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# The emulated build only: every schedule gives the same bits, and AddressSanitizer finds nothing
# ---------------------------------------------------------------------------------------------------------------
emulated_only = pytest.mark.skipif(not EMULATED, reason="checks the emulated build (FASTATTN_CUDA_EMULATE=1)")
SCHEDULES = ("forward", "reversed", "random", "warp_greedy")
# One width per kernel of softmax_fwd_launch for fp32 (warp/K=1, warp/K=4, 128/256/512/1024-thread CTAs,
# two-pass) and bf16's two-pass.
PATH_WIDTHS = [(100, torch.float32), (500, torch.float32), (2000, torch.float32), (4000, torch.float32),
               (8000, torch.float32), (16000, torch.float32), (20000, torch.float32), (40000, torch.bfloat16)]


@emulated_only
@pytest.mark.cuda_kernel
@pytest.mark.parametrize("n, dtype", PATH_WIDTHS, ids=lambda v: str(v).replace("torch.", ""))
def test_emulated_schedules_agree_bitwise(n, dtype):
    """The kernels' reductions have a fixed order, so every thread order must give identical bits; a race
    (a missing barrier, a reused buffer) would make some schedule differ."""
    from fastattn import _emu

    lib = _emu.load_settings(_emu.build_extension())
    x = make_input(3, n, dtype, seed=n)
    inv_t, args = make_inv_t(3, per_row=True)
    outs = {}
    try:
        for s in SCHEDULES:
            assert lib.fastattn_emu_set_schedule(s.encode()) == 0
            outs[s] = softmax_op(x, *args)
    finally:
        lib.fastattn_emu_set_schedule(b"rotate")
    for s in SCHEDULES[1:]:
        assert torch.equal(outs[s], outs["forward"]), s
    assert_rel(outs["forward"], reference(x, inv_t), TOL[dtype])


@emulated_only
@pytest.mark.cuda_kernel
@pytest.mark.slow  # builds a second variant of the whole extension (~40 s of CPU the first time)
def test_emulated_build_under_asan():
    """The ASan variant of the whole emulated build (FASTATTN_EMU_ASAN=1) runs every kernel path, on exactly
    sized and strided inputs, without a report (a subprocess: libasan must be preloaded)."""
    from fastattn import _emu

    code = (
        "import torch, fastattn\n"
        "from fastattn import _cuda\n"
        "assert _cuda.status() is True, _cuda.status()\n"
        "for n in (1, 7, 100, 500, 2000, 4000, 8000, 16000, 20000):\n"
        "    for dt in (torch.float32, torch.float16, torch.bfloat16):\n"
        "        base = torch.randn(3, n + 1).to(dt)\n"
        "        for x in (base[:, :n].contiguous(), base[:, 1:]):\n"
        "            y = torch.ops.fastattn.softmax_fwd_cuda(x, torch.ones(3), 1.0)\n"
        "            ref = torch.softmax(x.double(), -1)\n"
        "            assert (y.double() - ref).abs().max() <= 1e-2 * ref.abs().max(), (n, dt)\n"
        "print('asan-ok')\n")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), FASTATTN_CUDA_EMULATE="1", FASTATTN_EMU_ASAN="1",
               LD_PRELOAD=_emu.asan_preload(), ASAN_OPTIONS="detect_leaks=0", PYTHONMALLOC="malloc")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0 and "asan-ok" in run.stdout, run.stderr[-5000:]
