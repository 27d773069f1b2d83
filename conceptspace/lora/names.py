"""Module names in LoRA files and in networks: kohya names, the original SD (LDM) names and Black Forest Labs'
FLUX names, mapped to the diffusers module paths a network has."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from conceptspace.lora.weights import LoRAWeights

KOHYA_PREFIX = "lora_unet_"

# Every attribute name on a path through diffusers' UNet2DConditionModel. A kohya name is the module path with
# "." → "_"; splitting it back into these names (and integers) recovers the path when exactly one split exists.
_UNET_NAMES = frozenset(
    (  # noqa: SIM905 (a word list reads better than 45 quoted lines)
        "act add_embedding add_time_proj attentions attn attn1 attn2 class_embedding cond_proj conv conv1 conv2 "
        "conv_act conv_in conv_norm_out conv_out conv_shortcut down_blocks downsamplers dropout encoder_hid_proj "
        "ff linear_1 linear_2 mid_block net nonlinearity norm norm1 norm2 norm3 proj proj_in proj_out resnets "
        "time_emb_proj time_embedding time_proj to_k to_out to_q to_v transformer_blocks up_blocks upsamplers"
    ).split()
)
KOHYA_PREFIXES = (KOHYA_PREFIX, "lora_transformer_")
"""Kohya module-name prefixes: ``lora_unet_`` (UNets, and FLUX LoRAs in Black Forest Labs' own module names),
``lora_transformer_`` (transformer LoRAs in diffusers' module names)."""
# FLUX LoRAs from kohya's sd-scripts name modules as Black Forest Labs' reference code does. Each name maps to one
# diffusers module, or to several when BFL fuses projections that diffusers keeps apart (q/k/v; single blocks'
# q/k/v + MLP input): the LoRA's down factor is then shared and its up factor split by the modules' widths.
_BFL_FLUX = [
    (re.compile(r"^double_blocks_(\d+)_img_attn_qkv$"), ("attn.to_q", "attn.to_k", "attn.to_v")),
    (
        re.compile(r"^double_blocks_(\d+)_txt_attn_qkv$"),
        ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    ),
    (re.compile(r"^double_blocks_(\d+)_img_attn_proj$"), ("attn.to_out.0",)),
    (re.compile(r"^double_blocks_(\d+)_txt_attn_proj$"), ("attn.to_add_out",)),
    (re.compile(r"^double_blocks_(\d+)_img_mlp_0$"), ("ff.net.0.proj",)),
    (re.compile(r"^double_blocks_(\d+)_img_mlp_2$"), ("ff.net.2",)),
    (re.compile(r"^double_blocks_(\d+)_txt_mlp_0$"), ("ff_context.net.0.proj",)),
    (re.compile(r"^double_blocks_(\d+)_txt_mlp_2$"), ("ff_context.net.2",)),
    (re.compile(r"^double_blocks_(\d+)_img_mod_lin$"), ("norm1.linear",)),
    (re.compile(r"^double_blocks_(\d+)_txt_mod_lin$"), ("norm1_context.linear",)),
    (re.compile(r"^single_blocks_(\d+)_linear1$"), ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    (re.compile(r"^single_blocks_(\d+)_linear2$"), ("proj_out",)),
    (re.compile(r"^single_blocks_(\d+)_modulation_lin$"), ("norm.linear",)),
]
# SD (LDM) names inside a ResNet block, for the original kohya naming of SD 1.x/2.x/SDXL UNets.
_LDM_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


@functools.lru_cache(maxsize=4096)
def parse_kohya_name(name: str) -> str | None:
    """The diffusers module path of a kohya name in diffusers naming, when exactly one split into UNet attribute
    names exists; None otherwise (SD naming, unknown modules, other prefixes), to be resolved against a UNet."""
    if not name.startswith(KOHYA_PREFIX):
        return None
    tokens = name[len(KOHYA_PREFIX) :].split("_")

    @functools.cache
    def splits(start: int) -> list[tuple[str, ...]]:
        if start == len(tokens):
            return [()]
        found = []
        for end in range(start + 1, len(tokens) + 1):
            part = "_".join(tokens[start:end])
            if part in _UNET_NAMES or (end == start + 1 and part.isdigit()):
                found += [(part, *rest) for rest in splits(end)]
        return found[:2]  # two are enough to call it ambiguous

    options = splits(0)
    return ".".join(options[0]) if len(options) == 1 else None


def network_name(network: nn.Module) -> str:
    """``"transformer"`` for diffusers' transformer denoisers (SD3, FLUX …), ``"unet"`` otherwise: the pipeline
    component, and the key prefix of diffusers LoRA files."""
    return "transformer" if "Transformer" in type(network).__name__ else "unet"


def split_bfl_flux(
    name: str, weights: LoRAWeights, found: Mapping[str, nn.Module]
) -> dict[str, LoRAWeights] | None:
    """A kohya FLUX name in Black Forest Labs' naming as diffusers modules among ``found`` (a network's modules by
    path; None if it is not such a name, or the network lacks the modules). A fused projection's up factor is
    split by the modules' output widths."""
    if not name.startswith(KOHYA_PREFIX):
        return None
    stem = name[len(KOHYA_PREFIX) :]
    for pattern, targets in _BFL_FLUX:
        if match := pattern.match(stem):
            block = "transformer_blocks" if stem.startswith("double_") else "single_transformer_blocks"
            paths = [f"{block}.{match.group(1)}.{target}" for target in targets]
            if not all(isinstance(found.get(path), nn.Linear) for path in paths):
                return None
            widths = [found[path].out_features for path in paths]
            if sum(widths) != weights.up.shape[0]:
                return None  # another layout: left unresolved, reported as missing
            ups = torch.split(weights.up, widths, dim=0)
            return {path: replace(weights, up=up.contiguous()) for path, up in zip(paths, ups, strict=True)}
    return None


def kohya_table(unet: nn.Module) -> dict[str, str]:
    """Kohya names → module paths of ``unet``, in diffusers naming and in the original SD (LDM) naming."""
    ldm = ldm_prefixes(unet)
    table: dict[str, str] = {}
    for path, _ in unet.named_modules():
        if not path:
            continue
        for prefix in KOHYA_PREFIXES:
            table[prefix + path.replace(".", "_")] = path
        in_ldm = ldm_path(path, ldm)
        if in_ldm is not None:
            table.setdefault(KOHYA_PREFIX + in_ldm.replace(".", "_"), path)
    return table


def ldm_prefixes(unet: nn.Module) -> dict[str, str]:
    """Diffusers block paths → the SD (LDM) paths the original UNet code used, read off ``unet``'s blocks."""
    mapping = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    index = 1  # input_blocks.0 is conv_in
    for i, block in enumerate(getattr(unet, "down_blocks", [])):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            mapping[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{index}.0"
            if attentions is not None and j < len(attentions):
                mapping[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if getattr(block, "downsamplers", None):
            mapping[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        mapping["mid_block.resnets.0"] = "middle_block.0"
        if getattr(mid, "attentions", None):
            mapping["mid_block.attentions.0"] = "middle_block.1"
            if len(mid.resnets) > 1:
                mapping["mid_block.resnets.1"] = "middle_block.2"
        elif len(mid.resnets) > 1:
            mapping["mid_block.resnets.1"] = "middle_block.1"
    index = 0
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        attentions = getattr(block, "attentions", None)
        count = len(block.resnets)
        for j in range(count):
            mapping[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{index}.0"
            if attentions is not None and j < len(attentions):
                mapping[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
            if j == count - 1 and getattr(block, "upsamplers", None):
                slot = 2 if attentions is not None else 1
                mapping[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{index}.{slot}.conv"
            index += 1
    return mapping


def ldm_path(path: str, prefixes: Mapping[str, str]) -> str | None:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in prefixes:
            rest = parts[cut:]
            if rest and ".resnets." in f".{prefix}.":
                if rest[0] not in _LDM_RESNET:
                    return None
                rest = [_LDM_RESNET[rest[0]], *rest[1:]]
            return ".".join([prefixes[prefix], *rest])
    return None
