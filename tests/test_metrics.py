"""Metrics on known answers, intervals that cover the truth as often as they claim, and clear errors."""

from __future__ import annotations

import math
import os
import re
import sys
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import scipy.linalg
import torch

from conceptspace import metrics
from conceptspace.metrics import (
    ALL_PROMPTS,
    average_over_prompts,
    compare_diversity,
    cosine_distance_matrix,
    diversity,
    diversity_over_prompts,
    diversity_rows,
    lpips_distance_matrix,
    lpips_diversity,
    metric_name,
    paired_over_prompts,
    paired_rows,
    pairwise_distance,
    vendi_score,
    vendi_score_from_similarity,
)
from conceptspace.metrics.draws import vendi_jackknife
from conceptspace.metrics.measures import vendi_from_eigenvalues
from conceptspace.quality import (
    clip_change_rows,
    clip_score,
    clip_score_change,
    clip_score_change_with,
    clip_score_rows,
    clip_score_with,
    clip_scores,
    fid,
)
from conceptspace.results import REQUIRED_COLUMNS, read_metrics, write_metrics
from conceptspace.stats import Estimate, jackknife_se, mean_estimate

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"

# A distribution of unit embeddings with a known mean pairwise cosine distance: for independent unit vectors
# E[1 − x·y] = 1 − ‖E x‖². Here x = (A cos θ, A sin θ, √(1−A²) w), θ ~ N(0, s²), w uniform on a sphere (mean 0),
# so E x = (A e^{−s²/2}, 0, …) and the population mean pairwise distance is 1 − A² e^{−s²}.
A = 0.8


def circle_embeddings(
    theta: np.ndarray, rng: np.random.Generator, a: float = A, extra_dims: int = 6
) -> np.ndarray:
    w = rng.normal(size=(len(theta), extra_dims))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return np.concatenate([a * np.c_[np.cos(theta), np.sin(theta)], math.sqrt(1 - a * a) * w], axis=1)


def true_pairwise_distance(s: float, a: float = A) -> float:
    return 1 - a * a * math.exp(-s * s)


def assert_coverage(hits: int, repeats: int, level: float = 0.95) -> None:
    """Within ±3 binomial standard deviations of the nominal level (0.904–0.996 at 200 repeats)."""
    sd = math.sqrt(level * (1 - level) / repeats)
    assert level - 3 * sd <= hits / repeats <= level + 3 * sd, (
        f"coverage {hits / repeats:.3f} over {repeats} repeats"
    )


# ----------------------------------------------------------------------------------------------------------------
# known answers


@pytest.mark.parametrize("q", [1, 2, math.inf, 0.5, "inf"])
def test_identical_embeddings_have_no_diversity(q):
    x = np.tile([0.3, -1.2, 2.0, 0.1], (7, 1))
    assert pairwise_distance(x) == pytest.approx(0, abs=1e-12)
    assert vendi_score(x, q=q) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("q", [1, 2, math.inf, 0.5, 3])
@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_k_orthogonal_embeddings_have_vendi_k(k, q):
    x = np.eye(12)[:k] * 3.0  # scale does not matter: cosine similarity
    assert vendi_score(x if k > 1 else np.repeat(x, 2, axis=0), q=q) == pytest.approx(k, rel=1e-9)


def test_vendi_counts_modes_not_images():
    two_modes = np.repeat(np.eye(4)[:2], [10, 10], axis=0)  # 20 images, two distinct ones, equally often
    for q in (1, 2, math.inf):
        assert vendi_score(two_modes, q=q) == pytest.approx(2.0)
    unequal = np.repeat(np.eye(4)[:2], [15, 5], axis=0)  # probabilities .75/.25
    assert vendi_score(unequal, q=1) == pytest.approx(
        math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    )
    assert vendi_score(unequal, q=2) == pytest.approx(1 / (0.75**2 + 0.25**2))
    assert vendi_score(unequal, q=math.inf) == pytest.approx(1 / 0.75)


def test_vendi_matches_the_formula_on_a_random_kernel():
    x = np.random.default_rng(0).normal(size=(12, 5))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(u @ u.T / 12), 0, None)
    lam = lam[lam > 1e-12]
    expected = {
        1: math.exp(-(lam * np.log(lam)).sum()),
        2: 1 / (lam**2).sum(),
        0.5: (lam**0.5).sum() ** 2,
        math.inf: 1 / lam.max(),
    }
    for q, value in expected.items():
        assert vendi_score(x, q=q) == pytest.approx(value, rel=1e-9)
        assert vendi_score_from_similarity(u @ u.T, q=q) == pytest.approx(value, rel=1e-9)
    assert vendi_score_from_similarity(np.eye(6)) == pytest.approx(6)
    assert vendi_score_from_similarity(np.ones((6, 6))) == pytest.approx(1)


def test_pairwise_distance_known_values():
    assert pairwise_distance([[1.0, 0.0], [-2.0, 0.0]]) == pytest.approx(2.0)  # antipodal
    assert pairwise_distance([[1.0, 0.0], [0.0, 5.0]]) == pytest.approx(1.0)  # orthogonal
    assert pairwise_distance(np.eye(6)) == pytest.approx(1.0)
    three = [
        [1, 0],
        [math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3)],
        [math.cos(4 * math.pi / 3), -0.866],
    ]
    assert pairwise_distance(three) == pytest.approx(1.5, abs=1e-3)  # cos 120° = −1/2
    d = cosine_distance_matrix([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(d, [[0, 2, 1], [2, 0, 1], [1, 1, 0]], atol=1e-12)


def test_torch_and_numpy_inputs_agree():
    x = np.random.default_rng(1).normal(size=(20, 6))
    for convert in (torch.from_numpy, lambda a: torch.tensor(a, dtype=torch.float32), lambda a: a.tolist()):
        assert pairwise_distance(convert(x)) == pytest.approx(pairwise_distance(x), rel=1e-6)
        assert vendi_score(convert(x)) == pytest.approx(vendi_score(x), rel=1e-5)
    assert pairwise_distance(x * 7.0) == pytest.approx(pairwise_distance(x))
    # the point value agrees with the matrix definition
    d = cosine_distance_matrix(x)
    assert pairwise_distance(x) == pytest.approx(d[np.triu_indices(20, 1)].mean())


def test_vendi_uses_the_cheaper_side_of_the_kernel():
    rng = np.random.default_rng(2)
    many_images = rng.normal(size=(40, 4))  # n > d: the d×d Gram matrix is decomposed
    few_images = rng.normal(size=(4, 40))  # n < d: the n×n kernel is decomposed
    for x in (many_images, few_images):
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        assert vendi_score(x) == pytest.approx(vendi_score_from_similarity(u @ u.T))


def test_metric_names():
    assert metric_name("pairwise_distance") == "pairwise_distance"
    assert metric_name("vendi") == "vendi"
    assert metric_name("vendi", 2) == "vendi_q2"
    assert metric_name("vendi", math.inf) == "vendi_qinf"
    assert metric_name("vendi", 0.5) == "vendi_q0.5"
    with pytest.raises(ValueError, match="unknown diversity metric"):
        metric_name("entropy")


# ----------------------------------------------------------------------------------------------------------------
# intervals


def test_bootstrap_drops_pairs_of_an_image_with_its_own_copy():
    """Every pair of distinct images is at distance 1: so is every replicate, whatever it duplicates.

    A naive bootstrap would count a duplicated image as a pair at distance 0 and pull the interval below 1."""
    estimate = diversity(np.eye(5), n_boot=500, seed=0)
    assert estimate.value == pytest.approx(1.0)
    assert estimate.ci_low == pytest.approx(1.0) and estimate.ci_high == pytest.approx(1.0)
    assert estimate.n == 5 and estimate.method == "bootstrap"


def test_pairwise_distance_interval_covers_the_truth_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    repeats, n = 200, 50
    truth = true_pairwise_distance(1.0)
    hits = 0
    for repeat in range(repeats):
        estimate = diversity(circle_embeddings(rng.normal(0, 1.0, n), rng), n_boot=1000, seed=repeat)
        hits += estimate.ci_low <= truth <= estimate.ci_high
    assert_coverage(hits, repeats)


def test_duplicate_pairs_would_ruin_coverage_where_distances_are_concentrated():
    """High-dimensional, near-isotropic embeddings: the standard error is small next to the duplicate-pair bias
    (about value/n), so a naive bootstrap misses the truth most of the time; ours does not."""
    rng = np.random.default_rng(5)
    repeats, n, a = 100, 50, 0.3
    truth = true_pairwise_distance(1.0, a)
    ours = naive = 0
    for repeat in range(repeats):
        x = circle_embeddings(rng.normal(0, 1.0, n), rng, a=a, extra_dims=60)
        estimate = diversity(x, n_boot=1000, seed=repeat)
        ours += estimate.ci_low <= truth <= estimate.ci_high
        draws = rng.integers(0, n, size=(1000, n)) + n * np.arange(1000)[:, None]  # the same resamples, but
        counts = np.bincount(draws.ravel(), minlength=1000 * n).reshape(1000, n)  # duplicates count as pairs
        naive_replicates = (n**2 - ((counts @ x) ** 2).sum(axis=1)) / (n * (n - 1))
        low, high = np.quantile(naive_replicates, [0.025, 0.975])
        naive += low <= truth <= high
    assert ours / repeats >= 0.9
    assert naive / repeats <= 0.7


def test_paired_difference_interval_covers_the_truth():
    """Regimes paired by seed: θ_b = s_b (ρ z + √(1−ρ²) η) shares z with θ_a = s_a z; the marginals are exact, so
    the true difference of mean pairwise distances is known."""
    rng = np.random.default_rng(7)
    repeats, n, s_a, s_b, rho = 200, 50, 1.0, 0.6, 0.7
    truth = true_pairwise_distance(s_a) - true_pairwise_distance(s_b)
    hits = 0
    for repeat in range(repeats):
        z, eta = rng.normal(size=n), rng.normal(size=n)
        xa = circle_embeddings(s_a * z, rng)
        xb = circle_embeddings(s_b * (rho * z + math.sqrt(1 - rho * rho) * eta), rng)
        estimate = compare_diversity(xa, xb, n_boot=1000, n_perm=0, seed=repeat)
        hits += estimate.ci_low <= truth <= estimate.ci_high
    assert_coverage(hits, repeats)


def test_vendi_jackknife_interval_covers_the_expected_score():
    rng = np.random.default_rng(11)
    n = 30
    truth = np.mean([vendi_score(circle_embeddings(rng.normal(0, 1.0, n), rng)) for _ in range(2000)])
    repeats, hits = 200, 0
    for _ in range(repeats):
        estimate = diversity(circle_embeddings(rng.normal(0, 1.0, n), rng), "vendi")
        assert (
            estimate.method == "jackknife" and 1 <= estimate.ci_low <= estimate.value <= estimate.ci_high <= n
        )
        hits += estimate.ci_low <= truth <= estimate.ci_high
    assert_coverage(hits, repeats)


@pytest.mark.parametrize(
    ("n", "extra_dims", "path"),
    [(400, 6, "second-order delete-one"), (300, 98, "delete-a-group")],
)
def test_vendi_jackknife_keeps_its_coverage_for_large_sets(n, extra_dims, path):
    # above EXACT_JACKKNIFE_MAX images the jackknife is approximated (n >= 4 d) or grouped (otherwise)
    assert n > metrics.EXACT_JACKKNIFE_MAX and (n >= 4 * (extra_dims + 2)) == (path != "delete-a-group")
    rng = np.random.default_rng(17)
    draw = lambda: circle_embeddings(rng.normal(0, 1.0, n), rng, extra_dims=extra_dims)  # noqa: E731
    truth = np.mean([vendi_score(draw()) for _ in range(1000)])
    repeats, hits = 200, 0
    for _ in range(repeats):
        estimate = diversity(draw(), "vendi")
        hits += estimate.ci_low <= truth <= estimate.ci_high
    assert_coverage(hits, repeats)


def test_second_order_vendi_jackknife_matches_exact_leave_one_out():
    rng = np.random.default_rng(19)
    n, d = 1024, 128
    x = rng.normal(size=(n, d))
    x[:, :3] += 2.0  # a common direction, as real prompts have
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    gram = x.T @ x
    for q in (1.0, 2.0, 0.5):
        exact = np.array(
            [vendi_from_eigenvalues(np.linalg.eigvalsh(gram - np.outer(r, r))[None], q)[0] for r in x]
        )
        fast = vendi_jackknife(x, q)
        assert len(fast) == n
        np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-3)
        assert jackknife_se(fast) == pytest.approx(jackknife_se(exact), rel=0.01)


def test_vendi_at_ten_thousand_images_takes_the_jackknife():
    # its speed (about 1 s on 2 cores) is benchmarks/bench_vendi.py's to measure, not a test's
    x = np.random.default_rng(23).normal(size=(10_000, 512))
    estimate = diversity(x, "vendi")
    assert estimate.method == "jackknife" and estimate.ci_low < estimate.value < estimate.ci_high


def test_mean_interval_covers_the_mean_at_the_normal_width():
    """300 samples of n = 50 from N(2, 3²): the 95% interval covers 2 about 95% of the time and is about
    2 × 1.96 × 3 / √50 = 1.66 wide (a zero-width or a too-wide interval fails)."""
    rng = np.random.default_rng(7)
    covered, widths = 0, []
    for repeat in range(300):
        estimate = mean_estimate(rng.normal(2.0, 3.0, size=50), n_boot=400, seed=repeat)
        covered += estimate.ci_low <= 2.0 <= estimate.ci_high
        widths.append(estimate.ci_high - estimate.ci_low)
    assert 0.90 <= covered / 300 <= 0.98
    assert np.median(widths) == pytest.approx(2 * 1.96 * 3 / np.sqrt(50), rel=0.1)


def test_permutation_p_value_is_uniform_under_the_null():
    """Exchangeable regimes (the same distribution, correlated through the seed): p < 0.05 about 5% of the time."""
    rng = np.random.default_rng(13)
    repeats, n = 300, 30
    p_values = []
    for repeat in range(repeats):
        z = rng.normal(size=n)
        xa = circle_embeddings(0.8 * z + 0.6 * rng.normal(size=n), rng)
        xb = circle_embeddings(0.8 * z + 0.6 * rng.normal(size=n), rng)
        p_values.append(compare_diversity(xa, xb, n_boot=0, n_perm=199, seed=repeat).p_value)
    p_values = np.array(p_values)
    assert ((p_values > 0) & (p_values <= 1)).all()
    assert 0.015 <= (p_values < 0.05).mean() <= 0.10
    assert 0.4 <= (p_values < 0.5).mean() <= 0.6


@pytest.mark.parametrize("metric", ["pairwise_distance", "vendi"])
def test_a_real_difference_gets_a_small_p_value_and_an_interval_without_zero(metric):
    rng = np.random.default_rng(17)
    z = rng.normal(size=60)
    diverse, collapsed = circle_embeddings(1.2 * z, rng), circle_embeddings(0.3 * z, rng, a=0.98)
    estimate = compare_diversity(diverse, collapsed, metric, n_boot=500, n_perm=500, seed=0)
    assert estimate.value > 0
    assert estimate.p_value < 0.01 and estimate.p_value >= 1 / 501
    assert estimate.ci_low > 0
    reverse = compare_diversity(collapsed, diverse, metric, n_boot=500, n_perm=500, seed=0)
    assert reverse.value == pytest.approx(-estimate.value)


def test_results_are_reproducible_by_seed():
    x = np.random.default_rng(19).normal(size=(25, 5))
    y = np.random.default_rng(20).normal(size=(25, 5))
    assert diversity(x, seed=3) == diversity(x, seed=3)
    assert diversity(x, seed=3).ci_low != diversity(x, seed=4).ci_low
    assert compare_diversity(x, y, seed=3) == compare_diversity(x, y, seed=3)
    no_interval = diversity(x, n_boot=0)
    assert math.isnan(no_interval.ci_low) and no_interval.method == "none"
    assert math.isnan(diversity(x, "vendi", n_boot=0).ci_high)


# ----------------------------------------------------------------------------------------------------------------
# tidy rows


def regimes_for(seed: int, n: int = 24, *, prompt_scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    return {
        "base": circle_embeddings(prompt_scale * z, rng),
        "distilled": circle_embeddings(0.3 * prompt_scale * z, rng),
        "hybrid": circle_embeddings(0.95 * prompt_scale * z, rng),
    }


def test_diversity_rows_are_tidy_and_round_trip(tmp_path):
    embeddings = regimes_for(0)
    rows = diversity_rows(
        embeddings, "a person", metrics=("pairwise_distance", "vendi"), q=2, n_boot=200, model="sdxl"
    )
    assert [(r["regime"], r["metric"]) for r in rows] == [
        (regime, metric) for regime in embeddings for metric in ("pairwise_distance", "vendi_q2")
    ]
    for row in rows:
        assert list(row)[: len(REQUIRED_COLUMNS)] == list(REQUIRED_COLUMNS)
        assert row["prompt"] == "a person" and row["model"] == "sdxl" and row["n"] == 24
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert rows[0]["value"] == pytest.approx(pairwise_distance(embeddings["base"]))
    assert rows[1]["value"] == pytest.approx(vendi_score(embeddings["base"], q=2))
    assert rows[0]["ci_method"] == "bootstrap" and rows[1]["ci_method"] == "jackknife"
    # a regime's numbers do not depend on which other regimes are in the call
    alone = diversity_rows({"hybrid": embeddings["hybrid"]}, "a person", q=2, n_boot=200, model="sdxl")
    assert alone == [r for r in rows if r["regime"] == "hybrid"]
    write_metrics(tmp_path, rows)
    assert read_metrics(tmp_path) == rows


def test_paired_rows():
    embeddings = regimes_for(1, n=30)
    rows = paired_rows(
        embeddings, "a dog", [("hybrid", "distilled")], n_boot=200, n_perm=200, embedder="test"
    )
    assert [(r["regime"], r["metric"]) for r in rows] == [
        ("hybrid - distilled", "diff_pairwise_distance"),
        ("hybrid - distilled", "diff_vendi"),
    ]
    single = {(r["regime"], r["metric"]): r["value"] for r in diversity_rows(embeddings, "a dog", n_boot=0)}
    assert rows[0]["value"] == pytest.approx(
        single["hybrid", "pairwise_distance"] - single["distilled", "pairwise_distance"]
    )
    assert rows[1]["value"] == pytest.approx(single["hybrid", "vendi"] - single["distilled", "vendi"])
    for row in rows:
        assert (
            0 < row["p_value"] < 0.05 and row["ci_low"] > 0 and row["embedder"] == "test" and row["n"] == 30
        )
    every_pair = paired_rows(embeddings, "a dog", metrics=("pairwise_distance",), n_boot=50, n_perm=50)
    assert [r["regime"] for r in every_pair] == ["base - distilled", "base - hybrid", "distilled - hybrid"]
    with pytest.raises(ValueError, match="not among"):
        paired_rows(embeddings, "a dog", [("hybrid", "turbo")])


def test_average_over_prompts_from_rows():
    prompts = ["p1", "p2", "p3"]
    rows = []
    for i, prompt in enumerate(prompts):
        rows += diversity_rows(
            regimes_for(10 + i), prompt, metrics=("pairwise_distance",), n_boot=100, model="m"
        )
        rows += paired_rows(regimes_for(10 + i), prompt, [("base", "distilled")], metrics=("pairwise_distance",),
                            n_boot=100, n_perm=100, model="m")  # fmt: skip
    averaged = average_over_prompts(rows, n_boot=500)
    assert [(r["regime"], r["metric"]) for r in averaged] == [
        ("base", "pairwise_distance"),
        ("distilled", "pairwise_distance"),
        ("hybrid", "pairwise_distance"),
        ("base - distilled", "diff_pairwise_distance"),
    ]
    for row in averaged:
        members = [r for r in rows if (r["regime"], r["metric"]) == (row["regime"], row["metric"])]
        assert (
            row["prompt"] == ALL_PROMPTS
            and row["n"] == 3
            and row["n_images"] == 3 * 24
            and row["model"] == "m"
        )
        assert row["value"] == pytest.approx(np.mean([r["value"] for r in members]))
        assert (
            min(r["value"] for r in members)
            <= row["ci_low"]
            <= row["ci_high"]
            <= max(r["value"] for r in members)
        )
        assert row["ci_method"] == "bootstrap over prompts"
    # every per-prompt difference is positive: the exact sign-flip p-value is 2 / 2^3
    assert averaged[-1]["p_value"] == pytest.approx(0.25)
    assert "p_value" not in averaged[0]
    # already averaged rows are skipped; one prompt gives no interval; a duplicated prompt is an error
    assert average_over_prompts(rows + averaged, n_boot=500) == averaged
    single = average_over_prompts([r for r in rows if r["prompt"] == "p1"])
    assert math.isnan(single[0]["ci_low"]) and single[0]["n"] == 1
    with pytest.raises(ValueError, match="more than once"):
        average_over_prompts(rows + rows[:1])


def test_diversity_over_prompts_resampling_modes():
    by_prompt = {f"prompt {i}": regimes_for(30 + i, n=20, prompt_scale=0.6 + 0.2 * i) for i in range(4)}
    results = {}
    for mode in ("prompts", "images", "both"):
        rows = diversity_over_prompts(
            by_prompt, metrics=("pairwise_distance", "vendi"), resample=mode, n_boot=400
        )
        per_prompt = [r for r in rows if r["prompt"] != ALL_PROMPTS]
        assert per_prompt == [
            row for prompt, emb in by_prompt.items() for row in diversity_rows(emb, prompt, n_boot=400)
        ]
        averaged = {(r["regime"], r["metric"]): r for r in rows if r["prompt"] == ALL_PROMPTS}
        assert len(averaged) == 6
        for (regime, metric), row in averaged.items():
            values = [r["value"] for r in per_prompt if (r["regime"], r["metric"]) == (regime, metric)]
            assert row["value"] == pytest.approx(np.mean(values))
            assert row["n"] == 4 and row["n_images"] == 80
            assert row["ci_low"] < row["value"] < row["ci_high"]
        results[mode] = averaged
    width = {
        m: r["base", "pairwise_distance"]["ci_high"] - r["base", "pairwise_distance"]["ci_low"]
        for m, r in results.items()
    }
    assert width["both"] > width["images"]  # two-stage adds the between-prompt spread
    with pytest.raises(ValueError, match="resample"):
        diversity_over_prompts(by_prompt, resample="seeds")
    with pytest.raises(ValueError, match="regimes"):
        diversity_over_prompts({"a": regimes_for(1), "b": {"base": regimes_for(2)["base"]}})


def test_paired_over_prompts():
    by_prompt = {f"prompt {i}": regimes_for(40 + i, n=20) for i in range(3)}
    rows = paired_over_prompts(
        by_prompt, [("hybrid", "distilled")], resample="images", n_boot=300, n_perm=300, seed=1
    )
    averaged = [r for r in rows if r["prompt"] == ALL_PROMPTS]
    assert [(r["regime"], r["metric"]) for r in averaged] == [
        ("hybrid - distilled", "diff_pairwise_distance"),
        ("hybrid - distilled", "diff_vendi"),
    ]
    for row in averaged:
        assert row["p_value"] == pytest.approx(
            1 / 301
        )  # no swap of the seeds reaches the observed difference
        assert row["ci_low"] > 0 and row["n"] == 3 and row["ci_method"] == "bootstrap over images"
    # exchangeable regimes: the joint permutation p-value is not small
    rng = np.random.default_rng(2)
    same = {f"p{i}": {"a": rng.normal(size=(20, 4)), "b": rng.normal(size=(20, 4))} for i in range(3)}
    null_rows = paired_over_prompts(same, metrics=("pairwise_distance",), n_boot=100, n_perm=300)
    assert null_rows[-1]["p_value"] > 0.05


# ----------------------------------------------------------------------------------------------------------------
# LPIPS (optional dependency)


def test_lpips_without_the_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` fail
    images = torch.rand(3, 3, 8, 8)
    with pytest.raises(ImportError, match="pip install lpips"):
        lpips_distance_matrix(images)
    with pytest.raises(ImportError, match="pip install lpips"):
        diversity_rows({}, "p", metrics=("lpips",), images_by_regime={"base": images})


class FakeLPIPS(torch.nn.Module):
    """Stands in for lpips.LPIPS: mean absolute difference, shaped (b, 1, 1, 1) like the real one."""

    def __init__(self, net: str = "alex", verbose: bool = True) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.min() >= -1 and x.max() <= 1  # LPIPS takes [-1, 1]
        return (x - y).abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)


def test_lpips_diversity_with_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    images = torch.rand(6, 3, 8, 8)
    d = lpips_distance_matrix(images, batch_size=4)
    expected = np.array([[float((2 * (a - b)).abs().mean()) for b in images] for a in images])
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-7)
    estimate = lpips_diversity(images, n_boot=200)
    assert estimate.value == pytest.approx(d[np.triu_indices(6, 1)].mean())
    assert estimate.ci_low <= estimate.value <= estimate.ci_high
    other = (images * 0.2 + 0.4).clamp(0, 1)
    rows = diversity_rows(
        {}, "p", metrics=("lpips",), images_by_regime={"base": images, "distilled": other}, n_boot=100
    )
    assert [(r["regime"], r["metric"]) for r in rows] == [("base", "lpips"), ("distilled", "lpips")]
    assert rows[0]["value"] == pytest.approx(estimate.value)
    diff = paired_rows({}, "p", metrics=("lpips",), images_by_regime={"base": images, "distilled": other},
                       n_boot=100, n_perm=100)  # fmt: skip
    assert diff[0]["metric"] == "diff_lpips" and diff[0]["value"] == pytest.approx(
        rows[0]["value"] - rows[1]["value"]
    )
    assert diff[0]["p_value"] < 0.05
    with pytest.raises(ValueError, match="images_by_regime"):
        diversity_rows({"base": np.eye(3)}, "p", metrics=("lpips",), lpips_model=FakeLPIPS())


# ----------------------------------------------------------------------------------------------------------------
# FID


def closed_form_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def gaussian_images(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> torch.Tensor:
    """Tiny fake "images" (n, 1, 2, 2) whose flattened pixels are Gaussian features."""
    return torch.from_numpy(rng.multivariate_normal(mean, cov, size=n)).reshape(n, 1, 2, 2)


def test_fid_of_a_set_with_itself_is_zero():
    images = torch.rand(40, 3, 4, 4)
    assert fid(images, images, feature_extractor=torch.nn.Flatten()) == pytest.approx(0, abs=1e-6)


def test_fid_matches_the_closed_form_between_gaussian_feature_sets():
    rng = np.random.default_rng(0)
    cov1 = np.array([[1.0, 0.3, 0, 0], [0.3, 2.0, 0.1, 0], [0, 0.1, 0.5, 0], [0, 0, 0, 1.5]])
    cov2 = np.diag([0.5, 1.0, 2.0, 0.7])
    real = gaussian_images(rng, 300, np.zeros(4), cov1)
    fake = gaussian_images(rng, 250, np.array([1.0, -0.5, 0.2, 0.0]), cov2)
    expected = closed_form_fid(real.reshape(300, -1).numpy(), fake.reshape(250, -1).numpy())
    assert fid(real, fake, feature_extractor=torch.nn.Flatten()) == pytest.approx(expected, rel=1e-6)
    # a linear feature extractor: the closed form on the transformed features
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    with torch.no_grad():
        expected_linear = closed_form_fid(linear(real).numpy(), linear(fake).numpy())
    assert fid(real, fake, feature_extractor=linear, batch_size=64) == pytest.approx(
        expected_linear, rel=1e-6
    )
    # numpy NHWC (diffusers' output_type="np") and PIL images are read as NCHW in [0, 1]
    from PIL import Image

    pictures = np.random.default_rng(1).random((6, 5, 5, 3))
    as_tensor = torch.from_numpy(pictures).permute(0, 3, 1, 2)
    flat = torch.nn.Flatten()
    assert fid(pictures, pictures[::-1] ** 2, feature_extractor=flat) == pytest.approx(
        fid(as_tensor, as_tensor.flip(0) ** 2, feature_extractor=flat)
    )
    pil = [Image.fromarray((p * 255).round().astype(np.uint8)) for p in pictures]
    quantised = torch.from_numpy((pictures * 255).round() / 255).permute(0, 3, 1, 2).float()
    assert fid(pil, as_tensor.float(), feature_extractor=flat) == pytest.approx(
        fid(quantised, as_tensor.float(), feature_extractor=flat), rel=1e-4
    )
    # streamed batches give the same number as whole tensors
    streamed = fid(iter(real.split(70)), iter(fake.split(33)), feature_extractor=torch.nn.Flatten())
    assert streamed == pytest.approx(expected, rel=1e-6)


def test_fid_errors(monkeypatch, tmp_path):
    images = torch.rand(4, 3, 4, 4)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no cached Inception weights
    with pytest.raises(ValueError, match=r"weights_path=.*feature_extractor="):
        fid(images, images)
    with pytest.raises(FileNotFoundError, match="does-not-exist.pth"):
        fid(images, images, weights_path=tmp_path / "does-not-exist.pth")
    with pytest.raises(ValueError, match="at least 2 images"):
        fid(images[:1], images, feature_extractor=torch.nn.Flatten())
    with pytest.raises(ValueError, match="NaN"):
        fid(images, images * float("nan"), feature_extractor=torch.nn.Flatten())
    with pytest.raises(ValueError, match="batch"):
        fid(images[0], images, feature_extractor=torch.nn.Flatten())


def test_fid_inception_path_needs_torch_fidelity(monkeypatch, tmp_path):
    weights = tmp_path / metrics.INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(ImportError, match="pip install torch-fidelity"):
        fid(torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4), weights_path=weights)


# ----------------------------------------------------------------------------------------------------------------
# CLIP score


def aligned(text: np.ndarray, cosines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit embeddings whose cosine with the unit vector ``text`` is exactly ``cosines``."""
    noise = rng.normal(size=(len(cosines), len(text)))
    noise -= np.outer(noise @ text, text)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return cosines[:, None] * text + np.sqrt(1 - cosines[:, None] ** 2) * noise


def test_clip_scores_on_constructed_embeddings():
    rng = np.random.default_rng(0)
    text = np.eye(8)[0]
    cosines = np.array([0.3, 0.25, -0.2, 1.0])
    images = aligned(text, cosines, rng)
    np.testing.assert_allclose(clip_scores(images, text), [30, 25, 0, 100], atol=1e-9)  # negatives count as 0
    np.testing.assert_allclose(
        clip_scores(torch.from_numpy(images), torch.from_numpy(text)[None]), [30, 25, 0, 100]
    )
    estimate = clip_score(images, text * 4.0, n_boot=200)  # unnormalised text is fine
    assert estimate.value == pytest.approx(38.75) and estimate.n == 4
    assert estimate.ci_low <= estimate.value <= estimate.ci_high
    per_image_texts = np.stack([text, text, -text, text])  # one text per image
    np.testing.assert_allclose(clip_scores(images, per_image_texts), [30, 25, 20, 100], atol=1e-9)
    rows = clip_score_rows({"base": images, "dmd2": images[:2]}, text, "p", n_boot=100, embedder="clip")
    assert [(r["regime"], r["metric"], r["n"]) for r in rows] == [
        ("base", "clip_score", 4),
        ("dmd2", "clip_score", 2),
    ]


def test_clip_score_change():
    rng = np.random.default_rng(1)
    text = np.eye(16)[3]
    n = 40
    exact = clip_score_change(aligned(text, np.full(n, 0.2), rng), aligned(text, np.full(n, 0.24), rng), text)
    assert exact.value == pytest.approx(20.0)
    assert exact.ci_low == pytest.approx(20.0) and exact.ci_high == pytest.approx(20.0)
    assert exact.p_value < 0.01
    # noisy scores, paired by seed: the interval covers the true change of the means
    base = 0.2 + 0.02 * rng.normal(size=n)
    noisy = clip_score_change(aligned(text, base, rng), aligned(text, base + 0.02, rng), text, n_boot=1000)
    truth = 100 * 0.02 / base.mean()
    assert noisy.value == pytest.approx(truth)
    assert noisy.ci_low < truth < noisy.ci_high
    no_change = clip_score_change(aligned(text, base, rng), aligned(text, base, rng), text)
    assert no_change.value == pytest.approx(0, abs=1e-9) and no_change.p_value == 1.0
    rows = clip_change_rows(
        {
            0.0: aligned(text, base, rng),
            1.0: aligned(text, base + 0.01, rng),
            2.0: aligned(text, base + 0.02, rng),
        },
        text,
        "a person",
        "dmd2",
        n_boot=200,
        n_perm=200,
        slider="age",
    )
    assert [(r["metric"], r["scale"], r["reference_scale"], r["slider"]) for r in rows] == [
        ("clip_score_change_pct", 1.0, 0.0, "age"),
        ("clip_score_change_pct", 2.0, 0.0, "age"),
    ]
    assert rows[1]["value"] == pytest.approx(truth)
    with pytest.raises(ValueError, match="reference scale"):
        clip_change_rows({1.0: aligned(text, base, rng)}, text, "p", "r")
    with pytest.raises(ValueError, match="same seeds"):
        clip_score_change(aligned(text, base, rng), aligned(text, base[:-1], rng), text)
    with pytest.raises(ValueError, match="undefined"):
        clip_score_change(aligned(text, np.full(4, -0.5), rng), aligned(text, np.full(4, 0.5), rng), text)


class FakeEmbedder:
    """Duck-typed like conceptspace.embeddings: images are already their embeddings here."""

    def __init__(self, text_table: dict[str, np.ndarray]) -> None:
        self.text_table = text_table

    def embed_images(self, images):
        x = torch.as_tensor(np.asarray(images))
        return torch.nn.functional.normalize(x, dim=-1)

    def embed_texts(self, texts):
        return torch.nn.functional.normalize(
            torch.as_tensor(np.stack([self.text_table[t] for t in texts])), dim=-1
        )


def test_clip_score_wrappers_take_any_embedder():
    rng = np.random.default_rng(2)
    text = np.eye(8)[1]
    embedder = FakeEmbedder({"an old person": text})
    young, old = aligned(text, np.full(10, 0.2), rng), aligned(text, np.full(10, 0.3), rng)
    assert clip_score_with(embedder, young, "an old person").value == pytest.approx(20.0)
    assert clip_score_with(embedder, young, ["an old person"] * 10).value == pytest.approx(20.0)
    assert clip_score_change_with(embedder, young, old, "an old person").value == pytest.approx(50.0)


# ----------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "function", [pairwise_distance, vendi_score, diversity, lambda x: diversity(x, "vendi")]
)
def test_bad_embeddings_are_clear_errors(function):
    with pytest.raises(ValueError, match="at least 2 images"):
        function(np.ones((1, 4)))
    with pytest.raises(ValueError, match="at least 2 images"):
        function(np.ones((0, 4)))
    nan = np.random.default_rng(0).normal(size=(5, 4))
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*rows 3"):
        function(nan)
    with pytest.raises(ValueError, match="NaN"):
        function(torch.tensor([[1.0, 0.0], [float("inf"), 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        function(np.ones(4))
    with pytest.raises(ValueError, match="all zeros"):
        function(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_mismatched_pairs_are_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same seeds.*10.*9"):
        compare_diversity(rng.normal(size=(10, 4)), rng.normal(size=(9, 4)))
    with pytest.raises(ValueError, match="different shapes"):
        compare_diversity(rng.normal(size=(10, 4)), rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="same seeds"):
        paired_rows({"a": rng.normal(size=(10, 4)), "b": rng.normal(size=(8, 4))}, "p")
    with pytest.raises(ValueError, match="text_embeddings"):
        clip_scores(rng.normal(size=(10, 4)), rng.normal(size=(3, 4)))
    with pytest.raises(ValueError, match="same embedder"):
        clip_scores(rng.normal(size=(10, 4)), rng.normal(size=5))


def test_bad_settings_are_clear_errors():
    x = np.eye(4)
    with pytest.raises(ValueError, match="confidence"):
        diversity(x, confidence=95)
    with pytest.raises(ValueError, match="n_boot"):
        diversity(x, n_boot=-1)
    with pytest.raises(ValueError, match="order q"):
        vendi_score(x, q=-1)
    with pytest.raises(ValueError, match="order q"):
        vendi_score(x, q="many")
    with pytest.raises(ValueError, match="lpips_diversity"):
        diversity(x, "lpips")
    with pytest.raises(ValueError, match="unknown diversity metric"):
        diversity_rows({"a": x}, "p", metrics=("dreamsim",))
    with pytest.raises(ValueError, match="positive semi-definite"):
        vendi_score_from_similarity([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        vendi_score_from_similarity([[1.0, 0.5], [0.2, 1.0]])


def test_estimate_row():
    row = Estimate(0.5, 0.4, 0.6, 10, p_value=0.01, method="bootstrap").row("p", "a - b", "diff_x", model="m")
    assert row == {
        "prompt": "p",
        "regime": "a - b",
        "metric": "diff_x",
        "value": 0.5,
        "ci_low": 0.4,
        "ci_high": 0.6,
        "n": 10,
        "p_value": 0.01,
        "model": "m",
    }
    assert "p_value" not in Estimate(0.5).row("p", "a", "x")


def test_docs_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 4
    for index, block in enumerate(blocks):
        exec(compile(block, f"{DOCS.name} example {index}", "exec"), {"__name__": f"docs_example_{index}"})
    printed = capsys.readouterr().out
    assert "hybrid - distilled" in printed and "diff_pairwise_distance" in printed


# ----------------------------------------------------------------------------------------------- Inception Score
def test_inception_score_is_the_number_of_classes_a_sharp_even_spread_covers():
    from conceptspace.quality import inception_score_of

    sharp = np.eye(4)[np.arange(40) % 4]  # confident, every class equally often: IS = 4
    assert inception_score_of(sharp) == pytest.approx(4.0)
    assert inception_score_of(np.tile([0.7, 0.2, 0.1], (30, 1))) == pytest.approx(1.0)  # one prediction for all
    half = np.vstack([np.eye(4)[np.arange(20) % 4], np.full((20, 4), 0.25)])  # half sharp, half uncertain
    assert 1.0 < inception_score_of(half) < 4.0
    with pytest.raises(ValueError, match="probabilities must be"):
        inception_score_of(np.ones(5))


def test_inception_score_of_a_classifier_with_a_bootstrap_interval():
    from conceptspace.quality import inception_score, inception_score_of

    torch.manual_seed(0)
    images = torch.rand(48, 3, 8, 8)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 6))
    estimate = inception_score(images, classifier=classifier, batch_size=10, n_boot=300)
    with torch.no_grad():
        expected = inception_score_of(classifier(images).softmax(dim=1))
    assert estimate.value == pytest.approx(expected) and estimate.n == 48 and estimate.method == "bootstrap"
    assert estimate.ci_low < estimate.value < estimate.ci_high
    same = inception_score(images, classifier=classifier, batch_size=48, n_boot=300)
    assert (same.ci_low, same.ci_high) == (estimate.ci_low, estimate.ci_high)  # seeded, batch-independent


def test_inception_score_offline_without_weights_says_what_to_pass(tmp_path, monkeypatch):
    from conceptspace.quality import inception_score

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="classifier= for the Inception Score"):
        inception_score(torch.rand(4, 3, 8, 8))


@pytest.mark.parametrize("metric", ["pairwise_distance", "vendi"])
def test_a_regime_against_itself_differs_by_exactly_zero(metric):
    """Paired resampling keeps each seed's two images together, so identical sets differ by 0 in every replicate:
    a difference that lost its pairing would give an interval around 0, not (0, 0)."""
    x = np.random.default_rng(3).normal(size=(40, 16))
    estimate = metrics.compare_diversity(x, x, metric, n_boot=300, n_perm=300)
    assert (estimate.value, estimate.ci_low, estimate.ci_high, estimate.p_value) == (0.0, 0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------------------- prompt-aware Vendi
def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_conditional_vendi_is_the_weighted_geometric_mean_of_the_prompts_own_scores_at_order_one():
    rng = np.random.default_rng(3)
    a, b = _unit(rng.normal(size=(6, 8))), _unit(rng.normal(size=(10, 8)))  # unequal shares: 6/16 and 10/16
    prompts = ["a"] * 6 + ["b"] * 10
    expected = math.exp(6 / 16 * math.log(vendi_score(a)) + 10 / 16 * math.log(vendi_score(b)))
    assert metrics.conditional_vendi(np.vstack([a, b]), prompts) == pytest.approx(expected, rel=1e-9)
    assert metrics.conditional_vendi(a, ["a"] * 6) == pytest.approx(vendi_score(a), rel=1e-9)  # one prompt


def test_conditional_vendi_of_order_two_is_the_power_mean_of_the_prompts_eigenvalue_sums():
    rng = np.random.default_rng(4)
    blocks = [_unit(rng.normal(size=(5, 6))) for _ in range(3)]
    sums = []
    for block in blocks:  # Σ λ² of each prompt's own normalised kernel K/5
        lam = np.linalg.eigvalsh(block @ block.T / 5)
        sums.append((lam**2).sum())
    expected = 1 / np.mean(sums)  # (mean Σλ^q)^(1/(1-q)) at q = 2
    score = metrics.conditional_vendi(np.vstack(blocks), [p for p in "xyz" for _ in range(5)], q=2)
    assert score == pytest.approx(expected, rel=1e-9)


def test_conditional_vendi_does_not_count_variety_between_prompts():
    same = np.eye(4)[[0, 0, 0, 1, 1, 1]]  # each prompt's images identical; the two prompts orthogonal
    prompts = ["a circle"] * 3 + ["a square"] * 3
    assert vendi_score(same) == pytest.approx(2.0)  # pooled: the two prompts count as diversity
    assert metrics.conditional_vendi(same, prompts) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one prompt per embedding"):
        metrics.conditional_vendi(same, prompts[:5])
    with pytest.raises(ValueError, match="not one string"):
        metrics.conditional_vendi(same[:6], "circle")
