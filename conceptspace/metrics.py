"""Diversity and quality metrics with honest uncertainty: every number comes with ``n`` and a 95% interval.

Diversity (of the images one regime made for one prompt), from image embeddings:

- ``pairwise_distance``: mean cosine distance ``1 - cos(e_i, e_j)`` over all pairs ``i < j`` (the paper's
  "mean pairwise DreamSim" when the embedder is DreamSim);
- ``vendi``: the Vendi score of order ``q``, the exponential of the entropy of the eigenvalues of ``K/n``
  (``K`` the cosine-similarity matrix): the effective number of distinct images, 1 for identical images and
  ``k`` for ``k`` mutually orthogonal ones;
- ``lpips``: mean pairwise LPIPS between the images themselves (needs the optional ``lpips`` package).

Uncertainty:

- pairwise distances: percentile bootstrap over images, computed on pairs of *distinct original* images (a
  resample holds duplicates, and a duplicate pair's distance 0 would bias the replicate downwards);
- Vendi: delete-one jackknife (a normal interval; leave-one-out sets hold no duplicates, and a bootstrap
  cannot be repaired for the Vendi score's entropy, see ``docs/metrics.md``);
- two regimes on the same prompts and seeds: the difference, with a CI from resampling *seed indices* jointly for
  both regimes (jackknife over seeds for Vendi) and a two-sided paired permutation p-value (regime labels swapped
  at random within each seed pair);
- over prompts: the mean of per-prompt values, with a CI from resampling prompts (``"prompts"``), images within
  fixed prompts (``"images"``), or both (``"both"``, two-stage).

Quality: FID through torchmetrics (Inception weights from a local file, or any feature extractor module), and
CLIP score ``100 * max(cos(image, text), 0)`` from embeddings, with the paper's control metric, the percent change
of CLIP score between slider scale 0 and scale ``s``.

Results come out as tidy rows (:func:`conceptspace.results.metric_row`) ready for
:func:`conceptspace.results.write_metrics`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from conceptspace.results import ALL_PROMPTS, DIVERSITY_METRICS, metric_row

__all__ = [
    "ALL_PROMPTS",
    "DIVERSITY_METRICS",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "Embedder",
    "Estimate",
    "average_over_prompts",
    "clip_change_rows",
    "clip_score",
    "clip_score_change",
    "clip_score_change_with",
    "clip_score_rows",
    "clip_score_with",
    "clip_scores",
    "compare_diversity",
    "cosine_distance_matrix",
    "diversity",
    "diversity_over_prompts",
    "diversity_rows",
    "fid",
    "frechet_distance",
    "image_features",
    "inception_features",
    "inception_classifier",
    "inception_score",
    "inception_score_of",
    "lpips_distance_matrix",
    "lpips_diversity",
    "metric_name",
    "paired_over_prompts",
    "paired_rows",
    "pairwise_distance",
    "vendi_score",
    "vendi_score_from_similarity",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]
"""Embeddings: an ``(n, d)`` torch tensor (any device/dtype), numpy array or nested list."""

ImagesLike = torch.Tensor | np.ndarray | Sequence[Any]
"""Images: an ``(n, C, H, W)`` tensor/array with values in [0, 1] (diffusers' ``output_type="pt"``), or a list of
PIL images."""

RESAMPLE_MODES = ("prompts", "images", "both")

INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"

_ROW_STAT_KEYS = ("prompt", "value", "ci_low", "ci_high", "n", "p_value", "n_images")


class Embedder(Protocol):
    """What the CLIP-score wrappers need (``conceptspace.embeddings`` embedders have it)."""

    def embed_images(self, images: Any) -> torch.Tensor: ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Estimate:
    """A number with its ``confidence`` interval; ``p_value`` is set for comparisons.

    ``method`` says how the interval was made (``"bootstrap"``, ``"jackknife"``, ``"bootstrap over prompts"``…).
    """

    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int = 0
    p_value: float = math.nan
    method: str = ""

    def row(self, prompt: str, regime: str, metric: str, **extra: Any) -> dict[str, Any]:
        """This estimate as one tidy row (with a ``p_value`` key when it has one)."""
        if not math.isnan(self.p_value):
            extra = {"p_value": self.p_value, **extra}
        return metric_row(prompt, regime, metric, self.value, self.ci_low, self.ci_high, self.n, **extra)


# ----------------------------------------------------------------------------------------------------------------
# inputs


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be numbers (a tensor, an array or nested lists), got {type(x).__name__}"
        ) from None


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        bad = np.unique(np.nonzero(~np.isfinite(x.reshape(len(x), -1)))[0])
        shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        raise ValueError(f"{name} hold NaN or infinite values (rows {shown})")


def _embeddings(x: ArrayLike, name: str = "embeddings", min_n: int = 2) -> np.ndarray:
    """An ``(n, d)`` float64 array of L2-normalised rows, checked."""
    array = _as_array(x, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_images, dim) array, got shape {tuple(array.shape)}")
    if len(array) < min_n:
        raise ValueError(f"{name}: need at least {min_n} images, got {len(array)}")
    _check_finite(array, name)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        zero = np.nonzero(norms[:, 0] == 0)[0]
        raise ValueError(f"{name}: rows {zero[:10].tolist()} are all zeros (no direction to compare)")
    return array / norms


def _check_paired(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"paired comparison needs the same seeds in both regimes: {names[0]} has {len(a)} images, "
            f"{names[1]} has {len(b)}"
        )
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different shapes {a.shape[1:]} and {b.shape[1:]} (same embedder?)"
        )


def _check_settings(confidence: float, n_boot: int, n_perm: int = 0) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if n_boot < 0 or n_perm < 0:
        raise ValueError(f"n_boot and n_perm must be >= 0, got {n_boot} and {n_perm}")


def _q(q: float | str) -> float:
    try:
        q = float(q)
    except (TypeError, ValueError):
        raise ValueError(f"Vendi order q must be a number >= 0 or 'inf', got {q!r}") from None
    if not q >= 0:
        raise ValueError(f"Vendi order q must be >= 0 or inf, got {q}")
    return q


def metric_name(metric: str, q: float | str = 1.0) -> str:
    """The row name of a diversity metric: ``vendi`` for q=1, ``vendi_q2``, ``vendi_qinf``… for other orders."""
    if metric not in DIVERSITY_METRICS:
        raise ValueError(f"unknown diversity metric {metric!r}; choose from {', '.join(DIVERSITY_METRICS)}")
    if metric != "vendi" or _q(q) == 1:
        return metric
    return f"vendi_q{_q(q):g}"


# ----------------------------------------------------------------------------------------------------------------
# point metrics


def cosine_distance_matrix(embeddings: ArrayLike) -> np.ndarray:
    """``(n, n)`` matrix of cosine distances ``1 - cos``; 0 on the diagonal, 2 for antipodal embeddings."""
    x = _embeddings(embeddings, min_n=1)
    distances = 1.0 - x @ x.T
    np.fill_diagonal(distances, 0.0)
    return np.clip(distances, 0.0, 2.0)


def pairwise_distance(embeddings: ArrayLike) -> float:
    """Mean cosine distance over all pairs of distinct images (0 for identical images, at most 2)."""
    x = _embeddings(embeddings)
    return float(_CosinePairs(x).mean(np.ones((1, len(x))))[0])


def vendi_score(embeddings: ArrayLike, q: float | str = 1.0) -> float:
    """Vendi score of order ``q`` with the cosine-similarity kernel (1 ≤ score ≤ n).

    From the eigenvalues λ of ``K/n``: q=1 → ``exp(-Σ λ log λ)``, q=inf → ``1/max λ``, otherwise
    ``(Σ λ^q)^(1/(1-q))``. Identical embeddings score 1, ``k`` mutually orthogonal ones score ``k``.
    """
    x = _embeddings(embeddings)
    return float(_vendi_of_subsets(x, np.arange(len(x))[None], _q(q))[0])


def vendi_score_from_similarity(similarity: ArrayLike, q: float | str = 1.0) -> float:
    """Vendi score of order ``q`` from an ``(n, n)`` positive semi-definite similarity matrix with unit diagonal."""
    k = _as_array(similarity, "similarity")
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"similarity must be a square (n, n) matrix, got shape {tuple(k.shape)}")
    if len(k) < 1:
        raise ValueError("similarity is empty")
    _check_finite(k, "similarity")
    if not np.allclose(k, k.T, atol=1e-8):
        raise ValueError("similarity must be symmetric")
    eigenvalues = np.linalg.eigvalsh(k)
    if eigenvalues.min() < -1e-6 * max(1.0, eigenvalues.max()):
        raise ValueError(
            f"similarity is not positive semi-definite (smallest eigenvalue {eigenvalues.min():.3g})"
        )
    return float(_vendi_from_eigenvalues(eigenvalues[None], _q(q))[0])


def _vendi_from_eigenvalues(eigenvalues: np.ndarray, q: float) -> np.ndarray:
    """Vendi scores from a batch ``(S, k)`` of kernel eigenvalues (any scale: normalised to sum 1 here)."""
    lam = np.clip(eigenvalues, 0.0, None)
    lam = lam / lam.sum(axis=1, keepdims=True)
    lam = np.where(lam < 1e-12, 0.0, lam)  # round-off eigenvalues of a rank-deficient kernel
    if q == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(lam > 0, lam * np.log(lam), 0.0)
        return np.exp(-terms.sum(axis=1))
    if math.isinf(q):
        return 1.0 / lam.max(axis=1)
    if q == 0:
        return (lam > 0).sum(axis=1).astype(float)
    return (lam**q).sum(axis=1) ** (1.0 / (1.0 - q))


def _vendi_of_subsets(x: np.ndarray, subsets: np.ndarray, q: float) -> np.ndarray:
    """Vendi score of each row of ``subsets`` (an ``(S, m)`` index array into the unit embeddings ``x``).

    The nonzero eigenvalues of ``K/m = X Xᵀ/m`` are those of ``XᵀX/m``: the smaller of the two is decomposed,
    in chunks of about 20 M numbers.
    """
    n_subsets, m = subsets.shape
    d = x.shape[1]
    out = np.empty(n_subsets)
    if m <= d:  # m×m kernels, gathered from the full similarity matrix
        similarity = x @ x.T
        chunk = max(1, int(2e7 // (m * m)))
        for start in range(0, n_subsets, chunk):
            rows = subsets[start : start + chunk]
            kernels = similarity[rows[:, :, None], rows[:, None, :]]
            out[start : start + chunk] = _vendi_from_eigenvalues(np.linalg.eigvalsh(kernels), q)
        return out
    chunk = max(1, int(2e7 // (m * d)))  # d×d Gram matrices of the chosen rows
    for start in range(0, n_subsets, chunk):
        rows = x[subsets[start : start + chunk]]  # (c, m, d)
        grams = rows.transpose(0, 2, 1) @ rows
        out[start : start + chunk] = _vendi_from_eigenvalues(np.linalg.eigvalsh(grams), q)
    return out


# ----------------------------------------------------------------------------------------------------------------
# pairwise statistics with weights (bootstrap counts or subset indicators)


class _CosinePairs:
    """Sums of pairwise cosine distances for weighted sets of unit embeddings, without an n×n matrix.

    For weights w (a bootstrap count per original image, or a 0/1 indicator), Σ_{a,b} w_a w_b (1 − x_a·x_b)
    = (Σ w)² − ‖Σ w_a x_a‖²; diagonal terms vanish because a unit vector has distance 0 to itself.
    """

    upper = 2.0

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.size = len(x)

    def weighted_sums(self, weights: np.ndarray) -> np.ndarray:
        return weights.sum(axis=1) ** 2 - ((weights @ self.x) ** 2).sum(axis=1)

    def mean(self, weights: np.ndarray) -> np.ndarray:
        """Mean distance over ordered pairs of distinct *original* images, for each row of ``weights``.

        A pair of an image with its own copy (a bootstrap duplicate) is dropped: there are
        (Σ w)² − Σ w² such ordered pairs, and the diagonal terms of the weighted sum are 0.
        """
        pairs = weights.sum(axis=1) ** 2 - (weights**2).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(pairs > 0, self.weighted_sums(weights) / pairs, np.nan)
        return np.clip(means, 0.0, self.upper)


class _MatrixPairs(_CosinePairs):
    """The same for any precomputed symmetric distance matrix with a zero diagonal (e.g. LPIPS)."""

    upper = math.inf

    def __init__(self, distances: np.ndarray) -> None:
        self.distances = distances
        self.size = len(distances)

    def weighted_sums(self, weights: np.ndarray) -> np.ndarray:
        return ((weights @ self.distances) * weights).sum(axis=1)


def _bootstrap_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``(n_boot, n)`` multiplicities of each original image in a resample with replacement."""
    draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of bootstrap ``replicates`` at ``confidence`` (non-finite replicates dropped;
    NaN with fewer than two)."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < 2:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mean_estimate(
    values: ArrayLike, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """The mean of ``values`` with a percentile bootstrap interval over them (``n_boot`` resamples; no interval
    with ``n_boot=0`` or fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    rng = np.random.default_rng(seed)
    replicates = (
        values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1) if n_boot and n > 1 else np.empty(0)
    )
    low, high = percentile_interval(replicates, confidence)
    return Estimate(float(values.mean()), low, high, n, method="bootstrap" if len(replicates) else "none")


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _t(confidence: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def _jackknife_se(values: np.ndarray) -> float:
    n = len(values)
    return float(np.sqrt((n - 1) / n * ((values - values.mean()) ** 2).sum()))


def _p_value(observed: float, permuted: np.ndarray) -> float:
    """Two-sided permutation p-value ``(1 + #{|T*| ≥ |T|}) / (1 + P)``: never 0, valid at any P."""
    if len(permuted) == 0 or not math.isfinite(observed):
        return math.nan
    tolerance = 1e-12 * max(1.0, abs(observed))
    extreme = np.count_nonzero(np.abs(permuted) >= abs(observed) - tolerance)
    return float((1 + extreme) / (1 + len(permuted)))


def _swaps(rng: np.random.Generator, n_perm: int, n: int) -> np.ndarray:
    """``(n_perm, n)`` 0/1: 1 swaps the two regimes' images of that seed."""
    return rng.integers(0, 2, size=(n_perm, n)).astype(np.float64)


# ----------------------------------------------------------------------------------------------------------------
# the statistic of one regime, or of a pair of regimes, with everything aggregation needs


@dataclass
class _Draws:
    """A per-prompt statistic: its estimate, ``replicates`` (bootstrap replicates, or normal draws around the
    jackknife estimate) for resampling images when averaging over prompts, and ``permuted`` statistics under the
    permutation null (paired comparisons only)."""

    estimate: Estimate
    replicates: np.ndarray
    permuted: np.ndarray


def _single(
    metric: str,
    x: np.ndarray | None,
    pairs: _CosinePairs | None,
    *,
    q: float,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> _Draws:
    if metric == "vendi":
        assert x is not None
        n = len(x)
        value = float(_vendi_of_subsets(x, np.arange(n)[None], q)[0])
        if not n_boot:
            return _Draws(Estimate(value, n=n, method="none"), np.empty(0), np.empty(0))
        loo = _vendi_jackknife(x, q)
        return _jackknife_draws(value, loo, n, n_boot, confidence, rng, low=1.0, high=float(n))
    assert pairs is not None
    n = pairs.size
    value = float(pairs.mean(np.ones((1, n)))[0])
    replicates = pairs.mean(_bootstrap_counts(rng, n, n_boot)) if n_boot else np.empty(0)
    low, high = percentile_interval(replicates, confidence)
    method = "bootstrap" if n_boot else "none"
    return _Draws(Estimate(value, low, high, n, method=method), replicates, np.empty(0))


def _leave_one_out(n: int) -> np.ndarray:
    return np.array([np.delete(np.arange(n), i) for i in range(n)]).reshape(n, n - 1)


EXACT_JACKKNIFE_MAX = 256
"""Up to this many images the Vendi jackknife recomputes every leave-one-out spectrum exactly."""
JACKKNIFE_GROUPS = 32
"""Groups of the delete-a-group Vendi jackknife, used between :data:`EXACT_JACKKNIFE_MAX` and 4× the dimension."""


def _vendi_jackknife(x: np.ndarray, q: float) -> np.ndarray:
    """Jackknife replicates of the Vendi score of ``x``: one per deleted image, or per deleted group.

    * n ≤ :data:`EXACT_JACKKNIFE_MAX`: delete-one, every spectrum recomputed exactly;
    * n ≥ 4·d (and 0 < q < ∞): delete-one from a single eigendecomposition XᵀX = U diag(λ) Uᵀ. Removing row i
      perturbs it by −x_i x_iᵀ, whose entries in the eigenbasis are −c_k c_l (c = Uᵀx_i); the Vendi score is a
      function of tr f(XᵀX) (f(λ) = λ log λ at q = 1, λ^q otherwise), expanded to second order by the
      Daleckii–Krein formula: tr f − Σ_k f'(λ_k) c_k² + ½ Σ_kl c_k² c_l² f^[1](λ_k, λ_l), with f^[1] the divided
      difference of f' (f'' on the diagonal). Against exact leave-one-out it matches the jackknife standard error
      within 2% at n = 4d and 1% at n = 8d (isotropic embeddings, the worst case); 10,000 × 512 embeddings take
      under a second instead of minutes;
    * otherwise: delete-a-group (:data:`JACKKNIFE_GROUPS` equal groups; the n mod g remaining images stay in
      every subset), each spectrum exact and downdated from XᵀX when that is the smaller side.
    """
    n, d = x.shape
    if n <= EXACT_JACKKNIFE_MAX:
        return _vendi_of_subsets(x, _leave_one_out(n), q)
    if n >= 4 * d and 0 < q < math.inf:
        return _vendi_leave_one_out_expanded(x, q)
    size = n // JACKKNIFE_GROUPS
    groups = np.arange(size * JACKKNIFE_GROUPS).reshape(size, JACKKNIFE_GROUPS).T  # image i in group i mod g
    if n - size <= d:
        keep = np.ones((JACKKNIFE_GROUPS, n), dtype=bool)
        keep[np.arange(JACKKNIFE_GROUPS)[:, None], groups] = False
        return _vendi_of_subsets(x, np.nonzero(keep)[1].reshape(JACKKNIFE_GROUPS, n - size), q)
    gram = x.T @ x
    grams = gram[None] - np.einsum("gmi,gmj->gij", x[groups], x[groups])
    return _vendi_from_eigenvalues(np.linalg.eigvalsh(grams), q)


def _vendi_leave_one_out_expanded(x: np.ndarray, q: float) -> np.ndarray:
    """Leave-one-out Vendi scores to second order in the removed row (see :func:`_vendi_jackknife`)."""
    lam, vectors = np.linalg.eigh(x.T @ x)
    lam = np.clip(lam, 1e-12, None)
    if q == 1:
        f, df, d2f = lam * np.log(lam), np.log(lam) + 1.0, 1.0 / lam
    else:
        f, df, d2f = lam**q, q * lam ** (q - 1), q * (q - 1) * lam ** (q - 2)
    gap = lam[:, None] - lam[None, :]
    close = np.abs(gap) <= 1e-9 * np.maximum(1.0, np.abs(lam[:, None]))
    with np.errstate(divide="ignore", invalid="ignore"):
        divided = np.where(close, 0.5 * (d2f[:, None] + d2f[None, :]), (df[:, None] - df[None, :]) / gap)
    c2 = (x @ vectors) ** 2  # (n, d)
    trace = f.sum() - c2 @ df + 0.5 * ((c2 @ divided) * c2).sum(axis=1)
    total = (x * x).sum() - (x * x).sum(axis=1)  # tr of the Gram matrix without row i
    if q == 1:
        return np.exp(np.log(total) - trace / total)
    return (trace / total**q) ** (1.0 / (1.0 - q))


def _jackknife_draws(
    value: float,
    leave_one_out: np.ndarray,
    n: int,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    permuted: np.ndarray | None = None,
    p_value: float = math.nan,
) -> _Draws:
    se = _jackknife_se(leave_one_out)
    groups = len(leave_one_out)  # n for delete-one; fewer for delete-a-group, whose SE has groups − 1 df
    half = (_z(confidence) if groups == n else _t(confidence, groups - 1)) * se
    estimate = Estimate(
        value, max(low, value - half), min(high, value + half), n, p_value=p_value, method="jackknife"
    )
    replicates = value + se * rng.standard_normal(n_boot)
    return _Draws(estimate, replicates, np.empty(0) if permuted is None else permuted)


def _paired_draws(
    metric: str,
    xa: np.ndarray | None,
    xb: np.ndarray | None,
    pairs: tuple[_CosinePairs, _CosinePairs, _CosinePairs] | None,
    *,
    q: float,
    n_boot: int,
    n_perm: int,
    confidence: float,
    rng: np.random.Generator,
) -> _Draws:
    """Difference a − b of one statistic between two regimes whose images are paired by seed (row i ↔ row i)."""
    if metric == "vendi":
        assert xa is not None and xb is not None
        n = len(xa)
        union = np.concatenate([xa, xb])
        everyone = np.arange(n)[None]
        value = float(_vendi_of_subsets(xa, everyone, q)[0] - _vendi_of_subsets(xb, everyone, q)[0])
        permuted = np.empty(0)
        if n_perm:
            swap = _swaps(rng, n_perm, n).astype(bool)
            seeds = np.arange(n)[None]
            subset_a = np.where(swap, seeds + n, seeds)  # a's images, with b's where swapped
            subset_b = np.where(swap, seeds, seeds + n)
            permuted = _vendi_of_subsets(union, subset_a, q) - _vendi_of_subsets(union, subset_b, q)
        p_value = _p_value(value, permuted)
        if not n_boot:
            return _Draws(Estimate(value, n=n, p_value=p_value, method="none"), np.empty(0), permuted)
        loo_diff = _vendi_jackknife(xa, q) - _vendi_jackknife(xb, q)
        return _jackknife_draws(
            value, loo_diff, n, n_boot, confidence, rng, permuted=permuted, p_value=p_value
        )
    assert pairs is not None
    pairs_a, pairs_b, pairs_union = pairs
    n = pairs_a.size
    ones = np.ones((1, n))
    value = float(pairs_a.mean(ones)[0] - pairs_b.mean(ones)[0])
    replicates = np.empty(0)
    if n_boot:
        counts = _bootstrap_counts(rng, n, n_boot)  # the same seeds drawn for both regimes
        replicates = pairs_a.mean(counts) - pairs_b.mean(counts)
    permuted = np.empty(0)
    if n_perm:
        swap = _swaps(rng, n_perm, n)
        in_a = np.concatenate([1 - swap, swap], axis=1)  # indicators over [a's images, b's images]
        in_b = np.concatenate([swap, 1 - swap], axis=1)
        permuted = pairs_union.mean(in_a) - pairs_union.mean(in_b)
    low, high = percentile_interval(replicates, confidence)
    method = "bootstrap" if n_boot else "none"
    estimate = Estimate(value, low, high, n, p_value=_p_value(value, permuted), method=method)
    return _Draws(estimate, replicates, permuted)


# ----------------------------------------------------------------------------------------------------------------
# public estimates


def diversity(
    embeddings: ArrayLike,
    metric: str = "pairwise_distance",
    *,
    q: float | str = 1.0,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Diversity of one set of images from their embeddings, with a ``confidence`` interval.

    ``metric="pairwise_distance"``: bootstrap over images on pairs of distinct original images.
    ``metric="vendi"`` (order ``q``): delete-one jackknife normal interval, clipped to [1, n].
    ``n_boot=0`` skips the interval (NaN). For LPIPS use :func:`lpips_diversity`.
    """
    _check_settings(confidence, n_boot)
    if metric not in ("pairwise_distance", "vendi"):
        raise ValueError(
            f"diversity() takes embeddings: metric must be 'pairwise_distance' or 'vendi', not {metric!r} "
            "(for LPIPS use lpips_diversity(images))"
        )
    x = _embeddings(embeddings)
    rng = np.random.default_rng(seed)
    return _single(
        metric, x, _CosinePairs(x), q=_q(q), n_boot=n_boot, confidence=confidence, rng=rng
    ).estimate


def compare_diversity(
    embeddings_a: ArrayLike,
    embeddings_b: ArrayLike,
    metric: str = "pairwise_distance",
    *,
    q: float | str = 1.0,
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Diversity of a minus diversity of b, for two regimes run on the same seeds (row i of each ↔ seed i).

    The interval resamples seed indices jointly for both regimes (pairwise distance; distinct-original pairs) or
    is a jackknife over seeds (Vendi). ``p_value``: two-sided paired permutation test, swapping the two regimes'
    images of each seed at random ``n_perm`` times.
    """
    _check_settings(confidence, n_boot, n_perm)
    if metric not in ("pairwise_distance", "vendi"):
        raise ValueError(
            f"compare_diversity() takes embeddings: metric must be 'pairwise_distance' or 'vendi', not {metric!r} "
            "(for LPIPS use paired_rows(..., metrics=('lpips',), images_by_regime=...))"
        )
    xa, xb = _embeddings(embeddings_a, "embeddings_a"), _embeddings(embeddings_b, "embeddings_b")
    _check_paired(xa, xb, ("embeddings_a", "embeddings_b"))
    pairs = (_CosinePairs(xa), _CosinePairs(xb), _CosinePairs(np.concatenate([xa, xb])))
    rng = np.random.default_rng(seed)
    return _paired_draws(
        metric, xa, xb, pairs, q=_q(q), n_boot=n_boot, n_perm=n_perm, confidence=confidence, rng=rng
    ).estimate


# ----------------------------------------------------------------------------------------------------------------
# LPIPS (optional)


def _images(images: ImagesLike, name: str = "images") -> torch.Tensor:
    """An ``(n, C, H, W)`` float tensor (float64 kept, else float32; uint8 scaled to [0, 1]).

    Takes tensors (NCHW), numpy arrays (NCHW, or NHWC as diffusers' ``output_type="np"`` gives) and PIL lists.
    """
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):
        arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if not isinstance(images, torch.Tensor):
        array = np.asarray(images)
        if array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
            array = array.transpose(0, 3, 1, 2)  # NHWC → NCHW
        images = torch.from_numpy(np.ascontiguousarray(array))
    tensor = images
    if tensor.ndim != 4:
        raise ValueError(
            f"{name} must be a batch (n, channels, height, width), got shape {tuple(tensor.shape)}"
        )
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif tensor.dtype != torch.float64:
        tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    return tensor


def _load_lpips(net: str, device: str | torch.device | None) -> Callable[..., torch.Tensor]:
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError(
            "LPIPS diversity needs the optional `lpips` package, which conceptspace does not install: "
            "pip install lpips (it fetches torchvision backbone weights on first use)"
        ) from None
    return lpips.LPIPS(net=net, verbose=False).eval().to(device or "cpu")


def lpips_distance_matrix(
    images: ImagesLike,
    *,
    net: str = "alex",
    model: Callable[..., torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """``(n, n)`` LPIPS distances between images in [0, 1] (rescaled to LPIPS's [-1, 1] here).

    ``model`` is any callable ``model(x, y) -> (b, ...)`` distances; by default ``lpips.LPIPS(net=net)``, which
    needs ``pip install lpips``. Runs ``n (n - 1) / 2`` pairs, ``batch_size`` at a time.
    """
    x = _images(images).float()
    if len(x) < 2:
        raise ValueError(f"images: need at least 2 images, got {len(x)}")
    model = model if model is not None else _load_lpips(net, device)
    device = device or "cpu"
    x = x * 2.0 - 1.0
    first, second = np.triu_indices(len(x), k=1)
    values = []
    with torch.no_grad():
        for start in range(0, len(first), batch_size):
            i, j = first[start : start + batch_size], second[start : start + batch_size]
            out = model(x[i].to(device), x[j].to(device))
            values.append(out.detach().to("cpu", torch.float64).reshape(len(i), -1).mean(dim=1).numpy())
    distances = np.zeros((len(x), len(x)))
    distances[first, second] = np.concatenate(values)
    distances[second, first] = distances[first, second]
    _check_finite(distances, "LPIPS distances")
    return distances


def lpips_diversity(
    images: ImagesLike,
    *,
    net: str = "alex",
    model: Callable[..., torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean pairwise LPIPS of a set of images, with the same distinct-pair bootstrap as ``pairwise_distance``."""
    _check_settings(confidence, n_boot)
    pairs = _MatrixPairs(lpips_distance_matrix(images, net=net, model=model, device=device))
    rng = np.random.default_rng(seed)
    return _single("lpips", None, pairs, q=1.0, n_boot=n_boot, confidence=confidence, rng=rng).estimate


# ----------------------------------------------------------------------------------------------------------------
# tidy rows for one prompt


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for one (prompt, regime, metric): results do not depend on what else is in the call."""
    import zlib

    return np.random.default_rng([seed, *(zlib.crc32(key.encode("utf-8")) for key in keys)])


class _Sources:
    """Per-regime inputs for the diversity metrics: unit embeddings, and LPIPS distances computed on demand."""

    def __init__(
        self,
        embeddings_by_regime: Mapping[str, ArrayLike],
        images_by_regime: Mapping[str, ImagesLike] | None,
        metrics: Sequence[str],
        lpips_model: Callable[..., torch.Tensor] | None,
        lpips_net: str,
        device: str | torch.device | None,
    ) -> None:
        for metric in metrics:
            metric_name(metric)
        if not metrics:
            raise ValueError("metrics is empty")
        self.embeddings_by_regime = embeddings_by_regime
        self.images_by_regime = images_by_regime or {}
        self.regimes = list(dict.fromkeys([*embeddings_by_regime, *self.images_by_regime]))
        if not self.regimes:
            raise ValueError("no regimes given")
        self.lpips_model = lpips_model
        if "lpips" in metrics and lpips_model is None:
            self.lpips_model = _load_lpips(lpips_net, device)
        self.device = device
        self._x: dict[str, np.ndarray] = {}

    def x(self, regime: str) -> np.ndarray:
        if regime not in self._x:
            if regime not in self.embeddings_by_regime:
                raise ValueError(f"no embeddings for regime {regime!r}")
            self._x[regime] = _embeddings(self.embeddings_by_regime[regime], f"embeddings of {regime!r}")
        return self._x[regime]

    def images(self, regime: str) -> torch.Tensor:
        if regime not in self.images_by_regime:
            raise ValueError(f"metric 'lpips' needs images_by_regime[{regime!r}]")
        return _images(self.images_by_regime[regime], f"images of {regime!r}")

    def lpips(self, images: torch.Tensor) -> _MatrixPairs:
        return _MatrixPairs(lpips_distance_matrix(images, model=self.lpips_model, device=self.device))

    def single(self, regime: str, metric: str, **settings: Any) -> _Draws:
        if metric == "lpips":
            return _single(metric, None, self.lpips(self.images(regime)), **settings)
        x = self.x(regime)
        return _single(metric, x, _CosinePairs(x), **settings)

    def paired(self, a: str, b: str, metric: str, **settings: Any) -> _Draws:
        if metric == "lpips":
            images_a, images_b = self.images(a), self.images(b)
            _check_paired(images_a, images_b, (a, b))
            union = self.lpips(torch.cat([images_a, images_b]))
            n = len(images_a)
            pairs = (
                _MatrixPairs(union.distances[:n, :n]),
                _MatrixPairs(union.distances[n:, n:]),
                union,
            )
            return _paired_draws(metric, None, None, pairs, **settings)
        xa, xb = self.x(a), self.x(b)
        _check_paired(xa, xb, (a, b))
        pairs = (_CosinePairs(xa), _CosinePairs(xb), _CosinePairs(np.concatenate([xa, xb])))
        return _paired_draws(metric, xa, xb, pairs, **settings)


def _ci_method(draws: _Draws) -> dict[str, str]:
    return {"ci_method": draws.estimate.method}


def diversity_rows(
    embeddings_by_regime: Mapping[str, ArrayLike],
    prompt: str,
    *,
    metrics: Sequence[str] = ("pairwise_distance", "vendi"),
    q: float | str = 1.0,
    images_by_regime: Mapping[str, ImagesLike] | None = None,
    lpips_model: Callable[..., torch.Tensor] | None = None,
    lpips_net: str = "alex",
    device: str | torch.device | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **extra: Any,
) -> list[dict[str, Any]]:
    """One tidy row per (regime, metric): the diversity of each regime's images for ``prompt``.

    ``embeddings_by_regime`` maps a regime name to its ``(n, d)`` image embeddings. ``metrics`` from
    ``pairwise_distance``, ``vendi`` (order ``q``; named ``vendi_q<q>`` unless q=1) and ``lpips`` (which needs
    ``images_by_regime`` and the ``lpips`` package or an ``lpips_model``). Rows carry a ``ci_method`` key and
    ``extra`` (e.g. ``model=``, ``embedder=``).
    """
    _check_settings(confidence, n_boot)
    q = _q(q)
    sources = _Sources(embeddings_by_regime, images_by_regime, metrics, lpips_model, lpips_net, device)
    rows = []
    for regime in sources.regimes:
        for metric in metrics:
            name = metric_name(metric, q)
            rng = _rng(seed, prompt, regime, name)
            draws = sources.single(regime, metric, q=q, n_boot=n_boot, confidence=confidence, rng=rng)
            rows.append(draws.estimate.row(prompt, regime, name, **_ci_method(draws), **extra))
    return rows


def _regime_pairs(regimes: Sequence[str], pairs: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
    pairs = list(itertools.combinations(regimes, 2)) if pairs is None else [tuple(p) for p in pairs]
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"each pair is (regime_a, regime_b), got {pair!r}")
        for regime in pair:
            if regime not in regimes:
                raise ValueError(f"regime {regime!r} of pair {pair!r} is not among {', '.join(regimes)}")
    return pairs  # type: ignore[return-value]


def paired_rows(
    embeddings_by_regime: Mapping[str, ArrayLike],
    prompt: str,
    pairs: Sequence[tuple[str, str]] | None = None,
    *,
    metrics: Sequence[str] = ("pairwise_distance", "vendi"),
    q: float | str = 1.0,
    images_by_regime: Mapping[str, ImagesLike] | None = None,
    lpips_model: Callable[..., torch.Tensor] | None = None,
    lpips_net: str = "alex",
    device: str | torch.device | None = None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Paired comparisons of regimes on the same prompt and seeds: rows ``regime="<a> - <b>"``,
    ``metric="diff_<metric>"``, value = a − b, with ``ci_low``/``ci_high`` and a ``p_value`` key.

    Row i of every regime's embeddings must come from the same seed. ``pairs`` defaults to every pair of regimes
    in the given order. See :func:`compare_diversity` for the interval and the test.
    """
    _check_settings(confidence, n_boot, n_perm)
    q = _q(q)
    sources = _Sources(embeddings_by_regime, images_by_regime, metrics, lpips_model, lpips_net, device)
    rows = []
    for a, b in _regime_pairs(sources.regimes, pairs):
        for metric in metrics:
            name, label = "diff_" + metric_name(metric, q), f"{a} - {b}"
            settings = dict(q=q, n_boot=n_boot, n_perm=n_perm, confidence=confidence)
            draws = sources.paired(a, b, metric, rng=_rng(seed, prompt, label, name), **settings)
            rows.append(draws.estimate.row(prompt, label, name, **_ci_method(draws), **extra))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# averaging over prompts


def _aggregate(
    draws: Sequence[_Draws], resample: str, n_boot: int, confidence: float, rng: np.random.Generator
) -> Estimate:
    """Mean over prompts of per-prompt statistics, with a CI from resampling prompts, images, or both."""
    values = np.array([d.estimate.value for d in draws])
    n_prompts = len(values)
    value = float(values.mean())
    replicates = np.empty(0)
    if n_boot and resample == "prompts" and n_prompts > 1:
        replicates = values[rng.integers(0, n_prompts, size=(n_boot, n_prompts))].mean(axis=1)
    elif n_boot and resample in ("images", "both") and all(len(d.replicates) for d in draws):
        per_prompt = np.stack([d.replicates for d in draws])  # (prompts, n_boot)
        if resample == "images":  # prompts fixed, images resampled within each
            replicates = per_prompt.mean(axis=0)
        elif n_prompts > 1:  # two-stage: prompts, then one image resample of each chosen prompt
            chosen = rng.integers(0, n_prompts, size=(n_boot, n_prompts))
            column = rng.integers(0, per_prompt.shape[1], size=(n_boot, n_prompts))
            replicates = per_prompt[chosen, column].mean(axis=1)
    low, high = percentile_interval(replicates, confidence)
    p_value = math.nan
    if all(len(d.permuted) for d in draws):
        # Independent within-seed swaps in every prompt: the joint null of "no difference in any prompt".
        p_value = _p_value(value, np.stack([d.permuted for d in draws]).mean(axis=0))
    method = {
        "prompts": "bootstrap over prompts",
        "images": "bootstrap over images",
        "both": "two-stage bootstrap",
    }
    return Estimate(value, low, high, n_prompts, p_value=p_value, method=method[resample])


def _check_resample(resample: str) -> None:
    if resample not in RESAMPLE_MODES:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE_MODES)}, got {resample!r}")


def _prompt_regimes(embeddings_by_prompt: Mapping[str, Mapping[str, ArrayLike]]) -> list[str]:
    if not embeddings_by_prompt:
        raise ValueError("embeddings_by_prompt is empty")
    regimes = None
    for prompt, by_regime in embeddings_by_prompt.items():
        if regimes is None:
            regimes = list(by_regime)
        elif set(by_regime) != set(regimes):
            raise ValueError(
                f"prompt {prompt!r} has regimes {sorted(by_regime)} but the first prompt has {sorted(regimes)}: "
                "an average over different prompt sets would not compare"
            )
    return regimes or []


def diversity_over_prompts(
    embeddings_by_prompt: Mapping[str, Mapping[str, ArrayLike]],
    *,
    metrics: Sequence[str] = ("pairwise_distance", "vendi"),
    q: float | str = 1.0,
    resample: str = "prompts",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    label: str = ALL_PROMPTS,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Per-prompt diversity rows plus, per (regime, metric), a row ``prompt=label`` averaging them over prompts.

    ``embeddings_by_prompt[prompt][regime]`` holds ``(n, d)`` embeddings. The average is the mean of per-prompt
    values; its CI resamples ``"prompts"`` (prompts a sample of a larger population; the default),
    ``"images"`` within fixed prompts (a handful of prompts of interest), or ``"both"`` (two-stage; wider).
    Average rows have ``n`` = number of prompts and ``n_images``. Embedding metrics only (for LPIPS, average
    :func:`diversity_rows` output with :func:`average_over_prompts`).
    """
    _check_settings(confidence, n_boot)
    _check_resample(resample)
    q = _q(q)
    regimes = _prompt_regimes(embeddings_by_prompt)
    rows: list[dict[str, Any]] = []
    collected: dict[tuple[str, str], list[_Draws]] = {}
    for prompt, by_regime in embeddings_by_prompt.items():
        sources = _Sources(by_regime, None, metrics, None, "alex", None)
        for regime in regimes:
            for metric in metrics:
                if metric == "lpips":
                    raise ValueError(
                        "diversity_over_prompts takes embeddings only; for lpips use diversity_rows"
                    )
                name = metric_name(metric, q)
                rng = _rng(seed, prompt, regime, name)
                draws = sources.single(regime, metric, q=q, n_boot=n_boot, confidence=confidence, rng=rng)
                collected.setdefault((regime, name), []).append(draws)
                rows.append(draws.estimate.row(prompt, regime, name, **_ci_method(draws), **extra))
    for (regime, name), draws in collected.items():
        estimate = _aggregate(draws, resample, n_boot, confidence, _rng(seed, label, regime, name))
        n_images = sum(d.estimate.n for d in draws)
        rows.append(estimate.row(label, regime, name, ci_method=estimate.method, n_images=n_images, **extra))
    return rows


def paired_over_prompts(
    embeddings_by_prompt: Mapping[str, Mapping[str, ArrayLike]],
    pairs: Sequence[tuple[str, str]] | None = None,
    *,
    metrics: Sequence[str] = ("pairwise_distance", "vendi"),
    q: float | str = 1.0,
    resample: str = "prompts",
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    label: str = ALL_PROMPTS,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Per-prompt paired rows (as :func:`paired_rows`) plus their average over prompts (``prompt=label``).

    The average's CI resamples as in :func:`diversity_over_prompts` (for ``"images"``/``"both"``, seed indices
    jointly for both regimes within each prompt). Its ``p_value`` comes from swapping the regimes within seed
    pairs in every prompt at once (statistic: mean over prompts of the per-prompt differences), i.e. a test of
    "no difference in any of these prompts".
    """
    _check_settings(confidence, n_boot, n_perm)
    _check_resample(resample)
    q = _q(q)
    regimes = _prompt_regimes(embeddings_by_prompt)
    rows: list[dict[str, Any]] = []
    collected: dict[tuple[str, str], list[_Draws]] = {}
    settings = dict(q=q, n_boot=n_boot, n_perm=n_perm, confidence=confidence)
    for prompt, by_regime in embeddings_by_prompt.items():
        sources = _Sources(by_regime, None, metrics, None, "alex", None)
        for a, b in _regime_pairs(regimes, pairs):
            for metric in metrics:
                if metric == "lpips":
                    raise ValueError("paired_over_prompts takes embeddings only; for lpips use paired_rows")
                name, regime = "diff_" + metric_name(metric, q), f"{a} - {b}"
                draws = sources.paired(a, b, metric, rng=_rng(seed, prompt, regime, name), **settings)
                collected.setdefault((regime, name), []).append(draws)
                rows.append(draws.estimate.row(prompt, regime, name, **_ci_method(draws), **extra))
    for (regime, name), draws in collected.items():
        estimate = _aggregate(draws, resample, n_boot, confidence, _rng(seed, label, regime, name))
        n_images = sum(d.estimate.n for d in draws)
        rows.append(estimate.row(label, regime, name, ci_method=estimate.method, n_images=n_images, **extra))
    return rows


def _hashable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (list, dict, set)):
        return repr(value)
    return value


def _sign_flip_p_value(differences: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided sign-flip test of mean(differences) = 0; exact (all 2^P flips) when 2^P ≤ n_perm."""
    n = len(differences)
    observed = float(differences.mean())
    if n_perm == 0 or not math.isfinite(observed):
        return math.nan
    if 2**n <= n_perm:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        permuted = (signs * differences).mean(axis=1)
        tolerance = 1e-12 * max(1.0, abs(observed))
        return float(np.count_nonzero(np.abs(permuted) >= abs(observed) - tolerance) / len(signs))
    signs = rng.choice((1.0, -1.0), size=(n_perm, n))
    return _p_value(observed, (signs * differences).mean(axis=1))


def average_over_prompts(
    rows: Iterable[Mapping[str, Any]],
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    label: str = ALL_PROMPTS,
) -> list[dict[str, Any]]:
    """Average tidy rows over prompts: one row ``prompt=label`` per group of rows that differ only in prompt.

    value = mean of the per-prompt values; CI = percentile bootstrap resampling prompts (rows alone hold no
    images; for resampling images too use :func:`diversity_over_prompts`). Rows with a ``p_value`` (paired
    differences) get a two-sided sign-flip p-value over prompts (exact when 2^prompts ≤ ``n_perm``). ``n`` is
    the number of prompts, ``n_images`` the sum of the per-prompt ``n``. Rows already labelled ``label`` are
    skipped; a NaN value makes the average NaN.
    """
    _check_settings(confidence, n_boot, n_perm)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["prompt"] == label:
            continue
        key = tuple((k, _hashable(v)) for k, v in row.items() if k not in _ROW_STAT_KEYS and k != "ci_method")
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        prompts = [m["prompt"] for m in members]
        if len(set(prompts)) != len(prompts):
            duplicated = sorted({p for p in prompts if prompts.count(p) > 1})
            raise ValueError(f"rows {dict(key)} appear more than once for prompt(s) {duplicated}")
        values = np.array([float(m["value"]) for m in members])
        rng = _rng(seed, label, *(str(v) for _, v in key))
        estimate = _aggregate(
            [_Draws(Estimate(v), np.empty(0), np.empty(0)) for v in values],
            "prompts",
            n_boot,
            confidence,
            rng,
        )
        extra = {k: members[0][k] for k, _ in key if k not in ("regime", "metric")}
        if any("p_value" in m for m in members):
            extra["p_value"] = _sign_flip_p_value(values, n_perm, rng)
        extra["n_images"] = int(sum(int(m["n"]) for m in members))
        extra["ci_method"] = estimate.method
        regime, metric = members[0]["regime"], members[0]["metric"]
        out.append(
            metric_row(
                label, regime, metric, estimate.value, estimate.ci_low, estimate.ci_high, len(values), **extra
            )
        )
    return out


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
        tensor = _images(images, name)
        for start in range(0, len(tensor), batch_size):
            yield tensor[start : start + batch_size]
        return
    for batch in images:
        yield _images(batch, name)


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
    array = _as_array(x, name)
    if array.ndim != 2 or len(array) < 2:
        raise ValueError(f"{name} must be (n >= 2, dim) features, got shape {tuple(array.shape)}")
    _check_finite(array, name)
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
    p = _as_array(probabilities, "probabilities")
    if p.ndim != 2 or len(p) < 2:
        raise ValueError(f"probabilities must be (n >= 2, classes), got shape {p.shape}")
    _check_finite(p, "probabilities")
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
    _check_settings(confidence, n_boot)
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
    t = _as_array(text_embeddings, "text_embeddings")
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or len(t) not in (1, n):
        raise ValueError(
            f"text_embeddings must be one embedding (dim,) or (1, dim), or one per image ({n}, dim); "
            f"got shape {tuple(t.shape)}"
        )
    if t.shape[1] != dim:
        raise ValueError(f"text embeddings have dim {t.shape[1]} but image embeddings {dim} (same embedder?)")
    return np.broadcast_to(_embeddings(t, "text_embeddings", min_n=1), (n, dim))


def clip_scores(image_embeddings: ArrayLike, text_embeddings: ArrayLike) -> np.ndarray:
    """Per-image CLIP score ``100 * max(cos(image, text), 0)``.

    ``text_embeddings``: one text for all images (``(dim,)`` or ``(1, dim)``) or one per image (``(n, dim)``).
    """
    x = _embeddings(image_embeddings, "image_embeddings", min_n=1)
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
    _check_settings(confidence, n_boot)
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
    _check_settings(confidence, n_boot, n_perm)
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
        value, low, high, n, p_value=_p_value(value, permuted[np.isfinite(permuted)]), method=method
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
