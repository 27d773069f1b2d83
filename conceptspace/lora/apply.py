"""Applying a LoRA to a network: which modules it fits (:func:`coverage`), forward hooks with a scale and a
timestep window (:func:`apply_lora`), and merging into the weights for good (:func:`merge_lora`)."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from conceptspace.lora.formats import read_lora
from conceptspace.lora.names import kohya_table
from conceptspace.lora.weights import LoRA, LoRAFormatError, LoRAMismatchError, LoRAWeights


@dataclass(frozen=True)
class ShapeMismatch:
    """A LoRA module whose UNet module exists but cannot take it."""

    name: str
    target: str
    lora_shape: tuple[int, ...]
    module_shape: tuple[int, ...] | None
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass(frozen=True)
class Coverage:
    """How a LoRA maps onto a UNet.

    ``matched``: LoRA modules that fit (``targets`` maps each to the UNet module path); ``missing``: LoRA modules
    the UNet lacks; ``mismatched``: modules the UNet has but with another shape or type; ``unexpected``: keys of the
    file that are not UNet LoRA weights (text-encoder parts), which are never applied.
    """

    lora: str
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    mismatched: tuple[ShapeMismatch, ...]
    unexpected: tuple[str, ...] = ()
    targets: Mapping[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every module of the LoRA fits the UNet."""
        return not self.missing and not self.mismatched

    @property
    def total(self) -> int:
        return len(self.matched) + len(self.missing) + len(self.mismatched)

    def summary(self) -> str:
        """One line: counts and the first example of each problem."""
        parts = [f"{len(self.matched)} of {self.total} modules fit"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the UNet (e.g. {self.missing[0]})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} with another shape or type (e.g. {self.mismatched[0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} non-UNet keys ignored (e.g. {self.unexpected[0]})")
        return ", ".join(parts)

    def __str__(self) -> str:
        lines = [f"{self.lora}: {self.summary()}"]
        for title, items in (
            ("missing", self.missing),
            ("mismatched", [str(m) for m in self.mismatched]),
            ("unexpected (not applied)", self.unexpected),
        ):
            if items:
                shown = ", ".join(items[:5]) + (f" … and {len(items) - 5} more" if len(items) > 5 else "")
                lines.append(f"  {title}: {shown}")
        return "\n".join(lines)


def coverage(unet: nn.Module, lora: LoRA | str | os.PathLike) -> Coverage:
    """Which of the LoRA's modules ``unet`` has with the right shapes (works on meta-device UNets too)."""
    lora = _as_lora(lora)
    return _plan(unet, lora)[0]


def _plan(
    unet: nn.Module, lora: LoRA
) -> tuple[Coverage, dict[str, tuple[nn.Module, str, torch.Tensor, torch.Tensor]]]:
    modules = dict(unet.named_modules())
    table = kohya_table(unet) if lora.unresolved else {}
    matched, missing, mismatched = [], [], []
    targets: dict[str, str] = {}
    plan: dict[str, tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = {}
    for name, weights in lora.modules.items():
        path = table.get(name, name)
        module = modules.get(path)
        if module is None or not path:
            missing.append(name)
            continue
        fit = _fit(module, weights)
        if isinstance(fit, str):
            base = getattr(module, "base_layer", module)
            shape = (
                tuple(base.weight.shape) if isinstance(getattr(base, "weight", None), torch.Tensor) else None
            )
            mismatched.append(ShapeMismatch(name, path, weights.shape, shape, fit))
            continue
        if path in targets.values():
            raise LoRAFormatError(
                f"{lora.name}: two of its modules name UNet module {path!r}; keep one of them"
            )
        matched.append(name)
        targets[name] = path
        plan[name] = (module, *fit)
    report = Coverage(
        lora=lora.name,
        matched=tuple(matched),
        missing=tuple(missing),
        mismatched=tuple(mismatched),
        unexpected=lora.unexpected,
        targets=targets,
    )
    return report, plan


def _fit(module: nn.Module, weights: LoRAWeights) -> tuple[str, torch.Tensor, torch.Tensor] | str:
    """("linear"|"conv", down, up) reshaped for ``module``, or why the LoRA cannot go there."""
    base = getattr(module, "base_layer", module)  # a layer peft already wrapped
    down, up = weights.down, weights.up
    if isinstance(base, nn.Linear):
        if down.ndim == 4:
            if tuple(down.shape[2:]) != (1, 1):
                return f"a {down.shape[2]}x{down.shape[3]} convolutional LoRA for a Linear layer"
            down, up = down.flatten(1), up.flatten(1)
        if down.shape[1] != base.in_features or up.shape[0] != base.out_features:
            return (
                f"LoRA shape {weights.shape} (out, in) but the UNet's Linear layer is "
                f"{(base.out_features, base.in_features)}"
            )
        return "linear", down, up
    if isinstance(base, nn.Conv2d):
        if base.groups != 1 or base.padding_mode != "zeros":
            return "a grouped or non-zero-padded Conv2d, which LoRA does not support"
        if down.ndim == 2:
            down, up = down[:, :, None, None], up[:, :, None, None]
        expected = (base.out_channels, base.in_channels, *base.kernel_size)
        if (up.shape[0], *down.shape[1:]) != expected:
            return f"LoRA shape {weights.shape} but the UNet's Conv2d weight is {expected}"
        return "conv", down, up
    return f"the UNet module is a {type(base).__name__}, not a Linear or Conv2d layer"


def _require_fit(report: Coverage, allow_partial: bool) -> None:
    if not report.matched:
        raise LoRAMismatchError(
            f"{report.lora} does not fit this UNet at all: {report.summary()}; it is for another architecture "
            "(inspect_lora(path) lists the registry models it fits)"
        )
    if not report.complete and not allow_partial:
        raise LoRAMismatchError(
            f"{report.lora} does not fit this UNet: {report.summary()}; it may be for another architecture "
            f"(inspect_lora(path) lists the registry models it fits), or pass allow_partial=True to apply the "
            f"{len(report.matched)} modules that fit"
        )


class LoRAHandle:
    """A LoRA applied to a UNet through forward hooks; the UNet's weights are untouched.

    ``scale`` and ``t_start`` may be changed at any time; ``scale`` may be a tensor of one scale per sample of the
    batch (a batch doubled for CFG gives both halves the same scales). With ``t_start`` set the LoRA is off while the current
    timestep is above it (t > t_start) and on from t_start down. The current timestep is read from each UNet
    call (``track_timestep``) or set with :meth:`set_timestep` / :meth:`at`. :meth:`remove` (or leaving a ``with``
    block) takes the hooks out and restores the UNet exactly.
    """

    def __init__(
        self,
        unet: nn.Module,
        lora: LoRA,
        coverage: Coverage,
        scale: float | torch.Tensor,
        t_start: float | None,
    ) -> None:
        self.unet = unet
        self.lora = lora
        self.coverage = coverage
        self.scale = scale if isinstance(scale, torch.Tensor) else float(scale)
        self.t_start = t_start
        self.enabled = True
        self.timestep: float | None = None
        self._hooks: list[Any] = []

    @property
    def active(self) -> bool:
        """Whether the LoRA changes the UNet's output at the current timestep."""
        if not self.enabled or (not isinstance(self.scale, torch.Tensor) and self.scale == 0.0):
            return False
        if self.t_start is None:
            return True
        if self.timestep is None:
            raise RuntimeError(
                f"{self.lora.name} has a timestep window (t_start={self.t_start}) but no current timestep: call "
                "set_timestep(t) before the UNet, or apply it with track_timestep=True"
            )
        if math.isnan(self.timestep):
            raise ValueError(
                f"{self.lora.name}: a timestep window needs one timestep per UNet call, but the batch mixes "
                "timesteps; run samples at different timesteps in separate calls"
            )
        return self.timestep <= self.t_start

    def set_timestep(self, t: float | torch.Tensor | None) -> None:
        """Set the current timestep (None: unknown; a batch of different timesteps: NaN, refused by a window)."""
        self.timestep = _timestep_value(t)

    @contextlib.contextmanager
    def at(self, t: float | torch.Tensor) -> Iterator[LoRAHandle]:
        """Within the block the current timestep is ``t``."""
        previous = self.timestep
        self.set_timestep(t)
        try:
            yield self
        finally:
            self.timestep = previous

    def remove(self) -> None:
        """Take the LoRA out; the UNet is exactly as before. Calling it twice is harmless."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @property
    def applied(self) -> bool:
        return bool(self._hooks)

    def __enter__(self) -> LoRAHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        window = f", t_start={self.t_start}" if self.t_start is not None else ""
        state = "applied" if self.applied else "removed"
        return f"LoRAHandle({self.lora.name!r}, scale={self.scale}{window}, {len(self.coverage.matched)} modules, {state})"


def apply_lora(
    unet: nn.Module,
    lora: LoRA | str | os.PathLike,
    scale: float | torch.Tensor = 1.0,
    t_start: float | None = None,
    *,
    allow_partial: bool = False,
    track_timestep: bool = True,
    timestep_to_scheduler: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LoRAHandle:
    """Apply a LoRA to ``unet`` (a base or a student of the family it was trained for) without changing weights.

    Each target layer's output gains ``scale · (alpha / rank) · up(down(x))``. Several LoRAs may be applied at
    once; their terms add. ``scale``: a number, or a tensor of one per sample. ``t_start``: off while the timestep
    is above it (the slider convention, e.g. 700). ``timestep_to_scheduler``: how the network's ``timestep``
    argument maps to the scheduler's timesteps, in which windows are given; by default the mapping registered for
    the network's class in :data:`NETWORK_TIMESTEPS`, else the identity.

    Raises:
        LoRAMismatchError: the LoRA names modules the UNet lacks or has with other shapes (unless
            ``allow_partial``, which applies the modules that fit; ``handle.coverage`` says which), or none fit.

    Example:
        >>> handle = apply_lora(pair.student_network, "age.safetensors", scale=-1.5, t_start=700)  # doctest: +SKIP
        >>> handle.scale = 2.0; ...; handle.remove()                                          # doctest: +SKIP
    """
    lora = _as_lora(lora)
    report, plan = _plan(unet, lora)
    _require_fit(report, allow_partial)
    handle = LoRAHandle(unet, lora, report, scale, t_start)
    for name, (module, kind, down, up) in plan.items():
        hook = _lora_hook(handle, kind, down, up, lora.modules[name].factor, module)
        handle._hooks.append(module.register_forward_hook(hook))
    if track_timestep:
        hook = _timestep_hook(handle, timestep_to_scheduler or _registered_timestep_map(unet))
        handle._hooks.append(unet.register_forward_pre_hook(hook, with_kwargs=True))
    return handle


def _lora_hook(
    handle: LoRAHandle, kind: str, down: torch.Tensor, up: torch.Tensor, factor: float, module: nn.Module
) -> Any:
    base = getattr(module, "base_layer", module)
    cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def factors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # factors in training (slider training) change in place every step: a cached cast would go stale
        if down.requires_grad or up.requires_grad:
            return down.to(x.device, x.dtype), up.to(x.device, x.dtype)
        key = (x.device, x.dtype)
        if key not in cache:  # cast once per device/dtype, not on every call
            cache[key] = (down.to(x.device, x.dtype), up.to(x.device, x.dtype))
        return cache[key]

    def hook(_module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        if not handle.active:
            return None  # the layer's own output, untouched
        x = inputs[0]
        d, u = factors(x)
        if kind == "linear":
            term = F.linear(F.linear(x, d), u)
        else:
            term = F.conv2d(F.conv2d(x, d, None, base.stride, base.padding, base.dilation), u)
        return output + term * (_row_scale(handle.scale, term) * factor)

    return hook


def _row_scale(scale: float | torch.Tensor, term: torch.Tensor) -> float | torch.Tensor:
    """A scalar scale as it is; one scale per sample shaped to multiply ``term`` row by row."""
    if not isinstance(scale, torch.Tensor):
        return scale
    rows = term.shape[0]
    if rows % len(scale):
        raise ValueError(f"{len(scale)} per-sample LoRA scales cannot cover a batch of {rows}")
    per_row = scale.to(term).repeat(rows // len(scale))
    return per_row.view(rows, *([1] * (term.dim() - 1)))


NETWORK_TIMESTEPS: dict[str, Callable[..., torch.Tensor]] = {}
"""Per denoising-network class name, how its ``timestep`` argument maps to the scheduler's timesteps, in which
LoRA windows are given (FLUX's transformer takes t / 1000). A mapping with a ``network`` keyword is given the
network it reads for (SANA's depends on the network's config). The model families register theirs
(:mod:`conceptspace.models.families`, listed in :data:`TIMESTEP_PROVIDERS`); other networks take the scheduler's
timestep as it is."""

TIMESTEP_KEYWORDS = ("timestep", "timesteps")
"""The keywords a network's timestep argument goes by (HiDream's transformer takes ``timesteps``); else its second
positional argument."""

TIMESTEP_PROVIDERS = ["conceptspace.models.families"]
"""Modules imported before a LoRA tracks a network's timestep, so that their mappings are registered."""


def _registered_timestep_map(network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    for module in TIMESTEP_PROVIDERS:
        importlib.import_module(module)
    mapping = NETWORK_TIMESTEPS.get(type(network).__name__)
    try:
        takes_network = mapping is not None and "network" in inspect.signature(mapping).parameters
    except (TypeError, ValueError):  # a callable without a signature takes the timestep alone
        takes_network = False
    return functools.partial(mapping, network=network) if takes_network else mapping


def _timestep_hook(handle: LoRAHandle, to_scheduler: Callable[[torch.Tensor], torch.Tensor] | None) -> Any:
    def hook(_network: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # only a window needs the timestep: reading a GPU tensor would wait for the device
        if handle.t_start is None:
            return
        key = next((k for k in TIMESTEP_KEYWORDS if kwargs.get(k) is not None), None)
        t = kwargs[key] if key is not None else args[1] if len(args) > 1 else None
        if t is not None:
            handle.set_timestep(t if to_scheduler is None else to_scheduler(t))

    return hook


def _timestep_value(t: float | torch.Tensor | None) -> float | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        values = t.detach().flatten()
        if values.numel() == 0:
            return None
        first = values[0]
        if values.numel() > 1 and not bool((values == first).all()):
            return math.nan
        return float(first)
    return float(t)


def merge_lora(
    unet: nn.Module, lora: LoRA | str | os.PathLike, scale: float = 1.0, *, allow_partial: bool = False
) -> Coverage:
    """Add ``scale · (alpha / rank) · up @ down`` to the target weights for good (no window, no removal)."""
    lora = _as_lora(lora)
    report, plan = _plan(unet, lora)
    _require_fit(report, allow_partial)
    with torch.no_grad():
        for name, (module, _kind, _down, _up) in plan.items():
            weight = getattr(module, "base_layer", module).weight
            delta = lora.modules[name].delta(torch.float32).reshape(weight.shape)
            weight.copy_((weight.float() + scale * delta.to(weight.device)).to(weight.dtype))
    return report


def _as_lora(lora: LoRA | str | os.PathLike) -> LoRA:
    return lora if isinstance(lora, LoRA) else read_lora(lora)
