"""The ranked table of a comparison, rebuilt from its tidy rows alone (a pure rows → table function, so the
report can draw it from files without importing the comparison machinery)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from conceptspace.results import ALL_PROMPTS

__all__ = ["BASE", "NO_CLEAR_WINNER", "STUDENT", "no_clear_winner", "ranking"]

BASE, STUDENT = "base", "distilled"
"""The two reference methods of every comparison: the base and the student."""


NO_CLEAR_WINNER = (
    "no method is more diverse than the student beyond its 95% interval: the ranking orders point estimates only, "
    "and none of them is a win"
)
"""What a comparison says when every method's diversity gain over the student has an interval reaching 0."""


def _find(
    rows: Sequence[dict[str, Any]], regime: str, metric: str, embedder: str | None = None
) -> dict[str, Any] | None:
    for row in rows:
        same = row["prompt"] == ALL_PROMPTS and row["regime"] == regime and row["metric"] == metric
        if same and (embedder is None or row.get("embedder") == embedder):
            return row
    return None


def _only_prompt(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as :func:`ranking` reads them: the ``(all prompts)`` rows and, for a single prompt, its rows of every
    measure that has no ``(all prompts)`` row (the testbed's probe measures one prompt per row), relabelled so."""
    prompts = {r["prompt"] for r in rows} - {ALL_PROMPTS}
    if len(prompts) != 1:
        return list(rows)
    averaged = {(r["regime"], r["metric"], r.get("embedder")) for r in rows if r["prompt"] == ALL_PROMPTS}
    return [
        r
        if r["prompt"] == ALL_PROMPTS or (r["regime"], r["metric"], r.get("embedder")) in averaged
        else {**r, "prompt": ALL_PROMPTS}
        for r in rows
    ]


def _cell(row: dict[str, Any] | None) -> dict[str, float] | None:
    if row is None:
        return None
    return {"value": row["value"], "ci_low": row["ci_low"], "ci_high": row["ci_high"]}


def ranking(rows: Sequence[dict[str, Any]], settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ranked table of a comparison, from its tidy rows and ``run.json``'s ``parameters.compare``.

    One entry per method (the base and the student included), averaged over prompts: diversity and its paired
    gains over the student and the base, quality and its paired difference from the student, the Fréchet distance
    to the reference, network evaluations and seconds per image (and relative to the student). Methods are ranked
    by their diversity gain over the student, highest first, the references last. ``versus_student`` says whether
    a method is ``"more diverse"`` or ``"less diverse"`` than the student beyond the gain's 95% interval, or shows
    ``"no clear difference"``; ``pareto`` marks the methods no other beats on diversity, quality and evaluations at
    once (on the point values) — among the methods, only those more diverse than the student.
    """
    rows = _only_prompt(rows)
    diversity, quality = settings["diversity"], settings["quality"]
    higher = bool(quality.get("higher_is_better", True))
    student_seconds = _find(rows, STUDENT, "seconds_per_image")
    table = []
    for method in [BASE, STUDENT, *settings["methods"]]:
        d_metric, d_embedder = diversity["metric"], diversity.get("embedder")
        q_metric, q_embedder = quality["metric"], quality.get("embedder")
        seconds = _find(rows, method, "seconds_per_image")
        evaluations = _find(rows, method, "evaluations")
        entry = {
            "method": method,
            "diversity": _cell(_find(rows, method, d_metric, d_embedder)),
            "diversity_vs_student": _cell(
                _find(rows, f"{method} - {STUDENT}", f"diff_{d_metric}", d_embedder)
            ),
            "diversity_vs_base": _cell(_find(rows, f"{method} - {BASE}", f"diff_{d_metric}", d_embedder)),
            "quality": _cell(_find(rows, method, q_metric, q_embedder)),
            "quality_vs_student": _cell(_find(rows, f"{method} - {STUDENT}", f"diff_{q_metric}", q_embedder)),
            "fd": _cell(_find(rows, method, "fd")),
            "evaluations": None if evaluations is None else evaluations["value"],
            "seconds_per_image": _cell(seconds),
            "relative_seconds": None
            if seconds is None or student_seconds is None or not student_seconds["value"]
            else seconds["value"] / student_seconds["value"],
        }
        table.append(entry)

    def point(entry: dict[str, Any], key: str) -> float:
        cell = entry[key]
        return math.nan if cell is None else float(cell["value"])

    references = {BASE, STUDENT}
    for entry in table:
        entry["versus_student"] = (
            None if entry["method"] in references else _versus(entry["diversity_vs_student"])
        )
        unbeaten = not any(_dominates(other, entry, point, higher) for other in table if other is not entry)
        entry["pareto"] = unbeaten and entry["versus_student"] in (None, "more diverse")

    def order(entry: dict[str, Any]) -> tuple[int, float]:
        gain = point(entry, "diversity_vs_student")
        return (entry["method"] in references, -gain if math.isfinite(gain) else math.inf)

    table.sort(key=order)
    for rank, entry in enumerate(table, 1):
        entry["rank"] = rank if entry["method"] not in references else None
    return table


def no_clear_winner(table: Sequence[Mapping[str, Any]]) -> bool:
    """Whether no method of a :func:`ranking` table is more diverse than the student beyond its interval (False
    when no method's gain was measured)."""
    verdicts = [entry.get("versus_student") for entry in table if entry.get("versus_student") is not None]
    return bool(verdicts) and "more diverse" not in verdicts


def _versus(gain: Mapping[str, float] | None) -> str | None:
    if gain is None or not (math.isfinite(gain["ci_low"]) and math.isfinite(gain["ci_high"])):
        return None
    if gain["ci_low"] > 0:
        return "more diverse"
    if gain["ci_high"] < 0:
        return "less diverse"
    return "no clear difference"


def _dominates(a: dict[str, Any], b: dict[str, Any], point: Any, higher: bool) -> bool:
    """Whether ``a`` is at least as good as ``b`` on diversity, quality and evaluations, and better on one."""
    sign = 1.0 if higher else -1.0
    pairs = [
        (point(a, "diversity"), point(b, "diversity")),
        (sign * point(a, "quality"), sign * point(b, "quality")),
        (-(a["evaluations"] or 0.0), -(b["evaluations"] or 0.0)),
    ]
    pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    return bool(pairs) and all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)
