"""Sampling passes too large to hold at once (SliderSpace's discover and activation sample hundreds to thousands
of images): sampled and embedded in chunks of :data:`CHUNK`, each chunk saved as it finishes, so memory stays flat
for any n and an interrupted pass resumes where it stopped."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from conceptspace.generate import Interrupted
from conceptspace.io import atomic_write, image_name, write_image
from conceptspace.models import ModelPair
from conceptspace.sampling import Regime, sample

__all__ = ["CHUNK", "PARTIAL_DIR", "SampledPass", "finish_pass", "sample_and_embed"]

CHUNK = 64  # images sampled and embedded at a time, so memory stays flat for any n


PARTIAL_DIR = "partial"
"""The chunks of an unfinished sampling pass (discover, activation), each saved as it finishes: the same command
resumes from them; the folder goes once the pass is done."""


@dataclass
class SampledPass:
    """What one sampling pass made: final latents, unit embeddings, the records of the images it wrote and, in a
    known world, what the probe read in every image."""

    latents: torch.Tensor
    embeddings: np.ndarray
    images: list[dict[str, Any]]
    readings: list[dict[str, np.ndarray]]


def sample_and_embed(
    pair: ModelPair,
    prompt: str,
    regime: Regime,
    seeds: Sequence[int],
    embedder: Any,
    out: Path,
    *,
    batch_size: int,
    keep_images: int,
    progress: bool,
    desc: str,
    read: Callable[[list[Any]], dict[str, np.ndarray]] | None = None,
) -> SampledPass:
    """Sample ``regime`` for ``seeds`` in chunks of :data:`CHUNK` (memory stays flat for any n), embed each chunk,
    write its first ``keep_images`` images to ``out/<regime>/`` and save the chunk in ``out/partial/``; ``read``
    (a probe) reads each chunk's images. A chunk an interrupted run saved with the same key (pair, regime, prompt,
    embedder, seeds) is loaded instead of sampled again."""
    from safetensors.torch import save_file

    key = json.dumps(
        {"base": pair.base.name, "student": pair.student.name if pair.student else None, "prompt": prompt,
         "regime": regime.describe(), "embedder": embedder.name},
        default=str, sort_keys=True,
    )  # fmt: skip
    chunks: list[dict[str, torch.Tensor]] = []
    bar = tqdm(total=len(seeds), desc=desc, unit="img", disable=not progress, leave=False)
    with bar, _kept_on_interrupt(chunks, len(seeds), regime.name, out / PARTIAL_DIR):
        for start in range(0, len(seeds), CHUNK):
            chunk = list(seeds[start : start + CHUNK])
            path = out / PARTIAL_DIR / f"{_safe(regime.name)}-{start // CHUNK:05d}.safetensors"
            saved = _saved_chunk(path, key, chunk)
            if saved is None:
                result = sample(pair, prompt, regime, chunk, batch_size=batch_size, progress=False)
                saved = {
                    "latents": result.latents.to(torch.float16).contiguous(),
                    "embeddings": embedder.embed_images(result.images).double().contiguous(),
                    "seeds": torch.tensor(chunk, dtype=torch.int64),
                    **({f"reading.{k}": torch.from_numpy(v) for k, v in read(result.images).items()} if read else {}),
                }  # fmt: skip
                for seed, image in list(zip(chunk, result.images, strict=True))[
                    : max(0, keep_images - start)
                ]:
                    write_image(out / regime.name / image_name(0, seed), image)
                atomic_write(path, lambda tmp, saved=saved: save_file(saved, str(tmp), metadata={"key": key}))
            chunks.append(saved)
            bar.update(len(chunk))
    return SampledPass(
        latents=torch.cat([chunk["latents"] for chunk in chunks]),
        embeddings=np.concatenate([chunk["embeddings"].numpy() for chunk in chunks]),
        images=[
            {"prompt": prompt, "seed": seed, "path": f"{regime.name}/{image_name(0, seed)}"}
            for seed in list(seeds)[:keep_images]
        ],
        readings=[
            {k[8:]: v.numpy() for k, v in chunk.items() if k.startswith("reading.")} for chunk in chunks
        ],
    )


@contextlib.contextmanager
def _kept_on_interrupt(
    chunks: list[dict[str, torch.Tensor]], total: int, regime: str, folder: Path
) -> Iterator[None]:
    """Ctrl-C becomes :class:`Interrupted`, saying how many samples the saved chunks keep."""
    try:
        yield
    except KeyboardInterrupt:
        kept = sum(len(chunk["seeds"]) for chunk in chunks)
        raise Interrupted(
            f"interrupted: kept {kept} of {total} samples of {regime} in {folder} (each finished chunk of {CHUNK}); "
            "the same command resumes from them"
        ) from None


def _saved_chunk(path: Path, key: str, seeds: list[int]) -> dict[str, torch.Tensor] | None:
    """The chunk an earlier run saved at ``path`` for this key and these seeds (its images written), or None."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("key") != key:
                return None
        saved = load_file(str(path))
    except (OSError, ValueError, RuntimeError):
        return None  # absent, or cut short
    return saved if saved["seeds"].tolist() == seeds else None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def finish_pass(out: Path) -> None:
    """The pass's results are written: its saved chunks are no longer needed."""
    import shutil

    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
