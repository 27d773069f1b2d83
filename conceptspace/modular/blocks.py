"""The hybrid as a Modular Diffusers block: the base network for the first steps of the student's schedule, the
student after, inside the user's own modular pipeline.

A modular pipeline's denoising loop (a ``LoopSequentialPipelineBlocks``) runs sub-blocks per step; the one named
``"denoiser"`` calls ``components.unet`` or ``components.transformer`` through ``components.guider``. The hybrid
wraps that sub-block: on a base step it hands the family's own denoiser a view of the components in which the
network is the base's (``base_unet`` / ``base_transformer``) and the guider the base's (``base_guider``), and
clears the student's guidance embedding for a base that does not take it; on a student step it runs the sub-block
untouched. The scheduler, latents and text embeddings are the pipeline's, so the base runs on the student's
timesteps — :class:`conceptspace.Hybrid` with ``base_schedule="student"``, step for step (a test holds the two
equal). For a student stored as a LoRA on the base's network (Qwen-Image-Lightning, Lightning/Hyper-SD/LCM LoRAs)
the base steps switch the network's adapters off instead of holding a second network.

The steps that ran, with the model of each, are the pipeline output ``"hybrid_schedule"``::

    images, schedule = pipe(prompt=..., output=["images", "hybrid_schedule"])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.guiders.guider_utils import BaseGuidance
from diffusers.modular_pipelines import ModularPipeline, ModularPipelineBlocks
from diffusers.modular_pipelines.modular_pipeline import LoopSequentialPipelineBlocks
from diffusers.modular_pipelines.modular_pipeline_utils import ComponentSpec, OutputParam

from conceptspace.models.families import family_of, family_of_network
from conceptspace.modular.one_pass import OnePassCFGGuidance
from conceptspace.sampling.loop import check_guidance, timestep_value

__all__ = ["HybridLoopDenoiser", "LoopSeam", "LOOP_SEAMS", "base_guider_scale", "hybrid"]


@dataclass(frozen=True)
class LoopSeam:
    """What the hybrid needs to know of one family's modular denoising loop."""

    network: str
    """The component the loop's denoiser calls: ``"unet"`` or ``"transformer"``."""
    family: str
    """conceptspace's family adapter for the same networks (``Family.name``)."""
    guidance_field: str | None = None
    """The block-state field holding the student's embedded guidance (FLUX's ``guidance``, an LCM UNet's
    ``timestep_cond``), which a base step replaces with the base's own (or None, for a base that takes none)."""
    has_guider: bool = True
    """Whether the loop guides through ``components.guider`` (FLUX's embeds its guidance instead; Krea 2 Turbo's
    and FLUX.2 [klein]'s run one conditional pass, with no guider and no negative prompt)."""
    student_pipeline: str | None = None
    """The student's modular pipeline, for a loop without a guider whose base's modular pipeline shares its
    ``model_name`` and guides: a pipeline with the base's loop is refused, naming this one."""


LOOP_SEAMS: dict[str, LoopSeam] = {
    "stable-diffusion-xl": LoopSeam("unet", "sdxl", guidance_field="timestep_cond"),
    "flux": LoopSeam("transformer", "flux", guidance_field="guidance", has_guider=False),
    "qwenimage": LoopSeam("transformer", "qwenimage"),
    "z-image": LoopSeam("transformer", "zimage"),
    "stable-diffusion-3": LoopSeam("transformer", "sd3"),
    "krea2": LoopSeam("transformer", "krea2", has_guider=False, student_pipeline="Krea2TurboModularPipeline"),
    "flux2-klein": LoopSeam(
        "transformer", "flux2", has_guider=False, student_pipeline="Flux2KleinModularPipeline"
    ),
}
"""The modular pipelines the hybrid supports, by their blocks' ``model_name``: SDXL's, FLUX.1's, Qwen-Image's,
Z-Image's, SD3's, and those of the distilled Krea 2 Turbo (``Krea2TurboModularPipeline``, Raw's transformer as the
base) and FLUX.2 [klein] (``Flux2KleinModularPipeline``, [klein] Base's). Krea 2 Raw's and [klein] Base's own
modular pipelines share their students' ``model_name`` but guide, so they are refused as students; and as the
students' loops have no guider and no negative prompt, their bases run one conditional pass (``base_guidance`` at
the family's one-pass scale, the default 0)."""


class _BaseView:
    """The pipeline's components as a base step sees them: ``swapped`` names replaced, everything else the
    pipeline's own."""

    def __init__(self, components: ModularPipeline, swapped: dict[str, Any]) -> None:
        self._components = components
        self._swapped = swapped

    def __getattr__(self, name: str) -> Any:
        swapped = self.__dict__["_swapped"]
        return swapped[name] if name in swapped else getattr(self.__dict__["_components"], name)


class HybridLoopDenoiser(ModularPipelineBlocks):
    """A loop step that runs the base for the first ``k`` steps (or for every step whose timestep is at least
    ``boundary`` × the scheduler's training timesteps, Wan2.2's convention), and the family's own denoiser step
    ``inner`` with the student after.

    Components it adds to the pipeline: ``base_<network>`` (the base network; None for a LoRA student, whose base
    steps switch the network's adapters off) and, for loops that guide, ``base_guider``.
    """

    def __init__(
        self,
        inner: ModularPipelineBlocks,
        seam: LoopSeam,
        *,
        k: int | None = 1,
        boundary: float | None = None,
        base_guidance: float = 0.0,
    ) -> None:
        super().__init__()
        if (k is None) == (boundary is None):
            raise ValueError(
                "give the hybrid either k (base steps) or boundary (a timestep fraction), not both"
            )
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"hybrid k must be a whole number of steps >= 1, got {k!r}")
        if boundary is not None and not 0 < boundary <= 1:
            raise ValueError(
                f"hybrid boundary must lie in (0, 1] (a fraction of the timesteps), got {boundary!r}"
            )
        check_guidance(base_guidance, "hybrid base_guidance")
        self.inner = inner
        self.seam = seam
        self.k = k
        self.boundary = boundary
        self.base_guidance = float(base_guidance)
        self.model_name = inner.model_name

    @property
    def description(self) -> str:
        switch = f"the first {self.k} steps" if self.k is not None else f"timesteps >= {self.boundary} x T"
        return f"Hybrid loop step: the base for {switch}, then {type(self.inner).__name__} with the student"

    @property
    def base_network_name(self) -> str:
        return f"base_{self.seam.network}"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        specs = [*self.inner.expected_components, ComponentSpec(self.base_network_name, torch.nn.Module)]
        if self.seam.has_guider:
            specs.append(
                ComponentSpec(
                    "base_guider",
                    OnePassCFGGuidance,
                    config={"guidance_scale": base_guider_scale(self.seam, self.base_guidance)},
                    default_creation_method="from_config",
                )
            )
        return specs

    @property
    def inputs(self) -> list[Any]:
        return self.inner.inputs

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        schedule = OutputParam(
            "hybrid_schedule",
            type_hint=list,
            description="The steps that ran: (step, timestep, 'base' or 'student') each",
        )
        return [*self.inner.intermediate_outputs, schedule]

    def runs_base(self, i: int, t: torch.Tensor, scheduler: Any) -> bool:
        """Whether step ``i`` (timestep ``t``) is one of the base's."""
        if self.k is not None:
            return i < self.k
        return float(t) >= self.boundary * scheduler.config.num_train_timesteps

    @torch.no_grad()
    def __call__(self, components: ModularPipeline, block_state: Any, i: int, t: torch.Tensor) -> Any:
        if i == 0 or getattr(block_state, "hybrid_schedule", None) is None:
            block_state.hybrid_schedule = []
            timesteps = getattr(block_state, "timesteps", None)
            steps = 0 if timesteps is None else len(timesteps)
            if self.k is not None and steps and self.k > steps:
                raise ValueError(f"hybrid k={self.k} is more than the schedule's {steps} steps")
            if self.k is None and not self.runs_base(0, t, components.scheduler):
                raise ValueError(
                    f"hybrid boundary={self.boundary}: the first timestep ({timestep_value(t)}) is below "
                    f"{self.boundary} x {components.scheduler.config.num_train_timesteps}, so the base would run no "
                    "step; lower the boundary"
                )
        base = self.runs_base(i, t, components.scheduler)
        block_state.hybrid_schedule.append((i, timestep_value(t), "base" if base else "student"))
        if not base:
            return self.inner(components, block_state, i, t)
        network = getattr(components, self.base_network_name, None)
        lora_student = network is None  # the base is the pipeline's own network with its adapters off
        swapped: dict[str, Any] = {}
        if lora_student:
            network = getattr(components, self.seam.network)
        else:
            swapped[self.seam.network] = network
        if self.seam.has_guider:
            swapped["guider"] = components.base_guider
        field = self.seam.guidance_field
        kept = getattr(block_state, field, None) if field else None
        if field:
            setattr(block_state, field, self._guidance_input(components, network, block_state))
        try:
            with _adapters_off(network if lora_student else None, self):
                _, block_state = self.inner(_BaseView(components, swapped), block_state, i, t)
        finally:
            if field:
                setattr(block_state, field, kept)
        return components, block_state

    def _guidance_input(self, components: Any, network: Any, block_state: Any) -> torch.Tensor | None:
        """The base's embedded guidance input (FLUX-dev's guidance scale), None for a base that takes none."""
        family = family_of_network(network)
        if family is None or not family.embeds_guidance(network):
            return None
        batch = block_state.latents.shape[0]
        guidance = family.guidance_condition(components, network, self.base_guidance, batch)
        return guidance.to(device=block_state.latents.device, dtype=block_state.latents.dtype)


@contextlib.contextmanager
def _adapters_off(network: Any, block: HybridLoopDenoiser) -> Iterator[None]:
    """A LoRA student's adapters switched off for a base step (``network``: the pipeline's own network, when no
    separate base network is given; None: nothing to do)."""
    if network is None:
        yield
        return
    if not getattr(network, "_hf_peft_config_loaded", False):
        raise ValueError(
            f"the hybrid has no base network: set {block.base_network_name} (hybrid(pipe, base_network, ...)), or "
            "load the student as a LoRA on the pipeline's network (pipe.load_lora_weights(...)) so that the base "
            "steps can switch it off"
        )
    was_on = _adapters_on(network)
    network.disable_adapters()
    try:
        yield
    finally:
        if was_on:  # as the user had them: a base step leaves no trace
            network.enable_adapters()


def _adapters_on(network: Any) -> bool:
    """Whether any of ``network``'s LoRA layers is active (peft's ``disable_adapters`` flag off)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(not layer.disable_adapters for layer in network.modules() if isinstance(layer, BaseTunerLayer))


def _denoise_loops(blocks: ModularPipelineBlocks) -> Iterator[LoopSequentialPipelineBlocks]:
    """Every denoising loop in a block tree (an auto pipeline holds one per workflow)."""
    if isinstance(blocks, LoopSequentialPipelineBlocks):
        if "denoiser" in blocks.sub_blocks:
            yield blocks
        return
    for child in getattr(blocks, "sub_blocks", {}).values():
        yield from _denoise_loops(child)


def hybrid(
    pipe: ModularPipeline,
    base_network: torch.nn.Module | None = None,
    k: int | None = 1,
    *,
    boundary: float | None = None,
    base_guidance: float = 0.0,
    base_guider: BaseGuidance | None = None,
) -> ModularPipeline:
    """The hybrid version of a student's modular pipeline: ``base_network`` for the first ``k`` steps of the
    student's schedule (or, with ``boundary``, for the steps whose timestep is at least ``boundary`` × the
    scheduler's training timesteps), the pipeline's own network after.

    Args:
        pipe: a modular pipeline set up as the student (its network, scheduler and guider): SDXL, FLUX, Qwen-Image,
            Z-Image, SD3, Krea 2 Turbo or FLUX.2 [klein] (the distilled model's).
        base_network: the base's UNet or transformer; None for a student loaded as a LoRA on the pipeline's
            network (``pipe.load_lora_weights``), whose adapters the base steps switch off.
        k: the number of base steps (conceptspace's ``Hybrid(k)``); None when ``boundary`` is given.
        boundary: switch where the timestep falls below this fraction of the training timesteps.
        base_guidance: the base's guidance scale, conceptspace's ``Hybrid.base_guidance`` (default 0: one
            conditional pass, the paper's setting); classifier-free guidance above 1, or the embedded scale for a
            base that takes one (FLUX.1-dev).
        base_guider: any diffusers guider for the base's steps instead (e.g. ``CADSGuidance``, APG); its CFG
            needs the pipeline's encoders to make unconditional embeddings, which they do when the pipeline's own
            guider uses them.

    The base's output goes to the student's scheduler as it is, so it must be in the same parametrisation: ε for
    SDXL's students, velocity for the flow families' (true of every registry pair).

    Returns:
        A new modular pipeline sharing ``pipe``'s components (nothing is copied), with ``base_<network>`` and
        ``base_guider`` added. ``pipe`` itself is unchanged.
    """
    blocks = pipe.blocks  # a copy: the user's pipeline keeps its own
    seam = LOOP_SEAMS.get(blocks.model_name)
    if seam is None:
        raise ValueError(
            f"no hybrid for {type(pipe).__name__} (model_name {blocks.model_name!r}); supported modular pipelines: "
            f"{', '.join(LOOP_SEAMS)}"
        )
    loops = list(_denoise_loops(blocks))
    if not loops:
        raise ValueError(
            f"{type(blocks).__name__} has no denoising loop with a 'denoiser' step to make hybrid"
        )
    for loop in loops:
        inner = loop.sub_blocks["denoiser"]
        if isinstance(inner, HybridLoopDenoiser):
            raise ValueError("this pipeline is already a hybrid: make the hybrid from the student's pipeline")
        if not seam.has_guider and any(spec.name == "guider" for spec in inner.expected_components):
            raise ValueError(
                f"{type(pipe).__name__}'s denoising step ({type(inner).__name__}) guides through a guider: it is the "
                f"base's modular pipeline, which shares model_name {blocks.model_name!r} with its distilled "
                f"student's; make the hybrid from the student's ({seam.student_pipeline or 'its distilled model'}) "
                "and give it this pipeline's network as base_network"
            )
        loop.sub_blocks["denoiser"] = HybridLoopDenoiser(
            inner, seam, k=k, boundary=boundary, base_guidance=base_guidance
        )
    if base_guider is not None and not seam.has_guider:
        instead = (
            "give base_guidance instead" if seam.guidance_field else "its base steps run one conditional pass"
        )
        raise ValueError(f"{type(pipe).__name__}'s loop takes no guider; {instead}")
    if not seam.has_guider and not seam.guidance_field and family_of(seam.family).cfg_weight(base_guidance):
        raise ValueError(
            f"{type(pipe).__name__}'s loop has no guider and no negative prompt, so the base cannot run "
            f"classifier-free guidance (base_guidance={base_guidance}): its base steps run one conditional pass, "
            "the paper's setting (leave base_guidance at 0)"
        )
    if base_guider is not None and base_guidance:
        raise ValueError("give the base's guidance as base_guidance or as a base_guider, not both")
    if base_network is None and not getattr(
        getattr(pipe, seam.network, None), "_hf_peft_config_loaded", False
    ):
        raise ValueError(
            f"the hybrid has no base network: give hybrid(pipe, base_network, ...) the base's {seam.network}, or "
            "load the student as a LoRA on the pipeline's network (pipe.load_lora_weights(...)) so that the base "
            "steps can switch it off"
        )
    made = blocks.init_pipeline(components_manager=pipe._components_manager, collection=pipe._collection)
    config = {name: pipe.config[name] for name in made._config_specs if name in pipe.config}
    components = {name: c for name, c in pipe.components.items() if c is not None}
    extra: dict[str, Any] = {f"base_{seam.network}": base_network}
    if seam.has_guider:
        extra["base_guider"] = (
            base_guider
            if base_guider is not None
            else OnePassCFGGuidance(guidance_scale=base_guider_scale(seam, base_guidance))
        )
    made.update_components(**components, **extra, **config)
    _check_unconditional_embeds(made)
    return made


def base_guider_scale(seam: LoopSeam, base_guidance: float) -> float:
    """The scale of diffusers' CFG (``uncond + w·(cond − uncond)``) that runs the base as conceptspace's family
    does at ``base_guidance`` (Z-Image's and Krea's ``cond + s·(cond − uncond)`` is ``w = 1 + s``), or 0 (one
    pass) where the family runs no CFG at that scale."""
    weight = family_of(seam.family).cfg_weight(base_guidance)
    return 0.0 if weight is None else float(weight)


def _check_unconditional_embeds(pipe: ModularPipeline) -> None:
    """Refuse a base guider that needs the unconditional embeddings when the pipeline's encoder will not make them
    (modular encoders make them only where the pipeline's own guider asks: ``guider.num_conditions > 1``)."""
    base_guider = pipe.components.get("base_guider")
    student_guider = pipe.components.get("guider")
    if base_guider is None or student_guider is None or base_guider.num_conditions == 1:
        return
    if student_guider.num_conditions == 1:
        raise ValueError(
            f"the base's guider ({type(base_guider).__name__}) runs {base_guider.num_conditions} passes and needs "
            "the prompt's unconditional embeddings, but this pipeline's own guider runs one pass, so its encoder "
            "will not make them: run the base with one pass (base_guidance <= 1, the paper's setting), or give "
            "the student pipeline a guider that uses them"
        )
