"""Memory plans: per plan, the peak accelerator memory and the seconds per image of base, distilled and hybrid,
against diffusers' own single pipeline under the same offload call, in one run.

For each plan (``resident``, ``model-offload``, ``group-offload``) one set of weights serves both sides, so a
full-size pair needs no second copy: diffusers' pipeline of the base, then of the student, runs first under
diffusers' matching call (``.to``, ``enable_model_cpu_offload``, ``enable_group_offload``); its hooks are removed;
then the pair is placed by the plan and sampled. Each side is timed ``--repeats`` times after a warm-up (the device
synchronised around every call); a ratio is the ratio of the two medians with a 95% bootstrap CI (each side
resampled). The hybrid is timed at 1 and at ``--images`` images per call, so a call's seconds split into a fixed
part (text encoding, the moves an offload plan makes every call) and a part per image (the slope). Reported:

- ours / diffusers per call, base and distilled, under the same plan (goal ≤ 1.03; same images asserted);
- hybrid under the plan / hybrid resident, per image and per call (goal per image ≤ 1.5 for a 4-step student on
  a GPU; the per-call part is the moves, paid once per call whatever its number of images);
- peak bytes: measured on CUDA (``max_memory_allocated`` during a hybrid call), accounted from the placements
  on a CPU (the ledger's peak for model-offload, every part for resident, two groups for group-offload).

    python benchmarks/bench_memory.py --family qwenimage --size tiny --device cpu --out benchmarks/results/memory-tiny-cpu.json
    python benchmarks/bench_memory.py --family flux --size full --device cuda --out /tmp/memory-flux.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from bench_flow import TINY, _seconds, full_pair, synchronize

from conceptspace import Base, Distilled, Hybrid, load_pair, sample
from conceptspace.models.memory import group_bytes, held_bytes, pair_parts, place
from conceptspace.models.sizes import peak_estimate

PROMPT = "a photo of a cat"
PLANS = ("resident", "model-offload", "group-offload")


def diffusers_offload(pipe: Any, plan: str, device: torch.device) -> None:
    """diffusers' own call for ``plan`` on one pipeline."""
    if plan == "resident":
        pipe.to(device)
    elif plan == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_group_offload(
            onload_device=device,
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=device.type == "cuda",
        )


def build_pair(family: str, size: str, plan: str, device: torch.device, dtype: torch.dtype) -> Any:
    if size == "tiny":
        base, student, _ = TINY[family]
        return load_pair(base, student, device=device, dtype=dtype, memory=plan)
    pair = full_pair(
        family, device, dtype
    )  # built on the device (fast), then placed: offload plans start on the CPU
    return place(pair, plan, device)


def accounted_peak(pair: Any) -> int:
    """The bytes the plan keeps on the accelerator at once, by the placements (no allocator needed)."""
    sizes = held_bytes(pair)
    if pair.memory_plan == "model-offload":
        return pair.placement.peak_bytes
    if pair.memory_plan == "resident":
        return sum(sizes.values())
    networks = {id(pair.base_network), id(pair.student_network)}
    groups = {
        name: max(group_bytes(module, id(module) in networks) for module in modules)
        for name, modules in pair_parts(pair).items()
    }
    return peak_estimate(sizes, "group-offload", groups)


def per_image(seconds_one: float, seconds_many: float, images: int) -> tuple[float, float]:
    """(fixed seconds per call, seconds per image) from a call of one image and one of ``images``."""
    slope = (seconds_many - seconds_one) / (images - 1)
    return seconds_one - slope, slope


def measure_plan(
    args: argparse.Namespace, plan: str, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    pair = build_pair(args.family, args.size, "resident", device, dtype)
    size = pair.default_resolution if args.size == "tiny" else 1024
    steps = {
        "base": args.base_steps,
        "distilled": len(pair.student.timesteps or ()) or pair.student.num_inference_steps,
    }

    def ours(regime: Any, n: int) -> Callable[[], Any]:
        return lambda: sample(pair, PROMPT, regime, range(n), height=size, width=size, batch_size=n, output_type="np", progress=False)  # fmt: skip

    results: dict[str, Any] = {"plan": plan}
    # diffusers' own single pipelines under the same offload call, on the pair's own weights, first
    theirs: dict[str, tuple[list[float], np.ndarray]] = {}
    for role in ("base", "student"):
        pipe = pair.to_diffusers(role)
        diffusers_offload(pipe, plan, device)
        call = _diffusers_call(pipe, pair, role, steps, size)
        theirs[role] = (timed(call, device, args.repeats), np.asarray(call().images, dtype=np.float32))
        remove_diffusers_offload(pipe, plan)
    place(pair, plan, device)
    for role, regime in (("base", Base(steps=args.base_steps)), ("student", Distilled())):
        seconds = timed(ours(regime, 1), device, args.repeats)
        difference = float(
            np.abs(np.asarray(ours(regime, 1)().images, dtype=np.float32) - theirs[role][1]).max()
        )
        results[f"ours_vs_diffusers_{role}"] = {**ratio_of_medians(seconds, theirs[role][0]), "max_pixel_difference": difference}  # fmt: skip
    # the hybrid: a call's fixed part and its part per image
    one, many = (
        timed(ours(Hybrid(), 1), device, args.repeats),
        timed(ours(Hybrid(), args.images), device, args.repeats),
    )
    fixed, slope = per_image(float(np.median(one)), float(np.median(many)), args.images)
    results["hybrid"] = {"seconds_one": float(np.median(one)), f"seconds_{args.images}": float(np.median(many)),
                         "fixed_per_call_s": fixed, "per_image_s": slope, "n": args.repeats}  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        ours(Hybrid(), 1)()
        synchronize(device)
        results["peak_bytes_measured"] = torch.cuda.max_memory_allocated(device)
    results["peak_bytes_accounted"] = accounted_peak(pair)
    results["held_bytes"] = held_bytes(pair)
    if pair.placement is not None:
        results["moves_per_hybrid_call"] = _moves_per_call(pair, ours(Hybrid(), 1))
    return results  # (the pair goes with this frame: the next plan builds its own)


def remove_diffusers_offload(pipe: Any, plan: str) -> None:
    """Take diffusers' offload hooks off the pipeline's modules again (they are the pair's too)."""
    if plan == "model-offload":
        pipe.remove_all_hooks()
    elif plan == "group-offload":
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.group_offloading import (
            _GROUP_OFFLOADING,
            _LAYER_EXECUTION_TRACKER,
            _LAZY_PREFETCH_GROUP_OFFLOADING,
        )

        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                registry = HookRegistry.check_if_exists_or_initialize(module)
                for name in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
                    registry.remove_hook(name, recurse=True)
                module.to("cpu")


def timed(call: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls after a warm-up."""
    call()
    return [_seconds(call, device) for _ in range(repeats)]


def ratio_of_medians(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    """median(ours) / median(theirs) with a 95% bootstrap CI, each side resampled on its own."""
    rng = np.random.default_rng(0)
    a, b = np.array(ours), np.array(theirs)
    boot = np.median(rng.choice(a, (2000, len(a))), 1) / np.median(rng.choice(b, (2000, len(b))), 1)
    return {"ratio": float(np.median(a) / np.median(b)), "ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "ours_median_s": float(np.median(a)), "reference_median_s": float(np.median(b)), "n": len(a)}  # fmt: skip


def _diffusers_call(pipe: Any, pair: Any, role: str, steps: dict[str, int], size: int) -> Callable[[], Any]:
    spec = pair.spec(role)
    kwargs: dict[str, Any] = {"num_inference_steps": steps["base" if role == "base" else "distilled"]}
    if spec.timesteps is not None:
        kwargs = {"timesteps": list(spec.timesteps)}
    if pair.family.name == "qwenimage":  # true CFG, with the model card's negative prompt when it runs
        guidance = {
            "true_cfg_scale": spec.guidance_scale,
            **({"negative_prompt": " "} if spec.guidance_scale > 1 else {}),
        }
    else:
        guidance = {"guidance_scale": spec.guidance_scale}
    if pair.family.name == "pixart":
        guidance["use_resolution_binning"] = False  # sample the size asked
    return lambda: pipe(PROMPT, height=size, width=size, generator=[torch.Generator().manual_seed(0)],
                        output_type="np", **kwargs, **guidance)  # fmt: skip


def _moves_per_call(pair: Any, call: Callable[[], Any]) -> list[str]:
    before = len(pair.placement.moves)
    call()
    return [f"{m.part} {m.direction}" for m in pair.placement.moves[before:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="qwenimage", choices=sorted(TINY))
    parser.add_argument("--size", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--plans", default=",".join(PLANS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=4, help="images per call for the per-image slope")
    parser.add_argument("--base-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    report: dict[str, Any] = {
        "family": args.family, "size": args.size, "device": str(device), "dtype": str(dtype),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
        "images": args.images, "plans": {},
    }  # fmt: skip
    for plan in args.plans.split(","):
        report["plans"][plan] = measure_plan(args, plan, device, dtype)
        gc.collect()
        print(plan, json.dumps(report["plans"][plan]["hybrid"]), flush=True)
    resident = report["plans"].get("resident")
    if resident is not None:
        for row in report["plans"].values():
            row["hybrid_per_image_vs_resident"] = (
                row["hybrid"]["per_image_s"] / resident["hybrid"]["per_image_s"]
            )
            row["hybrid_fixed_extra_s"] = (
                row["hybrid"]["fixed_per_call_s"] - resident["hybrid"]["fixed_per_call_s"]
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
