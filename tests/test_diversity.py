"""Diversity of run folders: measured on images with known structure, reused across runs, from the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conceptspace import sampling
from conceptspace.cli import app
from conceptspace.diversity import default_pairs, diversity_run, measure_diversity
from conceptspace.metrics import ALL_PROMPTS
from conceptspace.prompts import read_prompt_file
from conceptspace.results import read_metrics
from conceptspace.sampling import Distilled, Hybrid

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_30k.csv"


def write_run(run_dir: Path, images: dict[str, dict[str, list[np.ndarray]]]) -> None:
    """A run folder as `conceptspace generate` lays it out: {regime: {prompt: [image per seed]}}."""
    regimes = {}
    for regime, by_prompt in images.items():
        listed = []
        for p, (prompt, arrays) in enumerate(by_prompt.items()):
            for seed, array in enumerate(arrays):
                path = Path(regime) / f"{p:03d}_{seed}.png"
                (run_dir / regime).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(run_dir / path)
                listed.append({"prompt": prompt, "seed": seed, "path": str(path)})
        regimes[regime] = {"images": listed, "schedule": [], "timings": {}}
    run = {"base": {"name": "base-model"}, "student": {"name": "student-model"}, "regimes": regimes}
    (run_dir / "run.json").write_text(json.dumps(run))


def blob(x: int, y: int, colour: tuple[int, int, int]) -> np.ndarray:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[y : y + 8, x : x + 8] = colour
    return image


def test_collapsed_regime_measures_zero_and_loses_to_varied_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    varied = [blob(*rng.integers(0, 24, 2), tuple(rng.integers(0, 256, 3))) for _ in range(12)]
    collapsed = [blob(4, 4, (200, 30, 30))] * 12
    write_run(tmp_path, {"base": {"a shape": varied}, "distilled": {"a shape": collapsed}})
    rows = measure_diversity(tmp_path, "pixels:16", n_boot=200, n_perm=200, progress=False)
    by = {(r["prompt"], r["regime"], r["metric"]): r for r in rows}
    assert by[("a shape", "distilled", "pairwise_distance")]["value"] == pytest.approx(0.0, abs=1e-6)
    assert by[("a shape", "distilled", "vendi")]["value"] == pytest.approx(1.0, abs=1e-4)
    assert by[("a shape", "base", "pairwise_distance")]["value"] > 0.5
    diff = by[("a shape", "distilled - base", "diff_pairwise_distance")]
    assert diff["value"] < 0 and diff["ci_high"] < 0 and diff["p_value"] < 0.05
    assert by[(ALL_PROMPTS, "base", "vendi")]["n"] == 1
    assert {r["embedder"] for r in rows} == {"pixels:16"} and {r["model"] for r in rows} == {
        "base-model/student-model"
    }
    assert [r["value"] for r in read_metrics(tmp_path)] == pytest.approx([r["value"] for r in rows])


def test_unpaired_or_too_small_runs_are_refused(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        {"base": {"p": [blob(0, 0, (9, 9, 9))] * 3}, "distilled": {"p": [blob(0, 0, (9, 9, 9))] * 2}},
    )
    with pytest.raises(ValueError, match="differ in their seeds"):
        measure_diversity(tmp_path, "pixels:8", progress=False)
    write_run(tmp_path, {"base": {"p": [blob(0, 0, (9, 9, 9))]}})
    with pytest.raises(ValueError, match="at least 2"):
        measure_diversity(tmp_path, "pixels:8", progress=False)
    with pytest.raises(FileNotFoundError, match="conceptspace generate"):
        measure_diversity(tmp_path / "nothing", "pixels:8", progress=False)


def test_default_pairs_compare_later_regimes_to_earlier() -> None:
    assert default_pairs(["base", "distilled", "hybrid"]) == [
        ("distilled", "base"),
        ("hybrid", "base"),
        ("hybrid", "distilled"),
    ]


def test_diversity_run_reuses_regimes_already_sampled(
    tiny_sdxl_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampled: list[str] = []
    original = sampling.sample

    def counting(pair, prompt, regime, *args, **kwargs):
        sampled.append(regime.name)
        return original(pair, prompt, regime, *args, **kwargs)

    monkeypatch.setattr("conceptspace.generate.sample", counting)
    options = dict(embedder="pixels:8", n_boot=50, n_perm=50, report=False, progress=False)
    diversity_run(tiny_sdxl_pair, ["a shape"], [Distilled()], [0, 1, 2], tmp_path, **options)
    rows = diversity_run(tiny_sdxl_pair, ["a shape"], [Distilled(), Hybrid()], [0, 1, 2], tmp_path, **options)
    assert sampled == ["distilled", "hybrid"]  # the second run sampled only what was missing
    run = json.loads((tmp_path / "run.json").read_text())
    assert list(run["regimes"]) == ["distilled", "hybrid"] and run["reused_regimes"] == ["distilled"]
    assert set(run["schedule"]) == {"distilled", "hybrid"}
    assert {r["regime"] for r in rows} >= {"distilled", "hybrid", "hybrid - distilled"}


TINY_PAIR = ["--base", "tiny-sdxl", "--student", "tiny-dmd"]


def test_cli_diversity_writes_metrics_and_report(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# underspecified prompts\na shape\n\na red circle\n")
    out = tmp_path / "div"
    result = CliRunner().invoke(
        app,
        [
            "diversity",
            "--base",
            "tiny-sdxl",
            "--student",
            "tiny-dmd",
            "--regimes",
            "distilled,hybrid",
            "--prompts",
            str(prompts),
            "-n",
            "3",
            "--n-boot",
            "50",
            "--n-perm",
            "50",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = read_metrics(out)
    assert {r["prompt"] for r in rows} == {"a shape", "a red circle", ALL_PROMPTS}
    assert {r["embedder"] for r in rows} == {"pixels:32"}  # the tiny pair's default
    assert (out / "report.html").exists() and (out / "metrics.csv").exists()
    assert "hybrid - distilled" in result.output and "report.html" in result.output
    # averages over two prompts say what they count: n = 2 prompts beside 6 images
    header, first = result.output.splitlines()[0], result.output.splitlines()[1]
    assert header.rstrip().endswith("prompts images  p") and re.search(r"\]\s+2\s+6\s", first), result.output

    one = CliRunner().invoke(
        app,
        [
            "diversity",
            *TINY_PAIR,
            "--regimes",
            "distilled,hybrid",
            "--prompt",
            "a shape",
            "-n",
            "3",
            "--n-boot",
            "50",
            "--n-perm",
            "50",
            "--out",
            str(tmp_path / "one"),
            "--quiet",
        ],
    )
    assert one.exit_code == 0, one.output
    lines = one.output.splitlines()
    assert lines[0].rstrip().endswith("images  p") and "prompts" not in lines[0]
    assert all(re.search(r"\]\s+3\s", line) for line in lines[1:-1]), one.output  # one prompt: n = its images


def test_prompt_files_plain_and_csv(tmp_path: Path) -> None:
    text = tmp_path / "p.txt"
    text.write_text("one\n  # comment\n\ntwo, with a comma\n")
    assert read_prompt_file(text) == ["one", "two, with a comma"]
    bad = tmp_path / "p.csv"
    bad.write_text("case_number,caption\n1,hello\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        read_prompt_file(bad)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompt_file(tmp_path / "empty.txt")


@pytest.mark.skipif(not COCO.exists(), reason="shared/data/coco_30k.csv is not beside the checkout")
def test_reads_the_real_coco_prompt_set() -> None:
    prompts = read_prompt_file(COCO)
    assert len(prompts) == 30000
    assert (
        any("\n" in p for p in prompts) and any('"' in p for p in prompts) and any("," in p for p in prompts)
    )


def test_embedding_shows_one_bar_that_advances_over_every_image(
    tiny_sdxl_pair, tmp_path: Path, capsys
) -> None:
    from conceptspace.diversity import measure_diversity
    from conceptspace.generate import generate

    generate(
        tiny_sdxl_pair, ["a shape", "a circle"], [Distilled(), Hybrid()], [0, 1, 2], tmp_path, progress=False
    )
    capsys.readouterr()
    measure_diversity(tmp_path, "pixels:8", n_boot=20, n_perm=20, progress=True)
    err = capsys.readouterr().err
    assert err.count("embedding [pixels:8]:   0%") == 1, (
        err
    )  # one bar for the phase, not one per prompt × regime
    assert "12/12" in err


def test_ctrl_c_keeps_every_finished_image_and_the_same_command_reuses_them(tmp_path):
    """A real SIGINT to a real process while it samples its second regime, batch by batch: it says what it kept
    (the first regime, and the second's finished batches) and exits 130; the same command then reuses every kept
    image byte for byte (not sampled again), samples only the rest and finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "conceptspace", "diversity", "--base", "shapes", "--student", "dmd"]
    command += ["--regimes", "distilled,base", "--steps", "10", "--prompt", "a shape", "-n", "8"]
    command += ["--batch-size", "2", "--out", str(out), "--device", "cpu", "--n-boot", "20", "--n-perm", "20"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([*command, "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    first_batch = out / "base" / "regime.json"  # written with the second regime's first batch of images
    deadline = time.monotonic() + 300
    while not first_batch.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first_batch.exists() and process.poll() is None, "the second regime should be part-way through"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert not (out / "run.json").exists()
    record = json.loads(first_batch.read_text())["record"]
    n_base = len(record["images"])
    assert n_base in (2, 4, 6), n_base  # whole batches, and not the whole regime
    assert (
        f"interrupted: kept the finished regimes (distilled) and {n_base} of 8 images of base in {out}"
        in stderr
    )
    kept = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (out / "distilled").glob("*.png")}
    kept.update({out / i["path"]: ((out / i["path"]).read_bytes(), (out / i["path"]).stat().st_mtime_ns)
                 for i in record["images"]})  # fmt: skip
    assert len(kept) == 8 + n_base

    rerun = subprocess.run([*command, "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in kept} == kept
    run = json.loads((out / "run.json").read_text())
    assert run["reused_regimes"] == ["distilled"] and run["reused_images"] == {"base": n_base}
    assert [i["seed"] for i in run["regimes"]["base"]["images"]] == list(range(8))
    assert len(list((out / "base").glob("*.png"))) == 8


def test_a_prompt_set_gets_the_prompt_aware_score_order_2_vendi_and_coverage_of_the_base(
    tmp_path: Path,
) -> None:
    """Two prompts, a varied base, a collapsed student and a 'hybrid' drawn like the base (other seeds): the
    student's Conditional-Vendi is 1 (each prompt's images identical), the base's the geometric mean of its
    prompts' Vendi scores; against the base's own images the hybrid covers more than the collapsed student."""
    rng = np.random.default_rng(0)

    def varied(n: int) -> list[np.ndarray]:
        return [blob(*rng.integers(0, 24, 2), tuple(rng.integers(0, 256, 3))) for _ in range(n)]

    prompts = ("a shape", "a thing")
    write_run(
        tmp_path,
        {
            "base": {p: varied(12) for p in prompts},
            "distilled": {p: [blob(4, 4, (200, 30, 30))] * 12 for p in prompts},
            "hybrid": {p: varied(12) for p in prompts},
        },
    )
    rows = measure_diversity(tmp_path, "pixels:16", n_boot=200, n_perm=200, progress=False)
    by = {(r["prompt"], r["regime"], r["metric"]): r for r in rows}
    assert by[(ALL_PROMPTS, "distilled", "conditional_vendi")]["value"] == pytest.approx(1.0, abs=1e-4)
    per_prompt = [by[(p, "base", "vendi")]["value"] for p in prompts]
    assert by[(ALL_PROMPTS, "base", "conditional_vendi")]["value"] == pytest.approx(
        math.exp(np.mean(np.log(per_prompt))), rel=1e-9
    )
    assert (ALL_PROMPTS, "hybrid - distilled", "diff_conditional_vendi") in by
    assert by[("a shape", "base", "vendi_q2")]["value"] <= by[("a shape", "base", "vendi")]["value"] + 1e-9
    for prompt in (*prompts, ALL_PROMPTS):
        hybrid, student = by[(prompt, "hybrid", "coverage")], by[(prompt, "distilled", "coverage")]
        assert hybrid["reference"] == "base" and hybrid["value"] > student["value"]
        assert (prompt, "hybrid - distilled", "diff_coverage") in by
    assert not [r for r in rows if r["regime"] == "base" and r["metric"] == "coverage"]
