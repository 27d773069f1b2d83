"""SliderSpace on the testbed: discovery finds directions that mean something (probe correlations), a slider trained
per direction lowers its loss and is a LoRA that transfer takes, activation compares regimes on paired seeds, and
bad input is refused before anything runs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conceptspace import chunked, directions
from conceptspace.cli import app
from conceptspace.directions import discover, load_study, measure_activation, train_direction_sliders
from conceptspace.lora import read_lora
from conceptspace.models import load_pair
from conceptspace.results import read_metrics

torch.set_num_threads(1)
PROMPT = "a shape"


@pytest.fixture(scope="module")
def shapes():
    return load_pair("shapes", "dmd", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def study(shapes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    space = discover(shapes, PROMPT, folder, n=96, n_directions=3, keep_images=8, progress=False)
    return folder, space


def test_discover_writes_a_study_whose_directions_mean_something(study):
    folder, space = study
    for name in ("sliderspace.safetensors", "samples.safetensors", "metrics.json", "run.json", "report.html"):
        assert (folder / name).is_file(), name
    assert len(list((folder / "distilled").glob("*.png"))) == 8
    loaded, run = load_study(folder)
    assert loaded.components_ == pytest.approx(space.components_)
    assert run["parameters"]["n"] == 96 and run["parameters"]["embedder"] == "testbed:clip"
    ratios = space.explained_variance_ratio_
    assert all(ratios[:-1] >= ratios[1:]) and 0 < ratios.sum() < 1

    rows = read_metrics(folder)
    correlations = [r for r in rows if r["metric"].startswith("probe_correlation_dir_")]
    factors = {r["factor"] for r in correlations}
    assert {"size", "x", "y", "shape=circle", "colour=red"} <= factors
    # the top direction of "a shape" on the student is a real factor of the images (colour, in this testbed)
    strongest = max(abs(r["value"]) for r in correlations if r["direction"] == 0)
    assert strongest > 0.5
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in correlations)


def test_an_interrupted_discover_resumes_from_its_saved_chunks(study, shapes, tmp_path, monkeypatch):
    """Ctrl-C while the second chunk of 64 samples: the first is kept on disk and the message says so; the same
    call then samples only the second chunk and writes the study an uninterrupted run wrote (same embeddings)."""
    from safetensors.torch import load_file

    from conceptspace.generate import Interrupted

    real, calls = chunked.sample, []

    def counted(*args, **kwargs):
        calls.append(list(args[3]))
        if interrupt and len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked, "sample", counted)
    out, interrupt = tmp_path / "study", True
    with pytest.raises(Interrupted, match=r"kept 64 of 96 samples of distilled in .*partial"):
        discover(shapes, PROMPT, out, n=96, n_directions=3, keep_images=8, progress=False)
    assert not (out / "run.json").exists() and len(list((out / chunked.PARTIAL_DIR).iterdir())) == 1
    calls.clear()
    interrupt = False
    discover(shapes, PROMPT, out, n=96, n_directions=3, keep_images=8, progress=False)
    assert calls == [list(range(64, 96))]
    assert not (out / chunked.PARTIAL_DIR).exists()
    resumed, whole = (load_file(folder / directions.SAMPLES_FILE) for folder in (out, study[0]))
    assert torch.equal(resumed["embeddings"], whole["embeddings"])
    assert torch.equal(resumed["seeds"], whole["seeds"])


def test_direction_sliders_train_and_transfer(study, shapes, tmp_path):
    folder, space = study
    (written,) = train_direction_sliders(
        folder, pair=shapes, directions=[0], steps=24, lr=1e-2, scales=(-1, 0, 1), measure_seeds=3,
        progress=False,
    )  # fmt: skip
    assert written == folder / "sliders" / "direction_00.safetensors"
    lora = read_lora(written)
    assert lora.rank == 1 and all(".attn2.to_k" in n or ".attn2.to_v" in n for n in lora.modules)
    meta = lora.metadata
    assert meta["kind"] == "sliderspace" and meta["direction"] == 0 and meta["base_model"] == "shapes"
    assert meta["explained_variance_ratio"] == pytest.approx(space.explained_variance_ratio_[0])
    assert (
        meta["final_loss"] < meta["initial_loss"]
    )  # −cos(Δφ, v_0) went down: the slider learnt its direction
    assert (folder / "sliders" / "direction_00.png").is_file()

    rows = read_metrics(folder)
    effect = {(r["model"], r["scale"]) for r in rows if r["metric"] == "direction_effect"}
    assert effect == {(m, s) for m in ("shapes", "dmd") for s in (-1.0, 1.0)}
    assert any(r["metric"] == "direction_transfer_ratio_slope" and r["model"] == "dmd" for r in rows)
    assert any(r["metric"].startswith("probe_correlation") for r in rows)  # discovery rows are kept

    # training another direction later keeps this one's measurements and strip
    train_direction_sliders(
        folder, pair=shapes, directions=[1], steps=2, scales=(0, 1), measure_seeds=2, progress=False
    )
    rows = read_metrics(folder)
    assert {r["direction"] for r in rows if r["metric"] == "direction_effect_slope"} == {0, 1}
    report = (folder / "report.html").read_text()
    assert "Slider for direction 0" in report and "Slider for direction 1" in report
    assert "sliders/direction_00.png" in report

    from conceptspace.transfer import transfer

    transferred = transfer(written, "shapes", ["dmd"], PROMPT, "0,1", [0, 1], tmp_path, progress=False,
                           loader=lambda b, s: shapes)  # fmt: skip
    assert any(r["metric"] == "transfer_ratio" for r in transferred)


def test_activation_compares_regimes_on_paired_seeds(study, shapes, monkeypatch):
    folder, _ = study
    sampled: dict[str, list[int]] = {}
    original = chunked.sample  # activation samples through the chunked passes

    def recording(pair, prompt, regime, seeds, **kwargs):
        sampled.setdefault(regime.name, []).extend(seeds)
        return original(pair, prompt, regime, seeds, **kwargs)

    monkeypatch.setattr(chunked, "sample", recording)
    rows = measure_activation(folder, pair=shapes, n=12, n_boot=200, keep_images=2, progress=False)
    # paired: every regime sampled exactly the same seeds, fresh ones (not the discovery's)
    assert set(sampled) == {"base", "distilled", "hybrid"}
    assert sampled["base"] == sampled["distilled"] == sampled["hybrid"] == list(range(1_000_000, 1_000_012))
    out = folder / "activation"
    assert (out / "report.html").is_file() and (out / "metrics.csv").is_file()
    run = json.loads((out / "run.json").read_text())
    assert set(run["regimes"]) == {"base", "distilled", "hybrid"} and run["seeds"][0] == 1_000_000
    shares = {(r["regime"], r["direction"]) for r in rows if r["metric"].startswith("variance_share_dir_")}
    assert shares == {(regime, k) for regime in ("distilled", "hybrid") for k in range(3)}
    tests = [r for r in rows if r["metric"].startswith("variance_log_ratio_dir_")]
    assert tests and all(r["paired"] and 0 <= r["p_value"] <= 1 for r in tests)
    base = [r for r in rows if r["regime"] == "base" and r["metric"].startswith("variance_dir_")]
    assert len(base) == 3 and all(r["value"] > 0 and r["n"] == 12 for r in base)


def test_bad_input_is_refused_before_anything_runs(study, shapes, tmp_path):
    folder, _ = study
    with pytest.raises(ValueError, match="cannot give 8 directions"):
        discover(shapes, PROMPT, tmp_path / "a", n=8, n_directions=8, progress=False)
    with pytest.raises(ValueError, match="prompt is empty but for whitespace"):
        discover(shapes, "  ", tmp_path / "b", n=8, n_directions=2, progress=False)
    with pytest.raises(FileNotFoundError, match="not a SliderSpace folder"):
        train_direction_sliders(tmp_path, pair=shapes)
    with pytest.raises(ValueError, match="direction 5 does not exist"):
        train_direction_sliders(folder, pair=shapes, directions=[5])
    with pytest.raises(ValueError, match="include the base"):
        measure_activation(folder, pair=shapes, regimes=["distilled", "hybrid"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_discover_then_activation(tmp_path):
    runner = CliRunner()
    out = tmp_path / "space"
    common = ["--quiet"]
    found = runner.invoke(
        app,
        ["sliderspace", "discover", "--base", "shapes", "--student", "dmd", "--prompt", PROMPT, "-n", "16",
         "--n-directions", "2", "--out", str(out), *common],
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    assert "explained variance ratio" in found.output and (out / "sliderspace.safetensors").is_file()
    measured = runner.invoke(
        app,
        [
            "sliderspace",
            "activation",
            str(out),
            "--regimes",
            "base,distilled",
            "-n",
            "6",
            "--n-boot",
            "50",
            *common,
        ],
    )
    assert measured.exit_code == 0, measured.output
    assert "variance_share_dir_0" in measured.output and (out / "activation" / "metrics.json").is_file()
    missing = runner.invoke(app, ["sliderspace", "train", str(tmp_path / "nothing")])
    assert isinstance(missing.exception, FileNotFoundError)
