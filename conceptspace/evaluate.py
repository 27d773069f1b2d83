"""``conceptspace evaluate``: quality per regime of a finished run folder — CLIP score of each image against its
prompt, the Fréchet distance to a reference (another regime of the run, or a folder of real images) and the
Inception Score — as tidy rows with 95% intervals, from the files alone (no model but the scoring networks)."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptspace.embeddings import resolve_embedder
from conceptspace.runs import IMAGE_SUFFIXES, RUN_FILE, entry_key, image_path, read_manifest

__all__ = [
    "check_inception_available",
    "default_classifier",
    "evaluate_run",
    "fid_reference",
    "image_file_batches",
]


@dataclass(frozen=True)
class _Reference:
    name: str
    paths: list[Path]
    regime: str | None  # set when the reference is a regime of the run itself


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    embedder: Any = None,
    fid_ref: str | os.PathLike | None = None,
    fid_weights: str | os.PathLike | None = None,
    fid_feature_extractor: torch.nn.Module | None = None,
    inception_score: bool = False,
    is_classifier: torch.nn.Module | None = None,
    reference_regime: str | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    n_boot: int = 1000,
    batch_size: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """CLIP score, FID (with ``fid_ref``), Inception Score (with ``inception_score``) and sampling time of each
    regime's finished images; writes RUN_DIR/metrics.json/csv.

    ``embedder``: a spec for :func:`conceptspace.embeddings.load_embedder` or a loaded embedder (default: the run's
    base model's embedder); each image is scored against its own prompt. An image-only embedder (no text tower,
    e.g. ``testbed:clip``) skips the CLIP score, which the ``notes`` of the time rows say; with no FID reference
    either there is nothing to measure, and that is an error. ``fid_ref``: the name of a regime of this run, or a
    folder of reference images (searched recursively; resized and centre-cropped to the run's image size). FID
    uses the Inception network (``fid_weights``: a local weights file; offline, it must be given or cached) unless
    ``fid_feature_extractor`` (any module mapping an image batch in [0, 1] to features) is given. The Inception
    Score uses the same Inception network (its unbiased logits; the same weights file) unless ``is_classifier``
    (any module mapping an image batch in [0, 1] to class logits) is given; a testbed run defaults to
    :class:`conceptspace.testbed.probe.ProbeClasses` (the probe's shape × colour, 18 classes).
    ``reference_regime``: a regime of this run (``base``: "did the method restore the teacher's distribution")
    against which every other regime's images are measured in the embedder's space — precision, recall, density,
    coverage and CMMD (:func:`conceptspace.metrics.reference_rows`), pooled over the run's prompts; an image's
    own twin (same prompt and seed) in the reference is left out when the two regimes made the same images.

    Rows, all with ``prompt="(all prompts)"``: ``metric="clip_score"`` per regime (mean over images, bootstrap 95%
    CI), ``metric="fid"`` per regime other than the reference (no CI; ``reference`` and ``n_reference`` keys), and
    ``metric="inception_score"`` per regime (bootstrap 95% CI over images; ``classifier`` key), and
    ``metric="conditional_vendi"`` per regime when the run has two prompts or more with two images or more each
    (the prompt-aware diversity: :mod:`conceptspace.metrics.prompt_aware`), and ``metric="seconds_per_image"`` per
    regime (mean of the manifest's per-image ``seconds``, bootstrap 95% CI over images; ``batch_size`` and
    ``device_type`` keys, since both change it). Every image is embedded once, for all of these.
    """
    from conceptspace.results import write_metrics

    run_dir = Path(run_dir)
    run, by_regime, seconds = _finished_images(run_dir)
    # everything that can fail fast does so before the slow embedding
    reference = fid_reference(fid_ref, by_regime) if fid_ref is not None else None
    if reference is not None and fid_feature_extractor is None:
        check_inception_available(fid_weights)
    base_name = run.get("parameters", {}).get("base")
    if inception_score and is_classifier is None:
        is_classifier = _is_classifier(base_name, fid_weights, device)
    spec = resolve_embedder(
        embedder, base_name, device=device, cache_dir=cache_dir, batch_size=batch_size, progress=progress
    )
    has_text = getattr(spec, "has_text", False)
    if reference_regime is not None and reference_regime not in by_regime:
        raise ValueError(
            f"reference regime {reference_regime!r} is not a regime of this run ({', '.join(by_regime)})"
        )
    if not has_text and reference is None and not inception_score and reference_regime is None:
        from conceptspace.embeddings import EXAMPLE_SPEC

        raise ValueError(
            f"embedder {getattr(spec, 'name', spec)!r} embeds images only, and a CLIP score needs texts: pass a CLIP "
            f"embedder, e.g. --embedder {EXAMPLE_SPEC}, or --fid-ref for FID alone (--inception-score for IS)"
        )

    size = _open_rgb(by_regime[next(iter(by_regime))][0][0]).size  # every image of a run has the same size
    varied = [r for r, images in by_regime.items() if _images_per_prompt(images) >= 2]  # a prompt-aware score
    needs_embeddings = has_text or varied or reference_regime is not None
    embedded = _embed_regimes(spec, by_regime) if needs_embeddings else {}
    # an image-only embedder gives no CLIP score
    rows = _clip_score_rows(spec, by_regime, embedded, n_boot) if has_text else []
    rows += _prompt_aware_rows(spec, {r: by_regime[r] for r in varied}, embedded)
    if reference is not None:
        rows += _fid_rows(reference, by_regime, fid_feature_extractor, fid_weights, size, batch_size, device)
    if inception_score:
        rows += _inception_score_rows(is_classifier, by_regime, size, batch_size, device, n_boot)
    if reference_regime is not None:
        rows += _reference_set_rows(spec, by_regime, embedded, reference_regime, run_dir, n_boot)
    rows += _seconds_rows(seconds, run.get("parameters", {}), spec, has_text, n_boot)
    write_metrics(run_dir, rows)
    return rows


def _finished_images(
    run_dir: Path,
) -> tuple[dict[str, Any], dict[str, list[tuple[Path, str]]], dict[str, list[float]]]:
    """The run's run.json, its finished images (path and prompt) by regime, and their sampling seconds by regime;
    a folder that is not a run, a missing image or no image at all is an error."""
    run_file = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}: give the --out folder of a `conceptspace run`")
    if not run_file.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder: it has no {RUN_FILE} (make one with `conceptspace run`)"
        )
    run = json.loads(run_file.read_text(encoding="utf-8"))
    by_regime: dict[str, list[tuple[Path, str]]] = {}
    seconds: dict[str, list[float]] = {}
    for entry in read_manifest(run_dir):
        path = run_dir / image_path(*entry_key(entry))
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is in the manifest but missing: rerun `conceptspace run --resume`"
            )
        by_regime.setdefault(str(entry["regime"]), []).append((path, str(entry["prompt"])))
        if "seconds" in entry:
            seconds.setdefault(str(entry["regime"]), []).append(float(entry["seconds"]))
    if not by_regime:
        raise ValueError(f"{run_dir} has no finished images yet")
    return run, by_regime, seconds


def _is_classifier(
    base: str | None, weights: str | os.PathLike | None, device: str | torch.device | None
) -> torch.nn.Module:
    """The Inception Score's classifier, loaded once for every regime: the testbed's own, else Inception's."""
    from conceptspace.quality import inception_classifier

    classifier = default_classifier(base, device)
    if classifier is None:
        check_inception_available(weights)
        classifier = inception_classifier(weights)
    return classifier


def _reference_set_rows(
    embedder: Any,
    by_regime: dict[str, list[tuple[Path, str]]],
    embedded: dict[str, torch.Tensor],
    reference: str,
    run_dir: Path,
    n_boot: int,
) -> list[dict[str, Any]]:
    """Every regime but ``reference`` against ``reference``'s images, pooled over prompts (PRDC with k = 5, or
    less for a few images; CMMD). Images are put in file order, which pairs them by prompt and seed."""
    from conceptspace.metrics import ALL_PROMPTS, reference_rows

    order = {r: sorted(range(len(images)), key=lambda i: images[i][0]) for r, images in by_regime.items()}
    names = {r: [by_regime[r][i][0].relative_to(run_dir / r) for i in rows] for r, rows in order.items()}
    features = {r: embedded[r][rows] for r, rows in order.items()}
    n = min(len(rows) for rows in order.values())
    k = min(5, n // 2 - 1)
    if k < 1:
        raise ValueError(f"{n} images per regime: measuring against {reference!r} needs at least 4")
    rows = []
    for regime in (r for r in order if r != reference):
        paired = names[regime] == names[reference]  # the same prompts and seeds: leave each image's twin out
        rows += reference_rows(
            {regime: features[regime]}, features[reference], ALL_PROMPTS, reference_name=reference, k=k,
            n_boot=n_boot, paired=paired, embedder=embedder.name,
        )  # fmt: skip
    return rows


def _embed_regimes(embedder: Any, by_regime: dict[str, list[tuple[Path, str]]]) -> dict[str, torch.Tensor]:
    """Every regime's images embedded once, in the manifest's order, for all the rows that read them."""
    return {
        regime: embedder.embed_images([str(path) for path, _ in images])
        for regime, images in by_regime.items()
    }


def _images_per_prompt(images: list[tuple[Path, str]]) -> int:
    """The fewest images any of a regime's prompts has, or 0 for a regime of one prompt (no prompt set)."""
    counts: dict[str, int] = {}
    for _, prompt in images:
        counts[prompt] = counts.get(prompt, 0) + 1
    return min(counts.values()) if len(counts) > 1 else 0


def _prompt_aware_rows(
    embedder: Any, by_regime: dict[str, list[tuple[Path, str]]], embedded: dict[str, torch.Tensor]
) -> list[dict[str, Any]]:
    """Per regime (of two prompts or more, each with two images or more: one image says nothing of a prompt's
    variety), the Conditional-Vendi score of its images over its prompts."""
    from conceptspace.metrics.prompt_aware import conditional_vendi_rows

    rows = []
    for regime, images in by_regime.items():
        indices: dict[str, list[int]] = {}
        for i, (_, prompt) in enumerate(images):
            indices.setdefault(prompt, []).append(i)
        by_prompt = {prompt: {regime: embedded[regime][rows_of]} for prompt, rows_of in indices.items()}
        rows += conditional_vendi_rows(by_prompt, embedder=embedder.name)
    return rows


def _clip_score_rows(
    embedder: Any,
    by_regime: dict[str, list[tuple[Path, str]]],
    embedded: dict[str, torch.Tensor],
    n_boot: int,
) -> list[dict[str, Any]]:
    """Per regime, the mean CLIP score of each image against its own prompt."""
    from conceptspace.metrics import ALL_PROMPTS
    from conceptspace.quality import clip_score

    rows = []
    for regime, images in by_regime.items():
        prompts = [prompt for _, prompt in images]
        unique = list(dict.fromkeys(prompts))
        texts = embedder.embed_texts(unique)
        row_of = {prompt: row for row, prompt in enumerate(unique)}
        estimate = clip_score(
            embedded[regime],
            texts[[row_of[prompt] for prompt in prompts]],
            n_boot=n_boot,
        )
        rows.append(
            estimate.row(ALL_PROMPTS, regime, "clip_score", embedder=embedder.name, ci_method=estimate.method)
        )
    return rows


def _fid_rows(
    reference: _Reference,
    by_regime: dict[str, list[tuple[Path, str]]],
    feature_extractor: torch.nn.Module | None,
    weights: str | os.PathLike | None,
    size: tuple[int, int],
    batch_size: int,
    device: str | torch.device | None,
) -> list[dict[str, Any]]:
    """Per regime but the reference, the Fréchet distance of its images' features to the reference's."""
    from conceptspace.metrics import ALL_PROMPTS
    from conceptspace.quality import frechet_distance, image_features, inception_features
    from conceptspace.results import metric_row

    # one network, the reference's features once: each regime then costs its own images only
    extractor = feature_extractor or inception_features(weights)
    reference_features = image_features(
        extractor, image_file_batches(reference.paths, size, batch_size), device=device
    )
    rows = []
    for regime, images in by_regime.items():
        if regime == reference.regime:
            continue
        features = image_features(
            extractor, image_file_batches([path for path, _ in images], size, batch_size), device=device
        )
        value = frechet_distance(reference_features, features)
        rows.append(
            metric_row(
                ALL_PROMPTS,
                regime,
                "fid",
                value,
                n=len(images),
                reference=reference.name,
                n_reference=len(reference.paths),
            )
        )
    return rows


def _inception_score_rows(
    classifier: torch.nn.Module,
    by_regime: dict[str, list[tuple[Path, str]]],
    size: tuple[int, int],
    batch_size: int,
    device: str | torch.device | None,
    n_boot: int,
) -> list[dict[str, Any]]:
    """Per regime, the Inception Score of its images under ``classifier``."""
    from conceptspace.metrics import ALL_PROMPTS
    from conceptspace.quality import inception_score

    classifier_name = getattr(classifier, "name", type(classifier).__name__)
    rows = []
    for regime, images in by_regime.items():
        estimate = inception_score(
            image_file_batches([path for path, _ in images], size, batch_size),
            classifier=classifier,
            device=device,
            n_boot=n_boot,
        )
        rows.append(
            estimate.row(
                ALL_PROMPTS, regime, "inception_score", ci_method=estimate.method, classifier=classifier_name
            )
        )
    return rows


def _seconds_rows(
    seconds: dict[str, list[float]], parameters: dict[str, Any], embedder: Any, has_text: bool, n_boot: int
) -> list[dict[str, Any]]:
    """Per regime, the mean sampling time per image; the rows also note a CLIP score that was not measured."""
    from conceptspace.metrics import ALL_PROMPTS
    from conceptspace.stats import mean_estimate

    # Time per image: each image's share of its batch's sampling time, so it depends on the batch size and device.
    name = getattr(embedder, "name", embedder)
    notes = {} if has_text else {"notes": f"no clip_score: embedder {name!r} has no text tower"}
    rows = []
    for regime, values in seconds.items():
        estimate = mean_estimate(np.array(values), n_boot=n_boot)
        rows.append(
            estimate.row(
                ALL_PROMPTS,
                regime,
                "seconds_per_image",
                ci_method=estimate.method,
                batch_size=parameters.get("batch_size"),
                device_type=parameters.get("device_type"),
                **notes,
            )
        )
    return rows


def default_classifier(base: str | None, device: str | torch.device | None) -> torch.nn.Module | None:
    """The classifier of a known world for a run of one of its models (on the testbed its probe's classes: the
    Inception network knows no shapes); None elsewhere."""
    from conceptspace.ground_truth import ground_truth_for
    from conceptspace.models import REGISTRY

    truth = ground_truth_for(REGISTRY[base].family) if base in REGISTRY else None
    return None if truth is None else truth.classifier(device=device)


def fid_reference(value: str | os.PathLike, by_regime: dict[str, list[tuple[Path, str]]]) -> _Reference:
    """A regime of the run (by name) or a folder of images."""
    if str(value) in by_regime:
        return _Reference(f"regime:{value}", [path for path, _ in by_regime[str(value)]], str(value))
    folder = Path(value)
    if not folder.is_dir():
        raise ValueError(
            f"FID reference {str(value)!r} is neither a folder nor a regime of this run ({', '.join(by_regime)})"
        )
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )
    if len(paths) < 2:
        raise ValueError(f"FID reference folder {folder} holds {len(paths)} images; FID needs at least 2")
    return _Reference(str(folder), paths, None)


def check_inception_available(weights_path: str | os.PathLike | None) -> None:
    """Fail before any work when the Inception network (FID, Inception Score) cannot be had (offline without
    weights)."""
    from conceptspace.quality import INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_URL, inception_weights

    try:
        inception_weights(weights_path)  # a missing weights_path file raises FileNotFoundError itself
    except ValueError:  # offline with nothing cached: say it in the command's words
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
        raise ValueError(
            "FID and the Inception Score need the Inception weights, which cannot be downloaded offline "
            "(HF_HUB_OFFLINE is set): pass "
            f"--fid-weights FILE (fid_weights= in Python) with a local copy of {INCEPTION_WEIGHTS_URL}, or put "
            f"it at {cached}"
        ) from None
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ValueError(
            "FID and the Inception Score with the Inception network need torch-fidelity: pip install torch-fidelity"
        )


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def image_file_batches(paths: Sequence[Path], size: tuple[int, int], batch_size: int) -> Iterator[list[Any]]:
    """Images as lists of ``batch_size`` PIL images of one size (read as needed, so any number fits in memory)."""
    from PIL import Image, ImageOps

    for first in range(0, len(paths), batch_size):
        batch = []
        for path in paths[first : first + batch_size]:
            image = _open_rgb(path)
            if image.size != size:
                # centre crop to the aspect ratio, then resize
                image = ImageOps.fit(image, size, Image.Resampling.BICUBIC)
            batch.append(image)
        yield batch
