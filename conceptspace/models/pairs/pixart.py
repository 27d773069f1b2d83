"""PixArt-α and its LCM student PixArt-δ (the paper's appendix pair): a DiT on VP latents with a T5 encoder."""

from __future__ import annotations

from conceptspace.models.spec import ModelSpec, tiny_pair

SPECS: list[ModelSpec] = [
    ModelSpec(
        name="pixart-alpha",
        family="pixart",
        role="base",
        repo_id="PixArt-alpha/PixArt-XL-2-1024-MS",
        storage="pipeline",
        scheduler="DPMSolverMultistepScheduler",
        num_inference_steps=20,
        guidance_scale=4.5,
        resolution=1024,
        description="PixArt-α XL/2 at 1024 px (DiT, ε-prediction, T5 text), DPM-Solver++ 20 steps with CFG 4.5",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="pixart-delta",
        family="pixart",
        role="student",
        base="pixart-alpha",
        repo_id="PixArt-alpha/PixArt-LCM-XL-2-1024-MS",
        storage="pipeline",
        scheduler="LCMScheduler",
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="PixArt-δ (LCM-distilled PixArt-α; full pipeline repo, its transformer is used), 4 steps, no CFG",
    ),
    *tiny_pair(
        "pixart",
        "tiny-pixart",
        "tiny-pixart-lcm",
        "PixArt-α",
        guidance=4.5,
        scheduler="DPMSolverMultistepScheduler",
        student_scheduler="LCMScheduler",
        student_note="PixArt-δ-shaped: LCMScheduler, 4 steps without CFG",
    ),  # fmt: skip
]
