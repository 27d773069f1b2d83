"""Image and text embedders behind one small interface: images in, L2-normalised embeddings out.

Every embedder is named by a spec string ``PREFIX:ARGUMENT`` and loaded with :func:`load_embedder`:

==============================================  ===================================================================
``open_clip:ViT-B-32:laion2b_s34b_b79k``        any open_clip model with a pretrained tag (Hugging Face hub cache)
``open_clip:ViT-B-32:/path/to/ckpt.pt``         ... or with a local checkpoint file
``open_clip:hf-hub:org/repo``                   ... or an open_clip repo on the hub (``local-dir:/folder`` too)
``hf-clip:openai/clip-vit-large-patch14``       a transformers ``CLIPModel`` from the hub or a local folder
``dinov2:facebook/dinov2-base``                 a transformers DINOv2 model (image only: the CLS token)
``dreamsim:ensemble``                           DreamSim (``ensemble``, ``dino_vitb16``, ``open_clip_vitb32``,
                                                ``clip_vitb32``); needs ``pip install 'conceptspace[dreamsim]'``
``testbed:...``                                 supplied by :mod:`conceptspace.testbed` via :func:`register_embedder`
==============================================  ===================================================================

Each model is fed through its own preprocessing (open_clip's preprocess transform, the Hugging Face image
processor, DreamSim's resize). Inputs are first turned into 8-bit RGB PIL images, the format those transforms were
built for, so a list of PIL images, a ``uint8`` array ``(N, H, W, 3)``, a float array in [0, 1] (diffusers'
``output_type="np"``) and a float tensor ``(N, 3, H, W)`` in [0, 1] holding the same pixels give the same
embeddings. Embeddings come back as float32 CPU tensors ``(N, D)`` with unit L2 norm, so ``a @ b.T`` is the cosine
similarity and ``1 - a @ b.T`` the cosine distance (for DreamSim: the DreamSim distance itself).

Offline first: with ``HF_HUB_OFFLINE=1`` a model whose files are not cached raises :class:`EmbedderNotFoundError`
naming the repo (or files) and the command that fetches them.

Example:
    >>> embedder = load_embedder("open_clip:ViT-B-32:laion2b_s34b_b79k")     # doctest: +SKIP
    >>> images = embedder.embed_images(pil_images)                            # doctest: +SKIP
    >>> texts = embedder.embed_texts(["a photo of a dog"])                    # doctest: +SKIP
    >>> clip_score = 100 * (images @ texts.T).clamp(min=0)                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import inspect
import itertools
import os
import re
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from conceptspace.models import (
    ModelNotFoundError,
    ModelSpec,
    check_device,
    default_device,
    default_dtype,
    get_spec,
    hub_offline,
)

ImageLike = Image.Image | np.ndarray | torch.Tensor | str | os.PathLike
"""One image: a PIL image, an ``(H, W, C)`` array, a ``(C, H, W)`` tensor, or a path to an image file."""
Images = ImageLike | Iterable[ImageLike]
"""A batch of images: one image, an ``(N, H, W, C)`` array, an ``(N, C, H, W)`` tensor, or an iterable of images."""

EXAMPLE_SPEC = "open_clip:ViT-B-32:laion2b_s34b_b79k"
DREAMSIM_TYPES = ("ensemble", "dino_vitb16", "open_clip_vitb32", "clip_vitb32")
_FLOAT_RANGE_TOLERANCE = 1e-3
_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class EmbedderNotFoundError(ModelNotFoundError):
    """An embedder's weights are not cached (and may not be downloaded), or a local path does not exist."""


class EmbedderSpecError(ValueError):
    """A malformed embedder spec, an unknown prefix, or an argument the embedder does not know."""


class TextNotSupportedError(TypeError):
    """``embed_texts`` on an image-only embedder (DINOv2, DreamSim)."""


class MissingDependencyError(ImportError):
    """An embedder needs an optional package that is not installed."""


class Embedder(ABC):
    """Images (and, for CLIP-like models, texts) → L2-normalised embeddings, batched on one device.

    Subclasses implement :meth:`_embed_image_batch` (and :meth:`_embed_text_batch` with ``has_text = True``); the
    base class handles input formats, batching, the progress bar, normalisation and the move to the CPU.

    Attributes:
        name: the spec it was loaded from, e.g. ``"open_clip:ViT-B-32:laion2b_s34b_b79k"``.
        has_text: whether :meth:`embed_texts` works (a text tower in the same embedding space).
        dim: the embedding size ``D`` where known before the first call, else None.
        device / dtype: where and in what precision the model runs.
        batch_size: the default number of images per forward pass.
        progress: show a tqdm progress bar while embedding.
    """

    has_text: bool = False
    dim: int | None = None

    def __init__(
        self,
        name: str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.device = check_device(device) or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.batch_size = batch_size
        self.progress = progress

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device}, dtype={self.dtype})"

    def embed_images(self, images: Images, batch_size: int | None = None) -> torch.Tensor:
        """Embed images: ``(N, D)`` float32 on the CPU, each row of unit L2 norm.

        ``images`` is a list (or any iterable) of PIL images or image paths, a ``uint8`` array ``(N, H, W, 3)``, a
        float array of that shape in [0, 1], or a float tensor ``(N, 3, H, W)`` in [0, 1] (``uint8`` tensors work
        too). Float inputs are quantised to 8 bits like diffusers' ``numpy_to_pil`` does.
        """
        batch_size = batch_size or self.batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        total, items = _iter_images(images)
        rows: list[torch.Tensor] = []
        bar = tqdm(
            total=total, desc=f"embedding [{self.name}]", unit="img", disable=not self.progress, leave=False
        )
        with bar, torch.inference_mode():
            for batch in _chunks(items, batch_size):
                rows.append(self._normalise(self._embed_image_batch(batch), len(batch)))
                bar.update(len(batch))
        return self._stack(rows)

    def embed_texts(self, texts: str | Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Embed texts into the image embedding space: ``(N, D)`` float32 on the CPU, unit L2 norm."""
        if not self.has_text:
            raise TextNotSupportedError(
                f"embedder {self.name!r} embeds images only; texts need a CLIP-like embedder such as "
                f"{EXAMPLE_SPEC!r} or 'hf-clip:openai/clip-vit-large-patch14'"
            )
        texts = [texts] if isinstance(texts, str) else list(texts)
        batch_size = batch_size or self.batch_size
        rows: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                rows.append(self._normalise(self._embed_text_batch(batch), len(batch)))
        return self._stack(rows)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed a float tensor ``(N, 3, H, W)`` in [0, 1] *differentiably*: ``(N, D)`` float32 unit rows on the
        embedder's device, with gradients flowing back to ``pixels`` (what training a slider against embedding
        directions needs; the model's own weights stay frozen). Resizing is bilinear, so values differ slightly
        from :meth:`embed_images`, which resizes PIL images with the model's own transform."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, H, W) in [0, 1], got shape {tuple(pixels.shape)}")
        features = self._embed_pixel_tensor(pixels.to(self.device))
        return F.normalize(features.reshape(len(pixels), -1).float(), dim=-1)

    def _embed_pixel_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            f"embedder {self.name!r} cannot embed tensors differentiably; use an open_clip, hf-clip, pixels or "
            "testbed:clip embedder"
        )

    @abstractmethod
    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Features ``(B, D)`` for a batch of RGB PIL images (any device and dtype; not yet normalised)."""

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        """Features ``(B, D)`` for a batch of texts; only called when ``has_text`` (subclasses with a text tower)."""
        raise TextNotSupportedError(f"embedder {self.name!r} has no text tower")

    @staticmethod
    def _normalise(features: torch.Tensor, count: int) -> torch.Tensor:
        # reshape by the batch's length: some models (DreamSim) squeeze a batch of one to a vector
        features = features.reshape(count, -1).float()
        return F.normalize(features, dim=-1).cpu()

    def _stack(self, rows: list[torch.Tensor]) -> torch.Tensor:
        if not rows:
            return torch.empty(0, self.dim or 0)
        return torch.cat(rows).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Input formats

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resize_and_normalise(
    pixels: torch.Tensor, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """A differentiable stand-in for CLIP's preprocessing of [0, 1] pixels: resize, then (x − mean) / std."""
    if tuple(pixels.shape[-2:]) != tuple(size):
        pixels = F.interpolate(
            pixels.float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )
    mean_t = torch.tensor(mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def _iter_images(images: Images) -> tuple[int | None, Iterator[Image.Image]]:
    """(count or None, an iterator of RGB PIL images) for any accepted input; arrays are converted lazily."""
    if isinstance(images, (Image.Image, str, os.PathLike)):
        return 1, iter([_to_pil(images)])
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return 1, iter([_to_pil(images)])
        if images.ndim != 4:
            raise ValueError(f"an image array must be (N, H, W, C) or (H, W, C), got shape {images.shape}")
        _check_float_range(images)
        return len(images), (_to_pil(image) for image in images)
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return 1, iter([_to_pil(images)])
        if images.ndim != 4:
            raise ValueError(
                f"an image tensor must be (N, C, H, W) or (C, H, W), got shape {tuple(images.shape)}"
            )
        _check_float_range(images)
        return len(images), (_to_pil(image) for image in images)
    if isinstance(images, Iterable):
        total = len(images) if isinstance(images, Sequence) else None
        return total, (_to_pil(image) for image in images)
    raise TypeError(
        f"cannot embed {type(images).__name__}: pass PIL images, image paths, a uint8/float array (N, H, W, 3) "
        f"or a float tensor (N, 3, H, W) in [0, 1]"
    )


def _check_float_range(pixels: np.ndarray | torch.Tensor) -> None:
    """Float images must be in [0, 1]; integer images are taken as 8-bit."""
    if isinstance(pixels, torch.Tensor):
        if not pixels.is_floating_point() or pixels.numel() == 0:
            return
    elif not np.issubdtype(pixels.dtype, np.floating) or pixels.size == 0:
        return
    low, high = float(pixels.min()), float(pixels.max())
    if low < -_FLOAT_RANGE_TOLERANCE or high > 1 + _FLOAT_RANGE_TOLERANCE:
        raise ValueError(
            f"float images must hold values in [0, 1], got [{low:.3g}, {high:.3g}]; a VAE decoder's output in "
            f"[-1, 1] becomes valid with (x / 2 + 0.5).clamp(0, 1)"
        )


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"an image tensor must be (C, H, W) with 1, 3 or 4 channels, got {tuple(image.shape)}"
            )
        image = image.detach().cpu().permute(1, 2, 0)
        image = image.numpy() if image.dtype == torch.uint8 else image.float().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"cannot read {type(image).__name__} as an image")
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image array must be (H, W, C) with 1, 3 or 4 channels, got {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"image arrays must be uint8 or float in [0, 1], got {image.dtype}")
        _check_float_range(image)
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(image[..., :3]))


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


# ----------------------------------------------------------------------------------------------------------------
# Shared loading helpers


def _cache_dir_option(cache_dir: str | os.PathLike | None) -> str:
    return f" --cache-dir {shlex.quote(os.fspath(cache_dir))}" if cache_dir else ""


def _hub_cache_location(cache_dir: str | os.PathLike | None) -> str:
    from huggingface_hub import constants

    return os.fspath(cache_dir) if cache_dir else constants.HF_HUB_CACHE


def _is_cached(repo_id: str, filename: str, cache_dir: str | os.PathLike | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir), str)


def _looks_like_path(text: str) -> bool:
    """Whether a spec argument is meant as a file system path (a hub repo id is ``name`` or ``org/name``)."""
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or bool(re.match(r"[A-Za-z]:[\\/]", text))
        or text.count("/") > 1
        or text.endswith((".pt", ".pth", ".bin", ".safetensors", ".tar"))
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _hf_dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` for transformers ≥ 4.56 (which warns on ``torch_dtype=``), ``torch_dtype=`` before."""
    from packaging.version import Version

    version = Version(importlib.metadata.version("transformers"))
    return {"dtype": dtype} if version >= Version("4.56") else {"torch_dtype": dtype}


@contextlib.contextmanager
def _hf_progress_bars(enabled: bool) -> Iterator[None]:
    """Silence transformers' own progress bars ("Loading weights") while loading when ``progress=False``."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _pooled(output: Any) -> torch.Tensor:
    """transformers 5 returns a model output with the projection in ``pooler_output``; 4.x returned the tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _resolve_hf_source(
    source: str, spec: str, cache_dir: str | os.PathLike | None, required: Sequence[str]
) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is a local folder); raises when offline and not cached."""
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        return expanded, True
    if _looks_like_path(source) or not _REPO_ID.fullmatch(source):
        if os.path.exists(expanded):
            raise EmbedderNotFoundError(f"embedder {spec!r}: {source} is a file, not a model folder")
        if _looks_like_path(source):
            raise EmbedderNotFoundError(f"embedder {spec!r}: local model folder {source} does not exist")
        raise EmbedderSpecError(
            f"embedder {spec!r}: {source!r} is neither a hub repo id (org/name) nor an existing local folder"
        )
    if hub_offline():
        missing = [name for name in required if not _is_cached(source, name, cache_dir)]
        if not any(_is_cached(source, name, cache_dir) for name in _HF_WEIGHT_FILES):
            missing.append("model.safetensors")
        if missing:
            raise _hf_missing_error(spec, source, cache_dir, f"missing {', '.join(missing)}")
    return source, False


def _hf_missing_error(
    spec: str, repo_id: str, cache_dir: str | os.PathLike | None, detail: str = ""
) -> EmbedderNotFoundError:
    reason = "HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline() else "it could not be downloaded"
    command = (
        f"hf download {repo_id} --include '*.json' '*.txt' '*.safetensors'{_cache_dir_option(cache_dir)}"
    )
    prefix = spec.split(":", 1)[0]
    message = (
        f"embedder {spec!r} needs {repo_id}, which is not in the Hugging Face cache at "
        f"{_hub_cache_location(cache_dir)} and {reason}. Fetch it with `{command}` (configs, tokenizer files and "
        f"safetensors weights), or give a local folder: '{prefix}:/path/to/folder'."
    )
    return EmbedderNotFoundError(message + (f" ({detail})" if detail else ""))


# ----------------------------------------------------------------------------------------------------------------
# open_clip


_OPEN_CLIP_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_OPEN_CLIP_WEIGHTS = "open_clip_pytorch_model.bin"


def _safetensors_alternatives(filename: str) -> list[str]:
    """The files open_clip tries before ``filename`` (mirrors ``open_clip.pretrained._get_safe_alternatives``)."""
    if filename == _OPEN_CLIP_WEIGHTS:
        return ["open_clip_model.safetensors"]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors"]
    return []


class OpenCLIPEmbedder(Embedder):
    """An open_clip model: ``open_clip:MODEL:TAG``, ``open_clip:MODEL:/path/to/checkpoint``, or
    ``open_clip:hf-hub:org/repo`` / ``open_clip:local-dir:/folder``. Images go through the model's own validation
    transform; texts through ``open_clip.get_tokenizer(MODEL)``."""

    has_text = True

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        *,
        name: str,
        cache_dir: str | os.PathLike | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        import open_clip

        self.model_name = model_name
        self.pretrained = pretrained
        self.cache_dir = os.fspath(cache_dir) if cache_dir else None
        pretrained = self._check_available(open_clip, model_name, pretrained)
        if self.dtype not in _OPEN_CLIP_PRECISION:
            raise ValueError(f"open_clip runs in float32, float16 or bfloat16, not {self.dtype}")
        precision = _OPEN_CLIP_PRECISION[self.dtype]
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name,
                pretrained=pretrained,
                precision=precision,
                device=self.device,
                cache_dir=self.cache_dir,
            )
        except (RuntimeError, OSError) as error:
            # open_clip reports a failed download as RuntimeError("Failed to download weights ...").
            if self._hub_file is None or not re.search(r"download|hf hub", str(error), re.IGNORECASE):
                raise
            raise self._missing_error(_first_line(error)) from error
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self._input_dtype = open_clip.get_input_dtype(precision) or torch.float32
        self.dim = getattr(model.visual, "output_dim", None)
        self._tokenizer: Any = None

    def _check_available(self, open_clip: Any, model_name: str, pretrained: str | None) -> str | None:
        """Validate the model/tag/path before anything is built; raise the offline error when weights are absent."""
        self._hub_file: tuple[str, str] | None = None
        if model_name.startswith(("hf-hub:", "local-dir:")):
            schema, _, identifier = model_name.partition(":")
            if schema == "local-dir" and not os.path.isdir(os.path.expanduser(identifier)):
                raise EmbedderNotFoundError(
                    f"embedder {self.name!r}: open_clip folder {identifier} does not exist"
                )
            if schema == "hf-hub":
                self._hub_file = (identifier, "open_clip_config.json")
                if hub_offline() and not _is_cached(identifier, "open_clip_config.json", self.cache_dir):
                    raise self._missing_error()
            return None
        if model_name.replace("/", "-") not in open_clip.list_models():
            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5)
            raise EmbedderSpecError(
                f"embedder {self.name!r}: open_clip has no model {model_name!r}"
                + (f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()")
            )
        if not pretrained:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise EmbedderSpecError(
                f"embedder {self.name!r} names no weights: use 'open_clip:{model_name}:TAG' (tags: "
                f"{', '.join(tags) or 'none'}) or 'open_clip:{model_name}:/path/to/checkpoint.pt'"
            )
        config = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not config:
            path = os.path.expanduser(pretrained)
            if os.path.isfile(path):
                return path
            if _looks_like_path(pretrained) or os.path.exists(path):
                raise EmbedderNotFoundError(
                    f"embedder {self.name!r}: checkpoint file {pretrained} does not exist"
                )
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise EmbedderSpecError(
                f"embedder {self.name!r}: {pretrained!r} is neither a pretrained tag of {model_name} (tags: "
                f"{', '.join(tags) or 'none'}) nor an existing checkpoint file"
            )
        if config.get("file"):
            return pretrained
        if config.get("hf_hub"):
            # open_clip's convention: "org/name/file" names a file, "org/name/" the default weights file.
            repo_id, filename = os.path.split(config["hf_hub"])
            filename = filename or _OPEN_CLIP_WEIGHTS
            self._hub_file = (repo_id, filename)
            candidates = [*_safetensors_alternatives(filename), filename]
            if hub_offline() and not any(_is_cached(repo_id, f, self.cache_dir) for f in candidates):
                raise self._missing_error()
        elif config.get("url") and hub_offline():
            url = config["url"]
            folder = Path(self.cache_dir or "~/.cache/clip").expanduser()
            if not (folder / os.path.basename(url)).is_file():
                raise EmbedderNotFoundError(
                    f"embedder {self.name!r} needs {os.path.basename(url)} in {folder}, and HF_HUB_OFFLINE=1 forbids "
                    f"downloading it: fetch {url} into that folder, or pass a local checkpoint: "
                    f"'open_clip:{model_name}:/path/to/checkpoint.pt'"
                )
        return pretrained

    def _missing_error(self, detail: str = "") -> EmbedderNotFoundError:
        assert self._hub_file is not None
        repo_id, filename = self._hub_file
        reason = "HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline() else "it could not be downloaded"
        alternatives = _safetensors_alternatives(filename)
        files = filename + (f" (or {alternatives[0]})" if alternatives else "")
        command = f"hf download {repo_id} {filename}{_cache_dir_option(self.cache_dir)}"
        local = f"a local checkpoint: 'open_clip:{self.model_name}:/path/to/checkpoint.pt'"
        if filename == "open_clip_config.json":  # the hf-hub: form, a whole open_clip repo
            files = "its open_clip config and weights"
            command = f"hf download {repo_id}{_cache_dir_option(self.cache_dir)}"
            local = "a local copy of the repo: 'open_clip:local-dir:/path/to/folder'"
        message = (
            f"embedder {self.name!r} needs {files} from the Hugging Face repo {repo_id}, which is not in the cache at "
            f"{_hub_cache_location(self.cache_dir)} and {reason}. Fetch it with `{command}`, or pass {local}."
        )
        return EmbedderNotFoundError(message + (f" ({detail})" if detail else ""))

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            import open_clip

            kwargs = {}
            if "cache_dir" in inspect.signature(open_clip.get_tokenizer).parameters:
                kwargs["cache_dir"] = self.cache_dir
            self._tokenizer = open_clip.get_tokenizer(self.model_name, **kwargs)
        return self._tokenizer

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(image) for image in images])
        return self.model.encode_image(pixels.to(self.device, self._input_dtype))

    def _embed_pixel_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = getattr(self.model.visual, "image_mean", None) or OPENAI_CLIP_MEAN
        std = getattr(self.model.visual, "image_std", None) or OPENAI_CLIP_STD
        return self.model.encode_image(_resize_and_normalise(pixels, size, mean, std).to(self._input_dtype))

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face CLIP and DINOv2


class HFCLIPEmbedder(Embedder):
    """A transformers ``CLIPModel`` with its ``CLIPImageProcessor`` and tokenizer: ``hf-clip:org/repo`` (hub cache)
    or ``hf-clip:/local/folder``. Embeddings are the projected image/text features (``get_*_features``)."""

    has_text = True

    def __init__(
        self, source: str, *, name: str, cache_dir: str | os.PathLike | None = None, **options: Any
    ) -> None:
        super().__init__(name, **options)
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        required = ("config.json", "preprocessor_config.json", "tokenizer_config.json")
        source, local = _resolve_hf_source(source, name, cache_dir, required)
        try:
            with _hf_progress_bars(self.progress):
                model = CLIPModel.from_pretrained(source, cache_dir=cache_dir, **_hf_dtype_kwargs(self.dtype))
            self.processor = CLIPImageProcessor.from_pretrained(source, cache_dir=cache_dir)
            self.tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
        except OSError as error:
            if local:
                raise EmbedderNotFoundError(
                    f"embedder {name!r}: {source} is not a complete CLIP folder (config, weights, "
                    f"preprocessor_config.json and tokenizer files): {_first_line(error)}"
                ) from error
            raise _hf_missing_error(name, source, cache_dir, _first_line(error)) from error
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.dim = model.config.projection_dim
        self.max_length = model.config.text_config.max_position_embeddings

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))

    def _embed_pixel_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        crop = self.processor.crop_size or {"height": 224, "width": 224}
        size = (crop["height"], crop["width"])
        x = _resize_and_normalise(pixels, size, self.processor.image_mean, self.processor.image_std)
        return _pooled(self.model.get_image_features(pixel_values=x.to(self.dtype)))

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return _pooled(
            self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
        )


class PixelEmbedder(Embedder):
    """The image itself, area-downsampled to ``size``×``size`` RGB and mean-centred: a weight-free baseline.

    Spec ``pixels:32``. It measures layout and colour variety only, but needs no download, so it is the default
    embedder of the tiny random models and a sanity check beside learned embedders.
    """

    def __init__(
        self, size: str, *, name: str, cache_dir: str | os.PathLike | None = None, **options: Any
    ) -> None:
        try:
            self.size = int(size)
        except ValueError:
            raise EmbedderSpecError(
                f"the pixels embedder takes a size, e.g. 'pixels:32', got {size!r}"
            ) from None
        if self.size < 1:
            raise EmbedderSpecError(f"the pixels embedder's size must be positive, got {self.size}")
        super().__init__(name, **options)
        self.dim = 3 * self.size * self.size

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack(
            [
                torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                for image in images
            ]
        )
        small = F.adaptive_avg_pool2d(pixels, self.size).flatten(1)
        return small - small.mean(dim=1, keepdim=True)

    def _embed_pixel_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        small = F.adaptive_avg_pool2d(pixels.float(), self.size).flatten(1)
        return small - small.mean(dim=1, keepdim=True)


class DINOv2Embedder(Embedder):
    """A transformers DINOv2 model (``dinov2:facebook/dinov2-base`` or a local folder) with its image processor.

    The embedding is the CLS token after the final layer norm (``pooler_output``): DINOv2's global image
    descriptor (the one its k-NN evaluation uses; DreamSim's DINO branch is a CLS token too), not mean-pooled
    patch tokens, which weigh background texture as much as the subject.
    Image only: :meth:`embed_texts` raises :class:`TextNotSupportedError`.
    """

    def __init__(
        self, source: str, *, name: str, cache_dir: str | os.PathLike | None = None, **options: Any
    ) -> None:
        super().__init__(name, **options)
        from transformers import AutoImageProcessor, AutoModel

        source, local = _resolve_hf_source(
            source, name, cache_dir, ("config.json", "preprocessor_config.json")
        )
        try:
            with _hf_progress_bars(self.progress):
                model = AutoModel.from_pretrained(source, cache_dir=cache_dir, **_hf_dtype_kwargs(self.dtype))
            self.processor = AutoImageProcessor.from_pretrained(source, cache_dir=cache_dir)
        except OSError as error:
            if local:
                raise EmbedderNotFoundError(
                    f"embedder {name!r}: {source} is not a complete DINOv2 folder (config, weights and "
                    f"preprocessor_config.json): {_first_line(error)}"
                ) from error
            raise _hf_missing_error(name, source, cache_dir, _first_line(error)) from error
        if not model.config.model_type.startswith("dinov2"):
            raise EmbedderSpecError(
                f"embedder {name!r}: {source} is a {model.config.model_type!r} model, not DINOv2"
            )
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.dim = model.config.hidden_size

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return self.model(pixel_values=pixels.to(self.device, self.dtype)).pooler_output


# ----------------------------------------------------------------------------------------------------------------
# DreamSim


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


# ----------------------------------------------------------------------------------------------------------------
# Registry of spec prefixes

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
