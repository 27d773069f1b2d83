"""Wall time of `conceptspace demo` (goal: ≤ 90 s on 2 CPU cores), by phase, over a few runs.

Each run is a fresh process (imports and model loading included, as a user sees it) writing to a fresh folder;
the phases come from the run's own records: sampling per regime (run.json), and the rest (measuring, report) as
the remainder of the process's wall time.

    python benchmarks/bench_demo.py --repeats 3 --out benchmarks/results/demo-cpu.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_wall import main, phases, run_command


def one_run(threads: int | None) -> dict:
    wall, run = run_command("demo", [], threads)
    return {**phases(wall, run), "generate_s": round(run["wall_time"]["total"], 2)}


if __name__ == "__main__":
    main(__doc__.split("\n")[0], one_run, repeats=3, goal_s=90)
