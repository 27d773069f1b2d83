"""Measure the testbed pair's diversity per regime with the shipped probe, and save sample grids.

``python -m conceptspace.testbed.evaluate OUT_DIR [--weights DIR] [--n 64]`` samples every prompt in every regime
(base: 50 Euler steps, CFG 5; distilled: 4 steps at [999, 749, 499, 249]; hybrid: 1 base step + 3 student steps),
reads the images' factors with the probe, and writes tidy rows (``metrics.json`` / ``metrics.csv``) and one PNG grid
per prompt and regime (``grid_<prompt>_<regime>.png``, 8 images a row, upscaled 2×).
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptspace.io import write_json
from conceptspace.sampling import Base, Distilled, Hybrid, Regime, sample
from conceptspace.testbed.data import STUDY_PROMPTS
from conceptspace.testbed.diversity import diversity_rows, expected_diversity
from conceptspace.testbed.pair import WEIGHTS_DIR, load_testbed_pair
from conceptspace.testbed.probe import load_probe

__all__ = ["DEFAULT_PROMPTS", "REGIMES", "evaluate", "grid", "sample_uint8"]

DEFAULT_PROMPTS = STUDY_PROMPTS
REGIMES: dict[str, Regime] = {"base": Base(), "distilled": Distilled(), "hybrid": Hybrid(k=1)}


def sample_uint8(
    pair: Any, prompt: str, regime: Regime, seeds: Sequence[int], batch_size: int = 64
) -> np.ndarray:
    """``uint8 (n, 32, 32, 3)`` images for ``prompt`` in ``regime``."""
    images = sample(
        pair, prompt, regime, seeds, output_type="np", batch_size=batch_size, progress=False
    ).images
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def grid(images: np.ndarray, path: str | os.PathLike, columns: int = 8, scale: int = 2) -> Path:
    """Save ``uint8 (n, h, w, 3)`` images as one PNG grid (1 px grey gutters)."""
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), 128, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = image
    out = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


def evaluate(
    out_dir: str | os.PathLike,
    *,
    weights_dir: str | os.PathLike = WEIGHTS_DIR,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    n: int = 64,
    seed: int = 0,
    regimes: dict[str, Regime] | None = None,
    n_boot: int = 1000,
) -> list[dict[str, Any]]:
    """Sample, probe and measure; write ``metrics.json``, ``metrics.csv`` and grids into ``out_dir``."""
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    pair = load_testbed_pair(weights_dir)
    probe = load_probe()
    regimes = regimes or REGIMES
    seeds = list(range(seed, seed + n))
    rows: list[dict[str, Any]] = []
    for prompt in prompts:
        expected = expected_diversity(prompt)
        for name, regime in regimes.items():
            images = sample_uint8(pair, prompt, regime, seeds)
            grid(images[:32], out_dir / f"grid_{prompt.replace(' ', '_')}_{name}.png")
            factors = probe.predict_factors(images)
            for row in diversity_rows(factors, prompt, name, n_boot=n_boot, seed=seed):
                row["expected"] = expected[row["metric"]]
                rows.append(row)
    write_json(out_dir / "metrics.json", rows)
    with open(out_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--weights", default=str(WEIGHTS_DIR))
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", nargs="*", default=list(DEFAULT_PROMPTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = evaluate(args.out_dir, weights_dir=args.weights, prompts=args.prompts, n=args.n, seed=args.seed)
    for row in rows:
        if row["metric"] in ("entropy_shape_colour", "std_size", "std_x", "std_y"):
            print(
                f"{row['prompt']:>12} {row['regime']:>9} {row['metric']:>22} {row['value']:.3f} "
                f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] n={row['n']} (world {row['expected']:.3f})"
            )


if __name__ == "__main__":
    main()
