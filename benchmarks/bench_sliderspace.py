"""Wall time of SliderSpace fit + activation (goal: ≤ 5 s on 2 CPU cores), median over repeats.

Synthetic CLIP-like data: 10,000 × 512 float32 embeddings (L2-normalised by SliderSpace) with a common mean
direction, 32 latent factors of decaying scale and isotropic noise. Three regimes share the latent factors row
by row (paired, as samples with the same prompt and seed): base, distilled (top 4 factors shrunk 2×) and
hybrid (shrunk 1.25×). The space is fitted on base (16 directions), then activation runs on all three
(n_boot=1000 bootstrap resamples, n_perm=1000 permutations). Each repeat times the two calls back to back;
one untimed repeat first warms up (page faults, BLAS buffers).

    python benchmarks/bench_sliderspace.py --repeats 7 --out benchmarks/results/sliderspace-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from conceptspace.sliderspace import SliderSpace


def synthetic_regimes(n: int, d: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    factors = 32
    mixing = np.linalg.qr(rng.normal(size=(d, factors)))[0].T  # orthonormal factor directions
    scales = 1.0 / np.sqrt(np.arange(1, factors + 1))
    mean = rng.normal(size=d)
    mean *= 3.0 / np.linalg.norm(mean)  # CLIP embeddings share a large common component
    latent = rng.normal(size=(n, factors)) * scales
    shrink_top = np.ones(factors)
    regimes = {}
    for name, shrink in (("base", 1.0), ("distilled", 0.5), ("hybrid", 0.8)):
        shrink_top[:4] = shrink
        noise = 0.05 * rng.normal(size=(n, d))
        regimes[name] = (mean + (latent * shrink_top) @ mixing + noise).astype(np.float32)
    return regimes


def one_repeat(regimes: dict[str, np.ndarray], n_directions: int, n_boot: int, n_perm: int) -> dict:
    start = time.perf_counter()
    space = SliderSpace(n_directions).fit(regimes["base"])
    fitted = time.perf_counter()
    result = space.activation(regimes, n_boot=n_boot, n_perm=n_perm)
    done = time.perf_counter()
    assert result.paired and np.isfinite(result.share_ci).all()
    return {"fit_s": fitted - start, "activation_s": done - fitted, "total_s": done - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--directions", type=int, default=16)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--n-perm", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    load_before = os.getloadavg()
    regimes = synthetic_regimes(args.n, args.dim)
    with threadpool_limits(args.threads):
        one_repeat(regimes, args.directions, args.n_boot, args.n_perm)  # warm-up: page faults, BLAS buffers
        runs = []
        for i in range(args.repeats):
            runs.append(one_repeat(regimes, args.directions, args.n_boot, args.n_perm))
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in runs[-1].items()), flush=True)
    summary = {
        f"median_{key}": round(float(np.median([r[key] for r in runs])), 4)
        for key in ("fit_s", "activation_s", "total_s")
    }
    totals = [r["total_s"] for r in runs]
    result = {
        **summary,
        "min_total_s": round(min(totals), 4),
        "max_total_s": round(max(totals), 4),
        "goal_s": 5,
        "runs": [{k: round(v, 4) for k, v in r.items()} for r in runs],
        "repeats": args.repeats,
        "n": args.n,
        "d": args.dim,
        "n_directions": args.directions,
        "regimes": list(regimes),
        "n_boot": args.n_boot,
        "n_perm": args.n_perm,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "blas": sorted(
            {f"{i['internal_api']} {i.get('version')}" for i in threadpool_info() if i["user_api"] == "blas"}
        ),
        "numpy": np.__version__,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    print(
        f"median total {result['median_total_s']:.3f} s (fit {result['median_fit_s']:.3f} s, activation "
        f"{result['median_activation_s']:.3f} s) over {args.repeats} repeats, goal {result['goal_s']} s"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
