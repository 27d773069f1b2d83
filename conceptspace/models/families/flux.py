"""FLUX.1: a rectified-flow transformer (``FluxTransformer2DModel``) over 2×2-packed latent tokens, conditioned on
T5's sequence and CLIP's pooled output (``FluxPipeline``).

The sampler keeps latents unpacked, ``(batch, channels, height, width)``, as every family does: the noise is drawn
in that shape exactly as ``FluxPipeline.prepare_latents`` draws it, the Euler step is elementwise, and
:meth:`Flux.predict` packs the input into tokens and unpacks the velocity. FLUX.1-dev is guidance-distilled: the
guidance scale is an input of the network (one pass), not classifier-free guidance; FLUX.1-schnell takes none.
Both shift their schedule with the image's token count (``mu``), dev dynamically, schnell with shift 1.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from conceptspace.models.families.base import Conditioning, Family
from conceptspace.models.families.sd3 import resolution_shift

MAX_SEQUENCE_LENGTH = 512
"""T5 tokens per prompt: ``FluxPipeline.__call__``'s default and FLUX.1-dev's model card (schnell's card uses 256;
the pair shares one encoding, so the base's length is used)."""


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` latents → ``(B, H/2·W/2, 4C)`` tokens of 2×2 patches (``FluxPipeline._pack_latents``)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack` for latents of ``height``×``width``."""
    b, _, channels = tokens.shape
    patches = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rotary position ids ``(H/2·W/2, 3)`` of the packed tokens: (0, row, column)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=8)
def _position_ids(
    height: int, width: int, text_length: int, device: torch.device, dtype: torch.dtype, inference: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # The same ids at every step of a run (the transformer only reads them). ``inference`` keys the cache apart:
    # tensors made in inference mode cannot take part in training.
    text = torch.zeros(text_length, 3, device=device, dtype=dtype)  # FluxPipeline's text ids: all zero
    return text, image_ids(height, width, device, dtype)


class Flux(Family):
    """FLUX.1 dev / schnell transformers (``FluxPipeline``)."""

    name: ClassVar[str] = "flux"
    text_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states", "pooled_projections")
    network_folder: ClassVar[str] = "transformer"
    pipeline_class_name: ClassVar[str] = "FluxPipeline"
    network_class_name: ClassVar[str] = "FluxTransformer2DModel"
    latent_multiple: ClassVar[int] = 2
    shared_config_fields = (
        "patch_size",
        "in_channels",
        "out_channels",
        "num_layers",
        "num_single_layers",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "pooled_projection_dim",
        "axes_dims_rope",
    )
    """``guidance_embeds`` is left out: dev has a guidance embedding, schnell has none."""

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
        def encode(text: str) -> dict[str, torch.Tensor]:
            embeds, pooled, _ = pipeline.encode_prompt(
                prompt=text, prompt_2=None, device=device, max_sequence_length=MAX_SEQUENCE_LENGTH
            )
            return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

        # FluxPipeline's "true CFG" runs only with a negative prompt; without one, the unconditional pass is "".
        return Conditioning(encode(prompt), encode(negative_prompt or "") if cfg else None)

    def latent_channels(self, network: Any) -> int:
        return int(network.config.in_channels) // 4

    def predict(
        self,
        network: Any,
        sample: torch.Tensor,
        t: torch.Tensor,
        inputs: Mapping[str, torch.Tensor],
        guidance_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        height, width = sample.shape[-2:]
        text = inputs["encoder_hidden_states"]
        txt_ids, img_ids = _position_ids(
            height, width, text.shape[1], sample.device, sample.dtype, torch.is_inference_mode_enabled()
        )
        velocity = network(
            hidden_states=pack(sample),
            timestep=t.expand(sample.shape[0]).to(sample.dtype) / 1000,
            guidance=guidance_condition,
            pooled_projections=inputs["pooled_projections"],
            encoder_hidden_states=text,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return unpack(velocity, height, width)

    def embeds_guidance(self, network: Any) -> bool:
        return bool(network.config.guidance_embeds)

    def guidance_condition(self, pipeline: Any, network: Any, scale: float, batch: int) -> torch.Tensor:
        # Scales at or below 1 mean "one conditional pass, no amplification" for CFG networks (the hybrid's base
        # step at guidance 0); the same for an embedded scale is 1, not an out-of-range 0.
        return torch.full([batch], max(float(scale), 1.0), dtype=torch.float32)

    def scheduler_timestep(self, network_timestep: torch.Tensor) -> torch.Tensor:
        return network_timestep * 1000  # FluxPipeline passes t / 1000

    def timestep_kwargs(
        self, scheduler: Any, network: Any, steps: int, latent_shape: tuple[int, int]
    ) -> dict[str, Any]:
        tokens = (latent_shape[0] // 2) * (latent_shape[1] // 2)
        sigmas = None if scheduler.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        return {"sigmas": sigmas, "mu": resolution_shift(scheduler, tokens)}

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny import tiny_flux_pipeline

        return tiny_flux_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny import tiny_flux_transformer

        return tiny_flux_transformer(seed=seed, guidance_embeds=embeds_guidance)
