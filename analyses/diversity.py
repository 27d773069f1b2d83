"""Claim 1 and 5 (the paper's Table 2) for any pair: diversity of base, distilled and hybrid sampling.

Five prompts × N images per regime, mean pairwise distance and Vendi score with 95% bootstrap CIs, paired
differences between regimes with permutation p-values, and the paper's point estimates beside ours.

    python analyses/diversity.py --base sdxl --student dmd2 -n 100 --embedder dreamsim:ensemble --out runs/table2
    python analyses/diversity.py --base tiny-sdxl --student tiny-dmd -n 8 --out /tmp/table2   # smoke run, CPU
"""

from __future__ import annotations

import argparse
from pathlib import Path

from conceptspace import Base, Distilled, Hybrid, load_pair
from conceptspace.diversity import diversity_run
from conceptspace.metrics import ALL_PROMPTS

# The paper's Table 2 (mean pairwise DreamSim distance, 100 images per prompt, SDXL / DMD2 / hybrid); the prompt
# texts are ours, the paper names only their topics.
PAPER = {
    "a photo of a sunset beach": (0.396, 0.271, 0.373),
    "a photo of a cute puppy": (0.233, 0.199, 0.265),
    "a photo of a futuristic city": (0.237, 0.198, 0.283),
    "a photo of a person": (0.484, 0.347, 0.461),
    "a painting in the style of van gogh": (0.337, 0.305, 0.366),
}
REGIMES = ("base", "distilled", "hybrid")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="sdxl")
    parser.add_argument("--student", default="dmd2")
    parser.add_argument("-n", type=int, default=100, help="images per prompt and regime")
    parser.add_argument(
        "--embedder", default=None, help="default: the pair's (the paper used dreamsim:ensemble)"
    )
    parser.add_argument("--prompt", action="append", help="replace the five prompts (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/table2"))
    args = parser.parse_args()

    pair = load_pair(args.base, args.student)
    prompts = args.prompt or list(PAPER)
    regimes = [Base(), Distilled(), Hybrid(k=1, base_guidance=0.0)]
    rows = diversity_run(pair, prompts, regimes, range(args.n), args.out, embedder=args.embedder)

    value = {(r["prompt"], r["regime"], r["metric"]): r for r in rows}
    print(
        f"\nmean pairwise distance, {args.n} images per prompt and regime (95% CI); paper's DMD2 numbers in ()"
    )
    print(f"{'prompt':<38}" + "".join(f"{regime:>28}" for regime in REGIMES))
    for prompt in [*prompts, ALL_PROMPTS]:
        cells = []
        for i, regime in enumerate(REGIMES):
            row = value[(prompt, regime, "pairwise_distance")]
            paper = f" ({PAPER[prompt][i]:.3f})" if prompt in PAPER else ""
            cells.append(f"{row['value']:.3f} [{row['ci_low']:.3f},{row['ci_high']:.3f}]{paper}")
        print(f"{prompt[:37]:<38}" + "".join(f"{cell:>28}" for cell in cells))
    for comparison in ("distilled - base", "hybrid - distilled", "hybrid - base"):
        row = value[(ALL_PROMPTS, comparison, "diff_pairwise_distance")]
        print(
            f"{comparison:<20} {row['value']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]  p={row['p_value']:.3g}"
        )
    print(f"report: {args.out / 'report.html'}")


if __name__ == "__main__":
    main()
