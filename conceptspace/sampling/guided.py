"""Diffusers' guiders as a regime: any ``diffusers.guiders`` class (CFG-Zero*, APG, tangential CFG, …) — or one
of conceptspace's own (``conceptspace.modular``: CADS, cond-noise, uncond-first, one-pass CFG) — combines the
network's predictions at the steps of another regime, so every guider is a ``compare`` method
(``"guider:guider=AdaptiveProjectedGuidance:guidance_scale=5"``).

:class:`Guided` keeps what ``over`` chooses per step (network, schedule, hand-offs) and replaces only how a
step's passes are run and combined: :class:`GuidedDenoiser` drives the guider as diffusers' modular loop
denoisers do (``set_state`` → ``prepare_inputs`` → one network call per batch → ``guider(batches).pred``).

Guidance scales are passed to the guider as they are, in diffusers' convention (``uncond + s·(cond − uncond)``).
That is conceptspace's convention for SD, SDXL, SD3, FLUX and PixArt; Z-Image's scale (weight 1 + s) and
Qwen-Image's norm-rescaled true CFG combine differently, so there the guider's CFG is diffusers', not the family's.

One-pass rule: diffusers' guiders run two passes at every scale except 1 (``ClassifierFreeGuidance`` at a
distilled student's scale 0 returns the *unconditional* prediction); conceptspace and diffusers' classic pipelines
run one conditional pass at scales <= 1 (:meth:`Family.cfg_weight`). Each guider runs as diffusers wrote it — the
point is to compare diffusers' methods as they are — and ``guider="OnePassCFGGuidance"``
(:mod:`conceptspace.modular.one_pass`) is CFG with conceptspace's rule: over ``"distilled"`` it is the plain
student exactly.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from conceptspace import schedules
from conceptspace.models.families import Conditioning
from conceptspace.models.loading import ModelPair
from conceptspace.sampling.loop import Denoiser, Segment, switched_on
from conceptspace.sampling.regimes import REGIMES, Regime
from conceptspace.sampling.remedies import denoiser_fields, describe_remedy, inner_regime, wrap_denoisers

__all__ = [
    "CFGZeroStar",
    "CONCEPTSPACE_GUIDERS",
    "Guided",
    "GuidedDenoiser",
    "available_guiders",
    "build_guider",
    "guider_class",
]

CONCEPTSPACE_GUIDERS: dict[str, str] = {
    "CADSGuidance": "conceptspace.modular.cads",
    "CondNoiseGuidance": "conceptspace.modular.cond_noise",
    "UncondFirstGuidance": "conceptspace.modular.uncond_first",
    "OnePassCFGGuidance": "conceptspace.modular.one_pass",
}
"""conceptspace's own guiders by class name → the module defining it. Imported by name (``importlib``) only when
one is asked for: :mod:`conceptspace.modular` sits above the sampler in the package's layers, and importing it
imports diffusers' modular pipelines."""

_NO_CFG_SCALE = 1.0
"""The scale at which diffusers' (default-formulation) guiders run one conditional pass."""


# ------------------------------------------------------------------------------------------------- guider lookup
def available_guiders() -> list[str]:
    """Every guider name :class:`Guided` takes: diffusers' guider classes, then conceptspace's."""
    import diffusers.guiders as guiders

    base = guiders.BaseGuidance
    found = [
        name
        for name in dir(guiders)
        if isinstance(cls := getattr(guiders, name), type) and issubclass(cls, base) and cls is not base
    ]
    return sorted(found) + sorted(CONCEPTSPACE_GUIDERS)


def guider_class(name: str) -> type:
    """The guider class called ``name``: looked up as an attribute of ``diffusers.guiders`` (never evaluated), or
    of its conceptspace module for the names in :data:`CONCEPTSPACE_GUIDERS`; a ValueError listing the known
    names otherwise."""
    if isinstance(name, str) and name in CONCEPTSPACE_GUIDERS:
        return getattr(importlib.import_module(CONCEPTSPACE_GUIDERS[name]), name)
    import diffusers.guiders as guiders

    cls = getattr(guiders, name, None) if isinstance(name, str) and not name.startswith("_") else None
    if isinstance(cls, type) and issubclass(cls, guiders.BaseGuidance) and cls is not guiders.BaseGuidance:
        return cls
    known = available_guiders()
    hint = ""
    if isinstance(name, str) and "," in name:
        hint = "separate a regime's options with ':' (guider:guider=…:guidance_scale=5), not ','; "
    elif close := difflib.get_close_matches(str(name), known, n=2, cutoff=0.6):
        hint = f"did you mean {' or '.join(close)}? "
    raise ValueError(f"guider: unknown guider {name!r}; {hint}known guiders: {', '.join(known)}")


@contextlib.contextmanager
def _quiet_guiders() -> Iterator[None]:
    """Diffusers logs an "experimental feature" warning at every guider's construction; this regime builds one
    per denoiser (and per batch of images), so the warning would drown the run's own output."""
    logger = logging.getLogger("diffusers.guiders.guider_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_guider(cls: type, guidance_scale: float | None, options: Mapping[str, Any] | None = None) -> Any:
    """``cls`` at ``guidance_scale`` (None: the class's own default), with ``options`` passed on as they are (a
    regime that fixes its guider sets that guider's own options: CFG-Zero*'s ``zero_init_steps``). A guider with
    one scale per frequency band (``guidance_scales``: FrequencyDecoupledGuidance) gets the scale in every band. A
    guider that cannot be built so (one that needs layers to skip, a missing optional package) is a ValueError
    naming it."""
    kwargs: dict[str, Any] = dict(options or {})
    if guidance_scale is not None:
        params = inspect.signature(cls.__init__).parameters
        if "guidance_scale" in params:
            kwargs["guidance_scale"] = float(guidance_scale)
        elif "guidance_scales" in params:
            default = params["guidance_scales"].default
            bands = len(default) if isinstance(default, list | tuple) else 1
            kwargs["guidance_scales"] = [float(guidance_scale)] * bands
        else:
            raise ValueError(f"guider: {cls.__name__} takes no guidance scale; leave guidance_scale unset")
    try:
        with _quiet_guiders():
            return cls(**kwargs)
    except (TypeError, ValueError, ImportError, RuntimeError) as error:
        raise ValueError(
            f"guider: {cls.__name__} cannot be built from a guidance scale alone: {error}"
        ) from error


# ---------------------------------------------------------------------------------------------------- denoiser
@dataclass
class GuidedDenoiser(Denoiser):
    """A denoiser whose passes a diffusers guider chooses and combines, as diffusers' modular loops drive it.

    ``position``/``total``: the step's place in the whole schedule (the guider's ``step`` and
    ``num_inference_steps``, which its start/stop fractions and CFG-Zero*'s zero-init read); ``timestep``: the
    step's timestep (what the guider is told before a call, for :attr:`needs_negative`). ``guiders`` is shared by
    the denoisers of one regime's segments: one guider per model and scale, carrying its state (APG's momentum)
    from step to step, rebuilt at step 0 so that each batch of images starts fresh.
    """

    guider_class: Any = None
    guider_scale: float = _NO_CFG_SCALE
    position: int = 0
    total: int = 1
    timestep: float = 0.0
    guiders: dict[tuple[str, float], Any] = field(default_factory=dict, repr=False, compare=False)
    guider_options: dict[str, Any] = field(default_factory=dict)

    def _fresh(self) -> Any:
        guider = build_guider(self.guider_class, self.guider_scale, self.guider_options)
        guider.set_state(
            step=self.position, num_inference_steps=self.total, timestep=torch.tensor(self.timestep)
        )
        return guider

    @property
    def conditions(self) -> int:
        """How many passes the guider runs at this step (its ``num_conditions`` once set to the step)."""
        return int(self._fresh().num_conditions)

    @property
    def uses_cfg(self) -> bool:
        return self.conditions > 1

    @property
    def passes(self) -> int:
        return self.conditions  # three or more for guiders such as skip-layer guidance

    @property
    def needs_negative(self) -> bool:
        """True where the guider runs more than one condition at this step, or asks for the unconditional inputs
        before the loop as diffusers' modular encoders read it (a guider not yet set to a step:
        ``UncondFirstGuidance`` runs them alone, in one pass): the sampler then encodes the negative prompt."""
        unset = build_guider(self.guider_class, self.guider_scale, self.guider_options)
        return self.conditions > 1 or unset.num_conditions > 1

    def _guider(self) -> Any:
        if self.position == 0:
            self.guiders.clear()  # a new batch of images: no state from the last one
        key = (self.name, self.guider_scale)
        if key not in self.guiders:
            self.guiders[key] = build_guider(self.guider_class, self.guider_scale, self.guider_options)
        return self.guiders[key]

    def __call__(self, model_input: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        guider = self._guider()
        if hasattr(
            guider, "set_seeds"
        ):  # conceptspace's seeded guiders draw each sample's noise from its seed
            guider.set_seeds(cond.seeds)
        guider.set_state(step=self.position, num_inference_steps=self.total, timestep=t)
        negative = cond.negative or {}
        data = {name: (value, negative.get(name)) for name, value in cond.inputs.items()}
        batches = guider.prepare_inputs(data)
        guidance = None
        if self.embeds_guidance:
            guidance = self.family.guidance_condition(
                self.pipeline, self.network, self.guidance_scale, model_input.shape[0]
            )
            guidance = guidance.to(device=model_input.device, dtype=model_input.dtype)
        for batch in batches:
            inputs = {name: getattr(batch, name, None) for name in data}
            if any(value is None for value in inputs.values()):
                raise ValueError(
                    f"guider: {type(guider).__name__} runs the unconditional inputs at step {self.position}, but this "
                    "conditioning was encoded without them: encode it with cfg=True (conceptspace.sample does)"
                )
            guider.prepare_models(self.network)
            try:
                with switched_on(self.adapter):
                    batch.noise_pred = self.family.predict(self.network, model_input, t, inputs, guidance)
            finally:
                guider.cleanup_models(self.network)
        return guider(batches).pred


# ------------------------------------------------------------------------------------------------------ regime
@dataclass(frozen=True)
class Guided(Regime):
    """``over``'s steps with a diffusers guider running and combining each step's passes.

    ``guider``: a class name from ``diffusers.guiders`` (default CFG-Zero*, Fan et al., arXiv 2503.18886) or one of
    conceptspace's (:data:`CONCEPTSPACE_GUIDERS`). ``guidance_scale``: the guider's scale at every step (None:
    each step's own — the base's CFG scale, the student's 0). A network that takes its guidance scale as an input
    (an LCM student) keeps getting its own there, and with ``guidance_scale=None`` its guider runs at 1 (no CFG on
    top of it). diffusers' guiders run two passes below scale 1: over ``"distilled"`` (scale 0) plain
    ``ClassifierFreeGuidance`` returns the unconditional prediction; ``"OnePassCFGGuidance"`` runs the student's
    one conditional pass (the module's docstring). Costs the guider's passes per step.
    """

    over: Regime | str = "distilled"
    guider: str = "ClassifierFreeZeroStarGuidance"
    guidance_scale: float | None = None
    name: str = field(default="guider", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # checks guidance_scale (check_guidance: NaN would silently turn guidance off)
        # unknown or unbuildable: refused now
        build_guider(guider_class(self.guider), self.guidance_scale, self.guider_options())

    def guider_options(self) -> dict[str, Any]:
        """Options of the guider beyond its scale (none here: each guider at its class's defaults); a subclass
        that fixes its guider sets that guider's own."""
        return {}

    def step_scale(self, den: Denoiser) -> float:
        """The scale the guider runs at on ``den``'s step: ``guidance_scale``, or with None the step's own (1 for
        a network that takes its scale as an input: no CFG on top of it)."""
        if self.guidance_scale is not None:
            return float(self.guidance_scale)
        return _NO_CFG_SCALE if den.embeds_guidance else float(den.guidance_scale)

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        inner = inner_regime(self.over).segments(pair, device, latent_shape)
        total = sum(len(s.denoisers) for s in inner)
        cls = guider_class(self.guider)
        shared: dict[tuple[str, float], Any] = {}
        options = self.guider_options()

        def wrap(den: Denoiser, segment: Segment, index: int, position: int) -> Denoiser:
            if type(den) is not Denoiser:
                raise ValueError(
                    f"guider: {inner_regime(self.over).name!r} changes its denoisers' calls ({type(den).__name__}), which "
                    "a guider would replace: use the remedy's guider instead (guider=CADSGuidance, CondNoiseGuidance, "
                    "UncondFirstGuidance), or put the remedy outside the guider (repellency over a guider regime)"
                )
            scale = self.step_scale(den)
            own = denoiser_fields(den)
            if not den.embeds_guidance:  # what run.json's guidance_used reports: the scale the guider ran at
                own["guidance_scale"] = float(scale)
            return GuidedDenoiser(
                **own, guider_class=cls, guider_scale=float(scale), position=position,
                total=total, timestep=float(segment.scheduler.timesteps[index]), guiders=shared,
                guider_options=dict(options),
            )  # fmt: skip

        return wrap_denoisers(inner, wrap)

    def describe(self) -> dict[str, Any]:
        return describe_remedy(self)


@dataclass(frozen=True)
class CFGZeroStar(Guided):
    """CFG-Zero* (Fan et al., arXiv 2503.18886) as a regime of its own: diffusers' ``ClassifierFreeZeroStarGuidance``
    over ``over`` (default the student alone), with its two parts as options.

    - **Zero-init** (``zero_init_steps``; default None: the paper's and diffusers' 1 on a flow-matching network,
      0 on any other, where zeros mean something else — below): the first steps' network output is replaced by
      zeros. The paper means a flow model's *velocity*: a zero velocity leaves the latent
      where it is, so the first step is spent doing nothing (the paper finds the early velocity estimate worse
      than none). Zeros mean that only in flow parametrisation: on an ε-prediction network a zero ε̂ makes the
      step's x̂0 the input itself divided by α (at SDXL's t = 999, ≈15× the noise), which the next step inherits.
    - **Optimised scale** s* = ⟨c, u⟩/‖u‖² per sample: CFG becomes s*·u + w·(c − s*·u) (``guidance_scale`` w).
      At w = 1 diffusers runs one conditional pass and s* plays no part.

    ``guidance_scale=None`` (default): each step's own guidance in the guider's convention — the step's scale where
    it runs CFG (a base step at its registry scale: full CFG-Zero*), else 1 (one conditional pass: a distilled
    student, whose guidance is baked in, and a network that takes its scale as an input). Unlike the ``guider``
    regime's None, it never hands a student's 0 to the guider (which would run the scaled *unconditional*
    prediction).

    So on a 1–4-step flow student (SD3.5-Turbo, FLUX.1-schnell, Qwen-Image-Lightning) the default is the student's
    own passes with its first step zeroed, at its cost: the one part of CFG-Zero* that applies to a
    guidance-distilled model, which runs no unconditional pass for s* to rescale. It spends a quarter (4 steps) or
    half (2 steps) of the steps on nothing (1 step: refused): the second step starts from the unchanged initial
    noise at a lower noise level than that noise has — not a state the student was distilled on; what that does to
    its images is not measured here. On an ε- or v-prediction student (DMD2, SDXL-Turbo, LCM) a zeroed first step
    would be destructive (see above), so the default there is no zero-init, which at scale 1 is the student
    itself: give ``guidance_scale`` > 1 for the optimised-scale CFG on top of the student (two passes a step, on a
    student distilled to run without CFG: untested here). A zero-init covering every
    step is refused (the output would be the initial noise). The zero setting — ``zero_init_steps=0`` and
    ``guidance_scale=1`` — is ``over`` exactly (one conditional pass a step, returned as it is).
    """

    zero_init_steps: int | None = None
    guider: str = field(default="ClassifierFreeZeroStarGuidance", init=False)
    name: str = field(default="cfg-zero-star", init=False)

    def __post_init__(self) -> None:
        steps = self.zero_init_steps
        if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
            raise ValueError(f"cfg-zero-star: zero_init_steps must be a whole number >= 0, got {steps!r}")
        super().__post_init__()

    def guider_options(self) -> dict[str, Any]:
        # None is settled per pair in segments(); the guider built to check the options takes the paper's 1
        return {"zero_init_steps": 1 if self.zero_init_steps is None else self.zero_init_steps}

    def step_scale(self, den: Denoiser) -> float:
        if self.guidance_scale is not None:
            return float(self.guidance_scale)
        return float(den.guidance_scale) if den.uses_cfg else _NO_CFG_SCALE

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        if (
            self.zero_init_steps is None
        ):  # the paper's zero-init where zeros mean "stay": a flow network's first step
            first = inner_regime(self.over).segments(pair, device, latent_shape)[0].denoisers[0]
            steps = 1 if first.prediction_type == schedules.FLOW else 0
            return replace(self, zero_init_steps=steps).segments(pair, device, latent_shape)
        segments = super().segments(pair, device, latent_shape)
        total = sum(len(segment.denoisers) for segment in segments)
        if self.zero_init_steps >= total:
            raise ValueError(
                f"cfg-zero-star: zero_init_steps={self.zero_init_steps} zeroes all {total} steps of "
                f"{inner_regime(self.over).name!r}, so the output would be the initial noise: use zero_init_steps < "
                f"{total} (0: no zero-init)"
            )
        return segments


REGIMES["guider"] = Guided  # type: ignore[assignment]
REGIMES["cfg-zero-star"] = CFGZeroStar  # type: ignore[assignment]
