"""LoRA files in and out: pure state-dict conversions per format (kohya, diffusers, peft, Qwen-Image-Lightning's
layout), the safetensors header, and peft adapter folders."""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from conceptspace.io import atomic_write, atomic_write_folder, first_line, torch_load_error
from conceptspace.lora.names import KOHYA_PREFIX, parse_kohya_name
from conceptspace.lora.weights import LoRA, LoRAFormatError, LoRAWeights

LoRAFileFormat = Literal["diffusers", "kohya", "peft"]

# Our metadata (rank, alpha, target modules, base model, recipe, …) as one JSON value in the safetensors header.
HEADER_KEY = "conceptspace_lora"
# diffusers' own header entry: the LoraConfig that `load_lora_weights` builds the adapter from.
DIFFUSERS_HEADER_KEY = "lora_adapter_metadata"
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
_PEFT_KEY = re.compile(r"^(.+)\.(lora_A|lora_B)(?:\.[A-Za-z0-9_\-]+)?\.weight$")
_DIFFUSERS_KEY = re.compile(r"^(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$")
# Qwen-Image-Lightning's layout: module paths with kohya's factor names, under ComfyUI's "diffusion_model." prefix
_DOTTED_KOHYA_KEY = re.compile(r"^(.+)\.lora_(down|up)\.weight$")
_ALPHA_KEY = re.compile(r"^(.+)\.alpha$")


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
                f"{config_file} is not valid JSON ({first_line(error)}); repair or remove it"
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
                f"({first_line(error)}); download or export it again"
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


@dataclass
class _KeyGroups:
    """A state dict's LoRA keys grouped by module: factors, alphas, and what the keys say of format and network."""

    downs: dict[str, Any] = field(default_factory=dict)
    ups: dict[str, Any] = field(default_factory=dict)
    alphas: dict[str, Any] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    formats: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)


def _parse(
    tensors: Mapping[str, Any],
    header: Mapping[str, str],
    *,
    source: str,
    adapter_config: Mapping[str, Any] | None = None,
) -> LoRA:
    """Group a state dict's keys into per-module down/up/alpha, whatever the naming."""
    groups = _group_keys(tensors, source)
    _check_groups(groups, tensors, source)
    fmt = groups.formats.pop()
    config_alpha = _config_alpha(header, adapter_config)
    modules: dict[str, LoRAWeights] = {}
    for name in groups.downs:
        down, up = _factors(groups.downs[name], groups.ups[name], source, name)
        rank = int(down.shape[0])
        alpha = (
            _alpha(groups.alphas[name], source, name) if name in groups.alphas else config_alpha(name, rank)
        )
        path = parse_kohya_name(name) if fmt == "kohya" else name
        modules[path or name] = LoRAWeights(down=down, up=up, alpha=alpha)
    return LoRA(
        modules=modules,
        metadata=_metadata(header, adapter_config),
        source=source,
        format=fmt,
        header=dict(header),
        unexpected=tuple(groups.unexpected),
        network=groups.networks.pop() if groups.networks else "unet",
    )


def _group_keys(tensors: Mapping[str, Any], source: str) -> _KeyGroups:
    """Sort every key into its module's down, up or alpha (or text-encoder and unknown keys); refuse variants."""
    groups = _KeyGroups()
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
            groups.unexpected.append(key)
            continue
        if match := _KOHYA_KEY.match(key):
            name, part = match.groups()
            if name.startswith("lora_transformer_"):
                groups.networks.add("transformer")
            {"lora_down.weight": groups.downs, "lora_up.weight": groups.ups, "alpha": groups.alphas}[part][
                name
            ] = value
            groups.formats.add("kohya")
            continue
        stripped, kind = _strip_prefix(key)
        if key.startswith(("transformer.", "diffusion_model.")):
            groups.networks.add("transformer")
        stripped = _normalise_diffusers_path(stripped)
        if match := _PEFT_KEY.match(stripped):
            name, part = match.groups()
            (groups.downs if part == "lora_A" else groups.ups)[name] = value
            groups.formats.add(kind)
        elif match := _DIFFUSERS_KEY.match(stripped) or _DOTTED_KOHYA_KEY.match(stripped):
            name, part = match.groups()
            (groups.downs if part == "down" else groups.ups)[name] = value
            groups.formats.add("diffusers" if kind == "peft" else kind)
        elif match := _ALPHA_KEY.match(stripped):
            groups.alphas[match.group(1)] = value
        else:
            groups.unknown.append(key)
    return groups


def _check_groups(groups: _KeyGroups, tensors: Mapping[str, Any], source: str) -> None:
    """Refuse a file that holds no UNet LoRA, mixes formats, or has a factor or an alpha without its module."""
    if not groups.downs and not groups.ups:
        if groups.unexpected:
            raise LoRAFormatError(
                f"{source} holds only text-encoder LoRA weights ({len(groups.unexpected)} keys, e.g. "
                f"{groups.unexpected[0]!r}); conceptspace applies UNet LoRAs only"
            )
        example = f" (e.g. {next(iter(tensors))!r})" if tensors else ""
        raise LoRAFormatError(
            f"{source} is not a LoRA file: none of its {len(tensors)} tensors{example} is named like LoRA weights "
            "(kohya 'lora_unet_<module>.lora_down.weight', diffusers 'unet.<module>.lora_A.weight' or "
            "'.lora.down.weight', peft '<module>.lora_A.weight'); a full model checkpoint is loaded with "
            "conceptspace.models instead"
        )
    if groups.unknown:
        raise LoRAFormatError(
            f"{source}: {len(groups.unknown)} tensors are not LoRA weights (e.g. {groups.unknown[0]!r}), next to "
            f"{len(groups.downs)} LoRA modules; the file is not a plain UNet LoRA: remove those keys"
        )
    if len(groups.formats) > 1:
        raise LoRAFormatError(
            f"{source} mixes LoRA key formats ({', '.join(sorted(groups.formats))}); write it again in one format"
        )
    for name in sorted(set(groups.downs) ^ set(groups.ups)):
        have, lack = ("down", "up") if name in groups.downs else ("up", "down")
        raise LoRAFormatError(
            f"{source}: module {name!r} has a LoRA {have} weight but no {lack} weight; the file is incomplete: "
            "export it again"
        )
    stray = sorted(set(groups.alphas) - set(groups.downs))
    if stray:
        raise LoRAFormatError(
            f"{source}: alpha {stray[0]!r} belongs to no LoRA module; the file is inconsistent"
        )


def _factors(down: Any, up: Any, source: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One module's checked factors, the up factor shaped like the down one (linear or 1×1 convolution)."""
    down, up = _factor(down, source, name, "down"), _factor(up, source, name, "up")
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
    return down, up


def _metadata(header: Mapping[str, str], adapter_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """What :func:`write_lora` stored in the header, else what a peft adapter config says."""
    metadata: dict[str, Any] = {}
    if HEADER_KEY in header:
        with contextlib.suppress(ValueError):
            metadata = dict(json.loads(header[HEADER_KEY]))
    if adapter_config is not None and not metadata:
        metadata = {"peft_config": dict(adapter_config)}
        if adapter_config.get("base_model_name_or_path"):
            metadata["base_model"] = adapter_config["base_model_name_or_path"]
    return metadata


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
    path = Path(path)
    lora = _checked_for_writing(lora, path, format, unet)
    ranks = lora.ranks
    # = the rank when ranks agree: scale 1, whatever a loader assumes
    kohya_alpha = float(max(ranks.values()))
    # kohya: each module's own alpha is folded into its up factor (see _file_tensors)
    alphas = dict.fromkeys(ranks, kohya_alpha) if format == "kohya" else lora.alphas
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
    tensors = _file_tensors(lora, format, dtype, kohya_alpha)

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
    if format == "diffusers":
        config = {f"{lora.network}.{k}": v for k, v in _peft_config(ranks, alphas, anchor="^").items()}
        header[DIFFUSERS_HEADER_KEY] = json.dumps(config, sort_keys=True)
    else:
        # the header kohya's own scripts write, read by A1111/ComfyUI front ends
        header.update(ss_network_module="networks.lora")
        if len(set(ranks.values())) == 1:
            header.update(ss_network_dim=str(lora.rank), ss_network_alpha=str(kohya_alpha))
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _checked_for_writing(lora: LoRA, path: Path, format: str, unet: nn.Module | None) -> LoRA:
    """``lora`` with kohya names resolved against ``unet``, once the format, the path and the LoRA fit each other."""
    if format not in ("diffusers", "kohya", "peft"):
        raise ValueError(f"unknown LoRA file format {format!r}; write 'diffusers', 'kohya' or 'peft'")
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
    return lora


def _file_tensors(
    lora: LoRA, format: str, dtype: torch.dtype | None, kohya_alpha: float
) -> dict[str, torch.Tensor]:
    """The state dict of the file, keyed as ``format`` names modules."""
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
    return tensors


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
