"""Qwen-Image: a dual-stream MMDiT (``QwenImageTransformer2DModel``) over 2×2-packed flow-matching latents,
conditioned on Qwen2.5-VL's last hidden states (``QwenImagePipeline``). Its distilled student, Qwen-Image-Lightning,
ships as a LoRA on the base with its own scheduler config.

What differs from the other flow families, and lives here:

- text features have each prompt's own length (the chat template's first 34 tokens dropped) with a mask; batches
  of several prompts are zero-padded to one length (:meth:`Conditioning.concatenate`), the mask says which tokens
  are real;
- the pipeline's "true CFG" runs only with a negative prompt and rescales the guided velocity of each token to the
  norm of the conditional one; conceptspace runs it whenever ``guidance_scale > 1``, with the model card's
  negative prompt ``" "`` when none is given;
- the VAE (``AutoencoderKLQwenImage``) is a video VAE: it decodes ``(B, C, 1, H, W)`` latents normalised by
  per-channel mean and std, with no scaling factor.
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
"""Text tokens per prompt: ``QwenImagePipeline.__call__``'s default."""
DEFAULT_NEGATIVE_PROMPT = " "
"""The negative prompt of the Qwen-Image model card's and the Lightning repo's examples (diffusers runs no CFG
without one)."""


class QwenImage(Family):
    """Qwen-Image transformers (``QwenImagePipeline``)."""

    name: ClassVar[str] = "qwenimage"
    text_mask_input: ClassVar[str | None] = "encoder_hidden_states_mask"
    network_folder: ClassVar[str] = "transformer"
    pipeline_class_name: ClassVar[str] = "QwenImagePipeline"
    network_class_name: ClassVar[str] = "QwenImageTransformer2DModel"
    latent_multiple: ClassVar[int] = 2
    shared_config_fields = (
        "patch_size",
        "in_channels",
        "out_channels",
        "num_layers",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
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
            if mask is None:  # the pipeline drops an all-true mask; batches of prompts need it back
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            return {"encoder_hidden_states": embeds, "encoder_hidden_states_mask": mask}

        negative = negative_prompt if negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT
        return Conditioning(encode(prompt), encode(negative) if cfg else None)

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
        mask = inputs["encoder_hidden_states_mask"]
        velocity = network(
            hidden_states=pack(sample),
            timestep=t.expand(batch).to(sample.dtype) / 1000,
            encoder_hidden_states=inputs["encoder_hidden_states"],
            # no mask when every token is real, as the pipeline calls it (the same attention, without a mask)
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,
            img_shapes=[[(1, height // 2, width // 2)]] * batch,
            return_dict=False,
        )[0]
        return unpack(velocity, height, width)

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, weight: float) -> torch.Tensor:
        # QwenImagePipeline's true CFG: the guided velocity of each packed token rescaled to the conditional norm
        height, width = cond.shape[-2:]
        guided = pack(uncond + weight * (cond - uncond))
        cond_norm = torch.norm(pack(cond), dim=-1, keepdim=True)
        guided_norm = torch.norm(guided, dim=-1, keepdim=True)
        return unpack(guided * (cond_norm / guided_norm), height, width)

    def scheduler_timestep(self, network_timestep: torch.Tensor) -> torch.Tensor:
        return network_timestep * 1000  # QwenImagePipeline passes t / 1000

    def timestep_kwargs(
        self, scheduler: Any, network: Any, steps: int, latent_shape: tuple[int, int]
    ) -> dict[str, Any]:
        tokens = (latent_shape[0] // 2) * (latent_shape[1] // 2)
        sigmas = np.linspace(1.0, 1 / steps, steps)
        return {"sigmas": sigmas, "mu": resolution_shift(scheduler, tokens)}

    def decode(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(latents)
        frames = (latents * std + mean).unsqueeze(2)  # one frame of the video VAE
        return vae.decode(frames, return_dict=False)[0][:, :, 0]

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny import tiny_qwenimage_pipeline

        return tiny_qwenimage_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny import tiny_qwenimage_transformer

        return tiny_qwenimage_transformer(seed=seed)
