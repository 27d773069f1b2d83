"""Commitment per factor family on x̂0 trajectories: checked on rendered images with known factors and against
hand-written formulas."""

import numpy as np
import pytest
import torch

from conceptspace.testbed.commitment import TRAJECTORY_METRICS, r_squared, trajectory_rows
from conceptspace.testbed.data import render, sample_factors
from conceptspace.testbed.diversity import factor_diversity, restored_share
from conceptspace.trajectories import at_timestep


def as_decoded(*steps_of_pixels):
    """uint8 (n, H, W, 3) images per step → (n, steps, 3, H, W) floats in [0, 1], as decode_trajectory gives."""
    stacked = np.stack(steps_of_pixels, axis=1)
    return torch.from_numpy(stacked).permute(0, 1, 4, 2, 3).float() / 255


def test_r_squared_matches_a_least_squares_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = x @ np.array([[0.5, 0.1], [-0.2, 0.8]]) + 3 + rng.normal(scale=0.5, size=(200, 2))
    design = np.column_stack([np.ones(200), x])
    residual = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    expected = 1 - (residual**2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert r_squared(y, x, np.arange(200)[None])[0] == pytest.approx(expected, abs=1e-10)
    assert r_squared(y, y, np.arange(200)[None])[0] == pytest.approx(1.0)
    assert r_squared(y, np.ones((200, 2)), np.arange(200)[None])[0] == pytest.approx(0.0, abs=1e-12)
    # independent predictor: R² near 0 (expected 2/n for two regressors)
    assert r_squared(y, rng.normal(size=(200, 2)), np.arange(200)[None])[0] < 0.05


def test_rows_on_a_trajectory_that_is_final_from_the_first_step():
    factors = sample_factors(40, 3)
    images = render(factors)
    schedule = [{"timestep": 999, "model": "student"}, {"timestep": 499, "model": "student"}]
    rows = trajectory_rows("a shape", "distilled", as_decoded(images, images), schedule, n_boot=200)
    assert {r["metric"] for r in rows} == set(TRAJECTORY_METRICS)
    assert all(r["family"] == TRAJECTORY_METRICS[r["metric"]] for r in rows)
    for row in rows:  # identical steps: every measure says "fully committed"
        assert row["value"] == pytest.approx(1.0) and row["n"] == 40, row
    assert [r["timestep"] for r in rows if r["metric"] == "commitment_position"] == [999, 499]


def test_rows_on_an_unrelated_first_step_show_no_per_seed_commitment():
    final = render(sample_factors(120, 1))
    unrelated = render(sample_factors(120, 2))
    narrow = sample_factors(120, 5)
    narrow.x[:], narrow.y[:] = 16.0, 16.0  # every object in the centre: no position spread yet
    schedule = [{"timestep": t, "model": "base"} for t in (999, 1)]
    rows = {
        (r["metric"], r["step"]): r
        for r in trajectory_rows("a shape", "base", as_decoded(unrelated, final), schedule, n_boot=300)
    }
    assert rows["commitment_position", 0]["ci_low"] < 0.1 and rows["commitment_position", 0]["value"] < 0.1
    match = rows["commitment_shape_colour", 0]
    assert match["value"] < 0.2 and match["ci_low"] <= match["value"] <= match["ci_high"]
    # the same spread as the final images, though no seed agrees: distributional commitment is not per seed
    assert 0.8 < rows["fixed_spread_position", 0]["value"] < 1.25
    centred = {
        (r["metric"], r["step"]): r
        for r in trajectory_rows("a shape", "base", as_decoded(render(narrow), final), schedule, n_boot=300)
    }
    assert centred["fixed_spread_position", 0]["value"] < 0.3  # the probe reads the (near-)constant centre


def test_blank_final_images_are_left_out():
    factors = sample_factors(10, 4)
    images = render(factors)
    blank = images.copy()
    blank[:3] = images[:3, :1, :1]  # three images of their corner colour only
    schedule = [{"timestep": 999, "model": "student"}, {"timestep": 1, "model": "student"}]
    rows = trajectory_rows("a shape", "distilled", as_decoded(images, blank), schedule, n_boot=0)
    assert {r["n"] for r in rows} == {7}
    with pytest.raises(ValueError, match="one step per schedule entry"):
        trajectory_rows("a shape", "distilled", as_decoded(images, images), schedule[:1])


def test_at_timestep_picks_the_nearest_step():
    curve = [{"step": s, "timestep": t} for s, t in enumerate((914, 831, 748, 665))]
    assert at_timestep(curve, 999)["step"] == 0 and at_timestep(curve, 749)["step"] == 2
    assert at_timestep([], 999) is None


def test_restored_share_is_the_gap_ratio_with_a_joint_interval():
    world = sample_factors(400, 0)
    collapsed = sample_factors(400, 1)
    collapsed.x[:] = 16 + (collapsed.x - 16) * 0.2  # a student whose objects cluster near the centre
    collapsed.y[:] = 16 + (collapsed.y - 16) * 0.2
    half = sample_factors(400, 2)
    half.x[:] = 16 + (half.x - 16) * 0.6
    half.y[:] = 16 + (half.y - 16) * 0.6
    factors = {"base": world, "distilled": collapsed, "hybrid": half}
    spread = {
        name: factor_diversity(f, ["spread_position"], n_boot=0)["spread_position"].value
        for name, f in factors.items()
    }
    estimate = restored_share(factors, "spread_position", "hybrid", "distilled", "base", n_boot=400)
    expected = (spread["hybrid"] - spread["distilled"]) / (spread["base"] - spread["distilled"])
    assert estimate.value == pytest.approx(expected)
    assert 0.4 < estimate.value < 0.6  # 0.6 − 0.2 of 1 − 0.2 of the world's spread
    assert estimate.ci_low < estimate.value < estimate.ci_high and estimate.ci_high - estimate.ci_low < 0.2
    assert restored_share(
        factors, "spread_position", "base", "distilled", "base", n_boot=0
    ).value == pytest.approx(1)
    with pytest.raises(ValueError, match="same seeds"):
        restored_share({**factors, "hybrid": half[:10]}, "spread_position", "hybrid", "distilled", "base")


def test_restored_share_interval_covers_the_population_share():
    """Spreads shrunk to 0.2 and 0.6 of the world's: the population share is exactly (0.6 − 0.2) / (1 − 0.2)."""

    def shrunk(seed, scale):
        f = sample_factors(100, seed)
        f.x[:], f.y[:] = 16 + (f.x - 16) * scale, 16 + (f.y - 16) * scale
        return f

    covered, widths = 0, []
    for repeat in range(150):
        factors = {
            "base": shrunk(3 * repeat, 1.0),
            "distilled": shrunk(3 * repeat + 1, 0.2),
            "hybrid": shrunk(3 * repeat + 2, 0.6),
        }
        e = restored_share(factors, "spread_position", "hybrid", "distilled", "base", n_boot=300, seed=repeat)
        covered += e.ci_low <= 0.5 <= e.ci_high
        widths.append(e.ci_high - e.ci_low)
    assert 0.88 <= covered / 150 <= 0.99
    assert 0.1 < np.median(widths) < 0.3
