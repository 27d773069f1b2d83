"""SliderSpace: which directions of variation a concept has, and how much of each a sampling regime uses.

1. Embed many samples of one concept prompt (CLIP image embeddings), L2-normalised by default.
2. PCA over them: the top principal directions are the concept's main directions of variation.
3. Project each regime's embeddings (base, distilled, hybrid…) onto those directions; measure the variance
   of its coordinates along each one and in the whole top-k subspace, with percentile bootstrap CIs.
4. Compare each regime with a reference (``base``): variance share (ratio) per direction and, when samples
   are paired by prompt and seed, the log variance ratio with a paired CI and a permutation p-value.

>>> space = SliderSpace(n_directions=8).fit(base)                       # doctest: +SKIP
>>> result = space.activation({"base": base, "distilled": distilled})   # doctest: +SKIP
>>> rows = result.rows("a photo of a dog")                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg

from conceptspace.io import atomic_write
from conceptspace.results import metric_row
from conceptspace.stats import (
    ArrayLike,
    as_array,
    bootstrap_counts,
    check_settings,
    keyed_rng,
    percentile_interval,
    permutation_p_value,
    swaps,
)

__all__ = ["ActivationResult", "SliderSpace"]

SOLVERS = ("auto", "covariance", "svd")
FORMAT = "conceptspace.sliderspace/1"
_ARRAYS = ("components", "explained_variance", "explained_variance_ratio", "mean")
_METRIC_NAMES = {"variance": "variance", "share": "variance_share", "log_ratio": "variance_log_ratio"}
_RANK_TOLERANCE = 1e-10  # explained variance below this fraction of the total: a direction of round-off


# ------------------------------------------------------------------------------------------------------------
# inputs


def _embeddings(x: ArrayLike, name: str, *, normalize: bool, min_n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """An ``(n, d)`` float64 array, checked, and the factor that L2-normalises each row (ones without
    ``normalize``): callers scale what they need (a full copy for ``fit``, only the coordinates otherwise)."""
    array = as_array(x, name)
    if array.ndim != 2:
        hint = " (one embedding? pass it as x[None])" if array.ndim == 1 else ""
        raise ValueError(f"{name} must be a 2-D (n_samples, dim) array, got shape {tuple(array.shape)}{hint}")
    if len(array) < min_n:
        raise ValueError(f"{name}: need at least {min_n} samples, got {len(array)}; embed more samples")
    if array.shape[1] == 0:
        raise ValueError(f"{name} has 0 features: shape {tuple(array.shape)}")
    squared_norms = np.einsum("ij,ij->i", array, array)  # NaN or inf in a row makes its squared norm so
    if not np.isfinite(squared_norms).all():
        suspects = np.nonzero(~np.isfinite(squared_norms))[0]
        bad = suspects[~np.isfinite(array[suspects]).all(axis=1)]
        if len(bad):
            shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
            raise ValueError(
                f"{name} hold NaN or infinite values (rows {shown}): drop those rows or re-embed those "
                "samples"
            )
        raise ValueError(
            f"{name}: rows {suspects[:10].tolist()} are too large to square (overflow); rescale them"
        )
    if not normalize:
        return array, np.ones(len(array))
    if (squared_norms == 0).any():
        zero = np.nonzero(squared_norms == 0)[0]
        raise ValueError(
            f"{name}: rows {zero[:10].tolist()} are all zeros and cannot be L2-normalised; drop them, "
            "or pass normalize=False"
        )
    return array, 1.0 / np.sqrt(squared_norms)


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread for a small eigendecomposition: its many tiny BLAS calls gain nothing from threads, and
    when another process holds a core, threads that wait for each other make it 10-40× slower (measured)."""
    try:
        from threadpoolctl import threadpool_limits  # comes with scikit-learn
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _sign_convention(components: np.ndarray) -> np.ndarray:
    """Flip each row so that its coordinate of largest magnitude is positive (the rule of recent sklearn PCA,
    ``svd_flip(u_based_decision=False)``)."""
    largest = components[np.arange(len(components)), np.abs(components).argmax(axis=1)]
    return components * np.where(largest < 0, -1.0, 1.0)[:, None]


# ------------------------------------------------------------------------------------------------------------
# the estimator


class SliderSpace:
    """PCA over the embeddings of many samples of one concept, scikit-learn style.

    ``n_directions``: how many principal directions to keep (at most ``min(n_samples - 1, dim)``).
    ``normalize``: L2-normalise every embedding first (the CLIP convention: only directions matter); applied
    to everything passed to ``fit``, ``transform`` and ``activation``.
    ``solver``: ``"covariance"`` (eigendecomposition of the ``d × d`` covariance: fastest when d ≤ n),
    ``"svd"`` (thin SVD of the centred ``n × d`` matrix: fastest when n < d), ``"auto"`` picks by shape.

    After ``fit``: ``components_`` (``n_directions × d``, unit rows, ordered by explained variance, each
    flipped so that its coordinate of largest magnitude is positive: deterministic, independent of sample
    order), ``explained_variance_`` (variance along each direction, ``n - 1`` denominator as in sklearn),
    ``explained_variance_ratio_`` (share of the total variance over all ``d`` dimensions),
    ``total_variance_``, ``mean_``, ``n_samples_``, ``n_features_in_``.

    >>> space = SliderSpace(n_directions=4).fit(np.random.default_rng(0).normal(size=(100, 16)))
    >>> space.components_.shape, space.transform(np.ones((3, 16))).shape
    ((4, 16), (3, 4))
    """

    def __init__(self, n_directions: int = 16, *, normalize: bool = True, solver: str = "auto") -> None:
        if (
            isinstance(n_directions, bool)
            or not isinstance(n_directions, (int, np.integer))
            or n_directions < 1
        ):
            raise ValueError(f"n_directions must be a whole number >= 1, got {n_directions!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        self.n_directions = int(n_directions)
        self.normalize = bool(normalize)
        self.solver = solver

    def __repr__(self) -> str:
        settings = f"n_directions={self.n_directions}, normalize={self.normalize}, solver={self.solver!r}"
        return f"SliderSpace({settings})"

    # -- fitting ---------------------------------------------------------------------------------------------

    def fit(self, embeddings: ArrayLike, y: Any = None) -> SliderSpace:
        """Find the top ``n_directions`` principal directions of ``embeddings`` (``(n, d)``); return self.

        ``y`` is ignored (scikit-learn signature).
        """
        raw, scale = _embeddings(embeddings, "embeddings", normalize=self.normalize, min_n=2)
        x = raw * scale[:, None]
        n, d = x.shape
        if self.n_directions > min(n - 1, d):
            raise ValueError(
                f"n_directions={self.n_directions} is more than min(n_samples - 1, dim) = min({n - 1}, {d}): "
                f"{n} samples in {d} dimensions have at most {min(n - 1, d)} directions of variation. Lower "
                "n_directions or embed more samples"
            )
        mean = x.mean(axis=0)
        centred = x - mean
        total = float((centred**2).sum() / (n - 1))
        if total <= 0:
            raise ValueError(
                "embeddings have no variance (all rows are identical after normalisation): nothing to "
                "decompose"
            )
        solver = self.solver if self.solver != "auto" else ("covariance" if d <= n else "svd")
        if solver == "covariance":
            # d×d covariance: one n·d² product, then only the top eigenpairs (LAPACK's MRRR, ascending order)
            covariance = centred.T @ centred / (n - 1)
            with _one_blas_thread():
                eigenvalues, eigenvectors = scipy.linalg.eigh(
                    covariance, subset_by_index=(d - self.n_directions, d - 1)
                )
            variance, components = eigenvalues[::-1], eigenvectors[:, ::-1].T
        else:
            _, singular_values, vt = np.linalg.svd(centred, full_matrices=False)
            variance, components = (
                singular_values[: self.n_directions] ** 2 / (n - 1),
                vt[: self.n_directions],
            )
        variance = np.clip(variance, 0.0, None)  # round-off can leave -1e-17 on a flat direction
        flat = np.nonzero(variance <= _RANK_TOLERANCE * total)[0]
        if len(flat):
            warnings.warn(
                f"the embeddings span fewer than {self.n_directions} directions: directions {flat.tolist()} "
                "carry no variance and are arbitrary (duplicate samples?); lower n_directions",
                RuntimeWarning,
                stacklevel=2,
            )
        self.components_ = _sign_convention(np.ascontiguousarray(components))
        self.explained_variance_ = variance
        self.explained_variance_ratio_ = variance / total
        self.total_variance_ = total
        self.mean_ = mean
        self.n_samples_ = n
        self.n_features_in_ = d
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise ValueError(
                "this SliderSpace is not fitted yet: call .fit(embeddings) first (or SliderSpace.load(path))"
            )

    def _coordinates(self, embeddings: ArrayLike, name: str, min_n: int = 1) -> np.ndarray:
        self._check_fitted()
        raw, scale = _embeddings(embeddings, name, normalize=self.normalize, min_n=min_n)
        if raw.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{name} have dim {raw.shape[1]}, but this SliderSpace was fitted on dim "
                f"{self.n_features_in_} (same embedder?)"
            )
        # (x/‖x‖ − mean) Cᵀ = (x Cᵀ)/‖x‖ − mean Cᵀ: the normalised copy of x is never made
        return (raw @ self.components_.T) * scale[:, None] - self.mean_ @ self.components_.T

    def transform(self, embeddings: ArrayLike) -> np.ndarray:
        """Coordinates ``(n, n_directions)`` along the directions: ``(x − mean_) @ components_.T``, with x
        L2-normalised first when ``normalize``."""
        return self._coordinates(embeddings, "embeddings")

    def fit_transform(self, embeddings: ArrayLike, y: Any = None) -> np.ndarray:
        """``fit(embeddings).transform(embeddings)``."""
        return self.fit(embeddings).transform(embeddings)

    # -- what each regime activates --------------------------------------------------------------------------

    def activation(
        self,
        embeddings_by_regime: Mapping[str, ArrayLike],
        *,
        reference: str = "base",
        confidence: float = 0.95,
        n_boot: int = 1000,
        n_perm: int = 1000,
        seed: int = 0,
        paired: bool | None = None,
    ) -> ActivationResult:
        """Variance of each regime's coordinates along each direction, and against the ``reference`` regime.

        Per regime r and direction k: ``variance[r, k]``, the sample variance (``n - 1`` denominator) of r's
        coordinates along k about r's own mean; ``variance_top[r]``, their sum (the variance inside the top-k
        subspace). Per regime against the reference: ``share = variance_r / variance_reference`` and
        ``log_ratio = log(share)`` with a two-sided ``p_value`` for "same variance".

        Intervals: percentile bootstrap over samples (``n_boot`` resamples; 0 skips them). Every statistic is
        a function of the weighted sums Σ wᵢ cᵢ and Σ wᵢ cᵢ², so all resamples, directions and regimes come
        from one ``(n_boot × n)`` count-matrix product, not a loop.

        ``paired``: samples i of all regimes share prompt and seed (default: paired when all regimes have the
        same number of samples). Paired: one set of resampled indices for every regime (so share CIs use the
        pairing), and ``p_value`` from a paired permutation test: the two regimes' samples of each seed are
        swapped at random (``n_perm`` times; p = (1 + #{|T*| ≥ |T|}) / (1 + n_perm), as in
        :func:`conceptspace.metrics.compare_diversity`). Why permutation and not the bootstrap: under the
        null "the two samples of a seed are exchangeable" the test is exact at any n, whereas inverting a
        percentile bootstrap is only first-order accurate, which matters for variances (skewed, heavy-tailed
        replicates at small n). Coordinates are centred at each regime's own mean before swapping, so a shift
        of the regime's mean along k does not count as a variance difference (centring at estimated means
        leaves the pairs only nearly exchangeable: the test is then approximate, not exact). Unpaired:
        independent resamples per regime, and ``p_value`` from inverting the bootstrap interval of the log
        ratio, p = min(1, (2 min(#{T* ≤ 0}, #{T* ≥ 0}) + 1) / (n_boot + 1)).

        >>> result = space.activation({"base": base, "distilled": distilled})  # doctest: +SKIP
        >>> result.share[1, 0]  # distilled's variance along direction 0 / base's  # doctest: +SKIP
        """
        check_settings(confidence, n_boot, n_perm)
        coordinates = self._regime_coordinates(embeddings_by_regime, reference)
        regimes = list(coordinates)
        sizes = {r: len(c) for r, c in coordinates.items()}
        paired = _resolve_pairing(paired, sizes)
        # about each regime's own mean: the resampled sums stay small, so no cancellation in Σc² − (Σc)²/n
        centred = {r: c - c.mean(axis=0) for r, c in coordinates.items()}
        variance = np.stack([_with_total(_variance(c)) for c in centred.values()])  # (R, K + 1)
        ref = regimes.index(reference)
        replicates = self._variance_replicates(centred, paired, n_boot, seed)  # (R, n_boot, K + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = variance / variance[ref]
            share_replicates = replicates / replicates[ref : ref + 1]
            log_ratio = np.log(share)
            log_replicates = np.log(share_replicates)
        p_value, test_method = _p_values(
            centred,
            reference,
            log_ratio,
            log_replicates,
            paired=paired,
            n_boot=n_boot,
            n_perm=n_perm,
            seed=seed,
        )
        variance_ci, share_ci, log_ratio_ci = (
            _intervals(draws, confidence) for draws in (replicates, share_replicates, log_replicates)
        )
        comparison = "paired" if paired else "independent"
        return ActivationResult(
            regimes=tuple(regimes),
            reference=reference,
            n_samples={r: sizes[r] for r in regimes},
            paired=paired,
            confidence=confidence,
            n_boot=n_boot,
            n_perm=n_perm if paired else 0,
            ci_method=f"{comparison} bootstrap" if n_boot else "none",
            test_method=test_method,
            # the last column of each statistic is the top-k subspace's
            variance=variance[:, :-1],
            variance_ci=variance_ci[:, :-1],
            share=share[:, :-1],
            share_ci=share_ci[:, :-1],
            log_ratio=log_ratio[:, :-1],
            log_ratio_ci=log_ratio_ci[:, :-1],
            p_value=p_value[:, :-1],
            variance_top=variance[:, -1],
            variance_top_ci=variance_ci[:, -1],
            share_top=share[:, -1],
            share_top_ci=share_ci[:, -1],
            log_ratio_top=log_ratio[:, -1],
            log_ratio_top_ci=log_ratio_ci[:, -1],
            p_value_top=p_value[:, -1],
        )

    def _regime_coordinates(
        self, embeddings_by_regime: Mapping[str, ArrayLike], reference: str
    ) -> dict[str, np.ndarray]:
        """Each regime's coordinates along the directions (at least 2 samples each), the reference among them."""
        self._check_fitted()
        if not embeddings_by_regime:
            raise ValueError("embeddings_by_regime is empty: pass {regime name: embeddings}")
        if reference not in embeddings_by_regime:
            raise ValueError(
                f"the reference regime {reference!r} is not among the regimes "
                f"({', '.join(map(repr, embeddings_by_regime))}); pass reference=one of them"
            )
        return {
            regime: self._coordinates(embeddings_by_regime[regime], f"embeddings of {regime!r}", min_n=2)
            for regime in embeddings_by_regime
        }

    def _variance_replicates(
        self, centred: dict[str, np.ndarray], paired: bool, n_boot: int, seed: int
    ) -> np.ndarray:
        """``(R, n_boot, K + 1)`` bootstrap replicates of each regime's variances (last column: their sum)."""
        k = self.n_directions
        if not n_boot:
            return np.empty((len(centred), 0, k + 1))
        if paired:
            # one count matrix for all regimes: the same seeds are drawn in each, so comparisons stay paired
            n = len(next(iter(centred.values())))
            counts = bootstrap_counts(keyed_rng(seed, "sliderspace", "bootstrap"), n, n_boot)
            stacked = np.concatenate([np.concatenate([c, c**2], axis=1) for c in centred.values()], axis=1)
            sums = (counts @ stacked).reshape(n_boot, len(centred), 2 * k).transpose(1, 0, 2)
            return _with_total(_variance_from_sums(sums[..., :k], sums[..., k:], n))
        out = []
        for regime, c in centred.items():  # a stream per regime: results do not depend on the other regimes
            counts = bootstrap_counts(keyed_rng(seed, "sliderspace", "bootstrap", regime), len(c), n_boot)
            sums = counts @ np.concatenate([c, c**2], axis=1)
            out.append(_with_total(_variance_from_sums(sums[:, :k], sums[:, k:], len(c))))
        return np.stack(out)

    # -- explained variance ----------------------------------------------------------------------------------

    def explained_variance_rows(self, prompt: str, regime: str = "fit", **extra: Any) -> list[dict[str, Any]]:
        """Tidy rows of the explained-variance curve of the fitted directions (no CIs: NaN).

        Per direction k (0-based, also in a ``direction`` key): ``explained_variance_ratio_dir_k`` and
        ``cumulative_explained_variance_dir_k`` (the share of the total variance in directions 0..k);
        ``n`` is the number of samples fitted. ``regime`` names what the space was fitted on.
        """
        self._check_fitted()
        rows = []
        cumulative = np.cumsum(self.explained_variance_ratio_)
        for k, (ratio, total) in enumerate(zip(self.explained_variance_ratio_, cumulative, strict=True)):
            for metric, value in (
                (f"explained_variance_ratio_dir_{k}", ratio),
                (f"cumulative_explained_variance_dir_{k}", total),
            ):
                rows.append(
                    metric_row(
                        prompt,
                        regime,
                        metric,
                        value,
                        n=self.n_samples_,
                        direction=k,
                        ci_method="none",
                        **extra,
                    )
                )
        return rows

    # -- files -----------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted space to one ``.safetensors`` file (arrays, with JSON settings in its header).

        No pickle: the file holds only arrays and a JSON string, and loads anywhere safetensors does.
        """
        from safetensors.numpy import save_file

        self._check_fitted()
        arrays = {
            "components": self.components_,
            "explained_variance": self.explained_variance_,
            "explained_variance_ratio": self.explained_variance_ratio_,
            "mean": self.mean_,
        }
        settings = {
            "format": FORMAT,
            "n_directions": self.n_directions,
            "normalize": self.normalize,
            "solver": self.solver,
            "n_samples": self.n_samples_,
            "n_features_in": self.n_features_in_,
            "total_variance": self.total_variance_,
        }
        metadata = {"sliderspace": json.dumps(settings)}
        contiguous = {name: np.ascontiguousarray(array, dtype=np.float64) for name, array in arrays.items()}
        return atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SliderSpace:
        """A fitted space from a file written by :meth:`save`."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (write one with SliderSpace.save)")
        try:
            with safe_open(str(path), framework="numpy") as file:
                header = (file.metadata() or {}).get("sliderspace")
                arrays = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (not a dict)
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
        missing = [name for name in _ARRAYS if name not in arrays]
        if header is None or missing:
            raise ValueError(
                f"{path} is not a SliderSpace file (no 'sliderspace' metadata, or missing arrays "
                f"{', '.join(missing) or 'none'}); write one with SliderSpace.save"
            )
        settings = json.loads(header)
        if settings.get("format") != FORMAT:
            raise ValueError(
                f"{path}: unknown SliderSpace format {settings.get('format')!r} (expected {FORMAT})"
            )
        space = cls(settings["n_directions"], normalize=settings["normalize"], solver=settings["solver"])
        space.components_ = arrays["components"]
        space.explained_variance_ = arrays["explained_variance"]
        space.explained_variance_ratio_ = arrays["explained_variance_ratio"]
        space.mean_ = arrays["mean"]
        space.total_variance_ = float(settings["total_variance"])
        space.n_samples_ = int(settings["n_samples"])
        space.n_features_in_ = int(settings["n_features_in"])
        return space


# ------------------------------------------------------------------------------------------------------------
# statistics on coordinates (last axis: directions)


def _variance(centred: np.ndarray) -> np.ndarray:
    return (centred**2).sum(axis=0) / (len(centred) - 1)


def _variance_from_sums(sums: np.ndarray, squares: np.ndarray, n: int) -> np.ndarray:
    """Sample variances from Σ c and Σ c² over n (possibly repeated) samples."""
    return np.clip(squares - sums**2 / n, 0.0, None) / (n - 1)


def _with_total(variances: np.ndarray) -> np.ndarray:
    """Append the variance in the whole top-k subspace (the sum over orthonormal directions) as a column."""
    return np.concatenate([variances, variances.sum(axis=-1, keepdims=True)], axis=-1)


def _intervals(replicates: np.ndarray, confidence: float) -> np.ndarray:
    """``(R, C, 2)`` percentile intervals from ``(R, n_boot, C)`` replicates (NaN when there are none)."""
    regimes, _, columns = replicates.shape
    out = np.empty((regimes, columns, 2))
    for r in range(regimes):
        for column in range(columns):
            out[r, column] = percentile_interval(replicates[r, :, column], confidence)
    return out


def _permutation_p_values(
    regimes: list[np.ndarray], reference: np.ndarray, log_ratio: np.ndarray, n_perm: int, seed: int
) -> np.ndarray:
    """``(R, K + 1)`` paired permutation p-values of each regime's observed ``log_ratio`` to the reference.

    ``regimes`` and ``reference``: centred ``(n, K)`` coordinates, row i of each from seed i. Swapping seed
    i's pair moves ``Δᵢ = c_ref,i − c_r,i`` into the regime's sums and out of the reference's (and
    c_ref,i² − c_r,i² into the sums of squares), so every permuted statistic comes from one
    ``(n_perm × n)`` swap-matrix product. One swap matrix serves every regime; each test is valid alone.
    """
    n, k = reference.shape
    swapped = swaps(keyed_rng(seed, "sliderspace", "permutation"), n_perm, n)
    differences = np.concatenate(
        [np.concatenate([reference - c, reference**2 - c**2], axis=1) for c in regimes], axis=1
    )
    moved = (swapped @ differences).reshape(n_perm, len(regimes), 2 * k)
    reference_sums, reference_squares = reference.sum(axis=0), (reference**2).sum(axis=0)
    out = np.empty((len(regimes), k + 1))
    for index, c in enumerate(regimes):
        moved_sums, moved_squares = moved[:, index, :k], moved[:, index, k:]
        regime_variance = _variance_from_sums(
            c.sum(axis=0) + moved_sums, (c**2).sum(axis=0) + moved_squares, n
        )
        reference_variance = _variance_from_sums(
            reference_sums - moved_sums, reference_squares - moved_squares, n
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            permuted = np.log(_with_total(regime_variance) / _with_total(reference_variance))
        for column in range(k + 1):
            draws = permuted[:, column]
            out[index, column] = permutation_p_value(
                float(log_ratio[index, column]), draws[np.isfinite(draws)]
            )
    return out


def _resolve_pairing(paired: bool | None, sizes: dict[str, int]) -> bool:
    """``paired`` as given (checked: paired regimes have as many samples), or by default whether they do."""
    same_size = len(set(sizes.values())) == 1
    if paired is None:
        return same_size
    if paired and not same_size:
        raise ValueError(
            "paired=True needs the same samples (prompt and seed) in every regime, but the regimes have "
            f"{', '.join(f'{r}: {k}' for r, k in sizes.items())} samples; pass paired=False"
        )
    return paired


def _p_values(
    centred: dict[str, np.ndarray],
    reference: str,
    log_ratio: np.ndarray,
    log_replicates: np.ndarray,
    *,
    paired: bool,
    n_boot: int,
    n_perm: int,
    seed: int,
) -> tuple[np.ndarray, str]:
    """``(R, K + 1)`` p-values of each regime against the reference (NaN for the reference itself), and the test
    that gave them: a paired permutation test, the inverted bootstrap interval, or none."""
    regimes = list(centred)
    others = [r for r, regime in enumerate(regimes) if regime != reference]
    p_value = np.full_like(log_ratio, math.nan)
    if others and paired and n_perm:
        p_value[others] = _permutation_p_values(
            [centred[regimes[r]] for r in others], centred[reference], log_ratio[others], n_perm, seed
        )
        return p_value, "paired permutation"
    if others and not paired and n_boot:
        p_value[others] = _bootstrap_p_values(log_replicates[others])
        return p_value, "bootstrap"
    return p_value, "none"


def _bootstrap_p_values(log_replicates: np.ndarray) -> np.ndarray:
    """Two-sided p-values for "log ratio = 0" from inverting the percentile interval, ``(R, K + 1)``."""
    finite = np.isfinite(log_replicates)
    count = finite.sum(axis=1)
    below = ((log_replicates <= 0) & finite).sum(axis=1)
    above = ((log_replicates >= 0) & finite).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(1.0, (2 * np.minimum(below, above) + 1) / (count + 1))
    return np.where(count > 0, p, math.nan)


# ------------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class ActivationResult:
    """What :meth:`SliderSpace.activation` measured; row r is ``regimes[r]`` (in the order given), column k
    direction k. Intervals are ``(..., 2)`` arrays ``[low, high]`` at ``confidence``; NaN where not computed.

    ``variance``: variance of each regime's coordinates along each direction (about the regime's own mean).
    ``share``: ``variance / variance[reference]`` (1 for the reference). ``log_ratio``: its log, with
    ``p_value`` for "same variance as the reference" (``test_method`` says which test; NaN for the reference).
    ``*_top``: the same for the variance in the whole top-k subspace (sum over directions).
    """

    regimes: tuple[str, ...]
    reference: str
    n_samples: dict[str, int]
    paired: bool
    confidence: float
    n_boot: int
    n_perm: int
    ci_method: str
    test_method: str
    variance: np.ndarray
    variance_ci: np.ndarray
    share: np.ndarray
    share_ci: np.ndarray
    log_ratio: np.ndarray
    log_ratio_ci: np.ndarray
    p_value: np.ndarray
    variance_top: np.ndarray
    variance_top_ci: np.ndarray
    share_top: np.ndarray
    share_top_ci: np.ndarray
    log_ratio_top: np.ndarray
    log_ratio_top_ci: np.ndarray
    p_value_top: np.ndarray

    @property
    def n_directions(self) -> int:
        return self.variance.shape[1]

    def rows(self, prompt: str, **extra: Any) -> list[dict[str, Any]]:
        """Tidy rows (:func:`conceptspace.results.metric_row`), directions 0-based, K = ``n_directions``:

        - every regime: ``variance_dir_k`` and ``variance_top_K``;
        - every regime but the reference: ``variance_share_dir_k`` / ``variance_share_top_K`` (ratio to the
          reference) and ``variance_log_ratio_dir_k`` / ``variance_log_ratio_top_K`` with a ``p_value`` key.

        Direction rows carry a ``direction`` key, all rows ``ci_method``, comparison rows ``reference`` and
        ``paired``, log-ratio rows ``test``. ``n`` is the regime's number of samples (of pairs, when paired).

        >>> write_metrics("runs/dog", result.rows("a photo of a dog", embedder="clip"))  # doctest: +SKIP
        """
        k = self.n_directions
        labels = [f"dir_{direction}" for direction in range(k)] + [f"top_{k}"]
        rows = []
        for r, regime in enumerate(self.regimes):
            compared = regime != self.reference
            n = self.n_samples[regime]
            p_values = np.append(self.p_value[r], self.p_value_top[r])
            for field in ("variance", "share", "log_ratio") if compared else ("variance",):
                values, intervals = self._with_top(field, r)
                for column, label in enumerate(labels):
                    keys: dict[str, Any] = {"direction": column} if column < k else {}
                    if field == "log_ratio":
                        keys.update(p_value=float(p_values[column]), test=self.test_method)
                    if compared:
                        keys.update(reference=self.reference, paired=self.paired)
                    low, high = intervals[column]
                    metric = f"{_METRIC_NAMES[field]}_{label}"
                    keys = {**keys, "ci_method": self.ci_method, **extra}
                    rows.append(metric_row(prompt, regime, metric, values[column], low, high, n, **keys))
        return rows

    def _with_top(self, field: str, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Regime r's values ``(K + 1,)`` and intervals ``(K + 1, 2)`` of ``field``, the top-k one last."""
        values = np.append(getattr(self, field)[r], getattr(self, f"{field}_top")[r])
        intervals = np.vstack([getattr(self, f"{field}_ci")[r], getattr(self, f"{field}_top_ci")[r]])
        return values, intervals
