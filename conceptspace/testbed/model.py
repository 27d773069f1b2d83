"""The testbed's miniature Stable Diffusion: network configs, noise schedule, tokenizer, and how images and captions
become its latents and text conditioning."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from conceptspace.io import atomic_write_folder

BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS = 0.00085, 0.012, 1000
DMD_TIMESTEPS = (999, 749, 499, 249)
MAX_TOKENS = 16
"""Token positions of the text encoder and ``model_max_length`` of the tokenizer (the longest caption has 14)."""
TEXT_HIDDEN = 64
LATENT_CHANNELS, LATENT_SIZE = 4, 32
"""The latent is 32×32×4 (4,096 numbers): enough that a step at t = 999 already sees the object (docs/testbed.md)."""


# --------------------------------------------------------------------------------------------------------- networks
def vae_config() -> dict[str, Any]:
    """32×32×3 → 32×32×4: one level, no downsampling, no attention (see docs/testbed.md, "Why 32×32 latents")."""
    return dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        mid_block_add_attention=False,
    )


def clip_config() -> Any:
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=64,
    )
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_act="quick_gelu",
        projection_dim=64,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64)


def unet_config() -> dict[str, Any]:
    """Four levels (32, 16, 8, 4 positions); cross-attention only at 8×8 and 4×4, where it is cheap."""
    return dict(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
        norm_num_groups=8,
    )


# --------------------------------------------------------------------------------------------------------- schedule
def scheduler_config() -> dict[str, Any]:
    """Stable Diffusion's training/inference schedule (the ``EulerDiscreteScheduler`` config SD ships)."""
    return dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
    )


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def noised(x0: torch.Tensor, a: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ·x0 + √(1−ᾱ)·ε."""
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def x0_from_eps(xt: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (xt - (1 - a).sqrt() * eps) / a.sqrt()


# ---------------------------------------------------------------------------------------------- tokenizer, encoding
def write_tokenizer(out_dir: str | os.PathLike) -> Path:
    """The real CLIP BPE tokenizer (49408 tokens) with ``model_max_length`` = :data:`MAX_TOKENS`."""
    from conceptspace.models.tiny import write_clip_tokenizer_files

    def save(tmp: Path) -> None:
        write_clip_tokenizer_files(tmp)
        config_path = tmp / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["model_max_length"] = MAX_TOKENS
        config_path.write_text(json.dumps(config))

    return atomic_write_folder(out_dir, save)


def load_tokenizer(path: str | os.PathLike) -> Any:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(path))
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Padded token ids; captions repeat endlessly in training, so each is tokenised once per tokenizer."""
    cache = tokenizer.__dict__.setdefault("_conceptspace_ids", {})
    missing = sorted({text for text in texts if text not in cache})
    if missing:
        ids = tokenizer(
            missing, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids
        cache.update(zip(missing, ids, strict=True))
    return torch.stack([cache[text] for text in texts])


def encode_text(text_encoder: Any, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(tokenize(tokenizer, texts).to(text_encoder.device))[0]


def encode_images(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """Scaled latents of ``images``: the posterior's mean, not a sample. This full-resolution VAE's posterior is
    wide (std 0.55–0.9 of the scaled latents' spread of 0.6–1.3 per channel, which its decoder tolerates), so
    samples would make much of every target encoder noise: a loss floor, and textured backgrounds when sampling."""
    with torch.no_grad():
        return vae.encode(images).latent_dist.mean * vae.config.scaling_factor
