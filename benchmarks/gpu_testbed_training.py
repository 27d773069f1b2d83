"""Train the testbed on one GPU under several recipes at once, each exactly ``conceptspace.testbed.train.train_all``.

Stages shared by recipes run once and are copied: VAE + CLIP (common), then one UNet per text-encoder option,
then one student per distillation option, all recipes of a phase in parallel processes (a tiny model leaves a
GPU mostly idle, so they barely slow each other). Each recipe folder is then what

    python -m conceptspace.testbed.train DIR --device cuda --text-lr … --num-pairs … --regression-weight …

writes from scratch with the same seed (up to GPU nondeterminism). Phases past ``--deadline-s`` are skipped.

    python benchmarks/gpu_testbed_training.py --out /tmp/tb --deadline-s 380
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conceptspace.testbed.pair import WEIGHTS_DIR

RECIPES = {
    "cotrain-reg64": {"text_lr": 3e-4, "num_pairs": 64, "regression_weight": 0.25},
    "cotrain-reg8": {"text_lr": 3e-4, "num_pairs": 8, "regression_weight": 0.25},
    "cotrain-dmonly": {"text_lr": 3e-4, "num_pairs": 0, "regression_weight": 0.0},
    "frozen-reg64": {"text_lr": 0.0, "num_pairs": 64, "regression_weight": 0.25},
}


def train(out: Path, recipe: dict, stop_after: str | None, args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, "-m", "conceptspace.testbed.train", str(out), "--device", args.device]
    command += ["--workers", str(args.workers), "--seed", str(args.seed)]
    for stage, steps in args.budget.items():
        command += [f"--{stage}-steps", str(steps)]
    for name, value in recipe.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    if stop_after:
        command += ["--stop-after", stop_after]
    with open(
        out.parent / f"{out.name}.{stop_after or 'dmd'}.log", "w"
    ) as log:  # the child keeps its own handle
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def wait_all(processes: dict[str, subprocess.Popen], deadline: float) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            codes[name] = None
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline-s", type=float, default=380)
    parser.add_argument(
        "--budget", type=json.loads, default={"vae": 1500, "clip": 3000, "unet": 5000, "dmd": 2000}
    )
    args = parser.parse_args()
    deadline = time.monotonic() + args.deadline_s
    start = time.monotonic()
    phases: dict[str, dict] = {}
    root = args.out
    common = root / "common"
    # the tokenizer is shipped (writing it anew needs open_clip's BPE file)
    shutil.copytree(WEIGHTS_DIR / "shapes" / "tokenizer", common / "parts" / "tokenizer")

    def phase(name: str, jobs: dict[str, tuple[Path, dict, str | None]]) -> None:
        began = time.monotonic()
        processes = {job: train(out, recipe, stop, args) for job, (out, recipe, stop) in jobs.items()}
        codes = wait_all(processes, deadline)
        phases[name] = {"seconds": round(time.monotonic() - began, 1), "exit_codes": codes}
        print(f"[{name}] {phases[name]}", flush=True)
        (root / "phases.json").write_text(json.dumps({"budget": args.budget, "phases": phases}, indent=2))

    phase("vae+clip", {"common": (common, RECIPES["cotrain-reg64"], "clip")})
    text_options = {"cotrain": RECIPES["cotrain-reg64"], "frozen": RECIPES["frozen-reg64"]}
    for option in text_options:
        shutil.copytree(common, root / f"unet-{option}")
    phase("unet", {o: (root / f"unet-{o}", recipe, "unet") for o, recipe in text_options.items()})
    for name in RECIPES:
        source = root / f"unet-{name.split('-')[0]}"
        if (source / "shapes").exists():
            shutil.copytree(source, root / name)
    phase(
        "dmd",
        {name: (root / name, recipe, None) for name, recipe in RECIPES.items() if (root / name).exists()},
    )
    print(f"total {time.monotonic() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
