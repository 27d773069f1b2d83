"""Estimates with honest uncertainty, and the resampling every metric shares: the :class:`Estimate` a number travels
in (value, 95% interval, n, p-value, method), percentile bootstrap intervals, the mean with its interval,
jackknife standard errors, permutation and sign-flip p-values, and the input checks that turn tensors, arrays and
PIL images into checked numpy and torch batches. :mod:`conceptspace.metrics` (diversity) and
:mod:`conceptspace.quality` (FID, Inception Score, CLIP score) build on it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from conceptspace.results import metric_row

__all__ = [
    "ArrayLike",
    "Estimate",
    "ImagesLike",
    "as_array",
    "as_embeddings",
    "as_images",
    "bootstrap_counts",
    "check_finite",
    "check_settings",
    "jackknife_se",
    "keyed_rng",
    "mean_estimate",
    "normal_quantile",
    "percentile_interval",
    "permutation_p_value",
    "sign_flip_p_value",
    "swaps",
    "t_quantile",
]


ArrayLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]
"""Embeddings: an ``(n, d)`` torch tensor (any device/dtype), numpy array or nested list."""


ImagesLike = torch.Tensor | np.ndarray | Sequence[Any]
"""Images: an ``(n, C, H, W)`` tensor/array with values in [0, 1] (diffusers' ``output_type="pt"``), or a list of
PIL images."""


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


def as_array(x: Any, name: str) -> np.ndarray:
    """``x`` (a tensor, an array or nested lists) as a float64 numpy array; a clear error names ``name``."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be numbers (a tensor, an array or nested lists), got {type(x).__name__}"
        ) from None


def check_finite(x: np.ndarray, name: str) -> None:
    """Refuse NaN or infinite values, naming the first rows that hold them."""
    if not np.isfinite(x).all():
        bad = np.unique(np.nonzero(~np.isfinite(x.reshape(len(x), -1)))[0])
        shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        raise ValueError(f"{name} hold NaN or infinite values (rows {shown})")


def as_embeddings(x: ArrayLike, name: str = "embeddings", min_n: int = 2) -> np.ndarray:
    """An ``(n, d)`` float64 array of L2-normalised rows, checked."""
    array = as_array(x, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_images, dim) array, got shape {tuple(array.shape)}")
    if len(array) < min_n:
        raise ValueError(f"{name}: need at least {min_n} images, got {len(array)}")
    check_finite(array, name)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        zero = np.nonzero(norms[:, 0] == 0)[0]
        raise ValueError(f"{name}: rows {zero[:10].tolist()} are all zeros (no direction to compare)")
    return array / norms


def check_settings(confidence: float, n_boot: int, n_perm: int = 0) -> None:
    """Refuse a confidence outside (0, 1) and negative resample counts."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if n_boot < 0 or n_perm < 0:
        raise ValueError(f"n_boot and n_perm must be >= 0, got {n_boot} and {n_perm}")


def bootstrap_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
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


def normal_quantile(confidence: float) -> float:
    """The two-sided standard normal quantile of ``confidence`` (1.96 at 0.95)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile of ``confidence`` with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def jackknife_se(values: np.ndarray) -> float:
    """The delete-one jackknife standard error from the leave-one-out ``values``."""
    n = len(values)
    return float(np.sqrt((n - 1) / n * ((values - values.mean()) ** 2).sum()))


def permutation_p_value(observed: float, permuted: np.ndarray) -> float:
    """Two-sided permutation p-value ``(1 + #{|T*| ≥ |T|}) / (1 + P)``: never 0, valid at any P."""
    if len(permuted) == 0 or not math.isfinite(observed):
        return math.nan
    tolerance = 1e-12 * max(1.0, abs(observed))
    extreme = np.count_nonzero(np.abs(permuted) >= abs(observed) - tolerance)
    return float((1 + extreme) / (1 + len(permuted)))


def sign_flip_p_value(differences: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
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


def swaps(rng: np.random.Generator, n_perm: int, n: int) -> np.ndarray:
    """``(n_perm, n)`` 0/1: 1 swaps the two regimes' images of that seed."""
    return rng.integers(0, 2, size=(n_perm, n)).astype(np.float64)


def as_images(images: ImagesLike, name: str = "images") -> torch.Tensor:
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


def keyed_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for one (prompt, regime, metric): results do not depend on what else is in the call."""
    import zlib

    return np.random.default_rng([seed, *(zlib.crc32(key.encode("utf-8")) for key in keys)])
