"""The paper's claims, judged on a run's metric rows, per factor family: "reproduced" or "not reproduced", with
the evidence and the metric each verdict reads.

A verdict reads only tidy rows (``metrics.json``), so the demo prints it and the report shows it from the same
files. Each claim is judged on two factor families of the testbed probe's readings
(:data:`conceptspace.testbed.diversity.FAMILIES`): **layout**, the image's structure, on the position spread
(``spread_position``, pixels: what the paper's structure claims are about), and **appearance** on the entropy of
what the prompt leaves free among shape and colour (``entropy_shape_colour`` for "a shape", ``entropy_colour``
for "a triangle", ``entropy_shape`` for "a red shape"; entropy of a factor the prompt fixes measures prompt
errors, not diversity). Commitment is also judged on the whole image (``commitment`` rows: x̂0 against the final
image in an embedder's space, the paper's DreamSim curve).

=========================  ==============================================================================
claim                      reproduced when, for the prompts of the run
=========================  ==============================================================================
collapse                   distilled − base < 0 (95% CI below 0) for every prompt
first-step commitment      the student's step-1 x̂0 is more committed than the base's at the nearest
                           timestep (CIs apart) for every prompt: layout ``fixed_spread_position`` (share
                           of the final position spread), appearance ``commitment_shape_colour`` (share of
                           seeds showing the final shape and colour), whole image ``commitment``
hybrid restores            hybrid − distilled > 0 (CI above 0) for every prompt, and hybrid − base's CI
                           reaches 0 for at least two thirds of them
causal                     replace-final restores at most a quarter of what the hybrid restores
                           (``restored_ratio``: (replace-final − distilled) / (hybrid − distilled) ≤ 1/4,
                           its CI below 1) for at least two thirds of the prompts
=========================  ==============================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conceptspace.results import ALL_PROMPTS, PROBE_EMBEDDER

WORLD = "testbed"
"""The family whose ground truth (probe readings, what a prompt fixes) the verdicts read."""

__all__ = [
    "FAMILY_MEASURES",
    "PROBE_EMBEDDER",
    "Verdict",
    "free_factor_metric",
    "verdict_lines",
    "verdict_measure",
    "verdicts",
]

FAMILY_MEASURES = {"layout": "spread_position", "appearance": "free-factor entropy"}
"""The measure each factor family's verdicts read (:func:`verdict_measure` resolves it for a prompt)."""
UNITS = {"layout": " px", "appearance": " bits"}
COMMITMENT_METRICS = {
    "layout": "fixed_spread_position",
    "appearance": "commitment_shape_colour",
    "whole image": "commitment",
}
"""The per-step metric each family's first-step commitment verdict reads."""
COMMITTED = 0.6
"""The level at which a model counts as committed (for the base's steps-to-commit figure)."""
SHARE_LIMIT = 0.25
"""The causal claim: replace-final restores at most this share of what the hybrid restores."""


@dataclass(frozen=True)
class Verdict:
    """One claim on one factor family: whether the run reproduces it, the metric read, one line per prompt."""

    claim: str
    family: str
    metric: str
    statement: str
    reproduced: bool | None  # None: the run lacks the regimes or rows the claim needs
    evidence: tuple[str, ...]
    rows: tuple[dict[str, Any], ...] = ()  # the rows the evidence quotes

    @property
    def label(self) -> str:
        return {True: "reproduced", False: "not reproduced", None: "not measured"}[self.reproduced]


def free_factor_metric(prompt: str) -> str | None:
    """The probe entropy metric of what ``prompt`` leaves free among shape and colour (None if it fixes both)."""
    from conceptspace.ground_truth import ground_truth_for

    fixed = ground_truth_for(WORLD).fixed_factors(prompt)
    free = [name for name in ("shape", "colour") if name not in fixed]
    return f"entropy_{'_'.join(free)}" if free else None


def verdict_measure(family: str, prompt: str) -> str | None:
    """The diversity measure a ``family`` verdict reads for ``prompt``: ``spread_position`` for layout, the free
    factor's entropy for appearance (None when the prompt fixes shape and colour)."""
    if family == "layout":
        return FAMILY_MEASURES["layout"]
    if family == "appearance":
        return free_factor_metric(prompt)
    raise ValueError(f"unknown factor family {family!r}; choose from {', '.join(FAMILY_MEASURES)}")


def _interval(row: dict[str, Any], unit: str = "", digits: int = 2) -> str:
    return (
        f"{row['value']:+.{digits}f}{unit} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}] "
        f"(n = {row['n']})"
    )


def _share(row: dict[str, Any]) -> str:
    return f"{row['value']:.0%} [{row['ci_low']:.0%}, {row['ci_high']:.0%}]"


def _most(flags: Sequence[bool]) -> bool:
    return sum(flags) >= math.ceil(2 * len(flags) / 3)


def _judged(flags: Sequence[bool], prompts: Sequence[str], rule: Any = all) -> bool | None:
    return rule(flags) if flags and len(flags) == len(prompts) else None


class _Rows:
    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self.probe = {
            (r["prompt"], r["regime"], r["metric"]): r
            for r in rows
            if r.get("embedder") == PROBE_EMBEDDER and r.get("step") is None
        }
        self.curves: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in rows:
            if r.get("step") is None or (
                r["metric"] == "commitment" and r.get("similarity") == "testbed:probe"
            ):
                continue  # the probe's class match is commitment_shape_colour now; old rows are not whole-image
            self.curves.setdefault((r["prompt"], r["regime"], r["metric"]), []).append(r)
        for curve in self.curves.values():
            curve.sort(key=lambda r: r["step"])
        # the claims are judged per prompt (a mean over prompts fixes no factor of its own)
        prompts = dict.fromkeys(k[0] for k in self.probe if k[0] != ALL_PROMPTS)
        self.prompts = [p for p in prompts if free_factor_metric(p)]

    def get(self, prompt: str, regime: str, metric: str) -> dict[str, Any] | None:
        return self.probe.get((prompt, regime, metric))


def _collapse(rows: _Rows, family: str) -> Verdict:
    evidence, used, flags = [], [], []
    for p in rows.prompts:
        r = rows.get(p, "distilled - base", f"diff_{verdict_measure(family, p)}")
        if r:
            evidence.append(f"{p}: distilled − base {r['metric'][5:]} {_interval(r, UNITS[family])}")
            used.append(r)
            flags.append(r["ci_high"] < 0)
    metric = f"diff_{FAMILY_MEASURES[family]}"
    statement = "the student is less diverse than the base"
    return Verdict(
        "collapse", family, metric, statement, _judged(flags, rows.prompts), tuple(evidence), tuple(used)
    )


def _commitment(rows: _Rows, family: str) -> Verdict:
    from conceptspace.trajectories import at_timestep

    metric = COMMITMENT_METRICS[family]
    evidence, used, flags = [], [], []
    for p in rows.prompts:
        base, student = rows.curves.get((p, "base", metric)), rows.curves.get((p, "distilled", metric))
        if not base or not student:
            continue
        s = student[0]
        b = at_timestep(base, s["timestep"]) if s.get("timestep") is not None else base[0]
        assert b is not None
        reach = next((r["step"] + 1 for r in base if r["value"] >= COMMITTED), None)
        steps = f"{reach} of {len(base)} steps" if reach else f"not within its {len(base)} steps"
        evidence.append(
            f"{p}: {metric} at the student's step 1 (t = {s.get('timestep')}) {_share(s)}, the base's at "
            f"t = {b.get('timestep')} (its step {b['step'] + 1}) {_share(b)} (n = {s['n']}); the base reaches "
            f"{COMMITTED:.0%} after {steps}"
        )
        used += [s, b]
        flags.append(s["ci_low"] > b["ci_high"])
    statement = "the student commits at its first step, the base later"
    return Verdict(
        "first-step commitment",
        family,
        metric,
        statement,
        _judged(flags, rows.prompts),
        tuple(evidence),
        tuple(used),
    )


def _hybrid(rows: _Rows, family: str) -> Verdict:
    evidence, used, above, reaches = [], [], [], []
    for p in rows.prompts:
        diff = f"diff_{verdict_measure(family, p)}"
        vs_student, vs_base = rows.get(p, "hybrid - distilled", diff), rows.get(p, "hybrid - base", diff)
        if not vs_student or not vs_base:
            continue
        unit = UNITS[family]
        evidence.append(
            f"{p}: hybrid − distilled {diff[5:]} {_interval(vs_student, unit)}; hybrid − base {_interval(vs_base, unit)}"
        )
        used += [vs_student, vs_base]
        above.append(vs_student["ci_low"] > 0)
        reaches.append(vs_base["ci_high"] >= 0)
    ok = _judged(above, rows.prompts)
    if ok:  # above 0 everywhere: the base's level must be reached too, for most prompts
        ok = _most(reaches)
    statement = "one base step restores the base's diversity"
    metric = f"diff_{FAMILY_MEASURES[family]}"
    return Verdict("hybrid restores", family, metric, statement, ok, tuple(evidence), tuple(used))


def _causal(rows: _Rows, family: str) -> Verdict:
    evidence, used, flags = [], [], []
    for p in rows.prompts:
        measure = verdict_measure(family, p)
        ratio = rows.get(p, "replace-final / hybrid", f"restored_ratio_{measure}")
        first = rows.get(p, "hybrid", f"gap_share_{measure}")
        final = rows.get(p, "replace-final", f"gap_share_{measure}")
        if not ratio or not first or not final:
            continue
        evidence.append(
            f"{p}: of the base − distilled gap in {measure}, replacing the first step (hybrid) restores "
            f"{_share(first)}, replacing the final steps {_share(final)}; replace-final / hybrid "
            f"{ratio['value']:.2f} [{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}] (n = {ratio['n']})"
        )
        used += [first, final, ratio]
        flags.append(ratio["value"] <= SHARE_LIMIT and ratio["ci_high"] < 1)
    statement = (
        "the first step decides diversity: replacing it restores it, replacing the final steps does not"
    )
    metric = f"restored_ratio_{FAMILY_MEASURES[family]}"
    return Verdict(
        "causal", family, metric, statement, _judged(flags, rows.prompts, _most), tuple(evidence), tuple(used)
    )


def verdicts(rows: Sequence[dict[str, Any]]) -> list[Verdict]:
    """The verdicts of a testbed run's rows: collapse, first-step commitment, hybrid restores and causal, each on
    layout and appearance (commitment also on the whole image), in that order."""
    parsed = _Rows(rows)
    found = []
    for judge in (_collapse, _commitment, _hybrid, _causal):
        found += [judge(parsed, family) for family in FAMILY_MEASURES]
        if judge is _commitment:
            found.append(_commitment(parsed, "whole image"))
    return found


def verdict_lines(found: Sequence[Verdict]) -> list[str]:
    """Plain-text lines: ``<claim> [<family>, <metric>]: <label> — <statement>``, then the evidence indented."""
    lines = []
    for v in found:
        lines.append(f"{v.claim} [{v.family}, {v.metric}]: {v.label.upper()} — {v.statement}")
        lines += [f"    {line}" for line in v.evidence]
    return lines
