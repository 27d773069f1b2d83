"""The embedded testbed models: the shipped miniature Stable Diffusion and its DMD-style 4-step student."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conceptspace.sampling import Base, Distilled, Hybrid, sample
from conceptspace.testbed import train
from conceptspace.testbed.pair import WEIGHTS_DIR, load_testbed_pair

SHAPES = WEIGHTS_DIR / "shapes"
DMD = WEIGHTS_DIR / "dmd"

pytestmark = pytest.mark.skipif(
    not (SHAPES / "model_index.json").exists(), reason="testbed weights not built"
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    return load_testbed_pair()


def test_folders_are_diffusers_pipeline_and_unet():
    index = json.loads((SHAPES / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    for part in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        assert (SHAPES / part).is_dir(), part
    assert (DMD / "unet" / "config.json").exists()
    scheduler = json.loads((SHAPES / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "scaled_linear"
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["num_train_timesteps"]) == (
        0.00085,
        0.012,
        1000,
    )


def test_weights_are_fp16_safetensors_and_small():
    files = list(WEIGHTS_DIR.rglob("*.safetensors"))
    assert not list(WEIGHTS_DIR.rglob("*.bin"))
    assert sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file()) <= 30 * 2**20
    for path in files:
        if "probe" in path.parts:
            continue
        with safe_open(str(path), "pt") as handle:
            dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}  # noqa: SIM118
        assert dtypes == {"F16"}, (path, dtypes)


def test_loads_offline_with_from_pretrained():
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES, torch_dtype=torch.float32)
    student = UNet2DConditionModel.from_pretrained(DMD, subfolder="unet", torch_dtype=torch.float32)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    assert pipe.vae_scale_factor == 1 and pipe.vae.config.latent_channels == 4  # 32×32×4 latents

    def architecture(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert architecture(student.config) == architecture(pipe.unet.config)
    assert pipe.unet.dtype == student.dtype == torch.float32


def test_student_and_base_sample(pair):
    student = sample(pair, "a red circle", Distilled(), seeds=range(4), output_type="np", progress=False)
    assert student.images.shape == (4, 32, 32, 3)
    assert [s.timestep for s in student.schedule] == [999, 749, 499, 249]
    base = sample(pair, "a red circle", Base(steps=6), seeds=range(2), output_type="np", progress=False)
    assert base.images.shape == (2, 32, 32, 3)
    hybrid = sample(pair, "a red circle", Hybrid(k=1), seeds=range(2), output_type="np", progress=False)
    assert [s.model for s in hybrid.schedule] == ["base", "distilled", "distilled", "distilled"]
    assert np.isfinite(student.images).all() and np.isfinite(base.images).all()


def test_train_stage_saves_loadable_folder(tmp_path):
    from diffusers import AutoencoderKL

    out = train.train_vae(tmp_path / "vae", seed=0, steps=2, batch_size=4, quiet=True)
    vae = AutoencoderKL.from_pretrained(out, torch_dtype=torch.float32)
    log = json.loads((out / "training_log.json").read_text())
    assert log["steps"] == 2 and len(log["history"]) == 1
    assert vae.config.scaling_factor == pytest.approx(log["scaling_factor"])


def test_registered_by_name_and_shipped():
    from conceptspace.models import get_spec, is_cached, load_pair

    base, student = get_spec("shapes"), get_spec("dmd")
    assert student.base == "shapes" and base.embedder == "testbed:clip"
    assert is_cached(base) and is_cached(student) and base.fetch_command == ""
    pair = load_pair("shapes", "dmd", dtype=torch.float32, device="cpu")
    assert pair.paths == {"base": str(SHAPES), "student": str(DMD)}
    result = sample(pair, "a shape", Distilled(), seeds=range(2), output_type="np", progress=False)
    assert result.images.shape == (2, 32, 32, 3)


def test_a_path_given_replaces_the_shipped_folder(tmp_path):
    from conceptspace.models import ModelNotFoundError, load_pair

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_pair("shapes", "dmd", device="cpu", base_path=tmp_path / "nowhere")


def _tiny_budget():
    return {"vae": 2, "clip": 2, "unet": 2, "dmd": 2}


def _weights(folder):
    from safetensors.torch import load_file

    return {
        str(path.relative_to(folder)): load_file(str(path))
        for path in sorted(folder.rglob("*.safetensors"))
        if "parts" not in path.parts
    }


def test_train_all_is_reproducible_resumable_and_complete(tmp_path):
    cotrain = {"text_lr": 1e-3}  # the text encoder trains with the UNet: the longest path
    first = train.train_all(tmp_path / "a", seed=3, budget=_tiny_budget(), recipe=cotrain, quiet=True)
    second = train.train_all(tmp_path / "b", seed=3, budget=_tiny_budget(), recipe=cotrain, quiet=True)
    a, b = _weights(first), _weights(second)
    assert set(a) == {
        "clip_vision/model.safetensors",
        "dmd/unet/diffusion_pytorch_model.safetensors",
        "shapes/text_encoder/model.safetensors",
        "shapes/unet/diffusion_pytorch_model.safetensors",
        "shapes/vae/diffusion_pytorch_model.safetensors",
    }
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    # the result loads as a pair, and a second call finds every stage done
    pair = load_testbed_pair(first)
    assert pair.student_network is not None
    stamp = (first / "dmd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    train.train_all(first, seed=3, budget=_tiny_budget(), recipe=cotrain, quiet=True)
    assert (first / "dmd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    logs = {
        stage: json.loads((first / "parts" / stage / "training_log.json").read_text())
        for stage in ("vae", "clip", "unet")
    }
    assert all(log["seed"] == 3 and log["steps"] == 2 for log in logs.values())
    assert logs["unet"]["text_lr"] == 1e-3
    from safetensors.torch import load_file

    tuned = load_file(str(first / "shapes" / "text_encoder" / "model.safetensors"))
    clip_text = load_file(str(first / "parts" / "clip_text" / "model.safetensors"))
    assert any(not torch.equal(tuned[k], clip_text[k]) for k in clip_text)


def test_train_all_recipe_options(tmp_path):
    with pytest.raises(ValueError, match="unknown training options"):
        train.train_all(tmp_path / "x", budget={"unet_more": 3})
    with pytest.raises(ValueError, match="stop_after"):
        train.train_all(tmp_path / "x", stop_after="everything")
    out = train.train_all(
        tmp_path / "frozen",
        budget=_tiny_budget(),
        recipe={"text_lr": 0.0, "regression_weight": 0.0},
        stop_after="unet",
        quiet=True,
    )
    assert (out / "shapes" / "model_index.json").exists() and not (out / "dmd").exists()
    # a frozen text encoder is the CLIP text tower unchanged
    from safetensors.torch import load_file

    clip_text = load_file(str(out / "parts" / "clip_text" / "model.safetensors"))
    shipped = load_file(str(out / "shapes" / "text_encoder" / "model.safetensors"))
    assert all(torch.equal(clip_text[k], shipped[k]) for k in clip_text)
    out = train.train_all(out, budget=_tiny_budget(), recipe={"text_lr": 0.0, "num_pairs": 0}, quiet=True)
    log = json.loads((out / "dmd" / "unet" / "training_log.json").read_text())
    assert log["num_pairs"] == 0 and all(row["reg"] == 0 for row in log["history"])


class _Killed(Exception):
    pass


def _kill_at(monkeypatch, stage, step_index):
    """Make the stage's loss logging raise at ``step_index``: the stage dies mid-way, as under kill -9."""
    original = train.TrainingLog.__call__

    def dying(self, step, **losses):
        if self.stage == stage and step == step_index:
            raise _Killed
        return original(self, step, **losses)

    monkeypatch.setattr(train.TrainingLog, "__call__", dying)


def test_a_stage_killed_midway_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    budget = {**_tiny_budget(), "unet": 6, "dmd": 6}
    parts = train.train_all(tmp_path / "run", seed=1, budget=budget, stop_after="unet", quiet=True) / "parts"
    unet_args = (parts / "vae", parts / "clip_text", parts / "tokenizer")
    common = dict(seed=1, steps=6, batch_size=4, quiet=True)
    whole = train.train_unet(tmp_path / "whole", *unet_args, checkpoint_every=None, **common)

    with monkeypatch.context() as patch:
        _kill_at(patch, "unet", 4)
        with pytest.raises(_Killed):
            train.train_unet(tmp_path / "resumed", *unet_args, checkpoint_every=2, **common)
    checkpoint = tmp_path / ".resumed.checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["step"] == 4 and not (tmp_path / "resumed").exists()
    resumed = train.train_unet(tmp_path / "resumed", *unet_args, checkpoint_every=2, **common)
    assert not checkpoint.exists()
    a, b = (load_file(str(p / "diffusion_pytorch_model.safetensors")) for p in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((resumed / "training_log.json").read_text())["history"]
    assert [row["step"] for row in history] == [6]

    pipeline = tmp_path / "run" / "shapes"
    # DMD2's GAN term on (its head's state is part of the checkpoint), two fake-score updates per student update
    dmd = dict(seed=1, steps=6, batch_size=2, num_pairs=2, regression_batch=2, quiet=True)
    dmd.update(gan_weight=5e-3, real_pool=8, fake_updates=2)
    whole = train.distill_dmd(tmp_path / "dmd-whole", pipeline, checkpoint_every=None, **dmd)
    resumed_dir = tmp_path / "dmd-resumed" / "unet"  # as train_all lays it out: the parent does not exist yet
    with monkeypatch.context() as patch:
        _kill_at(patch, "dmd", 3)
        with pytest.raises(_Killed):
            train.distill_dmd(resumed_dir, pipeline, checkpoint_every=2, **dmd)
    assert torch.load(resumed_dir.parent / ".unet.checkpoint.pt", weights_only=True)["step"] == 2
    resumed = train.distill_dmd(resumed_dir, pipeline, checkpoint_every=2, **dmd)
    a, b = (load_file(str(p / "diffusion_pytorch_model.safetensors")) for p in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = json.loads((whole / "training_log.json").read_text())
    assert logged["gan_weight"] == 5e-3 and {"gan_g", "gan_d"} <= set(logged["history"][-1])
    plain = train.distill_dmd(tmp_path / "dmd-plain", pipeline, checkpoint_every=None, **{**dmd, "gan_weight": 0.0})
    c = load_file(str(plain / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the GAN term changes what the student learns
