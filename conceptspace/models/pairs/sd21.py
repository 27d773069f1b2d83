"""Stable Diffusion 2.1 base and SD-Turbo."""

from __future__ import annotations

from conceptspace.models.spec import ModelSpec

SPECS: list[ModelSpec] = [
    ModelSpec(
        name="sd21",
        family="sd21",
        architecture="sd",
        role="base",
        repo_id="stabilityai/stable-diffusion-2-1-base",
        storage="pipeline",
        scheduler="EulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=7.5,
        resolution=512,
        variant="fp16",
        description="Stable Diffusion 2.1 base, 50 Euler steps with CFG",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="sd-turbo",
        family="sd21",
        architecture="sd",
        role="student",
        base="sd21",
        repo_id="stabilityai/sd-turbo",
        storage="pipeline",
        scheduler="EulerAncestralDiscreteScheduler",
        scheduler_overrides=(("timestep_spacing", "trailing"),),
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=512,
        variant="fp16",
        description="SD-Turbo (full pipeline repo; its UNet is used)",
    ),
]
