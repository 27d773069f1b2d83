"""Stable Diffusion 1.x/2.x: a ``UNet2DConditionModel`` conditioned on one CLIP text encoder's hidden states (ε- or
v-prediction on the VP schedule). Also the architecture of the embedded testbed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from conceptspace.models.families.base import Conditioning, Family

UNET_SHARED_FIELDS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "transformer_layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "num_attention_heads",
    "use_linear_projection",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "class_embed_type",
    "encoder_hid_dim",
)
"""UNet config fields that decide the shapes of shared weights. ``sample_size`` (native resolution) and
``time_cond_proj_dim`` (LCM's guidance embedding, an extra input layer) may differ between a base and its students."""

UNET_PER_BLOCK_FIELDS = frozenset(
    {"transformer_layers_per_block", "attention_head_dim", "num_attention_heads", "layers_per_block"}
)


class StableDiffusion(Family):
    """SD 1.x/2.x UNets (``StableDiffusionPipeline``)."""

    name: ClassVar[str] = "sd"
    network_folder: ClassVar[str] = "unet"
    pipeline_class_name: ClassVar[str] = "StableDiffusionPipeline"
    network_class_name: ClassVar[str] = "UNet2DConditionModel"
    shared_config_fields = UNET_SHARED_FIELDS
    per_block_fields = UNET_PER_BLOCK_FIELDS

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
        positive, negative = pipeline.encode_prompt(prompt, device, 1, cfg, negative_prompt)
        return Conditioning(
            {"encoder_hidden_states": positive},
            {"encoder_hidden_states": negative} if cfg else None,
        )

    def unet_kwargs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The UNet's keyword arguments for the conditioning ``inputs``."""
        return {"encoder_hidden_states": inputs["encoder_hidden_states"]}

    def predict(
        self,
        network: Any,
        sample: torch.Tensor,
        t: torch.Tensor,
        inputs: Mapping[str, torch.Tensor],
        guidance_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return network(
            sample, t, timestep_cond=guidance_condition, return_dict=False, **self.unet_kwargs(inputs)
        )[0]

    def embeds_guidance(self, network: Any) -> bool:
        # LCM-distilled UNets take w as a timestep-conditioning embedding (time_cond_proj_dim) in one pass.
        return network.config.time_cond_proj_dim is not None

    def guidance_condition(self, pipeline: Any, network: Any, scale: float, batch: int) -> torch.Tensor:
        w = torch.tensor(scale - 1).repeat(batch)
        return pipeline.get_guidance_scale_embedding(w, embedding_dim=network.config.time_cond_proj_dim)

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny import tiny_sd_pipeline

        return tiny_sd_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny import tiny_sd_unet

        return tiny_sd_unet(seed=seed, lcm=embeds_guidance)
