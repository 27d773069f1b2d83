"""The sampler's proofs: it reproduces diffusers' own pipelines, runs exactly the schedule it claims, and gives
every sample the same result whatever the batch size."""

from __future__ import annotations

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers
import numpy as np
import pytest
import torch

from conceptspace import (
    Base,
    Distilled,
    Hybrid,
    ModelPair,
    ModelSpec,
    ReplaceFinal,
    SkipFirst,
    sample,
    schedule_of,
)
from conceptspace.sampling.loop import _hand_off
from conceptspace.schedules import FLOW, NoiseLevel, convert, latent_scale
from conceptspace.testing import tiny_sd_pipeline, tiny_sd_unet, tiny_sdxl_pipeline, tiny_sdxl_unet
from conceptspace.trajectories import commitment_curve, steps_to_commit

PROMPT = "a red circle on the left"
DMD2_TIMESTEPS = (999, 749, 499, 249)


def make_pair(
    family: str,
    *,
    student_scheduler: str = "LCMScheduler",
    overrides: tuple = (("original_inference_steps", 4),),
    timesteps: tuple[int, ...] | None = DMD2_TIMESTEPS,
    student_guidance: float = 0.0,
    lcm: bool = False,
    base_scheduler: str = "EulerDiscreteScheduler",
    base_overrides: tuple = (),
) -> ModelPair:
    """A tiny base + student pair (SD or SDXL architecture) with the given student sampler settings."""
    pipeline = (tiny_sdxl_pipeline if family == "sdxl" else tiny_sd_pipeline)(seed=0)
    student_network = (tiny_sdxl_unet if family == "sdxl" else tiny_sd_unet)(seed=1, lcm=lcm)
    base = ModelSpec(
        name="t-base",
        family=family,
        role="base",
        repo_id="builtin:t-base",
        storage="random",
        scheduler=base_scheduler,
        scheduler_overrides=base_overrides,
        num_inference_steps=8,
        guidance_scale=5.0,
        resolution=64,
    )
    student = ModelSpec(
        name="t-student",
        family=family,
        role="student",
        base="t-base",
        repo_id="builtin:t-student",
        storage="random",
        scheduler=student_scheduler,
        scheduler_overrides=overrides,
        num_inference_steps=len(timesteps) if timesteps else 4,
        timesteps=timesteps,
        guidance_scale=student_guidance,
        resolution=64,
    )
    config = dict(pipeline.scheduler.config)
    return ModelPair(base, student, pipeline, student_network, config, config)


@pytest.fixture(scope="module")
def sdxl_pair() -> ModelPair:
    return make_pair("sdxl")


def reference(pair: ModelPair, role: str, seeds: list[int], **kwargs) -> np.ndarray:
    pipe = pair.to_diffusers(role)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(
        PROMPT,
        num_images_per_prompt=len(seeds),
        generator=generators,
        height=64,
        width=64,
        output_type="np",
        **kwargs,
    ).images


def ours(pair: ModelPair, regime, seeds: list[int], **kwargs) -> np.ndarray:
    return sample(pair, PROMPT, regime, seeds, output_type="np", progress=False, **kwargs).images


# ----------------------------------------------------------------------------------- parity with diffusers itself
PARITY_CASES = {
    "sd-base-euler-cfg": dict(family="sd", regime="base"),
    "sdxl-base-euler-cfg": dict(family="sdxl", regime="base"),
    "sdxl-base-ddim-cfg": dict(family="sdxl", regime="base", base_scheduler="DDIMScheduler"),
    "sd-distilled-lcm-dmd2": dict(family="sd", regime="distilled"),
    "sdxl-distilled-lcm-dmd2": dict(family="sdxl", regime="distilled"),
    "sdxl-distilled-euler-ancestral": dict(
        family="sdxl",
        regime="distilled",
        student_scheduler="EulerAncestralDiscreteScheduler",
        overrides=(("timestep_spacing", "trailing"),),
        timesteps=None,
    ),
    "sdxl-distilled-lcm-unet": dict(
        family="sdxl", regime="distilled", lcm=True, student_guidance=8.0, timesteps=None, overrides=()
    ),
    "sd-distilled-lcm-unet": dict(
        family="sd", regime="distilled", lcm=True, student_guidance=8.0, timesteps=None, overrides=()
    ),
}


@pytest.mark.parametrize("case", list(PARITY_CASES), ids=list(PARITY_CASES))
def test_matches_diffusers_pipeline(case: str) -> None:
    options = dict(PARITY_CASES[case])
    regime = options.pop("regime")
    pair = make_pair(**options)
    seeds = [3, 11, 12]
    if regime == "base":
        expected = reference(pair, "base", seeds, num_inference_steps=8, guidance_scale=5.0)
        got = ours(pair, Base(), seeds, batch_size=2)
    else:
        spec = pair.student
        kwargs = (
            {"timesteps": list(spec.timesteps)}
            if spec.timesteps
            else {"num_inference_steps": spec.num_inference_steps}
        )
        expected = reference(pair, "student", seeds, guidance_scale=spec.guidance_scale, **kwargs)
        got = ours(pair, Distilled(), seeds, batch_size=2)
    assert got.shape == expected.shape == (3, 64, 64, 3)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(got[0] - got[1]).max() > 1e-3  # different seeds really differ: the check above has teeth


# ------------------------------------------------------------------------------ what runs at which timestep
class CallLog:
    """Records the timestep of every forward call of the UNets it is attached to."""

    def __init__(self, **unets: torch.nn.Module) -> None:
        self.calls: list[tuple[str, int]] = []
        self.handles = [
            unet.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, unet in unets.items()
        ]

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            self.calls.append((name, int(args[1])))

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_hybrid_k1_runs_base_once_at_999_then_student_on_dmd2_schedule(sdxl_pair: ModelPair) -> None:
    log = CallLog(base=sdxl_pair.base_network, distilled=sdxl_pair.student_network)
    try:
        result = sample(sdxl_pair, PROMPT, Hybrid(k=1), seeds=[0, 1], output_type="latent", progress=False)
    finally:
        log.close()
    # One batched forward per step (CFG 0 for the base: no unconditional pass).
    assert log.calls == [("base", 999), ("distilled", 749), ("distilled", 499), ("distilled", 249)]
    assert [(s.model, s.timestep) for s in result.schedule] == log.calls


def test_lcm_hand_off_gives_student_the_renoised_base_x0_at_749(sdxl_pair: ModelPair) -> None:
    """The student's first input is LCM's re-noising of the base's x̂0: sqrt(ᾱ749)·x̂0 + sqrt(1-ᾱ749)·z, with z the
    sample's own next noise draw."""
    inputs = []
    hook = sdxl_pair.student_network.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
    try:
        result = sample(
            sdxl_pair, PROMPT, Hybrid(k=1), seeds=[4], output_type="latent", record_x0=True, progress=False
        )
    finally:
        hook.remove()
    generator = torch.Generator().manual_seed(4)
    torch.randn((1, 4, 32, 32), generator=generator)  # the initial latent
    z = torch.randn((1, 4, 32, 32), generator=generator)
    a = sdxl_pair.make_scheduler("student").alphas_cumprod[749]
    expected = a.sqrt() * result.trajectory[:, 0] + (1 - a).sqrt() * z
    torch.testing.assert_close(inputs[0], expected, rtol=1e-5, atol=1e-5)


def test_hybrid_k2_and_base_cfg_doubles_only_base_batch(sdxl_pair: ModelPair) -> None:
    batches: list[tuple[str, int, int]] = []
    hooks = [
        unet.register_forward_pre_hook(
            lambda m, a, name=name: batches.append((name, int(a[1]), a[0].shape[0]))
        )
        for name, unet in (("base", sdxl_pair.base_network), ("distilled", sdxl_pair.student_network))
    ]
    try:
        sample(
            sdxl_pair,
            PROMPT,
            Hybrid(k=2, base_guidance=3.0),
            seeds=[0, 1, 2],
            output_type="latent",
            progress=False,
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert batches == [("base", 999, 6), ("base", 749, 6), ("distilled", 499, 3), ("distilled", 249, 3)]


def test_lcm_unet_student_gets_guidance_embedding_and_no_cfg_pass() -> None:
    pair = make_pair("sdxl", lcm=True, student_guidance=8.0, timesteps=None, overrides=())
    seen = []
    hook = pair.student_network.register_forward_pre_hook(
        lambda m, a, k: seen.append((a[0].shape[0], k["timestep_cond"])), with_kwargs=True
    )
    try:
        result = sample(pair, PROMPT, Hybrid(k=1), seeds=[0, 1], output_type="latent", progress=False)
    finally:
        hook.remove()
    assert [s.timestep for s in result.schedule] == [999, 759, 499, 259]  # LCMScheduler's own 4-step schedule
    assert [batch for batch, _ in seen] == [2, 2, 2]
    expected = pair.pipeline.get_guidance_scale_embedding(torch.tensor([7.0, 7.0]), embedding_dim=32)
    assert all(torch.allclose(cond, expected) for _, cond in seen)


def test_skip_first_and_replace_final_schedules(sdxl_pair: ModelPair) -> None:
    assert [(s.timestep, s.model) for s in schedule_of(SkipFirst(), sdxl_pair)] == [
        (749, "distilled"),
        (499, "distilled"),
        (249, "distilled"),
    ]
    one_for_one = schedule_of(ReplaceFinal(n=2, base_schedule="student"), sdxl_pair)
    assert [(s.timestep, s.model) for s in one_for_one] == [
        (999, "distilled"),
        (749, "distilled"),
        (499, "base"),
        (249, "base"),
    ]
    own = schedule_of(
        ReplaceFinal(), sdxl_pair
    )  # student's first step, then the base's own 8 steps from 749 down
    base_scheduler = sdxl_pair.make_scheduler("base")
    base_scheduler.set_timesteps(8)
    expected = [(999, "distilled")] + [(int(t), "base") for t in base_scheduler.timesteps if t <= 749]
    assert [(s.timestep, s.model) for s in own] == expected
    assert len(expected) > 2


def test_hybrid_on_base_own_schedule_hands_over_at_students_next_timestep(sdxl_pair: ModelPair) -> None:
    steps = schedule_of(Hybrid(k=1, base_schedule="own"), sdxl_pair)
    base_steps = [s.timestep for s in steps if s.model == "base"]
    assert base_steps and all(t > 749 for t in base_steps)
    assert [s.timestep for s in steps if s.model == "distilled"] == [749, 499, 249]
    result = sample(
        sdxl_pair, PROMPT, Hybrid(k=1, base_schedule="own"), seeds=[0], output_type="latent", progress=False
    )
    assert torch.isfinite(result.latents).all()


@pytest.mark.parametrize("receiver_name", ["LCMScheduler", "EulerDiscreteScheduler", "DDIMScheduler"])
def test_hand_off_recombines_x0_and_eps_at_receivers_timestep(
    sdxl_pair: ModelPair, receiver_name: str
) -> None:
    sender = diffusers.EulerDiscreteScheduler.from_config(sdxl_pair.base_scheduler_config)
    sender.set_timesteps(8)
    receiver = getattr(diffusers, receiver_name).from_config(sdxl_pair.base_scheduler_config)
    receiver.set_timesteps(4)
    if hasattr(receiver, "set_begin_index"):
        receiver.set_begin_index(1)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = sender.timesteps[2]
    a = sender.alphas_cumprod[int(t)]
    sample_vp = a.sqrt() * x0 + (1 - a).sqrt() * eps
    t_next = receiver.timesteps[1]
    latent = _hand_off((sender, 2, sample_vp), x0, receiver, 1)
    a_next = receiver.alphas_cumprod[int(t_next)]
    expected_vp = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    scale = 1 / (1 + ((1 - a_next) / a_next)) ** 0.5 if receiver_name == "EulerDiscreteScheduler" else 1.0
    assert torch.allclose(latent * scale, expected_vp, atol=1e-5)
    assert torch.allclose(latent_scale(receiver, 1), torch.tensor(float(scale)), atol=1e-6)


# ------------------------------------------------------------------------------------ seeds and batch size
@pytest.mark.parametrize(
    "regime",
    [Base(steps=4), Distilled(), Hybrid(k=1), SkipFirst(), ReplaceFinal(n=2, base_schedule="student")],
)
def test_each_image_depends_only_on_its_seed(sdxl_pair: ModelPair, regime) -> None:
    seeds = [5, 6, 7, 8, 9]
    one = sample(sdxl_pair, PROMPT, regime, seeds, batch_size=1, output_type="latent", progress=False).latents
    three = sample(
        sdxl_pair, PROMPT, regime, seeds, batch_size=3, output_type="latent", progress=False
    ).latents
    alone = sample(sdxl_pair, PROMPT, regime, [8], output_type="latent", progress=False).latents
    # Equal up to float reassociation in batched matmuls (latents of random tiny models reach |x| ~ 60).
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(alone[0], one[3], rtol=1e-5, atol=1e-4)
    assert (one[0] - one[1]).abs().max() > 1e-2


def test_stochastic_student_is_seeded_per_sample() -> None:
    pair = make_pair(
        "sdxl",
        student_scheduler="EulerAncestralDiscreteScheduler",
        overrides=(("timestep_spacing", "trailing"),),
        timesteps=None,
    )
    a = sample(pair, PROMPT, "distilled", [1, 2], batch_size=2, output_type="latent", progress=False).latents
    b = sample(pair, PROMPT, "distilled", [2], output_type="latent", progress=False).latents
    torch.testing.assert_close(a[1], b[0], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------- x̂0 recording
@pytest.mark.parametrize(
    "scheduler,overrides",
    [
        ("EulerDiscreteScheduler", ()),
        ("EulerAncestralDiscreteScheduler", (("timestep_spacing", "trailing"),)),
        ("DDIMScheduler", (("clip_sample", False),)),  # as in the SD repos' configs; clipping would hide x̂0
        ("DDPMScheduler", (("clip_sample", False),)),
        ("LCMScheduler", ()),
    ],
)
def test_x0_is_recorded_every_step_for_every_scheduler(scheduler: str, overrides: tuple) -> None:
    pair = make_pair("sdxl", student_scheduler=scheduler, overrides=overrides, timesteps=None)
    inputs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (model input, ε̂) per step, to recompute x̂0 by hand
    hook = pair.student_network.register_forward_hook(
        lambda m, a, out: inputs.append((a[0].clone(), out[0].clone()))
    )
    calls = []
    original_step = None
    try:
        scheduler_cls = getattr(diffusers, scheduler)
        original_step = scheduler_cls.step

        def counting_step(self, *args, **kwargs):
            calls.append(1)
            return original_step(self, *args, **kwargs)

        scheduler_cls.step = counting_step
        result = sample(
            pair, PROMPT, "distilled", [0, 1], output_type="latent", record_x0=True, progress=False
        )
    finally:
        hook.remove()
        if original_step is not None:
            scheduler_cls.step = original_step
    steps = len(result.schedule)
    assert result.trajectory.shape == (2, steps, 4, 32, 32)
    assert len(calls) == steps  # scheduler.step once per step
    for i, step in enumerate(result.schedule):
        model_input, eps = inputs[i]
        a = pair.make_scheduler("student").alphas_cumprod[step.timestep]
        x0 = (model_input - (1 - a).sqrt() * eps) / a.sqrt()
        if scheduler == "LCMScheduler":  # LCM reports its boundary-conditioned x̂0 (c_skip·x + c_out·x̂0)
            lcm = pair.make_scheduler("student")
            c_skip, c_out = lcm.get_scalings_for_boundary_condition_discrete(step.timestep)
            x0 = c_skip * model_input + c_out * x0
        assert torch.allclose(result.trajectory[:, i], x0, atol=1e-4), f"step {i} (t={step.timestep})"


def test_commitment_curve_ends_at_one_and_counts_steps(sdxl_pair: ModelPair) -> None:
    result = sample(
        sdxl_pair,
        PROMPT,
        Base(steps=6),
        seeds=[0, 1, 2],
        output_type="latent",
        record_x0=True,
        progress=False,
    )
    curve = commitment_curve(result.trajectory)
    assert curve.shape == (3, 6)
    assert np.allclose(curve[:, -1], 1.0, atol=1e-5)
    assert np.all(curve[:, 0] < 1.0)
    fractions = steps_to_commit(curve, threshold=0.999999)
    assert np.all((fractions > 0) & (fractions <= 1))
    assert steps_to_commit(np.array([[0.1, 0.95, 1.0]]), 0.9).tolist() == [2 / 3]


# --------------------------------------------------------------------------------------------- parametrisation
def test_prediction_conversions_round_trip() -> None:
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    a = torch.tensor(0.3)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    vp = NoiseLevel.vp(a)
    assert torch.allclose(convert(eps, x_t, vp, "epsilon", "v_prediction"), v, atol=1e-5)
    assert torch.allclose(convert(v, x_t, vp, "v_prediction", "epsilon"), eps, atol=1e-5)
    assert torch.allclose(convert(v, x_t, vp, "v_prediction", "sample"), x0, atol=1e-5)
    assert torch.allclose(convert(x0, x_t, vp, "sample", "epsilon"), eps, atol=1e-4)
    # flow matching: x = (1 − σ)·x0 + σ·ε, velocity ε − x0
    sigma = torch.tensor(0.7)
    x_flow = (1 - sigma) * x0 + sigma * eps
    flow = NoiseLevel.flow(sigma)
    assert torch.allclose(convert(eps - x0, x_flow, flow, FLOW, "sample"), x0, atol=1e-5)
    assert torch.allclose(convert(eps - x0, x_flow, flow, FLOW, "epsilon"), eps, atol=1e-5)


class VPredictionUNet(torch.nn.Module):
    """The same network re-parametrised to predict v instead of ε."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.config, self.alphas_cumprod = unet, unet.config, alphas_cumprod

    def forward(self, sample, t, **kwargs):
        eps = self.unet(sample, t, **kwargs)[0]
        a = self.alphas_cumprod[int(t)]
        x0 = (sample - (1 - a).sqrt() * eps) / a.sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0,)


def test_v_prediction_student_on_epsilon_scheduler_gives_same_images(sdxl_pair: ModelPair) -> None:
    expected = sample(sdxl_pair, PROMPT, Hybrid(), [0, 1], output_type="latent", progress=False).latents
    alphas = sdxl_pair.make_scheduler("student").alphas_cumprod
    v_pair = ModelPair(
        sdxl_pair.base,
        sdxl_pair.student,
        sdxl_pair.pipeline,
        VPredictionUNet(sdxl_pair.student_network, alphas),
        sdxl_pair.base_scheduler_config,
        sdxl_pair.student_scheduler_config,
        student_prediction_type="v_prediction",
    )
    got = sample(v_pair, PROMPT, Hybrid(), [0, 1], output_type="latent", progress=False).latents
    assert torch.allclose(got, expected, atol=1e-4)


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "regime,message",
    [
        (Hybrid(k=5), "hybrid k"),
        (SkipFirst(n=4), "skip-first n"),
        (Distilled(timesteps=(249, 499)), "strictly decreasing"),
        (Distilled(timesteps=(1200, 499)), "lie in"),
    ],
)
def test_regimes_that_do_not_fit_the_pair_are_refused_with_a_reason(
    sdxl_pair: ModelPair, regime, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sample(sdxl_pair, PROMPT, regime, [0], output_type="latent", progress=False)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: Hybrid(k=0), "hybrid: k must be a whole number >= 1, got 0"),
        (lambda: ReplaceFinal(n=0), "replace-final: n must be a whole number >= 1"),
        (lambda: Base(steps=0), "base: steps must be a whole number >= 1"),
        (lambda: Base(steps=2.5), "base: steps must be a whole number >= 1"),
        (lambda: Hybrid(k=True), "hybrid: k must be a whole number >= 1"),
        (lambda: Base(guidance_scale=float("nan")), "guidance_scale must be a finite number >= 0"),
        (lambda: Distilled(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0"),
    ],
)
def test_impossible_regime_numbers_are_refused_when_the_regime_is_made(make, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_the_empty_prompt_samples_unconditionally_as_diffusers_does(sdxl_pair: ModelPair) -> None:
    """``""`` is diffusers' unconditional prompt: the base with CFG, on the same seeds, gives diffusers' images."""
    seeds = [3, 11]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    expected = sdxl_pair.to_diffusers("base")(
        "", num_images_per_prompt=2, generator=generators, height=64, width=64, output_type="np",
        num_inference_steps=8, guidance_scale=5.0,
    ).images  # fmt: skip
    got = sample(sdxl_pair, "", Base(steps=8, guidance_scale=5.0), seeds, output_type="np", progress=False).images
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(got - ours(sdxl_pair, Base(steps=8, guidance_scale=5.0), seeds)).max() > 1e-3  # not the prompt's


def test_bad_prompt_seeds_and_sizes_are_refused(sdxl_pair: ModelPair) -> None:
    with pytest.raises(ValueError, match="prompt is empty but for whitespace: .* or '' to sample unconditionally"):
        sample(sdxl_pair, "   ", "distilled", [0], progress=False)
    with pytest.raises(ValueError, match="no seeds"):
        sample(sdxl_pair, PROMPT, "distilled", [], progress=False)
    with pytest.raises(ValueError, match="multiples of"):
        sample(sdxl_pair, PROMPT, "distilled", [0], height=63, width=64, progress=False)
    with pytest.raises(ValueError, match="unknown regime 'hybird'; did you mean hybrid\\?"):
        sample(sdxl_pair, PROMPT, "hybird", [0], progress=False)


class NaNUNet(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.config = unet, unet.config

    def forward(self, sample, t, **kwargs):
        return (torch.full_like(sample, float("nan")),)


def test_nan_output_is_a_clear_error(sdxl_pair: ModelPair) -> None:
    broken = ModelPair(
        sdxl_pair.base,
        sdxl_pair.student,
        sdxl_pair.pipeline,
        NaNUNet(sdxl_pair.student_network),
        sdxl_pair.base_scheduler_config,
        sdxl_pair.student_scheduler_config,
    )
    with pytest.raises(FloatingPointError, match="distilled model produced NaN/inf at step 1"):
        sample(broken, PROMPT, Hybrid(), [0], output_type="latent", progress=False)


def test_recorder_as_callback_keeps_one_row_per_sample_across_batches(sdxl_pair: ModelPair) -> None:
    from conceptspace import TrajectoryRecorder

    recorder = TrajectoryRecorder()
    result = sample(
        sdxl_pair,
        PROMPT,
        Hybrid(),
        [3, 4, 5, 6, 7],
        batch_size=2,
        output_type="latent",
        record_x0=True,
        callback=recorder,
        progress=False,
    )
    assert recorder.stacked().shape == result.trajectory.shape == (5, 4, 4, 32, 32)
    torch.testing.assert_close(recorder.stacked(), result.trajectory)
    assert recorder.seeds == [3, 4, 5, 6, 7]
    assert [(s.timestep, s.model) for s in recorder.steps] == [(s.timestep, s.model) for s in result.schedule]
    assert result.settings["guidance_used"] == {"base": 0.0, "distilled": 0.0}


def test_hybrid_on_own_schedule_refuses_zero_base_steps(sdxl_pair: ModelPair) -> None:
    # A 2-step leading schedule starts at 501, below the hand-off at 749: the base would never run.
    with pytest.raises(ValueError, match="would run zero steps"):
        schedule_of(Hybrid(base_schedule="own", base_steps=2), sdxl_pair)
