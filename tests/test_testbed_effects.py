"""Seeded effects of the shipped testbed pair, asserted with their 95% intervals at the tested n.

The numbers come from sampling, not from the test: a retrained testbed that lost an effect fails here (see
docs/testbed.md for the full table, measured the same way at larger n).
"""

import numpy as np
import pytest
import torch

from conceptspace import Base, Distilled, load_pair
from conceptspace.testbed.data import LEVELS
from conceptspace.testbed.diversity import paired_difference
from conceptspace.testbed.evaluate import sample_uint8
from conceptspace.testbed.probe import load_probe

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
