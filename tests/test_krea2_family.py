"""Krea 2 Raw and Krea 2 Turbo (a single-stream MMDiT over packed flow latents, stacked Qwen3-VL hidden states, the
Qwen-Image VAE) on tiny random weights in the real repos' layouts: the pair loads offline by its hub ids, the base
regime equals diffusers' ``Krea2Pipeline`` and the distilled one ``Krea2Pipeline`` with Turbo's ``is_distilled`` flag
on the Turbo repo's own scheduler config (the registry's fixed-shift override standing in for the flag), Krea's
``cond + s·(cond − uncond)`` guidance, x̂0 = x − σ·v at every step, the hybrid's hand-off, and every regime of the
builtin tiny pair.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from family_checks import check_flow_x0, check_hybrid_hand_off, check_x0_recorded

from conceptspace import Base, Distilled, Hybrid, load_pair, sample, schedule_of
from conceptspace.models import get_spec, is_cached
from conceptspace.models.families.flux import unpack
from conceptspace.models.families.krea2 import MAX_SEQUENCE_LENGTH
from conceptspace.models.pairs.krea2 import TURBO_MU
from conceptspace.models.tiny_krea2 import KREA2_SCHEDULER
from conceptspace.schedules import FLOW
from conceptspace.testing import write_hub_cache

PROMPT = "a red circle"
SEEDS = [0, 1]
SIZE = 64  # the tiny networks' size; the registry's 1024 is the real models'
NAMES = ("krea2-raw", "krea2-turbo")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache with only this pair's two repos (the session-wide one writes every repo: slower)."""
    return write_hub_cache(tmp_path_factory.mktemp("hf-cache-krea2"), list(NAMES))


@pytest.fixture(scope="module")
def pair(cache: Path):
    return load_pair(*NAMES, cache_dir=cache, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny():
    return load_pair("tiny-krea2", "tiny-krea2-turbo", device="cpu")


def _model_index(cache: Path, repo_id: str) -> dict:
    snapshot = next((cache / ("models--" + repo_id.replace("/", "--")) / "snapshots").iterdir())
    return json.loads((snapshot / "model_index.json").read_text())


def test_pair_loads_offline_by_its_hub_ids(cache: Path, pair):
    base, student = get_spec("krea2-raw"), get_spec("krea2-turbo")
    assert (base.repo_id, student.repo_id) == ("krea/Krea-2-Raw", "krea/Krea-2-Turbo")
    assert is_cached(base, cache) and is_cached(student, cache)
    assert type(pair.pipeline).__name__ == "Krea2Pipeline" and pair.family.name == "krea2"
    assert type(pair.pipeline.tokenizer).__name__ == "Qwen2Tokenizer"
    assert type(pair.pipeline.text_encoder).__name__ == "Qwen3VLModel"
    # one pipeline class for both; only Turbo's model_index.json sets is_distilled, which a student's load never reads
    assert not _model_index(cache, base.repo_id)["is_distilled"]
    assert _model_index(cache, student.repo_id)["is_distilled"]
    assert not torch.equal(
        pair.student_network.transformer_blocks[0].attn.to_q.weight,
        pair.base_network.transformer_blocks[0].attn.to_q.weight,
    )
    # the student repo's scheduler is Raw's dynamic shift; the registry pins Turbo's mu in its place
    assert pair.student_scheduler_config["use_dynamic_shifting"]
    scheduler = pair.make_scheduler("student")
    assert scheduler.config.base_shift == scheduler.config.max_shift == TURBO_MU
    student_pipe = pair.to_diffusers("student")
    for part in ("vae", "text_encoder", "tokenizer"):
        assert getattr(student_pipe, part) is getattr(pair.pipeline, part), part


def test_the_defaults_are_the_official_ones_and_turbo_shifts_by_a_constant(pair):
    from diffusers.pipelines.krea2.pipeline_krea2 import calculate_shift

    raw, turbo = get_spec("krea2-raw"), get_spec("krea2-turbo")
    assert (raw.num_inference_steps, raw.guidance_scale) == (52, 3.5)  # krea-ai/krea-2 README
    assert (turbo.num_inference_steps, turbo.guidance_scale) == (8, 0.0)
    assert raw.resolution == turbo.resolution == 1024
    assert {k: v for k, v in pair.base_scheduler_config.items() if k in KREA2_SCHEDULER} == KREA2_SCHEDULER
    family = pair.family
    for latent in ((8, 8), (128, 128), (256, 256)):
        tokens = latent[0] * latent[1] // 4
        raw_kw = family.timestep_kwargs(pair.make_scheduler("base"), pair.base_network, 52, latent)
        turbo_kw = family.timestep_kwargs(pair.make_scheduler("student"), pair.student_network, 8, latent)
        assert raw_kw["mu"] == pytest.approx(calculate_shift(tokens, 256, 6400, 0.5, 1.15), rel=1e-12)
        assert turbo_kw["mu"] == pytest.approx(TURBO_MU, rel=1e-12)
        np.testing.assert_allclose(turbo_kw["sigmas"], np.linspace(1.0, 1 / 8, 8))


def _reference(pair, role: str, steps: int, guidance: float) -> np.ndarray:
    """What diffusers' own pipeline makes: Raw's ``Krea2Pipeline``, or Turbo's — ``is_distilled`` on the student repo's
    scheduler config as it ships (no registry override), with the shared text encoder and VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline

    if role == "base":
        pipe = pair.to_diffusers("base")
    else:
        components = {k: getattr(pair.pipeline, k) for k in ("tokenizer", "text_encoder", "vae")}
        pipe = Krea2Pipeline(
            **components,
            transformer=pair.student_network,
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(pair.student_scheduler_config),
            text_encoder_select_layers=pair.pipeline.config.text_encoder_select_layers,
            is_distilled=True,
        )
        pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    return pipe(
        PROMPT, num_images_per_prompt=len(SEEDS), height=SIZE, width=SIZE, generator=generators,
        num_inference_steps=steps, guidance_scale=guidance, max_sequence_length=MAX_SEQUENCE_LENGTH,
        output_type="np",
    ).images  # fmt: skip


@pytest.mark.parametrize(
    ("role", "regime"), [("base", Base()), ("student", Distilled())], ids=["base-raw", "distilled-turbo"]
)
def test_each_regime_reproduces_diffusers_own_pipeline(pair, role, regime):
    assert pair.prediction_type(role) == FLOW
    spec = pair.spec(role)
    reference = _reference(pair, role, spec.num_inference_steps, spec.guidance_scale)
    ours = sample(pair, PROMPT, regime, SEEDS, height=SIZE, width=SIZE, output_type="np", progress=False)
    assert len(ours.schedule) == spec.num_inference_steps
    assert np.abs(ours.images - reference).max() <= 1e-4


def test_krea_guidance_runs_cfg_from_any_positive_scale(pair):
    # Krea's scale s is cond + s·(cond − uncond): s = 0.5 is CFG (two passes) where diffusers' usual w = 0.5 is not
    from conceptspace.sampling import make_denoiser

    assert make_denoiser(pair, "base", 0.5).uses_cfg and not make_denoiser(pair, "base", 0.0).uses_cfg
    assert pair.family.cfg_weight(0.5) == 1.5 and pair.family.single_pass_scale == 0.0
    reference = _reference(pair, "base", 4, 0.5)
    ours = sample(
        pair, PROMPT, Base(steps=4, guidance_scale=0.5), SEEDS, height=SIZE, width=SIZE, output_type="np",
        progress=False,
    )  # fmt: skip
    assert np.abs(ours.images - reference).max() <= 1e-4


def _recording(network, calls):
    """Each call's unpacked input, scheduler timestep and unpacked velocity."""

    def hook(module, args, kwargs, output):
        side = 2 * math.isqrt(kwargs["hidden_states"].shape[1])
        x = unpack(kwargs["hidden_states"], side, side).detach().clone()
        calls.append((x, 1000 * float(kwargs["timestep"][0]), unpack(output[0], side, side)))

    return network.register_forward_hook(hook, with_kwargs=True)


def test_hybrid_runs_the_base_once_at_the_students_first_sigma(tiny):
    check_hybrid_hand_off(tiny, _recording, PROMPT, SEEDS)


def test_x0_is_the_latent_minus_sigma_times_the_velocity(tiny):
    check_flow_x0(tiny, _recording, PROMPT, SEEDS)


@pytest.mark.parametrize("regime", [Distilled(), Base(steps=4)], ids=["distilled", "base"])
def test_x0_is_recorded_every_step_and_the_last_is_the_output(tiny, regime):
    check_x0_recorded(tiny, regime, PROMPT)


def test_the_hybrid_hands_the_bases_own_schedule_to_the_student(tiny):
    # Raw's schedule (mu from the tokens: 0.47 at 64 px) runs down to Turbo's second σ (mu 1.15); the student goes on
    regime = Hybrid(k=1, base_schedule="own", base_steps=8)
    steps = schedule_of(regime, tiny)
    student = [
        s.timestep
        for s in sample(tiny, PROMPT, Distilled(), [0], output_type="latent", progress=False).schedule
    ]
    assert [s.model for s in steps] == ["base"] * (len(steps) - 3) + ["distilled"] * 3
    assert all(s.timestep > student[1] for s in steps if s.model == "base")
    assert [s.timestep for s in steps if s.model == "distilled"] == student[1:]
    result = sample(tiny, PROMPT, regime, [0], output_type="latent", progress=False)
    assert torch.isfinite(result.latents).all()


def test_the_builtin_tiny_pair_samples_every_regime(tiny):
    for regime in (Base(steps=2), Distilled(), Hybrid(k=1)):
        result = sample(tiny, PROMPT, regime, [0], output_type="latent", progress=False)
        assert torch.isfinite(result.latents).all()
        assert result.latents.shape == (1, 4, SIZE // 8, SIZE // 8)
