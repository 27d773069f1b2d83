"""PixArt-α: a DiT (``PixArtTransformer2DModel``) on SD-style VP latents, conditioned on T5 hidden states with
their attention mask (``PixArtAlphaPipeline``). The paper's appendix pairs PixArt-α with its LCM student PixArt-δ.

The network predicts ε (and, in its other 4 output channels, a learned variance that sampling discards, as the
pipeline does). The 1024-px checkpoints also take the image's resolution and aspect ratio as micro-conditions
(``added_cond_kwargs``): the pipeline passes them when the transformer's ``sample_size`` is 128; they are part of
the conditioning here because they depend on the size sampled, as the text does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from conceptspace.models.families.base import Conditioning, Family

MAX_SEQUENCE_LENGTH = 120
"""T5 tokens per prompt: ``PixArtAlphaPipeline.__call__``'s default."""
MICRO_CONDITIONED_SAMPLE_SIZE = 128
"""The transformer ``sample_size`` for which the pipeline passes resolution and aspect ratio (the 1024-px models)."""


class PixArtAlpha(Family):
    """PixArt-α / PixArt-δ transformers (``PixArtAlphaPipeline``)."""

    name: ClassVar[str] = "pixart"
    text_mask_input: ClassVar[str | None] = "encoder_attention_mask"
    network_folder: ClassVar[str] = "transformer"
    pipeline_class_name: ClassVar[str] = "PixArtAlphaPipeline"
    network_class_name: ClassVar[str] = "PixArtTransformer2DModel"
    shared_config_fields = (
        "patch_size",
        "in_channels",
        "out_channels",
        "num_layers",
        "attention_head_dim",
        "num_attention_heads",
        "cross_attention_dim",
        "caption_channels",
        "norm_type",
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
        # the pipeline call cleans captions by default where bs4 and ftfy are installed (else it warns, then does not)
        from diffusers.utils import is_bs4_available, is_ftfy_available

        positive, mask, negative, negative_mask = pipeline.encode_prompt(
            prompt,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt or "",
            num_images_per_prompt=1,
            device=device,
            clean_caption=is_bs4_available() and is_ftfy_available(),
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        micro = self._micro_conditions(pipeline.transformer, height, width, positive)
        return Conditioning(
            {"encoder_hidden_states": positive, "encoder_attention_mask": mask, **micro},
            {"encoder_hidden_states": negative, "encoder_attention_mask": negative_mask, **micro}
            if cfg
            else None,
        )

    @staticmethod
    def _micro_conditions(
        network: Any, height: int, width: int, like: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if network.config.sample_size != MICRO_CONDITIONED_SAMPLE_SIZE:
            return {}
        resolution = torch.tensor([[height, width]], dtype=like.dtype, device=like.device)
        aspect_ratio = torch.tensor([[float(height / width)]], dtype=like.dtype, device=like.device)
        return {"resolution": resolution, "aspect_ratio": aspect_ratio}

    def predict(
        self,
        network: Any,
        sample: torch.Tensor,
        t: torch.Tensor,
        inputs: Mapping[str, torch.Tensor],
        guidance_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = network(
            sample,
            encoder_hidden_states=inputs["encoder_hidden_states"],
            encoder_attention_mask=inputs["encoder_attention_mask"],
            timestep=t.expand(sample.shape[0]),
            added_cond_kwargs={
                "resolution": inputs.get("resolution"),
                "aspect_ratio": inputs.get("aspect_ratio"),
            },
            return_dict=False,
        )[0]
        if network.config.out_channels // 2 == sample.shape[1]:  # learned variance: keep the ε half
            out = out.chunk(2, dim=1)[0]
        return out

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny import tiny_pixart_pipeline

        return tiny_pixart_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny import tiny_pixart_transformer

        return tiny_pixart_transformer(seed=seed)
