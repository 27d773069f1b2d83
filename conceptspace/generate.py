"""Generate images (and x̂0 trajectories) for prompts × regimes × seeds into a folder, with a run.json that
records every parameter, package versions, wall time per phase and the schedule each regime actually ran."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptspace.io import (
    ensure_writable_dir,
    environment_versions,
    image_name,
    strip_name,
    write_image,
    write_json,
)
from conceptspace.models import ModelPair
from conceptspace.results import metric_row, write_metrics
from conceptspace.sampling import Regime, SampleResult, check_prompt, sample
from conceptspace.stats import mean_estimate
from conceptspace.trajectories import (
    commitment_curve,
    decode_trajectory,
    embedding_commitment,
    trajectory_strip,
)

TrajectoryMeasures = Callable[[str, str, torch.Tensor, list[dict[str, Any]]], list[dict[str, Any]]]
"""``(prompt, regime, decoded x̂0 (n, steps, 3, H, W) in [0, 1], schedule) -> metric rows``: see :func:`generate`."""

COMMITMENT_COLUMNS = (
    "prompt",
    "regime",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "step",
    "timestep",
    "model",
)


@dataclass(frozen=True)
class _Options:
    """How :func:`generate` samples every (regime, prompt) and what it does with the x̂0 trajectories."""

    negative_prompt: str | None
    height: int | None
    width: int | None
    batch_size: int
    trajectories: bool
    strips: int | None
    commitment_embedder: Any
    trajectory_measures: TrajectoryMeasures | None
    progress: bool
    command: str


def generate(
    pair: ModelPair,
    prompts: Sequence[str],
    regimes: Sequence[Regime],
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 4,
    trajectories: bool = False,
    strips: int | None = None,
    commitment_embedder: Any = None,
    trajectory_measures: TrajectoryMeasures | None = None,
    progress: bool = True,
    parameters: dict[str, Any] | None = None,
    command: str = "generate",
    keep: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Sample every prompt in every regime and write ``out_dir/<regime>/<prompt#>_<seed>.png`` and ``run.json``.

    With ``trajectories=True`` also one x̂0 strip per sample (``trajectory_<prompt#>_<seed>.png``, steps left
    to right) and commitment curves in ``metrics.json`` / ``metrics.csv`` (metric ``commitment``: similarity of
    each step's x̂0 to the final image, mean with 95% CI per prompt, regime and step; latent correlation, or
    cosine similarity in ``commitment_embedder``'s space when one is given). ``strips``: write strips for the first
    ``strips`` seeds of each prompt and regime only (default all; the curves always use every sample).
    ``trajectory_measures(prompt, regime, decoded, schedule)`` adds its rows to the curves: ``decoded`` is every
    sample's x̂0 trajectory as images ``(n, steps, 3, H, W)`` in [0, 1], ``schedule`` the regime's
    ``schedule_dicts()`` (e.g. :func:`conceptspace.testbed.commitment.trajectory_rows`, per factor).
    ``run.json`` is written last: its presence marks a complete run; its ``command`` names the study that made
    it (``generate``, ``trajectory``, ``demo`` …). Images are written as their batch finishes, each regime's
    :data:`REGIME_RECORD` with them, so Ctrl-C (:class:`Interrupted`) loses one batch at most.
    ``keep``: per regime, the record of earlier work in ``out_dir`` that made some of its images with the same
    settings (:func:`conceptspace.diversity.generate_or_reuse` finds them): those images are kept and only the
    others sampled. Not with ``trajectories`` (kept images have no x̂0 trajectory).
    Returns the run record (the content of run.json).
    """
    _check_inputs(prompts, regimes)
    keep = dict(keep or {})
    if keep and trajectories:
        raise ValueError("keep and trajectories exclude each other: kept images have no x̂0 trajectories")
    out = ensure_writable_dir(out_dir)
    options = _Options(
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        batch_size=batch_size,
        trajectories=trajectories,
        strips=strips,
        commitment_embedder=commitment_embedder,
        trajectory_measures=trajectory_measures,
        progress=progress,
        command=command,
    )
    started = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    commitment_rows: list[dict[str, Any]] = []
    try:
        for regime in regimes:
            _forget_regime(out, regime.name)
            records[regime.name] = _new_record(keep.get(regime.name))
            save = _record_saver(pair, prompts, seeds, out / regime.name, records[regime.name])
            save()  # what is kept stays on record, even if nothing new finishes
            commitment_rows += _sample_regime(
                pair, prompts, regime, seeds, out, options, records[regime.name], save
            )
            save()
    except KeyboardInterrupt:
        finished = [name for name in records if len(records[name]["images"]) == len(prompts) * len(seeds)]
        kept = f"the finished regimes ({', '.join(finished) or 'none'})"
        if len(finished) < len(records):
            name, record = list(records.items())[-1]
            kept += f" and {len(record['images'])} of {len(prompts) * len(seeds)} images of {name}"
        raise Interrupted(f"interrupted: kept {kept} in {out}; the same command reuses them") from None
    if trajectories:
        write_metrics(out, commitment_rows)
    run = _run_record(pair, prompts, seeds, options, parameters, records, started)
    write_json(out / "run.json", run)
    return run


REGIME_RECORD = "regime.json"
"""A regime's record (settings, schedule, the images made so far) in its folder, rewritten as each batch of images
is written: what a rerun after an interruption reuses (``conceptspace.diversity.generate_or_reuse``)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during sampling; the message says which finished work was kept."""


def _regime_file(
    pair: ModelPair, prompts: Sequence[str], seeds: Sequence[int], record: dict[str, Any]
) -> dict[str, Any]:
    return {
        "base": pair.base.name,
        "student": pair.student.name if pair.student else None,
        "prompts": list(prompts),
        "seeds": list(seeds),
        "record": record,
    }


def _new_record(kept: dict[str, Any] | None) -> dict[str, Any]:
    """A regime's run.json record to fill, starting from the kept one's images, timings and batches."""
    kept = kept or {}
    return {
        "settings": kept.get("settings"),
        "schedule": kept.get("schedule"),
        "images": list(kept.get("images", [])),
        "timings": dict(kept.get("timings", {})),
        "batches": list(
            kept.get("batches", [])
        ),  # [prompt index, images, denoising seconds] per forward batch
    }


def _record_saver(
    pair: ModelPair, prompts: Sequence[str], seeds: Sequence[int], regime_dir: Path, record: dict[str, Any]
) -> Callable[[], None]:
    """Writes the regime's :data:`REGIME_RECORD` as it stands (once it has images)."""

    def save() -> None:
        if record["images"]:
            write_json(regime_dir / REGIME_RECORD, _regime_file(pair, prompts, seeds, record))

    return save


def _forget_regime(out: Path, name: str) -> None:
    """Before a regime's folder is written again, no record may still describe its old images."""
    (out / name / REGIME_RECORD).unlink(missing_ok=True)
    run_file = out / "run.json"
    if run_file.is_file():
        try:
            run = json.loads(run_file.read_text(encoding="utf-8"))
        except ValueError:
            return
        if name in run.get("regimes", {}):
            del run["regimes"][name]
            write_json(run_file, run)


def _check_inputs(prompts: Sequence[str], regimes: Sequence[Regime]) -> None:
    """Refuse a run with nothing to sample, a prompt of whitespace or two regimes that would share a folder."""
    if not prompts:
        raise ValueError("no prompt given: pass at least one prompt")
    if not regimes:
        raise ValueError("no regime given")
    names = [regime.name for regime in regimes]
    if len(set(names)) != len(names):
        raise ValueError(
            f"regime names repeat ({', '.join(names)}): each regime writes to its own folder, run them separately"
        )
    for prompt in prompts:
        check_prompt(prompt)


def _sample_regime(
    pair: ModelPair,
    prompts: Sequence[str],
    regime: Regime,
    seeds: Sequence[int],
    out: Path,
    options: _Options,
    record: dict[str, Any],
    save: Callable[[], None],
) -> list[dict[str, Any]]:
    """Every (prompt, seed) that ``record`` does not hold yet, sampled in ``regime`` and written to its folder batch
    by batch (``save`` after each); fills ``record`` (its run.json record) and returns the regime's commitment rows
    (none without trajectories)."""
    regime_dir = out / regime.name
    made = {(image["prompt"], int(image["seed"])): image for image in record["images"]}
    # the described settings say what made a kept image before the first batch's full settings are known
    record["settings"] = record["settings"] or json.loads(json.dumps(regime.describe(), default=str))
    commitment_rows: list[dict[str, Any]] = []
    for prompt_index, prompt in enumerate(prompts):
        missing = [seed for seed in seeds if (prompt, seed) not in made]
        if not missing:
            continue

        def keep_batch(
            batch_seeds: list[int], images: Any, prompt: str = prompt, index: int = prompt_index
        ) -> None:
            start = time.perf_counter()
            for seed, image in zip(batch_seeds, images, strict=True):
                path = write_image(regime_dir / image_name(index, seed), image)
                made[(prompt, seed)] = {"prompt": prompt, "seed": seed, "path": str(path.relative_to(out))}
            record["images"] = list(made.values())
            record["timings"]["writing"] = record["timings"].get("writing", 0.0) + time.perf_counter() - start
            save()

        result = sample(
            pair,
            prompt,
            regime,
            missing,
            negative_prompt=options.negative_prompt,
            height=options.height,
            width=options.width,
            batch_size=options.batch_size,
            record_x0=options.trajectories,
            on_batch=keep_batch,
            progress=options.progress,
        )
        record["settings"] = result.settings
        record["schedule"] = result.schedule_dicts()
        for phase, seconds in result.timings.items():
            record["timings"][phase] = record["timings"].get(phase, 0.0) + seconds
        record["batches"] += [[prompt_index, rows, seconds] for rows, seconds in result.batch_seconds]
        if options.trajectories:
            start = time.perf_counter()
            commitment_rows += _trajectory_outputs(
                pair, prompt, prompt_index, regime.name, regime_dir, result, options
            )
            record["timings"]["writing"] += time.perf_counter() - start
    record["images"] = [made[(prompt, seed)] for prompt in prompts for seed in seeds]  # in run order
    return commitment_rows


def _trajectory_outputs(
    pair: ModelPair,
    prompt: str,
    prompt_index: int,
    regime: str,
    regime_dir: Path,
    result: SampleResult,
    options: _Options,
) -> list[dict[str, Any]]:
    """Write the x̂0 strips of one prompt's samples; return their commitment curve (and the trajectory
    measures') as rows."""
    shown = len(result.seeds) if options.strips is None else min(options.strips, len(result.seeds))
    # every sample is decoded only when something measures the images
    on_images = options.commitment_embedder is not None or options.trajectory_measures is not None
    decoded = decode_trajectory(pair, result.trajectory if on_images else result.trajectory[:shown])
    for seed, strip in zip(result.seeds[:shown], decoded[:shown], strict=True):
        write_image(regime_dir / strip_name(prompt_index, seed), trajectory_strip(strip))
    if options.commitment_embedder is None:
        curve, similarity = commitment_curve(result.trajectory), "latent_correlation"
    else:
        curve = embedding_commitment(decoded, options.commitment_embedder)
        similarity = options.commitment_embedder.name
    rows = _commitment_rows(prompt, regime, curve, result.schedule_dicts(), similarity=similarity)
    if options.trajectory_measures is not None:
        rows += options.trajectory_measures(prompt, regime, decoded, result.schedule_dicts())
    return rows


def _run_record(
    pair: ModelPair,
    prompts: Sequence[str],
    seeds: Sequence[int],
    options: _Options,
    parameters: dict[str, Any] | None,
    records: dict[str, dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    """The content of run.json: the models, every parameter, versions, each regime's record and wall times."""
    return {
        "command": options.command,
        "base": asdict(pair.base),
        "student": asdict(pair.student) if pair.student else None,
        "paths": pair.paths,
        "device": str(pair.device),
        **pair.weights,
        "memory_plan": pair.memory_plan,
        "prompts": list(prompts),
        "seeds": list(seeds),
        "parameters": {
            "negative_prompt": options.negative_prompt,
            "height": options.height or pair.default_resolution,
            "width": options.width or pair.default_resolution,
            "batch_size": options.batch_size,
            "trajectories": options.trajectories,
            "strips": options.strips,
            "commitment_similarity": getattr(options.commitment_embedder, "name", "latent_correlation")
            if options.trajectories
            else None,
            **(parameters or {}),
        },
        "versions": environment_versions(),
        "regimes": records,
        "schedule": schedule_field(records),
        "wall_time": {
            "total": time.perf_counter() - started,
            **{k: v["timings"] for k, v in records.items()},
        },
    }


def schedule_field(records: dict[str, dict[str, Any]]) -> Any:
    """One list when a single regime ran, else one list per regime."""
    if len(records) == 1:
        return next(iter(records.values()))["schedule"]
    return {name: record["schedule"] for name, record in records.items()}


def _commitment_rows(
    prompt: str, regime: str, curve: np.ndarray, schedule: list[dict[str, Any]], *, similarity: str
) -> list[dict[str, Any]]:
    """Mean commitment per step with a percentile-bootstrap 95% CI over samples (it stays inside [0, 1] for the
    probe's 0/1 matches, which a normal interval would not at small n)."""
    rows = []
    for step, entry in enumerate(schedule):
        estimate = mean_estimate(curve[:, step])
        rows.append(
            metric_row(
                prompt,
                regime,
                "commitment",
                estimate.value,
                estimate.ci_low,
                estimate.ci_high,
                estimate.n,
                step=step,
                timestep=entry["timestep"],
                model=entry["model"],
                similarity=similarity,
            )
        )
    return rows
