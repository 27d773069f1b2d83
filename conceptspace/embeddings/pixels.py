"""The weight-free pixels embedder (``pixels:32``): the image itself, downsampled and mean-centred."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conceptspace.embeddings.base import Embedder, EmbedderSpecError


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
