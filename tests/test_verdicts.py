"""Verdicts per claim, judged from tidy rows alone: each rule flips when its evidence does."""

import pytest

from conceptspace.verdicts import free_factor_metric, verdict_lines, verdicts

PROMPTS = ("a shape", "a triangle", "a red shape")


def diff(prompt, a, b, low, high, n=64):
    metric = f"diff_{free_factor_metric(prompt)}"
    value = (low + high) / 2
    return dict(
        prompt=prompt,
        regime=f"{a} - {b}",
        metric=metric,
        value=value,
        ci_low=low,
        ci_high=high,
        n=n,
        embedder="probe",
    )


def commitment(prompt, regime, values, n=64):
    return [
        dict(
            prompt=prompt,
            regime=regime,
            metric="commitment",
            value=v,
            ci_low=v - 0.1,
            ci_high=v + 0.1,
            n=n,
            step=i,
            similarity="testbed:probe",
        )
        for i, v in enumerate(values)
    ]


def paper_like(changes=None):
    """Rows of a run where every claim holds; ``changes`` replaces the CI of one (prompt, pair)."""
    rows = []
    for p in PROMPTS:
        cis = {
            ("distilled", "base"): (-0.9, -0.3),
            ("hybrid", "distilled"): (0.2, 0.8),
            ("hybrid", "base"): (-0.2, 0.3),
            ("replace-final", "distilled"): (-0.2, 0.2),
        }
        cis.update({tuple(pair): ci for (prompt, *pair), ci in (changes or {}).items() if prompt == p})
        rows += [diff(p, a, b, *ci) for (a, b), ci in cis.items()]
        rows += commitment(p, "base", [0.1, 0.3, 0.5, 0.7, 0.9])
        rows += commitment(p, "distilled", [0.8, 0.9, 0.95, 1.0])
    return rows


def by_claim(rows):
    return {v.claim: v for v in verdicts(rows)}


def test_free_factor_is_what_the_prompt_leaves_open():
    assert free_factor_metric("a shape") == "entropy_shape_colour"
    assert free_factor_metric("a triangle") == "entropy_colour"
    assert free_factor_metric("a red shape") == "entropy_shape"
    assert free_factor_metric("a red circle") is None


def test_every_claim_reproduced_on_paper_like_rows():
    found = by_claim(paper_like())
    assert [v.label for v in found.values()] == ["reproduced"] * 4
    assert "reaches 60% after 4 of 5 steps" in found["first-step commitment"].evidence[0]
    lines = verdict_lines(list(found.values()))
    assert lines[0].startswith("collapse: REPRODUCED") and "(n = 64)" in lines[1]


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({("a triangle", "distilled", "base"): (-0.5, 0.1)}, {"collapse"}),
        ({("a red shape", "hybrid", "distilled"): (-0.1, 0.5)}, {"hybrid restores"}),
        (
            {("a shape", "hybrid", "base"): (-0.9, -0.2), ("a triangle", "hybrid", "base"): (-0.8, -0.1)},
            {"hybrid restores", "causal"},  # replacing the first step is the hybrid: both claims lean on it
        ),
        (
            {
                ("a shape", "replace-final", "distilled"): (0.3, 0.9),
                ("a red shape", "replace-final", "distilled"): (0.1, 0.4),
            },
            {"causal"},
        ),
    ],
)
def test_a_claim_fails_when_its_evidence_does(change, failing):
    found = by_claim(paper_like(change))
    assert {name for name, v in found.items() if v.label == "not reproduced"} == failing
    assert all(v.reproduced for name, v in found.items() if name not in failing)


def test_one_stray_prompt_does_not_sink_the_two_thirds_rules():
    found = by_claim(paper_like({("a shape", "hybrid", "base"): (-0.9, -0.2)}))
    assert found["hybrid restores"].reproduced and found["causal"].reproduced


def test_commitment_needs_the_student_above_the_base():
    rows = [r for r in paper_like() if not (r["metric"] == "commitment" and r["regime"] == "distilled")]
    rows += commitment("a shape", "distilled", [0.15, 0.5, 0.9, 1.0])
    for p in PROMPTS[1:]:
        rows += commitment(p, "distilled", [0.8, 0.9, 0.95, 1.0])
    assert by_claim(rows)["first-step commitment"].label == "not reproduced"


def test_claims_without_their_regimes_are_not_measured():
    rows = [r for r in paper_like() if "replace-final" not in r["regime"] and r["metric"] != "commitment"]
    found = by_claim(rows)
    assert found["causal"].label == "not measured" and found["first-step commitment"].label == "not measured"
    assert found["collapse"].reproduced and found["hybrid restores"].reproduced
    assert all(v.label == "not measured" for v in verdicts([]))
