"""The emulated CUDA build: csrc's kernels compiled by the host C++ compiler against csrc/emu, run on the CPU.

With ``FASTATTN_CUDA_EMULATE=1`` set before fastattn is imported, backend="cuda" runs on CPU tensors through a
shared library built here from the same sources as fastattn._C (csrc/**/*.cu as C++, csrc/emu/runtime.cpp,
csrc/binding.cpp with -DFASTATTN_EMULATE, which registers the ops for the CPU dispatch key). See csrc/README.md.

The library is compiled on first use with ninja and cached under ``$FASTATTN_CACHE`` (default
``~/.cache/fastattn``), in one folder per variant and compiler flags; a stamp of every source's content skips
ninja entirely when nothing changed, and ninja's depfiles recompile only what an edit touched. Builds are
serialised across processes by a file lock. ``FASTATTN_EMU_ASAN=1`` selects the AddressSanitizer variant,
which needs libasan preloaded into the process (``asan_preload()`` gives the path for LD_PRELOAD).

Nothing here imports torch's C++ extension machinery; torch itself is imported only for its paths.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


class EmuBuildError(RuntimeError):
    """The emulated build could not be made; the message holds the compiler's output."""


def emulated() -> bool:
    """FASTATTN_CUDA_EMULATE=1: "cuda" is the emulated build (read once, when fastattn is imported)."""
    return _EMULATE


def asan_requested() -> bool:
    return os.environ.get("FASTATTN_EMU_ASAN", "0") == "1"


_EMULATE = os.environ.get("FASTATTN_CUDA_EMULATE", "0") == "1"


def cache_root() -> Path:
    env = os.environ.get("FASTATTN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastattn"


def cxx() -> str:
    return os.environ.get("CXX") or "g++"


def _compiler_id(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise EmuBuildError(f"the host C++ compiler {compiler!r} does not run ({e}); set CXX") from None


def cuda_include_dir() -> Path:
    """A folder with the toolkit's host-compilable headers (cuda_fp16.h, cuda_runtime_api.h, crt/, nv/)."""
    candidates: List[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parents[1] / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    for base in sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]:
        for sub in ("cu13", "cu12", "cuda_runtime"):
            candidates.append(Path(base) / "nvidia" / sub / "include")
    for c in candidates:
        if all((c / f).is_file() for f in ("cuda_fp16.h", "cuda_bf16.h", "cuda_runtime_api.h",
                                            "crt/host_defines.h", "nv/target")):
            return c
    raise EmuBuildError(
        "the emulated CUDA build needs the CUDA toolkit's headers (cuda_fp16.h, cuda_bf16.h, "
        "cuda_runtime_api.h, crt/, nv/); none found in " + ", ".join(str(c) for c in candidates)
        + " (set CUDA_HOME)")


def asan_preload() -> str:
    """The path of the compiler's libasan, to put in LD_PRELOAD of a process that loads the ASan variant."""
    out = subprocess.run([cxx(), "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not out or not os.path.isabs(out):
        raise EmuBuildError(f"{cxx()} does not know where libasan.so is (got {out!r})")
    return os.path.realpath(out)


def _flags(asan: bool) -> List[str]:
    # -O1: a third of -O2's compile time, and the emulated suite is dominated by fiber switches anyway.
    # -fno-strict-aliasing: kernels move 16-byte chunks through uint4 (fine for nvcc, UB for g++'s optimiser).
    # No -ffast-math (nor on the GPU side): same IEEE semantics, subnormals kept.
    f = ["-O1", "-g", "-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-fno-strict-aliasing",
         "-DFASTATTN_EMULATE=1", "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas"]
    if asan:
        f += ["-fsanitize=address", "-fno-omit-frame-pointer", "-DFASTATTN_EMU_ASAN=1"]
    return f


def _torch_flags():
    import torch

    base = Path(torch.__file__).resolve().parent
    inc = [base / "include", base / "include" / "torch" / "csrc" / "api" / "include"]
    cflags = [f"-isystem{p}" for p in inc] + [
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-std=c++20"]
    lib = base / "lib"
    ldflags = [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu"]
    return cflags, ldflags, torch.__version__


def _hash(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def _tree_digest(dirs: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file() and p.suffix in (".h", ".cuh", ".cu", ".cpp", ".hpp", ".inc"):
                h.update(str(p).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


def _ninja() -> Optional[str]:
    found = shutil.which("ninja")
    if found:
        return found
    cand = Path(sys.executable).parent / "ninja"
    return str(cand) if cand.exists() else None


def build(name: str, sources: Sequence[Path], *, asan: bool = False, torch_binding: Optional[Path] = None,
          watch: Sequence[Path] = (), verbose: bool = False) -> Path:
    """Compile ``sources`` (kernels as C++, plus csrc/emu/runtime.cpp) into lib<name>.so and return its path.

    ``torch_binding``: a source that includes torch headers, compiled with torch's flags and linked against
    libtorch. ``watch``: folders whose headers/sources decide whether the cached library is current.
    """
    compiler = cxx()
    inc = cuda_include_dir()
    flags = _flags(asan) + [f"-I{CSRC / 'emu' / 'include'}", f"-I{CSRC}", f"-isystem{inc}"]
    tflags: List[str] = []
    ldflags: List[str] = []
    tver = ""
    if torch_binding is not None:
        tflags, ldflags, tver = _torch_flags()
    sources = [Path(s).resolve() for s in sources] + [CSRC / "emu" / "runtime.cpp"]
    key = _hash([compiler, _compiler_id(compiler), *flags, *tflags, *ldflags, tver, sys.version])[:12]
    out_dir = cache_root() / f"emu-{name}{'-asan' if asan else ''}-{key}"
    lib = out_dir / f"lib{name}.so"
    stamp_file = out_dir / "sources.sha256"
    all_sources = list(sources) + ([Path(torch_binding).resolve()] if torch_binding is not None else [])
    stamp = _hash([_tree_digest([CSRC, *[Path(w) for w in watch]]), *map(str, all_sources)])
    if lib.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
            return lib
        _write_ninja(out_dir, compiler, flags, sources, torch_binding, tflags, ldflags, lib, asan)
        _run_build(out_dir, verbose)
        stamp_file.write_text(stamp)
    return lib


def _obj_name(src: Path) -> str:
    try:
        rel = src.relative_to(ROOT)
    except ValueError:
        rel = Path(hashlib.sha256(str(src).encode()).hexdigest()[:8]) / src.name
    return str(rel).replace(os.sep, "__") + ".o"


def _q(s) -> str:
    return str(s).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _write_ninja(out_dir, compiler, flags, sources, binding, tflags, ldflags, lib, asan) -> None:
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {compiler}",
        "cflags = " + " ".join(flags + ["-std=c++17"]),
        "tflags = " + " ".join(flags + tflags),
        "ldflags = " + " ".join((["-fsanitize=address"] if asan else []) + ldflags),
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d $cflags -x c++ -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $in",
        "rule cxx_torch",
        "  command = $cxx -MMD -MF $out.d $tflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX (torch) $in",
        "rule link",
        "  command = $cxx -shared $in -o $out.tmp $ldflags && mv -f $out.tmp $out",
        "  description = LINK $out",
    ]
    objs = []
    for src in sources:
        obj = _obj_name(src)
        objs.append(obj)
        lines.append(f"build {_q(obj)}: cxx {_q(src)}")
    if binding is not None:
        obj = _obj_name(Path(binding).resolve())
        objs.append(obj)
        lines.append(f"build {_q(obj)}: cxx_torch {_q(Path(binding).resolve())}")
    lines.append(f"build {_q(lib.name)}: link " + " ".join(_q(o) for o in objs))
    lines.append(f"default {_q(lib.name)}")
    (out_dir / "build.ninja").write_text("\n".join(lines) + "\n")


def _run_build(out_dir: Path, verbose: bool) -> None:
    ninja = _ninja()
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
    if ninja is None:
        raise EmuBuildError("the emulated CUDA build needs ninja (pip install ninja)")
    run = subprocess.run([ninja, "-C", str(out_dir), "-j", jobs], capture_output=not verbose, text=True)
    if run.returncode != 0:
        tail = ((run.stdout or "") + (run.stderr or ""))[-6000:]
        raise EmuBuildError(f"the emulated CUDA build failed in {out_dir}:\n{tail}")


def kernel_sources() -> List[Path]:
    """The kernel translation units of fastattn._C (the same glob as setup.py)."""
    return sorted(p for p in CSRC.rglob("*.cu") if "emu" not in p.relative_to(CSRC).parts[:1])


def build_extension(asan: Optional[bool] = None, verbose: bool = False) -> Path:
    """The emulated fastattn._C: every csrc kernel, the emulation runtime and the binding (CPU dispatch)."""
    if not (CSRC / "binding.cpp").is_file():
        raise EmuBuildError(f"the emulated CUDA build needs the csrc/ sources, not found at {CSRC} (an installed "
                            "package has none; use an editable install or a checkout)")
    return build("fastattn_emu", kernel_sources(), asan=asan_requested() if asan is None else asan,
                 torch_binding=CSRC / "binding.cpp", verbose=verbose)


def load_settings(lib: Path):
    """ctypes handle of a built library, with the emulator's settings functions typed."""
    import ctypes

    h = ctypes.CDLL(str(lib))
    h.fastattn_emu_set_schedule.argtypes = [ctypes.c_char_p]
    h.fastattn_emu_set_schedule.restype = ctypes.c_int
    h.fastattn_emu_schedule.restype = ctypes.c_char_p
    h.fastattn_emu_launch_count.restype = ctypes.c_ulonglong
    return h


def asan_loaded() -> bool:
    """Whether libasan is in this process (the ASan variant cannot load otherwise)."""
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


__all__ = ["EmuBuildError", "emulated", "asan_requested", "build", "build_extension", "kernel_sources",
           "load_settings", "asan_preload", "asan_loaded", "cuda_include_dir", "cache_root"]
