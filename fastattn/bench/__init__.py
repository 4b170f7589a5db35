"""fastattn's benchmark suite: every op against every baseline on the current GPU.

    python -m fastattn.bench --quick          # or the console script: fastattn-bench --quick
    python -m fastattn.bench --op softmax --dtype bf16
    python -m fastattn.bench --list --quick   # the plan, without running it

Without a GPU it checks correctness on small shapes on the CPU (Triton under the interpreter) and says that
speed figures need a GPU. Nothing here is imported by ``import fastattn``, and importing this package touches
no GPU and does not import Triton.
"""
from .core import Case, Options, Provider

__all__ = ["Case", "Options", "Provider"]
