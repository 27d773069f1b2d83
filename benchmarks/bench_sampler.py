"""Speed and memory of the sampler against diffusers' own pipeline, on the tiny SDXL configuration.

Every ratio is measured inside one repetition (the two calls back to back, order alternating), and the median
over repetitions is reported with a bootstrap 95% CI and its range. Memory: bytes of distinct tensors a loaded pair holds, and peak
resident memory of loading it in a fresh process, each against a base pipeline plus one extra UNet loaded with
plain diffusers calls.

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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from conceptspace import Distilled, Hybrid, load_pair, sample

PROMPT = "a red circle on the left"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_ratio(numerator, denominator, repeats: int) -> dict:
    """Median (and range) of numerator-time / denominator-time, measured back to back in each repetition."""
    numerator(), denominator()  # warm-up
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
    }


def speed(repeats: int, n: int) -> dict:
    pair = load_pair("tiny-sdxl", "tiny-dmd", device="cpu", dtype=torch.float32)
    seeds = list(range(n))
    spec = pair.student

    def diffusers_call(role: str, **kwargs):
        pipe = pair.to_diffusers(role)

        def run():
            generators = [torch.Generator().manual_seed(s) for s in seeds]
            pipe(
                PROMPT,
                num_images_per_prompt=n,
                generator=generators,
                height=64,
                width=64,
                output_type="np",
                **kwargs,
            )

        return run

    def ours(regime, record_x0: bool = False):
        return lambda: sample(
            pair, PROMPT, regime, seeds, batch_size=n, output_type="np", record_x0=record_x0, progress=False
        )

    distilled_ref = diffusers_call("student", timesteps=list(spec.timesteps), guidance_scale=0.0)
    base_ref = diffusers_call(
        "base", num_inference_steps=pair.base.num_inference_steps, guidance_scale=pair.base.guidance_scale
    )
    return {
        "ours_vs_diffusers_distilled": paired_ratio(ours(Distilled()), distilled_ref, repeats),
        "ours_vs_diffusers_distilled_x0": paired_ratio(ours(Distilled(), True), distilled_ref, repeats),
        "ours_vs_diffusers_base": paired_ratio(ours("base"), base_ref, repeats),
        "ours_vs_diffusers_base_x0": paired_ratio(ours("base", True), base_ref, repeats),
        "hybrid_vs_distilled": paired_ratio(ours(Hybrid(k=1, base_guidance=0.0)), ours(Distilled()), repeats),
    }


def held_bytes(modules) -> int:
    """Bytes of distinct tensor storages held by ``modules`` (shared weights counted once)."""
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


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
            + [pair.student_unet]
        )
        base_bytes = held_bytes(
            [c for c in pair.pipeline.components.values() if isinstance(c, torch.nn.Module)]
        )
        extra_unet = held_bytes([UNet2DConditionModel.from_config(pair.base_unet.config)])
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
        "speed": speed(args.repeats, args.n),
        "memory": memory(),
    }
    for name, r in results["speed"].items():
        low, high = r["median_ci95"]
        print(
            f"{name:<34} median {r['median_ratio']:.3f}  95% CI [{low:.3f}, {high:.3f}]  "
            f"range [{r['min_ratio']:.3f}, {r['max_ratio']:.3f}]  n={r['repeats']}"
        )
    m = results["memory"]
    print(
        f"{'held memory pair/reference':<34} {m['held_ratio']:.3f}  ({m['held_bytes_pair']} / {m['held_bytes_reference']} bytes)"
    )
    print(
        f"{'peak RSS pair/reference':<34} {m['peak_rss_ratio']:.3f}  ({m['peak_rss_delta_pair']} / {m['peak_rss_delta_reference']} bytes)"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
