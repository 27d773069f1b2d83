"""How close a regime's samples come to a *reference* set of samples, each with its 95% interval: precision, recall,
density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models") and CMMD
(Jayasumana et al. 2024, "Rethinking FID", arXiv 2401.09603).

In this project the reference is the base model's own samples on the same prompt, so these answer "did the hybrid
restore the teacher's distribution": precision and density ask whether the samples lie where the base's samples
lie, recall and coverage whether they reach everywhere the base's samples reach, and CMMD how far the two
distributions are apart in (CLIP) embedding space.

Two regimes sampled on the same seeds (e.g. a method and the student) compare through :func:`prdc_difference`,
whose interval halves all three seed-paired sets alike, so what they share cancels.

Like FID these numbers depend on the set sizes (and on ``k``): compare them only at equal sizes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

from conceptspace.metrics.rows import normal_mean_over_prompts
from conceptspace.stats import (
    ArrayLike,
    Estimate,
    as_array,
    bootstrap_counts,
    check_finite,
    check_settings,
    keyed_rng,
    normal_quantile,
    percentile_interval,
)

__all__ = [
    "CMMD_SCALE",
    "CMMD_SIGMA",
    "PRDC_METRICS",
    "REFERENCE_METRICS",
    "base_reference_rows",
    "cmmd",
    "prdc",
    "prdc_difference",
    "reference_difference_rows",
    "reference_rows",
]

PRDC_METRICS = ("precision", "recall", "density", "coverage")
"""The k-nearest-neighbour manifold metrics of Naeem et al., in :func:`prdc`'s order."""

REFERENCE_METRICS = (*PRDC_METRICS, "cmmd")
"""Every metric :func:`reference_rows` can give."""

CMMD_SIGMA = 10.0
"""The bandwidth of CMMD's Gaussian RBF kernel (google-research/cmmd ``distance._SIGMA``)."""

CMMD_SCALE = 1000.0
"""CMMD is reported × 1000 (google-research/cmmd ``distance._SCALE``), to read as numbers of order 1."""

_BOUNDS = {"precision": (0.0, 1.0), "recall": (0.0, 1.0), "density": (0.0, math.inf), "coverage": (0.0, 1.0)}
_DIFFERENCE_BOUNDS = {name: (-high, high) for name, (_, high) in _BOUNDS.items()}  # a − b of two in [0, high]

_CHUNK_NUMBERS = 2e7  # numbers held per chunk of resamples: bounds memory at any set size


# ----------------------------------------------------------------------------------------------------------------
# inputs


def _feature_sets(
    reference: ArrayLike, samples: ArrayLike, min_n: int, samples_name: str = "samples"
) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as ``(n, d)`` float64 arrays of finite features with a common ``d`` and at least ``min_n`` rows
    each; clear errors otherwise (the samples called ``samples_name``). Features are used as given (not normalised)."""
    arrays = []
    for x, name in ((reference, "reference"), (samples, samples_name)):
        array = as_array(x, name)
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_images, dim) features, got shape {tuple(array.shape)}")
        if len(array) < min_n:
            raise ValueError(f"{name}: need at least {min_n} images, got {len(array)}")
        check_finite(array, name)
        arrays.append(array)
    if arrays[0].shape[1] != arrays[1].shape[1]:
        raise ValueError(
            f"reference and {samples_name} differ in dimension: {arrays[0].shape[1]} and {arrays[1].shape[1]} "
            "(same embedder?)"
        )
    return arrays[0], arrays[1]


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (nearest neighbours) must be an integer >= 1, got {k!r}")
    return int(k)


# ----------------------------------------------------------------------------------------------------------------
# precision, recall, density, coverage


def _prdc_of(d_rr: np.ndarray, d_ss: np.ndarray, d_rs: np.ndarray, k: int) -> np.ndarray:
    """``(..., 4)`` precision, recall, density, coverage from stacks of distance matrices (reference–reference
    ``(..., n, n)``, samples–samples ``(..., m, m)``, reference–samples ``(..., n, m)``).

    The conventions of the ``prdc`` package: a point's radius is the (k+1)-th smallest entry of its distance row,
    which holds its own 0, i.e. the distance to its k-th nearest neighbour other than itself; "inside a ball" is
    the strict ``distance < radius``; density counts the reference balls holding each sample, divided by k.
    """
    reference_radii = np.partition(d_rr, k, axis=-1)[..., k]
    sample_radii = np.partition(d_ss, k, axis=-1)[..., k]
    inside = d_rs < reference_radii[..., :, None]
    precision = inside.any(axis=-2).mean(axis=-1)
    density = inside.sum(axis=-2).mean(axis=-1) / k
    recall = (d_rs < sample_radii[..., None, :]).any(axis=-1).mean(axis=-1)
    coverage = (d_rs.min(axis=-1) < reference_radii).mean(axis=-1)
    return np.stack([precision, recall, density, coverage], axis=-1)


def _without_own_seed(d_rs: np.ndarray) -> np.ndarray:
    """Reference–samples distances of two seed-paired sets (row i of each from seed i) with each image's own-seed
    partner out of reach (+inf): a sample and the reference image drawn from the same starting noise are not
    independent draws (a hybrid's first base step makes its image i a near twin of the base's image i), and
    counting that twin would make a method look as if it covered the reference where it only copied its noise."""
    if d_rs.shape[0] != d_rs.shape[1]:
        raise ValueError(
            "seed-paired sets (row i of each from seed i) need equal numbers of rows, got "
            f"{d_rs.shape[0]} reference and {d_rs.shape[1]} sample rows"
        )
    masked = d_rs.copy()
    np.fill_diagonal(masked, np.inf)
    return masked


def _half_samples(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``(count, n // 2)`` indices: random halves of ``range(n)``, drawn without replacement."""
    return rng.permuted(np.broadcast_to(np.arange(n), (count, n)), axis=1)[:, : n // 2]


def _prdc_half_samples(
    d_rr: np.ndarray,
    sample_sets: Sequence[tuple[np.ndarray, np.ndarray]],
    k: int,
    n_boot: int,
    rng: np.random.Generator,
    *,
    paired: bool = False,
) -> np.ndarray:
    """``(n_boot, len(sample_sets), 4)`` statistics of random halves, in chunks: each sample set, given as its
    (samples–samples, reference–samples) distances, against the one reference (reference–reference ``d_rr``).

    Unpaired, every replicate draws a half of the reference and, independently, one half of the samples' indices
    used for every sample set. ``paired``: the sets are paired by seed (row i of each, the reference's included,
    from seed i), so one half of the seed indices serves all of them, keeping each seed's images together.
    """
    n, m = d_rr.shape[0], sample_sets[0][1].shape[1]
    h, g = n // 2, m // 2
    chunk = max(1, int(_CHUNK_NUMBERS // (h * h + len(sample_sets) * (g * g + h * g))))
    out = []
    for start in range(0, n_boot, chunk):
        count = min(chunk, n_boot - start)
        rows = _half_samples(rng, n, count)
        cols = rows if paired else _half_samples(rng, m, count)
        reference = d_rr[rows[:, :, None], rows[:, None, :]]
        per_set = [
            _prdc_of(
                reference,
                d_ss[cols[:, :, None], cols[:, None, :]],
                d_rs[rows[:, :, None], cols[:, None, :]],
                k,
            )
            for d_ss, d_rs in sample_sets
        ]
        out.append(np.stack(per_set, axis=1))
    return np.concatenate(out)


def _check_prdc_sizes(k: int, n_boot: int, sets: Mapping[str, np.ndarray]) -> None:
    """k must leave a k-th nearest neighbour other than the point itself in every set, and in every half of it
    when an interval is asked for; clear errors otherwise."""
    for name, x in sets.items():
        if k >= len(x):
            raise ValueError(
                f"k = {k} needs more than k images in {name} (its k-th nearest neighbour other than itself), "
                f"got {len(x)}: use a smaller k or more images"
            )
        if n_boot and k >= len(x) // 2:
            raise ValueError(
                f"an interval needs halves of {name} with more than k = {k} images, i.e. at least {2 * (k + 1)} "
                f"images, got {len(x)}: use a smaller k, more images, or n_boot=0 for the values alone"
            )


def _half_sampling_estimates(
    values: np.ndarray,
    halves: np.ndarray | None,
    n: int,
    confidence: float,
    bounds: Mapping[str, tuple[float, float]],
    method: str,
) -> dict[str, Estimate]:
    """One estimate per PRDC metric: ``values`` ± z·se, se the spread of the half-set statistics ``halves``
    ``(n_boot, 4)`` (None: the values alone), each interval clipped to the metric's range."""
    if halves is None:
        return {
            name: Estimate(float(v), n=n, method="none") for name, v in zip(PRDC_METRICS, values, strict=True)
        }
    # Half-samples without replacement: the spread of a statistic over halves, about its mean, estimates the
    # spread of the full-set statistic (for a mean, (s²/(n/2))·(1 − 1/2) = s²/n exactly).
    se = halves.std(axis=0)
    z = normal_quantile(confidence)
    estimates = {}
    for name, value, error in zip(PRDC_METRICS, values, se, strict=True):
        low, high = bounds[name]
        estimates[name] = Estimate(
            float(value),
            float(max(value - z * error, low)),
            float(min(value + z * error, high)),
            n,
            method=method,
        )
    return estimates


def _prdc_estimates(
    reference: ArrayLike,
    samples: ArrayLike,
    k: int,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
    paired: bool = False,
) -> dict[str, Estimate]:
    """:func:`prdc` with a given generator (the row builders key one per prompt and regime)."""
    check_settings(confidence, n_boot)
    k = _check_k(k)
    r, s = _feature_sets(reference, samples, min_n=1)
    _check_prdc_sizes(k, n_boot, {"reference": r, "samples": s})
    d_rr, d_ss, d_rs = cdist(r, r), cdist(s, s), cdist(r, s)
    if paired:
        d_rs = _without_own_seed(d_rs)
    values = _prdc_of(d_rr, d_ss, d_rs, k)
    halves = None
    if n_boot:
        halves = _prdc_half_samples(d_rr, [(d_ss, d_rs)], k, n_boot, rng, paired=paired)[:, 0]
    method = "seed-paired half-sampling" if paired else "half-sampling"
    return _half_sampling_estimates(values, halves, len(s), confidence, _BOUNDS, method)


def _prdc_difference_estimates(
    reference: ArrayLike,
    samples_a: ArrayLike,
    samples_b: ArrayLike,
    k: int,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> dict[str, Estimate]:
    """:func:`prdc_difference` with a given generator (the row builders key one per prompt and pair)."""
    check_settings(confidence, n_boot)
    k = _check_k(k)
    r, a = _feature_sets(reference, samples_a, min_n=1, samples_name="samples_a")
    _, b = _feature_sets(r, samples_b, min_n=1, samples_name="samples_b")
    if not len(r) == len(a) == len(b):
        raise ValueError(
            "a paired difference needs the reference and both sample sets paired by seed (row i of each from seed "
            f"i), i.e. equal numbers of rows, got {len(r)}, {len(a)} and {len(b)}"
        )
    _check_prdc_sizes(k, n_boot, {"reference": r, "samples_a": a, "samples_b": b})
    d_rr = cdist(r, r)
    sample_sets = [(cdist(x, x), _without_own_seed(cdist(r, x))) for x in (a, b)]
    values = _prdc_of(d_rr, *sample_sets[0], k) - _prdc_of(d_rr, *sample_sets[1], k)
    halves = None
    if n_boot:
        both = _prdc_half_samples(d_rr, sample_sets, k, n_boot, rng, paired=True)
        halves = both[:, 0] - both[:, 1]
    return _half_sampling_estimates(
        values, halves, len(a), confidence, _DIFFERENCE_BOUNDS, "paired half-sampling"
    )


def prdc(
    reference: ArrayLike,
    samples: ArrayLike,
    k: int = 5,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    paired: bool = False,
) -> dict[str, Estimate]:
    """Precision, recall, density and coverage of ``samples`` ``(m, d)`` against ``reference`` ``(n, d)``
    (Naeem et al. 2020), each with a ``confidence`` interval.

    ``paired``: the two sets are paired by seed (row i of each from seed i, as a method's images and the base's
    are in a comparison): each image's own-seed partner is left out of every reference–sample comparison, since
    the two share their starting noise and are no independent draws, and the interval's halves keep each seed's
    images together. For independent sets of equal distributions the coverage expectation below then holds with
    m − 1 for m.

    The k-nearest-neighbour maths of the ``prdc`` package's ``compute_prdc(real_features=reference,
    fake_features=samples, nearest_k=k)``, on Euclidean distances between the features as given:

    - precision: the share of samples inside at least one reference ball (a reference point's ball reaches its
      k-th nearest reference neighbour); fidelity, "are the samples where the reference is";
    - recall: the share of reference points inside at least one sample ball; "does the sample reach all of it";
    - density: the mean number of reference balls holding a sample, over k (1 on average for identical
      distributions; above 1 where samples crowd the reference's dense regions);
    - coverage: the share of reference points whose own ball holds a sample. For identical distributions its
      expectation is known: 1 − ∏ᵢ₌₁ᵏ (n − i)/(n + m − i) (Naeem et al.), ≈ 1 − 2⁻ᵏ at equal sizes.

    Every one depends on n, m and k (not only on the two distributions), so compare values at equal sizes.

    Interval: not the bootstrap. A bootstrap resample holds copies of a point, which become its own nearest
    neighbours at distance 0: radii shrink, balls collapse, and only ~63% of the distinct points are left to
    carry the balls; the resampled statistics are biased, and a percentile interval misses. Instead the
    interval comes from ``n_boot`` random *halves* of both sets (drawn without replacement, so without copies;
    the delete-d jackknife with d = n/2, Shao & Wu 1989, consistent also for non-smooth statistics): for a
    mean, the spread over halves, (s²/(n/2))·(1 − 1/2), equals the full set's s²/n, so the standard deviation
    of the half-set statistics about their own mean (which removes the shift that smaller sets cause) is the
    standard error of the full-set value, and the interval is ``value ± z·se``, clipped to the metric's range.
    Both sets are halved: the reference (the base's samples) is as random as the samples. In simulations
    (Gaussians, n = 40–200, k = 3–5) the half-set standard error runs 0–25% above the true one, and the interval
    covers the expected value at these sizes in 93–99% of repeats: conservative, never short. It needs at least
    2(k + 1) images in each set; ``n_boot=0`` gives the values alone (``k`` < n, m).
    """
    return _prdc_estimates(reference, samples, k, n_boot, confidence, np.random.default_rng(seed), paired)


def prdc_difference(
    reference: ArrayLike,
    samples_a: ArrayLike,
    samples_b: ArrayLike,
    k: int = 5,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Precision, recall, density and coverage of ``samples_a`` minus those of ``samples_b``, both against one
    ``reference``, each difference with a ``confidence`` interval: "did method a restore the reference's
    distribution more than method b".

    The three sets are *paired by seed*: row i of each comes from seed i (the same prompt and starting noise in
    three regimes), so all three hold n rows. The values are :func:`prdc`'s with ``paired=True`` (each image's
    own-seed partner in the reference left out), subtracted. The interval is
    :func:`prdc`'s delete-half jackknife with one random half of the seed indices applied to all three sets at
    once, so each replicate recomputes both metrics on the same reference half and on the same seeds' images:
    what the two measurements share (the reference's own randomness, the seeds' noise) moves both alike and
    cancels in the difference, which an interval from two independent ``prdc`` intervals would count twice.
    A regime against itself differs by exactly 0 with a zero-width interval. Intervals are clipped to the
    difference's range (±1; density unbounded). Needs at least 2(k + 1) rows; ``n_boot=0`` gives the values
    alone.
    """
    return _prdc_difference_estimates(
        reference, samples_a, samples_b, k, n_boot, confidence, np.random.default_rng(seed)
    )


# ----------------------------------------------------------------------------------------------------------------
# CMMD


class _KernelSums:
    """The Gaussian kernel matrices of two sets, with the means that MMD² is made of, for weighted sets."""

    def __init__(self, x: np.ndarray, y: np.ndarray, sigma: float) -> None:
        gamma = 1.0 / (2.0 * sigma**2)
        self.xx = np.exp(-gamma * cdist(x, x, "sqeuclidean"))
        self.yy = np.exp(-gamma * cdist(y, y, "sqeuclidean"))
        self.xy = np.exp(-gamma * cdist(x, y, "sqeuclidean"))

    @staticmethod
    def _within(kernel: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Mean kernel over ordered pairs of distinct *original* points, for each row of weights ``w``.

        A bootstrap copy paired with its own original (k = 1) is dropped, as are the diagonal terms: there are
        (Σw)² − Σw² such pairs.
        """
        total = ((w @ kernel) * w).sum(axis=1) - (w**2 * np.diag(kernel)).sum(axis=1)
        with np.errstate(
            invalid="ignore", divide="ignore"
        ):  # one original alone (tiny sets): NaN, dropped later
            return total / (w.sum(axis=1) ** 2 - (w**2).sum(axis=1))

    def mmd2(self, w: np.ndarray, v: np.ndarray, unbiased: bool, paired: bool = False) -> np.ndarray:
        """MMD² for each pair of weight rows ``w`` (over x) and ``v`` (over y): the unbiased U-statistic, or the
        biased V-statistic with n = Σw, m = Σv (the diagonal of a Gaussian kernel is 1). ``paired`` (x_i and y_i
        from one seed): the cross mean leaves out each seed's own pair, which shares its starting noise."""
        n, m = w.sum(axis=1), v.sum(axis=1)
        k_xx, k_yy = self._within(self.xx, w), self._within(self.yy, v)
        cross = ((w @ self.xy) * v).sum(axis=1)
        if paired:
            own = w * v
            k_xy = (cross - (own * np.diag(self.xy)).sum(axis=1)) / (n * m - own.sum(axis=1))
        else:
            k_xy = cross / (n * m)
        if not unbiased:
            k_xx, k_yy = ((n - 1) * k_xx + 1) / n, ((m - 1) * k_yy + 1) / m
        return k_xx + k_yy - 2 * k_xy


def cmmd(
    reference: ArrayLike,
    samples: ArrayLike,
    *,
    sigma: float = CMMD_SIGMA,
    scale: float = CMMD_SCALE,
    unbiased: bool = False,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    paired: bool = False,
) -> Estimate:
    """CMMD: the squared maximum mean discrepancy between two embedding sets with a Gaussian RBF kernel
    ``exp(−‖x − y‖² / (2σ²))``, × ``scale``, with a percentile bootstrap interval.

    By default it is exactly the CMMD reference implementation (google-research/cmmd ``distance.mmd``): the
    biased, minimum-variance V-statistic of Gretton et al. (2012, eq. 5), means over *all* pairs including each
    point with itself, σ = 10, × 1000. CMMD is defined on unit-norm CLIP ViT-L/14@336px image embeddings; the
    embedders of :mod:`conceptspace.embeddings` return unit-norm rows; features are used as given here.

    The V-statistic is ≥ 0 and exceeds the population MMD² by (1 − E k(x, x'))/n + (1 − E k(y, y'))/m, so it is
    > 0 even for two draws of one distribution (0 only for identical sets), and like FID it should be compared
    at equal set sizes. ``unbiased=True`` gives the U-statistic MMD²_u (Gretton et al. eq. 3; within-set means
    over distinct pairs), whose expectation is the population MMD² and which can be negative: use it to ask "is
    there any difference at all" (its interval then holds 0).

    Interval: resamples of both sets (reference and samples are both random draws), each replicate computed on
    pairs of distinct *original* images (a copy paired with itself has kernel 1 and would inflate the
    within-set means), then restated at the original sizes for the V-statistic. It covers the estimator's own
    expectation: the population MMD² for ``unbiased=True``, the V-statistic's (biased) expectation otherwise.
    Near MMD² = 0 the statistic is degenerate and the interval is approximate.

    ``paired``: the sets are paired by seed (row i of each from seed i): the cross mean leaves out each seed's own
    pair, which shares its starting noise and would pull the distance down, and the bootstrap resamples seeds
    (both images of a seed together).
    """
    check_settings(confidence, n_boot)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma (the kernel bandwidth) must be a positive number, got {sigma}")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale}")
    x, y = _feature_sets(reference, samples, min_n=2)
    if paired and len(x) != len(y):
        raise ValueError(
            f"seed-paired sets (row i of each from seed i) need equal numbers of rows, got {len(x)} and {len(y)}"
        )
    sums = _KernelSums(x, y, sigma)
    value = float(sums.mmd2(np.ones((1, len(x))), np.ones((1, len(y))), unbiased, paired)[0]) * scale
    rng = np.random.default_rng(seed)
    replicates = np.empty(0)
    if n_boot:
        chunk = max(1, int(_CHUNK_NUMBERS // (len(x) + len(y))))
        parts = []
        for start in range(0, n_boot, chunk):
            count = min(chunk, n_boot - start)
            w = bootstrap_counts(rng, len(x), count)
            v = w if paired else bootstrap_counts(rng, len(y), count)  # paired: resample seeds, both images
            parts.append(sums.mmd2(w, v, unbiased, paired))
        replicates = np.concatenate(parts) * scale
    low, high = percentile_interval(replicates, confidence)
    if (
        not unbiased and not paired and len(replicates)
    ):  # the V-statistic is never below 0; resamples off distinct pairs can be
        low = max(low, 0.0)
    return Estimate(value, low, high, len(y), method="bootstrap" if len(replicates) else "none")


# ----------------------------------------------------------------------------------------------------------------
# tidy rows


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise ValueError("metrics is empty")
    for metric in metrics:
        if metric not in REFERENCE_METRICS:
            raise ValueError(
                f"unknown reference metric {metric!r}; choose from {', '.join(REFERENCE_METRICS)}"
            )
    return list(dict.fromkeys(metrics))


def reference_rows(
    samples_by_regime: Mapping[str, ArrayLike],
    reference: ArrayLike,
    prompt: str,
    *,
    reference_name: str = "base",
    metrics: Sequence[str] = REFERENCE_METRICS,
    k: int = 5,
    sigma: float = CMMD_SIGMA,
    scale: float = CMMD_SCALE,
    unbiased: bool = False,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    paired: bool = False,
    **extra: Any,
) -> list[dict[str, Any]]:
    """One tidy row per (regime, metric): each regime's samples for ``prompt`` measured against ``reference``
    (e.g. the base model's own samples on the same prompt).

    ``samples_by_regime`` maps a regime to its ``(m, d)`` features, ``reference`` is ``(n, d)`` in the same
    space. ``metrics`` from ``precision``, ``recall``, ``density``, ``coverage`` (:func:`prdc`, with ``k``) and
    ``cmmd`` (:func:`cmmd`, with ``sigma``, ``scale``; named ``cmmd_unbiased`` with ``unbiased=True``). PRDC is
    usually measured on Inception/VGG/DINOv2 features and CMMD on CLIP embeddings: call once per feature space
    with its metrics and say which with ``embedder=``.

    Rows carry ``reference`` (``reference_name``), ``n_reference``, ``ci_method``, ``k`` (PRDC) or ``sigma``
    (CMMD), and ``extra`` (e.g. ``model=``, ``embedder=``); ``n`` is the regime's number of samples. A regime
    that *is* the reference set scores trivially (precision 1, CMMD 0): for the base's own baseline pass a
    second, disjoint draw of its samples (other seeds) as one of the regimes. ``paired``: each regime's rows and
    the reference's come from the same seeds (a comparison's images): :func:`prdc`'s and :func:`cmmd`'s
    ``paired``, own-seed pairs left out.
    """
    check_settings(confidence, n_boot)
    metrics = _check_metrics(metrics)
    if not samples_by_regime:
        raise ValueError("no regimes given")
    reference = as_array(reference, "reference")  # once, not once per regime (tensors leave the GPU here)
    common = {"reference": reference_name, "n_reference": len(reference) if reference.ndim else 0}
    rows = []
    for regime, samples in samples_by_regime.items():
        if any(metric in PRDC_METRICS for metric in metrics):
            rng = keyed_rng(seed, prompt, regime, "prdc", reference_name)
            estimates = _prdc_estimates(reference, samples, k, n_boot, confidence, rng, paired)
            for metric in (m for m in metrics if m in PRDC_METRICS):
                estimate = estimates[metric]
                rows.append(
                    estimate.row(prompt, regime, metric, **common, k=k, ci_method=estimate.method, **extra)
                )
        if "cmmd" in metrics:
            name = "cmmd_unbiased" if unbiased else "cmmd"
            cmmd_seed = int(keyed_rng(seed, prompt, regime, name, reference_name).integers(2**63))
            settings = dict(
                sigma=sigma,
                scale=scale,
                unbiased=unbiased,
                n_boot=n_boot,
                confidence=confidence,
                paired=paired,
            )
            estimate = cmmd(reference, samples, seed=cmmd_seed, **settings)
            rows.append(
                estimate.row(
                    prompt, regime, name, **common, sigma=float(sigma), ci_method=estimate.method, **extra
                )
            )
    return rows


def reference_difference_rows(
    samples_by_regime: Mapping[str, ArrayLike],
    reference: ArrayLike,
    prompt: str,
    pairs: Sequence[tuple[str, str]],
    *,
    reference_name: str = "base",
    metrics: Sequence[str] = PRDC_METRICS,
    k: int = 5,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **extra: Any,
) -> list[dict[str, Any]]:
    """One tidy row per (pair, metric): the paired difference (:func:`prdc_difference`) of two regimes' samples
    for ``prompt`` against ``reference``, named as the project's other paired rows are: ``regime="<a> - <b>"``,
    ``metric="diff_<metric>"``, value = metric(a) − metric(b).

    Every regime's features and ``reference`` must be paired by seed (row i from seed i). ``metrics`` from
    ``precision``, ``recall``, ``density``, ``coverage`` (CMMD has no paired form here). Rows carry
    ``reference`` (``reference_name``), ``n_reference``, ``k``, ``ci_method`` and ``extra``; ``n`` is the number
    of seed pairs.
    """
    check_settings(confidence, n_boot)
    metrics = _check_metrics(metrics)
    if "cmmd" in metrics:
        raise ValueError("reference_difference_rows gives precision, recall, density and coverage, not cmmd")
    reference = as_array(reference, "reference")
    common = {"reference": reference_name, "n_reference": len(reference) if reference.ndim else 0}
    rows = []
    for pair in pairs:
        if len(pair) != 2 or any(regime not in samples_by_regime for regime in pair):
            raise ValueError(
                f"each pair is (regime_a, regime_b) of regimes given ({', '.join(samples_by_regime)}), got {pair!r}"
            )
        a, b = pair
        label = f"{a} - {b}"
        rng = keyed_rng(seed, prompt, label, "prdc", reference_name)
        estimates = _prdc_difference_estimates(
            reference, samples_by_regime[a], samples_by_regime[b], k, n_boot, confidence, rng
        )
        for metric in metrics:
            estimate = estimates[metric]
            rows.append(
                estimate.row(
                    prompt, label, f"diff_{metric}", **common, k=k, ci_method=estimate.method, **extra
                )
            )
    return rows


def base_reference_rows(
    embeddings: Mapping[str, Mapping[str, ArrayLike]],
    names: Sequence[str],
    base: str,
    student: str | None,
    *,
    n_boot: int = 1000,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Every regime of ``names`` but ``base`` against ``base``'s own samples of the same prompt ("did the method restore the
    teacher's distribution"): precision, recall, density, coverage and CMMD in the embedder's space, and the paired
    PRDC differences ``<method> - <student>`` (when ``student`` is one of ``names``) (the seeds pair the base, the student and the method), per prompt
    and, with several prompts, their mean. A method's image and the base's from the same seed share their starting
    noise (the hybrid's first step *is* the base's), so each image's own-seed partner is left out of the cross
    comparisons (``paired=True``): otherwise the hybrid would "cover" each base image with its own twin. k is 5, or less where the seeds are too few for the delete-half
    jackknife (2(k + 1) per set); below 4 seeds there are no such rows."""
    n = min(len(by[base]) for by in embeddings.values())
    k = min(5, n // 2 - 1)
    if k < 1:
        message = (
            f"{n} seeds per prompt: no precision/recall/density/coverage/CMMD against the base (needs 4)"
        )
        warnings.warn(message, stacklevel=3)
        return []
    common = dict(k=k, n_boot=n_boot, **extra)
    pairs = [(name, student) for name in names if name not in (base, student)] if student in names else []
    rows: list[dict[str, Any]] = []
    for prompt, by in embeddings.items():
        others = {name: by[name] for name in names if name != base}
        rows += reference_rows(others, by[base], prompt, paired=True, **common)  # own-seed twins left out
        rows += reference_difference_rows(others, by[base], prompt, pairs, **common)
    if len(embeddings) > 1:
        # The prompts are fixed (the prompts of interest) and their images disjoint, so the per-prompt estimates
        # are independent: the mean's standard error is √(Σ se²) / prompts, each se read off its prompt's interval.
        keep = ("embedder", "model", "reference", "k", "sigma")
        prdc_rows = [row for row in rows if row["metric"] != "cmmd"]  # half-sampling intervals
        cmmd_rows = [row for row in rows if row["metric"] == "cmmd"]  # percentile bootstrap intervals
        averaged = normal_mean_over_prompts(prdc_rows, keep=keep, errors="half-sampling")
        for row in averaged:  # clipped to the metric's range, as each prompt's interval is
            top = math.inf if row["metric"].endswith("density") else 1.0
            bottom = -top if row["metric"].startswith("diff_") else 0.0
            row["ci_low"], row["ci_high"] = max(row["ci_low"], bottom), min(row["ci_high"], top)
        rows += averaged + normal_mean_over_prompts(cmmd_rows, keep=keep)
    return rows
