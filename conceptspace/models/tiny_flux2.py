"""Tiny random FLUX.2 [klein] models, built in memory: a ``Flux2Transformer2DModel`` without guidance embedding, a
``Qwen3ForCausalLM`` text encoder deep enough for the layers the pipeline reads (9, 18, 27), a Qwen tokenizer with
the chat template, an ``AutoencoderKLFlux2`` whose latent batch-norm statistics are not the identity, and
``Flux2KleinPipeline`` around them (the ``tiny-flux2-klein`` registry entries and the offline hub layout).
"""

from __future__ import annotations

from typing import Any

import torch

from conceptspace.models.tiny import qwen_tokenizer, seeded

KLEIN_QWEN_HIDDEN = 16
"""The tiny Qwen3's hidden size: the transformer's text input is three of its layers side by side (3 × 16)."""
KLEIN_QWEN_LAYERS = 28
"""Enough layers that the pipeline's default ``text_encoder_out_layers`` (9, 18, 27) are all intermediate ones, as
in the real Qwen3-4B (36 layers) and Qwen3-8B."""
KLEIN_VAE_LATENT_CHANNELS = 4
"""The tiny VAE's latent channels; the transformer sees them 2×2-patchified: 16 channels per token."""
FLUX2_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}
"""FLUX.2's ``FlowMatchEulerDiscreteScheduler`` config (the FLUX.2 [dev] diffusers repos'; the [klein] repos' own
file is not verified). ``Flux2KleinPipeline`` always passes its own ``mu`` (``compute_empirical_mu``), so with
dynamic shifting on, only the time-shift type matters."""


def tiny_klein_text_encoder(seed: int = 0) -> Any:
    """A tiny ``Qwen3ForCausalLM`` (what the [klein] repos ship as ``text_encoder``) for :func:`qwen_tokenizer`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(qwen_tokenizer()),
        hidden_size=KLEIN_QWEN_HIDDEN,
        intermediate_size=32,
        num_hidden_layers=KLEIN_QWEN_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
    )
    with seeded(seed):
        return Qwen3ForCausalLM(config).eval()


def tiny_flux2_transformer(seed: int = 0) -> Any:
    """A tiny ``Flux2Transformer2DModel`` ([klein]'s shape: no guidance embedding; one double- and one
    single-stream block) for the tiny VAE's patchified latents and three Qwen3 layers of text."""
    from diffusers import Flux2Transformer2DModel

    with seeded(seed):
        return Flux2Transformer2DModel(
            patch_size=1,
            in_channels=4 * KLEIN_VAE_LATENT_CHANNELS,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=3 * KLEIN_QWEN_HIDDEN,
            timestep_guidance_channels=32,
            axes_dims_rope=(4, 4, 4, 4),
            guidance_embeds=False,
        ).eval()


def tiny_flux2_vae(seed: int = 0) -> Any:
    """A tiny ``AutoencoderKLFlux2`` (2× downsampling) whose latent batch-norm has random running statistics, so
    that decoding exercises the pipeline's de-normalisation."""
    from diffusers import AutoencoderKLFlux2

    with seeded(seed):
        vae = AutoencoderKLFlux2(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            latent_channels=KLEIN_VAE_LATENT_CHANNELS,
            norm_num_groups=8,
            sample_size=64,
        ).eval()
        channels = vae.bn.running_mean.shape[0]
        vae.bn.running_mean.copy_(0.3 * torch.randn(channels))
        vae.bn.running_var.copy_(0.5 + torch.rand(channels))
    return vae


def tiny_flux2_components(seed: int = 0) -> dict[str, Any]:
    """The components of a tiny ``Flux2KleinPipeline``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return {
        "transformer": tiny_flux2_transformer(seed),
        "vae": tiny_flux2_vae(seed + 2000),
        "scheduler": FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER),
        "text_encoder": tiny_klein_text_encoder(seed + 3000),
        "tokenizer": qwen_tokenizer(),
    }


def tiny_flux2_pipeline(seed: int = 0, *, distilled: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    """A tiny ``Flux2KleinPipeline`` (``distilled``: flagged ``is_distilled`` as the step-distilled repos are, so the
    pipeline ignores the guidance scale), in ``dtype``, without progress bars."""
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline(**tiny_flux2_components(seed), is_distilled=distilled)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
