"""Sparse repellency between the samples of a batch (SPELL: Kirchhof et al., "Shielded Diffusion: Generating Novel
and Diverse Images using Sparse Repellency", ICML 2025, arXiv 2410.06025), as a regime over any other regime.

At a step, each sample's x̂0 is pushed away from every other sample's x̂0 *of the same batch* that lies within a
radius of it, and the step's network output is rewritten to mean the corrected x̂0 at the same input, so the
scheduler's own ``step`` moves the latent towards it. Outside the radius the correction is exactly zero — the
paper's sparsity: the samples are left alone unless they are about to land on near-duplicates, which is what a
distilled student's collapsed diversity makes them do.

**Batch coupling.** With repellency an image is a function of its prompt, its seed *and the other samples of the
batch it was drawn with* — it breaks conceptspace's invariant that an image depends on ``(prompt, seed)`` alone
and that ``batch_size`` changes nothing but speed. :func:`conceptspace.sampling.sample` splits the seeds into
batches of ``batch_size`` (default 4), and samples repel only within their batch: to repel all the images of a
prompt from one another, pass ``batch_size=len(seeds)``; to reproduce an image, rerun its whole batch, with the
same seeds in the same batches (``settings["batch_size"]`` in run.json records the split). A batch of one is
``over`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from conceptspace import schedules
from conceptspace.models.families import Conditioning
from conceptspace.models.loading import ModelPair
from conceptspace.sampling.loop import Denoiser, Segment
from conceptspace.sampling.regimes import REGIMES, Regime
from conceptspace.sampling.remedies import denoiser_fields, describe_remedy, inner_regime, wrap_denoisers

__all__ = [
    "Repellency",
    "RepellencyDenoiser",
    "repel_output",
    "repellency_correction",
    "rms_distances",
]


def rms_distances(x0: torch.Tensor) -> torch.Tensor:
    """The (batch, batch) per-element RMS distances ‖x̂0_i − x̂0_j‖ / √D between a batch's rows (D: the values
    of one row). RMS rather than the paper's plain L2 norm so that a radius means the same at every resolution
    and latent size (a latent of unit-variance values: two independent rows lie ≈ √2 apart)."""
    flat = x0.flatten(1).double()
    return torch.cdist(flat, flat) / math.sqrt(flat.shape[1])


def repellency_correction(x0: torch.Tensor, radius: float, strength: float) -> torch.Tensor:
    """SPELL's correction of a batch of x̂0, each row repelled from every other row of the batch:
    Δ_i = strength · Σ_{j≠i} max(0, r/d_ij − 1) · (x̂0_i − x̂0_j), with ``d_ij`` the RMS distance
    (:func:`rms_distances`) and ``r`` the ``radius``.

    With ``strength=1`` and one neighbour it moves x̂0_i onto the sphere of radius r around x̂0_j (the paper's
    projection out of the shielded ball); both members of a pair move, each from the other's *uncorrected* x̂0,
    so the result does not depend on the samples' order in the batch. Exactly zero where no pair is closer than
    ``radius`` (and for ``strength=0``, ``radius=0`` or a batch of one). Identical rows (d = 0) have no direction
    to be pushed in and are left alone. Computed in float64, returned in ``x0``'s dtype.
    """
    if strength == 0 or radius == 0 or x0.shape[0] < 2:
        return torch.zeros_like(x0)
    distances = rms_distances(x0)
    weights = torch.where(
        distances > 0, (radius / distances.clamp(min=torch.finfo(distances.dtype).tiny) - 1).clamp(min=0), 0.0
    )
    weights.fill_diagonal_(0)
    flat = x0.flatten(1).double()
    # Σ_j w_ij (x_i − x_j) = (Σ_j w_ij) x_i − Σ_j w_ij x_j
    delta = weights.sum(1, keepdim=True) * flat - weights @ flat
    return (strength * delta).reshape(x0.shape).to(x0.dtype)


def repel_output(
    output: torch.Tensor,
    model_input: torch.Tensor,
    level: schedules.NoiseLevel,
    kind: str,
    radius: float,
    strength: float,
) -> torch.Tensor:
    """A network output of parametrisation ``kind`` at ``model_input`` and ``level``, rewritten so that its x̂0 is
    the repelled one (:func:`repellency_correction`). The noise estimate is re-derived from the same input
    (ε̂ = (x − α·x̂0')/σ), so the pair still adds up to the input and the scheduler's step — which reads the
    output at that input — lands on x̂0'. Rows without a correction are returned bit for bit."""
    x0, _ = schedules.split(output, kind, model_input, level)
    delta = repellency_correction(x0, radius, strength)
    moved = delta.flatten(1).ne(0).any(1)
    if not bool(moved.any()):
        return output
    rewritten = schedules.convert(x0 + delta, model_input, level, "sample", kind).to(output.dtype)
    return torch.where(moved.view(-1, *(1,) * (output.dim() - 1)), rewritten, output)


@dataclass
class RepellencyDenoiser(Denoiser):
    """Another denoiser (``inner``: a plain one or a remedy's) whose output is repelled across the batch at its
    step's noise ``level``. Its passes, CFG and negative prompt are ``inner``'s."""

    inner: Denoiser | None = None
    level: schedules.NoiseLevel | None = None
    radius: float = 0.0
    strength: float = 1.0

    @property
    def uses_cfg(self) -> bool:
        return self.inner.uses_cfg if self.inner is not None else super().uses_cfg

    @property
    def needs_negative(self) -> bool:
        return self.inner.needs_negative if self.inner is not None else super().needs_negative

    def __call__(self, model_input: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        inner = self.inner if self.inner is not None else Denoiser(**denoiser_fields(self))
        output = inner(model_input, t, cond)
        if self.level is None:
            raise ValueError("repellency: the denoiser was built without its step's noise level")
        return repel_output(output, model_input, self.level, self.prediction_type, self.radius, self.strength)


@dataclass(frozen=True)
class Repellency(Regime):
    """``over`` (default the student alone) with SPELL's sparse repellency between the samples of a batch.

    At the steps whose place in the schedule is below ``until`` (a fraction of the steps; default 1: every step,
    as the paper applies it — its sparsity comes from the radius, and it finds the terms fire mostly early), each
    sample's x̂0 is pushed out of the ball of RMS radius ``radius`` around every other sample's x̂0 of the batch
    (:func:`repellency_correction`, scaled by ``strength``; 1: exactly onto the sphere, for one neighbour).

    ``radius`` is in the latent x̂0's per-element RMS units (default 0.5): the VAE-scaled latents of SD, SDXL and
    the flow families have roughly unit-variance values, so two unrelated images lie ≈ 1.4 apart and 0.5 fires
    only for samples heading for near-duplicates. Calibrate it per model on the distances that
    :func:`rms_distances` gives for its x̂0. ``strength=0`` or ``radius=0`` is ``over`` exactly, as is any step
    where no pair is within the radius. Costs no network evaluation: the same passes as ``over``.

    An image then depends on its batch's other seeds (the module's docstring): sample with
    ``batch_size=len(seeds)`` to repel all of a prompt's images from one another.
    """

    over: Regime | str = "distilled"
    radius: float = 0.5
    strength: float = 1.0
    until: float = 1.0
    name: str = field(default="repellency", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for option in ("radius", "strength"):
            value = getattr(self, option)
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= 0
            ):
                raise ValueError(f"repellency: {option} must be a finite number >= 0, got {value!r}")
        until = self.until
        if not (isinstance(until, int | float) and not isinstance(until, bool) and 0 <= until <= 1):
            raise ValueError(f"repellency: until must lie in [0, 1] (a fraction of the steps), got {until!r}")

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        inner = inner_regime(self.over).segments(pair, device, latent_shape)
        total = sum(len(segment.denoisers) for segment in inner)

        def wrap(den: Denoiser, segment: Segment, index: int, position: int) -> Denoiser:
            if position >= self.until * total or self.strength == 0 or self.radius == 0:
                return den
            return RepellencyDenoiser(
                **denoiser_fields(den), inner=den, level=schedules.noise_level(segment.scheduler, index),
                radius=float(self.radius), strength=float(self.strength),
            )  # fmt: skip

        return wrap_denoisers(inner, wrap)

    def describe(self) -> dict[str, Any]:
        return describe_remedy(self)


REGIMES["repellency"] = Repellency  # type: ignore[assignment]
