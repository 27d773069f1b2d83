"""The docs' Python examples run: each file's ```python blocks in order, sharing one namespace (a block may use what
an earlier one made), in a fresh process and an empty folder. A block that needs weights, files or a GPU this
machine lacks says so on the line before it (``<!-- not run: why -->``) and is counted, not run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]+?) -->\n)?```python\n(?P<code>.*?)```", re.S)
DOCS = [
    path
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if "```python" in path.read_text()
]

# Runs the blocks one by one in one namespace; a failure names its block.
DRIVER = """
import json, sys, traceback
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__docs__"}
for number, code in blocks:
    try:
        exec(compile(code, f"block {number}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"block {number} failed")
"""


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(number from 1, code, why it is not run or None) of every ```python block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(n, m["code"], m["why"]) for n, m in enumerate(BLOCK.finditer(text), 1)]


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_the_python_examples_run(path: Path, tmp_path: Path) -> None:
    runnable = [(number, code) for number, code, why in python_blocks(path) if why is None]
    if not runnable:
        pytest.skip(f"every example of {path.name} needs what this machine lacks")
    result = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(runnable),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, f"{path.name}: {result.stderr[-3000:]}"


def test_every_example_that_is_not_run_says_why() -> None:
    counts = {"run": 0, "not run": 0}
    for path in DOCS:
        for _, code, why in python_blocks(path):
            assert code.strip(), f"an empty ```python block in {path.name}"
            counts["not run" if why else "run"] += 1
            assert why is None or len(why.split()) >= 3, (
                f"{path.name}: say what the example needs, not {why!r}"
            )
    assert counts["run"] > counts["not run"]  # the docs are mostly examples that run here
