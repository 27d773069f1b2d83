"""Claim 5's cost (the paper's Table 3): FID, CLIP score and time per image of base, distilled, hybrid and
skip-first sampling on COCO prompts, for any pair.

One image per prompt and regime through `conceptspace run` (resumable: pass --resume to finish a killed run), then
`conceptspace evaluate`: FID against a folder of real images, CLIP score of each image against its own prompt, and
the mean of the per-image sampling times, each with n and (but FID) a bootstrap 95% CI over images.

    python analyses/table3.py --base sdxl --student dmd2 --fid-ref data/coco-val2014 \\
        --fid-weights weights-inception-2015-12-05-6726825d.pth --out runs/table3     # the first 1000 COCO cases
    python analyses/table3.py --out runs/table3-testbed                               # the testbed, ~2 min, 1 thread

On the testbed (base family "testbed") the prompts are world captions (testbed_30k.csv, written into --out, the
COCO-30k analogue), the FID reference is the images those captions were written from, FID features are the
testbed CLIP's image embeddings, and prompt adherence read by the factor probe (the share of images whose probed
factors match every factor the prompt names) replaces the CLIP score, for which the testbed ships no text tower.
A "real" row measures the same on held-out world images: the floor of FID and the ceiling of adherence at this n.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conceptspace import load_pair, regime_from_name
from conceptspace.embeddings import Embedder, load_embedder
from conceptspace.evaluate import evaluate_run
from conceptspace.metrics import ALL_PROMPTS
from conceptspace.quality import fid, inception_weights
from conceptspace.results import metric_row, write_metrics
from conceptspace.runs import read_cases, read_manifest, run_prompt_set
from conceptspace.testbed.data import captions, fixed_factors, matches, render, sample_factors
from conceptspace.testbed.probe import load_probe
from conceptspace.transfer import mean_row

COCO = Path(__file__).parents[1].parent / "shared/data/coco_30k.csv"
# The paper's Table 3 (SDXL / DMD2 on COCO prompts): FID, CLIP score, seconds per image (IS has no analogue here).
PAPER = {
    "base": (12.74, 31.83, 9.22),
    "distilled": (15.52, 31.69, 0.64),
    "hybrid": (10.79, 32.12, 0.64),
    "skip-first": (10.12, 31.71, 0.53),
}
TESTBED_CAPTIONS = 30_000
REFERENCE_IMAGES = 2_000  # the first world images of testbed_30k.csv; held-out "real" ones come after them


class EmbedderFeatures(torch.nn.Module):
    """An embedder as an FID feature extractor: image batches in [0, 1] to its (unit) image embeddings."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder.embed_pixels(images)


def write_testbed_world(out: Path) -> tuple[Path, np.ndarray, list[str]]:
    """testbed_30k.csv (COCO-30k's layout: case_number, prompt, evaluation_seed) and the rendered reference set."""
    rng = np.random.default_rng(2025)
    factors = sample_factors(TESTBED_CAPTIONS, rng)
    texts = captions(factors, rng)
    seeds = rng.integers(0, 100_000, TESTBED_CAPTIONS)
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "testbed_30k.csv"
    with prompts.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_number", "prompt", "evaluation_seed"])
        writer.writerows(
            [i, text, int(seed)] for i, (text, seed) in enumerate(zip(texts, seeds, strict=True))
        )
    reference = out / "reference"
    reference.mkdir(exist_ok=True)
    for i, image in enumerate(render(factors[:REFERENCE_IMAGES])):
        Image.fromarray(image).save(reference / f"{i}.png")
    held_out = slice(REFERENCE_IMAGES, 2 * REFERENCE_IMAGES)
    return prompts, render(factors[held_out]), texts[held_out]


def adherence(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Per image, 1.0 when the probe reads every factor its prompt names as named, else 0.0."""
    factors = load_probe().predict_factors(images)
    return np.array(
        [matches(factors[i : i + 1], fixed_factors(prompt))[0] for i, prompt in enumerate(prompts)], float
    )


def cell(row: dict | None, digits: int) -> str:
    if row is None:
        return "-"
    if row["metric"] == "fid":
        return f"{row['value']:.{digits}f}"
    return f"{row['value']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--student", default="dmd")
    parser.add_argument("--prompts", type=Path, help=f"default: {COCO} (the testbed: its own captions)")
    parser.add_argument("--from-case", type=int, default=0)
    parser.add_argument("--till-case", type=int, help="default: 999 (the testbed: 199)")
    parser.add_argument("--regimes", default="base,distilled,hybrid,skip-first")
    parser.add_argument("--fid-ref", type=Path, help="a folder of real images (the testbed: rendered)")
    parser.add_argument("--fid-weights", type=Path, help="local FID Inception weights (needed offline)")
    parser.add_argument("--embedder", help="CLIP score embedder (default: the pair's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/table3"))
    parser.add_argument("--resume", action="store_true", help="finish a run already in --out")
    args = parser.parse_args()

    pair = load_pair(args.base, args.student, device=args.device)
    testbed = pair.base.family == "testbed"
    prompts, fid_ref, features = args.prompts or COCO, args.fid_ref, None
    if testbed:
        world_prompts, held_out, held_out_prompts = write_testbed_world(args.out)
        prompts, fid_ref = args.prompts or world_prompts, args.fid_ref or args.out / "reference"
        features = EmbedderFeatures(load_embedder("testbed:clip", device=pair.device, progress=False))
    if fid_ref is not None and features is None:
        inception_weights(args.fid_weights)  # offline without them: fail now, not after hours of sampling
    till_case = args.till_case if args.till_case is not None else (199 if testbed else 999)
    cases = read_cases(prompts, from_case=args.from_case, till_case=till_case)
    regimes = [regime_from_name(name) for name in args.regimes.split(",")]
    run_prompt_set(
        pair, cases, regimes, args.out, batch_size=args.batch_size, resume=args.resume, prompts_file=prompts
    )
    rows = evaluate_run(
        args.out,
        embedder=args.embedder or ("testbed:clip" if testbed else None),
        fid_ref=fid_ref,
        fid_weights=args.fid_weights,
        fid_feature_extractor=features,
        device=args.device,
        progress=False,
    )

    if testbed:  # adherence per regime, and FID and adherence of as many held-out real images
        entries = read_manifest(args.out)
        for regime in [r.name for r in regimes]:
            mine = [e for e in entries if e["regime"] == regime]
            images = np.stack([np.asarray(Image.open(args.out / e["path"]).convert("RGB")) for e in mine])
            matched = adherence(images, [e["prompt"] for e in mine])
            rows.append(mean_row(matched, ALL_PROMPTS, regime, "adherence", seed=0))
        real, real_prompts = held_out[: len(cases)], held_out_prompts[: len(cases)]
        reference = np.stack([np.asarray(Image.open(p)) for p in sorted(fid_ref.glob("*.png"))])
        value = fid(reference, real, feature_extractor=features)
        rows.append(metric_row(ALL_PROMPTS, "real", "fid", value, n=len(real), n_reference=len(reference)))
        rows.append(mean_row(adherence(real, real_prompts), ALL_PROMPTS, "real", "adherence", seed=0))
    write_metrics(args.out, rows)  # evaluate's rows and the testbed's

    def find(regime: str, metric: str) -> dict | None:
        return next((r for r in rows if r["regime"] == regime and r["metric"] == metric), None)

    quality = "adherence" if testbed else "clip_score"
    print(f"\nTable 3 on {args.base}/{args.student}: {len(cases)} prompts, 1 image each; 95% CIs over images")
    print(f"(paper, SDXL/DMD2 on COCO at 1024²: FID, CLIP score, s/image); FID reference {fid_ref}")
    print(f"{'regime':<14}{'FID':>9}  {quality + ' [95% CI]':<28}{'s/image [95% CI]':<30}{'n':>5}   paper")
    for regime in (["real"] if testbed else []) + [r.name for r in regimes]:
        paper = " / ".join(map(str, PAPER[regime])) if regime in PAPER else ""
        n = (find(regime, "seconds_per_image") or find(regime, quality) or {}).get("n", "")
        print(
            f"{regime:<14}{cell(find(regime, 'fid'), 4 if testbed else 2):>9}  "
            f"{cell(find(regime, quality), 3):<28}{cell(find(regime, 'seconds_per_image'), 4):<30}{n:>5}   {paper}"
        )
    print(f"wrote {args.out / 'metrics.json'} and metrics.csv")


if __name__ == "__main__":
    main()
