"""Build script for fastattn: the pure-Python package plus, when possible, the CUDA extension fastattn._C.

    pip install --no-build-isolation --no-deps -e .      # needs only setuptools and torch, no network

Environment:
    FASTATTN_BUILD_CUDA   auto (default): build the extension iff torch is a CUDA build and nvcc is found
                          (CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda) with the same major version;
                          1: build it, fail loudly if impossible; 0: pure Python only.
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


def cuda_build_decision() -> tuple[bool, str]:
    """(build?, reason). Sets CUDA_HOME when found, before torch.utils.cpp_extension reads it."""
    mode = os.environ.get("FASTATTN_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"fastattn setup: FASTATTN_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, "FASTATTN_BUILD_CUDA=0"
    try:
        import torch
    except ImportError as e:
        reason = f"torch is not importable at build time ({e}); install torch, then pip install --no-build-isolation"
        return _refuse(mode, reason)
    if torch.version.cuda is None:
        return _refuse(mode, f"torch {torch.__version__} is not a CUDA build")
    cuda_home = find_cuda_home()
    if cuda_home is None or not os.path.isfile(os.path.join(cuda_home, "bin", "nvcc")):
        where = f"CUDA_HOME={cuda_home}" if cuda_home else "CUDA_HOME, CUDA_PATH, PATH or /usr/local/cuda"
        return _refuse(mode, f"no nvcc found in {where}")
    version = nvcc_version(cuda_home)
    if version is None:
        return _refuse(mode, f"{cuda_home}/bin/nvcc --version failed")
    if version.split(".")[0] != torch.version.cuda.split(".")[0]:
        return _refuse(mode, f"nvcc {version} at {cuda_home} does not match torch's CUDA {torch.version.cuda}")
    os.environ["CUDA_HOME"] = cuda_home
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc {version} at {cuda_home}"


def _refuse(mode: str, reason: str) -> tuple[bool, str]:
    if mode == "1":
        raise SystemExit(f"fastattn setup: FASTATTN_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
    return False, reason


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


BUILD_CUDA, REASON = cuda_build_decision()
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
    log(f"NOT building the CUDA extension fastattn._C (pure Python install): {REASON}")
    remove_stale_extension()

setup(
    name="fastattn",
    version="0.1.0",
    description="Hand-written Triton and CUDA C++ kernels for attention, softmax and sampling, as PyTorch ops",
    packages=find_packages(include=["fastattn", "fastattn.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.11"],
    extras_require={
        "transformers": ["transformers>=5.17"],
        "test": ["pytest", "numpy"],
        "bench": ["matplotlib", "tqdm", "pytest-benchmark"],
    },
    entry_points={"console_scripts": ["fastattn-bench = fastattn.bench.__main__:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options=options,
    zip_safe=False,
)
