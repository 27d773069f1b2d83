"""SANA-Sprint and its teacher."""

from __future__ import annotations

from typing import Any

from conceptspace.models.spec import ModelSpec

# SANA-Sprint (arXiv 2503.09641: sCM + LADD, 1-4 steps, guidance an input) and its teacher (SANA 1.6B fine-tuned with
# dense timestep embedding and QK norm). Sources and what is unverified: docs/model-pairs.md. The student is sampled
# as the flow schedule its SCMScheduler steps equal (stochastic flow Euler, σ = sin s / (sin s + cos s): see
# conceptspace/models/families/sana.py); the teacher on SANA's flow DPM-Solver++, whatever its repo's config says.
SANA_DPM: tuple[tuple[str, Any], ...] = (("flow_shift", 3.0), ("use_flow_sigmas", True), ("prediction_type", "flow_prediction"))  # fmt: skip
SANA_SPRINT_FLOW: tuple[tuple[str, Any], ...] = (("stochastic_sampling", True), ("shift", 1.0), ("use_dynamic_shifting", False))  # fmt: skip
_SANA = dict(family="sana-sprint", architecture="sana", resolution=1024)
SPECS: list[ModelSpec] = [
    ModelSpec(
        name="sana-teacher", role="base", repo_id="Efficient-Large-Model/SANA_Sprint_1.6B_1024px_teacher_diffusers",
        storage="pipeline", scheduler="DPMSolverMultistepScheduler", scheduler_overrides=SANA_DPM,
        num_inference_steps=20, guidance_scale=4.5, embedder="open_clip:ViT-B-32:laion2b_s34b_b79k", **_SANA,
        description="SANA-Sprint's teacher (SANA 1.6B, dense timestep embedding, QK norm), 20 flow DPM-Solver steps, CFG 4.5",
    ),
    ModelSpec(
        name="sana-sprint", role="student", base="sana-teacher", storage="pipeline",
        repo_id="Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers", scheduler="FlowMatchEulerDiscreteScheduler",
        scheduler_overrides=SANA_SPRINT_FLOW, num_inference_steps=2, guidance_scale=4.5, **_SANA,
        description="SANA-Sprint 1.6B (sCM+LADD; SCMScheduler's 2 steps), guidance 4.5 as an input, no CFG",
    ),
    *(
        ModelSpec(name=name, family="tiny-sana", architecture="sana", storage="random", resolution=64, seed=seed, **spec)
        for name, seed, spec in (
            ("tiny-sana", 0, dict(role="base", repo_id="builtin:tiny-sana", scheduler="DPMSolverMultistepScheduler",
             scheduler_overrides=SANA_DPM, num_inference_steps=8, guidance_scale=4.5, embedder="pixels:32",
             description="tiny random SANA-Sprint-teacher-architecture model (noise images; tests and benchmarks)")),
            ("tiny-sana-sprint", 1, dict(role="student", base="tiny-sana", repo_id="builtin:tiny-sana-sprint",
             scheduler="FlowMatchEulerDiscreteScheduler", scheduler_overrides=SANA_SPRINT_FLOW,
             num_inference_steps=2, guidance_scale=4.5,
             description="tiny random SANA-Sprint-architecture student (2 steps, guidance embedded)")),
        )
    ),
]  # fmt: skip
