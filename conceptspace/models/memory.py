"""Memory plans: what a pair holds, where each part sits while a regime runs, and which plan fits a card.

A pair is two denoisers sharing text encoders and a VAE, used one after the other, so at any moment only one of its
parts works. The plans place the parts accordingly:

- ``resident``: every part on the accelerator for good (fastest; the peak is the whole pair).
- ``model-offload``: each part on the accelerator only while it runs — the text encoders, then the base for its
  steps, then the student, then the VAE — through accelerate's hooks; the peak is the largest part.
- ``group-offload``: diffusers' group offloading, a block of a network at a time (for parts larger than the card).

fp8 storage (diffusers' layerwise casting) and networks a user quantized work under every plan. The hooks are
accelerate's and diffusers'; written here is only what is about two models sharing one schedule: one part on the
accelerator at a time, and a ledger of every move, which is also what the accounting reads on a machine without an
accelerator (there every plan runs, and gives the same images).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from conceptspace.models.loading import ModelPair

MemoryPlan = Literal["resident", "model-offload", "group-offload"]
PLANS: tuple[MemoryPlan, ...] = ("resident", "model-offload", "group-offload")
"""The plans, cheapest first (``auto`` picks the first that fits among the first two)."""

FP8 = torch.float8_e4m3fn
"""The storage dtype of ``fp8=True``: weights kept in 8 bits and cast to the compute dtype layer by layer."""


# ------------------------------------------------------------------------------------------------------ accounting
def storage_bytes(tensors: Iterable[torch.Tensor], seen: set[tuple[str, int]] | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a storage shared by two tensors, or already in ``seen``,
    counts once; meta tensors hold none)."""
    seen = set() if seen is None else seen
    total = 0
    for tensor in tensors:
        if tensor.device.type == "meta":
            continue
        if hasattr(
            tensor, "__tensor_flatten__"
        ):  # a quantized weight (torchao…) holds its data in inner tensors
            names, _ = tensor.__tensor_flatten__()
            total += storage_bytes((getattr(tensor, name) for name in names), seen)
            continue
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def module_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """A module's parameters and buffers."""
    yield from module.parameters()
    yield from module.buffers()


def pair_parts(pair: ModelPair) -> dict[str, tuple[nn.Module, ...]]:
    """The pair's parts in the order a sampling call uses them: the pipeline's text encoders (one part: a prompt
    runs through all of them, with CFG twice), its denoising network (``"base"``; with a LoRA student held as an
    adapter it is the student's network too), the student's own network (``"student"``), the VAE, and any other
    module the pipeline carries (an image encoder …) under its own name."""
    components = {
        name: module for name, module in pair.pipeline.components.items() if isinstance(module, nn.Module)
    }
    folder = pair.family.network_folder
    encoders = tuple(module for name, module in components.items() if name.startswith("text_encoder"))
    parts = {"text_encoders": encoders} if encoders else {}
    parts["base"] = (components[folder],)
    if pair.student_network is not None and pair.student_network is not components[folder]:
        parts["student"] = (pair.student_network,)
    if "vae" in components:
        parts["vae"] = (components["vae"],)
    for name, module in components.items():
        if name not in (folder, "vae") and not name.startswith("text_encoder"):
            parts[name] = (module,)
    return parts


def held_bytes(pair: ModelPair) -> dict[str, int]:
    """Bytes each part holds, every storage counted once in the first part that holds it; a LoRA student held as an
    adapter adds ``"student_adapter"`` (its factors)."""
    seen: set[tuple[str, int]] = set()
    held = {
        name: storage_bytes((t for module in modules for t in module_tensors(module)), seen)
        for name, modules in pair_parts(pair).items()
    }
    if pair.student_adapter is not None:
        factors = (t for w in pair.student_adapter.lora.modules.values() for t in (w.down, w.up))
        held["student_adapter"] = storage_bytes(factors, seen)
    return held


# ------------------------------------------------------------------------------------------------------ placement
@dataclass(frozen=True)
class Move:
    """One move of a part: onto the accelerator (``"on"``) or back to the offload device (``"off"``)."""

    part: str
    direction: Literal["on", "off"]


@dataclass
class Placement:
    """Which parts are on the accelerator under ``model-offload``: the part that is about to run is moved on, every
    other part off first, so at most one part is resident; every move is logged in ``moves``. The last part used
    (the VAE, after a sampling call) stays until another runs; :meth:`release` frees it, as diffusers' pipelines do
    at the end of a call.

    ``sizes`` (bytes per part) let it keep ``peak_bytes``, the most bytes resident at once by this accounting (what
    the plan promises; a GPU's allocator adds the activations on top). ``pinned_bytes`` stay on the accelerator
    throughout: a LoRA student's factors, which its hooks keep where the network runs.
    """

    parts: dict[str, tuple[nn.Module, ...]]
    execution_device: torch.device
    offload_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sizes: dict[str, int] = field(default_factory=dict)
    pinned_bytes: int = 0
    resident: list[str] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    peak_bytes: int = 0

    def activate(self, name: str) -> None:
        """Make ``name`` the one part on the accelerator."""
        for other in [part for part in self.resident if part != name]:
            self._move(other, "off")
        if name not in self.resident:
            self._move(name, "on")

    def release(self) -> None:
        """Every part back to the offload device."""
        for part in list(self.resident):
            self._move(part, "off")

    def add(self, name: str, modules: tuple[nn.Module, ...], size: int | None = None) -> None:
        """Place a part under this plan: on the offload device, moved on by a hook when it runs."""
        from accelerate.hooks import add_hook_to_module

        self.parts[name] = modules
        self.sizes[name] = (
            storage_bytes(t for m in modules for t in module_tensors(m)) if size is None else size
        )
        for module in modules:
            module.to(self.offload_device)
            add_hook_to_module(module, _part_hook(self, name))

    def drop(self, name: str) -> None:
        """Take a part out of this plan (its hooks removed, its module left on the offload device)."""
        from accelerate.hooks import remove_hook_from_module

        if name in self.resident:
            self._move(name, "off")
        for module in self.parts.pop(name, ()):
            remove_hook_from_module(module)
        self.sizes.pop(name, None)

    @property
    def resident_bytes(self) -> int:
        return self.pinned_bytes + sum(self.sizes.get(part, 0) for part in self.resident)

    def _move(self, name: str, direction: Literal["on", "off"]) -> None:
        device = self.execution_device if direction == "on" else self.offload_device
        try:
            for module in self.parts[name]:
                module.to(device)
        except BaseException:
            # (out of memory half-way: put the part back where the ledger says it is, so nothing is stranded)
            for module in self.parts[name]:
                module.to(self.offload_device if direction == "on" else self.execution_device)
            raise
        if direction == "on":
            self.resident.append(name)
        else:
            self.resident.remove(name)
        self.moves.append(Move(name, direction))
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)


def _part_hook(placement: Placement, name: str) -> Any:
    """An accelerate hook that makes ``name`` the resident part before its forward (and before a VAE's ``decode``,
    which diffusers routes through the same hook)."""
    from accelerate.hooks import ModelHook
    from accelerate.utils import send_to_device

    class PartOnAccelerator(ModelHook):
        execution_device = placement.execution_device  # what diffusers' pipelines read as _execution_device

        def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            placement.activate(name)
            device = placement.execution_device
            return send_to_device(args, device), send_to_device(kwargs, device)

    return PartOnAccelerator()


def apply_model_offload(pair: ModelPair, device: torch.device) -> Placement:
    """``model-offload`` on ``pair``: every part starts on the CPU and is moved to ``device`` while it runs."""
    sizes = held_bytes(pair)
    placement = Placement({}, torch.device(device), pinned_bytes=sizes.pop("student_adapter", 0))
    for name, modules in pair_parts(pair).items():
        placement.add(name, modules, sizes[name])
    return placement


def _group_offload(module: nn.Module, device: torch.device, networks: bool) -> None:
    """diffusers' group offloading on one module: a top-level block at a time for a denoising network (its transfers
    overlapping compute through a CUDA stream where there is one), a layer at a time for the others (text encoders
    and VAEs keep no block lists); without a stream, so that a VAE's float32 upcast stays put."""
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(
        module,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level" if networks else "leaf_level",
        num_blocks_per_group=1 if networks else None,
        use_stream=networks and device.type == "cuda",
    )


def apply_group_offload(pair: ModelPair, device: torch.device) -> None:
    """``group-offload`` on ``pair``: :func:`_group_offload` on every part."""
    networks = {id(pair.base_network), id(pair.student_network)}
    for module in (module for modules in pair_parts(pair).values() for module in modules):
        _group_offload(module, torch.device(device), id(module) in networks)


def group_bytes(module: nn.Module, by_blocks: bool) -> int:
    """The largest group group offloading moves at once: a top-level block (an item of a ModuleList or Sequential
    child) or the rest of the module, for ``by_blocks``; else the largest layer."""
    if by_blocks:
        groups: list[Iterable[torch.Tensor]] = []
        rest: list[torch.Tensor] = []
        for child in module.children():
            if isinstance(child, nn.ModuleList | nn.Sequential):
                groups.extend(module_tensors(block) for block in child)
            else:
                rest.extend(module_tensors(child))
        rest.extend(module.parameters(recurse=False))
        return max([storage_bytes(group) for group in groups] + [storage_bytes(rest)])
    leaves = [m for m in module.modules() if not list(m.children())]
    return max((storage_bytes(module_tensors(leaf)) for leaf in leaves), default=0)


def _store_in_fp8(network: nn.Module, compute: torch.dtype) -> None:
    network.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute)


def store_in_fp8(pair: ModelPair) -> None:
    """Keep the denoising networks' weights in fp8 (diffusers' layerwise casting: each layer is cast to the pair's
    dtype as it runs); a lossy halving of the networks' bytes."""
    compute = pair.base_network.dtype
    for network in {id(n): n for n in (pair.base_network, pair.student_network) if n is not None}.values():
        _store_in_fp8(network, compute)


def place(pair: ModelPair, plan: MemoryPlan, device: torch.device) -> ModelPair:
    """``pair`` with its parts placed by ``plan`` for sampling on ``device`` (the pair records the plan, the device
    its networks run on and, for ``model-offload``, the :class:`Placement`)."""
    device = torch.device(device)
    if plan == "resident":
        pair.to(device)
    elif plan == "model-offload":
        pair.placement = apply_model_offload(pair, device)
    elif plan == "group-offload":
        apply_group_offload(pair, device)
    else:
        raise ValueError(f"unknown memory plan {plan!r}; plans: {', '.join(PLANS)} or auto")
    pair.memory_plan = plan
    pair.execution_device = None if plan == "resident" else device
    return pair


def _student_part(pair: ModelPair) -> str:
    return f"student {pair.spec('student').name}"


def place_student(pair: ModelPair) -> None:
    """Place a student network attached after loading (``with_student``) as the pair's plan places its parts."""
    network = pair.student_network
    if pair.fp8:
        _store_in_fp8(network, pair.base_network.dtype)
    if pair.memory_plan == "resident":
        network.to(pair.device)
    elif pair.memory_plan == "model-offload":
        pair.placement.add(_student_part(pair), (network,))
    else:
        _group_offload(network, pair.device, networks=True)


def release_student(pair: ModelPair) -> None:
    """Take the student that :func:`with_student` attached out of the shared base: a LoRA student's hooks off the
    base's network, a placed network out of the plan's ledger (so that neither outlives ``pair``)."""
    if pair.student_adapter is not None:
        pair.student_adapter.remove()
    if pair.placement is not None:
        pair.placement.drop(_student_part(pair))
