"""DMD2-style distillation of the base into the 4-step student: distribution matching against the teacher's CFG
score, a regression anchor on teacher pairs, backward simulation and DMD2's optional GAN term."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conceptspace.testbed.data import ShapesDataset, captions, make_batch
from conceptspace.testbed.model import (
    DMD_TIMESTEPS,
    LATENT_CHANNELS,
    LATENT_SIZE,
    NUM_TRAIN_TIMESTEPS,
    alphas_cumprod,
    encode_images,
    encode_text,
    load_tokenizer,
    noised,
    x0_from_eps,
)
from conceptspace.testbed.stage import (
    Checkpoint,
    TrainingLog,
    optimizer_step,
    randint,
    randn,
    save_model,
    setup_stage,
    write_stage_log,
)

_LATENT_SHAPE = (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)


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
    setup_stage(seed, num_threads)
    device = torch.device(device)
    pipeline_dir = Path(pipeline_dir)
    teacher, student, fake, text_encoder = _load_networks(pipeline_dir, device)
    tokenizer = load_tokenizer(pipeline_dir / "tokenizer")
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    uncond1 = encode_text(text_encoder, tokenizer, [""])
    regress = num_pairs > 0 and regression_weight > 0
    num_pairs = num_pairs if regress else 0
    pairs = _regression_pairs(teacher, text_encoder, tokenizer, uncond1, num_pairs, guidance_scale, gen, rng)
    gan = gan_weight > 0
    head, real = (
        _gan_parts(fake, pipeline_dir, text_encoder, tokenizer, real_pool, seed) if gan else (None, None)
    )
    run = _Distillation(
        teacher, student, fake, head, alphas_cumprod().to(device), list(timesteps), gen, device, pairs, real
    )
    opt_g = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, betas=(0.0, 0.999))
    opt_f = torch.optim.AdamW(run.fake_params(), lr=fake_lr, weight_decay=0.0, betas=(0.0, 0.999))
    log = TrainingLog("dmd", steps, every=25, quiet=quiet)
    checkpoint = Checkpoint(out_dir, checkpoint_every)
    heads = {"head": head} if head is not None else {}
    stateful = {"student": student, "fake": fake, **heads, "opt_g": opt_g, "opt_f": opt_f}
    done = checkpoint.resume(stateful, gen, rng, log)
    recipe = _Recipe(
        guidance_scale, regression_weight, regression_batch, gan_weight, gan_discriminator_weight
    )
    for step in range(done, steps):
        cond = encode_text(text_encoder, tokenizer, _prompts(batch_size, rng))
        uncond = uncond1.expand(batch_size, -1, -1)
        k = int(rng.integers(len(run.timesteps)))  # the student step this iteration trains
        log(step, **_iteration(run, recipe, opt_g, opt_f, k, cond, uncond, fake_updates))
        checkpoint.save_if_due(step, steps, stateful, gen, rng, log)
    student.eval()
    out_dir = save_model(student.cpu(), out_dir)
    write_stage_log(
        out_dir,
        "dmd",
        seed,
        steps,
        log,
        timesteps=run.timesteps,
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


# ---------------------------------------------------------------------------------------------------- teacher
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
    alphas = alphas_cumprod()
    ts = list(range(NUM_TRAIN_TIMESTEPS - 1, 0, -NUM_TRAIN_TIMESTEPS // steps))[:steps]
    x = noise
    for i, t in enumerate(ts):
        a = alphas[t]
        tt = torch.full((len(x),), t, dtype=torch.long)
        eps = _cfg_eps(unet, x, tt, cond, uncond, guidance_scale)
        x0 = x0_from_eps(x, eps, a)
        a_next = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x = noised(x0, a_next, eps)
    return x


# ---------------------------------------------------------------------------------------------------- set-up
def _load_networks(pipeline_dir: Path, device: torch.device) -> tuple[Any, Any, Any, Any]:
    """The frozen teacher, the student and the fake score (both trainable copies of it), and the text encoder."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    teacher = UNet2DConditionModel.from_pretrained(str(pipeline_dir / "unet"), torch_dtype=torch.float32)
    teacher.to(device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    text_encoder = CLIPTextModel.from_pretrained(
        str(pipeline_dir / "text_encoder"), torch_dtype=torch.float32
    )
    text_encoder.to(device).eval()
    return teacher, student, fake, text_encoder


def _prompts(n: int, rng: np.random.Generator) -> list[str]:
    """Captions of ``n`` fresh world images: prompts from the data distribution."""
    return captions(make_batch(n, rng).factors, rng)


@dataclass
class _RegressionPairs:
    """The fixed regression set: teacher noise → latent pairs on captions from the data distribution."""

    noise: torch.Tensor
    cond: torch.Tensor
    x0: torch.Tensor


def _regression_pairs(
    teacher: Any,
    text_encoder: Any,
    tokenizer: Any,
    uncond1: torch.Tensor,
    count: int,
    guidance_scale: float,
    gen: torch.Generator,
    rng: np.random.Generator,
) -> _RegressionPairs | None:
    """``count`` pairs (None for 0; its captions and noise are drawn all the same, as training always did)."""
    texts = _prompts(count, rng)
    cond = encode_text(text_encoder, tokenizer, texts) if count else None
    noise = randn((count, *_LATENT_SHAPE), gen, uncond1.device)
    if not count:
        return None
    x0 = torch.cat(
        [
            teacher_latents(
                teacher,
                noise[i : i + 32],
                cond[i : i + 32],
                uncond1.expand(len(cond[i : i + 32]), -1, -1),
                guidance_scale=guidance_scale,
            )
            for i in range(0, count, 32)
        ]
    )
    return _RegressionPairs(noise, cond, x0)


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
    for index in range(math.ceil(count / 64)):
        images, texts, _ = data.batch(index)
        latents.append(encode_images(vae, images.to(device)))
        conds.append(encode_text(text_encoder, tokenizer, texts))
    return torch.cat(latents)[:count], torch.cat(conds)[:count]


def _gan_parts(
    fake: Any, pipeline_dir: Path, text_encoder: Any, tokenizer: Any, real_pool: int, seed: int
) -> tuple[_BottleneckClassifier, tuple[torch.Tensor, torch.Tensor]]:
    """DMD2's classifier head on ``fake`` (initialised from the global torch seed) and the real samples'
    ``(latents, text states)``, encoded by the pipeline's VAE."""
    from diffusers import AutoencoderKL

    device = text_encoder.device
    head = _BottleneckClassifier(fake).to(device)
    vae = AutoencoderKL.from_pretrained(str(pipeline_dir / "vae"), torch_dtype=torch.float32)
    vae.to(device).eval()
    return head, _real_latents(vae, text_encoder, tokenizer, real_pool, seed, device)


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class _Recipe:
    """The teacher's guidance scale and the weights of the student's and the fake score's loss terms."""

    guidance_scale: float
    regression_weight: float
    regression_batch: int
    gan_weight: float
    gan_discriminator_weight: float


@dataclass
class _Distillation:
    """One distillation's networks, schedule and noise, with its fixed data (the regression pairs and the GAN's
    real samples, each None when off). Each method draws its noise from ``gen`` in a fixed order."""

    teacher: Any
    student: Any
    fake: Any
    head: _BottleneckClassifier | None
    alphas: torch.Tensor
    timesteps: list[int]
    gen: torch.Generator
    device: torch.device
    pairs: _RegressionPairs | None
    real: tuple[torch.Tensor, torch.Tensor] | None

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return randn(shape, self.gen, self.device)

    def randint(self, low: int, high: int, n: int) -> torch.Tensor:
        return randint(low, high, n, self.gen, self.device)

    def fake_params(self) -> list[torch.nn.Parameter]:
        """What the fake-score update trains: the fake score, and the GAN head when on."""
        head = list(self.head.parameters()) if self.head is not None else []
        return list(self.fake.parameters()) + head

    def generate(self, x: torch.Tensor, index: int, cond: torch.Tensor) -> torch.Tensor:
        """The student's x̂0 from ``x`` at its step ``index``."""
        t = torch.full((len(x),), self.timesteps[index], dtype=torch.long, device=self.device)
        return x0_from_eps(x, self.student(x, t, cond).sample, self.alphas[self.timesteps[index]])

    def simulate(self, k: int, cond: torch.Tensor) -> torch.Tensor:
        """Backward simulation: the student's x̂0 at step ``k`` (with gradient), from an input made by its own steps
        0 … k−1 (without)."""
        x = self.randn((len(cond), *_LATENT_SHAPE))
        with torch.no_grad():
            for i in range(k):
                x0 = self.generate(x, i, cond)
                x = noised(x0, self.alphas[self.timesteps[i + 1]], self.randn(x0.shape))
        return self.generate(x, k, cond)

    def dmd_loss(
        self, x0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distribution matching, ∇ KL ≈ (fake score − real score) normalised as in DMD; with the teacher's x̂0."""
        t = self.randint(20, 981, len(x0))
        a = self.alphas[t].view(-1, 1, 1, 1)
        xt = noised(x0.detach(), a, self.randn(x0.shape))
        with torch.no_grad():
            teacher_x0 = x0_from_eps(xt, _cfg_eps(self.teacher, xt, t, cond, uncond, guidance_scale), a)
            fake_x0 = x0_from_eps(xt, self.fake(xt, t, cond).sample, a)
            weight = (x0.detach() - teacher_x0).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-4)
            grad = (fake_x0 - teacher_x0) / weight
        return 0.5 * F.mse_loss(x0, (x0 - grad).detach(), reduction="sum") / len(x0), teacher_x0

    def regression_loss(self, batch: int) -> torch.Tensor:
        """The student's first step on ``batch`` of the fixed pairs' noise against the teacher's latents."""
        idx = self.randint(0, len(self.pairs.noise), batch)
        return F.mse_loss(self.generate(self.pairs.noise[idx], 0, self.pairs.cond[idx]), self.pairs.x0[idx])

    def gan_generator_loss(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Non-saturating: the student's noised outputs should read as real."""
        t = self.randint(0, NUM_TRAIN_TIMESTEPS, len(x0))
        xt = noised(x0, self.alphas[t].view(-1, 1, 1, 1), self.randn(x0.shape))
        fake_params = self.fake_params()
        for param in fake_params:  # gradients reach the student through the input only
            param.requires_grad_(False)
        loss = F.softplus(-self.head.logits(xt, t, cond)).mean()
        for param in fake_params:
            param.requires_grad_(True)
        return loss

    def fake_score_loss(
        self, x0: torch.Tensor, cond: torch.Tensor, real_x0: torch.Tensor, discriminator_weight: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fake score's denoising loss on the student's samples (plus, with the head, the discriminator's loss
        against noised ``real_x0``); returned as (total, denoising, discriminator)."""
        t = self.randint(0, NUM_TRAIN_TIMESTEPS, len(x0))
        a = self.alphas[t].view(-1, 1, 1, 1)
        noise = self.randn(x0.shape)
        xt = noised(x0.detach(), a, noise)
        if self.head is None:
            loss = F.mse_loss(self.fake(xt, t, cond).sample, noise)
            return loss, loss, torch.zeros(())
        # one pass of the fake score gives its denoising loss and the head's "generated" logit
        eps, fake_logits = self.head(xt, t, cond)
        loss = F.mse_loss(eps, noise)
        idx = self.randint(0, len(real_x0), len(x0))
        xr = noised(real_x0[idx], a, self.randn(x0.shape))
        _, real_logits = self.head(xr, t, self.real[1][idx])
        gan_d = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        return loss + discriminator_weight * gan_d, loss, gan_d


def _iteration(
    run: _Distillation,
    recipe: _Recipe,
    opt_g: torch.optim.Optimizer,
    opt_f: torch.optim.Optimizer,
    k: int,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    fake_updates: int,
) -> dict[str, float]:
    """One student update at step ``k``, then ``fake_updates`` fake-score updates on its samples; the losses."""
    x0 = run.simulate(k, cond)
    loss_dmd, teacher_x0 = run.dmd_loss(x0, cond, uncond, recipe.guidance_scale)
    loss_g = loss_dmd
    reg = torch.zeros(())
    if run.pairs is not None:
        reg = run.regression_loss(recipe.regression_batch)
        loss_g = loss_g + recipe.regression_weight * reg * x0[0].numel()
    gan_g = torch.zeros(())
    if run.head is not None:
        gan_g = run.gan_generator_loss(x0, cond)
        loss_g = loss_g + recipe.gan_weight * gan_g * x0[0].numel()
    optimizer_step(opt_g, loss_g, run.student.parameters())

    # the fake score learns the student's current distribution. NOTE: the discriminator's "real" side is the
    # teacher's x̂0 of this batch, not the encoded pool run.real[0] that distill_dmd's docstring describes; GAN
    # runs have always trained so (the pool's latents were shadowed), and using the pool would change their weights
    for _ in range(fake_updates):
        loss_fake, loss_f, gan_d = run.fake_score_loss(x0, cond, teacher_x0, recipe.gan_discriminator_weight)
        optimizer_step(opt_f, loss_fake, run.fake_params())
    gan_losses = {"gan_g": gan_g.item(), "gan_d": gan_d.item()} if run.head is not None else {}
    return {"dmd": loss_dmd.item(), "reg": reg.item(), "fake": loss_f.item(), **gan_losses}
