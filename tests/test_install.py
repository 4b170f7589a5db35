"""Installing fastattn the way users type it, and what it then says about its backends.

The end-to-end test makes a fresh virtual environment in a temporary folder and runs a plain `pip install .`
(build isolation on) from a copy of this source tree, then asks the installed fastattn what it can run. It
needs no registry: pip is told to use only a local folder of wheels (--no-index --find-links), which holds
the build requirement (setuptools) and fastattn's own dependency numpy, both repacked from the distributions
this interpreter has. torch (and the rest of its dependency tree, and pip itself) is lent to the new
environment through a .pth line pointing at links to this interpreter's packages, so no multi-GB torch is
copied; fastattn and numpy are left out of that view, so the new environment gets them only by installing.

The faster tests below it check each build decision with `pip wheel` (no install) and the runtime wording
with a fake build record.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import shutil
import site
import subprocess
import sys
import types
import venv
import zipfile

import pytest
import torch

from fastattn import _backend, _cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REINSTALL = "pip install --no-build-isolation ."
PIP_TIMEOUT = 600


# ---------------------------------------------------------------------------------------------------------------
# Helpers: a copy of the source tree, a local wheelhouse, a fresh venv, a clean environment for pip
# ---------------------------------------------------------------------------------------------------------------
_SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", "results"}


def _copy_source(dest: str) -> str:
    """This checkout without build outputs, caches, the extension or a build record (setup.py writes one into
    the tree it builds, which must not be the developer's)."""
    def ignore(folder, names):
        return {n for n in names
                if n in _SKIP_DIRS or n.endswith((".egg-info", ".so")) or n == "_build_info.py"}

    src = os.path.join(dest, "src")
    shutil.copytree(ROOT, src, ignore=ignore)
    return src


def _repack(dist_name: str, wheelhouse: str) -> str:
    """A wheel of an installed distribution, made from its installed files (those under site-packages)."""
    dist = importlib.metadata.distribution(dist_name)
    base = str(dist.locate_file(""))
    name = dist.metadata["Name"].replace("-", "_")
    path = os.path.join(wheelhouse, f"{name}-{dist.version}-py3-none-any.whl")
    # A compiled package (numpy) is tagged py3-none-any here: the folder is only ever read by this interpreter.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for f in dist.files:
            rel = str(f)
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
                continue
            if rel.endswith(("INSTALLER", "direct_url.json", "REQUESTED")) and ".dist-info/" in rel:
                continue
            full = os.path.join(base, rel)
            if os.path.isfile(full):
                z.write(full, rel)
    return path


def _site_packages() -> list:
    return [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]


def _lend_packages(dest: str, leave_out: tuple = (), only: tuple = ()) -> str:
    """A folder of links to this interpreter's installed packages, without those named in leave_out (or with
    only those named in only)."""
    folder = os.path.join(dest, "lent")
    os.makedirs(folder)
    for sp in _site_packages():
        for entry in os.listdir(sp):
            low = entry.lower()
            if entry.endswith(".pth") or entry.startswith("__editable__") or low.startswith(leave_out or ("\0",)):
                continue
            if only and not (low in only or low.startswith(tuple(f"{o}-" for o in only))):
                continue
            link = os.path.join(folder, entry)
            if not os.path.lexists(link):
                os.symlink(os.path.join(sp, entry), link)
    return folder


def _clean_env(**extra) -> dict:
    """This process's environment without pip's settings, fastattn's build switches, PYTHONPATH and
    TRITON_INTERPRET, so the child sees only what the test gives it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "FASTATTN_", "PYTHON")) and k not in ("TRITON_INTERPRET", "VIRTUAL_ENV")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1",
               PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def _run(cmd, cwd, env, timeout=PIP_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _wheelhouse(dest: str, *dists: str) -> str:
    folder = os.path.join(dest, "wheels")
    os.makedirs(folder, exist_ok=True)
    for d in dists:
        _repack(d, folder)
    return folder


def _wheel_build_record(whl_dir: str) -> dict:
    """The fastattn/_build_info.py inside the one wheel in whl_dir, as a dict."""
    (name,) = [n for n in os.listdir(whl_dir) if n.startswith("fastattn-") and n.endswith(".whl")]
    with zipfile.ZipFile(os.path.join(whl_dir, name)) as z:
        text = z.read("fastattn/_build_info.py").decode()
        has_ext = any(n.startswith("fastattn/_C.") for n in z.namelist())
    record: dict = {}
    exec(compile(text, "_build_info.py", "exec"), record)
    record["_has_ext"] = has_ext
    return record


# ---------------------------------------------------------------------------------------------------------------
# End to end: plain `pip install .` into a fresh venv
# ---------------------------------------------------------------------------------------------------------------
_PROBE = r"""
import importlib.metadata as m, json, sys
import fastattn, numpy, torch
out = {"fastattn_file": fastattn.__file__, "numpy_file": numpy.__file__, "prefix": sys.prefix,
       "requires": m.requires("fastattn"), "backends": fastattn.available_backends()}
if "--triton" in sys.argv and out["backends"]["triton"] is True:
    x = torch.randn(5, 77, dtype=torch.float32)
    y = fastattn.softmax(x, temperature=0.7, backend="triton")
    ref = torch.softmax(x.double() / 0.7, -1)
    out["softmax_rel_err"] = float((y.double() - ref).norm() / ref.norm())
print(json.dumps(out))
"""


def _fresh_venv(tmp: str, lent: str):
    """A new virtual environment (no pip of its own) that also sees the packages linked in ``lent``."""
    env_dir = os.path.join(tmp, "venv")
    venv.create(env_dir, with_pip=False, symlinks=True)
    py = os.path.join(env_dir, "bin", "python")
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                   _clean_env()).stdout.strip()
    with open(os.path.join(purelib, "_fastattn_test_lent.pth"), "w") as f:
        f.write(lent + "\n")  # a bare path: appended to sys.path after the venv's own site-packages
    return py, purelib


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory):
    """A fresh venv holding fastattn from a plain `pip install .` of a copy of this tree."""
    tmp = str(tmp_path_factory.mktemp("plain_install"))
    src = _copy_source(tmp)
    wheels = _wheelhouse(tmp, "setuptools", "numpy")
    py, purelib = _fresh_venv(tmp, _lend_packages(tmp, leave_out=("fastattn", "numpy")))
    # The install itself: build isolation on, as users type it. --no-deps because the lent packages are this
    # machine's, not always a set pip's resolver accepts (the dev environment pins triton 3.6 beside a torch
    # that asks for 3.8), so pip would try to "fix" them; the dependencies that fastattn's installed metadata
    # declares and the environment lacks are installed right after, by _INSTALL_DEPS, as pip would.
    cmd = [py, "-m", "pip", "install", "--no-deps", "--no-index", "--find-links", wheels, "--no-compile", "."]
    res = _run(cmd, src, _clean_env())
    assert res.returncode == 0, f"plain pip install failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    deps = _run([py, "-c", _INSTALL_DEPS, wheels], tmp, _clean_env())
    assert deps.returncode == 0, f"installing fastattn's dependencies failed:\n{deps.stdout}\n{deps.stderr}"
    return types.SimpleNamespace(tmp=tmp, src=src, py=py, purelib=purelib, wheels=wheels,
                                 log=res.stdout + res.stderr, deps_installed=json.loads(deps.stdout.split("\n")[-2]))


# fastattn's declared requirements (no extras) that this environment does not satisfy, installed from the
# wheelhouse; prints the list it installed.
_INSTALL_DEPS = r"""
import importlib.metadata as m, json, subprocess, sys
from pip._vendor.packaging.requirements import Requirement
missing = []
for text in m.requires("fastattn") or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        if req.specifier.contains(m.version(req.name), prereleases=True):
            continue
    except m.PackageNotFoundError:
        pass
    missing.append(str(req))
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--find-links", sys.argv[1],
                    "--no-compile", *missing], check=True, stdout=subprocess.DEVNULL)
print(json.dumps(missing))
"""


@pytest.fixture(scope="module")
def installed(plain_install):
    """What the installed fastattn says in a new process (one process for all checks: each import of torch
    costs seconds), with the Triton interpreter on so that the Triton path on the CPU is exercised too."""
    res = _run([plain_install.py, "-c", _PROBE, "--triton"], plain_install.tmp, _clean_env(TRITON_INTERPRET="1"),
               timeout=300)
    assert res.returncode == 0, f"probe failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_plain_install_is_the_fresh_environments_own(plain_install, installed):
    assert installed["fastattn_file"].startswith(plain_install.purelib), installed
    assert installed["numpy_file"].startswith(plain_install.purelib), "numpy must come from fastattn's deps"
    names = {r.split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip() for r in installed["requires"]
             if "extra ==" not in r}
    assert {"torch", "numpy"} <= names, installed["requires"]
    assert [r.split("<")[0].split(">")[0] for r in plain_install.deps_installed] == ["numpy"]


def test_plain_install_says_why_cuda_is_missing(installed):
    backends = installed["backends"]
    assert backends["torch"] is True
    cuda = backends["cuda"]
    assert isinstance(cuda, str), backends
    assert "FASTATTN_BUILD_CUDA=0" not in cuda and "no nvcc" not in cuda, cuda
    assert "isolated build" in cuda and REINSTALL in cuda, cuda
    assert f"torch {torch.__version__}" in cuda, cuda  # the torch that the isolated build could not see


def test_plain_install_runs_triton_under_the_interpreter(installed):
    pytest.importorskip("triton")
    assert installed["backends"]["triton"] is True, installed["backends"]
    assert installed["softmax_rel_err"] < 1e-6, installed


# ---------------------------------------------------------------------------------------------------------------
# Each build decision, with `pip wheel` (build only)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("wheel_builds"))
    return types.SimpleNamespace(tmp=tmp, src=_copy_source(tmp), wheels=_wheelhouse(tmp, "setuptools"))


def _pip_wheel(copy, out_name, *flags, **env):
    out = os.path.join(copy.tmp, out_name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--find-links", copy.wheels,
           "-w", out, *flags, "."]
    return out, _run(cmd, copy.src, _clean_env(**env))


def test_isolated_build_with_build_cuda_1_fails_with_the_command(source_copy):
    _, res = _pip_wheel(source_copy, "w_force", FASTATTN_BUILD_CUDA="1")
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert "FASTATTN_BUILD_CUDA=1 but the CUDA extension cannot be built" in text, text[-3000:]
    assert "isolated build" in text and REINSTALL in text, text[-3000:]


def test_isolated_build_records_its_reason(source_copy):
    out, res = _pip_wheel(source_copy, "w_plain")
    assert res.returncode == 0, res.stderr[-3000:]
    rec = _wheel_build_record(out)
    assert rec["BUILT_CUDA"] is False and not rec["_has_ext"]
    assert rec["TORCH"] is None  # the isolated build could not import torch ...
    assert "isolated build" in rec["REASON"] and rec["FIX"] == REINSTALL, rec


def test_isolated_build_without_any_torch(source_copy, tmp_path):
    """An environment with no torch at all (pip only): the record says torch is missing and to install it."""
    py, _ = _fresh_venv(str(tmp_path), _lend_packages(str(tmp_path), only=("pip",)))
    out = str(tmp_path / "w_notorch")
    res = _run([py, "-m", "pip", "wheel", "--no-deps", "--no-index", "--find-links", source_copy.wheels, "-w", out,
                "."], source_copy.src, _clean_env())
    assert res.returncode == 0, res.stderr[-3000:]
    rec = _wheel_build_record(out)
    assert rec["BUILT_CUDA"] is False and rec["TORCH"] is None, rec
    assert rec["REASON"].startswith("torch is not installed in this environment"), rec
    assert "install torch first" in rec["FIX"] and REINSTALL in rec["FIX"], rec


def _setup_py_record(copy, **env) -> dict:
    """Run only setup.py's decision (`python setup.py --version`, no build) in the copy; read its record."""
    res = _run([sys.executable, "setup.py", "--version"], copy.src, _clean_env(**env))
    assert res.returncode == 0, res.stderr[-3000:]
    record: dict = {}
    with open(os.path.join(copy.src, "fastattn", "_build_info.py")) as f:
        exec(compile(f.read(), "_build_info.py", "exec"), record)
    return record


def test_build_cuda_0_records_the_switch(source_copy):
    rec = _setup_py_record(source_copy, FASTATTN_BUILD_CUDA="0")
    assert rec["BUILT_CUDA"] is False and rec["MODE"] == "0"
    assert "FASTATTN_BUILD_CUDA=0" in rec["REASON"], rec


def test_build_that_sees_torch_records_the_real_obstacle(source_copy):
    """Without isolation the build imports this torch; with no nvcc to be found, it says that (or, with a CPU
    torch, that torch is a CPU build) and the fix."""
    rec = _setup_py_record(source_copy, CUDA_HOME="/nonexistent-cuda", PATH="/usr/bin:/bin")
    assert rec["BUILT_CUDA"] is False and rec["TORCH"] == torch.__version__, rec
    if torch.version.cuda:
        assert rec["REASON"] == "no nvcc found in CUDA_HOME=/nonexistent-cuda", rec
        assert "CUDA toolkit" in rec["FIX"] and REINSTALL in rec["FIX"], rec
    else:
        assert "is a CPU build" in rec["REASON"], rec


def test_bad_build_cuda_value_is_refused(source_copy):
    res = _run([sys.executable, "setup.py", "--version"], source_copy.src, _clean_env(FASTATTN_BUILD_CUDA="yes"))
    assert res.returncode != 0 and "FASTATTN_BUILD_CUDA must be auto, 0 or 1" in res.stderr, res.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# The runtime wording, from a fake build record (no pip)
# ---------------------------------------------------------------------------------------------------------------
def _with_record(monkeypatch, **fields):
    mod = types.ModuleType("fastattn._build_info")
    mod.__dict__.update(fields)
    monkeypatch.setitem(sys.modules, "fastattn._build_info", mod)
    import fastattn
    monkeypatch.setattr(fastattn, "_build_info", mod, raising=False)


def _missing_extension(monkeypatch):
    real = importlib.import_module

    def fail(name, *a, **k):
        if name == "fastattn._C":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fail)


@pytest.mark.parametrize("reason, fix", [
    ("FASTATTN_BUILD_CUDA=0 was set at install", "unset it and run " + REINSTALL),
    ("pip's isolated build environment cannot import torch, although torch 2.14.1 (CUDA 13.0) is installed",
     REINSTALL),
    ("torch 2.14.1+cpu is a CPU build (the extension needs a CUDA build of torch)", None),
])
def test_status_states_the_recorded_reason(monkeypatch, reason, fix):
    _with_record(monkeypatch, BUILT_CUDA=False, REASON=reason, FIX=fix, TORCH=None)
    _missing_extension(monkeypatch)
    why = _cuda._load()
    assert isinstance(why, str) and reason in why
    assert (fix in why) if fix else ("to build it" not in why)


def test_status_without_a_build_record(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastattn._build_info", None)  # import fails: a checkout never built
    import fastattn
    monkeypatch.delattr(fastattn, "_build_info", raising=False)
    _missing_extension(monkeypatch)
    why = _cuda._load()
    assert "never built" in why and REINSTALL in why, why


def test_status_when_the_build_said_yes_but_the_module_is_gone(monkeypatch):
    _with_record(monkeypatch, BUILT_CUDA=True, REASON="torch 2.14.1 (CUDA 13.0), nvcc 13.0", FIX=None,
                 TORCH=torch.__version__)
    _missing_extension(monkeypatch)
    why = _cuda._load()
    assert "not installed" in why and REINSTALL in why, why


def test_status_on_a_torch_mismatch_names_both_versions(monkeypatch):
    _with_record(monkeypatch, BUILT_CUDA=True, REASON="...", FIX=None, TORCH="2.0.0")

    def fail(name, *a, **k):
        raise ImportError("_C.abi3.so: undefined symbol: _ZN3c105ErrorC2E")

    monkeypatch.setattr(importlib, "import_module", fail)
    why = _cuda._load()
    assert "built against torch 2.0.0" in why and f"this is torch {torch.__version__}" in why, why


# ---------------------------------------------------------------------------------------------------------------
# The interpreter's numpy requirement
# ---------------------------------------------------------------------------------------------------------------
def _fake_versions(monkeypatch, triton_version, numpy_version):
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__=triton_version))
    monkeypatch.setitem(sys.modules, "numpy", types.SimpleNamespace(__version__=numpy_version))


@pytest.mark.parametrize("triton_version, numpy_version, ok", [
    ("3.6.0", "2.3.5", True), ("3.6.0", "2.4.1", False), ("3.5.1", "2.4.0", False),
    ("3.7.1", "2.4.1", True), ("3.8.0", "2.4.1", True), ("3.6.0", "1.26.4", True),
])
def test_interpreter_numpy_bound(monkeypatch, triton_version, numpy_version, ok):
    _fake_versions(monkeypatch, triton_version, numpy_version)
    st = _backend._interpreter_numpy_status()
    if ok:
        assert st is True
    else:
        assert isinstance(st, str) and "numpy<2.4" in st and numpy_version in st


def test_interpreter_without_numpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy raises ImportError
    st = _backend._interpreter_numpy_status()
    assert isinstance(st, str) and "needs numpy" in st and "pip install numpy" in st
