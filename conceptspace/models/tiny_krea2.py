"""Tiny random Krea 2 models, built in memory: a ``Krea2Transformer2DModel``, a ``Qwen3VLModel`` text encoder whose
hidden states the pipeline taps at several layers, the tiny Qwen-Image VAE and Qwen's tokenizer from
:mod:`conceptspace.models.tiny`, and ``Krea2Pipeline`` itself (Raw, or Turbo with ``is_distilled``)."""

from __future__ import annotations

from typing import Any

import torch

from conceptspace.models.tiny import qwen_tokenizer, seeded, tiny_qwenimage_vae

KREA2_HIDDEN = 16
"""The tiny text encoder's width (Qwen3-VL-4B's is 2560)."""
KREA2_SELECT_LAYERS = (2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35)
"""The text encoder's hidden states the pipeline stacks per token (``text_encoder_select_layers``): the real taps of
Qwen3-VL-4B's 36 layers, which the tiny encoder has too (diffusers' modular Krea 2 encoder reads these very
indices, whatever the pipeline's config says)."""
KREA2_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 6400,
    "shift_terminal": None,
    "time_shift_type": "exponential",
}
"""The ``FlowMatchEulerDiscreteScheduler`` config of the krea/Krea-2-Raw repo (as ostris' ai-toolkit quotes it; the
official sampler's mu endpoints 0.5 at 256² px and 1.15 at 1280² px, in 16-px tokens). The Turbo repo is taken to
ship the same file: its fixed mu = 1.15 is ``Krea2Pipeline``'s ``is_distilled`` flag, not a scheduler setting."""


def tiny_qwen3vl_encoder(seed: int = 0) -> Any:
    """A tiny ``Qwen3VLModel`` (36 narrow text layers, as many as Qwen3-VL-4B's, with interleaved 3-axis rotary
    positions; one vision block the text path never uses): what ``Krea2Pipeline`` runs with ``output_hidden_states``."""
    from transformers import Qwen3VLConfig, Qwen3VLModel

    rope = {"rope_type": "default", "rope_theta": 5e5, "mrope_section": [2, 1, 1], "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(qwen_tokenizer()), "hidden_size": KREA2_HIDDEN, "intermediate_size": 32,
            "num_hidden_layers": 36, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 2048, "rope_parameters": rope,
        },
        vision_config={
            "depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
            "out_hidden_size": KREA2_HIDDEN, "deepstack_visual_indexes": [0],
        },
    )  # fmt: skip
    with seeded(seed):
        return Qwen3VLModel(config).eval()


def tiny_krea2_transformer(seed: int = 0) -> Any:
    """A tiny ``Krea2Transformer2DModel`` (two single-stream blocks, grouped-query attention, one layerwise and one
    refiner text-fusion block) for the tiny Qwen-Image VAE's 4 channels in 2×2 patches."""
    from diffusers import Krea2Transformer2DModel

    with seeded(seed):
        return Krea2Transformer2DModel(
            in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=32, timestep_embed_dim=8, text_hidden_dim=KREA2_HIDDEN,
            num_text_layers=len(KREA2_SELECT_LAYERS), text_num_attention_heads=2, text_num_key_value_heads=1,
            text_intermediate_size=16, num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 2, 2),
        ).eval()  # fmt: skip


def tiny_krea2_components(seed: int = 0, *, distilled: bool = False) -> dict[str, Any]:
    """The components (and config values) of a tiny ``Krea2Pipeline``; ``distilled``: Turbo's ``is_distilled``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return {
        "transformer": tiny_krea2_transformer(seed),
        "vae": tiny_qwenimage_vae(seed + 2000),
        "scheduler": FlowMatchEulerDiscreteScheduler(**KREA2_SCHEDULER),
        "text_encoder": tiny_qwen3vl_encoder(seed + 3000),
        "tokenizer": qwen_tokenizer(),
        "text_encoder_select_layers": KREA2_SELECT_LAYERS,
        "is_distilled": distilled,
    }


def tiny_krea2_pipeline(seed: int = 0, *, distilled: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    """A tiny ``Krea2Pipeline`` in ``dtype``, without progress bars: Krea 2 Raw's, or (``distilled``) Turbo's."""
    from diffusers import Krea2Pipeline

    pipe = Krea2Pipeline(**tiny_krea2_components(seed, distilled=distilled))
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
