"""Training of the base UNet: ε-prediction DDPM on the VAE's latents with caption dropout and EMA weights."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conceptspace.testbed.data import FACTORS, Mentions, ShapesDataset
from conceptspace.testbed.model import (
    NUM_TRAIN_TIMESTEPS,
    alphas_cumprod,
    encode_images,
    encode_text,
    load_tokenizer,
    noised,
    tokenize,
    unet_config,
)
from conceptspace.testbed.stage import (
    Checkpoint,
    TrainingLog,
    batch_stream,
    optimizer_step,
    randint,
    randn,
    save_model,
    setup_stage,
    write_stage_log,
)


def train_unet(
    out_dir: str | os.PathLike,
    vae_dir: str | os.PathLike,
    text_encoder_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    caption_dropout: float = 0.1,
    ema_decay: float = 0.995,
    init_from: str | os.PathLike | None = None,
    first_batch: int = 0,
    text_encoder_out: str | os.PathLike | None = None,
    text_lr: float = 3e-4,
    mentions: Mentions | None = None,
    num_threads: int | None = 1,
    device: str | torch.device = "cpu",
    workers: int = 0,
    checkpoint_every: int | None = 250,
    quiet: bool = False,
) -> Path:
    """Train the base ``UNet2DConditionModel`` (ε-prediction DDPM, SD's schedule, caption dropout) and save its
    EMA weights to ``out_dir`` (fp16).

    ``init_from``: continue from a saved UNet folder (a second round with a fresh learning-rate cycle), reading the
    data stream from batch ``first_batch`` on (so no batch is seen twice).

    ``text_encoder_out``: also fine-tune the text encoder through the diffusion loss (learning rate ``text_lr``,
    EMA as the UNet's) and save its EMA weights there (fp16). The contrastive CLIP alone barely separates shape
    words (cosine ≈ 0.999 between "a circle" and "a square" hidden states), so the UNet cannot follow them.
    ``mentions``: caption mention probabilities of the training stream (default :class:`Mentions`).
    ``checkpoint_every``: save the training state that often (None: never); a rerun resumes from it.
    """
    from diffusers import AutoencoderKL

    setup_stage(seed, num_threads)
    device = torch.device(device)
    vae = AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=torch.float32).to(device).eval()
    train_text = text_encoder_out is not None
    text_encoder = _load_text_encoder(text_encoder_dir, device, trainable=train_text)
    tokenizer = load_tokenizer(tokenizer_dir)
    unet = _initial_unet(init_from, device)
    models = torch.nn.ModuleList([unet, text_encoder] if train_text else [unet])
    ema = copy.deepcopy(models).eval().requires_grad_(False)
    opt, sched = _optimizer(unet, text_encoder if train_text else None, lr, text_lr, steps)
    alphas = alphas_cumprod().to(device)
    data = ShapesDataset(batch_size, seed=seed * 1000 + 4, mentions=mentions)
    gen = torch.Generator().manual_seed(seed + first_batch)
    rng = np.random.default_rng([seed, first_batch])
    log = TrainingLog("unet", steps, quiet=quiet)
    checkpoint = Checkpoint(out_dir, checkpoint_every)
    stateful = {"models": models, "ema": ema, "opt": opt, "sched": sched}
    done = checkpoint.resume(stateful, gen, rng, log)
    batches = batch_stream(data, first_batch + done, steps - done, workers)
    for step, (images, batch_captions) in enumerate(batches, start=done):
        texts = ["" if rng.random() < caption_dropout else c for c in batch_captions]
        x0 = encode_images(vae, images.to(device))
        if train_text:
            cond = text_encoder(tokenize(tokenizer, texts).to(device))[0]
        else:
            cond = encode_text(text_encoder, tokenizer, texts)
        loss = _denoising_loss(unet, x0, cond, alphas, gen)
        optimizer_step(opt, loss, models.parameters())
        sched.step()
        # a fresh UNet's EMA warms up; a continued one's is already an average
        decay = ema_decay if init_from is not None else min(ema_decay, (1 + step) / (10 + step))
        _update_ema(ema, models, decay)
        log(step, loss=loss.item())
        checkpoint.save_if_due(step, steps, stateful, gen, rng, log)
    if train_text:
        save_model(ema[1].eval(), text_encoder_out)
    out_dir = save_model(ema[0], out_dir)
    write_stage_log(
        out_dir,
        "unet",
        seed,
        steps,
        log,
        caption_dropout=caption_dropout,
        ema_decay=ema_decay,
        lr=lr,
        init_from=str(init_from) if init_from is not None else None,
        first_batch=first_batch,
        text_encoder_out=str(text_encoder_out) if text_encoder_out is not None else None,
        text_lr=text_lr if train_text else None,
        mentions=None
        if mentions is None
        else {n: float(v) for n, v in zip(FACTORS, mentions.probabilities(), strict=True)},
    )
    checkpoint.remove()
    return out_dir


def _load_text_encoder(text_encoder_dir: str | os.PathLike, device: torch.device, *, trainable: bool) -> Any:
    """The CLIP text tower, fine-tuned with the UNet (train mode, with gradients) or frozen (eval mode, without)."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(str(text_encoder_dir), torch_dtype=torch.float32)
    text_encoder.to(device).eval()
    text_encoder.requires_grad_(trainable)
    return text_encoder.train(trainable)


def _initial_unet(init_from: str | os.PathLike | None, device: torch.device) -> Any:
    """The UNet to train: a saved one to continue, or a fresh one from :func:`unet_config` (global torch seed)."""
    from diffusers import UNet2DConditionModel

    if init_from is not None:
        unet = UNet2DConditionModel.from_pretrained(str(init_from), torch_dtype=torch.float32)
    else:
        unet = UNet2DConditionModel(**unet_config())
    return unet.to(device).train()


def _optimizer(
    unet: Any, text_encoder: Any | None, lr: float, text_lr: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW on the UNet (and, when given, the text encoder's trainable weights at ``text_lr``) under one
    learning-rate cycle over ``steps``."""
    groups = [{"params": list(unet.parameters()), "lr": lr}]
    if text_encoder is not None:
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad], "lr": text_lr})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    max_lr = [g["lr"] for g in groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.03)
    return opt, sched


def _denoising_loss(
    unet: Any, x0: torch.Tensor, cond: torch.Tensor, alphas: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """ε-prediction loss at a uniformly drawn timestep per latent."""
    t = randint(0, NUM_TRAIN_TIMESTEPS, len(x0), gen, x0.device)
    noise = randn(x0.shape, gen, x0.device)
    xt = noised(x0, alphas[t].view(-1, 1, 1, 1), noise)
    return F.mse_loss(unet(xt, t, cond).sample, noise)


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, models: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), models.parameters(), strict=True):
        pe.lerp_(p, 1 - decay)
