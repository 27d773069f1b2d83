"""DiversityPipeline: the regimes as a diffusers-style callable over pipelines a user already has — the same
images as conceptspace's sampler and, in the distilled regime, as the student pipeline itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptspace import Distilled, Hybrid, load_pair, sample
from conceptspace.pipeline import DiversityPipeline
from conceptspace.remedies import CADS

PROMPT = "a red circle"
SEEDS = [3, 5]


@pytest.fixture(
    scope="module", params=[("tiny-sdxl", "tiny-dmd"), ("tiny-flux", "tiny-schnell")], ids=["sdxl", "flux"]
)
def pipelines(request):
    pair = load_pair(*request.param, device="cpu")
    return pair, pair.to_diffusers("base"), pair.to_diffusers("student"), request.param[1]


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_the_distilled_regime_is_the_student_pipeline_itself(pipelines):
    pair, base, student, name = pipelines
    ours = DiversityPipeline(base, student, student=name, regime="distilled")
    size = pair.default_resolution
    got = ours(
        PROMPT,
        num_images_per_prompt=2,
        generator=_generators(SEEDS),
        output_type="np",
        height=size,
        width=size,
    )
    steps = pair.student.num_inference_steps
    theirs = student(PROMPT, num_images_per_prompt=2, generator=_generators(SEEDS), output_type="np",
                     num_inference_steps=steps, guidance_scale=pair.student.guidance_scale, height=size, width=size)  # fmt: skip
    assert type(got) is type(theirs)  # the pipeline's own output class
    assert np.abs(got.images - theirs.images).max() <= 1e-4


@pytest.mark.parametrize("regime", [Hybrid(), CADS(over=Hybrid(k=2))], ids=["hybrid", "cads"])
def test_every_regime_gives_conceptspaces_own_images(pipelines, regime):
    pair, base, student, name = pipelines
    pipe = DiversityPipeline(base, student, student=name, regime=regime)
    got = pipe(
        [PROMPT, "a blue square"],
        num_images_per_prompt=2,
        generator=_generators([3, 5, 7, 9]),
        output_type="pt",
    )
    first = sample(pair, PROMPT, regime, SEEDS, output_type="pt", progress=False).images
    second = sample(pair, "a blue square", regime, [7, 9], output_type="pt", progress=False).images
    assert torch.allclose(got.images, torch.cat([first, second]), atol=1e-5)
    pil = pipe(
        PROMPT, generator=torch.Generator().manual_seed(0)
    ).images  # one generator for all: seeds from it
    assert len(pil) == 1 and pil[0].size == (pair.default_resolution,) * 2


def test_bad_calls_say_what_to_do(pipelines):
    pair, base, student, name = pipelines
    with pytest.raises(ValueError, match="share one"):
        DiversityPipeline(base, base, student=name)
    pipe = DiversityPipeline(base, student, student=name)
    with pytest.raises(TypeError, match="num_inference_steps.*pass regime="):
        pipe(PROMPT, num_inference_steps=4)
    with pytest.raises(ValueError, match="3 generators for 2 images"):
        pipe(PROMPT, num_images_per_prompt=2, generator=_generators([1, 2, 3]))
    with pytest.raises(ValueError, match="is a base model"):
        DiversityPipeline(base, student, student=pair.base.name)
    tuple_out = pipe(
        PROMPT, generator=_generators([1]), output_type="np", return_dict=False, regime=Distilled()
    )
    assert isinstance(tuple_out, tuple) and tuple_out[0].shape[0] == 1


def test_a_loaded_pair_becomes_a_pipeline_sharing_its_networks(pipelines):
    pair, _, _, _ = pipelines
    pipe = DiversityPipeline.from_pair(pair, "hybrid")
    assert pipe.pair.student_network is pair.student_network and pipe.pair.base_network is pair.base_network
    got = pipe(PROMPT, generator=_generators([4]), output_type="pt").images
    assert torch.allclose(
        got, sample(pair, PROMPT, Hybrid(), [4], output_type="pt", progress=False).images, atol=1e-6
    )


def test_a_stable_diffusion_pair_returns_diffusers_output_with_no_safety_verdict():
    """SD pipelines' output class also has nsfw_content_detected: None, as diffusers says when no checker ran."""
    pair = load_pair("shapes", "dmd", device="cpu", dtype=torch.float32)
    output = DiversityPipeline.from_pair(pair, "hybrid")(
        "a shape", num_images_per_prompt=2, generator=_generators([0, 1]), output_type="np"
    )
    assert type(output).__name__ == "StableDiffusionPipelineOutput" and output.nsfw_content_detected is None
    expected = sample(pair, "a shape", Hybrid(), [0, 1], output_type="np", progress=False).images
    assert np.allclose(output.images, expected, atol=1e-6)
