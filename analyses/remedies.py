"""Which remedy restores a student's diversity best, at what quality and cost (docs/remedies.md): `compare` on the
same seeds for the hybrid and the field's remedies, any pair.

Prints, per prompt and method: the diversity measure (on the testbed the probe's shape × colour entropy, bits) with
its paired differences from the student and the base, the quality measure (on the testbed prompt adherence) with
its paired difference from the student, evaluations and milliseconds per image, all with 95% intervals; then the
ranked table over prompts. The folder holds images, tidy rows and report.html. Public API only.

    python analyses/remedies.py -n 128 --out runs/remedies --rows benchmarks/results/remedies-testbed.json
    python analyses/remedies.py --base sdxl --student dmd2 --prompt "a photo of a dog" -n 64 --out runs/remedies-sdxl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from conceptspace import Base, compare, load_pair
from conceptspace.demo import DEMO_BASE_STEPS, DEMO_PROMPTS
from conceptspace.metrics import ALL_PROMPTS as ALL

METHODS = (
    "hybrid",
    "hybrid:k=2",
    "cads",
    "cond-noise",
    "cond-noise:strength=2",
    "interval-guidance",
    "renoise",
    "renoise:eta=0",
    "uncond-first",
    "cfg-zero-star:guidance_scale=2:name=cfg-zero-star-2",
    "repellency",
    "group-inference",
)
TESTBED_METHODS = ("sliderspace:sliders=testbed:a-shape:name=sliderspace",)  # the shipped sliders of "a shape"


def interval(row: dict | None, signed: bool = False) -> str:
    if row is None:
        return "—"
    f = "+.2f" if signed else ".2f"
    return f"{row['value']:{f}} [{row['ci_low']:{f}}, {row['ci_high']:{f}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--student", default="dmd")
    parser.add_argument("--prompt", action="append", help="repeatable (default: the demo's three prompts)")
    parser.add_argument("--method", action="append", help=f"repeatable (default: {', '.join(METHODS)})")
    parser.add_argument("-n", type=int, default=128, help="seeds per prompt and method (paired)")
    parser.add_argument("--base-steps", type=int, default=None, help="default: the demo's 12 on the testbed")
    parser.add_argument("--out", type=Path, default=Path("runs/remedies"))
    parser.add_argument("--rows", type=Path, default=None, help="also copy the tidy rows (JSON) here")
    parser.add_argument("--fresh", action="store_true", help="sample every method again (no reuse of --out)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the testbed")
    args = parser.parse_args()

    testbed = args.base == "shapes"
    if testbed:
        torch.set_num_threads(args.threads)
    pair = load_pair(args.base, args.student, **({"dtype": torch.float32, "device": "cpu"} if testbed else {}))
    steps = args.base_steps or (DEMO_BASE_STEPS if testbed else None)
    result = compare(
        pair,
        args.prompt or list(DEMO_PROMPTS),
        args.method or list(METHODS) + (list(TESTBED_METHODS) if testbed else []),
        seeds=range(args.n),
        out_dir=args.out,
        base=Base(steps=steps),
        batch_size=64 if testbed else 4,
        reuse=not args.fresh,
    )
    settings = json.loads((args.out / "run.json").read_text())["parameters"]["compare"]
    diversity, quality = settings["diversity"], settings["quality"]

    def find(prompt: str, regime: str, metric: str, embedder: str | None) -> dict | None:
        for r in result.rows:
            if (r["prompt"], r["regime"], r["metric"]) == (prompt, regime, metric) and (
                embedder is None or r.get("embedder") == embedder
            ):
                return r
        return None

    names = ["base", "distilled", *settings["methods"]]
    print(
        f"| prompt | method | {diversity['metric']} | − distilled | − base | {quality['metric']} | − distilled "
        "| coverage of the base | − distilled |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    prompts = list(dict.fromkeys(r["prompt"] for r in result.rows if r["metric"] == diversity["metric"]))
    for prompt in prompts:
        for name in names:
            d, q = diversity["metric"], quality["metric"]
            cells = [
                interval(find(prompt, name, d, diversity["embedder"])),
                interval(find(prompt, f"{name} - distilled", f"diff_{d}", diversity["embedder"]), True),
                interval(find(prompt, f"{name} - base", f"diff_{d}", diversity["embedder"]), True),
                interval(find(prompt, name, q, quality["embedder"])),
                interval(find(prompt, f"{name} - distilled", f"diff_{q}", quality["embedder"]), True),
                interval(find(prompt, name, "coverage", None)),  # against the base's own samples, own seeds out
                interval(find(prompt, f"{name} - distilled", "diff_coverage", None), True),
            ]
            print(f"| {prompt} | {name} | " + " | ".join(cells) + " |")
    print()
    print("| rank | method | − distilled | quality − distilled | FD to base | NFE | ms / image | Pareto |")
    print("|---|---|---|---|---|---|---|---|")
    for e in result.ranking:
        ms = "—" if e["seconds_per_image"] is None else f"{1000 * e['seconds_per_image']['value']:.1f}"
        print(
            f"| {e['rank'] or 'ref.'} | {e['method']} | {interval(e['diversity_vs_student'], True)} | "
            f"{interval(e['quality_vs_student'], True)} | {interval(e['fd'])} | {e['evaluations']:.0f} | {ms} | "
            f"{'yes' if e['pareto'] else ''} |"
        )
    print()
    print(
        "| method | Vendi (q=1) | Vendi (q=2) | Conditional-Vendi | − distilled | precision | recall | coverage | CMMD |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    space = next(r["embedder"] for r in result.rows if r["metric"] == "vendi")  # the embedder's, not the probe's
    for name in names:
        cells = [
            interval(find(ALL, name, "vendi", space)),
            interval(find(ALL, name, "vendi_q2", space)),
            interval(find(ALL, name, "conditional_vendi", space)),
            interval(find(ALL, f"{name} - distilled", "diff_conditional_vendi", space), True),
            *(interval(find(ALL, name, metric, space)) for metric in ("precision", "recall", "coverage", "cmmd")),
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.rows:
        args.rows.parent.mkdir(parents=True, exist_ok=True)
        args.rows.write_text(json.dumps(result.rows, indent=1, default=float))
        print(f"wrote {args.rows}")
    print(f"report: {result.report}")


if __name__ == "__main__":
    main()
