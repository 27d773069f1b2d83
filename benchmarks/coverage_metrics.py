"""Coverage of the diversity intervals, by simulation: the figures in docs/metrics.md ("How the intervals are made").

Embeddings come from a distribution whose population statistics are known or computed by Monte Carlo: unit vectors
x = (a cos θ, a sin θ, √(1−a²) w) with θ ~ N(0, s²) and w uniform on a sphere (mean 0), so the mean pairwise cosine
distance is exactly 1 − a² e^{−s²}. Per check, the share of repeats whose 95% interval covers the truth (with a
binomial 95% interval of its own), or for the permutation test the share of null p-values below 0.05:

* pairwise distance, bootstrap on distinct original pairs (ours) and the naive bootstrap (duplicates counted as
  pairs), n = 50, in a typical (a = 0.8, 6 extra dims) and a concentrated (a = 0.3, 60 extra dims) case;
* Vendi, delete-one jackknife at q = 1, 2, ∞ (n = 50), and the large-set routes (second-order at n = 400, d = 8;
  delete-a-group at n = 300, d = 100), truth = the mean score of 1,000 draws;
* paired permutation test under the null (two exchangeable regimes sharing the seed), n = 30.

    python benchmarks/coverage_metrics.py --repeats 1000 --out benchmarks/results/coverage-metrics.json   # ~10 min
    python benchmarks/coverage_metrics.py --repeats 200                                                   # ~2 min
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from conceptspace.metrics import compare_diversity, diversity, vendi_score


def embeddings(
    theta: np.ndarray, rng: np.random.Generator, a: float = 0.8, extra_dims: int = 6
) -> np.ndarray:
    w = rng.normal(size=(len(theta), extra_dims))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return np.concatenate([a * np.c_[np.cos(theta), np.sin(theta)], math.sqrt(1 - a * a) * w], axis=1)


def share(hits: int, repeats: int) -> dict[str, float]:
    """The share with a Wilson 95% interval."""
    p, z = hits / repeats, 1.96
    centre = (p + z * z / (2 * repeats)) / (1 + z * z / repeats)
    half = z * math.sqrt(p * (1 - p) / repeats + z * z / (4 * repeats**2)) / (1 + z * z / repeats)
    return {"value": p, "ci_low": centre - half, "ci_high": centre + half, "n": repeats}


def pairwise(repeats: int, a: float, extra_dims: int, rng: np.random.Generator) -> tuple[dict, dict]:
    n, truth = 50, 1 - a * a * math.exp(-1.0)
    ours = naive = 0
    for repeat in range(repeats):
        x = embeddings(rng.normal(0, 1.0, n), rng, a, extra_dims)
        estimate = diversity(x, n_boot=1000, seed=repeat)
        ours += estimate.ci_low <= truth <= estimate.ci_high
        draws = rng.integers(0, n, size=(1000, n)) + n * np.arange(1000)[:, None]
        counts = np.bincount(draws.ravel(), minlength=1000 * n).reshape(1000, n)
        replicates = (n**2 - ((counts @ x) ** 2).sum(axis=1)) / (n * (n - 1))  # duplicates counted as pairs
        low, high = np.quantile(replicates, [0.025, 0.975])
        naive += low <= truth <= high
    return share(ours, repeats), share(naive, repeats)


def vendi(repeats: int, n: int, extra_dims: int, q: float, rng: np.random.Generator) -> dict:
    draw = lambda: embeddings(rng.normal(0, 1.0, n), rng, extra_dims=extra_dims)  # noqa: E731
    truth = np.mean([vendi_score(draw(), q=q) for _ in range(1000)])
    hits = 0
    for _ in range(repeats):
        estimate = diversity(draw(), "vendi", q=q)
        hits += estimate.ci_low <= truth <= estimate.ci_high
    return share(hits, repeats)


def permutation_null(repeats: int, rng: np.random.Generator) -> dict:
    below, n = 0, 30
    for repeat in range(repeats):
        z = rng.normal(size=n)
        xa = embeddings(0.8 * z + 0.6 * rng.normal(size=n), rng)
        xb = embeddings(0.8 * z + 0.6 * rng.normal(size=n), rng)
        below += compare_diversity(xa, xb, n_boot=0, n_perm=199, seed=repeat).p_value < 0.05
    return share(below, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    results = {}
    for case, a, dims in (("typical", 0.8, 6), ("concentrated", 0.3, 60)):
        ours, naive = pairwise(args.repeats, a, dims, rng)
        results[f"pairwise_distance {case}: distinct pairs (ours)"] = ours
        results[f"pairwise_distance {case}: naive bootstrap"] = naive
    for q in (1.0, 2.0, math.inf):
        results[f"vendi q={q:g} n=50: delete-one jackknife"] = vendi(args.repeats, 50, 6, q, rng)
    results["vendi q=1 n=400 d=8: second-order jackknife"] = vendi(args.repeats, 400, 6, 1.0, rng)
    results["vendi q=1 n=300 d=100: delete-a-group jackknife"] = vendi(args.repeats, 300, 98, 1.0, rng)
    results["permutation p < 0.05 under the null (nominal 0.05)"] = permutation_null(args.repeats, rng)
    for name, r in results.items():
        print(f"{name:<58} {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] (n = {r['n']} repeats)")
    print(f"{time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"repeats": args.repeats, "seed": args.seed, "results": results}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
