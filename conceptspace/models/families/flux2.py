"""FLUX.2 [klein]: a rectified-flow MMDiT (``Flux2Transformer2DModel``) over the FLUX.2 VAE's 2×2-patchified,
batch-normalised latents, conditioned on three intermediate layers of a Qwen3 text encoder (``Flux2KleinPipeline``).
The base models ([klein] Base 4B / 9B) run classifier-free guidance; the step-distilled ones ([klein] 4B / 9B) run
one conditional pass (their repos set ``is_distilled``, and the pipeline then ignores the guidance scale).

How ``Flux2KleinPipeline`` works, and how it is done here:

- Guidance is true CFG, not an input: the pipeline always calls the transformer with ``guidance=None`` (the [klein]
  transformers have no guidance embedding) and, for a base above scale 1, runs a second pass on the empty prompt
  ``""`` and takes ``neg + s·(cond − neg)``: the :class:`Family` default, with ``""`` as the negative prompt.
- Text: each prompt through Qwen3's chat template (thinking off), padded to 512 tokens, the hidden states of layers
  9, 18 and 27 side by side per token; no mask reaches the transformer (the padding is attended to). Text position
  ids are (0, 0, 0, l).
- Latents: the pipeline draws its noise as ``(B, 4C, H/16, W/16)`` — the VAE's C latent channels already
  patchified 2×2 and normalised by the VAE's batch-norm statistics — and flattens it into ``H/16·W/16`` tokens with
  position ids (0, row, column, 0). The sampler here keeps every family's latents as ``(B, C', H/8, W/8)`` with
  ``C' = in_channels / 4`` and draws its noise in that shape; the same number of values from the same generator, so
  this adapter holds the pipeline's ``(B, 4C, H/16, W/16)`` tensor as a *reshape* of the sampler's (the same values
  in the same order: :func:`to_tokens` / :func:`from_tokens`). Each sampler latent is therefore the pipeline's
  latent exactly, but its H/8×W/8 layout is that tensor's memory, not an image: read latents spatially through
  :func:`patchified` (or decode them).
- Schedule: ``sigmas = linspace(1, 1/steps, steps)`` and ``mu = compute_empirical_mu(tokens, steps)`` — FLUX.2's
  shift depends on the number of steps as well as the image size (:meth:`Flux2.timestep_kwargs`).
- Decoding: undo the batch-norm (``x·sqrt(var + eps) + mean``), unpatchify, ``vae.decode`` (:meth:`Flux2.decode`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from conceptspace.models.families.base import Conditioning, Family

MAX_SEQUENCE_LENGTH = 512
"""Qwen3 tokens per prompt (padded to it): ``Flux2KleinPipeline.__call__``'s ``max_sequence_length`` default."""
TEXT_ENCODER_OUT_LAYERS = (9, 18, 27)
"""The Qwen3 hidden-state layers concatenated per token: ``Flux2KleinPipeline.__call__``'s default."""


def patchified(latents: torch.Tensor) -> torch.Tensor:
    """The sampler's ``(B, C, H/8, W/8)`` FLUX.2 latents as the pipeline's ``(B, 4C, H/16, W/16)`` patchified,
    normalised latents (a reshape: the same values in the same order)."""
    b, c, h, w = latents.shape
    return latents.reshape(b, 4 * c, h // 2, w // 2)


def to_tokens(latents: torch.Tensor) -> torch.Tensor:
    """Sampler latents → the transformer's ``(B, H/16·W/16, 4C)`` tokens (``Flux2KleinPipeline._pack_latents`` of
    :func:`patchified`)."""
    grid = patchified(latents)
    return grid.flatten(2).transpose(1, 2)


def from_tokens(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`to_tokens` for sampler latents of ``height``×``width``."""
    b, _, channels = tokens.shape
    grid = tokens.transpose(1, 2).reshape(b, channels, height // 2, width // 2)
    return grid.reshape(b, channels // 4, height, width)


@functools.lru_cache(maxsize=8)
def _position_ids(
    height: int, width: int, text_length: int, device: torch.device, inference: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # The pipeline's ids (int64): image (0, row, column, 0) over the token grid, text (0, 0, 0, l). Cached: the same
    # at every step; ``inference`` keys apart tensors made in inference mode, which cannot take part in training.
    rows, columns = torch.arange(height // 2), torch.arange(width // 2)
    zero = torch.zeros(1, dtype=torch.long)
    image = torch.cartesian_prod(zero, rows, columns, zero)
    text = torch.cartesian_prod(zero, zero, zero, torch.arange(text_length))
    return image.to(device), text.to(device)


def empirical_mu(tokens: int, steps: int) -> float:
    """FLUX.2's schedule shift for ``tokens`` image tokens sampled in ``steps`` steps (diffusers'
    ``compute_empirical_mu``, which ``Flux2KleinPipeline`` passes to the scheduler as ``mu``)."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    return compute_empirical_mu(image_seq_len=tokens, num_steps=steps)


class Flux2(Family):
    """FLUX.2 [klein] transformers, base and step-distilled (``Flux2KleinPipeline``)."""

    name: ClassVar[str] = "flux2"
    network_folder: ClassVar[str] = "transformer"
    pipeline_class_name: ClassVar[str] = "Flux2KleinPipeline"
    network_class_name: ClassVar[str] = "Flux2Transformer2DModel"
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
        "timestep_guidance_channels",
        "mlp_ratio",
        "axes_dims_rope",
        "rope_theta",
    )
    """``guidance_embeds`` is left out: the pipeline never feeds a guidance input, whatever the network has."""

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
            embeds, _ = pipeline.encode_prompt(
                prompt=text,
                device=device,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                text_encoder_out_layers=TEXT_ENCODER_OUT_LAYERS,
            )
            return {"encoder_hidden_states": embeds}

        # Flux2KleinPipeline's unconditional pass is always the empty prompt; a negative prompt given here is
        # encoded the same way (what passing its embeddings as negative_prompt_embeds does).
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
        batch, _, height, width = sample.shape
        text = inputs["encoder_hidden_states"]
        img_ids, txt_ids = _position_ids(
            height, width, text.shape[1], sample.device, torch.is_inference_mode_enabled()
        )
        velocity = network(
            hidden_states=to_tokens(sample).to(network.dtype),
            timestep=t.expand(batch).to(sample.dtype) / 1000,
            guidance=None,  # the pipeline's: [klein] guidance is CFG, never an input
            encoder_hidden_states=text.to(network.dtype),
            txt_ids=txt_ids.expand(batch, -1, -1),
            img_ids=img_ids.expand(batch, -1, -1),
            return_dict=False,
        )[0]
        return from_tokens(velocity, height, width).to(sample.dtype)

    def scheduler_timestep(self, network_timestep: torch.Tensor) -> torch.Tensor:
        return network_timestep * 1000  # Flux2KleinPipeline passes t / 1000

    def timestep_kwargs(
        self, scheduler: Any, network: Any, steps: int, latent_shape: tuple[int, int]
    ) -> dict[str, Any]:
        tokens = (latent_shape[0] // 2) * (latent_shape[1] // 2)
        sigmas = None if scheduler.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        return {"sigmas": sigmas, "mu": empirical_mu(tokens, steps)}

    def decode(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        grid = patchified(latents)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(grid)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(grid)
        grid = grid * std + mean
        # unpatchify: channel (c, dy, dx) → pixel (2y + dy, 2x + dx) of channel c
        b, channels, h, w = grid.shape
        spatial = grid.reshape(b, channels // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return vae.decode(spatial.reshape(b, channels // 4, 2 * h, 2 * w), return_dict=False)[0]

    def spatial_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return patchified(latents)  # the sampler's layout is that tensor's memory, not an image grid

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny_flux2 import tiny_flux2_pipeline

        return tiny_flux2_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny_flux2 import tiny_flux2_transformer

        return tiny_flux2_transformer(seed=seed)
