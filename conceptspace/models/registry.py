"""The model registry: base models, their distilled students and their defaults, as data.

A :class:`ModelSpec` (:mod:`conceptspace.models.spec`) records what PAPER.md says about each checkpoint (hub id and
files, how the weights are stored, scheduler, default steps/timesteps/guidance, resolution); the entries live one
module per family in :mod:`conceptspace.models.pairs`. Nothing here imports torch or diffusers, so ``conceptspace
models`` and ``conceptspace --help`` answer at once; :mod:`conceptspace.models.loading` loads the pairs with the
family adapters of :mod:`conceptspace.models.families`.
"""

from __future__ import annotations

import difflib
import importlib
import os
import shlex
from pathlib import Path
from typing import Any

from conceptspace.models.pairs import ALL_SPECS
from conceptspace.models.spec import NETWORK_FOLDERS, ModelSpec, Role, StorageKind


class ModelNotFoundError(FileNotFoundError):
    """A model's files are neither in the Hugging Face cache nor at the given local path."""


class UnknownModelError(ValueError, KeyError):
    """A model name that is neither a registry name nor the hub repository of exactly one registry model."""

    def __str__(self) -> str:  # a KeyError would print its message quoted
        return str(self.args[0]) if self.args else ""


class IncompatibleModelsError(ValueError):
    """A base and a student whose UNets cannot share latents, text encoders or LoRAs."""


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in ALL_SPECS}


ARCHITECTURES: dict[str, Any] = {}
"""The family adapters by architecture name: :data:`conceptspace.models.families.FAMILIES` is this dict, filled
when the modules in :data:`ARCHITECTURE_PROVIDERS` are imported (a family added there is known here too)."""

ARCHITECTURE_PROVIDERS = ["conceptspace.models.families"]
"""Modules imported before an entry's ``architecture`` is checked, so that their adapters are known."""


def register(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add a model to the registry (see docs/model-pairs.md). A student's base must already be registered, and
    the entry's architecture must be one a family adapter answers to."""
    if spec.name in REGISTRY and not overwrite:
        raise ValueError(f"model {spec.name!r} is already registered; pass overwrite=True to replace it")
    if spec.role == "student" and spec.base not in REGISTRY:
        raise ValueError(f"student {spec.name!r} names base {spec.base!r}, which is not registered")
    if spec.role == "student" and REGISTRY[spec.base].family != spec.family:
        raise ValueError(
            f"student {spec.name!r} is of family {spec.family!r} but its base {spec.base!r} is of family "
            f"{REGISTRY[spec.base].family!r}; load_pair would refuse the pair"
        )
    for module in ARCHITECTURE_PROVIDERS:
        importlib.import_module(module)
    if spec.architecture_name not in ARCHITECTURES:
        close = difflib.get_close_matches(spec.architecture_name, sorted(ARCHITECTURES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"model {spec.name!r}: unknown architecture {spec.architecture_name!r}; {hint}known architectures: "
            f"{', '.join(sorted(ARCHITECTURES))} (architecture= names the family adapter that loads its weights)"
        )
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """The registry entry called ``name``, or the one whose hub repository ``name`` is
    (``"stabilityai/stable-diffusion-xl-base-1.0"`` → ``sdxl``).

    Raises:
        UnknownModelError (a ValueError and a KeyError): an unknown name, with the close registry names (a
            misspelling) or the registry's names; a repository several entries share, with their names.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    in_repo = [key for key, spec in REGISTRY.items() if spec.repo_id.lower() == str(name).strip().lower()]
    if len(in_repo) == 1:
        return REGISTRY[in_repo[0]]
    if in_repo:
        raise UnknownModelError(
            f"{name} holds several registry models ({', '.join(in_repo)}): name the one you mean"
        )
    close = difflib.get_close_matches(str(name), list(REGISTRY), n=3, cutoff=0.6)
    if close:
        raise UnknownModelError(
            f"unknown model {name!r}; did you mean {' or '.join(close)}? "
            f"(`conceptspace models` lists all {len(REGISTRY)})"
        )
    raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}")


def bases() -> list[ModelSpec]:
    return [spec for spec in REGISTRY.values() if spec.role == "base"]


def students_of(base: str) -> list[ModelSpec]:
    return [spec for spec in REGISTRY.values() if spec.role == "student" and spec.base == base]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


def is_cached(spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when the files that ``spec`` needs are in the Hugging Face cache (always true for random models):
    its key files and, for folder layouts, the UNet weights in at least one variant."""
    from huggingface_hub import try_to_load_from_cache

    if spec.local_dir:
        return all((Path(spec.local_dir) / filename).is_file() for filename in spec.key_files)

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(spec.repo_id, filename, cache_dir=cache_dir), str)

    if not all(cached(filename) for filename in spec.key_files):
        return False
    if spec.storage in ("pipeline", "unet_folder"):
        folder = _weights_folder(spec)
        names = ["diffusion_pytorch_model"] + (
            [f"diffusion_pytorch_model.{spec.variant}"] if spec.variant else []
        )
        # one file, or the index of a sharded checkpoint (SD3.5's and FLUX's transformers)
        candidates = [
            name + ext for name in names for ext in (".safetensors", ".bin", ".safetensors.index.json")
        ]
        return any(cached(folder + name) for name in candidates)
    return True


def _weights_folder(spec: ModelSpec) -> str:
    """The repo-relative folder (with a trailing slash, or "") that holds the denoising network's weights."""
    if spec.storage == "pipeline":
        return f"{spec.network_folder}/"
    return f"{spec.subfolder}/" if spec.subfolder else ""


def _missing_error(
    spec: ModelSpec, cache_dir: str | os.PathLike | None, detail: str = ""
) -> ModelNotFoundError:
    from huggingface_hub import constants

    where = cache_dir or constants.HF_HUB_CACHE
    files = ", ".join(spec.key_files) or "its files"
    if spec.storage in ("pipeline", "unet_folder"):
        kind = "transformer" if spec.network_folder == "transformer" else "UNet"
        files += f" and {kind} weights {_weights_folder(spec)}diffusion_pytorch_model[.{spec.variant or 'fp16'}].safetensors"
    option = "--student-path" if spec.role == "student" else "--base-path"
    reason = "HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline() else "it could not be downloaded"
    # `hf download` fills the default cache: name the one we read from when it is another.
    command = spec.fetch_command + (f" --cache-dir {shlex.quote(os.fspath(cache_dir))}" if cache_dir else "")
    message = (
        f"model {spec.name!r} needs {spec.repo_id} ({files}), which is not in the Hugging Face cache at {where} "
        f"and {reason}. Fetch it with `{command}`, or point {option} at a local copy."
    )
    if detail:
        message += f" ({detail})"
    return ModelNotFoundError(message)


__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_PROVIDERS",
    "IncompatibleModelsError",
    "ModelNotFoundError",
    "ModelSpec",
    "NETWORK_FOLDERS",
    "REGISTRY",
    "Role",
    "StorageKind",
    "UnknownModelError",
    "bases",
    "get_spec",
    "hub_offline",
    "is_cached",
    "register",
    "students_of",
]
