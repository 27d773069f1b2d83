"""Which Vendi order converges at small n (docs/metrics.md): the Vendi score of q = 1, 2 and ∞ on random subsets
of n images, as a share of its value on all N images, for the base and the student of a pair on one prompt.

The Vendi score is a plug-in estimate of an entropy of the kernel's spectrum: at q = 1 every small eigenvalue
counts, so a few images miss the tail and score low; larger q weighs the leading eigenvalues, which few images
already show. Prints, per regime, order and n, the mean over subsets of V(n) / V(N) with the subsets' spread, and
writes the rows as JSON. Public API only.

    python analyses/vendi_small_n.py -N 512 --out benchmarks/results/vendi-small-n.json
    python analyses/vendi_small_n.py --base sdxl --student dmd2 --prompt "a photo of a dog" -N 256
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from conceptspace import Base, load_pair, sample
from conceptspace.demo import DEMO_BASE_STEPS, DEMO_PROMPTS
from conceptspace.embeddings import load_embedder
from conceptspace.metrics import vendi_score

ORDERS = (1.0, 2.0, float("inf"))
SIZES = (8, 16, 32, 64, 128)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--student", default="dmd")
    parser.add_argument("--prompt", default=DEMO_PROMPTS[0])
    parser.add_argument("-N", type=int, default=512, help="images per regime (the reference value's)")
    parser.add_argument("--subsets", type=int, default=200, help="random subsets per n")
    parser.add_argument("--embedder", default=None, help="default: the pair's")
    parser.add_argument("--out", type=Path, default=None, help="write the rows (JSON) here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    testbed = args.base == "shapes"
    if testbed:
        torch.set_num_threads(args.threads)
    pair = load_pair(
        args.base, args.student, **({"dtype": torch.float32, "device": "cpu"} if testbed else {})
    )
    embedder = load_embedder(args.embedder or pair.base.embedder or "pixels:32")
    regimes = {"base": Base(steps=DEMO_BASE_STEPS if testbed else None), "distilled": "distilled"}
    rng = np.random.default_rng(0)
    rows = []
    print(f"| regime | q | V(N={args.N}) | " + " | ".join(f"n={n}" for n in SIZES) + " |")
    print("|---|---|---|" + "---|" * len(SIZES))
    for name, regime in regimes.items():
        images = sample(pair, args.prompt, regime, range(args.N), batch_size=64).images
        x = embedder.embed_images(images).double().numpy()
        for q in ORDERS:
            full = vendi_score(x, q)
            cells = []
            for n in SIZES:
                ratios = np.array(
                    [
                        vendi_score(x[rng.choice(args.N, n, replace=False)], q) / full
                        for _ in range(args.subsets)
                    ]
                )
                rows.append(
                    dict(prompt=args.prompt, regime=name, q=q, n=n, N=args.N, full=full,
                         ratio_mean=float(ratios.mean()), ratio_sd=float(ratios.std()), subsets=args.subsets)
                )  # fmt: skip
                cells.append(f"{ratios.mean():.2f} ± {ratios.std():.2f}")
            print(f"| {name} | {q:g} | {full:.2f} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
