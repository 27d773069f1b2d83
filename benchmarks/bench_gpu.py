"""One-shot GPU benchmark: the conceptspace sampler against diffusers on the real SDXL architecture.

Builds SDXL 1.0's UNet, VAE and both text encoders (CLIP ViT-L, OpenCLIP bigG) from their published configs with
random weights (seed 0, initialised on the device, then cast to float16), and a second random UNet of the same
config as a DMD2-style 4-step student. Nothing is downloaded; the tokenizers are CLIP's real BPE (the
copy the testbed ships). Prompt "a photo of a cat", seeds 0..n-1, 1024x1024, batch 1 then batch 4.

Measured, in this order of importance (each timing: torch.cuda.synchronize around every call, warm-up first,
median of the repeats):

1. diffusers' own pipeline call ("default"): the base, 50 Euler steps with CFG 5.0; the student with an
   LCMScheduler at timesteps [999, 749, 499, 249] and no guidance;
2. ours (``conceptspace.sample``) in the Base, Distilled and Hybrid(k=1) regimes: per call and per image, the
   phases of ``SampleResult.timings`` (text_encoding, denoising, decoding), peak CUDA memory, and the largest
   pixel difference from the default call with the same seeds (NaN is reported, not raised);
3. speed-ups on ours, each against the default call of the same run: a bfloat16 VAE (fp16-safe: float32's
   exponent range, no float32 upcast), the VAE in float16 without upcast (overflows with SDXL's real weights),
   tiled VAE decode, channels_last UNets and VAE, and the best of these stacked;
4. that stack plus torch.compile on the UNets (compile time reported apart from the steady state). By default
   regional (diffusers' ``compile_repeated_blocks``: the transformer blocks, tens of seconds to compile) in
   mode "default"; ``--compile-scope full --compile-mode reduce-overhead`` (or ``max-autotune-no-cudagraphs``)
   compiles the whole UNet, which takes minutes: give it a longer ``--deadline-s``.

The ``ratios`` section gives ours/default throughput per regime and batch, hybrid/distilled time (goal <= 1.02)
and the best ours/default throughput (goal >= 1.3). The clock counts from process start: before every
measurement and repeat the script skips what would not fit in ``--deadline-s`` ("skipped: deadline"), and it
rewrites ``--out`` after every measurement, so a killed run still leaves its results.

    HF_HUB_OFFLINE=1 python benchmarks/bench_gpu.py --out benchmarks/results/gpu-sdxl.json
    HF_HUB_OFFLINE=1 python benchmarks/bench_gpu.py --tiny --device cpu --out /tmp/gpu_tiny.json   # CPU check
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging

from conceptspace.models import ModelPair, default_dtype, get_spec, with_overrides
from conceptspace.sampling import Base, Distilled, Hybrid, Regime, sample
from conceptspace.testing import SD_EULER_SCHEDULER

PROMPT = "a photo of a cat"
BASE_STEPS, BASE_GUIDANCE = 50, 5.0
STUDENT_TIMESTEPS = (999, 749, 499, 249)
# The base warms up on a short run: the same shapes and kernels at a fraction of the cost.
WARMUP_BASE_STEPS = 3
STAGES = ("batches", "optim", "compile")

# Seconds per call of an H100-class GPU at 1024 px, used until a measurement of the same regime and batch exists
# (and scaled by what the run has measured so far): UNet evaluation per image, VAE decode per image, fixed.
PRIOR_UNET_S, PRIOR_DECODE_S, PRIOR_FIXED_S = 0.03, 0.15, 0.05

SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
SDXL_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
)
CLIP_VIT_L: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
OPENCLIP_BIGG: dict[str, Any] = {
    **CLIP_VIT_L,
    **dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        hidden_act="gelu",
        projection_dim=1280,
    ),
}

# --tiny: the same block structure with few channels (64 px images, 8x8 latents), for a CPU check of the script.
TINY_UNET = dict(
    sample_size=8,
    block_out_channels=(32, 64, 64),
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 4, 4),
    cross_attention_dim=64,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,
    norm_num_groups=8,
)
TINY_VAE = dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, sample_size=64)
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32
)

NOTES = [
    "Weights are random (seed 0): images are noise. Shapes, kernels and step counts are SDXL 1.0's and a "
    "DMD2-sized student's, so timings and memory stand for the real models; output agreement is numerical only.",
    "default = StableDiffusionXLPipeline.__call__ with output_type='np' and the watermarker off (our sampler does "
    "not watermark). Its VAE decode upcasts to float32 (force_upcast=True, as in SDXL's VAE config), as ours does.",
    "speedup_vs_default = default median seconds / ours median seconds (> 1: ours faster, i.e. a throughput "
    "ratio). Hybrid is compared with the default distilled call (the same number of UNet evaluations).",
    "vae_bf16: a bfloat16 copy of the VAE with force_upcast=False. bfloat16 has float32's exponent range, so it "
    "cannot overflow where SDXL's VAE overflows in float16, and it decodes on tensor cores instead of in float32. "
    "(Upcasting only the decoder's last blocks was not tried: with random weights it cannot be validated.)",
    "vae_<dtype>_no_upcast: the VAE in the models' dtype without the float32 upcast. SDXL's real VAE overflows to "
    "NaN in float16 (why diffusers upcasts it); random weights may not, so nan_in_images is the evidence either way.",
    "vae_tiled: enable_tiling() with tiles of half the image side (SDXL's default tile is its full 1024 px, which "
    "would not tile a 1024 px image); it trades time for peak memory. Tiles are blended, not exact: with random "
    "VAE weights the blend seams make max_abs_diff_vs_default large.",
    "compiled: the best stack plus torch.compile on both UNets (meta.compile: scope 'regional' = diffusers' "
    "compile_repeated_blocks, the transformer blocks only; 'full' = the whole UNet). compile_s = first warm-up "
    "call minus the second, excluded from seconds. The hybrid run recompiles the base UNet for batch 1.",
    "Ours checks every step's x0 for NaN/inf (one device sync per step); diffusers does not.",
]


# ------------------------------------------------------------------------------------------------ the models
@dataclass(frozen=True)
class Architecture:
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    resolution: int


def architecture(tiny: bool) -> Architecture:
    if not tiny:
        return Architecture(SDXL_UNET, SDXL_VAE, CLIP_VIT_L, OPENCLIP_BIGG, 1024)
    return Architecture(
        {**SDXL_UNET, **TINY_UNET},
        {**SDXL_VAE, **TINY_VAE},
        {**CLIP_VIT_L, **TINY_TEXT},
        {**OPENCLIP_BIGG, **TINY_TEXT},
        64,
    )


def clip_tokenizers() -> tuple[Any, Any]:
    """SDXL's two tokenizers: CLIP's real BPE (the copy the testbed ships, so open_clip is not needed), 77
    positions, the second padding with "!" like OpenCLIP's."""
    from transformers import CLIPTokenizer

    from conceptspace.testbed.pair import WEIGHTS_DIR

    files = WEIGHTS_DIR / "shapes" / "tokenizer"
    vocab, merges = str(files / "vocab.json"), str(files / "merges.txt")
    first = CLIPTokenizer(vocab, merges, model_max_length=77)
    second = CLIPTokenizer(vocab, merges, model_max_length=77, pad_token="!")
    return first, second


def on_device(factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype) -> Any:
    """A module initialised where it will run (seconds on a GPU, not minutes on the CPU), then cast."""
    with torch.device(device):
        return factory().to(dtype).eval()


def build_pair(arch: Architecture, device: torch.device, dtype: torch.dtype) -> ModelPair:
    """The SDXL base pipeline and a same-config student UNet as a ModelPair, with random weights."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = clip_tokenizers()
    pipeline = StableDiffusionXLPipeline(
        vae=on_device(lambda: AutoencoderKL(**arch.vae), device, dtype),
        text_encoder=on_device(lambda: CLIPTextModel(CLIPTextConfig(**arch.text_encoder)), device, dtype),
        text_encoder_2=on_device(
            lambda: CLIPTextModelWithProjection(CLIPTextConfig(**arch.text_encoder_2)), device, dtype
        ),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=on_device(lambda: UNet2DConditionModel(**arch.unet), device, dtype),
        scheduler=EulerDiscreteScheduler(**SD_EULER_SCHEDULER),
        add_watermarker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    student_network = on_device(lambda: UNet2DConditionModel(**arch.unet), device, dtype)
    config = dict(pipeline.scheduler.config)
    return ModelPair(
        base=with_overrides(get_spec("sdxl"), resolution=arch.resolution),
        student=with_overrides(get_spec("dmd2"), resolution=arch.resolution),
        pipeline=pipeline,
        student_network=student_network,
        base_scheduler_config=config,
        student_scheduler_config=config,
    )


def describe_pair(pair: ModelPair) -> dict[str, Any]:
    """Parameter counts and the attention implementations in use (SDPA is PyTorch 2's default)."""
    pipe = pair.pipeline
    modules = {
        "unet": pipe.unet,
        "student_network": pair.student_network,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "text_encoder_2": pipe.text_encoder_2,
    }
    info: dict[str, Any] = {
        "params_millions": {
            k: round(sum(p.numel() for p in m.parameters()) / 1e6, 1) for k, m in modules.items()
        },
        "unet_attention_processors": sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()}),
        "vae_attention_processors": sorted({type(p).__name__ for p in pipe.vae.attn_processors.values()}),
        "text_encoder_attention": getattr(pipe.text_encoder.config, "_attn_implementation", None),
    }
    if pair.device.type == "cuda":
        info["sdp_backends_enabled"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
        info["resident_gib"] = round(torch.cuda.memory_allocated(pair.device) / 2**30, 2)
        info["device_memory_gib"] = round(
            torch.cuda.get_device_properties(pair.device).total_memory / 2**30, 1
        )
    return info


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    import diffusers
    import transformers

    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


# ---------------------------------------------------------------------------------------- speed-up switches
@contextlib.contextmanager
def vae_copy(pair: ModelPair, dtype: torch.dtype) -> Iterator[None]:
    """Decode with a copy of the VAE in ``dtype`` that is not upcast to float32."""
    original = pair.pipeline.vae
    vae = copy.deepcopy(original).to(dtype)
    vae.register_to_config(force_upcast=False)
    pair.pipeline.vae = vae
    try:
        yield
    finally:
        pair.pipeline.vae = original


@contextlib.contextmanager
def channels_last(modules: list[torch.nn.Module]) -> Iterator[None]:
    for module in modules:
        module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for module in modules:
            module.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def tiled_vae(vae: Any, tile_px: int) -> Iterator[None]:
    """Tiled decoding in tiles of ``tile_px`` pixels (SDXL's default tile is 1024 px, a whole 1024 px image)."""
    saved = vae.tile_sample_min_size, vae.tile_latent_min_size
    vae.enable_tiling()
    vae.tile_sample_min_size = tile_px
    vae.tile_latent_min_size = tile_px // 2 ** (len(vae.config.block_out_channels) - 1)
    try:
        yield
    finally:
        vae.disable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = saved


def compile_unet(unet: Any, scope: str, mode: str) -> None:
    """torch.compile in place (lazily: the first call compiles), the whole UNet or its transformer blocks."""
    if scope == "regional":
        unet.compile_repeated_blocks(mode=mode)
    else:
        unet.compile(mode=mode)


# --------------------------------------------------------------------------------------------- measuring
Output = tuple[np.ndarray, dict[str, float] | None]
Kind = Literal["default", "ours"]
RegimeName = Literal["base", "distilled", "hybrid"]


@dataclass(frozen=True)
class Case:
    """One timed configuration: a variant (speed-up stack) of one caller (diffusers or ours), regime and batch."""

    variant: str
    kind: Kind
    regime: RegimeName
    batch: int

    @property
    def name(self) -> str:
        return f"{self.variant}/{self.kind}/{self.regime}/b{self.batch}"

    @property
    def reference(self) -> Case:
        """The default call this case is compared with (hybrid: distilled, the same number of UNet runs)."""
        return Case("plain", "default", "distilled" if self.regime == "hybrid" else self.regime, self.batch)

    def prior_s(self) -> float:
        steps = 2 * BASE_STEPS if self.regime == "base" else len(STUDENT_TIMESTEPS)
        return self.batch * (steps * PRIOR_UNET_S + PRIOR_DECODE_S) + PRIOR_FIXED_S


def regime(name: RegimeName, warmup: bool) -> Regime:
    if name == "base":
        return Base(steps=WARMUP_BASE_STEPS if warmup else BASE_STEPS, guidance_scale=BASE_GUIDANCE)
    return Distilled() if name == "distilled" else Hybrid(k=1)


def _process_start() -> float:
    """``time.monotonic()`` at this process's start, read from /proc once (where it cannot be read, or reads
    implausibly, the time of this call: the imports before it then go uncounted)."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        age = 0.0
    return time.monotonic() - (age if 0.0 <= age <= 600.0 else 0.0)


PROCESS_START = _process_start()


def process_age_s() -> float:
    """Seconds since this process started, so that imports and model building count against the deadline."""
    return time.monotonic() - PROCESS_START


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    """Largest pixel difference of two image batches in [0, 1]; None when either holds NaN/inf."""
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class Bench:
    """The pair, the reference pipelines, the deadline and the results file."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.dtype = default_dtype(device)
        self.arch = architecture(args.tiny)
        self.results: dict[str, Any] = {
            "meta": {
                **environment(device, self.dtype),
                "tiny": args.tiny,
                "resolution": self.arch.resolution,
                "prompt": PROMPT,
                "batches": args.batches,
                "repeats": args.repeats,
                "slow_repeats": args.slow_repeats,
                "deadline_s": args.deadline_s,
                "stages": args.stages,
                "compile": {"scope": args.compile_scope, "mode": args.compile_mode},
            },
            "notes": NOTES,
            "finished": False,
            "measurements": {},
            "ratios": {},
        }
        self.records: dict[str, dict[str, Any]] = self.results["measurements"]
        self.references: dict[str, np.ndarray] = {}
        self.save()
        start = time.perf_counter()
        self.pair = build_pair(self.arch, device, self.dtype)
        synchronize(device)
        self.results["meta"]["build_s"] = round(time.perf_counter() - start, 2)
        self.results["meta"].update(describe_pair(self.pair))
        self.original_vae = self.pair.pipeline.vae
        self.pipes = {"base": self.pair.to_diffusers("base"), "distilled": self.pair.to_diffusers("student")}
        self.save()

    # -- bookkeeping
    def remaining_s(self) -> float:
        return self.args.deadline_s - process_age_s()

    def save(self) -> None:
        self.results["ratios"] = ratios(self.records)
        self.results["elapsed_s"] = round(process_age_s(), 1)
        out: Path = self.args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(self.results, indent=2) + "\n")
        partial.replace(out)  # a kill mid-write leaves the previous complete file

    def call_estimate_s(self, case: Case) -> float:
        """Seconds one call of ``case`` should take: measured for its regime and batch, else the scaled prior."""
        done = [r for r in self.records.values() if "median_s" in r]
        same = [r["median_s"] for r in done if r["regime"] == case.regime and r["batch"] == case.batch]
        if same:
            return max(same)
        scale = statistics.median(r["median_s"] / r["prior_s"] for r in done) if done else 1.0
        return case.prior_s() * scale

    def repeats(self, case: Case) -> int:
        return self.args.slow_repeats if case.regime == "base" and case.batch > 1 else self.args.repeats

    def faster(self, variant: str) -> bool:
        """Whether ``variant`` beat plain ours on the distilled regime at batch 1."""
        plain = self.records.get(Case("plain", "ours", "distilled", 1).name, {})
        other = self.records.get(Case(variant, "ours", "distilled", 1).name, {})
        return "median_s" in plain and "median_s" in other and other["median_s"] < plain["median_s"]

    # -- calls
    def call(self, case: Case, warmup: bool = False) -> Callable[[], Output]:
        seeds = list(range(case.batch))
        size = self.arch.resolution
        if case.kind == "ours":
            chosen = regime(case.regime, warmup)

            def ours() -> Output:
                result = sample(
                    self.pair,
                    PROMPT,
                    chosen,
                    seeds,
                    height=size,
                    width=size,
                    batch_size=len(seeds),
                    output_type="np",
                    progress=False,
                )
                return result.images, dict(result.timings)

            return ours
        pipe = self.pipes[case.regime]
        if case.regime == "base":
            steps = WARMUP_BASE_STEPS if warmup else BASE_STEPS
            options: dict[str, Any] = dict(num_inference_steps=steps, guidance_scale=BASE_GUIDANCE)
        else:
            options = dict(timesteps=list(STUDENT_TIMESTEPS), guidance_scale=0.0)

        def default() -> Output:
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            images = pipe(
                PROMPT,
                num_images_per_prompt=len(seeds),
                generator=generators,
                height=size,
                width=size,
                output_type="np",
                **options,
            ).images
            return images, None

        return default

    def timed(self, fn: Callable[[], Output]) -> tuple[float, Output]:
        synchronize(self.device)
        start = time.perf_counter()
        out = fn()
        synchronize(self.device)
        return time.perf_counter() - start, out

    # -- measurements
    def measure_defaults(self, runs: list[tuple[RegimeName, int]]) -> None:
        """The default calls that later cases are compared with, measured (if not yet) before any speed-up switch
        touches the modules the default pipelines share with ours (both UNets: memory format, compilation)."""
        for name, batch in runs:
            case = Case("plain", "default", name, batch)
            if case.name not in self.records:
                self.measure(case)

    def measure(self, case: Case, *, warmups: int = 1, setup_s: float = 0.0, **info: Any) -> dict[str, Any]:
        """Time ``case`` unless it would overrun the deadline, and save the results."""
        short_warmup = case.regime == "base"
        call_s = self.call_estimate_s(case)
        estimate = setup_s + call_s * (self.repeats(case) + warmups * (0.2 if short_warmup else 1.0))
        record: dict[str, Any] = {
            "variant": case.variant,
            "kind": case.kind,
            "regime": case.regime,
            "batch": case.batch,
            **info,
            "status": "running",  # what a killed run leaves for the measurement in flight
            "prior_s": round(case.prior_s(), 3),
            "estimate_s": round(estimate, 2),
        }
        self.records[case.name] = record
        if self.remaining_s() < estimate:
            record["status"] = "skipped: deadline"
        else:
            print(f"[{process_age_s():6.1f}s] {case.name}", flush=True)
            self.save()
            try:
                self.run(case, record, warmups, short_warmup, call_s)
            except FloatingPointError as error:  # our sampler refuses NaN/inf latents
                record["status"] = f"nan: {first_line(error)}"
            except Exception as error:  # one failed measurement must not lose the others
                traceback.print_exc()
                record["status"] = f"error: {first_line(error)}"
                self.original_vae.to(self.dtype)  # diffusers leaves its VAE in float32 when decoding fails
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        self.save()
        return record

    def run(
        self, case: Case, record: dict[str, Any], warmups: int, short_warmup: bool, call_s: float
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        warm = self.call(case, warmup=short_warmup)
        record["warmup_s"] = [round(self.timed(warm)[0], 4) for _ in range(warmups)]
        if warmups > 1:
            record["compile_s"] = round(record["warmup_s"][0] - record["warmup_s"][1], 2)
        run = self.call(case)
        seconds: list[float] = []
        phases: list[dict[str, float]] = []
        images = None
        for _ in range(self.repeats(case)):
            if self.remaining_s() < 1.2 * (max(seconds) if seconds else call_s):
                record["truncated"] = "deadline"
                break
            elapsed, (images, timings) = self.timed(run)
            seconds.append(elapsed)
            if timings is not None:
                phases.append(timings)
        if images is None:
            record["status"] = "skipped: deadline"
            return
        median = statistics.median(seconds)
        record.update(
            status="ok" if "truncated" not in record else "ok (truncated: deadline)",
            repeats=len(seconds),
            seconds=[round(s, 4) for s in seconds],
            median_s=round(median, 4),
            per_image_s=round(median / case.batch, 4),
            images_per_s=round(case.batch / median, 3),
        )
        if phases:
            record["phases_median_s"] = {
                k: round(statistics.median(p[k] for p in phases), 4) for k in phases[0]
            }
        if self.device.type == "cuda":
            record["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        record.update(self.compare(case, images, median))

    def compare(self, case: Case, images: np.ndarray, median: float) -> dict[str, Any]:
        """NaN check; for ours, the speed-up over and the pixel difference from the default call."""
        out: dict[str, Any] = {"nan_in_images": bool(np.isnan(images).any())}
        if case.kind == "default":
            if case.variant == "plain":
                self.references[case.name] = images
            return out
        reference = self.records.get(case.reference.name, {})
        if "median_s" in reference:
            out["speedup_vs_default"] = round(reference["median_s"] / median, 3)
        if case.regime == case.reference.regime and case.reference.name in self.references:
            out["max_abs_diff_vs_default"] = max_abs_diff(images, self.references[case.reference.name])
        return out


# ------------------------------------------------------------------------------------------------- stages
def stage_batches(bench: Bench) -> None:
    """Default and ours for every regime, batch by batch (cheap regimes first)."""
    for batch in bench.args.batches:
        for kind, name in (
            ("default", "distilled"),
            ("ours", "distilled"),
            ("ours", "hybrid"),
            ("default", "base"),
            ("ours", "base"),
        ):
            bench.measure(Case("plain", kind, name, batch))


@contextlib.contextmanager
def best_stack(bench: Bench) -> Iterator[list[str]]:
    """The bfloat16 VAE, plus channels_last where it measured faster."""
    pair = bench.pair
    stack = ["vae_bf16"]
    with contextlib.ExitStack() as contexts:
        contexts.enter_context(vae_copy(pair, torch.bfloat16))
        if bench.faster("channels_last"):
            contexts.enter_context(channels_last([pair.base_network, pair.student_network, pair.pipeline.vae]))
            stack.append("channels_last")
        yield stack


def stage_optimisations(bench: Bench) -> None:
    pair = bench.pair
    largest = max(bench.args.batches)
    bench.measure_defaults([("distilled", 1), ("base", 1), ("distilled", largest)])
    with vae_copy(pair, torch.bfloat16):
        bench.measure(Case("vae_bf16", "ours", "distilled", 1))
    with vae_copy(pair, pair.dtype):
        bench.measure(Case(f"vae_{bench.results['meta']['dtype']}_no_upcast", "ours", "distilled", 1))
    with channels_last([pair.base_network, pair.student_network, pair.pipeline.vae]):
        bench.measure(Case("channels_last", "ours", "distilled", 1))
    tile = bench.arch.resolution // 2
    with tiled_vae(pair.pipeline.vae, tile):
        for batch in sorted({1, largest}):
            bench.measure(Case("vae_tiled", "ours", "distilled", batch), tile_px=tile)
    with best_stack(bench) as stack:
        for name, batch in dict.fromkeys(
            [("distilled", 1), ("hybrid", 1), ("base", 1), ("distilled", largest)]
        ):
            bench.measure(Case("best", "ours", name, batch), stack=stack)


def stage_compile(bench: Bench) -> None:
    """The best stack plus torch.compile: the student (distilled), then the base (base, then hybrid)."""
    args, pair = bench.args, bench.pair
    setup_s = args.compile_estimate_s
    bench.measure_defaults([("distilled", 1), ("base", 1)])
    with best_stack(bench) as stack:
        info = {"stack": [*stack, f"compile:{args.compile_scope}:{args.compile_mode}"]}
        compile_unet(pair.student_network, args.compile_scope, args.compile_mode)
        bench.measure(Case("compiled", "ours", "distilled", 1), warmups=2, setup_s=setup_s, **info)
        compile_unet(pair.base_network, args.compile_scope, args.compile_mode)
        for name in ("base", "hybrid"):
            bench.measure(Case("compiled", "ours", name, 1), warmups=2, setup_s=setup_s, **info)


STAGE_RUNNERS: dict[str, Callable[[Bench], None]] = {
    "batches": stage_batches,
    "optim": stage_optimisations,
    "compile": stage_compile,
}


# ------------------------------------------------------------------------------------------ ratios, summary
def _agreement(record: dict[str, Any]) -> float | str:
    if "max_abs_diff_vs_default" not in record:
        return "no default images to compare"
    diff = record["max_abs_diff_vs_default"]
    return "NaN/inf in an image" if diff is None else diff


def ratios(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """ours/default throughput per regime and batch, hybrid/distilled time, and the best ours/default."""
    done = {name: r for name, r in records.items() if "median_s" in r}

    def median(variant: str, kind: Kind, name: RegimeName, batch: int) -> float | None:
        return done.get(Case(variant, kind, name, batch).name, {}).get("median_s")

    out: dict[str, Any] = {"ours_vs_default_throughput": {}, "hybrid_over_distilled_time": {}}
    for batch in sorted({r["batch"] for r in done.values()}):
        for name in ("distilled", "base"):
            default, ours = median("plain", "default", name, batch), median("plain", "ours", name, batch)
            if default and ours:
                out["ours_vs_default_throughput"][f"{name}/b{batch}"] = round(default / ours, 3)
        hybrid, distilled = (
            median("plain", "ours", "hybrid", batch),
            median("plain", "ours", "distilled", batch),
        )
        if hybrid and distilled:
            ratio = round(hybrid / distilled, 3)
            out["hybrid_over_distilled_time"][f"b{batch}"] = {
                "ratio": ratio,
                "goal_max": 1.02,
                "met": ratio <= 1.02,
            }
    out["agreement_max_abs_diff"] = {
        f"{r['regime']}/b{r['batch']}": _agreement(r)
        for r in done.values()
        if r["variant"] == "plain" and r["kind"] == "ours" and r["regime"] != "hybrid"
    }
    best: dict[str, Any] = {}
    for name, r in done.items():
        key = f"{r['regime']}/b{r['batch']}"
        if "speedup_vs_default" in r and r["speedup_vs_default"] > best.get(key, {}).get("speedup", 0.0):
            best[key] = {"speedup": r["speedup_vs_default"], "measurement": name}
    for entry in best.values():
        entry.update(goal_min=1.3, met=entry["speedup"] >= 1.3)
    out["best_ours_vs_default_throughput"] = best
    return out


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"{meta['device_name']} | torch {meta['torch']} | diffusers {meta['diffusers']} | transformers "
        f"{meta['transformers']} | {meta['resolution']} px {meta['dtype']} | build {meta.get('build_s')} s | "
        f"elapsed {results['elapsed_s']} s",
        f"{'measurement':<42}{'status':<20}{'median s':>9}{'s/img':>8}{'vs dflt':>8}{'peak GiB':>9}{'max|d|':>9}",
    ]
    for name, r in results["measurements"].items():
        lines.append(
            f"{name:<42}{r.get('status', '?')[:19]:<20}{_cell(r.get('median_s'), '.3f'):>9}"
            f"{_cell(r.get('per_image_s'), '.3f'):>8}{_cell(r.get('speedup_vs_default'), '.2f'):>8}"
            f"{_cell(r.get('peak_mem_gib'), '.2f'):>9}{_cell(r.get('max_abs_diff_vs_default'), '.4f'):>9}"
        )
        if "compile_s" in r:
            lines.append(f"{'':<42}compile {r['compile_s']} s (excluded)")
    lines.append("ratios:")
    for group, values in results["ratios"].items():
        for key, value in values.items():
            lines.append(f"  {group} {key}: {value}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu-sdxl.json"))
    parser.add_argument(
        "--deadline-s", type=float, default=240.0, help="wall-clock budget from process start"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny configs at 64 px (a CPU check of the script)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 4])
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per measurement (default 3; tiny 2)"
    )
    parser.add_argument("--slow-repeats", type=int, default=2, help="timed calls of the base at batch > 1")
    parser.add_argument(
        "--stages",
        type=lambda s: s.split(","),
        default=None,
        help=f"comma-separated, in order, from {','.join(STAGES)} (default: all; on a CPU all but compile)",
    )
    parser.add_argument("--compile-scope", choices=("regional", "full"), default="regional")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode")
    parser.add_argument(
        "--compile-estimate-s",
        type=float,
        default=None,
        help="seconds one compile takes, for the deadline (default: regional 45, full 150)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 with --tiny)")
    args = parser.parse_args(argv)
    if args.stages is None:
        args.stages = [s for s in STAGES if s != "compile" or args.device.startswith("cuda")]
    unknown = set(args.stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 3
    if args.compile_estimate_s is None:
        args.compile_estimate_s = 150.0 if args.compile_scope == "full" else 45.0
    if args.threads is None and args.tiny:
        args.threads = 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' upcast_vae deprecation, every call
    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" on every cast
    bench = Bench(args, torch.device(args.device))
    for stage in args.stages:
        STAGE_RUNNERS[stage](bench)
    bench.results["finished"] = True
    bench.save()
    print(summary(bench.results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
