"""The command line: what `generate` and `trajectory` write, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conceptspace.cli import app

TINY = ["--base", "tiny-sdxl", "--student", "tiny-dmd", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed entry point in a fresh process (the way users meet errors)."""
    return subprocess.run(
        [sys.executable, "-c", "from conceptspace.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=300,
    )


def test_generate_writes_images_and_run_json_with_schedule(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "generate",
        *TINY,
        "--regime",
        "hybrid",
        "--prompt",
        "a red circle",
        "-n",
        "3",
        "--seed",
        "10",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    images = sorted(p.name for p in (out / "hybrid").glob("*.png"))
    assert images == ["000_10.png", "000_11.png", "000_12.png"]
    assert Image.open(out / "hybrid" / "000_11.png").size == (64, 64)
    run = json.loads((out / "run.json").read_text())
    assert run["schedule"] == [
        {"step": 0, "timestep": 999, "model": "base"},
        {"step": 1, "timestep": 749, "model": "distilled"},
        {"step": 2, "timestep": 499, "model": "distilled"},
        {"step": 3, "timestep": 249, "model": "distilled"},
    ]
    assert run["seeds"] == [10, 11, 12]
    assert run["base"]["name"] == "tiny-sdxl" and run["student"]["name"] == "tiny-dmd"
    assert {"torch", "diffusers", "transformers", "python"} <= set(run["versions"])
    assert set(run["wall_time"]["hybrid"]) >= {"text_encoding", "denoising", "decoding"}
    assert run["parameters"]["k"] == 1 and run["parameters"]["base_guidance"] == 0.0
    assert "wrote" in result.output and "999:b 749:d" in result.output


def test_several_regimes_give_one_schedule_per_regime(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "generate",
        *TINY,
        "--regime",
        "distilled,skip-first",
        "--regime",
        "hybrid",
        "--k",
        "2",
        "--prompt",
        "a",
        "--prompt",
        "b",
        "-n",
        "1",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert set(run["schedule"]) == {"distilled", "skip-first", "hybrid"}
    assert [s["model"] for s in run["schedule"]["hybrid"]] == ["base", "base", "distilled", "distilled"]
    assert [s["timestep"] for s in run["schedule"]["skip-first"]] == [749, 499, 249]
    assert sorted(p.name for p in (out / "distilled").glob("*.png")) == ["000_0.png", "001_0.png"]


def test_trajectory_writes_strips_and_commitment_rows(tmp_path: Path) -> None:
    out = tmp_path / "traj"
    result = invoke(
        "trajectory",
        *TINY,
        "--regime",
        "base,distilled",
        "--steps",
        "5",
        "--prompt",
        "a shape",
        "-n",
        "2",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    strip = Image.open(out / "base" / "trajectory_000_0.png")
    assert strip.size == (5 * 64, 64)  # five base steps, left to right
    assert Image.open(out / "distilled" / "trajectory_000_1.png").size == (4 * 64, 64)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["regime"] for r in rows] == ["base"] * 5 + ["distilled"] * 4
    assert {r["n"] for r in rows} == {"2"}
    last = [r for r in rows if r["regime"] == "distilled"][-1]
    assert float(last["value"]) == pytest.approx(1.0, abs=1e-5)  # the final x̂0 is the final image
    assert [r["metric"] for r in json.loads((out / "metrics.json").read_text())] == ["commitment"] * 9


@pytest.mark.parametrize(
    "args,message",
    [
        (["--regime", "hybird", "--prompt", "x"], "unknown regime 'hybird'; did you mean hybrid?"),
        (["--regime", "distilled"], "give at least one --prompt"),
        (["--regime", "distilled", "--prompt", "  "], "prompt is empty"),
        (["--regime", "hybrid", "--k", "7", "--prompt", "x"], "hybrid k must be between 1 and"),
        (["--regime", "distilled", "--prompt", "x", "-n", "0"], "-n must be at least 1"),
        # numbers are checked before anything loads: NaN guidance would silently turn CFG off
        (
            ["--regime", "base", "--prompt", "x", "--guidance", "nan"],
            "--guidance must be a finite number >= 0",
        ),
        (
            ["--regime", "hybrid", "--prompt", "x", "--base-guidance", "nan"],
            "--base-guidance must be a finite",
        ),
        (
            ["--regime", "base", "--prompt", "x", "--guidance", "-1"],
            "--guidance must be a finite number >= 0",
        ),
        (["--regime", "base", "--prompt", "x", "--steps", "0"], "base: steps must be a whole number >= 1"),
        (
            ["--regime", "base", "--prompt", "x", "--height", "0"],
            "--height must be a positive number of pixels",
        ),
        (
            ["--regime", "base", "--prompt", "x", "--width", "-64"],
            "--width must be a positive number of pixels",
        ),
        (["--prompt", "x", "--seed", str(2**64)], f"seed {2**64} does not fit the 64 bits"),
        (["--prompt", "x", "--seed", str(2**64 - 2), "-n", "4"], "the last of 4 seeds from"),
        (["--prompt", "x", "--device", "bogus"], "device 'bogus' is not a device name: use cpu, cuda"),
        (["--prompt", "x", "--base-path", "/nowhere"], "'tiny-sdxl' is built in"),
        (
            ["--prompt", "x", "--height", "99992", "--width", "99992"],
            "need more memory than the cpu device has",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("generate", *TINY, *args, "--out", str(tmp_path / "o"))
    assert result.exit_code != 0
    text = result.output + (str(result.exception) if result.exception else "")
    assert message in text
    assert not (tmp_path / "o" / "run.json").exists()


def test_entry_point_exits_2_with_reason_on_stderr(tmp_path: Path) -> None:
    unknown = run_cli(
        "generate", "--base", "tiny-sdxl", "--student", "nope", "--prompt", "x", "--out", str(tmp_path / "a")
    )
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("error: unknown model 'nope'; known models:")
    assert len(unknown.stderr.strip().splitlines()) == 1
    needs_student = run_cli(
        "generate", "--base", "tiny-sdxl", "--regime", "hybrid", "--prompt", "x", "--out", str(tmp_path / "b")
    )
    assert needs_student.returncode == 2 and "need a --student" in needs_student.stderr


def test_cuda_without_a_gpu_and_a_broken_student_config_are_one_line_errors(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        cuda = run_cli("generate", *TINY, "--prompt", "x", "--device", "cuda", "--out", str(tmp_path / "c"))
        assert cuda.returncode == 2 and len(cuda.stderr.strip().splitlines()) == 1
        assert "asks for a CUDA GPU" in cuda.stderr and "use --device cpu" in cuda.stderr
    from conceptspace.testbed.pair import WEIGHTS_DIR

    broken = tmp_path / "student"
    (broken / "unet").mkdir(parents=True)
    for file in (WEIGHTS_DIR / "dmd" / "unet").iterdir():
        (broken / "unet" / file.name).write_bytes(file.read_bytes())
    (broken / "unet" / "config.json").write_text(
        '{"_class_name": "UNet2DConditionModel", "in_channels": [1]}'
    )
    args = ["--base", "shapes", "--student", "dmd", "--student-path", str(broken), "--prompt", "x"]
    done = run_cli("generate", *args, "--quiet", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"the config.json in {broken / 'unet'}" in done.stderr and "fix the file" in done.stderr


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke("generate", *TINY, "--prompt", "x", "--out", str(blocker / "out"))
    assert result.exit_code != 0
    assert "cannot write to output folder" in str(result.exception)


def test_help_shows_an_example() -> None:
    for command in ("generate", "trajectory", "models"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output and "conceptspace" in result.output


def test_failed_load_leaves_no_output_folder(tmp_path: Path) -> None:
    empty_cache = tmp_path / "cache"
    empty_cache.mkdir()
    out = tmp_path / "never"
    result = invoke(
        "generate",
        "--base",
        "sdxl",
        "--student",
        "dmd2",
        "--prompt",
        "x",
        "--cache-dir",
        str(empty_cache),
        "--out",
        str(out),
    )
    assert result.exit_code != 0 and "hf download" in str(result.exception)
    assert not out.exists()


def test_repeated_regime_names_are_refused(tmp_path: Path) -> None:
    result = invoke(
        "generate", *TINY, "--regime", "hybrid,hybrid", "--prompt", "x", "--out", str(tmp_path / "o")
    )
    assert result.exit_code != 0 and "regime names repeat" in str(result.exception)


def test_trajectory_commitment_in_an_embedders_space(tmp_path: Path) -> None:
    out = tmp_path / "traj"
    result = invoke(
        "trajectory",
        *TINY,
        "--regime",
        "distilled",
        "--prompt",
        "a shape",
        "-n",
        "2",
        "--embedder",
        "pixels:8",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["similarity"] for r in rows} == {"pixels:8"}
    assert float(rows[-1]["value"]) == pytest.approx(1.0, abs=1e-5)
    assert float(rows[0]["value"]) < float(rows[-1]["value"])
    assert json.loads((out / "run.json").read_text())["parameters"]["commitment_similarity"] == "pixels:8"


def test_generate_can_limit_trajectory_strips(tmp_path: Path, tiny_sdxl_pair) -> None:
    from conceptspace.generate import generate
    from conceptspace.sampling import Distilled

    out = tmp_path / "strips"
    run = generate(
        tiny_sdxl_pair,
        ["a shape"],
        [Distilled()],
        [0, 1, 2],
        out,
        trajectories=True,
        strips=1,
        progress=False,
    )
    assert sorted(p.name for p in (out / "distilled").glob("trajectory_*.png")) == ["trajectory_000_0.png"]
    assert run["parameters"]["strips"] == 1
    rows = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 4 and {row["n"] for row in rows} == {3}  # the curves still use every sample


@pytest.mark.parametrize("args", [["--help"], ["models"], ["demo", "--help"], ["plan", "--base", "flux-dev"]])
def test_help_and_models_answer_without_loading_torch(args: list[str]) -> None:
    # torch + diffusers take seconds to import; commands that only talk must not pay for them
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from conceptspace.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('heavy:', sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))\n"
        "print('seconds:', time.perf_counter() - start)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout
    assert "Usage" in result.stdout or "shapes" in result.stdout or "flux-schnell" in result.stdout


def test_compare_prints_the_ranking_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "fix"
    result = invoke(
        "compare", *TINY, "--methods", "hybrid,cads:noise_scale=0.5", "--prompt", "a red circle", "-n", "3",
        "--steps", "2", "--n-boot", "20", "--n-perm", "20", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("rank") and any(line.startswith("ref.  base") for line in lines)
    assert {"hybrid", "cads-noise_scale0.5"} <= {line.split()[1] for line in lines[1:5]}
    assert (out / "report.html").is_file() and (out / "metrics.csv").is_file()
    bad = run_cli(
        "compare", *TINY, "--methods", "hybrid:k=x:q=1", "--prompt", "x", "--out", str(tmp_path / "b")
    )
    assert bad.returncode == 2 and "hybrid takes no option 'q'" in bad.stderr


def test_memory_plans_on_the_command_line_give_the_resident_images(tmp_path: Path) -> None:
    args = ["generate", *TINY, "--regime", "hybrid", "--prompt", "a red circle", "-n", "2"]
    assert invoke(*args, "--out", str(tmp_path / "resident")).exit_code == 0
    # the tiny pair's weights: 22 MB resident, 13 MB at most at once (its text encoders); 1.5 GiB kept for activations
    offloaded = invoke(
        *args, "--memory", "auto", "--device-memory", "1552MiB", "--out", str(tmp_path / "offload")
    )
    assert offloaded.exit_code == 0, offloaded.output
    assert "memory plan model-offload" in offloaded.output
    for name in ("000_0.png", "000_1.png"):
        a, b = (np.asarray(Image.open(tmp_path / run / "hybrid" / name)) for run in ("resident", "offload"))
        assert np.abs(a.astype(int) - b.astype(int)).max() == 0
    refused = invoke(*args, "--memory", "auto", "--device-memory", "1GiB", "--out", str(tmp_path / "refused"))
    assert refused.exit_code != 0 and "does not fit" in str(refused.exception)
    assert not (tmp_path / "refused" / "run.json").exists()


def test_plan_says_what_fits_each_card_before_loading() -> None:
    result = invoke("plan", "--base", "flux-dev", "--device-memory", "8GB", "--device-memory", "24GB")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("flux-dev + flux-schnell"))
    assert row.split()[-2:] == ["group-offload", "model-offload"] and "published" in row
    qwen = invoke("plan", "--base", "qwen-image", "--device-memory", "24GB")
    assert "fp8 + model-offload" in qwen.output and "1.2a" in qwen.output
    assert invoke("plan", "--device-memory", "lots").exit_code == 2


def test_every_registered_regime_means_the_same_in_every_command():
    """generate, trajectory, diversity and run build --regime with build_regimes; compare with parse_method. Walk
    the registry: each name, and a variant with an option, gives the same regime either way (at the commands'
    defaults), and the commands' shared regime options agree in name, type and default."""
    import inspect

    from conceptspace.cli import build_regimes, diversity, generate, run_prompts, trajectory
    from conceptspace.comparison import parse_method
    from conceptspace.sampling import registered_regimes

    variants = {"hybrid": "k=2", "renoise": "eta=0", "cads": "noise_scale=0.1", "base": "steps=3"}
    names = [name for name in registered_regimes() if name != "named"]
    assert {"base", "distilled", "hybrid", "cads", "renoise", "sliderspace"} <= set(names)
    for name in names:
        spec = "sliderspace:sliders=testbed:a-shape" if name == "sliderspace" else name
        for full in (spec, f"{spec}:{variants[name]}" if name in variants else spec):
            assert build_regimes([full]) == [parse_method(full)], full
    shared = (
        "regime",
        "k",
        "base_guidance",
        "base_schedule",
        "skip",
        "replace",
        "steps",
        "guidance",
        "student_steps",
    )
    signatures = [
        inspect.signature(command).parameters for command in (generate, trajectory, diversity, run_prompts)
    ]
    for option in shared:
        seen = {(str(p[option].annotation), repr(p[option].default)) for p in signatures if option in p}
        assert len(seen) == 1 or option == "regime", (option, seen)  # each command picks its default regimes


def test_unknown_regimes_and_bad_options_fail_before_loading(tmp_path):
    out = tmp_path / "o"
    result = invoke("generate", *TINY, "--prompt", "x", "--out", str(out), "--regime", "hybird")
    assert result.exit_code == 2 and "unknown regime 'hybird'" in result.output
    result = run_cli("generate", *TINY, "--prompt", "x", "--out", str(out), "--regime", "hybrid:q=1")
    assert result.returncode == 2 and "takes no option 'q'" in result.stderr
    assert not out.exists()


# Options whose default belongs to the command (each is said in its --help), by option name: the commands that
# differ, and why. Everything else shared by two commands must agree in spelling, type and default.
OWN_DEFAULTS = {
    "n": "how many images a command needs differs: 4 to look at, 100 to measure, 1000 to find directions",
    "out": "each command writes its own folder",
    "regime": "generate and run sample the student, trajectory and diversity compare regimes",
    "prompt": "transfer and sliderspace discover study one prompt; the others take several",
    "base": "plan and slider train: no default (every pair / a base must be named)",
    "device": "testbed train trains on the CPU unless told",
    "device_memory": "plan plans for several cards at once",
    "dtype": "plan sizes a pair in the dtype it would load in",
    "train_steps": "a slider recipe has its own; SliderSpace trains each direction 300 steps",
}


OWN_SPELLINGS = {
    "out": "an argument where the folder is the command's subject (testbed train, lora convert)",
    "regime": "sliderspace discover samples one regime; the others take several",
    "prompt": "transfer and sliderspace discover study one prompt; the others take several",
    "device_memory": "plan plans for several cards at once; the others load for one",
    "n": "run also takes --per-prompt, the prompt-set tools' name for it",
    "student": "transfer measures several students (repeat or comma-separate; --students too); the others load one",
}


def test_every_shared_option_is_spelled_typed_and_defaulted_once():
    import types
    import typing

    from typer.main import get_command

    def commands(group, prefix=""):
        for name, command in getattr(group, "commands", {}).items():
            if getattr(command, "commands", None):
                yield from commands(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", command

    seen: dict[str, dict] = {}
    for name, command in commands(get_command(app)):
        hints = typing.get_type_hints(command.callback, include_extras=True)
        for param in command.params:
            if param.name == "help":
                continue
            kind = typing.get_args(hints[param.name])[0] if param.name in hints else None
            if typing.get_origin(kind) in (
                typing.Union,
                types.UnionType,
            ):  # "none" may be a command's default
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            spelled = (tuple(param.opts), str(kind))
            entry = seen.setdefault(param.name, {"spellings": {}, "defaults": {}})
            entry["spellings"].setdefault(spelled, []).append(name)
            entry["defaults"].setdefault(repr(param.default), []).append(name)
    for option, entry in seen.items():
        assert len(entry["spellings"]) == 1 or option in OWN_SPELLINGS, (option, entry["spellings"])
        assert len(entry["defaults"]) == 1 or option in OWN_DEFAULTS, (option, entry["defaults"])
    for option in ("quiet", "batch_size", "student", "steps", "guidance", "seed", "cache_dir", "memory"):
        assert len(seen[option]["defaults"]) == 1, option


@pytest.fixture(scope="module")
def slider_file(tiny_sdxl_pair, tmp_path_factory) -> Path:
    """A random LoRA on two of the tiny base's attention layers (its students share the architecture)."""
    from conceptspace import testing
    from conceptspace.lora import write_lora

    unet = tiny_sdxl_pair.base_network
    targets = [name for name, _ in unet.named_modules() if name.endswith("attn1.to_q")][:2]
    path = tmp_path_factory.mktemp("lora") / "slider.safetensors"
    return write_lora(testing.random_lora(unet, targets), path)


def transfer_args(lora: Path, out: Path, *options: str) -> list[str]:
    return [
        "transfer", "--lora", str(lora), "--base", "tiny-sdxl", "--prompt", "a red circle", "--scales", "0,1",
        "--out", str(out), "--embedder", "pixels:32", "--device", "cpu", "--quiet", *options,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "students",
    [
        ["--student", "tiny-dmd", "--student", "tiny-lcm"],
        ["--student", "tiny-dmd,tiny-lcm"],
        ["--students", "tiny-dmd,tiny-lcm"],
    ],
)
def test_transfer_takes_students_repeated_or_comma_separated(tmp_path: Path, slider_file, students) -> None:
    out = tmp_path / "transfer"
    result = invoke(*transfer_args(slider_file, out, *students, "-n", "2"))
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["students"] == ["tiny-dmd", "tiny-lcm"] and run["seeds"] == [0, 1]
    assert "transfer ratio tiny-lcm / tiny-sdxl at +1" in result.output


def test_transfer_samples_n_seeds_from_seed_at_the_size_asked(tmp_path: Path, slider_file) -> None:
    out = tmp_path / "transfer"
    size = ["--height", "32", "--width", "48"]
    result = invoke(
        *transfer_args(slider_file, out, "--student", "tiny-dmd", "-n", "2", "--seed", "5", *size)
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["seeds"] == [5, 6]
    rows = json.loads((out / "metrics.json").read_text())
    assert {r["n"] for r in rows if r["metric"] == "distance_to_scale_0"} == {2}
    images = sorted(p.name for p in (out / "tiny-dmd@+1").glob("*.png"))
    assert images == ["000_5.png", "000_6.png"]
    assert Image.open(out / "tiny-sdxl@0" / "000_6.png").size == (48, 32)


def test_transfer_still_reads_the_deprecated_seeds_option(tmp_path: Path, slider_file) -> None:
    out = tmp_path / "transfer"
    result = invoke(*transfer_args(slider_file, out, "--students", "tiny-dmd", "--seeds", "0-1"))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["seeds"] == [0, 1]
    assert "--seeds is deprecated" in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--seeds", "0-1", "-n", "3"], "--seeds replaces -n and --seed"),
        (["--seeds", "0-1", "--seed", "2"], "--seeds replaces -n and --seed"),
        (["-n", "1"], "a CI over paired seeds: -n must be at least 2"),
        (["--student-path", "weights", "--student", "tiny-dmd,tiny-lcm"], "give one --student"),
    ],
)
def test_transfer_refuses_conflicting_options_before_any_work(tmp_path: Path, options, message) -> None:
    out = tmp_path / "transfer"
    result = invoke(*transfer_args(tmp_path / "never-read.safetensors", out, *options))
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--embedder", "dreamsim:ensemble"], "needs the optional `dreamsim` package"),
        (["--embedder", "clip:foo"], "unknown embedder prefix 'clip'"),
        (["-n", "1"], "diversity is measured between images: -n must be at least 2"),
    ],
)
def test_diversity_fails_before_any_diffusion_network_is_built(tmp_path, options, message):
    args = ["diversity", *TINY, "--regimes", "base,distilled", "--prompt", "x", "--out", str(tmp_path / "o")]
    _assert_fails_before_loading([*args, *options], message)


def test_transfer_fails_on_its_embedder_before_any_diffusion_network_is_built(tmp_path, slider_file):
    args = transfer_args(slider_file, tmp_path / "o", "--embedder", "dreamsim:ensemble")
    _assert_fails_before_loading(args, "needs the optional `dreamsim` package")


def _assert_fails_before_loading(args: list[str], message: str) -> None:
    """One `error:` line and exit 2, in a process where dreamsim cannot be imported and loading a pair would end
    the process with status 3: the pre-flight must fail before `load_pair`."""
    program = (
        "import sys; sys.modules['dreamsim'] = None\n"
        "import conceptspace.models as models\n"
        "models.load_pair = lambda *a, **k: sys.exit(3)\n"
        "from conceptspace.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
