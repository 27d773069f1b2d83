"""Diversity as tidy rows: per regime and per pair of seed-paired regimes for one prompt, and averaged over prompts
with an interval that resamples prompts, images within them, or both."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from conceptspace.metrics.draws import Draws, check_paired, paired_draws, single_draws
from conceptspace.metrics.measures import (
    CosinePairs,
    MatrixPairs,
    load_lpips,
    lpips_distance_matrix,
    metric_name,
    split_metric,
    vendi_order,
)
from conceptspace.results import ALL_PROMPTS, metric_row
from conceptspace.stats import (
    ArrayLike,
    Estimate,
    ImagesLike,
    as_embeddings,
    as_images,
    check_settings,
    keyed_rng,
    percentile_interval,
    permutation_p_value,
    sign_flip_p_value,
)

RESAMPLE_MODES = ("prompts", "images", "both")


_ROW_STAT_KEYS = ("prompt", "value", "ci_low", "ci_high", "n", "p_value", "n_images")


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
            self.lpips_model = load_lpips(lpips_net, device)
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

    def lpips(self, images: torch.Tensor) -> MatrixPairs:
        return MatrixPairs(lpips_distance_matrix(images, model=self.lpips_model, device=self.device))

    def single(self, regime: str, metric: str, **settings: Any) -> Draws:
        metric, settings["q"] = split_metric(metric, settings["q"])
        if metric == "lpips":
            return single_draws(metric, None, self.lpips(self.images(regime)), **settings)
        x = self.x(regime)
        return single_draws(metric, x, CosinePairs(x), **settings)

    def paired(self, a: str, b: str, metric: str, **settings: Any) -> Draws:
        metric, settings["q"] = split_metric(metric, settings["q"])
        if metric == "lpips":
            images_a, images_b = self.images(a), self.images(b)
            check_paired(images_a, images_b, (a, b))
            union = self.lpips(torch.cat([images_a, images_b]))
            n = len(images_a)
            pairs = (
                MatrixPairs(union.distances[:n, :n]),
                MatrixPairs(union.distances[n:, n:]),
                union,
            )
            return paired_draws(metric, None, None, pairs, **settings)
        xa, xb = self.x(a), self.x(b)
        check_paired(xa, xb, (a, b))
        pairs = (CosinePairs(xa), CosinePairs(xb), CosinePairs(np.concatenate([xa, xb])))
        return paired_draws(metric, xa, xb, pairs, **settings)


def _ci_method(draws: Draws) -> dict[str, str]:
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
    q = vendi_order(q)
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
    q = vendi_order(q)
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
    draws: Sequence[Draws], resample: str, n_boot: int, confidence: float, rng: np.random.Generator
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


def _average_rows(
    collected: Mapping[tuple[str, str], Sequence[Draws]],
    resample: str,
    n_boot: int,
    confidence: float,
    seed: int,
    label: str,
    extra: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One row ``prompt=label`` per (regime, metric) of ``collected``: the mean of its per-prompt draws."""
    rows = []
    for (regime, name), draws in collected.items():
        estimate = _aggregate(draws, resample, n_boot, confidence, keyed_rng(seed, label, regime, name))
        n_images = sum(d.estimate.n for d in draws)
        rows.append(estimate.row(label, regime, name, ci_method=estimate.method, n_images=n_images, **extra))
    return rows


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
    q = vendi_order(q)
    regimes = _prompt_regimes(embeddings_by_prompt)
    rows: list[dict[str, Any]] = []
    collected: dict[tuple[str, str], list[Draws]] = {}
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
    return rows + _average_rows(collected, resample, n_boot, confidence, seed, label, extra)


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
    q = vendi_order(q)
    regimes = _prompt_regimes(embeddings_by_prompt)
    rows: list[dict[str, Any]] = []
    collected: dict[tuple[str, str], list[Draws]] = {}
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
    return rows + _average_rows(collected, resample, n_boot, confidence, seed, label, extra)


def _hashable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (list, dict, set)):
        return repr(value)
    return value


def _rows_across_prompts(
    rows: Iterable[Mapping[str, Any]], label: str
) -> dict[tuple, list[Mapping[str, Any]]]:
    """Rows grouped by everything but their prompt and statistics; rows already labelled ``label`` left out."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["prompt"] == label:
            continue
        key = tuple((k, _hashable(v)) for k, v in row.items() if k not in _ROW_STAT_KEYS and k != "ci_method")
        groups.setdefault(key, []).append(row)
    return groups


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
    out = []
    for key, members in _rows_across_prompts(rows, label).items():
        prompts = [m["prompt"] for m in members]
        if len(set(prompts)) != len(prompts):
            duplicated = sorted({p for p in prompts if prompts.count(p) > 1})
            raise ValueError(f"rows {dict(key)} appear more than once for prompt(s) {duplicated}")
        values = np.array([float(m["value"]) for m in members])
        rng = keyed_rng(seed, label, *(str(v) for _, v in key))
        estimate = _aggregate(
            [Draws(Estimate(v), np.empty(0), np.empty(0)) for v in values],
            "prompts",
            n_boot,
            confidence,
            rng,
        )
        extra = {k: members[0][k] for k, _ in key if k not in ("regime", "metric")}
        if any("p_value" in m for m in members):
            extra["p_value"] = sign_flip_p_value(values, n_perm, rng)
        extra["n_images"] = int(sum(int(m["n"]) for m in members))
        extra["ci_method"] = estimate.method
        regime, metric = members[0]["regime"], members[0]["metric"]
        out.append(
            metric_row(
                label, regime, metric, estimate.value, estimate.ci_low, estimate.ci_high, len(values), **extra
            )
        )
    return out


def normal_mean_over_prompts(
    rows: Sequence[dict[str, Any]], keep: Sequence[str] = ("embedder", "model"), errors: str = "bootstrap"
) -> list[dict[str, Any]]:
    """Per (method, metric) the mean over prompts of independent per-prompt estimates, with a normal interval
    from their intervals: each half-width / 1.96 taken as a standard error (``errors="half-sampling"``: the wider
    side's, as value ± 1.96·se clipped at a metric's bound keeps the full width on its other side). The rows'
    ``keep`` keys carry over."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["regime"], row["metric"]), []).append(row)
    out = []
    for (regime, metric), group in groups.items():
        value = float(np.mean([r["value"] for r in group]))
        if errors == "half-sampling":
            ses = [max(r["value"] - r["ci_low"], r["ci_high"] - r["value"]) / 1.959964 for r in group]
        else:
            ses = [(r["ci_high"] - r["ci_low"]) / (2 * 1.959964) for r in group]
        half = 1.959964 * math.sqrt(sum(e * e for e in ses)) / len(group)
        extra = {k: v for k, v in group[0].items() if k in keep}
        out.append(
            metric_row(
                ALL_PROMPTS,
                regime,
                metric,
                value,
                value - half,
                value + half,
                len(group),
                n_images=int(sum(r["n"] for r in group)),
                ci_method=f"normal over prompts (per-prompt {errors} errors)",
                **extra,
            )
        )
    return out
