"""Claim 6, the causal check (the paper's "image of a car" table): which steps of a distilled sampler decide its
diversity? One prompt, n seeds, the same seeds in every regime:

* base, and the student alone (distilled);
* the student with its FIRST step replaced by the base (hybrid): diversity should come back, at the student's cost;
* the student with its FINAL steps replaced by the base (replace-final: student step 1, then the base on its own
  schedule): diversity should stay at the student's level, at nearly the base's cost;
* the student without its first step (skip-first), the ablation that tells "the base's step" from "no step".

Per regime: mean pairwise distance in an embedder's space with a 95% CI, its paired difference against the base
(CI and permutation p-value), and the seconds per image; on the testbed also the probe's entropy of shape×colour
(ground truth, in bits, with the world's value). Writes metrics.json/csv and report.html into --out.

    python analyses/causal.py --base sdxl --student dmd2 --embedder dreamsim:ensemble --out runs/causal
    python analyses/causal.py --out runs/causal-testbed          # the testbed, "a shape", ~2 min on one thread
"""

from __future__ import annotations

import argparse
from pathlib import Path

from conceptspace import Base, Distilled, Hybrid, ReplaceFinal, SkipFirst, load_pair
from conceptspace.demo import probe_rows
from conceptspace.diversity import diversity_run, read_run
from conceptspace.report import build_report
from conceptspace.results import metric_row, write_metrics

# The paper's causal table: mean pairwise DreamSim over 100 samples of "image of a car", SDXL / DMD2, and the
# seconds per image it gives for the two replacements.
PAPER = {"base": ".357", "distilled": ".264", "hybrid": ".350 (0.64 s)", "replace-final": ".251 (6.61 s)"}
REGIMES = [Base(), Distilled(), Hybrid(k=1), ReplaceFinal(), SkipFirst(n=1)]
TIMED_PHASES = ("text_encoding", "denoising", "decoding")


def cell(row: dict | None, digits: int = 3, signed: bool = False) -> str:
    if row is None:
        return "-"
    f = f"{'+' if signed else ''}.{digits}f"
    return f"{row['value']:{f}} [{row['ci_low']:{f}}, {row['ci_high']:{f}}]"


def versus_base(row: dict | None, digits: int) -> str:
    """A paired difference against the base with its CI and p-value (a bootstrap p of 0 means < 1/1000)."""
    if row is None:
        return ""
    p = f"p={row['p_value']:.2g}" if row["p_value"] > 0 else "p<0.001"
    return f"{cell(row, digits, signed=True)} ({p})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--student", default="dmd")
    parser.add_argument("--prompt", help='default: "image of a car" (the testbed: "a shape")')
    parser.add_argument("-n", type=int, default=100, help="seeds per regime")
    parser.add_argument("--embedder", help="default: the pair's (the paper used dreamsim:ensemble)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/causal"))
    args = parser.parse_args()

    pair = load_pair(args.base, args.student, device=args.device)
    testbed = pair.base.family == "testbed"
    prompt = args.prompt or ("a shape" if testbed else "image of a car")
    # regimes already in --out for this pair, prompt and seeds are reused, not sampled again
    rows = diversity_run(
        pair,
        [prompt],
        REGIMES,
        range(args.n),
        args.out,
        embedder=args.embedder,
        batch_size=args.batch_size,
        report=False,
    )
    run = read_run(args.out)
    for name, record in run["regimes"].items():  # one timing per regime: the sum over its batches
        seconds = sum(record["timings"].get(phase, 0.0) for phase in TIMED_PHASES) / len(record["images"])
        rows.append(metric_row(prompt, name, "seconds_per_image", seconds, n=len(record["images"])))
    if testbed:
        rows += probe_rows(run, args.out)
    write_metrics(args.out, rows)
    build_report(args.out, title=f"causal table: {prompt!r} on {args.base}/{args.student}")

    def find(regime: str, metric: str, probe: bool = False) -> dict | None:
        return next(
            (
                r
                for r in rows
                if (r["prompt"], r["regime"], r["metric"]) == (prompt, regime, metric)
                and (r.get("embedder") == "probe") == probe
            ),
            None,
        )

    embedder = find("base", "pairwise_distance")["embedder"]
    print(f"\ncausal table on {args.base}/{args.student}, {prompt!r}, n = {args.n} seeds per regime, 95% CIs")
    print(f"mean pairwise distance ({embedder}); paper: SDXL/DMD2, 'image of a car', DreamSim")
    print(f"{'regime':<15}{'distance':<24}{'minus base (p)':<34}{'s/image':>9}   paper")
    for regime in (r.name for r in REGIMES):
        versus = versus_base(find(f"{regime} - base", "diff_pairwise_distance"), 3)
        seconds = find(regime, "seconds_per_image")["value"]
        print(
            f"{regime:<15}{cell(find(regime, 'pairwise_distance')):<24}{versus:<34}{seconds:>9.4f}   "
            f"{PAPER.get(regime, '')}"
        )
    if testbed:
        world = find("base", "entropy_shape_colour", probe=True)["world"]
        print(f"\nprobe entropy of shape×colour, bits (the world: {world:.2f})")
        for regime in (r.name for r in REGIMES):
            versus = versus_base(find(f"{regime} - base", "diff_entropy_shape_colour", probe=True), 2)
            print(f"{regime:<15}{cell(find(regime, 'entropy_shape_colour', probe=True), 2):<24}{versus}")
    print(f"report: {args.out / 'report.html'}")


if __name__ == "__main__":
    main()
