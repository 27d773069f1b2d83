"""Training of the testbed's miniature Stable Diffusion and its DMD2-style 4-step student, from a seed.

One function per stage, each taking a seed, a step budget and an output folder, logging its loss and saving
atomically in diffusers / transformers folder format (safetensors):

1. :func:`train_vae`: a tiny ``AutoencoderKL`` (32×32×3 → 32×32×4), reconstruction + small KL; its
   ``scaling_factor`` is set afterwards so that scaled latents have unit standard deviation (as SD's 0.18215).
2. :func:`train_clip`: a tiny ``CLIPModel`` trained contrastively on images and captions. Its text tower
   (``CLIPTextModel``) conditions the UNet; its image tower (``CLIPVisionModelWithProjection``) is kept as the
   testbed's image embedder.
3. :func:`train_unet`: a tiny ``UNet2DConditionModel`` with cross-attention, ε-prediction DDPM on the VAE's latent
   means with SD's 1000-step ``scaled_linear`` betas (0.00085 → 0.012) and 10% caption dropout (for CFG).
4. :func:`distill_dmd`: a DMD-style 4-step student at timesteps [999, 749, 499, 249], initialised from the base
   UNet: distribution-matching loss (a fake-score UNet trained online on the student's samples against the
   teacher's CFG score), a regression loss on a small fixed set of teacher noise → latent pairs, and backward
   simulation (each of the 4 steps trains on inputs made by the student's own earlier steps).

:func:`train_all` runs the four stages and assembles ``out_dir/shapes/`` (a ``StableDiffusionPipeline`` folder) and
``out_dir/dmd/unet/`` (the student UNet), plus ``out_dir/clip_vision/``. Run it as
``python -m conceptspace.testbed.train OUT_DIR --seed 0``. Training is meant for one CPU core
(``num_threads=1``); every stage is deterministic given its seed and thread count.

This module runs the stages, assembles the pipeline and is the command line; it re-exports the stages and configs
from where they live: :mod:`~conceptspace.testbed.encoders` (VAE, CLIP), :mod:`~conceptspace.testbed.base_unet`,
:mod:`~conceptspace.testbed.dmd`, :mod:`~conceptspace.testbed.model` (configs, schedule, tokenizer) and
:mod:`~conceptspace.testbed.stage` (logging, checkpoints, saving).
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from conceptspace.io import atomic_write_folder
from conceptspace.testbed.base_unet import train_unet
from conceptspace.testbed.dmd import distill_dmd, teacher_latents
from conceptspace.testbed.encoders import split_clip, train_clip, train_vae
from conceptspace.testbed.model import (
    BETA_END,
    BETA_START,
    DMD_TIMESTEPS,
    MAX_TOKENS,
    clip_config,
    load_tokenizer,
    scheduler_config,
    unet_config,
    vae_config,
    write_tokenizer,
)

# constants outside __all__, kept importable from here
from conceptspace.testbed.model import LATENT_CHANNELS as LATENT_CHANNELS
from conceptspace.testbed.model import LATENT_SIZE as LATENT_SIZE
from conceptspace.testbed.model import NUM_TRAIN_TIMESTEPS as NUM_TRAIN_TIMESTEPS
from conceptspace.testbed.model import TEXT_HIDDEN as TEXT_HIDDEN
from conceptspace.testbed.stage import TrainingLog as TrainingLog  # tests patch its logging

__all__ = [
    "BETA_END",
    "BETA_START",
    "DEFAULT_BUDGET",
    "DEFAULT_RECIPE",
    "DMD_TIMESTEPS",
    "MAX_TOKENS",
    "assemble_pipeline",
    "clip_config",
    "distill_dmd",
    "load_tokenizer",
    "scheduler_config",
    "split_clip",
    "teacher_latents",
    "train_all",
    "train_clip",
    "train_unet",
    "train_vae",
    "unet_config",
    "vae_config",
    "write_tokenizer",
]


# -------------------------------------------------------------------------------------------------- assembling
def assemble_pipeline(out_dir: str | os.PathLike, parts: Path, unet: str = "unet") -> Path:
    """Assemble the ``StableDiffusionPipeline`` folder from the trained parts (vae, text_encoder, tokenizer,
    unet) with SD's Euler scheduler; safety checker and feature extractor null."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(str(parts / "vae"), torch_dtype=torch.float16),
        text_encoder=CLIPTextModel.from_pretrained(str(parts / "text_encoder"), torch_dtype=torch.float16),
        tokenizer=load_tokenizer(parts / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(str(parts / unet), torch_dtype=torch.float16),
        scheduler=EulerDiscreteScheduler(**scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )

    def save(tmp: Path) -> None:
        pipe.save_pretrained(tmp, safe_serialization=True)
        # ship the slow tokenizer's files (vocab.json + merges.txt: 1.5 MB) instead of tokenizer.json (3.5 MB)
        shutil.rmtree(tmp / "tokenizer")
        shutil.copytree(parts / "tokenizer", tmp / "tokenizer")

    return atomic_write_folder(out_dir, save)


DEFAULT_BUDGET = {"vae": 1000, "clip": 2000, "unet": 3000, "dmd": 800}
"""Steps per stage of the shipped weights."""

DEFAULT_RECIPE = {
    "text_lr": 0.0,
    "num_pairs": 8,
    "regression_weight": 0.25,
    "fake_updates": 1,
    "gan_weight": 0.0,
}
"""Options of the shipped weights: ``text_lr`` fine-tunes the text encoder with the UNet (0: frozen);
``num_pairs`` and ``regression_weight`` set the student's regression anchor (0: distribution matching alone);
``fake_updates`` fake-score updates per student update (DMD2's two time-scale rule: 5); ``gan_weight`` DMD2's GAN
term (0: off; DMD2's SDXL setting: 5e-3)."""


def train_all(
    out_dir: str | os.PathLike,
    seed: int = 0,
    budget: dict[str, int] | None = None,
    recipe: dict[str, float] | None = None,
    *,
    num_threads: int | None = 1,
    device: str | torch.device = "cpu",
    workers: int = 0,
    stop_after: str | None = None,
    quiet: bool = False,
) -> Path:
    """Run every stage (skipping those whose output already exists: resumable) and assemble
    ``out_dir/shapes/`` (pipeline), ``out_dir/dmd/unet/`` (student) and ``out_dir/clip_vision/`` (embedder).
    Intermediate parts live in ``out_dir/parts/``. ``budget``/``recipe`` override :data:`DEFAULT_BUDGET` and
    :data:`DEFAULT_RECIPE`; ``workers`` processes render training batches ahead of a GPU. ``stop_after`` a stage
    ("vae", "clip", "unet") ends there, so that several recipes can share the stages before they differ."""
    budget = {**DEFAULT_BUDGET, **(budget or {})}
    recipe = {**DEFAULT_RECIPE, **(recipe or {})}
    unknown = set(budget) - set(DEFAULT_BUDGET) | set(recipe) - set(DEFAULT_RECIPE)
    if unknown:
        raise ValueError(f"unknown training options {sorted(unknown)}")
    if stop_after not in (None, *DEFAULT_BUDGET):
        raise ValueError(f"stop_after must be one of {', '.join(DEFAULT_BUDGET)}, got {stop_after!r}")
    out_dir = Path(out_dir)
    parts = out_dir / "parts"
    common = dict(seed=seed, num_threads=num_threads, device=device, quiet=quiet)
    if not (parts / "tokenizer").exists():
        write_tokenizer(parts / "tokenizer")
    if not (parts / "vae").exists():
        train_vae(parts / "vae", steps=budget["vae"], workers=workers, **common)
    if stop_after == "vae":
        return out_dir
    if not (parts / "clip").exists():
        train_clip(parts / "clip", parts / "tokenizer", steps=budget["clip"], workers=workers, **common)
    if not (parts / "clip_text").exists():
        split_clip(parts / "clip", parts / "clip_text", out_dir / "clip_vision")
    if stop_after == "clip":
        return out_dir
    train_text = recipe["text_lr"] > 0
    if not (parts / "unet").exists():
        train_unet(
            parts / "unet",
            parts / "vae",
            parts / "clip_text",
            parts / "tokenizer",
            steps=budget["unet"],
            batch_size=128,
            text_encoder_out=parts / "text_encoder" if train_text else None,
            text_lr=recipe["text_lr"],
            workers=workers,
            **common,
        )
    if not train_text and not (parts / "text_encoder").exists():
        shutil.copytree(parts / "clip_text", parts / "text_encoder")
    if not (out_dir / "shapes").exists():
        assemble_pipeline(out_dir / "shapes", parts, "unet")
    if stop_after == "unet":
        return out_dir
    if not (out_dir / "dmd" / "unet").exists():
        distill_dmd(
            out_dir / "dmd" / "unet",
            out_dir / "shapes",
            steps=budget["dmd"],
            num_pairs=int(recipe["num_pairs"]),
            regression_weight=recipe["regression_weight"],
            fake_updates=int(recipe["fake_updates"]),
            gan_weight=recipe["gan_weight"],
            **common,
        )
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    for stage, steps in DEFAULT_BUDGET.items():
        parser.add_argument(f"--{stage}-steps", type=int, default=steps)
    for name, value in DEFAULT_RECIPE.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--stop-after", choices=list(DEFAULT_BUDGET))
    args = parser.parse_args(argv)
    budget = {stage: getattr(args, f"{stage}_steps") for stage in DEFAULT_BUDGET}
    recipe = {name: getattr(args, name) for name in DEFAULT_RECIPE}
    train_all(
        args.out_dir,
        args.seed,
        budget,
        recipe,
        num_threads=args.threads,
        device=args.device,
        workers=args.workers,
        stop_after=args.stop_after,
    )


if __name__ == "__main__":
    main()
