""" "CFG 0 for the first step(s)" as a diffusers guider, for any modular pipeline.

A distilled student commits to a composition at its first step, and the prompt pulls every seed towards the same
one; users of Z-Image-Turbo, SDXL-Lightning and the like run the first step(s) without the prompt (the empty or
negative prompt alone, "CFG 0") and the prompt after. This guider does so inside a modular pipeline's loop: for
the first ``steps`` steps it hands the network only the unconditional inputs, in one pass; after, it is
classifier-free guidance. The regime :class:`~conceptspace.remedies.UncondFirst` is the same method in
conceptspace's sampler, and the tests hold the two to the same images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import GuiderOutput

from conceptspace.modular.one_pass import OnePassCFGGuidance
from conceptspace.sampling.loop import check_guidance

if TYPE_CHECKING:
    from diffusers.modular_pipelines.modular_pipeline import BlockState

__all__ = ["UncondFirstGuidance"]


class UncondFirstGuidance(OnePassCFGGuidance):
    """The unconditional inputs alone, in one pass, for the first ``steps`` steps (default 1); classifier-free
    guidance at ``guidance_scale`` after (default 1.0: one conditional pass, as a distilled student runs).
    ``pipe.update_components(guider=UncondFirstGuidance(...))``.

    The unconditional inputs are what the pipeline encodes for CFG: the negative prompt's embeddings, or without
    one its default (SDXL: zeros, per ``force_zeros_for_empty_prompt``). Pipelines encode them where the guider's
    ``num_conditions`` is above 1 before the loop, so this guider reports 2 there whenever it will need them, and
    forgets its step when the loop's last step is done (so the next call's encoder asks again). During the first
    steps its one batch carries the unconditional inputs and the output's ``pred``, ``pred_cond`` and
    ``pred_uncond`` are all that one prediction (a loop that rescales ``pred`` to ``pred_cond``'s norm, as
    Qwen-Image's does, then changes nothing).

    ``steps=0`` is diffusers' ``ClassifierFreeGuidance`` at the same ``guidance_scale`` exactly (at scales >= 1;
    below, one conditional pass: :class:`~conceptspace.modular.one_pass.OnePassCFGGuidance`); ``enabled=False`` is
    one plain conditional pass at every step. ``guidance_rescale``, ``use_original_formulation``, ``start`` and
    ``stop`` are ``ClassifierFreeGuidance``'s, for the guided steps.
    """

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 1.0,
        steps: int = 1,
        guidance_rescale: float = 0.0,
        use_original_formulation: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
            raise ValueError(f"uncond-first: steps must be a whole number >= 0 (0: plain CFG), got {steps!r}")
        check_guidance(guidance_scale, "uncond-first: guidance_scale")
        # by keyword: diffusers' config decorator marks positional arguments as defaults, which from_config drops
        super().__init__(
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            use_original_formulation=use_original_formulation,
            start=start,
            stop=stop,
            enabled=enabled,
        )
        self.steps = steps

    def unconditional_phase(self) -> bool:
        """Whether the current step (set by ``set_state``) runs the unconditional inputs alone."""
        return self._enabled and self._step is not None and self._step < self.steps

    @property
    def num_conditions(self) -> int:
        if self._step is None:  # before the loop: what the pipeline must encode
            return 2 if (self._enabled and self.steps > 0) or self._is_cfg_enabled() else 1
        return 1 if self.unconditional_phase() else super().num_conditions

    @property
    def is_conditional(self) -> bool:
        return not self.unconditional_phase() and super().is_conditional

    def prepare_inputs(self, data: dict[str, Any]) -> list[BlockState]:
        if not self.unconditional_phase():
            return super().prepare_inputs(data)
        self.check_unconditional(
            [key for key, v in data.items() if isinstance(v, tuple) and v[0] is not None and v[1] is None]
        )
        return [self._prepare_batch(data, 1, "pred_uncond")]

    def prepare_inputs_from_block_state(
        self, data: BlockState, input_fields: dict[str, str | tuple[str, str]]
    ) -> list[BlockState]:
        if not self.unconditional_phase():
            return super().prepare_inputs_from_block_state(data, input_fields)
        self.check_unconditional(
            [
                uncond
                for cond, uncond in (v for v in input_fields.values() if isinstance(v, tuple))
                if getattr(data, cond, None) is not None and getattr(data, uncond, None) is None
            ]
        )
        return [self._prepare_batch_from_block_state(input_fields, data, 1, "pred_uncond")]

    def check_unconditional(self, missing: list[str]) -> None:
        if missing:
            raise ValueError(
                f"UncondFirstGuidance runs the unconditional inputs at its first {self.steps} step(s), but "
                f"{', '.join(missing)} is missing: the pipeline encodes them when the guider's num_conditions is "
                "above 1 before the loop (set this guider before calling the pipeline, or pass the negative "
                "embeddings)"
            )

    def forward(
        self, pred_cond: torch.Tensor | None = None, pred_uncond: torch.Tensor | None = None
    ) -> GuiderOutput:
        if self.unconditional_phase():
            return GuiderOutput(pred=pred_uncond, pred_cond=pred_uncond, pred_uncond=pred_uncond)
        return super().forward(pred_cond, pred_uncond)

    def __call__(self, data: list[BlockState]) -> Any:
        output = super().__call__(data)
        if (
            self._step is not None
            and self._num_inference_steps
            and self._step + 1 >= self._num_inference_steps
        ):
            self._step = self._num_inference_steps = self._timestep = None  # the run is over
        return output
