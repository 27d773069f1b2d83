"""Which remedy restores a distilled model's diversity best, at what quality and cost: every method on the same
seeds, paired against the student and the base (``conceptspace compare``; docs/remedies.md).

    >>> result = compare(load_pair("shapes", "dmd"), ["a triangle"], ["hybrid", "cads", "hybrid:k=2"],
    ...                  seeds=range(64), out_dir="runs/compare")                   # doctest: +SKIP
    >>> [r["method"] for r in result.ranking]                                        # doctest: +SKIP

Per method and prompt (and averaged over prompts), all with 95% intervals:

- **diversity** in the pair's embedder (Vendi score and pairwise distance), on the testbed also the probe's
  shape × colour entropy; paired differences from the student (``<method> - distilled``) and the base
  (``<method> - base``) on the same seeds;
- **quality**: the CLIP score of each image against its prompt (embedders with a text tower), on the testbed the
  probe's prompt adherence; the Fréchet distance to the base's images (or a reference folder) in the embedder's
  space (``fd``), and FID on Inception features when its weights are at hand; the Inception Score on request;
  paired differences from the student;
- **against the base's own samples** ("did the method restore the teacher's distribution"): precision, recall,
  density, coverage and CMMD in the embedder's space (``reference == "base"``), and the paired PRDC differences
  ``<method> - distilled`` (docs/metrics.md);
- **cost**: network evaluations per image (``evaluations``; a CFG step is two) and denoising seconds per image.

Everything lands in ``out_dir`` as elsewhere: images per method, ``run.json`` (with the comparison's settings
under ``parameters.compare``), tidy ``metrics.json`` / ``metrics.csv`` and ``report.html`` with a Pareto figure and
the ranked table, both rebuilt from the rows by :func:`ranking`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from conceptspace.diversity import generate_or_reuse, images_by_prompt
from conceptspace.embeddings import resolve_embedder
from conceptspace.ground_truth import GroundTruth, ground_truth_for
from conceptspace.io import write_json
from conceptspace.metrics import ALL_PROMPTS, diversity_over_prompts, paired_over_prompts
from conceptspace.metrics.prompt_aware import conditional_vendi_rows
from conceptspace.metrics.reference import base_reference_rows
from conceptspace.metrics.rows import normal_mean_over_prompts
from conceptspace.models import ModelPair
from conceptspace.quality import clip_scores, frechet_distance
from conceptspace.ranking import BASE, STUDENT, ranking
from conceptspace.results import PROBE_EMBEDDER, metric_row, write_metrics
from conceptspace.sampling import Base, Distilled, Regime, parse_regime
from conceptspace.stats import Estimate, mean_estimate, percentile_interval

__all__ = [
    "BASE",
    "DEFAULT_METHODS",
    "STUDENT",
    "CompareResult",
    "compare",
    "parse_method",
    "ranking",
]

"""The two references every comparison samples, under these names."""

DEFAULT_METHODS = ("hybrid", "cads", "cond-noise", "interval-guidance", "renoise")
"""The methods compared when none are named: the paper's hybrid and the field's remedies, at their defaults."""

EMBEDDING_METRICS = ("vendi", "vendi_q2", "pairwise_distance")


# ------------------------------------------------------------------------------------------------------ methods
parse_method = parse_regime
"""A method from its spec: :func:`conceptspace.sampling.parse_regime` (methods are regimes)."""


def _methods(methods: Sequence[str | Regime]) -> list[Regime]:
    built = [parse_method(method) for method in methods]
    names = [regime.name for regime in built]
    clash = [n for n in names if n in (BASE, STUDENT)]
    if clash:
        raise ValueError(
            f"{clash[0]!r} is always compared (the base and the student are the references): list only the methods"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"method {repeated[0]!r} is listed twice; give variants options (e.g. hybrid:k=2)")
    if not built:
        raise ValueError("no method given: name at least one, e.g. hybrid")
    return built


# --------------------------------------------------------------------------------------------------- the result
@dataclass
class CompareResult:
    """What :func:`compare` made: the folder, every tidy row, the ranked table and the report (None without)."""

    out_dir: Path
    rows: list[dict[str, Any]]
    ranking: list[dict[str, Any]]
    report: Path | None


def compare(
    pair: ModelPair,
    prompts: Sequence[str],
    methods: Sequence[str | Regime] = DEFAULT_METHODS,
    *,
    seeds: Sequence[int] = range(64),
    out_dir: str | os.PathLike = "out/compare",
    base: Regime | None = None,
    student: Regime | None = None,
    embedder: Any = None,
    also_embedders: Sequence[Any] | None = None,
    fid_ref: str | os.PathLike | None = None,
    fid_features: torch.nn.Module | None = None,
    fid_weights: str | os.PathLike | None = None,
    inception_score: bool = False,
    is_classifier: torch.nn.Module | None = None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    reuse: bool = True,
    report: bool = True,
    progress: bool = True,
    batch_size: int = 4,
    **generate_options: Any,
) -> CompareResult:
    """Sample the base, the student and every method on the same seeds, measure, rank and report (module doc).

    ``methods``: specs for :func:`parse_method` or regimes. ``base`` / ``student``: the reference regimes (default
    ``Base()`` and ``Distilled()``, the registry's settings). ``embedder``: a spec or a loaded embedder (default:
    the pair's). ``also_embedders``: more spaces for the diversity rows (Vendi, pairwise distance and their
    differences) beside ``embedder``'s; default :data:`DINOV2` when its weights are in the Hugging Face cache and
    ``embedder`` is not DINOv2 already (so DINOv2 and CLIP are reported together), else none. ``fid_ref``: a folder of reference images for the Fréchet distances (default: the base's images of
    the same prompts). FID on Inception features runs when ``fid_features`` (any module mapping an image batch in
    [0, 1] to features) is given, or the Inception weights are at hand (``fid_weights`` or the torch hub cache); not
    on the testbed. ``inception_score``: also the Inception Score (``is_classifier``; the testbed's own classes on
    the testbed). ``reuse``: methods whose images an earlier comparison in ``out_dir`` made with the same settings
    are not sampled again. ``generate_options`` go to :func:`conceptspace.generate.generate` (height, width, …).
    """
    regimes, seeds = _checked_comparison(pair, methods, base, student, seeds)
    truth = ground_truth_for(pair.base.family)  # the testbed's probe
    needs_inception = inception_score and is_classifier is None and truth is None
    reference = _checked_quality_inputs(prompts, fid_ref, fid_weights, truth=truth, inception=needs_inception)
    spec = resolve_embedder(embedder, pair, device=pair.device, progress=progress)
    has_text = bool(getattr(spec, "has_text", False))
    settings = _settings(regimes, spec.name, has_text=has_text, truth=truth, fid_ref=fid_ref)
    out = Path(out_dir)
    run = _sample_or_reuse(
        pair,
        prompts,
        regimes,
        seeds,
        out,
        settings,
        reuse=reuse,
        progress=progress,
        batch_size=batch_size,
        generate_options=generate_options,
    )
    names = [r.name for r in regimes]
    paths = _paired_paths(run, out, names)

    embeddings = _embed(spec, paths, progress)
    pairs = [(m, STUDENT) for m in names if m != STUDENT] + [(m, BASE) for m in names if m != BASE]
    model = f"{pair.base.name}/{pair.student.name}"
    rows = _embedding_diversity_rows(embeddings, pairs, spec.name, model, n_boot=n_boot, n_perm=n_perm)
    for extra in _also_embedders(also_embedders, spec, pair, progress):  # the same images in more spaces
        more = _embed(extra, paths, progress)
        rows += _embedding_diversity_rows(more, pairs, extra.name, model, n_boot=n_boot, n_perm=n_perm)
    rows += base_reference_rows(
        embeddings, names, BASE, STUDENT, embedder=spec.name, model=model, n_boot=n_boot
    )
    if has_text:
        rows += _clip_rows(spec, embeddings, names, n_boot=n_boot)
    if truth is not None:
        rows += _probe_rows(truth, paths, names, pairs, n_boot=n_boot)
    rows += _fd_rows(
        embeddings,
        names,
        None if reference is None else spec.embed_images([str(p) for p in reference]),
        "fd",
        n_boot=n_boot,
        features=spec.name,
    )
    size = _image_size(paths)
    inception = _fid_extractor(fid_features, fid_weights, known_world=truth is not None)
    if inception is not None:
        rows += _fid_rows(inception, paths, names, reference, size, pair.device, progress, n_boot=n_boot)
    if inception_score:
        rows += _inception_score_rows(paths, size, names, is_classifier, fid_weights, pair, n_boot=n_boot)
    rows += _cost_rows(pair, run, regimes, n_boot=n_boot)
    write_metrics(out, rows)
    write_json(out / "run.json", run)
    ranked = ranking(rows, settings)
    report_path = None
    if report:
        from conceptspace.report import build_report

        report_path = build_report(out, title=f"conceptspace compare: {pair.base.name} → {pair.student.name}")
    return CompareResult(out, rows, ranked, report_path)


def _checked_comparison(
    pair: ModelPair,
    methods: Sequence[str | Regime],
    base: Regime | None,
    student: Regime | None,
    seeds: Sequence[int],
) -> tuple[list[Regime], list[int]]:
    """The regimes to sample (the base, the student, then the methods) and the seeds, checked."""
    if pair.student is None:
        raise ValueError("a comparison needs a student: load the pair with its distilled model")
    regimes = [base or Base(), student or Distilled(), *_methods(methods)]
    if [r.name for r in regimes[:2]] != [BASE, STUDENT]:
        raise ValueError(
            "base= must be a Base regime and student= a Distilled regime (the references' names)"
        )
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2:
        raise ValueError(f"a comparison measures diversity, which needs at least 2 seeds, got {len(seeds)}")
    return regimes, seeds


def _checked_quality_inputs(
    prompts: Sequence[str],
    fid_ref: str | os.PathLike | None,
    fid_weights: str | os.PathLike | None,
    *,
    truth: GroundTruth | None,
    inception: bool,
) -> list[Path] | None:
    """What can fail does so before any image is sampled: the prompts of a known world, the reference folder and
    (with ``inception``) the Inception weights; returns the reference folder's images (None: the base's images)."""
    if truth is not None:
        # the probe reads adherence to what a prompt fixes: its words must be the world's
        for prompt in prompts:
            truth.fixed_factors(prompt)
    reference = None if fid_ref is None else _reference_paths(fid_ref)
    if inception:
        from conceptspace.evaluate import check_inception_available

        check_inception_available(fid_weights)
    return reference


def _settings(
    regimes: Sequence[Regime],
    embedder: str,
    *,
    has_text: bool,
    truth: GroundTruth | None,
    fid_ref: str | os.PathLike | None,
) -> dict[str, Any]:
    """The comparison's settings (``parameters.compare`` of run.json): the methods, the references and what
    diversity and quality are measured by, which :func:`ranking` reads."""
    quality = "clip_score" if has_text else ("adherence" if truth is not None else "fd")
    return {
        "methods": [r.name for r in regimes[2:]],
        "reference": BASE,
        "student": STUDENT,
        "diversity": {
            "metric": truth.diversity_measure if truth is not None else "vendi",
            "embedder": PROBE_EMBEDDER if truth is not None else embedder,
        },
        "quality": {
            "metric": quality,
            "higher_is_better": quality != "fd",
            "embedder": PROBE_EMBEDDER if quality == "adherence" else embedder,
        },
        "fd_reference": str(fid_ref) if fid_ref is not None else f"regime:{BASE}",
    }


def _sample_or_reuse(
    pair: ModelPair,
    prompts: Sequence[str],
    regimes: Sequence[Regime],
    seeds: list[int],
    out: Path,
    settings: dict[str, Any],
    *,
    reuse: bool,
    progress: bool,
    batch_size: int,
    generate_options: dict[str, Any],
) -> dict[str, Any]:
    """Every regime's images in ``out`` (with ``reuse``, those an earlier comparison made with the same settings
    are kept); returns the run record, marked as a comparison."""
    options = dict(generate_options)
    run = generate_or_reuse(
        pair,
        list(prompts),
        regimes,
        seeds,
        out,
        reuse=reuse,
        progress=progress,
        batch_size=batch_size,
        parameters={"compare": settings, **options.pop("parameters", {})},
        **options,
    )
    run["command"] = "compare"
    run["parameters"]["compare"] = settings  # also when every method's images were reused from another run
    return run


# ------------------------------------------------------------------------------------------------------- images
def _paired_paths(run: dict[str, Any], out: Path, names: Sequence[str]) -> dict[str, dict[str, list[Path]]]:
    """Per prompt and method, the image paths of the seeds every method has, in seed order."""
    grouped = images_by_prompt(run, out)
    paths: dict[str, dict[str, list[Path]]] = {}
    for prompt, by_regime in grouped.items():
        seeds = set.intersection(*({s for s, _ in by_regime.get(name, [])} for name in names))
        if len(seeds) < 2:
            raise ValueError(
                f"prompt {prompt!r} has {len(seeds)} seed(s) every method shares; need at least 2"
            )
        paths[prompt] = {name: [p for s, p in by_regime[name] if s in seeds] for name in names}
    return paths


def _load(paths: Sequence[Path]) -> list[Image.Image]:
    loaded = []
    for path in paths:
        with Image.open(path) as image:
            loaded.append(image.convert("RGB"))
    return loaded


def _image_size(paths: Mapping[str, Mapping[str, list[Path]]]) -> tuple[int, int]:
    first = next(iter(next(iter(paths.values())).values()))[0]
    with Image.open(first) as image:
        return image.size  # every image of a run has one size


def _embed(
    embedder: Any, paths: Mapping[str, Mapping[str, list[Path]]], progress: bool
) -> dict[str, dict[str, torch.Tensor]]:
    """Every image set's embeddings (images read from disk as the embedder goes: any number fits in memory)."""
    total = sum(len(v) for by in paths.values() for v in by.values())
    own_bar, embedder.progress = getattr(embedder, "progress", False), False
    embedded: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with tqdm(total=total, desc=f"embedding [{embedder.name}]", unit="img", disable=not progress) as bar:
            for prompt, by in paths.items():
                embedded[prompt] = {}
                for name, files in by.items():
                    embedded[prompt][name] = embedder.embed_images([str(f) for f in files])
                    bar.update(len(files))
    finally:
        embedder.progress = own_bar
    return embedded


# ---------------------------------------------------------------------------------------------------- diversity
DINOV2 = "dinov2:facebook/dinov2-base"
"""The second diversity space ``compare`` reports when its weights are at hand (the field reports DINOv2 beside
CLIP)."""


def _also_embedders(chosen: Sequence[Any] | None, main: Any, pair: ModelPair, progress: bool) -> list[Any]:
    """The embedders of the extra diversity rows: ``chosen`` loaded, or DINOv2 when its config and weights are in
    the Hugging Face cache and ``main`` is not DINOv2 (one that then fails to load is left out with a warning)."""
    if chosen is not None:
        loaded = [resolve_embedder(e, pair, device=pair.device, progress=progress) for e in chosen]
        return [e for e in loaded if e.name != main.name]  # the main space's rows are there already
    from huggingface_hub import try_to_load_from_cache

    repo = DINOV2.split(":", 1)[1]
    cached = [isinstance(try_to_load_from_cache(repo, f), str) for f in ("config.json", "model.safetensors")]
    if not all(cached) or main.name.startswith("dinov2:"):
        return []
    try:
        return [resolve_embedder(DINOV2, pair, device=pair.device, progress=progress)]
    except (OSError, ValueError, ImportError, RuntimeError) as error:  # the main rows do not need it
        warnings.warn(f"no DINOv2 diversity rows: {DINOV2} did not load ({error})", stacklevel=3)
        return []


def _embedding_diversity_rows(
    embeddings: Mapping[str, Mapping[str, torch.Tensor]],
    pairs: Sequence[tuple[str, str]],
    embedder: str,
    model: str,
    *,
    n_boot: int,
    n_perm: int,
) -> list[dict[str, Any]]:
    """Vendi score and pairwise distance in the embedder's space per prompt and method, and the paired differences
    of ``pairs`` (each method against the student and the base)."""
    common = dict(n_boot=n_boot, embedder=embedder, model=model)
    resample = "images" if len(embeddings) < 10 else "both"
    rows = diversity_over_prompts(embeddings, metrics=EMBEDDING_METRICS, resample=resample, **common)
    rows += paired_over_prompts(
        embeddings, pairs, metrics=EMBEDDING_METRICS, resample=resample, n_perm=n_perm, **common
    )
    if len(embeddings) > 1:  # the prompt-aware score: variety between prompts is not the model's
        rows += conditional_vendi_rows(embeddings, pairs, embedder=embedder, model=model)
    return rows


# ------------------------------------------------------------------------------------------------------ quality
def _pooled(values: Mapping[str, np.ndarray], n_boot: int, prompt_count: int) -> Estimate:
    """The mean over prompts of per-image values (equal images per prompt), resampling images within prompts."""
    stacked = np.stack(list(values.values()))  # (prompts, images)
    estimate = mean_estimate(stacked.ravel(), n_boot=0)
    if not n_boot:
        return estimate
    rng = np.random.default_rng(0)
    picks = rng.integers(0, stacked.shape[1], size=(n_boot, *stacked.shape))
    replicates = np.take_along_axis(stacked[None].repeat(n_boot, 0), picks, axis=2).mean(axis=(1, 2))
    low, high = percentile_interval(replicates, 0.95)
    return Estimate(estimate.value, low, high, stacked.size, method="bootstrap within prompts")


def _mean_rows(
    per_prompt: Mapping[str, Mapping[str, np.ndarray]],
    metric: str,
    n_boot: int,
    *,
    average: bool,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Rows of per-image values ``per_prompt[prompt][label]``: each prompt's mean (bootstrap CI) and, with
    ``average``, the mean over the prompts given (the prompts a quality is defined for)."""
    rows = []
    labels = list(dict.fromkeys(label for by in per_prompt.values() for label in by))
    for prompt, by in per_prompt.items():
        for label, values in by.items():
            estimate = mean_estimate(values, n_boot=n_boot)
            rows.append(estimate.row(prompt, label, metric, ci_method=estimate.method, **extra))
    if average:
        for label in labels:
            values = {p: by[label] for p, by in per_prompt.items() if label in by}
            estimate = _pooled(values, n_boot, len(values))
            rows.append(estimate.row(ALL_PROMPTS, label, metric, ci_method=estimate.method, **extra))
    return rows


def _clip_rows(
    embedder: Any, embeddings: Mapping[str, Mapping[str, torch.Tensor]], names: Sequence[str], *, n_boot: int
) -> list[dict[str, Any]]:
    """Each image's CLIP score against its prompt: per prompt and method, paired differences, the mean over
    prompts."""
    per_prompt = {}
    for prompt, by in embeddings.items():
        text = embedder.embed_texts([prompt])
        per_prompt[prompt] = _diff_values({name: clip_scores(by[name], text) for name in names}, names)
    rows = _mean_rows(per_prompt, "clip_score", n_boot, average=len(per_prompt) > 1, embedder=embedder.name)
    return [_as_difference(row) for row in rows]


def _diff_values(values: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    out = dict(values)
    for name in names:
        if name != STUDENT:
            out[f"{name} - {STUDENT}"] = values[name] - values[STUDENT]
    for name in names:
        if name not in (BASE, STUDENT):
            out[f"{name} - {BASE}"] = values[name] - values[BASE]
    return out


def _as_difference(row: dict[str, Any]) -> dict[str, Any]:
    """A row of a paired difference (``regime`` ``a - b``) gets the ``diff_`` metric name the others use."""
    if " - " in str(row["regime"]):
        return {**row, "metric": f"diff_{row['metric']}"}
    return row


def _probe_rows(
    truth: GroundTruth,
    paths: Mapping[str, Mapping[str, list[Path]]],
    names: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    *,
    n_boot: int,
) -> list[dict[str, Any]]:
    """The world's ground truth (on the testbed: the probe's shape × colour entropy) per prompt and method, paired
    differences, their mean over prompts, and prompt adherence (the share of images whose categorical factors are
    what the prompt fixes)."""
    probe = truth.load_probe()
    measure = truth.diversity_measure
    rows: list[dict[str, Any]] = []
    adherence: dict[str, dict[str, np.ndarray]] = {}
    for prompt, by in paths.items():
        read = {name: probe.predict(np.stack([np.asarray(i) for i in _load(by[name])])) for name in names}
        for name in names:
            rows += truth.diversity_rows(
                read[name], prompt, name, [measure], n_boot=n_boot, embedder=PROBE_EMBEDDER
            )
        rows += truth.paired_difference_rows(
            read, prompt, pairs, [measure], n_boot=n_boot, embedder=PROBE_EMBEDDER
        )
        fixed = {k: v for k, v in truth.fixed_factors(prompt).items() if k in truth.categorical}
        if fixed:
            hits = {}
            for name in names:
                match = np.ones(len(read[name][truth.categorical[0]]), dtype=bool)
                for factor, level in fixed.items():
                    match &= read[name][factor] == truth.levels[factor].index(level)
                hits[name] = match.astype(np.float64)
            adherence[prompt] = _diff_values(hits, names)
    if len(paths) > 1:
        rows += normal_mean_over_prompts([r for r in rows if r["metric"].endswith(measure)])
    if adherence:
        rows += [
            _as_difference(r)
            for r in _mean_rows(
                adherence, "adherence", n_boot, average=len(paths) > 1, embedder=PROBE_EMBEDDER
            )
        ]
    return rows


def _reference_paths(fid_ref: str | os.PathLike) -> list[Path]:
    """The image files of a reference folder (searched recursively)."""
    from conceptspace.evaluate import fid_reference

    return fid_reference(fid_ref, {}).paths


def _fd_rows(
    sets_by_prompt: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    reference: Any,
    metric: str,
    *,
    n_boot: int,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Fréchet distance of each method's images to the reference (the base's images of the same prompt and seeds,
    or a reference set), per prompt and over all prompts pooled, with a bootstrap interval resampling seeds jointly
    for every method (and the reference set on its own); paired differences ``<method> - distilled``."""
    prompt_sets = {
        prompt: {n: np.asarray(by[n], dtype=np.float64) for n in names}
        for prompt, by in sets_by_prompt.items()
    }
    if len(prompt_sets) > 1:
        prompt_sets[ALL_PROMPTS] = {
            n: np.concatenate([s[n] for s in list(prompt_sets.values())]) for n in names
        }
    ref_set = None if reference is None else np.asarray(reference, dtype=np.float64)
    rng = np.random.default_rng(0)
    rows = []
    scored = [n for n in names if ref_set is not None or n != BASE]
    for prompt, sets in prompt_sets.items():
        n = len(sets[names[0]])
        draws = [np.arange(n)] + [rng.integers(0, n, size=n) for _ in range(n_boot)]
        ref_draws = (
            None
            if ref_set is None
            else [np.arange(len(ref_set))]
            + [rng.integers(0, len(ref_set), size=len(ref_set)) for _ in range(n_boot)]
        )
        values = {name: [] for name in scored}
        for i, draw in enumerate(draws):
            ref = sets[BASE][draw] if ref_set is None else ref_set[ref_draws[i]]
            for name in scored:
                values[name].append(frechet_distance(sets[name][draw], ref))
        arrays = {name: np.array(v) for name, v in values.items()}
        kind = {"reference": "regime:base" if ref_set is None else "folder", **extra}
        for label, replicates in _diff_values_fd(arrays, scored).items():
            # basic interval (reflected replicates): resampling with replacement repeats images, which biases a
            # Fréchet distance upwards; reflecting carries that bias over to a correction, as for entropies
            low, high = (
                percentile_interval(2 * replicates[0] - replicates[1:], 0.95) if n_boot else (math.nan,) * 2
            )
            if " - " not in label:
                low = max(low, 0.0)  # a distance
            row = metric_row(
                prompt,
                label,
                metric,
                replicates[0],
                low,
                high,
                n,
                ci_method="paired basic bootstrap over seeds",
                **kind,
            )
            rows.append(_as_difference(row))
    return rows


def _diff_values_fd(values: Mapping[str, np.ndarray], scored: Sequence[str]) -> dict[str, np.ndarray]:
    out = dict(values)
    for name in scored:
        if name != STUDENT and STUDENT in values:
            out[f"{name} - {STUDENT}"] = values[name] - values[STUDENT]
    return out


def _fid_extractor(
    features: torch.nn.Module | None, weights: str | os.PathLike | None, *, known_world: bool
) -> torch.nn.Module | None:
    """The network FID takes its features from: the one given, else the Inception network when its weights are
    at hand (never in a known world such as the testbed's, whose 32-pixel shapes it does not know); None means no
    FID row."""
    if features is not None:
        return features
    if known_world:
        return None
    from conceptspace.quality import inception_features, inception_weights

    try:
        path = inception_weights(weights)
    except ValueError:  # offline with nothing cached: FD in the embedder's space stands in
        return None
    return None if path is None else inception_features(path)


def _features_of(
    network: torch.nn.Module, files: Sequence[Path], size: tuple[int, int], device: Any
) -> np.ndarray:
    """Features of image files through ``network``, read in batches, resized and centre-cropped to ``size``."""
    from conceptspace.evaluate import image_file_batches
    from conceptspace.quality import image_features

    return image_features(network, image_file_batches(list(files), size, 32), device=device)


def _extract(
    network: torch.nn.Module,
    paths: Mapping[str, Mapping[str, list[Path]]],
    size: tuple[int, int],
    device: Any,
    progress: bool,
) -> dict[str, dict[str, np.ndarray]]:
    """Features ``(n, d)`` of every image set through ``network``."""
    return {
        prompt: {name: _features_of(network, files, size, device) for name, files in by.items()}
        for prompt, by in tqdm(paths.items(), desc="FID features", disable=not progress, leave=False)
    }


def _fid_rows(
    network: torch.nn.Module,
    paths: Mapping[str, Mapping[str, list[Path]]],
    names: Sequence[str],
    reference: Sequence[Path] | None,
    size: tuple[int, int],
    device: Any,
    progress: bool,
    *,
    n_boot: int,
) -> list[dict[str, Any]]:
    """FID: the Fréchet distances of :func:`_fd_rows` on ``network``'s features (the Inception network's)."""
    return _fd_rows(
        _extract(network, paths, size, device, progress),
        names,
        None if reference is None else _features_of(network, reference, size, device),
        "fid",
        n_boot=n_boot,
        features=getattr(network, "name", type(network).__name__),
    )


def _inception_score_rows(
    paths: Mapping[str, Mapping[str, list[Path]]],
    size: tuple[int, int],
    names: Sequence[str],
    classifier: torch.nn.Module | None,
    weights: str | os.PathLike | None,
    pair: ModelPair,
    *,
    n_boot: int,
) -> list[dict[str, Any]]:
    """The Inception Score of each method's images over all prompts (bootstrap interval over images)."""
    from conceptspace.evaluate import default_classifier, image_file_batches
    from conceptspace.quality import inception_classifier
    from conceptspace.quality import inception_score as score

    classifier = (
        classifier or default_classifier(pair.base.name, pair.device) or inception_classifier(weights)
    )
    label = getattr(classifier, "name", type(classifier).__name__)
    rows = []
    for name in names:
        pooled = [file for by in paths.values() for file in by[name]]
        estimate = score(
            image_file_batches(pooled, size, 32), classifier=classifier, device=pair.device, n_boot=n_boot
        )
        rows.append(
            estimate.row(ALL_PROMPTS, name, "inception_score", ci_method=estimate.method, classifier=label)
        )
    return rows


# --------------------------------------------------------------------------------------------------------- cost
def _cost_rows(
    pair: ModelPair, run: dict[str, Any], regimes: Sequence[Regime], *, n_boot: int
) -> list[dict[str, Any]]:
    """Network evaluations per image (exact: counted from the segments) and denoising seconds per image (mean
    over the forward batches of each one's seconds per image, bootstrap interval over batches)."""
    from conceptspace.remedies import evaluations
    from conceptspace.sampling import latent_size

    parameters = run.get("parameters", {})
    shape = latent_size(pair, parameters["height"], parameters["width"])
    rows = []
    for regime in regimes:
        count = evaluations(regime.segments(pair, pair.device, shape))
        rows.append(
            metric_row(
                ALL_PROMPTS, regime.name, "evaluations", count["total"], n=1, base=count["base"],
                distilled=count["distilled"],
            )
        )  # fmt: skip
        batches = run["regimes"][regime.name].get("batches") or []
        if batches:
            per_image = np.array([seconds / images for _, images, seconds in batches])
            estimate = mean_estimate(per_image, n_boot=n_boot)
            rows.append(
                estimate.row(
                    ALL_PROMPTS,
                    regime.name,
                    "seconds_per_image",
                    ci_method="bootstrap over batches",
                    phase="denoising",
                    batch_size=parameters.get("batch_size"),
                    device_type=pair.device.type,
                )
            )
    return rows
