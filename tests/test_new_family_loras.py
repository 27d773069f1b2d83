"""Control transfer on the newer flow families (FLUX.2 [klein], HiDream-I1, Krea 2, SANA-Sprint), on their tiny pairs:
the slider layers each transformer's structure names, a base's LoRA that changes the base and loads unchanged into
the distilled student, scale 0 as the identity, and timestep windows that switch the LoRA at the scheduler's
timesteps whatever form of the timestep each network is called with (FLUX.2's and Krea 2's t / 1000, HiDream's
``timesteps`` keyword, SANA's σ on the teacher and on SANA-Sprint)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conceptspace import Base, Distilled, load_pair, sample
from conceptspace.lora import apply_lora, coverage, read_lora, write_lora
from conceptspace.models.families import FAMILIES
from conceptspace.sliders import load_recipe, target_modules, train_slider
from conceptspace.testing import random_lora

PROMPT = "a red circle"
PAIRS = {
    "flux2": ("tiny-flux2-klein", "tiny-flux2-klein-distilled"),
    "hidream": ("tiny-hidream", "tiny-hidream-fast"),
    "krea2": ("tiny-krea2", "tiny-krea2-turbo"),
    "sana": ("tiny-sana", "tiny-sana-sprint"),
}
# the first block's slider layers on each tiny transformer: self-attention, cross-attention keys and values, and
# what ``all`` adds besides attention projections (feed-forwards)
FLUX2_SINGLE = ["single_transformer_blocks.0.attn.to_qkv_mlp_proj", "single_transformer_blocks.0.attn.to_out"]
LAYERS = {
    "flux2": (
        [f"transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")] + FLUX2_SINGLE,
        ["transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.attn.add_v_proj"],
        [f"transformer_blocks.0.{f}.{p}" for f in ("ff", "ff_context") for p in ("linear_in", "linear_out")],
    ),
    "hidream": (
        [
            f"{s}_stream_blocks.0.block.attn1.{p}"
            for s in ("double", "single")
            for p in ("to_q", "to_k", "to_v", "to_out")
        ],
        ["double_stream_blocks.0.block.attn1.to_k_t", "double_stream_blocks.0.block.attn1.to_v_t"],
        [
            "double_stream_blocks.0.block.ff_t.w1",
            "double_stream_blocks.0.block.ff_i.shared_experts.w2",
            "double_stream_blocks.0.block.ff_i.experts.1.w3",
            "single_stream_blocks.0.block.ff_i.experts.0.w1",
        ],
    ),
    "krea2": (
        [f"transformer_blocks.{b}.attn.{p}" for b in (0, 1) for p in ("to_q", "to_k", "to_v", "to_out.0")],
        [f"transformer_blocks.{b}.attn.{p}" for b in (0, 1) for p in ("to_k", "to_v")],
        [f"transformer_blocks.0.{p}" for p in ("attn.to_gate", "ff.gate", "ff.up", "ff.down")],
    ),
    "sana": (
        [f"transformer_blocks.0.attn1.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")],
        ["transformer_blocks.0.attn2.to_k", "transformer_blocks.0.attn2.to_v"],
        [],  # SANA's feed-forward is convolutional (GLUMBConv): the PixArt-style blocks' attentions only
    ),
}


@pytest.fixture(scope="module", params=list(PAIRS))
def pair(request):
    return load_pair(*PAIRS[request.param], device="cpu")


def _regime(pair, role: str):
    # one network pass per step (no CFG), so that every network call is one scheduler step
    if role == "base":
        return Base(steps=4, guidance_scale=pair.family.single_pass_scale)
    return Distilled()


def _network(pair, role: str):
    return pair.base_network if role == "base" else pair.student_network


def _latents(pair, role: str, callback=None) -> torch.Tensor:
    return sample(
        pair, PROMPT, _regime(pair, role), [0], output_type="latent", progress=False, callback=callback
    ).images


@pytest.mark.parametrize("family", list(PAIRS))
def test_slider_layers_are_each_transformers_attention_and_feed_forward(family):
    network = FAMILIES[family].random_network(0)
    self_attention, cross_kv, feed_forward = LAYERS[family]
    assert target_modules(network, "self-attention") == self_attention
    assert target_modules(network, "cross-attention-kv") == cross_kv
    everything = target_modules(network, "all")
    assert set(self_attention) | set(cross_kv) | set(feed_forward) <= set(everything)
    assert set(target_modules(network, "cross-attention")) <= set(everything)
    if family == "krea2":  # single-stream: the text-fusion blocks are not the image's attention
        assert not any(name.startswith("text_fusion.") for name in everything)


def test_a_base_lora_changes_the_base_and_loads_unchanged_into_the_student(pair, tmp_path):
    targets = target_modules(pair.base_network, "all")
    lora = random_lora(pair.base_network, targets, seed=3, ranks=(2, 4), size=0.3)
    read = read_lora(write_lora(lora, tmp_path / "lora.safetensors"))
    assert read.network == "transformer" and set(read.modules) == set(targets)
    report = coverage(pair.student_network, read)
    assert report.complete and set(report.matched) == set(targets)  # the same keys load on the student

    for role in ("base", "student"):
        network = _network(pair, role)
        plain = _latents(pair, role)
        with apply_lora(network, read, scale=1.0):
            on = _latents(pair, role)
        with apply_lora(network, read, scale=0.0):
            zero = _latents(pair, role)
        after = _latents(pair, role)
        assert torch.isfinite(on).all()
        assert (on - plain).abs().max() > 1e-3, f"the LoRA does not change the {role}'s output"
        torch.testing.assert_close(zero, plain, rtol=0, atol=0)  # scale 0: exactly the network
        torch.testing.assert_close(after, plain, rtol=0, atol=0)  # removed: exactly the network again


@pytest.mark.parametrize("role", ["base", "student"])
def test_a_timestep_window_switches_the_lora_at_the_steps_it_names(pair, role):
    network = _network(pair, role)
    lora = random_lora(network, target_modules(pair.base_network, "self-attention"), seed=1, size=0.3)
    plain = []
    _latents(pair, role, callback=plain.append)
    timesteps = [float(step.timestep) for step in plain]  # the scheduler's, rounded
    assert len(timesteps) >= 2 and timesteps == sorted(timesteps, reverse=True)
    first_on = len(timesteps) // 2
    t_start = (timesteps[first_on - 1] + timesteps[first_on]) / 2  # off above it, on from step first_on

    windowed, seen = [], []
    with apply_lora(network, lora, t_start=t_start) as handle:
        # after each network call: the scheduler timestep the window read, and whether the LoRA was on
        hook = network.register_forward_hook(lambda *_: seen.append((handle.timestep, handle.active)))
        try:
            _latents(pair, role, callback=windowed.append)
        finally:
            hook.remove()

    assert len(seen) == len(timesteps)  # one call per step
    torch.testing.assert_close(torch.tensor([t for t, _ in seen]), torch.tensor(timesteps), rtol=0, atol=0.51)
    assert [on for _, on in seen] == [i >= first_on for i in range(len(timesteps))]
    for before, after in zip(plain[:first_on], windowed[:first_on], strict=True):
        torch.testing.assert_close(after.x0, before.x0, rtol=0, atol=0)  # off: the plain network's steps
    assert (windowed[first_on].x0 - plain[first_on].x0).abs().max() > 1e-4  # on from the step it names


def test_a_slider_trains_on_the_base_and_fits_the_student(pair, tmp_path):
    recipe = dataclasses.replace(
        load_recipe("sliders/testbed-size.yaml"), steps=2, resolution=64, sampling_steps=4, batch_size=1
    )
    losses = []
    path = train_slider(pair, recipe, tmp_path / "slider.safetensors", losses=losses, progress=False)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    slider = read_lora(path)
    assert set(slider.modules) == set(target_modules(pair.base_network, recipe.layers))
    assert coverage(pair.student_network, slider).complete
