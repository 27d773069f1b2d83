"""Does a LoRA trained on one model transfer to the others of its family? (``conceptspace transfer``)

A LoRA (a concept slider, say) trained on the base is applied to the base and to each distilled student at a
range of scales; every model samples the same seeds at every scale with its own sampler settings (the base with
CFG on its schedule, each student on its few-step schedule). Per model the images go to
``DIR/<model>@<scale>/000_<seed>.png`` (one "regime" per model and scale, so :func:`build_report` shows them)
and a grid ``DIR/grid_<model>.png`` (rows: scales, columns: seeds). Measured, with bootstrap CIs over seeds:

* ``distance_to_scale_0``: cosine distance of each image to the same seed's scale-0 image in the embedder's space;
* ``clip_score_change``: the paper's metric, percent change in CLIP score against the concept text between scale 0
  and s (only with an embedder that has a text tower);
* ``transfer_ratio``: the effect on a student over the effect on the base (distance at s / distance at s);
* on the testbed with its image-only embedder: ``probe_*`` rows, how the probe's factors (size, x, y, and the
  share of images whose shape or colour changed) move between scale 0 and s; with ``probe_factor`` (``"size"``,
  ``"colour=red-blue"``, …) also that one factor's change, its rank correlation with the scale (is the slider
  monotone?) and its transfer ratio (the change on the student over the change on the base).

``reverse=True`` says the LoRA was trained on the student: the ratio is then base / student.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from conceptspace.embeddings import resolve_embedder
from conceptspace.generate import REGIME_RECORD, Interrupted
from conceptspace.ground_truth import GroundTruth, ground_truth_for
from conceptspace.io import (
    ensure_writable_dir,
    environment_versions,
    image_name,
    scale_grid,
    scale_label,
    write_image,
    write_json,
)
from conceptspace.lora import LoRA, LoRAMismatchError, apply_lora, coverage, lora_digest, read_lora
from conceptspace.models import ModelPair, ModelSpec, get_spec, load_pair, release_student, with_student
from conceptspace.results import metric_row, write_metrics
from conceptspace.sampling import Base, Distilled, check_prompt, sample

__all__ = [
    "TransferError",
    "parse_probe_factor",
    "parse_scales",
    "parse_seeds",
    "regime_name",
    "scale_label",
    "transfer",
]

N_BOOT = 1000
CONFIDENCE = 0.95


class TransferError(ValueError):
    """Arguments a transfer run cannot start with (no scale 0, no seeds, no students…)."""


def regime_name(model: str, scale: float) -> str:
    """The folder / regime name of one model at one scale, e.g. ``dmd2@+1``."""
    return f"{model}@{scale_label(scale)}"


def parse_seeds(text: str) -> list[int]:
    """``"0-3"`` → [0, 1, 2, 3]; ``"0,1,5"`` → [0, 1, 5]; ranges and lists combine (``"0-2,7"``)."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        start, dash, stop = part.partition("-")
        try:
            first, last = (int(start), int(stop)) if dash and start else (int(part), int(part))
        except ValueError:
            raise TransferError(f"bad seeds {text!r}: write a range 0-3 or a list 0,1,5") from None
        if last < first:
            raise TransferError(f"seed range {part!r} runs backwards: write e.g. 0-3")
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise TransferError(f"no seeds in {text!r}: write a range 0-3 or a list 0,1,5")
    if len(set(seeds)) != len(seeds):
        raise TransferError(f"seeds repeat in {text!r}: each seed is one paired sample")
    return seeds


def parse_scales(text: str | Sequence[float]) -> list[float]:
    """``"-2,-1,0,1,2"`` → floats; refuses lists without 0 (the reference every metric compares to)."""
    if isinstance(text, str):
        try:
            scales = [float(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise TransferError(
                f"bad scales {text!r}: write numbers separated by commas, e.g. -2,-1,0,1,2"
            ) from None
    else:
        scales = [float(s) for s in text]
    if any(not math.isfinite(s) for s in scales):
        raise TransferError(f"scales must be finite numbers, got {scales}")
    if len(set(scales)) != len(scales):
        raise TransferError(f"scales repeat: {scales}")
    if 0.0 not in scales:
        raise TransferError(
            f"scales {', '.join(f'{s:g}' for s in scales) or '(none)'} do not include 0: every metric compares "
            "scale s with scale 0 (the model without the LoRA), add 0, e.g. --scales -1,0,1"
        )
    return scales


def parse_probe_factor(text: str, truth: GroundTruth) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A factor of ``truth``'s world as one number per image, from its probe's predictions (with probabilities).

    ``"size"``, ``"x"``, ``"y"``: pixels. ``"colour=red"``: the probe's probability that the shape is red (likewise
    ``"shape=circle"``). ``"colour=red-blue"``: P(red) − P(blue), a contrast for a slider between two levels;
    ``+`` joins levels on either side: ``"colour=red+orange+yellow-blue+purple+green"`` is warm minus cool.
    """
    name, _, levels = (part.strip() for part in str(text).partition("="))
    if name in truth.continuous and not levels:
        return lambda predictions: predictions[name].astype(float)
    if name not in truth.categorical or not levels:
        raise TransferError(
            f"unknown probe factor {text!r}: write one of {', '.join(truth.continuous)}, or a level of "
            f"{', '.join(truth.categorical)} like colour=red, or a contrast like colour=red-blue"
        )
    positive, _, negative = levels.partition("-")
    sides = [[level.strip() for level in side.split("+") if level.strip()] for side in (positive, negative)]
    if not sides[0]:
        raise TransferError(f"{text!r} names no level before the '-': write e.g. colour=red-blue")
    for level in (*sides[0], *sides[1]):
        if level not in truth.levels[name]:
            raise TransferError(
                f"unknown {name} {level!r} in {text!r}: choose from {', '.join(truth.levels[name])}"
            )
    plus, minus = ([truth.levels[name].index(level) for level in side] for side in sides)

    def score(predictions: dict[str, np.ndarray]) -> np.ndarray:
        probabilities = predictions[f"{name}_probs"].astype(float)
        return probabilities[:, plus].sum(axis=1) - probabilities[:, minus].sum(axis=1)

    return score


# ------------------------------------------------------------------------------------------------ statistics


def _bootstrap_ci(values: Callable[[np.ndarray], np.ndarray], n: int, seed: int) -> tuple[float, float]:
    """Percentile interval of ``values(indices)`` over ``N_BOOT`` resamples of the n seeds (rows of indices)."""
    if n < 2:
        return math.nan, math.nan
    from conceptspace.stats import percentile_interval

    rng = np.random.default_rng(seed)
    return percentile_interval(values(rng.integers(0, n, size=(N_BOOT, n))), CONFIDENCE)


def mean_row(values: np.ndarray, prompt: str, regime: str, metric: str, seed: int, **extra: Any) -> dict:
    """Mean over seeds with a bootstrap CI (seeds resampled)."""
    from conceptspace.stats import mean_estimate

    estimate = mean_estimate(values, n_boot=N_BOOT, confidence=CONFIDENCE, seed=seed)
    return metric_row(
        prompt, regime, metric, estimate.value, estimate.ci_low, estimate.ci_high, estimate.n, **extra
    )


def ratio_row(
    top: np.ndarray, bottom: np.ndarray, prompt: str, regime: str, metric: str, **extra: Any
) -> dict[str, Any]:
    """Mean of ``top`` over mean of ``bottom`` (per-seed values of two models), seeds resampled jointly."""

    def ratio(idx: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return top[idx].mean(axis=-1) / bottom[idx].mean(axis=-1)

    low, high = _bootstrap_ci(ratio, len(top), seed=1)
    value = float(ratio(np.arange(len(top))))
    return metric_row(
        prompt, regime, metric, value, low, high, len(top), ci_method="bootstrap over seeds (paired)", **extra
    )


def ratio_rows_per_scale(
    top: dict[float, np.ndarray],
    bottom: dict[float, np.ndarray],
    prompt: str,
    regime: str,
    metric: str,
    **extra: Any,
) -> list[dict[str, Any]]:
    """:func:`ratio_row` at every scale but 0 (``top``/``bottom``: per-seed values by scale), with a ``scale`` key."""
    return [ratio_row(top[s], bottom[s], prompt, regime, metric, scale=s, **extra) for s in top if s != 0]


def _rank_correlation(scores: np.ndarray, scales: Sequence[float]) -> np.ndarray:
    """Per seed, Spearman's correlation between the scale and the score over the scales (rows: seeds)."""
    from scipy.stats import rankdata

    scale_ranks = rankdata(scales)
    score_ranks = rankdata(scores, axis=1)
    centred_scales = scale_ranks - scale_ranks.mean()
    centred = score_ranks - score_ranks.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (centred @ centred_scales) / np.sqrt((centred**2).sum(axis=1) * (centred_scales**2).sum())


def per_seed_slope(scores: np.ndarray, scales: Sequence[float]) -> np.ndarray:
    """Per seed, the least-squares slope of the score over the scale (rows: seeds; columns: scales)."""
    centred_scales = np.asarray(scales, dtype=float) - np.mean(scales)
    centred = scores - scores.mean(axis=1, keepdims=True)
    return (centred @ centred_scales) / (centred_scales**2).sum()


def _unit(x: torch.Tensor) -> np.ndarray:
    x = x.detach().double().cpu().numpy()
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_distances(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise ``1 − cos`` of unit vectors, as ``‖a − b‖² / 2``: exactly 0 for identical rows."""
    return 0.5 * ((reference - other) ** 2).sum(axis=1)


# ------------------------------------------------------------------------------------------------ images


# ------------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class _Sweep:
    """The LoRA, prompt, scales and seeds every model samples, and where the images go."""

    lora: LoRA
    prompt: str
    scales: list[float]
    seeds: list[int]
    out: Path
    t_start: float | None
    allow_partial: bool
    progress: bool
    height: int | None = None  # None: each model's native resolution
    width: int | None = None

    @functools.cached_property
    def digest(self) -> str:
        """The LoRA's :func:`lora_digest`, hashed once per sweep."""
        return lora_digest(self.lora)

    def key(self, model: str, scale: float, regime: Any) -> dict[str, Any]:
        """What made one model's images at one scale: a rerun reuses the images of an equal key."""
        return {
            "lora": self.digest,
            "model": model,
            "scale": float(scale),
            "regime": json.loads(json.dumps(regime.describe(), default=str)),
            **{k: getattr(self, k) for k in ("prompt", "t_start", "allow_partial", "height", "width")},
        }


@dataclass
class _Sampled:
    """Every model's images at every scale, and what run.json records of them."""

    images: dict[str, dict[float, list[Any]]] = field(default_factory=dict)  # PIL images in seed order
    regimes: dict[str, dict[str, Any]] = field(default_factory=dict)  # run.json's "regimes"
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # run.json's "models"
    pair: ModelPair | None = None  # the last pair loaded: run.json records its device and weights


def transfer(
    lora: str | os.PathLike | LoRA,
    base: str,
    students: Sequence[str],
    prompt: str,
    scales: Sequence[float] | str,
    seeds: Sequence[int] | str,
    out_dir: str | os.PathLike,
    *,
    text: str | None = None,
    embedder: Any = None,
    t_start: float | None = None,
    reverse: bool = False,
    allow_partial: bool = False,
    probe_factor: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    loader: Callable[[str, str], ModelPair] | None = None,
    height: int | None = None,
    width: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Apply ``lora`` at each of ``scales`` to ``base`` and to each of ``students``, sample ``seeds`` (the same at
    every scale) and measure how far each model moves; write images, grids, run.json, metrics.json/csv and
    report.html to ``out_dir``; return the metric rows.

    Args:
        lora: a LoRA file or folder (any format :func:`read_lora` reads) or a :class:`LoRA`.
        base / students: registry names; each student is loaded with the base (the base is sampled once).
        scales: must include 0 (the reference); ``"-1,0,1"`` or numbers.
        seeds: ``"0-3"``, ``"0,1,5"`` or ints.
        text: the concept text for the CLIP score change (default: the prompt).
        embedder: a spec string or a loaded embedder (default: the base's registry embedder).
        t_start: the LoRA is off while the timestep is above it (the slider convention).
        reverse: the LoRA was trained on the students: the transfer ratio is base / student.
        allow_partial: apply the modules that fit when the LoRA does not fit a UNet completely.
        probe_factor: on the testbed, the factor the slider should move (see :func:`parse_probe_factor`):
            adds per model ``probe_factor_change`` (per scale), ``probe_factor_slope`` (least-squares slope over
            the scales) and ``probe_factor_rank_correlation``, and per student ``probe_transfer_ratio`` (per
            scale) and ``probe_transfer_ratio_slope`` (the ratio of the slopes).
        loader: ``(base, student) -> ModelPair`` for every student (default: :func:`load_pair` with
            ``device``/``dtype`` once, then :func:`with_student`, which shares the base).
        height / width: the image size of every model (default: each model's native resolution).
        cache_dir: the Hugging Face hub cache the models and the embedder load from (default: HF_HUB_CACHE).

    Raises:
        FileNotFoundError: no LoRA at the path.
        LoRAMismatchError: the LoRA does not fit a model's UNet (unless ``allow_partial``).
        TransferError: scales without 0, no seeds, no students, an empty prompt.
    """
    scales, seeds, students, base_spec = _checked_arguments(
        base, students, prompt, scales, seeds, probe_factor
    )
    base = base_spec.name
    lora = lora if isinstance(lora, LoRA) else read_lora(lora)
    out = ensure_writable_dir(out_dir)
    started = time.perf_counter()
    sweep = _Sweep(lora, prompt, scales, seeds, out, t_start, allow_partial, progress, height, width)
    # the embedder first: a missing or misnamed one fails before any model is loaded or sampled
    embedder = resolve_embedder(embedder, base_spec, device=device, progress=progress, cache_dir=cache_dir)
    try:
        sampled = _sample_models(sweep, base, students, loader, device, dtype, cache_dir)
    except KeyboardInterrupt:
        kept = sum(len(list(folder.glob("*.png"))) for folder in out.glob("*@*") if folder.is_dir())
        raise Interrupted(
            f"interrupted: kept {kept} images in {out} (each model and scale's batches as they finished); the same "
            "command reuses them"
        ) from None
    embedder_name = getattr(embedder, "name", type(embedder).__name__)
    has_text = bool(getattr(embedder, "has_text", False))
    text = text or prompt
    rows, notes, distances = _embedding_rows(sampled.images, embedder, embedder_name, text, prompt, scales)
    rows += _transfer_ratio_rows(distances, base, students, prompt, embedder_name, reverse)
    # a known world (the testbed): what its probe sees change
    truth = ground_truth_for(base_spec.family)
    if truth is not None and (not has_text or probe_factor is not None):
        ratio_pairs = [(s, *((base, s) if reverse else (s, base))) for s in students]
        rows += _probe_rows(truth, sampled.images, scales, prompt, device, probe_factor, ratio_pairs)

    parameters = {
        "text": text,
        "embedder": embedder_name,
        "t_start": t_start,
        "allow_partial": allow_partial,
        "reverse": reverse,
        "probe_factor": probe_factor,
    }
    run = _run_record(sweep, sampled, base, students, reverse, parameters, notes, started)
    write_metrics(out, rows)
    write_json(out / "run.json", run)
    from conceptspace.report import build_report

    build_report(out, title=f"transfer of {Path(str(lora.source or lora.name)).name}")
    return rows


def _checked_arguments(
    base: str,
    students: Sequence[str],
    prompt: str,
    scales: Sequence[float] | str,
    seeds: Sequence[int] | str,
    probe_factor: str | None,
) -> tuple[list[float], list[int], list[str], ModelSpec]:
    """The scales, seeds and students parsed, and the base's spec: every argument checked before anything
    loads."""
    scales = parse_scales(scales)
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    if len(seeds) < 2:
        raise TransferError(
            f"{len(seeds)} seed{'s' * (len(seeds) != 1)} given: every change is a mean over paired seeds with a confidence interval, "
            "which needs at least 2 (pass e.g. -n 4)"
        )
    if not any(s.strip() for s in students):
        raise TransferError("no students given: pass e.g. --student dmd2,lcm")
    check_prompt(prompt)  # "" samples unconditionally, whitespace alone is refused
    # unknown names fail before anything loads; hub ids become registry names (they name folders and rows)
    base_spec = get_spec(base)
    students = [get_spec(s.strip()).name for s in students if s.strip()]
    if len(set(students)) != len(students) or base_spec.name in students:
        raise TransferError(f"models repeat in base {base_spec.name!r} and students {students}")
    if probe_factor is not None:
        truth = ground_truth_for(base_spec.family)
        if truth is None:
            raise TransferError(
                f"--probe-factor needs a family with a factor probe (the testbed: base shapes); {base} has none"
            )
        parse_probe_factor(probe_factor, truth)  # a typo fails before anything samples
    return scales, seeds, students, base_spec


# ------------------------------------------------------------------------------------------------ sampling


def _sample_models(
    sweep: _Sweep,
    base: str,
    students: Sequence[str],
    loader: Callable[[str, str], ModelPair] | None,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    cache_dir: str | os.PathLike | None,
) -> _Sampled:
    """The base (once) and every student sampled at every scale, each student loaded beside the base."""
    sampled = _Sampled()
    pair = None
    for index, student in enumerate(students):
        if loader is not None:
            pair = loader(base, student)
        elif pair is None:
            pair = load_pair(base, student, device=device, dtype=dtype, cache_dir=cache_dir)
        else:
            previous, pair = (
                pair,
                with_student(pair, student, cache_dir=cache_dir),
            )  # the base pipeline is shared, not loaded again
            release_student(previous)
        sampled.pair = pair
        if index == 0:
            _sample_model(
                sweep, pair, "base", base, sampled
            )  # sampled once: the base is the same in every pair
        _sample_model(sweep, pair, "student", student, sampled)
    return sampled


def _sample_model(sweep: _Sweep, pair: ModelPair, role: str, name: str, sampled: _Sampled) -> None:
    """One model with the LoRA at every scale: its images, its regimes, its grid and its entry in run.json."""
    network = "base" if role == "base" else "student"
    unet = pair.network(network)
    report = _checked_coverage(unet, sweep.lora, name, sweep.allow_partial)
    spec = pair.spec(network)
    regime = Base() if role == "base" else Distilled()
    handle = apply_lora(unet, sweep.lora, scale=0.0, t_start=sweep.t_start, allow_partial=sweep.allow_partial)
    sampled.images[name] = {}
    try:
        for scale in sweep.scales:
            handle.scale = float(scale)
            record = _sample_scale(sweep, pair, regime, name, scale, spec.resolution)
            sampled.regimes[regime_name(name, scale)] = record
            sampled.images[name][scale] = [
                Image.open(sweep.out / image["path"]).convert("RGB") for image in record["images"]
            ]
    finally:
        handle.remove()
    grid = scale_grid(sampled.images[name], [f"seed {s}" for s in sweep.seeds], name)
    write_image(sweep.out / f"grid_{name}.png", grid)
    sampled.models[name] = {
        "role": role,
        "spec": asdict(spec),
        "coverage": {"matched": len(report.matched), "total": report.total, "complete": report.complete},
    }


def _checked_coverage(unet: Any, lora: LoRA, name: str, allow_partial: bool) -> Any:
    """Which of the LoRA's modules ``name``'s UNet has; a LoRA that does not fit is refused."""
    report = coverage(unet, lora)
    # apply_lora refuses a LoRA that does not fit; checking first names the model in the message
    if not report.matched or (not report.complete and not allow_partial):
        raise LoRAMismatchError(
            f"LoRA {lora.name} does not fit {name}'s UNet: {report.summary()}; it is for another "
            "architecture (conceptspace lora inspect lists the models it fits)"
            + ("" if not report.matched else ", or pass --allow-partial to apply the modules that fit")
        )
    return report


def _sample_scale(
    sweep: _Sweep, pair: ModelPair, regime: Any, name: str, scale: float, resolution: int
) -> dict[str, Any]:
    """One model's images at one scale (the LoRA already at that scale): the seeds an earlier run with the same
    key left in the folder are kept, the others sampled and written batch by batch, each batch recorded in the
    folder's :data:`REGIME_RECORD`. Returns the regime's run.json record."""
    folder = sweep.out / regime_name(name, scale)
    key = sweep.key(name, scale, regime)
    record = _kept_record(folder, key, sweep.seeds) or {
        "model": name,
        "scale": scale,
        "settings": None,
        "schedule": None,
        "timings": {},
        "images": [],
    }
    made = {int(image["seed"]): image for image in record["images"]}

    def keep_batch(seeds: list[int], images: Any) -> None:
        for seed, image in zip(seeds, images, strict=True):
            path = write_image(folder / image_name(0, seed), image)
            made[seed] = {"prompt": sweep.prompt, "seed": seed, "path": str(path.relative_to(sweep.out))}
        record["images"] = list(made.values())
        write_json(folder / REGIME_RECORD, {"key": key, "record": record})

    missing = [seed for seed in sweep.seeds if seed not in made]
    if missing:
        result = sample(
            pair,
            sweep.prompt,
            regime,
            missing,
            height=sweep.height or resolution,
            width=sweep.width or resolution,
            on_batch=keep_batch,
            progress=sweep.progress,
        )
        record["settings"], record["schedule"] = result.settings, result.schedule_dicts()
        for phase, seconds in result.timings.items():
            record["timings"][phase] = record["timings"].get(phase, 0.0) + seconds
    record["images"] = [made[seed] for seed in sweep.seeds]
    write_json(folder / REGIME_RECORD, {"key": key, "record": record})
    return record


def _kept_record(folder: Path, key: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any] | None:
    """The record of the images an earlier run with this key wrote to ``folder`` (those of ``seeds`` whose files
    exist), or None."""
    try:
        earlier = json.loads((folder / REGIME_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if earlier.get("key") != json.loads(json.dumps(key)):
        return None
    record = earlier["record"]
    wanted = set(seeds)
    record["images"] = [
        image
        for image in record.get("images", [])
        if int(image["seed"]) in wanted and (folder.parent / image["path"]).is_file()
    ]
    return record if record["images"] else None


# ------------------------------------------------------------------------------------------------ measuring


def _embedding_rows(
    images: dict[str, dict[float, list[Any]]],
    embedder: Any,
    embedder_name: str,
    text: str,
    prompt: str,
    scales: Sequence[float],
) -> tuple[list[dict[str, Any]], list[str], dict[str, dict[float, np.ndarray]]]:
    """Per model and scale, the distance to scale 0 (and the CLIP score change, with a text tower); returns the
    rows, notes for run.json and the per-seed distances by model and scale."""
    has_text = bool(getattr(embedder, "has_text", False))
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    distances: dict[str, dict[float, np.ndarray]] = {}
    text_embedding = embedder.embed_texts([text]) if has_text else None
    if not has_text:
        notes.append(f"embedder {embedder_name} has no text tower: the CLIP score change is not measured")
    for name, by_scale in images.items():
        embeddings = {s: _unit(embedder.embed_images(imgs)) for s, imgs in by_scale.items()}
        distances[name] = {s: cosine_distances(embeddings[0.0], embeddings[s]) for s in scales}
        for s in scales:
            rows.append(
                mean_row(
                    distances[name][s],
                    prompt,
                    regime_name(name, s),
                    "distance_to_scale_0",
                    seed=0,
                    model=name,
                    scale=s,
                    embedder=embedder_name,
                    ci_method="bootstrap over seeds",
                )
            )
        if text_embedding is not None:
            rows += _clip_score_change_rows(
                name, embeddings, text_embedding, text, prompt, embedder_name, notes
            )
    return rows, notes, distances


def _clip_score_change_rows(
    name: str,
    embeddings: dict[float, np.ndarray],
    text_embedding: torch.Tensor,
    text: str,
    prompt: str,
    embedder_name: str,
    notes: list[str],
) -> list[dict[str, Any]]:
    """One model's percent change in CLIP score against ``text`` from scale 0 to each other scale; a scale it
    cannot be measured at gets a note instead."""
    from conceptspace.quality import clip_score_change

    rows = []
    for s in embeddings:
        if s == 0:
            continue
        try:
            estimate = clip_score_change(
                embeddings[0.0], embeddings[s], text_embedding.double().numpy(), n_boot=N_BOOT
            )
        except ValueError as error:  # a reference CLIP score of 0: the percent change is undefined
            notes.append(f"{regime_name(name, s)}: clip_score_change not measured ({error})")
            continue
        rows.append(
            estimate.row(
                prompt,
                regime_name(name, s),
                "clip_score_change",
                model=name,
                scale=s,
                text=text,
                embedder=embedder_name,
                ci_method=estimate.method,
            )
        )
    return rows


def _transfer_ratio_rows(
    distances: dict[str, dict[float, np.ndarray]],
    base: str,
    students: Sequence[str],
    prompt: str,
    embedder_name: str,
    reverse: bool,
) -> list[dict[str, Any]]:
    """The effect on each student over the effect on the base, per scale (``reverse``: base over student)."""
    rows: list[dict[str, Any]] = []
    for student in students:
        numerator, denominator = (base, student) if reverse else (student, base)
        rows += ratio_rows_per_scale(
            distances[numerator],
            distances[denominator],
            prompt,
            f"{numerator} / {denominator}",
            "transfer_ratio",
            model=student,
            embedder=embedder_name,
        )
    return rows


def _run_record(
    sweep: _Sweep,
    sampled: _Sampled,
    base: str,
    students: list[str],
    reverse: bool,
    parameters: dict[str, Any],
    notes: list[str],
    started: float,
) -> dict[str, Any]:
    """The content of run.json."""
    pair = sampled.pair
    return {
        "command": "transfer",
        "lora": sweep.lora.source or sweep.lora.name,
        "lora_modules": len(sweep.lora.modules),
        "base": base,
        "students": students,
        "models": sampled.models,
        "reverse": reverse,
        "prompts": [sweep.prompt],
        "seeds": sweep.seeds,
        "scales": sweep.scales,
        "parameters": parameters,
        "notes": notes,
        "device": str(pair.device) if pair is not None else None,
        **(pair.weights if pair is not None else {"dtype": None}),
        "memory_plan": pair.memory_plan if pair is not None else None,
        "versions": environment_versions(),
        "regimes": sampled.regimes,
        "wall_time": {"total": time.perf_counter() - started},
    }


def _probe_rows(
    truth: GroundTruth,
    images: dict[str, dict[float, list[Any]]],
    scales: Sequence[float],
    prompt: str,
    device: Any,
    probe_factor: str | None = None,
    ratio_pairs: Sequence[tuple[str, str, str]] = (),
) -> list[dict[str, Any]]:
    """Per model and scale s ≠ 0: mean change of each continuous factor (size/x/y, pixels) and share of changes of
    each categorical one (shape/colour/background); with
    ``probe_factor`` also that factor's change, its rank correlation with the scale per model and, for each
    ``(student, numerator, denominator)``, the ratio of the two models' changes."""
    probe = truth.load_probe(device=device)
    score = parse_probe_factor(probe_factor, truth) if probe_factor is not None else None
    factor_extra = {"factor": probe_factor} if probe_factor is not None else {}
    rows = []
    factor_change: dict[str, dict[float, np.ndarray]] = {}
    factor_slope: dict[str, np.ndarray] = {}
    for name, by_scale in images.items():
        factors = {
            s: probe.predict(
                np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in imgs]), probabilities=True
            )
            for s, imgs in by_scale.items()
        }
        extra = {"model": name, "embedder": truth.name, "ci_method": "bootstrap over seeds"}
        for s in scales:
            if s == 0:
                continue
            regime = regime_name(name, s)
            for factor in truth.continuous:
                change = factors[s][factor].astype(float) - factors[0.0][factor].astype(float)
                rows.append(
                    mean_row(change, prompt, regime, f"probe_{factor}_change", seed=2, scale=s, **extra)
                )
            for factor in truth.categorical:
                changed = (factors[s][factor] != factors[0.0][factor]).astype(float)
                rows.append(
                    mean_row(changed, prompt, regime, f"probe_{factor}_changed", seed=3, scale=s, **extra)
                )
        if score is None:
            continue
        scores = {s: score(factors[s]) for s in scales}
        factor_change[name] = {s: scores[s] - scores[0.0] for s in scales}
        for s in scales:
            if s != 0:
                rows.append(
                    mean_row(
                        factor_change[name][s],
                        prompt,
                        regime_name(name, s),
                        "probe_factor_change",
                        seed=4,
                        scale=s,
                        **extra,
                        **factor_extra,
                    )
                )
        by_seed = np.stack([scores[s] for s in scales], axis=1)
        factor_slope[name] = per_seed_slope(by_seed, scales)
        rows.append(
            mean_row(factor_slope[name], prompt, name, "probe_factor_slope", seed=6, **extra, **factor_extra)
        )
        correlation = _rank_correlation(by_seed, scales)
        rows.append(
            mean_row(
                np.nan_to_num(correlation),  # a seed whose score never moves has no rank order: 0
                prompt,
                name,
                "probe_factor_rank_correlation",
                seed=5,
                **extra,
                **factor_extra,
            )
        )
    for student, numerator, denominator in ratio_pairs if score is not None else ():
        rows.append(  # one ratio over all scales: steadier than per scale where one model barely moves
            ratio_row(
                factor_slope[numerator],
                factor_slope[denominator],
                prompt,
                f"{numerator} / {denominator}",
                "probe_transfer_ratio_slope",
                model=student,
                embedder=truth.name,
                **factor_extra,
            )
        )
        rows += ratio_rows_per_scale(
            factor_change[numerator],
            factor_change[denominator],
            prompt,
            f"{numerator} / {denominator}",
            "probe_transfer_ratio",
            model=student,
            embedder=truth.name,
            **factor_extra,
        )
    return rows
