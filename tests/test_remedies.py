"""The diversity remedies as regimes: what each changes and what it must not, on tiny models; their seeded effect
on the testbed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from conceptspace import Distilled, Hybrid, load_pair, sample
from conceptspace.models import Conditioning, with_overrides
from conceptspace.remedies import (
    CADS,
    CADSDenoiser,
    CondNoise,
    IntervalGuidance,
    Renoise,
    SliderSpaceScales,
    cads_gamma,
    edm_sigma,
    evaluations,
)
from conceptspace.sampling import make_denoiser, regime_from_name, sample_latents, schedule_of

PROMPT = "a red circle"
SEEDS = [0, 1, 2]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair():
    return load_pair("tiny-sdxl", "tiny-dmd", device="cpu")


def _latents(pair, regime, seeds=SEEDS, **kwargs):
    return sample(pair, PROMPT, regime, seeds, output_type="latent", progress=False, **kwargs).images


def test_cads_schedule_anneals_from_noise_to_the_clean_condition():
    assert [cads_gamma(t, 0.6, 0.9) for t in (0.0, 0.6, 0.75, 0.9, 1.0)] == pytest.approx([1, 1, 0.5, 0, 0])
    # off the midpoint a reversed ramp disagrees: γ falls as t (noise) rises, (τ2 − t) / (τ2 − τ1) between
    assert [cads_gamma(t, 0.6, 0.9) for t in (0.66, 0.84)] == pytest.approx([0.8, 0.2])
    grid = [cads_gamma(t / 100, 0.3, 0.7) for t in range(101)]
    assert all(a >= b for a, b in zip(grid, grid[1:], strict=False)) and grid[40] == pytest.approx(0.75)


@pytest.mark.parametrize("over", ["distilled", Hybrid(k=2)])
def test_remedies_at_zero_strength_are_the_plain_regime_exactly(pair, over):
    plain = _latents(pair, over)
    assert torch.equal(_latents(pair, CADS(over=over, noise_scale=0.0)), plain)
    assert torch.equal(_latents(pair, CondNoise(over=over, strength=0.0)), plain)


def test_cads_changes_only_the_steps_above_tau1(pair):
    # tiny-dmd runs t = 999, 749, 499, 249: γ = 0, 0.5, 1, 1 — the last two steps see the clean condition
    seen: dict[str, list[torch.Tensor]] = {"plain": [], "cads": []}
    network = pair.student_network

    def record(key):
        return network.register_forward_hook(lambda m, a, kw, out: seen[key].append(kw["encoder_hidden_states"]),
                                             with_kwargs=True)  # fmt: skip

    for key, regime in (("plain", Distilled()), ("cads", CADS())):
        handle = record(key)
        try:
            _latents(pair, regime)
        finally:
            handle.remove()
    changed = [not torch.equal(a, b) for a, b in zip(seen["plain"], seen["cads"], strict=True)]
    assert changed == [True, True, False, False]
    # rescaled: each row keeps the clean embedding's mean and std
    first, clean = seen["cads"][0], seen["plain"][0]
    torch.testing.assert_close(first.std(dim=(1, 2)), clean.std(dim=(1, 2)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.mean(dim=(1, 2)), clean.mean(dim=(1, 2)), rtol=1e-4, atol=1e-5)


def test_conditioning_noise_depends_on_the_seed_not_the_batch(pair):
    together = _latents(pair, CADS(), seeds=[0, 1, 2, 3], batch_size=4)
    apart = torch.cat([_latents(pair, CADS(), seeds=[s], batch_size=1) for s in (0, 1, 2, 3)])
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-4)  # batched matmuls round differently
    assert not torch.allclose(together[0], together[1])


def test_cond_noise_touches_only_the_first_steps(pair):
    regime = CondNoise(until=0.5)  # 4 steps: positions 0 and 1
    segments = regime.segments(pair, CPU)
    kinds = [type(den).__name__ for segment in segments for den in segment.denoisers]
    assert kinds == ["CondNoiseDenoiser", "CondNoiseDenoiser", "Denoiser", "Denoiser"]


def test_a_remedy_needs_the_batch_seeds(pair):
    den = CADSDenoiser(**{k: v for k, v in vars(make_denoiser(pair, "distilled", 0.0)).items()})
    cond = pair.family.encode_text(
        pair.pipeline, PROMPT, negative_prompt=None, cfg=False, height=64, width=64, device=CPU
    )
    with pytest.raises(ValueError, match="seeds"):
        den(torch.zeros(1, 4, 8, 8), torch.tensor(999), Conditioning(cond.inputs))


def test_costs_are_counted_per_network_evaluation(pair):
    student = evaluations(Distilled().segments(pair, CPU))
    assert (
        evaluations(Hybrid().segments(pair, CPU))["total"] == student["total"] == 4
    )  # the hybrid costs nothing
    assert (
        evaluations(CADS().segments(pair, CPU)) == student
        and evaluations(CondNoise().segments(pair, CPU)) == student
    )
    # interval guidance: CFG (two passes) only at the base steps inside σ ∈ (0.28, 5.42]
    regime = IntervalGuidance(over=Hybrid(k=2), sigma_low=0.28, sigma_high=500.0)
    scheduler = Distilled().segments(pair, CPU)[0].scheduler
    from conceptspace import schedules

    sigmas = [edm_sigma(schedules.noise_level(scheduler, i)) for i in range(2)]
    expected_cfg = [0.28 < s <= 500.0 for s in sigmas]
    assert evaluations(regime.segments(pair, CPU))["base"] == sum(2 if g else 1 for g in expected_cfg)
    narrow = IntervalGuidance(over=Hybrid(k=2), sigma_low=0.28, sigma_high=0.3)
    assert evaluations(narrow.segments(pair, CPU)) == evaluations(Hybrid(k=2).segments(pair, CPU))


def test_remedies_describe_what_ran_and_rebuild_from_it(pair):
    regime = CADS(over=Hybrid(k=2), noise_scale=0.5)
    described = json.loads(json.dumps(regime.describe()))
    assert described["regime"] == "cads" and described["over"]["regime"] == "hybrid"
    assert regime_from_name(described.pop("regime"), **described) == regime
    assert [s.model for s in schedule_of(regime, pair)] == ["base", "base", "distilled", "distilled"]
    result = sample(pair, PROMPT, "cond-noise", [0], output_type="latent", progress=False)
    assert result.settings["regime"] == "cond-noise" and result.settings["over"] == "distilled"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CADS(tau1=0.9, tau2=0.6), "tau1 < tau2"),
        (lambda: CADS(noise_scale=float("nan")), "noise_scale"),
        (lambda: CondNoise(share=0.0), "share"),
        (lambda: IntervalGuidance(sigma_low=3.0, sigma_high=1.0), "sigma_low < sigma_high"),
        (lambda: Renoise(eta=1.5), "eta must lie in"),
    ],
)
def test_bad_remedy_parameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_interval_guidance_keeps_an_inner_remedy_and_rebuilds_nested_lists(pair):
    regime = IntervalGuidance(over=CADS(over=Hybrid(k=2)), sigma_high=500.0)
    kinds = {type(den).__name__ for segment in regime.segments(pair, CPU) for den in segment.denoisers}
    assert kinds == {"CADSDenoiser"}
    nested = CADS(over=Distilled(timesteps=(999, 499), steps=2))
    described = json.loads(json.dumps(nested.describe()))
    assert regime_from_name(described.pop("regime"), **described) == nested


def test_conditioning_noise_ignores_padding_so_a_qwen_prompt_is_the_same_in_any_batch():
    qwen = load_pair("tiny-qwen-image", "tiny-qwen-image-lightning", device="cpu")
    long = "a very long prompt about a red circle on a blue square with many words"
    for regime in (CADS(), CondNoise()):
        alone = sample(qwen, "a cat", regime, [0], output_type="latent", progress=False).images
        cond = Conditioning.concatenate([
            qwen.family.encode_text(qwen.pipeline, p, negative_prompt=None, cfg=False, height=64, width=64, device=CPU)
            for p in ("a cat", long)
        ])  # fmt: skip
        together = sample_latents(qwen, regime, cond, [0, 1], latent_shape=(8, 8))
        torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------ renoise
@pytest.fixture(scope="module")
def flow_pair():
    return load_pair("tiny-sd3", "tiny-sd3-turbo", device="cpu")


def test_renoise_without_fresh_noise_is_the_flow_students_euler_step(flow_pair):
    # Euler on a flow student is deterministic: x' = x̂0 + σ'·ε̂, which is what eta=0 rebuilds
    plain = _latents(flow_pair, Distilled())
    assert torch.allclose(_latents(flow_pair, Renoise(eta=0.0)), plain, atol=1e-5)
    assert not torch.allclose(_latents(flow_pair, Renoise(eta=0.5)), plain, atol=1e-2)


def test_renoise_with_fresh_noise_is_diffusers_stochastic_flow_sampling(flow_pair):
    # FlowMatchEulerDiscreteScheduler(stochastic_sampling=True) re-noises x̂0 with fresh noise from the step's
    # generators: the same draws, so the same latents
    stochastic = replace(
        flow_pair,
        student=with_overrides(
            flow_pair.student,
            scheduler_overrides=(*flow_pair.student.scheduler_overrides, ("stochastic_sampling", True)),
        ),
    )
    theirs = _latents(stochastic, Distilled())
    assert torch.allclose(_latents(flow_pair, Renoise(eta=1.0)), theirs, atol=1e-5)
    assert not torch.allclose(theirs, _latents(flow_pair, Distilled()), atol=1e-2)


def test_renoise_leaves_the_base_steps_and_the_last_step_alone(flow_pair):
    seen: dict[str, list[torch.Tensor]] = {}
    for key, regime in (("plain", Hybrid(k=1)), ("renoise", Renoise(over=Hybrid(k=1)))):
        steps: list[torch.Tensor] = []
        sample(flow_pair, PROMPT, regime, SEEDS, output_type="latent", progress=False,
               callback=lambda info, steps=steps: steps.append(info.latents.clone()))  # fmt: skip
        seen[key] = steps
    assert torch.equal(seen["plain"][0], seen["renoise"][0])  # after the base's step: untouched
    assert not torch.allclose(seen["plain"][1], seen["renoise"][1], atol=1e-2)  # after the student's first
    assert evaluations(Renoise().segments(flow_pair, CPU)) == evaluations(
        Distilled().segments(flow_pair, CPU)
    )
    described = json.loads(json.dumps(Renoise(over=Hybrid(k=1), eta=0.5).describe()))
    assert regime_from_name(described.pop("regime"), **described) == Renoise(over=Hybrid(k=1), eta=0.5)


# -------------------------------------------------------------------------------------------------- sliderspace
@pytest.fixture(scope="module")
def slider_folder(pair, tmp_path_factory):
    from conceptspace.lora import write_lora
    from conceptspace.testing import random_lora

    folder = tmp_path_factory.mktemp("sliders")
    attention = "down_blocks.1.attentions.0.transformer_blocks.0"
    for k in range(2):
        lora = random_lora(
            pair.student_network, [f"{attention}.attn2.to_k", f"{attention}.attn2.to_v"], seed=k, size=0.3
        )
        write_lora(lora, folder / f"direction_{k:02d}.safetensors")
    return folder


def test_sliderspace_at_zero_scale_is_the_plain_regime_exactly(pair, slider_folder):
    assert torch.equal(
        _latents(pair, SliderSpaceScales(sliders=str(slider_folder), scale=0.0)), _latents(pair, "distilled")
    )
    assert not torch.allclose(
        _latents(pair, SliderSpaceScales(sliders=str(slider_folder))), _latents(pair, "distilled")
    )


def test_sliderspace_gives_each_sample_its_own_scales_from_its_seed(pair, slider_folder):
    # each row of a batch equals that seed sampled alone with the sliders applied at that seed's scales
    from conceptspace.lora import apply_lora, read_lora
    from conceptspace.sampling.remedies import _uniform_scales, slider_files

    files = slider_files(str(slider_folder))
    batch = _latents(pair, SliderSpaceScales(sliders=str(slider_folder), scale=2.0), seeds=[3, 4])
    for row, seed in enumerate([3, 4]):
        handles = [
            apply_lora(
                pair.student_network,
                read_lora(f),
                scale=float(_uniform_scales((seed,), f"sliderspace:{k}", 2.0)[0]),
            )
            for k, f in enumerate(files)
        ]
        try:
            alone = _latents(pair, "distilled", seeds=[seed], batch_size=1)
        finally:
            for handle in handles:
                handle.remove()
        assert torch.allclose(batch[row : row + 1], alone, rtol=1e-4, atol=1e-4)  # batch shapes round apart
    assert not torch.allclose(batch[0], batch[1])


def test_sliderspace_needs_its_sliders_and_rebuilds_from_its_description(pair, slider_folder, tmp_path):
    with pytest.raises(ValueError, match="sliderspace needs the base's SliderSpace sliders"):
        _latents(pair, SliderSpaceScales(sliders=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="neither a slider file"):
        _latents(pair, SliderSpaceScales(sliders=str(tmp_path / "missing")))
    regime = SliderSpaceScales(over=Hybrid(k=1), sliders=str(slider_folder), scale=1.5)
    described = json.loads(json.dumps(regime.describe()))
    assert regime_from_name(described.pop("regime"), **described) == regime
    assert evaluations(regime.segments(pair, CPU)) == evaluations(Hybrid(k=1).segments(pair, CPU))
