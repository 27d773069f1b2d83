"""The paper's claims, judged on a run's metric rows: "reproduced" or "not reproduced", with the evidence.

A verdict reads only tidy rows (``metrics.json``), so the demo prints it and the report shows it from the same
files. Diversity is the probe's *free-factor entropy* — the entropy of what the prompt leaves free among shape
and colour (shape×colour for "a shape", colour for "a triangle", shape for "a red shape"): entropy of a factor
the prompt fixes measures prompt errors, not diversity. Commitment is the probe's reading of shape and colour
in each step's x̂0 against the final image's (``metric="commitment"`` rows measured with ``testbed:probe``).

=========================  ==============================================================================
claim                      reproduced when, for the prompts of the run
=========================  ==============================================================================
collapse                   distilled − base < 0 (95% CI below 0) for every prompt
first-step commitment      the student's step-1 x̂0 shows the final shape and colour more often than the
                           base's (the student's CI above the base's) for every prompt
hybrid restores            hybrid − distilled > 0 (CI above 0) for every prompt, and hybrid − base's CI
                           reaches 0 for at least two thirds of them
causal                     replacing the first step (hybrid) is within noise of the base and replacing the
                           final steps (replace-final) within noise of the student (CIs include 0), for at
                           least two thirds of the prompts
=========================  ==============================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conceptspace.metrics import ALL_PROMPTS

__all__ = ["PROBE_EMBEDDER", "Verdict", "free_factor_metric", "verdict_lines", "verdicts"]

PROBE_EMBEDDER = "probe"
"""The ``embedder`` column of ground-truth rows (factors read by the probe)."""
COMMITMENT_SIMILARITY = "testbed:probe"
COMMITTED = 0.6
"""The share of samples at which a model counts as committed (for the base's steps-to-commit figure)."""


@dataclass(frozen=True)
class Verdict:
    """One claim: whether the run reproduces it, and one line of evidence per prompt."""

    claim: str
    statement: str
    reproduced: bool | None  # None: the run lacks the regimes or rows the claim needs
    evidence: tuple[str, ...]

    @property
    def label(self) -> str:
        return {True: "reproduced", False: "not reproduced", None: "not measured"}[self.reproduced]


def free_factor_metric(prompt: str) -> str | None:
    """The probe entropy metric of what ``prompt`` leaves free among shape and colour (None if it fixes both)."""
    from conceptspace.testbed.data import fixed_factors

    free = [name for name in ("shape", "colour") if name not in fixed_factors(prompt)]
    return f"entropy_{'_'.join(free)}" if free else None


def _interval(row: dict[str, Any], unit: str = "", digits: int = 2) -> str:
    return (
        f"{row['value']:+.{digits}f}{unit} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}] "
        f"(n = {row['n']})"
    )


def _most(flags: Sequence[bool]) -> bool:
    return sum(flags) >= math.ceil(2 * len(flags) / 3)


class _Rows:
    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self.probe = {
            (r["prompt"], r["regime"], r["metric"]): r for r in rows if r.get("embedder") == PROBE_EMBEDDER
        }
        self.commitment: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rows:
            if r["metric"] == "commitment" and r.get("similarity") == COMMITMENT_SIMILARITY:
                self.commitment.setdefault((r["prompt"], r["regime"]), []).append(r)
        for curve in self.commitment.values():
            curve.sort(key=lambda r: r["step"])
        # the claims are judged per prompt (a mean over prompts fixes no factor of its own)
        prompts = dict.fromkeys(k[0] for k in self.probe if k[0] != ALL_PROMPTS)
        self.prompts = [p for p in prompts if free_factor_metric(p)]

    def diff(self, prompt: str, a: str, b: str) -> dict[str, Any] | None:
        return self.probe.get((prompt, f"{a} - {b}", f"diff_{free_factor_metric(prompt)}"))


def _collapse(rows: _Rows) -> Verdict:
    found = {p: rows.diff(p, "distilled", "base") for p in rows.prompts}
    evidence = tuple(f"{p}: distilled − base {_interval(r, ' bits')}" for p, r in found.items() if r)
    ok = None if not all(found.values()) or not found else all(r["ci_high"] < 0 for r in found.values())
    return Verdict("collapse", "the student is less diverse than the base", ok, evidence)


def _commitment(rows: _Rows) -> Verdict:
    evidence, flags = [], []
    for p in rows.prompts:
        base, student = rows.commitment.get((p, "base")), rows.commitment.get((p, "distilled"))
        if not base or not student:
            continue
        b, s = base[0], student[0]
        reach = next((r["step"] + 1 for r in base if r["value"] >= COMMITTED), None)
        steps = f"{reach} of {len(base)} steps" if reach else f"not within its {len(base)} steps"
        evidence.append(
            f"{p}: step-1 x̂0 shows the final shape and colour in {s['value']:.0%} [{s['ci_low']:.0%}, "
            f"{s['ci_high']:.0%}] of student samples, {b['value']:.0%} [{b['ci_low']:.0%}, {b['ci_high']:.0%}] "
            f"of base samples (n = {s['n']}); the base reaches {COMMITTED:.0%} after {steps}"
        )
        flags.append(s["ci_low"] > b["ci_high"])
    ok = all(flags) if flags and len(flags) == len(rows.prompts) else None
    return Verdict(
        "first-step commitment", "the student commits at its first step, the base later", ok, tuple(evidence)
    )


def _hybrid(rows: _Rows) -> Verdict:
    evidence, above, reaches = [], [], []
    for p in rows.prompts:
        vs_student, vs_base = rows.diff(p, "hybrid", "distilled"), rows.diff(p, "hybrid", "base")
        if not vs_student or not vs_base:
            continue
        evidence.append(
            f"{p}: hybrid − distilled {_interval(vs_student, ' bits')}; hybrid − base {_interval(vs_base, ' bits')}"
        )
        above.append(vs_student["ci_low"] > 0)
        reaches.append(vs_base["ci_high"] >= 0)
    ok = all(above) and _most(reaches) if above and len(above) == len(rows.prompts) else None
    return Verdict("hybrid restores", "one base step restores the base's diversity", ok, tuple(evidence))


def _causal(rows: _Rows) -> Verdict:
    evidence, first, final = [], [], []
    for p in rows.prompts:
        replace_first, replace_final = (
            rows.diff(p, "hybrid", "base"),
            rows.diff(p, "replace-final", "distilled"),
        )
        if not replace_first or not replace_final:
            continue
        evidence.append(
            f"{p}: replace-first − base {_interval(replace_first, ' bits')}; replace-final − distilled {_interval(replace_final, ' bits')}"
        )
        first.append(replace_first["ci_low"] <= 0 <= replace_first["ci_high"] or replace_first["ci_low"] > 0)
        final.append(replace_final["ci_low"] <= 0 <= replace_final["ci_high"])
    ok = _most(first) and _most(final) if first and len(first) == len(rows.prompts) else None
    return Verdict(
        "causal",
        "the first step decides diversity: replacing it restores it, replacing the final steps does not",
        ok,
        tuple(evidence),
    )


def verdicts(rows: Sequence[dict[str, Any]]) -> list[Verdict]:
    """The four verdicts of a testbed run's rows (collapse, first-step commitment, hybrid restores, causal)."""
    parsed = _Rows(rows)
    return [_collapse(parsed), _commitment(parsed), _hybrid(parsed), _causal(parsed)]


def verdict_lines(found: Sequence[Verdict]) -> list[str]:
    """Plain-text lines: ``<claim>: <label> — <statement>``, then the evidence indented."""
    lines = []
    for v in found:
        lines.append(f"{v.claim}: {v.label.upper()} — {v.statement}")
        lines += [f"    {line}" for line in v.evidence]
    return lines
