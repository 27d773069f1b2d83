"""The testbed's own image embedder: the image tower of the CLIP trained on the shapes world.

``load_embedder("testbed:clip")`` (the ``shapes`` model's default embedder) loads the shipped tower from
``weights/clip_vision/``; ``testbed:clip:/some/folder`` loads another ``CLIPVisionModelWithProjection`` folder (one
that :func:`conceptspace.testbed.train.train_all` wrote). Images are resized to 32×32 and scaled to [-1, 1], as in
training. Image only: the text tower that trained beside it conditions the UNet and is not shipped separately.

``testbed:probe`` is ground truth as an embedding: the probe's reading of shape and colour as a one-hot vector of
the 18 shape×colour classes. Cosine similarity between two images is then 1 when the probe reads the same shape
and colour in both and 0 otherwise, so a commitment curve measured with it (``generate(...,
commitment_embedder=...)``, ``conceptspace trajectory --commitment-embedder testbed:probe``) is the share of
samples whose x̂0 shows the final image's shape and colour.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conceptspace.embeddings import Embedder, EmbedderNotFoundError, EmbedderSpecError
from conceptspace.testbed.data import IMAGE_SIZE, LEVELS

WEIGHTS = Path(__file__).parent / "weights" / "clip_vision"

__all__ = ["ProbeClassEmbedder", "TestbedCLIPEmbedder", "testbed_embedder"]


class TestbedCLIPEmbedder(Embedder):
    """The testbed CLIP's image tower (with its projection): 64-dimensional embeddings."""

    def __init__(
        self,
        folder: str | os.PathLike = WEIGHTS,
        *,
        name: str = "testbed:clip",
        cache_dir: str | os.PathLike | None = None,
        **options: Any,
    ) -> None:
        from transformers import CLIPVisionModelWithProjection

        super().__init__(name, **options)
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise EmbedderNotFoundError(
                f"no CLIPVisionModelWithProjection folder at {folder} (expected config.json and model.safetensors)"
            )
        self.model = CLIPVisionModelWithProjection.from_pretrained(str(folder), torch_dtype=self.dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = self.model.config.projection_dim

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        arrays = [
            np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.float32)
            for image in images
        ]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
        pixels = pixels.to(self.device, self.dtype)
        return self.model(pixel_values=pixels).image_embeds

    def _embed_pixel_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-1] != IMAGE_SIZE or pixels.shape[-2] != IMAGE_SIZE:
            pixels = F.adaptive_avg_pool2d(pixels.float(), IMAGE_SIZE)  # the box filter embed_images uses
        return self.model(pixel_values=(pixels * 2.0 - 1.0).to(self.dtype)).image_embeds


class ProbeClassEmbedder(Embedder):
    """The probe's shape×colour class of each image, one-hot (18 dimensions): see the module docstring."""

    def __init__(
        self, *, name: str = "testbed:probe", cache_dir: str | os.PathLike | None = None, **options: Any
    ):
        from conceptspace.testbed.probe import load_probe

        super().__init__(name, **options)
        self.probe = load_probe().to(self.device)
        self.dim = len(LEVELS["shape"]) * len(LEVELS["colour"])

    def _classes(self, out: dict[str, np.ndarray]) -> torch.Tensor:
        index = torch.from_numpy(out["shape"] * len(LEVELS["colour"]) + out["colour"])
        return F.one_hot(index, self.dim).float()

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        arrays = [
            np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)) for image in images
        ]
        return self._classes(self.probe.predict(np.stack(arrays)))

    def _embed_pixel_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        raise TypeError("testbed:probe reads classes: it has no gradient; use testbed:clip to train against")


def testbed_embedder(argument: str, **options: Any) -> Embedder:
    """Factory for ``testbed:clip``, ``testbed:clip:/folder`` and ``testbed:probe`` (registered with
    :func:`register_embedder`)."""
    kind, _, folder = argument.partition(":")
    if kind == "probe" and not folder:
        return ProbeClassEmbedder(**options)
    if kind != "clip":
        raise EmbedderSpecError(
            f"the testbed offers 'testbed:clip' (or 'testbed:clip:/folder') and 'testbed:probe', not {argument!r}"
        )
    return TestbedCLIPEmbedder(folder or WEIGHTS, **options)
