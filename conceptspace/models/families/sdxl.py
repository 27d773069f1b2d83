"""SDXL: SD's UNet with two text encoders; besides the hidden states it takes the pooled text embedding and six
"time ids" (original size, crop, target size) through ``added_cond_kwargs``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from conceptspace.models.families.base import Conditioning
from conceptspace.models.families.sd import StableDiffusion
from conceptspace.models.registry import IncompatibleModelsError


class StableDiffusionXL(StableDiffusion):
    """SDXL UNets (``StableDiffusionXLPipeline``): SDXL 1.0 and its students (DMD2, Lightning, Turbo, LCM)."""

    name: ClassVar[str] = "sdxl"
    text_inputs: ClassVar[tuple[str, ...]] = ("encoder_hidden_states", "text_embeds")
    pipeline_class_name: ClassVar[str] = "StableDiffusionXLPipeline"

    def check_pipeline(self, pipeline: Any, source: str, name: str) -> None:
        # diffusers loads an SD 1.x/2.x folder as an SDXL pipeline without text_encoder_2; sampling would crash.
        if getattr(pipeline, "text_encoder_2", None) is None:
            raise IncompatibleModelsError(
                f"{source} is not an SDXL base pipeline for {name!r}: it has no text_encoder_2/tokenizer_2"
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
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt,
        )
        # (original size, crop top-left, target size), as the pipeline builds them for an uncropped image
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=positive.dtype, device=device)
        return Conditioning(
            {"encoder_hidden_states": positive, "text_embeds": pooled, "time_ids": time_ids},
            {"encoder_hidden_states": negative, "text_embeds": negative_pooled, "time_ids": time_ids}
            if cfg
            else None,
        )

    def unet_kwargs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {
            "encoder_hidden_states": inputs["encoder_hidden_states"],
            "added_cond_kwargs": {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]},
        }

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny import tiny_sdxl_pipeline

        return tiny_sdxl_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny import tiny_sdxl_unet

        return tiny_sdxl_unet(seed=seed, lcm=embeds_guidance)
