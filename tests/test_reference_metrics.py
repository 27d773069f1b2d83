"""Reference-set metrics (precision, recall, density, coverage; CMMD): the published implementations' values,
known answers, intervals that cover the truth as often as they claim and narrow with n, and clear errors."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

import conceptspace
from conceptspace.metrics import reference as reference_module
from conceptspace.metrics.reference import (
    PRDC_METRICS,
    cmmd,
    prdc,
    prdc_difference,
    reference_difference_rows,
    reference_rows,
)
from conceptspace.results import validate_rows


def gaussian(rng: np.random.Generator, n: int, d: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(size=(n, d)) * scale
    x[:, 0] += shift
    return x


def expected_self_coverage(n: int, m: int, k: int) -> float:
    """Naeem et al.: the expected coverage of m samples against n reference points of the same distribution."""
    return 1.0 - math.prod((n - i) / (n + m - i) for i in range(1, k + 1))


def kernel_mean(d: int, sigma: float, variance: float, shift: float = 0.0) -> float:
    """E exp(−‖z‖²/(2σ²)) for z ~ N(shift·e₁, variance·I) in d dimensions."""
    total = sigma**2 + variance
    return (sigma**2 / total) ** (d / 2) * math.exp(-(shift**2) / (2 * total))


# ----------------------------------------------------------------------------------------------------------------
# precision, recall, density, coverage


@pytest.mark.parametrize(
    ("n", "m", "d", "k"), [(50, 50, 8, 5), (40, 70, 3, 3), (80, 30, 16, 1), (25, 33, 64, 10)]
)
def test_prdc_equals_the_prdc_package(n, m, d, k):
    from prdc import compute_prdc

    rng = np.random.default_rng(n * m + k)
    reference, samples = gaussian(rng, n, d), gaussian(rng, m, d, scale=0.8, shift=0.4)
    expected = compute_prdc(real_features=reference, fake_features=samples, nearest_k=k)
    got = prdc(reference, samples, k, n_boot=0)
    for name in PRDC_METRICS:
        assert got[name].value == pytest.approx(float(expected[name]), abs=1e-6), name
        assert got[name].n == m and got[name].method == "none"
        assert math.isnan(got[name].ci_low)


def test_a_collapsed_sample_keeps_precision_but_loses_recall_and_coverage_beyond_the_interval():
    rng = np.random.default_rng(0)
    n, d, k = 200, 8, 5
    reference = gaussian(rng, n, d)
    itself = prdc(reference, gaussian(rng, n, d), k, n_boot=300)  # the base against a disjoint draw of itself
    collapsed = prdc(reference, gaussian(rng, n, d, scale=0.15), k, n_boot=300)  # a tight cluster inside it
    truth = expected_self_coverage(n, n, k)  # ≈ 0.97
    assert itself["coverage"].ci_low <= truth <= itself["coverage"].ci_high
    assert itself["coverage"].value > 0.9 and itself["recall"].value > 0.8 and itself["precision"].value > 0.8
    assert itself["density"].ci_low <= 1.0 <= itself["density"].ci_high  # E density = 1 for one distribution
    for name in ("recall", "coverage"):
        assert collapsed[name].ci_high < itself[name].ci_low, name
        assert collapsed[name].value < 0.5 * itself[name].value, name
    assert collapsed["precision"].ci_high >= 0.99  # every sample still lies where the base's samples lie
    assert collapsed["density"].ci_low > 2.0  # ... crowded into the densest part
    for estimate in (*itself.values(), *collapsed.values()):
        assert estimate.ci_low <= estimate.value <= estimate.ci_high
        assert estimate.method == "half-sampling" and estimate.n == n


def test_prdc_intervals_are_reproducible_and_within_range():
    rng = np.random.default_rng(1)
    reference, samples = gaussian(rng, 30, 4), gaussian(rng, 30, 4, shift=3.0)
    first, second = (
        prdc(reference, samples, 3, n_boot=50, seed=4),
        prdc(reference, samples, 3, n_boot=50, seed=4),
    )
    assert first == second
    for name in ("precision", "recall", "coverage"):
        assert 0.0 <= first[name].ci_low <= first[name].ci_high <= 1.0
    assert first["density"].ci_low >= 0.0


def test_the_coverage_interval_covers_the_known_expectation_at_the_nominal_rate_and_narrows_with_n():
    """Identical distributions, where Naeem et al. give coverage's expectation in closed form."""
    rng = np.random.default_rng(2)
    d, k, repeats = 4, 3, 200
    truth = expected_self_coverage(40, 40, k)
    hits, widths = 0, []
    for _ in range(repeats):
        estimate = prdc(
            gaussian(rng, 40, d), gaussian(rng, 40, d), k, n_boot=100, seed=int(rng.integers(1e9))
        )
        hits += estimate["coverage"].ci_low <= truth <= estimate["coverage"].ci_high
        widths.append(estimate["coverage"].ci_high - estimate["coverage"].ci_low)
    assert 0.88 <= hits / repeats <= 0.99
    wide = [prdc(gaussian(rng, 160, d), gaussian(rng, 160, d), k, n_boot=100)["coverage"] for _ in range(15)]
    narrow_width = np.mean([e.ci_high - e.ci_low for e in wide])
    assert narrow_width < 0.65 * np.mean(widths)  # ~1/√4 expected: half as wide at four times the images


def test_the_precision_and_recall_intervals_cover_their_expectation_at_the_nominal_rate():
    """Different distributions: the expectation at these sizes comes from many independent draws."""
    rng = np.random.default_rng(3)
    n, d, k = 40, 4, 3

    def draw() -> tuple[np.ndarray, np.ndarray]:
        return gaussian(rng, n, d), gaussian(rng, n, d, scale=0.7, shift=0.8)

    values = [prdc(*draw(), k, n_boot=0) for _ in range(3000)]
    truth = {name: np.mean([v[name].value for v in values]) for name in ("precision", "recall")}
    hits = dict.fromkeys(truth, 0)
    repeats = 200
    for _ in range(repeats):
        estimate = prdc(*draw(), k, n_boot=100, seed=int(rng.integers(1e9)))
        for name, value in truth.items():
            hits[name] += estimate[name].ci_low <= value <= estimate[name].ci_high
    for name in truth:
        assert 0.88 <= hits[name] / repeats <= 0.99, (name, hits[name] / repeats)


# ----------------------------------------------------------------------------------------------------------------
# paired differences of PRDC


def seed_paired(rng: np.random.Generator, n: int, d: int, noise: float = 0.2) -> tuple[np.ndarray, ...]:
    """A reference and two sample sets paired by seed: row i of both samples shares the seed's draw z_i."""
    z = rng.normal(size=(n, d))
    reference = rng.normal(size=(n, d))
    return reference, z + noise * rng.normal(size=(n, d)), 0.9 * z + noise * rng.normal(size=(n, d))


def test_a_regime_against_itself_differs_by_exactly_zero_with_a_zero_width_interval():
    reference, a, _ = seed_paired(np.random.default_rng(1), 40, 5)
    for name, estimate in prdc_difference(reference, a, a, 3, n_boot=100).items():
        assert (estimate.value, estimate.ci_low, estimate.ci_high) == (0.0, 0.0, 0.0), name
        assert estimate.n == 40 and estimate.method == "paired half-sampling"


def test_the_difference_is_the_difference_of_prdc_and_a_collapse_loses_coverage_beyond_its_interval():
    rng = np.random.default_rng(2)
    n, d, k = 120, 8, 5
    z = rng.normal(size=(n, d))
    reference, spread, collapsed = gaussian(rng, n, d), z, 0.3 * z  # the same seeds' noise, one set shrunk
    diff = prdc_difference(reference, collapsed, spread, k, n_boot=300)
    alone = [prdc(reference, x, k, n_boot=0, paired=True) for x in (collapsed, spread)]  # own seed out
    for name in PRDC_METRICS:
        assert diff[name].value == pytest.approx(alone[0][name].value - alone[1][name].value, abs=1e-12)
        assert diff[name].ci_low <= diff[name].value <= diff[name].ci_high
    coverage = diff["coverage"]
    assert coverage.value < 0 and coverage.ci_high < 0, coverage  # the collapsed set covers less, surely
    assert diff["recall"].ci_high < 0


def test_the_paired_interval_is_narrower_than_one_from_independent_halves_on_paired_data():
    narrower = dict.fromkeys(PRDC_METRICS, 0)
    for seed in range(5):
        reference, a, b = seed_paired(np.random.default_rng(seed), 60, 6)
        paired = prdc_difference(reference, a, b, 3, n_boot=300, seed=seed)
        # unpaired: each set's own interval (independent halves), the two standard errors added in quadrature
        one, two = (
            prdc(reference, a, 3, n_boot=300, seed=seed),
            prdc(reference, b, 3, n_boot=300, seed=seed + 99),
        )
        for name in PRDC_METRICS:
            unpaired = math.hypot(one[name].ci_high - one[name].ci_low, two[name].ci_high - two[name].ci_low)
            narrower[name] += paired[name].ci_high - paired[name].ci_low < unpaired
    assert all(count >= 4 for count in narrower.values()), narrower


def test_reference_difference_rows_are_named_as_the_other_paired_rows():
    reference, a, b = seed_paired(np.random.default_rng(3), 30, 4)
    rows = reference_difference_rows(
        {"hybrid": a, "distilled": b},
        reference,
        "a cat",
        [("hybrid", "distilled")],
        k=3,
        n_boot=50,
        embedder="e",
    )
    validate_rows(rows)
    assert [(r["regime"], r["metric"]) for r in rows] == [
        ("hybrid - distilled", f"diff_{name}") for name in PRDC_METRICS
    ]
    expected = prdc_difference(reference, a, b, 3, n_boot=0)
    for row in rows:
        assert row["reference"] == "base" and row["k"] == 3 and row["n"] == 30 and row["embedder"] == "e"
        assert row["value"] == expected[row["metric"][5:]].value
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    with pytest.raises(ValueError, match="regimes given"):
        reference_difference_rows({"hybrid": a}, reference, "a cat", [("hybrid", "distilled")])
    with pytest.raises(ValueError, match="not cmmd"):
        reference_difference_rows({"a": a, "b": b}, reference, "p", [("a", "b")], metrics=["cmmd"])


def test_a_paired_difference_needs_sets_paired_by_seed():
    reference, a, b = seed_paired(np.random.default_rng(4), 30, 4)
    with pytest.raises(ValueError, match="paired by seed .* got 30, 30 and 29"):
        prdc_difference(reference, a, b[:29])
    with pytest.raises(ValueError, match="got 29, 30 and 30"):
        prdc_difference(reference[:29], a, b)
    with pytest.raises(ValueError, match="reference and samples_b differ in dimension"):
        prdc_difference(reference, a, b[:, :3])
    with pytest.raises(ValueError, match="at least 12 images, got 10"):
        prdc_difference(reference[:10], a[:10], b[:10], 5)


# ----------------------------------------------------------------------------------------------------------------
# CMMD


def test_cmmd_equals_the_hand_written_formula_and_the_reference_implementation():
    x = np.array([[0.0, 1.0], [1.0, 0.5], [2.0, -1.0]])
    y = np.array([[0.5, 0.5], [3.0, 1.0]])
    sigma = 1.5

    def k(a, b):
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True)) / (2 * sigma**2))

    k_xx = sum(k(a, b) for a in x for b in x) / 9
    k_yy = sum(k(a, b) for a in y for b in y) / 4
    k_xy = sum(k(a, b) for a in x for b in y) / 6
    assert cmmd(x, y, sigma=sigma, n_boot=0).value == pytest.approx(
        1000 * (k_xx + k_yy - 2 * k_xy), rel=1e-12
    )
    u_xx = sum(k(a, b) for i, a in enumerate(x) for j, b in enumerate(x) if i != j) / 6
    u_yy = 2 * k(y[0], y[1]) / 2
    unbiased = cmmd(x, y, sigma=sigma, scale=1.0, unbiased=True, n_boot=0).value
    assert unbiased == pytest.approx(u_xx + u_yy - 2 * k_xy, rel=1e-12)

    # google-research/cmmd distance.mmd, written out in numpy (σ = 10, × 1000)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 6)), rng.normal(size=(15, 6)) + 0.3
    a_sq, b_sq = (a * a).sum(1), (b * b).sum(1)
    gamma = 1 / (2 * 10**2)
    ref_xx = np.exp(-gamma * (-2 * a @ a.T + a_sq[:, None] + a_sq[None, :])).mean()
    ref_xy = np.exp(-gamma * (-2 * a @ b.T + a_sq[:, None] + b_sq[None, :])).mean()
    ref_yy = np.exp(-gamma * (-2 * b @ b.T + b_sq[:, None] + b_sq[None, :])).mean()
    assert cmmd(a, b, n_boot=0).value == pytest.approx(1000 * (ref_xx + ref_yy - 2 * ref_xy), rel=1e-9)


def test_cmmd_is_zero_for_one_distribution_and_grows_with_a_planted_shift():
    rng = np.random.default_rng(5)
    x = gaussian(rng, 60, 8)
    assert cmmd(x, x.copy(), n_boot=0).value == pytest.approx(0.0, abs=1e-9)  # identical sets
    same = cmmd(x, gaussian(rng, 60, 8), sigma=3.0, unbiased=True, n_boot=500)
    assert same.ci_low <= 0.0 <= same.ci_high
    values = []
    for shift in (0.0, 0.5, 1.0, 2.0, 4.0):
        y = gaussian(np.random.default_rng(6), 60, 8, shift=shift)  # one draw, shifted further each time
        estimate = cmmd(x, y, sigma=3.0, n_boot=300)
        assert estimate.ci_low <= estimate.value <= estimate.ci_high
        values.append(estimate)
    assert all(a.value < b.value for a, b in zip(values, values[1:], strict=False))
    assert values[-1].ci_low > values[0].ci_high


@pytest.mark.parametrize("unbiased", [True, False])
def test_the_cmmd_interval_covers_its_expectation_at_the_nominal_rate_and_narrows_with_n(unbiased):
    """Gaussians with a Gaussian kernel: MMD² in closed form; the V-statistic's expectation adds its known bias."""
    rng = np.random.default_rng(7)
    d, sigma, shift, sx, sy = 4, 2.0, 1.0, 1.0, 0.8
    a, b = kernel_mean(d, sigma, 2 * sx**2), kernel_mean(d, sigma, 2 * sy**2)
    population = a + b - 2 * kernel_mean(d, sigma, sx**2 + sy**2, shift)

    def truth(n: int) -> float:
        return population if unbiased else population + (1 - a) / n + (1 - b) / n

    def interval(n: int) -> tuple[bool, float]:
        x, y = gaussian(rng, n, d, sx), gaussian(rng, n, d, sy, shift)
        estimate = cmmd(
            x, y, sigma=sigma, scale=1.0, unbiased=unbiased, n_boot=200, seed=int(rng.integers(1e9))
        )
        return estimate.ci_low <= truth(n) <= estimate.ci_high, estimate.ci_high - estimate.ci_low

    small = [interval(40) for _ in range(200)]
    assert 0.88 <= np.mean([hit for hit, _ in small]) <= 0.99
    large = [interval(160) for _ in range(15)]
    assert np.mean([w for _, w in large]) < 0.65 * np.mean([w for _, w in small])


# ----------------------------------------------------------------------------------------------------------------
# rows


def test_reference_rows_are_tidy_keyed_and_name_their_reference():
    rng = np.random.default_rng(8)
    base = gaussian(rng, 30, 5)
    by_regime = {"base (seeds 30-59)": gaussian(rng, 30, 5), "distilled": gaussian(rng, 30, 5, scale=0.3)}
    rows = reference_rows(by_regime, base, "a cat", k=3, n_boot=50, embedder="clip", model="toy")
    validate_rows(rows)
    assert [(r["regime"], r["metric"]) for r in rows] == [
        (regime, metric)
        for regime in by_regime
        for metric in ("precision", "recall", "density", "coverage", "cmmd")
    ]
    for row in rows:
        assert row["reference"] == "base" and row["n_reference"] == 30 and row["n"] == 30
        assert row["prompt"] == "a cat" and row["embedder"] == "clip" and row["model"] == "toy"
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
        assert ("k" in row) == (row["metric"] != "cmmd") and ("sigma" in row) == (row["metric"] == "cmmd")
    alone = reference_rows({"distilled": by_regime["distilled"]}, base, "a cat", k=3, n_boot=50)
    assert [r["ci_low"] for r in alone] == [r["ci_low"] for r in rows[5:]]  # no dependence on other regimes
    only = reference_rows(by_regime, base, "a cat", metrics=["coverage", "cmmd"], unbiased=True, n_boot=0)
    assert [r["metric"] for r in only] == ["coverage", "cmmd_unbiased"] * 2
    expected = prdc(base, by_regime["distilled"], 5, n_boot=0)["coverage"].value
    assert only[2]["value"] == expected


def test_the_public_names():
    assert conceptspace.prdc is prdc and conceptspace.cmmd is cmmd
    from conceptspace import metrics

    assert metrics.reference_rows is reference_rows and metrics.prdc is prdc


# ----------------------------------------------------------------------------------------------------------------
# errors


def test_clear_errors():
    rng = np.random.default_rng(9)
    x, y = gaussian(rng, 20, 4), gaussian(rng, 20, 4)
    with pytest.raises(ValueError, match="differ in dimension: 4 and 3"):
        prdc(x, y[:, :3])
    with pytest.raises(ValueError, match="differ in dimension"):
        cmmd(x, y[:, :3])
    with pytest.raises(ValueError, match="k = 20 needs more than k images in reference"):
        prdc(x, y, 20, n_boot=0)
    with pytest.raises(ValueError, match="k = 5 needs more than k images in samples"):
        prdc(x, y[:5], 5, n_boot=0)
    with pytest.raises(ValueError, match="at least 12 images, got 10"):
        prdc(x[:10], y, 5)
    assert prdc(x[:10], y, 5, n_boot=0)["precision"].method == "none"  # the values alone are fine
    with pytest.raises(ValueError, match="integer >= 1"):
        prdc(x, y, 0)
    with pytest.raises(ValueError, match="need at least 2 images, got 1"):
        cmmd(x[:1], y)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"reference hold NaN or infinite values \(rows 3\)"):
        prdc(bad, y)
    with pytest.raises(ValueError, match="samples hold NaN"):
        cmmd(x, bad)
    with pytest.raises(ValueError, match="2-D"):
        cmmd(x[0], y)
    with pytest.raises(ValueError, match="sigma"):
        cmmd(x, y, sigma=0)
    with pytest.raises(ValueError, match="confidence"):
        prdc(x, y, confidence=95)
    with pytest.raises(ValueError, match="unknown reference metric 'fid'"):
        reference_rows({"a": y}, x, "p", metrics=["fid"])
    with pytest.raises(ValueError, match="no regimes"):
        reference_rows({}, x, "p")


def test_the_module_exports_what_it_documents():
    assert set(reference_module.__all__) <= set(dir(reference_module))
    assert (*PRDC_METRICS, "cmmd") == reference_module.REFERENCE_METRICS


# ------------------------------------------------------------------------------------------- seed-paired sets
def _coverage_without_own_seed(reference: np.ndarray, samples: np.ndarray, k: int) -> float:
    """Coverage written out by hand: reference i is covered when a sample other than its own-seed partner i lies
    inside its ball (the distance to its k-th nearest other reference point)."""
    d_rr = np.linalg.norm(reference[:, None] - reference[None], axis=-1)
    radii = np.sort(d_rr, axis=1)[:, k]
    d_rs = np.linalg.norm(reference[:, None] - samples[None], axis=-1)
    covered = [np.delete(d_rs[i], i).min() < radii[i] for i in range(len(reference))]
    return float(np.mean(covered))


def test_seed_paired_prdc_leaves_each_images_own_twin_out():
    rng = np.random.default_rng(11)
    reference = rng.normal(size=(40, 6))
    twins = reference + 0.01 * rng.normal(size=reference.shape)  # image i shares seed i's noise: a near copy
    collapsed = np.where(np.arange(40)[:, None] < 8, twins, 0.05 * rng.normal(size=reference.shape))
    unpaired = prdc(reference, collapsed, k=3, n_boot=0)["coverage"].value
    paired = prdc(reference, collapsed, k=3, n_boot=0, paired=True)["coverage"].value
    assert paired == pytest.approx(_coverage_without_own_seed(reference, collapsed, 3), abs=1e-12)
    assert unpaired > paired  # the twins covered their own reference points
    with pytest.raises(ValueError, match="seed-paired sets"):
        prdc(reference, collapsed[:30], k=3, n_boot=0, paired=True)


def test_seed_paired_cmmd_leaves_each_seeds_own_pair_out_of_the_cross_mean():
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    kernel = lambda a, b: np.exp(-np.sum((a[:, None] - b[None]) ** 2, axis=-1) / (2 * 10.0**2))  # noqa: E731
    xy = kernel(x, y)
    cross = (xy.sum() - np.trace(xy)) / (12 * 11)
    expected = (kernel(x, x).mean() + kernel(y, y).mean() - 2 * cross) * 1000
    assert cmmd(x, y, n_boot=0, paired=True).value == pytest.approx(expected, rel=1e-10)
    assert cmmd(x, y, n_boot=0).value != pytest.approx(expected, rel=1e-6)
    estimate = cmmd(x, x + 0.001, n_boot=200, paired=True)
    assert estimate.ci_low <= estimate.value <= estimate.ci_high and estimate.ci_high > estimate.ci_low
