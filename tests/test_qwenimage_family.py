"""Qwen-Image / Qwen-Image-Lightning (a dual-stream MMDiT over packed flow latents, Qwen2.5-VL text, a video VAE;
the student a LoRA on the base) on tiny random weights: the regimes proved against diffusers' own
``QwenImagePipeline`` (true CFG with its norm rescaling, the VAE's latent statistics), prompts of different lengths
in one batch, the hybrid's hand-off, x̂0 = x − σ·v, loading by the real hub ids with the Lightning LoRA in its own key
layout, and LoRAs / sliders on the joint attention."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from family_checks import check_flow_x0, check_hybrid_hand_off

from conceptspace import Base, Distilled, load_pair, sample
from conceptspace.lora import apply_lora, coverage, read_lora, write_lora
from conceptspace.models import Conditioning, get_spec, is_cached
from conceptspace.models.families.flux import pack, unpack
from conceptspace.models.tiny import tiny_qwenimage_pipeline
from conceptspace.schedules import FLOW
from conceptspace.sliders import target_modules
from conceptspace.testing import random_lora, write_lightning_lora

PROMPT = "a red circle"
SEEDS = [0, 1]
TARGETS = ["transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.add_k_proj", "transformer_blocks.0.img_mlp.net.2"]


@pytest.fixture(scope="module")
def pair():
    return load_pair("tiny-qwen-image", "tiny-qwen-image-lightning", device="cpu")


def _diffusers(pipe, steps: int, true_cfg: float, seeds=SEEDS, output_type: str = "np", prompt: str = PROMPT):
    # the model card's call: a negative prompt " ", CFG only when true_cfg_scale > 1
    return pipe(
        prompt, negative_prompt=" ", true_cfg_scale=true_cfg, num_images_per_prompt=len(seeds),
        num_inference_steps=steps, height=64, width=64,
        generator=[torch.Generator().manual_seed(s) for s in seeds], output_type=output_type,
    ).images  # fmt: skip


@pytest.mark.parametrize(("role", "steps", "guidance"), [("base", 8, 4.0), ("student", 4, 1.0)])
def test_regimes_reproduce_the_qwenimage_pipeline(pair, role, steps, guidance):
    assert pair.prediction_type(role) == FLOW
    reference = _diffusers(pair.to_diffusers(role), steps, guidance)
    regime = Base() if role == "base" else Distilled()
    ours = sample(pair, PROMPT, regime, SEEDS, output_type="np", progress=False)
    assert np.abs(ours.images - reference).max() <= 1e-4
    assert len(ours.schedule) == steps


def test_true_cfg_rescales_each_token_to_the_conditional_norm(pair):
    generator = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(2, 1, 4, 8, 8, generator=generator)
    guided = pair.family.combine_guidance(uncond, cond, 4.0)
    plain = uncond + 4.0 * (cond - uncond)
    torch.testing.assert_close(pack(guided).norm(dim=-1), pack(cond).norm(dim=-1))
    # the direction is plain CFG's; only the length changes
    cosine = torch.nn.functional.cosine_similarity(pack(guided), pack(plain), dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))
    assert (pack(plain).norm(dim=-1) - pack(cond).norm(dim=-1)).abs().max() > 0.1


def test_prompts_of_different_lengths_share_a_batch(pair):
    short = pair.family.encode_text(
        pair.pipeline, "a cat", negative_prompt=None, cfg=False, height=64, width=64, device=pair.device
    )
    long = pair.family.encode_text(
        pair.pipeline, "a very long prompt about a red circle on a blue square", negative_prompt=None, cfg=False,
        height=64, width=64, device=pair.device,
    )  # fmt: skip
    assert short.inputs["encoder_hidden_states"].shape[1] < long.inputs["encoder_hidden_states"].shape[1]
    batch = Conditioning.concatenate([short, long])
    assert batch.inputs["encoder_hidden_states_mask"][0].sum() == short.inputs["encoder_hidden_states"].shape[1]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(700.0)
    together = pair.family.predict(pair.base_network, x, t, batch.inputs)
    alone = [pair.family.predict(pair.base_network, x[i : i + 1], t, c.inputs) for i, c in enumerate((short, long))]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)


def _recording(network, calls):
    def hook(module, args, kwargs, output):
        height = width = int(math.isqrt(kwargs["hidden_states"].shape[1])) * 2
        x = unpack(kwargs["hidden_states"], height, width)
        calls.append((x.detach().clone(), float(kwargs["timestep"][0]) * 1000, unpack(output[0], height, width)))

    return network.register_forward_hook(hook, with_kwargs=True)


def test_hybrid_runs_the_base_once_at_the_students_first_sigma(pair):
    check_hybrid_hand_off(pair, _recording, PROMPT, SEEDS)


def test_x0_is_the_latent_minus_sigma_times_the_velocity(pair):
    check_flow_x0(pair, _recording, PROMPT, SEEDS)


def test_the_lightning_schedule_is_shift_three_at_every_resolution(pair):
    # the Lightning repo's scheduler: mu = ln 3 with the exponential time shift, i.e. σ' = 3σ / (1 + 2σ)
    result = sample(pair, PROMPT, Distilled(), [0], output_type="latent", progress=False)
    sigmas = np.linspace(1.0, 1 / 4, 4)
    expected = 1000 * 3 * sigmas / (1 + 2 * sigmas)
    assert [s.timestep for s in result.schedule] == pytest.approx(expected, abs=0.5)


def test_qwenimage_pair_loads_offline_with_the_lightning_lora(hub_cache: Path):
    base, student = get_spec("qwen-image"), get_spec("qwen-image-lightning")
    assert (base.repo_id, student.repo_id, student.storage) == (
        "Qwen/Qwen-Image", "lightx2v/Qwen-Image-Lightning", "lora_file",
    )  # fmt: skip
    assert is_cached(base, hub_cache) and is_cached(student, hub_cache)
    snapshot = next((hub_cache / "models--lightx2v--Qwen-Image-Lightning" / "snapshots").iterdir())
    from safetensors import safe_open

    with safe_open(str(snapshot / student.filename), "pt") as file:
        keys = list(file.keys())
    assert all(k.startswith("diffusion_model.") for k in keys) and any(k.endswith(".lora_down.weight") for k in keys)

    pair = load_pair("qwen-image", "qwen-image-lightning", cache_dir=hub_cache, device="cpu")
    assert type(pair.pipeline).__name__ == "QwenImagePipeline" and pair.family.name == "qwenimage"
    assert type(pair.pipeline.text_encoder).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert pair.student_scheduler_config["shift_terminal"] == 0.02  # the base's config; the overrides apply
    scheduler = pair.make_scheduler("student")
    assert scheduler.config.base_shift == pytest.approx(math.log(3)) and scheduler.config.shift_terminal is None

    # the student is the base with the Lightning LoRA merged, exactly as diffusers' load_lora_weights applies it
    ours = sample(pair, PROMPT, Distilled(), [0], height=64, width=64, output_type="latent", progress=False)
    pipe = pair.to_diffusers("base")
    pipe.scheduler = scheduler
    pipe.load_lora_weights(str(snapshot / student.filename))
    try:
        theirs = _diffusers(pipe, 8, 1.0, seeds=[0], output_type="latent")
    finally:
        pipe.unload_lora_weights()
    torch.testing.assert_close(unpack(theirs, 8, 8), ours.images, rtol=1e-4, atol=1e-4)


def test_the_4_step_lightning_file_loads_with_its_schedule(hub_cache: Path):
    pair = load_pair("qwen-image", "qwen-image-lightning-4step", cache_dir=hub_cache, device="cpu")
    result = sample(pair, "a photo", "hybrid", seeds=[0], height=64, width=64, output_type="latent", progress=False)
    assert [s.model for s in result.schedule] == ["base", "distilled", "distilled", "distilled"]
    assert [s.timestep for s in result.schedule] == pytest.approx([1000, 900, 750, 500], abs=0.5)


def test_a_lightning_layout_lora_reads_as_its_modules(pair, tmp_path):
    lora = random_lora(pair.base_network, TARGETS, seed=5, ranks=(2,), alphas=(1.0,), size=0.3)
    read = read_lora(write_lightning_lora(lora, tmp_path / "lightning.safetensors"))
    assert read.network == "transformer" and set(read.modules) == set(TARGETS)
    assert {w.alpha for w in read.modules.values()} == {1.0}
    for name in TARGETS:
        torch.testing.assert_close(read.modules[name].up.float(), lora.modules[name].up.to(torch.bfloat16).float())


def test_a_qwenimage_lora_round_trips_and_loads_in_diffusers_alike(pair, tmp_path):
    lora = random_lora(pair.base_network, TARGETS, seed=3, ranks=(2, 4), size=0.3)
    path = write_lora(lora, tmp_path / "q.safetensors")
    read = read_lora(path)
    assert read.network == "transformer" and coverage(pair.student_network, read).complete

    plain = sample(pair, PROMPT, Distilled(), [0], output_type="latent", progress=False).images
    with apply_lora(pair.student_network, read, scale=0.7):
        ours = sample(pair, PROMPT, Distilled(), [0], output_type="latent", progress=False).images
    assert (ours - plain).abs().max() > 1e-3

    pipe = pair.to_diffusers("student")
    pipe.load_lora_weights(str(path), adapter_name="ours")
    pipe.set_adapters(["ours"], adapter_weights=[0.7])
    try:
        theirs = _diffusers(pipe, 4, 1.0, seeds=[0], output_type="latent")
    finally:
        pipe.unload_lora_weights()
    torch.testing.assert_close(unpack(theirs, 8, 8), ours, rtol=1e-4, atol=1e-4)


def test_slider_layers_on_qwenimage_are_its_joint_attention():
    network = tiny_qwenimage_pipeline(0).transformer
    assert target_modules(network, "self-attention")[:4] == [
        f"transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")
    ]
    assert target_modules(network, "cross-attention-kv") == [
        f"transformer_blocks.{i}.attn.{p}" for i in (0, 1) for p in ("add_k_proj", "add_v_proj")
    ]
