"""Base models, their distilled students, and how to load and run them.

- :mod:`~conceptspace.models.registry` — the registry of names (:class:`ModelSpec`, :func:`register`), as data;
- :mod:`~conceptspace.models.families` — one adapter per architecture family (SD, SDXL …): the seam between
  diffusers' models and the sampler;
- :mod:`~conceptspace.models.loading` — :func:`load_pair`: a :class:`ModelPair` with shared VAE and text encoders;
- :mod:`~conceptspace.models.tiny` — tiny random models of each family, built in memory.

The names below are imported on first use (PEP 562), so that reading the registry (``conceptspace models``) does
not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conceptspace._lazy import lazy_exports

_EXPORTS = {
    "conceptspace.models.registry": (
        "REGISTRY",
        "IncompatibleModelsError",
        "ModelNotFoundError",
        "ModelSpec",
        "UnknownModelError",
        "Role",
        "StorageKind",
        "bases",
        "get_spec",
        "hub_offline",
        "is_cached",
        "register",
        "students_of",
    ),
    "conceptspace.models.families": ("FAMILIES", "Conditioning", "Family", "family_of"),
    "conceptspace.models.loading": (
        "ModelPair",
        "check_device",
        "default_device",
        "default_dtype",
        "load_network_state_dict",
        "load_pair",
        "read_state_dict",
        "with_overrides",
        "with_student",
    ),
    "conceptspace.models.memory": ("held_bytes", "release_student"),
    "conceptspace.models.sizes": ("MemoryPlanError", "pair_sizes", "parse_memory_size", "plan_for"),
}

if TYPE_CHECKING:
    from conceptspace.models.families import FAMILIES, Conditioning, Family, family_of
    from conceptspace.models.loading import (
        ModelPair,
        check_device,
        default_device,
        default_dtype,
        load_network_state_dict,
        load_pair,
        read_state_dict,
        with_overrides,
        with_student,
    )
    from conceptspace.models.memory import held_bytes, release_student
    from conceptspace.models.registry import (
        REGISTRY,
        IncompatibleModelsError,
        ModelNotFoundError,
        ModelSpec,
        Role,
        StorageKind,
        UnknownModelError,
        bases,
        get_spec,
        hub_offline,
        is_cached,
        register,
        students_of,
    )
    from conceptspace.models.sizes import MemoryPlanError, pair_sizes, parse_memory_size, plan_for


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


__all__ = [
    "FAMILIES",
    "REGISTRY",
    "Conditioning",
    "Family",
    "IncompatibleModelsError",
    "MemoryPlanError",
    "ModelNotFoundError",
    "ModelPair",
    "ModelSpec",
    "UnknownModelError",
    "Role",
    "StorageKind",
    "bases",
    "check_device",
    "default_device",
    "default_dtype",
    "family_of",
    "get_spec",
    "held_bytes",
    "hub_offline",
    "is_cached",
    "load_network_state_dict",
    "load_pair",
    "pair_sizes",
    "parse_memory_size",
    "plan_for",
    "read_state_dict",
    "register",
    "release_student",
    "students_of",
    "with_overrides",
    "with_student",
]
