"""Shared by the wall-time benchmarks of whole commands (bench_demo.py, bench_compare.py): one fresh process per run
writing to a fresh folder, as a user runs it, and the median over a few runs."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def run_command(command: str, args: list[str], threads: int | None) -> tuple[float, dict[str, Any]]:
    """``conceptspace COMMAND ARGS --out <fresh folder> --quiet`` in a new process: its wall seconds and run.json."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / command
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "conceptspace.cli", command, *args, "--out", str(out), "--quiet"],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"{command} failed:\n{done.stderr[-2000:]}")
        return wall, json.loads((out / "run.json").read_text())


def phases(wall: float, run: dict[str, Any]) -> dict[str, Any]:
    """Sampling (and writing) seconds per regime from run.json, and the rest of the process's wall time."""
    sampling = {name: round(sum(t.values()), 2) for name, t in run["wall_time"].items() if name != "total"}
    return {
        "wall_s": round(wall, 2),
        "sampling_and_writing_s": sampling,
        "rest_s": round(wall - run["wall_time"]["total"], 2),
    }


def main(
    description: str,
    one_run: Callable[[int | None], dict[str, Any]],
    *,
    repeats: int,
    goal_s: float,
    extra: dict[str, Any] | None = None,
) -> None:
    """Parse ``--repeats/--threads/--out``, time ``one_run`` that many times, print and write the median."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats)
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
        "goal_s": goal_s,
        **(extra or {}),
        "runs": runs,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "threads": args.threads,
    }
    median, low, high = result["median_wall_s"], min(walls), max(walls)
    print(f"median {median:.1f} s over {len(runs)} runs (range {low:.1f}-{high:.1f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
