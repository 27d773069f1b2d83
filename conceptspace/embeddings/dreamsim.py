"""DreamSim as an embedder (``dreamsim:ensemble`` and its single backbones) through the optional ``dreamsim``
package, with the files it needs listed so that a missing one is named before anything downloads."""

from __future__ import annotations

import importlib.metadata
import os
import shlex
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from conceptspace.embeddings.base import (
    Embedder,
    EmbedderNotFoundError,
    EmbedderSpecError,
    MissingDependencyError,
)
from conceptspace.models import hub_offline

DREAMSIM_TYPES = ("ensemble", "dino_vitb16", "open_clip_vitb32", "clip_vitb32")
_DREAMSIM_DIMS = {
    "ensemble": 768 + 512 + 512,
    "dino_vitb16": 768,
    "open_clip_vitb32": 512,
    "clip_vitb32": 512,
}
_DREAMSIM_URLS = {
    "ensemble": "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip",
    "dino_vitb16": "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_dino_vitb16_checkpoint.zip",
    "clip_vitb32": "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_clip_vitb32_checkpoint.zip",
    "open_clip_vitb32": "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_open_clip_vitb32_checkpoint.zip",
}
_DINO_REPO = "https://github.com/facebookresearch/dino"
_DINO_WEIGHTS = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"


def default_dreamsim_dir() -> Path:
    """Where DreamSim weights live unless ``cache_dir`` says otherwise: ``$XDG_CACHE_HOME/dreamsim`` (~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dreamsim"


def dreamsim_required_files(dreamsim_type: str, version: str | None = None) -> list[str]:
    """The paths, relative to DreamSim's ``cache_dir``, that must exist for it to load without downloading.

    The package's release zip holds the backbones and the LoRA folder (``ensemble_lora/`` since 0.2; one
    ``<backbone>_lora/`` each before); the DINO backbone additionally comes through ``torch.hub`` with the hub dir
    set to ``cache_dir``: the facebookresearch/dino code and its ViT-B/16 weights.
    """
    from packaging.version import Version

    new_layout = version is None or Version(version) >= Version("0.2")
    backbones = {
        "ensemble": [
            "dino_vitb16_pretrain.pth",
            "open_clip_vitb16_pretrain.pth.tar",
            "clip_vitb16_pretrain.pth.tar",
        ],
        "dino_vitb16": ["dino_vitb16_pretrain.pth"],
        "open_clip_vitb32": ["open_clip_vitb32_pretrain.pth.tar"],
        "clip_vitb32": ["clip_vitb32_pretrain.pth.tar"],
    }[dreamsim_type]
    if dreamsim_type != "ensemble":
        loras = [f"{dreamsim_type}_single_lora"]
    elif new_layout:
        loras = ["ensemble_lora"]
    else:
        loras = ["dino_vitb16_lora", "clip_vitb16_lora", "open_clip_vitb16_lora"]
    files = backbones + [f"{lora}/adapter_config.json" for lora in loras]
    if "dino_vitb16_pretrain.pth" in backbones:
        files += ["facebookresearch_dino_main/hubconf.py", "checkpoints/dino_vitbase16_pretrain.pth"]
    return files


class DreamSimEmbedder(Embedder):
    """DreamSim (``dreamsim:ensemble`` and the single-backbone ``dino_vitb16``, ``open_clip_vitb32``,
    ``clip_vitb32``) through the optional ``dreamsim`` package, with its weights in ``cache_dir`` (default
    :func:`default_dreamsim_dir`). It runs in float32 whatever ``dtype`` says.

    DreamSim's distance is ``1 − cos(embed(a), embed(b))``, so with these L2-normalised embeddings the distance
    matrix is ``1 - E @ E.T``.
    """

    def __init__(
        self, dreamsim_type: str, *, name: str, cache_dir: str | os.PathLike | None = None, **options: Any
    ) -> None:
        if dreamsim_type not in DREAMSIM_TYPES:
            raise EmbedderSpecError(
                f"unknown DreamSim type {dreamsim_type!r} in {name!r}; known: "
                + ", ".join(f"dreamsim:{kind}" for kind in DREAMSIM_TYPES)
            )
        options["dtype"] = torch.float32  # DreamSim's projection matrices stay float32
        super().__init__(name, **options)
        try:
            import dreamsim
        except ImportError as error:
            raise MissingDependencyError(
                f"embedder {name!r} needs the optional `dreamsim` package: pip install 'conceptspace[dreamsim]'"
            ) from error
        self.dreamsim_type = dreamsim_type
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_dreamsim_dir()
        try:
            version: str | None = importlib.metadata.version("dreamsim")
        except importlib.metadata.PackageNotFoundError:
            version = None
        missing = [
            f for f in dreamsim_required_files(dreamsim_type, version) if not (self.cache_dir / f).exists()
        ]
        if missing and hub_offline():
            raise self._missing_error(dreamsim, missing)
        previous_hub_dir = torch.hub.get_dir()
        try:  # dreamsim points torch.hub at its cache_dir (for the DINO backbone) and leaves it there
            model, preprocess = dreamsim.dreamsim(
                pretrained=True,
                device=str(self.device),
                cache_dir=str(self.cache_dir),
                normalize_embeds=True,
                dreamsim_type=dreamsim_type,
            )
        finally:
            torch.hub.set_dir(previous_hub_dir)
        self.model = model
        self.preprocess = preprocess
        self.dim = _DREAMSIM_DIMS[dreamsim_type]

    def _missing_error(self, package: Any, missing: list[str]) -> EmbedderNotFoundError:
        urls = getattr(getattr(package, "config", None), "dreamsim_weights", None)
        url = urls.get(self.dreamsim_type) if isinstance(urls, dict) else urls
        url = url or _DREAMSIM_URLS[self.dreamsim_type]
        where = self.cache_dir
        message = (
            f"DreamSim weights for {self.name!r} are not in {where} and HF_HUB_OFFLINE=1 forbids downloading them. "
            f"Missing: {', '.join(missing)}. Download {url} and unzip it into {where}"
        )
        if any(f.startswith(("facebookresearch_dino_main", "checkpoints/")) for f in missing):
            message += (
                f"; the DINO backbone also needs the facebookresearch/dino code at {where / 'facebookresearch_dino_main'}"
                f" (`git clone {_DINO_REPO} {shlex.quote(str(where / 'facebookresearch_dino_main'))}`) and "
                f"{_DINO_WEIGHTS} at {where / 'checkpoints' / 'dino_vitbase16_pretrain.pth'}"
            )
        return EmbedderNotFoundError(
            message + f". Or, online, run `load_embedder({self.name!r}, cache_dir={str(where)!r})` once."
        )

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.cat([self.preprocess(image) for image in images]).to(self.device)
        return self.model.embed(pixels)
