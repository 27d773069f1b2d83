"""Commitment on the testbed, per factor family: how much of the final image each step's x̂0 has already fixed.

The probe reads every step's decoded x̂0, and three readings of "committed after step k" follow:

- **distributional** (``fixed_<measure>``): the diversity of the step-k x̂0 as a share of the final images'
  diversity, on the same seeds — ``fixed_spread_position`` (layout) and ``fixed_entropy_shape_colour``
  (appearance). 1 means the first step already holds the final spread; it says how diverse the outcome will be,
  not which seed ends where.
- **per seed** (``commitment_<factor>``): agreement of step k's x̂0 with the same seed's final image —
  ``commitment_position`` and ``commitment_size`` are R² of the final value on step k's (least squares with an
  intercept, so a blurry x̂0 whose object sits nearer the centre still counts when it points the right way);
  ``commitment_shape_colour`` is the share of seeds whose x̂0 shows the final shape and colour.
- **whole image**: cosine similarity of x̂0 and final image in an embedder's space (the paper's DreamSim curve):
  :func:`conceptspace.generate.generate`'s ``commitment`` rows with ``commitment_embedder="testbed:clip"``.

Seeds whose final image is blank (:func:`conceptspace.testbed.probe.blank_images`) are left out (each row's ``n``
counts the seeds kept); a blank x̂0 on the way is read as the probe reads it. Every value has a 95% percentile
bootstrap interval over seeds, resampled jointly across steps. Rows carry ``step`` and ``timestep``, so the base's
x̂0 can be read at the student's timesteps (:func:`conceptspace.trajectories.at_timestep`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from conceptspace.metrics import metric_row
from conceptspace.stats import percentile_interval
from conceptspace.testbed.data import FactorBatch
from conceptspace.testbed.diversity import measure_replicates
from conceptspace.testbed.probe import FactorProbe, blank_images, load_probe

__all__ = ["TRAJECTORY_METRICS", "r_squared", "trajectory_rows"]

TRAJECTORY_METRICS: dict[str, str] = {
    "fixed_spread_position": "layout",
    "fixed_entropy_shape_colour": "appearance",
    "commitment_position": "layout",
    "commitment_size": "layout",
    "commitment_shape_colour": "appearance",
}
"""The per-step metrics of :func:`trajectory_rows` and the factor family each reads."""


def r_squared(target: np.ndarray, predictor: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """R² of the least-squares fit (with intercept) of ``target`` ``(n, d)`` on ``predictor`` ``(n, d)``, on each
    row of seed indices ``rows`` ``(S, n)``: 1 − residual / total sum of squares, over all ``d`` columns.
    A constant target gives NaN; a constant predictor gives 0."""
    rows = np.atleast_2d(rows)
    y = np.asarray(target, dtype=np.float64).reshape(len(target), -1)[rows]  # (S, n, d)
    x = np.asarray(predictor, dtype=np.float64).reshape(len(predictor), -1)[rows]
    x = np.concatenate([np.ones(x.shape[:2] + (1,)), x - x.mean(axis=1, keepdims=True)], axis=2)
    beta = np.linalg.pinv(x) @ y  # pinv: a constant predictor column fits nothing instead of failing
    residual = ((y - x @ beta) ** 2).sum(axis=(1, 2))
    total = ((y - y.mean(axis=1, keepdims=True)) ** 2).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1.0 - residual / total, np.nan)


def _pixels(decoded: torch.Tensor) -> np.ndarray:
    """(n, steps, 3, H, W) in [0, 1] → uint8 (n, steps, H, W, 3), as the images are written."""
    return (decoded.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()


def _estimate_row(
    prompt: str,
    regime: str,
    metric: str,
    value: float,
    replicates: np.ndarray,
    n: int,
    entry: dict[str, Any],
    step: int,
    **extra: Any,
) -> dict[str, Any]:
    low, high = percentile_interval(replicates, 0.95)  # NaN without replicates
    return metric_row(
        prompt,
        regime,
        metric,
        float(value),
        low,
        high,
        n,
        step=step,
        timestep=entry["timestep"],
        model=entry["model"],
        family=TRAJECTORY_METRICS[metric],
        ci_method="percentile bootstrap",
        **extra,
    )


def trajectory_rows(
    prompt: str,
    regime: str,
    decoded: torch.Tensor,
    schedule: Sequence[dict[str, Any]],
    *,
    probe: FactorProbe | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Rows of every metric in :data:`TRAJECTORY_METRICS` at every step of one prompt's and regime's trajectories.

    ``decoded`` is :func:`conceptspace.trajectories.decode_trajectory`'s output ``(n, steps, 3, H, W)`` in [0, 1];
    ``schedule`` is ``SampleResult.schedule_dicts()`` (one entry per step, for ``timestep`` and ``model``).
    Fits :func:`conceptspace.generate.generate`'s ``trajectory_measures`` hook (``functools.partial`` for the
    options)."""
    if decoded.ndim != 5 or decoded.shape[1] != len(schedule):
        raise ValueError(
            f"decoded must be (n, steps, 3, H, W) with one step per schedule entry ({len(schedule)}), "
            f"got shape {tuple(decoded.shape)}"
        )
    probe = probe or load_probe()
    pixels = _pixels(decoded)
    kept = ~blank_images(pixels[:, -1])
    pixels = pixels[kept]
    n, steps = pixels.shape[:2]
    if n < 3:  # a fit with an intercept and a spread need a few seeds
        return []
    read = probe.predict_factors(pixels.reshape(n * steps, *pixels.shape[2:]))
    by_step: list[FactorBatch] = [read[np.arange(n) * steps + s] for s in range(steps)]  # type: ignore[misc]
    final = by_step[-1]
    everything = np.arange(n)[None]
    resamples = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    final_cache: dict[tuple[str, int], np.ndarray] = {}

    def final_measure(measure: str, rows: np.ndarray) -> np.ndarray:
        """The final x̂0's diversity on a set of seed rows, computed once for every step's share of it."""
        key = (measure, id(rows))  # the rows are `everything` or `resamples`, alive for the whole loop
        if key not in final_cache:
            final_cache[key] = measure_replicates(final, measure, rows)
        return final_cache[key]

    rows: list[dict[str, Any]] = []
    for step, (entry, factors) in enumerate(zip(schedule, by_step, strict=True)):
        for metric, reading in _readings(factors, final, final_measure).items():
            with np.errstate(divide="ignore", invalid="ignore"):
                value = reading(everything)[0]
                replicates = reading(resamples) if n_boot else np.empty(0)
            rows.append(_estimate_row(prompt, regime, metric, value, replicates, n, entry, step, **extra))
    return rows


def _readings(
    factors: FactorBatch, final: FactorBatch, final_measure: Callable[[str, np.ndarray], np.ndarray]
) -> dict[str, Any]:
    """Each metric of :data:`TRAJECTORY_METRICS` as a function of seed-index rows ``(S, n)`` → ``S`` values
    (``final_measure(measure, rows)``: the final x̂0's diversity on those rows)."""

    def fixed(measure: str) -> Any:
        return lambda rows: measure_replicates(factors, measure, rows) / final_measure(measure, rows)

    def agreement(*columns: str) -> Any:
        target, predictor = (np.stack([getattr(f, c) for c in columns], axis=1) for f in (final, factors))
        return lambda rows: r_squared(target, predictor, rows)

    match = ((factors.shape == final.shape) & (factors.colour == final.colour)).astype(float)
    return {
        "fixed_spread_position": fixed("spread_position"),
        "fixed_entropy_shape_colour": fixed("entropy_shape_colour"),
        "commitment_position": agreement("x", "y"),
        "commitment_size": agreement("size"),
        "commitment_shape_colour": lambda rows: match[rows].mean(axis=1),
    }
