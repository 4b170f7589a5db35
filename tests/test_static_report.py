"""The static kernel report (`python -m fastattn.bench --static`): parsers, the checks, and planted kernels that
prove the checks can fail. Compiles with nvcc and Triton's ptxas; needs no GPU.

The report runs in a subprocess: the test session imported triton under TRITON_INTERPRET=1 (tests/conftest.py),
and compiling needs the real JIT. Planted kernels compile into a fresh cache each time, so their checks really
run; the full report uses the default cache (keyed by source hashes) so that a re-run compiles only what changed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastattn.bench import sass, static

ROOT = Path(__file__).resolve().parents[1]
PLANTED = ROOT / "tests" / "static_planted"


def _env(**extra):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _run(args, timeout=900, **env):
    r = subprocess.run([sys.executable, "-m", "fastattn.bench", "--static", *args], cwd=ROOT, env=_env(**env),
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def _need_nvcc():
    # CUDA compiles are part of CI here: a missing toolkit is a failure, not a skip.
    tools = static.find_tools()
    assert tools.nvcc, "nvcc not found: the static report's CUDA half cannot run (set CUDA_HOME)"
    assert tools.nvdisasm, "nvdisasm not found (it ships in the triton wheel)"


# ------------------------------------------------------------------------------------------------------------
# Parsers and the occupancy formula (no compiler needed)
# ------------------------------------------------------------------------------------------------------------

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90a'
ptxas info    : Function properties for _Z3fooPf
    40 bytes stack frame, 40 bytes spill stores, 80 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 40 bytes cumulative stack size, 1024 bytes smem
ptxas info    : Compiling entry function '_Z3barPf' for 'sm_90a'
ptxas info    : Function properties for _Z3barPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers
"""


def test_parse_ptxas():
    info = sass.parse_ptxas(PTXAS_LOG)
    assert info["_Z3fooPf"] == {"arch": "sm_90a", "regs": 255, "spill_stores": 40, "spill_loads": 80, "stack": 40,
                                "smem": 1024, "barriers": 1}
    assert info["_Z3barPf"]["regs"] == 32 and info["_Z3barPf"]["spill_stores"] == 0


SASS = """\
\t.section\t.text.k,"ax",@progbits
k:
.text.k:
\t//## File "/x/k.py", line 10
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
\t//## File "/x/k.py", line 12
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
.L_x_1:
        /*0020*/                   MUFU.EX2 R2, R3 ;
        /*0030*/              @P0 BRA `(.L_x_1) ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/              @!P1 BRA `(.L_x_0) ;
        /*0060*/                   EXIT ;
.L_x_2:
        /*0070*/                   BRA `(.L_x_2);
        /*0080*/                   NOP;
"""


def test_parse_sass_loops_and_mix():
    f = sass.parse_sass(SASS)["k"]
    assert [i.op for i in f.instrs][:3] == ["MOV", "HMMA.16816.F32.BF16", "MUFU.EX2"]
    assert f.instrs[1].line == 12 and f.instrs[0].line == 10
    # two loops: [0x10, 0x50] (outer, 5 instructions) and [0x20, 0x30] nested in it; the idle loop is not one
    assert [(lp.start, lp.end, lp.size, lp.own, lp.depth) for lp in f.loops] == [(0x10, 0x50, 5, 3, 0),
                                                                                 (0x20, 0x30, 2, 2, 1)]
    mix = sass.instruction_mix(f.instrs)
    assert mix["HMMA"] == 1 and mix["tensor"] == 1 and mix["MUFU"] == 1 and mix["BAR"] == 1
    assert mix["total"] == 8  # NOP not counted


SASS_STUB = """\
\t.section\t.text.w,"ax",@progbits
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/              @!P0 BRA `(.L_x_5) ;
.L_x_9:
        /*0020*/                   FADD R2, R2, R3 ;
        /*0030*/                   EXIT ;
.L_x_5:
        /*0040*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], RZ ;
        /*0050*/              @!P0 BRA `(.L_x_5) ;
        /*0060*/                   BRA `(.L_x_9) ;
"""


def test_out_of_line_slow_path_is_not_a_loop():
    """An mbarrier wait retried out of line after EXIT jumps back into the main path: that backward branch closes
    no loop (its target does not dominate it); only the retry spin itself is one."""
    f = sass.parse_sass(SASS_STUB)["w"]
    assert [(lp.start, lp.end, lp.size) for lp in f.loops] == [(0x40, 0x50, 2)]
    assert f.outside_loops == 5


def test_occupancy():
    # 255 registers x 256 threads: 8 warps of 8192 registers fill the 64K file -> 1 block
    assert sass.occupancy(255, 16384, 256)[:2] == (1, 8)
    # 32 registers, 128 threads: limited by 2048 threads per SM -> 16 blocks
    assert sass.occupancy(32, 0, 128)[:2] == (16, 64)
    # 64 registers x 1024 threads: 2048 registers a warp, 8 warps per sub-partition -> 1 block of 32 warps
    assert sass.occupancy(64, 256, 1024)[:2] == (1, 32)
    # shared memory: 100 KB blocks -> 2 fit in 228 KB (with 1 KB reserved each)
    assert sass.occupancy(32, 100 * 1024, 128) == (2, 8, "shared memory")
    # too much shared memory, or too many registers for the block: does not fit
    assert sass.occupancy(32, 230 * 1024, 128)[0] == 0
    assert sass.occupancy(255, 0, 1024)[0] == 0


def test_checks_flag_spills_and_missing_tensor_cores():
    rep = static.Report(static.Tools())
    ok = static.KernelRow("cuda", "k_ok", "csrc/a.cu", "sm_90a", threads=128, regs=32, mix={"tensor": 0, "total": 9})
    spill = static.KernelRow("cuda", "k_spill", "csrc/b.cu", "sm_90a", threads=128, regs=32, spill_stores=8,
                             mix={"total": 9})
    mm = static.KernelRow("triton", "_attn_fwd_kernel", "attention", "sm_90a", threads=256, regs=128,
                          matmul=True, mix={"tensor": 0, "total": 99})
    tspill = static.KernelRow("triton", "_sampling_kernel", "sample", "sm_90a", threads=256, regs=255,
                              spill_loads=80, mix={"total": 99})
    rep.rows = [ok, spill, mm, tspill]
    static._check(rep, strict_triton=False)
    assert len(rep.failures) == 2
    assert "k_spill" in rep.failures[0] and "spills 8 B" in rep.failures[0]
    assert "_attn_fwd_kernel" in rep.failures[1] and "tensor-core" in rep.failures[1]
    assert len(rep.warnings) == 1 and "_sampling_kernel" in rep.warnings[0]
    rep2 = static.Report(static.Tools(), rows=[tspill])
    static._check(rep2, strict_triton=True)
    assert len(rep2.failures) == 1


def test_every_generated_instantiation_is_a_source():
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    srcs = {p.resolve() for p in static.cuda_sources()}
    assert set(generate.expected_files()) <= srcs


# ------------------------------------------------------------------------------------------------------------
# Planted kernels: each check can fail
# ------------------------------------------------------------------------------------------------------------

def test_planted_spill_fails(tmp_path):
    _need_nvcc()
    rc, out, err = _run(["--no-triton", "--no-csrc", "--arch", "90", "--no-save", "--cuda-src",
                         str(PLANTED / "spill.cu")], FASTATTN_STATIC_CACHE=str(tmp_path))
    assert rc == 1, out + err
    assert "planted_spill_kernel" in out and "spills" in out and "FAILED" in out


def test_planted_matmul_without_tensor_cores_fails(tmp_path):
    _need_nvcc()
    rc, out, err = _run(["--no-triton", "--no-csrc", "--arch", "90", "--no-save", "--cuda-src",
                         str(PLANTED / "attention")], FASTATTN_STATIC_CACHE=str(tmp_path))
    assert rc == 1, out + err
    assert "planted_attn_fwd_kernel" in out and "without any tensor-core instruction" in out


def test_planted_clean_kernel_passes(tmp_path):
    _need_nvcc()
    rc, out, err = _run(["--no-triton", "--no-csrc", "--arch", "90,80", "--no-save", "--cuda-src",
                         str(PLANTED / "clean.cu")], FASTATTN_STATIC_CACHE=str(tmp_path))
    assert rc == 0, out + err
    assert "planted_clean_kernel" in out and "FAILED" not in out
    line = next(ln for ln in out.splitlines() if "planted_clean_kernel" in ln and "sm_90a" in ln)
    assert "| 256 | 8 | 64 |" in line  # 256 threads (launch bounds), 8 blocks and 64 warps per SM


def test_missing_nvcc_degrades_with_a_message(tmp_path):
    rc, out, err = _run(["--no-triton", "--no-save"], FASTATTN_NVCC=str(tmp_path / "no-nvcc"),
                        FASTATTN_STATIC_CACHE=str(tmp_path))
    assert rc == 0, out + err
    assert "nvcc not found" in out and "nvcc not found" in err


# ------------------------------------------------------------------------------------------------------------
# The report itself, on the current kernels
# ------------------------------------------------------------------------------------------------------------

def test_static_report_runs(tmp_path):
    """CUDA for sm_90a and sm_80, the Triton headline configurations for sm_90a: passes its checks (no CUDA spill,
    tensor cores in every 16-bit attention kernel) and prints the issue-time estimates."""
    _need_nvcc()
    rc, out, err = _run(["--triton-arch", "90", "--out", str(tmp_path)])
    assert rc == 0, out[-4000:] + err[-4000:]
    md = (tmp_path / "report.md").read_text()
    assert md in out  # printed and written
    assert "STATIC FIGURES FROM A COMPILE, NOT GPU MEASUREMENTS" in md
    for kernel in ("softmax_fwd_regs_kernel<float, 1024, 4>", "softmax_fwd_two_pass_kernel<__nv_bfloat16, 1024, 2>",
                   "_sampling_kernel", "_softmax_fwd_online_kernel", "_attn_fwd_kernel", "_attn_bwd_dq_kernel",
                   "_attn_bwd_dkdv_kernel", "_decode_split_kernel"):
        assert kernel in md, kernel
    est = [ln for ln in md.splitlines() if ln.startswith("| sample fp32 128×131072")]
    assert est and ("ISSUE-BOUND" in est[-1] or "memory-bound" in est[-1] or "near" in est[-1])
    assert "NOT FOUND" not in md  # every declared hot loop was found in the SASS
    # CUDA sampling v2 (issue 11's budget): issue time at most half of 3x the read-once floor at 128 x 128k
    for dt in ("fp32", "bf16"):
        cu = [ln.split("|") for ln in md.splitlines() if ln.startswith(f"| CUDA sample {dt} 128×131072")]
        assert len(cu) == 1, dt
        issue, floor = float(cu[0][7].replace(",", "")), float(cu[0][8].replace(",", ""))
        assert 0 < issue <= 1.5 * floor, (dt, issue, floor)
    assert [ln for ln in md.splitlines() if ln.startswith("| CUDA sample fp32 1×32768") and "pieces per row" in ln]
    traffic = [ln for ln in md.splitlines() if ln.startswith("| softmax fwd fp32 4096×131072 | _softmax_fwd_online")]
    assert len(traffic) == 2 and "rows in flight" in traffic[-1]  # the estimate row and the DRAM traffic model
    assert (tmp_path / "report.json").is_file() and (tmp_path / "kernels.csv").is_file()


@pytest.mark.slow
def test_static_report_full(tmp_path):
    """Every benchmark shape, backward and decode variants, sm_90a and sm_80 (long: minutes per kernel on 2 cores)."""
    _need_nvcc()
    rc, out, err = _run(["--full", "--out", str(tmp_path)], timeout=3600)
    assert rc == 0, out[-4000:] + err[-4000:]


def test_source_markers(tmp_path):
    skip = tmp_path / "emulation_only.cu"
    skip.write_text("// fastattn-static: skip\nthis is not CUDA and must not reach nvcc\n")
    assert static._markers(skip) == {"skip"}
    rows = static.compile_cuda(skip, 90, static.Tools(nvcc="/nonexistent"), static.Cache(False), "")
    assert [r.name for r in rows] == ["(no kernels)"] and not rows[0].error
    mm = tmp_path / "m.cu"
    mm.write_text("// fastattn-static: no-matmul\n")
    assert static._markers(mm) == {"no-matmul"}


def test_missing_triton_degrades_with_a_message():
    code = ("import sys; sys.modules['triton'] = None\n"
            "from fastattn.bench.static import main\n"
            "sys.exit(main(['--static', '--no-cuda', '--no-save']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "triton cannot be imported" in r.stdout and "triton MISSING" in r.stdout


def test_cuda_loop_and_site_markers(tmp_path):
    """CUDA loops named from "fastattn-static-loop" comments through nvdisasm's inline chains; code under a
    "fastattn-static-site" line or block counted by site (what an estimate leaves out)."""
    src = tmp_path / "k.cuh"
    src.write_text("\n".join([
        "// 1",
        "__global__ void k() {",                                      # 2
        "  for (int r = 0; r < n; ++r) {  // fastattn-static-loop: rows",  # 3
        "    step();",                                                # 4
        "    if (bad) {  // fastattn-static-site: fallback",          # 5
        "      slow();",                                              # 6
        "    }",                                                      # 7
        "  }",                                                        # 8
        "}",                                                          # 9
        "__device__ void step() {",                                   # 10
        "  for (int i = 0; i < 4; ++i) acc += x[i];  // fastattn-static-loop: inner",  # 11
        "}",                                                          # 12
    ]) + "\n")
    loops, sites = static._cuda_marks(str(src))
    assert ("rows", 3, 8) in loops and ("inner", 11, 11) in loops
    assert sites == {5: "fallback", 6: "fallback", 7: "fallback"}
    f = str(src)
    sass_text = f"""\t.section\t.text._Z1kv,"ax",@progbits
\t//## File "{f}", line 2
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
\t//## File "{f}", line 4
        /*0010*/                   IADD3 R4, R4, 0x1, RZ ;
.L_x_1:
\t//## File "{f}", line 11 inlined at "{f}", line 4
\t//## File "{f}", line 4
        /*0020*/                   FADD R2, R2, R3 ;
        /*0030*/                   ISETP.GE.AND P1, PT, R2, R3, PT ;
        /*0040*/               @P1 BRA `(.L_x_1) ;
\t//## File "{f}", line 6 inlined at "{f}", line 6
\t//## File "{f}", line 6
        /*0050*/                   FMUL R5, R5, R5 ;
        /*0060*/                   FMUL R6, R6, R6 ;
\t//## File "{f}", line 3
        /*0070*/                   ISETP.GE.AND P0, PT, R4, R7, PT ;
        /*0080*/               @P0 BRA `(.L_x_0) ;
        /*0090*/                   EXIT ;
"""
    fn = sass.parse_sass(sass_text)["_Z1kv"]
    assert fn.instrs[2].chain == ((f, 11), (f, 4)) and fn.instrs[2].line == 4
    named = {lp.py: lp for lp in static._name_cuda_loops(fn)}
    assert set(named) == {"rows", "inner"}
    assert named["inner"].own == 3 and named["inner"].sites == {}
    assert named["rows"].sites == {"fallback": 2} and named["rows"].own == 5
