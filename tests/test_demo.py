"""`conceptspace demo` and the testbed embedder: the shipped pair end to end at small n."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conceptspace.embeddings import load_embedder
from conceptspace.testbed.data import COLOUR_NAMES, from_tensor, make_batch, sample_factors
from conceptspace.testbed.diversity import paired_difference, paired_difference_rows


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)


ROOT = Path(__file__).resolve().parent.parent


def test_testbed_clip_embedder_separates_colours():
    embedder = load_embedder("testbed:clip", device="cpu", progress=False)
    assert embedder.dim == 64 and not embedder.has_text
    by_colour = {
        colour: embedder.embed_images(from_tensor(make_batch(16, 1, fixed={"colour": colour}).images))
        for colour in COLOUR_NAMES[:2]
    }
    red, other = by_colour.values()
    assert torch.allclose(red.norm(dim=1), torch.ones(16))
    within = (red @ red.T).mean().item()
    across = (red @ other.T).mean().item()
    assert within > across + 0.1


def test_testbed_embedder_spec_errors(tmp_path):
    from conceptspace.embeddings import EmbedderNotFoundError, EmbedderSpecError

    with pytest.raises(EmbedderSpecError, match="testbed:clip.*testbed:probe"):
        load_embedder("testbed:vit")
    with pytest.raises(EmbedderNotFoundError, match="config.json"):
        load_embedder(f"testbed:clip:{tmp_path}")


def test_paired_difference_of_factor_diversity():
    everything = sample_factors(200, 0)
    circles = sample_factors(200, 0, fixed={"shape": "circle"})
    drop = paired_difference(circles, everything, "entropy_shape")
    assert drop.value == pytest.approx(-math.log2(3), abs=0.05)
    assert drop.ci_low <= drop.value <= drop.ci_high < 0 and drop.p_value < 0.01
    same = paired_difference(everything, everything, "std_size")
    assert same.value == same.ci_low == same.ci_high == 0.0
    rows = paired_difference_rows(
        {"base": everything, "distilled": circles},
        "a shape",
        [("distilled", "base")],
        ["entropy_shape", "std_x"],
    )
    assert [(r["regime"], r["metric"]) for r in rows] == [
        ("distilled - base", "diff_entropy_shape"),
        ("distilled - base", "diff_std_x"),
    ]
    with pytest.raises(ValueError, match="same size"):
        paired_difference(everything, circles[:10], "std_x")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`conceptspace demo` at n = 4 on one prompt: its folder and the CLI's result."""
    from conceptspace.cli import app

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "-n", "4", "--prompt", "a circle", "--n-boot", "50", "-q"]
    )
    assert result.exit_code == 0, result.output
    return out, result


def test_demo_cli_writes_everything(demo_run):
    from conceptspace.demo import DEMO_BASE_STEPS
    from conceptspace.results import read_metrics

    out, result = demo_run
    lines = result.output.splitlines()
    assert lines[0].startswith("'a circle': layout spread_position (px), appearance entropy_colour (bits)")
    assert any(line.split()[:3] == ["distilled", "-", "base"] for line in lines)
    assert f"{out / 'report.html'}" in result.output
    rows = read_metrics(out)
    embedders = {row.get("embedder") for row in rows}
    assert {"probe", "testbed:clip"} <= embedders
    probe = [r for r in rows if r.get("embedder") == "probe" and r["metric"] == "entropy_shape_colour"]
    assert sorted(r["regime"] for r in probe) == ["base", "distilled", "hybrid", "replace-final"]
    blank = {r["regime"]: r for r in rows if r["metric"] == "blank_share"}  # blank images are left out
    assert set(blank) == {"base", "distilled", "hybrid", "replace-final"}
    assert all(r["n"] == 4 - round(4 * blank[r["regime"]]["value"]) for r in probe)
    assert all(r["world"] == pytest.approx(math.log2(6)) for r in probe)
    commitment = [r for r in rows if r["metric"] == "commitment"]
    assert {r["similarity"] for r in commitment} == {"testbed:clip"}  # whole image, the paper's curve
    base_steps = [r for r in commitment if r["regime"] == "base"]
    assert len(base_steps) == DEMO_BASE_STEPS and f"{DEMO_BASE_STEPS} Euler steps, not 50" in result.output
    per_factor = [r for r in rows if r["metric"] == "commitment_shape_colour"]
    assert all(0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1 for r in per_factor)  # shares of samples
    assert {r["metric"] for r in rows if r.get("step") is not None} >= {
        "fixed_spread_position",
        "commitment_position",
    }
    # a verdict per claim and family, in the output and at the top of the report
    for claim in ("collapse", "first-step commitment", "hybrid restores", "causal"):
        for family in ("layout", "appearance"):
            assert any(line.startswith(f"{claim} [{family}, ") for line in lines), (claim, family)
    # the table and the verdicts quote the same rows: every difference a verdict reads is in the table, equal
    from conceptspace.verdicts import verdicts

    quoted = [r for v in verdicts(rows) for r in v.rows if " - " in r["regime"]]
    assert quoted
    for row in quoted:
        cell = f"{row['value']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
        assert any(
            line.split("  ")[1].strip() == row["regime"] and cell in line for line in lines if "  " in line
        ), row
    # analyses/testbed_science.py's markdown tables (docs/testbed.md's) quote the same rows
    spec = importlib.util.spec_from_file_location("testbed_science", ROOT / "analyses" / "testbed_science.py")
    science = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(science)
    markdown = "\n".join(science.tables(rows, ["a circle"], 4))
    collapse = next(
        r for r in quoted if r["regime"] == "distilled - base" and r["metric"] == "diff_spread_position"
    )
    assert f"{collapse['value']:+.2f}".replace("-", "−") in markdown
    html = (out / "report.html").read_text()
    assert html.index('id="verdicts"') < html.index('id="overview"')
    assert "<b>blank samples</b>" in html and f"distilled {blank['distilled']['value']:.0%} of 4" in html
    assert len(list((out / "distilled").glob("*.png"))) >= 4
    assert (out / "report.html").stat().st_size > 1000 and (out / "run.json").exists()
    assert json.loads((out / "run.json").read_text())["command"] == "demo"
    assert "`demo` run" in html and "`generate` run" not in html


def test_at_1280_px_the_demo_report_fits_and_its_legends_are_whole(demo_run, browser):
    """Every table, image, x̂0 strip and figure of the demo's report fits a 1280 px window, and no legend is cut
    off inside its figure (the differences figure once lost its first entry)."""
    from page_checks import clipped_legends, open_page, overflow

    out, _ = demo_run
    assert [e for e in open_page(browser, out / "report.html") if e["level"] == "SEVERE"] == []
    assert overflow(browser) == []
    drawn, *clipped = clipped_legends(out)
    assert drawn != "0 figures" and clipped == []


def test_demo_refuses_too_few_samples(tmp_path):
    from conceptspace.cli import app

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "-n", "1"])
    assert result.exit_code == 2 and "at least 2" in result.output
    assert not (tmp_path / "d").exists()


def test_cli_demo_defaults_are_the_library_s():
    import inspect

    from conceptspace.cli import demo
    from conceptspace.demo import DEMO_N, run_demo

    assert inspect.signature(demo).parameters["n"].default == DEMO_N
    assert inspect.signature(run_demo).parameters["n"].default == DEMO_N
