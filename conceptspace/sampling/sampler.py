"""Sampling a prompt in a regime: text in, seeded noise, batches through the loop, images out."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from conceptspace import schedules
from conceptspace.models.families import Conditioning
from conceptspace.models.loading import ModelPair
from conceptspace.sampling.loop import (
    OutputType,
    ScheduledStep,
    Segment,
    StepInfo,
    TrajectoryRecorder,
    denoise,
    latent_size,
    schedule_of_segments,
)
from conceptspace.sampling.regimes import Regime, parse_regime


# ----------------------------------------------------------------------------------------------- text and images
def encode_text(
    pair: ModelPair, prompt: str, *, negative_prompt: str | None, cfg: bool, height: int, width: int
) -> Conditioning:
    """Embed one prompt with the pair's shared text encoders (the base pipeline's ``encode_prompt``, through the
    family adapter)."""
    return pair.family.encode_text(
        pair.pipeline,
        prompt,
        negative_prompt=negative_prompt,
        cfg=cfg,
        height=height,
        width=width,
        device=pair.device,
    )


def decode(pair: ModelPair, latents: torch.Tensor, output_type: OutputType = "pil") -> Any:
    """Decode latents with the shared VAE exactly as the diffusers pipelines do (fp16 upcast, latent stats)."""
    if output_type == "latent":
        return latents
    vae = pair.pipeline.vae
    vae_dtype = vae.dtype  # a walk over the parameters: read once
    upcast = vae_dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if upcast else vae_dtype
    if upcast:
        vae.to(torch.float32)
    try:
        with torch.no_grad():
            image = pair.family.decode(vae, latents.to(device=pair.device, dtype=dtype))
    finally:
        if upcast:
            vae.to(torch.float16)
    return pair.pipeline.image_processor.postprocess(image, output_type=output_type)


# ------------------------------------------------------------------------------------------------------ sampling
@dataclass
class SampleResult:
    """Images (or latents) for one prompt and regime, with x̂0 trajectories and what ran."""

    prompt: str
    regime: str
    seeds: list[int]
    latents: torch.Tensor
    images: Any
    schedule: list[ScheduledStep]
    timings: dict[str, float]
    trajectory: torch.Tensor | None = None  # (n, steps, C, H, W) x̂0 latents when recorded
    settings: dict[str, Any] = field(default_factory=dict)
    batch_seconds: list[tuple[int, float]] = field(
        default_factory=list
    )  # (rows, denoising seconds) per batch

    def schedule_dicts(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.schedule]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def initial_latents(
    segment: Segment,
    shape: tuple[int, ...],
    generators: list[torch.Generator],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The starting latents of a batch (one CPU generator per sample, as the diffusers pipelines draw them), in the
    first segment's latent space: noise × ``init_noise_sigma`` from its first step, or the VP equivalent when the
    segment starts later."""
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    scheduler = segment.scheduler
    if segment.start == 0:
        # exactly what the diffusers pipelines do (flow-matching schedulers have no init_noise_sigma: 1)
        return noise * getattr(scheduler, "init_noise_sigma", 1.0)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(segment.start)
    return noise * schedules.initial_noise_scale(scheduler, segment.start).to(noise)


def sample_latents(
    pair: ModelPair,
    regime: Regime,
    cond: Conditioning,
    seeds: Sequence[int],
    *,
    latent_shape: tuple[int, int],
    callback: Callable[[StepInfo], None] | None = None,
    progress: tqdm | None = None,
    segments: list[Segment] | None = None,
) -> torch.Tensor:
    """The final latents of one batch, row ``i`` from ``seeds[i]`` and row ``i`` of ``cond``: the body that
    :func:`sample` and prompt-set runs share.

    Every row has its own CPU generator (as the diffusers pipelines draw noise), so a sample does not depend on its
    batch (but for the regimes that couple a batch's samples: repellency, group inference). Schedulers carry
    per-run state, so the regime's segments are built afresh unless ``segments`` gives unused ones of the same
    regime and shape.
    """
    candidates = [int(s) for s in regime.candidate_seeds(seeds)]
    if len(candidates) != len(seeds):  # more samples start than are kept: each with its row's prompt
        cond = cond.select_rows(torch.arange(len(candidates)) % len(seeds))
    generators = [torch.Generator("cpu").manual_seed(s) for s in candidates]
    cond = dataclasses.replace(cond, seeds=tuple(candidates))
    device = pair.device
    if segments is None:
        segments = regime.segments(pair, device, latent_shape)
    if len(candidates) == len(seeds) and any(segment.select is not None for segment in segments):
        raise ValueError(
            f"{regime.name} runs a regime that selects samples inside another one: the selecting regime "
            "(group-inference) must be the outermost (group-inference:over=cads, not cads:over=group-inference)"
        )
    channels = pair.family.latent_channels(pair.base_network)
    with torch.no_grad():
        latents = initial_latents(
            segments[0], (len(candidates), channels, *latent_shape), generators, device, cond.dtype
        )
        final = denoise(
            segments, latents, cond, generator=generators, callback=callback, progress=progress, seeds=candidates
        )
    if final.shape[0] != len(seeds):
        raise RuntimeError(
            f"{regime.name} kept {final.shape[0]} of {len(candidates)} samples for {len(seeds)} seeds: a regime "
            "that selects samples must be the outermost one (wrap others in it, not it in others)"
        )
    return final


def sample(
    pair: ModelPair,
    prompt: str,
    regime: Regime | str = "distilled",
    seeds: Iterable[int] = (0,),
    *,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 4,
    output_type: OutputType = "pil",
    record_x0: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
    on_batch: Callable[[list[int], Any], None] | None = None,
    progress: bool = True,
) -> SampleResult:
    """Generate one image per seed for ``prompt`` in ``regime``.

    Image ``i`` depends on ``(prompt, seeds[i])`` alone: every sample has its own ``torch.Generator`` (on the CPU,
    as diffusers recommends for reproducibility), so the batch size changes nothing but speed.

    Args:
        pair: from :func:`conceptspace.load_pair`.
        prompt: the text prompt; ``""`` samples unconditionally (whitespace alone is refused).
        regime: a :class:`Regime`, or a spec :func:`parse_regime` reads: any name in :data:`REGIMES`
            (``"base"``, ``"hybrid"``, a remedy such as ``"cads"``) with options after colons (``"hybrid:k=2"``).
        seeds: one image per seed.
        height / width: default the pair's resolution (the student's native one).
        output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (no VAE decode).
        record_x0: keep every step's x̂0 latents in ``result.trajectory``.
        callback: called with a :class:`StepInfo` after every step.
        on_batch: called with each batch's seeds and images (of ``output_type``) as soon as they are decoded, so
            a caller can keep them before the next batch runs (an interruption then loses one batch at most).

    Example:
        >>> pair = load_pair("tiny-sdxl", "tiny-dmd")                           # doctest: +SKIP
        >>> result = sample(pair, "a red circle", Hybrid(k=1), seeds=range(8), record_x0=True)   # doctest: +SKIP
        >>> [s.model for s in result.schedule]                                   # doctest: +SKIP
        ['base', 'distilled', 'distilled', 'distilled']
    """
    seeds = _checked_request(prompt, seeds, batch_size)
    regime = parse_regime(regime)
    height = pair.default_resolution if height is None else height
    width = pair.default_resolution if width is None else width
    latent_shape = latent_size(pair, height, width)
    first_segments = regime.segments(pair, pair.device, latent_shape)  # what runs, read before it runs
    schedule = schedule_of_segments(first_segments)
    cfg = any(den.needs_negative for segment in first_segments for den in segment.denoisers)

    start = time.perf_counter()
    with torch.no_grad():
        cond = encode_text(pair, prompt, negative_prompt=negative_prompt, cfg=cfg, height=height, width=width)
    _sync(pair.device)
    timings = {"text_encoding": time.perf_counter() - start}

    what = f"{len(seeds)} image(s) of {height}×{width} in batches of {batch_size}"
    with out_of_memory_as_error(pair.device, what):
        total = len(seeds) * len(schedule)
        bar = tqdm(total=total, desc=regime.name, unit="img·step", disable=not progress, leave=False)
        batches, decoded, timings["decoding"] = [], [], 0.0
        for first in range(0, len(seeds), batch_size):
            batch = _sample_batch(
                pair,
                regime,
                cond,
                seeds[first : first + batch_size],
                latent_shape,
                record_x0=record_x0,
                callback=callback,
                progress=bar,
                segments=first_segments if first == 0 else None,  # later batches build fresh schedulers
            )
            start = time.perf_counter()
            decoded.append(decode(pair, batch.latents, output_type))  # per batch: ready to keep, less memory
            _sync(pair.device)
            timings["decoding"] += time.perf_counter() - start
            batches.append(batch)
            if on_batch is not None:
                on_batch(list(batch.seeds), decoded[-1])
        bar.close()
        timings["denoising"] = sum(batch.seconds for batch in batches)
        latents = torch.cat([batch.latents for batch in batches])
        images = _joined(decoded)
    trajectories = [batch.trajectory for batch in batches if batch.trajectory is not None]
    return SampleResult(
        prompt=prompt,
        regime=regime.name,
        seeds=seeds,
        latents=latents.detach().cpu(),
        images=images,
        schedule=schedule,
        timings=timings,
        trajectory=torch.cat(trajectories) if trajectories else None,
        batch_seconds=[(len(batch.seeds), batch.seconds) for batch in batches],
        settings=_settings(regime, first_segments, height, width, negative_prompt, batch_size),
    )


def _settings(
    regime: Regime,
    segments: list[Segment],
    height: int,
    width: int,
    negative_prompt: str | None,
    batch_size: int,
) -> dict[str, Any]:
    """What a :class:`SampleResult` says made it: the regime's options, the size and the CFG each model ran with."""
    return {
        **regime.describe(),
        **dict(height=height, width=width, negative_prompt=negative_prompt, batch_size=batch_size),
        "guidance_used": {den.name: den.guidance_scale for seg in segments for den in seg.denoisers},
    }


def _joined(parts: list[Any]) -> Any:
    """The batches' outputs as one: a list of PIL images, one array or one tensor."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [image for part in parts for image in part]


def check_prompt(prompt: Any) -> None:
    """Refuse what cannot be a prompt: not text, or only whitespace (a slip more often than a wish). The empty
    prompt ``""`` samples unconditionally, as in diffusers."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt is text, got {type(prompt).__name__}")
    if prompt and not prompt.strip():
        raise ValueError(
            "prompt is empty but for whitespace: give the text to generate from, or '' to sample unconditionally"
        )


def _checked_request(prompt: Any, seeds: Iterable[int], batch_size: int) -> list[int]:
    """The seeds as ints, once the prompt, the seeds and the batch size are known to be usable."""
    check_prompt(prompt)
    checked = [check_seed(s) for s in seeds]
    if not checked:
        raise ValueError("no seeds given: pass at least one seed")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return checked


@dataclass
class _Batch:
    seeds: Sequence[int]
    latents: torch.Tensor
    seconds: float  # denoising time
    trajectory: torch.Tensor | None


def _sample_batch(
    pair: ModelPair,
    regime: Regime,
    cond: Conditioning,
    seeds: Sequence[int],
    latent_shape: tuple[int, int],
    *,
    record_x0: bool,
    callback: Callable[[StepInfo], None] | None,
    progress: tqdm,
    segments: list[Segment] | None,
) -> _Batch:
    """One batch of :func:`sample`: its final latents, timed, with its x̂0 trajectory when recorded."""
    recorder = TrajectoryRecorder() if record_x0 else None

    def report(info: StepInfo) -> None:
        if recorder is not None:
            recorder(info)
        if callback is not None:
            callback(info)

    start = time.perf_counter()
    final = sample_latents(
        pair,
        regime,
        cond.repeat(len(seeds)),
        seeds,
        latent_shape=latent_shape,
        callback=report if recorder is not None or callback is not None else None,
        progress=progress,
        segments=segments,
    )
    _sync(pair.device)
    seconds = time.perf_counter() - start
    return _Batch(seeds, final, seconds, recorder.stacked() if recorder is not None else None)


class SamplingMemoryError(MemoryError):
    """Sampling needs more memory than the device has (a user error: smaller images or batches fix it)."""


@contextlib.contextmanager
def out_of_memory_as_error(device: torch.device, what: str) -> Iterator[None]:
    """Turn the allocator's failure (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError) into one
    :class:`SamplingMemoryError` that says what was being made and what to change."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        text = str(error)
        if not isinstance(error, MemoryError | torch.OutOfMemoryError) and "allocate" not in text:
            raise
        if isinstance(error, SamplingMemoryError):
            raise
        detail = next(
            (line for line in text.splitlines() if "allocate" in line), text.splitlines()[0] if text else ""
        )
        raise SamplingMemoryError(
            f"{what} need more memory than the {device.type} device has ({detail.strip()[:160]}): use a smaller "
            "--height/--width or --batch-size"
        ) from None


SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds a ``torch.Generator`` accepts."""


def check_seed(seed: Any, where: str = "") -> int:
    """``seed`` as an int, or a ValueError naming it (and ``where`` it came from) if a generator cannot take it."""
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"seed {seed!r}{where} is not an integer") from None
    if isinstance(seed, float) and seed != value:
        raise ValueError(f"seed {seed!r}{where} is not an integer")
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ValueError(
            f"seed {value}{where} does not fit the 64 bits a random generator takes: use a seed from 0 to "
            f"2**64 - 1 = {SEED_RANGE[1]}"
        )
    return value


def seeds_from(seed: int, n: int) -> list[int]:
    """The seeds of ``n`` images starting at ``seed``: image i gets seed + i (all checked with :func:`check_seed`)."""
    if n > 0:
        check_seed(seed)
        check_seed(seed + n - 1, f" (the last of {n} seeds from {seed})")
    return list(range(seed, seed + n))
