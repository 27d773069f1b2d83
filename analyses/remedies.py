"""Which remedy restores the testbed student's diversity best, at what quality and cost (docs/remedies.md).

For each prompt and method, on the same seeds: the entropy of the probe's shape × colour reading (bits, 95% CI),
its paired difference from the student and from the base, prompt adherence (the share of images whose probed
factors match what the prompt fixes, 95% CI; "—" for a prompt that fixes nothing), network evaluations per image
and seconds per image. Public API only.

    python analyses/remedies.py -n 128 --out benchmarks/results/remedies-testbed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from conceptspace import Base, Distilled, Hybrid, load_pair
from conceptspace.demo import DEMO_BASE_STEPS
from conceptspace.metrics import mean_estimate
from conceptspace.remedies import CADS, CondNoise, IntervalGuidance, evaluations
from conceptspace.testbed.data import LEVELS, fixed_factors
from conceptspace.testbed.diversity import entropy, paired_difference
from conceptspace.testbed.evaluate import sample_uint8
from conceptspace.testbed.probe import load_probe

PROMPTS = ("a shape", "a triangle", "a red shape")
METHODS = {
    "base": Base(steps=DEMO_BASE_STEPS),
    "distilled": Distilled(),
    "hybrid": Hybrid(),
    "hybrid k=2": Hybrid(k=2),
    "cads": CADS(),
    "cond-noise": CondNoise(),
    "interval-guidance": IntervalGuidance(),
}


def adherence(read: dict[str, np.ndarray], prompt: str) -> np.ndarray | None:
    """1 where an image's probed categorical factors match every one the prompt fixes, else 0; None if it fixes
    none."""
    fixed = {k: v for k, v in fixed_factors(prompt).items() if k in ("shape", "colour", "background")}
    if not fixed:
        return None
    hits = np.ones(len(read["shape"]), dtype=bool)
    for factor, level in fixed.items():
        hits &= read[factor] == LEVELS[factor].index(level)
    return hits.astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=128, help="seeds per prompt and method (paired)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(2)
    pair = load_pair("shapes", "dmd", dtype=torch.float32, device="cpu")
    probe = load_probe()
    seeds = range(args.n)
    rows = []
    for prompt in PROMPTS:
        reads, seconds = {}, {}
        for name, regime in METHODS.items():
            start = time.perf_counter()
            images = sample_uint8(pair, prompt, regime, seeds)
            seconds[name] = (time.perf_counter() - start) / args.n
            reads[name] = probe.predict(images)
        for name, regime in METHODS.items():
            cost = evaluations(regime.segments(pair, pair.device))
            shape_colour = reads[name]["shape"] * len(LEVELS["colour"]) + reads[name]["colour"]
            hits = adherence(reads[name], prompt)
            rows.append(
                {
                    "prompt": prompt,
                    "method": name,
                    "n": args.n,
                    "entropy": entropy(shape_colour, len(LEVELS["shape"]) * len(LEVELS["colour"])).__dict__,
                    "minus_distilled": paired_difference(
                        reads[name], reads["distilled"], "entropy_shape_colour"
                    ).__dict__,
                    "minus_base": paired_difference(reads[name], reads["base"], "entropy_shape_colour").__dict__,
                    "adherence": None if hits is None else mean_estimate(hits).__dict__,
                    "evaluations": cost["total"],
                    "seconds_per_image": seconds[name],
                }
            )

    def ci(e: dict) -> str:
        return f"{e['value']:+.2f} [{e['ci_low']:+.2f}, {e['ci_high']:+.2f}]"

    print("| prompt | method | H(shape×colour) bits | − distilled | − base | adherence | NFE | ms/image |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = r["entropy"]
        stick = "—" if r["adherence"] is None else f"{r['adherence']['value']:.2f} [{r['adherence']['ci_low']:.2f}, {r['adherence']['ci_high']:.2f}]"
        print(
            f"| {r['prompt']} | {r['method']} | {e['value']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}] | "
            f"{ci(r['minus_distilled'])} | {ci(r['minus_base'])} | {stick} | {r['evaluations']} | "
            f"{1000 * r['seconds_per_image']:.1f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1, default=float))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
