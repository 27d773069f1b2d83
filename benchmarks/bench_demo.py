"""Wall time of `conceptspace demo` (goal: ≤ 90 s on 2 CPU cores), by phase, over a few runs.

Each run is a fresh process (imports and model loading included, as a user sees it) writing to a fresh folder;
the phases come from the run's own records: sampling per regime (run.json), and the rest (measuring, report) as
the remainder of the process's wall time.

    python benchmarks/bench_demo.py --repeats 3 --out benchmarks/results/demo-cpu.json
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


def one_run(threads: int | None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "conceptspace.cli", "demo", "--out", str(out), "--quiet"],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"demo failed:\n{done.stderr[-2000:]}")
        run = json.loads((out / "run.json").read_text())
    sampling = {name: round(sum(t.values()), 2) for name, t in run["wall_time"].items() if name != "total"}
    return {
        "wall_s": round(wall, 2),
        "generate_s": round(run["wall_time"]["total"], 2),
        "sampling_and_writing_s": sampling,
        "rest_s": round(wall - run["wall_time"]["total"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
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
        "goal_s": 90,
        "runs": runs,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "threads": args.threads,
    }
    print(
        f"median {result['median_wall_s']:.1f} s over {len(runs)} runs (range {min(walls):.1f}-{max(walls):.1f} s)"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
