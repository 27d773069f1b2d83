"""LoRA transfer: a LoRA applied at several scales to the base and its students, paired seeds, distances to
scale 0 with CIs, the transfer ratio, grids and a report; a LoRA for another architecture is refused; the UNets are
left exactly as they were."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image
from typer.testing import CliRunner

from conceptspace import testing
from conceptspace.ground_truth import ground_truth_for
from conceptspace.lora import LoRA, LoRAMismatchError, LoRAWeights, write_lora
from conceptspace.models import load_pair
from conceptspace.testbed.data import LEVELS
from conceptspace.transfer import (
    TransferError,
    _rank_correlation,
    parse_probe_factor,
    parse_scales,
    parse_seeds,
    transfer,
)

torch.set_num_threads(1)

ATTN = "down_blocks.1.attentions.0.transformer_blocks.0"
TARGETS = (
    f"{ATTN}.attn1.to_q",
    f"{ATTN}.attn2.to_v",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "up_blocks.0.resnets.1.conv1",
)


def random_lora(unet, targets=TARGETS, *, seed=0, rank=2, size=1.0) -> LoRA:
    """Random nonzero factors for ``targets`` of ``unet`` (large enough to change the images visibly)."""
    return testing.random_lora(unet, targets, seed=seed, ranks=(rank,), size=size)


@pytest.fixture(scope="module")
def pair():
    """Our own tiny pair (the session one must not be touched): transfer applies and removes hooks on it."""
    return load_pair("tiny-sdxl", "tiny-dmd", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def lora_file(pair, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lora") / "slider.safetensors"
    return write_lora(random_lora(pair.base_network), path)


def unet_outputs(pair) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    hidden = torch.randn(1, 5, 64, generator=g)
    added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.randn(1, 6, generator=g)}
    outputs = []
    with torch.no_grad():
        for unet in (pair.base_network, pair.student_network):
            outputs.append(unet(x, torch.tensor(500.0), hidden, added_cond_kwargs=added).sample)
    return outputs


@pytest.fixture(scope="module")
def run(pair, lora_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer")
    before = unet_outputs(pair)
    rows = transfer(
        lora_file,
        "tiny-sdxl",
        ["tiny-dmd"],
        "a red circle",
        "-1,0,1",
        [0, 1],
        out,
        embedder="pixels:32",
        progress=False,
        loader=lambda base, student: pair,
    )
    return out, rows, before


def test_parsing():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,1,5") == [0, 1, 5]
    assert parse_seeds("0-1,7") == [0, 1, 7]
    assert parse_scales("-2,-1,0,1,2") == [-2.0, -1.0, 0.0, 1.0, 2.0]
    with pytest.raises(TransferError, match="do not include 0"):
        parse_scales("-1,1")
    with pytest.raises(TransferError, match="seeds"):
        parse_seeds("a-b")


def test_files(run):
    out, _, _ = run
    for model in ("tiny-sdxl", "tiny-dmd"):
        assert (out / f"grid_{model}.png").is_file()
        for scale in ("-1", "0", "+1"):
            assert sorted(p.name for p in (out / f"{model}@{scale}").glob("*.png")) == [
                "000_0.png",
                "000_1.png",
            ]
    for name in ("metrics.json", "metrics.csv", "run.json", "report.html"):
        assert (out / name).is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "transfer" and record["scales"] == [-1.0, 0.0, 1.0]
    assert any("no text tower" in note for note in record["notes"])
    assert record["models"]["tiny-dmd"]["coverage"]["complete"]
    assert "tiny-dmd@+1" in (out / "report.html").read_text()


def test_distances_and_ratio(run):
    _, rows, _ = run
    distance = {(r["model"], r["scale"]): r for r in rows if r["metric"] == "distance_to_scale_0"}
    assert set(distance) == {(m, s) for m in ("tiny-sdxl", "tiny-dmd") for s in (-1.0, 0.0, 1.0)}
    for (_, scale), row in distance.items():
        assert row["n"] == 2 and row["embedder"] == "pixels:32"
        if scale == 0:
            assert row["value"] == 0.0
        else:
            assert row["value"] > 0 and row["ci_low"] <= row["value"] <= row["ci_high"]
    ratios = [r for r in rows if r["metric"] == "transfer_ratio"]
    assert {r["scale"] for r in ratios} == {-1.0, 1.0}
    for row in ratios:
        assert row["regime"] == "tiny-dmd / tiny-sdxl"
        expected = (
            distance[("tiny-dmd", row["scale"])]["value"] / distance[("tiny-sdxl", row["scale"])]["value"]
        )
        assert row["value"] == pytest.approx(expected)
    assert not [r for r in rows if r["metric"] == "clip_score_change"]  # pixels has no text tower


def test_report_draws_each_model_against_the_scale_and_fits_1280_px(run, browser):
    """The report plots distance against the scale (one line per model) and the transfer ratio per scale, gives
    each model one colour everywhere, puts the ratio at every scale in its glance table, and fits the page."""
    from page_checks import clipped_legends, open_page, overflow

    out, rows, _ = run
    assert {p.name for p in (out / "assets" / "figures").glob("*.png")} >= {"scale.png", "ratio.png"}
    html = (out / "report.html").read_text()
    glance = html[
        html.index('class="card headline"') : html.index("</table>", html.index('class="card headline"'))
    ]
    ratio_line = next(line for line in glance.split("<tr>") if line.startswith("<td>transfer_ratio"))
    for row in (r for r in rows if r["metric"] == "transfer_ratio"):
        assert f"<b>{row['value']:.4g}</b>" in ratio_line
    colours = {
        name: set(re.findall(rf'class="regime" style="--c: (#[0-9a-f]{{6}})">{re.escape(name)}[@ <]', html))
        for name in ("tiny-sdxl", "tiny-dmd")
    }
    assert all(len(found) == 1 for found in colours.values()) and colours["tiny-sdxl"] != colours["tiny-dmd"]
    open_page(browser, out / "report.html")
    assert overflow(browser) == []
    drawn, *clipped = clipped_legends(out)
    assert drawn != "0 figures" and clipped == []


def test_a_rerun_reuses_the_images_the_same_sweep_made_and_samples_only_the_rest(pair, lora_file, tmp_path):
    """Two seeds, then three into the same folder: the first two seeds' images (every model and scale) are kept
    byte for byte, untouched, and the metrics match a fresh run's; another LoRA reuses nothing."""
    from conceptspace.lora import lora_digest, read_lora

    def sweep(out, seeds, lora=lora_file):
        return transfer(lora, "tiny-sdxl", ["tiny-dmd"], "a red circle", "0,1", seeds, out, embedder="pixels:32",
                        progress=False, loader=lambda base, student: pair)  # fmt: skip

    out = tmp_path / "sweep"
    sweep(out, [0, 1])
    kept = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in out.glob("*@*/*.png")}
    assert len(kept) == 2 * 2 * 2
    rows = sweep(out, [0, 1, 2])
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in kept} == kept
    assert len(list(out.glob("*@*/*.png"))) == 2 * 2 * 3
    fresh = sweep(tmp_path / "fresh", [0, 1, 2])
    assert [(r["metric"], r["regime"], r["value"]) for r in rows] == [
        (r["metric"], r["regime"], pytest.approx(r["value"], rel=1e-3, abs=1e-6)) for r in fresh
    ]  # seed 2 ran in a batch of its own there: a batch's float rounding may move a pixel by one level
    other = write_lora(random_lora(pair.base_network, seed=7), tmp_path / "other.safetensors")
    assert lora_digest(read_lora(other)) != lora_digest(read_lora(lora_file))
    sweep(out, [0, 1, 2], lora=other)
    assert all(path.stat().st_mtime_ns != stamp for path, (_, stamp) in kept.items())


def test_the_empty_prompt_sweeps_unconditional_samples(pair, lora_file, tmp_path):
    rows = transfer(lora_file, "tiny-sdxl", ["tiny-dmd"], "", "0,1", [0, 1], tmp_path, embedder="pixels:32",
                    progress=False, loader=lambda base, student: pair)  # fmt: skip
    assert {r["prompt"] for r in rows} == {""} and len(list(tmp_path.glob("tiny-dmd@+1/*.png"))) == 2


def test_handle_removed(run, pair):
    _, _, before = run
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pair.base_network.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pair.student_network.modules())
    fresh = load_pair("tiny-sdxl", "tiny-dmd", device="cpu", dtype=torch.float32)
    for after, expected, reference in zip(unet_outputs(pair), before, unet_outputs(fresh), strict=True):
        assert torch.equal(after, expected) and torch.equal(after, reference)


def test_mismatched_lora_refused(pair, tmp_path):
    good = random_lora(pair.base_network)
    # another architecture: the same module names with other widths (and one module the UNet lacks)
    modules = {
        name: LoRAWeights(down=torch.randn(2, w.down.shape[1] + 3, *w.down.shape[2:]), up=w.up, alpha=2.0)
        for name, w in list(good.modules.items())[:2]
    }
    modules.update(list(good.modules.items())[2:])
    bad = write_lora(LoRA(modules), tmp_path / "other.safetensors")
    with pytest.raises(LoRAMismatchError, match="does not fit tiny-sdxl's UNet.*2 of 4 modules fit"):
        transfer(bad, "tiny-sdxl", ["tiny-dmd"], "x", "0,1", [0, 1], tmp_path / "a", embedder="pixels:32",
                 progress=False, loader=lambda b, s: pair)  # fmt: skip
    rows = transfer(
        bad,
        "tiny-sdxl",
        ["tiny-dmd"],
        "x",
        "0,1",
        [0, 1],
        tmp_path / "b",
        embedder="pixels:32",
        allow_partial=True,
        progress=False,
        loader=lambda b, s: pair,
    )
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert record["models"]["tiny-sdxl"]["coverage"] == {"matched": 2, "total": 4, "complete": False}
    assert any(r["metric"] == "distance_to_scale_0" for r in rows)
    assert not any(m._forward_hooks for m in pair.base_network.modules())


def test_bad_arguments(lora_file, tmp_path):
    with pytest.raises(TransferError, match="do not include 0"):
        transfer(lora_file, "tiny-sdxl", ["tiny-dmd"], "x", "-1,1", [0, 1], tmp_path / "a", progress=False)
    with pytest.raises(TransferError, match="1 seed given: .* at least 2"):  # a CI needs two
        transfer(lora_file, "tiny-sdxl", ["tiny-dmd"], "x", "0,1", [0], tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="prompt is empty but for whitespace"):
        transfer(lora_file, "tiny-sdxl", ["tiny-dmd"], "  ", "0,1", [0, 1], tmp_path / "d", progress=False)
    with pytest.raises(FileNotFoundError, match="no LoRA"):
        transfer(tmp_path / "none.safetensors", "tiny-sdxl", ["tiny-dmd"], "x", "0,1", [0, 1], tmp_path / "b")


def test_cli(lora_file, tmp_path):
    from conceptspace.cli import app

    out = tmp_path / "cli"
    args = ["transfer", "--lora", str(lora_file), "--base", "tiny-sdxl", "--students", "tiny-dmd"]
    args += ["--prompt", "a red circle", "--scales", "0,1", "--seeds", "0-1", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--embedder", "pixels:32", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "distance to scale 0" in result.output and "tiny-dmd" in result.output
    assert "transfer ratio tiny-dmd / tiny-sdxl at +1" in result.output
    assert (out / "report.html").is_file()
    bad = CliRunner().invoke(app, [*args[:-6], "--prompt", "x", "--scales", "1,2", "--out", str(out)])
    assert isinstance(bad.exception, TransferError)


def _probe_readings(run_dir):
    """The probe's reading (with probabilities) of every image a transfer run saved, by (model, scale)."""
    from conceptspace.testbed.probe import load_probe

    probe = load_probe()
    run = json.loads((run_dir / "run.json").read_text())
    return {
        (record["model"], float(record["scale"])): probe.predict(
            np.stack(
                [np.asarray(Image.open(run_dir / item["path"]).convert("RGB")) for item in record["images"]]
            ),
            probabilities=True,
        )
        for record in run["regimes"].values()
    }


def test_testbed_probe_rows(tmp_path):
    shapes = load_pair("shapes", "dmd", device="cpu", dtype=torch.float32)
    lora = random_lora(shapes.base_network, targets=_attention_targets(shapes.base_network), size=0.5)
    # reverse: as if the LoRA had been trained on the student, so the ratio is base / student
    rows = transfer(lora, "shapes", ["dmd"], "a red circle", "0,1", [0, 1], tmp_path, progress=False,
                    reverse=True, loader=lambda b, s: shapes)  # fmt: skip
    probe_rows = {(r["model"], r["metric"]): r for r in rows if r["metric"].startswith("probe_")}
    read = _probe_readings(tmp_path)  # the probe on the images the run saved, per (model, scale)
    for model in ("shapes", "dmd"):
        for factor in ("size", "x", "y"):
            expected = (read[model, 1.0][factor] - read[model, 0.0][factor]).mean()
            assert probe_rows[model, f"probe_{factor}_change"]["value"] == pytest.approx(expected, abs=1e-9)
        for factor in ("shape", "colour"):
            expected = (read[model, 1.0][factor] != read[model, 0.0][factor]).mean()
            assert probe_rows[model, f"probe_{factor}_changed"]["value"] == pytest.approx(expected)
    assert any(r["metric"] == "transfer_ratio" and r["regime"] == "shapes / dmd" for r in rows)
    assert not any(r["metric"] == "clip_score_change" for r in rows)  # testbed:clip has no text tower
    assert not any(r["metric"].startswith("probe_factor") for r in rows)  # only when a factor is named


def test_testbed_probe_factor_rows(tmp_path):
    shapes = load_pair("shapes", "dmd", device="cpu", dtype=torch.float32)
    lora = random_lora(shapes.base_network, targets=_attention_targets(shapes.base_network), size=0.5)
    rows = transfer(lora, "shapes", ["dmd"], "a shape", "-1,0,1", [0, 1, 2], tmp_path, progress=False,
                    probe_factor="colour=red-blue", loader=lambda b, s: shapes)  # fmt: skip
    change = {(r["model"], r["scale"]): r for r in rows if r["metric"] == "probe_factor_change"}
    assert set(change) == {(m, s) for m in ("shapes", "dmd") for s in (-1.0, 1.0)}
    assert all(r["factor"] == "colour=red-blue" and r["n"] == 3 for r in change.values())
    # the change is P(red) − P(blue) at the scale minus at 0, read from the saved images by the probe
    red, blue = LEVELS["colour"].index("red"), LEVELS["colour"].index("blue")
    read = _probe_readings(tmp_path)
    score = {k: v["colour_probs"][:, red] - v["colour_probs"][:, blue] for k, v in read.items()}
    for (model, scale), row in change.items():
        assert row["value"] == pytest.approx((score[model, scale] - score[model, 0.0]).mean(), abs=1e-6)
    correlation = {r["model"]: r for r in rows if r["metric"] == "probe_factor_rank_correlation"}
    assert sorted(correlation) == ["dmd", "shapes"]
    for model, row in correlation.items():  # Spearman's rho of the score with the scale, averaged over seeds
        by_seed = np.stack([score[model, s] for s in (-1.0, 0.0, 1.0)], axis=1)
        rho = [scipy.stats.spearmanr([-1, 0, 1], seed_scores)[0] for seed_scores in by_seed]
        assert row["value"] == pytest.approx(np.mean(np.nan_to_num(rho)), abs=1e-6)
    ratios = [r for r in rows if r["metric"] == "probe_transfer_ratio"]
    assert {(r["regime"], r["model"], r["scale"]) for r in ratios} == {
        ("dmd / shapes", "dmd", s) for s in (-1, 1)
    }
    for r in ratios:  # the ratio of the two models' mean changes, as in the change rows
        expected = change[("dmd", r["scale"])]["value"] / change[("shapes", r["scale"])]["value"]
        assert r["value"] == pytest.approx(expected)
    slopes = {r["model"]: r["value"] for r in rows if r["metric"] == "probe_factor_slope"}
    for model in ("shapes", "dmd"):  # with scales -1, 0, 1 the slope is half the change from -1 to +1
        assert slopes[model] == pytest.approx(
            (change[(model, 1.0)]["value"] - change[(model, -1.0)]["value"]) / 2
        )
    (slope_ratio,) = [r for r in rows if r["metric"] == "probe_transfer_ratio_slope"]
    assert slope_ratio["value"] == pytest.approx(slopes["dmd"] / slopes["shapes"])


def test_parse_probe_factor():
    TESTBED = ground_truth_for("testbed")
    predictions = {
        "size": np.array([3.0, 5.0]),
        "colour_probs": np.array([[0.7, 0.1, 0.0, 0.0, 0.2, 0.0], [0.1, 0.0, 0.0, 0.0, 0.9, 0.0]]),
    }
    assert parse_probe_factor("size", TESTBED)(predictions).tolist() == [3.0, 5.0]
    assert parse_probe_factor("colour=red", TESTBED)(predictions) == pytest.approx([0.7, 0.1])
    assert parse_probe_factor("colour = red-blue", TESTBED)(predictions) == pytest.approx([0.5, -0.8])
    assert parse_probe_factor("colour=red+orange-blue+green", TESTBED)(predictions) == pytest.approx(
        [0.6, 0.1 - 0.9]
    )
    with pytest.raises(TransferError, match="choose from red, orange"):
        parse_probe_factor("colour=crimson", TESTBED)
    with pytest.raises(TransferError, match="colour=red-blue"):
        parse_probe_factor("hue", TESTBED)
    with pytest.raises(TransferError, match="colour=red"):
        parse_probe_factor("colour", TESTBED)
    with pytest.raises(TransferError, match="names no level"):
        parse_probe_factor("colour=-blue", TESTBED)


def test_probe_factor_needs_the_testbed(tmp_path):
    lora = tmp_path / "never-read.safetensors"
    with pytest.raises(TransferError, match="testbed"):
        transfer(lora, "tiny-sdxl", ["tiny-dmd"], "x", "0,1", [0, 1], tmp_path, probe_factor="size")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_rank_correlation_reads_monotone_rows():
    scores = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    assert _rank_correlation(scores, [-1, 0, 1]) == pytest.approx([1.0, -1.0, 0.5])


def _attention_targets(unet) -> tuple[str, ...]:
    return tuple(name for name, _ in unet.named_modules() if name.endswith(("attn1.to_q", "attn2.to_v")))[:4]


def test_cli_under_model_offload_measures_what_resident_measures(lora_file, tmp_path):
    from conceptspace.cli import app

    runs = {}
    for plan in ("resident", "model-offload"):
        out = tmp_path / plan
        args = [
            "transfer",
            "--lora",
            str(lora_file),
            "--base",
            "tiny-sdxl",
            "--students",
            "tiny-dmd,tiny-lcm",
        ]
        args += [
            "--prompt",
            "a red circle",
            "--scales",
            "0,1",
            "--seeds",
            "0-1",
            "--out",
            str(out),
            "--memory",
            plan,
        ]
        result = CliRunner().invoke(app, [*args, "--embedder", "pixels:32", "--device", "cpu", "--quiet"])
        assert result.exit_code == 0, result.output
        runs[plan] = {
            (r["model"], r["metric"], r.get("scale")): r["value"]
            for r in json.loads((out / "metrics.json").read_text())
        }
    assert runs["resident"].keys() == runs["model-offload"].keys()
    for key, value in runs["resident"].items():
        assert runs["model-offload"][key] == pytest.approx(value, abs=1e-5), key
