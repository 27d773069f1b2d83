"""Krea 2: a single-stream MMDiT (``Krea2Transformer2DModel``) over 2×2-packed flow-matching latents of the Qwen-Image
VAE, conditioned on a stack of Qwen3-VL hidden states (``Krea2Pipeline``). Krea 2 Raw is the undistilled base, Krea 2
Turbo its 8-step TDM-distilled student; one pipeline class serves both.

What this adapter does as ``Krea2Pipeline`` does, and where it differs from the other flow families:

- text features are ``(batch, tokens, tapped layers, width)``: the pipeline taps several of the text encoder's hidden
  states per token (``text_encoder_select_layers``) and the transformer fuses them. Every prompt is padded to the
  same fixed length (the padding sits *inside* the chat template, before its assistant suffix) with a boolean mask,
  so prompts stack into one batch as they are;
- the transformer takes packed tokens, σ = t/1000 as its timestep and explicit rotary ``position_ids`` (text at the
  origin, image tokens at their (0, row, column));
- its guidance scale ``s`` means ``cond + s·(cond − uncond)``, CFG as soon as ``s > 0`` (standard CFG weight
  ``1 + s``), as Z-Image's; Turbo runs with ``s = 0``, one pass;
- the schedule is ``linspace(1, 1/n, n)`` shifted by ``mu``: Raw's from the image's token count (the scheduler's
  dynamic shift), Turbo's fixed at 1.15 — which the pipeline takes from its ``is_distilled`` flag, and conceptspace,
  which reads only a student's network and scheduler, from the student's registry entry (``base_shift`` =
  ``max_shift`` = 1.15 makes the dynamic shift that constant);
- the VAE decodes ``(B, C, 1, H, W)`` latents normalised by per-channel mean and std, as Qwen-Image's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from conceptspace.models.families.base import Conditioning, Family
from conceptspace.models.families.flux import pack, unpack
from conceptspace.models.families.sd3 import resolution_shift

MAX_SEQUENCE_LENGTH = 512
"""Text tokens per prompt: ``Krea2Pipeline.__call__``'s default (every prompt is padded to it)."""
DEFAULT_NEGATIVE_PROMPT = ""
"""The negative prompt ``Krea2Pipeline`` encodes for CFG when none is given (as the official sampler does)."""


def position_ids(text_length: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """The ``(text_length + height/2·width/2, 3)`` rotary coordinates of a ``height``×``width`` latent's packed tokens
    after ``text_length`` text tokens: ``Krea2Pipeline.prepare_position_ids``."""
    from diffusers import Krea2Pipeline

    return Krea2Pipeline.prepare_position_ids(text_length, height // 2, width // 2, device)


class Krea2(Family):
    """Krea 2 Raw / Turbo transformers (``Krea2Pipeline``)."""

    name: ClassVar[str] = "krea2"
    text_mask_input: ClassVar[str | None] = "encoder_attention_mask"
    network_folder: ClassVar[str] = "transformer"
    pipeline_class_name: ClassVar[str] = "Krea2Pipeline"
    network_class_name: ClassVar[str] = "Krea2Transformer2DModel"
    latent_multiple: ClassVar[int] = 2
    single_pass_scale: ClassVar[float] = 0.0
    shared_config_fields = (
        "in_channels",
        "num_layers",
        "attention_head_dim",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "timestep_embed_dim",
        "text_hidden_dim",
        "num_text_layers",
        "text_num_attention_heads",
        "text_num_key_value_heads",
        "text_intermediate_size",
        "num_layerwise_text_blocks",
        "num_refiner_text_blocks",
        "axes_dims_rope",
    )

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
            embeds, mask = pipeline.encode_prompt(
                prompt=text, device=device, max_sequence_length=MAX_SEQUENCE_LENGTH
            )
            return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

        negative = negative_prompt if negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT
        return Conditioning(encode(prompt), encode(negative) if cfg else None)

    def cfg_weight(self, guidance_scale: float) -> float | None:
        return 1.0 + guidance_scale if guidance_scale > 0 else None

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, weight: float) -> torch.Tensor:
        # Krea2Pipeline's own arithmetic, anchored on the conditional prediction: cond + s·(cond − uncond)
        return cond + (weight - 1.0) * (cond - uncond)

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
        states = inputs["encoder_hidden_states"]
        velocity = network(
            hidden_states=pack(sample),
            encoder_hidden_states=states,
            timestep=(t / 1000).expand(batch).to(sample.dtype),  # as the pipeline: σ, cast last
            position_ids=position_ids(states.shape[1], height, width, sample.device),
            encoder_attention_mask=inputs["encoder_attention_mask"],
            return_dict=False,
        )[0]
        return unpack(velocity, height, width)

    def scheduler_timestep(self, network_timestep: torch.Tensor) -> torch.Tensor:
        return network_timestep * 1000  # Krea2Pipeline passes t / 1000

    def timestep_kwargs(
        self, scheduler: Any, network: Any, steps: int, latent_shape: tuple[int, int]
    ) -> dict[str, Any]:
        tokens = (latent_shape[0] // 2) * (latent_shape[1] // 2)
        sigmas = np.linspace(1.0, 1 / steps, steps)
        return {"sigmas": sigmas, "mu": resolution_shift(scheduler, tokens)}

    def decode(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(latents)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(latents)
        frames = (latents / inverse_std + mean).unsqueeze(
            2
        )  # one frame of the video VAE, as the pipeline divides
        return vae.decode(frames, return_dict=False)[0][:, :, 0]

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny_krea2 import tiny_krea2_pipeline

        return tiny_krea2_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny_krea2 import tiny_krea2_transformer

        return tiny_krea2_transformer(seed=seed)
