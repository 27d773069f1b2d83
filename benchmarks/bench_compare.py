"""Wall time of `conceptspace compare` at its defaults on the testbed (goal: ≤ 180 s on 2 CPU cores), by phase.

The command as a user runs it — default methods, default n, the registry's base schedule — on the demo's three
prompts, in a fresh process writing to a fresh folder (imports and model loading included). Sampling time per
method comes from the run's own run.json; the rest (embedding, the probe, bootstraps, report) is the remainder.

    python benchmarks/bench_compare.py --repeats 2 --out benchmarks/results/compare-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS = ("a shape", "a triangle", "a red shape")


def one_run(threads: int | None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    prompts = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compare"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "conceptspace.cli", "compare", *prompts, "--out", str(out), "--quiet"],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"compare failed:\n{done.stderr[-2000:]}")
        run = json.loads((out / "run.json").read_text())
    sampling = {name: round(sum(t.values()), 2) for name, t in run["wall_time"].items() if name != "total"}
    return {
        "wall_s": round(wall, 2),
        "n": len(run["seeds"]),
        "methods": run["parameters"]["compare"]["methods"],
        "sampling_and_writing_s": sampling,
        "rest_s": round(wall - run["wall_time"]["total"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS (default: torch's choice)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = []
    for i in range(args.repeats):
        runs.append(one_run(args.threads))
        print(f"run {i + 1}: {runs[-1]}", flush=True)
    walls = [r["wall_s"] for r in runs]
    result = {
        "median_wall_s": float(np.median(walls)),
        "min_wall_s": min(walls),
        "max_wall_s": max(walls),
        "goal_s": 180,
        "prompts": list(PROMPTS),
        "runs": runs,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "threads": args.threads,
    }
    print(f"median {result['median_wall_s']:.1f} s over {len(runs)} runs (range {min(walls):.1f}-{max(walls):.1f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
