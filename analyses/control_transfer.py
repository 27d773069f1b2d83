"""Claim 2, control transfer (the paper's Table 1): a Concept Slider trained on the base moves its concept on the
distilled students too, with the same file and no retraining.

For every slider recipe: train it on the base (or reuse the file from an earlier run), apply it at each scale to
the base and to each student with each model's own sampler settings, the same seeds at every scale, and measure

* on the testbed, with the factor probe (``recipe.yaml:factor``): the factor's change from scale 0 per model with
  a 95% CI, its rank correlation with the scale (1 = monotone in every seed), and the transfer ratio (change on the
  student / change on the base) with a CI;
* on any pair: the cosine distance to scale 0 in the embedder's space and, when the embedder has a text tower,
  the paper's metric, the percent change in CLIP score against the slider's positive text.

    python analyses/control_transfer.py --out runs/control-transfer          # the testbed, ~8 min on 2 CPU cores
    python analyses/control_transfer.py --base sdxl --students dmd2,lightning,turbo,lcm \\
        --slider sliders/age.yaml --slider sliders/smile.yaml --prompt "a portrait of a person" --seeds 0-31
"""

from __future__ import annotations

import argparse
from pathlib import Path

from conceptspace.sliders import load_recipe, train_slider
from conceptspace.transfer import scale_label, transfer

# the colour recipe ("a red shape" vs "a blue shape") learns warm versus cool on this testbed: measure that
TESTBED_SLIDERS = (
    "sliders/testbed-size.yaml:size",
    "sliders/testbed-colour.yaml:colour=red+orange+yellow-blue+purple+green",
)


def find(rows: list[dict], metric: str, **keys) -> dict | None:
    """The first row of ``metric`` whose columns equal ``keys``."""
    return next(
        (r for r in rows if r["metric"] == metric and all(r.get(k) == v for k, v in keys.items())), None
    )


def cell(row: dict | None, digits: int = 2) -> str:
    if row is None:
        return "-"
    return f"{row['value']:+.{digits}f} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--students", default="dmd", help="comma-separated")
    parser.add_argument(
        "--slider",
        action="append",
        help="a recipe, optionally with the testbed factor it moves: sliders/testbed-size.yaml:size "
        "(repeatable; default: the testbed's size and colour sliders)",
    )
    parser.add_argument("--prompt", default=None, help="default: each recipe's target prompt")
    parser.add_argument("--scales", default="-2,-1,0,1,2")
    parser.add_argument("--seeds", default="0-23")
    parser.add_argument("--t-start", type=int, default=None, help="slider off while t > this")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/control-transfer"))
    args = parser.parse_args()

    students = args.students.split(",")
    table = []
    for entry in args.slider or TESTBED_SLIDERS:
        recipe_path, _, factor = entry.partition(".yaml:")
        recipe_path = recipe_path if recipe_path.endswith(".yaml") else recipe_path + ".yaml"
        recipe = load_recipe(recipe_path)
        slider_file = args.out / f"{recipe.name}-{args.base}.safetensors"
        if not slider_file.exists():  # trained once; rerunning the analysis reuses it
            train_slider(args.base, recipe, slider_file, device=args.device)
        rows = transfer(
            slider_file,
            args.base,
            students,
            args.prompt or recipe.target,
            args.scales,
            args.seeds,
            args.out / recipe.name,
            text=recipe.positive,
            t_start=args.t_start,
            probe_factor=factor or None,
            device=args.device,
        )
        table.append((recipe.name, factor, rows))

    for name, factor, rows in table:
        scales = sorted(
            {r["scale"] for r in rows if r["metric"] == "distance_to_scale_0" and r["scale"] != 0}
        )
        measure = f"{factor} change" if factor else "CLIP score change %"
        metric = "probe_factor_change" if factor else "clip_score_change"
        print(f"\n{name}  ({measure}; 95% CIs over {find(rows, 'distance_to_scale_0')['n']} seeds)")
        header = " ".join(f"{scale_label(s):>22}" for s in scales)
        print(f"{'model':<12} {header} {'slope per unit scale':>22}   rank corr. with scale")
        for model in [args.base, *students]:
            changes = " ".join(f"{cell(find(rows, metric, model=model, scale=s)):>22}" for s in scales)
            slope = cell(find(rows, "probe_factor_slope", model=model))
            correlation = cell(find(rows, "probe_factor_rank_correlation", model=model))
            print(f"{model:<12} {changes} {slope:>22}   {correlation}")
        for student in students:
            ratio_metric = "probe_transfer_ratio" if factor else "transfer_ratio"
            ratios = " ".join(f"{cell(find(rows, ratio_metric, model=student, scale=s)):>22}" for s in scales)
            slope_ratio = cell(find(rows, "probe_transfer_ratio_slope", model=student))
            print(f"{'ratio ' + student:<12} {ratios} {slope_ratio:>22}")
    print(f"\nper slider: {args.out}/<slider>/report.html, metrics.csv")


if __name__ == "__main__":
    main()
