"""The hybrid inside diffusers' own modular pipelines equals conceptspace's ``Hybrid(k)``.

Each pair comes from a tiny offline hub cache in the real repos' layouts and is loaded twice: by conceptspace
(``load_pair``) for the reference, and the way a diffusers user loads it (``ModularPipeline.from_pretrained`` of the
student's repo, the base's network by ``from_pretrained``, a LoRA student by ``load_lora_weights``, DMD2's UNet from
its ``.bin``) for the modular hybrid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conceptspace import Hybrid, load_pair, sample
from conceptspace.models import REGISTRY

pytest.importorskip("diffusers.modular_pipelines")

PROMPT = "a photo of a red cube"
SEEDS = [0, 1]
SIZE = 64


def _modular(repo: str, cache: Path) -> Any:
    from diffusers import ModularPipeline

    pipe = ModularPipeline.from_pretrained(repo, cache_dir=cache)
    pipe.load_components(torch_dtype=torch.float32, cache_dir=cache, local_files_only=True)
    return pipe


def _one_pass_guider(pipe: Any) -> None:
    from conceptspace.modular.one_pass import OnePassCFGGuidance

    if "guider" in pipe.components:
        pipe.update_components(guider=OnePassCFGGuidance(guidance_scale=1.0))


def _student_scheduler(pipe: Any, student: str) -> None:
    spec = REGISTRY[student]
    overrides = dict(spec.scheduler_overrides)
    scheduler_class = type(pipe.scheduler)
    if spec.scheduler != scheduler_class.__name__:
        import diffusers

        scheduler_class = getattr(diffusers, spec.scheduler)
    pipe.update_components(scheduler=scheduler_class.from_config(pipe.scheduler.config, **overrides))


def sdxl_dmd2(cache: Path) -> tuple[Any, torch.nn.Module | None]:
    """SDXL's modular pipeline with DMD2's UNet (a pickled fp16 state dict) and an LCM scheduler, as DMD2's card
    has it."""
    from diffusers import UNet2DConditionModel
    from huggingface_hub import hf_hub_download

    pipe = _modular(REGISTRY["sdxl"].repo_id, cache)
    base = pipe.unet
    student = UNet2DConditionModel.from_config(base.config)
    path = hf_hub_download("tianweiy/DMD2", REGISTRY["dmd2"].filename, cache_dir=cache)
    student.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    pipe.update_components(unet=student.float())
    _student_scheduler(pipe, "dmd2")
    _one_pass_guider(pipe)
    return pipe, base


def full_student(base: str, student: str) -> Callable[[Path], tuple[Any, torch.nn.Module | None]]:
    """A student shipped as a whole pipeline repo (FLUX.1-schnell, Z-Image-Turbo, SD3.5 Turbo, Krea 2 Turbo,
    FLUX.2 [klein]), its base's network loaded beside it."""

    def load(cache: Path) -> tuple[Any, torch.nn.Module | None]:
        pipe = _modular(REGISTRY[student].repo_id, cache)
        # The real student repos ship their base's text encoders and VAE; the tiny ones are random each, so the
        # student pipeline takes the base repo's, as conceptspace's pair does.
        network = REGISTRY[base].network_folder
        shared = _modular(REGISTRY[base].repo_id, cache).components
        pipe.update_components(
            **{n: c for n, c in shared.items() if c is not None and n not in (network, "scheduler", "guider")}
        )
        _one_pass_guider(pipe)
        return pipe, shared[network]

    return load


def qwen_lightning(cache: Path) -> tuple[Any, torch.nn.Module | None]:
    """Qwen-Image's modular pipeline with the Lightning LoRA loaded by diffusers: no second network."""
    pipe = _modular(REGISTRY["qwen-image"].repo_id, cache)
    spec = REGISTRY["qwen-image-lightning"]
    pipe.load_lora_weights(spec.repo_id, weight_name=spec.filename, cache_dir=cache)
    _student_scheduler(pipe, "qwen-image-lightning")
    _one_pass_guider(pipe)
    return pipe, None


@dataclass(frozen=True)
class Case:
    base: str
    student: str
    load: Callable[[Path], tuple[Any, torch.nn.Module | None]]


CASES = {
    "sdxl-dmd2": Case("sdxl", "dmd2", sdxl_dmd2),
    "flux-schnell": Case("flux-dev", "flux-schnell", full_student("flux-dev", "flux-schnell")),
    "qwen-image-lightning-lora": Case("qwen-image", "qwen-image-lightning", qwen_lightning),
    "z-image-turbo": Case("z-image", "z-image-turbo", full_student("z-image", "z-image-turbo")),
    "sd35-turbo": Case("sd35-large", "sd35-large-turbo", full_student("sd35-large", "sd35-large-turbo")),
    # Krea2TurboModularPipeline with Raw's transformer; Flux2KleinModularPipeline with [klein] Base's: loops
    # without a guider, whose base steps run one conditional pass
    "krea2-turbo": Case("krea2-raw", "krea2-turbo", full_student("krea2-raw", "krea2-turbo")),
    "flux2-klein": Case(
        "flux2-klein-base-4b", "flux2-klein-4b", full_student("flux2-klein-base-4b", "flux2-klein-4b")
    ),
}


def _call_kwargs(student: str) -> dict[str, Any]:
    spec = REGISTRY[student]
    steps = (
        {"timesteps": list(spec.timesteps)}
        if spec.timesteps
        else {"num_inference_steps": spec.num_inference_steps}
    )
    return dict(
        prompt=PROMPT, height=SIZE, width=SIZE, num_images_per_prompt=len(SEEDS), output_type="np", **steps
    )


class BaseCounter:
    """Counts the base's network calls: every call of a separate base network, or the calls of a LoRA student's
    network made with its adapters switched off."""

    def __init__(self, network: torch.nn.Module, lora_student: bool) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.calls = 0
        self.student_calls = 0
        layers = [m for m in network.modules() if isinstance(m, BaseTunerLayer)]
        if lora_student:
            assert layers, "the LoRA student has no adapter layers"

        def count(module: Any, args: Any, kwargs: Any) -> None:
            if not lora_student or all(layer.disable_adapters for layer in layers):
                self.calls += 1
            else:
                self.student_calls += 1

        self.handle = network.register_forward_pre_hook(count, with_kwargs=True)


@pytest.fixture(scope="module", params=list(CASES))
def loaded(request: pytest.FixtureRequest, hub_cache: Path) -> tuple[Case, Any, Any, torch.nn.Module | None]:
    case = CASES[request.param]
    pair = load_pair(case.base, case.student, cache_dir=hub_cache, device="cpu", dtype=torch.float32)
    pipe, base = case.load(hub_cache)
    return case, pair, pipe, base


@pytest.mark.parametrize("k", [1, 2])
def test_modular_hybrid_equals_conceptspace_hybrid_and_runs_the_base_k_times(loaded, k: int) -> None:
    from conceptspace.modular import hybrid

    case, pair, pipe, base = loaded
    hybrid_pipe = hybrid(pipe, base, k=k)
    network = base if base is not None else pipe.components[pair.family.network_folder]
    counter = BaseCounter(network, lora_student=base is None)
    try:
        images, schedule = hybrid_pipe(
            **_call_kwargs(case.student),
            generator=[torch.Generator().manual_seed(s) for s in SEEDS],
            output=["images", "hybrid_schedule"],
        ).values()
    finally:
        counter.handle.remove()
    reference = sample(
        pair, PROMPT, Hybrid(k=k), SEEDS, height=SIZE, width=SIZE, output_type="np", progress=False
    )

    np.testing.assert_allclose(np.asarray(images), reference.images, atol=1e-4, rtol=0)
    assert counter.calls == k  # the base guider runs one conditional pass
    assert [model for _, _, model in schedule] == [
        s.model.replace("distilled", "student") for s in reference.schedule
    ]
    assert [t for _, t, _ in schedule] == [s.timestep for s in reference.schedule]


@pytest.fixture(scope="module")
def dmd2(hub_cache: Path) -> tuple[Any, Any, torch.nn.Module]:
    pair = load_pair("sdxl", "dmd2", cache_dir=hub_cache, device="cpu", dtype=torch.float32)
    pipe, base = sdxl_dmd2(hub_cache)
    return pair, pipe, base


def _images(pipe: Any, **overrides: Any) -> np.ndarray:
    kwargs = {**_call_kwargs("dmd2"), **overrides}
    return np.asarray(
        pipe(**kwargs, generator=[torch.Generator().manual_seed(s) for s in SEEDS], output="images")
    )


def test_a_timestep_boundary_switches_where_the_matching_k_does(dmd2) -> None:
    from conceptspace.modular import hybrid

    _, pipe, base = (
        dmd2  # DMD2's timesteps 999, 749, 499, 249: a boundary at 0.7 × 1000 keeps the base for two, 0.8 for one
    )
    np.testing.assert_array_equal(
        _images(hybrid(pipe, base, k=None, boundary=0.7)), _images(hybrid(pipe, base, k=2))
    )
    np.testing.assert_array_equal(
        _images(hybrid(pipe, base, k=None, boundary=0.8)), _images(hybrid(pipe, base, k=1))
    )


def test_the_users_pipeline_is_left_as_it_was(dmd2) -> None:
    from conceptspace.modular import hybrid

    _, pipe, base = dmd2
    before = _images(pipe)
    made = hybrid(pipe, base, k=1)
    assert made.unet is pipe.unet and made.base_unet is base  # shared, not copied
    assert "base_unet" not in pipe.components
    np.testing.assert_array_equal(_images(pipe), before)
    assert not np.array_equal(_images(made), before)


def test_base_cfg_is_refused_where_the_encoder_makes_no_unconditional_embeddings(dmd2) -> None:
    from conceptspace.modular import hybrid

    _, pipe, base = dmd2
    with pytest.raises(ValueError, match="unconditional embeddings"):
        hybrid(pipe, base, k=1, base_guidance=5.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(k=0), "k must be"),
        (dict(k=None), "either k"),
        (dict(k=1, boundary=0.5), "either k"),
        (dict(k=None, boundary=1.5), "boundary must lie"),
        (dict(k=1, base_guidance=float("nan")), "base_guidance"),
    ],
)
def test_impossible_hybrids_are_refused(dmd2, options: dict[str, Any], message: str) -> None:
    from conceptspace.modular import hybrid

    _, pipe, base = dmd2
    with pytest.raises(ValueError, match=message):
        hybrid(pipe, base, **options)


def test_more_base_steps_than_the_schedule_has_is_a_clear_error(dmd2) -> None:
    from conceptspace.modular import hybrid

    _, pipe, base = dmd2
    with pytest.raises(ValueError, match="k=5 is more than the schedule's 4 steps"):
        _images(hybrid(pipe, base, k=5))


def test_a_boundary_below_the_first_timestep_and_two_base_guidances_are_refused(dmd2) -> None:
    from diffusers import ClassifierFreeGuidance

    from conceptspace.modular import hybrid

    _, pipe, base = dmd2  # DMD2's first timestep is 999: a boundary at 1000 would leave the base no step
    with pytest.raises(ValueError, match="the base would run no step"):
        _images(hybrid(pipe, base, k=None, boundary=1.0))
    with pytest.raises(ValueError, match="not both"):
        hybrid(pipe, base, k=1, base_guidance=3.0, base_guider=ClassifierFreeGuidance(guidance_scale=3.0))


def test_a_lora_students_adapters_are_left_as_the_user_had_them(hub_cache: Path) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    from conceptspace.modular import hybrid

    pipe, _ = qwen_lightning(hub_cache)
    layers = [m for m in pipe.transformer.modules() if isinstance(m, BaseTunerLayer)]
    made = hybrid(pipe, None, k=1)
    kwargs = {**_call_kwargs("qwen-image-lightning"), "num_images_per_prompt": 1}
    made(**kwargs, generator=[torch.Generator().manual_seed(0)], output="images")
    assert all(not layer.disable_adapters for layer in layers)  # on again after the base step
    pipe.transformer.disable_adapters()  # the user switched the student off: a base step must not switch it on
    made(**kwargs, generator=[torch.Generator().manual_seed(0)], output="images")
    assert all(layer.disable_adapters for layer in layers)
    pipe.transformer.enable_adapters()


def test_a_lora_free_network_without_a_base_is_a_clear_error(dmd2) -> None:
    from conceptspace.modular import hybrid

    _, pipe, _ = dmd2
    with pytest.raises(ValueError, match="no base network"):
        hybrid(pipe, None, k=1)  # before any prompt is encoded


def test_a_hybrid_is_not_made_twice_or_of_an_unsupported_pipeline(dmd2) -> None:
    from diffusers.modular_pipelines import SequentialPipelineBlocks

    from conceptspace.modular import hybrid

    _, pipe, base = dmd2
    with pytest.raises(ValueError, match="already a hybrid"):
        hybrid(hybrid(pipe, base, k=1), base, k=1)
    with pytest.raises(ValueError, match="no hybrid for"):
        hybrid(SequentialPipelineBlocks().init_pipeline(), base, k=1)


def test_the_public_hybrid_is_the_function_even_after_its_module_is_imported() -> None:
    import importlib

    importlib.import_module("conceptspace.modular.blocks")  # what diagnose imports, before any user does
    from conceptspace.modular import hybrid

    assert callable(hybrid) and hybrid.__name__ == "hybrid"


ONE_PASS_STUDENTS = {  # the student's modular pipeline, and its base's, which shares its model_name and guides
    "krea2-turbo": ("Krea2TurboModularPipeline", "Krea2ModularPipeline"),
    "flux2-klein": ("Flux2KleinModularPipeline", "Flux2KleinBaseModularPipeline"),
}


@pytest.fixture(scope="module", params=list(ONE_PASS_STUDENTS))
def one_pass_student(request: pytest.FixtureRequest, hub_cache: Path) -> tuple[str, Any, torch.nn.Module]:
    pipe, base = CASES[request.param].load(hub_cache)
    assert type(pipe).__name__ == ONE_PASS_STUDENTS[request.param][0]
    return request.param, pipe, base


def test_a_base_modular_pipeline_sharing_its_students_model_name_is_refused(
    one_pass_student, hub_cache
) -> None:
    from conceptspace.modular import hybrid

    name, pipe, base = one_pass_student
    student_class, base_class = ONE_PASS_STUDENTS[name]
    # Raw's / [klein] Base's own modular pipeline, whose loop guides
    base_pipe = _modular(REGISTRY[CASES[name].base].repo_id, hub_cache)
    assert type(base_pipe).__name__ == base_class
    assert base_pipe.blocks.model_name == pipe.blocks.model_name
    with pytest.raises(
        ValueError, match=f"base's modular pipeline.*make the hybrid from the student's \\({student_class}\\)"
    ):
        hybrid(base_pipe, base, k=1)


def test_base_cfg_is_refused_where_the_students_loop_has_no_guider(one_pass_student) -> None:
    from diffusers import ClassifierFreeGuidance

    from conceptspace.modular import hybrid

    name, pipe, base = one_pass_student
    with pytest.raises(ValueError, match="cannot run classifier-free guidance"):
        hybrid(pipe, base, k=1, base_guidance=REGISTRY[CASES[name].base].guidance_scale)  # 3.5 / 4
    with pytest.raises(ValueError, match="takes no guider; its base steps run one conditional pass"):
        hybrid(pipe, base, k=1, base_guider=ClassifierFreeGuidance(guidance_scale=3.0))


@pytest.mark.parametrize(
    ("seam", "base_guidance", "scale"),
    [
        ("stable-diffusion-xl", 0.0, 0.0),
        ("stable-diffusion-xl", 0.5, 0.0),  # diffusers' one-pass rule: CFG only above 1
        ("stable-diffusion-xl", 3.0, 3.0),
        ("z-image", 0.5, 1.5),  # Z-Image's cond + s·(cond − uncond): CFG as soon as s > 0, weight 1 + s
        ("z-image", 3.0, 4.0),
    ],
)
def test_the_base_guider_runs_the_base_as_its_family_does(
    seam: str, base_guidance: float, scale: float
) -> None:
    from conceptspace.modular.blocks import LOOP_SEAMS, base_guider_scale

    assert base_guider_scale(LOOP_SEAMS[seam], base_guidance) == scale


def test_z_image_base_guidance_below_one_is_cfg_and_needs_unconditional_embeddings(hub_cache: Path) -> None:
    """Z-Image's scale 0.5 is CFG (weight 1.5), which conceptspace's Hybrid runs with two passes; the Turbo
    student's modular encoder makes no unconditional embeddings, so the modular hybrid refuses it instead of
    silently running one pass."""
    from conceptspace.modular import hybrid

    pipe, base = CASES["z-image-turbo"].load(hub_cache)
    with pytest.raises(ValueError, match="unconditional embeddings"):
        hybrid(pipe, base, k=1, base_guidance=0.5)
