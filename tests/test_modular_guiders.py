"""The remedies as diffusers guiders: in a real modular SDXL pipeline (diffusers' own blocks, the tiny pair's
student, text encoders, VAE and scheduler) each guider makes the images of its conceptspace regime, is diffusers'
``ClassifierFreeGuidance`` exactly at zero strength, round-trips through ``save_pretrained``, and refuses bad
parameters by name. Also the :class:`UncondFirst` regime, against an independent reference (the empty prompt)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance

from conceptspace import Distilled, sample
from conceptspace.modular import CADSGuidance, CondNoiseGuidance, UncondFirstGuidance
from conceptspace.remedies import CADS, CondNoise, UncondFirst, cads_corrupt, evaluations, token_weights
from conceptspace.sampling import parse_regime, regime_from_name

PROMPT = "a red circle on the left"
SEEDS = [3, 4]
TIMESTEPS = [999, 749, 499, 249]  # the tiny DMD student's schedule
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair(tiny_sdxl_pair):
    return tiny_sdxl_pair


@pytest.fixture(scope="module")
def pipe(pair):
    """Diffusers' modular SDXL text-to-image pipeline on the pair's student, as conceptspace builds its sampler."""
    from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks

    modular = StableDiffusionXLAutoBlocks().init_pipeline()
    shared = pair.pipeline
    modular.update_components(
        unet=pair.student_network,
        vae=shared.vae,
        text_encoder=shared.text_encoder,
        text_encoder_2=shared.text_encoder_2,
        tokenizer=shared.tokenizer,
        tokenizer_2=shared.tokenizer_2,
        scheduler=pair.make_scheduler("student"),
    )
    modular.set_progress_bar_config(disable=True)
    return modular


def run(pipe, guider, seeds=SEEDS) -> torch.Tensor:
    """The modular pipeline's final latents with ``guider``, one generator per sample (as conceptspace draws)."""
    pipe.update_components(guider=guider)
    return pipe(
        prompt=PROMPT,
        timesteps=TIMESTEPS,
        height=64,
        width=64,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type="latent",
        output="images",
    )


def regime_latents(pair, regime) -> torch.Tensor:
    return sample(pair, PROMPT, regime, seeds=SEEDS, output_type="latent", progress=False).latents


CASES = {
    "cads": (lambda g: CADSGuidance(guidance_scale=g), lambda g: CADS(over=Distilled(guidance_scale=g))),
    "cond-noise": (
        lambda g: CondNoiseGuidance(guidance_scale=g, until=0.5),  # two of the four steps
        lambda g: CondNoise(over=Distilled(guidance_scale=g), until=0.5),
    ),
    "uncond-first": (
        lambda g: UncondFirstGuidance(guidance_scale=g, steps=2),
        lambda g: UncondFirst(over=Distilled(guidance_scale=g), steps=2),
    ),
}
ZERO = {
    "cads": lambda g: CADSGuidance(guidance_scale=g, noise_scale=0.0),
    "cond-noise": lambda g: CondNoiseGuidance(guidance_scale=g, strength=0.0),
    "uncond-first": lambda g: UncondFirstGuidance(guidance_scale=g, steps=0),
}


# ----------------------------------------------------------------------------------------- guiders = regimes
@pytest.mark.parametrize("scale", [1.0, 2.5], ids=["one-pass", "cfg"])
@pytest.mark.parametrize("name", list(CASES))
def test_each_guider_makes_its_regimes_images(pair, pipe, name, scale):
    make_guider, make_regime = CASES[name]
    guider = make_guider(scale)
    if hasattr(guider, "set_seeds"):
        guider.set_seeds(SEEDS)
    modular = run(pipe, guider)
    expected = regime_latents(pair, make_regime(scale))
    plain = regime_latents(pair, Distilled(guidance_scale=scale))
    # conceptspace batches CFG's two passes in one call, the modular loop runs them apart: 1e-4, not bit-equal
    assert (modular - expected).abs().max() < 1e-4
    assert (modular - plain).abs().max() > 0.1  # the remedy did change the images
    assert torch.equal(run(pipe, guider), modular)  # a second call (fresh encoding, guider state) repeats


@pytest.mark.parametrize("scale", [1.0, 2.5], ids=["one-pass", "cfg"])
@pytest.mark.parametrize("name", list(ZERO))
def test_at_zero_strength_each_guider_is_diffusers_cfg_exactly(pipe, name, scale):
    assert torch.equal(run(pipe, ZERO[name](scale)), run(pipe, ClassifierFreeGuidance(guidance_scale=scale)))


def test_below_scale_one_the_guiders_run_one_conditional_pass_as_conceptspace_does(pipe):
    one_pass = run(pipe, ClassifierFreeGuidance(guidance_scale=1.0))
    for guider in (ZERO["cads"](0.0), ZERO["cond-noise"](0.5), ZERO["uncond-first"](0.0)):
        assert torch.equal(run(pipe, guider), one_pass)


def test_without_seeds_row_i_is_seeded_seed_plus_i(pipe):
    fallback = run(pipe, CADSGuidance(seed=SEEDS[0]))
    given = CADSGuidance(seed=99)
    given.set_seeds(SEEDS)
    assert torch.equal(fallback, run(pipe, given))
    given.set_seeds([1, 2, 3])
    with pytest.raises(ValueError, match="3 seeds are set for a batch of 2"):
        run(pipe, given)


# --------------------------------------------------------------------------------- the guider's own inputs
def test_cads_corrupts_only_the_conditional_text_and_keeps_padding():
    """Qwen-Image's names: a padded sequence with its mask; the unconditional batch and the padding untouched."""
    torch.manual_seed(0)
    text, uncond = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    guider = CADSGuidance(guidance_scale=3.0, seed=7)
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(999))
    cond, unc = guider.prepare_inputs(
        {"encoder_hidden_states": (text, uncond), "encoder_hidden_states_mask": (mask, mask)}
    )
    real = token_weights({"encoder_hidden_states": text, "m": mask}, "encoder_hidden_states", "m")
    expected = cads_corrupt(text, real, (7, 8), "encoder_hidden_states", 999, 0.0, noise_scale=0.25, psi=1.0, rescale=True)  # fmt: skip
    assert torch.equal(cond.encoder_hidden_states, expected)
    assert torch.equal(cond.encoder_hidden_states[0, 3:], text[0, 3:])
    assert unc.encoder_hidden_states is uncond


def test_a_list_of_unpadded_sequences_is_perturbed_per_sample():
    """Z-Image's ``cap_feats``: each sample's sequence as a batch of one from its own seed."""
    torch.manual_seed(0)
    feats = [torch.randn(3, 8), torch.randn(6, 8)]
    guider = CondNoiseGuidance(strength=1.5)
    guider.set_seeds([11, 12])
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(999))
    (cond,) = guider.prepare_inputs_from_block_state(_state(cap_feats=feats), {"cap_feats": "cap_feats"})
    for row, (clean, seed) in enumerate(zip(feats, (11, 12), strict=True)):
        alone = CondNoiseGuidance(strength=1.5)
        alone.set_seeds([seed])
        alone.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(999))
        (one,) = alone.prepare_inputs_from_block_state(_state(cap_feats=[clean]), {"cap_feats": "cap_feats"})
        assert torch.equal(cond.cap_feats[row], one.cap_feats[0])
        assert not torch.equal(cond.cap_feats[row], clean)


def _state(**values):
    from diffusers.modular_pipelines.modular_pipeline import BlockState

    return BlockState(**values)


def test_uncond_first_asks_the_pipeline_for_the_negative_embeddings():
    guider = UncondFirstGuidance(guidance_scale=1.0, steps=1)
    assert guider.num_conditions == 2  # before the loop: the encoder reads it
    guider.set_state(step=0, num_inference_steps=2, timestep=torch.tensor(999))
    assert guider.num_conditions == 1
    with pytest.raises(ValueError, match="negative"):
        guider.prepare_inputs({"prompt_embeds": (torch.zeros(1, 2, 3), None)})
    assert UncondFirstGuidance(guidance_scale=1.0, steps=0).num_conditions == 1


# ------------------------------------------------------------------------------------------ config and errors
@pytest.mark.parametrize(
    "guider",
    [
        CADSGuidance(
            guidance_scale=3.0, tau1=0.5, noise_scale=0.1, text_inputs={"text_embeds": "pooled_projections"}
        ),
        CondNoiseGuidance(strength=2.0, share=0.25, until=0.5, seed=5, mask_inputs=["prompt_embeds_mask"]),
        UncondFirstGuidance(guidance_scale=4.0, steps=2),
    ],
    ids=["cads", "cond-noise", "uncond-first"],
)
def test_guiders_round_trip_through_save_pretrained(guider, tmp_path):
    guider.save_pretrained(tmp_path)
    assert (tmp_path / "guider_config.json").is_file()
    loaded = type(guider).from_pretrained(tmp_path)
    assert (
        _parameters(loaded) == _parameters(guider) and loaded.config["_class_name"] == type(guider).__name__
    )
    assert _parameters(guider.new()) == _parameters(guider)


def _parameters(guider) -> dict:
    """The config's parameters (diffusers keeps an in-memory ``_use_default_values`` that it does not save)."""
    return {k: v for k, v in guider.config.items() if not k.startswith("_")}


@pytest.mark.parametrize(
    "make, parameter",
    [
        (lambda: CADSGuidance(noise_scale=-1), "noise_scale"),
        (lambda: CADSGuidance(tau1=0.9, tau2=0.5), "tau1"),
        (lambda: CADSGuidance(psi=2), "psi"),
        (lambda: CADSGuidance(num_train_timesteps=0), "num_train_timesteps"),
        (lambda: CADSGuidance(guidance_scale=float("nan")), "guidance_scale"),
        (lambda: CADSGuidance(text_inputs="prompt_embeds"), "text_inputs"),
        (lambda: CADSGuidance(mask_inputs="mask"), "mask_inputs"),
        (lambda: CADSGuidance(seed=2**70), "seed"),
        (lambda: CondNoiseGuidance(strength=-0.5), "strength"),
        (lambda: CondNoiseGuidance(share=0), "share"),
        (lambda: CondNoiseGuidance(until=1.5), "until"),
        (lambda: UncondFirstGuidance(steps=-1), "steps"),
        (lambda: UncondFirstGuidance(steps=1.5), "steps"),
        (lambda: UncondFirstGuidance(guidance_scale=-2), "guidance_scale"),
        (lambda: UncondFirst(steps=0), "steps"),
    ],
)
def test_bad_parameters_are_refused_naming_them(make, parameter):
    with pytest.raises(ValueError, match=parameter):
        make()


# -------------------------------------------------------------------------------------- the UncondFirst regime
@pytest.mark.parametrize("steps", [1, 2])
def test_uncond_first_regimes_first_steps_are_the_empty_prompts(pair, steps):
    """Independent reference: the student given the empty prompt (the negative prompt "" encodes the same)."""
    ours = sample(
        pair, PROMPT, UncondFirst(steps=steps), seeds=SEEDS, negative_prompt="", output_type="latent",
        record_x0=True, progress=False,
    ).trajectory  # fmt: skip
    empty = sample(pair, "", "distilled", seeds=SEEDS, output_type="latent", record_x0=True, progress=False)
    assert torch.equal(ours[:, :steps], empty.trajectory[:, :steps])
    assert (ours[:, steps] - empty.trajectory[:, steps]).abs().max() > 1e-3  # the prompt from then on


def test_uncond_first_regime_costs_nothing_and_rebuilds_from_its_description(pair):
    regime = UncondFirst(steps=2)
    assert evaluations(regime.segments(pair, CPU)) == evaluations(Distilled().segments(pair, CPU))
    assert regime.describe() == {"regime": "uncond-first", "over": "distilled", "steps": 2}
    described = json.loads(json.dumps(regime.describe()))
    assert regime_from_name(described.pop("regime"), **described) == regime
    assert parse_regime("uncond-first:steps=2").over == regime  # a spec with options is named after them
    with pytest.raises(ValueError, match="steps=4 covers all 4 steps"):
        UncondFirst(steps=4).segments(pair, CPU)
