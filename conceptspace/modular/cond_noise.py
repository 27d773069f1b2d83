"""Seed-variance conditioning noise as a diffusers guider, for any modular pipeline.

The ComfyUI SeedVarianceEnhancer node and InvokeAI's Z-Image option (invoke-ai/InvokeAI#8753) add seeded noise to
a share of the prompt embedding's values for the first steps, so a distilled model's samples of one prompt differ
more. This guider does it inside a modular pipeline's loop: the conditional batch's text inputs get the noise of
:func:`conceptspace.sampling.remedies.cond_noise_perturb` — the :class:`~conceptspace.remedies.CondNoise` regime's
maths and per-sample draws — at the steps before ``until``, then classifier-free guidance combines as usual.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config

from conceptspace.modular.cads import DEFAULT_MASK_INPUTS, DEFAULT_TEXT_INPUTS, SeededConditioningGuidance
from conceptspace.sampling.remedies import CondNoise, cond_noise_perturb

__all__ = ["CondNoiseGuidance"]


class CondNoiseGuidance(SeededConditioningGuidance):
    """Seeded noise on the conditional branch's text embedding for the first steps ("seed variance"
    enhancement), on top of classifier-free guidance: ``pipe.update_components(guider=CondNoiseGuidance(...))``.

    At the steps with ``step / num_inference_steps < until`` (what the loop gives ``set_state``), a ``share`` of
    each text input's values gets noise of ``strength`` times its per-sample standard deviation; the same draw
    per sample at every such step, from the sample's seed (:meth:`set_seeds`). The unconditional batch is
    untouched. Exactly the :class:`~conceptspace.remedies.CondNoise` regime (whose steps are active where
    ``position / total < until``), so with the same seeds and guidance the images are conceptspace's.

    The parameters, for SeedVarianceEnhancer and InvokeAI users:

    - ``strength`` — InvokeAI's calibrated strength: the noise's std relative to the embedding's own (range 0–2;
      default 1.0), so one number means the same on every text encoder (the SeedVarianceEnhancer node's
      strength is on its own scale and is not converted here).
    - ``share`` — SeedVarianceEnhancer's "percentage of values" to noise, as a fraction (50 % → 0.5, default).
    - ``until`` — SeedVarianceEnhancer's "percentage of steps" from the start, as a fraction (20 % → 0.2,
      default: the first step of a 4-step student, the first two of 8).

    ``strength=0`` is diffusers' ``ClassifierFreeGuidance`` at the same ``guidance_scale`` exactly (at scales
    >= 1; below, one conditional pass: :class:`~conceptspace.modular.one_pass.OnePassCFGGuidance`).

    Args:
        guidance_scale: default 1.0, one conditional pass, as a distilled student runs.
        text_inputs, mask_inputs: which guider inputs are text and which mark padding
            (:data:`~conceptspace.modular.cads.DEFAULT_TEXT_INPUTS`, ``DEFAULT_MASK_INPUTS``).
        seed: the fallback seeds ``seed + i`` when none are set.
        guidance_rescale, use_original_formulation, start, stop, enabled: as ``ClassifierFreeGuidance``'s.
    """

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 1.0,
        strength: float = 1.0,
        share: float = 0.5,
        until: float = 0.2,
        text_inputs: dict[str, str] | list[str] = DEFAULT_TEXT_INPUTS,  # noqa: B006 (copied, never changed)
        mask_inputs: list[str] = DEFAULT_MASK_INPUTS,  # noqa: B006
        seed: int = 0,
        guidance_rescale: float = 0.0,
        use_original_formulation: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        CondNoise(strength=strength, share=share, until=until)  # the regime's checks: one home
        super().__init__(
            owner="cond-noise",
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            use_original_formulation=use_original_formulation,
            start=start,
            stop=stop,
            enabled=enabled,
            text_inputs=text_inputs,
            mask_inputs=mask_inputs,
            seed=seed,
        )
        self.strength, self.share, self.until = strength, share, until

    def perturbs(self) -> bool:
        if self._step is None or not self._num_inference_steps:
            raise ValueError(
                "CondNoiseGuidance needs the step and the number of steps: the loop calls set_state() first"
            )
        return self.strength != 0 and self._step / self._num_inference_steps < self.until

    def perturb(
        self, clean: torch.Tensor, real: torch.Tensor, seeds: tuple[int, ...], name: str
    ) -> torch.Tensor:
        return cond_noise_perturb(clean, real, seeds, name, self.strength, self.share)
