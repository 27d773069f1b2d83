"""Regimes — a choice of denoiser per step — and their one registry and spec parser (``"hybrid:k=2"``), which
``sample``, every command and ``compare`` read."""

from __future__ import annotations

import difflib
import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch

from conceptspace.models.loading import ModelPair
from conceptspace.sampling.loop import (
    ScheduledStep,
    Segment,
    check_guidance,
    make_denoiser,
    make_scheduler,
    schedule_of_segments,
    timestep_value,
)


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

    def candidate_seeds(self, seeds: Sequence[int]) -> list[int]:
        """The seeds whose noise a batch of ``seeds`` starts from: ``seeds`` itself, except for a regime that starts
        more samples than it keeps (group inference), whose sample ``j`` has row ``j % len(seeds)``'s prompt."""
        return list(seeds)


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
    return make_scheduler(pair, "distilled", device, steps, timesteps, latent_shape)


def _own_base_schedule(
    pair: ModelPair,
    device: torch.device,
    base_schedule: str,
    base_steps: int | None,
    latent_shape: tuple[int, int] | None,
) -> Any:
    """The base's own scheduler for a regime that hands over between it and the student (``base_schedule="own"``:
    ``base_steps``, default the registry's)."""
    if base_schedule != "own":
        raise ValueError(f"base_schedule must be 'student' or 'own', got {base_schedule!r}")
    steps = pair.base.num_inference_steps if base_steps is None else base_steps
    return make_scheduler(pair, "base", device, steps, None, latent_shape)


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
        scheduler = make_scheduler(
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
        base = _own_base_schedule(pair, device, self.base_schedule, self.base_steps, latent_shape)
        handoff = float(student.timesteps[self.k]) if self.k < n else -1.0
        base_count = sum(float(t) > handoff for t in base.timesteps)
        if base_count == 0:
            raise ValueError(
                f"the base's own {len(base.timesteps)}-step schedule has no timestep above the hand-off at {timestep_value(handoff)}, "
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
        base = _own_base_schedule(pair, device, self.base_schedule, self.base_steps, latent_shape)
        handoff = float(student.timesteps[first])
        start = next((i for i, t in enumerate(base.timesteps) if float(t) <= handoff), len(base.timesteps))
        if start == len(base.timesteps):
            raise ValueError(f"the base's schedule has no timestep at or below {timestep_value(handoff)}")
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
        return self.inner.segments(pair, device, latent_shape)

    @property
    def inner(self) -> Regime:
        return regime_from_name(self.over) if isinstance(self.over, str) else self.over

    def candidate_seeds(self, seeds: Sequence[int]) -> list[int]:
        return self.inner.candidate_seeds(seeds)

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
"""Every regime by name: the one registry that ``sample``, every command and ``compare`` read. The remedies
(:mod:`conceptspace.sampling.remedies`) add theirs (``REGIMES[name] = cls``) when the package is imported; a plugin
adds its own, or lists its module in :data:`REGIME_PROVIDERS`."""

REGIME_PROVIDERS: list[str] = []
"""Modules imported before a regime is looked up by name, so that their regimes are registered (a plugin appends
its own module here)."""

_PATH_CHARACTERS = re.compile(r'[/\\:*?"<>|]+')


def registered_regimes() -> dict[str, type[Regime]]:
    """:data:`REGIMES` after every provider has registered (name → regime class)."""
    for module in REGIME_PROVIDERS:
        importlib.import_module(module)
    return REGIMES


def check_regime_name(name: str, spec: str | None = None) -> None:
    """Refuse a name that no registered regime has, suggesting the close ones (``hybird`` → ``hybrid``)."""
    known = [n for n in registered_regimes() if n != "named"]
    if name in known:
        return
    where = f" in {spec!r}" if spec is not None and spec != name else ""
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ValueError(f"unknown regime {name!r}{where}; {hint}known regimes: {', '.join(known)}")


def regime_from_name(name: str, /, **options: Any) -> Regime:
    """Build a regime by name; options that the regime does not take are ignored (None values too). A remedy's
    ``over`` given as a described regime (a dict with its ``"regime"`` name, as run.json holds it) is built too."""
    regimes = registered_regimes()
    if isinstance(options.get("over"), Mapping):
        inner = {
            k: tuple(v) if isinstance(v, list) else v for k, v in options["over"].items()
        }  # JSON's lists
        options = {**options, "over": regime_from_name(inner.pop("regime"), **inner)}
    if name != "named":
        check_regime_name(name)
    cls = regimes[name]
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
    check_regime_name(name, str(spec))
    regimes = registered_regimes()
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
