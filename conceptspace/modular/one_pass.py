"""Classifier-free guidance with the one-pass rule of diffusers' classic pipelines and conceptspace: the guider
the hybrid's base steps use by default and the base of the remedy guiders."""

from __future__ import annotations

from diffusers.guiders import ClassifierFreeGuidance

__all__ = ["OnePassCFGGuidance"]


class OnePassCFGGuidance(ClassifierFreeGuidance):
    """Diffusers' ``ClassifierFreeGuidance`` with the one-pass rule of diffusers' classic pipelines and
    conceptspace (``do_classifier_free_guidance = guidance_scale > 1``): at ``guidance_scale <= 1`` (with
    ``use_original_formulation``: ``<= 0``) the network runs one conditional pass. Diffusers' modular guider
    runs two passes below 1 and returns ``uncond + s·(cond − uncond)`` — at a distilled student's guidance 0 the
    unconditional prediction alone — where conceptspace runs the student's one conditional pass. At scales >= 1
    the two guiders are the same computation.
    """

    def _is_cfg_enabled(self) -> bool:
        one_pass = self.guidance_scale <= (0.0 if self.use_original_formulation else 1.0)
        return super()._is_cfg_enabled() and not one_pass
