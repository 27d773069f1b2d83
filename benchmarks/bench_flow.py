"""Transformer pairs (FLUX.1 dev/schnell, SD3.5 Large/Turbo; on tiny weights also PixArt-α/δ and Z-Image/Turbo):
the conceptspace sampler against diffusers' own pipeline call, the hybrid against the student, and the memory a
loaded pair holds.

Full size (``--size full``, a GPU): the published transformer, VAE and text-encoder configs with random weights
initialised on the device in bfloat16 (nothing is downloaded; the T5 tokenizer is a character-level stand-in, so
prompts are longer in tokens than with T5's real vocabulary), 1024², one image per call. ``--size tiny``: the
tiny random pairs of the offline tests (64²), runnable on a CPU. Each ratio pairs the two calls, alternated ``--repeats``
times after a warm-up (device synchronised around every call): the median of the per-pair ratios with a 95%
bootstrap interval. Ratios and goals:

- ours / diffusers seconds, base and distilled (goal ≤ 1.03);
- hybrid / distilled seconds (goal ≤ 1.02: the hybrid's base step costs one student step);
- peak device memory while sampling with the loaded pair / (the base pipeline + one extra transformer, measured
  the same way) (goal ≤ 1.05; CUDA only).

    python benchmarks/bench_flow.py --family flux --size tiny --device cpu --out benchmarks/results/flow-tiny-cpu.json
    python benchmarks/bench_flow.py --family flux --size full --device cuda --base-steps 28 --out /tmp/flux-h200.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from conceptspace import Base, Distilled, Hybrid, load_pair, sample
from conceptspace.models import ModelPair, get_spec, with_overrides

PROMPT = "a photo of a cat"
GOALS = {"ours_vs_diffusers": 1.03, "hybrid_vs_distilled": 1.02, "pair_memory_ratio": 1.05}
TINY = {
    "flux": ("tiny-flux", "tiny-schnell", 3.5),
    "sd3": ("tiny-sd3", "tiny-sd3-turbo", 5.0),
    "pixart": ("tiny-pixart", "tiny-pixart-lcm", 4.5),
    "zimage": ("tiny-zimage", "tiny-zimage-turbo", 4.0),
    "qwenimage": ("tiny-qwen-image", "tiny-qwen-image-lightning", 4.0),
}
FULL = {"flux": ("flux-dev", "flux-schnell", 3.5), "sd3": ("sd35-large", "sd35-large-turbo", 3.5)}

# Published configs (the repos' transformer/config.json and text encoder configs).
FLUX_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
SD35_LARGE_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38,
    joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192, qk_norm="rms_norm",
)  # fmt: skip
FLOW_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=16, norm_num_groups=32,
    sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
)  # fmt: skip
CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
    eos_token_id=49407, pad_token_id=49407,
)  # fmt: skip
CLIP_G = {**CLIP_L, **dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                           hidden_act="gelu", projection_dim=1280)}  # fmt: skip
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
              relative_attention_num_buckets=32, is_encoder_decoder=False)  # fmt: skip


def full_pair(family: str, device: torch.device, dtype: torch.dtype) -> ModelPair:
    """A full-size random pair of ``family`` built on ``device`` (no download)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from conceptspace.models.tiny import (
        FLUX_DEV_SCHEDULER,
        FLUX_SCHNELL_SCHEDULER,
        SD3_SCHEDULER,
        clip_tokenizer,
        t5_tokenizer,
    )

    def build(factory: Callable[[], Any]) -> Any:
        with torch.device(device):
            return factory().to(dtype).eval()

    torch.manual_seed(0)
    t5 = build(lambda: T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer()), **T5_XXL)))
    base_name, student_name, _ = FULL[family]
    if family == "flux":
        vae = build(lambda: AutoencoderKL(**FLOW_VAE, shift_factor=0.1159, scaling_factor=0.3611))
        pipe = FluxPipeline(
            transformer=build(lambda: FluxTransformer2DModel(**FLUX_TRANSFORMER, guidance_embeds=True)),
            vae=vae, text_encoder=build(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L))), tokenizer=clip_tokenizer(),
            text_encoder_2=t5, tokenizer_2=t5_tokenizer(),
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER),
        )  # fmt: skip
        student = build(lambda: FluxTransformer2DModel(**FLUX_TRANSFORMER, guidance_embeds=False))
        student_scheduler = FLUX_SCHNELL_SCHEDULER
    else:
        vae = build(lambda: AutoencoderKL(**FLOW_VAE, shift_factor=0.0609, scaling_factor=1.5305))
        pipe = StableDiffusion3Pipeline(
            transformer=build(lambda: SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER)), vae=vae,
            text_encoder=build(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))),
            tokenizer=clip_tokenizer(),
            text_encoder_2=build(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))),
            tokenizer_2=clip_tokenizer(), text_encoder_3=t5, tokenizer_3=t5_tokenizer(),
            scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        )  # fmt: skip
        student = build(lambda: SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER))
        student_scheduler = SD3_SCHEDULER
    pipe.set_progress_bar_config(disable=True)
    from conceptspace.schedules import FLOW

    return ModelPair(
        base=get_spec(base_name),
        student=get_spec(student_name),
        pipeline=pipe,
        student_network=student,
        base_scheduler_config=dict(pipe.scheduler.config),
        student_scheduler_config=dict(FlowMatchEulerDiscreteScheduler(**student_scheduler).config),
        base_prediction_type=FLOW,
        student_prediction_type=FLOW,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(call: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def paired(
    ours: Callable[[], Any], reference: Callable[[], Any], device: torch.device, repeats: int
) -> dict[str, Any]:
    """Alternate the two calls ``repeats`` times after a warm-up of each; the ratio of each pair's seconds, its
    median and a 95% percentile-bootstrap interval of the median (pairing cancels slow drifts of the machine), and the
    largest pixel difference between the two warm-up outputs (same seeds; both are images in [0, 1])."""
    first, reference_first = ours(), reference()
    difference = float(np.abs(_pixels(first) - _pixels(reference_first)).max())
    ours_s, reference_s = [], []
    for _ in range(repeats):
        ours_s.append(_seconds(ours, device))
        reference_s.append(_seconds(reference, device))
    ratios = np.array(ours_s) / np.array(reference_s)
    rng = np.random.default_rng(0)
    boot = np.median(rng.choice(ratios, size=(2000, len(ratios))), axis=1)
    return {
        "ratio": float(np.median(ratios)),
        "ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "ours_median_s": statistics.median(ours_s),
        "reference_median_s": statistics.median(reference_s),
        "n": repeats,
        "max_pixel_difference": difference,
    }


def _pixels(output: Any) -> np.ndarray:
    images = getattr(output, "images", output)  # a SampleResult, or a diffusers pipeline's images
    return np.asarray(images, dtype=np.float32)


def peak_bytes(call: Callable[[], Any], device: torch.device) -> int:
    torch.cuda.reset_peak_memory_stats(device)
    call()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=sorted(TINY), default="flux")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--base-steps", type=int, default=None, help="default: the registry's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.size == "full" and args.family not in FULL:
        parser.error(f"--size full is prepared for {', '.join(FULL)} only")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.size == "full" else torch.float32
    base_name, student_name, guidance = (TINY if args.size == "tiny" else FULL)[args.family]
    if args.size == "tiny":
        pair = load_pair(base_name, student_name, device=device, dtype=dtype)
    else:
        pair = full_pair(args.family, device, dtype)
    steps = args.base_steps or pair.base.num_inference_steps
    pair = dataclasses.replace(pair, base=with_overrides(pair.base, num_inference_steps=steps))
    size = pair.default_resolution
    seeds = [0]

    def ours(regime: Any) -> Callable[[], Any]:
        return lambda: sample(
            pair, PROMPT, regime, seeds, height=size, width=size, output_type="np", progress=False
        )

    def theirs(role: str, n_steps: int, scale: float) -> Callable[[], Any]:
        pipe = pair.to_diffusers(role)

        def call() -> Any:
            generator = [torch.Generator().manual_seed(s) for s in seeds]
            if args.family == "qwenimage":  # true CFG, which needs a negative prompt (the model card's " ")
                guidance = (
                    {"true_cfg_scale": scale, "negative_prompt": " "}
                    if scale > 1
                    else {"true_cfg_scale": 1.0}
                )
            else:
                guidance = {"guidance_scale": scale}
            if args.family == "pixart":
                guidance["use_resolution_binning"] = False  # sample the size asked
            return pipe(PROMPT, num_inference_steps=n_steps, height=size, width=size,
                        generator=generator, output_type="np", **guidance).images  # fmt: skip

        return call

    comparisons: dict[str, Any] = {}
    result: dict[str, Any] = {
        "family": args.family,
        "size": args.size,
        "device": str(device),
        "dtype": str(dtype),
        "resolution": size,
        "base_steps": steps,
        "repeats": args.repeats,
        "comparisons": comparisons,
        "ratios": {},
        "goals": GOALS,
        "machine": platform.platform(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }

    def measure(name: str, run: Callable[[], dict[str, Any]]) -> None:
        # A one-shot device run keeps what it measured: each result is written as it comes, a failure is recorded.
        try:
            comparisons[name] = run()
        except Exception as error:  # noqa: BLE001 - reported in the results, the other measurements go on
            comparisons[name] = {"error": f"{type(error).__name__}: {error}"}
        result["ratios"] = {n: round(c["ratio"], 4) for n, c in comparisons.items() if "ratio" in c}
        print(name, json.dumps(comparisons[name]), flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")

    measure(
        "ours_vs_diffusers_base",
        lambda: paired(ours(Base()), theirs("base", steps, guidance), device, args.repeats),
    )
    measure(
        "ours_vs_diffusers_distilled",
        lambda: paired(ours(Distilled()), theirs("student", 4, 0.0), device, args.repeats),
    )
    measure("hybrid_vs_distilled", lambda: paired(ours(Hybrid(k=1)), ours(Distilled()), device, args.repeats))
    if device.type == "cuda":

        def memory() -> dict[str, Any]:
            # The pair's student is resident during diffusers' base call, so that call's peak is already "the base
            # pipeline + one extra transformer": the reference, against which the hybrid's peak is compared.
            reference = peak_bytes(theirs("base", steps, guidance), device)
            ours_peak = peak_bytes(ours(Hybrid(k=1)), device)
            student_bytes = sum(p.numel() * p.element_size() for p in pair.student_network.parameters())
            return {
                "ratio": ours_peak / reference,
                "ours_peak_bytes": ours_peak,
                "reference_bytes": reference,
                "student_weight_bytes": student_bytes,
            }

        measure("pair_memory_ratio", memory)
    print(json.dumps(result["ratios"], indent=2))


if __name__ == "__main__":
    main()
