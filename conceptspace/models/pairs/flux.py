"""FLUX.1-dev ↔ FLUX.1-schnell, and the tiny FLUX pair."""

from __future__ import annotations

from conceptspace.models.spec import ModelSpec, tiny_pair

SPECS: list[ModelSpec] = [
    ModelSpec(
        name="flux-dev",
        family="flux",
        role="base",
        repo_id="black-forest-labs/FLUX.1-dev",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=3.5,
        resolution=1024,
        description="FLUX.1-dev (guidance-distilled rectified flow; guidance 3.5 is an input, not CFG), 50 steps",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="flux-schnell",
        family="flux",
        role="student",
        base="flux-dev",
        repo_id="black-forest-labs/FLUX.1-schnell",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="FLUX.1-schnell (timestep-distilled; full pipeline repo, its transformer is used), 4 steps",
    ),
    *tiny_pair(
        "flux",
        "tiny-flux",
        "tiny-schnell",
        "FLUX.1-dev",
        guidance=3.5,
        student_overrides=(("use_dynamic_shifting", False), ("shift", 1.0)),
        student_note="FLUX.1-schnell-shaped: no guidance input, no shift; 4 steps",
    ),  # fmt: skip
]
