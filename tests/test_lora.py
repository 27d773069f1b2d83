"""LoRA files: reading every format, writing files diffusers loads, applying with scale and timestep window, and
refusing bad input with a clear reason.

The proofs: our apply equals the explicit merge W + s·(alpha/rank)·up·down; a file we write, loaded by diffusers'
own ``load_lora_weights``, gives the UNet outputs our apply gives; a pickle whose unpickling would run code never
runs it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conceptspace import testing
from conceptspace.lora import (
    LoRA,
    LoRAFormatError,
    LoRAMismatchError,
    LoRAWeights,
    apply_lora,
    coverage,
    merge_lora,
    read_lora,
    write_lora,
)
from conceptspace.models.lora_fit import family_unet, inspect_lora

torch.set_num_threads(1)

ATTN = "down_blocks.1.attentions.0.transformer_blocks.0"
TARGETS = (
    f"{ATTN}.attn1.to_q",
    f"{ATTN}.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_v",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.1.attentions.0.proj_in",
    "up_blocks.0.resnets.1.conv1",  # a 3x3 convolution
)


@pytest.fixture(scope="module")
def unet():
    """The tiny SDXL UNet (seed 0, as in ``tiny_sdxl_pipeline(0)``). Tests must leave it as they found it."""
    from conceptspace.testing import tiny_sdxl_unet

    return tiny_sdxl_unet(0)


def random_lora(unet, targets=TARGETS, *, seed=0, ranks=(4, 2), alphas=(1.0, 4.0, 2.0)) -> LoRA:
    """A LoRA with random factors (both nonzero, unlike a fresh one) for ``targets``; ranks and alphas vary."""
    return testing.random_lora(unet, targets, seed=seed, ranks=ranks, alphas=alphas, size=0.2)


def cli(*args: str) -> subprocess.CompletedProcess:
    """The command line in a fresh process, offline: how a user meets its errors."""
    return subprocess.run(
        [sys.executable, "-m", "conceptspace.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def explicit_merge(unet, *terms: tuple[LoRA, float]):
    """A copy of ``unet`` with W + s·(alpha/rank)·up·down added to each target weight, written out by hand."""
    assert not any(m._forward_hooks for m in unet.modules()), (
        "a deep copy would carry the applied LoRA's hooks"
    )
    merged = copy.deepcopy(unet)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for lora, scale in terms:
            for name, w in lora.modules.items():
                weight = modules[name].weight
                product = (w.up.flatten(1) @ w.down.flatten(1)).reshape(weight.shape)
                weight += scale * (w.alpha / w.down.shape[0]) * product
    return merged


def run(unet, t: float | torch.Tensor = 500.0, **kwargs) -> torch.Tensor:
    """One UNet call on fixed inputs (tiny SDXL conditioning)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return unet(
            torch.randn(2, 4, 8, 8, generator=g),
            t if isinstance(t, torch.Tensor) else torch.tensor(t),
            encoder_hidden_states=torch.randn(2, 5, 64, generator=g),
            added_cond_kwargs={
                "text_embeds": torch.randn(2, 32, generator=g),
                "time_ids": torch.randn(2, 6, generator=g),
            },
            **kwargs,
        ).sample


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    assert (a - b).abs().max().item() <= atol, (a - b).abs().max().item()


# ---- applying ---------------------------------------------------------------------------------------------------


def test_apply_equals_explicit_merge_and_merge_lora(unet):
    lora = random_lora(unet)
    base = run(unet)
    expected = run(explicit_merge(unet, (lora, 0.7)))
    with apply_lora(unet, lora, scale=0.7) as handle:
        out = run(unet)
        assert handle.coverage.complete and len(handle.coverage.matched) == len(TARGETS)
    assert (expected - base).abs().max() > 1e-2  # the LoRA does change the output
    assert_close(out, expected, 1e-5)
    merged = copy.deepcopy(unet)
    merge_lora(merged, lora, 0.7)
    assert_close(run(merged), expected, 1e-5)
    assert torch.equal(run(unet), base)


def test_negative_scale_and_scale_changed_after_applying(unet):
    lora = random_lora(unet, seed=1)
    # expectations first: a deep copy of a UNet with a LoRA applied would carry its hooks along
    minus, plus, base = (run(explicit_merge(unet, (lora, s))) for s in (-1.5, 2.0, 0.0))
    with apply_lora(unet, lora, scale=-1.5) as handle:
        assert_close(run(unet), minus, 1e-5)
        handle.scale = 2.0
        assert_close(run(unet), plus, 1e-5)
        handle.scale = 0.0
        assert torch.equal(run(unet), base)


def test_timestep_window_off_above_t_start_on_below(unet):
    lora = random_lora(unet, seed=2)
    merged = explicit_merge(unet, (lora, 1.0))
    base = {t: run(unet, t=t) for t in (800, 500)}
    on = {t: run(merged, t=t) for t in (700, 500, 250)}
    with apply_lora(unet, lora, scale=1.0, t_start=700) as handle:
        assert torch.equal(run(unet, t=800), base[800])  # t > t_start: off, bit-exactly the base
        assert_close(run(unet, t=700), on[700], 1e-5)  # t == t_start: on
        assert_close(run(unet, t=250), on[250], 1e-5)
        assert handle.timestep == 250.0  # read from the UNet call
        with pytest.raises(ValueError, match="one timestep per UNet call"):
            run(unet, t=torch.tensor([800.0, 500.0]))
    with apply_lora(unet, lora):  # without a window a batch may mix timesteps
        run(unet, t=torch.tensor([800.0, 500.0]))
    # a sampler may set the timestep itself instead
    with apply_lora(unet, lora, t_start=700, track_timestep=False) as handle:
        with pytest.raises(RuntimeError, match="set_timestep"):
            run(unet)
        with handle.at(torch.tensor([999, 999])):
            assert torch.equal(run(unet, t=500), base[500])
        handle.set_timestep(699)
        assert_close(run(unet, t=500), on[500], 1e-5)


def test_remove_restores_the_unet_bit_exactly(unet):
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    base = run(unet)
    first = apply_lora(unet, random_lora(unet, seed=3))
    second = apply_lora(unet, random_lora(unet, seed=4), t_start=900)
    assert not torch.equal(run(unet), base)
    first.remove()
    second.remove()
    second.remove()  # harmless twice
    assert torch.equal(run(unet), base)
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())
    assert not unet._forward_hooks and not unet._forward_pre_hooks
    assert all(not m._forward_hooks for m in unet.modules())


def test_two_loras_at_once_add(unet):
    a, b = random_lora(unet, seed=5), random_lora(unet, TARGETS[:3], seed=6)
    expected = run(explicit_merge(unet, (a, 0.8), (b, -1.2)))
    with apply_lora(unet, a, scale=0.8), apply_lora(unet, b, scale=-1.2):
        assert_close(run(unet), expected, 1e-5)


def test_a_base_lora_applies_to_a_student_and_to_the_testbed_unet():
    from diffusers import UNet2DConditionModel

    from conceptspace.models import REGISTRY
    from conceptspace.testing import tiny_sdxl_unet

    student = tiny_sdxl_unet(1, lcm=True)  # a student with LCM's extra guidance input
    lora = random_lora(student, seed=7)
    with apply_lora(student, lora, scale=1.3):
        out = run(student, timestep_cond=torch.ones(2, 32))
    assert_close(out, run(explicit_merge(student, (lora, 1.3)), timestep_cond=torch.ones(2, 32)), 1e-5)

    # the testbed's proj_in is a 1x1 Conv2d: a linear (2-D) LoRA for it is applied as a 1x1 convolution
    testbed = UNet2DConditionModel.from_pretrained(Path(REGISTRY["shapes"].local_dir) / "unet").eval()
    name = "down_blocks.2.attentions.0.proj_in"
    conv = dict(testbed.named_modules())[name]
    g = torch.Generator().manual_seed(8)
    linear = LoRA(
        {name: LoRAWeights(torch.randn(2, 64, generator=g), torch.randn(64, 2, generator=g), alpha=1.0)}
    )
    x = (torch.randn(1, 4, 32, 32, generator=g), torch.tensor(400), torch.randn(1, 3, 64, generator=g))
    with apply_lora(testbed, linear, scale=0.5), torch.no_grad():
        out = testbed(*x).sample
    merged = copy.deepcopy(testbed)
    with torch.no_grad():
        dict(merged.named_modules())[name].weight += (
            0.5 * 0.5 * (linear.modules[name].up @ linear.modules[name].down)[:, :, None, None]
        )
        expected = merged(*x).sample
    assert conv.kernel_size == (1, 1)
    assert_close(out, expected, 1e-5)


# ---- files ------------------------------------------------------------------------------------------------------


def test_kohya_to_diffusers_round_trip(unet, tmp_path):
    lora = random_lora(unet, seed=9)
    kohya = write_lora(lora, tmp_path / "slider.safetensors", format="kohya")
    from safetensors import safe_open

    with safe_open(str(kohya), "pt") as handle:
        keys = set(handle.keys())
    assert f"lora_unet_{ATTN.replace('.', '_')}_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0.alpha" in keys

    read = read_lora(kohya)
    assert read.format == "kohya" and not read.unresolved and set(read.modules) == set(TARGETS)
    # kohya files carry one alpha (the largest rank), each module's own folded into up: the same update
    assert read.alphas == dict.fromkeys(lora.ranks, float(max(lora.ranks.values())))
    assert len(set(lora.alphas.values()) - set(read.alphas.values())) > 0  # the test LoRA's alphas do differ
    diffusers_file = write_lora(read, tmp_path / "slider-diffusers.safetensors")
    again = read_lora(diffusers_file)
    assert again.format == "diffusers"
    for name, w in lora.modules.items():
        for other in (read.modules[name], again.modules[name]):
            assert torch.equal(other.down, w.down)
            torch.testing.assert_close(other.delta(), w.delta(), rtol=1e-6, atol=1e-7)
    back = read_lora(write_lora(again, tmp_path / "back.safetensors", format="kohya"))
    assert back.alphas == read.alphas and all(
        torch.equal(back.modules[k].up, read.modules[k].up) for k in TARGETS
    )


def test_a_file_we_write_loads_in_diffusers_with_the_same_outputs(unet, tmp_path):
    from conceptspace.testing import tiny_sdxl_pipeline

    lora = random_lora(unet, seed=10)  # mixed ranks and alphas, a 3x3 conv: diffusers needs the header config
    path = write_lora(lora, tmp_path / "ours.safetensors")
    pipe = tiny_sdxl_pipeline(0)
    pipe.load_lora_weights(str(path), adapter_name="ours")
    pipe.set_adapters(["ours"], adapter_weights=[0.6])
    with apply_lora(unet, read_lora(path), scale=0.6):
        ours = run(unet)
    assert_close(run(pipe.unet), ours, 1e-4)

    # kohya files load in diffusers alike: one alpha (the slider case), and mixed ranks and alphas, where
    # diffusers' converter would drop the attention layers' alphas were they not folded into up
    for seed, ranks, alphas in ((11, (4,), (1.0,)), (12, (4, 2), (1.0, 4.0, 2.0))):
        kohya = write_lora(
            random_lora(unet, seed=seed, ranks=ranks, alphas=alphas),
            tmp_path / f"kohya-{seed}.safetensors",
            format="kohya",
        )
        pipe = tiny_sdxl_pipeline(0)
        pipe.load_lora_weights(str(kohya), adapter_name="kohya")
        with apply_lora(unet, random_lora(unet, seed=seed, ranks=ranks, alphas=alphas)):
            ours = run(unet)
        assert_close(run(pipe.unet), ours, 1e-4)


def test_every_kohya_key_we_write_maps_to_a_weight_by_comfyuis_rule(unet, tmp_path):
    """ComfyUI (comfy/lora.py, model_lora_keys_unet) maps ``lora_unet_<diffusers weight path, dots as _>`` to that
    weight, and reads ``<name>.lora_up.weight``, ``<name>.lora_down.weight`` and ``<name>.alpha``: every key of a
    kohya file we write must be one of those, for a LoRA on every linear and conv layer of the UNet."""
    targets = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    weights = [k[: -len(".weight")] for k in unet.state_dict() if k.endswith(".weight")]
    comfy_map = {"lora_unet_" + k.replace(".", "_"): k for k in weights}
    assert len(comfy_map) == len(weights)  # no two weights collide once dots become underscores
    path = write_lora(
        testing.random_lora(unet, targets, size=0.01), tmp_path / "all.safetensors", format="kohya"
    )
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
    assert len(keys) == 3 * len(targets)
    mapped = set()
    for key in keys:
        name, _, part = key.partition(".")
        assert part in ("lora_up.weight", "lora_down.weight", "alpha"), key
        assert name in comfy_map, f"ComfyUI maps no weight to {key}"
        mapped.add(comfy_map[name])
    assert mapped == set(targets)


def test_sd_style_kohya_names_resolve_like_diffusers_does(unet, tmp_path):
    from safetensors.torch import save_file

    from conceptspace.testing import tiny_sdxl_pipeline

    # the original SD (LDM) names of four tiny-SDXL modules (layers_per_block=1), as kohya's SDXL trainer writes
    ldm = {
        "input_blocks_3_1_transformer_blocks_0_attn1_to_q": f"{ATTN}.attn1.to_q",
        "middle_block_1_transformer_blocks_0_attn2_to_v": "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
        "output_blocks_1_1_transformer_blocks_0_attn1_to_out_0": (
            "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0"
        ),
        "output_blocks_1_1_proj_out": "up_blocks.0.attentions.1.proj_out",
    }
    lora = random_lora(unet, tuple(ldm.values()), seed=12, ranks=(4,), alphas=(2.0,))
    tensors = {}
    for old, new in ldm.items():
        w = lora.modules[new]
        tensors |= {
            f"lora_unet_{old}.lora_down.weight": w.down,
            f"lora_unet_{old}.lora_up.weight": w.up,
            f"lora_unet_{old}.alpha": torch.tensor(w.alpha),
        }
    path = tmp_path / "sgm.safetensors"
    save_file(tensors, str(path))

    read = read_lora(path)
    assert sorted(read.unresolved) == sorted(f"lora_unet_{k}" for k in ldm)
    assert coverage(unet, read).targets == {f"lora_unet_{k}": v for k, v in ldm.items()}
    with pytest.raises(LoRAFormatError, match="pass unet="):
        write_lora(read, tmp_path / "x.safetensors")
    assert set(read_lora(write_lora(read, tmp_path / "x.safetensors", unet=unet)).modules) == set(
        ldm.values()
    )

    with apply_lora(unet, read, scale=0.9):
        ours = run(unet)
    assert_close(ours, run(explicit_merge(unet, (lora, 0.9))), 1e-5)
    pipe = tiny_sdxl_pipeline(0)  # diffusers' own SGM → diffusers block mapping, as an independent check
    pipe.load_lora_weights(str(path), adapter_name="sgm")
    pipe.set_adapters(["sgm"], adapter_weights=[0.9])
    assert_close(run(pipe.unet), ours, 1e-4)


def test_peft_adapter_folder_and_diffusers_save_lora_weights(unet, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = LoraConfig(
        r=4,
        lora_alpha=2,
        target_modules=["to_q", "to_v", "to_out.0"],
        alpha_pattern={"attn2.to_v": 8},
        init_lora_weights=False,  # random B, so the adapter changes the output
    )
    peft_unet = copy.deepcopy(unet)
    peft_unet.add_adapter(config)
    expected = run(peft_unet)
    state = get_peft_model_state_dict(peft_unet)
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in state)

    folder = tmp_path / "peft-adapter"
    config.save_pretrained(folder)
    save_file(
        {f"base_model.model.{k}": v for k, v in state.items()}, str(folder / "adapter_model.safetensors")
    )
    peft_lora = read_lora(folder)
    assert peft_lora.format == "peft" and len(peft_lora) == len(state) // 2

    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path / "diffusers-saved", unet_lora_layers=state, unet_lora_adapter_metadata=config.to_dict()
    )
    saved = read_lora(tmp_path / "diffusers-saved")
    assert saved.format == "diffusers"
    for lora in (peft_lora, saved):
        assert {w.alpha for n, w in lora.modules.items() if "attn2.to_v" in n} == {8.0}
        with apply_lora(unet, lora):
            assert_close(run(unet), expected, 1e-5)

    # the older diffusers spelling (unet.<module>.lora.down/up.weight; alpha = rank) reads to the same factors
    old = {
        f"unet.{k}".replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v
        for k, v in state.items()
    }
    save_file(old, str(tmp_path / "old.safetensors"))
    old_lora = read_lora(tmp_path / "old.safetensors")
    assert old_lora.format == "diffusers" and set(old_lora.alphas.values()) == {4.0}
    assert all(torch.equal(old_lora.modules[n].down, w.down) for n, w in saved.modules.items())


def test_a_peft_folder_we_write_loads_in_peft_with_the_same_outputs(unet, tmp_path):
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    lora = random_lora(unet, seed=12)  # mixed ranks and alphas: the config needs rank and alpha patterns
    folder = write_lora(lora, tmp_path / "adapter", format="peft", metadata={"base_model": "tiny-sdxl"})
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "tiny-sdxl"

    peft_unet = copy.deepcopy(unet)
    inject_adapter_in_model(LoraConfig(**{k: v for k, v in config.items() if k != "peft_type"}), peft_unet)
    state = {
        k.removeprefix("base_model.model."): v
        for k, v in load_file(folder / "adapter_model.safetensors").items()
    }
    result = set_peft_model_state_dict(peft_unet, state)
    assert not result.unexpected_keys
    with apply_lora(unet, lora):
        ours = run(unet)
    assert_close(run(peft_unet), ours, 1e-5)

    # diffusers loads the folder exactly through the model's own loader, the prefix named (rank and alpha
    # patterns come from the file's header); pipe.load_lora_weights expects unet.-prefixed keys: convert first
    from conceptspace.testing import tiny_sdxl_unet

    diffusers_unet = tiny_sdxl_unet(0)
    diffusers_unet.load_lora_adapter(
        str(folder), weight_name="adapter_model.safetensors", prefix="base_model.model", adapter_name="ours"
    )
    assert_close(run(diffusers_unet), ours, 1e-5)

    back = read_lora(folder)  # and our reader takes the folder back, factors and alphas unchanged
    assert back.format == "peft" and back.alphas == lora.alphas
    assert all(torch.equal(back.modules[n].up, w.up) for n, w in lora.modules.items())

    rewritten = write_lora(random_lora(unet, seed=13), folder, format="peft")  # replaces the folder whole
    assert not torch.equal(read_lora(rewritten).modules[TARGETS[0]].down, lora.modules[TARGETS[0]].down)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left
    with pytest.raises(ValueError, match="folder"):
        write_lora(lora, tmp_path / "adapter.safetensors", format="peft")


def test_pt_files_load_tensors_only(unet, tmp_path):
    lora = random_lora(unet, seed=13)
    kohya = read_lora(write_lora(lora, tmp_path / "k.safetensors", format="kohya"))
    state = {}
    for name, w in lora.modules.items():
        key = "lora_unet_" + name.replace(".", "_")
        state |= {f"{key}.lora_down.weight": w.down, f"{key}.lora_up.weight": w.up, f"{key}.alpha": w.alpha}
    torch.save(state, tmp_path / "slider.pt")  # as Concept Sliders and SliderSpace save theirs
    read = read_lora(tmp_path / "slider.pt")
    assert read.alphas == lora.alphas and all(
        torch.equal(read.modules[n].up, w.up) for n, w in lora.modules.items()
    )
    for name in lora.modules:  # the same update as the kohya file we write (which folds alphas into up)
        torch.testing.assert_close(
            read.modules[name].delta(), kohya.modules[name].delta(), rtol=1e-6, atol=1e-7
        )


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


@pytest.mark.parametrize("zipped", [True, False], ids=["torch.save", "legacy-pickle"])
def test_a_pt_whose_unpickling_would_run_code_never_runs_it(tmp_path, zipped):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "slider.pt"
    payload = {"lora_unet_conv_in.lora_down.weight": torch.zeros(1, 4, 3, 3), "x": _Payload(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(LoRAFormatError, match=r"weights_only=True.*run code.*refused") as refused:
        read_lora(path)
    assert "weights_only=False" not in str(refused.value)  # torch's advice would run the payload
    with pytest.raises(LoRAFormatError):
        inspect_lora(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.read_text() == "the payload ran"


# ---- bad input --------------------------------------------------------------------------------------------------


def test_truncated_files_are_refused(unet, tmp_path):
    path = write_lora(random_lora(unet), tmp_path / "cut.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LoRAFormatError, match="truncated or corrupt"):
        read_lora(path)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(LoRAFormatError, match="truncated or corrupt"):
        read_lora(tmp_path / "empty.safetensors")
    torch.save({"lora_unet_conv_in.alpha": torch.tensor(1.0)}, tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:100])
    with pytest.raises(LoRAFormatError, match="truncated or corrupt"):
        read_lora(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError):
        read_lora(tmp_path / "nothing.safetensors")


def test_non_lora_and_unsupported_files_are_refused(unet, tmp_path):
    from safetensors.torch import save_file

    weights = {k: v for k, v in unet.state_dict().items() if k.startswith("conv_in")}
    save_file(weights, str(tmp_path / "unet.safetensors"))
    with pytest.raises(LoRAFormatError, match=r"not a LoRA file.*conv_in"):
        read_lora(tmp_path / "unet.safetensors")
    te = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32)}
    save_file(te, str(tmp_path / "te.safetensors"))
    with pytest.raises(LoRAFormatError, match="only text-encoder"):
        read_lora(tmp_path / "te.safetensors")
    dora = {
        "lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4, 3, 3),
        "lora_unet_conv_in.lora_up.weight": torch.zeros(32, 2, 1, 1),
        "lora_unet_conv_in.dora_scale": torch.zeros(1, 32, 1, 1),
    }
    save_file(dora, str(tmp_path / "dora.safetensors"))
    with pytest.raises(LoRAFormatError, match="DoRA"):
        read_lora(tmp_path / "dora.safetensors")
    save_file(
        {"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4, 3, 3)}, str(tmp_path / "half.safetensors")
    )
    with pytest.raises(LoRAFormatError, match="no up weight"):
        read_lora(tmp_path / "half.safetensors")


@pytest.mark.parametrize(
    ("keys", "variant"),
    [
        ({"lora_unet_conv_in.hada_w1_a": (2, 4), "lora_unet_conv_in.hada_w1_b": (2, 4)}, "LyCORIS LoHa"),
        ({"lora_unet_conv_in.lokr_w1": (2, 2), "lora_unet_conv_in.lokr_w2": (16, 18)}, "LyCORIS LoKr"),
        ({"lora_unet_conv_in.weight": (32,), "lora_unet_conv_in.on_input": (1,)}, "LyCORIS IA3"),
        (
            {f"lora_unet_conv_in.{n}.weight": (2, 4) for n in ("a1", "a2", "b1", "b2")},
            "LyCORIS GLoRA",
        ),
        ({"lora_unet_conv_in.diff": (32, 4, 3, 3), "lora_unet_conv_in.diff_b": (32,)}, "LyCORIS full"),
        ({"lora_unet_conv_in.oft_blocks": (4, 8, 8)}, "OFT"),
    ],
)
def test_lycoris_and_other_variants_are_named(tmp_path, keys, variant):
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(tmp_path / "v.safetensors"))
    with pytest.raises(LoRAFormatError, match=f"is a {re.escape(variant)}"):
        read_lora(tmp_path / "v.safetensors")


@pytest.mark.parametrize(
    ("down", "up", "message"),
    [
        (torch.full((2, 4, 3, 3), float("nan")), torch.zeros(32, 2, 1, 1), "72 NaN/Inf values"),
        (torch.zeros(2, 4, 3, 3), torch.full((32, 2, 1, 1), float("inf")), "NaN/Inf values"),
        (torch.zeros(0, 4, 3, 3), torch.zeros(32, 0, 1, 1), "rank 0"),
    ],
)
def test_broken_factors_are_blamed_on_the_file(tmp_path, down, up, message):
    from safetensors.torch import save_file

    path = tmp_path / "broken.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": down, "lora_unet_conv_in.lora_up.weight": up}, str(path))
    with pytest.raises(LoRAFormatError, match=f"broken.safetensors.*conv_in.*{message}"):
        read_lora(path)
    transfer = ["transfer", "--lora", str(path), "--base", "tiny-sdxl", "--students", "tiny-dmd"]
    transfer += ["--prompt", "a red circle", "--out", str(tmp_path / "t"), "--device", "cpu", "--quiet"]
    for command in (["lora", "inspect", str(path)], transfer):
        done = cli(*command)
        assert done.returncode == 2 and done.stderr.startswith("error: "), (command, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "broken.safetensors" in done.stderr
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").rglob("*.png"))


def test_rank_mismatch_between_up_and_down_is_refused(tmp_path):
    from safetensors.torch import save_file

    key = f"lora_unet_{ATTN.replace('.', '_')}_attn1_to_q"
    bad = {f"{key}.lora_down.weight": torch.zeros(3, 64), f"{key}.lora_up.weight": torch.zeros(64, 4)}
    save_file(bad, str(tmp_path / "ranks.safetensors"))
    with pytest.raises(LoRAFormatError, match=r"down rank 3 .* up rank 4"):
        read_lora(tmp_path / "ranks.safetensors")


def sdxl_lora() -> LoRA:
    """A LoRA for the real SDXL UNet's shapes (built from its meta-device architecture), two namings mixed."""
    sdxl = family_unet("sdxl")
    names = [f"down_blocks.{b}.attentions.0.transformer_blocks.0.attn1.to_q" for b in (1, 2)]
    lora = random_lora(sdxl, names, seed=14)
    # input_blocks.8.1 is SDXL's down_blocks.2.attentions.1 in the original SD naming
    sd_name = "lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_k"
    lora.modules[sd_name] = LoRAWeights(torch.zeros(2, 2048), torch.zeros(1280, 2), alpha=1.0)
    return lora


def test_a_lora_for_another_architecture_is_refused_with_the_reason(tmp_path):
    path = write_lora(sdxl_lora(), tmp_path / "sdxl.safetensors", format="kohya")
    testbed = family_unet("testbed")
    report = coverage(testbed, read_lora(path))
    assert not report.matched and len(report.missing) == 2 and len(report.mismatched) == 1
    assert "(1280, 1280)" in str(report) and "(64, 64)" in str(report)  # down_blocks.2 (block 1: none here)
    with pytest.raises(LoRAMismatchError, match=r"does not fit this UNet at all.*inspect_lora"):
        apply_lora(testbed, path)
    info = inspect_lora(path)
    assert info["fits"]["sdxl"]["fits"] and not info["fits"]["testbed"]["fits"]
    assert {"sdxl", "dmd2", "lightning", "turbo", "lcm"} <= set(info["fits_models"])
    assert "shapes" not in info["fits_models"] and info["unresolved"] == 1


def test_allow_partial_applies_the_part_that_fits_and_reports_coverage(unet):
    lora = random_lora(unet, seed=15)
    foreign = sdxl_lora().modules  # two modules the tiny UNet lacks, one it has with other shapes
    foreign[f"{ATTN}.attn1.to_k"] = foreign.pop(f"{ATTN}.attn1.to_q")
    mixed = LoRA({**lora.modules, **foreign}, source="mixed.safetensors")
    with pytest.raises(
        LoRAMismatchError, match=r"mixed\.safetensors.*6 of 9 modules fit.*allow_partial=True"
    ):
        apply_lora(unet, mixed)
    with apply_lora(unet, mixed, scale=0.5, allow_partial=True) as handle:
        out = run(unet)
    report = handle.coverage
    assert set(report.matched) == set(TARGETS) and not report.complete
    assert len(report.missing) == 2 and len(report.mismatched) == 1
    assert "6 of 9 modules fit" in str(report) and "missing" in str(report)
    assert_close(out, run(explicit_merge(unet, (lora, 0.5))), 1e-5)


# ---- metadata and atomic writes ---------------------------------------------------------------------------------


def test_metadata_round_trips_in_the_safetensors_header(unet, tmp_path):
    from safetensors import safe_open

    lora = random_lora(unet, seed=16, ranks=(4,), alphas=(1.0,))
    recipe = {"target": "person", "positive": "old person", "eta": 4.0, "layers": "attn1"}
    for fmt in ("diffusers", "kohya"):
        path = write_lora(
            lora,
            tmp_path / f"{fmt}.safetensors",
            format=fmt,
            metadata={"base_model": "tiny-sdxl", "recipe": recipe},
        )
        read = read_lora(path)
        assert read.metadata["base_model"] == "tiny-sdxl" and read.metadata["recipe"] == recipe
        # kohya files hold alpha = rank, the LoRA's own alpha 1 folded into up (see write_lora)
        assert read.metadata["rank"] == 4 and read.metadata["alpha"] == (1.0 if fmt == "diffusers" else 4.0)
        assert read.metadata["target_modules"] == sorted(TARGETS)
        with safe_open(str(path), "pt") as handle:
            header = handle.metadata()
        assert json.loads(header["conceptspace_lora"])["recipe"] == recipe
        if fmt == "kohya":
            assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "4.0"
        else:
            assert json.loads(header["lora_adapter_metadata"])["unet.lora_alpha"] == 1.0
        # metadata read back is kept when the LoRA is written again
        assert read_lora(write_lora(read, tmp_path / f"again-{fmt}.safetensors")).metadata["recipe"] == recipe
    with pytest.raises(ValueError, match="JSON"):
        write_lora(lora, tmp_path / "bad.safetensors", metadata={"recipe": object()})
    assert not (tmp_path / "bad.safetensors").exists()


def test_a_failed_write_leaves_nothing_half_written(unet, tmp_path, monkeypatch):
    import safetensors.torch

    lora = random_lora(unet)
    path = write_lora(lora, tmp_path / "keep.safetensors")
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        write_lora(random_lora(unet, seed=17), path)
    with pytest.raises(OSError, match="disk full"):
        write_lora(lora, tmp_path / "new.safetensors", format="kohya")
    with pytest.raises(OSError, match="disk full"):
        write_lora(lora, tmp_path / "new-adapter", format="peft")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.safetensors"]


def test_inspect_lora(unet, tmp_path):
    path = write_lora(
        random_lora(unet, seed=18),
        tmp_path / "tiny.safetensors",
        format="kohya",
        metadata={"base_model": "tiny-sdxl"},
    )
    info = inspect_lora(path)
    assert info["format"] == "kohya" and info["modules"] == len(TARGETS)
    # one alpha in a kohya file we write: the largest rank (each module's own alpha is folded into its up)
    assert info["ranks"] == [2, 4] and info["alphas"] == [4.0] and info["conv_modules"] == 1
    assert info["metadata"]["base_model"] == "tiny-sdxl"
    assert info["fits"]["tiny-sdxl"] == {
        "models": ["tiny-sdxl", "tiny-dmd", "tiny-lcm"],
        "fits": True,
        "matched": 6,
        "missing": 0,
        "mismatched": 0,
    }
    assert not info["fits"]["sdxl"]["fits"] and not info["fits"]["sd21"]["fits"]
    json.dumps(info)  # JSON-ready


# ------------------------------------------------------------------------------------------------------ the CLI
def test_cli_inspect_and_convert(unet, tmp_path):
    from typer.testing import CliRunner

    from conceptspace.cli import app

    runner = CliRunner()
    kohya = write_lora(random_lora(unet), tmp_path / "slider.safetensors", format="kohya")
    shown = runner.invoke(app, ["lora", "inspect", str(kohya)])
    assert shown.exit_code == 0, shown.output
    assert "kohya format" in shown.output and "tiny-sdxl  fits" in shown.output
    assert "sdxl       does not fit (0 matched, 0 missing, 6 mis-shaped)" in shown.output
    as_json = json.loads(runner.invoke(app, ["lora", "inspect", str(kohya), "--json"]).output)
    assert as_json["format"] == "kohya" and "tiny-sdxl" in as_json["fits_models"]

    out = tmp_path / "slider-diffusers.safetensors"
    converted = runner.invoke(
        app, ["lora", "convert", str(kohya), str(out), "--to", "diffusers", "--base-model", "tiny-sdxl"]
    )
    assert converted.exit_code == 0, converted.output
    back = read_lora(out)
    assert back.format == "diffusers" and back.metadata.get("base_model") == "tiny-sdxl"
    original = read_lora(kohya, unet=unet)
    for name, weights in original.modules.items():
        assert torch.equal(back.modules[name].up, weights.up) and torch.equal(
            back.modules[name].down, weights.down
        )

    folder = tmp_path / "slider-peft"
    assert runner.invoke(app, ["lora", "convert", str(out), str(folder), "--to", "peft"]).exit_code == 0
    assert read_lora(folder).format == "peft" and (folder / "adapter_config.json").is_file()
    refused = runner.invoke(
        app, ["lora", "convert", str(out), str(tmp_path / "x.safetensors"), "--to", "peft"]
    )
    assert refused.exit_code == 2 and "folder" in refused.output


def test_convert_keeps_the_umask_mode_and_refuses_to_overwrite_a_folder(unet, tmp_path):
    source = write_lora(random_lora(unet), tmp_path / "in.safetensors")
    old = os.umask(0o022)
    try:
        out = write_lora(read_lora(source), tmp_path / "out.safetensors", format="kohya")
        assert out.stat().st_mode & 0o777 == 0o644  # what open() makes, not mkstemp's 0600
        os.chmod(source, 0o644)
        write_lora(read_lora(source), source, format="kohya")  # in place: the mode is not narrowed
        assert source.stat().st_mode & 0o777 == 0o644
        folder = write_lora(read_lora(source), tmp_path / "peft", format="peft")
        assert folder.stat().st_mode & 0o777 == 0o755
        assert (folder / "adapter_config.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        private = write_lora(read_lora(source), tmp_path / "private.safetensors")
        assert private.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    (tmp_path / "taken.safetensors").mkdir()
    done = cli("lora", "convert", str(source), str(tmp_path / "taken.safetensors"), "--to", "kohya")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "is a folder; a file is to be written there" in done.stderr
    assert (tmp_path / "taken.safetensors").is_dir() and not any((tmp_path / "taken.safetensors").iterdir())


def test_cli_refuses_bad_files_in_one_line(tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    done = cli("lora", "convert", str(bogus), str(tmp_path / "o.safetensors"), "--to", "kohya")
    assert (
        done.returncode == 2
        and done.stderr.startswith("error: ")
        and len(done.stderr.strip().splitlines()) == 1
    )
    assert not (tmp_path / "o.safetensors").exists()


def test_trainable_factors_follow_their_updates_in_a_low_precision_model():
    """Factors in training (slider training) are cast on every call: after an optimiser step changes them in place,
    the next forward pass uses the new values, also when the model runs in another dtype than the factors."""
    net = torch.nn.Sequential(torch.nn.Linear(8, 8)).to(torch.bfloat16).requires_grad_(False)
    down = torch.nn.Parameter(torch.randn(2, 8))
    up = torch.nn.Parameter(torch.randn(8, 2))
    handle = apply_lora(net, LoRA({"0": LoRAWeights(down=down, up=up, alpha=2.0)}), track_timestep=False)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    net(x).float().sum().backward()
    assert up.grad is not None and up.grad.abs().sum() > 0 and down.grad is not None
    with torch.no_grad():  # what an optimiser step does: change the factors in place
        up.zero_()
    handle.scale = 1.0
    assert torch.equal(net(x), net[0].forward(x))  # zero up factors: the layer's own output
    handle.remove()
