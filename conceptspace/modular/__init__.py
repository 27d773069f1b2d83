"""conceptspace inside diffusers' own Modular pipelines: the hybrid as a loop-denoiser block, and the remedies as
guiders.

- :func:`hybrid` turns a user's modular pipeline (SDXL, FLUX, Qwen-Image, Z-Image, SD3) into the hybrid one: the
  base network for the first ``k`` steps of the student's schedule, the student after.
- :class:`CADSGuidance`, :class:`CondNoiseGuidance` and :class:`UncondFirstGuidance` are ``BaseGuidance``
  subclasses that plug into any modular pipeline with ``pipe.update_components(guider=...)``.

Importing this package imports diffusers' modular pipelines; ``import conceptspace`` does not.
"""

from typing import TYPE_CHECKING

from conceptspace._lazy import lazy_exports

_EXPORTS = {
    "conceptspace.modular.blocks": ("HybridLoopDenoiser", "hybrid"),
    "conceptspace.modular.cads": ("CADSGuidance",),
    "conceptspace.modular.cond_noise": ("CondNoiseGuidance",),
    "conceptspace.modular.uncond_first": ("UncondFirstGuidance",),
}

if TYPE_CHECKING:
    from conceptspace.modular.blocks import HybridLoopDenoiser, hybrid
    from conceptspace.modular.cads import CADSGuidance
    from conceptspace.modular.cond_noise import CondNoiseGuidance
    from conceptspace.modular.uncond_first import UncondFirstGuidance

__all__ = ["CADSGuidance", "CondNoiseGuidance", "HybridLoopDenoiser", "UncondFirstGuidance", "hybrid"]
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
