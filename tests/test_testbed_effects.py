"""Seeded effects of the shipped testbed pair, asserted with their 95% intervals at the tested n.

The numbers come from sampling, not from the test: a retrained testbed that lost an effect fails here (see
docs/testbed.md for the full table, measured the same way at larger n).
"""

import numpy as np
import pytest
import torch

from conceptspace import Base, Distilled, Hybrid, load_pair, sample
from conceptspace.demo import DEMO_BASE_STEPS
from conceptspace.remedies import CADS, CondNoise, Renoise, SliderSpaceScales
from conceptspace.testbed.data import LEVELS
from conceptspace.testbed.diversity import paired_difference
from conceptspace.testbed.evaluate import sample_uint8
from conceptspace.testbed.probe import load_probe
from conceptspace.trajectories import decode_trajectory

N = 64


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    return load_pair("shapes", "dmd", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def probe():
    return load_probe()


def test_the_student_loses_diversity_the_base_has(pair, probe):
    seeds = range(N)
    base = probe.predict_factors(sample_uint8(pair, "a shape", Base(), seeds))
    student = probe.predict_factors(sample_uint8(pair, "a shape", Distilled(), seeds))
    drop = paired_difference(student, base, "entropy_shape_colour")
    assert drop.n == N
    assert drop.ci_high < 0, f"distilled - base entropy of shape×colour {drop} should be below 0"


@pytest.mark.parametrize(
    ("prompt", "factor", "level"), [("a triangle", "shape", "triangle"), ("a red shape", "colour", "red")]
)
def test_the_base_follows_the_prompt(pair, probe, prompt, factor, level):
    read = probe.predict(sample_uint8(pair, prompt, Base(), range(32)))
    hits = int(np.sum(read[factor] == LEVELS[factor].index(level)))
    assert hits >= 29, f"{prompt!r}: {hits}/32 images have {factor} {level}"


def test_one_base_step_restores_the_colours_the_student_drops(pair, probe):
    # "a triangle" leaves colour free: the hybrid's first (base) step brings back what the student loses.
    seeds = range(N)
    read = {
        name: probe.predict_factors(sample_uint8(pair, "a triangle", regime, seeds))
        for name, regime in [
            ("base", Base(steps=DEMO_BASE_STEPS)),
            ("distilled", Distilled()),
            ("hybrid", Hybrid()),
        ]
    }
    restored = paired_difference(read["hybrid"], read["distilled"], "entropy_colour")
    assert restored.ci_low > 0, f"hybrid - distilled colour entropy {restored} should be above 0"
    short = paired_difference(read["hybrid"], read["base"], "entropy_colour")
    assert short.ci_high >= 0, f"hybrid - base colour entropy {short} should reach 0"


def _step_one_matches_final(pair, probe, regime, seeds):
    """Per seed: whether the probe reads the same shape and colour in the first step's x̂0 as in the final image."""
    result = sample(pair, "a red shape", regime, seeds, batch_size=64, record_x0=True, progress=False)
    decoded = decode_trajectory(pair, result.trajectory[:, [0, -1]], batch_size=64)
    first = probe.predict(decoded[:, 0], value_range=(0, 1))
    final = probe.predict(decoded[:, 1], value_range=(0, 1))
    return (first["shape"] == final["shape"]) & (first["colour"] == final["colour"])


def test_the_student_commits_at_its_first_step_the_base_later(pair, probe):
    seeds = range(32)
    student = _step_one_matches_final(pair, probe, Distilled(), seeds).mean()
    base = _step_one_matches_final(pair, probe, Base(steps=DEMO_BASE_STEPS), seeds).mean()
    assert student >= 0.6, f"the student's step-1 x̂0 shows its final shape and colour in only {student:.0%}"
    assert base <= 0.3, f"the base's step-1 x̂0 already shows its final shape and colour in {base:.0%}"


def test_the_testbed_inception_score_drops_with_the_student(pair, tmp_path):
    # evaluate's Inception Score on a testbed run: the probe's 18 shape × colour classes stand in for ImageNet's
    from conceptspace.evaluate import evaluate_run
    from conceptspace.runs import Case, run_prompt_set

    regimes = [Base(steps=DEMO_BASE_STEPS), Distilled()]
    run_prompt_set(pair, [Case(0, "a shape", 0)], regimes, tmp_path / "run", per_prompt=N, batch_size=N, progress=False)
    rows = evaluate_run(tmp_path / "run", inception_score=True, n_boot=500, progress=False)
    scores = {r["regime"]: r for r in rows if r["metric"] == "inception_score"}
    assert {r["classifier"] for r in scores.values()} == {"ProbeClasses"} and scores["base"]["n"] == N
    base, student = scores["base"], scores["distilled"]
    assert base["ci_low"] > student["ci_high"], f"IS base {base} should exceed the student's {student}"


@pytest.mark.parametrize("remedy", [CADS(), CondNoise(strength=2.0)], ids=["cads", "cond-noise"])
def test_conditioning_remedies_restore_some_of_the_students_lost_variety(pair, probe, remedy):
    # "a triangle" leaves colour free; noise on the text embedding spreads the student's colours again
    seeds = range(N)
    student = probe.predict_factors(sample_uint8(pair, "a triangle", Distilled(), seeds))
    remedied = probe.predict_factors(sample_uint8(pair, "a triangle", remedy, seeds))
    gain = paired_difference(remedied, student, "entropy_shape_colour")
    assert gain.ci_low > 0, f"{remedy.name} − distilled entropy of shape×colour {gain} should be above 0"


def test_deterministic_re_noising_restores_some_of_the_students_lost_variety(pair, probe):
    # The testbed student re-noises with fresh noise between its steps (LCM). Renoise(eta=0) hands each step the
    # noise its own input implies instead (DDIM-like), which keeps the starting noise's mark on the later steps —
    # and the images vary more (measured: +0.94 [+0.63, +1.25] bits at n = 128; docs/remedies.md)
    seeds = range(N)
    student = probe.predict_factors(sample_uint8(pair, "a triangle", Distilled(), seeds))
    deterministic = probe.predict_factors(sample_uint8(pair, "a triangle", Renoise(eta=0.0), seeds))
    gain = paired_difference(deterministic, student, "entropy_shape_colour")
    assert gain.ci_low > 0, f"renoise(eta=0) − distilled entropy of shape×colour {gain} should be above 0"


def test_the_bases_sliderspace_sliders_at_random_scales_restore_variety_to_the_student(pair, probe):
    # the shipped sliders of "a shape" were trained on the base (weights/sliderspace/README.md); at a random scale
    # per seed on the student they spread its shapes and colours (measured: +0.81 [+0.59, +1.16] bits, n = 128)
    seeds = range(N)
    student = probe.predict_factors(sample_uint8(pair, "a shape", Distilled(), seeds))
    remedied = probe.predict_factors(sample_uint8(pair, "a shape", SliderSpaceScales(sliders="testbed:a-shape"), seeds))
    gain = paired_difference(remedied, student, "entropy_shape_colour")
    assert gain.ci_low > 0, f"sliderspace − distilled entropy of shape×colour {gain} should be above 0"
