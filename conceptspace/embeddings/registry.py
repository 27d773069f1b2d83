"""Embedder specs ``PREFIX:ARGUMENT``: the factory registered for each prefix, :func:`load_embedder` that calls it,
and the default embedder of a model pair."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from conceptspace.embeddings.base import EXAMPLE_SPEC, Embedder, EmbedderSpecError
from conceptspace.embeddings.dreamsim import DreamSimEmbedder
from conceptspace.embeddings.huggingface import DINOv2Embedder, HFCLIPEmbedder
from conceptspace.embeddings.openclip import OpenCLIPEmbedder
from conceptspace.embeddings.pixels import PixelEmbedder
from conceptspace.models import ModelSpec, get_spec

EmbedderFactory = Callable[..., Embedder]
"""``factory(argument, *, name, device, dtype, cache_dir, batch_size, progress) -> Embedder``: ``argument`` is the
spec after ``PREFIX:``, ``name`` the whole spec."""

_FACTORIES: dict[str, EmbedderFactory] = {}
# Prefixes whose factories a module registers when imported; load_embedder imports it on first use.
_PROVIDERS = {"testbed": "conceptspace.testbed"}


def register_embedder(prefix: str, factory: EmbedderFactory, *, overwrite: bool = False) -> None:
    """Make ``load_embedder("PREFIX:...")`` call ``factory`` (see :data:`EmbedderFactory`).

    Example (what :mod:`conceptspace.testbed` does):
        >>> register_embedder("testbed", lambda arg, **options: TestbedEmbedder(arg, **options))  # doctest: +SKIP
    """
    prefix = prefix.strip().lower()
    if not prefix or ":" in prefix:
        raise ValueError(f"an embedder prefix must be a non-empty word without ':', got {prefix!r}")
    if prefix in _FACTORIES and not overwrite and _FACTORIES[prefix] is not factory:
        raise ValueError(
            f"embedder prefix {prefix!r} is already registered; pass overwrite=True to replace it"
        )
    _FACTORIES[prefix] = factory


def embedder_prefixes() -> list[str]:
    """The spec prefixes :func:`load_embedder` knows now."""
    return sorted(_FACTORIES)


def _open_clip_factory(argument: str, **options: Any) -> Embedder:
    if argument.startswith(("hf-hub:", "local-dir:")):
        return OpenCLIPEmbedder(argument, None, **options)
    model_name, _, pretrained = argument.partition(":")
    if not model_name:
        raise EmbedderSpecError(
            f"embedder {options['name']!r} names no open_clip model, e.g. {EXAMPLE_SPEC!r}"
        )
    return OpenCLIPEmbedder(model_name, pretrained or None, **options)


register_embedder("open_clip", _open_clip_factory)
register_embedder("hf-clip", lambda argument, **options: HFCLIPEmbedder(argument, **options))
register_embedder("dinov2", lambda argument, **options: DINOv2Embedder(argument, **options))
register_embedder("dreamsim", lambda argument, **options: DreamSimEmbedder(argument, **options))
register_embedder("pixels", lambda argument, **options: PixelEmbedder(argument, **options))


def load_embedder(
    spec: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Embedder:
    """Load the embedder a spec string names (see the module docstring for the forms).

    Args:
        spec: ``PREFIX:ARGUMENT``, e.g. ``"open_clip:ViT-B-32:laion2b_s34b_b79k"``.
        device: default CUDA when available.
        dtype: weights dtype; default float16 on CUDA, float32 on CPU (DreamSim always runs in float32).
        cache_dir: the Hugging Face hub cache to read (default HF_HUB_CACHE); for DreamSim its weights folder.
        batch_size: images per forward pass unless ``embed_images(..., batch_size=)`` says otherwise.
        progress: show a progress bar while embedding.

    Raises:
        EmbedderSpecError: a malformed spec or an unknown prefix (the message lists the known ones).
        EmbedderNotFoundError: weights not cached with HF_HUB_OFFLINE=1 (the message names what to fetch), or a
            local path that does not exist.
        MissingDependencyError: an optional package (``dreamsim``) is not installed.
    """
    if not isinstance(spec, str):
        raise TypeError(f"an embedder spec is a string like {EXAMPLE_SPEC!r}, got {type(spec).__name__}")
    spec = spec.strip()
    prefix, sep, argument = spec.partition(":")
    prefix = prefix.strip().lower()
    if not sep or not prefix or not argument.strip():
        raise EmbedderSpecError(
            f"malformed embedder spec {spec!r}: expected PREFIX:ARGUMENT, e.g. {EXAMPLE_SPEC!r}, "
            f"'hf-clip:openai/clip-vit-large-patch14' or 'dreamsim:ensemble' (prefixes: "
            f"{', '.join(embedder_prefixes())})"
        )
    if prefix not in _FACTORIES and prefix in _PROVIDERS:
        try:
            importlib.import_module(_PROVIDERS[prefix])
        except ModuleNotFoundError as error:
            if error.name != _PROVIDERS[prefix]:
                raise
    if prefix not in _FACTORIES:
        raise EmbedderSpecError(
            f"unknown embedder prefix {prefix!r} in {spec!r}; known prefixes: {', '.join(embedder_prefixes())} "
            f"(e.g. {EXAMPLE_SPEC!r})"
        )
    embedder = _FACTORIES[prefix](
        argument.strip(),
        name=spec,
        device=device,
        dtype=dtype,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
    )
    if not isinstance(embedder, Embedder):
        raise TypeError(f"the factory for {prefix!r} returned {type(embedder).__name__}, not an Embedder")
    return embedder


def default_embedder(pair_or_spec: Any) -> str:
    """The embedder spec a model pair is evaluated with: its base model's ``embedder`` in the registry.

    Accepts a registry name (``"sdxl"``, ``"dmd2"``), a :class:`~conceptspace.models.ModelSpec` or a
    :class:`~conceptspace.models.ModelPair`; a student resolves to its base.
    """
    if isinstance(pair_or_spec, str):
        spec = get_spec(pair_or_spec)
    elif isinstance(pair_or_spec, ModelSpec):
        spec = pair_or_spec
    elif isinstance(getattr(pair_or_spec, "base", None), ModelSpec):
        spec = pair_or_spec.base
    else:
        raise TypeError(f"expected a model name, ModelSpec or ModelPair, got {type(pair_or_spec).__name__}")
    if spec.role == "student" and spec.base:
        spec = get_spec(spec.base)
    embedder = getattr(spec, "embedder", None)
    if not embedder:
        raise ValueError(
            f"model {spec.name!r} names no default embedder; pass one explicitly, e.g. {EXAMPLE_SPEC!r}, or set "
            f"embedder= on its registry entry"
        )
    return embedder


def resolve_embedder(embedder: Embedder | str | None, default_for: Any, **options: Any) -> Embedder:
    """``embedder`` as a loaded :class:`Embedder`: itself, its spec loaded with ``options`` (:func:`load_embedder`'s
    keywords), or the registry embedder of ``default_for`` (a pair, a spec or a model name: :func:`default_embedder`)
    when it is None."""
    spec = default_embedder(default_for) if embedder is None else embedder
    return load_embedder(spec, **options) if isinstance(spec, str) else spec
