"""The prompt-aware diversity of a prompt set as tidy rows: the Conditional-Vendi score
(:func:`~conceptspace.metrics.measures.conditional_vendi`, q = 1, the exact prompt as the condition) of each
regime over all its prompts, and the paired difference between two regimes, each with a jackknife interval.

With the prompt as the condition the score factorises: ``log CV = Σ_p w_p log V_p`` (``V_p`` a prompt's own
Vendi score, ``w_p`` its share of the images), so deleting seed ``i`` of prompt ``p`` changes only ``V_p``. The
interval is the delete-one jackknife over the seeds of every prompt (the prompts' images are independent, so the
variances add): on the log scale for one regime (the score is positive and its log a weighted mean), on the
natural scale for a difference, deleting seed ``i`` from both regimes at once (their images are paired by seed).
The weights are held at their full-sample values. Like the Vendi jackknife it is conservative at small n
(simulated, 3 prompts: 99% coverage and 1.35× the estimates' spread at 24 seeds per prompt, 98% and 1.2× at 64;
``tests/test_prompt_aware.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from conceptspace.metrics.draws import vendi_jackknife
from conceptspace.metrics.measures import vendi_of_subsets
from conceptspace.results import ALL_PROMPTS, metric_row
from conceptspace.stats import ArrayLike, as_embeddings, normal_quantile

__all__ = ["CONDITIONAL_VENDI", "conditional_vendi_rows"]

CONDITIONAL_VENDI = "conditional_vendi"
"""The rows' metric name (``diff_conditional_vendi`` for differences)."""

CI_METHOD = "jackknife over seeds within prompts"


def _log_scores(x: np.ndarray) -> tuple[float, np.ndarray]:
    """A prompt's log Vendi score (q = 1) and its delete-one jackknife replicates."""
    full = float(vendi_of_subsets(x, np.arange(len(x))[None], 1.0)[0])
    return math.log(full), np.log(vendi_jackknife(x, 1.0))


def _jackknife_variance(replicates: np.ndarray) -> float:
    n = len(replicates)
    return float((n - 1) / n * ((replicates - replicates.mean()) ** 2).sum())


def conditional_vendi_rows(
    embeddings_by_prompt: Mapping[str, Mapping[str, ArrayLike]],
    pairs: Sequence[tuple[str, str]] = (),
    *,
    confidence: float = 0.95,
    label: str = ALL_PROMPTS,
    **extra: Any,
) -> list[dict[str, Any]]:
    """Per regime, a row ``prompt=label, metric="conditional_vendi"`` (the value equals
    :func:`~conceptspace.metrics.measures.conditional_vendi` of the pooled images with their prompts); per pair
    ``(a, b)`` of regimes paired by seed, a row ``regime="a - b", metric="diff_conditional_vendi"``. ``n`` is
    the number of images (pairs of images for a difference); rows carry ``n_prompts``, ``ci_method`` and
    ``extra``. Needs at least 2 images per prompt."""
    z = normal_quantile(0.5 + confidence / 2)
    prompts = list(embeddings_by_prompt)
    regimes = list(dict.fromkeys(r for by in embeddings_by_prompt.values() for r in by))
    units = {
        regime: [
            as_embeddings(embeddings_by_prompt[p][regime], f"{regime} embeddings of {p!r}") for p in prompts
        ]
        for regime in regimes
        if all(regime in embeddings_by_prompt[p] for p in prompts)
    }
    logs: dict[str, list[tuple[float, np.ndarray]]] = {
        r: [_log_scores(x) for x in xs] for r, xs in units.items()
    }
    rows = []
    for regime, xs in units.items():
        counts = np.array([len(x) for x in xs], dtype=float)
        weights = counts / counts.sum()
        log_value = float(sum(w * full for w, (full, _) in zip(weights, logs[regime], strict=True)))
        value = math.exp(log_value)  # conditional_vendi's value, factorised: no (images × images) spectrum
        se = math.sqrt(
            sum(w * w * _jackknife_variance(loo) for w, (_, loo) in zip(weights, logs[regime], strict=True))
        )
        low, high = math.exp(log_value - z * se), math.exp(log_value + z * se)
        rows.append(
            _row(label, regime, CONDITIONAL_VENDI, value, low, high, int(counts.sum()), len(xs), extra)
        )
    for a, b in pairs:
        if a not in units or b not in units:
            raise ValueError(f"pair ({a!r}, {b!r}) names a regime without images for every prompt")
        if [len(x) for x in units[a]] != [len(x) for x in units[b]]:
            raise ValueError(
                f"{a} and {b} differ in their seeds per prompt: a paired difference needs the same"
            )
        counts = np.array([len(x) for x in units[a]], dtype=float)
        weights = counts / counts.sum()
        totals = {r: sum(w * full for w, (full, _) in zip(weights, logs[r], strict=True)) for r in (a, b)}
        difference = math.exp(totals[a]) - math.exp(totals[b])
        variance = 0.0
        for p, w in enumerate(weights):  # seed i of prompt p deleted from both regimes
            deleted = {r: totals[r] - w * (logs[r][p][0] - logs[r][p][1]) for r in (a, b)}
            variance += _jackknife_variance(np.exp(deleted[a]) - np.exp(deleted[b]))
        half = z * math.sqrt(variance)
        rows.append(
            _row(label, f"{a} - {b}", f"diff_{CONDITIONAL_VENDI}", difference, difference - half, difference + half,
                 int(counts.sum()), len(prompts), extra)
        )  # fmt: skip
    return rows


def _row(
    label: str, regime: str, metric: str, value: float, low: float, high: float, n: int, prompts: int,
    extra: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    return metric_row(
        label, regime, metric, value, low, high, n, n_prompts=prompts, ci_method=CI_METHOD, **extra
    )
