"""What every architecture family provides: the seam between diffusers' models and conceptspace's sampler.

The sampler, the regimes, LoRA transfer and SliderSpace speak only to a :class:`Family` and to
:class:`Conditioning`; everything that differs between SD's UNet, SDXL's UNet and the flow-matching transformers
(pipeline class, text encoding, the network's call signature, which config fields two networks must share)
lives in one adapter per family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from conceptspace.models.registry import IncompatibleModelsError


@dataclass
class Conditioning:
    """The text conditioning of a batch as the family's network takes it.

    ``inputs`` are keyword tensors whose first dimension is the batch (the family names them, e.g.
    ``encoder_hidden_states``; a family whose text lengths vary adds a mask, and rows of different lengths are
    zero-padded when stacked); ``negative`` holds the unconditional ones for classifier-free guidance, or None when
    the prompt was encoded without CFG.
    """

    inputs: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor] | None = None
    seeds: tuple[int, ...] | None = None
    """The seed of each row, once the sampler has paired the rows with their samples (what per-sample
    conditioning remedies draw their noise from); None for a conditioning not yet bound to a batch."""

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.inputs.values())).dtype

    def repeat(self, n: int) -> Conditioning:
        """Every row ``n`` times (a one-prompt conditioning for a batch of ``n`` seeds)."""

        def rep(tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            if tensors is None:
                return None
            return {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in tensors.items()}

        return Conditioning(rep(self.inputs), rep(self.negative))  # type: ignore[arg-type]

    def select_rows(self, rows: torch.Tensor) -> Conditioning:
        """The rows ``rows`` (indices) of a batch's conditioning, seeds included."""

        def pick(tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            if tensors is None:
                return None
            return {k: v[rows.to(v.device)] for k, v in tensors.items()}

        seeds = None if self.seeds is None else tuple(self.seeds[i] for i in rows.tolist())
        return Conditioning(pick(self.inputs), pick(self.negative), seeds)  # type: ignore[arg-type]

    @classmethod
    def concatenate(cls, parts: Sequence[Conditioning]) -> Conditioning:
        """Stack conditionings of several prompts into one batch, rows in order."""
        if not parts:
            raise ValueError("no conditionings to concatenate")

        def cat(tensors: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor] | None:
            if tensors[0] is None:
                return None
            return {k: _cat_rows([t[k] for t in tensors]) for k in tensors[0]}  # type: ignore[index]

        return cls(cat([p.inputs for p in parts]), cat([p.negative for p in parts]))  # type: ignore[arg-type]

    def with_unconditional(self) -> dict[str, torch.Tensor]:
        """The inputs of a CFG pass: the unconditional rows first, then the conditional ones (diffusers' order)."""
        if self.negative is None:
            raise ValueError("this conditioning was encoded without CFG: encode it with cfg=True")
        return {k: _cat_rows([self.negative[k], v]) for k, v in self.inputs.items()}


def _cat_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack along the batch; sequences of different lengths (dimension 1) are zero-padded to the longest, which a
    family whose text lengths vary marks as padding in a mask that is padded the same way (zero: not a token)."""
    length = max(t.shape[1] for t in tensors) if tensors[0].dim() > 1 else None
    if length is not None and any(t.shape[1] != length for t in tensors):
        tensors = [
            torch.cat([t, t.new_zeros(t.shape[0], length - t.shape[1], *t.shape[2:])], dim=1) for t in tensors
        ]
    return torch.cat(tensors)


def vae_input(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Diffusion latents → what an image VAE's ``decode`` takes: undo the scaling factor (and the latent statistics
    or the shift factor, for VAEs that have them: SDXL's optional per-channel stats, SD3's and FLUX's shift), as the
    diffusers pipelines do. Differentiable."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        return latents * std / vae.config.scaling_factor + mean
    shift = getattr(vae.config, "shift_factor", None)
    return latents / vae.config.scaling_factor + (shift or 0.0)


class Family(ABC):
    """One architecture family: how its pipelines load, encode text and call their denoising network.

    Subclasses set the class attributes and implement the abstract methods; :data:`conceptspace.models.families.
    FAMILIES` maps the registry's ``architecture`` names to instances. Adding a family is one such file.
    """

    name: ClassVar[str]
    network_folder: ClassVar[str] = "unet"
    """The pipeline component and repo subfolder holding the denoising network."""
    latent_multiple: ClassVar[int] = 1
    """Latent height and width must be multiples of this (FLUX packs 2×2 latent patches into one token)."""
    shared_config_fields: ClassVar[tuple[str, ...]] = ()
    """Network config fields that decide the shapes of shared weights: two networks that agree on them take the
    same latents and LoRAs."""
    per_block_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields that diffusers accepts either as one int or as one value per down block."""

    text_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states",)
    """The conditioning inputs that carry the prompt's embedding (what conditioning-noise remedies perturb); masks,
    micro-conditions and time ids are left alone."""
    text_mask_input: ClassVar[str | None] = None
    """The conditioning input that marks a padded sequence's real tokens (nonzero), where the family has one."""

    single_pass_scale: ClassVar[float] = 1.0
    """The guidance scale at which the network runs one plain conditional pass (diffusers' CFG-off value)."""

    pipeline_class_name: ClassVar[str]
    """The diffusers pipeline class of this family's base models, by name (imported when first needed)."""
    network_class_name: ClassVar[str]
    """The diffusers model class of the denoising network, by name."""

    def pipeline_class(self) -> type:
        """The diffusers pipeline class of this family's base models."""
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def network_class(self) -> type:
        """The diffusers model class of the denoising network."""
        import diffusers

        return getattr(diffusers, self.network_class_name)

    def check_pipeline(self, pipeline: Any, source: str, name: str) -> None:  # noqa: B027  (optional hook)
        """Raise :class:`IncompatibleModelsError` when a loaded pipeline lacks what this family needs."""

    @abstractmethod
    def encode_text(
        self,
        pipeline: Any,
        prompt: str,
        *,
        negative_prompt: str | None,
        cfg: bool,
        height: int,
        width: int,
        device: torch.device,
    ) -> Conditioning:
        """One prompt's conditioning (batch of one), with the unconditional inputs when ``cfg``."""

    @abstractmethod
    def predict(
        self,
        network: Any,
        sample: torch.Tensor,
        t: torch.Tensor,
        inputs: Mapping[str, torch.Tensor],
        guidance_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network's raw output for a batch (in its own prediction type)."""

    def cfg_weight(self, guidance_scale: float) -> float | None:
        """The classifier-free guidance weight ``w`` (``uncond + w·(cond − uncond)``) that this family's pipelines
        apply for ``guidance_scale``, or None where they run one conditional pass (diffusers: ``scale > 1``)."""
        return guidance_scale if guidance_scale > 1.0 else None

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, weight: float) -> torch.Tensor:
        """The guided prediction from the unconditional and conditional outputs at CFG weight ``weight``."""
        return uncond + weight * (cond - uncond)

    def embeds_guidance(self, network: Any) -> bool:
        """Whether ``network`` takes the guidance scale as an input (one pass) instead of running CFG."""
        return False

    def guidance_condition(self, pipeline: Any, network: Any, scale: float, batch: int) -> torch.Tensor:
        """The guidance input of a network that :meth:`embeds_guidance`."""
        raise TypeError(
            f"{self.name} networks take no guidance input: a family whose embeds_guidance() is true defines this"
        )

    def scheduler_timestep(self, network_timestep: torch.Tensor) -> torch.Tensor:
        """The scheduler's timestep for the timestep input a network of this family was called with (LoRA
        timestep windows are in the scheduler's timesteps)."""
        return network_timestep

    def latent_channels(self, network: Any) -> int:
        return int(network.config.in_channels)

    def timestep_kwargs(
        self, scheduler: Any, network: Any, steps: int, latent_shape: tuple[int, int]
    ) -> dict[str, Any]:
        """What this family's pipeline passes to ``scheduler.set_timesteps`` besides the number of steps, for
        latents of ``latent_shape`` (the resolution-dependent shift ``mu`` of flow-matching schedules)."""
        return {}

    def decode(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion latents → images in [-1, 1] through the family's VAE, as its pipeline decodes them.
        Differentiable."""
        return vae.decode(vae_input(vae, latents), return_dict=False)[0]

    def companions(self) -> dict[str, str]:
        """Pipeline components a base repo does not ship, by component name → where they are loaded from (a hub
        repo or a local folder; HiDream's Llama text encoder): what a memory plan counts beside the repo's own."""
        return {}

    def spatial_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The sampler's latents as a ``(B, C, h, w)`` grid laid out like the image (what x̂0 previews pool over):
        the latents themselves, unless the family holds them in another layout (FLUX.2)."""
        return latents

    @abstractmethod
    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        """A tiny pipeline of this family with random weights (the registry's ``random`` storage)."""

    @abstractmethod
    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        """A tiny random denoising network that fits :meth:`random_pipeline`."""

    def check_compatible(
        self, base_config: Mapping[str, Any], student_config: Mapping[str, Any], names: tuple[str, str]
    ) -> None:
        """Raise :class:`IncompatibleModelsError` naming every shared config field on which two networks differ."""
        blocks = len(base_config.get("down_block_types") or ())
        differing = []
        for key in self.shared_config_fields:
            a, b = base_config.get(key), student_config.get(key)
            if self._normalise(key, a, blocks) != self._normalise(key, b, blocks):
                differing.append(f"{key}: {a!r} vs {b!r}")
        if differing:
            raise IncompatibleModelsError(
                f"the {self.network_folder} networks of {names[0]!r} and {names[1]!r} have different architectures, "
                f"so latents, text encoders and LoRAs cannot be shared; differing config fields: "
                + "; ".join(differing)
            )

    def _normalise(self, key: str, value: Any, blocks: int) -> Any:
        """Lists as tuples; a per-block field given as one int as that int repeated for every down block."""
        if isinstance(value, list):
            return tuple(value)
        if key in self.per_block_fields and isinstance(value, int) and not isinstance(value, bool):
            return (value,) * blocks
        return value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
