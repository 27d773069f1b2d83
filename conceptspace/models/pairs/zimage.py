"""Z-Image and Z-Image-Turbo: a single-stream DiT with a Qwen3 text encoder, flow matching."""

from __future__ import annotations

from conceptspace.models.spec import ModelSpec, tiny_pair

SPECS: list[ModelSpec] = [
    ModelSpec(
        name="z-image",
        family="zimage",
        role="base",
        repo_id="Tongyi-MAI/Z-Image",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=4.0,
        resolution=1024,
        description="Z-Image (S3-DiT, flow matching, shift 3), 50 steps with guidance 4 (Z-Image's own CFG scale)",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="z-image-turbo",
        family="zimage",
        role="student",
        base="z-image",
        repo_id="Tongyi-MAI/Z-Image-Turbo",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=9,
        guidance_scale=0.0,
        resolution=1024,
        description="Z-Image-Turbo (distilled; full pipeline repo, its transformer is used), 9 steps, no CFG",
    ),
    *tiny_pair(
        "zimage", "tiny-zimage", "tiny-zimage-turbo", "Z-Image", guidance=4.0, student_note="4 steps, no CFG"
    ),
]
