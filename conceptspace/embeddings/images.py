"""What embedders take as images: any accepted batch turned into 8-bit RGB PIL images (the format each model's own
preprocessing was built for), and a differentiable CLIP-style preprocessing of pixel tensors."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ImageLike = Image.Image | np.ndarray | torch.Tensor | str | os.PathLike
"""One image: a PIL image, an ``(H, W, C)`` array, a ``(C, H, W)`` tensor, or a path to an image file."""
Images = ImageLike | Iterable[ImageLike]
"""A batch of images: one image, an ``(N, H, W, C)`` array, an ``(N, C, H, W)`` tensor, or an iterable of images."""

_FLOAT_RANGE_TOLERANCE = 1e-3
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------------------------
# PIL images from any input


def iter_images(images: Images) -> tuple[int | None, Iterator[Image.Image]]:
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


def chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to ``size`` items, in order, until ``items`` runs out."""
    while batch := list(itertools.islice(items, size)):
        yield batch


# ----------------------------------------------------------------------------------------------------------------
# pixel tensors, differentiably


def resize_and_normalise(
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
