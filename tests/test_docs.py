"""The docs' examples run: each file's ```python, ```bash and ```console blocks in document order, in a
fresh process and an empty folder (the repository's ``analyses/`` and ``sliders/`` linked in, as in a
checkout), so a block may use what an earlier one made or wrote, all on one torch thread. Python blocks share
one namespace. Shell blocks run under ``bash -euo pipefail`` with the venv's ``conceptspace`` and ``python``
first on PATH, offline and with an empty Hugging Face cache, so what the docs show for a machine without the
weights is what runs. A ```console block's ``$ `` lines are commands (``\\`` continues one); the lines after
a command are its output, which must match what it prints (:func:`output_mismatch`), and its exit status must
be 0, or 2 when the output shown is an ``error:``. A block that needs weights, files, a GPU or much time that
this machine lacks says so on the line before it (``<!-- not run: why -->``) and is counted, not run.

Run as a script (``python tests/test_docs.py``, the blocks as JSON on stdin), this module is the driver."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).parents[1]
LANGUAGES = ("python", "bash", "console")
SHELL = ("bash", "console")
NOT_RUN = re.compile(r"<!-- not run: (?P<why>[^>]+?) -->")
LINKED = ("analyses", "sliders")  # repository folders a doc's command may name, linked into the run's folder
TAIL = 3000  # characters of a failing block's output shown
SHELL_TIMEOUT = 600  # seconds for one shell block or console command
THREADS = os.environ.get("OMP_NUM_THREADS", "1")


class Block(NamedTuple):
    number: int  # from 1, over the file's code blocks of every language in LANGUAGES
    line: int  # of the opening fence, from 1
    language: str
    code: str
    why: str | None  # why it is not run, or None: it runs


def code_blocks(path: Path) -> list[Block]:
    """The ```python / ```bash / ```console blocks of a Markdown file, in order (other fences: not code)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\S*)", lines[i])
        if fence is None:
            i += 1
            continue
        end = lines.index("```", i + 1)
        if fence[1] in LANGUAGES:
            why = NOT_RUN.fullmatch(lines[i - 1]) if i else None
            code = "".join(line + "\n" for line in lines[i + 1 : end])
            blocks.append(Block(len(blocks) + 1, i + 1, fence[1], code, why and why["why"]))
        i = end + 1
    return blocks


DOCS = [path for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if code_blocks(path)]


# --- console blocks -----------------------------------------------------------------------------------------


def console_commands(code: str) -> list[tuple[str, str]]:
    """(command, output shown) pairs of a ```console block: a line starting with ``$ `` is a command (a
    trailing ``\\`` continues it on the next line, kept for bash to join), the lines after it up to the next
    ``$ `` its output."""
    commands: list[tuple[str, list[str]]] = []
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            if not commands:
                raise ValueError(f"a console block must start with a `$ ` command, not {lines[i]!r}")
            commands[-1][1].append(lines[i])
            i += 1
            continue
        command = [lines[i][2:]]
        while command[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            command.append(lines[i])
        commands.append(("\n".join(command), []))
        i += 1
    return [(command, "".join(line + "\n" for line in output)) for command, output in commands]


def _varies(token: str) -> bool:
    """Numbers, times, seeds and paths differ between machines and runs: a token with a digit or a path
    separator."""
    return any(c.isdigit() for c in token) or "/" in token or os.sep in token


def _screen_lines(text: str) -> list[list[str]]:
    """The tokens of each non-empty line; a line redrawn with carriage returns is a progress bar: left out."""
    return [line.split() for line in text.split("\n") if line.strip() and "\r" not in line]


def output_mismatch(shown: str, printed: str) -> str | None:
    """None when ``printed`` matches the output the docs show, else what differs. The non-empty lines must be
    as many, and each line the same tokens (split on whitespace, so column widths may differ), except that a
    token the docs show with a digit or a path separator stands for any token that has one too. Progress bars
    (lines with a carriage return) are left out."""
    expected, actual = _screen_lines(shown), _screen_lines(printed)
    if len(expected) != len(actual):
        return f"{len(actual)} non-empty lines printed, {len(expected)} shown"
    for number, (want, got) in enumerate(zip(expected, actual, strict=True), 1):
        same = len(want) == len(got) and all(
            w == g or (_varies(w) and _varies(g)) for w, g in zip(want, got, strict=True)
        )
        if not same:
            return f"line {number}: shown {' '.join(want)!r}\n  printed {' '.join(got)!r}"
    return None


# --- the driver: one process per doc file -------------------------------------------------------------------


def _shell_env(folder: Path) -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)  # the venv's conceptspace and python come first
    cache = folder / ".hf-cache-empty"
    cache.mkdir(exist_ok=True)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",  # stdout and stderr interleaved as on a terminal
    }


def _fail(name: str, block: dict, what: str, output: str = "") -> None:
    tail = output[-TAIL:]
    sys.exit(
        f"{name} block {block['number']} (line {block['line']}, {block['language']}) {what}"
        + (f"\n{tail}" if tail else "")
    )


def _bash(script: str, env: dict[str, str]) -> tuple[int | None, str]:
    """The exit status (None: timed out) and what ``script`` printed, stdout and stderr interleaved."""
    command = ["bash", "-euo", "pipefail", "-c", script]
    try:
        result = subprocess.run(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=SHELL_TIMEOUT
        )
    except subprocess.TimeoutExpired as stopped:
        return None, (stopped.output or b"").decode(errors="replace")
    return result.returncode, result.stdout.decode(errors="replace")


def _run_shell(name: str, block: dict, env: dict[str, str]) -> None:
    if block["language"] == "bash":
        status, printed = _bash(block["code"], env)
        if status != 0:
            _fail(name, block, f"failed with exit status {status}", printed)
        return
    for command, shown in console_commands(block["code"]):
        status, printed = _bash(command, env)
        expected = 2 if shown.lstrip().startswith("error:") else 0
        if status != expected:
            _fail(name, block, f"`{command}` exited with {status}, not {expected}", printed)
        mismatch = output_mismatch(shown, printed) if shown.strip() else None
        if mismatch:
            _fail(name, block, f"`{command}` printed other than the docs show: {mismatch}", printed)


def drive() -> None:
    """Run the blocks given as JSON on stdin ({"name", "blocks"}) in order in the current folder; exit with a
    message naming the first that fails."""
    task = json.loads(sys.stdin.read())
    name, folder = task["name"], Path.cwd()
    for linked in LINKED:
        if (ROOT / linked).is_dir():
            (folder / linked).symlink_to(ROOT / linked)
    env, namespace = _shell_env(folder), {"__name__": "__docs__"}
    for block in task["blocks"]:
        if block["language"] in SHELL:
            _run_shell(name, block, env)
            continue
        try:
            exec(compile(block["code"], f"{name} block {block['number']}", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            _fail(name, block, "failed")


# --- the tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_the_examples_run(path: Path, tmp_path: Path) -> None:
    runnable = [block._asdict() for block in code_blocks(path) if block.why is None]
    if not runnable:
        pytest.skip(f"every example of {path.name} needs what this machine lacks")
    result = subprocess.run(
        [sys.executable, __file__],
        input=json.dumps({"name": path.name, "blocks": runnable}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
        # one torch thread, here and in the commands: two spin waiting for each other, and on a 2-core machine
        # with one core busy the testbed's transfer example took 497 s on two threads, 42 s on one
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": THREADS},
    )
    assert result.returncode == 0, f"{path.name}: {result.stderr[-TAIL:]}"


def test_every_example_that_is_not_run_says_why() -> None:
    counts = {(kind, state): 0 for kind in ("python", "shell") for state in ("run", "not run")}
    for path in DOCS:
        for block in code_blocks(path):
            assert block.code.strip(), (
                f"an empty ```{block.language} block in {path.name} at line {block.line}"
            )
            assert block.why is None or len(block.why.split()) >= 3, (
                f"{path.name} line {block.line}: say what the example needs, not {block.why!r}"
            )
            kind = "python" if block.language == "python" else "shell"
            counts[kind, "not run" if block.why else "run"] += 1
            if block.language == "console" and block.why is None:
                console_commands(block.code)  # well formed: starts with a command
    assert counts["python", "run"] > counts["python", "not run"], counts  # Python examples: mostly run here
    assert counts["shell", "run"] > 0, counts


def test_console_commands_are_split_from_their_output() -> None:
    code = "$ conceptspace generate --base a \\\n    --prompt x\nbase  4 images\n$ ls\n"
    assert console_commands(code) == [
        ("conceptspace generate --base a \\\n    --prompt x", "base  4 images\n"),
        ("ls", ""),
    ]
    with pytest.raises(ValueError):
        console_commands("output before any command\n")


def test_the_output_comparison_tolerates_numbers_and_paths_but_not_other_changes() -> None:
    shown = "base              4 images     1.59 s  schedule 951:b 901:b\nwrote runs/tiny/run.json\n"
    bar = "\rLoading weights:   0%|   | 0/40\rLoading weights: 100%|###| 40/40\n"  # a progress bar
    same = (
        bar + "base 4 images 12.07 s schedule 951:b 901:b\n\nwrote /tmp/x/run.json\n"
    )  # widths, times, paths
    assert output_mismatch(shown, same) is None
    for wrong in (
        "base 4 images 1.59 s schedule 951:b\nwrote runs/tiny/run.json\n",  # a token fewer
        "hybrid 4 images 1.59 s schedule 951:b 901:b\nwrote runs/tiny/run.json\n",  # another word
        "base 4 images fast s schedule 951:b 901:b\nwrote runs/tiny/run.json\n",  # a word for a number
        "base 4 images 1.59 s schedule 951:b 901:b\n",  # a line fewer
    ):
        assert output_mismatch(shown, wrong), wrong
    assert output_mismatch("cached\nno\n", "cached\nyes\n") == "line 2: shown 'no'\n  printed 'yes'"


if __name__ == "__main__":
    drive()
