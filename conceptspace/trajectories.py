"""x̂0 trajectories: strips of what the model believes the final image is at each step, and commitment curves
(how similar each step's x̂0 already is to the final image).

The paper's claim 4: a distilled model's first-step x̂0 already looks like its final image, while a base model
commits gradually. ``commitment_curve`` measures it with a pluggable similarity; the default (latent
correlation) needs no downloads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from conceptspace.models import ModelPair
from conceptspace.sampling import decode

if TYPE_CHECKING:
    from PIL import Image


def latent_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two batches of latents, per sample (1 = same structure up to scale and offset)."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def commitment_curve(
    trajectory: torch.Tensor,
    final: torch.Tensor | None = None,
    similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = latent_correlation,
) -> np.ndarray:
    """Similarity of each step's x̂0 to the final image, shape (n_samples, n_steps).

    ``trajectory`` is ``SampleResult.trajectory`` (n, steps, C, H, W); ``final`` defaults to its last step.
    ``similarity(a, b)`` maps two (n, ...) batches to n scores; the default needs no downloads (latent
    correlation); pass e.g. a DreamSim- or CLIP-based one on decoded images instead.
    """
    final = trajectory[:, -1] if final is None else final
    return np.stack(
        [similarity(trajectory[:, s], final).cpu().numpy() for s in range(trajectory.shape[1])], axis=1
    )


def steps_to_commit(curve: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Per sample, the fraction of steps run before similarity to the final image first reaches ``threshold``."""
    reached = curve >= threshold
    first = np.where(reached.any(1), reached.argmax(1), curve.shape[1] - 1)
    return (first + 1) / curve.shape[1]


def at_timestep(curve: Sequence[dict[str, Any]], timestep: float) -> dict[str, Any] | None:
    """The row of a per-step curve whose ``timestep`` is nearest ``timestep`` (the base's x̂0 at the student's t)."""
    timed = [row for row in curve if row.get("timestep") is not None]
    return min(timed, key=lambda row: abs(float(row["timestep"]) - float(timestep)), default=None)


def decode_trajectory(pair: ModelPair, trajectory: torch.Tensor, *, batch_size: int = 8) -> torch.Tensor:
    """Decode x̂0 latents (n, steps, C, H, W) to images (n, steps, 3, H', W') in [0, 1]."""
    n, steps = trajectory.shape[:2]
    flat = trajectory.flatten(0, 1)
    images = [
        decode(pair, flat[i : i + batch_size], output_type="pt").cpu()
        for i in range(0, len(flat), batch_size)
    ]
    return torch.cat(images).view(n, steps, *images[0].shape[1:])


def embedding_commitment(decoded: torch.Tensor, embedder: Any) -> np.ndarray:
    """Commitment measured by an image embedder (``conceptspace.embeddings``): cosine similarity of each step's
    decoded x̂0 to the final image in the embedder's space, shape (n_samples, n_steps).

    ``decoded`` is :func:`decode_trajectory`'s output (n, steps, 3, H, W) in [0, 1]; each image is embedded once.
    """
    n, steps = decoded.shape[:2]
    vectors = embedder.embed_images(decoded.flatten(0, 1)).view(n, steps, -1)
    return (vectors * vectors[:, -1:]).sum(-1).numpy()


def trajectory_strip(images: torch.Tensor, *, thumbnail: int | None = 256) -> Image.Image:
    """One sample's decoded x̂0 images (steps, 3, H, W) side by side, steps left to right."""
    from PIL import Image

    steps, _, height, width = images.shape
    if thumbnail is not None and height > thumbnail:
        images = torch.nn.functional.interpolate(
            images, size=(thumbnail, thumbnail * width // height), mode="bilinear", antialias=True
        )
        height, width = images.shape[-2:]
    row = images.clamp(0, 1).permute(2, 0, 3, 1).reshape(height, steps * width, 3)
    return Image.fromarray((row.numpy() * 255).round().astype(np.uint8))
