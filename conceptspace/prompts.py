"""Prompt files, read one way by every command: a CSV with a ``prompt`` column (``case_number`` and
``evaluation_seed`` read when present; a spreadsheet's byte-order mark accepted), or plain text with one prompt
per line. An empty prompt in a CSV row is refused, naming its line; blank lines of a text file are skipped."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conceptspace.sampling import check_seed

__all__ = ["Case", "read_cases", "read_prompt_file"]


@dataclass(frozen=True)
class Case:
    """One prompt of a prompt set: its number (in file names), its text and the seed of its image 0."""

    number: int
    prompt: str
    seed: int


def read_cases(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    from_case: int | None = None,
    till_case: int | None = None,
) -> list[Case]:
    """The cases of a prompt file whose number lies in ``[from_case, till_case]`` (both inclusive).

    A ``.csv`` file needs a ``prompt`` column; ``case_number`` (default: the row index) and ``evaluation_seed``
    (default: ``seed``) are read when present, other columns are ignored. Prompts may hold commas, quotes and line
    breaks (standard CSV quoting). Any other file is plain text: one prompt per line, blank lines and lines
    starting with ``#`` skipped, case number = index among the prompts, every case seeded with ``seed``.

    Raises ValueError naming the line of a row with an empty prompt, a non-integer number or seed, or a repeated
    case number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if from_case is not None and till_case is not None and from_case > till_case:
        raise ValueError(f"--from-case {from_case} is after --till-case {till_case}")
    if path.suffix.lower() == ".csv":
        cases = _read_csv_cases(path, seed)
    else:
        cases = [Case(number, prompt, seed) for number, prompt in enumerate(_text_prompts(path))]
    selected = [
        case
        for case in cases
        if (from_case is None or case.number >= from_case) and (till_case is None or case.number <= till_case)
    ]
    if not selected:
        numbers = [case.number for case in cases]
        wanted = (
            f"[{'start' if from_case is None else from_case}, {'end' if till_case is None else till_case}]"
        )
        raise ValueError(
            f"no case of {path} lies in {wanted}: its case numbers run from {min(numbers)} to {max(numbers)}"
        )
    return selected


def _read_csv_cases(path: Path, default_seed: int) -> list[Case]:
    cases: list[Case] = []
    first_line: dict[int, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "prompt" not in columns:
            raise ValueError(f"{path} has no 'prompt' column (columns: {', '.join(columns) or 'none'})")
        for index, row in enumerate(reader):
            where = f"{path}, row ending on line {reader.line_num}"
            prompt = row.get("prompt")
            if prompt is None or not prompt.strip():
                raise ValueError(f"{where}: the prompt is empty")
            number = _integer(row, "case_number", where) if "case_number" in columns else index
            seed = _integer(row, "evaluation_seed", where) if "evaluation_seed" in columns else default_seed
            check_seed(seed, f" ({where}, column evaluation_seed)")
            if number in first_line:
                raise ValueError(
                    f"{where}: case_number {number} repeats (first on line {first_line[number]}); "
                    "each case needs its own number, its images are named after it"
                )
            first_line[number] = reader.line_num
            cases.append(Case(number, prompt, seed))
    if not cases:
        raise ValueError(f"{path} holds no prompts")
    return cases


def _integer(row: dict[str, Any], column: str, where: str) -> int:
    value = row.get(column)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{where}: {column} {value!r} is not an integer") from None


def _text_prompts(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """The prompts of a prompt file (:func:`read_cases`' rules), in case order."""
    return [case.prompt for case in read_cases(path)]
