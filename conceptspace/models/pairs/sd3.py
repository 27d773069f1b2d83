"""Stable Diffusion 3.5 Large ↔ Large Turbo, 3.5 Medium ↔ DP-DMD, and the tiny SD3 pair.

Sources of every default: docs/model-pairs.md, "Where the facts come from"."""

from __future__ import annotations

from conceptspace.models.spec import ModelSpec, tiny_pair

SPECS: list[ModelSpec] = [
    ModelSpec(
        name="sd35-large",
        family="sd35",
        architecture="sd3",
        role="base",
        repo_id="stabilityai/stable-diffusion-3.5-large",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=28,
        guidance_scale=3.5,
        resolution=1024,
        description="Stable Diffusion 3.5 Large (MMDiT, flow matching, shift 3), 28 steps with CFG 3.5",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="sd35-large-turbo",
        family="sd35",
        architecture="sd3",
        role="student",
        base="sd35-large",
        repo_id="stabilityai/stable-diffusion-3.5-large-turbo",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="SD3.5 Large Turbo (ADD-distilled; full pipeline repo, its transformer is used), 4 steps, no CFG",
    ),
    *tiny_pair("sd3", "tiny-sd3", "tiny-sd3-turbo", "SD3", guidance=5.0, student_note="4 steps, no CFG"),
]

# SD3.5 Medium (MMDiT-X: dual attention, QK norm; a family of its own, its networks are not Large's) and DP-DMD
# (arXiv 2602.03139), its 4-NFE student released as one bare transformer state dict. Sources: the SD3.5 Medium card
# (40 steps, guidance 4.5) and file list (one-file transformer, fp16 files only for the text encoders: no variant);
# github.com/Multimedia-Analytics-Laboratory/dpdmd README (hub repo TianheWu/dpdmd, the file name, `torch.load` then
# `pipe.transformer.load_state_dict(strict=True)`: diffusers keys, no prefix; 4 steps, guidance_scale=1.0, 1024²,
# the base's own scheduler) and train_sd35_dpdmd.py (the student scheduler is a copy of the teacher's,
# set_timesteps(4); the checkpoint is the bf16 FSDP state dict, torch.save'd). Unverified: that the file sits at the
# repo root (the README names it bare) and is bf16 (inferred from the training script; the file was not inspected);
# Medium's scheduler shift 3.0 (not seen; it is read from the repo at load time, only the description states it).
SPECS += [
    ModelSpec(
        name="sd35-medium", family="sd35-medium", architecture="sd3", role="base",
        repo_id="stabilityai/stable-diffusion-3.5-medium", storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler", num_inference_steps=40, guidance_scale=4.5, resolution=1024,
        description="Stable Diffusion 3.5 Medium (MMDiT-X, flow matching, shift 3), 40 steps with CFG 4.5",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="dp-dmd", family="sd35-medium", architecture="sd3", role="student", base="sd35-medium",
        repo_id="TianheWu/dpdmd", storage="unet_file", filename="DPDMD-SD35M-4NFE-natural.pt",
        scheduler="FlowMatchEulerDiscreteScheduler", num_inference_steps=4, guidance_scale=1.0, resolution=1024,
        description="DP-DMD 4-NFE SD3.5 Medium student (a bf16 transformer state dict, .pt), 4 steps, no CFG",
    ),
]  # fmt: skip
