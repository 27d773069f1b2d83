"""Diversity of a run folder: embed each regime's images per prompt, measure diversity with bootstrap CIs and
compare regimes paired by seed, and write the tidy rows (metrics.json / metrics.csv) beside the images.

    >>> rows = measure_diversity("runs/puppy", "open_clip:ViT-B-32:laion2b_s34b_b79k")   # doctest: +SKIP

:func:`diversity_run` is the whole workflow of the paper's Table 2 for any pair: generate (or reuse) images,
measure, and build report.html.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from conceptspace.embeddings import Embedder, default_embedder, load_embedder
from conceptspace.generate import REGIME_RECORD, generate, schedule_field
from conceptspace.io import write_json
from conceptspace.metrics import diversity_over_prompts, paired_over_prompts
from conceptspace.metrics.prompt_aware import conditional_vendi_rows
from conceptspace.metrics.reference import base_reference_rows
from conceptspace.models import ModelPair
from conceptspace.results import write_metrics
from conceptspace.sampling import Regime

DEFAULT_METRICS = ("pairwise_distance", "vendi", "vendi_q2")


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run.json of a folder written by ``conceptspace generate`` (or :func:`conceptspace.generate.generate`)."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: make the images with `conceptspace generate --out {run_dir}` first"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None


def images_by_prompt(
    run: dict[str, Any], run_dir: str | os.PathLike
) -> dict[str, dict[str, list[tuple[int, Path]]]]:
    """``{prompt: {regime: [(seed, path), …]}}`` sorted by seed, for every image the run lists."""
    grouped: dict[str, dict[str, list[tuple[int, Path]]]] = {}
    for regime, record in run.get("regimes", {}).items():
        for image in record.get("images", []):
            path = Path(run_dir) / image["path"]
            if not path.exists():
                raise FileNotFoundError(f"{path} is listed in run.json but missing; regenerate the run")
            grouped.setdefault(image["prompt"], {}).setdefault(regime, []).append((int(image["seed"]), path))
    for by_regime in grouped.values():
        for images in by_regime.values():
            images.sort()
    return grouped


def _paired_seeds(prompt: str, by_regime: dict[str, list[tuple[int, Path]]]) -> list[int]:
    """The seeds every regime has for ``prompt`` (paired comparisons need the same seeds on both sides)."""
    seed_sets = [{seed for seed, _ in images} for images in by_regime.values()]
    common = set.intersection(*seed_sets)
    if any(len(s) != len(common) for s in seed_sets):
        counts = ", ".join(f"{regime}: {len(images)}" for regime, images in by_regime.items())
        raise ValueError(
            f"regimes differ in their seeds for prompt {prompt!r} ({counts}); regenerate with the same -n and --seed"
        )
    if len(common) < 2:
        raise ValueError(
            f"prompt {prompt!r} has {len(common)} image(s) per regime; diversity needs at least 2 (use -n 2 or more)"
        )
    return sorted(common)


def default_pairs(regimes: Sequence[str]) -> list[tuple[str, str]]:
    """Each later regime against each earlier one (``distilled - base``, ``hybrid - base``, ``hybrid - distilled``)."""
    return [(later, earlier) for j, later in enumerate(regimes) for earlier in regimes[:j]]


def measure_diversity(
    run_dir: str | os.PathLike,
    embedder: Embedder | str,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    pairs: Sequence[tuple[str, str]] | None = None,
    resample: str = "auto",
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Measure the diversity of every regime of a run and write ``metrics.json`` / ``metrics.csv`` there.

    Per prompt and regime: each metric with a 95% CI over images; averaged over prompts with a CI that resamples
    ``resample``: ``"images"`` within the prompts (right for a handful of prompts studied for themselves),
    ``"prompts"``, or ``"both"`` (two-stage, for prompt sets that sample a larger population); ``"auto"`` picks
    ``"images"`` below 10 prompts and ``"both"`` from 10 on (see docs/metrics.md for the coverage this gives).
    And paired differences between regimes (``pairs``, default :func:`default_pairs`)
    with a CI and a permutation p-value. With several prompts, the prompt-aware Conditional-Vendi score of each
    regime and its paired differences (:func:`conceptspace.metrics.prompt_aware.conditional_vendi_rows`); with a
    ``base`` regime, every other regime against the base's own images of each prompt — precision, recall,
    density, coverage, CMMD and the PRDC differences from ``distilled``
    (:func:`conceptspace.metrics.reference.base_reference_rows`; 4 seeds or more). The default metrics hold
    ``vendi_q2``, the order-2 Vendi score, which is closer to its many-image value at small n than q = 1
    (docs/metrics.md). Rows carry ``embedder`` and the pair's ``model``.
    Returns the rows.
    """
    run = read_run(run_dir)
    if isinstance(embedder, str):
        embedder = load_embedder(embedder, device=device, cache_dir=cache_dir, progress=progress)
    grouped = images_by_prompt(run, run_dir)
    if not grouped:
        raise ValueError(f"{run_dir} holds no images to measure")
    regimes = list(run["regimes"])
    chosen: dict[str, dict[str, list[Any]]] = {}
    for prompt, by_regime in grouped.items():
        missing = [r for r in regimes if r not in by_regime]
        if missing:
            raise ValueError(f"prompt {prompt!r} has no images for regime(s) {', '.join(missing)}")
        seeds = _paired_seeds(prompt, by_regime)
        chosen[prompt] = {regime: [path for s, path in by_regime[regime] if s in seeds] for regime in regimes}
    # one bar for the whole phase; the embedder's own per-call bar would flash once per prompt and regime
    total = sum(len(paths) for by_regime in chosen.values() for paths in by_regime.values())
    embeddings: dict[str, dict[str, torch.Tensor]] = {}
    own_bar, embedder.progress = embedder.progress, False
    try:
        with tqdm(total=total, desc=f"embedding [{embedder.name}]", unit="img", disable=not progress) as bar:
            for prompt, by_regime in chosen.items():
                embeddings[prompt] = {}
                for regime, paths in by_regime.items():
                    embeddings[prompt][regime] = embedder.embed_images(paths)
                    bar.update(len(paths))
    finally:
        embedder.progress = own_bar
    if resample == "auto":
        resample = "images" if len(grouped) < 10 else "both"
    model = run["base"]["name"] + (f"/{run['student']['name']}" if run.get("student") else "")
    common = dict(
        metrics=metrics, n_boot=n_boot, seed=seed, resample=resample, embedder=embedder.name, model=model
    )
    pairs = pairs or default_pairs(regimes)
    rows = diversity_over_prompts(embeddings, **common)
    if len(regimes) > 1:
        rows += paired_over_prompts(embeddings, pairs, n_perm=n_perm, **common)
    if len(embeddings) > 1:  # the prompt-aware score: variety between prompts is not the model's
        rows += conditional_vendi_rows(embeddings, pairs, embedder=embedder.name, model=model)
    seeds = min(len(paths) for by_regime in chosen.values() for paths in by_regime.values())
    if "base" in regimes and len(regimes) > 1 and seeds >= 4:  # who restores the base's own distribution
        student = "distilled" if "distilled" in regimes else None
        rows += base_reference_rows(
            embeddings, regimes, "base", student, n_boot=n_boot, embedder=embedder.name, model=model
        )
    write_metrics(run_dir, rows)
    return rows


def _same_regime(record: dict[str, Any], regime: Regime) -> bool:
    """Whether a run.json regime record was made by ``regime`` (its described parameters, JSON-normalised)."""
    settings = record.get("settings") or {}
    described = json.loads(json.dumps(regime.describe(), default=str))
    return all(settings.get(key) == value for key, value in described.items())


def _reusable_regimes(
    run_dir: Path, pair: ModelPair, prompts: Sequence[str], regimes: Sequence[Regime], seeds: Sequence[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Regime records of earlier work in ``run_dir`` that the same regime made (same parameters) for this pair:
    those that hold every (prompt, seed), and those that hold some (an interrupted regime, or a run with fewer
    seeds), each cut to the wanted images whose files exist. Earlier work is a complete run.json's regimes and
    each regime folder's :data:`~conceptspace.generate.REGIME_RECORD` (written as batches finish)."""
    models = (pair.base.name, pair.student.name if pair.student else None)
    records: dict[str, Any] = {}
    try:
        run = read_run(run_dir)
    except (FileNotFoundError, ValueError):
        run = {}
    if (run.get("base", {}).get("name"), (run.get("student") or {}).get("name")) == models:
        records.update(run.get("regimes", {}))
    for regime in regimes:
        try:
            finished = json.loads((run_dir / regime.name / REGIME_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (finished.get("base"), finished.get("student")) == models:
            records[regime.name] = finished["record"]
    wanted = {(p, s) for p in prompts for s in seeds}
    by_name = {regime.name: regime for regime in regimes}
    whole, partial = {}, {}
    for name, record in records.items():
        if name not in by_name or not _same_regime(record, by_name[name]):
            continue
        images = [
            i
            for i in record.get("images", [])
            if (i["prompt"], int(i["seed"])) in wanted and (run_dir / i["path"]).exists()
        ]
        have = {(i["prompt"], int(i["seed"])) for i in images}
        if have == wanted:
            whole[name] = {**record, "images": images}
        elif have:
            partial[name] = {**record, "images": images}
    return whole, partial


def generate_or_reuse(
    pair: ModelPair,
    prompts: Sequence[str],
    regimes: Sequence[Regime],
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    reuse: bool = True,
    progress: bool = True,
    **generate_options: Any,
) -> dict[str, Any]:
    """:func:`conceptspace.generate.generate`, except that with ``reuse`` the images an earlier run in ``out_dir``
    made with the same parameters for the same pair, prompts and seeds are not sampled again: whole regimes (run.json
    then lists them under ``reused_regimes``) and, without trajectories, single images of a regime an interruption
    cut short (``reused_images``: how many per regime). Returns the run record."""
    out = Path(out_dir)
    whole, partial = _reusable_regimes(out, pair, prompts, regimes, seeds) if reuse else ({}, {})
    if generate_options.get("trajectories"):
        partial = {}  # a kept image has no x̂0 trajectory to measure
    todo = [regime for regime in regimes if regime.name not in whole]
    if todo:
        run = generate(pair, prompts, todo, seeds, out, progress=progress, keep=partial, **generate_options)
    else:
        run = read_run(out)
    if whole or partial:
        run["regimes"] = {
            regime.name: whole.get(regime.name) or run["regimes"][regime.name] for regime in regimes
        }
        run["schedule"] = schedule_field(run["regimes"])
        run["reused_regimes"] = sorted(whole)
        run["reused_images"] = {name: len(record["images"]) for name, record in partial.items()}
        write_json(out / "run.json", run)
    return run


def diversity_run(
    pair: ModelPair,
    prompts: Sequence[str],
    regimes: Sequence[Regime],
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    embedder: Embedder | str | None = None,
    reuse: bool = True,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_boot: int = 1000,
    n_perm: int = 1000,
    report: bool = True,
    progress: bool = True,
    **generate_options: Any,
) -> list[dict[str, Any]]:
    """Generate (or reuse) images for prompts × regimes × seeds, measure their diversity, write the report.

    With ``reuse`` the regimes whose images an earlier run in ``out_dir`` already holds for the same pair, prompts
    and seeds are not sampled again. ``embedder`` defaults to the pair's (see ``conceptspace models``).
    ``generate_options`` go to :func:`conceptspace.generate.generate` (height, width, batch_size, …).
    """
    out = Path(out_dir)
    embedder = embedder or default_embedder(pair)
    generate_or_reuse(pair, prompts, regimes, seeds, out, reuse=reuse, progress=progress, **generate_options)
    rows = measure_diversity(out, embedder, metrics=metrics, n_boot=n_boot, n_perm=n_perm, progress=progress)
    if report:
        from conceptspace.report import build_report

        build_report(out)
    return rows
