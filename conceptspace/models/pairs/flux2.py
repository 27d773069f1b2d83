"""FLUX.2 [klein] Base ↔ FLUX.2 [klein] (step-distilled), 4B and 9B, and the tiny FLUX.2 [klein] pair.

Defaults and their sources: docs/model-pairs.md. Both sides run ``Flux2KleinPipeline``'s conventions
(``conceptspace/models/families/flux2.py``): the bases with true CFG on the empty prompt, the distilled models one
pass at guidance 1 (their repos' ``is_distilled``: the pipeline ignores the scale).
"""

from __future__ import annotations

from conceptspace.models.spec import ModelSpec, tiny_pair

_KLEIN = dict(
    architecture="flux2", storage="pipeline", scheduler="FlowMatchEulerDiscreteScheduler", resolution=1024
)
SPECS: list[ModelSpec] = [
    *(
        spec
        for size, licence in (("4B", "Apache-2.0"), ("9B", "FLUX non-commercial licence"))
        for spec in (
            ModelSpec(
                name=f"flux2-klein-base-{size.lower()}", family=f"flux2-klein-{size.lower()}", role="base",
                repo_id=f"black-forest-labs/FLUX.2-klein-base-{size}", num_inference_steps=50, guidance_scale=4.0,
                embedder="open_clip:ViT-B-32:laion2b_s34b_b79k", **_KLEIN,
                description=f"FLUX.2 [klein] Base {size} (undistilled rectified flow, Qwen3 text; {licence}), 50 steps, CFG 4",
            ),
            ModelSpec(
                name=f"flux2-klein-{size.lower()}", family=f"flux2-klein-{size.lower()}", role="student",
                base=f"flux2-klein-base-{size.lower()}", repo_id=f"black-forest-labs/FLUX.2-klein-{size}",
                num_inference_steps=4, guidance_scale=1.0, **_KLEIN,
                description=f"FLUX.2 [klein] {size} (step- and guidance-distilled; its transformer is used), 4 steps, no CFG",
            ),
        )
    ),
    *tiny_pair(
        "flux2", "tiny-flux2-klein", "tiny-flux2-klein-distilled", "FLUX.2 [klein] Base", guidance=4.0,
        student_note="FLUX.2 [klein]-shaped: step-distilled, no CFG; 4 steps",
    ),
]  # fmt: skip
