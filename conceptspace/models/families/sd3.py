"""Stable Diffusion 3 / 3.5: an MMDiT (``SD3Transformer2DModel``) on a flow-matching schedule, conditioned on the
joint sequence of two CLIP encoders and T5 plus the CLIPs' pooled projections (``StableDiffusion3Pipeline``).

The network predicts the flow velocity ``v = ε − x0`` (:data:`conceptspace.schedules.FLOW`); its timestep input is
the scheduler's own (σ·1000). SD3.5 Large samples with ``FlowMatchEulerDiscreteScheduler`` (shift 3.0) and CFG;
its Turbo student with the same scheduler, 4 steps and no CFG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from conceptspace.models.families.base import Conditioning, Family

MAX_SEQUENCE_LENGTH = 256
"""T5 tokens per prompt: ``StableDiffusion3Pipeline.__call__``'s default."""


def resolution_shift(scheduler: Any, image_seq_len: int, default_max_shift: float = 1.15) -> float:
    """The ``mu`` of a dynamically shifted flow schedule for ``image_seq_len`` image tokens, as the SD3 and FLUX
    pipelines compute it (linear in the token count between the scheduler's base and max lengths; the SD3
    pipeline's fallback ``max_shift`` is 1.16, FLUX's 1.15)."""
    config = scheduler.config
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", default_max_shift)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


class StableDiffusion3(Family):
    """SD3 / SD3.5 MMDiT transformers (``StableDiffusion3Pipeline``)."""

    name: ClassVar[str] = "sd3"
    text_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states", "pooled_projections")
    network_folder: ClassVar[str] = "transformer"
    pipeline_class_name: ClassVar[str] = "StableDiffusion3Pipeline"
    network_class_name: ClassVar[str] = "SD3Transformer2DModel"
    shared_config_fields = (
        "patch_size",
        "in_channels",
        "out_channels",
        "num_layers",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "caption_projection_dim",
        "pooled_projection_dim",
        "pos_embed_max_size",
        "dual_attention_layers",
        "qk_norm",
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
        positive, negative, pooled, negative_pooled = pipeline.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        return Conditioning(
            {"encoder_hidden_states": positive, "pooled_projections": pooled},
            {"encoder_hidden_states": negative, "pooled_projections": negative_pooled} if cfg else None,
        )

    def predict(
        self,
        network: Any,
        sample: torch.Tensor,
        t: torch.Tensor,
        inputs: Mapping[str, torch.Tensor],
        guidance_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return network(
            hidden_states=sample,
            timestep=t.expand(sample.shape[0]),
            encoder_hidden_states=inputs["encoder_hidden_states"],
            pooled_projections=inputs["pooled_projections"],
            return_dict=False,
        )[0]

    def timestep_kwargs(
        self, scheduler: Any, network: Any, steps: int, latent_shape: tuple[int, int]
    ) -> dict[str, Any]:
        if not scheduler.config.get("use_dynamic_shifting", False):
            return {}
        patch = network.config.patch_size
        tokens = (latent_shape[0] // patch) * (latent_shape[1] // patch)
        return {"mu": resolution_shift(scheduler, tokens, default_max_shift=1.16)}

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny import tiny_sd3_pipeline

        return tiny_sd3_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny import tiny_sd3_transformer

        return tiny_sd3_transformer(seed=seed)
