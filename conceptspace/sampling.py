"""One sampler for every regime: a small loop over (denoiser, timestep) pairs with x̂0 reported at each step.

A regime is only a choice of denoiser per step:

- :class:`Base`        — the base model with CFG on its own schedule;
- :class:`Distilled`   — the student on its own schedule (e.g. DMD2's [999, 749, 499, 249]);
- :class:`Hybrid`      — the base for the first ``k`` steps of the student's schedule (CFG 0), the student after;
- :class:`SkipFirst`   — the student's schedule without its first ``n`` steps (an ablation);
- :class:`ReplaceFinal`— the student for the first steps, the base for the final ``n`` (the causal control).

Regimes turn into :class:`Segment` s: one scheduler, a range of its steps and the denoiser of each step. Within a
segment the scheduler's own ``step`` moves the latent (one call per step, so LCM's re-noising and ancestral noise
happen exactly as in diffusers). Where consecutive segments use different schedulers the latent is handed over
deterministically: x̂0 and ε̂ from the last step are recombined at the receiving scheduler's first timestep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

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


@dataclass
class Segment:
    """Steps ``start..stop-1`` of one scheduler's timestep list, each with its denoiser; ``renoise`` (optional)
    replaces the latents each step hands to the next one inside the segment (a sampler's stochasticity)."""

    scheduler: Any
    start: int
    denoisers: list[Denoiser]
    renoise: RenoiseStep | None = None

    @property
    def stop(self) -> int:
        return self.start + len(self.denoisers)

    def timestep(self, index: int) -> int:
        return _timestep_value(self.scheduler.timesteps[index])


@dataclass(frozen=True)
class ScheduledStep:
    """One model evaluation of a run: what the schedule in run.json lists."""

    step: int
    timestep: int
    model: ModelName


def _make_scheduler(
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
        _check_timesteps(timesteps, scheduler.config.num_train_timesteps)
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


def _check_timesteps(timesteps: Sequence[int], num_train: int) -> None:
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
    if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")


# ------------------------------------------------------------------------------------------------------ regimes
class Regime(ABC):
    """A choice of denoiser per step. Subclasses are frozen dataclasses with a ``name``."""

    name: str = "regime"

    def __post_init__(self) -> None:
        # Numbers are checked here, before any model work: NaN guidance would silently turn CFG off.
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None or f.name == "name":
                continue
            if "guidance" in f.name:
                check_guidance(value, f"{self.name}: {f.name}")
            if f.name in ("steps", "base_steps", "k", "n") and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= 1
            ):
                raise ValueError(f"{self.name}: {f.name} must be a whole number >= 1, got {value!r}")

    @abstractmethod
    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        """The segments (scheduler, step range, denoiser per step) this regime runs on ``pair`` for latents of
        ``latent_shape`` (height, width; default the pair's resolution: flow-matching schedules depend on it)."""

    def describe(self) -> dict[str, Any]:
        return {"regime": self.name, **asdict(self)}  # type: ignore[call-overload]


def _student_schedule(
    pair: ModelPair,
    device: torch.device,
    steps: int | None = None,
    timesteps: Sequence[int] | None = None,
    latent_shape: tuple[int, int] | None = None,
) -> Any:
    spec = pair.spec("student")
    if timesteps is None and steps is None:
        timesteps = spec.timesteps
    if timesteps is None and steps is None:
        steps = spec.num_inference_steps
    if timesteps is not None and steps is not None and len(timesteps) != steps:
        raise ValueError(f"{len(timesteps)} timesteps given for {steps} steps")
    return _make_scheduler(pair, "distilled", device, steps, timesteps, latent_shape)


@dataclass(frozen=True)
class Base(Regime):
    """The base model with CFG on its own schedule (defaults: the registry's steps and guidance)."""

    steps: int | None = None
    guidance_scale: float | None = None
    name: str = field(default="base", init=False)

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        spec = pair.base
        scheduler = _make_scheduler(
            pair,
            "base",
            device,
            spec.num_inference_steps if self.steps is None else self.steps,
            spec.timesteps if self.steps is None else None,
            latent_shape,
        )
        guidance = spec.guidance_scale if self.guidance_scale is None else self.guidance_scale
        den = make_denoiser(pair, "base", guidance)
        return [Segment(scheduler, 0, [den] * len(scheduler.timesteps))]


@dataclass(frozen=True)
class Distilled(Regime):
    """The student on its own schedule (default: the registry's timesteps, e.g. [999, 749, 499, 249])."""

    steps: int | None = None
    timesteps: tuple[int, ...] | None = None
    guidance_scale: float | None = None
    name: str = field(default="distilled", init=False)

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        scheduler = _student_schedule(pair, device, self.steps, self.timesteps, latent_shape)
        guidance = pair.spec("student").guidance_scale if self.guidance_scale is None else self.guidance_scale
        den = make_denoiser(pair, "distilled", guidance)
        return [Segment(scheduler, 0, [den] * len(scheduler.timesteps))]


@dataclass(frozen=True)
class Hybrid(Regime):
    """The base for the first ``k`` steps, the student after ("diversity distillation").

    ``base_schedule="student"`` (the paper's setting): the base runs the student's first ``k`` timesteps on the
    student's scheduler, with ``base_guidance`` (default 0, no CFG pass). ``base_schedule="own"``: the base runs its
    own schedule (``base_steps``, default the registry's) from the start down to the student's ``k``-th timestep,
    then hands over to the student there.
    """

    k: int = 1
    base_guidance: float = 0.0
    base_schedule: Literal["student", "own"] = "student"
    base_steps: int | None = None
    name: str = field(default="hybrid", init=False)

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        student = _student_schedule(pair, device, latent_shape=latent_shape)
        n = len(student.timesteps)
        if not 1 <= self.k <= n:
            raise ValueError(f"hybrid k must be between 1 and the student's {n} steps, got {self.k}")
        base_den = make_denoiser(pair, "base", self.base_guidance)
        student_den = make_denoiser(pair, "distilled", pair.spec("student").guidance_scale)
        if self.base_schedule == "student":
            return [Segment(student, 0, [base_den] * self.k + [student_den] * (n - self.k))]
        if self.base_schedule != "own":
            raise ValueError(f"base_schedule must be 'student' or 'own', got {self.base_schedule!r}")
        base = _make_scheduler(
            pair,
            "base",
            device,
            pair.base.num_inference_steps if self.base_steps is None else self.base_steps,
            None,
            latent_shape,
        )
        handoff = float(student.timesteps[self.k]) if self.k < n else -1.0
        base_count = sum(float(t) > handoff for t in base.timesteps)
        if base_count == 0:
            raise ValueError(
                f"the base's own {len(base.timesteps)}-step schedule has no timestep above the hand-off at {_timestep_value(handoff)}, "
                "so it would run zero steps; give it more steps (base_steps / --steps) or use base_schedule='student'"
            )
        segments = [Segment(base, 0, [base_den] * base_count)]
        if self.k < n:
            segments.append(Segment(student, self.k, [student_den] * (n - self.k)))
        return segments


@dataclass(frozen=True)
class SkipFirst(Regime):
    """The student's schedule without its first ``n`` steps: start from pure noise at the later timestep."""

    n: int = 1
    name: str = field(default="skip-first", init=False)

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        student = _student_schedule(pair, device, latent_shape=latent_shape)
        steps = len(student.timesteps)
        if not 1 <= self.n < steps:
            raise ValueError(
                f"skip-first n must be between 1 and {steps - 1} for a {steps}-step student, got {self.n}"
            )
        den = make_denoiser(pair, "distilled", pair.spec("student").guidance_scale)
        return [Segment(student, self.n, [den] * (steps - self.n))]


@dataclass(frozen=True)
class ReplaceFinal(Regime):
    """The student for its first steps, the base for the final ``n`` (default: all but the first).

    ``base_schedule="own"`` (default, the paper's causal control): the base continues on its own schedule, from
    its first timestep at or below the hand-off, with its own CFG (``base_guidance`` default: the registry's).
    ``"student"``: a 1-for-1 replacement on the student's timesteps.
    """

    n: int | None = None
    base_guidance: float | None = None
    base_schedule: Literal["student", "own"] = "own"
    base_steps: int | None = None
    name: str = field(default="replace-final", init=False)

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        student = _student_schedule(pair, device, latent_shape=latent_shape)
        steps = len(student.timesteps)
        n = steps - 1 if self.n is None else self.n
        if not 1 <= n < steps:
            raise ValueError(
                f"replace-final n must be between 1 and {steps - 1} for a {steps}-step student, got {n}"
            )
        first = steps - n
        guidance = pair.base.guidance_scale if self.base_guidance is None else self.base_guidance
        base_den = make_denoiser(pair, "base", guidance)
        student_den = make_denoiser(pair, "distilled", pair.spec("student").guidance_scale)
        if self.base_schedule == "student":
            return [Segment(student, 0, [student_den] * first + [base_den] * n)]
        if self.base_schedule != "own":
            raise ValueError(f"base_schedule must be 'student' or 'own', got {self.base_schedule!r}")
        base = _make_scheduler(
            pair,
            "base",
            device,
            pair.base.num_inference_steps if self.base_steps is None else self.base_steps,
            None,
            latent_shape,
        )
        handoff = float(student.timesteps[first])
        start = next((i for i, t in enumerate(base.timesteps) if float(t) <= handoff), len(base.timesteps))
        if start == len(base.timesteps):
            raise ValueError(f"the base's schedule has no timestep at or below {_timestep_value(handoff)}")
        return [
            Segment(student, 0, [student_den] * first),
            Segment(base, start, [base_den] * (len(base.timesteps) - start)),
        ]


@dataclass(frozen=True)
class Named(Regime):
    """Another regime under a name of its own, so that two variants of one regime can run side by side (each
    regime writes to a folder named after it): ``Named(Hybrid(k=2), "hybrid-k2")``."""

    over: Regime | str = "distilled"
    name: str = "named"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name or any(c in self.name for c in '/\\:*?"<>|') or self.name.startswith("."):
            raise ValueError(
                f"a regime's name names its folder: {self.name!r} is empty, hidden or holds a path character"
            )

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        inner = regime_from_name(self.over) if isinstance(self.over, str) else self.over
        return inner.segments(pair, device, latent_shape)

    def describe(self) -> dict[str, Any]:
        over = self.over.describe() if isinstance(self.over, Regime) else self.over
        return {"regime": "named", "name": self.name, "over": over}


REGIMES: dict[str, type[Regime]] = {
    "named": Named,
    "base": Base,
    "distilled": Distilled,
    "hybrid": Hybrid,
    "skip-first": SkipFirst,
    "replace-final": ReplaceFinal,
}
"""Every regime by name: the one registry that ``sample``, every command and ``compare`` read. Modules listed in
:data:`REGIME_PROVIDERS` add theirs (``REGIMES[name] = cls``) when imported."""

REGIME_PROVIDERS = ["conceptspace.remedies"]
"""Modules imported before a regime is looked up by name, so that their regimes are registered: the remedies sit
above this loop and register themselves (a plugin appends its own module here)."""

_PATH_CHARACTERS = re.compile(r'[/\\:*?"<>|]+')


def registered_regimes() -> dict[str, type[Regime]]:
    """:data:`REGIMES` after every provider has registered (name → regime class)."""
    for module in REGIME_PROVIDERS:
        importlib.import_module(module)
    return REGIMES


def regime_from_name(name: str, /, **options: Any) -> Regime:
    """Build a regime by name; options that the regime does not take are ignored (None values too). A remedy's
    ``over`` given as a described regime (a dict with its ``"regime"`` name, as run.json holds it) is built too."""
    regimes = registered_regimes()
    if isinstance(options.get("over"), Mapping):
        inner = {k: tuple(v) if isinstance(v, list) else v for k, v in options["over"].items()}  # JSON's lists
        options = {**options, "over": regime_from_name(inner.pop("regime"), **inner)}
    try:
        cls = regimes[name]
    except KeyError:
        raise ValueError(f"unknown regime {name!r}; known regimes: {', '.join(regimes)}") from None
    fields = {f.name for f in cls.__dataclass_fields__.values() if f.init}  # type: ignore[attr-defined]
    return cls(**{k: v for k, v in options.items() if k in fields and v is not None})


def _option_value(text: str) -> Any:
    """A spec option's value: an integer, a number, true/false/none, or else the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_regime(spec: str | Regime, /, **defaults: Any) -> Regime:
    """A regime from its spec — a registered name with options after colons: ``"hybrid"``, ``"hybrid:k=2"``,
    ``"cads:noise_scale=0.1:tau1=0.5"``, ``"renoise:eta=0"``, ``"sliderspace:sliders=runs/space/sliders"`` (a part
    without ``=`` belongs to the value before it: ``sliderspace:sliders=testbed:a-shape``). The one parser every
    command and ``compare`` use.

    ``defaults`` fill the options the spec leaves out, where the regime takes them (a command's ``--steps``,
    ``--k`` …; None values ignored). A regime with options in its spec is named after them (``hybrid-k2``), so
    variants of one regime run side by side, unless ``name=…`` names it. A :class:`Regime` is taken as it is."""
    if isinstance(spec, Regime):
        return spec
    name, *options = [part.strip() for part in str(spec).split(":")]
    regimes = registered_regimes()
    if name not in regimes or name == "named":
        known = ", ".join(n for n in regimes if n != "named")
        raise ValueError(f"unknown regime {name!r} in {spec!r}; known regimes: {known}")
    accepted = {f.name for f in fields(regimes[name]) if f.init}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    written: dict[str, str] = {}  # as the user wrote them, for the regime's name
    label = None
    joined: list[str] = []
    for option in options:  # a part without "=" continues the value before it (testbed:a-shape, C:\\sliders)
        if "=" not in option and joined:
            joined[-1] += ":" + option
        else:
            joined.append(option)
    for option in joined:
        key, sep, value = option.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"regime option {option!r} in {spec!r} is not key=value (e.g. hybrid:k=2)")
        if key == "name":
            label = value.strip()
            continue
        if key not in accepted:
            raise ValueError(
                f"{name} takes no option {key!r} (in {spec!r}); its options: {', '.join(sorted(accepted)) or 'none'}"
            )
        values[key] = _option_value(value)
        written[key] = value.strip()
    regime = regime_from_name(name, **{**{k: v for k, v in defaults.items() if k in accepted}, **values})
    if label is None and not values:
        return regime
    if label is None:  # named after its options, path characters (a sliders folder) made plain
        label = name + "".join(f"-{key}{_PATH_CHARACTERS.sub('_', value)}" for key, value in written.items())
    return Named(over=regime, name=label)


def schedule_of(
    regime: Regime,
    pair: ModelPair,
    device: torch.device | str = "cpu",
    latent_shape: tuple[int, int] | None = None,
) -> list[ScheduledStep]:
    """The (step, timestep, model) list a regime runs on a pair (for latents of ``latent_shape``, default the
    pair's resolution), without running anything."""
    return schedule_of_segments(regime.segments(pair, torch.device(device), latent_shape))


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


class TrajectoryRecorder:
    """A callback keeping every step's x̂0 (latent space, on the CPU), batch after batch.

    A run of several batches reports step 0 again at the start of each batch; the recorder starts a new batch
    there, so :meth:`stacked` gives one row per sample whatever the batch size.
    """

    def __init__(self) -> None:
        self.batches: list[list[torch.Tensor]] = []
        self.seeds: list[int] = []
        self.steps: list[ScheduledStep] = []

    def __call__(self, info: StepInfo) -> None:
        if info.step == 0:
            self.batches.append([])
            self.seeds.extend(info.seeds)
        if len(self.batches) == 1:
            self.steps.append(ScheduledStep(info.step, info.timestep, info.model))
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
            previous = (scheduler, index, model_input)
            latents = result.prev_sample
            if segment.renoise is not None and index + 1 < len(scheduler.timesteps):
                latents = segment.renoise(scheduler, index, den, model_input, x0, latents, generator)
            if callback is not None:
                callback(StepInfo(step, _timestep_value(t), den.name, latents, x0, tuple(seeds)))
            if progress is not None:
                progress.update(latents.shape[0])
            step += 1
    _check_finite(finite, ran)
    return latents


def _check_finite(finite: list[torch.Tensor], ran: list[tuple[str, torch.Tensor]]) -> None:
    ok = torch.stack(finite) if finite else None
    if ok is None or bool(ok.all()):
        return
    first = int((~ok).nonzero()[0])
    name, t = ran[first]
    raise FloatingPointError(
        f"the {name} model produced NaN/inf at step {first} (t={_timestep_value(t)}); in float16 "
        "try dtype=torch.bfloat16 or float32"
    )


def _timestep_value(t: torch.Tensor) -> int:
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


# ----------------------------------------------------------------------------------------------- text and images
def encode_text(
    pair: ModelPair, prompt: str, *, negative_prompt: str | None, cfg: bool, height: int, width: int
) -> Conditioning:
    """Embed one prompt with the pair's shared text encoders (the base pipeline's ``encode_prompt``, through the
    family adapter)."""
    return pair.family.encode_text(
        pair.pipeline,
        prompt,
        negative_prompt=negative_prompt,
        cfg=cfg,
        height=height,
        width=width,
        device=pair.device,
    )


def decode(pair: ModelPair, latents: torch.Tensor, output_type: OutputType = "pil") -> Any:
    """Decode latents with the shared VAE exactly as the diffusers pipelines do (fp16 upcast, latent stats)."""
    if output_type == "latent":
        return latents
    vae = pair.pipeline.vae
    vae_dtype = vae.dtype  # a walk over the parameters: read once
    upcast = vae_dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if upcast else vae_dtype
    if upcast:
        vae.to(torch.float32)
    try:
        with torch.no_grad():
            image = pair.family.decode(vae, latents.to(device=pair.device, dtype=dtype))
    finally:
        if upcast:
            vae.to(torch.float16)
    return pair.pipeline.image_processor.postprocess(image, output_type=output_type)


# ------------------------------------------------------------------------------------------------------ sampling
@dataclass
class SampleResult:
    """Images (or latents) for one prompt and regime, with x̂0 trajectories and what ran."""

    prompt: str
    regime: str
    seeds: list[int]
    latents: torch.Tensor
    images: Any
    schedule: list[ScheduledStep]
    timings: dict[str, float]
    trajectory: torch.Tensor | None = None  # (n, steps, C, H, W) x̂0 latents when recorded
    settings: dict[str, Any] = field(default_factory=dict)
    batch_seconds: list[tuple[int, float]] = field(default_factory=list)  # (rows, denoising seconds) per batch

    def schedule_dicts(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.schedule]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latent_size(pair: ModelPair, height: int, width: int) -> tuple[int, int]:
    """The latent height and width of a ``height``×``width`` image (a clear error if the VAE cannot make it)."""
    factor = pair.pipeline.vae_scale_factor * pair.family.latent_multiple
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise ValueError(
            f"height and width must be positive multiples of {factor} for this model, got {height}x{width}"
        )
    return height // pair.pipeline.vae_scale_factor, width // pair.pipeline.vae_scale_factor


def initial_latents(
    segment: Segment,
    shape: tuple[int, ...],
    generators: list[torch.Generator],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The starting latents of a batch (one CPU generator per sample, as the diffusers pipelines draw them), in the
    first segment's latent space: noise × ``init_noise_sigma`` from its first step, or the VP equivalent when the
    segment starts later."""
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    scheduler = segment.scheduler
    if segment.start == 0:
        # exactly what the diffusers pipelines do (flow-matching schedulers have no init_noise_sigma: 1)
        return noise * getattr(scheduler, "init_noise_sigma", 1.0)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(segment.start)
    return noise * schedules.initial_noise_scale(scheduler, segment.start).to(noise)


def sample_latents(
    pair: ModelPair,
    regime: Regime,
    cond: Conditioning,
    seeds: Sequence[int],
    *,
    latent_shape: tuple[int, int],
    callback: Callable[[StepInfo], None] | None = None,
    progress: tqdm | None = None,
    segments: list[Segment] | None = None,
) -> torch.Tensor:
    """The final latents of one batch, row ``i`` from ``seeds[i]`` and row ``i`` of ``cond``: the body that
    :func:`sample` and prompt-set runs share.

    Every row has its own CPU generator (as the diffusers pipelines draw noise), so a sample does not depend on its
    batch. Schedulers carry per-run state, so the regime's segments are built afresh unless ``segments`` gives
    unused ones of the same regime and shape.
    """
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    cond = dataclasses.replace(cond, seeds=tuple(int(s) for s in seeds))
    device = pair.device
    if segments is None:
        segments = regime.segments(pair, device, latent_shape)
    channels = pair.family.latent_channels(pair.base_network)
    with torch.no_grad():
        latents = initial_latents(
            segments[0], (len(seeds), channels, *latent_shape), generators, device, cond.dtype
        )
        return denoise(
            segments, latents, cond, generator=generators, callback=callback, progress=progress, seeds=seeds
        )


def sample(
    pair: ModelPair,
    prompt: str,
    regime: Regime | str = "distilled",
    seeds: Iterable[int] = (0,),
    *,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 4,
    output_type: OutputType = "pil",
    record_x0: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
    progress: bool = True,
) -> SampleResult:
    """Generate one image per seed for ``prompt`` in ``regime``.

    Image ``i`` depends on ``(prompt, seeds[i])`` alone: every sample has its own ``torch.Generator`` (on the CPU,
    as diffusers recommends for reproducibility), so the batch size changes nothing but speed.

    Args:
        pair: from :func:`conceptspace.load_pair`.
        prompt: the text prompt (must not be empty).
        regime: a :class:`Regime`, or a spec :func:`parse_regime` reads: any name in :data:`REGIMES`
            (``"base"``, ``"hybrid"``, a remedy such as ``"cads"``) with options after colons (``"hybrid:k=2"``).
        seeds: one image per seed.
        height / width: default the pair's resolution (the student's native one).
        output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (no VAE decode).
        record_x0: keep every step's x̂0 latents in ``result.trajectory``.
        callback: called with a :class:`StepInfo` after every step.

    Example:
        >>> pair = load_pair("tiny-sdxl", "tiny-dmd")                           # doctest: +SKIP
        >>> result = sample(pair, "a red circle", Hybrid(k=1), seeds=range(8), record_x0=True)   # doctest: +SKIP
        >>> [s.model for s in result.schedule]                                   # doctest: +SKIP
        ['base', 'distilled', 'distilled', 'distilled']
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty: give the text to generate from")
    seeds = [check_seed(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds given: pass at least one seed")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    regime = parse_regime(regime)
    height = pair.default_resolution if height is None else height
    width = pair.default_resolution if width is None else width
    latent_h, latent_w = latent_size(pair, height, width)
    device = pair.device
    timings = {"text_encoding": 0.0, "denoising": 0.0, "decoding": 0.0}

    first_segments = regime.segments(pair, device, (latent_h, latent_w))  # what runs, read before it runs
    schedule = schedule_of_segments(first_segments)
    cfg = any(den.uses_cfg for segment in first_segments for den in segment.denoisers)

    start = time.perf_counter()
    with torch.no_grad():
        base_cond = encode_text(
            pair, prompt, negative_prompt=negative_prompt, cfg=cfg, height=height, width=width
        )
    _sync(device)
    timings["text_encoding"] = time.perf_counter() - start

    with out_of_memory_as_error(
        device, f"{len(seeds)} image(s) of {height}×{width} in batches of {batch_size}"
    ):
        finals, trajectories, batch_seconds = [], [], []
        bar = tqdm(
            total=len(seeds) * len(schedule),
            desc=regime.name,
            unit="img·step",
            disable=not progress,
            leave=False,
        )
        for first in range(0, len(seeds), batch_size):
            batch_seeds = seeds[first : first + batch_size]
            recorder = TrajectoryRecorder() if record_x0 else None

            def report(info: StepInfo, recorder: TrajectoryRecorder | None = recorder) -> None:
                if recorder is not None:
                    recorder(info)
                if callback is not None:
                    callback(info)

            start = time.perf_counter()
            final = sample_latents(
                pair,
                regime,
                base_cond.repeat(len(batch_seeds)),
                batch_seeds,
                latent_shape=(latent_h, latent_w),
                callback=report if recorder is not None or callback is not None else None,
                progress=bar,
                segments=first_segments if first == 0 else None,  # later batches build fresh schedulers
            )
            _sync(device)
            seconds = time.perf_counter() - start
            timings["denoising"] += seconds
            batch_seconds.append((len(batch_seeds), seconds))
            finals.append(final)
            if recorder is not None:
                trajectories.append(recorder.stacked())
        bar.close()

        latents = torch.cat(finals)
        start = time.perf_counter()
        images = decode(pair, latents, output_type)
        _sync(device)
        timings["decoding"] = time.perf_counter() - start
    return SampleResult(
        prompt=prompt,
        regime=regime.name,
        seeds=seeds,
        latents=latents.detach().cpu(),
        images=images,
        schedule=schedule,
        timings=timings,
        trajectory=torch.cat(trajectories) if trajectories else None,
        batch_seconds=batch_seconds,
        settings={
            **regime.describe(),
            "height": height,
            "width": width,
            "negative_prompt": negative_prompt,
            "batch_size": batch_size,
            "guidance_used": {
                den.name: den.guidance_scale for segment in first_segments for den in segment.denoisers
            },
        },
    )


class SamplingMemoryError(MemoryError):
    """Sampling needs more memory than the device has (a user error: smaller images or batches fix it)."""


@contextlib.contextmanager
def out_of_memory_as_error(device: torch.device, what: str) -> Iterator[None]:
    """Turn the allocator's failure (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError) into one
    :class:`SamplingMemoryError` that says what was being made and what to change."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        text = str(error)
        if not isinstance(error, MemoryError | torch.OutOfMemoryError) and "allocate" not in text:
            raise
        if isinstance(error, SamplingMemoryError):
            raise
        detail = next(
            (line for line in text.splitlines() if "allocate" in line), text.splitlines()[0] if text else ""
        )
        raise SamplingMemoryError(
            f"{what} need more memory than the {device.type} device has ({detail.strip()[:160]}): use a smaller "
            "--height/--width or --batch-size"
        ) from None


SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds a ``torch.Generator`` accepts."""


def check_seed(seed: Any, where: str = "") -> int:
    """``seed`` as an int, or a ValueError naming it (and ``where`` it came from) if a generator cannot take it."""
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"seed {seed!r}{where} is not an integer") from None
    if isinstance(seed, float) and seed != value:
        raise ValueError(f"seed {seed!r}{where} is not an integer")
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ValueError(
            f"seed {value}{where} does not fit the 64 bits a random generator takes: use a seed from 0 to "
            f"2**64 - 1 = {SEED_RANGE[1]}"
        )
    return value


def seeds_from(seed: int, n: int) -> list[int]:
    """The seeds of ``n`` images starting at ``seed``: image i gets seed + i (all checked with :func:`check_seed`)."""
    if n > 0:
        check_seed(seed)
        check_seed(seed + n - 1, f" (the last of {n} seeds from {seed})")
    return list(range(seed, seed + n))


__all__ = [
    "Base",
    "Conditioning",
    "Denoiser",
    "Distilled",
    "Hybrid",
    "Named",
    "REGIMES",
    "REGIME_PROVIDERS",
    "Regime",
    "ReplaceFinal",
    "SampleResult",
    "ScheduledStep",
    "Segment",
    "SkipFirst",
    "StepInfo",
    "TrajectoryRecorder",
    "check_guidance",
    "decode",
    "denoise",
    "encode_text",
    "make_denoiser",
    "parse_regime",
    "regime_from_name",
    "registered_regimes",
    "sample",
    "sample_latents",
    "schedule_of",
    "seeds_from",
]
