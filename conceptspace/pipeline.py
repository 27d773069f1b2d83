"""The hybrid and every remedy as a diffusers-style pipeline, built from the base and student pipelines a user
already has.

    >>> import torch
    >>> from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel
    >>> base = DiffusionPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0",
    ...                                          torch_dtype=torch.float16).to("cuda")          # doctest: +SKIP
    >>> unet = UNet2DConditionModel.from_pretrained(...)   # DMD2's UNet                          # doctest: +SKIP
    >>> student = DiffusionPipeline.from_pipe(base, unet=unet, scheduler=LCMScheduler.from_config(
    ...     base.scheduler.config))                                                              # doctest: +SKIP
    >>> pipe = DiversityPipeline(base, student, student="dmd2")  # the hybrid, base first  # doctest: +SKIP
    >>> images = pipe("a cute puppy", num_images_per_prompt=4,
    ...               generator=[torch.Generator().manual_seed(i) for i in range(4)]).images    # doctest: +SKIP

The student's steps, timesteps and guidance come from the registry entry named by ``student`` (``conceptspace
models`` lists them), so the call takes what a diffusers pipeline takes and nothing a regime decides.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from conceptspace.models import ModelSpec, get_spec
from conceptspace.models.loading import ModelPair, _prediction_type, _student_spec
from conceptspace.models.memory import place
from conceptspace.sampling import Regime, regime_from_name, sample

__all__ = ["DiversityPipeline", "pair_from_pipelines"]

_GENERATOR_SEED_LIMIT = 2**63 - 1


def _spec(value: str | ModelSpec) -> ModelSpec:
    return value if isinstance(value, ModelSpec) else get_spec(value)


def _base_spec_of(pipeline: Any, student: ModelSpec) -> ModelSpec:
    base = get_spec(student.base)
    expected = base.network_folder
    if not hasattr(pipeline, expected):
        raise TypeError(
            f"{type(pipeline).__name__} has no {expected!r}: {student.name!r} is a student of {base.name!r} "
            f"({base.family}), whose pipelines carry one"
        )
    return base


def pair_from_pipelines(
    base_pipeline: Any,
    student_pipeline: Any,
    student: str | ModelSpec,
    *,
    base: str | ModelSpec | None = None,
) -> ModelPair:
    """A :class:`ModelPair` over two diffusers pipelines the user already has (nothing is loaded or copied).

    The base pipeline's text encoders and VAE serve both models; the student pipeline gives its denoising network
    and its scheduler (class and config, the registry's overrides applied on top). ``student``: the student's
    registry name or spec (its steps, timesteps and guidance); ``base``: the base's (default: the student's base).

    Pipelines on which the user called ``enable_model_cpu_offload()`` keep their offload as the pair's
    ``model-offload`` plan: diffusers' hooks give way to the pair's, which keep one part on the accelerator at a time
    across both pipelines (diffusers' chains would leave the base's network there while the student's runs). The
    user's pipelines change with it: their modules carry the pair's hooks from then on (the student pipeline's own
    text encoders and VAE, unused by the pair, are left on the CPU without hooks). Sequential and group offloading
    are refused; load such a pair with ``load_pair(..., memory="group-offload")``.

    Raises ValueError when both pipelines hold the same network object (load the student's network separately, or
    its LoRA into a pipeline of its own), when they sit on different devices, and IncompatibleModelsError when the
    networks' architectures differ.
    """
    student_spec = _spec(student)
    if student_spec.role != "student":
        raise ValueError(
            f"{student_spec.name!r} is a base model; name the student (conceptspace models lists them)"
        )
    base_spec = _spec(base) if base is not None else _base_spec_of(base_pipeline, student_spec)
    student_spec = _student_spec(base_spec, student_spec)
    folder = base_spec.network_folder
    for pipeline, role in ((base_pipeline, "base"), (student_pipeline, "student")):
        if getattr(pipeline, folder, None) is None:
            raise TypeError(f"the {role} pipeline ({type(pipeline).__name__}) has no {folder}")
    for pipeline, role in ((base_pipeline, "base"), (student_pipeline, "student")):
        _refuse_other_offload(pipeline, role)
    offloaded = [pipe for pipe in (base_pipeline, student_pipeline) if getattr(pipe, "_all_hooks", None)]
    execution_device = base_pipeline._execution_device if offloaded else None
    base_network, student_network = getattr(base_pipeline, folder), getattr(student_pipeline, folder)
    if base_network is student_network:
        raise ValueError(
            f"the base and the student pipeline share one {folder} object, so the regimes could not tell them apart: "
            "give the student its own network (a LoRA student: load the LoRA into a second pipeline built with "
            "from_pretrained, not from_pipe)"
        )
    if base_network.device != student_network.device:
        raise ValueError(
            f"the base's {folder} is on {base_network.device} and the student's on {student_network.device}: move "
            "both pipelines to one device"
        )
    student_spec = replace(student_spec, scheduler=type(student_pipeline.scheduler).__name__)
    base_spec = replace(base_spec, scheduler=type(base_pipeline.scheduler).__name__)
    pair = ModelPair(
        base=base_spec,
        student=student_spec,
        pipeline=base_pipeline,
        student_network=student_network,
        base_scheduler_config=dict(base_pipeline.scheduler.config),
        student_scheduler_config=dict(student_pipeline.scheduler.config),
    )
    pair.base_prediction_type = _prediction_type(base_spec, pair.base_scheduler_config)
    pair.student_prediction_type = _prediction_type(student_spec, pair.student_scheduler_config)
    pair.family.check_compatible(
        base_network.config, student_network.config, (base_spec.name, student_spec.name)
    )
    if offloaded:
        for pipe in offloaded:
            pipe.remove_all_hooks()
        place(pair, "model-offload", execution_device)
    return pair


def _refuse_other_offload(pipeline: Any, role: str) -> None:
    """Sequential or group offloading on a user's pipeline: a ValueError that says what to do instead."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    for name, module in pipeline.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        sequential = type(getattr(module, "_hf_hook", None)).__name__ in (
            "AlignDevicesHook",
            "SequentialHook",
        )
        if sequential or _is_group_offload_enabled(module):
            kind = "sequential CPU offload" if sequential else "group offloading"
            raise ValueError(
                f"the {role} pipeline's {name} has {kind}, which DiversityPipeline does not take over (it keeps "
                "enable_model_cpu_offload()): load the pair with load_pair(base, student, memory='group-offload') "
                "and use DiversityPipeline.from_pair"
            )


def _output_class(pipeline: Any) -> type:
    """The output type the pipeline's own ``__call__`` returns (e.g. StableDiffusionXLPipelineOutput), read off its
    annotation; diffusers' ImagePipelineOutput where none is declared."""
    from diffusers.utils import BaseOutput

    annotation = inspect.signature(type(pipeline).__call__).return_annotation
    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseOutput):
            return candidate
    from diffusers import ImagePipelineOutput

    return ImagePipelineOutput


def _seeds(generator: torch.Generator | Sequence[torch.Generator] | None, count: int) -> list[int]:
    """One seed per image: a list of generators (one per image) gives their seeds, so the starting noise is
    diffusers' own for the same generators; one generator seeds one per image from its stream; None: 0, 1, …"""
    if generator is None:
        return list(range(count))
    if isinstance(generator, torch.Generator):
        return [int(s) for s in torch.randint(0, _GENERATOR_SEED_LIMIT, (count,), generator=generator)]
    generators = list(generator)
    if len(generators) != count:
        raise ValueError(
            f"{len(generators)} generators for {count} images: give one per image, or a single one"
        )
    return [int(g.initial_seed()) for g in generators]


class DiversityPipeline:
    """A base and its distilled student sampled in any regime (default: the hybrid), called like a diffusers
    pipeline and returning the student pipeline's own output type (see the module doc for an example).

    ``regime``: a :class:`~conceptspace.sampling.Regime` or its name — ``"hybrid"``, ``"distilled"``, ``"base"``,
    or a remedy of :mod:`conceptspace.remedies` (``"cads"``, ``"cond-noise"``, ``"interval-guidance"``,
    ``"renoise"``, or ``SliderSpaceScales(sliders=…)``). ``pair`` is the :class:`ModelPair` it samples, for
    everything else conceptspace does (``compare``, trajectories, SliderSpace).
    """

    def __init__(
        self,
        base_pipeline: Any,
        student_pipeline: Any,
        student: str | ModelSpec,
        regime: Regime | str = "hybrid",
        *,
        base: str | ModelSpec | None = None,
        batch_size: int = 4,
    ) -> None:
        pair = pair_from_pipelines(base_pipeline, student_pipeline, student, base=base)
        self._set_up(pair, regime, batch_size, _output_class(student_pipeline))

    def _set_up(self, pair: ModelPair, regime: Regime | str, batch_size: int, output_class: type) -> None:
        self.pair = pair
        self.regime = regime_from_name(regime) if isinstance(regime, str) else regime
        self.batch_size = batch_size
        self.output_class = output_class
        self.regime.segments(self.pair, self.pair.device)  # a regime that cannot run on this pair fails now

    @classmethod
    def from_pair(
        cls, pair: ModelPair, regime: Regime | str = "hybrid", *, batch_size: int = 4
    ) -> DiversityPipeline:
        """The pipeline of a pair conceptspace loaded (``load_pair("sdxl", "dmd2")``), sampling the pair itself: no
        weight is copied (a LoRA student stays an adapter on the base's network)."""
        if pair.student is None:
            raise ValueError("the pair has no student: load_pair(base, student)")
        pipeline = cls.__new__(cls)
        pipeline._set_up(pair, regime, batch_size, _output_class(pair.pipeline))
        return pipeline

    def __repr__(self) -> str:
        return (
            f"DiversityPipeline({self.pair.base.name} → {self.pair.student.name}, regime={self.regime.name})"
        )

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        regime: Regime | str | None = None,
        **unsupported: Any,
    ) -> Any:
        """Images for each prompt, prompt after prompt (as diffusers orders them).

        ``generator``: one per image (``len(prompts) × num_images_per_prompt``) for diffusers' own starting noise,
        or one for all. ``regime`` overrides the pipeline's for this call. Steps, timesteps and guidance belong to
        the regime and the registry entries, so ``num_inference_steps`` and the like are refused with a pointer.
        """
        if unsupported:
            names = ", ".join(sorted(unsupported))
            raise TypeError(
                f"DiversityPipeline does not take {names}: steps, timesteps and guidance are the regime's (e.g. "
                "Hybrid(k=2), Distilled(steps=2), Base(guidance_scale=7)) — pass regime=…"
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompt given")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        chosen = (
            self.regime if regime is None else regime_from_name(regime) if isinstance(regime, str) else regime
        )
        seeds = _seeds(generator, len(prompts) * num_images_per_prompt)
        images: list[Any] = []
        for index, text in enumerate(prompts):
            result = sample(
                self.pair,
                text,
                chosen,
                seeds[index * num_images_per_prompt : (index + 1) * num_images_per_prompt],
                negative_prompt=negative_prompt,
                height=height,
                width=width,
                batch_size=self.batch_size,
                output_type=output_type,  # type: ignore[arg-type]
                progress=False,
            )
            images.append(result.images)
        if output_type == "pil":
            joined: Any = [image for batch in images for image in batch]
        elif output_type == "np":
            import numpy as np

            joined = np.concatenate(images)
        else:
            joined = torch.cat(images)
        if not return_dict:
            return (joined,)
        # fields beside the images (StableDiffusionPipelineOutput's nsfw_content_detected) are None, as diffusers
        # leaves them when no safety checker ran
        others = {
            f.name: None
            for f in dataclasses.fields(self.output_class)
            if f.name != "images"
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        }
        return self.output_class(images=joined, **others)
