"""HiDream-I1-Full and its distilled students HiDream-I1-Fast and HiDream-I1-Dev (arXiv 2505.22705: 17B sparse MoE
DiT; Dev "guidance-distilled", Fast the fastest). Sources and what is unverified: docs/model-pairs.md. The fourth
text encoder (Llama-3.1-8B-Instruct) is read from its own repo: conceptspace/models/families/hidream.py."""

from __future__ import annotations

from typing import Any

from conceptspace.models.spec import ModelSpec, tiny_pair

HIDREAM_UNIPC: tuple[tuple[str, Any], ...] = (
    ("flow_shift", 3.0),
    ("use_flow_sigmas", True),
    ("prediction_type", "flow_prediction"),
)
"""Full's UniPC on flow sigmas with shift 3 (the official inference.py: ``FlowUniPCMultistepScheduler(shift=3.0,
use_dynamic_shifting=False)``; the repo ships diffusers' ``UniPCMultistepScheduler`` in its place)."""
HIDREAM_FAST_LCM: tuple[tuple[str, Any], ...] = (("shift", 3.0), ("use_dynamic_shifting", False))
"""Fast's ``FlowMatchLCMScheduler`` (inference.py: ``FlashFlowMatchEulerDiscreteScheduler``, shift 3)."""
HIDREAM_DEV_LCM: tuple[tuple[str, Any], ...] = (("shift", 6.0), ("use_dynamic_shifting", False))
"""Dev's: the same with shift 6."""
_HIDREAM = dict(family="hidream", architecture="hidream", storage="pipeline", resolution=1024)
SPECS: list[ModelSpec] = [
    ModelSpec(
        name="hidream-i1-full", role="base", repo_id="HiDream-ai/HiDream-I1-Full",
        scheduler="UniPCMultistepScheduler", scheduler_overrides=HIDREAM_UNIPC, num_inference_steps=50,
        guidance_scale=5.0, embedder="open_clip:ViT-B-32:laion2b_s34b_b79k", **_HIDREAM,
        description="HiDream-I1-Full (17B MoE DiT; CLIP×2, T5, Llama-3.1-8B text), 50 flow UniPC steps, CFG 5",
    ),
    ModelSpec(
        name="hidream-i1-fast", role="student", base="hidream-i1-full", repo_id="HiDream-ai/HiDream-I1-Fast",
        scheduler="FlowMatchLCMScheduler", scheduler_overrides=HIDREAM_FAST_LCM, num_inference_steps=16,
        guidance_scale=0.0, **_HIDREAM,
        description="HiDream-I1-Fast (distilled), 16 stochastic flow-LCM steps, shift 3, no CFG",
    ),
    ModelSpec(
        name="hidream-i1-dev", role="student", base="hidream-i1-full", repo_id="HiDream-ai/HiDream-I1-Dev",
        scheduler="FlowMatchLCMScheduler", scheduler_overrides=HIDREAM_DEV_LCM, num_inference_steps=28,
        guidance_scale=0.0, **_HIDREAM,
        description="HiDream-I1-Dev (guidance-distilled), 28 stochastic flow-LCM steps, shift 6, no CFG",
    ),
    *tiny_pair(
        "hidream", "tiny-hidream", "tiny-hidream-fast", "HiDream-I1", guidance=5.0,
        scheduler="UniPCMultistepScheduler", student_scheduler="FlowMatchLCMScheduler",
        student_overrides=HIDREAM_FAST_LCM, student_note="HiDream-I1-Fast's flow-LCM scheduler, shift 3; no CFG",
    ),
]  # fmt: skip
