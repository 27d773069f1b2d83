"""LoRA files in and out, and applying them to any UNet of a family, base or distilled student.

A :class:`LoRA` holds, per target module, the ``down`` (rank × in, or rank × in × kh × kw for a convolution) and
``up`` (out × rank) factors and ``alpha``; the module adds ``scale · (alpha / rank) · up(down(x))`` to the
layer's output. Modules are named by their path in diffusers' ``UNet2DConditionModel``
(``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``).

Read: kohya files (``lora_unet_<module>.{lora_down.weight,lora_up.weight,alpha}``, as Concept Sliders,
SliderSpace, A1111 and ComfyUI use, in diffusers naming or the original SD naming ``input_blocks``/
``middle_block``/``output_blocks``), diffusers files (``unet.<module>.lora_A/lora_B.weight`` and the older
``unet.<module>.lora.down/up.weight``), Qwen-Image-Lightning's ``diffusion_model.<module>.lora_down/lora_up.weight``
with ``.alpha``, peft state dicts and adapter folders. ``.safetensors`` files, and pickles
only through ``torch.load(weights_only=True)``. Write: diffusers files that ``pipe.load_lora_weights`` loads, and
kohya files, with rank, alpha, target modules and the caller's metadata in the safetensors header.

Applying (:func:`apply_lora`) leaves the UNet's weights alone: forward hooks add each LoRA's term, so several LoRAs
stack, each has its own scale (negative too) and timestep window, and :meth:`LoRAHandle.remove` restores the UNet
exactly. :func:`merge_lora` changes the weights for good. :func:`coverage` says which modules a LoRA finds in a
UNet; a LoRA that does not fit is refused with :class:`LoRAMismatchError` unless ``allow_partial``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from conceptspace.io import atomic_write, atomic_write_folder, torch_load_error

LoRAFileFormat = Literal["diffusers", "kohya", "peft"]

# Our metadata (rank, alpha, target modules, base model, recipe, …) as one JSON value in the safetensors header.
HEADER_KEY = "conceptspace_lora"
# diffusers' own header entry: the LoraConfig that `load_lora_weights` builds the adapter from.
DIFFUSERS_HEADER_KEY = "lora_adapter_metadata"
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
_TEXT_ENCODER_PREFIXES = (
    "lora_te_",
    "lora_te1_",
    "lora_te2_",
    "text_encoder.",
    "text_encoder_2.",
    "te.",
    "te1.",
)
_UNSUPPORTED = {  # key pattern -> the variant it marks (LyCORIS names as in its own code and ComfyUI's loader)
    re.compile(r"\.dora_scale$|\.lora_magnitude_vector"): "DoRA",
    re.compile(r"\.hada_"): "LyCORIS LoHa",
    re.compile(r"\.lokr_"): "LyCORIS LoKr",
    re.compile(r"\.lora_mid\."): "LyCORIS LoCon with a Tucker mid factor",
    re.compile(r"\.oft_|\.oft_blocks$"): "OFT",
    re.compile(r"\.on_input$"): "LyCORIS IA3",
    re.compile(r"\.[ab][12]\.weight$"): "LyCORIS GLoRA",
    re.compile(r"\.diff(_b)?$"): "LyCORIS full (weight differences, not low-rank factors)",
}
_KOHYA_KEY = re.compile(
    r"^(lora_(?:unet|transformer)_[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$"
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
_PEFT_KEY = re.compile(r"^(.+)\.(lora_A|lora_B)(?:\.[A-Za-z0-9_\-]+)?\.weight$")
_DIFFUSERS_KEY = re.compile(r"^(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$")
# Qwen-Image-Lightning's layout: module paths with kohya's factor names, under ComfyUI's "diffusion_model." prefix
_DOTTED_KOHYA_KEY = re.compile(r"^(.+)\.lora_(down|up)\.weight$")
_ALPHA_KEY = re.compile(r"^(.+)\.alpha$")
# SD (LDM) names inside a ResNet block, for the original kohya naming of SD 1.x/2.x/SDXL UNets.
_LDM_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


class LoRAFormatError(ValueError):
    """A file that is not a readable LoRA (truncated, not a LoRA, inconsistent ranks, unsupported variant)."""


class LoRAMismatchError(ValueError):
    """A LoRA whose modules are missing from, or have other shapes than, the UNet it is applied to."""


@dataclass
class LoRAWeights:
    """One module's LoRA factors: ``delta W = (alpha / rank) · up @ down``.

    ``down``: (rank, in) for a linear layer, (rank, in, kh, kw) for a convolution; ``up``: (out, rank), or
    (out, rank, 1, 1) for a convolution.
    """

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def factor(self) -> float:
        """``alpha / rank``, the factor the product ``up @ down`` is multiplied by."""
        return self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the weight the module changes: (out, in) or (out, in, kh, kw)."""
        return (int(self.up.shape[0]), *(int(s) for s in self.down.shape[1:]))

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(alpha / rank) · up @ down`` in the shape of the module's weight."""
        product = self.up.flatten(1).to(dtype) @ self.down.flatten(1).to(dtype)
        return (product * self.factor).reshape(self.shape)


@dataclass
class LoRA:
    """A UNet LoRA: :class:`LoRAWeights` per module, and metadata.

    ``modules`` is keyed by diffusers module path; a kohya name whose path can only be told with the target UNet
    in hand (the SD naming ``lora_unet_input_blocks_…``, or unknown module names) stays as it is in the file until
    :meth:`resolve`, :func:`apply_lora` or :func:`coverage` maps it. ``metadata`` is what :func:`write_lora` stored
    (rank, alpha, target modules, base model, recipe, …); ``header`` is the file's raw safetensors header.
    ``unexpected`` lists the file's keys that are not UNet LoRA weights (text-encoder parts): never applied.
    """

    modules: dict[str, LoRAWeights]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    format: str | None = None
    header: dict[str, str] = field(default_factory=dict)
    unexpected: tuple[str, ...] = ()
    network: str = "unet"
    """The pipeline component the LoRA is for (``unet`` or ``transformer``): the key prefix of diffusers files."""

    def __len__(self) -> int:
        return len(self.modules)

    @property
    def name(self) -> str:
        return self.source or "LoRA"

    @property
    def ranks(self) -> dict[str, int]:
        return {name: weights.rank for name, weights in self.modules.items()}

    @property
    def rank(self) -> int:
        """The rank of its modules (the largest, when they differ: see :attr:`ranks`)."""
        return max(self.ranks.values(), default=0)

    @property
    def alphas(self) -> dict[str, float]:
        return {name: weights.alpha for name, weights in self.modules.items()}

    @property
    def alpha(self) -> float | None:
        """The alpha all modules share, or None when they differ (see :attr:`alphas`)."""
        values = set(self.alphas.values())
        return values.pop() if len(values) == 1 else None

    @property
    def unresolved(self) -> list[str]:
        """Kohya names not yet mapped to diffusers module paths (see :meth:`resolve`)."""
        return [name for name in self.modules if name.startswith(KOHYA_PREFIXES)]

    def to(self, dtype: torch.dtype) -> LoRA:
        """A copy with every factor in ``dtype`` (alphas are kept exactly)."""
        modules = {k: replace(w, down=w.down.to(dtype), up=w.up.to(dtype)) for k, w in self.modules.items()}
        return replace(self, modules=modules)

    def resolve(self, unet: nn.Module) -> LoRA:
        """A copy with kohya names mapped to ``unet``'s module paths (names it lacks are kept as they are); FLUX's
        fused Black Forest Labs names become one entry per diffusers module (see :data:`_BFL_FLUX`)."""
        table = _kohya_table(unet)
        network_modules = dict(unet.named_modules())
        modules: dict[str, LoRAWeights] = {}
        origin: dict[str, str] = {}
        for name, weights in self.modules.items():
            parts = _split_bfl_flux(name, weights, network_modules) if name not in table else None
            for path, part in (parts or {table.get(name, name): weights}).items():
                if path in modules:
                    raise LoRAFormatError(
                        f"{self.name}: {origin[path]!r} and {name!r} both name module {path!r}; the file mixes "
                        "two naming schemes or two LoRAs: keep one of them"
                    )
                modules[path], origin[path] = part, name
        return replace(self, modules=modules, network=network_name(unet))


@dataclass(frozen=True)
class ShapeMismatch:
    """A LoRA module whose UNet module exists but cannot take it."""

    name: str
    target: str
    lora_shape: tuple[int, ...]
    module_shape: tuple[int, ...] | None
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass(frozen=True)
class Coverage:
    """How a LoRA maps onto a UNet.

    ``matched``: LoRA modules that fit (``targets`` maps each to the UNet module path); ``missing``: LoRA modules
    the UNet lacks; ``mismatched``: modules the UNet has but with another shape or type; ``unexpected``: keys of the
    file that are not UNet LoRA weights (text-encoder parts), which are never applied.
    """

    lora: str
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    mismatched: tuple[ShapeMismatch, ...]
    unexpected: tuple[str, ...] = ()
    targets: Mapping[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every module of the LoRA fits the UNet."""
        return not self.missing and not self.mismatched

    @property
    def total(self) -> int:
        return len(self.matched) + len(self.missing) + len(self.mismatched)

    def summary(self) -> str:
        """One line: counts and the first example of each problem."""
        parts = [f"{len(self.matched)} of {self.total} modules fit"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the UNet (e.g. {self.missing[0]})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} with another shape or type (e.g. {self.mismatched[0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} non-UNet keys ignored (e.g. {self.unexpected[0]})")
        return ", ".join(parts)

    def __str__(self) -> str:
        lines = [f"{self.lora}: {self.summary()}"]
        for title, items in (
            ("missing", self.missing),
            ("mismatched", [str(m) for m in self.mismatched]),
            ("unexpected (not applied)", self.unexpected),
        ):
            if items:
                shown = ", ".join(items[:5]) + (f" … and {len(items) - 5} more" if len(items) > 5 else "")
                lines.append(f"  {title}: {shown}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Reading


def read_lora(path: str | os.PathLike, *, unet: nn.Module | None = None) -> LoRA:
    """Read a LoRA file (``.safetensors``, or ``.pt``/``.bin``/``.ckpt`` via ``torch.load(weights_only=True)``) or a
    folder (a peft adapter folder with ``adapter_model.safetensors`` + ``adapter_config.json``, or a folder that
    ``save_lora_weights`` wrote). With ``unet``, kohya names are resolved against its modules at once.

    Raises:
        FileNotFoundError: nothing at ``path``.
        LoRAFormatError: a truncated or corrupt file, a pickle that needs code to load, a file that holds no UNet
            LoRA, inconsistent ranks between ``up`` and ``down``, or an unsupported variant (DoRA, LyCORIS).
    """
    path = Path(path)
    config: dict[str, Any] | None = None
    if path.is_dir():
        file, config = _adapter_folder(path)
    elif path.is_file():
        file = path
    else:
        raise FileNotFoundError(f"no LoRA file or folder at {path}")
    tensors, header = _read_tensors(file)
    lora = _parse(tensors, header, source=str(file), adapter_config=config)
    if config is not None:
        lora.format = "peft"
    return lora.resolve(unet) if unet is not None else lora


def _adapter_folder(folder: Path) -> tuple[Path, dict[str, Any] | None]:
    """The weights file of a LoRA folder and its peft adapter config, if any."""
    config_file = folder / "adapter_config.json"
    config = None
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise LoRAFormatError(
                f"{config_file} is not valid JSON ({_first_line(error)}); repair or remove it"
            ) from error
    for name in (
        "adapter_model.safetensors",
        "pytorch_lora_weights.safetensors",
        "adapter_model.bin",
        "pytorch_lora_weights.bin",
    ):
        if (folder / name).is_file():
            return folder / name, config
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0], config
    found = ", ".join(p.name for p in candidates) or "no .safetensors file"
    raise LoRAFormatError(
        f"{folder} is a folder but not a LoRA folder: expected adapter_model.safetensors (peft) or "
        f"pytorch_lora_weights.safetensors (diffusers), found {found}; pass the weights file itself"
    )


def _read_tensors(file: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's tensors (and alpha numbers) and its safetensors header."""
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                header = dict(handle.metadata() or {})
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except Exception as error:  # SafetensorError is no ValueError and does not name the file
            raise LoRAFormatError(
                f"{file} is not a readable .safetensors file: it is truncated or corrupt "
                f"({_first_line(error)}); download or export it again"
            ) from error
        return tensors, header
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise LoRAFormatError(torch_load_error(file, error)) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise LoRAFormatError(f"{file} holds a {type(data).__name__}, not a dict of LoRA tensors")
    bad = [
        k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor | int | float)
    ]
    if bad:
        raise LoRAFormatError(
            f"{file} is not a flat dict of tensors: {len(bad)} entries hold other values (e.g. {bad[0]!r})"
        )
    return data, {}


def _parse(
    tensors: Mapping[str, Any],
    header: Mapping[str, str],
    *,
    source: str,
    adapter_config: Mapping[str, Any] | None = None,
) -> LoRA:
    """Group a state dict's keys into per-module down/up/alpha, whatever the naming."""
    downs: dict[str, Any] = {}
    ups: dict[str, Any] = {}
    alphas: dict[str, Any] = {}
    unexpected: list[str] = []
    unknown: list[str] = []
    formats: set[str] = set()
    networks: set[str] = set()
    for key, value in tensors.items():
        for marker, variant in _UNSUPPORTED.items():
            if marker.search(key):
                raise LoRAFormatError(
                    f"{source} is a {variant} file (key {key!r}); only plain LoRA (down/up/alpha) is supported: "
                    "merge it into a plain LoRA first"
                )
        if key.endswith((".lora_B.bias", ".lora_up.bias", ".lora.up.bias")):
            raise LoRAFormatError(f"{source} has LoRA biases (key {key!r}), which are not supported")
        if key.startswith(_TEXT_ENCODER_PREFIXES):
            unexpected.append(key)
            continue
        if match := _KOHYA_KEY.match(key):
            name, part = match.groups()
            if name.startswith("lora_transformer_"):
                networks.add("transformer")
            {"lora_down.weight": downs, "lora_up.weight": ups, "alpha": alphas}[part][name] = value
            formats.add("kohya")
            continue
        stripped, kind = _strip_prefix(key)
        if key.startswith(("transformer.", "diffusion_model.")):
            networks.add("transformer")
        stripped = _normalise_diffusers_path(stripped)
        if match := _PEFT_KEY.match(stripped):
            name, part = match.groups()
            (downs if part == "lora_A" else ups)[name] = value
            formats.add(kind)
        elif match := _DIFFUSERS_KEY.match(stripped) or _DOTTED_KOHYA_KEY.match(stripped):
            name, part = match.groups()
            (downs if part == "down" else ups)[name] = value
            formats.add("diffusers" if kind == "peft" else kind)
        elif match := _ALPHA_KEY.match(stripped):
            alphas[match.group(1)] = value
        else:
            unknown.append(key)

    if not downs and not ups:
        if unexpected:
            raise LoRAFormatError(
                f"{source} holds only text-encoder LoRA weights ({len(unexpected)} keys, e.g. {unexpected[0]!r}); "
                "conceptspace applies UNet LoRAs only"
            )
        example = f" (e.g. {next(iter(tensors))!r})" if tensors else ""
        raise LoRAFormatError(
            f"{source} is not a LoRA file: none of its {len(tensors)} tensors{example} is named like LoRA weights "
            "(kohya 'lora_unet_<module>.lora_down.weight', diffusers 'unet.<module>.lora_A.weight' or "
            "'.lora.down.weight', peft '<module>.lora_A.weight'); a full model checkpoint is loaded with "
            "conceptspace.models instead"
        )
    if unknown:
        raise LoRAFormatError(
            f"{source}: {len(unknown)} tensors are not LoRA weights (e.g. {unknown[0]!r}), next to "
            f"{len(downs)} LoRA modules; the file is not a plain UNet LoRA: remove those keys"
        )
    if len(formats) > 1:
        raise LoRAFormatError(
            f"{source} mixes LoRA key formats ({', '.join(sorted(formats))}); write it again in one format"
        )
    for name in sorted(set(downs) ^ set(ups)):
        have, lack = ("down", "up") if name in downs else ("up", "down")
        raise LoRAFormatError(
            f"{source}: module {name!r} has a LoRA {have} weight but no {lack} weight; the file is incomplete: "
            "export it again"
        )
    stray = sorted(set(alphas) - set(downs))
    if stray:
        raise LoRAFormatError(
            f"{source}: alpha {stray[0]!r} belongs to no LoRA module; the file is inconsistent"
        )

    fmt = formats.pop()
    config_alpha = _config_alpha(header, adapter_config)
    modules: dict[str, LoRAWeights] = {}
    for name in downs:
        down, up = _factor(downs[name], source, name, "down"), _factor(ups[name], source, name, "up")
        if down.ndim == 4 and up.ndim == 2:
            up = up[:, :, None, None]
        elif down.ndim == 2 and up.ndim == 4:
            if up.shape[2:] != (1, 1):
                raise LoRAFormatError(
                    f"{source}: module {name!r} has a linear down weight {tuple(down.shape)} but a convolutional up "
                    f"weight {tuple(up.shape)}; the file is corrupt"
                )
            up = up.flatten(1)
        if up.shape[1] != down.shape[0]:
            raise LoRAFormatError(
                f"{source}: module {name!r} has down rank {down.shape[0]} {tuple(down.shape)} but up rank "
                f"{up.shape[1]} {tuple(up.shape)}; the two factors must share the rank: the file is corrupt or "
                "mixes two LoRAs"
            )
        rank = int(down.shape[0])
        alpha = _alpha(alphas[name], source, name) if name in alphas else config_alpha(name, rank)
        path = _parse_kohya_name(name) if fmt == "kohya" else name
        modules[path or name] = LoRAWeights(down=down, up=up, alpha=alpha)

    metadata: dict[str, Any] = {}
    if HEADER_KEY in header:
        with contextlib.suppress(ValueError):
            metadata = dict(json.loads(header[HEADER_KEY]))
    if adapter_config is not None and not metadata:
        metadata = {"peft_config": dict(adapter_config)}
        if adapter_config.get("base_model_name_or_path"):
            metadata["base_model"] = adapter_config["base_model_name_or_path"]
    return LoRA(
        modules=modules,
        metadata=metadata,
        source=source,
        format=fmt,
        header=dict(header),
        unexpected=tuple(unexpected),
        network=networks.pop() if networks else "unet",
    )


def _strip_prefix(key: str) -> tuple[str, str]:
    """Drop a diffusers (``unet.``, ``transformer.``) or peft (``base_model.model.``) prefix; say which format it
    implies."""
    for network in ("unet.", "transformer.", "diffusion_model."):
        if key.startswith(network):
            return key[len(network) :], "diffusers"
    if key.startswith("base_model.model."):
        return key[len("base_model.model.") :], "peft"
    return key, "peft"


def _normalise_diffusers_path(key: str) -> str:
    """The attention-processor spellings of old diffusers files (``attn1.processor.to_q_lora.down``) as paths."""
    key = key.replace(".processor.", ".")
    key = re.sub(r"\.(to_q|to_k|to_v)_lora\.", r".\1.lora.", key)
    return key.replace(".to_out_lora.", ".to_out.0.lora.")


def _factor(value: Any, source: str, name: str, part: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (2, 4):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise LoRAFormatError(
            f"{source}: the {part} weight of module {name!r} has shape {shape}; LoRA factors are 2-D (linear) or "
            "4-D (convolution)"
        )
    if not value.is_floating_point():
        raise LoRAFormatError(
            f"{source}: the {part} weight of module {name!r} is {value.dtype}, not floating point"
        )
    if 0 in value.shape:
        raise LoRAFormatError(
            f"{source}: the {part} weight of module {name!r} has shape {tuple(value.shape)}, an empty factor "
            "(rank 0); the file is broken: export it again"
        )
    if not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise LoRAFormatError(
            f"{source}: the {part} weight of module {name!r} holds {bad} NaN/Inf values; the file is corrupt "
            "(or was trained into divergence): export it again from a good checkpoint"
        )
    return value


def _alpha(value: Any, source: str, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise LoRAFormatError(
                f"{source}: alpha of module {name!r} has {value.numel()} values; it must be one number"
            )
        value = value.item()
    alpha = float(value)
    if not math.isfinite(alpha):
        raise LoRAFormatError(f"{source}: alpha of module {name!r} is {alpha}; it must be a finite number")
    return alpha


def _config_alpha(
    header: Mapping[str, str], adapter_config: Mapping[str, Any] | None
) -> Callable[[str, int], float]:
    """Alpha per module from a peft config (adapter_config.json, or diffusers' header entry); rank without one."""
    config: Mapping[str, Any] | None = adapter_config
    if config is None and DIFFUSERS_HEADER_KEY in header:
        with contextlib.suppress(ValueError):
            raw = json.loads(header[DIFFUSERS_HEADER_KEY])
            # the network's entry (unet. or transformer. prefixed keys), else the whole object
            network_keys = {
                k.split(".", 1)[1]: v for k, v in raw.items() if k.startswith(("unet.", "transformer."))
            }
            config = network_keys or raw
    if not config:
        return lambda name, rank: float(rank)  # diffusers/peft convention without alpha: scale 1
    lora_alpha = float(config.get("lora_alpha", 8))  # peft's default
    patterns = dict(config.get("alpha_pattern") or {})
    rslora = bool(config.get("use_rslora", False))

    def alpha(name: str, rank: int) -> float:
        value = lora_alpha
        for pattern, pattern_alpha in patterns.items():
            if re.match(rf"(.*\.)?({pattern})$", name):  # peft's own matching (utils.other.get_pattern_key)
                value = float(pattern_alpha)
                break
        # rsLoRA scales by alpha/sqrt(rank); as an alpha over rank that is alpha·sqrt(rank)
        return value * math.sqrt(rank) if rslora else value

    return alpha


@functools.lru_cache(maxsize=4096)
def _parse_kohya_name(name: str) -> str | None:
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


def _split_bfl_flux(
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


def _kohya_table(unet: nn.Module) -> dict[str, str]:
    """Kohya names → module paths of ``unet``, in diffusers naming and in the original SD (LDM) naming."""
    ldm = _ldm_prefixes(unet)
    table: dict[str, str] = {}
    for path, _ in unet.named_modules():
        if not path:
            continue
        for prefix in KOHYA_PREFIXES:
            table[prefix + path.replace(".", "_")] = path
        ldm_path = _ldm_path(path, ldm)
        if ldm_path is not None:
            table.setdefault(KOHYA_PREFIX + ldm_path.replace(".", "_"), path)
    return table


def _ldm_prefixes(unet: nn.Module) -> dict[str, str]:
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


def _ldm_path(path: str, prefixes: Mapping[str, str]) -> str | None:
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


# --------------------------------------------------------------------------------------------------------------
# Writing


def write_lora(
    lora: LoRA,
    path: str | os.PathLike,
    *,
    format: LoRAFileFormat = "diffusers",
    metadata: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    unet: nn.Module | None = None,
) -> Path:
    """Write ``lora`` to a ``.safetensors`` file (or a peft adapter folder), atomically: nothing is left behind if
    it fails.

    ``format="diffusers"`` writes ``unet.<module>.lora_A/lora_B.weight`` with diffusers' ``lora_adapter_metadata``
    header entry (rank, alpha and target modules as a peft LoraConfig), which ``pipe.load_lora_weights(path)``
    loads; ``format="kohya"`` writes ``lora_unet_<module>.lora_down.weight/.lora_up.weight/.alpha``, as Concept
    Sliders, A1111 and ComfyUI read them, with one alpha for all modules (the largest rank) and each module's own
    alpha folded into its up factor (the same update, read alike by every loader); ``format="peft"`` writes the folder ``path`` with
    ``adapter_model.safetensors`` (``base_model.model.<module>.lora_A/lora_B.weight``) and ``adapter_config.json``
    (a peft ``LoraConfig``), which ``PeftModel.from_pretrained`` and ``unet.load_lora_adapter`` load. Every way the header's ``conceptspace_lora`` entry holds the LoRA's
    metadata updated with ``metadata`` (by convention ``base_model`` and ``recipe``) and the rank, alpha and target
    modules. ``dtype`` casts the factors; ``unet`` resolves kohya names still unresolved (SD naming).
    """
    if format not in ("diffusers", "kohya", "peft"):
        raise ValueError(f"unknown LoRA file format {format!r}; write 'diffusers', 'kohya' or 'peft'")
    path = Path(path)
    if format == "peft" and path.suffix:
        raise ValueError(f"a peft adapter is a folder; {path} has a file suffix: give a folder name")
    if format != "peft" and path.suffix != ".safetensors":
        raise ValueError(f"LoRA files are written as .safetensors; {path} has another suffix")
    if unet is not None:
        lora = lora.resolve(unet)
    if format != "kohya" and lora.unresolved:
        raise LoRAFormatError(
            f"{lora.name}: {len(lora.unresolved)} modules keep kohya names that only a UNet can map to diffusers "
            f"paths (e.g. {lora.unresolved[0]!r}); pass unet= (a UNet of the family the LoRA is for), or write "
            "format='kohya'"
        )
    if not lora.modules:
        raise ValueError(f"{lora.name} has no modules to write")
    if format == "kohya" and lora.network != "unet":
        raise ValueError(
            f"{lora.name} is a {lora.network} LoRA; kohya files name UNet modules (and FLUX's in Black Forest Labs' "
            "fused naming): write format='diffusers' (transformer.<module>.lora_A/lora_B), which diffusers loads"
        )

    ranks, alphas = lora.ranks, lora.alphas
    # = the rank when ranks agree: scale 1, whatever a loader assumes
    kohya_alpha = float(max(ranks.values()))
    if format == "kohya":
        alphas = dict.fromkeys(ranks, kohya_alpha)  # each module's own alpha is folded into its up (below)
    info = {
        **lora.metadata,
        **(metadata or {}),
        "rank": _uniform_or_map(ranks),
        "alpha": _uniform_or_map(alphas),
        "target_modules": sorted(lora.modules),
    }
    try:
        header = {"format": "pt", HEADER_KEY: json.dumps(info, sort_keys=True)}
    except (TypeError, ValueError) as error:
        raise ValueError(f"LoRA metadata must be JSON-serialisable: {error}") from error

    tensors: dict[str, torch.Tensor] = {}
    for name, weights in sorted(lora.modules.items()):
        down, up = weights.down, weights.up
        if dtype is not None:
            down, up = down.to(dtype), up.to(dtype)
        if format != "kohya":
            prefix = f"{lora.network}." if format == "diffusers" else "base_model.model."
            # copies: split FLUX projections share one down factor, and safetensors refuses shared storage
            tensors[f"{prefix}{name}.lora_A.weight"] = down.clone(memory_format=torch.contiguous_format)
            tensors[f"{prefix}{name}.lora_B.weight"] = up.clone(memory_format=torch.contiguous_format)
        else:
            # one alpha for every module, each module's own alpha folded into its up factor: diffusers' kohya
            # converter drops the alphas of attention projections (it names them so that they match no module)
            # and gives those modules the file's most common alpha, so only a uniform alpha reads alike in every
            # loader (diffusers, ComfyUI, A1111, kohya's own scripts, ours)
            key = name if name.startswith(KOHYA_PREFIX) else KOHYA_PREFIX + name.replace(".", "_")
            folded = (weights.up.float() * (weights.alpha / kohya_alpha)).to(up.dtype)
            tensors[f"{key}.lora_down.weight"] = down.contiguous()
            tensors[f"{key}.lora_up.weight"] = folded.contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(kohya_alpha, dtype=torch.float32)
    if format == "diffusers":
        config = {f"{lora.network}.{k}": v for k, v in _peft_config(ranks, alphas, anchor="^").items()}
        header[DIFFUSERS_HEADER_KEY] = json.dumps(config, sort_keys=True)
    elif format == "kohya":
        # the header kohya's own scripts write, read by A1111/ComfyUI front ends
        header.update(ss_network_module="networks.lora")
        if len(set(ranks.values())) == 1:
            header.update(ss_network_dim=str(lora.rank), ss_network_alpha=str(kohya_alpha))

    from safetensors.torch import save_file

    if format == "peft":
        config = {
            "peft_type": "LORA",
            "base_model_name_or_path": info.get("base_model"),
            "bias": "none",
            "lora_dropout": 0.0,
            **_peft_config(ranks, alphas, anchor=""),
        }

        # diffusers' `unet.load_lora_adapter(folder, weight_name="adapter_model.safetensors",
        # prefix="base_model.model")` reads rank and alpha patterns from this header entry (else alpha = rank)
        prefixed = {f"base_model.model.{k}": v for k, v in _peft_config(ranks, alphas, anchor="^").items()}
        header[DIFFUSERS_HEADER_KEY] = json.dumps(prefixed, sort_keys=True)

        def write_folder(folder: Path) -> None:
            save_file(tensors, str(folder / "adapter_model.safetensors"), metadata=header)
            (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

        return atomic_write_folder(path, write_folder)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _uniform_or_map(values: Mapping[str, Any]) -> Any:
    distinct = set(values.values())
    return distinct.pop() if len(distinct) == 1 else dict(sorted(values.items()))


def _peft_config(ranks: Mapping[str, int], alphas: Mapping[str, float], anchor: str) -> dict[str, Any]:
    """The LoraConfig fields an adapter is built from: the most common rank and alpha, and per-module patterns
    for the others (``anchor="^"`` pins them to the start of the path, as diffusers' own loader writes them)."""
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted(ranks),
        "rank_pattern": {anchor + re.escape(k): v for k, v in sorted(ranks.items()) if v != rank},
        "alpha_pattern": {anchor + re.escape(k): v for k, v in sorted(alphas.items()) if v != alpha},
    }


# --------------------------------------------------------------------------------------------------------------
# Coverage, applying and merging


def coverage(unet: nn.Module, lora: LoRA | str | os.PathLike) -> Coverage:
    """Which of the LoRA's modules ``unet`` has with the right shapes (works on meta-device UNets too)."""
    lora = _as_lora(lora)
    return _plan(unet, lora)[0]


def _plan(
    unet: nn.Module, lora: LoRA
) -> tuple[Coverage, dict[str, tuple[nn.Module, str, torch.Tensor, torch.Tensor]]]:
    modules = dict(unet.named_modules())
    table = _kohya_table(unet) if lora.unresolved else {}
    matched, missing, mismatched = [], [], []
    targets: dict[str, str] = {}
    plan: dict[str, tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = {}
    for name, weights in lora.modules.items():
        path = table.get(name, name)
        module = modules.get(path)
        if module is None or not path:
            missing.append(name)
            continue
        fit = _fit(module, weights)
        if isinstance(fit, str):
            base = getattr(module, "base_layer", module)
            shape = (
                tuple(base.weight.shape) if isinstance(getattr(base, "weight", None), torch.Tensor) else None
            )
            mismatched.append(ShapeMismatch(name, path, weights.shape, shape, fit))
            continue
        if path in targets.values():
            raise LoRAFormatError(
                f"{lora.name}: two of its modules name UNet module {path!r}; keep one of them"
            )
        matched.append(name)
        targets[name] = path
        plan[name] = (module, *fit)
    report = Coverage(
        lora=lora.name,
        matched=tuple(matched),
        missing=tuple(missing),
        mismatched=tuple(mismatched),
        unexpected=lora.unexpected,
        targets=targets,
    )
    return report, plan


def _fit(module: nn.Module, weights: LoRAWeights) -> tuple[str, torch.Tensor, torch.Tensor] | str:
    """("linear"|"conv", down, up) reshaped for ``module``, or why the LoRA cannot go there."""
    base = getattr(module, "base_layer", module)  # a layer peft already wrapped
    down, up = weights.down, weights.up
    if isinstance(base, nn.Linear):
        if down.ndim == 4:
            if tuple(down.shape[2:]) != (1, 1):
                return f"a {down.shape[2]}x{down.shape[3]} convolutional LoRA for a Linear layer"
            down, up = down.flatten(1), up.flatten(1)
        if down.shape[1] != base.in_features or up.shape[0] != base.out_features:
            return (
                f"LoRA shape {weights.shape} (out, in) but the UNet's Linear layer is "
                f"{(base.out_features, base.in_features)}"
            )
        return "linear", down, up
    if isinstance(base, nn.Conv2d):
        if base.groups != 1 or base.padding_mode != "zeros":
            return "a grouped or non-zero-padded Conv2d, which LoRA does not support"
        if down.ndim == 2:
            down, up = down[:, :, None, None], up[:, :, None, None]
        expected = (base.out_channels, base.in_channels, *base.kernel_size)
        if (up.shape[0], *down.shape[1:]) != expected:
            return f"LoRA shape {weights.shape} but the UNet's Conv2d weight is {expected}"
        return "conv", down, up
    return f"the UNet module is a {type(base).__name__}, not a Linear or Conv2d layer"


def _require_fit(report: Coverage, allow_partial: bool) -> None:
    if not report.matched:
        raise LoRAMismatchError(
            f"{report.lora} does not fit this UNet at all: {report.summary()}; it is for another architecture "
            "(inspect_lora(path) lists the registry models it fits)"
        )
    if not report.complete and not allow_partial:
        raise LoRAMismatchError(
            f"{report.lora} does not fit this UNet: {report.summary()}; it may be for another architecture "
            f"(inspect_lora(path) lists the registry models it fits), or pass allow_partial=True to apply the "
            f"{len(report.matched)} modules that fit"
        )


class LoRAHandle:
    """A LoRA applied to a UNet through forward hooks; the UNet's weights are untouched.

    ``scale`` and ``t_start`` may be changed at any time; ``scale`` may be a tensor of one scale per sample of the
    batch (a batch doubled for CFG gives both halves the same scales). With ``t_start`` set the LoRA is off while the current
    timestep is above it (t > t_start) and on from t_start down. The current timestep is read from each UNet
    call (``track_timestep``) or set with :meth:`set_timestep` / :meth:`at`. :meth:`remove` (or leaving a ``with``
    block) takes the hooks out and restores the UNet exactly.
    """

    def __init__(
        self,
        unet: nn.Module,
        lora: LoRA,
        coverage: Coverage,
        scale: float | torch.Tensor,
        t_start: float | None,
    ) -> None:
        self.unet = unet
        self.lora = lora
        self.coverage = coverage
        self.scale = scale if isinstance(scale, torch.Tensor) else float(scale)
        self.t_start = t_start
        self.enabled = True
        self.timestep: float | None = None
        self._hooks: list[Any] = []

    @property
    def active(self) -> bool:
        """Whether the LoRA changes the UNet's output at the current timestep."""
        if not self.enabled or (not isinstance(self.scale, torch.Tensor) and self.scale == 0.0):
            return False
        if self.t_start is None:
            return True
        if self.timestep is None:
            raise RuntimeError(
                f"{self.lora.name} has a timestep window (t_start={self.t_start}) but no current timestep: call "
                "set_timestep(t) before the UNet, or apply it with track_timestep=True"
            )
        if math.isnan(self.timestep):
            raise ValueError(
                f"{self.lora.name}: a timestep window needs one timestep per UNet call, but the batch mixes "
                "timesteps; run samples at different timesteps in separate calls"
            )
        return self.timestep <= self.t_start

    def set_timestep(self, t: float | torch.Tensor | None) -> None:
        """Set the current timestep (None: unknown; a batch of different timesteps: NaN, refused by a window)."""
        self.timestep = _timestep_value(t)

    @contextlib.contextmanager
    def at(self, t: float | torch.Tensor) -> Iterator[LoRAHandle]:
        """Within the block the current timestep is ``t``."""
        previous = self.timestep
        self.set_timestep(t)
        try:
            yield self
        finally:
            self.timestep = previous

    def remove(self) -> None:
        """Take the LoRA out; the UNet is exactly as before. Calling it twice is harmless."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @property
    def applied(self) -> bool:
        return bool(self._hooks)

    def __enter__(self) -> LoRAHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        window = f", t_start={self.t_start}" if self.t_start is not None else ""
        state = "applied" if self.applied else "removed"
        return f"LoRAHandle({self.lora.name!r}, scale={self.scale}{window}, {len(self.coverage.matched)} modules, {state})"


def apply_lora(
    unet: nn.Module,
    lora: LoRA | str | os.PathLike,
    scale: float | torch.Tensor = 1.0,
    t_start: float | None = None,
    *,
    allow_partial: bool = False,
    track_timestep: bool = True,
) -> LoRAHandle:
    """Apply a LoRA to ``unet`` (a base or a student of the family it was trained for) without changing weights.

    Each target layer's output gains ``scale · (alpha / rank) · up(down(x))``. Several LoRAs may be applied at
    once; their terms add. ``scale``: a number, or a tensor of one per sample. ``t_start``: off while the timestep
    is above it (the slider convention, e.g. 700).

    Raises:
        LoRAMismatchError: the LoRA names modules the UNet lacks or has with other shapes (unless
            ``allow_partial``, which applies the modules that fit; ``handle.coverage`` says which), or none fit.

    Example:
        >>> handle = apply_lora(pair.student_network, "age.safetensors", scale=-1.5, t_start=700)  # doctest: +SKIP
        >>> handle.scale = 2.0; ...; handle.remove()                                          # doctest: +SKIP
    """
    lora = _as_lora(lora)
    report, plan = _plan(unet, lora)
    _require_fit(report, allow_partial)
    handle = LoRAHandle(unet, lora, report, scale, t_start)
    for name, (module, kind, down, up) in plan.items():
        hook = _lora_hook(handle, kind, down, up, lora.modules[name].factor, module)
        handle._hooks.append(module.register_forward_hook(hook))
    if track_timestep:
        handle._hooks.append(unet.register_forward_pre_hook(_timestep_hook(handle), with_kwargs=True))
    return handle


def _lora_hook(
    handle: LoRAHandle, kind: str, down: torch.Tensor, up: torch.Tensor, factor: float, module: nn.Module
) -> Any:
    base = getattr(module, "base_layer", module)
    cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def factors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # factors in training (slider training) change in place every step: a cached cast would go stale
        if down.requires_grad or up.requires_grad:
            return down.to(x.device, x.dtype), up.to(x.device, x.dtype)
        key = (x.device, x.dtype)
        if key not in cache:  # cast once per device/dtype, not on every call
            cache[key] = (down.to(x.device, x.dtype), up.to(x.device, x.dtype))
        return cache[key]

    def hook(_module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        if not handle.active:
            return None  # the layer's own output, untouched
        x = inputs[0]
        d, u = factors(x)
        if kind == "linear":
            term = F.linear(F.linear(x, d), u)
        else:
            term = F.conv2d(F.conv2d(x, d, None, base.stride, base.padding, base.dilation), u)
        return output + term * (_row_scale(handle.scale, term) * factor)

    return hook


def _row_scale(scale: float | torch.Tensor, term: torch.Tensor) -> float | torch.Tensor:
    """A scalar scale as it is; one scale per sample shaped to multiply ``term`` row by row."""
    if not isinstance(scale, torch.Tensor):
        return scale
    rows = term.shape[0]
    if rows % len(scale):
        raise ValueError(f"{len(scale)} per-sample LoRA scales cannot cover a batch of {rows}")
    per_row = scale.to(term).repeat(rows // len(scale))
    return per_row.view(rows, *([1] * (term.dim() - 1)))


NETWORK_TIMESTEPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
"""Per denoising-network class name, how its ``timestep`` argument maps to the scheduler's timesteps, in which
LoRA windows are given (FLUX's transformer takes t / 1000). The model families register theirs
(:mod:`conceptspace.models.families`, listed in :data:`TIMESTEP_PROVIDERS`); other networks take the scheduler's
timestep as it is."""

TIMESTEP_PROVIDERS = ["conceptspace.models.families"]
"""Modules imported before a LoRA tracks a network's timestep, so that their mappings are registered."""


def _timestep_hook(handle: LoRAHandle) -> Any:
    for module in TIMESTEP_PROVIDERS:
        importlib.import_module(module)

    def hook(_unet: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # only a window needs the timestep: reading a GPU tensor would wait for the device
        if handle.t_start is None:
            return
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is not None:
            to_scheduler = NETWORK_TIMESTEPS.get(type(_unet).__name__)
            handle.set_timestep(t if to_scheduler is None else to_scheduler(t))

    return hook


def _timestep_value(t: float | torch.Tensor | None) -> float | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        values = t.detach().flatten()
        if values.numel() == 0:
            return None
        first = values[0]
        if values.numel() > 1 and not bool((values == first).all()):
            return math.nan
        return float(first)
    return float(t)


def merge_lora(
    unet: nn.Module, lora: LoRA | str | os.PathLike, scale: float = 1.0, *, allow_partial: bool = False
) -> Coverage:
    """Add ``scale · (alpha / rank) · up @ down`` to the target weights for good (no window, no removal)."""
    lora = _as_lora(lora)
    report, plan = _plan(unet, lora)
    _require_fit(report, allow_partial)
    with torch.no_grad():
        for name, (module, _kind, _down, _up) in plan.items():
            weight = getattr(module, "base_layer", module).weight
            delta = lora.modules[name].delta(torch.float32).reshape(weight.shape)
            weight.copy_((weight.float() + scale * delta.to(weight.device)).to(weight.dtype))
    return report


def _as_lora(lora: LoRA | str | os.PathLike) -> LoRA:
    return lora if isinstance(lora, LoRA) else read_lora(lora)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
