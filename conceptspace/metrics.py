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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from conceptspace.quality import (  # their home is conceptspace.quality; importable from here as before
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    Embedder,
    clip_change_rows,
    clip_score,
    clip_score_change,
    clip_score_change_with,
    clip_score_rows,
    clip_score_with,
    clip_scores,
    fid,
    frechet_distance,
    image_features,
    inception_classifier,
    inception_features,
    inception_score,
    inception_score_of,
)
from conceptspace.results import ALL_PROMPTS, DIVERSITY_METRICS, metric_row
from conceptspace.stats import (  # their home is conceptspace.stats
    ArrayLike,
    Estimate,
    ImagesLike,
    as_array,
    as_embeddings,
    as_images,
    bootstrap_counts,
    check_finite,
    check_settings,
    jackknife_se,
    keyed_rng,
    normal_quantile,
    percentile_interval,
    permutation_p_value,
    swaps,
    t_quantile,
)

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



RESAMPLE_MODES = ("prompts", "images", "both")


_ROW_STAT_KEYS = ("prompt", "value", "ci_low", "ci_high", "n", "p_value", "n_images")






# ----------------------------------------------------------------------------------------------------------------
# inputs








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
    x = as_embeddings(embeddings, min_n=1)
    distances = 1.0 - x @ x.T
    np.fill_diagonal(distances, 0.0)
    return np.clip(distances, 0.0, 2.0)


def pairwise_distance(embeddings: ArrayLike) -> float:
    """Mean cosine distance over all pairs of distinct images (0 for identical images, at most 2)."""
    x = as_embeddings(embeddings)
    return float(_CosinePairs(x).mean(np.ones((1, len(x))))[0])


def vendi_score(embeddings: ArrayLike, q: float | str = 1.0) -> float:
    """Vendi score of order ``q`` with the cosine-similarity kernel (1 ≤ score ≤ n).

    From the eigenvalues λ of ``K/n``: q=1 → ``exp(-Σ λ log λ)``, q=inf → ``1/max λ``, otherwise
    ``(Σ λ^q)^(1/(1-q))``. Identical embeddings score 1, ``k`` mutually orthogonal ones score ``k``.
    """
    x = as_embeddings(embeddings)
    return float(_vendi_of_subsets(x, np.arange(len(x))[None], _q(q))[0])


def vendi_score_from_similarity(similarity: ArrayLike, q: float | str = 1.0) -> float:
    """Vendi score of order ``q`` from an ``(n, n)`` positive semi-definite similarity matrix with unit diagonal."""
    k = as_array(similarity, "similarity")
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"similarity must be a square (n, n) matrix, got shape {tuple(k.shape)}")
    if len(k) < 1:
        raise ValueError("similarity is empty")
    check_finite(k, "similarity")
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
    replicates = pairs.mean(bootstrap_counts(rng, n, n_boot)) if n_boot else np.empty(0)
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
    se = jackknife_se(leave_one_out)
    groups = len(leave_one_out)  # n for delete-one; fewer for delete-a-group, whose SE has groups − 1 df
    half = (normal_quantile(confidence) if groups == n else t_quantile(confidence, groups - 1)) * se
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
            swap = swaps(rng, n_perm, n).astype(bool)
            seeds = np.arange(n)[None]
            subset_a = np.where(swap, seeds + n, seeds)  # a's images, with b's where swapped
            subset_b = np.where(swap, seeds, seeds + n)
            permuted = _vendi_of_subsets(union, subset_a, q) - _vendi_of_subsets(union, subset_b, q)
        p_value = permutation_p_value(value, permuted)
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
        counts = bootstrap_counts(rng, n, n_boot)  # the same seeds drawn for both regimes
        replicates = pairs_a.mean(counts) - pairs_b.mean(counts)
    permuted = np.empty(0)
    if n_perm:
        swap = swaps(rng, n_perm, n)
        in_a = np.concatenate([1 - swap, swap], axis=1)  # indicators over [a's images, b's images]
        in_b = np.concatenate([swap, 1 - swap], axis=1)
        permuted = pairs_union.mean(in_a) - pairs_union.mean(in_b)
    low, high = percentile_interval(replicates, confidence)
    method = "bootstrap" if n_boot else "none"
    estimate = Estimate(value, low, high, n, p_value=permutation_p_value(value, permuted), method=method)
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
    check_settings(confidence, n_boot)
    if metric not in ("pairwise_distance", "vendi"):
        raise ValueError(
            f"diversity() takes embeddings: metric must be 'pairwise_distance' or 'vendi', not {metric!r} "
            "(for LPIPS use lpips_diversity(images))"
        )
    x = as_embeddings(embeddings)
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
    check_settings(confidence, n_boot, n_perm)
    if metric not in ("pairwise_distance", "vendi"):
        raise ValueError(
            f"compare_diversity() takes embeddings: metric must be 'pairwise_distance' or 'vendi', not {metric!r} "
            "(for LPIPS use paired_rows(..., metrics=('lpips',), images_by_regime=...))"
        )
    xa, xb = as_embeddings(embeddings_a, "embeddings_a"), as_embeddings(embeddings_b, "embeddings_b")
    _check_paired(xa, xb, ("embeddings_a", "embeddings_b"))
    pairs = (_CosinePairs(xa), _CosinePairs(xb), _CosinePairs(np.concatenate([xa, xb])))
    rng = np.random.default_rng(seed)
    return _paired_draws(
        metric, xa, xb, pairs, q=_q(q), n_boot=n_boot, n_perm=n_perm, confidence=confidence, rng=rng
    ).estimate


# ----------------------------------------------------------------------------------------------------------------
# LPIPS (optional)




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
    x = as_images(images).float()
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
    check_finite(distances, "LPIPS distances")
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
    check_settings(confidence, n_boot)
    pairs = _MatrixPairs(lpips_distance_matrix(images, net=net, model=model, device=device))
    rng = np.random.default_rng(seed)
    return _single("lpips", None, pairs, q=1.0, n_boot=n_boot, confidence=confidence, rng=rng).estimate


# ----------------------------------------------------------------------------------------------------------------
# tidy rows for one prompt




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
            self._x[regime] = as_embeddings(self.embeddings_by_regime[regime], f"embeddings of {regime!r}")
        return self._x[regime]

    def images(self, regime: str) -> torch.Tensor:
        if regime not in self.images_by_regime:
            raise ValueError(f"metric 'lpips' needs images_by_regime[{regime!r}]")
        return as_images(self.images_by_regime[regime], f"images of {regime!r}")

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
    check_settings(confidence, n_boot)
    q = _q(q)
    sources = _Sources(embeddings_by_regime, images_by_regime, metrics, lpips_model, lpips_net, device)
    rows = []
    for regime in sources.regimes:
        for metric in metrics:
            name = metric_name(metric, q)
            rng = keyed_rng(seed, prompt, regime, name)
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
    check_settings(confidence, n_boot, n_perm)
    q = _q(q)
    sources = _Sources(embeddings_by_regime, images_by_regime, metrics, lpips_model, lpips_net, device)
    rows = []
    for a, b in _regime_pairs(sources.regimes, pairs):
        for metric in metrics:
            name, label = "diff_" + metric_name(metric, q), f"{a} - {b}"
            settings = dict(q=q, n_boot=n_boot, n_perm=n_perm, confidence=confidence)
            draws = sources.paired(a, b, metric, rng=keyed_rng(seed, prompt, label, name), **settings)
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
        p_value = permutation_p_value(value, np.stack([d.permuted for d in draws]).mean(axis=0))
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
    check_settings(confidence, n_boot)
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
                rng = keyed_rng(seed, prompt, regime, name)
                draws = sources.single(regime, metric, q=q, n_boot=n_boot, confidence=confidence, rng=rng)
                collected.setdefault((regime, name), []).append(draws)
                rows.append(draws.estimate.row(prompt, regime, name, **_ci_method(draws), **extra))
    for (regime, name), draws in collected.items():
        estimate = _aggregate(draws, resample, n_boot, confidence, keyed_rng(seed, label, regime, name))
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
    check_settings(confidence, n_boot, n_perm)
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
                draws = sources.paired(a, b, metric, rng=keyed_rng(seed, prompt, regime, name), **settings)
                collected.setdefault((regime, name), []).append(draws)
                rows.append(draws.estimate.row(prompt, regime, name, **_ci_method(draws), **extra))
    for (regime, name), draws in collected.items():
        estimate = _aggregate(draws, resample, n_boot, confidence, keyed_rng(seed, label, regime, name))
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
    return permutation_p_value(observed, (signs * differences).mean(axis=1))


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
    check_settings(confidence, n_boot, n_perm)
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
        rng = keyed_rng(seed, label, *(str(v) for _, v in key))
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
