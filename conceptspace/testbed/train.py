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
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conceptspace.io import write_json
from conceptspace.testbed.data import FACTORS, Mentions, ShapesDataset, captions, make_batch

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

BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS = 0.00085, 0.012, 1000
DMD_TIMESTEPS = (999, 749, 499, 249)
MAX_TOKENS = 16
"""Token positions of the text encoder and ``model_max_length`` of the tokenizer (the longest caption has 14)."""
TEXT_HIDDEN = 64
LATENT_CHANNELS, LATENT_SIZE = 4, 32
"""The latent is 32×32×4 (4,096 numbers): enough that a step at t = 999 already sees the object (docs/testbed.md)."""


# ------------------------------------------------------------------------------------------------------ configs
def vae_config() -> dict[str, Any]:
    """32×32×3 → 32×32×4: one level, no downsampling, no attention (see docs/testbed.md, "Why 32×32 latents")."""
    return dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        mid_block_add_attention=False,
    )


def clip_config() -> Any:
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=64,
    )
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_act="quick_gelu",
        projection_dim=64,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64)


def unet_config() -> dict[str, Any]:
    """Four levels (32, 16, 8, 4 positions); cross-attention only at 8×8 and 4×4, where it is cheap."""
    return dict(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def scheduler_config() -> dict[str, Any]:
    """Stable Diffusion's training/inference schedule (the ``EulerDiscreteScheduler`` config SD ships)."""
    return dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
    )


def _alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


# ------------------------------------------------------------------------------------------------------ helpers
class _Log:
    """Loss logging: a line every ``every`` steps (stdout, flushed) and the full history for the stage's json."""

    def __init__(self, stage: str, steps: int, every: int = 50, quiet: bool = False) -> None:
        self.stage, self.steps, self.every, self.quiet = stage, steps, every, quiet
        self.history: list[dict[str, float]] = []
        self.start = time.perf_counter()
        self.before = 0.0  # seconds spent before a resume
        self._acc: dict[str, list[float]] = {}

    def __call__(self, step: int, **losses: float) -> None:
        for k, v in losses.items():
            self._acc.setdefault(k, []).append(float(v))
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            row = {"step": step + 1, "seconds": round(self.seconds, 1)}
            row.update({k: float(np.mean(v)) for k, v in self._acc.items()})
            self.history.append(row)
            self._acc = {}
            if not self.quiet:
                text = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step", "seconds"))
                print(f"[{self.stage}] step {step + 1}/{self.steps} {row['seconds']}s {text}", flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start + self.before

    def state(self) -> dict[str, Any]:
        return {"history": self.history, "seconds": self.seconds}

    def restore(self, state: dict[str, Any]) -> None:
        self.history, self.before = state["history"], state["seconds"]


def _save_atomic(out_dir: str | os.PathLike, save: Callable[[Path], None]) -> Path:
    """Write a folder through ``save(tmp)`` then rename it into place (an old folder is replaced)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _save_model(model: Any, out_dir: str | os.PathLike, *, fp16: bool = True) -> Path:
    model = copy.deepcopy(model).to("cpu", torch.float16 if fp16 else torch.float32)
    return _save_atomic(out_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))


def _write_stage_log(out_dir: Path, stage: str, seed: int, steps: int, log: _Log, **extra: Any) -> None:
    write_json(
        out_dir / "training_log.json",
        {
            "stage": stage,
            "seed": seed,
            "steps": steps,
            "seconds": round(log.seconds, 1),
            **extra,
            "history": log.history,
        },
    )


class _Checkpoint:
    """A stage's training state every ``every`` steps, beside its output folder, so a killed stage resumes.

    Saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``: state dicts, generator states
    and the log history only. Resuming continues the same data stream and random draws, so a resumed stage gives
    the same weights as an uninterrupted one. The file is removed when the stage's output is saved.
    """

    def __init__(self, out_dir: str | os.PathLike, every: int | None) -> None:
        out_dir = Path(out_dir)
        self.path = out_dir.parent / f".{out_dir.name}.checkpoint.pt"
        self.every = every

    def load(self) -> dict[str, Any] | None:
        if not self.every or not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def due(self, step: int, steps: int) -> bool:
        return bool(self.every) and (step + 1) % self.every == 0 and step + 1 < steps

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _rng_state(gen: torch.Generator, rng: np.random.Generator) -> dict[str, Any]:
    return {"gen": gen.get_state(), "rng": json.dumps(rng.bit_generator.state)}


def _restore_rng(state: dict[str, Any], gen: torch.Generator, rng: np.random.Generator) -> None:
    gen.set_state(state["gen"])
    rng.bit_generator.state = json.loads(state["rng"])


def _setup(seed: int, num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)


def _randn(shape: Sequence[int], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Normal noise drawn on the CPU generator, then moved: the same numbers on every device."""
    return torch.randn(tuple(shape), generator=gen).to(device)


def _randint(low: int, high: int, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=gen).to(device)


class _BatchRange(torch.utils.data.Dataset):
    """Batches ``first … first + count − 1`` of a :class:`ShapesDataset`, for a prefetching ``DataLoader``."""

    def __init__(self, data: ShapesDataset, first: int, count: int) -> None:
        self.data, self.first, self.count = data, first, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str]]:
        batch = self.data.batch(self.first + index)
        return batch.images, batch.captions


def _batches(data: ShapesDataset, first: int, count: int, workers: int) -> Any:
    """``(images, captions)`` of batches ``first …`` in order; rendered by ``workers`` processes ahead of the
    training loop (0: in the loop). Each batch is a function of its index, so the stream is the same either way."""
    return torch.utils.data.DataLoader(
        _BatchRange(data, first, count),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=8 if workers else None,
        persistent_workers=False,
    )


def write_tokenizer(out_dir: str | os.PathLike) -> Path:
    """The real CLIP BPE tokenizer (49408 tokens) with ``model_max_length`` = :data:`MAX_TOKENS`."""
    from conceptspace.models.tiny import write_clip_tokenizer_files

    def save(tmp: Path) -> None:
        write_clip_tokenizer_files(tmp)
        config_path = tmp / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["model_max_length"] = MAX_TOKENS
        config_path.write_text(json.dumps(config))

    return _save_atomic(out_dir, save)


def load_tokenizer(path: str | os.PathLike) -> Any:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(path))
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def _tokens(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Padded token ids; captions repeat endlessly in training, so each is tokenised once per tokenizer."""
    cache = tokenizer.__dict__.setdefault("_conceptspace_ids", {})
    missing = sorted({text for text in texts if text not in cache})
    if missing:
        ids = tokenizer(
            missing, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids
        cache.update(zip(missing, ids, strict=True))
    return torch.stack([cache[text] for text in texts])


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

    _setup(seed, num_threads)
    device = torch.device(device)
    vae = AutoencoderKL(**vae_config()).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    data = ShapesDataset(batch_size, seed=seed * 1000 + 1)
    gen = torch.Generator().manual_seed(seed)
    log = _Log("vae", steps, quiet=quiet)
    for step, (x, _) in enumerate(_batches(data, 0, steps, workers)):
        x = x.to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * _randn(posterior.mean.shape, gen, device)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + kl_weight * kl * x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
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
    out_dir = _save_model(vae, out_dir)
    _write_stage_log(out_dir, "vae", seed, steps, log, scaling_factor=scaling, heldout_mse=mse)
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

    _setup(seed, num_threads)
    device = torch.device(device)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = CLIPModel(clip_config()).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    data = ShapesDataset(batch_size, seed=seed * 1000 + 3)
    log = _Log("clip", steps, quiet=quiet)
    labels = torch.arange(batch_size, device=device)
    for step, (images, texts) in enumerate(_batches(data, 0, steps, workers)):
        ids = _tokens(tokenizer, texts)
        out = model(input_ids=ids.to(device), pixel_values=images.to(device), return_dict=True)
        logits = out.logits_per_image
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float().to(device)
        targets = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        acc = (logits.argmax(1) == labels).float().mean()
        log(step, loss=loss.item(), acc=acc.item(), scale=model.logit_scale.exp().item())
    model.eval().cpu()
    out_dir = _save_atomic(out_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))
    _write_stage_log(out_dir, "clip", seed, steps, log)
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
    _save_model(text.eval(), text_dir)
    _save_model(vision.eval(), vision_dir)


# --------------------------------------------------------------------------------------------------------- UNet
def _encode_text(text_encoder: Any, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(_tokens(tokenizer, texts).to(text_encoder.device))[0]


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
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    _setup(seed, num_threads)
    device = torch.device(device)
    vae = AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=torch.float32).to(device).eval()
    text_encoder = CLIPTextModel.from_pretrained(str(text_encoder_dir), torch_dtype=torch.float32)
    text_encoder.to(device).eval()
    train_text = text_encoder_out is not None
    text_encoder.requires_grad_(train_text)
    tokenizer = load_tokenizer(tokenizer_dir)
    if init_from is not None:
        unet = UNet2DConditionModel.from_pretrained(str(init_from), torch_dtype=torch.float32)
    else:
        unet = UNet2DConditionModel(**unet_config())
    unet.to(device).train()
    models = torch.nn.ModuleList([unet, text_encoder] if train_text else [unet])
    ema = copy.deepcopy(models).eval().requires_grad_(False)
    groups = [{"params": list(unet.parameters()), "lr": lr}]
    if train_text:
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad], "lr": text_lr})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    max_lr = [g["lr"] for g in groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.03)
    alphas = _alphas_cumprod().to(device)
    data = ShapesDataset(batch_size, seed=seed * 1000 + 4, mentions=mentions)
    gen = torch.Generator().manual_seed(seed + first_batch)
    rng = np.random.default_rng([seed, first_batch])
    log = _Log("unet", steps, quiet=quiet)
    checkpoint = _Checkpoint(out_dir, checkpoint_every)
    done = 0
    if (state := checkpoint.load()) is not None:
        models.load_state_dict(state["models"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        _restore_rng(state, gen, rng)
        log.restore(state)
        done = state["step"]
    batches = _batches(data, first_batch + done, steps - done, workers)
    for step, (images, batch_captions) in enumerate(batches, start=done):
        texts = ["" if rng.random() < caption_dropout else c for c in batch_captions]
        with torch.no_grad():
            # the posterior's mean, not a sample: this full-resolution VAE's posterior is wide (std 0.55–0.9 of
            # the scaled latents' spread of 0.6–1.3 per channel, which its decoder tolerates), so samples would
            # make much of every target encoder noise — a loss floor, and textured backgrounds when sampling
            x0 = vae.encode(images.to(device)).latent_dist.mean * vae.config.scaling_factor
        if train_text:
            text_encoder.train()
            cond = text_encoder(_tokens(tokenizer, texts).to(device))[0]
        else:
            cond = _encode_text(text_encoder, tokenizer, texts)
        t = _randint(0, NUM_TRAIN_TIMESTEPS, batch_size, gen, device)
        noise = _randn(x0.shape, gen, device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t, cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = ema_decay if init_from is not None else min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), models.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        log(step, loss=loss.item())
        if checkpoint.due(step, steps):
            checkpoint.save(
                {
                    "step": step + 1,
                    "models": models.state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    **log.state(),
                    **_rng_state(gen, rng),
                }
            )
    if train_text:
        _save_model(ema[1].eval(), text_encoder_out)
    out_dir = _save_model(ema[0], out_dir)
    _write_stage_log(
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


# ---------------------------------------------------------------------------------------------------------- DMD
def _x0_from_eps(xt: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (xt - (1 - a).sqrt() * eps) / a.sqrt()


def _cfg_eps(
    unet: Any, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, w: float
):
    eps = unet(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([uncond, cond])).sample
    e_u, e_c = eps.chunk(2)
    return e_u + w * (e_c - e_u)


@torch.no_grad()
def teacher_latents(
    unet: Any,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    steps: int = 25,
    guidance_scale: float = 5.0,
) -> torch.Tensor:
    """The base's deterministic DDIM sample (with CFG) from ``noise``: the regression targets."""
    alphas = _alphas_cumprod()
    ts = list(range(NUM_TRAIN_TIMESTEPS - 1, 0, -NUM_TRAIN_TIMESTEPS // steps))[:steps]
    x = noise
    for i, t in enumerate(ts):
        a = alphas[t]
        tt = torch.full((len(x),), t, dtype=torch.long)
        eps = _cfg_eps(unet, x, tt, cond, uncond, guidance_scale)
        x0 = _x0_from_eps(x, eps, a)
        a_next = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x


class _BottleneckClassifier(torch.nn.Module):
    """DMD2's discriminator: a small head on the fake score UNet's bottleneck (its mid block's output), so the
    classifier shares the fake score's features and trains them too."""

    def __init__(self, fake: Any) -> None:
        super().__init__()
        self.fake = [fake]  # a list: the fake score is not one of this module's parameters
        channels = fake.config.block_out_channels[-1]
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 3, padding=1),
            torch.nn.GroupNorm(8, channels),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(channels, 1),
        )
        self._features: dict[str, torch.Tensor] = {}
        fake.mid_block.register_forward_hook(lambda _m, _i, out: self._features.__setitem__("mid", out))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fake score's ε̂ for ``x`` at ``t`` and the head's real-vs-generated logit (one pass)."""
        eps = self.fake[0](x, t, cond).sample
        return eps, self.net(self._features.pop("mid")).squeeze(1)

    def logits(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self(x, t, cond)[1]


def _real_latents(
    vae: Any, text_encoder: Any, tokenizer: Any, count: int, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` world images (a stream of their own seed) as scaled latents (posterior means, as the base trained
    on), with their captions' text states: the GAN term's real samples."""
    data = ShapesDataset(64, seed=seed * 1000 + 7)
    latents, conds = [], []
    with torch.no_grad():
        for index in range(math.ceil(count / 64)):
            images, texts, _ = data.batch(index)
            latents.append(vae.encode(images.to(device)).latent_dist.mean * vae.config.scaling_factor)
            conds.append(_encode_text(text_encoder, tokenizer, texts))
    return torch.cat(latents)[:count], torch.cat(conds)[:count]


def distill_dmd(
    out_dir: str | os.PathLike,
    pipeline_dir: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 1e-4,
    fake_lr: float = 2e-4,
    fake_updates: int = 1,
    guidance_scale: float = 5.0,
    num_pairs: int = 64,
    regression_weight: float = 0.25,
    regression_batch: int = 16,
    gan_weight: float = 0.0,
    gan_discriminator_weight: float = 1e-2,
    real_pool: int = 2048,
    timesteps: Sequence[int] = DMD_TIMESTEPS,
    num_threads: int | None = 1,
    device: str | torch.device = "cpu",
    checkpoint_every: int | None = 100,
    quiet: bool = False,
) -> Path:
    """Distil the base in ``pipeline_dir`` into a 4-step student (see the module docstring); save its UNet (fp16).

    Generator: x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ with the student's ε̂ at the student's timesteps; its next input is
    √ᾱ_next·x̂0 + √(1−ᾱ_next)·fresh noise (exactly ``LCMScheduler``'s step, whose boundary condition is ≈ x̂0 at
    t ≥ 249). Each generator update draws the step ``k`` to train uniformly and builds its input with the
    student's own first ``k`` steps (backward simulation, no gradient). ``regression_weight=0`` or
    ``num_pairs=0``: distribution matching alone (DMD without its regression anchor).

    ``gan_weight > 0`` adds DMD2's GAN term (Yin et al., 2024): a classifier head on the fake score's bottleneck
    tells noised real latents (``real_pool`` encoded world images with their captions, at the fake score's noise
    levels) from noised student outputs; the fake score and head learn it with weight
    ``gan_discriminator_weight`` (DMD2: 1e-2), and the student gets the non-saturating generator loss with weight
    ``gan_weight`` (DMD2's SDXL setting: 5e-3), both relative to mean-reduced losses. It ties every step's output to
    the data, not only to the teacher's score. ``fake_updates`` fake-score updates per student update: DMD2's
    two time-scale rule is 5.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    _setup(seed, num_threads)
    device = torch.device(device)
    pipeline_dir = Path(pipeline_dir)
    teacher = UNet2DConditionModel.from_pretrained(str(pipeline_dir / "unet"), torch_dtype=torch.float32)
    teacher.to(device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    text_encoder = CLIPTextModel.from_pretrained(
        str(pipeline_dir / "text_encoder"), torch_dtype=torch.float32
    )
    text_encoder.to(device).eval()
    tokenizer = load_tokenizer(pipeline_dir / "tokenizer")
    alphas = _alphas_cumprod().to(device)
    ts = list(timesteps)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    latent_shape = (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
    uncond1 = _encode_text(text_encoder, tokenizer, [""])

    def prompts(n: int) -> list[str]:
        return captions(make_batch(n, rng).factors, rng)

    # the fixed regression set: teacher noise → latent pairs on captions from the data distribution
    regress = num_pairs > 0 and regression_weight > 0
    num_pairs = num_pairs if regress else 0
    pair_texts = prompts(num_pairs)
    pair_cond = _encode_text(text_encoder, tokenizer, pair_texts) if regress else None
    pair_noise = _randn((num_pairs, *latent_shape), gen, device)
    pair_x0 = None
    if regress:
        pair_x0 = torch.cat(
            [
                teacher_latents(
                    teacher,
                    pair_noise[i : i + 32],
                    pair_cond[i : i + 32],
                    uncond1.expand(len(pair_cond[i : i + 32]), -1, -1),
                    guidance_scale=guidance_scale,
                )
                for i in range(0, num_pairs, 32)
            ]
        )

    gan = gan_weight > 0
    head = _BottleneckClassifier(fake).to(device) if gan else None
    real_x0, real_cond = None, None
    if gan:
        vae = AutoencoderKL.from_pretrained(str(pipeline_dir / "vae"), torch_dtype=torch.float32)
        vae.to(device).eval()
        real_x0, real_cond = _real_latents(vae, text_encoder, tokenizer, real_pool, seed, device)
        del vae

    opt_g = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, betas=(0.0, 0.999))
    fake_params = list(fake.parameters()) + (list(head.parameters()) if head is not None else [])
    opt_f = torch.optim.AdamW(fake_params, lr=fake_lr, weight_decay=0.0, betas=(0.0, 0.999))
    log = _Log("dmd", steps, every=25, quiet=quiet)
    checkpoint = _Checkpoint(out_dir, checkpoint_every)
    done = 0
    if (state := checkpoint.load()) is not None:
        for module, key in ((student, "student"), (fake, "fake"), (opt_g, "opt_g"), (opt_f, "opt_f")):
            module.load_state_dict(state[key])
        if head is not None:
            head.load_state_dict(state["head"])
        _restore_rng(state, gen, rng)
        log.restore(state)
        done = state["step"]

    def generate(x: torch.Tensor, index: int, cond: torch.Tensor) -> torch.Tensor:
        t = torch.full((len(x),), ts[index], dtype=torch.long, device=device)
        return _x0_from_eps(x, student(x, t, cond).sample, alphas[ts[index]])

    for step in range(done, steps):
        texts = prompts(batch_size)
        cond = _encode_text(text_encoder, tokenizer, texts)
        uncond = uncond1.expand(batch_size, -1, -1)
        # backward simulation: the input of step k comes from the student's own steps 0..k-1
        k = int(rng.integers(len(ts)))
        x = _randn((batch_size, *latent_shape), gen, device)
        with torch.no_grad():
            for i in range(k):
                x0 = generate(x, i, cond)
                a_next = alphas[ts[i + 1]]
                x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * _randn(x0.shape, gen, device)
        x0 = generate(x, k, cond)

        # distribution matching: ∇ KL ≈ (fake score − real score), normalised as in DMD
        t = _randint(20, 981, batch_size, gen, device)
        a = alphas[t].view(-1, 1, 1, 1)
        noise = _randn(x0.shape, gen, device)
        xt = a.sqrt() * x0.detach() + (1 - a).sqrt() * noise
        with torch.no_grad():
            real_x0 = _x0_from_eps(xt, _cfg_eps(teacher, xt, t, cond, uncond, guidance_scale), a)
            fake_x0 = _x0_from_eps(xt, fake(xt, t, cond).sample, a)
            weight = (x0.detach() - real_x0).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-4)
            grad = (fake_x0 - real_x0) / weight
        loss_dmd = 0.5 * F.mse_loss(x0, (x0 - grad).detach(), reduction="sum") / batch_size

        # regression on the fixed teacher pairs (first step, from the pair's noise)
        loss_g = loss_dmd
        reg = torch.zeros(())
        if regress:
            idx = _randint(0, num_pairs, regression_batch, gen, device)
            reg = F.mse_loss(generate(pair_noise[idx], 0, pair_cond[idx]), pair_x0[idx])
            loss_g = loss_g + regression_weight * reg * x0[0].numel()
        gan_g = torch.zeros(())
        if head is not None:
            # non-saturating: the student's noised outputs should read as real
            tg = _randint(0, NUM_TRAIN_TIMESTEPS, batch_size, gen, device)
            ag = alphas[tg].view(-1, 1, 1, 1)
            xg = ag.sqrt() * x0 + (1 - ag).sqrt() * _randn(x0.shape, gen, device)
            for param in fake_params:  # gradients reach the student through the input only
                param.requires_grad_(False)
            gan_g = F.softplus(-head.logits(xg, tg, cond)).mean()
            for param in fake_params:
                param.requires_grad_(True)
            loss_g = loss_g + gan_weight * gan_g * x0[0].numel()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt_g.step()

        # the fake score learns the student's current distribution (denoising loss on its samples)
        for _ in range(fake_updates):
            tf = _randint(0, NUM_TRAIN_TIMESTEPS, batch_size, gen, device)
            af = alphas[tf].view(-1, 1, 1, 1)
            nf = _randn(x0.shape, gen, device)
            xf = af.sqrt() * x0.detach() + (1 - af).sqrt() * nf
            if head is not None:
                # one pass of the fake score gives its denoising loss and the head's "generated" logit
                eps, fake_logits = head(xf, tf, cond)
                loss_f = F.mse_loss(eps, nf)
                idx = _randint(0, len(real_x0), batch_size, gen, device)
                xr = af.sqrt() * real_x0[idx] + (1 - af).sqrt() * _randn(x0.shape, gen, device)
                _, real_logits = head(xr, tf, real_cond[idx])
                gan_d = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
                loss_fake = loss_f + gan_discriminator_weight * gan_d
            else:
                loss_f = loss_fake = F.mse_loss(fake(xf, tf, cond).sample, nf)
                gan_d = torch.zeros(())
            opt_f.zero_grad(set_to_none=True)
            loss_fake.backward()
            torch.nn.utils.clip_grad_norm_(fake_params, 1.0)
            opt_f.step()
        gan_losses = {"gan_g": gan_g.item(), "gan_d": gan_d.item()} if gan else {}
        log(step, dmd=loss_dmd.item(), reg=reg.item(), fake=loss_f.item(), **gan_losses)
        if checkpoint.due(step, steps):
            checkpoint.save(
                {
                    "step": step + 1,
                    "student": student.state_dict(),
                    "fake": fake.state_dict(),
                    **({"head": head.state_dict()} if head is not None else {}),
                    "opt_g": opt_g.state_dict(),
                    "opt_f": opt_f.state_dict(),
                    **log.state(),
                    **_rng_state(gen, rng),
                }
            )
    student.eval()
    out_dir = _save_model(student.cpu(), out_dir)
    _write_stage_log(
        out_dir,
        "dmd",
        seed,
        steps,
        log,
        timesteps=ts,
        guidance_scale=guidance_scale,
        num_pairs=num_pairs,
        regression_weight=regression_weight,
        lr=lr,
        fake_lr=fake_lr,
        fake_updates=fake_updates,
        gan_weight=gan_weight,
        gan_discriminator_weight=gan_discriminator_weight if gan else None,
        real_pool=real_pool if gan else None,
    )
    checkpoint.remove()
    return out_dir


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

    return _save_atomic(out_dir, save)


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
