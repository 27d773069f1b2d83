"""Speed and memory of the sampler against diffusers' own pipeline, on the tiny SDXL configuration and on the
embedded testbed (``shapes`` + ``dmd``, shipped weights, 32x32; keys prefixed ``testbed_``).

Every ratio is measured inside one repetition (the two calls back to back, order alternating), and the median
over repetitions is reported with a bootstrap 95% CI and its range. Every ours-vs-diffusers ratio first asserts
that both calls produce the same images (max |diff| recorded). Memory: bytes of distinct tensors a loaded pair
holds, and peak resident memory of loading it in a fresh process, each against a base pipeline plus one extra UNet
loaded with plain diffusers calls.

    python benchmarks/bench_sampler.py --repeats 15 --out benchmarks/results/sampler-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from diffusers import DiffusionPipeline

from conceptspace import Base, Distilled, Hybrid, ModelPair, load_pair, sample
from conceptspace.models.memory import module_tensors, storage_bytes
from conceptspace.sampling import Regime

PROMPT = "a red circle on the left"
SAME_IMAGES_ATOL = 1e-4  # the tolerance tests/test_sampling.py holds the sampler to against diffusers


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_ratio(
    numerator: Callable[[], np.ndarray],
    denominator: Callable[[], np.ndarray],
    repeats: int,
    same_images: bool = False,
) -> dict:
    """Median (and range) of numerator-time / denominator-time, measured back to back in each repetition.

    With ``same_images``, the warm-up's outputs of both calls must agree to SAME_IMAGES_ATOL.
    """
    warm_numerator, warm_denominator = numerator(), denominator()
    checked = {}
    if same_images:
        max_abs_diff = float(np.abs(warm_numerator - warm_denominator).max())
        assert max_abs_diff <= SAME_IMAGES_ATOL, f"the two calls' images differ by {max_abs_diff}"
        checked["max_abs_diff"] = max_abs_diff
    ratios, times = [], []
    for i in range(repeats):
        if i % 2:
            b, a = timed(denominator), timed(numerator)
        else:
            a, b = timed(numerator), timed(denominator)
        ratios.append(a / b)
        times.append((a, b))
    times = np.array(times)
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(ratios, size=(2000, len(ratios))), axis=1)
    return {
        "median_ratio": float(np.median(ratios)),
        "median_ci95": [float(x) for x in np.percentile(medians, [2.5, 97.5])],
        "min_ratio": float(np.min(ratios)),
        "max_ratio": float(np.max(ratios)),
        "median_seconds": [float(x) for x in np.median(times, axis=0)],
        "repeats": repeats,
        **checked,
    }


def diffusers_call(
    pipe: DiffusionPipeline, seeds: list[int], size: int, **kwargs
) -> Callable[[], np.ndarray]:
    """The diffusers pipeline call that our sampler reproduces: one generator per sample, as ours uses."""

    def run() -> np.ndarray:
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(
            PROMPT,
            num_images_per_prompt=len(seeds),
            generator=generators,
            height=size,
            width=size,
            output_type="np",
            **kwargs,
        ).images

    return run


def our_call(
    pair: ModelPair, seeds: list[int], regime: Regime | str, record_x0: bool = False
) -> Callable[[], np.ndarray]:
    """Our sampler on the same seeds, all in one batch like the diffusers call."""

    def run() -> np.ndarray:
        result = sample(
            pair,
            PROMPT,
            regime,
            seeds,
            batch_size=len(seeds),
            output_type="np",
            record_x0=record_x0,
            progress=False,
        )
        return result.images

    return run


def speed(repeats: int, n: int) -> dict:
    pair = load_pair("tiny-sdxl", "tiny-dmd", device="cpu", dtype=torch.float32)
    seeds = list(range(n))
    spec = pair.student

    def ours(regime: Regime | str, record_x0: bool = False) -> Callable[[], np.ndarray]:
        return our_call(pair, seeds, regime, record_x0)

    distilled_ref = diffusers_call(
        pair.to_diffusers("student"), seeds, 64, timesteps=list(spec.timesteps), guidance_scale=0.0
    )
    base_ref = diffusers_call(
        pair.to_diffusers("base"),
        seeds,
        64,
        num_inference_steps=pair.base.num_inference_steps,
        guidance_scale=pair.base.guidance_scale,
    )
    return {
        "ours_vs_diffusers_distilled": paired_ratio(ours(Distilled()), distilled_ref, repeats, True),
        "ours_vs_diffusers_distilled_x0": paired_ratio(ours(Distilled(), True), distilled_ref, repeats, True),
        "ours_vs_diffusers_base": paired_ratio(ours("base"), base_ref, repeats, True),
        "ours_vs_diffusers_base_x0": paired_ratio(ours("base", True), base_ref, repeats, True),
        "hybrid_vs_distilled": paired_ratio(ours(Hybrid(k=1, base_guidance=0.0)), ours(Distilled()), repeats),
    }


def testbed_speed(repeats: int, n: int) -> dict:
    """The same ratios on the embedded testbed: a trained StableDiffusion-style pair, 32x32, 4-step student."""
    pair = load_pair("shapes", "dmd", device="cpu", dtype=torch.float32)
    seeds = list(range(n))
    size = pair.base.resolution
    # pair.pipeline is the base's own diffusers pipeline; the student's shares its components.
    base_ref = diffusers_call(
        pair.pipeline,
        seeds,
        size,
        num_inference_steps=pair.base.num_inference_steps,
        guidance_scale=pair.base.guidance_scale,
    )
    distilled_ref = diffusers_call(
        pair.to_diffusers("student"),
        seeds,
        size,
        timesteps=list(pair.student.timesteps),
        guidance_scale=pair.student.guidance_scale,
    )
    return {
        "testbed_ours_vs_diffusers_base": paired_ratio(
            our_call(pair, seeds, Base()), base_ref, repeats, True
        ),
        "testbed_ours_vs_diffusers_distilled": paired_ratio(
            our_call(pair, seeds, Distilled()), distilled_ref, repeats, True
        ),
        "testbed_hybrid_vs_distilled": paired_ratio(
            our_call(pair, seeds, Hybrid()), our_call(pair, seeds, Distilled()), repeats
        ),
    }


def held_bytes(modules) -> int:
    """Bytes of distinct tensor storages held by ``modules`` (shared weights counted once)."""
    return storage_bytes(tensor for module in modules for tensor in module_tensors(module))


LOADER = r"""
import os, resource, sys, torch
os.environ["HF_HUB_OFFLINE"] = "1"
import diffusers, conceptspace
from conceptspace.models import read_state_dict
def rss(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
cache, mode = sys.argv[1], sys.argv[2]
before = rss()
if mode == "pair":
    held = conceptspace.load_pair("sdxl", "dmd2", cache_dir=cache, device="cpu", dtype=torch.float32)
else:
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0", cache_dir=cache)
    from huggingface_hub import hf_hub_download
    unet = diffusers.UNet2DConditionModel.from_config(pipe.unet.config)
    unet.load_state_dict(read_state_dict(hf_hub_download("tianweiy/DMD2", "dmd2_sdxl_4step_unet_fp16.bin", cache_dir=cache)))
    held = (pipe, unet)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(peak - before)
"""


def memory() -> dict:
    from diffusers import UNet2DConditionModel

    from conceptspace.testing import write_hub_cache

    with tempfile.TemporaryDirectory() as cache:
        write_hub_cache(cache, ["sdxl", "dmd2"])
        pair = load_pair("sdxl", "dmd2", cache_dir=cache, device="cpu", dtype=torch.float32)
        pair_bytes = held_bytes(
            [c for c in pair.pipeline.components.values() if isinstance(c, torch.nn.Module)]
            + [pair.student_network]
        )
        base_bytes = held_bytes(
            [c for c in pair.pipeline.components.values() if isinstance(c, torch.nn.Module)]
        )
        extra_unet = held_bytes([UNet2DConditionModel.from_config(pair.base_network.config)])
        peaks = {}
        for mode in ("pair", "reference"):
            out = subprocess.run(
                [sys.executable, "-c", LOADER, cache, mode], capture_output=True, text=True, check=True
            )
            peaks[mode] = int(out.stdout.strip().splitlines()[-1])
    return {
        "held_bytes_pair": pair_bytes,
        "held_bytes_reference": base_bytes + extra_unet,
        "held_ratio": pair_bytes / (base_bytes + extra_unet),
        "peak_rss_delta_pair": peaks["pair"],
        "peak_rss_delta_reference": peaks["reference"],
        "peak_rss_ratio": peaks["pair"] / peaks["reference"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("-n", type=int, default=4, help="images per call")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "speed": speed(args.repeats, args.n) | testbed_speed(args.repeats, args.n),
        "memory": memory(),
    }
    for name, r in results["speed"].items():
        low, high = r["median_ci95"]
        same = f"  max |diff| {r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
        print(
            f"{name:<36} median {r['median_ratio']:.3f}  95% CI [{low:.3f}, {high:.3f}]  "
            f"range [{r['min_ratio']:.3f}, {r['max_ratio']:.3f}]  n={r['repeats']}{same}"
        )
    m = results["memory"]
    print(
        f"{'held memory pair/reference':<36} {m['held_ratio']:.3f}  ({m['held_bytes_pair']} / {m['held_bytes_reference']} bytes)"
    )
    print(
        f"{'peak RSS pair/reference':<36} {m['peak_rss_ratio']:.3f}  ({m['peak_rss_delta_pair']} / {m['peak_rss_delta_reference']} bytes)"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
