"""Prompt-set runs (`conceptspace run`, `conceptspace evaluate`): prompt files, resumability after kill -9 and
other partial states, the same files for any number of processes, and one-line errors for what a user can fix."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conceptspace import runs
from conceptspace.cli import app
from conceptspace.evaluate import evaluate_run
from conceptspace.io import atomic_write
from conceptspace.runs import (
    Case,
    process_shard,
    read_cases,
    read_manifest,
    run_prompt_set,
    work_items,
)
from conceptspace.sampling import Distilled, Hybrid, sample

# Byte-identical images across batch compositions hold on one CPU thread (docs/runs.md): with more, the matrix
# products' split over rows rounds a row differently depending on its neighbours.
torch.set_num_threads(1)

TINY = ["--base", "tiny-sdxl", "--student", "tiny-dmd", "--quiet", "--device", "cpu", "--dtype", "float32"]
COCO = Path("/work/shared/data/coco_30k.csv")
PROMPTS = ["a red circle", 'a blue, "quoted" square', "a green\ntriangle on two lines"]


def write_csv(
    path: Path, rows: list[list[object]], header=("case_number", "source", "prompt", "evaluation_seed")
):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def prompt_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three cases in the COCO-30k layout, numbered out of order, with commas, quotes and a line break."""
    folder = tmp_path_factory.mktemp("prompts")
    rows = [[7, "coco", PROMPTS[0], 100], [3, "coco", PROMPTS[1], 200], [12, "coco", PROMPTS[2], 300]]
    return write_csv(folder / "prompts.csv", rows)


def image_bytes(run_dir: Path) -> dict[str, bytes]:
    """Every image of a run by its path inside the run folder."""
    return {
        str(path.relative_to(run_dir)): path.read_bytes()
        for path in sorted(run_dir.glob("*/*.png"))
        if not path.name.startswith(".")
    }


def leftovers(run_dir: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes."""
    return [path for path in run_dir.rglob(".*") if ".tmp" in path.name]


def make_run(pair, cases, out: Path, regimes=(Distilled(), Hybrid(k=1)), **options):
    options = {"per_prompt": 2, "batch_size": 3, "progress": False, **options}
    return run_prompt_set(pair, cases, list(regimes), out, **options)


@pytest.fixture(scope="module")
def reference_run(tiny_sdxl_pair, prompt_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run (distilled and hybrid, 3 cases × 2 images, batch 3): read only."""
    out = tmp_path_factory.mktemp("reference") / "run"
    summary = make_run(tiny_sdxl_pair, read_cases(prompt_csv), out)
    assert summary["complete"] and summary["written"] == {"distilled": 6, "hybrid": 6}
    return out


def run_args(prompts: Path, out: Path, *extra: str) -> list[str]:
    """``conceptspace run`` on the tiny pair: distilled and hybrid, two images per case."""
    return [
        "run",
        *TINY,
        "--regimes",
        "distilled,hybrid",
        "--prompts",
        str(prompts),
        "-n",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


def error_text(result) -> str:
    return result.output + (str(result.exception) if result.exception else "")


def subprocess_env() -> dict[str, str]:
    # the same thread count as this process: CPU kernels may round differently with another
    threads = str(torch.get_num_threads())
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


# ------------------------------------------------------------------------------------------------- prompt files
def test_csv_cases_keep_commas_quotes_line_breaks_numbers_and_seeds(prompt_csv: Path) -> None:
    cases = read_cases(prompt_csv)
    assert cases == [Case(7, PROMPTS[0], 100), Case(3, PROMPTS[1], 200), Case(12, PROMPTS[2], 300)]
    assert [c.number for c in read_cases(prompt_csv, from_case=3, till_case=7)] == [7, 3]
    assert [c.number for c in read_cases(prompt_csv, from_case=8)] == [12]


def test_plain_text_cases_are_numbered_by_prompt_and_seeded_by_seed(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n\n# a comment\na dog, running\n", encoding="utf-8")
    assert read_cases(path, seed=5) == [Case(0, "a cat", 5), Case(1, "a dog, running", 5)]
    assert read_cases(path, from_case=1, till_case=1) == [Case(1, "a dog, running", 0)]


@pytest.mark.skipif(not COCO.is_file(), reason="the COCO-30k prompt file is not in /work/shared/data")
def test_the_real_coco_30k_file_reads_completely() -> None:
    cases = read_cases(COCO)
    assert len(cases) == 30000 and [c.number for c in cases] == list(range(30000))
    assert cases[0] == Case(0, "A bicycle replica with a clock as the front wheel.", 41337)
    assert any("\n" in c.prompt for c in cases) and any("," in c.prompt for c in cases)
    assert [c.number for c in read_cases(COCO, from_case=10, till_case=19)] == list(range(10, 20))


@pytest.mark.parametrize(
    "header,rows,message",
    [
        (
            ("case_number", "caption", "evaluation_seed"),
            [[0, "a cat", 1]],
            "has no 'prompt' column (columns: ",
        ),
        (
            None,
            [[0, "coco", "a cat", 1], [1, "coco", "a dog", "x12"]],
            "line 3: evaluation_seed 'x12' is not an",
        ),
        (None, [[0, "coco", "a cat", 1], [1, "coco", "  ", 2]], "line 3: the prompt is empty"),
        (None, [[0, "coco", "a cat", 1], [1, "coco"]], "line 3: the prompt is empty"),
        (None, [["one", "coco", "a cat", 1]], "line 2: case_number 'one' is not an integer"),
        (None, [[4, "coco", "a cat", 1], [4, "coco", "a dog", 2]], "case_number 4 repeats (first on line 2)"),
        (None, [], "holds no prompts"),
        (
            None,
            [[0, "coco", "a cat", 1], [1, "coco", "a dog", 2**64]],
            "bad.csv, row ending on line 3, column evaluation_seed) does not fit the 64 bits",
        ),
    ],
)
def test_malformed_csv_rows_are_refused_naming_the_line(tmp_path: Path, header, rows, message) -> None:
    path = write_csv(tmp_path / "bad.csv", rows, *([header] if header else []))
    with pytest.raises(ValueError) as error:
        read_cases(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_case_range_errors(prompt_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--from-case 9 is after --till-case 2"):
        read_cases(prompt_csv, from_case=9, till_case=2)
    with pytest.raises(
        ValueError, match=r"no case of .* lies in \[20, 30\]: its case numbers run from 3 to 12"
    ):
        read_cases(prompt_csv, from_case=20, till_case=30)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_cases(tmp_path / "missing.csv")


def test_work_is_split_round_robin_over_processes(prompt_csv: Path) -> None:
    items = work_items(read_cases(prompt_csv), ["distilled", "hybrid"], 2)
    assert [item.key for item in items[:3]] == [("distilled", 7, 0), ("distilled", 7, 1), ("distilled", 3, 0)]
    assert items[5].path == "distilled/12_1.png" and items[5].seed == 301
    shards = [process_shard(items, index, 3) for index in range(3)]
    assert sorted(item.key for shard in shards for item in shard) == sorted(item.key for item in items)
    assert shards[1] == [items[1], items[4], items[7], items[10]]


# ------------------------------------------------------------------------------------------------------ the run
def test_run_command_writes_images_manifest_and_run_json(tmp_path: Path, prompt_csv: Path) -> None:
    out = tmp_path / "run"
    result = invoke(*run_args(prompt_csv, out))
    assert result.exit_code == 0, error_text(result)
    assert "made distilled 6, hybrid 6; 0 already finished" in result.output and "(complete)" in result.output
    assert sorted(image_bytes(out)) == sorted(
        f"{regime}/{case}_{i}.png"
        for regime in ("distilled", "hybrid")
        for case in (3, 7, 12)
        for i in (0, 1)
    )
    assert Image.open(out / "hybrid" / "12_1.png").size == (64, 64)
    assert sorted(p.name for p in out.iterdir()) == ["distilled", "hybrid", "manifest.jsonl", "run.json"]
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["regime"], e["case_number"], e["i"]) for e in entries[:3]] == [
        ("distilled", 7, 0),
        ("distilled", 7, 1),
        ("distilled", 3, 0),
    ]
    twelve = entries[5]
    assert twelve["prompt"] == PROMPTS[2] and twelve["seed"] == 301 and twelve["path"] == "distilled/12_1.png"
    assert entries[6]["schedule"] == [
        [999, "base"],
        [749, "distilled"],
        [499, "distilled"],
        [249, "distilled"],
    ]
    assert all(e["seconds"] > 0 for e in entries)
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "run" and run["complete"] and run["finished"] == run["images"] == 12
    assert run["parameters"]["regimes"]["hybrid"]["k"] == 1 and run["parameters"]["batch_size"] == 4
    assert run["parameters"]["case_range"] == [7, 12] and run["prompts_file"] == str(prompt_csv)
    assert {"torch", "diffusers"} <= set(run["versions"])


def test_batch_size_one_gives_exactly_what_sample_gives(
    tiny_sdxl_pair, prompt_csv: Path, tmp_path: Path
) -> None:
    case = read_cases(prompt_csv)[2]
    make_run(tiny_sdxl_pair, [case], tmp_path / "run", regimes=[Hybrid(k=1)], batch_size=1)
    expected = sample(tiny_sdxl_pair, case.prompt, Hybrid(k=1), [case.seed + 1], batch_size=1, progress=False)
    got = np.asarray(Image.open(tmp_path / "run" / "hybrid" / "12_1.png"))
    assert np.array_equal(got, np.asarray(expected.images[0]))


def test_same_files_for_any_sharding_and_case_range(
    tiny_sdxl_pair, prompt_csv: Path, reference_run: Path, tmp_path: Path
) -> None:
    cases = read_cases(prompt_csv)
    sharded = tmp_path / "sharded"  # as two processes would, one after the other
    first = make_run(tiny_sdxl_pair, cases, sharded, shard=(0, 2))
    assert not first["complete"] and sum(first["written"].values()) == 6
    second = make_run(tiny_sdxl_pair, cases, sharded, shard=(1, 2), resume=True)
    assert second["skipped"] == 0 and sum(second["written"].values()) == 6
    assert image_bytes(sharded) == image_bytes(reference_run)
    assert len(read_manifest(sharded)) == 12
    # case ranges into one folder each: other batches, same images
    for number in (7, 3, 12):
        part = tmp_path / f"case-{number}"
        make_run(tiny_sdxl_pair, read_cases(prompt_csv, from_case=number, till_case=number), part)
        for name, data in image_bytes(part).items():
            assert data == image_bytes(reference_run)[name], name


def test_batch_size_changes_images_only_at_rounding_level(
    tiny_sdxl_pair, prompt_csv: Path, reference_run: Path, tmp_path: Path
) -> None:
    """A batch of 1 and a batch of 3 round differently on CPUs (oneDNN convolutions and small matrix products pick
    other kernels per batch size), so the PNGs may differ, by at most a grey level or two in a few pixels."""
    make_run(tiny_sdxl_pair, read_cases(prompt_csv), tmp_path / "one", batch_size=1)
    one, three = image_bytes(tmp_path / "one"), image_bytes(reference_run)
    assert one.keys() == three.keys()
    for name in one:
        a = np.asarray(Image.open(tmp_path / "one" / name)).astype(int)
        b = np.asarray(Image.open(reference_run / name)).astype(int)
        assert np.abs(a - b).max() <= 2, name


# ------------------------------------------------------------------------------------------- resuming and errors
def test_resume_reconciles_every_partial_state(
    tiny_sdxl_pair, prompt_csv: Path, reference_run: Path, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # distilled/7_1 has its image but only half a manifest line (killed during the append, as if by kill -9);
    # hybrid/3_0 has its line but lost its image; hybrid/12_1 has its image but no line (killed between the two)
    # and a half-written temporary file lies next to the images; the lines sit in two process shards
    truncated = lines[1][: len(lines[1]) // 2]
    keep = [line for index, line in enumerate(lines) if index not in (1, 11)]
    (out / "manifest.jsonl").unlink()
    (out / "manifest.0.jsonl").write_text("".join(keep[:5]) + truncated, encoding="utf-8")
    (out / "manifest.1.jsonl").write_text("".join(keep[5:]), encoding="utf-8")
    (out / "hybrid" / "3_0.png").unlink()
    (out / "distilled" / ".3_1.png.x1y2.tmp.png").write_bytes(b"\x89PNG half")
    listed = {(e["regime"], e["case_number"], e["i"]) for e in read_manifest(out)}  # the cut line is skipped
    assert len(listed) == 10 and ("hybrid", 3, 0) in listed  # reading repairs nothing: resuming does

    summary = make_run(tiny_sdxl_pair, read_cases(prompt_csv), out, resume=True)
    assert summary["written"] == {"distilled": 1, "hybrid": 2} and summary["skipped"] == 9
    assert summary["complete"]
    assert image_bytes(out) == image_bytes(reference_run) and not leftovers(out)
    assert sorted(p.name for p in out.iterdir()) == ["distilled", "hybrid", "manifest.jsonl", "run.json"]
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    keys = [(e["regime"], e["case_number"], e["i"]) for e in entries]
    reference = [json.loads(line) for line in (reference_run / "manifest.jsonl").read_text().splitlines()]
    assert keys == [(e["regime"], e["case_number"], e["i"]) for e in reference]  # each once, in work order


def test_a_broken_line_inside_the_manifest_is_an_error(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text(lines[0] + "{broken\n" + "".join(lines[1:]))
    with pytest.raises(ValueError, match=r"manifest.jsonl line 2 is not valid JSON; delete that line"):
        read_manifest(out)


def test_a_previous_run_needs_resume_and_the_same_parameters(
    tiny_sdxl_pair, prompt_csv: Path, reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    cases = read_cases(prompt_csv)
    with pytest.raises(ValueError, match="holds a previous run: pass --resume"):
        make_run(tiny_sdxl_pair, cases, out)
    with pytest.raises(ValueError) as error:
        make_run(
            tiny_sdxl_pair, cases[:2], out, regimes=[Distilled(), Hybrid(k=2)], batch_size=2, resume=True
        )
    message = str(error.value)
    assert message.startswith(f"cannot resume {out}: it was started with other parameters (")
    for difference in (
        "batch_size: 3 then, 2 now",
        "regimes.hybrid.k: 1 then, 2 now",
        "cases: 3 then, 2 now",
    ):
        assert difference in message
    assert "prompt_set_sha256" in message
    with pytest.raises(ValueError, match="regimes.skip-first added"):
        from conceptspace.sampling import SkipFirst

        make_run(tiny_sdxl_pair, cases, out, regimes=[Distilled(), Hybrid(k=1), SkipFirst()], resume=True)
    assert image_bytes(out) == image_bytes(reference_run)  # nothing was touched
    stray = tmp_path / "stray"
    (stray / "distilled").mkdir(parents=True)
    (stray / "distilled" / "0_0.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not a run to resume"):
        make_run(tiny_sdxl_pair, cases, stray, resume=True)
    with pytest.raises(ValueError, match="already holds images that no run.json describes"):
        make_run(tiny_sdxl_pair, cases, stray)


def test_resume_without_a_previous_run_starts_one(tiny_sdxl_pair, prompt_csv: Path, tmp_path: Path) -> None:
    cases = read_cases(prompt_csv)[:1]
    summary = make_run(
        tiny_sdxl_pair, cases, tmp_path / "new", regimes=[Distilled()], per_prompt=1, resume=True
    )
    assert summary["complete"] and summary["written"] == {"distilled": 1}


def test_full_disk_is_a_clear_error_and_leaves_no_half_written_image(
    tiny_sdxl_pair, prompt_csv: Path, reference_run: Path, tmp_path: Path, monkeypatch
) -> None:
    real_write_image = runs.write_image
    calls = []

    def fills_up(path, image):
        calls.append(path)
        if len(calls) < 4:
            return real_write_image(path, image)

        def half_then_full(tmp: Path) -> None:
            tmp.write_bytes(b"\x89PNG\r\n\x1a\n half an image")
            raise OSError(errno.ENOSPC, "No space left on device")

        return atomic_write(path, half_then_full)

    monkeypatch.setattr(runs, "write_image", fills_up)
    out = tmp_path / "run"
    with pytest.raises(OSError) as error:
        make_run(tiny_sdxl_pair, read_cases(prompt_csv), out)
    assert error.value.errno == errno.ENOSPC
    assert "no space left on the device while writing" in str(error.value) and "--resume" in str(error.value)
    assert sorted(image_bytes(out)) == ["distilled/3_0.png", "distilled/7_0.png", "distilled/7_1.png"]
    assert not leftovers(out) and len(read_manifest(out)) == 3
    for name, data in image_bytes(out).items():
        assert data == image_bytes(reference_run)[name]

    result = invoke(*run_args(prompt_csv, out, "--batch-size", "3", "--resume"))
    assert result.exit_code == 2 and "error: no space left on the device" in result.output

    monkeypatch.setattr(runs, "write_image", real_write_image)
    summary = make_run(tiny_sdxl_pair, read_cases(prompt_csv), out, resume=True)
    assert summary["complete"] and image_bytes(out) == image_bytes(reference_run)


def test_unwritable_output_folder_is_refused_before_loading(tmp_path: Path, prompt_csv: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke("run", *TINY, "--prompts", str(prompt_csv), "--out", str(blocker / "out"))
    assert isinstance(result.exception, PermissionError)
    assert "cannot write to output folder" in str(result.exception) and "is a file" in str(result.exception)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_read_only_output_folder_is_refused(tmp_path: Path, prompt_csv: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = invoke("run", *TINY, "--prompts", str(prompt_csv), "--out", str(locked / "out"))
    assert isinstance(result.exception, PermissionError) and "is not writable" in str(result.exception)


def test_user_errors_are_one_line_with_exit_status_2(tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "bad.csv", [[0, "coco", "a cat", "seven"]])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "conceptspace",
            "run",
            *TINY,
            "--prompts",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {bad}, row ending on line 2: evaluation_seed 'seven' is not an integer"
    )
    assert not (tmp_path / "o").exists()


def test_kill_9_during_a_run_then_resume_gives_the_files_of_an_uninterrupted_run(
    tiny_sdxl_pair, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na yellow star\n", encoding="utf-8")
    command = [
        "run",
        *TINY,
        "--regimes",
        "distilled",
        "--prompts",
        str(prompts),
        "-n",
        "5",
        "--seed",
        "40",
        "--batch-size",
        "1",
    ]
    reference = tmp_path / "reference"
    make_run(
        tiny_sdxl_pair, read_cases(prompts, seed=40), reference, [Distilled()], per_prompt=5, batch_size=1
    )

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "conceptspace", *command, "--out", str(out)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    shard = out / "manifest.0.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if shard.is_file() and shard.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.02)
    assert process.poll() is None, (
        "the run ended before it could be killed: " + process.stderr.read().decode()
    )
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    finished = {(e["regime"], e["case_number"], e["i"]) for e in read_manifest(out)}
    assert 4 <= len(finished) < 20 and not json.loads((out / "run.json").read_text())["complete"]

    again = invoke(*command, "--out", str(out))
    assert again.exit_code != 0 and "pass --resume" in error_text(again)
    resumed = invoke(*command, "--out", str(out), "--resume")
    assert resumed.exit_code == 0, error_text(resumed)
    done_before = sum((out / f"{r}/{c}_{i}.png").is_file() for r, c, i in finished)
    assert f"made distilled {20 - done_before}; {done_before} already finished" in resumed.output
    assert image_bytes(out) == image_bytes(reference) and not leftovers(out)
    keys = [(e["regime"], e["case_number"], e["i"]) for e in map(json.loads, (out / "manifest.jsonl").open())]
    assert len(keys) == len(set(keys)) == 20


def test_a_second_resume_into_a_busy_folder_is_refused_and_the_first_completes(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na yellow star\n", encoding="utf-8")
    out = tmp_path / "shared"
    command = [
        sys.executable,
        "-m",
        "conceptspace",
        "run",
        *TINY,
        "--regimes",
        "distilled",
        "--prompts",
        str(prompts),
        "-n",
        "4",
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--resume",
    ]
    # the second process imports everything first and waits, so that it starts work while the first still runs
    warm = "import sys, conceptspace.runs, conceptspace.models; from conceptspace.cli import main; sys.stdin.readline(); main()"
    second = subprocess.Popen(
        [sys.executable, "-c", warm, *command[3:]],
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shard = out / "manifest.0.jsonl"
    deadline = time.monotonic() + 240
    while (
        time.monotonic() < deadline
        and first.poll() is None
        and not (shard.is_file() and shard.stat().st_size)
    ):
        time.sleep(0.02)
    assert first.poll() is None, (
        "the first run ended before the second could start: " + first.stderr.read().decode()
    )
    second_out, second_err = second.communicate("go\n", timeout=300)
    assert first.poll() is None, "the first run ended before the second was refused"
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err.decode()
    assert second.returncode == 2 and len(second_err.strip().splitlines()) == 1, second_err
    assert f"{out} is in use by process {first.pid}" in second_err and "another --out" in second_err
    keys = [(e["regime"], e["case_number"], e["i"]) for e in read_manifest(out)]
    assert len(keys) == len(set(keys)) == 16 and json.loads((out / "run.json").read_text())["complete"]
    # once the first has finished, the folder is free again: a later --resume finds everything done
    again = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "16 already finished" in again.stdout, again.stderr


@pytest.mark.slow
def test_two_processes_under_accelerate_make_the_files_of_one(
    reference_run: Path, prompt_csv: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a free port for the processes' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    # accelerate starts several CPU processes through its multi-GPU (torchrun) launcher; `--cpu` starts one
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]
    command = ["-m", "conceptspace", *run_args(prompt_csv, out, "--batch-size", "3")]
    result = subprocess.run(
        [*launch, *command], capture_output=True, text=True, env=subprocess_env(), timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert image_bytes(out) == image_bytes(reference_run)
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 12 and {e["rank"] for e in entries} == {0, 1}
    assert json.loads((out / "run.json").read_text())["processes"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["distilled", "hybrid", "manifest.jsonl", "run.json"]


# --------------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny transformers CLIP (random weights, the real tokenizer) as an ``hf-clip:`` spec."""
    from conceptspace.testing import write_tiny_hf_clip

    return write_tiny_hf_clip(tmp_path_factory.mktemp("hf-clip"))


def test_evaluate_writes_clip_score_and_fid_rows(reference_run: Path, clip_spec: str, tmp_path: Path) -> None:
    from conceptspace.embeddings import load_embedder
    from conceptspace.quality import clip_score
    from conceptspace.results import read_metrics

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    real = tmp_path / "real"  # a reference folder: the distilled images, one of them at another size
    shutil.copytree(run / "distilled", real)
    Image.open(real / "3_0.png").resize((96, 96), Image.Resampling.NEAREST).save(real / "3_0.png")
    features = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())  # 48 per image
    rows = evaluate_run(
        run, embedder=clip_spec, fid_ref=real, fid_feature_extractor=features, n_boot=200, progress=False
    )
    assert [(r["regime"], r["metric"]) for r in rows] == [
        ("distilled", "clip_score"),
        ("hybrid", "clip_score"),
        ("distilled", "conditional_vendi"),
        ("hybrid", "conditional_vendi"),
        ("distilled", "fid"),
        ("hybrid", "fid"),
        ("distilled", "seconds_per_image"),
        ("hybrid", "seconds_per_image"),
    ]
    embedder = load_embedder(clip_spec, device="cpu", progress=False)
    entries = [e for e in read_manifest(run) if e["regime"] == "hybrid"]
    from conceptspace.metrics import conditional_vendi

    # 3 prompts × 2 images: the prompt-aware score of the hybrid's images, as conditional_vendi gives it
    vendi = conditional_vendi(
        embedder.embed_images([str(run / e["path"]) for e in entries]), [e["prompt"] for e in entries]
    )
    assert (
        rows[3]["value"] == pytest.approx(vendi, rel=1e-5) and rows[3]["n"] == 6 and rows[3]["n_prompts"] == 3
    )
    expected = clip_score(
        embedder.embed_images([str(run / e["path"]) for e in entries]),
        embedder.embed_texts([e["prompt"] for e in entries]),
        n_boot=200,
    )
    assert rows[1]["value"] == pytest.approx(expected.value, rel=1e-5) and rows[1]["n"] == 6
    assert rows[1]["ci_low"] <= rows[1]["value"] <= rows[1]["ci_high"] and rows[1]["embedder"] == clip_spec
    distilled_fid, hybrid_fid = rows[4]["value"], rows[5]["value"]
    assert (
        0 <= distilled_fid < hybrid_fid and rows[5]["reference"] == str(real) and rows[5]["n_reference"] == 6
    )
    # features extracted once per set, then the Fréchet distance: the same number as torchmetrics' FID
    from conceptspace.evaluate import image_file_batches
    from conceptspace.quality import fid

    size = Image.open(run / entries[0]["path"]).size
    theirs = fid(
        image_file_batches(sorted(real.glob("*.png")), size, 4),
        image_file_batches([run / e["path"] for e in entries], size, 4),
        feature_extractor=features,
    )
    assert hybrid_fid == pytest.approx(theirs, rel=1e-6)
    assert [(r["regime"], r["metric"]) for r in read_metrics(run)] == [
        (r["regime"], r["metric"]) for r in rows
    ]
    assert (run / "metrics.csv").read_text().startswith("prompt,regime,metric,value,ci_low,ci_high,n")

    by_regime = evaluate_run(
        run, embedder=clip_spec, fid_ref="distilled", fid_feature_extractor=features, progress=False
    )
    assert [(r["regime"], r["metric"]) for r in by_regime][4:5] == [("hybrid", "fid")]
    assert by_regime[4]["reference"] == "regime:distilled"


def test_evaluate_command_prints_the_table(reference_run: Path, clip_spec: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    result = invoke("evaluate", str(run), "--embedder", clip_spec, "--n-boot", "50", "--quiet")
    assert result.exit_code == 0, error_text(result)
    assert "distilled        clip_score" in result.output and "hybrid           clip_score" in result.output
    assert f"wrote {run / 'metrics.json'}" in result.output and "not complete" not in result.output


def test_evaluate_errors_say_what_to_do(
    reference_run: Path, clip_spec: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached Inception weights
    # tiny-sdxl's default embedder (pixels) has no text tower
    no_text = invoke("evaluate", str(reference_run), "--quiet")
    assert isinstance(no_text.exception, ValueError) and "embeds images only" in str(no_text.exception)
    offline = invoke(
        "evaluate", str(reference_run), "--embedder", clip_spec, "--fid-ref", "distilled", "--quiet"
    )
    assert isinstance(offline.exception, ValueError)
    assert str(offline.exception).startswith(
        "FID and the Inception Score need the Inception weights, which cannot be downloaded offline "
        "(HF_HUB_OFFLINE is set): pass --fid-weights FILE"
    )
    weights = invoke(
        "evaluate",
        str(reference_run),
        "--embedder",
        clip_spec,
        "--fid-ref",
        "distilled",
        "--fid-weights",
        str(tmp_path / "inception.pth"),
        "--quiet",
    )
    assert isinstance(weights.exception, FileNotFoundError) and "do not exist" in str(weights.exception)
    no_inception = invoke("evaluate", str(reference_run), "--inception-score", "--quiet")
    assert "FID and the Inception Score need the Inception weights" in str(no_inception.exception)
    unknown = invoke("evaluate", str(reference_run), "--embedder", clip_spec, "--fid-ref", "nowhere")
    assert "neither a folder nor a regime of this run (distilled, hybrid)" in str(unknown.exception)
    not_a_run = invoke("evaluate", str(tmp_path), "--embedder", clip_spec)
    assert isinstance(not_a_run.exception, FileNotFoundError) and "has no run.json" in str(
        not_a_run.exception
    )
    missing = invoke("evaluate", str(tmp_path / "missing_dir"), "--embedder", clip_spec)
    assert isinstance(missing.exception, FileNotFoundError)
    assert str(missing.exception).startswith(f"no run folder at {tmp_path / 'missing_dir'}")
    assert not (reference_run / "metrics.json").exists()


def test_evaluate_times_each_regime_from_the_manifest(
    reference_run: Path, clip_spec: str, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    rows = evaluate_run(run, embedder=clip_spec, n_boot=200, progress=False)
    timed = {r["regime"]: r for r in rows if r["metric"] == "seconds_per_image"}
    assert list(timed) == ["distilled", "hybrid"]
    for regime, row in timed.items():
        seconds = [e["seconds"] for e in read_manifest(run) if e["regime"] == regime]
        assert row["value"] == pytest.approx(np.mean(seconds)) and row["n"] == len(seconds) == 6
        assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["ci_method"] == "bootstrap"
        assert row["batch_size"] == 3 and row["device_type"] == "cpu" and "notes" not in row


def test_evaluate_with_an_image_only_embedder_skips_the_clip_score(
    reference_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    features = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
    # tiny-sdxl's default embedder (pixels:32) has no text tower: FID and time only, and a note saying why
    rows = evaluate_run(run, fid_ref="distilled", fid_feature_extractor=features, n_boot=50, progress=False)
    assert [(r["regime"], r["metric"]) for r in rows] == [
        ("distilled", "conditional_vendi"),
        ("hybrid", "conditional_vendi"),
        ("hybrid", "fid"),
        ("distilled", "seconds_per_image"),
        ("hybrid", "seconds_per_image"),
    ]
    assert rows[3]["notes"] == "no clip_score: embedder 'pixels:32' has no text tower"
    # nothing at all to measure is still an error
    (run / "metrics.json").unlink()
    with pytest.raises(ValueError, match="embeds images only.*or --fid-ref for FID alone"):
        evaluate_run(run, progress=False)
    assert not (run / "metrics.json").exists()


def test_evaluate_scores_each_regime_with_the_inception_score(reference_run: Path, tmp_path: Path) -> None:
    from conceptspace.quality import inception_score

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 5)
    )
    rows = evaluate_run(run, inception_score=True, is_classifier=classifier, n_boot=200, progress=False)
    scores = {r["regime"]: r for r in rows if r["metric"] == "inception_score"}
    assert list(scores) == ["distilled", "hybrid"]
    for regime, row in scores.items():
        paths = [
            run / runs.image_path(*runs.entry_key(e)) for e in read_manifest(run) if e["regime"] == regime
        ]
        images = [Image.open(path).convert("RGB") for path in paths]
        expected = inception_score(images, classifier=classifier, n_boot=0).value
        assert row["value"] == pytest.approx(expected) and row["n"] == 6 and 1.0 <= row["value"] <= 5.0
        assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["classifier"] == "Sequential"


def test_every_command_reads_a_prompt_file_one_way(tmp_path):
    """A spreadsheet's CSV (byte-order mark) and a CSV row with an empty prompt get the same treatment from
    read_prompt_file (generate, trajectory, diversity, compare) and read_cases (run)."""
    from conceptspace.prompts import read_prompt_file

    bom = tmp_path / "bom.csv"
    bom.write_bytes('\ufeffprompt\na cat\n"a dog, running"\n'.encode())
    assert read_prompt_file(bom) == ["a cat", "a dog, running"]
    assert [c.prompt for c in read_cases(bom)] == ["a cat", "a dog, running"]
    empty = tmp_path / "empty.csv"
    empty.write_text('prompt\na cat\n"  "\n', encoding="utf-8")
    for reader in (read_prompt_file, read_cases):
        with pytest.raises(ValueError, match="line 3: the prompt is empty"):
            reader(empty)


def test_evaluate_measures_every_regime_against_a_reference_regime(
    reference_run: Path, tmp_path: Path
) -> None:
    """Precision, recall, density, coverage and CMMD of the hybrid against the student's images, equal to prdc()
    and cmmd() on the same embeddings with each image's own-seed twin left out."""
    from conceptspace.embeddings import load_embedder
    from conceptspace.metrics import cmmd, prdc

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    rows = evaluate_run(run, reference_regime="distilled", n_boot=50, progress=False)
    got = {r["metric"]: r for r in rows if r["regime"] == "hybrid" and r.get("reference") == "distilled"}
    assert set(got) == {"precision", "recall", "density", "coverage", "cmmd"}
    embedder = load_embedder("pixels:32")  # tiny-sdxl's own
    features = {
        regime: embedder.embed_images([str(p) for p in sorted((run / regime).glob("*.png"))])
        for regime in ("distilled", "hybrid")
    }
    expected = prdc(features["distilled"], features["hybrid"], k=2, n_boot=0, paired=True)
    for metric in ("precision", "recall", "density", "coverage"):
        assert got[metric]["value"] == pytest.approx(expected[metric].value), metric
        assert got[metric]["k"] == 2 and got[metric]["n"] == 6
    mmd = cmmd(features["distilled"], features["hybrid"], n_boot=0, paired=True)
    assert got["cmmd"]["value"] == pytest.approx(mmd.value)
    with pytest.raises(ValueError, match="not a regime of this run"):
        evaluate_run(run, reference_regime="nope", progress=False)
