"""What a pair's parts weigh before anything loads, and which memory plan fits a card.

Sizes come from the files' safetensors headers (shapes only: no weight is read) when the models are in the cache or
at a local path, else from the published parameter counts below (rounded), else they are unknown. Bytes are
parameters × the bytes of the dtype the pair loads in (fp8 storage: one byte for the denoising networks).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from conceptspace.models.registry import ModelSpec, get_spec

PUBLISHED_PARAMETERS: dict[str, dict[str, float]] = {
    "sdxl": {"text_encoder": 123e6, "text_encoder_2": 695e6, "unet": 2.57e9, "vae": 83.7e6},
    "sd21": {"text_encoder": 340e6, "unet": 866e6, "vae": 83.7e6},
    "sd35-large": {
        "text_encoder": 124e6, "text_encoder_2": 695e6, "text_encoder_3": 4.76e9, "transformer": 8.06e9,
        "vae": 83.8e6,
    },
    "flux-dev": {"text_encoder": 123e6, "text_encoder_2": 4.76e9, "transformer": 11.9e9, "vae": 83.8e6},
    "pixart-alpha": {"text_encoder": 4.76e9, "transformer": 611e6, "vae": 83.7e6},
    "z-image": {"text_encoder": 4.02e9, "transformer": 6.15e9, "vae": 83.8e6},
    "qwen-image": {"text_encoder": 8.29e9, "transformer": 20.4e9, "vae": 127e6},
    # LoRA students: the adapter's factors (the SDXL files hold 394 MB of fp16; Qwen-Image-Lightning: rank 64 on
    # every linear layer of the 60 blocks, an estimate)
    "lcm-lora": {"adapter": 197e6},
    "lightning-lora": {"adapter": 197e6},
    "tcd": {"adapter": 197e6},
    "qwen-image-lightning": {"adapter": 590e6},
    "qwen-image-lightning-4step": {"adapter": 590e6},
}  # fmt: skip
"""Parameters per pipeline component of the published checkpoints (their files' shapes, rounded to three digits),
for pairs not yet downloaded. A full student has its base's architecture, so its network is its base's size."""

ACTIVATION_RESERVE = int(1.5 * 2**30)
"""Bytes a plan leaves free beside the weights for activations, the CUDA context and the allocator's slack (one
image at the family's resolution; an estimate — bench_memory measures the real peak)."""

GIB = 2**30
Source = Literal["files", "published", "built"]


def gib(size: int) -> str:
    """Bytes as GiB for messages: ``24 GiB``, ``1.5 GiB``."""
    return f"{size / GIB:.2f}".rstrip("0").rstrip(".") + " GiB"


class MemoryPlanError(ValueError):
    """No plan fits the accelerator (raised before anything loads)."""


# ---------------------------------------------------------------------------------------------------- headers
def safetensors_parameters(path: str | os.PathLike) -> int:
    """The number of values a .safetensors file holds, from its header alone."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


def _weight_files(folder: Path) -> list[Path]:
    """One variant's .safetensors files in ``folder`` (the plain one when there is one; shards all together)."""
    variants: dict[str | None, list[Path]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        stem = re.sub(r"-\d{5}-of-\d{5}$", "", file.name[: -len(".safetensors")])
        variants.setdefault(stem.split(".", 1)[1] if "." in stem else None, []).append(file)
    return variants.get(None) or next(iter(variants.values()), [])


def _folder_parameters(folder: Path) -> int | None:
    files = _weight_files(folder)
    return sum(safetensors_parameters(f) for f in files) if files else None


def _snapshot(
    spec: ModelSpec, cache_dir: str | os.PathLike | None, path: str | os.PathLike | None
) -> Path | None:
    """The folder (or, for single-file entries, the file) that holds ``spec``'s weights, when it is on disk."""
    from huggingface_hub import try_to_load_from_cache

    if path is not None or spec.local_dir:
        return Path(path or spec.local_dir)  # type: ignore[arg-type]
    if not spec.key_files:
        return None
    found = try_to_load_from_cache(spec.repo_id, spec.key_files[0], cache_dir=cache_dir)
    if not isinstance(found, str):
        return None
    if spec.storage in ("unet_file", "lora_file"):
        return Path(found)
    return (
        Path(found).parent.parent
        if spec.storage == "pipeline" and spec.role == "student"
        else Path(found).parent
    )


def component_parameters(
    spec: ModelSpec, cache_dir: str | os.PathLike | None = None, path: str | os.PathLike | None = None
) -> tuple[dict[str, int], Source] | None:
    """Parameters per component of ``spec``'s own files — every component of a base pipeline, the network
    (``"network"``) of a full student, the ``"adapter"`` of a LoRA student — and where they were read; None when
    neither the files nor a published count are at hand (a ``.bin`` state dict, a model not downloaded)."""
    if spec.storage == "random":
        return _built_parameters(spec), "built"
    where = _snapshot(spec, cache_dir, path)
    if where is not None and where.exists():
        counts: dict[str, int] = {}
        if spec.storage == "pipeline" and spec.role == "base":
            index = json.loads((where / "model_index.json").read_text())
            for name in index:
                if not name.startswith("_") and (where / name).is_dir():
                    found = _folder_parameters(where / name)
                    if found is not None:
                        counts[name] = found
            counts.update(_companion_parameters(spec, cache_dir, exclude=counts))
        elif spec.storage in ("pipeline", "unet_folder"):
            folder = where / (spec.network_folder if spec.storage == "pipeline" else (spec.subfolder or ""))
            found = _folder_parameters(folder)
            if found is not None:
                counts["network"] = found
        elif where.suffix == ".safetensors":
            counts["adapter" if spec.storage == "lora_file" else "network"] = safetensors_parameters(where)
        if counts:
            return counts, "files"
    published = PUBLISHED_PARAMETERS.get(spec.name)
    if published is None:
        return None
    if spec.role == "student":
        published = {("network" if k == spec.network_folder else k): v for k, v in published.items()}
    return {k: int(v) for k, v in published.items()}, "published"


def _companion_parameters(
    spec: ModelSpec, cache_dir: str | os.PathLike | None, exclude: Mapping[str, int]
) -> dict[str, int]:
    """The components a base loads from elsewhere (its family's ``companions()``, e.g. HiDream's Llama), read from
    their local folder or cached repo; one not on disk is left out (loading then says what to fetch)."""
    from huggingface_hub import try_to_load_from_cache

    from conceptspace.models.families import family_of

    try:
        companions = family_of(spec).companions()
    except ValueError:  # an architecture no family adapter answers to: nothing known beyond the repo
        return {}
    counts = {}
    for name, source in companions.items():
        if name in exclude:
            continue
        if os.path.isdir(source):
            folder: Path | None = Path(source)
        else:
            try:
                config = try_to_load_from_cache(source, "config.json", cache_dir=cache_dir)
            except ValueError:  # neither a folder nor a repo id: loading says what is wrong
                config = None
            folder = Path(config).parent if isinstance(config, str) else None
        found = _folder_parameters(folder) if folder is not None else None
        if found is not None:
            counts[name] = found
    return counts


def _built_parameters(spec: ModelSpec) -> dict[str, int]:
    """A built-in tiny model's parameters per component (built on the spot: they are small)."""
    import torch

    from conceptspace.models.families import family_of

    family = family_of(spec)
    if spec.role == "student":
        network = family.random_network(spec.seed)
        return {"network": sum(p.numel() for p in network.parameters())}
    pipeline = family.random_pipeline(spec.seed, torch.float32)
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipeline.components.items()
        if hasattr(module, "parameters")
    }


# --------------------------------------------------------------------------------------------------- the plans
def peak_estimate(sizes: Mapping[str, int], plan: str, groups: Mapping[str, int] | None = None) -> int:
    """The bytes a plan keeps on the accelerator at once, from the parts' sizes: all of them (``resident``), the
    largest part plus the adapter (``model-offload``), two groups (``group-offload``: one running, one arriving;
    never more than the whole pair)."""
    adapter = sizes.get("student_adapter", 0)
    parts = {k: v for k, v in sizes.items() if k != "student_adapter"}
    if plan == "resident":
        return sum(sizes.values())
    if plan == "model-offload":
        return max(parts.values(), default=0) + adapter
    if groups is None:
        raise ValueError("group-offload's peak needs the largest group of each part")
    return min(2 * max(groups.values(), default=0) + adapter, sum(sizes.values()))


@dataclass(frozen=True)
class PairSizes:
    """Bytes per part of a pair as :mod:`conceptspace.models.memory` places them (``text_encoders``, ``base``,
    ``student`` for a network of its own, ``student_adapter`` for a LoRA student, ``vae``), and where each base and
    student count came from."""

    base: str
    student: str | None
    parts: dict[str, int]
    sources: dict[str, Source]
    bytes_per_weight: int = 2
    fp8: bool = False

    @property
    def networks(self) -> tuple[str, ...]:
        return tuple(p for p in ("base", "student") if p in self.parts)

    def peak(self, plan: str) -> int:
        """The bytes ``plan`` keeps on the accelerator at once (weights; :data:`ACTIVATION_RESERVE` is apart)."""
        return peak_estimate(self.parts, plan)

    def in_fp8(self) -> PairSizes:
        """The same pair with its networks stored in fp8 (one byte a weight)."""
        if self.fp8:
            return self
        one_byte = {
            k: (v // self.bytes_per_weight if k in self.networks else v) for k, v in self.parts.items()
        }
        return PairSizes(self.base, self.student, one_byte, self.sources, self.bytes_per_weight, fp8=True)


def pair_sizes(
    base: str | ModelSpec,
    student: str | ModelSpec | None = None,
    *,
    bytes_per_weight: int = 2,
    fp8: bool = False,
    lora_student: str = "adapter",
    cache_dir: str | os.PathLike | None = None,
    base_path: str | os.PathLike | None = None,
    student_path: str | os.PathLike | None = None,
) -> PairSizes | None:
    """The bytes of each part of a pair at ``bytes_per_weight`` (2: float16/bfloat16), read before loading; None
    when a count is unknown (see :func:`component_parameters`)."""
    base_spec = base if isinstance(base, ModelSpec) else get_spec(base)
    student_spec = student if isinstance(student, ModelSpec) or student is None else get_spec(student)
    found = component_parameters(base_spec, cache_dir, base_path)
    if found is None:
        return None
    counts, base_source = found
    folder = base_spec.network_folder
    if folder not in counts:
        return None
    encoders = sum(v for k, v in counts.items() if k not in (folder, "vae"))
    parts = {"text_encoders": encoders, "base": counts[folder], "vae": counts.get("vae", 0)}
    sources: dict[str, Source] = {"base": base_source}
    if student_spec is not None:
        if student_spec.storage == "lora_file":
            if lora_student == "merged":
                parts["student"], sources["student"] = counts[folder], base_source
            else:
                own = component_parameters(student_spec, cache_dir, student_path)
                if own is None:
                    return None
                parts["student_adapter"], sources["student"] = own[0]["adapter"], own[1]
        else:
            own = component_parameters(student_spec, cache_dir, student_path)
            # a full student has its base's architecture: where its own files cannot tell, the base's network does
            parts["student"], sources["student"] = (
                (own[0]["network"], own[1]) if own else (counts[folder], base_source)
            )
    in_bytes = {k: v * bytes_per_weight for k, v in parts.items() if v}
    sizes = PairSizes(
        base_spec.name, student_spec.name if student_spec else None, in_bytes, sources, bytes_per_weight
    )
    return sizes.in_fp8() if fp8 else sizes


@dataclass(frozen=True)
class PlanChoice:
    """The plan ``auto`` picked, its expected peak and the card's size, with a line that says so."""

    plan: str  # a MemoryPlan (memory.py holds the names; this module stays free of torch)
    peak: int
    device_memory: int

    def __str__(self) -> str:
        if self.plan == "group-offload":  # its peak is a block's, known once the networks are built
            return f"memory plan group-offload on an accelerator of {gib(self.device_memory)}"
        return (
            f"memory plan {self.plan}: about {gib(self.peak)} of weights on an accelerator of "
            f"{gib(self.device_memory)} (+{ACTIVATION_RESERVE / GIB:.1f} GiB kept for activations)"
        )


def plan_for(sizes: PairSizes | None, device_memory: int, requested: str = "auto") -> PlanChoice:
    """The plan to load a pair with on an accelerator of ``device_memory`` bytes: ``requested``, checked to fit,
    or for ``"auto"`` the cheapest lossless plan whose weights fit with :data:`ACTIVATION_RESERVE` to spare
    (``resident``, else ``model-offload``). ``auto`` never picks group offloading (several times slower) or fp8
    (other images) on its own. Raises :class:`MemoryPlanError`, naming what would fit, when the plan does not."""
    if sizes is None:
        raise MemoryPlanError(
            "auto cannot size this pair's parts before loading (quantized networks, or files without a safetensors "
            "header or a published count): name a plan, memory='model-offload' (--memory model-offload) or another"
        )
    if requested == "group-offload":  # its peak is a block's, known only once the network is built
        return PlanChoice(requested, 0, device_memory)
    budget = device_memory - ACTIVATION_RESERVE
    for plan in ("resident", "model-offload") if requested == "auto" else (requested,):
        if sizes.peak(plan) <= budget:
            return PlanChoice(plan, sizes.peak(plan), device_memory)
    fp8_peak = sizes.in_fp8().peak("model-offload")
    options = ["memory='group-offload' (--memory group-offload: a block of a network at a time)"]
    if not sizes.fp8 and fp8_peak <= budget:
        options.insert(
            0, f"fp8=True with memory='model-offload' (--fp8 --memory model-offload: {gib(fp8_peak)})"
        )
    elif not sizes.fp8:
        options.append("fp8=True with it (--fp8)")
    if requested == "resident" and sizes.peak("model-offload") <= budget:
        options.insert(
            0, f"memory='model-offload' (--memory model-offload: {gib(sizes.peak('model-offload'))})"
        )
    tried = "any lossless plan" if requested == "auto" else f"memory={requested!r}"
    needed = sizes.peak("model-offload" if requested == "auto" else requested)
    raise MemoryPlanError(
        f"{sizes.base} + {sizes.student or 'no student'} does not fit an accelerator of {gib(device_memory)} "
        f"with {tried}: it needs {gib(needed)} of weights at once (+{gib(ACTIVATION_RESERVE)} for "
        "activations); use " + ", or ".join(options)
    )


def parse_memory_size(text: str | int) -> int:
    """``"24GB"``, ``"24GiB"``, ``"80G"``, ``"12000MB"`` → bytes (an int is bytes already). Cards are sold in binary
    units (a "24 GB" card has 24 GiB), so GB here means GiB, as nvidia-smi counts. Text needs its unit."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(GiB|GB|G|MiB|MB|M)\s*", str(text), re.IGNORECASE)
    if match is None:
        raise ValueError(f"{text!r} is not a memory size with its unit: write it like 24GB, 80GiB or 12000MB")
    scale = GIB if match.group(2).lower().startswith("g") else 2**20
    return int(float(match.group(1)) * scale)


def accelerator_memory(device: str | object) -> int | None:
    """Free bytes on ``device`` when it is a CUDA GPU (what the plan may use); None for the CPU."""
    import torch

    device = torch.device(device)  # type: ignore[arg-type]
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def fitting_plan(sizes: PairSizes, device_memory: int) -> str:
    """What fits an accelerator of ``device_memory`` bytes: the plan ``auto`` picks, else the first of
    ``fp8 + model-offload`` and ``group-offload`` that does (what :func:`plan_for`'s refusal names first)."""
    try:
        return plan_for(sizes, device_memory).plan
    except MemoryPlanError:
        fp8_peak = sizes.in_fp8().peak("model-offload")
        return "fp8 + model-offload" if fp8_peak <= device_memory - ACTIVATION_RESERVE else "group-offload"


@dataclass(frozen=True)
class PlanRow:
    """A pair's sizes and, per card size (bytes), the plan that fits it (``conceptspace plan`` prints these)."""

    base: str
    student: str | None
    sizes: PairSizes | None
    fits: dict[int, str]

    @property
    def name(self) -> str:
        return f"{self.base} + {self.student}" if self.student else self.base


def plan_rows(
    pairs: list[tuple[str, str | None]],
    cards: list[int],
    *,
    bytes_per_weight: int = 2,
    fp8: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> list[PlanRow]:
    """One :class:`PlanRow` per pair, read before anything loads (sizes None: unknown until downloaded)."""
    rows = []
    for base, student in pairs:
        sizes = pair_sizes(base, student, bytes_per_weight=bytes_per_weight, fp8=fp8, cache_dir=cache_dir)
        fits = {card: fitting_plan(sizes, card) for card in cards} if sizes is not None else {}
        rows.append(PlanRow(base, student, sizes, fits))
    return rows
