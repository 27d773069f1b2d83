"""The embedded testbed's pair: a miniature Stable Diffusion and its DMD2-style student, shipped in the package."""

from __future__ import annotations

from pathlib import Path

from conceptspace.models.spec import ModelSpec

_TESTBED_WEIGHTS = Path(__file__).parents[2] / "testbed" / "weights"
SPECS: list[ModelSpec] = [
    ModelSpec(
        name="shapes",
        family="testbed",
        architecture="sd",
        role="base",
        repo_id="conceptspace/testbed-shapes",
        storage="pipeline",
        scheduler="EulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=5.0,
        resolution=32,
        description="the embedded testbed: a miniature Stable Diffusion trained on a procedural shapes world",
        embedder="testbed:clip",
        local_dir=str(_TESTBED_WEIGHTS / "shapes"),
    ),
    ModelSpec(
        name="dmd",
        family="testbed",
        architecture="sd",
        role="student",
        base="shapes",
        repo_id="conceptspace/testbed-dmd",
        storage="unet_folder",
        subfolder="unet",
        scheduler="LCMScheduler",
        scheduler_overrides=(("original_inference_steps", 4),),
        num_inference_steps=4,
        timesteps=(999, 749, 499, 249),
        guidance_scale=0.0,
        resolution=32,
        description="DMD2-style 4-step student of the testbed, trained by conceptspace.testbed.train",
        local_dir=str(_TESTBED_WEIGHTS / "dmd"),
    ),
]
