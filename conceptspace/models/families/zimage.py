"""Z-Image: a single-stream DiT (``ZImageTransformer2DModel``) on flow-matching latents, conditioned on a Qwen3
text encoder's second-to-last hidden states (``ZImagePipeline``). Z-Image-Turbo is its distilled student.

Three conventions differ from the other flow families, and this adapter is where they live:

- the network takes a *list* of latents ``(C, 1, H, W)`` and a list of unpadded caption features, and returns a
  list; the sampler keeps batched ``(B, C, H, W)`` latents and padded features with their mask, as elsewhere;
- it is called with ``(1000 − t)/1000`` and predicts the negative of the scheduler's velocity;
- its guidance scale ``s`` means ``pos + s·(pos − neg)``, CFG as soon as ``s > 0``: standard CFG weight ``1 + s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from conceptspace.models.families.base import Conditioning, Family
from conceptspace.models.families.sd3 import resolution_shift

MAX_SEQUENCE_LENGTH = 512
"""Qwen3 tokens per prompt: ``ZImagePipeline.__call__``'s default."""


class ZImage(Family):
    """Z-Image / Z-Image-Turbo transformers (``ZImagePipeline``)."""

    name: ClassVar[str] = "zimage"
    text_mask_input: ClassVar[str | None] = "encoder_attention_mask"
    network_folder: ClassVar[str] = "transformer"
    pipeline_class_name: ClassVar[str] = "ZImagePipeline"
    network_class_name: ClassVar[str] = "ZImageTransformer2DModel"
    latent_multiple: ClassVar[int] = 2
    single_pass_scale: ClassVar[float] = 0.0
    shared_config_fields = (
        "all_patch_size",
        "all_f_patch_size",
        "in_channels",
        "dim",
        "n_layers",
        "n_refiner_layers",
        "n_heads",
        "n_kv_heads",
        "cap_feat_dim",
        "axes_dims",
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
        positive, negative = pipeline.encode_prompt(
            prompt=prompt,
            device=device,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )

        def padded(features: torch.Tensor) -> dict[str, torch.Tensor]:
            # a fixed length, so that prompts of different lengths stack into one batch
            states = features.new_zeros(1, MAX_SEQUENCE_LENGTH, features.shape[-1])
            states[0, : len(features)] = features
            mask = torch.zeros(1, MAX_SEQUENCE_LENGTH, dtype=torch.bool, device=features.device)
            mask[0, : len(features)] = True
            return {"encoder_hidden_states": states, "encoder_attention_mask": mask}

        return Conditioning(padded(positive[0]), padded(negative[0]) if cfg else None)

    def cfg_weight(self, guidance_scale: float) -> float | None:
        return 1.0 + guidance_scale if guidance_scale > 0 else None

    def predict(
        self,
        network: Any,
        sample: torch.Tensor,
        t: torch.Tensor,
        inputs: Mapping[str, torch.Tensor],
        guidance_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        latents = list(sample.to(network.dtype).unsqueeze(2).unbind(dim=0))
        captions = [
            states[mask]
            for states, mask in zip(
                inputs["encoder_hidden_states"], inputs["encoder_attention_mask"], strict=True
            )
        ]
        timestep = (1000 - t.expand(sample.shape[0])) / 1000
        out = network(latents, timestep, captions, return_dict=False)[0]
        return -torch.stack([o.float() for o in out]).squeeze(2).to(sample.dtype)

    def scheduler_timestep(self, network_timestep: torch.Tensor) -> torch.Tensor:
        return 1000 * (1 - network_timestep)  # the network is called with (1000 − t) / 1000

    def timestep_kwargs(
        self, scheduler: Any, network: Any, steps: int, latent_shape: tuple[int, int]
    ) -> dict[str, Any]:
        tokens = (latent_shape[0] // 2) * (latent_shape[1] // 2)
        sigmas = torch.linspace(1.0, 1 / steps, steps).tolist()  # get_default_z_image_sigmas
        return {"sigmas": sigmas, "mu": resolution_shift(scheduler, tokens)}

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny import tiny_zimage_pipeline

        return tiny_zimage_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny import tiny_zimage_transformer

        return tiny_zimage_transformer(seed=seed)
