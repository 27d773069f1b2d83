"""Training of the tiny ``AutoencoderKL`` and ``CLIPModel``: the pipeline's VAE and text encoder, and the testbed's
image embedder."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from conceptspace.io import atomic_write_folder
from conceptspace.testbed.data import ShapesDataset
from conceptspace.testbed.model import clip_config, load_tokenizer, tokenize, vae_config
from conceptspace.testbed.stage import (
    TrainingLog,
    batch_stream,
    optimizer_step,
    randn,
    save_model,
    setup_stage,
    write_stage_log,
)


# ---------------------------------------------------------------------------------------------------------- VAE
def train_vae(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int = 800,
    batch_size: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    num_threads: int | None = 1,
    device: str | torch.device = "cpu",
    workers: int = 0,
    quiet: bool = False,
) -> Path:
    """Train the tiny ``AutoencoderKL`` and save it to ``out_dir`` (fp16 safetensors + config)."""
    from diffusers import AutoencoderKL

    setup_stage(seed, num_threads)
    device = torch.device(device)
    vae = AutoencoderKL(**vae_config()).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    data = ShapesDataset(batch_size, seed=seed * 1000 + 1)
    gen = torch.Generator().manual_seed(seed)
    log = TrainingLog("vae", steps, quiet=quiet)
    for step, (x, _) in enumerate(batch_stream(data, 0, steps, workers)):
        x = x.to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * randn(posterior.mean.shape, gen, device)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + kl_weight * kl * x[0].numel()
        optimizer_step(opt, loss, vae.parameters())
        sched.step()
        log(step, loss=loss.item(), rec=rec.item(), kl=kl.item())
    vae.eval()
    with torch.no_grad():
        held = ShapesDataset(256, seed=seed * 1000 + 2, device=device)
        z = torch.cat([vae.encode(held.batch(i).images).latent_dist.mode() for i in range(4)])
        scaling = float(1.0 / z.std())
        x = held.batch(4).images
        mse = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mode()).sample, x).item()
    vae.register_to_config(scaling_factor=scaling)
    out_dir = save_model(vae, out_dir)
    write_stage_log(out_dir, "vae", seed, steps, log, scaling_factor=scaling, heldout_mse=mse)
    return out_dir


# --------------------------------------------------------------------------------------------------------- CLIP
def train_clip(
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 2e-3,
    num_threads: int | None = 1,
    device: str | torch.device = "cpu",
    workers: int = 0,
    quiet: bool = False,
) -> Path:
    """Train the tiny ``CLIPModel`` contrastively and save it whole (fp32) to ``out_dir``.

    Captions repeat within a batch ("a red shape" twice), so the contrastive targets spread each row's mass over
    all images whose caption is identical, instead of calling all but one of them wrong.

    :func:`split_clip` turns it into the pipeline's ``text_encoder`` and the testbed's image embedder.
    """
    from transformers import CLIPModel

    setup_stage(seed, num_threads)
    device = torch.device(device)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = CLIPModel(clip_config()).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    data = ShapesDataset(batch_size, seed=seed * 1000 + 3)
    log = TrainingLog("clip", steps, quiet=quiet)
    labels = torch.arange(batch_size, device=device)
    for step, (images, texts) in enumerate(batch_stream(data, 0, steps, workers)):
        ids = tokenize(tokenizer, texts)
        out = model(input_ids=ids.to(device), pixel_values=images.to(device), return_dict=True)
        logits = out.logits_per_image
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float().to(device)
        targets = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        optimizer_step(opt, loss, model.parameters())
        sched.step()
        acc = (logits.argmax(1) == labels).float().mean()
        log(step, loss=loss.item(), acc=acc.item(), scale=model.logit_scale.exp().item())
    model.eval().cpu()
    out_dir = atomic_write_folder(out_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))
    write_stage_log(out_dir, "clip", seed, steps, log)
    return out_dir


def split_clip(
    clip_dir: str | os.PathLike, text_dir: str | os.PathLike, vision_dir: str | os.PathLike
) -> None:
    """Save the text tower as a ``CLIPTextModel`` (the pipeline's text encoder, fp16) and the image tower with its
    projection as a ``CLIPVisionModelWithProjection`` (the testbed's image embedder, fp16)."""
    from transformers import CLIPModel, CLIPTextModel, CLIPVisionModelWithProjection

    clip = CLIPModel.from_pretrained(str(clip_dir))
    text = CLIPTextModel(clip.config.text_config)
    state = clip.state_dict()
    text_keys = set(text.state_dict())
    text.load_state_dict(
        {k: state[k] for k in text_keys if k in state}
        | {k: state[f"text_model.{k}"] for k in text_keys if k not in state}
    )
    vision = CLIPVisionModelWithProjection(clip.config.vision_config)
    vision.load_state_dict({k: state[k] for k in vision.state_dict()})
    save_model(text.eval(), text_dir)
    save_model(vision.eval(), vision_dir)
