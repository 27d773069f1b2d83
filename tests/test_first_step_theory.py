"""analyses/first_step_theory.py (claim 7): an MSE one-step student keeps only tr Var(E[x0|x_t]), so at t=999 it
collapses to the mean, and the loss shrinks with t. Runs the script's quick sizes (a few seconds)."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "analyses" / "first_step_theory.py"


@pytest.fixture(scope="module")
def fst():
    # analyses/ is a folder of scripts, not a package: load the file itself.
    spec = importlib.util.spec_from_file_location("first_step_theory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(fst):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fst.run(seed=0, **fst.QUICK)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def value(fst, result):
    return fst.lookup(result.rows)


def test_rows_are_tidy(result):
    assert result.rows
    for row in result.rows:
        assert set(row) == {"prompt", "regime", "metric", "value", "ci_low", "ci_high", "n"}
        assert row["prompt"] == "gaussian-mixture-2d"
        assert math.isfinite(row["value"])
        if not math.isnan(row["ci_low"]):
            assert row["ci_low"] <= row["ci_high"]


def test_posterior_obeys_the_law_of_total_variance(fst):
    # tr Var(E[x0|x_t]) computed directly must equal tr Var(x0) − E[tr Var(x0|x_t)]: a wrong posterior breaks this.
    alpha_bar = float(fst.scheduler().alphas_cumprod[499])
    rng = np.random.default_rng(1)
    mean, trace_var = fst.posterior(fst.add_noise(fst.sample_data(rng, 50_000), alpha_bar, rng), alpha_bar)
    assert fst.trace_var(mean) == pytest.approx(fst.DATA_TRACE_VAR - trace_var.mean(), rel=0.02)


def test_sensitivity_matches_diffusers_and_is_largest_first(value, fst):
    sensitivity = [value[(f"t={t}", "eps_sensitivity")]["value"] for t in fst.DMD2_TIMESTEPS]
    for t, expected in zip(fst.DMD2_TIMESTEPS, sensitivity, strict=True):
        assert value[(f"t={t}", "eps_sensitivity_diffusers")]["value"] == pytest.approx(expected, rel=1e-3)
    assert sensitivity == sorted(sensitivity, reverse=True)
    assert sensitivity[0] > 14  # ᾱ_999 ≈ 0.0047 in Stable Diffusion's schedule


def test_student_at_999_keeps_only_the_bound(value, fst):
    student, bound = value[("t=999", "student_trace_var")], value[("t=999", "bound_trace_var")]
    # The CIs cover evaluation and Monte Carlo noise, not training noise: seeds 0-4 land within 15% of the bound.
    tolerance = (
        (student["ci_high"] - student["ci_low"]) / 2
        + (bound["ci_high"] - bound["ci_low"]) / 2
        + 0.25 * bound["value"]
    )
    assert abs(student["value"] - bound["value"]) < tolerance
    assert student["value"] < 0.05 * fst.DATA_TRACE_VAR
    assert value[("t=999", "student_fraction_lost")]["ci_low"] > 0.95
    assert value[("t=999", "bound_fraction_lost")]["value"] > 0.98


def test_loss_shrinks_with_t(value, fst):
    for kind in ("bound", "student"):
        lost = [value[(f"t={t}", f"{kind}_fraction_lost")]["value"] for t in fst.DMD2_TIMESTEPS]
        assert all(a > b + 0.05 for a, b in zip(lost[:-1], lost[1:], strict=True)), lost  # .99 .89 .54 .13
        assert lost[-1] < 0.2, (kind, lost)


def test_modes_collapse_at_999_but_not_at_249(value):
    first, last = value[("t=999", "student_mode_entropy_bits")], value[("t=249", "student_mode_entropy_bits")]
    assert first["ci_high"] < 0.1
    assert last["ci_low"] > 1.5
    assert value[("data", "data_mode_entropy_bits")]["value"] > 2.9  # log2(8) = 3
    # The plain nearest-mode entropy cannot see the collapse: the collapsed outputs point every way.
    assert value[("t=999", "student_nearest_mode_entropy_bits")]["value"] > 2.9


def test_outputs_and_figure(result, fst, tmp_path):
    assert result.student_outputs[999].shape == (fst.QUICK["n_eval"], 2)
    fst.plot(result, fst.DMD2_TIMESTEPS, tmp_path / "fig.png", seed=0)
    fst.write_rows(tmp_path / "results.json", result.rows)
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    assert (tmp_path / "results.json").read_text().count('"metric"') == len(result.rows)
