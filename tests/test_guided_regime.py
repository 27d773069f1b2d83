"""Diffusers' guiders as the "guider" regime: checked against conceptspace's own regimes, a hand-written CFG-Zero*
step and counted network calls, on tiny models."""

from __future__ import annotations

import pytest
import torch

from conceptspace import load_pair
from conceptspace.remedies import CADS
from conceptspace.sampling import (
    Base,
    Distilled,
    Hybrid,
    encode_text,
    latent_size,
    parse_regime,
    regime_from_name,
    sample,
)
from conceptspace.sampling.guided import CFGZeroStar, Guided, GuidedDenoiser
from conceptspace.sampling.remedies import evaluations

PROMPT = "a red circle"
SEEDS = [0, 1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair(tiny_sdxl_pair):
    return tiny_sdxl_pair


def _latents(pair, regime, seeds=SEEDS, **kwargs):
    return sample(
        pair, PROMPT, regime, seeds, height=64, width=64, output_type="latent", progress=False, **kwargs
    ).images


def test_cfg_over_the_base_is_the_base_regime(pair):
    # diffusers' CFG at the base's own scale (5) is conceptspace's CFG; only the batching of the two passes differs
    # (two batches of 2 rows, not one of 4: float32 rounding, up to ~1e-5 on latents of magnitude ~18)
    base = Base(steps=4)
    guided = _latents(pair, Guided(over=base, guider="ClassifierFreeGuidance"))
    torch.testing.assert_close(guided, _latents(pair, base), atol=1e-5, rtol=1e-5)


def test_one_pass_cfg_over_the_student_is_the_student_and_diffusers_cfg_is_not(pair):
    plain = _latents(pair, Distilled())
    torch.testing.assert_close(
        _latents(pair, Guided(over="distilled", guider="OnePassCFGGuidance")), plain, atol=1e-5, rtol=0
    )
    # diffusers' CFG at the student's scale 0 runs two passes and keeps the unconditional one: another image
    diffusers_cfg = _latents(pair, Guided(over="distilled", guider="ClassifierFreeGuidance"))
    assert (diffusers_cfg - plain).abs().max() > 1e-3


def test_a_student_that_embeds_its_guidance_keeps_it(tiny_lcm_pair):
    # tiny-lcm takes its scale (8) as a network input; with guidance_scale unset the guider adds no CFG on top
    guided = _latents(tiny_lcm_pair, Guided(over="distilled", guider="ClassifierFreeGuidance"))
    torch.testing.assert_close(guided, _latents(tiny_lcm_pair, Distilled()), atol=1e-5, rtol=0)


def test_cfg_zero_star_step_is_the_papers_formula(pair):
    segments = Guided(over=Base(steps=4), guider="ClassifierFreeZeroStarGuidance").segments(pair, CPU)
    scheduler, dens = segments[0].scheduler, segments[0].denoisers
    assert all(isinstance(d, GuidedDenoiser) for d in dens) and dens[1].guider_scale == 5.0
    cond = encode_text(pair, PROMPT, negative_prompt="blurry", cfg=True, height=64, width=64).repeat(2)
    channels = pair.family.latent_channels(pair.base_network)
    x = torch.randn(2, channels, *latent_size(pair, 64, 64), generator=torch.Generator().manual_seed(0))
    net, family = pair.base_network, pair.family
    with torch.no_grad():
        assert torch.equal(dens[0](x, scheduler.timesteps[0], cond), torch.zeros_like(x))  # zero-init step
        t = scheduler.timesteps[1]
        out = dens[1](x, t, cond)
        c = family.predict(net, x, t, cond.inputs).flatten(1).double()
        u = family.predict(net, x, t, cond.negative).flatten(1).double()
    s_star = (c * u).sum(1, keepdim=True) / (u * u).sum(
        1, keepdim=True
    )  # <cond, uncond> / ||uncond||², per sample
    expected = s_star * u + 5.0 * (c - s_star * u)
    torch.testing.assert_close(out.flatten(1).double(), expected, atol=1e-5, rtol=1e-5)
    plain_cfg = u + 5.0 * (c - u)
    assert (out.flatten(1).double() - plain_cfg).abs().max() > 1e-3  # s* ≠ 1 here: not plain CFG


@pytest.mark.parametrize(
    ("regime", "expected"),
    [
        (Guided(over=Base(steps=3), guider="ClassifierFreeZeroStarGuidance"), [2, 2, 2]),
        (Guided(over="distilled", guider="ClassifierFreeGuidance"), [2, 2, 2, 2]),  # scale 0: two passes
        (Guided(over="distilled", guider="ClassifierFreeGuidance", guidance_scale=1), [1, 1, 1, 1]),
        (Guided(over=Hybrid(k=1), guider="OnePassCFGGuidance"), [1, 1, 1, 1]),
        (Guided(over=Hybrid(k=2), guider="OnePassCFGGuidance", guidance_scale=3), [2, 2, 2, 2]),
    ],
)
def test_network_calls_per_step_are_the_guiders_conditions(pair, regime, expected):
    dens = [den for segment in regime.segments(pair, CPU) for den in segment.denoisers]
    assert [den.conditions for den in dens] == expected
    assert any(den.needs_negative for den in dens) == (max(expected) > 1)
    calls: list[int] = []
    networks = {id(n): n for n in (pair.base_network, pair.student_network)}.values()
    handles = [n.register_forward_pre_hook(lambda *_: calls.append(1)) for n in networks]
    per_step: list[int] = []
    try:
        sample(
            pair, PROMPT, regime, SEEDS, height=64, width=64, output_type="latent", progress=False,
            callback=lambda info: per_step.append(len(calls) - sum(per_step)),
        )  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    assert per_step == expected


def test_cads_guider_over_the_student_is_the_cads_regime(pair):
    # conceptspace's seeded guider gets each sample's seed (not its fallback seed + row): the CADS regime's noise
    seeds = [5, 9]
    guided = _latents(pair, Guided(over="distilled", guider="CADSGuidance"), seeds)
    torch.testing.assert_close(guided, _latents(pair, CADS(over="distilled"), seeds), atol=1e-5, rtol=0)
    assert (guided - _latents(pair, Distilled(), seeds)).abs().max() > 1e-3


@pytest.mark.parametrize("guider", ["AdaptiveProjectedGuidance", "TangentialClassifierFreeGuidance"])
def test_diffusers_guiders_run_as_compare_methods(pair, guider):
    result = sample(
        pair, PROMPT, f"guider:guider={guider}:guidance_scale=5", SEEDS, height=64, width=64,
        output_type="latent", progress=False,
    )  # fmt: skip
    assert result.regime == f"guider-guider{guider}-guidance_scale5"
    assert torch.isfinite(result.images).all()
    assert result.settings["over"]["guider"] == guider


def test_guidance_used_reports_the_guiders_scale_and_remedy_denoisers_are_refused(pair):
    result = sample(
        pair, PROMPT, Guided(over="distilled", guider="OnePassCFGGuidance", guidance_scale=3), [0], height=64,
        width=64, output_type="latent", progress=False,
    )  # fmt: skip
    assert result.settings["guidance_used"] == {"distilled": 3.0}
    with pytest.raises(ValueError, match="CADSDenoiser.*guider=CADSGuidance"):
        Guided(over=CADS()).segments(pair, CPU)


def test_spec_round_trips_through_describe():
    regime = parse_regime("guider:guider=AdaptiveProjectedGuidance:guidance_scale=5")
    described = regime.describe()
    assert described["over"] == {
        "regime": "guider",
        "over": "distilled",
        "guider": "AdaptiveProjectedGuidance",
        "guidance_scale": 5,
    }
    rebuilt = regime_from_name(described.pop("regime"), **described)
    assert rebuilt == regime and rebuilt.describe() == regime.describe()
    assert parse_regime("guider").describe()["guider"] == "ClassifierFreeZeroStarGuidance"


def test_unknown_guider_and_bad_scale_are_refused():
    with pytest.raises(
        ValueError, match="unknown guider 'NoSuchGuidance'.*ClassifierFreeGuidance.*CADSGuidance"
    ):
        parse_regime("guider:guider=NoSuchGuidance")
    with pytest.raises(ValueError, match="separate a regime's options with ':'"):
        parse_regime("guider:guider=AdaptiveProjectedGuidance,guidance_scale=5")
    with pytest.raises(ValueError, match="unknown guider 'BaseGuidance'"):
        Guided(guider="BaseGuidance")
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        Guided(guider="ClassifierFreeGuidance", guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        parse_regime("guider:guidance_scale=-1")


# ------------------------------------------------------------------------------------------------ cfg-zero-star
def test_cfg_zero_star_at_its_zero_setting_is_the_wrapped_regime_exactly(pair):
    # no zero-init and scale 1: diffusers' guider runs the one conditional pass and returns it untouched
    zero = CFGZeroStar(zero_init_steps=0, guidance_scale=1)
    assert torch.equal(_latents(pair, zero), _latents(pair, Distilled()))
    hybrid = CFGZeroStar(over=Hybrid(k=1), zero_init_steps=0, guidance_scale=1)
    assert torch.equal(_latents(pair, hybrid), _latents(pair, Hybrid(k=1)))


def test_cfg_zero_star_by_default_leaves_an_epsilon_student_as_it_is(pair):
    regime = parse_regime("cfg-zero-star")
    assert isinstance(regime, CFGZeroStar) and regime.name == "cfg-zero-star"
    assert regime.describe() == {
        "regime": "cfg-zero-star", "over": "distilled", "guider": "ClassifierFreeZeroStarGuidance",
        "guidance_scale": None, "zero_init_steps": None,
    }  # fmt: skip
    dens = [den for segment in regime.segments(pair, CPU) for den in segment.denoisers]
    assert [den.guider_scale for den in dens] == [1.0] * 4  # the student's one pass, not diffusers' scale 0
    # zeros are no "stay" for an ε-prediction network: no zero-init, so at scale 1 the student itself
    assert torch.equal(_latents(pair, regime), _latents(pair, Distilled()))


def test_cfg_zero_star_by_default_zeroes_a_flow_students_first_step_at_its_cost():
    flow = load_pair("tiny-sd3", "tiny-sd3-turbo", device="cpu")
    regime = parse_regime("cfg-zero-star")
    dens = [den for segment in regime.segments(flow, CPU) for den in segment.denoisers]
    assert evaluations(regime.segments(flow, CPU)) == evaluations(Distilled().segments(flow, CPU))
    assert (_latents(flow, regime) - _latents(flow, Distilled())).abs().max() > 1e-3
    cond = encode_text(flow, PROMPT, negative_prompt=None, cfg=False, height=64, width=64).repeat(2)
    channels = flow.network("student").config.in_channels
    x = torch.randn(2, channels, *latent_size(flow, 64, 64), generator=torch.Generator().manual_seed(0))
    first_timestep = regime.segments(flow, CPU)[0].scheduler.timesteps[0]
    with torch.no_grad():
        assert torch.equal(dens[0](x, first_timestep, cond), torch.zeros_like(x))  # the zero-init: velocity 0
        assert not torch.equal(dens[1](x, first_timestep, cond), torch.zeros_like(x))


def test_cfg_zero_star_over_the_base_runs_the_bases_cfg(pair):
    dens = [den for seg in CFGZeroStar(over=Base(steps=3)).segments(pair, CPU) for den in seg.denoisers]
    assert [den.guider_scale for den in dens] == [5.0] * 3 and [den.conditions for den in dens] == [2, 2, 2]


def test_cfg_zero_star_options_are_checked():
    assert (
        parse_regime("cfg-zero-star:zero_init_steps=0:guidance_scale=2").describe()["over"]["zero_init_steps"]
        == 0
    )
    with pytest.raises(ValueError, match="zero_init_steps must be a whole number >= 0"):
        CFGZeroStar(zero_init_steps=-1)
    with pytest.raises(ValueError, match="cfg-zero-star takes no option 'guider'"):
        parse_regime("cfg-zero-star:guider=ClassifierFreeGuidance")


def test_cfg_zero_star_refuses_to_zero_every_step(pair):
    with pytest.raises(ValueError, match="zero_init_steps=4 zeroes all 4 steps"):
        CFGZeroStar(zero_init_steps=4).segments(pair, CPU)


def test_the_uncond_first_guider_as_a_regime_equals_the_uncond_first_regime(pair):
    # the guider asks for the unconditional inputs before the loop (not at its one-pass steps): they get encoded
    from conceptspace.remedies import UncondFirst

    guided = Guided(over="distilled", guider="UncondFirstGuidance")
    assert any(den.needs_negative for segment in guided.segments(pair, CPU) for den in segment.denoisers)
    assert torch.equal(_latents(pair, guided), _latents(pair, UncondFirst(steps=1)))


def test_a_stateful_guider_gives_each_image_the_same_whatever_its_batch(pair):
    # APG keeps a momentum across steps: rebuilt at each batch's first step, so no state leaks between batches,
    # and an image is a function of its prompt and seed alone (the sampler's invariant), at any batch size
    apg = Guided(over=Base(steps=3), guider="AdaptiveProjectedGuidance", guidance_scale=3.0)
    one_by_one = _latents(pair, apg, seeds=[3, 4], batch_size=1)
    together = _latents(pair, apg, seeds=[3, 4], batch_size=2)
    torch.testing.assert_close(one_by_one, together, atol=1e-4, rtol=0)
    torch.testing.assert_close(_latents(pair, apg, seeds=[3, 4], batch_size=1), one_by_one, atol=0, rtol=0)
