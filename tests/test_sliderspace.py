"""SliderSpace: PCA directions, per-regime variance along them, bootstrap CIs, paired tests, files, rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conceptspace.results import REQUIRED_COLUMNS, read_metrics, validate_rows, write_metrics
from conceptspace.sliderspace import ActivationResult, SliderSpace
from conceptspace.stats import bootstrap_counts, keyed_rng, percentile_interval, permutation_p_value, swaps

PLANTED_VARIANCES = np.array([16.0, 4.0, 1.0])
NOISE_VARIANCE = 0.01


def planted_axes(d: int = 12, seed: int = 0) -> np.ndarray:
    """``(d, d)`` random orthonormal basis: columns are the axes."""
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


def planted_scales(d: int) -> np.ndarray:
    variances = np.full(d, NOISE_VARIANCE)
    variances[: len(PLANTED_VARIANCES)] = PLANTED_VARIANCES
    return np.sqrt(variances)


def planted_latents(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Latent coordinates (along the planted axes) with the planted standard deviations."""
    return rng.normal(size=(n, d)) * planted_scales(d)


def aligned(components: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``components`` with each row's sign flipped to agree with the matching row of ``reference``."""
    return components * np.sign((components * reference).sum(axis=1))[:, None]


# ------------------------------------------------------------------------------------------------------------
# fitting


def test_recovers_planted_directions_and_variances():
    d = 12
    axes = planted_axes(d)
    x = 5.0 + planted_latents(20_000, d, np.random.default_rng(1)) @ axes.T
    space = SliderSpace(3, normalize=False).fit(x)
    overlap = np.abs(space.components_ @ axes[:, :3])
    assert np.all(np.diag(overlap) > 0.999)
    np.testing.assert_allclose(space.explained_variance_, PLANTED_VARIANCES, rtol=0.05)
    total = PLANTED_VARIANCES.sum() + (d - 3) * NOISE_VARIANCE
    np.testing.assert_allclose(space.explained_variance_ratio_, PLANTED_VARIANCES / total, rtol=0.05)
    np.testing.assert_allclose(space.mean_, 5.0, atol=0.1)
    np.testing.assert_allclose(space.components_ @ space.components_.T, np.eye(3), atol=1e-10)
    assert (space.n_samples_, space.n_features_in_) == (20_000, d)


@pytest.mark.parametrize(
    ("n", "d", "k", "solver"), [(300, 20, 5, "covariance"), (300, 20, 5, "svd"), (15, 40, 10, "auto")]
)
def test_agrees_with_sklearn_pca(n, d, k, solver):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    ours = SliderSpace(k, normalize=False, solver=solver).fit(x)
    theirs = PCA(k, svd_solver="full").fit(x)
    np.testing.assert_allclose(aligned(ours.components_, theirs.components_), theirs.components_, atol=1e-8)
    np.testing.assert_allclose(ours.explained_variance_, theirs.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(ours.explained_variance_ratio_, theirs.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(ours.mean_, theirs.mean_, atol=1e-12)
    signs = np.sign((ours.components_ * theirs.components_).sum(axis=1))
    np.testing.assert_allclose(ours.transform(x) * signs, theirs.transform(x), atol=1e-8)


def test_transform_and_fit_transform_agree_and_normalize_uses_directions_only():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 16)) + 2.0
    space = SliderSpace(4).fit(x)
    coordinates = space.transform(x)
    np.testing.assert_allclose(SliderSpace(4).fit_transform(x), coordinates, atol=1e-12)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(coordinates, (unit - space.mean_) @ space.components_.T, atol=1e-12)
    np.testing.assert_allclose(space.mean_, unit.mean(axis=0), atol=1e-12)
    lengths = rng.uniform(0.1, 10.0, size=(200, 1))  # only directions matter with normalize=True
    np.testing.assert_allclose(SliderSpace(4).fit(x * lengths).components_, space.components_, atol=1e-10)
    np.testing.assert_allclose(space.transform(torch.from_numpy(x * lengths).float()), coordinates, atol=1e-5)
    assert space.transform(x[:1]).shape == (1, 4)
    np.testing.assert_allclose(coordinates.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(coordinates.var(axis=0, ddof=1), space.explained_variance_, rtol=1e-10)
    activation = space.activation({"base": x * lengths}, n_boot=0)  # normalised the same way as transform
    np.testing.assert_allclose(activation.variance[0], space.explained_variance_, rtol=1e-10)


def test_sign_convention_is_deterministic():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 10)) * np.linspace(3.0, 0.5, 10)
    space = SliderSpace(5, normalize=False).fit(x)
    largest = space.components_[np.arange(5), np.abs(space.components_).argmax(axis=1)]
    assert np.all(largest > 0)
    for other in (
        SliderSpace(5, normalize=False).fit(x[rng.permutation(len(x))]),  # sample order
        SliderSpace(5, normalize=False).fit(-x),  # the same covariance
        SliderSpace(5, normalize=False, solver="svd").fit(x),  # the other solver
    ):
        np.testing.assert_allclose(other.components_, space.components_, atol=1e-10)


def test_rank_deficient_embeddings_warn():
    x = np.random.default_rng(5).normal(size=(50, 2)) @ planted_axes(8)[:, :2].T
    with pytest.warns(RuntimeWarning, match="fewer than 4 directions"):
        SliderSpace(4, normalize=False).fit(x)


# ------------------------------------------------------------------------------------------------------------
# activation


def regimes_with_shrunk_direction(n: int, rng: np.random.Generator, d: int = 12, correlation: float = 0.7):
    """Paired regimes along planted axes: ``same`` has base's distribution, ``shrunk`` a quarter of its
    variance along axis 0 (half its spread); row i of each is correlated with base's row i (a shared seed)."""
    axes = planted_axes(d)
    base = planted_latents(n, d, rng)

    def partner() -> np.ndarray:
        return correlation * base + math.sqrt(1 - correlation**2) * planted_latents(n, d, rng)

    shrunk = partner()
    shrunk[:, 0] *= 0.5
    return {"base": base @ axes.T, "same": partner() @ axes.T, "shrunk": shrunk @ axes.T}


@pytest.fixture(scope="module")
def planted_space() -> tuple[SliderSpace, np.ndarray]:
    """A space fitted on a large sample, and the covariance of the data it was fitted on (the planted one)."""
    axes = planted_axes()
    x = planted_latents(50_000, 12, np.random.default_rng(6)) @ axes.T
    covariance = axes @ np.diag(planted_scales(12) ** 2) @ axes.T
    return SliderSpace(3, normalize=False).fit(x), covariance


def test_activation_shrunk_direction_share_ci_and_p_values(planted_space):
    space, _ = planted_space
    regimes = regimes_with_shrunk_direction(2000, np.random.default_rng(7))
    result = space.activation(regimes)
    assert result.paired and result.test_method == "paired permutation"
    assert result.regimes == ("base", "same", "shrunk")
    same, shrunk = 1, 2
    low, high = result.share_ci[shrunk, 0]
    assert low < 0.25 < high and high < 1
    assert result.share[shrunk, 0] == pytest.approx(0.25, abs=0.03)
    assert result.share_ci[same, 0, 0] < 1 < result.share_ci[same, 0, 1]
    assert result.p_value[shrunk, 0] < 0.01
    assert result.p_value[same, 0] > 0.05
    # the other directions are untouched
    assert np.all(result.share_ci[shrunk, 1:, 0] < 1) and np.all(result.share_ci[shrunk, 1:, 1] > 1)
    assert np.all(np.isnan(result.p_value[0]))  # the reference against itself
    # log ratio: the log of the share, with the same percentile interval
    np.testing.assert_allclose(result.log_ratio, np.log(result.share))
    np.testing.assert_allclose(result.log_ratio_ci, np.log(result.share_ci), rtol=1e-6, atol=1e-9)
    # variance along the axis: a quarter of 16; the top-3 subspace loses 12 of its 21
    assert result.variance[shrunk, 0] == pytest.approx(4.0, rel=0.1)
    assert result.share_top[shrunk] == pytest.approx(9 / 21, rel=0.1)
    assert result.p_value_top[shrunk] < 0.01


def test_activation_unpaired_uses_independent_resamples_and_bootstrap_p_values(planted_space):
    space, _ = planted_space
    regimes = regimes_with_shrunk_direction(1000, np.random.default_rng(8))
    regimes["shrunk"] = regimes["shrunk"][:700]  # unequal sizes: unpaired by default
    result = space.activation(regimes)
    assert not result.paired and result.test_method == "bootstrap" and result.n_perm == 0
    assert result.n_samples == {"base": 1000, "same": 1000, "shrunk": 700}
    low, high = result.share_ci[2, 0]
    assert low < 0.25 < high < 1
    assert result.p_value[2, 0] < 0.01 and result.p_value[1, 0] > 0.05
    with pytest.raises(ValueError, match="paired=True needs the same samples"):
        space.activation(regimes, paired=True)


def test_activation_matches_brute_force_resampling():
    """The vectorised bootstrap and permutation statistics equal an explicit loop over resamples."""
    rng = np.random.default_rng(9)
    x = {"base": rng.normal(size=(30, 5)), "other": rng.normal(size=(30, 5)) * [2, 1, 1, 1, 1]}
    space = SliderSpace(2, normalize=False).fit(x["base"])
    n_boot, n_perm, seed = 50, 40, 3
    result = space.activation(x, n_boot=n_boot, n_perm=n_perm, seed=seed)
    coordinates = {r: space.transform(v) for r, v in x.items()}
    assert np.allclose(result.variance, [c.var(axis=0, ddof=1) for c in coordinates.values()])
    assert np.allclose(result.variance_top, result.variance.sum(axis=1))

    counts = bootstrap_counts(keyed_rng(seed, "sliderspace", "bootstrap"), 30, n_boot).astype(int)
    replicates = {
        r: np.array([np.repeat(c, w, axis=0).var(axis=0, ddof=1) for w in counts])
        for r, c in coordinates.items()
    }
    shares = replicates["other"] / replicates["base"]
    for k in range(2):
        assert np.allclose(result.variance_ci[0, k], percentile_interval(replicates["base"][:, k], 0.95))
        assert np.allclose(result.share_ci[1, k], percentile_interval(shares[:, k], 0.95))

    swapped = swaps(keyed_rng(seed, "sliderspace", "permutation"), n_perm, 30).astype(bool)[:, :, None]
    centred = {r: c - c.mean(axis=0) for r, c in coordinates.items()}
    permuted = np.array(
        [
            np.log(
                np.where(s, centred["base"], centred["other"]).var(axis=0, ddof=1)
                / np.where(s, centred["other"], centred["base"]).var(axis=0, ddof=1)
            )
            for s in swapped
        ]
    )
    for k in range(2):
        assert result.p_value[1, k] == pytest.approx(permutation_p_value(result.log_ratio[1, k], permuted[:, k]))


def test_ci_coverage_and_false_positive_rate_on_repeated_draws(planted_space):
    space, covariance = planted_space
    direction = space.components_[0]
    true_variance = direction @ covariance @ direction
    axes = planted_axes()
    shrink = axes @ np.diag([0.5] + [1.0] * 11) @ axes.T  # halve the spread along planted axis 0
    true_share = (direction @ shrink @ covariance @ shrink.T @ direction) / true_variance
    replicates = 100
    covered_variance = covered_share = false_positives = 0
    rng = np.random.default_rng(10)
    for seed in range(replicates):
        regimes = regimes_with_shrunk_direction(300, rng)
        result = space.activation(regimes, n_boot=400, n_perm=200, seed=seed)
        covered_variance += result.variance_ci[0, 0, 0] <= true_variance <= result.variance_ci[0, 0, 1]
        covered_share += result.share_ci[2, 0, 0] <= true_share <= result.share_ci[2, 0, 1]
        false_positives += result.p_value[1, 0] < 0.05
    assert 0.85 <= covered_variance / replicates <= 0.99
    assert 0.85 <= covered_share / replicates <= 0.99
    assert false_positives / replicates <= 0.12


def test_activation_without_resampling_gives_nan_intervals(planted_space):
    space, _ = planted_space
    regimes = regimes_with_shrunk_direction(100, np.random.default_rng(11))
    result = space.activation(regimes, n_boot=0, n_perm=0)
    assert np.isnan(result.share_ci).all() and np.isnan(result.p_value).all()
    assert result.ci_method == "none" and result.test_method == "none"
    assert np.isfinite(result.share).all()


# ------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("embeddings", "match"),
    [
        (
            np.array([[1.0, np.nan, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
            r"NaN or infinite values \(rows 0\)",
        ),
        (
            np.array([[1.0, 0.0, 0.0], [0.0, np.inf, 0.0], [1.0, 1.0, 1.0]]),
            r"NaN or infinite values \(rows 1\)",
        ),
        (np.ones(5), r"2-D .* pass it as x\[None\]"),
        (np.ones((4, 3, 2)), "2-D"),
        (np.ones((1, 3)), "at least 2 samples"),
        (np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]), "all zeros .* normalize=False"),
        (np.ones((5, 3)), "no variance"),
        ("not numbers", "must be numbers"),
    ],
)
def test_fit_rejects_bad_embeddings(embeddings, match):
    with pytest.raises(ValueError, match=match):
        SliderSpace(1).fit(embeddings)


def test_bad_settings_and_usage_errors(planted_space):
    for n_directions in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_directions must be"):
            SliderSpace(n_directions)
    with pytest.raises(ValueError, match="solver must be one of"):
        SliderSpace(2, solver="magic")
    with pytest.raises(
        ValueError, match=r"n_directions=5 is more than min\(n_samples - 1, dim\) = min\(3, 10\)"
    ):
        SliderSpace(5).fit(np.random.default_rng(0).normal(size=(4, 10)))
    with pytest.raises(ValueError, match="not fitted yet"):
        SliderSpace(2).transform(np.ones((3, 4)))
    with pytest.raises(ValueError, match="not fitted yet"):
        SliderSpace(2).activation({"base": np.ones((3, 4))})
    space, _ = planted_space
    with pytest.raises(ValueError, match="dim 5, but this SliderSpace was fitted on dim 12"):
        space.transform(np.ones((3, 5)))
    good = np.random.default_rng(0).normal(size=(20, 12))
    with pytest.raises(ValueError, match="reference regime 'base' is not among"):
        space.activation({"distilled": good})
    with pytest.raises(ValueError, match="embeddings of 'distilled': need at least 2"):
        space.activation({"base": good, "distilled": good[:1]})
    with pytest.raises(ValueError, match="embeddings of 'distilled' hold NaN"):
        space.activation({"base": good, "distilled": np.where(np.eye(20, 12) > 0, np.nan, good)})
    with pytest.raises(ValueError, match="confidence"):
        space.activation({"base": good}, confidence=95)
    with pytest.raises(ValueError, match="is empty"):
        space.activation({})


# ------------------------------------------------------------------------------------------------------------
# files and rows


def test_save_load_round_trip(tmp_path, planted_space):
    space, _ = planted_space
    path = space.save(tmp_path / "space.safetensors")
    loaded = SliderSpace.load(path)
    assert (loaded.n_directions, loaded.normalize, loaded.solver) == (3, False, "auto")
    assert (loaded.n_samples_, loaded.n_features_in_) == (space.n_samples_, space.n_features_in_)
    assert loaded.total_variance_ == space.total_variance_
    for name in ("components_", "explained_variance_", "explained_variance_ratio_", "mean_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(space, name))
    x = np.random.default_rng(12).normal(size=(10, 12))
    np.testing.assert_array_equal(loaded.transform(x), space.transform(x))
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


def test_load_rejects_other_files(tmp_path):
    from safetensors.numpy import save_file

    save_file({"weight": np.ones(3)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ValueError, match="not a SliderSpace file"):
        SliderSpace.load(tmp_path / "lora.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        SliderSpace.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SliderSpace.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not fitted yet"):
        SliderSpace(2).save(tmp_path / "unfitted.safetensors")


def test_activation_rows_have_required_columns_and_names(tmp_path, planted_space):
    space, _ = planted_space
    regimes = regimes_with_shrunk_direction(200, np.random.default_rng(13))
    result = space.activation(regimes, n_boot=100, n_perm=100)
    assert isinstance(result, ActivationResult)
    rows = validate_rows(result.rows("a photo of a dog", embedder="test"))
    assert all(set(REQUIRED_COLUMNS) <= set(row) and row["embedder"] == "test" for row in rows)
    metrics = {(row["regime"], row["metric"]) for row in rows}
    assert ("base", "variance_dir_2") in metrics and ("base", "variance_top_3") in metrics
    assert not any(r == "base" and "share" in m for r, m in metrics)  # no comparison with itself
    for regime in ("same", "shrunk"):
        for name in (
            "variance_dir_0",
            "variance_share_dir_1",
            "variance_log_ratio_dir_2",
            "variance_share_top_3",
        ):
            assert (regime, name) in metrics
    assert len(rows) == 3 * 4 + 2 * 2 * 4
    by_key = {(row["regime"], row["metric"]): row for row in rows}
    log_ratio = by_key[("shrunk", "variance_log_ratio_dir_0")]
    assert log_ratio["p_value"] == result.p_value[2, 0] and log_ratio["test"] == "paired permutation"
    assert log_ratio["reference"] == "base" and log_ratio["paired"] is True and log_ratio["direction"] == 0
    share = by_key[("shrunk", "variance_share_dir_0")]
    assert (share["value"], share["ci_low"], share["ci_high"]) == (result.share[2, 0], *result.share_ci[2, 0])
    assert share["n"] == 200 and "p_value" not in share
    assert "direction" not in by_key[("shrunk", "variance_top_3")]
    write_metrics(tmp_path, rows)
    assert len(read_metrics(tmp_path)) == len(rows)


def test_explained_variance_rows(planted_space):
    space, _ = planted_space
    rows = validate_rows(space.explained_variance_rows("a photo of a dog", regime="base", embedder="test"))
    assert len(rows) == 2 * 3
    ratios = [row["value"] for row in rows if row["metric"].startswith("explained_variance_ratio_dir_")]
    cumulative = [
        row["value"] for row in rows if row["metric"].startswith("cumulative_explained_variance_dir_")
    ]
    np.testing.assert_allclose(ratios, space.explained_variance_ratio_)
    np.testing.assert_allclose(cumulative, np.cumsum(space.explained_variance_ratio_))
    assert cumulative[-1] <= 1 and all(row["n"] == 50_000 and row["regime"] == "base" for row in rows)
    assert [row["direction"] for row in rows] == [0, 0, 1, 1, 2, 2]
