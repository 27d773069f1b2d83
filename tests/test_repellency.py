"""SPELL's batch repellency as a regime: zero where it should be, a hand-written step, its cost, its spec and the
batch coupling it brings, on the tiny SDXL pair."""

from __future__ import annotations

import math

import pytest
import torch

from conceptspace.sampling import (
    Base,
    Distilled,
    encode_text,
    latent_size,
    parse_regime,
    regime_from_name,
    sample,
)
from conceptspace.sampling.remedies import evaluations
from conceptspace.sampling.repellency import Repellency, RepellencyDenoiser, repellency_correction

PROMPT = "a red circle"
SEEDS = [0, 1, 2]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair(tiny_sdxl_pair):
    return tiny_sdxl_pair


def _latents(pair, regime, seeds=SEEDS, **kwargs):
    return sample(
        pair, PROMPT, regime, seeds, height=64, width=64, output_type="latent", progress=False, **kwargs
    ).images


def _mean_pairwise(latents: torch.Tensor) -> float:
    flat = latents.flatten(1).double()
    n = flat.shape[0]
    return float(torch.cdist(flat, flat).sum() / (n * (n - 1)))


@pytest.mark.parametrize(
    "regime",
    [Repellency(strength=0, radius=100), Repellency(radius=0), Repellency(radius=100, until=0)],
    ids=["strength0", "radius0", "until0"],
)
def test_zero_settings_are_the_wrapped_regime_exactly(pair, regime):
    assert torch.equal(_latents(pair, regime), _latents(pair, Distilled()))


def test_no_pair_within_the_radius_is_the_wrapped_regime_exactly(pair):
    # a radius far below any distance between the tiny model's x̂0 (tens of units apart): every correction is 0
    assert torch.equal(_latents(pair, Repellency(radius=1e-6)), _latents(pair, Distilled()))


def test_a_radius_wider_than_every_distance_spreads_the_batch(pair):
    plain = _latents(pair, Distilled())
    repelled = _latents(pair, Repellency(radius=100.0))  # the tiny model's x̂0 lie ~10–30 RMS units apart
    assert _mean_pairwise(repelled) > 1.1 * _mean_pairwise(plain)


def test_one_step_equals_the_hand_written_correction(pair):
    radius, strength = 100.0, 0.5
    segment = Repellency(radius=radius, strength=strength).segments(pair, CPU)[0]
    den, t = segment.denoisers[0], segment.scheduler.timesteps[0]
    assert isinstance(den, RepellencyDenoiser) and den.prediction_type == "epsilon"
    cond = encode_text(pair, PROMPT, negative_prompt=None, cfg=False, height=64, width=64).repeat(2)
    channels = pair.family.latent_channels(pair.base_network)
    x = torch.randn(2, channels, *latent_size(pair, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = den(x, t, cond).double()
        eps = pair.family.predict(pair.student_network, x, t, cond.inputs).double()
    # SPELL by hand, in ε parametrisation: x = √ᾱ·x0 + √(1−ᾱ)·ε at the step's timestep
    abar = segment.scheduler.alphas_cumprod[int(t)].double()
    a, s, xd = abar.sqrt(), (1 - abar).sqrt(), x.double()
    x0 = (xd - s * eps) / a
    d = math.sqrt(float(((x0[0] - x0[1]) ** 2).mean()))  # RMS distance
    assert d < radius
    push = strength * (radius / d - 1)
    x0_new = torch.stack([x0[0] + push * (x0[0] - x0[1]), x0[1] + push * (x0[1] - x0[0])])
    expected = (xd - a * x0_new) / s
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert (out - eps).abs().max() > 1e-2  # the correction is not negligible here


def test_correction_is_sparse_and_order_free():
    x0 = torch.tensor([[0.0, 0.0], [0.3, 0.4], [10.0, 0.0]])  # RMS distance 0.5/√2 between the first two
    delta = repellency_correction(x0, radius=1.0, strength=1.0)
    assert torch.equal(delta[2], torch.zeros(2))  # the far sample is untouched
    moved = x0[:2] + delta[:2]
    # each of the pair lands on the sphere of radius 1 around the other's uncorrected x̂0
    assert math.isclose(float((moved[0] - x0[1]).pow(2).mean().sqrt()), 1.0, rel_tol=1e-6)
    swapped = repellency_correction(x0[[1, 0, 2]], radius=1.0, strength=1.0)
    torch.testing.assert_close(swapped, delta[[1, 0, 2]])


def test_an_image_depends_on_its_batch(pair):
    # the invariant repellency breaks: alone in its batch (batch_size=1) an image is the plain student's; with
    # another seed beside it, it changes, and with which seed is beside it
    regime = Repellency(radius=100.0)
    alone = _latents(pair, regime, [0, 1], batch_size=1)
    assert torch.equal(alone, _latents(pair, Distilled(), [0, 1], batch_size=1))
    with_1 = _latents(pair, regime, [0, 1], batch_size=2)[0]
    with_2 = _latents(pair, regime, [0, 2], batch_size=2)[0]
    assert (with_1 - alone[0]).abs().max() > 1e-3 and (with_1 - with_2).abs().max() > 1e-3


@pytest.mark.parametrize("over", ["distilled", Base(steps=3), "hybrid"])
def test_costs_what_the_wrapped_regime_costs(pair, over):
    inner = regime_from_name(over) if isinstance(over, str) else over
    repelled = Repellency(over=over).segments(pair, CPU)
    assert evaluations(repelled) == evaluations(inner.segments(pair, CPU))
    assert [den.needs_negative for seg in repelled for den in seg.denoisers] == [
        den.needs_negative for seg in inner.segments(pair, CPU) for den in seg.denoisers
    ]


def test_spec_round_trips_through_describe():
    regime = parse_regime("repellency:radius=0.8:strength=2")
    assert regime.name == "repellency-radius0.8-strength2"
    described = regime.describe()["over"]
    assert described == {
        "regime": "repellency",
        "over": "distilled",
        "radius": 0.8,
        "strength": 2,
        "until": 1.0,
    }
    rebuilt = regime_from_name(described.pop("regime"), **described)
    assert rebuilt == Repellency(radius=0.8, strength=2) and rebuilt.describe() == regime.describe()["over"]
    assert parse_regime("repellency").describe()["regime"] == "repellency"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"radius": -1}, "radius must be a finite number >= 0"),
        ({"radius": float("inf")}, "radius must be a finite number >= 0"),
        ({"strength": float("nan")}, "strength must be a finite number >= 0"),
        ({"strength": -0.5}, "strength must be a finite number >= 0"),
        ({"until": 1.5}, "until must lie in \\[0, 1\\]"),
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Repellency(**kwargs)


def test_bad_spec_options_are_refused_by_name():
    with pytest.raises(ValueError, match="radius must be a finite number"):
        parse_regime("repellency:radius=-2")
    with pytest.raises(ValueError, match="repellency takes no option 'radus'"):
        parse_regime("repellency:radus=2")
