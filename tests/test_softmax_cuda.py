"""CUDA softmax forward (row split included) and backward (csrc/softmax/) against float64 references.

Runs the csrc kernels: on a GPU through fastattn._C, on the CPU through the emulated build
(FASTATTN_CUDA_EMULATE=1, which conftest sets without a GPU; marker `cuda_kernel`, which must run, never skip,
there). The emulated binding fills every output with NaN before the kernel writes it, so an element a kernel
misses fails the comparison. Widths: 1, 7, 33, 1000, 5000 (every register scheme), 16385 and 65600 (wider than
registers: the two-pass kernels with many rows, the row split with few). Emulation is slow: shapes stay small;
larger ones are `gpu`.
"""
import pytest
import torch

import fastattn
from fastattn import _backend, _cuda, reference

from _utils import assert_rel, randn

pytestmark = pytest.mark.cuda_kernel

EMULATED = _backend.cuda_emulated()
DEV = "cpu" if EMULATED else "cuda"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# max |out - ref| / max |ref| against float64: fp32 math, one rounding to the output dtype.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
WIDTHS = (1, 7, 33, 1000, 5000)


def _id(d):
    return str(d).replace("torch.", "")


def _inv_t(rows, per_row, seed=5):
    if per_row:
        return 0.3 + 2.0 * torch.rand(rows, generator=torch.Generator().manual_seed(seed))
    return torch.full((rows,), 0.7)


def _args(inv_t, per_row):
    return (inv_t.to(DEV), 1.0) if per_row else (None, float(inv_t[0]))


def _ref_fwd(x, inv_t):
    return reference.softmax(x.double(), (1.0 / inv_t.double())[:, None], dim=-1)


def _ref_bwd(g, y, inv_t):
    return reference.softmax_backward(g.double(), y.double(), (1.0 / inv_t.double())[:, None], dim=-1)


def _fwd(x, inv_t, per_row):
    return _cuda.softmax_fwd(x.to(DEV), *_args(inv_t, per_row))


def _bwd(g, y, inv_t, per_row):
    return _cuda.softmax_bwd(g.to(DEV), y.to(DEV), *_args(inv_t, per_row))


@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_t", "row_t"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("n", WIDTHS)
def test_backward_matches_float64(n, dtype, per_row):
    rows = 5
    x = randn(rows, n, dtype=dtype, seed=n, scale=3.0)
    inv_t = _inv_t(rows, per_row)
    y = _fwd(x, inv_t, per_row)
    assert_rel(y, _ref_fwd(x, inv_t), TOL[dtype], "forward")
    g = randn(rows, n, dtype=dtype, seed=n + 1)
    dx = _bwd(g, y, inv_t, per_row)
    assert dx.dtype == dtype and dx.shape == (rows, n) and dx.is_contiguous()
    assert_rel(dx, _ref_bwd(g, y.cpu(), inv_t), TOL[dtype], "backward")


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("rows, n", [(2, 65600), (40, 16385)], ids=["split_65600", "two_pass_16385"])
def test_wide_rows(rows, n, dtype):
    """rows <= 32 and n >= 16384: the row split over several CTAs; more rows: one CTA per row, two passes."""
    x = randn(rows, n, dtype=dtype, seed=7, scale=4.0)
    x[0, 1000:30000] = float("-inf")  # a piece of the split row holds only -inf
    inv_t = _inv_t(rows, True)
    y = _fwd(x, inv_t, True)
    assert_rel(y, _ref_fwd(x, inv_t), TOL[dtype], "forward")
    g = randn(rows, n, dtype=dtype, seed=8)
    assert_rel(_bwd(g, y, inv_t, True), _ref_bwd(g, y.cpu(), inv_t), TOL[dtype], "backward")


@pytest.mark.parametrize("n", (33, 5000, 20000))
def test_special_rows(n):
    """All -inf forward row -> zeros (and a zero gradient); NaN in x or dy -> that row NaN, others intact."""
    x = randn(4, n, seed=n, scale=2.0)
    x[1] = float("-inf")
    x[2, n // 3] = float("nan")
    inv_t = _inv_t(4, True)
    y = _fwd(x, inv_t, True).cpu()
    assert torch.equal(y[1], torch.zeros(n))
    assert bool(torch.isnan(y[2]).all())
    assert_rel(y[[0, 3]], _ref_fwd(x[[0, 3]], inv_t[[0, 3]]), TOL[torch.float32])
    g = randn(4, n, seed=3)
    g[3, 0] = float("nan")
    dx = _bwd(g, y, inv_t, True).cpu()
    assert torch.equal(dx[1], torch.zeros(n))
    assert bool(torch.isnan(dx[2]).all()) and bool(torch.isnan(dx[3]).all())
    assert_rel(dx[0], _ref_bwd(g[:1], y[:1], inv_t[:1])[0], TOL[torch.float32])


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=_id)
@pytest.mark.parametrize("n", (7, 1000, 16390))
def test_backward_strided_rows(n, dtype):
    """dy, y and dx at different 16-byte phases (views base[:, k:]): the element path and the vector path."""
    base = randn(3, n + 3, dtype=dtype, seed=n)
    inv_t = _inv_t(3, False)
    y = _fwd(base[:, 1:n + 1].contiguous(), inv_t, False)
    ybase = torch.cat([torch.zeros(3, 2, dtype=dtype), y.cpu(), torch.zeros(3, 1, dtype=dtype)], 1).to(DEV)
    for ky, kg in ((2, 2), (2, 1), (2, 3)):
        yv = ybase[:, ky:ky + n]
        gv = base.to(DEV)[:, kg:kg + n]
        dx = _cuda.softmax_bwd(gv, yv, None, float(inv_t[0]))
        assert_rel(dx, _ref_bwd(gv.cpu(), yv.cpu(), inv_t), TOL[dtype], f"y at +{ky}, dy at +{kg}")


def test_autograd_any_dim_and_per_row_temperature():
    """fastattn.softmax(backend="cuda") along dim 0 of a 3-D tensor with a per-row temperature: both
    directions run the CUDA kernels (the op's backward keeps the forward's backend)."""
    x = randn(37, 3, 4, seed=11, scale=2.0).to(DEV).requires_grad_(True)
    t = (torch.rand(1, 3, 4, generator=torch.Generator().manual_seed(2)) + 0.5).to(DEV)
    y = fastattn.softmax(x, t, dim=0, backend="cuda")
    g = randn(37, 3, 4, seed=12).to(DEV)
    (dx,) = torch.autograd.grad(y, x, g)
    xd = x.detach().cpu().double().requires_grad_(True)
    yd = reference.softmax(xd, t.cpu().double(), dim=0)
    (dxd,) = torch.autograd.grad(yd, xd, g.cpu().double())
    assert_rel(y, yd, TOL[torch.float32], "forward")
    assert_rel(dx, dxd, TOL[torch.float32], "backward")


def test_bad_inputs():
    y = torch.randn(2, 8, device=DEV)
    with pytest.raises(RuntimeError, match="dy must match y"):
        torch.ops.fastattn.softmax_bwd_cuda(torch.randn(2, 7, device=DEV), y, None, 1.0)
    with pytest.raises(RuntimeError, match="inv_temperature"):
        torch.ops.fastattn.softmax_bwd_cuda(y, y, torch.ones(3, device=DEV), 1.0)
    with pytest.raises(RuntimeError, match="stride 1"):
        torch.ops.fastattn.softmax_bwd_cuda(y.t().contiguous().t(), y, None, 1.0)


def test_opcheck_backward():
    y = torch.softmax(randn(3, 300, seed=1), -1).to(DEV)
    g = randn(3, 300, seed=2).to(DEV)
    torch.library.opcheck(torch.ops.fastattn.softmax_bwd_cuda.default, (g, y, torch.rand(3, device=DEV) + 0.5, 1.0))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("rows, n", [(1, 152064), (4, 262144), (256, 32768), (1024, 4097)])
def test_gpu_large(rows, n, dtype):
    _check_large(rows, n, dtype)


def _check_large(rows, n, dtype):
    """Forward and backward of a wide (rows, n) input against float64, per-row temperature."""
    x = randn(rows, n, dtype=dtype, seed=rows, scale=3.0)
    inv_t = _inv_t(rows, True)
    y = _fwd(x, inv_t, True)
    assert_rel(y, _ref_fwd(x, inv_t), TOL[dtype], "forward")
    g = randn(rows, n, dtype=dtype, seed=rows + 1)
    assert_rel(_bwd(g, y, inv_t, True), _ref_bwd(g, y.cpu(), inv_t), TOL[dtype], "backward")


def test_torch_compile_forward_fullgraph():
    """fastattn.softmax(backend="cuda") under torch.compile (fullgraph). Not with requires_grad: compiling
    the differentiable call fails in dynamo's guards ("Unexpected type <class 'module'>") for the Triton
    backend too, a problem of fastattn/ops/softmax.py outside this kernel's scope."""
    x = randn(6, 700, seed=21).to(DEV)
    compiled = torch.compile(lambda x: fastattn.softmax(x * 1.5, 0.7, backend="cuda"), fullgraph=True,
                             backend="aot_eager")
    torch.testing.assert_close(compiled(x), fastattn.softmax(x * 1.5, 0.7, backend="cuda"), rtol=0, atol=0)


# ---- v3: rows in a thread-block cluster's distributed shared memory (sm_90; in the emulation when
# FASTATTN_CUDA_CLUSTER=1). The launcher picks 2 CTAs for n <= 32768, 4 for <= 65536, 8 beyond (csrc/softmax/
# softmax_fwd_kernel.cuh, cluster_plan). In the emulation each test also checks the launch took that kernel.
def _cluster_size(n):
    return 2 if n <= 32768 else 4 if n <= 65536 else 8


@pytest.fixture
def cluster_path(monkeypatch):
    """The cluster kernel for rows wider than registers; yields a check that the last launch used it."""
    monkeypatch.setenv("FASTATTN_CUDA_CLUSTER", "1")
    lib = None
    if EMULATED:
        import ctypes

        from fastattn import _emu

        _cuda.status()
        lib = ctypes.CDLL(str(_emu.build_extension()))
        lib.fastattn_emu_last_kernel.restype = ctypes.c_char_p

    def took(n, kernel="softmax_fwd_cluster_kernel"):
        if lib is not None:
            name = lib.fastattn_emu_last_kernel().decode()
            assert kernel in name and name.endswith(f"cluster {_cluster_size(n)}"), name

    return took


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("rows, n, per_row", [(5, 16385, True), (3, 40001, False), (1, 131077, True)],
                         ids=["c2_16385", "c4_40001", "c8_131077"])
def test_cluster_forward_matches_float64(rows, n, per_row, dtype, cluster_path):
    if dtype != torch.float32 and n <= 32768:
        n += 16386  # 16-bit rows up to 32768 stay in registers: the narrowest cluster row is 4 CTAs
    x = randn(rows, n, dtype=dtype, seed=n, scale=4.0)
    inv_t = _inv_t(rows, per_row)
    y = _fwd(x, inv_t, per_row)
    cluster_path(n)
    assert y.dtype == dtype and y.shape == (rows, n) and y.is_contiguous()
    assert_rel(y, _ref_fwd(x, inv_t), TOL[dtype], "forward")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=_id)
def test_cluster_forward_widest_rows(dtype, cluster_path):
    """128k+ rows: 152,064 (the B = 1 vocabulary case) and 262,144 (32,768 fp32 = 128 KB per CTA)."""
    for n in (152064, 262144):
        x = randn(1, n, dtype=dtype, seed=n, scale=5.0)
        inv_t = _inv_t(1, True)
        y = _fwd(x, inv_t, True)
        cluster_path(n)
        assert_rel(y, _ref_fwd(x, inv_t), TOL[dtype], f"n={n}")


def test_cluster_special_rows(cluster_path):
    """An all -inf row gives zeros; a NaN makes its row NaN; a CTA whose whole piece is -inf (and a last CTA
    whose piece is short) contributes exactly nothing; +inf gives NaN as torch does; other rows exact."""
    n = 70001  # 8 CTAs of 8752 elements, the last one 8737
    x = randn(6, n, seed=3, scale=3.0)
    x[1] = float("-inf")
    x[2, n - 5] = float("nan")
    x[3, : 3 * 8752] = float("-inf")  # ranks 0-2 hold only -inf
    x[4, 10] = float("inf")
    x[5, 12345] = 80.0  # one dominant element far from the others' max
    inv_t = _inv_t(6, True)
    y = _fwd(x, inv_t, True).cpu()
    cluster_path(n)
    assert torch.equal(y[1], torch.zeros(n))
    assert bool(torch.isnan(y[2]).all()) and bool(torch.isnan(y[4]).all())
    keep = [0, 3, 5]
    assert_rel(y[keep], _ref_fwd(x[keep], inv_t[keep]), TOL[torch.float32])
    assert torch.equal(y[3, : 3 * 8752], torch.zeros(3 * 8752))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=_id)
def test_cluster_strided_rows(dtype, cluster_path):
    """x and y at different 16-byte phases, and a row stride that moves each row's phase (element path,
    vector path, head/tail split changing from row to row)."""
    n = 20003 if dtype == torch.float32 else 40003  # wider than registers
    base = randn(4, n + 5, dtype=dtype, seed=n, scale=2.0)
    inv_t = _inv_t(4, False)
    for k in (0, 1, 3):
        xv = base.to(DEV)[:, k:k + n]
        y = _cuda.softmax_fwd(xv, None, float(inv_t[0]))
        cluster_path(n)
        assert_rel(y, _ref_fwd(xv.cpu(), inv_t), TOL[dtype], f"x at +{k}")
    flat = randn(4 * n + 3, dtype=dtype, seed=9).to(DEV)
    xv = flat.as_strided((3, n), (n + 1, 1), 1)  # row r starts at 1 + r * (n + 1): a new phase every row
    assert_rel(_cuda.softmax_fwd(xv, None, 0.9), _ref_fwd(xv.cpu(), torch.full((3,), 0.9)), TOL[dtype], "phases")


def test_cluster_any_dim_through_the_op(cluster_path):
    """fastattn.softmax(backend="cuda") along dim 0 (a non-contiguous dim, moved last by the op) of a
    (20000, 3) tensor, per-row temperature: the rows go through the cluster kernel."""
    x = randn(20000, 3, seed=31, scale=3.0).to(DEV)
    t = (torch.rand(1, 3, generator=torch.Generator().manual_seed(4)) + 0.5).to(DEV)
    y = fastattn.softmax(x, t, dim=0, backend="cuda")
    cluster_path(20000)
    assert_rel(y, reference.softmax(x.cpu().double(), t.cpu().double(), dim=0), TOL[torch.float32])


@pytest.mark.skipif(not EMULATED, reason="thread orders are the emulation's")
def test_cluster_same_bits_under_every_schedule(cluster_path):
    """Reductions in a fixed order (ranks in order, the same butterflies): every thread order gives the same
    bits, and the default (FASTATTN_CUDA_CLUSTER unset) path agrees within tolerance."""
    import ctypes

    from fastattn import _emu

    lib = _emu.load_settings(_emu.build_extension())
    x = randn(3, 33000, seed=12, scale=3.0)
    inv_t = _inv_t(3, True)
    outs = []
    before = lib.fastattn_emu_schedule()
    try:
        for schedule in ("forward", "reversed", "random", "warp_greedy"):
            assert lib.fastattn_emu_set_schedule(schedule.encode()) == 0
            outs.append(_fwd(x, inv_t, True))
            cluster_path(33000)
    finally:
        lib.fastattn_emu_set_schedule(before)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    assert_rel(outs[0], _ref_fwd(x, inv_t), TOL[torch.float32])


@pytest.mark.skipif(not EMULATED, reason="the emulated build takes the cluster kernel only when asked")
def test_cluster_not_taken_by_default(monkeypatch):
    import ctypes

    from fastattn import _emu

    monkeypatch.delenv("FASTATTN_CUDA_CLUSTER", raising=False)
    x = randn(2, 20000, seed=2)
    y = _fwd(x, _inv_t(2, False), False)
    lib = ctypes.CDLL(str(_emu.build_extension()))
    lib.fastattn_emu_last_kernel.restype = ctypes.c_char_p
    assert "cluster_kernel" not in lib.fastattn_emu_last_kernel().decode()
    assert_rel(y, _ref_fwd(x, _inv_t(2, False)), TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("rows, n, per_row", [(5, 16390, True), (3, 40001, False), (1, 131077, True)],
                         ids=["c2_16390", "c4_40001", "c8_131077"])
def test_cluster_backward_matches_float64(rows, n, per_row, dtype, cluster_path):
    """dx = y (dy - sum(dy y)) / T with dy and y of the row in the cluster's shared memory; a NaN in dy makes
    its row NaN; an all-zero y row (the forward of an all -inf row) gives zeros."""
    x = randn(rows, n, dtype=dtype, seed=n, scale=3.0)
    inv_t = _inv_t(rows, per_row)
    y = _fwd(x, inv_t, per_row)
    g = randn(rows, n, dtype=dtype, seed=n + 1)
    dx = _bwd(g, y, inv_t, per_row)
    cluster_path(n, "softmax_bwd_cluster_kernel")
    assert dx.dtype == dtype and dx.shape == (rows, n) and dx.is_contiguous()
    assert_rel(dx, _ref_bwd(g, y.cpu(), inv_t), TOL[dtype], "backward")
    if rows > 1:
        g[1, n // 2] = float("nan")
        y = y.cpu().clone()
        y[0] = 0
        dx = _bwd(g, y, inv_t, per_row).cpu()
        assert torch.equal(dx[0], torch.zeros(n, dtype=dtype)) and bool(torch.isnan(dx[1]).all())
        assert_rel(dx[2:], _ref_bwd(g[2:], y[2:], inv_t[2:]), TOL[dtype], "other rows")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=_id)
def test_cluster_backward_strided_rows(dtype, cluster_path):
    """dy, y and dx at different 16-byte phases (element path) and row strides that move the phase."""
    n = 20003
    base = randn(3, n + 3, dtype=dtype, seed=n)
    inv_t = _inv_t(3, False)
    y = _fwd(base[:, 1:n + 1].contiguous(), inv_t, False)
    ybase = torch.cat([torch.zeros(3, 2, dtype=dtype), y.cpu(), torch.zeros(3, 1, dtype=dtype)], 1).to(DEV)
    for ky, kg in ((2, 2), (2, 1)):
        yv = ybase[:, ky:ky + n]
        gv = base.to(DEV)[:, kg:kg + n]
        dx = _cuda.softmax_bwd(gv, yv, None, float(inv_t[0]))
        cluster_path(n, "softmax_bwd_cluster_kernel")
        assert_rel(dx, _ref_bwd(gv.cpu(), yv.cpu(), inv_t), TOL[dtype], f"y at +{ky}, dy at +{kg}")


def test_cluster_autograd_along_dim0(cluster_path):
    """fastattn.softmax(backend="cuda") forward and backward along dim 0 of a (20000, 3) tensor."""
    x = randn(20000, 3, seed=41, scale=2.0).to(DEV).requires_grad_(True)
    t = (torch.rand(1, 3, generator=torch.Generator().manual_seed(6)) + 0.5).to(DEV)
    y = fastattn.softmax(x, t, dim=0, backend="cuda")
    g = randn(20000, 3, seed=42).to(DEV)
    (dx,) = torch.autograd.grad(y, x, g)
    cluster_path(20000, "softmax_bwd_cluster_kernel")
    xd = x.detach().cpu().double().requires_grad_(True)
    yd = reference.softmax(xd, t.cpu().double(), dim=0)
    (dxd,) = torch.autograd.grad(yd, xd, g.cpu().double())
    assert_rel(y, yd, TOL[torch.float32], "forward")
    assert_rel(dx, dxd, TOL[torch.float32], "backward")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("rows, n", [(1, 152064), (4, 262144), (64, 131072), (300, 40000)])
def test_gpu_cluster_large(rows, n, dtype, cluster_path):
    _check_large(rows, n, dtype)
