"""Build script for fastattn: the pure-Python package plus, when possible, the CUDA extension fastattn._C.

    pip install --no-build-isolation .       # with the extension: the build must see the installed torch
    pip install .                            # pure Python: pip's isolated build has no torch to build against

The extension is compiled here, at install time (as flash-attn does), never on first use: see docs/install.md
for why. Each build writes fastattn/_build_info.py (not tracked in git), which records whether the extension
was built and, if not, why and the command that builds it; fastattn._cuda.status() and
fastattn.available_backends() report that reason.

Environment:
    FASTATTN_BUILD_CUDA   auto (default): build the extension iff torch is a CUDA build and nvcc is found
                          (CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda) with the same major version;
                          1: build it, fail loudly (with the command to run) if impossible; 0: pure Python only.
    TORCH_CUDA_ARCH_LIST  target GPUs, default "8.0;9.0a" (sm_80 and sm_90a).
    MAX_JOBS              parallel compile jobs (ninja), default: all cores.
    NVCC_THREADS          nvcc --threads per job (arches compiled in parallel), default 2.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
DEFAULT_ARCH_LIST = "8.0;9.0a"


def log(msg: str) -> None:
    print(f"fastattn setup: {msg}", file=sys.stderr, flush=True)


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: an explicit CUDA_HOME/CUDA_PATH, else where nvcc lives, else /usr/local/cuda.

    An nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc), so a candidate counts only if it
    holds both bin/nvcc and include/cuda_runtime.h.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
            os.path.join(home, "include", "cuda_runtime.h")
        ):
            return home
    return None


def nvcc_version(cuda_home: str) -> str | None:
    try:
        out = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


# The command that builds the extension: the editable form when this run builds an editable install (pip's last
# call into setup.py, which writes the build record, names the command editable_wheel).
REINSTALL = "pip install --no-build-isolation " + ("-e ." if "editable_wheel" in sys.argv else ".")


def cuda_build_decision() -> tuple[bool, str, str | None]:
    """(build?, reason, fix): the reason says what was found; fix is the command that would build it, or None.

    Sets CUDA_HOME when found, before torch.utils.cpp_extension reads it. FASTATTN_BUILD_CUDA=1 turns every
    "cannot build" into a SystemExit naming the reason and the fix.
    """
    mode = os.environ.get("FASTATTN_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"fastattn setup: FASTATTN_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, "FASTATTN_BUILD_CUDA=0 was set at install", f"unset it and run {REINSTALL}"
    try:
        import torch
    except ImportError as e:
        return _refuse(mode, *torch_missing_reason(e))
    if torch.version.cuda is None:
        return _refuse(mode, f"torch {torch.__version__} is a CPU build (the extension needs a CUDA build of "
                             "torch)", f"install a CUDA build of torch, then run {REINSTALL}")
    cuda_home = find_cuda_home()
    if cuda_home is None or not os.path.isfile(os.path.join(cuda_home, "bin", "nvcc")):
        return _refuse(mode, f"no nvcc found {nvcc_where(cuda_home)}",
                       f"install the CUDA toolkit {torch.version.cuda.split('.')[0]}.x (or set CUDA_HOME), "
                       f"then run {REINSTALL}")
    version = nvcc_version(cuda_home)
    if version is None:
        return _refuse(mode, f"{cuda_home}/bin/nvcc --version failed", None)
    if version.split(".")[0] != torch.version.cuda.split(".")[0]:
        return _refuse(mode, f"nvcc {version} at {cuda_home} does not match torch's CUDA {torch.version.cuda}",
                       f"point CUDA_HOME at a CUDA {torch.version.cuda.split('.')[0]}.x toolkit, then run "
                       f"{REINSTALL}")
    os.environ["CUDA_HOME"] = cuda_home
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc {version} at {cuda_home}", None


def nvcc_where(cuda_home: str | None) -> str:
    return f"in CUDA_HOME={cuda_home}" if cuda_home else "in CUDA_HOME, CUDA_PATH, PATH or /usr/local/cuda"


def torch_missing_reason(error: ImportError) -> tuple[str, str]:
    """Why torch cannot be imported by this build, and the fix: the usual case is pip's build isolation.

    A plain `pip install .` runs setup.py in a temporary environment holding only the build requirements of
    pyproject.toml; torch is deliberately not one of them (it would be a second, multi-GB torch, and an
    extension built against it breaks against the user's own). The interpreter outside that environment may
    still have torch: ask it, without importing torch (torch/version.py is read as text).
    """
    isolated = any("build-env-" in p for p in sys.path if p)  # pip's pip-build-env-*, pypa/build's build-env-*
    outer = outer_torch()
    if outer is not None:
        version, cuda = outer
        what = f"torch {version}" + (f" (CUDA {cuda})" if cuda else " (a CPU build)")
        where = "pip's isolated build environment" if isolated else "the build environment"
        reason = (f"{where} cannot import torch, although {what} is installed: a plain `pip install .` "
                  "builds without seeing it")
        if cuda is None:
            return reason + "; and a CPU build of torch cannot build the extension anyway", (
                f"install a CUDA build of torch, then run {REINSTALL}")
        cuda_home = find_cuda_home()
        if cuda_home is None:
            return reason + f"; nor is there an nvcc {nvcc_where(cuda_home)}", (
                f"install the CUDA toolkit (or set CUDA_HOME), then run {REINSTALL}")
        return reason, REINSTALL
    if any("pip-build-env-" in p for p in sys.path if p):  # pip: the outer interpreter was asked, it has none
        return ("torch is not installed in this environment (nor could pip's isolated build environment import "
                "it)", f"install torch first (pip install torch), then run {REINSTALL}")
    if isolated:  # e.g. python -m build: its own interpreter, so torch cannot be looked for outside
        return (f"the isolated build environment cannot import torch ({error})",
                f"install torch if it is not installed, then run {REINSTALL}")
    return (f"torch is not importable at build time ({error})",
            f"install torch first (pip install torch), then run {REINSTALL}")


def outer_torch() -> tuple[str, str | None] | None:
    """(version, CUDA version or None) of the torch that this interpreter has outside pip's build isolation."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    probe = (
        "import importlib.util, importlib.metadata as m, os, re\n"
        "spec = importlib.util.find_spec('torch')\n"
        "text = open(os.path.join(os.path.dirname(spec.origin), 'version.py')).read()\n"
        "cuda = re.search(r\"^cuda(?:: .*?)? = '([^']+)'\", text, re.M)\n"
        "version = re.search(r\"^__version__ = '([^']+)'\", text, re.M)\n"
        "print(version.group(1) if version else m.version('torch'), cuda.group(1) if cuda else '')\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.stdout.split()
    if out.returncode != 0 or not words:
        return None
    return words[0], (words[1] if len(words) > 1 else None)


def _refuse(mode: str, reason: str, fix: str | None) -> tuple[bool, str, str | None]:
    if mode == "1":
        raise SystemExit(f"fastattn setup: FASTATTN_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}."
                         + (f"\nTo build it: {fix}" if fix else ""))
    return False, reason, fix


def write_build_info(built: bool, reason: str, fix: str | None) -> None:
    """fastattn/_build_info.py: what this build decided about the extension, read by fastattn._cuda.status().

    Written into the source tree (git-ignored) so that both wheels and editable installs carry it; rewritten
    only when its content changes, so that an unchanged rebuild stays a no-op.
    """
    mode = os.environ.get("FASTATTN_BUILD_CUDA", "auto").strip().lower()
    try:
        import torch
        torch_version, torch_cuda = torch.__version__, torch.version.cuda
    except ImportError:
        torch_version = torch_cuda = None
    text = (
        "# Written by fastattn's setup.py at build time; not tracked in git. Read by fastattn._cuda.status().\n"
        f"BUILT_CUDA = {built!r}\n"
        f"MODE = {mode!r}  # FASTATTN_BUILD_CUDA at build time\n"
        f"REASON = {reason!r}\n"
        f"FIX = {fix!r}\n"
        f"TORCH = {torch_version!r}  # the torch the build imported (None: it could not)\n"
        f"TORCH_CUDA = {torch_cuda!r}\n"
        f"ARCH_LIST = {(os.environ.get('TORCH_CUDA_ARCH_LIST') if built else None)!r}\n"
    )
    path = os.path.join(ROOT, "fastattn", "_build_info.py")
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)


def nvidia_wheel_include() -> list[str]:
    """nvidia/cu13/include from the CUDA pip wheels, if present.

    torch's CUDA headers include cuBLAS/cuSPARSE headers that a minimal toolkit may lack; the wheels that torch
    depends on ship them there. Added to the host compiler with -idirafter so the toolkit's own headers win.
    """
    try:
        import nvidia
    except ImportError:
        return []
    return [
        os.path.join(base, sub, "include")
        for base in getattr(nvidia, "__path__", [])
        for sub in ("cu13", "cu12")
        if os.path.isdir(os.path.join(base, sub, "include"))
    ][:1]


def cuda_extension():
    from torch.utils.cpp_extension import CUDAExtension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp"))) + sorted(
        glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True)
    )
    # No -std flag: torch adds the standard its own headers need (C++17 up to ~2.10, C++20 after); csrc itself
    # is C++17. No --use_fast_math: it flushes subnormals and approximates division (softmax/sampling bugs).
    cxx = ["-O3"]
    for inc in nvidia_wheel_include():
        cxx += ["-idirafter", inc]
    nvcc = ["-O3", "-lineinfo", f"--threads={os.environ.get('NVCC_THREADS', '2')}"]
    return CUDAExtension(
        name="fastattn._C",
        sources=sources,
        include_dirs=[CSRC],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        py_limited_api=True,
    )


def remove_stale_extension() -> None:
    """An editable CUDA build leaves fastattn/_C*.so in the source tree; a later pure-Python editable install
    must remove it, or `import fastattn._C` would still load the old build."""
    if "editable_wheel" not in sys.argv and "develop" not in sys.argv:
        return
    for path in glob.glob(os.path.join(ROOT, "fastattn", "_C.*so")):
        os.remove(path)
        log(f"removed {os.path.relpath(path, ROOT)} left by an earlier CUDA build")


BUILD_CUDA, REASON, FIX = cuda_build_decision()
ext_modules, cmdclass, options = [], {}, {}
if BUILD_CUDA:
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        """Objects and build.ninja in a stable build/ folder (pip's editable build would use a fresh temporary
        one), so a rebuild recompiles only the translation units whose sources or headers changed."""

        def finalize_options(self):
            super().finalize_options()
            tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
            self.build_temp = os.path.join(ROOT, "build", f"temp.{tag}")

    ext_modules = [cuda_extension()]
    cmdclass = {"build_ext": BuildExt}
    options = {"bdist_wheel": {"py_limited_api": "cp310"}}
    log(
        f"building CUDA extension fastattn._C for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} "
        f"with MAX_JOBS={os.environ['MAX_JOBS']}: {REASON}"
    )
else:
    log(f"NOT building the CUDA extension fastattn._C (pure Python install): {REASON}"
        + (f". To build it: {FIX}" if FIX else ""))
    remove_stale_extension()
write_build_info(BUILD_CUDA, REASON, FIX)

setup(
    name="fastattn",
    version="0.1.0",
    description="Hand-written Triton and CUDA C++ kernels for attention, softmax and sampling, as PyTorch ops",
    packages=find_packages(include=["fastattn", "fastattn.*"]),
    python_requires=">=3.10",
    # numpy: the Triton interpreter (TRITON_INTERPRET=1, the Triton backend on the CPU) runs kernels with it, and
    # torch does not depend on it. No upper bound: only Triton <= 3.6's interpreter breaks on numpy 2.4 (3.7
    # and 3.8 work), which a bound here cannot express; fastattn.available_backends() says so when it applies.
    install_requires=["torch>=2.11", "numpy"],
    extras_require={
        "transformers": ["transformers>=5.17"],
        "test": ["pytest"],
        "bench": ["matplotlib", "tqdm", "pytest-benchmark"],
    },
    entry_points={"console_scripts": ["fastattn-bench = fastattn.bench.__main__:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options=options,
    zip_safe=False,
)
