"""SD3.5 Medium and DP-DMD (arXiv 2602.03139), its 4-NFE student released as one bare ``.pt`` transformer state dict:
the pair loads offline by its hub ids from tiny weights in the real repos' layouts, the student is the file's tensors
exactly, a ``.pt`` that needs pickle code is refused without running it, and both regimes equal diffusers' own
``StableDiffusion3Pipeline``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conceptspace import Base, Distilled, Hybrid, load_pair, sample, schedule_of
from conceptspace.models import IncompatibleModelsError, ModelNotFoundError, get_spec, is_cached
from conceptspace.testing import write_hub_cache

PROMPT = "a red circle"
SEEDS = [0, 1]
SIZE = 64  # the tiny networks' size; the registry's 1024 is the real models'


def _repo(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _snapshot(cache: Path, repo_id: str) -> Path:
    repo = _repo(cache, repo_id)
    return repo / "snapshots" / (repo / "refs" / "main").read_text().strip()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache with only this pair's two repos (the session-wide one writes every repo: slower)."""
    return write_hub_cache(tmp_path_factory.mktemp("hf-cache-dp-dmd"), ["sd35-medium", "dp-dmd"])


@pytest.fixture(scope="module")
def pair(cache: Path):
    return load_pair("sd35-medium", "dp-dmd", cache_dir=cache, device="cpu", dtype=torch.float32)


def _student_file(cache: Path) -> Path:
    spec = get_spec("dp-dmd")
    return _snapshot(cache, spec.repo_id) / spec.filename


def test_pair_loads_offline_by_its_hub_ids(cache: Path, pair):
    base, student = get_spec("sd35-medium"), get_spec("dp-dmd")
    assert (base.repo_id, student.repo_id) == ("stabilityai/stable-diffusion-3.5-medium", "TianheWu/dpdmd")
    assert (student.storage, student.filename) == ("unet_file", "DPDMD-SD35M-4NFE-natural.pt")
    assert student.fetch_command == "hf download TianheWu/dpdmd DPDMD-SD35M-4NFE-natural.pt"
    assert is_cached(base, cache) and is_cached(student, cache)
    # the base repo's transformer is one file, as Medium's is (Large's is sharded)
    assert (_snapshot(cache, base.repo_id) / "transformer" / "diffusion_pytorch_model.safetensors").is_file()

    assert type(pair.pipeline).__name__ == "StableDiffusion3Pipeline" and pair.family.name == "sd3"
    assert type(pair.student_network).__name__ == "SD3Transformer2DModel"
    # Medium's MMDiT-X shape: the student is built from the base's config, dual attention and QK norm included
    for network in (pair.base_network, pair.student_network):
        assert network.config.dual_attention_layers and network.config.qk_norm == "rms_norm"
    # a bare state dict brings no scheduler: the student samples on its base's (flow matching, shift 3)
    for role in ("base", "student"):
        scheduler = pair.make_scheduler(role)
        assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and scheduler.config.shift == 3.0
    # one VAE and one set of text encoders (the base's); the student pipeline shares them
    student_pipe = pair.to_diffusers("student")
    assert student_pipe.transformer is pair.student_network
    for part in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        assert getattr(student_pipe, part) is getattr(pair.pipeline, part), part


def test_the_students_weights_are_the_pt_files_tensors_exactly(cache: Path, pair):
    # what the repo ships: a torch.save'd flat dict of bf16 tensors in diffusers' key layout (no "model." prefix)
    written = torch.load(_student_file(cache), map_location="cpu", weights_only=True)
    assert {value.dtype for value in written.values()} == {torch.bfloat16}
    loaded = pair.student_network.state_dict()
    assert set(loaded) == set(written)
    for key, value in written.items():
        torch.testing.assert_close(loaded[key], value.float(), rtol=0, atol=0, msg=key)
    assert not torch.equal(
        loaded["pos_embed.proj.weight"], pair.base_network.state_dict()["pos_embed.proj.weight"]
    )


class _RunsCode:
    """An object whose unpickling would call :func:`_leave_mark`: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_leave_mark, (str(self.marker),))


def _leave_mark(marker: str) -> None:
    Path(marker).write_text("unpickling ran code")


def test_a_pt_that_needs_pickle_code_is_refused_without_running_it(cache: Path, pair, tmp_path: Path):
    marker = tmp_path / "ran"
    bad = tmp_path / "DPDMD-SD35M-4NFE-natural.pt"
    state = {k: v.to(torch.bfloat16) for k, v in pair.student_network.state_dict().items()}
    torch.save({**state, "payload": _RunsCode(marker)}, bad)
    with pytest.raises(ValueError) as refused:
        load_pair(
            "sd35-medium", "dp-dmd", cache_dir=cache, student_path=bad, device="cpu", dtype=torch.float32
        )
    message = str(refused.value)
    assert str(bad) in message and "weights_only=True" in message and ".safetensors" in message
    assert "weights_only=False" not in message  # torch's own advice would run the file's code
    assert not marker.exists()


def test_a_state_dict_of_another_architecture_is_refused(cache: Path, tmp_path: Path):
    # a plain SD3 (Large-shaped) transformer lacks Medium's dual attention and QK norm
    from conceptspace.models.tiny import tiny_sd3_transformer

    other = tmp_path / "sd3.pt"
    torch.save(tiny_sd3_transformer(5).state_dict(), other)
    with pytest.raises(IncompatibleModelsError, match="missing keys"):
        load_pair("sd35-medium", "dp-dmd", cache_dir=cache, student_path=other, device="cpu")


def test_it_pairs_only_with_sd35_medium_and_names_the_missing_file(cache: Path, tmp_path: Path):
    with pytest.raises(IncompatibleModelsError, match="dp-dmd"):
        load_pair("sd35-large", "dp-dmd", device="cpu")
    base_only = tmp_path / "base-only"
    base_only.mkdir()
    repo = _repo(cache, "stabilityai/stable-diffusion-3.5-medium")
    shutil.copytree(repo, base_only / repo.name, symlinks=True)
    with pytest.raises(ModelNotFoundError, match="hf download TianheWu/dpdmd DPDMD-SD35M-4NFE-natural.pt"):
        load_pair("sd35-medium", "dp-dmd", cache_dir=base_only, device="cpu")


def _diffusers_images(pair, role: str) -> np.ndarray:
    spec = pair.spec(role)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    return pair.to_diffusers(role)(
        PROMPT,
        num_images_per_prompt=len(SEEDS),
        num_inference_steps=spec.num_inference_steps,
        guidance_scale=spec.guidance_scale,
        height=SIZE,
        width=SIZE,
        generator=generators,
        output_type="np",
    ).images


@pytest.mark.parametrize(
    ("role", "regime", "defaults"),
    [("student", Distilled(), (4, 1.0)), ("base", Base(), (40, 4.5))],
    ids=["distilled", "base"],
)
def test_each_regime_reproduces_stable_diffusion_3_pipeline(pair, role, regime, defaults):
    # the regimes' defaults are the registry's: DP-DMD's README (4 steps, guidance 1 = one pass), Medium's card
    spec = pair.spec(role)
    assert (spec.num_inference_steps, spec.guidance_scale) == defaults
    reference = _diffusers_images(pair, role)
    ours = sample(pair, PROMPT, regime, SEEDS, height=SIZE, width=SIZE, output_type="np", progress=False)
    assert len(ours.schedule) == spec.num_inference_steps
    assert np.abs(ours.images - reference).max() <= 1e-4


def test_the_hybrid_runs_the_base_first_then_the_student(pair):
    expected = [("base", 1000), ("distilled", 858), ("distilled", 602), ("distilled", 9)]
    assert [(s.model, s.timestep) for s in schedule_of(Hybrid(k=1), pair)] == expected
    result = sample(
        pair, PROMPT, Hybrid(k=1), [0], height=SIZE, width=SIZE, output_type="latent", progress=False
    )
    assert [(s.model, s.timestep) for s in result.schedule] == expected
    assert torch.isfinite(result.latents).all()
