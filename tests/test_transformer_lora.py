"""LoRAs on flow-matching transformers (SD3, FLUX.1): the formats found in the wild read, applied with scale and
timestep window, written back, and loaded by diffusers' ``load_lora_weights`` with the same outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conceptspace.lora import LoRAWeights, apply_lora, coverage, read_lora, write_lora
from conceptspace.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline
from conceptspace.testing import random_lora

SD3_TARGETS = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.0.attn.add_k_proj",
]
FLUX_TARGETS = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.add_q_proj",
    "transformer_blocks.0.ff.net.2",
    "single_transformer_blocks.0.attn.to_k",
    "single_transformer_blocks.0.proj_out",
]


def _inputs(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if family == "sd3":
        return {
            "hidden_states": torch.randn(2, 4, 16, 16, generator=g),
            "timestep": torch.tensor([500.0, 500.0]),
            "encoder_hidden_states": torch.randn(2, 7, 64, generator=g),
            "pooled_projections": torch.randn(2, 64, generator=g),
        }
    return {
        "hidden_states": torch.randn(2, 64, 16, generator=g),
        "timestep": torch.tensor([0.5, 0.5]),
        "guidance": torch.tensor([3.5, 3.5]),
        "encoder_hidden_states": torch.randn(2, 7, 64, generator=g),
        "pooled_projections": torch.randn(2, 32, generator=g),
        "txt_ids": torch.zeros(7, 3),
        "img_ids": torch.zeros(64, 3),
    }


def _run(network, family: str, **changes) -> torch.Tensor:
    with torch.no_grad():
        return network(**{**_inputs(family), **changes}, return_dict=False)[0]


def _pipeline(family: str):
    return tiny_sd3_pipeline(0) if family == "sd3" else tiny_flux_pipeline(0)


@pytest.mark.parametrize(("family", "targets"), [("sd3", SD3_TARGETS), ("flux", FLUX_TARGETS)])
def test_diffusers_transformer_lora_round_trips_and_loads_in_diffusers_alike(tmp_path, family, targets):
    ours = _pipeline(family).transformer
    lora = random_lora(ours, targets, seed=3, ranks=(2, 4), alphas=(1.0, 8.0), size=0.3)
    assert lora.network == "transformer" and coverage(ours, lora).complete
    path = write_lora(lora, tmp_path / "t.safetensors")
    read = read_lora(path)
    assert read.network == "transformer" and set(read.modules) == set(targets)
    assert all(key.startswith("transformer.") for key in _keys(path))
    for name, weights in lora.modules.items():
        torch.testing.assert_close(read.modules[name].delta(), weights.delta(), rtol=1e-6, atol=1e-7)

    base = _run(ours, family)
    with apply_lora(ours, read, scale=0.7):
        applied = _run(ours, family)
    assert (applied - base).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(_run(ours, family), base, rtol=0, atol=0)  # and is gone after

    pipe = _pipeline(family)
    pipe.load_lora_weights(str(path), adapter_name="ours")
    pipe.set_adapters(["ours"], adapter_weights=[0.7])
    torch.testing.assert_close(_run(pipe.transformer, family), applied, rtol=1e-4, atol=1e-4)


def _keys(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


def _fused_kohya_file(tmp_path, parts: dict[str, list[LoRAWeights]], alpha: float):
    """A kohya FLUX file in Black Forest Labs' names: for each fused name, the parts' up factors stacked over one
    shared down factor."""
    tensors = {}
    for name, weights in parts.items():
        tensors[f"lora_unet_{name}.lora_down.weight"] = weights[0].down.contiguous()
        tensors[f"lora_unet_{name}.lora_up.weight"] = torch.cat([w.up for w in weights]).contiguous()
        tensors[f"lora_unet_{name}.alpha"] = torch.tensor(alpha)
    path = tmp_path / "kohya-flux.safetensors"
    save_file(tensors, str(path))
    return path


def test_kohya_flux_lora_in_bfl_names_splits_fused_projections_exactly(tmp_path):
    pipe = tiny_flux_pipeline(0)
    network = pipe.transformer
    g = torch.Generator().manual_seed(7)
    modules = dict(network.named_modules())

    def shared(paths, rank=4):
        down = torch.randn(rank, modules[paths[0]].in_features, generator=g) * 0.3
        return [
            LoRAWeights(
                down=down, up=torch.randn(modules[p].out_features, rank, generator=g) * 0.3, alpha=2.0
            )
            for p in paths
        ]

    qkv = [
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_k",
        "transformer_blocks.0.attn.to_v",
    ]
    txt = [f"transformer_blocks.0.attn.add_{x}_proj" for x in "qkv"]
    single = [f"single_transformer_blocks.0.attn.to_{x}" for x in "qkv"] + [
        "single_transformer_blocks.0.proj_mlp"
    ]
    parts = {
        "double_blocks_0_img_attn_qkv": shared(qkv),
        "double_blocks_0_txt_attn_qkv": shared(txt),
        "double_blocks_0_img_attn_proj": shared(["transformer_blocks.0.attn.to_out.0"]),
        "single_blocks_0_linear1": shared(single),
    }
    path = _fused_kohya_file(tmp_path, parts, alpha=2.0)
    lora = read_lora(path, unet=network)
    expected = dict(zip(qkv + txt + ["transformer_blocks.0.attn.to_out.0"] + single,
                        [w for ws in parts.values() for w in ws], strict=True))  # fmt: skip
    assert set(lora.modules) == set(expected) and not lora.unresolved
    for name, weights in expected.items():
        torch.testing.assert_close(lora.modules[name].delta(), weights.delta(), rtol=0, atol=1e-6)

    # diffusers' own kohya-FLUX converter hard-codes FLUX.1's widths for single blocks (3072/12288), so the
    # comparison with diffusers runs on the double blocks
    double = {k: v for k, v in parts.items() if k.startswith("double")}
    double_path = _fused_kohya_file(tmp_path, double, alpha=2.0)
    with apply_lora(network, read_lora(double_path, unet=network)):
        applied = _run(network, "flux")
    reference = tiny_flux_pipeline(0)
    reference.load_lora_weights(str(double_path), adapter_name="kohya")
    torch.testing.assert_close(_run(reference.transformer, "flux"), applied, rtol=1e-4, atol=1e-4)

    # a transformer LoRA is written back as a diffusers file (kohya names UNet modules)
    with pytest.raises(ValueError, match="format='diffusers'"):
        write_lora(lora, tmp_path / "back.safetensors", format="kohya")
    back = read_lora(write_lora(lora, tmp_path / "back.safetensors"))
    assert back.network == "transformer" and set(back.modules) == set(expected)


def test_timestep_window_reads_fluxs_scaled_timestep():
    network = tiny_flux_pipeline(0).transformer
    lora = random_lora(network, FLUX_TARGETS, seed=1, size=0.3)
    with apply_lora(network, lora, t_start=800):  # off while t > 800: FLUX gets t / 1000
        early = _run(network, "flux", timestep=torch.tensor([1.0, 1.0]))  # t = 1000
        late = _run(network, "flux", timestep=torch.tensor([0.5, 0.5]))  # t = 500
    torch.testing.assert_close(
        early, _run(network, "flux", timestep=torch.tensor([1.0, 1.0])), rtol=0, atol=0
    )
    assert (late - _run(network, "flux", timestep=torch.tensor([0.5, 0.5]))).abs().max() > 1e-3


def test_a_concept_slider_trains_on_a_transformer_and_fits_its_student(tmp_path):
    import dataclasses

    from conceptspace.models import load_pair
    from conceptspace.sliders import load_recipe, target_modules, train_slider

    pair = load_pair("tiny-flux", "tiny-schnell", device="cpu")
    image_stream = target_modules(pair.base_network, "self-attention")
    text_stream = target_modules(pair.base_network, "cross-attention-kv")
    assert image_stream and all(".attn.to_" in name for name in image_stream)
    assert text_stream == ["transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.attn.add_v_proj"]

    recipe = dataclasses.replace(
        load_recipe("sliders/testbed-size.yaml"), steps=4, resolution=64, sampling_steps=6, batch_size=2
    )
    losses = []
    path = train_slider(pair, recipe, tmp_path / "slider.safetensors", losses=losses, progress=False)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    slider = read_lora(path)
    assert slider.network == "transformer" and set(slider.modules) == set(image_stream)
    assert coverage(pair.student_network, slider).complete  # the base's slider fits the distilled transformer

    pipe = tiny_flux_pipeline(0)
    pipe.load_lora_weights(str(path), adapter_name="slider")
    with apply_lora(pair.base_network, slider):
        ours = _run(pair.base_network, "flux")
    torch.testing.assert_close(_run(pipe.transformer, "flux"), ours, rtol=1e-4, atol=1e-4)


def test_sliderspace_runs_on_a_flow_pair(tmp_path):
    from conceptspace.directions import discover, measure_activation, train_direction_sliders
    from conceptspace.models import load_pair

    pair = load_pair("tiny-sd3", "tiny-sd3-turbo", device="cpu")
    space = discover(
        pair, "a red circle", tmp_path, n=12, n_directions=2, embedder="pixels:32", progress=False
    )
    assert space.components_.shape[0] == 2
    (written,) = train_direction_sliders(
        tmp_path, pair=pair, directions=[0], steps=3, measure_seeds=2, progress=False
    )
    assert read_lora(written).network == "transformer"
    rows = measure_activation(
        tmp_path, pair=pair, regimes=["base", "distilled", "hybrid"], n=6, progress=False
    )
    shares = [r for r in rows if r["metric"] == "variance_share_top_2"]
    assert {r["regime"] for r in shares} >= {"distilled", "hybrid"}
    assert all(r["value"] > 0 and r["ci_low"] <= r["value"] <= r["ci_high"] for r in shares)


def test_cli_transfer_across_a_flux_pair(tmp_path):
    import json

    from typer.testing import CliRunner

    from conceptspace.cli import app
    from conceptspace.models import load_pair

    pair = load_pair("tiny-flux", "tiny-schnell", device="cpu")
    path = write_lora(random_lora(pair.base_network, FLUX_TARGETS, seed=2, size=0.5), tmp_path / "f.safetensors")
    args = ["transfer", "--lora", str(path), "--base", "tiny-flux", "--students", "tiny-schnell"]
    args += [
        "--prompt",
        "a red circle",
        "--scales",
        "-1,0,1",
        "--seeds",
        "0-3",
        "--out",
        str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "transfer ratio tiny-schnell / tiny-flux at +1" in result.output
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())
    moved = [r for r in rows if r.get("model") == "tiny-schnell" and r.get("scale") == 1.0 and r["value"] > 0]
    assert moved, "the base's LoRA changes the student's images"


@pytest.mark.parametrize(("base", "student"), [("tiny-pixart", "tiny-pixart-lcm"), ("tiny-zimage", "tiny-zimage-turbo")])
def test_a_concept_slider_trains_on_a_dit_and_fits_its_student(tmp_path, base, student):
    # PixArt (attn1/attn2 blocks) and Z-Image (single-stream attention): the slider layers each structure names
    import dataclasses

    from conceptspace.models import load_pair
    from conceptspace.sliders import load_recipe, target_modules, train_slider

    pair = load_pair(base, student, device="cpu")
    recipe = dataclasses.replace(
        load_recipe("sliders/testbed-size.yaml"), steps=3, resolution=64, sampling_steps=4, batch_size=2
    )
    losses = []
    path = train_slider(pair, recipe, tmp_path / "slider.safetensors", losses=losses, progress=False)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    slider = read_lora(path)
    assert set(slider.modules) == set(target_modules(pair.base_network, recipe.layers))
    assert coverage(pair.student_network, slider).complete


def test_a_callers_timestep_mapping_replaces_the_registered_one():
    """The caller's mapping decides the window: FLUX's t = 1.0 read as it is (1 ≤ 800) turns the LoRA on; the
    registered mapping reads it as 1000 > 800 and keeps the LoRA off."""
    network = tiny_flux_pipeline(0).transformer
    lora = random_lora(network, FLUX_TARGETS, seed=1, size=0.3)
    plain = _run(network, "flux", timestep=torch.tensor([1.0, 1.0]))
    with apply_lora(network, lora, t_start=800, timestep_to_scheduler=lambda t: t):
        unscaled = _run(network, "flux", timestep=torch.tensor([1.0, 1.0]))
    with apply_lora(network, lora, t_start=800):
        registered = _run(network, "flux", timestep=torch.tensor([1.0, 1.0]))
    assert (unscaled - plain).abs().max() > 1e-3  # on: 1.0 ≤ 800 as the caller maps it
    torch.testing.assert_close(registered, plain, rtol=0, atol=0)  # off: 1000 > 800
