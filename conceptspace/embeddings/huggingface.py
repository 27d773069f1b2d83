"""transformers models as embedders: CLIP (``hf-clip:``, images and texts) and DINOv2 (``dinov2:``, images only),
from the hub cache or a local folder, across transformers 4.x and 5."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from collections.abc import Iterator
from typing import Any

import torch
from PIL import Image

from conceptspace.embeddings.base import Embedder, EmbedderNotFoundError, EmbedderSpecError
from conceptspace.embeddings.hub import hf_missing_error, resolve_hf_source
from conceptspace.embeddings.images import resize_and_normalise
from conceptspace.io import first_line

# ----------------------------------------------------------------------------------------------------------------
# transformers versions


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


# ----------------------------------------------------------------------------------------------------------------
# embedders


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
        source, local = resolve_hf_source(source, name, cache_dir, required)
        try:
            with _hf_progress_bars(self.progress):
                model = CLIPModel.from_pretrained(source, cache_dir=cache_dir, **_hf_dtype_kwargs(self.dtype))
            self.processor = CLIPImageProcessor.from_pretrained(source, cache_dir=cache_dir)
            self.tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
        except OSError as error:
            if local:
                raise EmbedderNotFoundError(
                    f"embedder {name!r}: {source} is not a complete CLIP folder (config, weights, "
                    f"preprocessor_config.json and tokenizer files): {first_line(error)}"
                ) from error
            raise hf_missing_error(name, source, cache_dir, first_line(error)) from error
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.dim = model.config.projection_dim
        self.max_length = model.config.text_config.max_position_embeddings

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))

    def _embed_pixel_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        crop = self.processor.crop_size or {"height": 224, "width": 224}
        size = (crop["height"], crop["width"])
        x = resize_and_normalise(pixels, size, self.processor.image_mean, self.processor.image_std)
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

        source, local = resolve_hf_source(
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
                    f"preprocessor_config.json): {first_line(error)}"
                ) from error
            raise hf_missing_error(name, source, cache_dir, first_line(error)) from error
        if not model.config.model_type.startswith("dinov2"):
            raise EmbedderSpecError(
                f"embedder {name!r}: {source} is a {model.config.model_type!r} model, not DINOv2"
            )
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.dim = model.config.hidden_size

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return self.model(pixel_values=pixels.to(self.device, self.dtype)).pooler_output
