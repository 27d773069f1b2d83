"""PixArt-α / PixArt-δ (a DiT on VP latents with T5 text, the paper's appendix pair) on tiny random weights: the
regimes proved against diffusers' own ``PixArtAlphaPipeline``, the hybrid's hand-off, x̂0 from a scheduler that
reports none (DPM-Solver++), loading by the real hub ids, and LoRAs / sliders on its attention projections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_checks import check_hybrid_hand_off

from conceptspace import Base, Distilled, load_pair, sample
from conceptspace.lora import apply_lora, coverage, read_lora, write_lora
from conceptspace.models import get_spec, is_cached
from conceptspace.sliders import target_modules
from conceptspace.testing import random_lora

PROMPT = "a red circle"
SEEDS = [0, 1]
TARGETS = [
    "transformer_blocks.0.attn1.to_q",
    "transformer_blocks.0.attn1.to_out.0",
    "transformer_blocks.0.attn2.to_k",
    "transformer_blocks.0.attn2.to_v",
]


@pytest.fixture(scope="module")
def pair():
    return load_pair("tiny-pixart", "tiny-pixart-lcm", device="cpu")


@pytest.mark.parametrize(("role", "steps", "guidance"), [("base", 8, 4.5), ("student", 4, 0.0)])
def test_regimes_reproduce_the_pixart_pipeline(pair, role, steps, guidance):
    # the tiny transformer has the 1024-px models' sample_size, so the resolution micro-conditions are in play
    assert pair.base_network.use_additional_conditions
    reference = pair.to_diffusers(role)(
        PROMPT,
        num_images_per_prompt=len(SEEDS),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=64,
        width=64,
        generator=[torch.Generator().manual_seed(s) for s in SEEDS],
        output_type="np",
        use_resolution_binning=False,
    ).images
    ours = sample(
        pair, PROMPT, Base() if role == "base" else Distilled(), SEEDS, output_type="np", progress=False
    )
    assert np.abs(ours.images - reference).max() <= 1e-4
    assert len(ours.schedule) == steps


def test_the_micro_conditions_follow_the_size_sampled(pair):
    seen = []
    handle = pair.student_network.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["added_cond_kwargs"]["resolution"][0].tolist()),
        with_kwargs=True,
    )
    try:
        sample(pair, PROMPT, Distilled(), [0], height=64, width=96, output_type="latent", progress=False)
    finally:
        handle.remove()
    assert seen and all(r == [64.0, 96.0] for r in seen)


def _recording(network, calls):
    def hook(module, args, kwargs, output):
        calls.append((args[0].detach().clone(), float(kwargs["timestep"][0]), output[0].detach()))

    return network.register_forward_hook(hook, with_kwargs=True)


def test_hybrid_runs_the_base_once_at_the_students_first_timestep(pair):
    check_hybrid_hand_off(pair, _recording, PROMPT, SEEDS)


def test_x0_from_dpm_solver_is_derived_from_the_noise_prediction(pair):
    # DPMSolverMultistepScheduler.step reports no x̂0: it is (x − √(1−ᾱ)·ε̂)/√ᾱ of the ε half of the output
    calls, recorded = [], []
    handle = _recording(pair.base_network, calls)
    try:
        sample(
            pair, PROMPT, Base(guidance_scale=0.0), [0], output_type="latent", progress=False,
            callback=recorded.append,
        )  # fmt: skip
    finally:
        handle.remove()
    alphas = pair.make_scheduler("base").alphas_cumprod
    assert len(calls) == len(recorded) == 8
    for (x, t, out), info in zip(calls, recorded, strict=True):
        a = alphas[int(t)]
        eps = out[:, :4]  # the first 4 of 8 channels; the rest is the learned variance
        torch.testing.assert_close(info.x0, (x - (1 - a).sqrt() * eps) / a.sqrt(), rtol=1e-4, atol=1e-4)


def test_pixart_pair_loads_offline_by_its_hub_ids(hub_cache: Path):
    base, student = get_spec("pixart-alpha"), get_spec("pixart-delta")
    assert (base.repo_id, student.repo_id) == (
        "PixArt-alpha/PixArt-XL-2-1024-MS",
        "PixArt-alpha/PixArt-LCM-XL-2-1024-MS",
    )
    assert is_cached(base, hub_cache) and is_cached(student, hub_cache)
    snapshot = next((hub_cache / "models--PixArt-alpha--PixArt-XL-2-1024-MS" / "snapshots").iterdir())
    assert json.loads((snapshot / "model_index.json").read_text())["transformer"][1] == "Transformer2DModel"

    pair = load_pair("pixart-alpha", "pixart-delta", cache_dir=hub_cache, device="cpu")
    assert type(pair.pipeline).__name__ == "PixArtAlphaPipeline" and pair.family.name == "pixart"
    assert type(pair.student_network).__name__ == "PixArtTransformer2DModel"
    assert type(pair.make_scheduler("base")).__name__ == "DPMSolverMultistepScheduler"
    assert type(pair.make_scheduler("student")).__name__ == "LCMScheduler"
    assert not torch.equal(pair.student_network.pos_embed.proj.weight, pair.base_network.pos_embed.proj.weight)
    result = sample(
        pair, "a photo", "hybrid", seeds=[0], height=64, width=64, output_type="latent", progress=False
    )
    assert [s.model for s in result.schedule] == ["base", "distilled", "distilled", "distilled"]


def test_a_base_lora_round_trips_and_transfers_to_pixart_delta(pair, tmp_path):
    lora = random_lora(pair.base_network, TARGETS, seed=3, ranks=(2, 4), size=0.3)
    path = write_lora(lora, tmp_path / "p.safetensors")
    read = read_lora(path)
    assert read.network == "transformer" and set(read.modules) == set(TARGETS)
    assert coverage(pair.student_network, read).complete  # the base's LoRA fits the distilled transformer
    plain = sample(pair, PROMPT, Distilled(), SEEDS, output_type="latent", progress=False).images
    with apply_lora(pair.student_network, read, scale=1.0):
        steered = sample(pair, PROMPT, Distilled(), SEEDS, output_type="latent", progress=False).images
    assert (steered - plain).abs().max() > 1e-3
    again = sample(pair, PROMPT, Distilled(), SEEDS, output_type="latent", progress=False).images
    torch.testing.assert_close(again, plain, rtol=0, atol=0)


def test_slider_layers_on_pixart_are_its_self_and_cross_attention(pair):
    self_attention = target_modules(pair.base_network, "self-attention")
    assert self_attention and all(".attn1." in name for name in self_attention)
    assert target_modules(pair.base_network, "cross-attention-kv") == [
        "transformer_blocks.0.attn2.to_k",
        "transformer_blocks.0.attn2.to_v",
    ]

