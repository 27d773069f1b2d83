"""Verdicts per claim and factor family, judged from tidy rows alone: each rule flips when its evidence does."""

import pytest

from conceptspace.verdicts import (
    COMMITMENT_METRICS,
    free_factor_metric,
    verdict_lines,
    verdict_measure,
    verdicts,
)

PROMPTS = ("a shape", "a triangle", "a red shape")
FAMILIES = ("layout", "appearance")


def probe_row(prompt, regime, metric, low, high, n=64):
    return dict(
        prompt=prompt,
        regime=regime,
        metric=metric,
        value=(low + high) / 2,
        ci_low=low,
        ci_high=high,
        n=n,
        embedder="probe",
    )


def curve(prompt, regime, metric, values, timesteps, n=64):
    return [
        dict(
            prompt=prompt,
            regime=regime,
            metric=metric,
            value=v,
            ci_low=v - 0.1,
            ci_high=v + 0.1,
            n=n,
            step=i,
            timestep=t,
            similarity="testbed:clip" if metric == "commitment" else None,
        )
        for i, (v, t) in enumerate(zip(values, timesteps, strict=True))
    ]


def paper_like(changes=None):
    """Rows of a run where every claim holds on both families; ``changes`` maps (prompt, family, regime, metric
    stem) to a replacement CI."""
    rows = []
    for p in PROMPTS:
        for family in FAMILIES:
            measure = verdict_measure(family, p)
            cis = {
                ("distilled - base", "diff"): (-0.9, -0.3),
                ("hybrid - distilled", "diff"): (0.2, 0.8),
                ("hybrid - base", "diff"): (-0.2, 0.3),
                ("hybrid", "gap_share"): (0.7, 1.1),
                ("replace-final", "gap_share"): (-0.1, 0.2),
                ("replace-final / hybrid", "restored_ratio"): (-0.1, 0.3),
            }
            cis.update({key[2:]: ci for key, ci in (changes or {}).items() if key[:2] == (p, family)})
            rows += [probe_row(p, regime, f"{stem}_{measure}", *ci) for (regime, stem), ci in cis.items()]
        for metric in COMMITMENT_METRICS.values():
            rows += curve(p, "base", metric, [0.1, 0.3, 0.5, 0.7, 0.9], [999, 799, 599, 399, 199])
            rows += curve(p, "distilled", metric, [0.8, 0.9, 0.95, 1.0], [999, 749, 499, 249])
    return rows


def judged(rows):
    return {(v.claim, v.family): v for v in verdicts(rows)}


def test_free_factor_is_what_the_prompt_leaves_open():
    assert free_factor_metric("a shape") == "entropy_shape_colour"
    assert free_factor_metric("a triangle") == "entropy_colour"
    assert free_factor_metric("a red shape") == "entropy_shape"
    assert free_factor_metric("a red circle") is None
    assert verdict_measure("layout", "a red circle") == "spread_position"
    with pytest.raises(ValueError, match="unknown factor family"):
        verdict_measure("texture", "a shape")


def test_every_claim_reproduced_on_paper_like_rows_and_each_names_its_family_and_metric():
    found = judged(paper_like())
    assert len(found) == 9 and all(v.label == "reproduced" for v in found.values())
    commitment = found["first-step commitment", "appearance"]
    assert commitment.metric == "commitment_shape_colour"
    assert "reaches 60% after 4 of 5 steps" in commitment.evidence[0] and "t = 999" in commitment.evidence[0]
    assert found["first-step commitment", "whole image"].metric == "commitment"
    assert found["causal", "layout"].metric == "restored_ratio_spread_position"
    lines = verdict_lines(list(found.values()))
    assert (
        lines[0].startswith("collapse [layout, diff_spread_position]: REPRODUCED") and "(n = 64)" in lines[1]
    )
    assert "entropy_colour" in found["collapse", "appearance"].evidence[1]  # a triangle: colour is free


def test_the_base_is_read_at_the_students_timestep():
    rows = [r for r in paper_like() if not (r.get("step") is not None and r["regime"] == "base")]
    for p in PROMPTS:
        for metric in COMMITMENT_METRICS.values():  # committed at t = 999, then wandering: step 1 decides
            rows += curve(p, "base", metric, [0.2, 0.95, 0.95, 0.95], [1100, 990, 500, 100])
    found = judged(rows)
    assert found["first-step commitment", "layout"].label == "not reproduced"
    assert "t = 990 (its step 2)" in found["first-step commitment", "layout"].evidence[0]


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({("a triangle", "layout", "distilled - base", "diff"): (-0.5, 0.1)}, {("collapse", "layout")}),
        (
            {("a red shape", "appearance", "hybrid - distilled", "diff"): (-0.1, 0.5)},
            {("hybrid restores", "appearance")},
        ),
        (
            {
                ("a shape", "layout", "hybrid - base", "diff"): (-0.9, -0.2),
                ("a triangle", "layout", "hybrid - base", "diff"): (-0.8, -0.1),
            },
            {("hybrid restores", "layout")},
        ),
        (
            {
                ("a shape", "appearance", "replace-final / hybrid", "restored_ratio"): (
                    0.2,
                    0.6,
                ),  # point 0.4 > 1/4
                ("a red shape", "appearance", "replace-final / hybrid", "restored_ratio"): (
                    -0.4,
                    1.2,
                ),  # CI reaches 1
            },
            {("causal", "appearance")},
        ),
    ],
)
def test_a_claim_fails_when_its_evidence_does(change, failing):
    found = judged(paper_like(change))
    assert {key for key, v in found.items() if v.label == "not reproduced"} == failing
    assert all(v.reproduced for key, v in found.items() if key not in failing)


def test_one_stray_prompt_does_not_sink_the_two_thirds_rules():
    found = judged(
        paper_like(
            {
                ("a shape", "layout", "hybrid - base", "diff"): (-0.9, -0.2),
                ("a shape", "layout", "replace-final / hybrid", "restored_ratio"): (0.3, 0.9),
            }
        )
    )
    assert found["hybrid restores", "layout"].reproduced and found["causal", "layout"].reproduced


def test_commitment_needs_the_student_above_the_base():
    rows = [
        r for r in paper_like() if not (r["metric"] == "fixed_spread_position" and r["regime"] == "distilled")
    ]
    rows += curve(
        "a shape", "distilled", "fixed_spread_position", [0.15, 0.5, 0.9, 1.0], [999, 749, 499, 249]
    )
    for p in PROMPTS[1:]:
        rows += curve(p, "distilled", "fixed_spread_position", [0.8, 0.9, 0.95, 1.0], [999, 749, 499, 249])
    found = judged(rows)
    assert found["first-step commitment", "layout"].label == "not reproduced"
    assert found["first-step commitment", "appearance"].label == "reproduced"


def test_claims_without_their_rows_are_not_measured():
    rows = [r for r in paper_like() if "replace-final" not in r["regime"] and r.get("step") is None]
    found = judged(rows)
    assert found["causal", "layout"].label == "not measured"
    assert found["first-step commitment", "whole image"].label == "not measured"
    assert found["collapse", "appearance"].reproduced and found["hybrid restores", "layout"].reproduced
    assert all(v.label == "not measured" for v in verdicts([]))
