"""Wall time of the Vendi score with its 95% jackknife interval (goal: ≤ 2 s at 10,000 × 512 on 2 CPU cores).

Synthetic CLIP-like embeddings (a common direction, 32 decaying factors, isotropic noise), L2-normalised. Per size,
the median of ``--repeats`` timed calls of ``metrics.diversity(x, "vendi")`` after one untimed warm-up, and which
jackknife ran (exact delete-one up to 256 images, delete-a-group in between, second-order delete-one from one
eigendecomposition at n ≥ 4·d; see conceptspace/metrics/draws.py).

    python benchmarks/bench_vendi.py --repeats 5 --out benchmarks/results/vendi-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from conceptspace import metrics

SIZES = (100, 1000, 4000, 10_000)


def embeddings(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    factors = 32
    mixing = np.linalg.qr(rng.normal(size=(d, factors)))[0].T
    mean = rng.normal(size=d)
    x = (
        3.0 * mean / np.linalg.norm(mean)
        + (rng.normal(size=(n, factors)) / np.sqrt(np.arange(1, 33))) @ mixing
    )
    x += 0.05 * rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    for n in SIZES:
        x = embeddings(n, args.dim)
        metrics.diversity(x, "vendi")  # warm-up
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            estimate = metrics.diversity(x, "vendi")
            seconds.append(time.perf_counter() - start)
        if n <= metrics.EXACT_JACKKNIFE_MAX:
            path = "exact delete-one"
        elif n >= 4 * args.dim:
            path = "second-order delete-one"
        else:
            path = f"delete-a-group ({metrics.JACKKNIFE_GROUPS})"
        row = dict(
            n=n,
            dim=args.dim,
            median_s=float(np.median(seconds)),
            min_s=min(seconds),
            max_s=max(seconds),
            jackknife=path,
            vendi=estimate.value,
            ci=[estimate.ci_low, estimate.ci_high],
        )
        results.append(row)
        print(
            f"n = {n:>6} × {args.dim}: {row['median_s']:.3f} s median ({row['min_s']:.3f}–{row['max_s']:.3f}, "
            f"{args.repeats} repeats), {path}; Vendi {estimate.value:.2f} [{estimate.ci_low:.2f}, {estimate.ci_high:.2f}]"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"machine": platform.machine(), "cpus": os.cpu_count(), "results": results}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
