"""Claim 4 (x̂0 trajectories) for any registered pair: a distilled model's first x̂0 already looks like its final
image, a base model commits gradually, and hybrid sampling inherits the base's first step.

Writes DIR/x0_strips.png (rows = regimes, columns = steps, decoded x̂0 of the first seed), DIR/commitment.png
(similarity of each step's x̂0 to the final image: mean ± 95% CI over seeds, against the fraction of steps run)
and DIR/commitment.json, and prints the first-step commitment per regime.

    python analyses/trajectories.py --base sdxl --student dmd2 --prompt "a photo of a person" -n 4 --out out/traj
    python analyses/trajectories.py --base tiny-sdxl --student tiny-dmd -n 4 --out out/traj-tiny   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from conceptspace import (  # noqa: E402
    Base,
    Distilled,
    Hybrid,
    commitment_curve,
    decode,
    load_pair,
    sample,
    steps_to_commit,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="sdxl", help="base model (see `conceptspace models`)")
    parser.add_argument("--student", default="dmd2", help="distilled student of the base")
    parser.add_argument("--prompt", default="a photo of a person")
    parser.add_argument("-n", type=int, default=4, help="seeds per regime (the CI is over these)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; sample i uses seed + i")
    parser.add_argument("--columns", type=int, default=8, help="most thumbnails per row (steps subsampled)")
    parser.add_argument("--threshold", type=float, default=0.9, help="similarity counted as committed")
    parser.add_argument("--out", type=Path, default=Path("out/trajectories"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pair = load_pair(args.base, args.student)
    seeds = range(args.seed, args.seed + args.n)
    results = {
        regime.name: sample(pair, args.prompt, regime, seeds, output_type="latent", record_x0=True)
        for regime in (Base(), Distilled(), Hybrid(k=1))
    }

    # Strips: rows = regimes, columns = (subsampled) steps, decoded x̂0 of the first seed.
    fig, axes = plt.subplots(
        len(results), args.columns, figsize=(1.6 * args.columns, 1.9 * len(results)), squeeze=False
    )
    for row, (name, result) in zip(axes, results.items(), strict=True):
        steps = len(result.schedule)
        shown = np.unique(np.linspace(0, steps - 1, min(steps, args.columns)).round().astype(int))
        thumbnails = decode(pair, result.trajectory[0, shown], output_type="np")
        for ax in row:
            ax.axis("off")
        for ax, index, image in zip(row, shown, thumbnails, strict=False):
            ax.imshow(image)
            info = result.schedule[index]
            ax.set_title(f"{info.model[0]} t={info.timestep}\nstep {index + 1}/{steps}", fontsize=7)
        row[0].text(-0.1, 0.5, name, transform=row[0].transAxes, ha="right", va="center", fontsize=10)
    fig.suptitle(f"x̂0 per step, seed {args.seed}: {args.prompt!r} ({args.base} / {args.student})", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "x0_strips.png", dpi=150)
    plt.close(fig)

    # Commitment curves: similarity of each step's x̂0 to the final x̂0 (default: latent correlation).
    fig, ax = plt.subplots(figsize=(5, 3.5))
    summary = {}
    for name, result in results.items():
        curve = commitment_curve(result.trajectory)  # (n, steps)
        mean = curve.mean(0)
        half = 1.96 * curve.std(0, ddof=1) / np.sqrt(len(curve)) if len(curve) > 1 else np.zeros_like(mean)
        fraction = np.arange(1, curve.shape[1] + 1) / curve.shape[1]
        ax.plot(fraction, mean, marker="o", markersize=3, label=name)
        ax.fill_between(fraction, mean - half, mean + half, alpha=0.2)
        summary[name] = {
            "schedule": result.schedule_dicts(),
            "n": len(curve),
            "first_step": [
                float(mean[0]),
                float(mean[0] - half[0]),
                float(mean[0] + half[0]),
            ],  # mean, 95% CI
            "steps_to_commit": float(steps_to_commit(curve, args.threshold).mean()),
            "mean_curve": mean.tolist(),
        }
    ax.axhline(args.threshold, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="fraction of steps run", ylabel="corr(x̂0 at step, final)", xlim=(0, 1.02))
    ax.legend(title=f"n={args.n}, mean ± 95% CI", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "commitment.png", dpi=150)
    plt.close(fig)
    (args.out / "commitment.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(
        f"{'regime':<10} {'first-step commitment [95% CI]':<32} fraction of steps to reach {args.threshold}"
    )
    for name, row in summary.items():
        mean, low, high = row["first_step"]
        print(f"{name:<10} {f'{mean:.3f} [{low:.3f}, {high:.3f}]':<32} {row['steps_to_commit']:.2f}")
    print(f"wrote {args.out}/x0_strips.png, commitment.png and commitment.json")


if __name__ == "__main__":
    main()
