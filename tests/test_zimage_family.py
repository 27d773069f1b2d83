"""Z-Image / Z-Image-Turbo (a single-stream DiT on flow-matching latents with a Qwen3 text encoder) on tiny random
weights: the regimes proved against diffusers' own ``ZImagePipeline`` (its list-of-latents call, reversed
timestep, negated velocity and ``pos + s·(pos − neg)`` guidance all inside the adapter), the hybrid's hand-off,
x̂0 = x − σ·v, loading by the real hub ids, and LoRAs / sliders on its attention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_checks import check_flow_x0, check_hybrid_hand_off

from conceptspace import Base, Distilled, load_pair, sample
from conceptspace.lora import apply_lora, coverage, read_lora, write_lora
from conceptspace.models import get_spec, is_cached
from conceptspace.models.tiny import tiny_zimage_pipeline
from conceptspace.schedules import FLOW
from conceptspace.sliders import target_modules
from conceptspace.testing import random_lora

PROMPT = "a red circle"
SEEDS = [0, 1]
TARGETS = ["layers.0.attention.to_q", "layers.0.attention.to_v", "layers.0.feed_forward.w2"]


@pytest.fixture(scope="module")
def pair():
    return load_pair("tiny-zimage", "tiny-zimage-turbo", device="cpu")


@pytest.mark.parametrize(("role", "steps", "guidance"), [("base", 8, 4.0), ("student", 4, 0.0)])
def test_regimes_reproduce_the_zimage_pipeline(pair, role, steps, guidance):
    assert pair.prediction_type(role) == FLOW
    reference = pair.to_diffusers(role)(
        PROMPT,
        num_images_per_prompt=len(SEEDS),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=64,
        width=64,
        generator=[torch.Generator().manual_seed(s) for s in SEEDS],
        output_type="np",
    ).images
    ours = sample(
        pair, PROMPT, Base() if role == "base" else Distilled(), SEEDS, output_type="np", progress=False
    )
    assert np.abs(ours.images - reference).max() <= 1e-4
    assert len(ours.schedule) == steps


def test_zimage_guidance_runs_cfg_from_any_positive_scale(pair):
    # Z-Image's scale s is pos + s·(pos − neg): s = 0.5 is CFG (two passes) where diffusers' usual w = 0.5 is not
    from conceptspace.sampling import make_denoiser

    assert make_denoiser(pair, "base", 0.5).uses_cfg and not make_denoiser(pair, "base", 0.0).uses_cfg
    assert pair.family.cfg_weight(0.5) == 1.5
    reference = pair.to_diffusers("base")(
        PROMPT, num_inference_steps=4, guidance_scale=0.5, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images  # fmt: skip
    ours = sample(pair, PROMPT, Base(steps=4, guidance_scale=0.5), [0], output_type="np", progress=False)
    assert np.abs(ours.images - reference).max() <= 1e-4


def _recording(network, calls):
    def hook(module, args, kwargs, output):
        x = torch.stack(args[0]).squeeze(2)
        calls.append((x.detach().clone(), 1000 * (1 - float(args[1][0])), -torch.stack(output[0]).squeeze(2)))

    return network.register_forward_hook(hook, with_kwargs=True)


def test_hybrid_runs_the_base_once_at_the_students_first_sigma(pair):
    check_hybrid_hand_off(pair, _recording, PROMPT, SEEDS)


def test_x0_is_the_latent_minus_sigma_times_the_velocity(pair):
    check_flow_x0(pair, _recording, PROMPT, SEEDS)


def test_zimage_pair_loads_offline_by_its_hub_ids(hub_cache: Path):
    base, student = get_spec("z-image"), get_spec("z-image-turbo")
    assert (base.repo_id, student.repo_id) == ("Tongyi-MAI/Z-Image", "Tongyi-MAI/Z-Image-Turbo")
    assert is_cached(base, hub_cache) and is_cached(student, hub_cache)
    snapshot = next((hub_cache / "models--Tongyi-MAI--Z-Image" / "snapshots").iterdir())
    assert json.loads((snapshot / "model_index.json").read_text())["tokenizer"][1] == "Qwen2Tokenizer"

    pair = load_pair("z-image", "z-image-turbo", cache_dir=hub_cache, device="cpu")
    assert type(pair.pipeline).__name__ == "ZImagePipeline" and pair.family.name == "zimage"
    assert (
        type(pair.pipeline.tokenizer).__name__ == "Qwen2Tokenizer" and pair.pipeline.tokenizer.chat_template
    )
    assert not torch.equal(
        pair.student_network.layers[0].attention.to_q.weight, pair.base_network.layers[0].attention.to_q.weight
    )
    result = sample(
        pair, "a photo", "hybrid", seeds=[0], height=64, width=64, output_type="latent", progress=False
    )
    assert [s.model for s in result.schedule][:2] == ["base", "distilled"]
    assert len(result.schedule) == student.num_inference_steps


def test_a_zimage_lora_round_trips_and_loads_in_diffusers_alike(pair, tmp_path):
    lora = random_lora(pair.base_network, TARGETS, seed=3, ranks=(2, 4), size=0.3)
    path = write_lora(lora, tmp_path / "z.safetensors")
    read = read_lora(path)
    assert read.network == "transformer" and set(read.modules) == set(TARGETS)
    assert coverage(pair.student_network, read).complete  # the base's LoRA fits Z-Image-Turbo

    plain = sample(pair, PROMPT, Distilled(), [0], output_type="latent", progress=False).images
    with apply_lora(pair.student_network, read, scale=0.7):
        ours = sample(pair, PROMPT, Distilled(), [0], output_type="latent", progress=False).images
    assert (ours - plain).abs().max() > 1e-3

    pipe = pair.to_diffusers("student")
    pipe.load_lora_weights(str(path), adapter_name="ours")
    pipe.set_adapters(["ours"], adapter_weights=[0.7])
    try:
        theirs = pipe(
            PROMPT, num_inference_steps=4, guidance_scale=0.0, height=64, width=64,
            generator=torch.Generator().manual_seed(0), output_type="latent",
        ).images  # fmt: skip
    finally:
        pipe.unload_lora_weights()
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_slider_layers_on_zimage_are_its_single_stream_attention():
    network = tiny_zimage_pipeline(0).transformer
    assert target_modules(network, "self-attention") == [
        f"layers.0.attention.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")
    ]
    assert target_modules(network, "cross-attention-kv") == [
        "layers.0.attention.to_k",
        "layers.0.attention.to_v",
    ]


def test_timestep_window_reads_zimages_reversed_timestep(pair):
    # Z-Image is called with (1000 − t)/1000: a window on the scheduler's t must see t, not the network's input
    lora = random_lora(pair.base_network, TARGETS, seed=1, size=0.3)
    regime = Base(steps=4, guidance_scale=0.0)  # t = 1000, 900, 750, 500
    plain, windowed = [], []
    sample(pair, PROMPT, regime, [0], output_type="latent", progress=False, callback=plain.append)
    with apply_lora(pair.base_network, lora, t_start=800):  # off while t > 800
        sample(pair, PROMPT, regime, [0], output_type="latent", progress=False, callback=windowed.append)
    assert [round(float(step.timestep)) for step in plain] == [1000, 900, 750, 500]
    for before, after in zip(plain[:2], windowed[:2], strict=True):
        torch.testing.assert_close(after.x0, before.x0, rtol=0, atol=0)
    assert (windowed[2].x0 - plain[2].x0).abs().max() > 1e-4
