"""FLUX.2 [klein] Base ↔ FLUX.2 [klein] (4B and 9B) on tiny random weights in the real repos' layouts: the pairs
load offline by their hub ids, the base regime equals diffusers' ``Flux2KleinPipeline`` (true CFG on the empty
prompt) and the distilled one ``Flux2KleinPipeline`` with ``is_distilled`` (one pass, the scale ignored), the
sampler's latents are the pipeline's patchified latents, x̂0 is recorded at every step, and the hybrid runs the
base first."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import snapshot_folder
from family_checks import check_flow_x0, check_hybrid_hand_off, check_x0_recorded

from conceptspace import Base, Distilled, Hybrid, load_pair, sample, schedule_of
from conceptspace.models import get_spec, is_cached
from conceptspace.models.families.flux2 import (
    MAX_SEQUENCE_LENGTH,
    TEXT_ENCODER_OUT_LAYERS,
    empirical_mu,
    from_tokens,
    patchified,
    to_tokens,
)
from conceptspace.sampling import make_denoiser
from conceptspace.testing import write_hub_cache

PROMPT = "a red circle"
SEEDS = [0, 1]
SIZE = 64  # the tiny networks' size; the registry's 1024 is the real models'
PAIRS = {"4b": ("flux2-klein-base-4b", "flux2-klein-4b"), "9b": ("flux2-klein-base-9b", "flux2-klein-9b")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache with only the four [klein] repos (the session-wide one writes every repo: slower)."""
    names = [name for pair in PAIRS.values() for name in pair]
    return write_hub_cache(tmp_path_factory.mktemp("hf-cache-flux2"), names)


@pytest.fixture(scope="module")
def pair(cache: Path):
    return load_pair(*PAIRS["4b"], cache_dir=cache, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny():
    """The builtin tiny pair: its registry resolution (64) is the tiny networks' own, for checks that sample at the
    pair's default size (the hub pair's is the real models' 1024)."""
    return load_pair("tiny-flux2-klein", "tiny-flux2-klein-distilled", device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("size", ["4b", "9b"])
def test_pair_loads_offline_by_its_hub_ids(cache: Path, size: str):
    base, student = (get_spec(name) for name in PAIRS[size])
    assert base.repo_id == f"black-forest-labs/FLUX.2-klein-base-{size.upper()}"
    assert student.repo_id == f"black-forest-labs/FLUX.2-klein-{size.upper()}"
    assert is_cached(base, cache) and is_cached(student, cache)
    distilled = json.loads((snapshot_folder(cache, student.repo_id) / "model_index.json").read_text())
    undistilled = json.loads((snapshot_folder(cache, base.repo_id) / "model_index.json").read_text())
    assert distilled["_class_name"] == "Flux2KleinPipeline" and distilled["is_distilled"] is True
    assert undistilled.get("is_distilled", False) is False
    assert distilled["text_encoder"][1] == "Qwen3ForCausalLM"

    loaded = load_pair(base.name, student.name, cache_dir=cache, device="cpu", dtype=torch.float32)
    assert type(loaded.pipeline).__name__ == "Flux2KleinPipeline" and loaded.family.name == "flux2"
    assert type(loaded.pipeline.text_encoder).__name__ == "Qwen3ForCausalLM"
    assert loaded.pipeline.tokenizer.chat_template
    assert (
        not loaded.base_network.config.guidance_embeds and not loaded.student_network.config.guidance_embeds
    )
    assert loaded.student_network is not loaded.base_network
    student_pipe = loaded.to_diffusers("student")
    for part in ("vae", "text_encoder", "tokenizer"):
        assert getattr(student_pipe, part) is getattr(loaded.pipeline, part), part


def test_defaults_are_the_pipelines_and_the_model_cards():
    from diffusers import Flux2KleinPipeline

    defaults = inspect.signature(Flux2KleinPipeline.__call__).parameters
    assert defaults["max_sequence_length"].default == MAX_SEQUENCE_LENGTH
    assert tuple(defaults["text_encoder_out_layers"].default) == TEXT_ENCODER_OUT_LAYERS
    # the bases: Flux2KleinPipeline's own defaults (50 steps, CFG 4), as BFL's inference code has them
    assert defaults["num_inference_steps"].default == 50 and defaults["guidance_scale"].default == 4.0
    for base, student in PAIRS.values():
        assert (get_spec(base).num_inference_steps, get_spec(base).guidance_scale) == (50, 4.0)
        assert (get_spec(student).num_inference_steps, get_spec(student).guidance_scale) == (4, 1.0)
        assert get_spec(base).resolution == get_spec(student).resolution == 1024


def _reference(pair, role: str, **kwargs) -> np.ndarray:
    """What diffusers' own pipeline makes: ``Flux2KleinPipeline`` with the base's transformer, or with the student's,
    its scheduler config and ``is_distilled`` (as the student repo's model_index.json has it), sharing the pair's text
    encoder and VAE."""
    from diffusers import Flux2KleinPipeline

    spec = pair.spec(role)
    components = {k: getattr(pair.pipeline, k) for k in ("tokenizer", "text_encoder", "vae")}
    pipe = Flux2KleinPipeline(
        **components,
        transformer=pair.network(role),
        scheduler=pair.make_scheduler(role),
        is_distilled=role == "student",
    )
    pipe.set_progress_bar_config(disable=True)
    call = dict(
        num_inference_steps=spec.num_inference_steps, guidance_scale=spec.guidance_scale, output_type="np"
    )
    call.update(kwargs)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    out = pipe(
        prompt=PROMPT, num_images_per_prompt=len(SEEDS), height=SIZE, width=SIZE, generator=generators, **call
    )
    return out.images


@pytest.mark.parametrize(
    ("role", "regime", "steps"),
    [("student", Distilled(), 4), ("base", Base(), 50)],
    ids=["distilled-is-distilled-pipeline", "base-cfg-pipeline"],
)
def test_each_regime_reproduces_diffusers_own_pipeline(pair, role, regime, steps):
    # each at its registry defaults: the base 50 steps of CFG 4, the student 4 steps at guidance 1 (off)
    reference = _reference(pair, role)
    ours = sample(pair, PROMPT, regime, SEEDS, height=SIZE, width=SIZE, output_type="np", progress=False)
    assert len(ours.schedule) == steps
    assert np.abs(ours.images - reference).max() <= 1e-4


def test_the_base_guidance_is_true_cfg_on_the_empty_prompt_and_no_guidance_input(pair):
    assert make_denoiser(pair, "base", 4.0).uses_cfg and not make_denoiser(pair, "base", 1.0).uses_cfg
    assert not make_denoiser(pair, "distilled", 1.0).uses_cfg
    seen: list = []
    handle = pair.base_network.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["guidance"]), with_kwargs=True
    )
    try:
        ours = sample(
            pair, PROMPT, Base(steps=3, guidance_scale=2.5), SEEDS, height=SIZE, width=SIZE,
            output_type="np", progress=False,
        )  # fmt: skip
    finally:
        handle.remove()
    assert seen == [None] * 3  # one batched CFG call per step, never a guidance input
    reference = _reference(pair, "base", num_inference_steps=3, guidance_scale=2.5)
    assert np.abs(ours.images - reference).max() <= 1e-4


def test_the_sampler_latents_are_the_pipelines_patchified_latents(pair):
    # the pipeline's latent output is de-normalised and unpatchified: the VAE's input
    latents = sample(
        pair, PROMPT, Distilled(), SEEDS, height=SIZE, width=SIZE, output_type="latent", progress=False
    )
    reference = _reference(pair, "student", output_type="latent")
    vae = pair.pipeline.vae
    grid = patchified(latents.latents)
    grid = grid * torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    grid = grid + vae.bn.running_mean.view(1, -1, 1, 1)
    unpatched = pair.pipeline._unpatchify_latents(grid)
    torch.testing.assert_close(unpatched, torch.as_tensor(reference), rtol=0, atol=1e-5)
    # tokens are the pipeline's packing of the patchified grid, and back
    x = torch.randn(2, 4, 8, 6)
    torch.testing.assert_close(to_tokens(x), pair.pipeline._pack_latents(patchified(x)), rtol=0, atol=0)
    torch.testing.assert_close(from_tokens(to_tokens(x), 8, 6), x, rtol=0, atol=0)


def test_the_shift_depends_on_the_steps_as_the_pipelines():
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    assert empirical_mu(4096, 4) == compute_empirical_mu(4096, 4) != empirical_mu(4096, 50)


def _recording(network, calls):
    def hook(module, args, kwargs, output):
        tokens = kwargs["hidden_states"]
        side = int(round(tokens.shape[1] ** 0.5)) * 2  # square tests: the token grid is side/2 × side/2
        x = from_tokens(tokens, side, side)
        calls.append(
            (x.detach().clone(), 1000 * float(kwargs["timestep"][0]), from_tokens(output[0], side, side))
        )

    return network.register_forward_hook(hook, with_kwargs=True)


def test_x0_is_the_latent_minus_sigma_times_the_velocity(tiny):
    check_flow_x0(tiny, _recording, PROMPT, SEEDS)


@pytest.mark.parametrize("regime", [Distilled(), Base(steps=4)], ids=["distilled", "base"])
def test_x0_is_recorded_every_step_and_the_last_is_the_output(pair, regime):
    check_x0_recorded(pair, regime, PROMPT, height=SIZE, width=SIZE)


def test_the_hybrid_runs_the_base_first_at_the_students_first_timestep(pair, tiny):
    steps = schedule_of(Hybrid(k=1), pair)  # the hub pair's, at 1024²
    assert [s.model for s in steps] == ["base"] + ["distilled"] * 3
    assert [s.timestep for s in steps] == [s.timestep for s in schedule_of(Distilled(), pair)]
    check_hybrid_hand_off(tiny, _recording, PROMPT, SEEDS)


def test_the_builtin_tiny_pair_samples_every_regime(tiny):
    assert tiny.family.name == "flux2" and tiny.default_resolution == SIZE
    for regime in (Base(steps=2), Distilled(), Hybrid(k=1)):
        result = sample(tiny, PROMPT, regime, [0], output_type="latent", progress=False)
        assert torch.isfinite(result.latents).all()
