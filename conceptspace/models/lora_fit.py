"""Which registry models a LoRA file fits, without loading any weights: the real families' published UNet
configs built on the meta device, the tiny families' random networks, and :func:`inspect_lora`
(``conceptspace lora inspect``)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conceptspace.lora import HEADER_KEY, coverage, read_lora
from conceptspace.models.families import family_of
from conceptspace.models.registry import REGISTRY, bases

__all__ = ["FAMILY_UNET_CONFIGS", "SD21_UNET_CONFIG", "SDXL_UNET_CONFIG", "family_unet", "inspect_lora"]

# The published UNet configs of the real families, to build their architecture on the meta device.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SD21_UNET_CONFIG: dict[str, Any] = {
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "in_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
FAMILY_UNET_CONFIGS: dict[str, dict[str, Any]] = {"sdxl": SDXL_UNET_CONFIG, "sd21": SD21_UNET_CONFIG}


def family_unet(family: str) -> nn.Module | None:
    """A UNet in the architecture of a registry family, for shape checks: meta-device (no memory) for the real
    families and folders with a config, the tiny random one for tiny families; None when none is known offline."""
    for spec in bases():
        if spec.family != family:
            continue
        if spec.storage == "random":
            return _cached_random_network(spec.architecture_name, spec.seed)
        if spec.local_dir:
            network_folder = family_of(spec).network_folder
            folder = Path(spec.local_dir) / (
                network_folder if spec.storage == "pipeline" else (spec.subfolder or "")
            )
            if (folder / "config.json").is_file():
                return _meta_unet((folder / "config.json").read_text(encoding="utf-8"))
        if family in FAMILY_UNET_CONFIGS:
            return _meta_unet(json.dumps(FAMILY_UNET_CONFIGS[family], sort_keys=True))
    return None


@functools.lru_cache(maxsize=8)
def _cached_random_network(architecture: str, seed: int) -> nn.Module:
    return family_of(architecture).random_network(seed)


@functools.lru_cache(maxsize=8)
def _meta_unet(config_json: str) -> nn.Module:
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in json.loads(config_json).items() if not k.startswith("_")}
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def inspect_lora(path: str | os.PathLike) -> dict[str, Any]:
    """What a LoRA file holds and which registry models it fits.

    Returns a JSON-ready dict: ``path``, ``format``, ``modules``, ``rank``/``ranks``, ``alpha``/``alphas``,
    ``dtype``, ``conv_modules``, ``unresolved`` (kohya names only a UNet can map), ``unexpected_keys``,
    ``metadata``, ``header``, ``fits`` (per registry family: its models, whether every module fits, and the
    coverage counts) and ``fits_models`` (the registry models it fits completely).
    """
    lora = read_lora(path)
    fits: dict[str, Any] = {}
    families = sorted({spec.family for spec in REGISTRY.values()})
    for family in families:
        models = [spec.name for spec in REGISTRY.values() if spec.family == family]
        unet = family_unet(family)
        if unet is None:
            fits[family] = {"models": models, "fits": None, "reason": "architecture not known offline"}
            continue
        report = coverage(unet, lora)
        fits[family] = {
            "models": models,
            "fits": report.complete,
            "matched": len(report.matched),
            "missing": len(report.missing),
            "mismatched": len(report.mismatched),
        }
    dtypes = sorted({str(w.down.dtype).removeprefix("torch.") for w in lora.modules.values()})
    return {
        "path": str(path),
        "format": lora.format,
        "modules": len(lora),
        "rank": lora.rank,
        "ranks": sorted(set(lora.ranks.values())),
        "alpha": lora.alpha,
        "alphas": sorted(set(lora.alphas.values())),
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "conv_modules": sum(w.down.ndim == 4 for w in lora.modules.values()),
        "unresolved": len(lora.unresolved),
        "unexpected_keys": list(lora.unexpected),
        "metadata": lora.metadata,
        "header": {k: v for k, v in lora.header.items() if k != HEADER_KEY},
        "fits": fits,
        "fits_models": [m for info in fits.values() if info.get("fits") for m in info["models"]],
    }
