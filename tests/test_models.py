"""Model registry and pair loading, through the real hub ids from an offline cache of tiny random weights."""

from __future__ import annotations

import builtins
import copy
import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import conceptspace
from conceptspace import models, testing
from conceptspace.models import (
    REGISTRY,
    IncompatibleModelsError,
    ModelNotFoundError,
    ModelPair,
    ModelSpec,
    family_of,
    get_spec,
    is_cached,
    load_network_state_dict,
    load_pair,
    read_state_dict,
    register,
    with_overrides,
    with_student,
)

SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"

# What the real repos hold, written out independently of conceptspace.testing: (repo, the student UNet's weights
# file in it, scheduler class, scheduler settings, the student's timesteps after the hybrid's base step at 999).
STUDENTS = {
    "dmd2": (
        "tianweiy/DMD2",
        "dmd2_sdxl_4step_unet_fp16.bin",
        "LCMScheduler",
        {"original_inference_steps": 4},
        [749, 499, 249],
    ),
    "lightning": (
        "ByteDance/SDXL-Lightning",
        "sdxl_lightning_4step_unet.safetensors",
        "EulerDiscreteScheduler",
        {"timestep_spacing": "trailing"},
        [749, 499, 249],
    ),
    "turbo": (
        "stabilityai/sdxl-turbo",
        "unet/diffusion_pytorch_model.safetensors",
        "EulerAncestralDiscreteScheduler",
        {"timestep_spacing": "trailing"},
        [749, 499, 249],
    ),
    "lcm": (
        "latent-consistency/lcm-sdxl",
        "diffusion_pytorch_model.safetensors",
        "LCMScheduler",
        {},
        [759, 499, 259],  # LCMScheduler's own 4-step schedule
    ),
    "sd-turbo": (
        "stabilityai/sd-turbo",
        "unet/diffusion_pytorch_model.safetensors",
        "EulerAncestralDiscreteScheduler",
        {"timestep_spacing": "trailing"},
        [749, 499, 249],
    ),
}
# Students shipped as a LoRA on the base: (repo, file, scheduler class, scheduler settings)
LORA_STUDENTS = {
    "lcm-lora": ("latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors", "LCMScheduler", {}),
    "lightning-lora": (
        "ByteDance/SDXL-Lightning",
        "sdxl_lightning_4step_lora.safetensors",
        "EulerDiscreteScheduler",
        {"timestep_spacing": "trailing"},
    ),
    "hyper-sd": (
        "ByteDance/Hyper-SD",
        "Hyper-SDXL-4steps-lora.safetensors",
        "DDIMScheduler",
        {"timestep_spacing": "trailing"},
    ),
    "tcd": ("h1t/TCD-SDXL-LoRA", "pytorch_lora_weights.safetensors", "TCDScheduler", {}),
}
PAIRS = [("sdxl", "dmd2"), ("sdxl", "lightning"), ("sdxl", "turbo"), ("sdxl", "lcm"), ("sd21", "sd-turbo")]


def snapshot(cache: Path, repo_id: str) -> Path:
    """Where ``refs/main`` says the repo's files are."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    return repo / "snapshots" / (repo / "refs" / "main").read_text().strip()


def weights_in(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


def copy_repo(source_cache: Path, cache: Path, repo_id: str) -> Path:
    name = "models--" + repo_id.replace("/", "--")
    shutil.copytree(source_cache / name, cache / name, symlinks=True)
    return snapshot(cache, repo_id)


@pytest.fixture
def registry():
    """The registry, restored after the test."""
    saved = dict(REGISTRY)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


# ------------------------------------------------------------------------------------------- the cache's layout
def test_hub_cache_mirrors_the_real_repos(hub_cache: Path):
    downloadable = {s.name for s in REGISTRY.values() if s.storage != "random" and not s.local_dir}
    # the SD3.5 and FLUX.1 pairs: tests/test_flow_families.py loads them by their hub ids, PixArt-α/δ
    # tests/test_pixart_family.py, Z-Image tests/test_zimage_family.py, Qwen-Image and its Lightning LoRAs
    # tests/test_qwenimage_family.py, SD3.5-Medium and DP-DMD tests/test_dp_dmd.py, SANA-Sprint and its teacher
    # tests/test_sana_family.py; the SDXL LoRA students: below
    assert downloadable == {
        "sdxl",
        "sd21",
        "sd35-large",
        "sd35-large-turbo",
        "sd35-medium",
        "dp-dmd",
        "flux-dev",
        "flux-schnell",
        "pixart-alpha",
        "pixart-delta",
        "z-image",
        "z-image-turbo",
        "qwen-image",
        "qwen-image-lightning",
        "qwen-image-lightning-4step",
        "sana-teacher",
        "sana-sprint",
        *("krea2-raw", "krea2-turbo"),  # test_krea2_family.py
        *("hidream-i1-full", "hidream-i1-fast", "hidream-i1-dev"),  # test_hidream_family.py
        *("flux2-klein-base-4b", "flux2-klein-4b", "flux2-klein-base-9b", "flux2-klein-9b"),  # test_flux2_family.py
        *LORA_STUDENTS,
        *STUDENTS,
    }, "a registry entry without a loading test"

    for repo_id in (
        SDXL_REPO,
        "stabilityai/sdxl-turbo",
        "stabilityai/stable-diffusion-2-1-base",
        "stabilityai/sd-turbo",
    ):
        snap = snapshot(hub_cache, repo_id)
        assert snap.name == testing.SNAPSHOT_REVISION
        index = json.loads((snap / "model_index.json").read_text())
        xl = "xl" in repo_id
        assert index["_class_name"] == ("StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline")
        for part in ("unet", "vae"):
            assert (snap / part / "diffusion_pytorch_model.safetensors").is_file()
            assert (snap / part / "diffusion_pytorch_model.fp16.safetensors").is_file()
        encoders = ("text_encoder", "text_encoder_2") if xl else ("text_encoder",)
        for part in encoders:
            assert (snap / part / "model.safetensors").is_file()
            assert (snap / part / "model.fp16.safetensors").is_file()
        assert (snap / "text_encoder_2").exists() == xl
        for part in ("tokenizer", "tokenizer_2") if xl else ("tokenizer",):
            assert {p.name for p in (snap / part).iterdir()} >= {
                "vocab.json",
                "merges.txt",
                "tokenizer_config.json",
            }
            pad = json.loads((snap / part / "tokenizer_config.json").read_text())["pad_token"]
            # OpenCLIP tokenizers (SDXL's second, SD 2.x's only one) pad with "!", CLIP-L with the end token
            assert pad == ("!" if part == "tokenizer_2" or not xl else "<|endoftext|>")
        # snapshot files are symlinks into blobs/, as `hf download` leaves them
        unet = snap / "unet" / "diffusion_pytorch_model.safetensors"
        assert unet.is_symlink() and unet.resolve().parent.name == "blobs"

    for repo_id in ("stabilityai/sdxl-turbo", "stabilityai/sd-turbo"):
        scheduler = json.loads(
            (snapshot(hub_cache, repo_id) / "scheduler" / "scheduler_config.json").read_text()
        )
        assert scheduler["_class_name"] == "EulerAncestralDiscreteScheduler"
        assert scheduler["timestep_spacing"] == "trailing"

    # LCM-SDXL: a UNet folder at the repo root, with the guidance embedding
    lcm = snapshot(hub_cache, "latent-consistency/lcm-sdxl")
    assert json.loads((lcm / "config.json").read_text())["time_cond_proj_dim"] == testing.LCM_TIME_COND_DIM
    assert (lcm / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (lcm / "unet").exists()

    # DMD2: a torch.save (zip) pickle of a flat fp16 UNet state dict in diffusers key format, at the repo root
    dmd2 = snapshot(hub_cache, "tianweiy/DMD2") / "dmd2_sdxl_4step_unet_fp16.bin"
    assert zipfile.is_zipfile(dmd2)
    state = torch.load(dmd2, map_location="cpu", weights_only=True)
    # Lightning: the same as .safetensors
    lightning = load_file(
        str(snapshot(hub_cache, "ByteDance/SDXL-Lightning") / "sdxl_lightning_4step_unet.safetensors")
    )
    base_keys = set(testing.tiny_sdxl_unet().state_dict())
    for weights in (state, lightning):
        assert set(weights) == base_keys
        assert {t.dtype for t in weights.values()} == {torch.float16}
        assert "add_embedding.linear_1.weight" in weights  # SDXL's text_time conditioning


# ------------------------------------------------------------------------------------- every pair, by hub id
@pytest.mark.parametrize(("base", "student"), PAIRS, ids=[s for _, s in PAIRS])
def test_registry_pair_loads_offline_from_the_hub_cache(hub_cache: Path, base: str, student: str):
    repo_id, weights_file, scheduler_cls, scheduler_settings, student_timesteps = STUDENTS[student]
    assert get_spec(student).repo_id == repo_id
    pair = load_pair(base, student, cache_dir=hub_cache, device="cpu")

    assert pair.dtype == torch.float32 and pair.device.type == "cpu"
    assert pair.student.name == student and pair.base.name == base
    assert pair.family.name == ("sdxl" if base == "sdxl" else "sd")

    # the student's weights are the ones in its repo's file, and not the base's
    written = weights_in(snapshot(hub_cache, repo_id) / weights_file)
    loaded = pair.student_network.state_dict()
    assert set(loaded) == set(written)
    for key, value in written.items():
        torch.testing.assert_close(loaded[key], value.float(), rtol=0, atol=0, msg=key)
    assert not torch.equal(loaded["conv_in.weight"], pair.base_network.state_dict()["conv_in.weight"])

    # one VAE, one set of tokenizers/text encoders: the base repo's. The student contributes its UNet only.
    base_snap = snapshot(hub_cache, get_spec(base).repo_id)
    vae_file = load_file(str(base_snap / "vae" / "diffusion_pytorch_model.safetensors"))
    torch.testing.assert_close(pair.pipeline.vae.state_dict(), vae_file, rtol=0, atol=0)
    if get_spec(student).storage == "pipeline":  # its repo has its own VAE, which must not have been used
        student_vae = load_file(
            str(snapshot(hub_cache, repo_id) / "vae" / "diffusion_pytorch_model.safetensors")
        )
        assert not torch.equal(
            student_vae["encoder.conv_in.weight"], pair.pipeline.vae.encoder.conv_in.weight
        )
    held = {f.name for f in dataclasses.fields(pair) if isinstance(getattr(pair, f.name), torch.nn.Module)}
    assert held == {"student_network"}
    student_pipe = pair.to_diffusers("student")
    assert student_pipe.unet is pair.student_network
    assert student_pipe.vae is pair.pipeline.vae
    assert student_pipe.text_encoder is pair.pipeline.text_encoder
    assert getattr(student_pipe, "text_encoder_2", None) is getattr(pair.pipeline, "text_encoder_2", None)
    assert pair.to_diffusers("base").unet is pair.base_network

    # LCM's guidance embedding is kept; the base never has one
    assert pair.base_network.config.time_cond_proj_dim is None
    expected_cond = testing.LCM_TIME_COND_DIM if student == "lcm" else None
    assert pair.student_network.config.time_cond_proj_dim == expected_cond

    # schedulers: the registry's class and settings on the right config
    scheduler = pair.make_scheduler("student")
    assert type(scheduler).__name__ == scheduler_cls
    for key, value in scheduler_settings.items():
        assert scheduler.config[key] == value, key
    assert scheduler.config.prediction_type == "epsilon" == pair.prediction_type("student")
    assert type(pair.make_scheduler("base")).__name__ == "EulerDiscreteScheduler"

    result = conceptspace.sample(
        pair, "a photo", "hybrid", seeds=[0], height=64, width=64, output_type="latent", progress=False
    )
    assert result.latents.shape == (1, 4, 32, 32)
    assert torch.isfinite(result.latents).all()
    assert [(s.model, s.timestep) for s in result.schedule] == [("base", 999)] + [
        ("distilled", t) for t in student_timesteps
    ]


@pytest.mark.parametrize("student", sorted(LORA_STUDENTS))
def test_a_student_shipped_as_a_lora_merged_is_the_base_with_the_lora_merged(hub_cache: Path, student: str):
    """(By default such a student is an adapter on the base's network: tests/test_memory.py.)"""
    from conceptspace.lora import merge_lora, read_lora

    repo_id, filename, scheduler_cls, settings = LORA_STUDENTS[student]
    spec = get_spec(student)
    assert (spec.repo_id, spec.filename, spec.storage) == (repo_id, filename, "lora_file")
    assert is_cached(spec, hub_cache) and spec.fetch_command == f"hf download {repo_id} {filename}"
    pair = load_pair("sdxl", student, cache_dir=hub_cache, device="cpu", lora_student="merged")
    base_file = load_file(
        str(snapshot(hub_cache, SDXL_REPO) / "unet" / "diffusion_pytorch_model.safetensors")
    )
    torch.testing.assert_close(
        pair.base_network.state_dict(), base_file, rtol=0, atol=0
    )  # the base is untouched
    expected = copy.deepcopy(pair.base_network)
    merge_lora(expected, read_lora(snapshot(hub_cache, repo_id) / filename))
    torch.testing.assert_close(pair.student_network.state_dict(), expected.state_dict(), rtol=0, atol=0)
    assert not torch.equal(
        pair.student_network.state_dict()["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"],
        base_file["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"],
    )
    scheduler = pair.make_scheduler("student")
    assert type(scheduler).__name__ == scheduler_cls
    assert all(scheduler.config[k] == v for k, v in settings.items())
    result = conceptspace.sample(
        pair, "a photo", "hybrid", [0], height=64, width=64, output_type="latent", progress=False
    )
    assert [s.model for s in result.schedule] == ["base", "distilled", "distilled", "distilled"]
    assert torch.isfinite(result.latents).all()


def test_a_lora_student_file_for_another_base_is_refused(hub_cache: Path, tmp_path: Path):
    from conceptspace.lora import write_lora

    sd_unet = testing.tiny_sd_unet(0)  # SD-shaped: its cross-attention takes 32 features, SDXL's 64
    names = [n for n, _ in sd_unet.named_modules() if n.endswith(".attn2.to_k")]
    foreign = write_lora(testing.random_lora(sd_unet, names), tmp_path / "sd.safetensors")
    with pytest.raises(IncompatibleModelsError, match=r"'lcm-lora' is a LoRA on 'sdxl'.*does not fit"):
        load_pair("sdxl", "lcm-lora", cache_dir=hub_cache, student_path=foreign, device="cpu")


def test_fp16_only_download_loads_in_either_dtype(hub_cache: Path, tmp_path: Path):
    """Users often fetch only the fp16 files; float32 (CPU) loading falls back to them, float16 picks them."""
    cache = tmp_path / "cache"
    for repo_id in (SDXL_REPO, "latent-consistency/lcm-sdxl"):
        snap = copy_repo(hub_cache, cache, repo_id)
        for file in snap.rglob("*.safetensors"):
            if ".fp16." not in file.name:
                file.unlink()
    pair = load_pair("sdxl", "lcm", cache_dir=cache, device="cpu", dtype=torch.float32)
    assert pair.dtype == torch.float32 and pair.student_network.dtype == torch.float32
    full = load_file(
        str(snapshot(hub_cache, "latent-consistency/lcm-sdxl") / "diffusion_pytorch_model.safetensors")
    )
    torch.testing.assert_close(
        pair.student_network.state_dict()["conv_in.weight"], full["conv_in.weight"].half().float()
    )

    half = load_pair("sdxl", "lcm", cache_dir=cache, device="cpu", dtype=torch.float16)
    assert half.dtype == torch.float16 and half.student_network.dtype == torch.float16
    assert half.pipeline.vae.dtype == half.pipeline.text_encoder_2.dtype == torch.float16


def test_registered_model_loads_by_name(registry, hub_cache: Path):
    spec = register(with_overrides(get_spec("lightning"), name="lightning-alias", description="same files"))
    assert get_spec("lightning-alias") is spec
    pair = load_pair("sdxl", "lightning-alias", cache_dir=hub_cache, device="cpu")
    assert pair.student is spec


# ------------------------------------------------------------------------------------------- missing models
def test_missing_base_names_repo_files_and_command(empty_cache: Path):
    with pytest.raises(ModelNotFoundError) as info:
        load_pair("sdxl", "dmd2", cache_dir=empty_cache)
    message = str(info.value)
    assert SDXL_REPO in message
    assert "model_index.json" in message
    assert f"`hf download {SDXL_REPO} --cache-dir {empty_cache}`" in message
    assert "HF_HUB_OFFLINE=1" in message and "--base-path" in message


@pytest.mark.parametrize(
    ("student", "files", "command"),
    [
        ("dmd2", "dmd2_sdxl_4step_unet_fp16.bin", "hf download tianweiy/DMD2 dmd2_sdxl_4step_unet_fp16.bin"),
        (
            "lightning",
            "sdxl_lightning_4step_unet.safetensors",
            "hf download ByteDance/SDXL-Lightning sdxl_lightning_4step_unet.safetensors",
        ),
        (
            "turbo",
            "unet/config.json",
            "hf download stabilityai/sdxl-turbo --include 'unet/*' --include 'scheduler/*'",
        ),
        ("lcm", "config.json", "hf download latent-consistency/lcm-sdxl"),
    ],
)
def test_missing_student_names_repo_files_and_command(
    sdxl_only_cache: Path, monkeypatch: pytest.MonkeyPatch, student, files, command
):
    def load_base(*args):
        pytest.fail("the base was loaded before the missing student was noticed")

    monkeypatch.setattr(models.loading, "_load_base_pipeline", load_base)
    with pytest.raises(ModelNotFoundError) as info:
        load_pair("sdxl", student, cache_dir=sdxl_only_cache)
    message = str(info.value)
    assert f"{get_spec(student).repo_id} ({files}" in message
    assert f"`{command} --cache-dir {sdxl_only_cache}`" in message
    assert "--student-path" in message


def test_student_repo_cached_without_the_needed_file(hub_cache: Path, tmp_path: Path):
    """The DMD2 repo is in the cache, but only with another of its files (say its LoRA)."""
    cache = tmp_path / "cache"
    copy_repo(hub_cache, cache, SDXL_REPO)
    dmd2 = copy_repo(hub_cache, cache, "tianweiy/DMD2")
    (dmd2 / "dmd2_sdxl_4step_unet_fp16.bin").rename(dmd2 / "dmd2_sdxl_4step_lora_fp16.safetensors")
    assert not is_cached(get_spec("dmd2"), cache) and is_cached(get_spec("sdxl"), cache)
    with pytest.raises(ModelNotFoundError, match=r"tianweiy/DMD2 \(dmd2_sdxl_4step_unet_fp16\.bin\)"):
        load_pair("sdxl", "dmd2", cache_dir=cache)


def test_partially_downloaded_base_is_a_missing_model(hub_cache: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    snap = copy_repo(hub_cache, cache, SDXL_REPO)
    for file in (snap / "unet").glob("diffusion_pytorch_model*"):
        file.unlink()
    with pytest.raises(
        ModelNotFoundError, match="hf download stabilityai/stable-diffusion-xl-base-1.0"
    ) as info:
        load_pair("sdxl", cache_dir=cache)
    assert "unet" in str(info.value)  # the detail says which part is absent
    assert not is_cached(get_spec("sdxl"), cache)  # `conceptspace models` must not call it cached
    assert is_cached(get_spec("sdxl"), hub_cache)


# ----------------------------------------------------------------------------------------- incompatibility
check_compatible = family_of("sdxl").check_compatible


def test_check_compatible_names_differing_fields():
    base = dict(testing.tiny_sdxl_unet().config)
    check_compatible(base, dict(base), ("a", "b"))
    # native resolution, the LCM guidance embedding and list-vs-tuple spelling are no architecture change
    same = {**base, "sample_size": 128, "time_cond_proj_dim": 256, "block_out_channels": [32, 64]}
    check_compatible(base, same, ("a", "b"))

    other = {**base, "block_out_channels": (32, 96), "cross_attention_dim": 1024}
    with pytest.raises(IncompatibleModelsError) as info:
        check_compatible(base, other, ("sdxl", "mystery"))
    message = str(info.value)
    assert "'sdxl' and 'mystery'" in message
    assert "block_out_channels: (32, 64) vs (32, 96)" in message
    assert "cross_attention_dim: 64 vs 1024" in message
    assert "in_channels" not in message and "layers_per_block" not in message


def test_check_compatible_reads_one_int_as_every_block():
    blocks = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]}
    check_compatible(
        {**blocks, "transformer_layers_per_block": 1, "in_channels": 4},
        {**blocks, "transformer_layers_per_block": [1, 1], "in_channels": 4},
        ("a", "b"),
    )
    with pytest.raises(IncompatibleModelsError, match="transformer_layers_per_block"):
        check_compatible(
            {**blocks, "transformer_layers_per_block": 1},
            {**blocks, "transformer_layers_per_block": (1, 2)},
            ("a", "b"),
        )
    with pytest.raises(IncompatibleModelsError, match="in_channels: 4 vs 9"):
        check_compatible({**blocks, "in_channels": 4}, {**blocks, "in_channels": 9}, ("a", "b"))


def test_student_folder_of_another_architecture_is_refused(hub_cache: Path, tmp_path: Path):
    folder = tmp_path / "sd-unet"
    testing.tiny_sd_unet(seed=4, lcm=True).save_pretrained(folder)
    with pytest.raises(IncompatibleModelsError) as info:
        load_pair("sdxl", "lcm", student_path=folder, cache_dir=hub_cache)
    message = str(info.value)
    assert "'sdxl' and 'lcm'" in message
    assert "cross_attention_dim: 64 vs 32" in message
    assert "addition_embed_type: 'text_time' vs None" in message


def test_student_of_another_family_is_refused_before_loading(empty_cache: Path):
    with pytest.raises(
        IncompatibleModelsError, match=r"'sd-turbo' is a sd21 student.*dmd2, lightning, turbo, lcm"
    ):
        load_pair("sdxl", "sd-turbo", cache_dir=empty_cache)  # no ModelNotFoundError: nothing was loaded
    with pytest.raises(ValueError, match="'sd21' is a base model"):
        load_pair("sdxl", "sd21", cache_dir=empty_cache)
    with pytest.raises(ValueError, match="'dmd2' is a student of 'sdxl'"):
        load_pair("dmd2", cache_dir=empty_cache)


def test_non_sdxl_folder_as_sdxl_base_is_refused(hub_cache: Path, empty_cache: Path):
    sd21 = snapshot(hub_cache, "stabilityai/stable-diffusion-2-1-base")
    with pytest.raises(IncompatibleModelsError, match="not an SDXL base pipeline"):
        load_pair("sdxl", base_path=sd21, cache_dir=empty_cache)


# ------------------------------------------------------------------------------------------- local overrides
def test_local_base_folder_and_student_folder_need_no_cache(
    hub_cache: Path, empty_cache: Path, tmp_path: Path
):
    base_dir = tmp_path / "my-sdxl"
    shutil.copytree(snapshot(hub_cache, SDXL_REPO), base_dir)  # follows the blob links: plain files
    lcm_dir = tmp_path / "my-lcm"
    testing.tiny_sdxl_unet(seed=5, lcm=True).save_pretrained(lcm_dir)

    pair = load_pair(
        "sdxl", "lcm", base_path=base_dir, student_path=lcm_dir, cache_dir=empty_cache, device="cpu"
    )
    assert pair.paths == {"base": str(base_dir), "student": str(lcm_dir)}
    torch.testing.assert_close(
        pair.student_network.state_dict(), testing.tiny_sdxl_unet(seed=5, lcm=True).state_dict()
    )
    torch.testing.assert_close(
        pair.base_network.state_dict(), load_file(str(base_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    )
    assert list(empty_cache.iterdir()) == []


def test_local_student_safetensors_file(sdxl_only_cache: Path, tmp_path: Path):
    expected = testing.tiny_sdxl_unet(seed=6).state_dict()
    file = tmp_path / "my_lightning.safetensors"
    save_file({k: v.half().contiguous() for k, v in expected.items()}, str(file))
    pair = load_pair("sdxl", "lightning", student_path=file, cache_dir=sdxl_only_cache, device="cpu")
    assert pair.student_network.dtype == torch.float32
    torch.testing.assert_close(
        pair.student_network.state_dict()["conv_in.weight"], expected["conv_in.weight"].half().float()
    )
    assert pair.make_scheduler("student").config.timestep_spacing == "trailing"


def test_local_paths_that_do_not_fit(sdxl_only_cache: Path, tmp_path: Path):
    with pytest.raises(ModelNotFoundError, match="local path for model 'sdxl' does not exist"):
        load_pair("sdxl", base_path=tmp_path / "nowhere", cache_dir=sdxl_only_cache)
    file = tmp_path / "unet.safetensors"
    save_file({"w": torch.zeros(1)}, str(file))
    # a file where a UNet folder is needed: about the path, not about the hub cache
    with pytest.raises(
        ModelNotFoundError, match=r"unet\.safetensors is not a usable local copy of latent-consistency"
    ) as info:
        load_pair("sdxl", "lcm", student_path=file, cache_dir=sdxl_only_cache)
    assert "hf download" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="no state-dict file"):
        load_pair("sdxl", "dmd2", student_path=tmp_path, cache_dir=sdxl_only_cache)


# -------------------------------------------------------------------------------------------- untrusted files
class _OpensAFile:
    """Unpickling this calls open(path, "w"): a stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_that_runs_code_is_refused(sdxl_only_cache: Path, tmp_path: Path, writer: str):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_OpensAFile(proof))).close()
    assert proof.exists(), "the payload must run when unpickled unsafely, or this test proves nothing"

    marker = tmp_path / "pwned"
    file = tmp_path / "dmd2_sdxl_4step_unet_fp16.bin"
    payload = {"conv_in.weight": torch.zeros(1), "x": _OpensAFile(marker)}
    if writer == "pickle":
        file.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, file)
    with pytest.raises(ValueError, match="refused") as refused:
        read_state_dict(file)
    # torch's own message advises weights_only=False, which would run the payload: it must not reach the user
    assert "weights_only=False" not in str(refused.value) and "False" not in str(refused.value)
    with pytest.raises(ValueError, match="dmd2_sdxl_4step_unet_fp16.bin cannot be read with torch.load"):
        load_pair("sdxl", "dmd2", student_path=file, cache_dir=sdxl_only_cache)
    assert not marker.exists()
    truncated = tmp_path / "truncated.bin"
    torch.save({"conv_in.weight": torch.zeros(64)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.bin is not a readable checkpoint .*truncated or corrupt"):
        read_state_dict(truncated)


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    return {k: v.half() for k, v in testing.tiny_sdxl_unet(seed=8).state_dict().items()}


def test_state_dict_of_the_wrong_shape_names_the_keys(tmp_path: Path):
    config = testing.tiny_sdxl_unet().config
    state = _tiny_state_dict()
    del state["conv_out.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["conv_in.weight"] = torch.zeros(8, 4, 3, 3)
    file = tmp_path / "bad.safetensors"
    save_file(state, str(file))
    with pytest.raises(IncompatibleModelsError) as info:
        load_network_state_dict(file, UNet2DConditionModel, config, dtype=torch.float32, name="dmd2")
    message = str(info.value)
    assert "for 'dmd2'" in message
    assert "1 missing keys (e.g. conv_out.bias)" in message
    assert "1 unexpected keys (e.g. extra.weight)" in message
    assert (
        "1 shape mismatches (e.g. conv_in.weight: (8, 4, 3, 3) in the file, (32, 4, 3, 3) expected)"
        in message
    )


def test_state_dict_with_prefixed_keys_is_refused_through_load_pair(sdxl_only_cache: Path, tmp_path: Path):
    """A checkpoint in another key format (here a `unet.` prefix) is reported, not half-loaded."""
    file = tmp_path / "prefixed.bin"
    torch.save({f"unet.{k}": v for k, v in _tiny_state_dict().items()}, file)
    with pytest.raises(
        IncompatibleModelsError, match=r"missing keys \(e.g\. .*unexpected keys \(e\.g\. unet\."
    ):
        load_pair("sdxl", "dmd2", student_path=file, cache_dir=sdxl_only_cache)


def test_state_dict_readers_accept_wrapped_and_refuse_non_tensors(tmp_path: Path):
    state = _tiny_state_dict()
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state}, wrapped)
    assert read_state_dict(wrapped).keys() == state.keys()
    unet = load_network_state_dict(
        wrapped, UNet2DConditionModel, testing.tiny_sdxl_unet().config, dtype=torch.float32
    )
    assert unet.dtype == torch.float32 and not unet.conv_in.weight.is_meta
    torch.testing.assert_close(unet.conv_in.weight, state["conv_in.weight"].float())

    mixed = tmp_path / "mixed.bin"
    torch.save({"w": torch.zeros(1), "step": 3}, mixed)
    with pytest.raises(ValueError, match="does not hold a flat dict of tensors"):
        read_state_dict(mixed)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_file_gives_a_clear_error(tmp_path: Path, suffix: str, damage: str):
    good = tmp_path / f"good{suffix}"
    state = {"w": torch.arange(1000, dtype=torch.float32)}
    save_file(state, str(good)) if suffix == ".safetensors" else torch.save(state, good)
    data = good.read_bytes()
    damaged = tmp_path / f"damaged{suffix}"
    damaged.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint " * 20, "empty": b""}[damage]
    )
    with pytest.raises(ValueError, match=rf"damaged\{suffix} (could not be read|is not a readable)") as info:
        read_state_dict(damaged)
    assert "truncated or corrupt" in str(info.value)
    with pytest.raises(FileNotFoundError, match="no state-dict file"):
        read_state_dict(tmp_path / f"absent{suffix}")


# ---------------------------------------------------------------------------------------------- the registry
def test_unknown_name_suggests_close_names_or_lists_known_ones():
    with pytest.raises(KeyError) as info:  # a ValueError too: the CLI's one-line user error
        get_spec("dmd3")
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("unknown model 'dmd3'; did you mean dmd or dmd2 or dp-dmd?")
    with pytest.raises(ValueError) as info:
        get_spec("xyzzy")  # nothing close: the whole registry
    for name in ("dmd2", "lightning", "sdxl", "tiny-sdxl"):
        assert name in str(info.value)
    with pytest.raises(KeyError, match="did you mean"):
        load_pair("sdxl", "dmd3")


def test_hub_repository_ids_name_their_registry_model():
    assert get_spec(SDXL_REPO).name == "sdxl"
    assert get_spec("TIANWEIY/dmd2").name == "dmd2"  # the hub's ids are case-insensitive
    with pytest.raises(ValueError, match=r"ByteDance/SDXL-Lightning holds several registry models \(lightning, "):
        get_spec("ByteDance/SDXL-Lightning")


def test_a_pair_loads_by_hub_ids_as_by_names(hub_cache: Path):
    pair = load_pair(SDXL_REPO, "tianweiy/DMD2", cache_dir=hub_cache, device="cpu", dtype=torch.float32)
    assert (pair.base.name, pair.student.name) == ("sdxl", "dmd2")


def test_register_checks_its_input(registry):
    student = with_overrides(get_spec("dmd2"), name="my-dmd")
    assert register(student) is student and REGISTRY["my-dmd"] is student
    with pytest.raises(ValueError, match="already registered"):
        register(student)
    assert register(student, overwrite=True) is student
    with pytest.raises(ValueError, match="names base 'sdxl-2', which is not registered"):
        register(with_overrides(student, name="orphan", base="sdxl-2"))
    with pytest.raises(ValueError, match="family 'sd21' but its base 'sdxl'"):
        register(with_overrides(student, name="confused", family="sd21"))
    # an architecture no family adapter answers to is refused here, not later blamed on the pair
    with pytest.raises(ValueError, match="unknown architecture 'sdx'; did you mean 'sdxl'\\? known architectures: flux"):
        register(with_overrides(student, name="typo", architecture="sdx"))
    assert "orphan" not in REGISTRY and "confused" not in REGISTRY and "typo" not in REGISTRY


def test_model_spec_validation():
    spec = get_spec("dmd2")
    with pytest.raises(ValueError, match="3 timesteps given for 4 steps"):
        with_overrides(spec, timesteps=(999, 666, 333))
    with pytest.raises(ValueError, match="must name its base"):
        with_overrides(spec, base=None)
    with pytest.raises(ValueError, match="names no filename"):
        with_overrides(spec, filename=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_inference_steps = 8  # type: ignore[misc]
    ModelSpec(
        name="x",
        family="sdxl",
        role="base",
        repo_id="me/x",
        storage="pipeline",
        scheduler="DDIMScheduler",
        num_inference_steps=30,
        guidance_scale=5.0,
        resolution=1024,
    )


# -------------------------------------------------------------------------------------------------- the CLI
def _cached_column(output: str) -> dict[str, str]:
    lines = output.strip().splitlines()
    assert lines[0].split()[:4] == ["name", "role", "base", "cached"]
    return {line.split()[0]: line.split()[3] for line in lines[1:]}


def test_cli_models_reports_what_is_cached(hub_cache: Path, sdxl_only_cache: Path, empty_cache: Path):
    from conceptspace.cli import app

    runner = CliRunner()
    downloadable = {s.name for s in REGISTRY.values() if s.storage != "random" and not s.local_dir}
    shipped = {s.name for s in REGISTRY.values() if s.local_dir}
    builtin = set(REGISTRY) - downloadable - shipped
    for cache, cached in [(hub_cache, downloadable), (empty_cache, set()), (sdxl_only_cache, {"sdxl"})]:
        result = runner.invoke(app, ["models", "--cache-dir", str(cache)])
        assert result.exit_code == 0, result.output
        rows = _cached_column(result.output)
        assert set(rows) == set(REGISTRY)
        assert {n for n, v in rows.items() if v == "yes"} == cached
        assert {n for n, v in rows.items() if v == "no"} == downloadable - cached
        assert {n for n, v in rows.items() if v == "builtin"} == builtin
        assert {n for n, v in rows.items() if v == "shipped"} == shipped == {"shapes", "dmd"}


def _cli(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CONCEPTSPACE_DEBUG"}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    if cache is not None:
        env["HF_HUB_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "conceptspace.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_models_reads_hf_hub_cache(hub_cache: Path):
    run = _cli("models", cache=hub_cache)
    assert run.returncode == 0, run.stderr
    assert _cached_column(run.stdout)["dmd2"] == "yes"


@pytest.mark.parametrize(
    ("student", "expected"),
    [
        (
            "dmd2",
            f"error: model 'sdxl' needs {SDXL_REPO} (model_index.json and UNet weights unet/",
        ),
        ("dmd3", "error: unknown model 'dmd3'; did you mean dmd or dmd2 or dp-dmd?"),
    ],
)
def test_cli_user_errors_are_one_line_with_status_2(
    empty_cache: Path, tmp_path: Path, student: str, expected: str
):
    run = _cli(
        "generate",
        "--base",
        "sdxl",
        "--student",
        student,
        "--prompt",
        "x",
        "--cache-dir",
        str(empty_cache),
        "--out",
        str(tmp_path / "out"),
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in run.stderr and "\x1b" not in run.stderr
    if student == "dmd2":
        assert f"hf download {SDXL_REPO} --cache-dir {empty_cache}" in lines[0]


def test_with_student_shares_the_base_and_equals_a_fresh_pair(hub_cache: Path):
    pair = load_pair("sdxl", "dmd2", dtype=torch.float32, device="cpu", cache_dir=hub_cache)
    other = with_student(pair, "lightning", cache_dir=hub_cache)
    fresh = load_pair("sdxl", "lightning", dtype=torch.float32, device="cpu", cache_dir=hub_cache)
    assert (
        other.pipeline is pair.pipeline and pair.student.name == "dmd2"
    )  # nothing reloaded, nothing changed
    assert (
        other.student.name == "lightning" and other.student_scheduler_config == fresh.student_scheduler_config
    )
    fresh_state = fresh.student_network.state_dict()
    assert all(torch.equal(v, fresh_state[k]) for k, v in other.student_network.state_dict().items())
    assert (
        other.student_network.dtype == torch.float32
        and other.student_prediction_type == fresh.student_prediction_type
    )
    with pytest.raises(IncompatibleModelsError, match="sd-turbo"):
        with_student(pair, "sd-turbo", cache_dir=hub_cache)


def test_every_scheduler_is_a_fresh_one_made_from_the_pair_config(tiny_sdxl_pair: ModelPair) -> None:
    used = tiny_sdxl_pair.make_scheduler("student")
    used.set_timesteps(4)
    fresh = tiny_sdxl_pair.make_scheduler("student")
    assert fresh is not used and fresh.num_inference_steps is None  # a run's state never reaches the next run
    assert fresh.timesteps is not used.timesteps

    config = {**tiny_sdxl_pair.student_scheduler_config, "timestep_spacing": "leading"}
    changed = dataclasses.replace(tiny_sdxl_pair, student_scheduler_config=config)
    assert changed.make_scheduler("student").config.timestep_spacing == "leading"
    config["timestep_spacing"] = "linspace"  # edited in place: the next scheduler follows
    assert changed.make_scheduler("student").config.timestep_spacing == "linspace"
    assert tiny_sdxl_pair.make_scheduler("student").config.timestep_spacing == used.config.timestep_spacing


def test_getting_started_shows_the_whole_registry_as_conceptspace_models_prints_it(empty_cache: Path):
    """docs/getting-started.md's `conceptspace models` block is the command's output on an empty cache: every
    registry entry, in the command's own layout (a model added to the registry must be added to the docs)."""
    run = _cli("models", cache=empty_cache)
    assert run.returncode == 0, run.stderr
    docs = (Path(__file__).parents[1] / "docs" / "getting-started.md").read_text(encoding="utf-8")
    block = docs.split("$ conceptspace models\n", 1)[1].split("```", 1)[0]
    assert block == run.stdout
