"""Krea 2 Raw and Krea 2 Turbo, its 8-step TDM-distilled student (full weights, the same architecture), both
``Krea2Pipeline`` repos. Sources and what is unverified: docs/model-pairs.md."""

from __future__ import annotations

from typing import Any

from conceptspace.models.spec import ModelSpec, tiny_pair

TURBO_MU = 1.15
"""Krea 2 Turbo's fixed time shift: what ``Krea2Pipeline`` uses when its ``is_distilled`` flag is set, and the
official README's ``--mu 1.15``."""
KREA2_TURBO_SCHEDULER: tuple[tuple[str, Any], ...] = (("base_shift", TURBO_MU), ("max_shift", TURBO_MU))
"""Turbo's schedule from the Raw scheduler's config: with equal base and max shifts the dynamic shift is ``mu`` =
1.15 at every resolution, the constant the pipeline's ``is_distilled`` flag pins (conceptspace reads a student's
network and scheduler, not its model_index.json)."""
_KREA2 = dict(
    family="krea2", scheduler="FlowMatchEulerDiscreteScheduler", storage="pipeline", resolution=1024
)
SPECS: list[ModelSpec] = [
    ModelSpec(
        name="krea2-raw", role="base", repo_id="krea/Krea-2-Raw", num_inference_steps=52, guidance_scale=3.5,
        description="Krea 2 Raw (12.9B single-stream MMDiT, Qwen3-VL text, flow matching), 52 steps, CFG 3.5 "
        "(cond + 3.5·(cond − uncond))", embedder="open_clip:ViT-B-32:laion2b_s34b_b79k", **_KREA2,
    ),
    ModelSpec(
        name="krea2-turbo", role="student", base="krea2-raw", repo_id="krea/Krea-2-Turbo",
        scheduler_overrides=KREA2_TURBO_SCHEDULER, num_inference_steps=8, guidance_scale=0.0,
        description="Krea 2 Turbo (TDM-distilled, full weights), 8 steps at the fixed shift mu 1.15, no CFG", **_KREA2,
    ),
    *tiny_pair(
        "krea2", "tiny-krea2", "tiny-krea2-turbo", "Krea 2", guidance=3.5, student_overrides=KREA2_TURBO_SCHEDULER,
        student_note="Krea 2 Turbo's fixed shift mu 1.15; 4 steps, no CFG",
    ),
]  # fmt: skip
