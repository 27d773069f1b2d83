"""The field's remedies for a distilled model's lost diversity, as regimes that wrap any other regime.

Each remedy takes the regime it modifies in ``over`` (a regime or its name; default the student alone) and changes
only what its method changes, so it composes with every regime and runs wherever a regime does (generate,
trajectory, diversity, runs, SliderSpace activation); ``describe()`` — the ``"regime"`` entry of run.json — says
what ran, nested regime included.

- :class:`CADS` — condition-annealed sampling (Sadat et al., ICLR 2024, arXiv 2310.17347): Gaussian noise on the
  text embedding, annealed from all noise at high t to none below ``tau1``, then rescaled to the clean embedding's
  mean and standard deviation.
- :class:`CondNoise` — "seed variance" conditioning noise (the SeedVarianceEnhancer node for ComfyUI, InvokeAI's
  Z-Image option, invoke-ai/InvokeAI#8753): seeded noise on a random share of the embedding's values, in the first
  steps only.
- :class:`UncondFirst` — the community's "CFG 0 for the first step(s)": the first steps see only the
  unconditional (empty or negative prompt) inputs, in one pass; the prompt from the next step on.
- :class:`IntervalGuidance` — limited-interval guidance (Kynkäänniemi et al., arXiv 2404.07724): the base model's
  steps use CFG only where the noise level lies inside an interval (in EDM's σ), one pass elsewhere.
- :class:`Renoise` — stochasticity in the student's re-noising: between its steps, the noise the next step starts
  from mixes the step's own noise estimate with fresh noise (η = 0: a deterministic DDIM/Euler step; η = 1: all
  fresh, as consistency-model multistep sampling does; flow-matching students' Euler steps are deterministic).
- :class:`SliderSpaceScales` — the base's SliderSpace sliders applied to the student at random scales per sample
  (the SliderSpace paper's diversity application).

The noise of the conditioning remedies is drawn per sample from its seed (one CPU generator each, like the
latent noise), so an image depends on its prompt and seed alone, whatever its batch.
"""

from __future__ import annotations

import importlib
import math
import os
import zlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from conceptspace import schedules
from conceptspace.models.families import Conditioning
from conceptspace.models.loading import ModelPair
from conceptspace.sampling.loop import Denoiser, Segment, make_denoiser
from conceptspace.sampling.regimes import REGIMES, Regime, regime_from_name

__all__ = [
    "CADS",
    "CADSDenoiser",
    "CondNoise",
    "CondNoiseDenoiser",
    "IntervalGuidance",
    "Renoise",
    "SliderDenoiser",
    "SLIDER_SOURCES",
    "SLIDER_SOURCE_PROVIDERS",
    "SliderSpaceScales",
    "UncondFirst",
    "UncondFirstDenoiser",
    "cads_corrupt",
    "cads_gamma",
    "cond_noise_perturb",
    "edm_sigma",
    "denoiser_fields",
    "describe_remedy",
    "evaluations",
    "inner_regime",
    "noise_generator",
    "require_seeds",
    "row_noise",
    "row_stats",
    "slider_files",
    "token_weights",
    "wrap_denoisers",
]


# --------------------------------------------------------------------------------------------- shared machinery
def inner_regime(over: Regime | str) -> Regime:
    """The regime a remedy wraps, from the regime or its name."""
    return regime_from_name(over) if isinstance(over, str) else over


def describe_remedy(remedy: Regime) -> dict[str, Any]:
    """A remedy's run.json entry: its name and every field, the wrapped regime described in turn."""
    described = {"regime": remedy.name}
    for f in fields(remedy):  # type: ignore[arg-type]
        value = getattr(remedy, f.name)
        if f.name != "name":
            described[f.name] = value.describe() if isinstance(value, Regime) else value
    return described


def noise_generator(seed: int, salt: str, step: int | None = None) -> torch.Generator:
    """A CPU generator for one sample's conditioning noise, independent of its latent noise (salted seed)."""
    mixed = zlib.crc32(f"{salt}:{step}".encode()) ^ (int(seed) * 2654435761 % 2**32)
    return torch.Generator("cpu").manual_seed(mixed % 2**63)


def row_noise(like: torch.Tensor, seeds: tuple[int, ...], salt: str, step: int | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, row ``i`` from ``seeds[i]``."""
    rows = [
        torch.randn(like.shape[1:], generator=noise_generator(seed, salt, step), dtype=torch.float32)
        for seed in seeds
    ]
    return torch.stack(rows).to(device=like.device, dtype=like.dtype)


def token_weights(inputs: dict[str, torch.Tensor], key: str, mask_key: str | None) -> torch.Tensor:
    """Per-element weights of ``inputs[key]`` (1: a real token, 0: padding), broadcastable to it: the family's
    text mask for a padded sequence, all ones otherwise."""
    clean = inputs[key]
    mask = inputs.get(mask_key) if mask_key else None
    if mask is None or clean.dim() != 3 or mask.shape != clean.shape[:2]:
        return torch.ones(
            (clean.shape[0],) + (1,) * (clean.dim() - 1), dtype=clean.dtype, device=clean.device
        )
    return (mask != 0).to(clean.dtype)[..., None]


def row_stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's mean and standard deviation over its real tokens only (padding would make them depend on how
    long the longest prompt of the batch is)."""
    dims = tuple(range(1, x.dim()))
    count = (weights.expand_as(x)).sum(dims, keepdim=True)
    mean = (x * weights).sum(dims, keepdim=True) / count
    var = (((x - mean) ** 2) * weights).sum(dims, keepdim=True) / (count - 1).clamp(min=1)
    return mean, var.sqrt()


def require_seeds(cond: Conditioning, remedy: str) -> tuple[int, ...]:
    if cond.seeds is None or len(cond.seeds) != next(iter(cond.inputs.values())).shape[0]:
        raise ValueError(
            f"{remedy} draws its conditioning noise from each sample's seed, but this conditioning is not bound to "
            "its batch's seeds: sample through conceptspace.sample / sample_latents, which bind them"
        )
    return cond.seeds


def wrap_denoisers(segments: list[Segment], wrap: Any) -> list[Segment]:
    """The same segments with each step's denoiser passed through ``wrap(denoiser, segment, index, position)``
    (``position``: the step's place in the whole schedule)."""
    wrapped, position = [], 0
    for segment in segments:
        denoisers = []
        for offset, den in enumerate(segment.denoisers):
            denoisers.append(wrap(den, segment, segment.start + offset, position))
            position += 1
        wrapped.append(replace(segment, denoisers=denoisers))
    return wrapped


def denoiser_fields(den: Denoiser) -> dict[str, Any]:
    """A denoiser's plain :class:`Denoiser` fields, to build a remedy's denoiser subclass over it."""
    return {f.name: getattr(den, f.name) for f in fields(Denoiser)}


def evaluations(segments: list[Segment]) -> dict[str, int]:
    """Network evaluations per image of a regime's segments: per model, and in all (a CFG step is two; the samples
    a selecting regime starts and drops count as a share of the images it keeps)."""
    counts = {"base": 0, "distilled": 0}
    for segment in segments:
        for offset, den in enumerate(segment.denoisers):
            share = segment.select.rows_per_image(segment.start + offset) if segment.select is not None else 1
            counts[den.name] += den.passes * share
    return {**counts, "total": counts["base"] + counts["distilled"]}


# ----------------------------------------------------------------------------------------------------------- CADS
def cads_gamma(t: float, tau1: float, tau2: float) -> float:
    """CADS's annealing schedule γ(t) for ``t`` in [0, 1] (1: pure noise): 1 below ``tau1``, 0 above ``tau2``,
    linear between."""
    if t <= tau1:
        return 1.0
    if t >= tau2:
        return 0.0
    return (tau2 - t) / (tau2 - tau1)


def cads_corrupt(
    clean: torch.Tensor,
    real: torch.Tensor,
    seeds: tuple[int, ...],
    key: str,
    step: int,
    gamma: float,
    *,
    noise_scale: float,
    psi: float,
    rescale: bool,
) -> torch.Tensor:
    """One text input ``clean`` (batch first) CADS-corrupted at γ = ``gamma``: √γ·y + s·√(1 − γ)·n, rescaled to
    y's per-row mean and std over its real tokens (``real``: :func:`token_weights`) and mixed back with ``psi``;
    padding stays as it was. Row ``i``'s noise comes from ``seeds[i]``, salted by the input's name ``key`` and the
    rounded timestep ``step`` — the one home of CADS's maths, shared by :class:`CADSDenoiser` and the modular
    guider (``conceptspace.modular.CADSGuidance``), which draw the same noise for the same seed and name."""
    noise = row_noise(clean, seeds, f"cads:{key}", step=step)
    noisy = math.sqrt(gamma) * clean + noise_scale * math.sqrt(1 - gamma) * noise
    if rescale:
        mean, std = row_stats(clean, real)
        noisy_mean, noisy_std = row_stats(noisy, real)
        rescaled = (noisy - noisy_mean) / noisy_std * std + mean
        noisy = psi * rescaled + (1 - psi) * noisy
    return torch.where(real.expand_as(clean) > 0, noisy, clean)


@dataclass
class CADSDenoiser(Denoiser):
    """A denoiser whose text embedding is CADS-corrupted at every call (the unconditional branch untouched)."""

    tau1: float = 0.6
    tau2: float = 0.9
    noise_scale: float = 0.25
    psi: float = 1.0
    rescale: bool = True
    train_timesteps: int = 1000

    def __call__(self, model_input: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        gamma = cads_gamma(float(t) / self.train_timesteps, self.tau1, self.tau2)
        if self.noise_scale == 0 or gamma == 1.0:
            return super().__call__(model_input, t, cond)
        seeds = require_seeds(cond, "CADS")
        inputs = dict(cond.inputs)
        for key in self.family.text_inputs:
            real = token_weights(cond.inputs, key, self.family.text_mask_input)
            inputs[key] = cads_corrupt(
                inputs[key], real, seeds, key, int(round(float(t))), gamma,
                noise_scale=self.noise_scale, psi=self.psi, rescale=self.rescale,
            )  # fmt: skip
        return super().__call__(model_input, t, replace(cond, inputs=inputs))


@dataclass(frozen=True)
class CADS(Regime):
    """Condition-annealed sampling over ``over``: at a step of normalised time t (1: noise), the text embedding
    y becomes √γ(t)·y + s·√(1 − γ(t))·n, rescaled to y's mean and std and mixed back with weight ``psi``.

    Defaults are the paper's (τ1 = 0.6, τ2 = 0.9, s = 0.25, ψ = 1 with rescaling). ``noise_scale=0`` is the plain
    ``over`` regime exactly. Costs nothing: the same evaluations as ``over``.
    """

    over: Regime | str = "distilled"
    tau1: float = 0.6
    tau2: float = 0.9
    noise_scale: float = 0.25
    psi: float = 1.0
    rescale: bool = True
    name: str = field(default="cads", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.tau1 < self.tau2 <= 1:
            raise ValueError(f"cads: need 0 <= tau1 < tau2 <= 1, got tau1={self.tau1}, tau2={self.tau2}")
        if not (math.isfinite(self.noise_scale) and self.noise_scale >= 0):
            raise ValueError(f"cads: noise_scale must be a finite number >= 0, got {self.noise_scale!r}")
        if not 0 <= self.psi <= 1:
            raise ValueError(f"cads: psi must lie in [0, 1], got {self.psi!r}")

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        params = {k: getattr(self, k) for k in ("tau1", "tau2", "noise_scale", "psi", "rescale")}

        def wrap(den: Denoiser, segment: Segment, index: int, position: int) -> Denoiser:
            steps = int(segment.scheduler.config.num_train_timesteps)
            return CADSDenoiser(**denoiser_fields(den), **params, train_timesteps=steps)

        return wrap_denoisers(inner_regime(self.over).segments(pair, device, latent_shape), wrap)

    def describe(self) -> dict[str, Any]:
        return describe_remedy(self)


# ----------------------------------------------------------------------------------------------------- cond-noise
def cond_noise_perturb(
    clean: torch.Tensor, real: torch.Tensor, seeds: tuple[int, ...], key: str, strength: float, share: float
) -> torch.Tensor:
    """One text input ``clean`` (batch first) with seeded noise of ``strength`` times its per-row std on a
    ``share`` of its real tokens' values (``real``: :func:`token_weights`). Row ``i``'s noise and its choice of
    values come from ``seeds[i]`` salted by the input's name ``key`` (the same draw at every step) — the one home
    of the maths, shared by :class:`CondNoiseDenoiser` and ``conceptspace.modular.CondNoiseGuidance``."""
    noise = row_noise(clean, seeds, f"cond-noise:{key}")  # the same for a sample at every noisy step
    chosen = row_noise(clean, seeds, f"cond-noise-share:{key}").float()
    chosen = (torch.special.ndtr(chosen) < share).to(clean.dtype) * real  # uniform < share, real tokens
    _, std = row_stats(clean, real)
    return clean + chosen * strength * std * noise


@dataclass
class CondNoiseDenoiser(Denoiser):
    """A denoiser whose text embedding gets one seeded noise draw per sample on a random share of its values."""

    strength: float = 1.0
    share: float = 0.5

    def __call__(self, model_input: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self.strength == 0:
            return super().__call__(model_input, t, cond)
        seeds = require_seeds(cond, "cond-noise")
        inputs = dict(cond.inputs)
        for key in self.family.text_inputs:
            real = token_weights(cond.inputs, key, self.family.text_mask_input)
            inputs[key] = cond_noise_perturb(inputs[key], real, seeds, key, self.strength, self.share)
        return super().__call__(model_input, t, replace(cond, inputs=inputs))


@dataclass(frozen=True)
class CondNoise(Regime):
    """Seeded noise on the text embedding for the first steps of ``over`` ("seed variance" enhancement).

    At the steps whose place in the schedule is below ``until`` (a fraction of the steps; default 0.2: the first
    step of a 4-step student), a ``share`` of the embedding's values (default 0.5) gets noise of ``strength`` times
    the embedding's standard deviation (default 1.0). Defaults: the SeedVarianceEnhancer node's 50 % of values and
    20 % of steps; the strength in InvokeAI's calibrated form (relative to the embedding's std, range 0–2).
    """

    over: Regime | str = "distilled"
    strength: float = 1.0
    share: float = 0.5
    until: float = 0.2
    name: str = field(default="cond-noise", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(f"cond-noise: strength must be a finite number >= 0, got {self.strength!r}")
        for option in ("share", "until"):
            value = getattr(self, option)
            if not 0 < value <= 1:
                raise ValueError(f"cond-noise: {option} must lie in (0, 1], got {value!r}")

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        inner = inner_regime(self.over).segments(pair, device, latent_shape)
        total = sum(len(s.denoisers) for s in inner)

        def wrap(den: Denoiser, segment: Segment, index: int, position: int) -> Denoiser:
            if position / total >= self.until:
                return den
            return CondNoiseDenoiser(**denoiser_fields(den), strength=self.strength, share=self.share)

        return wrap_denoisers(inner, wrap)

    def describe(self) -> dict[str, Any]:
        return describe_remedy(self)


# --------------------------------------------------------------------------------------------------- uncond-first
@dataclass
class UncondFirstDenoiser(Denoiser):
    """A denoiser that runs the unconditional inputs (``cond.negative``: the empty or negative prompt) alone, in one
    pass: "CFG 0" for a step.

    It runs no CFG (:attr:`uses_cfg` is false: one pass) but :attr:`needs_negative` asks the sampler to encode the
    unconditional inputs it runs on.
    """

    @property
    def uses_cfg(self) -> bool:
        return False

    @property
    def needs_negative(self) -> bool:
        return True

    def __call__(self, model_input: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if cond.negative is None:
            raise ValueError(
                "uncond-first runs the unconditional inputs, but this conditioning was encoded without them: "
                "encode it with cfg=True (conceptspace.sample does, for this regime)"
            )
        plain = Denoiser(**denoiser_fields(self))
        if plain.uses_cfg:  # one pass: the unconditional inputs take the conditional branch's place
            plain = replace(plain, guidance_scale=self.family.single_pass_scale)
        return plain(model_input, t, replace(cond, inputs=cond.negative, negative=None))


@dataclass(frozen=True)
class UncondFirst(Regime):
    """``over`` with its first ``steps`` steps (default 1) run on the unconditional inputs alone, in one pass — the
    community's "CFG 0 for the first step(s)" for distilled students: the prompt-free first step lays out a
    composition the prompt does not pull towards its mode; the prompt takes over from the next step.

    The unconditional inputs are the family's negative conditioning: ``negative_prompt``'s, or without one what the
    family's pipeline uses for CFG (SDXL: zeros, where its ``force_zeros_for_empty_prompt`` says so; SD: the
    empty prompt's embedding). Steps after the first
    ``steps`` are ``over``'s own. ``steps`` must be at least 1 (the plain regime is ``over`` itself) and fewer than
    the schedule's steps (else no step sees the prompt). Costs nothing: one pass per step, as a one-pass ``over``.
    """

    over: Regime | str = "distilled"
    steps: int = 1
    name: str = field(default="uncond-first", init=False)

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        inner = inner_regime(self.over).segments(pair, device, latent_shape)
        total = sum(len(s.denoisers) for s in inner)
        if self.steps >= total:
            raise ValueError(
                f"uncond-first: steps={self.steps} covers all {total} steps of {inner_regime(self.over).name!r}, so no "
                f"step would see the prompt: use steps < {total}"
            )

        def wrap(den: Denoiser, segment: Segment, index: int, position: int) -> Denoiser:
            return UncondFirstDenoiser(**denoiser_fields(den)) if position < self.steps else den

        return wrap_denoisers(inner, wrap)

    def describe(self) -> dict[str, Any]:
        return describe_remedy(self)


# ---------------------------------------------------------------------------------------------- interval guidance
def edm_sigma(level: schedules.NoiseLevel) -> float:
    """EDM's noise level σ = sigma/alpha of an input ``x = alpha·x0 + sigma·ε`` (inf at pure noise)."""
    alpha = float(level.alpha)
    return math.inf if alpha <= 0 else float(level.sigma) / alpha


@dataclass(frozen=True)
class IntervalGuidance(Regime):
    """The base model's steps of ``over`` (default the hybrid with ``k=2``) with CFG at ``guidance_scale`` (default:
    the registry's) only where EDM's σ lies in (``sigma_low``, ``sigma_high``], one pass elsewhere.

    Defaults: the interval Kynkäänniemi et al. report for SD-XL and EDM2, σ ∈ (0.28, 5.42]. At pure noise (σ = ∞)
    no CFG runs, so on a schedule that starts there the hybrid's single base step is unchanged: the interval can
    matter from the second base step on, hence ``k=2`` — where that step lies inside it (DMD2's t = 749 on SDXL:
    σ ≈ 4.1). A shift-3 flow student's second step lies above it (Qwen-Image-Lightning 8-step: σ ≈ 21): widen
    the interval there, or nothing is guided. Networks that take the guidance scale as an input are refused.
    """

    over: Regime | str = field(default_factory=lambda: regime_from_name("hybrid", k=2))
    guidance_scale: float | None = None
    sigma_low: float = 0.28
    sigma_high: float = 5.42
    name: str = field(default="interval-guidance", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.sigma_low < self.sigma_high:
            raise ValueError(
                f"interval-guidance: need 0 <= sigma_low < sigma_high, got {self.sigma_low}, {self.sigma_high}"
            )

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        scale = pair.base.guidance_scale if self.guidance_scale is None else self.guidance_scale
        if make_denoiser(pair, "base", scale).embeds_guidance:
            raise ValueError(
                f"interval-guidance limits classifier-free guidance, but {pair.base.name!r} takes its guidance scale "
                "as a network input (one pass at every step): there is no CFG pass to limit"
            )
        single = pair.family.single_pass_scale

        def wrap(den: Denoiser, segment: Segment, index: int, position: int) -> Denoiser:
            if den.name != "base":
                return den
            sigma = edm_sigma(schedules.noise_level(segment.scheduler, index))
            # the wrapped denoiser itself (an inner remedy stays), at the guided or the one-pass scale
            return replace(den, guidance_scale=scale if self.sigma_low < sigma <= self.sigma_high else single)

        return wrap_denoisers(inner_regime(self.over).segments(pair, device, latent_shape), wrap)

    def describe(self) -> dict[str, Any]:
        return describe_remedy(self)


# ------------------------------------------------------------------------------------------------------- renoise
@dataclass(frozen=True)
class Renoise(Regime):
    """The student's steps of ``over`` re-noise their x̂0 with a chosen share of fresh noise: the next step starts
    from α'·x̂0 + σ'·(√(1 − η²)·ε̂ + η·ξ), with ε̂ = (x − α·x̂0)/σ the noise the step's own input implies and ξ
    drawn from the sample's own generator (α', σ': the next step's noise level).

    ``eta=0`` is a deterministic step (DDIM's; on flow matching the Euler step that Turbo, schnell and Lightning
    students run, so there it is the plain regime up to rounding); ``eta=1`` (default) re-noises with fresh noise
    alone — what consistency-model (LCM, DMD2) multistep samplers do, and what diffusers' flow-matching Euler does
    with ``stochastic_sampling=True``. So on a flow student the default adds the stochasticity its sampler lacks;
    on an LCM-scheduled student it is the plain sampler's distribution, and ``eta < 1`` is the change — on the
    testbed's LCM student, ``eta=0`` varies more than fresh noise does (docs/remedies.md).
    Costs nothing: the same evaluations as ``over``.
    """

    over: Regime | str = "distilled"
    eta: float = 1.0
    name: str = field(default="renoise", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.eta, int | float) and 0 <= self.eta <= 1):
            raise ValueError(f"renoise: eta must lie in [0, 1] (the share of fresh noise), got {self.eta!r}")

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        keep = math.sqrt(1 - self.eta**2)

        def renoise(scheduler: Any, index: int, den: Denoiser, model_input: torch.Tensor, x0: torch.Tensor,
                    latents: torch.Tensor, generator: Any) -> torch.Tensor:  # fmt: skip
            from diffusers.utils.torch_utils import randn_tensor  # as the pipelines draw noise

            if den.name != "distilled":
                return latents
            here = schedules.noise_level(scheduler, index)
            implied = (model_input - here.alpha.to(x0) * x0) / here.sigma.to(x0)
            noise = keep * implied
            if self.eta:
                fresh = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                noise = noise + self.eta * fresh
            level = schedules.noise_level(scheduler, index + 1)
            network_input = level.alpha.to(x0) * x0 + level.sigma.to(x0) * noise
            return (network_input / schedules.latent_scale(scheduler, index + 1).to(x0)).to(latents.dtype)

        inner = inner_regime(self.over).segments(pair, device, latent_shape)
        return [replace(segment, renoise=renoise) for segment in inner]

    def describe(self) -> dict[str, Any]:
        return describe_remedy(self)


# --------------------------------------------------------------------------------------------------- sliderspace
SLIDER_SOURCES: dict[str, Path] = {}
"""Shipped SliderSpace studies by prefix: ``"<prefix>:<study>"`` names the folder ``SLIDER_SOURCES[prefix] /
study``. Registered by their packages (the testbed registers ``testbed``), imported on first use through
:data:`SLIDER_SOURCE_PROVIDERS`."""

SLIDER_SOURCE_PROVIDERS = {"testbed": "conceptspace.testbed"}
"""The module that registers each known prefix of :data:`SLIDER_SOURCES`."""


def _shipped_study(entry: str) -> Path | None:
    """The folder a ``<prefix>:<study>`` entry names, or None when the entry has no registered prefix."""
    prefix, sep, study = entry.partition(":")
    if not sep or prefix not in SLIDER_SOURCE_PROVIDERS.keys() | SLIDER_SOURCES.keys():
        return None
    if prefix not in SLIDER_SOURCES:
        importlib.import_module(SLIDER_SOURCE_PROVIDERS[prefix])
    folder = SLIDER_SOURCES[prefix]
    path = folder / study
    if not path.is_dir():
        shipped = ", ".join(f"{prefix}:{p.name}" for p in sorted(folder.iterdir()) if p.is_dir())
        raise FileNotFoundError(f"sliderspace: no shipped study {entry!r}; {prefix} ships {shipped}")
    return path


def slider_files(sliders: str | os.PathLike | tuple[str, ...]) -> list[Path]:
    """The slider files a :class:`SliderSpaceScales` regime applies: each entry a ``.safetensors`` file, a folder
    of them (a SliderSpace study's ``sliders/``, in name order), or ``<prefix>:<study>`` for shipped ones
    (:data:`SLIDER_SOURCES`; ``testbed:a-shape``)."""
    entries = (sliders,) if isinstance(sliders, str | os.PathLike) else tuple(sliders)
    files: list[Path] = []
    for entry in entries:
        path = _shipped_study(str(entry)) or Path(entry).expanduser()
        if path.is_dir():
            files += sorted(path.glob("*.safetensors"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"sliderspace: {path} is neither a slider file nor a folder of them")
    if not files:
        raise ValueError(
            "sliderspace needs the base's SliderSpace sliders: train them with `conceptspace sliderspace discover` "
            "and `conceptspace sliderspace train`, then pass the study's sliders/ folder (sliders=…)"
        )
    return files


def _uniform_scales(seeds: tuple[int, ...], salt: str, bound: float) -> torch.Tensor:
    """One scale per sample, uniform in [−bound, bound], from the sample's seed."""
    draws = [torch.rand((), generator=noise_generator(seed, salt), dtype=torch.float64) for seed in seeds]
    return (torch.stack(draws) * 2 - 1) * bound


@dataclass
class SliderDenoiser(Denoiser):
    """A denoiser whose network carries every slider at a scale drawn per sample from its seed."""

    sliders: tuple[Any, ...] = ()
    scale: float = 1.0

    def __call__(self, model_input: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        from conceptspace.lora import apply_lora

        if self.scale == 0 or not self.sliders:
            return super().__call__(model_input, t, cond)
        seeds = require_seeds(cond, "sliderspace")
        handles = []
        try:
            for k, lora in enumerate(self.sliders):
                scales = _uniform_scales(seeds, f"sliderspace:{k}", self.scale)
                handles.append(apply_lora(self.network, lora, scale=scales, track_timestep=False))
            return super().__call__(model_input, t, cond)
        finally:
            for handle in handles:
                handle.remove()


@dataclass(frozen=True)
class SliderSpaceScales(Regime):
    """The base's SliderSpace sliders on the student's steps of ``over``, each at a random scale per sample: the
    SliderSpace paper's diversity application (Gandikota et al., arXiv 2502.01639; COCO-30k FID of DMD2 15.52 →
    12.12), resting on control transfer — sliders trained on the base steer the student.

    ``sliders``: slider files or folders of them (:func:`slider_files`; ``conceptspace sliderspace train`` writes
    them to a study's ``sliders/``). Each slider's scale is drawn uniformly in [−``scale``, ``scale``] from the
    sample's seed (independently per slider, the same at every step). ``scale=0`` is the plain regime exactly.
    Costs no network evaluation; each student call carries the sliders' low-rank terms.
    """

    over: Regime | str = "distilled"
    sliders: tuple[str, ...] | str = ()
    scale: float = 1.0
    name: str = field(default="sliderspace", init=False)

    def __post_init__(self) -> None:
        if isinstance(self.sliders, str | os.PathLike):
            object.__setattr__(self, "sliders", (str(self.sliders),))
        object.__setattr__(self, "sliders", tuple(str(s) for s in self.sliders))
        super().__post_init__()
        if not (isinstance(self.scale, int | float) and math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"sliderspace: scale must be a finite number >= 0, got {self.scale!r}")

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        from conceptspace.lora import read_lora

        network = pair.student_network
        loaded = tuple(read_lora(path, unet=network) for path in slider_files(self.sliders))

        def wrap(den: Denoiser, segment: Segment, index: int, position: int) -> Denoiser:
            if den.name != "distilled":
                return den
            return SliderDenoiser(**denoiser_fields(den), sliders=loaded, scale=self.scale)

        return wrap_denoisers(inner_regime(self.over).segments(pair, device, latent_shape), wrap)

    def describe(self) -> dict[str, Any]:
        return describe_remedy(self)


REGIMES.update(
    {
        "cads": CADS,
        "cond-noise": CondNoise,
        "interval-guidance": IntervalGuidance,
        "renoise": Renoise,
        "sliderspace": SliderSpaceScales,
        "uncond-first": UncondFirst,
    }  # type: ignore[dict-item]
)
