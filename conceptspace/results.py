"""The project-wide results format: tidy metric rows in ``DIR/metrics.json`` and ``DIR/metrics.csv``.

Each row has at least ``prompt, regime, metric, value, ci_low, ci_high, n``; more keys are allowed (``model``,
``embedder``, ``step``, …). Reports are rebuilt from these files alone, without rerunning any model.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from conceptspace.io import write_json, write_text

REQUIRED_COLUMNS = ("prompt", "regime", "metric", "value", "ci_low", "ci_high", "n")

ALL_PROMPTS = "(all prompts)"
"""The ``prompt`` of rows that average over every prompt of a run."""

DIVERSITY_METRICS = ("pairwise_distance", "vendi", "lpips")
"""The diversity metrics measured from images (``diff_<metric>`` rows compare two regimes on them)."""

PROBE_EMBEDDER = "probe"
"""The ``embedder`` of ground-truth rows: factors the testbed's probe read from the images."""


def metric_row(
    prompt: str,
    regime: str,
    metric: str,
    value: float,
    ci_low: float = math.nan,
    ci_high: float = math.nan,
    n: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """One tidy row; ``extra`` keys (``model``, ``embedder``, ``step``, …) follow the required ones."""
    return {
        "prompt": prompt,
        "regime": regime,
        "metric": metric,
        "value": float(value),
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "n": int(n),
        **extra,
    }


def format_p_value(value: Any, *, named: bool = False) -> str:
    """A p-value as every table and command prints it: three decimals, and ``< 0.001`` below (a test with 1,000
    permutations cannot tell smaller ones apart); ``—`` when there is none. ``named``: ``p = 0.012`` /
    ``p < 0.001``."""
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return "p = —" if named else "—"
    text = "< 0.001" if value < 0.001 else f"{value:.3f}"
    if not named:
        return text
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def validate_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check every row has the required columns with numeric values; return them as plain dicts."""
    checked = []
    for index, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"metric row {index} lacks {', '.join(missing)}: {dict(row)}")
        for column in ("value", "ci_low", "ci_high"):
            try:
                float(row[column])
            except (TypeError, ValueError):
                raise ValueError(f"metric row {index}: {column} is not a number: {row[column]!r}") from None
        checked.append(dict(row))
    return checked


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """Required columns first, then every extra key in first-seen order."""
    extra: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in REQUIRED_COLUMNS:
                extra[key] = None
    return [*REQUIRED_COLUMNS, *extra]


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns_of(rows), lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_metrics(out_dir: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` (atomically) and return their paths."""
    rows = validate_rows(rows)
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / "metrics.json", [_jsonable(r) for r in rows])
    csv_path = write_text(out_dir / "metrics.csv", rows_to_csv(rows))
    return json_path, csv_path


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``DIR/metrics.json`` (NaN CIs come back as NaN)."""
    path = Path(out_dir) / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run a measuring command (e.g. `conceptspace diversity`) first"
        )
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path} must hold a list of metric rows (JSON objects)")
    for row in rows:  # missing CIs are written as null
        for column in ("value", "ci_low", "ci_high"):
            if column in row and row[column] is None:
                row[column] = math.nan
    return validate_rows(rows)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: missing CIs are written as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
