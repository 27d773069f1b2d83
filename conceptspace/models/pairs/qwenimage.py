"""Qwen-Image and Qwen-Image-Lightning, a student shipped as a LoRA on the base with its own scheduler config."""

from __future__ import annotations

import math
from typing import Any

from conceptspace.models.spec import ModelSpec, tiny_pair

QWEN_LIGHTNING_SCHEDULER: tuple[tuple[str, Any], ...] = (
    ("base_shift", math.log(3)),
    ("max_shift", math.log(3)),
    ("shift_terminal", None),
)
"""How the Lightning repo's scheduler config differs from Qwen-Image's: a constant shift of 3 (``mu = ln 3`` at every
resolution, "we use shift=3 in distillation"), no terminal stretch."""
SPECS: list[ModelSpec] = [
    ModelSpec(
        name="qwen-image",
        family="qwenimage",
        role="base",
        repo_id="Qwen/Qwen-Image",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=4.0,
        resolution=1328,
        description="Qwen-Image (MMDiT, Qwen2.5-VL text, flow matching), 50 steps with true CFG 4, 1328 px",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    *(
        ModelSpec(
            name=name,
            family="qwenimage",
            role="student",
            base="qwen-image",
            repo_id="lightx2v/Qwen-Image-Lightning",
            storage="lora_file",
            filename=f"Qwen-Image-Lightning-{steps}steps-V2.0.safetensors",
            scheduler="FlowMatchEulerDiscreteScheduler",
            scheduler_overrides=QWEN_LIGHTNING_SCHEDULER,
            num_inference_steps=steps,
            guidance_scale=1.0,
            resolution=1328,
            description=f"Qwen-Image-Lightning {steps}-step V2.0 (a LoRA on the base), shift 3, no CFG",
        )
        for name, steps in (("qwen-image-lightning", 8), ("qwen-image-lightning-4step", 4))
    ),
    *tiny_pair(
        "qwenimage",
        "tiny-qwen-image",
        "tiny-qwen-image-lightning",
        "Qwen-Image",
        guidance=4.0,
        student_overrides=QWEN_LIGHTNING_SCHEDULER,
        student_note="Qwen-Image-Lightning's scheduler: shift 3; 4 steps, no CFG",
    ),  # fmt: skip
]
