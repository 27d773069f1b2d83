"""Noise levels of diffusers schedulers as pure math: what a latent at a step is made of, and how a network's
output converts between parametrisations.

Every scheduler conceptspace samples with writes its network input as ``x = alpha·x0 + sigma·ε``:

- VP schedulers trained on a discrete schedule (DDPM, DDIM, LCM, DPM-Solver, Euler …): ``alpha = sqrt(ᾱ_t)``,
  ``sigma = sqrt(1 − ᾱ_t)``; Euler-type schedulers keep their latent at ``x / sqrt(σ²+1)``'s inverse scale and
  say so through ``scale_model_input``;
- flow-matching schedulers (``FlowMatchEulerDiscreteScheduler``: SD3, FLUX, Qwen-Image, Z-Image, SANA-Sprint; and
  DPM-Solver on flow sigmas: SANA):
  ``alpha = 1 − σ``, ``sigma = σ``, and the network predicts the velocity ``v = ε − x0``.

:func:`split` turns any output (ε, x0, v or flow velocity) into ``(x̂0, ε̂)`` and :func:`combine` goes back, so
the sampler reads x̂0 at every step and hands a latent from one scheduler to another at the same noise level
without knowing which family made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "FLOW",
    "NoiseLevel",
    "combine",
    "convert",
    "initial_noise_scale",
    "is_flow",
    "latent_scale",
    "model_input",
    "noise_level",
    "noise_level_at",
    "parametrisation",
    "split",
]

FLOW = "flow_prediction"
"""The parametrisation of flow-matching networks: the velocity ``v = ε − x0``."""


@dataclass(frozen=True)
class NoiseLevel:
    """``x = alpha·x0 + sigma·ε`` for the network input at one step (scalars or 0-d tensors)."""

    alpha: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def vp(cls, alpha_bar: torch.Tensor) -> NoiseLevel:
        return cls(alpha_bar.sqrt(), (1 - alpha_bar).sqrt())

    @classmethod
    def flow(cls, sigma: torch.Tensor) -> NoiseLevel:
        return cls(1 - sigma, sigma)

    def to(self, like: torch.Tensor) -> NoiseLevel:
        return NoiseLevel(
            torch.as_tensor(self.alpha).to(like.device, like.dtype),
            torch.as_tensor(self.sigma).to(like.device, like.dtype),
        )


def is_flow(scheduler: Any) -> bool:
    """Whether ``scheduler`` (an instance, or a class name as the registry gives it) integrates a flow-matching ODE:
    its timesteps are σ·1000, its input is unscaled, its network predicts the velocity. Besides the ``FlowMatch*``
    classes, an instance configured with ``use_flow_sigmas`` (SANA's DPM-Solver++ on flow sigmas, whose ``sigmas``
    are flow σ and whose ``alphas_cumprod`` mean nothing) is one; a class name alone cannot say that."""
    if isinstance(scheduler, str):
        return scheduler.startswith("FlowMatch")
    flow_sigmas = bool(getattr(getattr(scheduler, "config", None), "use_flow_sigmas", False))
    return type(scheduler).__name__.startswith("FlowMatch") or flow_sigmas


def parametrisation(scheduler: Any) -> str:
    """What ``scheduler.step`` expects as model output: its ``prediction_type``, or :data:`FLOW`."""
    if is_flow(scheduler):
        return FLOW
    return scheduler.config.prediction_type


def model_input(scheduler: Any, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network input at ``t`` (``scale_model_input`` where the scheduler has one; flow schedulers have none)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return latents if scale is None else scale(latents, t)


def noise_level(scheduler: Any, index: int) -> NoiseLevel:
    """The noise level of the network input at step ``index`` of ``scheduler``'s current timesteps."""
    if is_flow(scheduler):
        return NoiseLevel.flow(scheduler.sigmas[index].float())  # exact, not t / 1000 rounded
    return noise_level_at(scheduler, scheduler.timesteps[index])


def noise_level_at(scheduler: Any, t: float) -> NoiseLevel:
    """The noise level of the network input at training timestep ``t`` (any timestep, not only the scheduler's
    current ones): ``ᾱ_t`` for VP schedulers, ``σ = t / num_train_timesteps`` for flow matching."""
    if is_flow(scheduler):
        return NoiseLevel.flow(torch.tensor(float(t) / scheduler.config.num_train_timesteps))
    return NoiseLevel.vp(scheduler.alphas_cumprod[int(round(float(t)))].float())


def latent_scale(scheduler: Any, index: int) -> torch.Tensor:
    """The factor that turns the scheduler's latent at step ``index`` into the network input (``1/sqrt(σ²+1)`` for
    the Euler family, 1 for the others), read off the scheduler's own input scaling."""
    probe = torch.ones(1, dtype=torch.float32, device=scheduler.timesteps.device)
    # Euler-type schedulers scale by their *current* step index, not by the timestep passed: point it at `index`.
    stateful = hasattr(scheduler, "_step_index")
    saved = getattr(scheduler, "_step_index", None)
    if stateful:
        scheduler._step_index = index
    try:
        return model_input(scheduler, probe, scheduler.timesteps[index]).float().squeeze()
    finally:
        if stateful:
            scheduler._step_index = saved


def initial_noise_scale(scheduler: Any, index: int) -> torch.Tensor:
    """The latent scale of pure noise started at step ``index``: the spread a unit-variance x0 would have there
    (``init_noise_sigma`` at the first step of the VP schedulers)."""
    level = noise_level(scheduler, index)
    return (level.alpha**2 + level.sigma**2).sqrt() / latent_scale(scheduler, index)


def split(
    output: torch.Tensor, kind: str, x: torch.Tensor, level: NoiseLevel
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂0, ε̂)`` from a network output of parametrisation ``kind`` at input ``x``."""
    level = level.to(x)
    a, s = level.alpha, level.sigma
    if kind == "epsilon":
        return (x - s * output) / a, output
    if kind == "sample":
        return output, (x - a * output) / s
    if kind == "v_prediction":  # VP only: a² + s² = 1
        return a * x - s * output, a * output + s * x
    if kind == FLOW:  # v = ε − x0 and x = a·x0 + s·ε
        x0 = (x - s * output) / (a + s)
        return x0, output + x0
    raise ValueError(f"unknown prediction type {kind!r}")


def combine(x0: torch.Tensor, eps: torch.Tensor, kind: str, level: NoiseLevel) -> torch.Tensor:
    """The network output of parametrisation ``kind`` that means ``(x0, eps)`` at ``level``."""
    level = level.to(x0)
    a, s = level.alpha, level.sigma
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return a * eps - s * x0
    if kind == FLOW:
        return eps - x0
    raise ValueError(f"unknown prediction type {kind!r}")


def convert(
    output: torch.Tensor, x: torch.Tensor, level: NoiseLevel, source: str, target: str
) -> torch.Tensor:
    """Re-express a network output in another parametrisation at the same input ``x`` and ``level``."""
    if source == target:
        return output
    return combine(*split(output, source, x, level), target, level)
