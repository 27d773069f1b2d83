"""Image quality beside diversity, each with its 95% interval: the Fréchet distance (FID) to a reference set, the
Inception Score, and the CLIP score of images against their prompts (and its change under a slider or LoRA)."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from conceptspace.stats import (
    ArrayLike,
    Estimate,
    as_array,
    as_embeddings,
    as_images,
    check_finite,
    check_settings,
    mean_estimate,
    percentile_interval,
    permutation_p_value,
)

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "Embedder",
    "clip_change_rows",
    "clip_score",
    "clip_score_change",
    "clip_score_change_with",
    "clip_score_rows",
    "clip_score_with",
    "clip_scores",
    "fid",
    "frechet_distance",
    "image_features",
    "inception_classifier",
    "inception_features",
    "inception_score",
    "inception_score_of",
    "inception_weights",
]


class Embedder(Protocol):
    """What the CLIP-score wrappers need (``conceptspace.embeddings`` embedders have it)."""

    def embed_images(self, images: Any) -> torch.Tensor: ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


# ----------------------------------------------------------------------------------------------------------------
# FID


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CONCEPTSPACE_OFFLINE")
    )


def inception_weights(weights_path: str | os.PathLike | None) -> str | None:
    """A local Inception weights file, or None to let torch-fidelity download it (online only)."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights {path} do not exist (the file is {INCEPTION_WEIGHTS_URL})"
            )
        return str(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if cached.is_file():
        return str(cached)
    if _offline():
        raise ValueError(
            "FID and the Inception Score need the Inception network, which cannot be downloaded offline "
            f"(HF_HUB_OFFLINE is set): pass weights_path= (a local copy of {INCEPTION_WEIGHTS_URL}, or put it at "
            f"{cached}), or a network of your own: feature_extractor= for FID, classifier= for the Inception Score "
            "(any torch.nn.Module mapping an image batch to (n, d) features / class logits)"
        )
    return None


def _image_batches(images: Any, batch_size: int, name: str) -> Iterator[torch.Tensor]:
    """Batches of float images from a tensor/array/PIL list, or from an iterable of batches as they come."""
    if isinstance(images, (torch.Tensor, np.ndarray)) or (
        isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert")
    ):
        tensor = as_images(images, name)
        for start in range(0, len(tensor), batch_size):
            yield tensor[start : start + batch_size]
        return
    for batch in images:
        yield as_images(batch, name)


class _Features(torch.nn.Module):
    """A user's feature extractor, flattened to ``(n, d)`` float64 so FID is computed in double precision."""

    def __init__(self, extractor: torch.nn.Module, num_features: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x).reshape(len(x), -1).double()


def fid(
    real_images: Any,
    fake_images: Any,
    *,
    feature_extractor: torch.nn.Module | None = None,
    weights_path: str | os.PathLike | None = None,
    feature: int = 2048,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> float:
    """Fréchet distance between the features of two image sets, through torchmetrics' FrechetInceptionDistance.

    Images: ``(n, C, H, W)`` tensors/arrays in [0, 1] (uint8 is scaled), lists of PIL images, or iterables of
    such batches (to stream large sets). Features come from ``feature_extractor`` (any ``nn.Module`` mapping a
    batch to ``(n, ...)`` features, flattened; it receives the float batches as given), or else from the
    standard FID Inception network (``feature`` = 64/192/768/2048) with weights from ``weights_path``, the torch
    hub cache, or (online only) a download; the Inception path needs ``pip install torch-fidelity``.
    Note FID is biased upwards at small n: compare FIDs only at equal n.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    device = torch.device(device or "cpu")
    real_batches = _image_batches(real_images, batch_size, "real_images")
    if feature_extractor is not None:
        first = next(real_batches, None)
        if first is None:
            raise ValueError("real_images is empty")
        extractor = feature_extractor.to(device).eval()
        with torch.no_grad():
            num_features = int(extractor(first.to(device)).reshape(len(first), -1).shape[1])
        metric = FrechetInceptionDistance(feature=_Features(extractor, num_features), normalize=True)
        real_batches = itertools.chain([first], real_batches)
    else:
        path = inception_weights(weights_path)
        try:
            import torch_fidelity  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            raise ImportError(
                "FID with the Inception network needs torch-fidelity: pip install torch-fidelity "
                "(or pass feature_extractor= any torch.nn.Module)"
            ) from None
        metric = FrechetInceptionDistance(
            feature=feature, feature_extractor_weights_path=path, normalize=True
        )
    metric = metric.to(device)
    counts = {}
    with torch.no_grad():
        for real, batches in (
            (True, real_batches),
            (False, _image_batches(fake_images, batch_size, "fake_images")),
        ):
            counts[real] = 0
            for batch in batches:
                metric.update(batch.to(device), real=real)
                counts[real] += len(batch)
    for real, name in ((True, "real_images"), (False, "fake_images")):
        if counts[real] < 2:
            raise ValueError(f"{name}: FID needs at least 2 images, got {counts[real]}")
    value = float(metric.compute())
    if not math.isfinite(value):
        raise ValueError("FID is not finite: do the features hold NaN or infinite values?")
    return max(value, 0.0)  # round-off can leave e.g. -1e-9 for identical sets


def _features(x: ArrayLike, name: str) -> np.ndarray:
    """An ``(n >= 2, d)`` float64 array of finite features, as given (not normalised)."""
    array = as_array(x, name)
    if array.ndim != 2 or len(array) < 2:
        raise ValueError(f"{name} must be (n >= 2, dim) features, got shape {tuple(array.shape)}")
    check_finite(array, name)
    return array


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """tr √(Σa Σb) for centred feature rows ``a`` (n, d) and ``b`` (m, d), exactly, in whichever space is smaller:
    the d×d covariances, or — when d exceeds a set's size — the singular values of ``a bᵀ`` (the non-zero
    eigenvalues of Σa Σb are theirs squared, over (n − 1)(m − 1))."""
    n, m, d = len(a), len(b), a.shape[1]
    if d <= min(n, m):
        values, vectors = np.linalg.eigh(a.T @ a / (n - 1))
        root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        inner = root @ (b.T @ b / (m - 1)) @ root
        return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())
    return float(np.linalg.svd(a @ b.T, compute_uv=False).sum() / math.sqrt((n - 1) * (m - 1)))


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets ``(n, d)`` and ``(m, d)``: FID's formula
    ‖μa − μb‖² + tr Σa + tr Σb − 2 tr √(Σa Σb) on any features (Inception pool features give FID; an embedder's
    give FD in its space, e.g. FD-DINOv2). Exact for any d, also d > n, and cheap enough to bootstrap."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {a.shape[1]} and {b.shape[1]}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    a, b = a - mean_a, b - mean_b
    spread = (a**2).sum() / (len(a) - 1) + (b**2).sum() / (len(b) - 1)
    value = float(((mean_a - mean_b) ** 2).sum() + spread - 2 * _trace_sqrt_product(a, b))
    return max(value, 0.0)  # round-off can leave e.g. -1e-12 for identical sets


def inception_features(weights_path: str | os.PathLike | None = None) -> torch.nn.Module:
    """The FID Inception network as a feature extractor (2048 pool features of batches in [0, 1]; weights as for
    :func:`fid`; needs torch-fidelity). Build it once to measure several image sets with :func:`image_features`."""
    return _inception(weights_path, "2048", "FID")


def image_features(
    extractor: torch.nn.Module, images: Any, *, batch_size: int = 64, device: str | torch.device | None = None
) -> np.ndarray:
    """``(n, d)`` float64 features of an image set (as for :func:`fid`: tensors, arrays, PIL lists or an iterable
    of batches) through ``extractor``; with :func:`frechet_distance` they give FID without extracting a set twice."""
    device = torch.device(device or "cpu")
    extractor = extractor.to(device).eval()
    parts = []
    with torch.no_grad():
        for batch in _image_batches(images, batch_size, "images"):
            parts.append(extractor(batch.to(device)).reshape(len(batch), -1).double().cpu())
    if not parts:
        raise ValueError("no images to extract features from")
    return torch.cat(parts).numpy()


# ----------------------------------------------------------------------------------------------------------------
# Inception Score


def inception_score_of(probabilities: ArrayLike) -> float:
    """``exp(E_x KL(p(y|x) ‖ p(y)))`` of class probabilities ``(n, classes)``, p(y) their mean (Salimans et al.)."""
    p = as_array(probabilities, "probabilities")
    if p.ndim != 2 or len(p) < 2:
        raise ValueError(f"probabilities must be (n >= 2, classes), got shape {p.shape}")
    check_finite(p, "probabilities")
    return float(np.exp(_mean_kl(p[None])[0]))


def _mean_kl(p: np.ndarray) -> np.ndarray:
    """Mean KL(p_i ‖ mean p) over the rows of each ``(sets, n, classes)`` stack."""
    marginal = p.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0)
    return terms.sum(axis=2).mean(axis=1)


class _Inception(torch.nn.Module):
    """The FID Inception network (torch-fidelity's weights) on batches in [0, 1], giving one of its outputs: the
    2048 pool features (FID) or the 1008 unbiased logits (the Inception Score)."""

    name = "inception-v3"

    def __init__(self, weights_path: str | None, output: str) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[output], feature_extractor_weights_path=weights_path
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception((x.clamp(0, 1) * 255).to(torch.uint8))  # as torchmetrics' FID feeds it


def _inception(weights_path: str | os.PathLike | None, output: str, use: str) -> _Inception:
    path = inception_weights(weights_path)
    try:
        import torch_fidelity  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{use} with the Inception network needs torch-fidelity: pip install torch-fidelity (or pass a network "
            "of your own, any torch.nn.Module)"
        ) from None
    return _Inception(path, output)


def inception_classifier(weights_path: str | os.PathLike | None = None) -> torch.nn.Module:
    """The Inception network as the Inception Score's classifier (weights as for :func:`fid`; needs
    torch-fidelity). Build it once to score several image sets."""
    return _inception(weights_path, "logits_unbiased", "the Inception Score")


def inception_score(
    images: Any,
    *,
    classifier: torch.nn.Module | None = None,
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Inception Score of an image set with a percentile bootstrap interval over its images.

    Class probabilities come from ``classifier`` (any ``nn.Module`` mapping a batch in [0, 1] to ``(n, classes)``
    logits: on the testbed, :class:`conceptspace.testbed.probe.ProbeClasses`), or else from the FID Inception
    network's unbiased logits (weights as for :func:`fid`: ``weights_path``, the torch hub cache, or online a
    download; ``pip install torch-fidelity``). Images as for :func:`fid`. One score over all images (no splits):
    like FID it grows with n up to the number of classes, so compare scores only at equal n.
    """
    check_settings(confidence, n_boot)
    device = torch.device(device or "cpu")
    classifier = (classifier or inception_classifier(weights_path)).to(device).eval()
    parts = []
    with torch.no_grad():
        for batch in _image_batches(images, batch_size, "images"):
            logits = classifier(batch.to(device)).reshape(len(batch), -1).double()
            parts.append(logits.softmax(dim=1).cpu().numpy())
    p = np.concatenate(parts) if parts else np.empty((0, 0))
    value = inception_score_of(p)
    rng = np.random.default_rng(seed)
    replicates = np.empty(0)
    if n_boot:
        chunks = [
            np.exp(_mean_kl(p[rng.integers(0, len(p), size=(m, len(p)))]))
            for m in np.diff(np.r_[0:n_boot:100, n_boot])  # resamples in chunks of 100: bounded memory
        ]
        replicates = np.concatenate(chunks)
    low, high = percentile_interval(replicates, confidence)
    return Estimate(value, low, high, len(p), method="bootstrap" if len(replicates) else "none")


# ----------------------------------------------------------------------------------------------------------------
# CLIP score


def _text_embeddings(text_embeddings: ArrayLike, n: int, dim: int) -> np.ndarray:
    t = as_array(text_embeddings, "text_embeddings")
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or len(t) not in (1, n):
        raise ValueError(
            f"text_embeddings must be one embedding (dim,) or (1, dim), or one per image ({n}, dim); "
            f"got shape {tuple(t.shape)}"
        )
    if t.shape[1] != dim:
        raise ValueError(f"text embeddings have dim {t.shape[1]} but image embeddings {dim} (same embedder?)")
    return np.broadcast_to(as_embeddings(t, "text_embeddings", min_n=1), (n, dim))


def clip_scores(image_embeddings: ArrayLike, text_embeddings: ArrayLike) -> np.ndarray:
    """Per-image CLIP score ``100 * max(cos(image, text), 0)``.

    ``text_embeddings``: one text for all images (``(dim,)`` or ``(1, dim)``) or one per image (``(n, dim)``).
    """
    x = as_embeddings(image_embeddings, "image_embeddings", min_n=1)
    t = _text_embeddings(text_embeddings, len(x), x.shape[1])
    return 100.0 * np.maximum((x * t).sum(axis=1), 0.0)


def clip_score(
    image_embeddings: ArrayLike,
    text_embeddings: ArrayLike,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean CLIP score over images, with a percentile bootstrap interval over images."""
    check_settings(confidence, n_boot)
    return mean_estimate(
        clip_scores(image_embeddings, text_embeddings), n_boot=n_boot, confidence=confidence, seed=seed
    )


def _percent_change(reference: np.ndarray, scaled: np.ndarray) -> np.ndarray:
    """100 (mean(scaled) − mean(reference)) / mean(reference) along the last axis."""
    base = reference.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 0, 100.0 * (scaled.mean(axis=-1) - base) / base, np.nan)


def clip_score_change(
    reference_embeddings: ArrayLike,
    scaled_embeddings: ArrayLike,
    text_embeddings: ArrayLike,
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percent change of CLIP score from scale 0 (``reference``) to scale s: ``100 (s_s − s_0) / s_0``.

    The paper's control metric (e.g. an age slider's images against "an old person"). Row i of both sets must
    share a seed: the interval resamples seeds jointly; ``p_value`` swaps the two images of each seed at random.
    """
    check_settings(confidence, n_boot, n_perm)
    reference = clip_scores(reference_embeddings, text_embeddings)
    scaled = clip_scores(scaled_embeddings, text_embeddings)
    if len(reference) != len(scaled):
        raise ValueError(
            f"paired comparison needs the same seeds at both scales: reference has {len(reference)} images, "
            f"scaled has {len(scaled)}"
        )
    if reference.mean() <= 0:
        raise ValueError("the reference images' mean CLIP score is 0: a percent change is undefined")
    n = len(reference)
    value = float(_percent_change(reference, scaled))
    rng = np.random.default_rng(seed)
    replicates = np.empty(0)
    if n_boot and n > 1:
        seeds = rng.integers(0, n, size=(n_boot, n))
        replicates = _percent_change(reference[seeds], scaled[seeds])
    permuted = np.empty(0)
    if n_perm:
        swap = rng.integers(0, 2, size=(n_perm, n)).astype(bool)
        permuted = _percent_change(np.where(swap, scaled, reference), np.where(swap, reference, scaled))
    low, high = percentile_interval(replicates, confidence)
    method = "bootstrap" if len(replicates) else "none"
    return Estimate(
        value, low, high, n, p_value=permutation_p_value(value, permuted[np.isfinite(permuted)]), method=method
    )


def clip_score_with(embedder: Embedder, images: Any, texts: str | Sequence[str], **settings: Any) -> Estimate:
    """:func:`clip_score` of ``images`` against ``texts`` (one text, or one per image) with an embedder that has
    ``embed_images(images)`` and ``embed_texts(texts)`` (e.g. from ``conceptspace.embeddings``)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    return clip_score(embedder.embed_images(images), embedder.embed_texts(texts), **settings)


def clip_score_change_with(
    embedder: Embedder,
    reference_images: Any,
    scaled_images: Any,
    text: str | Sequence[str],
    **settings: Any,
) -> Estimate:
    """:func:`clip_score_change` with an embedder (duck-typed: ``embed_images``, ``embed_texts``)."""
    texts = [text] if isinstance(text, str) else list(text)
    text_embeddings = embedder.embed_texts(texts)
    return clip_score_change(
        embedder.embed_images(reference_images),
        embedder.embed_images(scaled_images),
        text_embeddings,
        **settings,
    )


def clip_score_rows(
    image_embeddings_by_regime: Mapping[str, ArrayLike],
    text_embeddings: ArrayLike,
    prompt: str,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **extra: Any,
) -> list[dict[str, Any]]:
    """One ``metric="clip_score"`` row per regime (text: one embedding for all images, or one per image)."""
    rows = []
    for regime, embeddings in image_embeddings_by_regime.items():
        estimate = clip_score(embeddings, text_embeddings, n_boot=n_boot, confidence=confidence, seed=seed)
        rows.append(estimate.row(prompt, regime, "clip_score", ci_method=estimate.method, **extra))
    return rows


def clip_change_rows(
    embeddings_by_scale: Mapping[float, ArrayLike],
    text_embeddings: ArrayLike,
    prompt: str,
    regime: str,
    *,
    reference_scale: float = 0.0,
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Rows ``metric="clip_score_change_pct"`` (with a ``scale`` key) for every scale against ``reference_scale``.

    ``embeddings_by_scale[s]`` holds the image embeddings at slider scale s, row i from seed i at every scale.
    """
    if reference_scale not in embeddings_by_scale:
        raise ValueError(
            f"no embeddings at the reference scale {reference_scale} (have {sorted(embeddings_by_scale)})"
        )
    reference = embeddings_by_scale[reference_scale]
    rows = []
    for scale, embeddings in embeddings_by_scale.items():
        if scale == reference_scale:
            continue
        estimate = clip_score_change(
            reference,
            embeddings,
            text_embeddings,
            n_boot=n_boot,
            n_perm=n_perm,
            confidence=confidence,
            seed=seed,
        )
        rows.append(
            estimate.row(
                prompt,
                regime,
                "clip_score_change_pct",
                scale=float(scale),
                reference_scale=float(reference_scale),
                ci_method=estimate.method,
                **extra,
            )
        )
    return rows
