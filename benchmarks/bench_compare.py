"""Wall time of `conceptspace compare` on the testbed (goal: ≤ 180 s on 2 CPU cores), by phase.

The command as a user runs it — `--base shapes --student dmd`, default methods, default n, the registry's base
schedule, `--batch-size 16` as docs/remedies.md's figures were measured — on the demo's three prompts, in a fresh process writing to a fresh folder (imports and model loading included). Sampling time per
method comes from the run's own run.json; the rest (embedding, the probe, bootstraps, report) is the remainder.

    python benchmarks/bench_compare.py --repeats 2 --out benchmarks/results/compare-cpu.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_wall import main, phases, run_command

PROMPTS = ("a shape", "a triangle", "a red shape")


def one_run(threads: int | None) -> dict:
    prompts = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    pair = ["--base", "shapes", "--student", "dmd", "--batch-size", "16"]  # as docs/remedies.md's figures
    wall, run = run_command("compare", [*pair, *prompts], threads)
    return {**phases(wall, run), "n": len(run["seeds"]), "methods": run["parameters"]["compare"]["methods"]}


if __name__ == "__main__":
    main(__doc__.split("\n")[0], one_run, repeats=2, goal_s=180, extra={"prompts": list(PROMPTS)})
