"""The interface every embedder implements (images, and for CLIP-like models texts, in; L2-normalised embeddings
out) and the errors embedders raise."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from conceptspace.embeddings.images import Images, chunks, iter_images
from conceptspace.models import ModelNotFoundError, check_device, default_device, default_dtype

EXAMPLE_SPEC = "open_clip:ViT-B-32:laion2b_s34b_b79k"


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
        total, items = iter_images(images)
        rows: list[torch.Tensor] = []
        bar = tqdm(
            total=total, desc=f"embedding [{self.name}]", unit="img", disable=not self.progress, leave=False
        )
        with bar, torch.inference_mode():
            for batch in chunks(items, batch_size):
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
