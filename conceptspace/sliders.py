"""Concept Slider training (Gandikota et al., arXiv 2311.12092): text sliders on a base model's UNet.

A slider is a low-rank adapter that, at scale +1, turns the model's prediction for the *target* prompt into the
guided one ``ε(x_t, c_n) + η·(ε(x_t, c_+) − ε(x_t, c_−))`` and, at scale −1, into the mirrored
``ε(x_t, c_n) − η·(…)``. ``x_t`` comes from partial sampling with the slider on, as in the reference code.

Recipes live in ``sliders/*.yaml`` (:func:`load_recipe`, strict: unknown keys are errors); :func:`train_slider`
trains one on ``pair.base_network`` and writes it with :func:`conceptspace.lora.write_lora`, the recipe in its
metadata, so that :func:`conceptspace.lora.apply_lora` applies it to the base or any distilled student.

Example:
    >>> recipe = load_recipe("sliders/testbed-size.yaml")                       # doctest: +SKIP
    >>> train_slider("shapes", recipe, "out/size.safetensors")                   # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from conceptspace import schedules
from conceptspace.lora import LoRA, LoRAWeights, apply_lora, network_name, write_lora
from conceptspace.models import ModelPair, load_pair
from conceptspace.sampling import Conditioning, Denoiser, encode_text, latent_size, make_denoiser

Layers = Literal["self-attention", "cross-attention", "all"]
LAYERS: tuple[str, ...] = ("self-attention", "cross-attention", "cross-attention-kv", "all")
_ATTN_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
_FF = ("ff.net.0.proj", "ff.net.2", "ff.linear_in", "ff.linear_out")  # diffusers' FeedForward; FLUX.2's
# Joint-attention transformers (SD3's MMDiT, FLUX, FLUX.2) have one attention per block over image and text tokens:
# the image stream's projections stand in for self-attention, the text stream's (add_*_proj) for cross-attention.
# FLUX.2's single-stream blocks fuse q/k/v with their MLP's input (to_qkv_mlp_proj) and the attention's output with
# the MLP's (to_out): their only attention projections, self-attention as FLUX's single-stream q/k/v are.
_JOINT_SUFFIXES = {
    "self-attention": [f".attn.{p}" for p in _ATTN_PROJECTIONS] + [".attn.to_qkv_mlp_proj", ".attn.to_out"],
    "cross-attention": [".attn.add_q_proj", ".attn.add_k_proj", ".attn.add_v_proj", ".attn.to_add_out"],
    "cross-attention-kv": [".attn.add_k_proj", ".attn.add_v_proj"],
}
# HiDream's dual-stream blocks hold both streams in one attention (attn1): the image's to_q/k/v/out, the text's
# to_q_t/k_t/v_t/out_t; its single-stream blocks' attn1 has the image's names. Feed-forwards: SwiGLU w1/w2/w3 (the
# image stream's a mixture of experts, shared and routed).
_HIDREAM_SUFFIXES = {
    "self-attention": [f".attn1.{p}" for p in ("to_q", "to_k", "to_v", "to_out")],
    "cross-attention": [f".attn1.{p}_t" for p in ("to_q", "to_k", "to_v", "to_out")],
    "cross-attention-kv": [".attn1.to_k_t", ".attn1.to_v_t"],
}
# Single-stream transformers, by the prefix of their main blocks: the attention's module name and the layers ``all``
# adds (Krea 2's attention output gate and SwiGLU). Text-only blocks (Z-Image's context refiner, Krea 2's text
# fusion) are left out.
_SINGLE_STREAM = {
    "layers.": (".attention.", (".feed_forward.w1", ".feed_forward.w2", ".feed_forward.w3")),  # Z-Image
    "transformer_blocks.": (".attn.", (".attn.to_gate", ".ff.gate", ".ff.up", ".ff.down")),  # Krea 2
}


class RecipeError(ValueError):
    """A slider recipe that is missing, malformed, or has keys we do not know."""


@dataclass
class SliderRecipe:
    """Everything that defines one text slider.

    ``neutral`` defaults to ``target``. ``guidance_scale`` (CFG of the partial sampling) and ``sampling_steps``
    default to the base model's registry values; ``resolution`` to the model's. ``t_range`` bounds the training
    timestep (in the scheduler's 0…999 units): partial sampling stops at a random one of the sampler's timesteps
    inside it.
    """

    name: str
    target: str
    positive: str
    negative: str
    neutral: str | None = None
    eta: float = 2.0
    rank: int = 4
    alpha: float = 1.0
    layers: Layers = "self-attention"
    steps: int = 1000
    lr: float = 2e-4
    seed: int = 0
    resolution: int | None = None
    guidance_scale: float | None = None
    sampling_steps: int | None = None
    t_range: tuple[int, int] = (0, 1000)
    batch_size: int = 1

    def __post_init__(self) -> None:
        self.validate()

    @property
    def neutral_prompt(self) -> str:
        return self.neutral if self.neutral is not None else self.target

    def validate(self) -> None:
        """Raise :class:`RecipeError` on empty prompts or out-of-range settings."""
        for key in ("name", "target", "positive", "negative"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise RecipeError(f"recipe key {key!r} must be a non-empty string, got {value!r}")
        if self.neutral is not None and (not isinstance(self.neutral, str) or not self.neutral.strip()):
            raise RecipeError(
                f"recipe key 'neutral' must be a non-empty string (or left out), got {self.neutral!r}"
            )
        if self.positive == self.negative:
            raise RecipeError("positive and negative prompts are the same: the slider would learn nothing")
        if self.layers not in LAYERS:
            raise RecipeError(f"layers must be one of {', '.join(LAYERS)}; got {self.layers!r}")
        for key in ("rank", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.lr <= 0 or self.alpha <= 0:
            raise RecipeError(f"lr and alpha must be positive, got lr={self.lr}, alpha={self.alpha}")
        if self.sampling_steps is not None and self.sampling_steps < 1:
            raise RecipeError(f"sampling_steps must be at least 1, got {self.sampling_steps}")
        low, high = self.t_range
        if not 0 <= low < high <= 1000:
            raise RecipeError(
                f"t_range must be [low, high] with 0 <= low < high <= 1000, got {list(self.t_range)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON types (what the LoRA's metadata records)."""
        out = asdict(self)
        out["t_range"] = list(self.t_range)
        return out


_FIELDS = {f.name: f for f in fields(SliderRecipe)}
# types each key accepts from YAML (bool is an int subclass: refused explicitly below)
_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "target": (str,),
    "positive": (str,),
    "negative": (str,),
    "neutral": (str, type(None)),
    "eta": (int, float),
    "rank": (int,),
    "alpha": (int, float),
    "layers": (str,),
    "steps": (int,),
    "lr": (int, float),
    "seed": (int,),
    "resolution": (int, type(None)),
    "guidance_scale": (int, float, type(None)),
    "sampling_steps": (int, type(None)),
    "t_range": (list, tuple),
    "batch_size": (int,),
}


def recipe_from_dict(data: Any, *, source: str = "recipe") -> SliderRecipe:
    """Build a :class:`SliderRecipe` from a mapping, refusing unknown keys (with the nearest valid one),
    missing prompts and wrong types."""
    if not data:
        raise RecipeError(f"{source} is empty: give at least name, target, positive and negative")
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source} must be a mapping of keys to values, got {type(data).__name__}")
    for key in data:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), list(_FIELDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(_FIELDS)}"
            # the reference tool ignored such keys and its users trained sliders that did nothing
            raise RecipeError(f"{source}: unknown key {key!r}{hint}")
    missing = [key for key in ("name", "target", "positive", "negative") if key not in data]
    if missing:
        raise RecipeError(f"{source}: missing required key(s) {', '.join(missing)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, _TYPES[key]):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in _TYPES[key])
            raise RecipeError(f"{source}: {key!r} must be {expected}, got {value!r} ({type(value).__name__})")
        if key == "t_range":
            if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise RecipeError(f"{source}: 't_range' must be two integers [low, high], got {value!r}")
            value = (int(value[0]), int(value[1]))
        values[key] = float(value) if key in ("eta", "alpha", "lr") else value
    if values.get("guidance_scale") is not None:
        values["guidance_scale"] = float(values["guidance_scale"])
    try:
        return SliderRecipe(**values)
    except RecipeError as error:
        raise RecipeError(f"{source}: {error}") from None


def load_recipe(path: str | os.PathLike) -> SliderRecipe:
    """Read a slider recipe from YAML (strict: see :func:`recipe_from_dict`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no slider recipe at {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path} is not valid YAML: {error}") from None
    return recipe_from_dict(data, source=str(path))


# ----------------------------------------------------------------------------------------------------- layers
def target_modules(unet: nn.Module, layers: str) -> list[str]:
    """The network's linear layers a slider on ``layers`` trains, as diffusers module paths: ``self-attention``
    (attn1 q/k/v/out), ``cross-attention`` (attn2 q/k/v/out), ``cross-attention-kv`` (attn2 to_k/to_v only, what
    SliderSpace trains) or ``all`` (both attentions and the feed-forward layers). Transformers are read by their
    attention structure: with separate self- and cross-attention (PixArt's DiT blocks) as the UNet's; dual-stream
    joint attention (SD3, FLUX): the image stream's projections (``attn.to_q/k/v/out``) are the self-attention,
    the text stream's (``attn.add_q/k/v_proj``, ``to_add_out``) the cross-attention, ``all`` adds both
    feed-forwards (FLUX.2's single-stream blocks: their fused ``attn.to_qkv_mlp_proj`` and ``attn.to_out`` count as
    self-attention); HiDream's: the image stream's ``attn1.to_q/k/v/out`` and the text stream's ``…_t``, ``all``
    adding the SwiGLU feed-forwards, experts included; single-stream (Z-Image, Krea 2): one attention over image
    and text tokens in the main ``layers`` (Krea 2: ``transformer_blocks``) stands for both, its ``to_k``/``to_v``
    for the cross-attention's keys and values. SANA's blocks are read as PixArt's; its convolutional feed-forward
    takes no slider."""
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {', '.join(LAYERS)}; got {layers!r}")
    names = [name for name, module in unet.named_modules() if isinstance(module, nn.Linear)]
    if any(".attn2." in name for name in names):  # UNets, PixArt
        attns = {
            "self-attention": ("attn1",),
            "cross-attention": ("attn2",),
            "cross-attention-kv": ("attn2",),
        }
        projections = ("to_k", "to_v") if layers == "cross-attention-kv" else _ATTN_PROJECTIONS
        suffixes = [f".{a}.{p}" for a in attns.get(layers, ("attn1", "attn2")) for p in projections]
        suffixes += [f".{s}" for s in _FF] if layers == "all" else []
    elif any(".attn.add_k_proj" in name for name in names):  # SD3, FLUX, FLUX.2
        if layers == "all":
            suffixes = _JOINT_SUFFIXES["self-attention"] + _JOINT_SUFFIXES["cross-attention"]
            suffixes += [f".{s}" for s in _FF] + [f".ff_context.{s[3:]}" for s in _FF]
        else:
            suffixes = _JOINT_SUFFIXES[layers]
    elif any(name.endswith(".attn1.to_k_t") for name in names):  # HiDream
        if layers == "all":
            suffixes = _HIDREAM_SUFFIXES["self-attention"] + _HIDREAM_SUFFIXES["cross-attention"]
            suffixes += [".w1", ".w2", ".w3"]
        else:
            suffixes = _HIDREAM_SUFFIXES[layers]
    else:  # Z-Image, Krea 2: the main blocks' single-stream attention
        main = "layers." if any(name.startswith("layers.") for name in names) else "transformer_blocks."
        attention, extra = _SINGLE_STREAM[main]
        projections = ("to_k", "to_v") if layers == "cross-attention-kv" else _ATTN_PROJECTIONS
        suffixes = [f"{attention}{p}" for p in projections]
        suffixes += list(extra) if layers == "all" else []
        names = [name for name in names if name.startswith(main)]
    names = [name for name in names if name.endswith(tuple(suffixes))]
    if not names:
        raise ValueError(f"the {network_name(unet)} has no {layers} layers to train a slider on")
    return names


class TrainableLoRA:
    """Trainable LoRA factors on a frozen UNet, applied with :func:`apply_lora`; scale 0 is the frozen base.

    ``with slider.at(scale):`` runs the UNet with the factors at ``scale``; :meth:`export` gives a :class:`LoRA` to
    write; :meth:`remove` takes the hooks off.
    """

    def __init__(
        self, unet: nn.Module, names: list[str], rank: int, alpha: float, generator: torch.Generator
    ):
        modules = dict(unet.named_modules())
        device = next(unet.parameters()).device
        self.alpha = float(alpha)
        weights = {}
        for name in names:
            layer = modules[name]
            # the reference initialisation: down random (kaiming-uniform scale), up zero, so training starts at base
            bound = 1.0 / math.sqrt(layer.in_features)
            down = (torch.rand(rank, layer.in_features, generator=generator) * 2 - 1) * bound
            down = nn.Parameter(down.to(device))
            up = nn.Parameter(torch.zeros(layer.out_features, rank, device=device))
            weights[name] = LoRAWeights(down=down, up=up, alpha=self.alpha)
        self.lora = LoRA(modules=weights, network=network_name(unet))
        self.handle = apply_lora(unet, self.lora, scale=0.0, track_timestep=False)

    def parameters(self) -> list[nn.Parameter]:
        return [p for w in self.lora.modules.values() for p in (w.down, w.up)]

    @contextmanager
    def at(self, scale: float) -> Iterator[None]:
        previous, self.handle.scale = self.handle.scale, float(scale)
        try:
            yield
        finally:
            self.handle.scale = previous

    def remove(self) -> None:
        self.handle.remove()

    def export(self, metadata: dict[str, Any]) -> LoRA:
        modules = {
            name: LoRAWeights(
                down=w.down.detach().float().cpu().clone(),
                up=w.up.detach().float().cpu().clone(),
                alpha=w.alpha,
            )
            for name, w in self.lora.modules.items()
        }
        return LoRA(modules=modules, metadata=metadata, network=self.lora.network)


# --------------------------------------------------------------------------------------------------- training
@dataclass
class _Prompts:
    target: Conditioning
    positive: Conditioning
    negative: Conditioning
    neutral: Conditioning


def _encode(pair: ModelPair, recipe: SliderRecipe, size: int, cfg: bool) -> _Prompts:
    def enc(prompt: str, with_uncond: bool) -> Conditioning:
        return encode_text(pair, prompt, negative_prompt=None, cfg=with_uncond, height=size, width=size)

    with torch.no_grad():
        return _Prompts(
            target=enc(recipe.target, cfg),  # the partial sampler's prompt, with CFG
            positive=enc(recipe.positive, False),
            negative=enc(recipe.negative, False),
            neutral=enc(recipe.neutral_prompt, False),
        )


def _batched(cond: Conditioning, n: int) -> Conditioning:
    return cond.repeat(n) if n > 1 else cond


def train_slider(
    pair_or_names: ModelPair | str,
    recipe: SliderRecipe | str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    steps: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    losses: list[float] | None = None,
) -> Path:
    """Train ``recipe``'s slider on the base UNet of ``pair_or_names`` (a pair or a base's registry name) and write
    it to ``out_path`` (diffusers-format ``.safetensors``, atomically).

    ``steps`` overrides the recipe's. ``losses``, if given, receives the loss of every step. The metadata records
    the recipe, the base model, the steps run and the mean loss of the last steps.
    """
    recipe = _resolved_recipe(recipe, steps)
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"sliders are written as .safetensors; {out_path} has another suffix")
    pair = load_pair(pair_or_names, device=device) if isinstance(pair_or_names, str) else pair_or_names
    training = _training_setup(pair, recipe)

    unet = pair.base_network
    generator = torch.Generator("cpu").manual_seed(recipe.seed)
    grad_flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(False)  # only the slider's factors train
    slider = TrainableLoRA(unet, target_modules(unet, recipe.layers), recipe.rank, recipe.alpha, generator)
    started = time.perf_counter()
    try:
        history = _optimise(pair, recipe, training, slider, generator, progress)
    finally:
        slider.remove()
        for param, flag in zip(unet.parameters(), grad_flags, strict=True):
            param.requires_grad_(flag)

    tail = history[-min(len(history), 20) :]
    metadata = {
        "kind": "concept-slider",
        "base_model": pair.base.name,
        "recipe": recipe.to_dict(),
        "steps": len(history),
        "final_loss": sum(tail) / len(tail),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if losses is not None:
        losses.extend(history)
    return write_lora(slider.export(metadata), out_path, format="diffusers", metadata=metadata)


def _resolved_recipe(recipe: SliderRecipe | str | os.PathLike, steps: int | None) -> SliderRecipe:
    """``recipe`` loaded from its file, with ``steps`` (when given) in place of its own."""
    if not isinstance(recipe, SliderRecipe):
        recipe = load_recipe(recipe)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        recipe = SliderRecipe(**{**asdict(recipe), "steps": steps})
    return recipe


@dataclass
class _Training:
    """What every training step reuses: the base's sampler and its timesteps (``stops``: the indices of those in
    the recipe's ``t_range``), the two denoisers and the prompts, batched."""

    latent: int  # the latents' side
    scheduler: Any
    timesteps: torch.Tensor
    stops: list[int]
    sampler: Denoiser  # the partial sampler, with the recipe's CFG
    single: Denoiser  # one network pass per prediction: the loss's
    prompts: _Prompts


def _training_setup(pair: ModelPair, recipe: SliderRecipe) -> _Training:
    """The sampler, denoisers and prompts ``recipe`` trains with on ``pair``'s base (a clear error where its
    resolution or ``t_range`` does not fit the model)."""
    spec = pair.base
    size = recipe.resolution or spec.resolution
    try:
        latent, _ = latent_size(pair, size, size)
    except ValueError as error:
        raise ValueError(f"resolution {size} does not fit {spec.name}: {error}") from None
    guidance = spec.guidance_scale if recipe.guidance_scale is None else recipe.guidance_scale
    sampling_steps = recipe.sampling_steps or spec.num_inference_steps or 50
    scheduler = pair.make_scheduler("base")
    extra = pair.family.timestep_kwargs(scheduler, pair.base_network, sampling_steps, (latent, latent))
    scheduler.set_timesteps(sampling_steps, device=pair.device, **extra)
    timesteps = scheduler.timesteps
    low, high = recipe.t_range
    stops = [i for i, t in enumerate(timesteps.tolist()) if low <= t < high]
    if not stops:
        raise ValueError(
            f"none of the sampler's {sampling_steps} timesteps lies in t_range {list(recipe.t_range)}"
        )

    sampler = make_denoiser(pair, "base", guidance)
    single = make_denoiser(pair, "base", pair.family.single_pass_scale)
    prompts = _encode(pair, recipe, size, sampler.uses_cfg)
    n = recipe.batch_size
    batched = _Prompts(
        *(_batched(c, n) for c in (prompts.target, prompts.positive, prompts.negative, prompts.neutral))
    )
    return _Training(latent, scheduler, timesteps, stops, sampler, single, batched)


def _optimise(
    pair: ModelPair,
    recipe: SliderRecipe,
    training: _Training,
    slider: TrainableLoRA,
    generator: torch.Generator,
    progress: bool,
) -> list[float]:
    """``recipe.steps`` optimiser steps of the slider, each from fresh noise sampled partway down with the slider
    on; returns every step's loss."""
    rng = random.Random(recipe.seed)
    optimiser = torch.optim.AdamW(slider.parameters(), lr=recipe.lr)
    channels = pair.family.latent_channels(pair.base_network)
    history: list[float] = []
    bar = tqdm(range(recipe.steps), desc=f"slider {recipe.name}", disable=not progress, leave=False)
    for _ in bar:
        stop = rng.choice(training.stops)
        noise = torch.randn(
            recipe.batch_size, channels, training.latent, training.latent, generator=generator
        )
        latents = noise.to(pair.device, pair.dtype) * getattr(training.scheduler, "init_noise_sigma", 1.0)
        latents = _sample_until(training, slider, latents, stop)
        loss = _slider_loss(pair, recipe.eta, training, slider, latents, stop)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        history.append(float(loss.detach()))
        if progress:
            bar.set_postfix(loss=f"{history[-1]:.4g}")
    return history


def _sample_until(
    training: _Training, slider: TrainableLoRA, latents: torch.Tensor, stop: int
) -> torch.Tensor:
    """``latents`` sampled from the first timestep to timestep index ``stop`` with the slider on, as the reference
    code does."""
    scheduler = training.scheduler
    scheduler._step_index = None  # restart the sampler's step counter (Euler keeps one)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    with torch.no_grad(), slider.at(1.0):
        for index in range(stop):
            t = training.timesteps[index]
            output = training.sampler(
                schedules.model_input(scheduler, latents, t), t, training.prompts.target
            )
            latents = scheduler.step(output, t, latents).prev_sample
    return latents


def _slider_loss(
    pair: ModelPair, eta: float, training: _Training, slider: TrainableLoRA, latents: torch.Tensor, stop: int
) -> torch.Tensor:
    """The slider's loss at timestep index ``stop``: at scale ±1 its prediction for the target prompt should be
    the neutral prediction ± ``eta`` times the positive-minus-negative direction."""
    scheduler, prompts, single = training.scheduler, training.prompts, training.single
    t = training.timesteps[stop]
    if hasattr(scheduler, "_step_index"):
        scheduler._step_index = stop  # scale_model_input reads the step index on the Euler family
    model_input = schedules.model_input(scheduler, latents, t)
    with torch.no_grad():
        e_neutral = single(model_input, t, prompts.neutral)
        e_direction = single(model_input, t, prompts.positive) - single(model_input, t, prompts.negative)
    loss = torch.zeros((), device=pair.device)
    for sign in (1.0, -1.0):  # the slider and its mirror image, as the reference trains both
        with slider.at(sign):
            predicted = single(model_input, t, prompts.target).float()
        goal = (e_neutral + sign * eta * e_direction).float()
        loss = loss + F.mse_loss(predicted, goal) / 2
    return loss
