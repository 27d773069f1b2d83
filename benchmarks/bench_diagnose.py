"""Wall time of `conceptspace diagnose` on the testbed at the command's defaults (goal: ≤ 120 s on 2 CPU cores).

The command as a user runs it — `--base shapes --student dmd --prompt "a shape"`, default n (32), the registry's
50-step CFG base, k = 1…3 and the σ boundaries between the student's steps — in a fresh process writing to a fresh folder (imports and model loading included).
Sampling time per regime comes from the run's own run.json; the rest (decoding and embedding x̂0, bootstraps,
report) is the remainder.

    python benchmarks/bench_diagnose.py --repeats 1 --out benchmarks/results/diagnose-cpu.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_wall import main, run_command

PROMPT = "a shape"


def one_run(threads: int | None) -> dict:
    from cli_wall import phases

    wall, run = run_command("diagnose", ["--base", "shapes", "--student", "dmd", "--prompt", PROMPT], threads)
    return {
        **phases(wall, run),
        "n": len(run["seeds"]),
        "ks": run["parameters"]["ks"],
        "boundaries": run["parameters"]["boundaries"],
        "recommended_k": run["recommendation"]["k"],
        "recommended_boundary": run["recommendation"]["boundary"],
        "reaches_base": run["recommendation"]["reaches_base"],
    }


if __name__ == "__main__":
    main(__doc__.split("\n")[0], one_run, repeats=1, goal_s=120, extra={"prompt": PROMPT})
