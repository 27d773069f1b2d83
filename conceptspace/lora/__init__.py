"""LoRA files in and out, and applying them to any UNet of a family, base or distilled student.

A :class:`LoRA` holds, per target module, the ``down`` (rank × in, or rank × in × kh × kw for a convolution) and
``up`` (out × rank) factors and ``alpha``; the module adds ``scale · (alpha / rank) · up(down(x))`` to the
layer's output. Modules are named by their path in diffusers' ``UNet2DConditionModel``
(``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``).

Read: kohya files (``lora_unet_<module>.{lora_down.weight,lora_up.weight,alpha}``, as Concept Sliders,
SliderSpace, A1111 and ComfyUI use, in diffusers naming or the original SD naming ``input_blocks``/
``middle_block``/``output_blocks``), diffusers files (``unet.<module>.lora_A/lora_B.weight`` and the older
``unet.<module>.lora.down/up.weight``), Qwen-Image-Lightning's ``diffusion_model.<module>.lora_down/lora_up.weight``
with ``.alpha``, peft state dicts and adapter folders. ``.safetensors`` files, and pickles
only through ``torch.load(weights_only=True)``. Write: diffusers files that ``pipe.load_lora_weights`` loads, and
kohya files, with rank, alpha, target modules and the caller's metadata in the safetensors header.

Applying (:func:`apply_lora`) leaves the UNet's weights alone: forward hooks add each LoRA's term, so several LoRAs
stack, each has its own scale (negative too) and timestep window, and :meth:`LoRAHandle.remove` restores the UNet
exactly. :func:`merge_lora` changes the weights for good. :func:`coverage` says which modules a LoRA finds in a
UNet; a LoRA that does not fit is refused with :class:`LoRAMismatchError` unless ``allow_partial``.

The package: :mod:`~conceptspace.lora.weights` (the :class:`LoRA` in memory), :mod:`~conceptspace.lora.names`
(kohya, SD and FLUX module names → diffusers paths), :mod:`~conceptspace.lora.formats` (files in and out) and
:mod:`~conceptspace.lora.apply` (coverage, hooks with windows, merging).
"""

from conceptspace.lora.apply import (
    NETWORK_TIMESTEPS,
    TIMESTEP_PROVIDERS,
    Coverage,
    LoRAHandle,
    ShapeMismatch,
    apply_lora,
    coverage,
    merge_lora,
)
from conceptspace.lora.formats import (
    DIFFUSERS_HEADER_KEY,
    HEADER_KEY,
    LoRAFileFormat,
    read_lora,
    write_lora,
)
from conceptspace.lora.names import KOHYA_PREFIX, KOHYA_PREFIXES, network_name
from conceptspace.lora.weights import LoRA, LoRAFormatError, LoRAMismatchError, LoRAWeights, lora_digest

__all__ = [
    "DIFFUSERS_HEADER_KEY",
    "HEADER_KEY",
    "KOHYA_PREFIX",
    "KOHYA_PREFIXES",
    "NETWORK_TIMESTEPS",
    "TIMESTEP_PROVIDERS",
    "Coverage",
    "LoRA",
    "LoRAFileFormat",
    "LoRAFormatError",
    "LoRAHandle",
    "LoRAMismatchError",
    "LoRAWeights",
    "ShapeMismatch",
    "apply_lora",
    "coverage",
    "lora_digest",
    "merge_lora",
    "network_name",
    "read_lora",
    "write_lora",
]
