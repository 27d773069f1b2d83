"""A LoRA in memory: per-module factors and alpha, the file's metadata, and the errors a LoRA raises."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from conceptspace.lora.names import KOHYA_PREFIXES, kohya_table, network_name, split_bfl_flux


class LoRAFormatError(ValueError):
    """A file that is not a readable LoRA (truncated, not a LoRA, inconsistent ranks, unsupported variant)."""


class LoRAMismatchError(ValueError):
    """A LoRA whose modules are missing from, or have other shapes than, the UNet it is applied to."""


@dataclass
class LoRAWeights:
    """One module's LoRA factors: ``delta W = (alpha / rank) · up @ down``.

    ``down``: (rank, in) for a linear layer, (rank, in, kh, kw) for a convolution; ``up``: (out, rank), or
    (out, rank, 1, 1) for a convolution.
    """

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def factor(self) -> float:
        """``alpha / rank``, the factor the product ``up @ down`` is multiplied by."""
        return self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the weight the module changes: (out, in) or (out, in, kh, kw)."""
        return (int(self.up.shape[0]), *(int(s) for s in self.down.shape[1:]))

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(alpha / rank) · up @ down`` in the shape of the module's weight."""
        product = self.up.flatten(1).to(dtype) @ self.down.flatten(1).to(dtype)
        return (product * self.factor).reshape(self.shape)


@dataclass
class LoRA:
    """A UNet LoRA: :class:`LoRAWeights` per module, and metadata.

    ``modules`` is keyed by diffusers module path; a kohya name whose path can only be told with the target UNet
    in hand (the SD naming ``lora_unet_input_blocks_…``, or unknown module names) stays as it is in the file until
    :meth:`resolve`, :func:`apply_lora` or :func:`coverage` maps it. ``metadata`` is what :func:`write_lora` stored
    (rank, alpha, target modules, base model, recipe, …); ``header`` is the file's raw safetensors header.
    ``unexpected`` lists the file's keys that are not UNet LoRA weights (text-encoder parts): never applied.
    """

    modules: dict[str, LoRAWeights]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    format: str | None = None
    header: dict[str, str] = field(default_factory=dict)
    unexpected: tuple[str, ...] = ()
    network: str = "unet"
    """The pipeline component the LoRA is for (``unet`` or ``transformer``): the key prefix of diffusers files."""

    def __len__(self) -> int:
        return len(self.modules)

    @property
    def name(self) -> str:
        return self.source or "LoRA"

    @property
    def ranks(self) -> dict[str, int]:
        return {name: weights.rank for name, weights in self.modules.items()}

    @property
    def rank(self) -> int:
        """The rank of its modules (the largest, when they differ: see :attr:`ranks`)."""
        return max(self.ranks.values(), default=0)

    @property
    def alphas(self) -> dict[str, float]:
        return {name: weights.alpha for name, weights in self.modules.items()}

    @property
    def alpha(self) -> float | None:
        """The alpha all modules share, or None when they differ (see :attr:`alphas`)."""
        values = set(self.alphas.values())
        return values.pop() if len(values) == 1 else None

    @property
    def unresolved(self) -> list[str]:
        """Kohya names not yet mapped to diffusers module paths (see :meth:`resolve`)."""
        return [name for name in self.modules if name.startswith(KOHYA_PREFIXES)]

    def to(self, dtype: torch.dtype) -> LoRA:
        """A copy with every factor in ``dtype`` (alphas are kept exactly)."""
        modules = {k: replace(w, down=w.down.to(dtype), up=w.up.to(dtype)) for k, w in self.modules.items()}
        return replace(self, modules=modules)

    def resolve(self, unet: nn.Module) -> LoRA:
        """A copy with kohya names mapped to ``unet``'s module paths (names it lacks are kept as they are); FLUX's
        fused Black Forest Labs names become one entry per diffusers module (see :mod:`conceptspace.lora.names`)."""
        table = kohya_table(unet)
        network_modules = dict(unet.named_modules())
        modules: dict[str, LoRAWeights] = {}
        origin: dict[str, str] = {}
        for name, weights in self.modules.items():
            parts = split_bfl_flux(name, weights, network_modules) if name not in table else None
            for path, part in (parts or {table.get(name, name): weights}).items():
                if path in modules:
                    raise LoRAFormatError(
                        f"{self.name}: {origin[path]!r} and {name!r} both name module {path!r}; the file mixes "
                        "two naming schemes or two LoRAs: keep one of them"
                    )
                modules[path], origin[path] = part, name
        return replace(self, modules=modules, network=network_name(unet))


def lora_digest(lora: LoRA) -> str:
    """A SHA-256 of what a LoRA does (its network, module names, factors and alphas; not its file name or
    metadata): two LoRAs with one digest change a model identically."""
    import hashlib

    digest = hashlib.sha256(lora.network.encode())
    for name in sorted(lora.modules):
        weights = lora.modules[name]
        digest.update(f"{name}\0{weights.alpha!r}".encode())
        for factor in (weights.down, weights.up):
            tensor = factor.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
