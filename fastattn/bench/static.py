"""``python -m fastattn.bench --static``: a kernel report from compiling, with no GPU.

STATIC FIGURES FROM A COMPILE, NOT MEASUREMENTS: nothing here runs a kernel.

1. CUDA: every ``csrc/**/*.cu`` (the generated instantiations of csrc/generate.py included, so new kernels are
   picked up without a change here) is compiled with ``nvcc -cubin -Xptxas -v`` for sm_90a and sm_80, with the
   flags setup.py uses (-O3 -lineinfo, no fast-math).
2. Triton: the public launchers of fastattn.triton run on ``meta`` tensors of the benchmark's headline shapes
   under a stand-in driver that reports an sm_90 GPU (132 SMs), and again one that reports sm_80 (the attention
   configs depend on the arch). The launch stops where Triton would compile:
   the signature, constexprs, alignment attributes (``tt.divisibility``) and options recorded there are exactly
   what a real launch would compile with (integers equal to 1 become constexprs, 16-divisible pointers and
   integers are marked). They are then compiled with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` and 80.
   Attention uses the fixed config of FASTATTN_TRITON_AUTOTUNE=0 (the first config autotuning would try on that
   arch).

Per kernel: registers, spill stores/loads (ptxas -v), shared memory, occupancy on an H100/H200 (blocks and warps
per SM from registers, shared memory and threads, as cuda_occupancy.h), and the SASS instruction mix (HMMA/HGMMA,
LDSM, LDGSTS/UTMALDG, BAR, MUFU, ..., total) from nvdisasm (shipped in the Triton wheel).

Issue time vs memory floor (headline shapes): for each Triton kernel the loops that stream the data ("hot
loops", declared per case below and found in the SASS through line info) give
    issue time = (instructions per iteration x iterations, summed over the hot loops, + the instructions
                  outside every loop once) x warps x programs per SM / (4 issue slots x clock)
                 (programs per SM = ceil(programs / SMs))
against the memory floor = bytes that must move / copy bandwidth. A kernel whose issue time exceeds the floor
cannot reach it whatever the memory system does: "issue-bound". (Issue 15's target is issue time <= half the
floor.) Both are predictions for an H200 (132 SMs, 1.98 GHz, 4.25 TB/s copy).

Checks (exit status 1): a CUDA kernel spills (ptxas -v: spill stores or loads > 0), a matmul kernel (CUDA:
path or name matches MATMUL_PATTERN; Triton: attention with 16-bit inputs) has no tensor-core instruction, or a
compile fails. Triton spills are reported and listed, but do not fail (``--strict-triton`` makes them fail).

Results are cached by source hash (FASTATTN_STATIC_CACHE, default ~/.cache/fastattn/static), so a re-run
without source changes compiles nothing. FASTATTN_STATIC_NVCC_FLAGS adds nvcc flags (e.g. -std=c++20). Missing
nvcc or Triton: that half is skipped with a message. A .cu file may carry "fastattn-static: skip / matmul /
no-matmul" (see MATMUL_PATTERN)."""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import sass
from .sass import H200, Card

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "static"
CACHE_VERSION = "2"
# CUDA kernels that must use the tensor cores: by source path or (demangled) kernel name. A .cu file can say
# otherwise in a comment: "fastattn-static: matmul" (every kernel in it), "fastattn-static: no-matmul" (none), or
# "fastattn-static: skip" (not compiled here, e.g. a file only for the CPU emulation build).
MATMUL_PATTERN = re.compile(r"(^|/)attention/|attn|attention|gemm|matmul|mma", re.IGNORECASE)
# Kernels of a matmul file that are elementwise or reductions by design, named for what they do: the attention
# backward's preprocess (delta = rowsum(dO * O)) and flash-decoding's log-sum-exp combine of the splits.
NO_MATMUL_KERNEL = re.compile(r"_(delta|combine)_kernel\b")
_MARKER = re.compile(r"fastattn-static:\s*(skip|matmul|no-matmul)\b")
NVCC_FLAGS = ["-O3", "-lineinfo", "-std=c++17"]
ARCHS = {90: "sm_90a", 80: "sm_80"}


# ----------------------------------------------------------------------------------------------------------
# Tools
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Tools:
    nvcc: Optional[str] = None
    nvdisasm: Optional[str] = None
    cuobjdump: Optional[str] = None
    cuda_include: Optional[str] = None
    triton: Optional[str] = None     # version, or None
    notes: List[str] = field(default_factory=list)


def _triton_bin() -> Optional[Path]:
    try:
        import importlib.util
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "backends" / "nvidia" / "bin"
    return p if p.is_dir() else None


def find_tools() -> Tools:
    t = Tools()
    nvcc = os.environ.get("FASTATTN_NVCC")
    if nvcc is None:
        for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
            if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
                nvcc = os.path.join(home, "bin", "nvcc")
                break
        nvcc = nvcc or shutil.which("nvcc")
    if nvcc and os.path.isfile(nvcc) and os.access(nvcc, os.X_OK):
        t.nvcc = nvcc
        home = Path(os.path.realpath(nvcc)).parent.parent
        if (home / "include" / "cuda_runtime.h").is_file():
            t.cuda_include = str(home / "include")
    else:
        t.notes.append("nvcc not found (set CUDA_HOME or put nvcc on PATH): the CUDA kernels are not compiled")
    tb = _triton_bin()
    for name in ("nvdisasm", "cuobjdump"):
        cand = [tb / name] if tb else []
        if t.nvcc:
            cand.append(Path(t.nvcc).parent / name)
        found = next((str(c) for c in cand if c.is_file()), None) or shutil.which(name)
        setattr(t, name, found)
    if t.nvdisasm is None:
        t.notes.append("nvdisasm not found (it ships in the triton wheel, or pip install nvidia-cuda-nvdisasm): "
                       "no instruction mix")
    try:
        import triton
        t.triton = triton.__version__
    except Exception as e:  # noqa: BLE001 - any import failure means: no Triton half
        t.notes.append(f"triton cannot be imported ({type(e).__name__}: {e}): the Triton kernels are not compiled")
    return t


# ----------------------------------------------------------------------------------------------------------
# Result rows
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LoopInfo:
    size: int               # instructions in the loop, nested loops included
    own: int                # not counting nested loops: what one iteration of this loop issues itself
    depth: int
    py: Optional[str] = None  # "function: loop header" of the Python loop it compiles (Triton), when known


@dataclass
class KernelRow:
    kind: str               # "cuda" or "triton"
    name: str               # demangled / Triton kernel name
    source: str             # csrc file, or the Triton case
    arch: str               # sm_90a / sm_80
    config: str = ""        # Triton: warps, stages, constexprs of note
    threads: int = 0        # block size (CUDA: from __launch_bounds__, 0 if unknown)
    regs: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    smem: int = 0
    blocks_per_sm: Optional[int] = None
    warps_per_sm: Optional[int] = None
    occ_limiter: str = ""
    mix: Dict[str, int] = field(default_factory=dict)
    loops: List[LoopInfo] = field(default_factory=list)
    matmul: bool = False
    outside_loops: int = 0  # instructions in no loop
    compile_s: float = 0.0
    cached: bool = False
    error: str = ""
    key: str = ""           # cache key (also identifies identical Triton specialisations)

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    @property
    def longest_loop(self) -> int:
        return max((lp.own for lp in self.loops), default=0)


@dataclass
class Estimate:
    case: str
    kernel: str
    programs: int
    warps: int
    hot: List[Tuple[str, int, int]]   # (python loop, instructions per iteration, iterations per program)
    instr_per_program: int
    issue_us: float
    floor_us: float
    floor_what: str
    dram_bytes: Optional[float] = None    # modelled DRAM traffic (L2 reuse), where the case has a model
    elements: Optional[float] = None
    traffic_note: str = ""

    @property
    def dram_us(self) -> Optional[float]:
        return None if self.dram_bytes is None else self.dram_bytes / (H200.copy_tbps * 1e12) * 1e6

    @property
    def ratio(self) -> float:
        return self.issue_us / self.floor_us if self.floor_us else math.inf

    @property
    def verdict(self) -> str:
        if max(self.issue_us, self.floor_us) < 2.0:
            return "tiny: launch-bound either way"
        if self.ratio > 1.0:
            return "ISSUE-BOUND"
        if self.ratio > 0.5:
            return "near (issue > floor/2)"
        return "memory-bound"


# ----------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------


class Cache:
    def __init__(self, enabled: bool = True):
        d = os.environ.get("FASTATTN_STATIC_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastattn", "static")
        self.dir = Path(d)
        self.enabled = enabled

    def get(self, key: str) -> Optional[list]:
        p = self.dir / f"{key}.json"
        if not self.enabled or not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, value) -> None:
        if not self.enabled:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(value))
            tmp.replace(self.dir / f"{key}.json")
        except OSError:
            pass


def _rows_to_json(rows: List[KernelRow]) -> list:
    return [asdict(r) for r in rows]


def _rows_from_json(data: list) -> List[KernelRow]:
    out = []
    for d in data:
        d = dict(d)
        d["loops"] = [LoopInfo(**lp) for lp in d.get("loops", [])]
        out.append(KernelRow(**d))
    return out


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


@functools.lru_cache(maxsize=None)
def _tool_version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


# ----------------------------------------------------------------------------------------------------------
# Disassembly
# ----------------------------------------------------------------------------------------------------------


def disassemble(cubin: Path, tools: Tools) -> Dict[str, sass.Function]:
    if not tools.nvdisasm:
        return {}
    r = subprocess.run([tools.nvdisasm, "-c", "-gi", str(cubin)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:  # e.g. a cubin newer than this nvdisasm
        raise RuntimeError(f"nvdisasm failed on {cubin.name}: {r.stderr.strip()[:300]}")
    return sass.parse_sass(r.stdout)


def _max_threads(cubin: Path, tools: Tools) -> Dict[str, int]:
    """{mangled name: EIATTR_MAX_THREADS} (the __launch_bounds__ of CUDA kernels) from cuobjdump -elf."""
    if not tools.cuobjdump:
        return {}
    r = subprocess.run([tools.cuobjdump, "-elf", str(cubin)], capture_output=True, text=True, timeout=600)
    out: Dict[str, int] = {}
    cur = None
    want = False
    for line in r.stdout.splitlines():
        m = re.match(r"^\.nv\.info\.(\S+)", line.strip())
        if m:
            cur, want = m.group(1), False
            continue
        if cur and "EIATTR_MAX_THREADS" in line:
            want = True
            continue
        if cur and want and line.strip().startswith("Value:"):
            vals = [int(v, 16) for v in line.split(":", 1)[1].split()]
            out[cur] = math.prod(vals) if vals else 0
            want = False
    return out


def _demangle(names: Sequence[str]) -> Dict[str, str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    r = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    got = r.stdout.splitlines()
    return {n: (g if g else n) for n, g in zip(names, got)} if len(got) == len(names) else {n: n for n in names}


def _short_cuda_name(demangled: str) -> str:
    """fastattn::softmax_detail::softmax_fwd_regs_kernel<float, 1024, 4>(fastattn::SoftmaxFwdParams) ->
    softmax_fwd_regs_kernel<float, 1024, 4>"""
    s = demangled.split("(")[0]
    base = s.split("<")[0].split("::")[-1]
    return base + (s[s.index("<"):] if "<" in s else "")


# ----------------------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------------------


def cuda_sources(extra: Sequence[Path] = (), csrc: bool = True) -> List[Path]:
    """Every .cu under csrc/ (instantiations included; unless csrc is False), plus any extra files or folders."""
    files = sorted(CSRC.glob("**/*.cu")) if (csrc and CSRC.is_dir()) else []
    for e in extra:
        e = Path(e)
        files += sorted(e.glob("**/*.cu")) if e.is_dir() else [e]
    return files


def _csrc_headers_hash() -> str:
    parts = []
    for p in sorted(CSRC.glob("**/*")):
        if p.suffix in (".h", ".cuh", ".hpp", ".inl") and p.is_file():
            parts += [str(p.relative_to(CSRC)), p.read_bytes()]
    return _sha(*parts)


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def _markers(src: Path) -> set:
    try:
        return set(_MARKER.findall(src.read_text(errors="replace")))
    except OSError:
        return set()


def compile_cuda(src: Path, arch: int, tools: Tools, cache: Cache, headers: str) -> List[KernelRow]:
    name = ARCHS[arch]
    marks = _markers(src)
    if "skip" in marks:
        return [KernelRow("cuda", "(no kernels)", _rel(src), name, error="")]
    extra = os.environ.get("FASTATTN_STATIC_NVCC_FLAGS", "").split()   # e.g. "-std=c++20 -DFOO"
    flags = NVCC_FLAGS + extra + [f"-arch={name}", "-cubin", "-Xptxas", "-v", "-I", str(CSRC), "-I",
                                  str(src.parent)]
    key = _sha("cuda", CACHE_VERSION, src.read_bytes(), headers, flags, _tool_version(tools.nvcc),
               tools.nvdisasm and _tool_version(tools.nvdisasm))
    hit = cache.get(key)
    if hit is not None:
        rows = _rows_from_json(hit)
        for r in rows:
            r.cached, r.source = True, _rel(src)
        return rows
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastattn-static-") as tmp:
        cubin = Path(tmp) / (src.stem + ".cubin")
        r = subprocess.run([tools.nvcc, *flags, "-o", str(cubin), str(src)], capture_output=True, text=True,
                           timeout=900)
        dt = time.monotonic() - t0
        if r.returncode != 0:
            err = (r.stderr or r.stdout).strip().splitlines()
            msg = next((ln for ln in err if "error" in ln), err[-1] if err else "nvcc failed")
            return [KernelRow("cuda", "(compile failed)", _rel(src), name, error=msg[:300], compile_s=dt)]
        info = parse_ptxas(r.stderr + r.stdout)
        funcs = disassemble(cubin, tools)
        threads = _max_threads(cubin, tools)
    names = sorted(set(info) | set(funcs))
    dem = _demangle(names)
    rows = []
    for mangled in names:
        pi = info.get(mangled, {})
        fn = funcs.get(mangled)
        short = _short_cuda_name(dem[mangled])
        row = KernelRow("cuda", short, _rel(src), name, threads=threads.get(mangled, 0),
                        regs=pi.get("regs", 0), spill_stores=pi.get("spill_stores", 0),
                        spill_loads=pi.get("spill_loads", 0), stack=pi.get("stack", 0), smem=pi.get("smem", 0),
                        matmul=("matmul" in marks or (MATMUL_PATTERN.search(_rel(src)) is not None
                                                       or MATMUL_PATTERN.search(short) is not None))
                        and "no-matmul" not in marks and NO_MATMUL_KERNEL.search(short) is None,
                        compile_s=dt, key=key)
        if fn is not None:
            row.mix = sass.instruction_mix(fn.instrs)
            row.loops = [LoopInfo(lp.size, lp.own, lp.depth) for lp in fn.loops]
            row.outside_loops = fn.outside_loops
        rows.append(row)
    if not rows:
        rows = [KernelRow("cuda", "(no kernels)", _rel(src), name, compile_s=dt, key=key)]
    cache.put(key, _rows_to_json(rows))
    return rows


def parse_ptxas(log: str) -> Dict[str, dict]:
    return sass.parse_ptxas(log)


# ----------------------------------------------------------------------------------------------------------
# Triton: capture the launches the launchers make, then compile them
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Launch:
    fn: object                  # the JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict               # the launch-level options (num_warps, num_stages, ...)
    grid: Tuple[int, int, int]
    args: dict                  # every bound argument by name (constexprs included)

    @property
    def name(self) -> str:
        return self.fn.fn.__name__

    @property
    def programs(self) -> int:
        return math.prod(self.grid)


_OPTION_KEYS = ("num_warps", "num_ctas", "num_stages", "maxnreg", "enable_fp_fusion", "launch_cooperative_grid",
                "launch_pdl", "debug")


class _FakeDriver:
    """Just enough of a Triton driver for JITFunction.run to bind and specialise arguments."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        import torch
        return torch.device("meta")


@contextlib.contextmanager
def capture_launches(sms: int = H200.sms, arch: int = 90):
    """Inside: Triton launches are recorded (never compiled or run) into the yielded list; the SM count the
    fastattn launchers ask for is ``sms``, and the GPU they see is of compute capability ``arch`` (the
    attention configs depend on it)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    import fastattn.triton.attention.configs as A
    import fastattn.triton.softmax as SM

    launches: List[Launch] = []
    pending: dict = {}
    orig_run, orig_compile = JITFunction.run, JITFunction._do_compile

    def run(self, *args, grid, warmup, **kwargs):
        pending["call"] = (args, kwargs, grid)
        return orig_run(self, *args, grid=grid, warmup=True, **kwargs)

    def do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        args, kwargs, grid = pending.pop("call")
        bound = dict(zip(self.arg_names, args))
        bound.update({k: v for k, v in kwargs.items() if k in self.arg_names})
        for p in self.params:
            if p.name not in bound and p.has_default:
                bound[p.name] = p.default
        g = grid(bound) if callable(grid) else grid
        g = tuple(int(x) for x in g) + (1,) * (3 - len(g))
        opts = {k: getattr(options, k) for k in _OPTION_KEYS if getattr(options, k, None) is not None}
        launches.append(Launch(self, dict(signature), dict(constexprs), dict(attrs), opts, g, bound))
        return None

    saved = driver._active
    patches = [(SM, "_sm_count", lambda device: sms), (A, "_sm_count", lambda index: sms),
               (torch.cuda, "current_device", lambda: 0)]
    old = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    old_env = os.environ.get("FASTATTN_TRITON_AUTOTUNE")
    try:
        driver.set_active(_FakeDriver(GPUTarget("cuda", arch, 32)))
        JITFunction.run, JITFunction._do_compile = run, do_compile
        for obj, name, val in patches:
            setattr(obj, name, val)
        os.environ["FASTATTN_TRITON_AUTOTUNE"] = "0"   # the fixed config: what autotuning tries first
        yield launches
    finally:
        JITFunction.run, JITFunction._do_compile = orig_run, orig_compile
        driver._active = saved
        for obj, name, val in old:
            setattr(obj, name, val)
        if old_env is None:
            os.environ.pop("FASTATTN_TRITON_AUTOTUNE", None)
        else:
            os.environ["FASTATTN_TRITON_AUTOTUNE"] = old_env


# Python loops of the Triton sources, for naming SASS loops through line info.
@dataclass(frozen=True)
class PyLoop:
    func: str
    header: str
    file: str
    lo: int
    hi: int

    @property
    def label(self) -> str:
        return f"{self.func}: {self.header}"


@functools.lru_cache(maxsize=None)
def _py_loops(path: str) -> Tuple[PyLoop, ...]:
    import ast
    text = Path(path).read_text()
    lines = text.splitlines()
    out = []
    tree = ast.parse(text)
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        if not any("jit" in ast.unparse(d) for d in node.decorator_list):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, (ast.For, ast.While)):
                header = lines[sub.lineno - 1].strip().rstrip(":")
                out.append(PyLoop(node.name, header, path, sub.lineno, sub.end_lineno))
    return tuple(sorted(out, key=lambda p: p.lo))


def _name_loops(fn: sass.Function) -> List[LoopInfo]:
    """Each SASS loop, named after the innermost Python loop that most of its own instructions come from."""
    out = []
    for lp in fn.loops:
        votes: Dict[PyLoop, int] = {}
        for ins in fn.in_loop(lp, own=True):
            if ins.file is None or ins.line is None:
                continue
            if not ins.file.endswith(".py") or not os.path.isfile(ins.file):
                continue
            inner = [p for p in _py_loops(ins.file) if p.lo <= ins.line <= p.hi]
            if inner:
                best = min(inner, key=lambda p: p.hi - p.lo)
                votes[best] = votes.get(best, 0) + 1
        py = max(votes, key=votes.get).label if votes else None
        out.append(LoopInfo(lp.size, lp.own, lp.depth, py))
    return out


def _launch_key(launch: Launch, arch: int) -> str:
    import triton
    src_file = Path(launch.fn.fn.__code__.co_filename)
    return _sha("triton", CACHE_VERSION, triton.__version__, launch.fn.cache_key, src_file.read_bytes(),
                sorted(launch.signature.items()), sorted((str(k), repr(v)) for k, v in launch.constexprs.items()),
                sorted((str(k), repr(v)) for k, v in launch.attrs.items()), sorted(launch.options.items()), arch)


def _config_str(launch: Launch) -> str:
    keep = []
    for p in launch.fn.params:
        val = launch.args.get(p.name)
        if p.is_constexpr and not isinstance(val, float):
            keep.append(f"{p.name}={int(val) if isinstance(val, bool) else val}")
    return f"w{launch.options.get('num_warps')} s{launch.options.get('num_stages')} " + " ".join(keep)


def compile_triton(launch: Launch, arch: int, tools: Tools, cache: Cache, matmul: bool) -> KernelRow:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name = ARCHS[arch]
    key = _launch_key(launch, arch)
    hit = cache.get(key)
    if hit is not None:
        row = _rows_from_json(hit)[0]
        row.cached, row.matmul = True, matmul
        return row
    row = KernelRow("triton", launch.name, "", name, config=_config_str(launch),
                    threads=32 * launch.options.get("num_warps", 4), matmul=matmul, key=key)
    t0 = time.monotonic()
    buf = io.StringIO()
    old_dump, old_dir = knobs.nvidia.dump_ptxas_log, knobs.cache.dir
    tmp = tempfile.mkdtemp(prefix="fastattn-static-triton-")
    try:
        knobs.nvidia.dump_ptxas_log = True   # Triton runs ptxas -v itself; its log is printed to stdout
        knobs.cache.dir = tmp                # a fresh cache: ptxas runs, so the log exists
        with contextlib.redirect_stdout(buf):
            k = triton.compile(ASTSource(launch.fn, launch.signature, launch.constexprs, launch.attrs),
                               target=GPUTarget("cuda", arch, 32), options=dict(launch.options))
        row.compile_s = time.monotonic() - t0
        info = next(iter(parse_ptxas(buf.getvalue()).values()), {})
        row.regs = info.get("regs", 0)
        row.spill_stores, row.spill_loads = info.get("spill_stores", 0), info.get("spill_loads", 0)
        row.stack = info.get("stack", 0)
        row.smem = int(k.metadata.shared)
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(k.asm["cubin"])
        funcs = disassemble(cubin, tools)
        fn = funcs.get(k.metadata.name) or next(iter(funcs.values()), None)
        if fn is not None:
            row.mix = sass.instruction_mix(fn.instrs)
            row.loops = _name_loops(fn)
            row.outside_loops = fn.outside_loops
    except Exception as e:  # noqa: BLE001 - a compile failure is a row (and a failed check), not a crash
        row.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        row.compile_s = time.monotonic() - t0
        return row
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.cache.dir = old_dump, old_dir
        shutil.rmtree(tmp, ignore_errors=True)
    cache.put(key, _rows_to_json([row]))
    return row


# ----------------------------------------------------------------------------------------------------------
# Triton cases: the benchmark's shapes, the launcher calls, and what the hot loops are
# ----------------------------------------------------------------------------------------------------------

# A hot loop: (jit function, text of its loop header, iterations per program of each compiled copy in address
# order, or one number for every copy). The function inlines into the kernel, possibly more than once.
HotLoop = Tuple[str, str, Union[int, List[int]]]


@dataclass
class TritonCase:
    name: str
    section: str
    call: Callable[[], None]                     # runs the launcher on meta tensors
    floor_bytes: float                           # bytes that must move (the memory floor)
    hot: Dict[str, Callable[[dict], List[HotLoop]]] = field(default_factory=dict)   # by kernel name
    matmul: Tuple[str, ...] = ()                 # kernels that must use the tensor cores
    headline: bool = False                       # in the default (CI) report; others only with --full
    flops: float = 0.0
    # modelled DRAM traffic by kernel name: (launch, row) -> (bytes, elements, how), for kernels whose
    # re-reads may or may not hit L2
    traffic: Dict[str, Callable] = field(default_factory=dict)


def _meta(shape, dtype):
    import torch
    return torch.empty(shape, dtype=dtype, device="meta")


def _dt(name):
    import torch
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def sampling_cases(full: bool) -> List[TritonCase]:
    from . import sampling as bench
    import torch

    def make(b, v, dt):
        def call():
            from fastattn.triton import sampling as S
            x = _meta((b, v), _dt(dt))
            seeds = _meta((b,), torch.int64)
            S.sample(x, None, bench.TEMPERATURE, None, bench.TOP_K, None, bench.TOP_P, None, 0.0, seeds)
        # top-k 50 (+ top-p), sampling v2: the fast kernel (FAST) streams pass 1 (max on the raw logits) over
        # the full tiles, then gathers only the candidate lanes (~k of BLOCK; counted at the CAP lanes its
        # (CAP, TJ) steps always issue) twice, TJ tiles a step; the rest in registers. The v1 kernel launched
        # after it (RESUME) runs its passes only for rows the fast one flagged (wide ties / lane collisions
        # at the threshold: none on the benchmark's random rows), so its loops count 0 iterations and its
        # straight-line code once.
        hot = {"_sampling_kernel": lambda a: [
            ("_sampling_kernel", "for i in range(0, n_full)", a["V"] // a["BLOCK"]),
            ("_gather_candidates", "for ta in range(0, n_tiles, TJ)", -(-a["n_tiles"] // a["TJ"])),
            ("_gather_candidates", "for tb in range(0, n_tiles, TJ)", -(-a["n_tiles"] // a["TJ"])),
        ] if a["FAST"] else [
            ("_sampling_kernel", "for i in range(0, n_tiles)", 0),
            ("_search", "for t in range(0, n_tiles)", 0),
        ]}
        headline = (b, v) in ((128, 131072), (1, 32768))
        return TritonCase(f"sample {dt} {b}×{v} top-k {bench.TOP_K} top-p {bench.TOP_P}", "sampling", call,
                          b * v * _dt(dt).itemsize, hot, headline=headline)
    shapes = bench.SHAPES if full else [(128, 131072), (1, 32768)]
    return [make(b, v, "fp32") for b, v in shapes]


def _online_traffic(launch: Launch, row: KernelRow, card: Card = H200):
    """DRAM bytes of the online softmax: one read, one write, and the part of the second (reversed) read that
    misses L2. The kernel keeps its last tile in registers, so pass 2 re-reads n - BLOCK_N elements of a row.
    They stay in L2 from pass 1 to pass 2 only if the rows in flight fit: the rows resident at once (SMs x
    blocks per SM) times the re-read bytes of a row against the L2; the missing fraction is modelled as
    1 - L2 / working set (LRU, the newest bytes re-read first; the writes competing for L2 are ignored)."""
    esize = int(launch.signature["x_ptr"].lstrip("*fpbf")) // 8
    n = launch.args["n_cols"]
    reread = max(0, n - launch.args["BLOCK_N"])
    rows = launch.grid[0]
    resident = min(rows, card.sms * max(1, row.blocks_per_sm or 1))
    ws = resident * reread * esize
    miss = max(0.0, 1.0 - card.l2_bytes / ws) if ws else 0.0
    how = (f"{resident} rows in flight x {reread * esize / 1024:.0f} KB re-read = {ws / 2**20:.1f} MB vs "
           f"{card.l2_bytes / 2**20:.0f} MB L2: {miss:.0%} of the re-read from DRAM")
    return rows * esize * (2.0 * n + miss * reread), rows * n, how


def softmax_cases(full: bool) -> List[TritonCase]:
    from . import softmax as bench

    def make(rows, n, dt, headline):
        def call():
            from fastattn.triton import softmax as S
            S.softmax_fwd(_meta((rows, n), _dt(dt)), None, 1.0 / bench.TEMPERATURE)
        hot = {
            # pass 1 over all tiles but the last, the last tile (outside the loops, once), pass 2 over the others
            "_softmax_fwd_online_kernel": lambda a: [
                ("_softmax_fwd_online_kernel", "for t in range(0, n_tiles - 1)", a["n_tiles"] - 1),
                ("_softmax_fwd_online_kernel", "for i in range(1, n_tiles)", a["n_tiles"] - 1)],
            # no loop: the whole kernel runs once per program
            "_softmax_fwd_rows_kernel": lambda a: [],
            "_softmax_fwd_partial_kernel": lambda a: [],
            "_softmax_fwd_split_kernel": lambda a: [],
        }
        return TritonCase(f"softmax fwd {dt} {rows}×{n}", "softmax", call, 2 * rows * n * _dt(dt).itemsize, hot,
                          headline=headline, traffic={"_softmax_fwd_online_kernel": _online_traffic})
    heads = {(4096, 131072, "fp32"), (4096, 131072, "bf16"), (1, 32768, "fp32"), (4096, 32768, "bf16")}
    out = []
    for dt in ("fp32", "bf16"):
        for rows, n in (bench.SHAPES_FULL if full else [(4096, 131072), (1, 32768), (4096, 32768)]):
            if full or (rows, n, dt) in heads:
                out.append(make(rows, n, dt, (rows, n, dt) in heads))
    if full:
        def bwd(rows, n, dt):
            def call():
                from fastattn.triton import softmax as S
                S.softmax_bwd(_meta((rows, n), _dt(dt)), _meta((rows, n), _dt(dt)), None, 1.0 / bench.TEMPERATURE)
            return TritonCase(f"softmax bwd {dt} {rows}×{n}", "softmax", call, 3 * rows * n * _dt(dt).itemsize)
        out += [bwd(4096, 131072, "bf16"), bwd(4096, 32768, "bf16"), bwd(1, 32768, "fp32")]
    return out


# A dropout call's seed and offset as fastattn.ops draws them (64-bit, neither 1 nor a multiple of 16), so that
# they specialise as a real launch's do
_SEED, _OFFSET = 2 ** 61 + 12345, 2 ** 60 + 7


def attention_cases(full: bool) -> List[TritonCase]:
    def fwd(b, h, s, d, causal, dt, headline, dropout=0.0):
        def call():
            from fastattn.triton import attention as A
            q = _meta((b, h, s, d), _dt(dt))
            A.attention_fwd(q, _meta((b, h, s, d), _dt(dt)), _meta((b, h, s, d), _dt(dt)), None, None, causal,
                            d ** -0.5, dropout_p=dropout, seed=_SEED, offset=_OFFSET)
        # the key loop (unmasked copy, then the masked one, which runs no block here); with dropout most of its
        # instructions come from Philox's unrolled rounds, so line info names it after that loop
        loop = (("philox_impl", "for _ in tl.static_range(n_rounds)") if dropout else
                ("_attn_fwd_inner", "for start_n in range(lo, hi, BLOCK_N)"))
        hot = {} if causal else {"_attn_fwd_kernel": lambda a: [(*loop, [a["Sk"] // a["BLOCK_N"], 0])]}
        flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
        return TritonCase(f"attention fwd {dt} B{b} H{h} S{s} D{d}{' causal' if causal else ''}"
                          f"{f' dropout {dropout}' if dropout else ''}", "attention",
                          call, 4 * b * h * s * d * _dt(dt).itemsize, hot,
                          matmul=("_attn_fwd_kernel", "_attn_fwd_tma_kernel") if dt != "fp32" else (),
                          headline=headline, flops=flops)

    def bwd(b, h, s, d, causal, dt, headline, dropout=0.0):
        def call():
            import torch
            from fastattn.triton import attention as A
            t = lambda: _meta((b, h, s, d), _dt(dt))  # noqa: E731
            A.attention_bwd(t(), t(), t(), t(), t(), _meta((b, h, s), torch.float32), None, None, causal,
                            d ** -0.5, False, dropout_p=dropout, seed=_SEED, offset=_OFFSET)
        flops = 10 * b * h * s * s * d * (0.5 if causal else 1.0)
        return TritonCase(f"attention bwd {dt} B{b} H{h} S{s} D{d}{' causal' if causal else ''}"
                          f"{f' dropout {dropout}' if dropout else ''}", "attention",
                          call, 8 * b * h * s * d * _dt(dt).itemsize, headline=headline,
                          matmul=("_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel") if dt != "fp32" else (),
                          flops=flops)

    def fwd_tma(b, h, s, d, causal, headline):
        def call():
            import torch
            from fastattn.triton import attention as A
            t = lambda: _meta((b, h, s, d), torch.bfloat16)  # noqa: E731
            A._attention_fwd_tma(t(), t(), t(), causal, d ** -0.5, t(), _meta((b, h, s), torch.float32))
        hot = {} if causal else {"_attn_fwd_tma_kernel": lambda a: [
            ("_attn_fwd_tma_inner", "for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC)",
             [a["Sk"] // a["BLOCK_N"], 0])]}
        return TritonCase(f"attention fwd TMA (FASTATTN_TRITON_HOPPER=1) bf16 B{b} H{h} S{s} D{d}"
                          f"{' causal' if causal else ''}", "attention", call, 4 * b * h * s * d * 2, hot,
                          matmul=("_attn_fwd_tma_kernel",), headline=headline,
                          flops=4 * b * h * s * s * d * (0.5 if causal else 1.0))

    def decode(b, kv, headline):
        def call():
            import torch
            from fastattn.triton import attention as A
            A.decode_attention(_meta((b, 32, 128), torch.bfloat16), _meta((b, 8, kv, 128), torch.bfloat16),
                               _meta((b, 8, kv, 128), torch.bfloat16), _meta((b,), torch.int32), 128 ** -0.5)
        return TritonCase(f"decode bf16 B{b} Hq32 Hkv8 KV{kv} D128", "decode", call, 2 * b * 8 * kv * 128 * 2,
                          matmul=("_decode_split_kernel",), headline=headline)

    out = [fwd(4, 16, 4096, 128, False, "bf16", True), fwd(4, 16, 4096, 128, True, "bf16", True),
           bwd(4, 16, 4096, 128, False, "bf16", True), fwd_tma(4, 16, 4096, 128, False, True),
           decode(1, 8192, True),
           # attention dropout (issue 16): the Philox draws in all three passes, their own configs
           bwd(4, 16, 4096, 128, True, "bf16", True, dropout=0.1)]
    if full:
        for d in (64, 128, 256):
            for causal in (False, True):
                h = 2048 // d
                if (d, causal) != (128, False) and (d, causal) != (128, True):
                    out.append(fwd(4, h, 4096, d, causal, "bf16", False))
                if (d, causal) != (128, False):
                    out.append(bwd(4, h, 4096, d, causal, "bf16", False))
        out.append(fwd(4, 16, 4096, 128, False, "fp32", False))
        for d in (64, 128, 256):
            for causal in (False, True):
                h = 2048 // d
                out.append(fwd(4, h, 4096, d, causal, "bf16", False, dropout=0.1))
                if (d, causal) != (128, True):
                    out.append(bwd(4, h, 4096, d, causal, "bf16", False, dropout=0.1))
        out += [fwd_tma(4, 16, 4096, 128, True, False), fwd_tma(4, 32, 4096, 64, False, False)]
        for b in (16, 64):
            out.append(decode(b, 8192, False))
    return out


def triton_cases(full: bool) -> List[TritonCase]:
    return sampling_cases(full) + softmax_cases(full) + attention_cases(full)


def estimate(case: TritonCase, launch: Launch, row: KernelRow, card: Card = H200) -> Optional[Estimate]:
    spec = case.hot.get(launch.name)
    if spec is None or row.error or not row.mix:
        return None
    hot = []
    per_program = 0
    named = [lp for lp in row.loops if lp.py]
    for func, header, trips in spec(launch.args):
        label = f"{func}: {header}"
        copies = [lp for lp in named if lp.py == label]
        if not copies:
            hot.append((label + " (NOT FOUND in SASS)", 0, 0))
            continue
        per = trips if isinstance(trips, list) else [trips] * len(copies)
        for lp, n in zip(copies, per):
            hot.append((label, lp.own, int(n)))
            per_program += lp.own * int(n)
    # Code outside every loop runs once per program (an upper bound: branches may skip some of it).
    rest = row.outside_loops
    hot.append(("(whole kernel, no loop)" if not row.loops else "(outside loops, once)", rest, 1))
    per_program += rest
    warps = launch.options.get("num_warps", 4)
    per_sm = -(-launch.programs // card.sms)
    slots = min(card.sub_partitions, warps * max(1, min(per_sm, row.blocks_per_sm or 1)))
    issue_s = per_program * warps * per_sm / (slots * card.clock_ghz * 1e9)
    floor_s = case.floor_bytes / (card.copy_tbps * 1e12)
    what = f"{case.floor_bytes / 1e6:.1f} MB at {card.copy_tbps} TB/s"
    if case.flops:
        flop_s = case.flops / (card.bf16_tflops * 1e12)
        if flop_s > floor_s:
            floor_s, what = flop_s, f"{case.flops / 1e12:.2f} TFLOP at {card.bf16_tflops:.0f} TFLOP/s"
    est = Estimate(case.name, launch.name, launch.programs, warps, hot, per_program, issue_s * 1e6,
                   floor_s * 1e6, what)
    model = case.traffic.get(launch.name)
    if model is not None:
        est.dram_bytes, est.elements, est.traffic_note = model(launch, row)
    return est


# ----------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Report:
    tools: Tools
    rows: List[KernelRow] = field(default_factory=list)
    estimates: List[Estimate] = field(default_factory=list)
    cases: Dict[str, List[str]] = field(default_factory=dict)   # case -> kernel row keys
    notes: List[str] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    cuda_s: float = 0.0
    triton_s: float = 0.0


def _fill_occupancy(row: KernelRow, card: Card = H200) -> None:
    if row.arch != "sm_90a" or row.error or not row.threads:
        return
    row.blocks_per_sm, row.warps_per_sm, row.occ_limiter = sass.occupancy(row.regs, row.smem, row.threads, card)


def build(archs: Sequence[int] = (90, 80), *, full: bool = False, cuda: bool = True, triton_: bool = True,
          extra_cuda: Sequence[Path] = (), csrc: bool = True, use_cache: bool = True, strict_triton: bool = False,
          triton_archs: Optional[Sequence[int]] = None, only: Optional[str] = None,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Report:
    t_start = time.monotonic()
    tools = find_tools()
    rep = Report(tools, notes=list(tools.notes))
    cache = Cache(use_cache)
    if cuda and tools.nvcc:
        t0 = time.monotonic()
        headers = _csrc_headers_hash()
        jobs = [(src, arch) for src in cuda_sources(extra_cuda, csrc) for arch in archs]
        from concurrent.futures import ThreadPoolExecutor
        n_jobs = max(1, int(os.environ.get("MAX_JOBS") or min(2, os.cpu_count() or 1)))
        with ThreadPoolExecutor(n_jobs) as pool:
            results = pool.map(lambda job: compile_cuda(job[0], job[1], tools, cache, headers), jobs)
            for (src, arch), rows in zip(jobs, results):
                for r in rows:
                    _fill_occupancy(r)
                rep.rows += [r for r in rows if r.name != "(no kernels)"]
                empty = [r for r in rows if r.name == "(no kernels)"]
                log(f"static: {_rel(src)} {ARCHS[arch]}: {len(rows) - len(empty)} kernel(s) "
                    f"{'(cached)' if rows and rows[0].cached else f'{rows[0].compile_s:.1f} s' if rows else ''}")
        rep.cuda_s = time.monotonic() - t0
    if triton_ and tools.triton:
        t0 = time.monotonic()
        tarchs = list(triton_archs if triton_archs is not None else archs)
        seen: Dict[str, KernelRow] = {}
        for case in triton_cases(full):
            if only and only not in case.name:
                continue
            keys = []
            # captured once per arch: the launchers pick their configs for the GPU they run on
            for arch in tarchs:
                try:
                    with capture_launches(arch=arch) as launches:
                        case.call()
                except Exception as e:  # noqa: BLE001
                    rep.failures.append(f"triton case {case.name} ({ARCHS[arch]}): the launcher failed on meta "
                                        f"tensors: {type(e).__name__}: {e}")
                    continue
                for launch in launches:
                    if arch < 90 and "tma" in launch.name:
                        continue
                    key = _launch_key(launch, arch)
                    if key not in seen:
                        row = compile_triton(launch, arch, tools, cache, launch.name in case.matmul)
                        row.source = case.name
                        _fill_occupancy(row)
                        seen[key] = row
                        rep.rows.append(row)
                        log(f"static: triton {launch.name} [{row.config}] {row.arch}: "
                            f"{'cached' if row.cached else f'{row.compile_s:.1f} s'}"
                            f"{'  ERROR ' + row.error if row.error else ''}")
                    row = seen[key]
                    keys.append(key)
                    if arch == 90:
                        est = estimate(case, launch, row)
                        if est is not None:
                            rep.estimates.append(est)
            rep.cases[case.name] = keys
        rep.triton_s = time.monotonic() - t0
    _check(rep, strict_triton)
    rep.elapsed_s = time.monotonic() - t_start
    return rep


def _check(rep: Report, strict_triton: bool) -> None:
    for r in rep.rows:
        what = f"{r.kind} {r.name} ({r.source}, {r.arch})"
        if r.error:
            rep.failures.append(f"{what}: compile failed: {r.error}")
            continue
        if r.spills:
            msg = f"{what}: spills {r.spill_stores} B stored / {r.spill_loads} B loaded (ptxas -v)"
            (rep.failures if (r.kind == "cuda" or strict_triton) else rep.warnings).append(msg)
        if r.matmul and r.mix and r.mix.get("tensor", 0) == 0:
            rep.failures.append(f"{what}: a matmul kernel without any tensor-core instruction (HMMA/HGMMA)")
        if r.matmul and not r.mix:
            rep.warnings.append(f"{what}: no disassembly, the tensor-core check could not run")
        if r.arch == "sm_90a" and r.blocks_per_sm == 0:
            rep.failures.append(f"{what}: does not fit on an SM ({r.regs} registers, {r.smem} B shared, "
                                f"{r.threads} threads)")


def _fmt_us(us: float) -> str:
    return f"{us:.2f}" if us < 10 else f"{us:.0f}"


def markdown(rep: Report) -> str:
    L = ["# Static kernel report (compiled, never run)", "",
         "STATIC FIGURES FROM A COMPILE, NOT GPU MEASUREMENTS. Registers and spills from ptxas -v, SASS from nvdisasm, "
         f"occupancy and estimates for an {H200.name} ({H200.sms} SMs, {H200.clock_ghz} GHz, {H200.copy_tbps} TB/s "
         "copy): predictions.", ""]
    t = rep.tools
    L.append(f"Tools: nvcc {'at ' + t.nvcc if t.nvcc else 'MISSING'}; triton {t.triton or 'MISSING'}; "
             f"nvdisasm {'found' if t.nvdisasm else 'MISSING'}.")
    for n in rep.notes:
        L.append(f"- {n}")
    L.append("")
    cols = ("HMMA", "HGMMA", "LDSM", "LDGSTS", "UTMALDG", "BAR", "MUFU", "total")
    head = ("| kernel | source / config | arch | regs | spill st/ld B | smem B | threads | blocks/SM | warps/SM | "
            + " | ".join(cols) + " | longest loop |")
    sep = "|" + "---|" * (10 + len(cols))
    for kind, title in (("cuda", "CUDA kernels (csrc/)"), ("triton", "Triton kernels (configs the launchers pick)")):
        rows = [r for r in rep.rows if r.kind == kind]
        if not rows:
            continue
        L += [f"## {title}", "", head, sep]
        for r in rows:
            src = r.source if kind == "cuda" else f"{r.source}; {r.config}"
            if r.error:
                L.append(f"| {r.name} | {src} | {r.arch} | ERROR: {r.error} |" + " |" * (8 + len(cols)))
                continue
            occ = "—" if r.blocks_per_sm is None else str(r.blocks_per_sm)
            wocc = "—" if r.warps_per_sm is None else str(r.warps_per_sm)
            mix = " | ".join(str(r.mix.get(c, "—")) for c in cols)
            spill = f"**{r.spill_stores}/{r.spill_loads}**" if r.spills else "0/0"
            L.append(f"| {r.name} | {src} | {r.arch} | {r.regs} | {spill} | {r.smem} | {r.threads or '?'} | {occ} | "
                     f"{wocc} | {mix} | {r.longest_loop} |")
        L.append("")
    if rep.estimates:
        L += ["## Issue time vs memory floor (H200, headline shapes; predictions)", "",
              "issue = (SASS instructions of the hot loops per iteration × iterations + those outside every loop, "
              "once) × warps × programs per SM ÷ (4 issue slots × clock); floor = bytes ÷ copy bandwidth "
              "(attention: also FLOPs ÷ bf16 peak, the larger). Issue > floor: the kernel cannot reach the floor "
              "(issue-bound).", "",
              "| case | kernel | programs | warps | hot loops (instr/iter × iters) | instr/program | issue µs | "
              "floor µs | issue/floor | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
        for e in rep.estimates:
            hot = "; ".join(f"{lbl} {n}×{it}" for lbl, n, it in e.hot)
            L.append(f"| {e.case} | {e.kernel} | {e.programs} | {e.warps} | {hot} | {e.instr_per_program:,} | "
                     f"{_fmt_us(e.issue_us)} | {_fmt_us(e.floor_us)} | {e.ratio:.2f} | {e.verdict} |")
        L.append("")
    modelled = [e for e in rep.estimates if e.dram_bytes is not None]
    if modelled:
        L += ["## Modelled DRAM traffic (L2 reuse of re-reads; predictions)", "",
              "| case | kernel | DRAM bytes per element (floor) | DRAM µs | floor µs | model |",
              "|---|---|---|---|---|---|"]
        for e in modelled:
            esz = e.floor_us / e.dram_us * e.dram_bytes / e.elements if e.dram_us else 0
            L.append(f"| {e.case} | {e.kernel} | {e.dram_bytes / e.elements:.2f} ({esz:.0f}) | {_fmt_us(e.dram_us)} | "
                     f"{_fmt_us(e.floor_us)} | {e.traffic_note} |")
        L.append("")
    if rep.failures:
        L += ["## FAILED checks", ""] + [f"- {f}" for f in rep.failures] + [""]
    if rep.warnings:
        L += ["## Warnings", ""] + [f"- {w}" for w in rep.warnings] + [""]
    L.append(f"Elapsed {rep.elapsed_s:.0f} s (CUDA {rep.cuda_s:.0f} s, Triton {rep.triton_s:.0f} s); "
             f"{sum(r.cached for r in rep.rows)} of {len(rep.rows)} kernel rows from the cache.")
    return "\n".join(L) + "\n"


def write(rep: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(rep))
    data = {
        "note": "static figures from a compile, not GPU measurements",
        "card": asdict(H200),
        "tools": asdict(rep.tools),
        "kernels": [dict(asdict(r), cached=None, compile_s=round(r.compile_s, 2)) for r in rep.rows],
        "estimates": [dict(asdict(e), ratio=e.ratio, verdict=e.verdict) for e in rep.estimates],
        "failures": rep.failures,
        "warnings": rep.warnings,
    }
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    with open(out / "kernels.csv", "w", newline="") as f:
        w = csv.writer(f)
        cols = list(sass.MIX_COLUMNS) + ["tensor", "total"]
        w.writerow(["kind", "name", "source", "config", "arch", "regs", "spill_stores", "spill_loads", "stack",
                    "smem", "threads", "blocks_per_sm", "warps_per_sm", "longest_loop", "error"] + cols)
        for r in rep.rows:
            w.writerow([r.kind, r.name, r.source, r.config, r.arch, r.regs, r.spill_stores, r.spill_loads, r.stack,
                        r.smem, r.threads, r.blocks_per_sm, r.warps_per_sm, r.longest_loop, r.error]
                       + [r.mix.get(c, "") for c in cols])


def parse_args(argv):
    p = argparse.ArgumentParser(prog="fastattn-bench --static", description=__doc__.splitlines()[0])
    p.add_argument("--static", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--full", action="store_true", help="every benchmark shape, backward and decode variants "
                   "(default: the headline shapes)")
    p.add_argument("--arch", default="90,80", help="compute capabilities, comma-separated (default 90,80)")
    p.add_argument("--triton-arch", help="capabilities for the Triton kernels (default: --arch)")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--no-triton", action="store_true")
    p.add_argument("--cuda-src", action="append", type=Path, default=[],
                   help="also compile this .cu file or every .cu under this folder")
    p.add_argument("--no-csrc", action="store_true", help="compile only the --cuda-src files, not csrc/")
    p.add_argument("--only", help="Triton cases whose name contains this")
    p.add_argument("--no-cache", action="store_true", help="recompile everything")
    p.add_argument("--strict-triton", action="store_true", help="Triton spills fail the checks too")
    p.add_argument("--out", type=Path, help=f"where to write report.md/json, kernels.csv (default {_rel(DEFAULT_OUT)})")
    p.add_argument("--no-save", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        if "triton" in sys.modules:
            print("fastattn-bench --static: triton was imported with TRITON_INTERPRET=1; run without it",
                  file=sys.stderr)
            return 2
        os.environ.pop("TRITON_INTERPRET")  # compiling needs the real JIT, not the interpreter
    archs = [int(a) for a in args.arch.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if bad:
        print(f"fastattn-bench --static: --arch: unsupported {bad}; choose from {sorted(ARCHS)}", file=sys.stderr)
        return 2
    tarchs = [int(a) for a in args.triton_arch.split(",")] if args.triton_arch else None
    rep = build(archs, full=args.full, cuda=not args.no_cuda, triton_=not args.no_triton, extra_cuda=args.cuda_src,
                csrc=not args.no_csrc,
                use_cache=not args.no_cache, strict_triton=args.strict_triton, triton_archs=tarchs, only=args.only)
    print(markdown(rep))
    if not args.no_save:
        out = args.out or DEFAULT_OUT / ("full" if args.full else "headline")
        write(rep, out)
        print(f"fastattn-bench --static: wrote {_rel(out)}/report.md, report.json, kernels.csv", file=sys.stderr)
    for n in rep.notes:
        print(f"fastattn-bench --static: {n}", file=sys.stderr)
    if rep.failures:
        print(f"fastattn-bench --static: {len(rep.failures)} check(s) FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
