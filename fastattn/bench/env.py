"""What the results were measured on: the card, driver, versions, git sha and date, recorded with every run."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, cwd=None) -> Optional[str]:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_sha() -> str:
    """The commit measured: $FASTATTN_GIT_SHA if set (the GPU machine gets a copy of the tree without .git),
    else `git rev-parse HEAD`, with '+dirty' when the tree has uncommitted changes."""
    if os.environ.get("FASTATTN_GIT_SHA"):
        return os.environ["FASTATTN_GIT_SHA"]
    sha = _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT)
    if not sha:
        return "unknown"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT)
    return sha + ("+dirty" if dirty else "")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def collect(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda_runtime": torch.version.cuda or "none",
        "python": platform.python_version(),
        "host": platform.node(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["sm_count"] = props.multi_processor_count
        info["capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        drv = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(device.index or 0)])
        info["driver"] = drv.splitlines()[0] if drv else "unknown"
        try:
            info["cudnn"] = str(torch.backends.cudnn.version())
        except Exception:  # noqa: BLE001 - informational only
            info["cudnn"] = "unknown"
    else:
        info["gpu"] = "none (CPU)"
        info["driver"] = "none"
        info["cpu"] = platform.processor() or platform.machine()
    return info
