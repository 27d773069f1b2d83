"""Flow-matching families (SD3 / SD3.5, FLUX.1) on tiny random weights: the same sampler, regimes and x̂0 as the VP
families, proved against diffusers' own ``StableDiffusion3Pipeline`` / ``FluxPipeline`` and against the
flow-matching math."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from family_checks import check_hybrid_hand_off
from safetensors.torch import load_file

from conceptspace import Base, Distilled, Hybrid, ReplaceFinal, load_pair, sample
from conceptspace.models import get_spec, is_cached, with_overrides
from conceptspace.models.families import FAMILIES
from conceptspace.models.families.flux import pack
from conceptspace.models.registry import NETWORK_FOLDERS
from conceptspace.sampling.loop import _hand_off
from conceptspace.schedules import FLOW, noise_level

PROMPT = "a red circle"
SEEDS = [0, 1]


# (base, student, family, base steps, base guidance)
FLOW_PAIRS = {
    "sd3": ("tiny-sd3", "tiny-sd3-turbo", 8, 5.0),
    "flux": ("tiny-flux", "tiny-schnell", 8, 3.5),
}


@pytest.fixture(scope="module", params=sorted(FLOW_PAIRS))
def pair(request):
    base, student, _, _ = FLOW_PAIRS[request.param]
    loaded = load_pair(base, student, device="cpu")
    assert loaded.family.name == request.param
    return loaded


@pytest.fixture(scope="module")
def sd3_pair():
    return load_pair("tiny-sd3", "tiny-sd3-turbo", device="cpu")


def _diffusers_images(pair, role, steps, guidance, size=64, output_type="np"):
    pipe = pair.to_diffusers(role)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    return pipe(
        PROMPT,
        num_images_per_prompt=len(SEEDS),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
        generator=generators,
        output_type=output_type,
    ).images


def test_registry_and_families_agree_on_the_network_folder():
    for name, family in FAMILIES.items():
        assert NETWORK_FOLDERS.get(name, "unet") == family.network_folder, name


@pytest.mark.parametrize("role", ["base", "student"])
def test_regimes_reproduce_the_family_pipeline(pair, role):
    # SD3's base runs CFG (two passes); FLUX.1-dev's guidance is an input of the network (one pass)
    _, _, base_steps, base_guidance = FLOW_PAIRS[pair.family.name]
    steps, guidance, regime = (base_steps, base_guidance, Base()) if role == "base" else (4, 0.0, Distilled())
    assert pair.prediction_type(role) == FLOW
    reference = _diffusers_images(pair, role, steps, guidance)
    ours = sample(pair, PROMPT, regime, SEEDS, output_type="np", progress=False)
    assert np.abs(ours.images - reference).max() <= 1e-4
    assert len(ours.schedule) == steps


def _recording(network, calls):
    """Record (input, timestep as the scheduler counts it, output) of every call (FLUX gets t/1000)."""
    scale = 1000.0 if type(network).__name__.startswith("Flux") else 1.0

    def hook(module, args, kwargs, output):
        t = kwargs["timestep"][0].item() * scale
        calls.append((kwargs["hidden_states"].detach().clone(), t, output[0].detach()))

    return network.register_forward_hook(hook, with_kwargs=True)


def test_hybrid_runs_the_base_once_at_the_students_first_sigma(pair):
    check_hybrid_hand_off(pair, _recording, PROMPT, SEEDS)  # σ = 1 first


def test_x0_at_every_step_is_the_latent_minus_sigma_times_velocity(pair):
    calls, recorded = [], []
    handle = _recording(pair.student_network, calls)
    try:
        sample(
            pair, PROMPT, Distilled(), SEEDS, output_type="latent", progress=False, callback=recorded.append
        )
    finally:
        handle.remove()
    assert len(calls) == len(recorded) == 4
    for (x, t, velocity), info in zip(calls, recorded, strict=True):
        sigma = t / 1000  # flow-matching timesteps are σ·1000
        x0 = pack(info.x0) if pair.family.name == "flux" else info.x0  # FLUX's network sees packed tokens
        torch.testing.assert_close(x0, x - sigma * velocity, rtol=0, atol=1e-5)
    # the first step starts from pure noise (σ = 1)
    assert calls[0][1] == pytest.approx(1000.0)


def test_hand_off_between_flow_schedules_keeps_x0_and_noise_at_the_receivers_sigma():
    sender = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sender.set_timesteps(8)
    receiver = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    receiver.set_timesteps(4)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigma = sender.sigmas[3]
    latent = _hand_off((sender, 3, (1 - sigma) * x0 + sigma * eps), x0, receiver, 2)
    target = receiver.sigmas[2]
    torch.testing.assert_close(latent, (1 - target) * x0 + target * eps, rtol=0, atol=1e-5)
    assert noise_level(receiver, 2).sigma == target


def test_regimes_with_the_bases_own_flow_schedule(pair):
    own = Hybrid(k=1, base_schedule="own", base_steps=8)
    result = sample(pair, PROMPT, own, SEEDS, output_type="latent", progress=False)
    student = [s.timestep for s in sample(pair, PROMPT, Distilled(), [0], progress=False).schedule]
    base_steps = [s for s in result.schedule if s.model == "base"]
    assert base_steps and all(s.timestep > student[1] for s in base_steps)
    assert [s.timestep for s in result.schedule if s.model == "distilled"] == student[1:]
    final = sample(pair, PROMPT, ReplaceFinal(base_steps=8), SEEDS, output_type="latent", progress=False)
    assert [s.model for s in final.schedule][:2] == ["distilled", "base"]
    assert torch.isfinite(result.latents).all() and torch.isfinite(final.latents).all()


def test_flux_dev_schedule_is_shifted_for_the_resolution_sampled():
    # FLUX.1-dev's dynamic shift: the schedule differs with the size, and at each size ours equals FluxPipeline's
    flux = load_pair("tiny-flux", device="cpu")
    schedules = {}
    for size in (64, 128):
        reference = _diffusers_images(flux, "base", 6, 3.5, size=size, output_type="latent")
        ours = sample(
            flux, PROMPT, Base(steps=6), SEEDS, height=size, width=size, output_type="latent", progress=False
        )
        # FluxPipeline returns packed latents for output_type="latent"
        torch.testing.assert_close(pack(ours.latents), reference, rtol=0, atol=1e-5)
        schedules[size] = [s.timestep for s in ours.schedule]
    assert schedules[64] != schedules[128]


def test_flux_sizes_must_fit_its_2x2_latent_patches():
    flux = load_pair("tiny-flux", device="cpu")
    with pytest.raises(ValueError, match="multiples of 4"):
        sample(flux, PROMPT, Base(steps=2), [0], height=66, width=64, progress=False)


def test_dynamic_shifting_is_computed_for_the_resolution_sampled(sd3_pair):
    # the same resolution-dependent shift on the SD3 pipeline (a config option there)
    dynamic = (("use_dynamic_shifting", True), ("base_image_seq_len", 256), ("max_image_seq_len", 4096))
    shifted = load_pair(
        with_overrides(get_spec("tiny-sd3"), scheduler_overrides=dynamic),
        with_overrides(get_spec("tiny-sd3-turbo"), scheduler_overrides=dynamic),
        device="cpu",
    )
    schedules = {}
    for size in (64, 128):
        reference = _diffusers_images(shifted, "student", 4, 0.0, size=size, output_type="latent")
        ours = sample(
            shifted, PROMPT, Distilled(), SEEDS, height=size, width=size, output_type="latent", progress=False
        )
        torch.testing.assert_close(ours.latents, reference, rtol=0, atol=1e-5)
        schedules[size] = [s.timestep for s in ours.schedule]
    assert schedules[64] != schedules[128]


def _snapshot(cache: Path, repo_id: str) -> Path:
    return next((cache / ("models--" + repo_id.replace("/", "--")) / "snapshots").iterdir())


def test_flux_pair_loads_offline_by_its_hub_ids(hub_cache: Path):
    base, student = get_spec("flux-dev"), get_spec("flux-schnell")
    assert (base.repo_id, student.repo_id) == (
        "black-forest-labs/FLUX.1-dev",
        "black-forest-labs/FLUX.1-schnell",
    )
    pair = load_pair("flux-dev", "flux-schnell", cache_dir=hub_cache, device="cpu")
    assert type(pair.pipeline).__name__ == "FluxPipeline" and pair.family.name == "flux"
    # dev takes the guidance scale as an input, schnell takes none; schnell keeps its own unshifted schedule
    assert pair.base_network.config.guidance_embeds and not pair.student_network.config.guidance_embeds
    assert pair.make_scheduler("base").config.use_dynamic_shifting
    assert not pair.make_scheduler("student").config.use_dynamic_shifting
    result = sample(
        pair, "a photo", "hybrid", seeds=[0], height=64, width=64, output_type="latent", progress=False
    )
    assert [(s.model, s.timestep) for s in result.schedule] == [
        ("base", 1000),
        ("distilled", 750),
        ("distilled", 500),
        ("distilled", 250),
    ]
    assert pair.to_diffusers("student").transformer is pair.student_network


def test_sd35_pair_loads_offline_by_its_hub_ids(hub_cache: Path):
    base, student = get_spec("sd35-large"), get_spec("sd35-large-turbo")
    assert (base.repo_id, student.repo_id) == (
        "stabilityai/stable-diffusion-3.5-large",
        "stabilityai/stable-diffusion-3.5-large-turbo",
    )
    assert is_cached(base, hub_cache) and is_cached(student, hub_cache)
    pair = load_pair("sd35-large", "sd35-large-turbo", cache_dir=hub_cache, device="cpu")
    assert type(pair.pipeline).__name__ == "StableDiffusion3Pipeline" and pair.family.name == "sd3"

    # the student's transformer is its repo's sharded weights, not the base's
    folder = _snapshot(hub_cache, student.repo_id) / "transformer"
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    written = {}
    for shard in sorted(set(index["weight_map"].values())):
        written.update(load_file(str(folder / shard)))
    loaded = pair.student_network.state_dict()
    assert set(loaded) == set(written)
    for key, value in written.items():
        torch.testing.assert_close(loaded[key], value.float(), rtol=0, atol=0, msg=key)
    assert not torch.equal(
        loaded["pos_embed.proj.weight"], pair.base_network.state_dict()["pos_embed.proj.weight"]
    )

    # one VAE and one set of text encoders (the base's); the student pipeline shares them
    student_pipe = pair.to_diffusers("student")
    assert student_pipe.transformer is pair.student_network
    for part in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        assert getattr(student_pipe, part) is getattr(pair.pipeline, part), part
    assert type(pair.make_scheduler("student")).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pair.make_scheduler("student").config.shift == 3.0

    result = sample(
        pair, "a photo", "hybrid", seeds=[0], height=64, width=64, output_type="latent", progress=False
    )
    assert result.latents.shape == (1, 4, 32, 32) and torch.isfinite(result.latents).all()
    assert [s.model for s in result.schedule] == ["base", "distilled", "distilled", "distilled"]
