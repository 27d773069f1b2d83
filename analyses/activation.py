"""Claim 3, measured: SliderSpace finds the base's directions of variation, and distilled sampling does not
activate them — the paper inferred this; here it is a number with a CI per direction.

1. discover: sample n images of the concept (default: the student, as the reference code does), embed them and
   fit the top directions (PCA);
2. train (optional, --train K): a rank-1 slider for each of the top K directions on the base, then measure how far
   each moves the base and the student along its own direction (the transfer of discovered directions);
3. activation: sample every regime on the same fresh seeds and compare the variance along each direction with
   the base's (share with a 95% bootstrap CI, paired permutation p-value).

    python analyses/activation.py --out runs/activation                           # the testbed, a few minutes
    python analyses/activation.py --base sdxl --student dmd2 --prompt "a photo of a dog" -n 1000 \\
        --directions 16 --embedder open_clip:ViT-L-14:openai --activation-n 500 --out runs/dog
"""

from __future__ import annotations

import argparse
from pathlib import Path

from conceptspace.directions import discover, load_study, measure_activation, train_direction_sliders
from conceptspace.models import load_pair
from conceptspace.results import read_metrics


def cell(row: dict | None, digits: int = 2) -> str:
    if row is None:
        return "-"
    return f"{row['value']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"


def find(rows: list[dict], metric: str, **keys) -> dict | None:
    """The first row of ``metric`` whose columns equal ``keys``."""
    return next(
        (r for r in rows if r["metric"] == metric and all(r.get(k) == v for k, v in keys.items())), None
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--student", default="dmd")
    parser.add_argument("--prompt", default="a shape")
    parser.add_argument("-n", type=int, default=1000, help="discovery samples")
    parser.add_argument("--directions", type=int, default=8)
    parser.add_argument(
        "--regime", default="distilled", help="discover on the student (distilled) or the base"
    )
    parser.add_argument("--embedder", default=None, help="default: the base's registry embedder")
    parser.add_argument("--train", type=int, default=0, help="train sliders for the top K directions")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--measure-seeds", type=int, default=24)
    parser.add_argument("--activation-n", type=int, default=256, help="samples per regime for activation")
    parser.add_argument("--regimes", default="base,distilled,hybrid")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--weights", type=Path, help="a folder from `conceptspace testbed train` (default: the shipped testbed)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/activation"))
    args = parser.parse_args()

    paths = {}
    if args.weights:
        paths = {"base_path": args.weights / "shapes", "student_path": args.weights / "dmd"}
    pair = load_pair(args.base, args.student, device=args.device, **paths)
    if (args.out / "sliderspace.safetensors").exists():  # a rerun reuses the discovery
        space, _ = load_study(args.out)
    else:
        space = discover(
            pair, args.prompt, args.out, n=args.n, n_directions=args.directions, regime=args.regime,
            embedder=args.embedder,
        )  # fmt: skip
    if args.train:
        train_direction_sliders(
            args.out, pair=pair, directions=range(min(args.train, space.n_directions)), steps=args.steps,
            measure_seeds=args.measure_seeds,
        )  # fmt: skip
    activation = measure_activation(args.out, pair=pair, regimes=args.regimes.split(","), n=args.activation_n)

    study = read_metrics(args.out)
    regimes = [r for r in args.regimes.split(",") if r != "base"]
    print(f"\n{args.prompt!r}: {space.n_directions} directions from n = {space.n_samples_} ({args.regime})")
    header = " ".join(f"{r + ' share of base':>26}" for r in regimes)
    print(f"{'dir':>3} {'expl. var.':>10} {'top probe factor (r)':>24} {header}")
    for k in range(space.n_directions):
        correlations = [r for r in study if r["metric"] == f"probe_correlation_dir_{k}"]
        top = max(correlations, key=lambda r: abs(r["value"]), default=None)
        meaning = f"{top['factor']} ({top['value']:+.2f})" if top else "-"
        shares = " ".join(
            f"{cell(find(activation, f'variance_share_dir_{k}', regime=r)):>26}" for r in regimes
        )
        print(f"{k:>3} {space.explained_variance_ratio_[k]:>10.3f} {meaning:>24} {shares}")
    top_k = f"variance_share_top_{space.n_directions}"
    print("top-k subspace: " + ", ".join(f"{r} {cell(find(activation, top_k, regime=r))}" for r in regimes))
    slopes = [r for r in study if r["metric"] == "direction_transfer_ratio_slope"]
    for row in slopes:
        base = find(study, "direction_effect_slope", model=args.base, direction=row["direction"])
        student = find(study, "direction_effect_slope", model=args.student, direction=row["direction"])
        print(
            f"slider for direction {row['direction']}: movement along it per unit scale, base {cell(base, 3)}, "
            f"student {cell(student, 3)}, ratio {cell(row)}"
        )
    print(f"\nreports: {args.out}/report.html, {args.out}/activation/report.html")


if __name__ == "__main__":
    main()
