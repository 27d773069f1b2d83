"""`conceptspace diagnose` on the shipped testbed: the rows and their intervals, the per-step curves, the hybrid
sweep, a recommendation that holds across two seed sets, the call it prints, the report and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conceptspace import Base, Distilled, load_pair, schedule_of
from conceptspace.cli import app
from conceptspace.diagnose import BASE_AT_STUDENT, X0_METRIC, boundary_name, diagnose, hybrid_name

STEPS = 4  # the testbed student's
FAST = dict(base=Base(steps=8), n_boot=200, n_perm=200, progress=False, images_kept=2)  # a shorter base: fast


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The testbed's networks are too small to gain from a second thread, and on a busy 2-core machine two threads
    spin against other processes (tens of times slower); this module runs on one and gives the setting back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair():
    return load_pair("shapes", "dmd", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def runs(pair, tmp_path_factory):
    """The diagnosis on two disjoint seed sets."""
    return [
        diagnose(pair, ["a shape"], range(first, first + 12), tmp_path_factory.mktemp(f"diag{first}"), **FAST)
        for first in (0, 1000)
    ]


def test_every_row_has_an_interval_that_holds_its_value(runs):
    rows = runs[0].rows
    assert rows
    for row in rows:
        assert row["ci_low"] - 1e-9 <= row["value"] <= row["ci_high"] + 1e-9, row


def test_x0_diversity_is_measured_at_every_student_step_for_the_student_and_the_base(runs):
    rows = [r for r in runs[0].rows if r["metric"] == X0_METRIC]
    for regime in ("distilled", "base", BASE_AT_STUDENT):
        assert sorted(r["step"] for r in rows if r["regime"] == regime) == list(range(STEPS))
    student_timesteps = [r["timestep"] for r in rows if r["regime"] == "distilled"]
    assert [
        r["timestep"] for r in rows if r["regime"] == BASE_AT_STUDENT
    ] == student_timesteps  # the same ones
    base_rows = [r for r in rows if r["regime"] == "base"]
    assert all("base_step" in r and "base_timestep" in r for r in base_rows)  # which base step stood in
    commitment = [r for r in runs[0].rows if r["metric"] == "commitment" and r["regime"] == "distilled"]
    assert [r["step"] for r in commitment] == list(range(STEPS))
    assert commitment[-1]["value"] == pytest.approx(1.0, abs=1e-4)  # the last x̂0 is the final image


def test_the_sweep_has_a_row_per_k_with_its_cost_and_the_references(runs):
    result = runs[0]
    ks = list(range(1, STEPS))
    assert [c.k for c in result.choices if c.boundary is None] == ks
    final = {r["regime"]: r for r in result.rows if r["metric"] == "pairwise_distance"}
    for k in ks:
        assert final[hybrid_name(k)]["k"] == k
        assert final[hybrid_name(k)]["evaluations"] == STEPS  # the hybrid's base steps run without CFG
        assert final[hybrid_name(k)]["base_evaluations"] == k
        diff = [r for r in result.rows if r["regime"] == f"{hybrid_name(k)} - base"]
        assert len(diff) == 1 and diff[0]["metric"] == "diff_pairwise_distance"
    assert final["base"]["evaluations"] == 2 * 8  # CFG: two evaluations a step
    assert final["distilled"]["evaluations"] == STEPS
    assert result.base["value"] == final["base"]["value"]


def test_each_boundary_runs_the_bases_own_steps_above_the_students_kth_timestep(pair, runs):
    student = [s.timestep for s in schedule_of(Distilled(), pair)]
    base = [s.timestep for s in schedule_of(Base(steps=8), pair)]
    boundaries = [c for c in runs[0].choices if c.boundary is not None]
    assert [c.boundary for c in boundaries] == student[
        1:STEPS
    ]  # every hand-off that leaves the student a step
    final = {r["regime"]: r for r in runs[0].rows if r["metric"] == "pairwise_distance"}
    for choice in boundaries:
        above = sum(t > choice.boundary for t in base)  # counted from the two schedules, not from the regime
        assert choice.base_evaluations == above and choice.evaluations == above + STEPS - choice.k
        row = final[boundary_name(choice.boundary)]
        assert row["boundary"] == choice.boundary and row["k"] == choice.k


def test_the_recommendation_is_a_k_of_the_sweep_and_holds_across_seed_sets(runs):
    first, second = runs
    for result in runs:
        assert 1 <= result.k <= STEPS - 1
        assert result.choice.label in result.recommendation
        if result.reaches_base:  # nothing cheaper reaches the base
            assert result.choice.reaches_base
            assert all(
                not c.reaches_base for c in result.choices if c.evaluations < result.choice.evaluations
            )
    # the issue's acceptance: the same k, or the two recommended hybrids' diversity intervals overlap
    a, b = first.choice, second.choice
    assert a.k == b.k or (a.ci_low <= b.ci_high and b.ci_low <= a.ci_high)


def test_the_call_runs_the_hybrid_that_was_measured(pair, runs):
    from conceptspace import sample

    for result in runs:
        namespace: dict = {}
        exec(result.call.replace('"your prompt"', '"a shape"'), namespace)  # noqa: S102 - our own one line
        measured = sample(pair, "a shape", result.regime, seeds=range(4), progress=False).images
        pixels = [np.asarray(image) for image in namespace["images"]]
        assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(pixels, measured, strict=True))
    assert (
        runs[0].calls["sample"] == runs[0].call and "DiversityPipeline(" in runs[0].calls["DiversityPipeline"]
    )
    # diffusers has no modular pipeline for the testbed's SD-1-style pair
    assert "modular" not in runs[0].calls


def test_run_json_metrics_and_the_report_with_its_curves(runs):
    out = runs[0].out_dir
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "diagnose" and run["recommendation"]["k"] == runs[0].k
    assert (out / "metrics.json").is_file() and (out / "metrics.csv").is_file()
    assert runs[0].report == out / "report.html" and runs[0].report.is_file()
    html = runs[0].report.read_text()
    assert "curve-x0_pairwise_distance.png" in html and "curve-commitment.png" in html
    assert (out / "assets" / "figures" / "curve-x0_pairwise_distance.png").is_file()


def test_several_prompts_are_decided_on_their_mean(pair, tmp_path):
    from conceptspace.results import ALL_PROMPTS

    fast = FAST | dict(base=Base(steps=4), n_boot=50, n_perm=50, report=False, images_kept=0)
    result = diagnose(
        pair, ["a shape", "a red shape"], range(6), tmp_path, max_k=STEPS, boundaries=False, **fast
    )
    assert [c.k for c in result.choices] == list(range(1, STEPS + 1))  # max_k may give the base every step
    mean = {
        r["regime"]: r
        for r in result.rows
        if r["prompt"] == ALL_PROMPTS and r["metric"] == "pairwise_distance"
    }
    assert result.choice.value == mean[hybrid_name(result.k)]["value"]
    assert {r["prompt"] for r in result.rows} == {"a shape", "a red shape", ALL_PROMPTS}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(max_k=5), "max_k must be"),
        (dict(max_k=0), "max_k must be"),
        (dict(seeds=[3]), "at least 2 seeds"),
        (dict(seeds=[1, 1]), "seeds repeat"),
        (dict(prompts=[]), "at least one prompt"),
        (dict(base="base"), "base must be a Base"),
    ],
)
def test_bad_input_fails_with_one_clear_line(pair, tmp_path, kwargs, message):
    arguments = dict(prompts=["a shape"], seeds=range(4)) | kwargs
    with pytest.raises(ValueError, match=message):
        diagnose(
            pair, arguments.pop("prompts"), arguments.pop("seeds"), tmp_path, **arguments, progress=False
        )


def test_the_command_prints_the_table_the_recommendation_and_the_call(tmp_path):
    out = tmp_path / "cli"
    args = [
        "diagnose",
        "--base",
        "shapes",
        "--student",
        "dmd",
        "--prompt",
        "a shape",
        "-n",
        "8",
        "--steps",
        "8",
    ]
    result = CliRunner().invoke(
        app, [*args, "--n-boot", "100", "--out", str(out), "--quiet", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "reaches base?" in result.output
    assert "recommendation: k=" in result.output or "recommendation: boundary t=" in result.output
    assert "sample: from conceptspace import Hybrid, load_pair, sample" in result.output
    assert "DiversityPipeline: from conceptspace import DiversityPipeline" in result.output
    assert (out / "report.html").is_file()


def test_the_command_checks_its_options_before_loading(tmp_path):
    runner = CliRunner()
    for args, message in [
        (["--max-k", "9"], "--max-k must be between 1 and the student's 4 steps"),
        (["-n", "1"], "-n must be at least 2"),
    ]:
        result = runner.invoke(
            app, ["diagnose", "--base", "shapes", "--student", "dmd", "--prompt", "a", *args]
        )
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(app, ["diagnose", "--base", "shapes", "--prompt", "a"])
    assert result.exit_code == 2 and "needs a --student" in result.output
