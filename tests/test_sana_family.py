"""SANA-Sprint and its teacher: the pair loads offline by its hub ids from tiny weights in the real repos' layouts, the
base regime equals diffusers' ``SanaPipeline`` and the distilled one ``SanaSprintPipeline`` (its ``SCMScheduler``
steps sampled here as the stochastic flow schedule they equal), x̂0 is recorded at every step, and the hybrid hands
the teacher's flow latent to the student at the student's own noise level.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from family_checks import check_x0_recorded

from conceptspace import Base, Distilled, Hybrid, load_pair, sample, schedule_of
from conceptspace.models import get_spec, is_cached
from conceptspace.models.families.sana import INTERMEDIATE_TIMESTEP, MAX_TIMESTEP, sprint_sigmas
from conceptspace.testing import write_hub_cache

PROMPT = "a red circle"
SEEDS = [0, 1]
SIZE = 64  # the tiny networks' size; the registry's 1024 is the real models'


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache with only this pair's two repos (the session-wide one writes every repo: slower)."""
    return write_hub_cache(tmp_path_factory.mktemp("hf-cache-sana"), ["sana-teacher", "sana-sprint"])


@pytest.fixture(scope="module")
def pair(cache: Path):
    return load_pair("sana-teacher", "sana-sprint", cache_dir=cache, device="cpu", dtype=torch.float32)


def test_pair_loads_offline_by_its_hub_ids(cache: Path, pair):
    base, student = get_spec("sana-teacher"), get_spec("sana-sprint")
    assert base.repo_id == "Efficient-Large-Model/SANA_Sprint_1.6B_1024px_teacher_diffusers"
    assert student.repo_id == "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers"
    assert is_cached(base, cache) and is_cached(student, cache)
    assert type(pair.pipeline).__name__ == "SanaPipeline" and pair.family.name == "sana"
    assert type(pair.pipeline.tokenizer).__name__ in ("GemmaTokenizer", "GemmaTokenizerFast")
    assert pair.student_network.config.guidance_embeds and not pair.base_network.config.guidance_embeds
    assert (
        pair.base_network.config.timestep_scale == 0.001
    )  # the teacher's dense timestep embedding: it sees σ
    # the student repo ships SCMScheduler's config; it is sampled as the flow schedule SCM's steps equal
    assert pair.student_scheduler_config["prediction_type"] == "trigflow"
    student_scheduler = pair.make_scheduler("student")
    assert type(student_scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert student_scheduler.config.stochastic_sampling and student_scheduler.config.shift == 1.0
    base_scheduler = pair.make_scheduler("base")
    assert (
        type(base_scheduler).__name__ == "DPMSolverMultistepScheduler"
        and base_scheduler.config.use_flow_sigmas
    )
    student_pipe = pair.to_diffusers("student")
    for part in ("vae", "text_encoder", "tokenizer"):
        assert getattr(student_pipe, part) is getattr(pair.pipeline, part), part


def test_sprint_defaults_are_the_pipelines_and_its_sigmas_the_scm_angles():
    from diffusers import SanaSprintPipeline

    defaults = inspect.signature(SanaSprintPipeline.__call__).parameters
    assert defaults["max_timesteps"].default == MAX_TIMESTEP
    assert defaults["intermediate_timesteps"].default == INTERMEDIATE_TIMESTEP
    assert defaults["num_inference_steps"].default == get_spec("sana-sprint").num_inference_steps == 2
    assert defaults["guidance_scale"].default == get_spec("sana-sprint").guidance_scale == 4.5
    for steps, angles in (
        (2, [MAX_TIMESTEP, INTERMEDIATE_TIMESTEP]),
        (4, [MAX_TIMESTEP * k / 4 for k in (4, 3, 2, 1)]),
    ):
        expected = [math.sin(s) / (math.sin(s) + math.cos(s)) for s in angles]
        assert sprint_sigmas(steps) == pytest.approx(expected, rel=1e-6)


def _reference(pair, role: str) -> np.ndarray:
    """What diffusers' own pipeline makes: ``SanaPipeline`` for the teacher, ``SanaSprintPipeline`` with the
    student repo's ``SCMScheduler`` for the student (no resolution binning: the tiny sizes are in no bin)."""
    from diffusers import SanaSprintPipeline, SCMScheduler

    spec = pair.spec(role)
    kwargs = dict(num_inference_steps=spec.num_inference_steps, guidance_scale=spec.guidance_scale)
    if role == "base":
        pipe = pair.to_diffusers("base")
    else:
        components = {k: getattr(pair.pipeline, k) for k in ("tokenizer", "text_encoder", "vae")}
        scheduler = SCMScheduler.from_config(pair.student_scheduler_config)
        pipe = SanaSprintPipeline(**components, transformer=pair.student_network, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    return pipe(
        PROMPT, num_images_per_prompt=len(SEEDS), height=SIZE, width=SIZE, generator=generators,
        use_resolution_binning=False, output_type="np", **kwargs,
    ).images  # fmt: skip


@pytest.mark.parametrize(
    ("role", "regime", "defaults"),
    [("student", Distilled(), (2, 4.5)), ("base", Base(), (20, 4.5))],
    ids=["distilled-sana-sprint-pipeline", "base-sana-pipeline"],
)
def test_each_regime_reproduces_diffusers_own_pipeline(pair, role, regime, defaults):
    spec = pair.spec(role)
    assert (spec.num_inference_steps, spec.guidance_scale) == defaults
    reference = _reference(pair, role)
    ours = sample(pair, PROMPT, regime, SEEDS, height=SIZE, width=SIZE, output_type="np", progress=False)
    assert len(ours.schedule) == spec.num_inference_steps
    assert np.abs(ours.images - reference).max() <= 1e-4


@pytest.mark.parametrize("regime", [Distilled(), Base(steps=4)], ids=["distilled", "base"])
def test_x0_is_recorded_every_step_and_the_last_is_the_output(pair, regime):
    check_x0_recorded(pair, regime, PROMPT, height=SIZE, width=SIZE)


def test_the_hybrid_runs_the_teacher_first_on_the_students_timesteps(pair):
    expected = [("base", 1000), ("distilled", 783)]
    assert [(s.model, s.timestep) for s in schedule_of(Hybrid(k=1), pair)] == expected
    result = sample(
        pair, PROMPT, Hybrid(k=1), [0], height=SIZE, width=SIZE, output_type="latent", progress=False
    )
    assert [(s.model, s.timestep) for s in result.schedule] == expected
    assert torch.isfinite(result.latents).all()


def test_the_hand_off_from_the_teachers_own_schedule_lands_at_the_students_noise_level(pair):
    # the teacher's flow DPM-Solver runs down to the student's second σ; the student continues from there
    regime = Hybrid(k=1, base_schedule="own", base_steps=8)
    steps = schedule_of(regime, pair)
    assert steps[-1] == type(steps[-1])(len(steps) - 1, 783, "distilled")
    assert all(s.model == "base" and s.timestep > 783 for s in steps[:-1])
    seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    student, sigma = pair.student_network, sprint_sigmas(2)[1]

    def spy(module, args, kwargs):
        seen.append((kwargs["timestep"].clone(), args[0].clone()))

    handle = student.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        result = sample(
            pair, PROMPT, regime, [0], height=SIZE, width=SIZE, output_type="latent", progress=False
        )
    finally:
        handle.remove()
    assert torch.isfinite(result.latents).all()
    ((timestep, latent),) = seen
    assert float(timestep[0]) == pytest.approx(sigma, rel=1e-6)  # the student is called at its own σ
    # a flow latent at σ: (1 − σ)·x̂0 + σ·ε̂ with unit-variance noise dominating at σ ≈ 0.78
    assert 0.5 < float(latent.std()) < 1.5


def test_the_builtin_tiny_pair_samples_every_regime():
    pair = load_pair("tiny-sana", "tiny-sana-sprint", device="cpu", dtype=torch.float32)
    for regime in (Base(steps=2), Distilled(), Hybrid(k=1)):
        result = sample(pair, PROMPT, regime, [0], output_type="latent", progress=False)
        assert torch.isfinite(result.latents).all()
