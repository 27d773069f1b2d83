"""HiDream-I1-Full and its students Fast and Dev: the pair loads offline by its hub ids from tiny weights in the real
repos' layouts, with the Llama encoder read from its own repo (a clear error naming what to fetch when it is
missing), the base regime equals diffusers' ``HiDreamImagePipeline`` (UniPC on flow sigmas, CFG) and the distilled one
the same pipeline with the students' ``FlowMatchLCMScheduler``, x̂0 is recorded at every step, and the hybrid runs
the base first.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from family_checks import check_x0_recorded

from conceptspace import Base, Distilled, Hybrid, load_pair, sample, schedule_of
from conceptspace.models import ModelNotFoundError, get_spec, is_cached
from conceptspace.models.families.hidream import LLAMA_ENV, LLAMA_REPO_ID, MAX_SEQUENCE_LENGTH
from conceptspace.models.loading import with_student
from conceptspace.models.tiny_hidream import write_tiny_llama_repo
from conceptspace.testing import write_hub_cache

PROMPT = "a red circle"
SEEDS = [0, 1]
SIZE = 64  # the tiny networks' size; the registry's 1024 is the real models'
NAMES = ["hidream-i1-full", "hidream-i1-fast", "hidream-i1-dev"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache with this family's three repos and the Llama encoder's (the session-wide one writes every repo)."""
    return write_hub_cache(tmp_path_factory.mktemp("hf-cache-hidream"), NAMES)


@pytest.fixture(scope="module")
def pair(cache: Path):
    return load_pair("hidream-i1-full", "hidream-i1-fast", cache_dir=cache, device="cpu", dtype=torch.float32)


def test_pair_loads_offline_by_its_hub_ids_with_llama_from_its_own_repo(cache: Path, pair):
    for name, repo in zip(NAMES, ("Full", "Fast", "Dev"), strict=True):
        assert get_spec(name).repo_id == f"HiDream-ai/HiDream-I1-{repo}" and is_cached(get_spec(name), cache)
    assert type(pair.pipeline).__name__ == "HiDreamImagePipeline" and pair.family.name == "hidream"
    # the HiDream repo names no Llama encoder; it came from meta-llama's repo in the same cache
    assert (cache / f"models--{LLAMA_REPO_ID.replace('/', '--')}").is_dir()
    encoder = pair.pipeline.text_encoder_4
    assert type(encoder).__name__ == "LlamaForCausalLM" and encoder.config.output_hidden_states
    assert encoder.config._name_or_path == LLAMA_REPO_ID
    assert (
        pair.pipeline.tokenizer_4.pad_token == pair.pipeline.tokenizer_4.eos_token
    )  # the pipeline's padding
    base_scheduler, student_scheduler = pair.make_scheduler("base"), pair.make_scheduler("student")
    assert type(base_scheduler).__name__ == "UniPCMultistepScheduler"
    assert base_scheduler.config.use_flow_sigmas and base_scheduler.config.flow_shift == 3.0
    assert type(student_scheduler).__name__ == "FlowMatchLCMScheduler"
    assert student_scheduler.config.shift == 3.0 and not student_scheduler.config.use_dynamic_shifting
    assert pair.prediction_type("base") == pair.prediction_type("student") == "flow_prediction"
    student_pipe = pair.to_diffusers("student")
    for part in ("vae", "text_encoder", "text_encoder_3", "text_encoder_4", "tokenizer_4"):
        assert getattr(student_pipe, part) is getattr(pair.pipeline, part), part


def test_a_missing_llama_says_what_to_fetch_and_the_environment_can_point_elsewhere(tmp_path, monkeypatch):
    cache = write_hub_cache(tmp_path / "cache", ["hidream-i1-full"])
    shutil.rmtree(cache / f"models--{LLAMA_REPO_ID.replace('/', '--')}")
    monkeypatch.delenv(LLAMA_ENV, raising=False)
    with pytest.raises(ModelNotFoundError) as error:
        load_pair("hidream-i1-full", cache_dir=cache, device="cpu")
    message = str(error.value)
    assert f"hf download {LLAMA_REPO_ID} --cache-dir {cache}" in message and LLAMA_ENV in message
    assert "Llama-3.1-8B-Instruct" in message and "licence" in message
    monkeypatch.setenv(LLAMA_ENV, str(write_tiny_llama_repo(tmp_path / "llama")))
    pair = load_pair("hidream-i1-full", cache_dir=cache, device="cpu")
    assert type(pair.pipeline.text_encoder_4).__name__ == "LlamaForCausalLM"


def test_defaults_are_the_model_cards_and_the_pipelines():
    from diffusers import HiDreamImagePipeline

    defaults = inspect.signature(HiDreamImagePipeline.__call__).parameters
    full, fast, dev = (get_spec(name) for name in NAMES)
    assert (full.num_inference_steps, full.guidance_scale) == (50, 5.0)
    assert (defaults["num_inference_steps"].default, defaults["guidance_scale"].default) == (50, 5.0)
    assert defaults["max_sequence_length"].default == MAX_SEQUENCE_LENGTH
    assert (fast.num_inference_steps, fast.guidance_scale, dict(fast.scheduler_overrides)["shift"]) == (
        16,
        0.0,
        3.0,
    )
    assert (dev.num_inference_steps, dev.guidance_scale, dict(dev.scheduler_overrides)["shift"]) == (
        28,
        0.0,
        6.0,
    )
    assert fast.scheduler == dev.scheduler == "FlowMatchLCMScheduler" and full.resolution == 1024


def _seeded_steps(scheduler, generators: list[torch.Generator]) -> None:
    """``HiDreamImagePipeline`` calls ``scheduler.step`` without its generator (the LCM steps' fresh noise comes from
    torch's global RNG); the reference's steps get the samples' own generators, as conceptspace's do."""
    step = scheduler.step
    if "generator" in inspect.signature(step).parameters:  # UniPC's steps draw no noise
        scheduler.step = lambda *args, **kwargs: step(*args, generator=generators, **kwargs)


def _reference(pair, role: str) -> np.ndarray:
    """What ``HiDreamImagePipeline`` makes with the pair's components and ``role``'s scheduler, at the tiny size (its
    area rescaling reads ``default_sample_size``: set to the tiny size, it keeps 64×64 as asked)."""
    spec = pair.spec(role)
    pipe = pair.to_diffusers(role)
    pipe.default_sample_size = SIZE // pipe.vae_scale_factor
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    _seeded_steps(pipe.scheduler, generators)
    return pipe(
        PROMPT, num_images_per_prompt=len(SEEDS), height=SIZE, width=SIZE, generator=generators, output_type="np",
        num_inference_steps=spec.num_inference_steps, guidance_scale=spec.guidance_scale,
    ).images  # fmt: skip


@pytest.mark.parametrize(
    ("student", "role", "regime"),
    [
        (None, "base", Base()),
        ("hidream-i1-fast", "student", Distilled()),
        ("hidream-i1-dev", "student", Distilled()),
    ],
    ids=["base-full-unipc-cfg", "distilled-fast-flow-lcm", "distilled-dev-flow-lcm"],
)
def test_each_regime_reproduces_diffusers_own_pipeline(cache, pair, student, role, regime):
    if student is not None and student != pair.student.name:
        pair = with_student(pair, student, cache_dir=cache)
    spec = pair.spec(role)
    reference = _reference(pair, role)
    ours = sample(pair, PROMPT, regime, SEEDS, height=SIZE, width=SIZE, output_type="np", progress=False)
    assert len(ours.schedule) == spec.num_inference_steps
    assert np.abs(ours.images - reference).max() <= 1e-4


@pytest.mark.parametrize("regime", [Distilled(), Base(steps=4)], ids=["distilled", "base"])
def test_x0_is_recorded_every_step_and_the_last_is_the_output(pair, regime):
    check_x0_recorded(pair, regime, PROMPT, height=SIZE, width=SIZE)


def test_the_hybrid_runs_the_base_first_then_the_student(pair):
    student_steps = [s.timestep for s in schedule_of(Distilled(), pair)]
    expected = [("base", student_steps[0])] + [("distilled", t) for t in student_steps[1:]]
    assert [(s.model, s.timestep) for s in schedule_of(Hybrid(k=1), pair)] == expected
    result = sample(
        pair, PROMPT, Hybrid(k=1), [0], height=SIZE, width=SIZE, output_type="latent", progress=False
    )
    assert [(s.model, s.timestep) for s in result.schedule] == expected
    assert torch.isfinite(result.latents).all()
    # the base on its own UniPC schedule down to the student's second step, then the student
    own = sample(
        pair, PROMPT, Hybrid(k=1, base_schedule="own", base_steps=8), [0], height=SIZE, width=SIZE,
        output_type="latent", progress=False,
    )  # fmt: skip
    models = [s.model for s in own.schedule]
    assert models[0] == "base" and models[-1] == "distilled" and torch.isfinite(own.latents).all()


def test_the_builtin_tiny_pair_samples_every_regime():
    pair = load_pair("tiny-hidream", "tiny-hidream-fast", device="cpu", dtype=torch.float32)
    assert type(pair.make_scheduler("student")).__name__ == "FlowMatchLCMScheduler"
    for regime in (Base(steps=2), Distilled(), Hybrid(k=1)):
        result = sample(pair, PROMPT, regime, [0], output_type="latent", progress=False)
        assert torch.isfinite(result.latents).all()


def test_the_memory_plan_counts_llama_from_its_own_repo(cache: Path, pair):
    """The HiDream repo ships no fourth text encoder: a plan counts Llama's parameters from its own cached repo,
    as many as the loaded pipeline's text_encoder_4 holds."""
    from conceptspace.models.registry import get_spec
    from conceptspace.models.sizes import component_parameters

    counts, source = component_parameters(get_spec("hidream-i1-full"), cache_dir=cache)
    llama = pair.pipeline.text_encoder_4
    assert source == "files" and counts["text_encoder_4"] == sum(p.numel() for p in llama.parameters())
    assert counts["transformer"] == sum(p.numel() for p in pair.pipeline.transformer.parameters())


def test_the_memory_plan_reads_llama_where_the_environment_points(cache: Path, tmp_path, monkeypatch):
    """CONCEPTSPACE_HIDREAM_LLAMA names a local folder: the plan counts the Llama there, as loading reads it (a
    folder holding one shard fewer than the cached repo: a smaller count, the folder's own)."""
    from conceptspace.models.registry import get_spec
    from conceptspace.models.sizes import component_parameters, safetensors_parameters
    from conceptspace.models.tiny_hidream import write_tiny_llama_repo

    spec = get_spec("hidream-i1-full")
    cached = component_parameters(spec, cache_dir=cache)[0]["text_encoder_4"]
    folder = write_tiny_llama_repo(tmp_path / "llama")
    sorted(folder.glob("*.safetensors"))[-1].unlink()
    monkeypatch.setenv("CONCEPTSPACE_HIDREAM_LLAMA", str(folder))
    counted = component_parameters(spec, cache_dir=cache)[0]["text_encoder_4"]
    assert counted == sum(safetensors_parameters(f) for f in folder.glob("*.safetensors")) < cached
    monkeypatch.setenv("CONCEPTSPACE_HIDREAM_LLAMA", str(tmp_path / "nowhere"))  # not a folder, not a repo
    assert "text_encoder_4" not in component_parameters(spec, cache_dir=cache)[0]
