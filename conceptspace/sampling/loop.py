"""The loop: denoisers (a network, its guidance and parametrisation), segments of a scheduler's steps, and
:func:`denoise`, which runs segments one scheduler step at a time and reports x̂0 at each."""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from tqdm.auto import tqdm

from conceptspace import schedules
from conceptspace.models.families import Conditioning, Family
from conceptspace.models.loading import ModelPair

ModelName = Literal["base", "distilled"]
OutputType = Literal["pil", "np", "pt", "latent"]

_ROLE = {"base": "base", "distilled": "student"}


# --------------------------------------------------------------------------------------------------- denoisers
@dataclass
class Denoiser:
    """A denoising network turned into a prediction in its own parametrisation, with CFG where it applies.

    CFG runs a second (unconditional) pass where the family's pipelines do (``guidance_scale > 1`` in diffusers'
    convention, :meth:`Family.cfg_weight`), except for networks that take the guidance
    scale as an input (LCM-style UNets with ``time_cond_proj_dim``), which get it in a single pass. What the
    network's call looks like is the family adapter's business.
    """

    name: ModelName
    network: Any
    guidance_scale: float
    prediction_type: str
    family: Family
    pipeline: Any = None  # the pair's pipeline, for families whose guidance input it builds
    adapter: Any = None
    """A LoRA student's adapter on the base's network (a :class:`~conceptspace.lora.LoRAHandle`): switched on for
    this denoiser's calls only, so one network serves the base's steps and the student's."""

    @property
    def embeds_guidance(self) -> bool:
        return self.family.embeds_guidance(self.network)

    @property
    def uses_cfg(self) -> bool:
        return self.family.cfg_weight(self.guidance_scale) is not None and not self.embeds_guidance

    @property
    def passes(self) -> int:
        """Network evaluations per step (a CFG step is two)."""
        return 2 if self.uses_cfg else 1

    @property
    def needs_negative(self) -> bool:
        """Whether the prompt must be encoded with its unconditional inputs for this denoiser (CFG's second pass,
        or a denoiser that runs the unconditional inputs alone)."""
        return self.uses_cfg

    def __call__(self, model_input: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        batch = model_input.shape[0]
        inputs = cond.inputs
        if self.uses_cfg:
            model_input = torch.cat([model_input] * 2)
            inputs = cond.with_unconditional()
        guidance = None
        if self.embeds_guidance:
            guidance = self.family.guidance_condition(self.pipeline, self.network, self.guidance_scale, batch)
            guidance = guidance.to(device=model_input.device, dtype=model_input.dtype)
        with switched_on(self.adapter):
            out = self.family.predict(self.network, model_input, t, inputs, guidance)
        if self.uses_cfg:
            uncond, text = out.chunk(2)
            out = self.family.combine_guidance(uncond, text, self.family.cfg_weight(self.guidance_scale))
        return out


@contextlib.contextmanager
def switched_on(adapter: Any) -> Iterator[None]:
    """``adapter`` (a LoRA handle, or None: nothing to do) enabled inside the block and disabled after it."""
    if adapter is None:
        yield
        return
    adapter.enabled = True
    try:
        yield
    finally:
        adapter.enabled = False


# ----------------------------------------------------------------------------------------------------- segments
RenoiseStep = Callable[[Any, int, "Denoiser", torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""``renoise(scheduler, index, denoiser, model_input, x0, latents, generator)``: the latents for step ``index + 1``
in place of the ``latents`` that ``scheduler.step`` made at step ``index`` (``model_input``: that step's network
input; ``x0``: its x̂0; ``generator``: the per-sample generators)."""


class RowSelection(Protocol):
    """A regime that keeps only some of the samples it started (group inference): after step ``index`` it sees
    that step's x̂0 and the batch's conditioning, and returns the rows that go on, in their new order (indices into
    the step's rows), or None to keep them all."""

    def __call__(self, index: int, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor | None: ...

    def rows_per_image(self, index: int) -> int:
        """How many samples run step ``index`` for each image kept at the end (its cost per image)."""


@dataclass
class Segment:
    """Steps ``start..stop-1`` of one scheduler's timestep list, each with its denoiser; ``renoise`` (optional)
    replaces the latents each step hands to the next one inside the segment (a sampler's stochasticity);
    ``select`` (optional) drops samples after a step (see :class:`RowSelection`)."""

    scheduler: Any
    start: int
    denoisers: list[Denoiser]
    renoise: RenoiseStep | None = None
    select: RowSelection | None = None

    @property
    def stop(self) -> int:
        return self.start + len(self.denoisers)

    def timestep(self, index: int) -> int:
        return timestep_value(self.scheduler.timesteps[index])


@dataclass(frozen=True)
class ScheduledStep:
    """One model evaluation of a run: what the schedule in run.json lists."""

    step: int
    timestep: int
    model: ModelName


def make_scheduler(
    pair: ModelPair,
    model: ModelName,
    device: torch.device,
    steps: int | None,
    timesteps: Sequence[int] | None,
    latent_shape: tuple[int, int] | None = None,
) -> Any:
    """A fresh scheduler of ``model`` set to ``steps`` (or custom ``timesteps``) for latents of ``latent_shape``
    (default: the pair's resolution), with whatever the family's pipeline passes to ``set_timesteps`` (the
    resolution-dependent shift of flow-matching schedules)."""
    scheduler = pair.make_scheduler(_ROLE[model])
    if latent_shape is None:
        latent_shape = latent_size(pair, pair.default_resolution, pair.default_resolution)
    if timesteps is not None:
        check_timesteps(timesteps, scheduler.config.num_train_timesteps)
        if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(
                f"{type(scheduler).__name__} cannot run custom timesteps; give a number of steps instead"
            )
        scheduler.set_timesteps(timesteps=list(timesteps), device=device)
    else:
        if steps is None or steps < 1:
            raise ValueError(f"number of steps must be at least 1, got {steps}")
        extra = pair.family.timestep_kwargs(scheduler, pair.network(_ROLE[model]), steps, latent_shape)
        scheduler.set_timesteps(steps, device=device, **extra)
    return scheduler


def check_timesteps(timesteps: Sequence[int], num_train: int) -> None:
    ts = list(timesteps)
    if not ts:
        raise ValueError("timesteps must not be empty")
    if any(not 0 <= t < num_train for t in ts):
        raise ValueError(f"timesteps must lie in [0, {num_train - 1}], got {ts}")
    if any(b >= a for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts}")


def make_denoiser(pair: ModelPair, model: ModelName, guidance_scale: float) -> Denoiser:
    """The denoiser of ``model`` (``"base"`` or ``"distilled"``) in ``pair`` at ``guidance_scale``."""
    role = _ROLE[model]
    return Denoiser(
        name=model,
        network=pair.network(role),
        guidance_scale=float(guidance_scale),
        prediction_type=pair.prediction_type(role),
        family=pair.family,
        pipeline=pair.pipeline,
        adapter=pair.student_adapter if role == "student" else None,
    )


def check_guidance(value: Any, what: str) -> None:
    """Refuse a guidance scale that is not a finite number >= 0 (NaN would silently turn CFG off), naming it as
    ``what`` (a regime's field, a command's option)."""
    if not (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")


def schedule_of_segments(segments: list[Segment]) -> list[ScheduledStep]:
    steps: list[ScheduledStep] = []
    for segment in segments:
        for offset, den in enumerate(segment.denoisers):
            steps.append(ScheduledStep(len(steps), segment.timestep(segment.start + offset), den.name))
    return steps


# ------------------------------------------------------------------------------------------------------- the loop
@dataclass
class StepInfo:
    """What a callback sees after each step (k-diffusion style): x̂0 for free."""

    step: int
    timestep: int
    model: ModelName
    latents: torch.Tensor
    x0: torch.Tensor
    seeds: tuple[int, ...] = ()
    kept: torch.Tensor | None = None
    """After a step that dropped samples: the rows of the previous step that ``x0`` continues (else None)."""


class TrajectoryRecorder:
    """A callback keeping every step's x̂0 (latent space, on the CPU), batch after batch.

    A run of several batches reports step 0 again at the start of each batch; the recorder starts a new batch
    there, so :meth:`stacked` gives one row per sample whatever the batch size. Samples a regime drops on the way
    (group inference) are dropped from the earlier steps too: the rows are the samples that were kept.
    """

    def __init__(self) -> None:
        self.batches: list[list[torch.Tensor]] = []
        self.batch_seeds: list[list[int]] = []
        self.steps: list[ScheduledStep] = []

    @property
    def seeds(self) -> list[int]:
        """The seed each row's noise was drawn from."""
        return [seed for seeds in self.batch_seeds for seed in seeds]

    def __call__(self, info: StepInfo) -> None:
        if info.step == 0:
            self.batches.append([])
            self.batch_seeds.append(list(info.seeds))
        if len(self.batches) == 1:
            self.steps.append(ScheduledStep(info.step, info.timestep, info.model))
        if info.kept is not None:
            kept = info.kept.cpu()
            self.batches[-1] = [x0[kept] for x0 in self.batches[-1]]
            self.batch_seeds[-1] = list(info.seeds)
        self.batches[-1].append(info.x0.detach().float().cpu())

    def stacked(self) -> torch.Tensor:
        """(samples, steps, C, H, W)."""
        if not self.batches:
            raise ValueError("nothing was recorded: pass the recorder as callback= to sample()")
        return torch.cat([torch.stack(batch, dim=1) for batch in self.batches])


def _step_kwargs(scheduler: Any, generator: Any) -> dict[str, Any]:
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def _scheduler_x0(result: Any) -> torch.Tensor | None:
    """The x̂0 a scheduler's step reports (LCM's boundary-conditioned ``denoised``, what it decodes, or
    ``pred_original_sample``); None for schedulers that report none (flow matching's Euler)."""
    denoised = getattr(result, "denoised", None)
    return denoised if denoised is not None else getattr(result, "pred_original_sample", None)


def denoise(
    segments: list[Segment],
    latents: torch.Tensor,
    cond: Conditioning,
    *,
    generator: list[torch.Generator] | torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    progress: tqdm | None = None,
    seeds: Sequence[int] = (),
) -> torch.Tensor:
    """Run the segments from ``latents`` (already in the first segment's latent space) and return the latent
    after the last step (what diffusers decodes; equal to the last x̂0 for schedulers that end at t=0).

    This is the whole sampler: per step, scale the input, predict, convert to the scheduler's parametrisation,
    call ``scheduler.step`` once (then the segment's ``renoise``, where it has one), report x̂0.
    """
    step = 0
    x0 = latents
    # Per step, whether x̂0 is finite and what ran, kept on the device and read once at the end: a check per step
    # would make the host wait for the device at every step.
    finite: list[torch.Tensor] = []
    ran: list[tuple[str, torch.Tensor]] = []
    previous: tuple[Any, int, torch.Tensor] | None = (
        None  # (scheduler, index, network input) of the last step
    )
    for segment in segments:
        scheduler = segment.scheduler
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(segment.start)
        if previous is not None and previous[0] is not scheduler:
            latents = _hand_off(previous, x0, scheduler, segment.start)
        kwargs = _step_kwargs(scheduler, generator)
        target = schedules.parametrisation(scheduler)
        for offset, den in enumerate(segment.denoisers):
            index = segment.start + offset
            t = scheduler.timesteps[index]
            model_input = schedules.model_input(scheduler, latents, t)
            output = den(model_input, t, cond)
            if den.prediction_type != target:
                level = schedules.noise_level(scheduler, index)
                output = schedules.convert(output, model_input, level, den.prediction_type, target)
            result = scheduler.step(output, t, latents, **kwargs)
            x0 = _scheduler_x0(result)
            if x0 is None:  # flow matching's Euler reports none: x̂0 = x − σ·v
                x0 = schedules.split(output, target, model_input, schedules.noise_level(scheduler, index))[0]
            finite.append(torch.isfinite(x0).all())
            ran.append((den.name, t))
            latents = result.prev_sample
            if segment.renoise is not None and index + 1 < len(scheduler.timesteps):
                latents = segment.renoise(scheduler, index, den, model_input, x0, latents, generator)
            rows_ran = latents.shape[0]
            kept = segment.select(index, x0, cond) if segment.select is not None else None
            if kept is not None:
                keep_scheduler_rows(scheduler, kept, latents.shape[0])
                latents, x0, model_input = latents[kept], x0[kept], model_input[kept]
                cond = cond.select_rows(kept)
                seeds = [seeds[i] for i in kept.tolist()]
                if isinstance(generator, list):
                    generator = [generator[i] for i in kept.tolist()]
                    kwargs = _step_kwargs(scheduler, generator)
            previous = (scheduler, index, model_input)
            if callback is not None:
                callback(StepInfo(step, timestep_value(t), den.name, latents, x0, tuple(seeds), kept))
            if progress is not None:  # in images: the samples a selecting regime started count as a share of one
                share = segment.select.rows_per_image(index) if segment.select is not None else 1
                progress.update(rows_ran // share)
            step += 1
    _check_finite(finite, ran)
    return latents


SCHEDULER_ROW_STATE = ("model_outputs", "last_sample", "sample", "prev_derivative", "ets", "cur_sample")
"""Scheduler attributes that hold one row per sample between steps (multistep solvers' history, Heun's first
stage, PNDM's): what :func:`keep_scheduler_rows` subsets when samples are dropped."""


def keep_scheduler_rows(scheduler: Any, kept: torch.Tensor, rows: int) -> None:
    """Drop the rows a regime let go from the per-sample state a scheduler carries between steps (``rows``: how
    many samples it held)."""

    def keep(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            return value[kept.to(value.device)]
        return value

    for name in SCHEDULER_ROW_STATE:
        value = getattr(scheduler, name, None)
        if isinstance(value, list):
            setattr(scheduler, name, [keep(item) for item in value])
        elif value is not None:
            setattr(scheduler, name, keep(value))


def _check_finite(finite: list[torch.Tensor], ran: list[tuple[str, torch.Tensor]]) -> None:
    ok = torch.stack(finite) if finite else None
    if ok is None or bool(ok.all()):
        return
    first = int((~ok).nonzero()[0])
    name, t = ran[first]
    raise FloatingPointError(
        f"the {name} model produced NaN/inf at step {first} (t={timestep_value(t)}); in float16 "
        "try dtype=torch.bfloat16 or float32"
    )


def timestep_value(t: torch.Tensor) -> int:
    """A timestep as an int for records (flow schedulers' σ·1000 rounded: 1000, 750 …)."""
    return int(round(float(t)))


def _hand_off(
    previous: tuple[Any, int, torch.Tensor], x0: torch.Tensor, receiver: Any, index: int
) -> torch.Tensor:
    """Move to another scheduler: ε̂ from the last step's network input and x̂0, recombined at the receiver's step
    ``index`` (a deterministic DDIM step, or its flow-matching equivalent), then expressed in the receiver's
    latent space."""
    sender, sent_index, sent_input = previous
    _, eps = schedules.split(x0, "sample", sent_input, schedules.noise_level(sender, sent_index))
    level = schedules.noise_level(receiver, index).to(x0)
    network_input = level.alpha * x0 + level.sigma * eps
    return network_input / schedules.latent_scale(receiver, index).to(x0)


def latent_size(pair: ModelPair, height: int, width: int) -> tuple[int, int]:
    """The latent height and width of a ``height``×``width`` image (a clear error if the VAE cannot make it)."""
    factor = pair.pipeline.vae_scale_factor * pair.family.latent_multiple
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise ValueError(
            f"height and width must be positive multiples of {factor} for this model, got {height}x{width}"
        )
    return height // pair.pipeline.vae_scale_factor, width // pair.pipeline.vae_scale_factor
