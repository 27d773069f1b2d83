"""One adapter per architecture family (see :class:`~conceptspace.models.families.base.Family`).

A registry entry names its family in ``ModelSpec.architecture`` (default: its ``family``); :func:`family_of`
returns the adapter. Adding a family is one module here plus an entry in :data:`FAMILIES`
(docs/model-pairs.md, "Adding a family").
"""

from __future__ import annotations

from conceptspace.lora import NETWORK_TIMESTEPS
from conceptspace.models.families.base import Conditioning, Family
from conceptspace.models.families.flux import Flux
from conceptspace.models.families.flux2 import Flux2
from conceptspace.models.families.hidream import HiDream
from conceptspace.models.families.krea2 import Krea2
from conceptspace.models.families.pixart import PixArtAlpha
from conceptspace.models.families.qwenimage import QwenImage
from conceptspace.models.families.sana import Sana
from conceptspace.models.families.sd import StableDiffusion
from conceptspace.models.families.sd3 import StableDiffusion3
from conceptspace.models.families.sdxl import StableDiffusionXL
from conceptspace.models.families.zimage import ZImage
from conceptspace.models.registry import ARCHITECTURES, ModelSpec

FAMILIES: dict[str, Family] = ARCHITECTURES  # the registry's table: register() refuses other architectures
FAMILIES.update(
    {
        family.name: family
        for family in (
            StableDiffusion(),
            StableDiffusionXL(),
            StableDiffusion3(),
            Flux(),
            PixArtAlpha(),
            ZImage(),
            QwenImage(),
            Sana(),
            HiDream(),
            Krea2(),
            Flux2(),
        )
    }
)


def family_of(spec: ModelSpec | str) -> Family:
    """The adapter for a registry entry (its ``architecture``) or for an architecture name."""
    name = spec if isinstance(spec, str) else spec.architecture_name
    try:
        return FAMILIES[name]
    except KeyError:
        what = name if isinstance(spec, str) else f"{name!r} (model {spec.name!r})"
        raise ValueError(
            f"unknown architecture {what}; known architectures: {', '.join(FAMILIES)}. Set architecture= in the "
            "ModelSpec to the one its weights are, or add a family adapter (docs/model-pairs.md)"
        ) from None


def family_of_network(network: object) -> Family | None:
    """The adapter whose denoising network class ``network`` is (the first, for the UNet SD and SDXL share),
    or None for a class no family names."""
    name = type(network).__name__
    return next((f for f in FAMILIES.values() if f.network_class_name == name), None)


for _family in FAMILIES.values():  # LoRA windows read the scheduler's timestep from each network's own form
    NETWORK_TIMESTEPS.setdefault(_family.network_class_name, _family.scheduler_timestep)


__all__ = [
    "FAMILIES",
    "Conditioning",
    "Family",
    "Flux",
    "Flux2",
    "HiDream",
    "Krea2",
    "PixArtAlpha",
    "QwenImage",
    "Sana",
    "StableDiffusion",
    "StableDiffusion3",
    "StableDiffusionXL",
    "ZImage",
    "family_of",
    "family_of_network",
]
