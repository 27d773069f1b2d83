"""The model registry: base models, their distilled students and their defaults, as data.

A :class:`ModelSpec` records what PAPER.md says about each checkpoint (hub id and files, how the weights are
stored, scheduler, default steps/timesteps/guidance, resolution). Nothing here imports torch or diffusers, so
``conceptspace models`` and ``conceptspace --help`` answer at once; :mod:`conceptspace.models.loading` loads the pairs
with the family adapters of :mod:`conceptspace.models.families`.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

StorageKind = Literal["pipeline", "unet_folder", "unet_file", "lora_file", "random"]
Role = Literal["base", "student"]


class ModelNotFoundError(FileNotFoundError):
    """A model's files are neither in the Hugging Face cache nor at the given local path."""


class UnknownModelError(ValueError, KeyError):
    """A model name that is neither a registry name nor the hub repository of exactly one registry model."""

    def __str__(self) -> str:  # a KeyError would print its message quoted
        return str(self.args[0]) if self.args else ""


class IncompatibleModelsError(ValueError):
    """A base and a student whose UNets cannot share latents, text encoders or LoRAs."""


NETWORK_FOLDERS: dict[str, str] = {
    name: "transformer" for name in ("sd3", "flux", "pixart", "zimage", "qwenimage", "sana")
}
"""Architectures whose denoising network lives in a folder other than ``unet/`` (each family adapter's
``network_folder`` says the same; a test holds them together). Kept here so the registry needs no torch."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load and sample one checkpoint with its own defaults.

    ``storage`` says how the weights are laid out: ``"pipeline"`` (a full diffusers pipeline repo; for a
    student only its ``unet/`` and ``scheduler/`` are read), ``"unet_folder"`` (a diffusers UNet folder at the
    repo root or ``subfolder``), ``"lora_file"`` (a student that is a LoRA on its base, in ``filename``: the
    student's network is the base's with the LoRA merged), ``"unet_file"`` (a bare UNet state dict in ``filename``; its architecture is
    the base's) or ``"random"`` (tiny random weights made in memory from ``seed``, for smoke tests).
    ``local_dir``: a folder that holds the weights in that layout (the testbed's, shipped inside the package); it is
    read instead of the hub unless a path is passed to :func:`load_pair`.
    ``family`` groups a base with the students it pairs with; ``architecture`` names the family adapter that loads
    and runs the weights (:mod:`conceptspace.models.families`: ``"sd"``, ``"sdxl"`` …), by default ``family``.
    """

    name: str
    family: str
    role: Role
    repo_id: str
    storage: StorageKind
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    resolution: int
    base: str | None = None
    filename: str | None = None
    subfolder: str | None = None
    scheduler_overrides: tuple[tuple[str, Any], ...] = ()
    timesteps: tuple[int, ...] | None = None
    variant: str | None = None
    seed: int = 0
    description: str = ""
    embedder: str | None = None  # default embedder spec for this base (conceptspace.embeddings.load_embedder)
    local_dir: str | None = None
    architecture: str | None = None

    def __post_init__(self) -> None:
        if self.role == "student" and not self.base:
            raise ValueError(f"student {self.name!r} must name its base model")
        if self.storage in ("unet_file", "lora_file") and not self.filename:
            raise ValueError(
                f"{self.name!r} is stored as a {self.storage.replace('_', ' ')} but names no filename"
            )
        if self.storage == "lora_file" and self.role != "student":
            raise ValueError(f"{self.name!r}: only a student can be stored as a LoRA on its base")
        if self.timesteps is not None and len(self.timesteps) != self.num_inference_steps:
            raise ValueError(
                f"{self.name!r}: {len(self.timesteps)} timesteps given for {self.num_inference_steps} steps"
            )

    @property
    def network_folder(self) -> str:
        """The repo subfolder of a pipeline's denoising network (``unet`` or ``transformer``)."""
        return NETWORK_FOLDERS.get(self.architecture_name, "unet")

    @property
    def architecture_name(self) -> str:
        """The family adapter's name: ``architecture``, or ``family`` when it is not given."""
        return self.architecture or self.family

    @property
    def key_files(self) -> tuple[str, ...]:
        """Repo-relative files whose presence means the model is downloaded (used for cache checks)."""
        if self.storage == "pipeline":
            return ("model_index.json",) if self.role == "base" else (f"{self.network_folder}/config.json",)
        if self.storage == "unet_folder":
            return (f"{self.subfolder}/config.json" if self.subfolder else "config.json",)
        if self.storage in ("unet_file", "lora_file"):
            return (self.filename,)
        return ()

    @property
    def fetch_command(self) -> str:
        """The shell command that downloads what this model needs into the Hugging Face cache."""
        if self.storage == "random" or self.local_dir:
            return ""
        if self.storage in ("unet_file", "lora_file"):
            return f"hf download {self.repo_id} {self.filename}"
        if self.storage == "pipeline" and self.role == "student":
            return f"hf download {self.repo_id} --include '{self.network_folder}/*' --include 'scheduler/*'"
        return f"hf download {self.repo_id}"

    def scheduler_config_overrides(self) -> dict[str, Any]:
        return dict(self.scheduler_overrides)


_SDXL_BASE = ModelSpec(
    name="sdxl",
    family="sdxl",
    role="base",
    repo_id="stabilityai/stable-diffusion-xl-base-1.0",
    storage="pipeline",
    scheduler="EulerDiscreteScheduler",
    num_inference_steps=50,
    guidance_scale=5.0,
    resolution=1024,
    variant="fp16",
    description="SDXL 1.0 base, 50 Euler steps with CFG",
    embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
)

_REGISTRY_LIST: list[ModelSpec] = [
    _SDXL_BASE,
    ModelSpec(
        name="dmd2",
        family="sdxl",
        role="student",
        base="sdxl",
        repo_id="tianweiy/DMD2",
        storage="unet_file",
        filename="dmd2_sdxl_4step_unet_fp16.bin",
        scheduler="LCMScheduler",
        # original_inference_steps=4 makes [999, 749, 499, 249] the scheduler's own training grid.
        scheduler_overrides=(("original_inference_steps", 4),),
        num_inference_steps=4,
        timesteps=(999, 749, 499, 249),
        guidance_scale=0.0,
        resolution=1024,
        description="DMD2 4-step SDXL student (UNet state dict)",
    ),
    ModelSpec(
        name="lightning",
        family="sdxl",
        role="student",
        base="sdxl",
        repo_id="ByteDance/SDXL-Lightning",
        storage="unet_file",
        filename="sdxl_lightning_4step_unet.safetensors",
        scheduler="EulerDiscreteScheduler",
        scheduler_overrides=(("timestep_spacing", "trailing"),),
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="SDXL-Lightning 4-step UNet, Euler trailing",
    ),
    ModelSpec(
        name="turbo",
        family="sdxl",
        role="student",
        base="sdxl",
        repo_id="stabilityai/sdxl-turbo",
        storage="pipeline",
        scheduler="EulerAncestralDiscreteScheduler",
        scheduler_overrides=(("timestep_spacing", "trailing"),),
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=512,
        variant="fp16",
        description="SDXL-Turbo (full pipeline repo; its UNet is used), 512 px",
    ),
    ModelSpec(
        name="lcm",
        family="sdxl",
        role="student",
        base="sdxl",
        repo_id="latent-consistency/lcm-sdxl",
        storage="unet_folder",
        scheduler="LCMScheduler",
        num_inference_steps=4,
        guidance_scale=8.0,
        resolution=1024,
        variant="fp16",
        description="LCM-SDXL UNet; guidance is a timestep-conditioning embedding, not CFG",
    ),
    ModelSpec(
        name="lcm-lora",
        family="sdxl",
        role="student",
        base="sdxl",
        repo_id="latent-consistency/lcm-lora-sdxl",
        storage="lora_file",
        filename="pytorch_lora_weights.safetensors",
        scheduler="LCMScheduler",
        num_inference_steps=4,
        guidance_scale=1.0,
        resolution=1024,
        description="LCM-LoRA for SDXL (a LoRA on the base), 4 LCM steps, guidance off",
    ),
    ModelSpec(
        name="lightning-lora",
        family="sdxl",
        role="student",
        base="sdxl",
        repo_id="ByteDance/SDXL-Lightning",
        storage="lora_file",
        filename="sdxl_lightning_4step_lora.safetensors",
        scheduler="EulerDiscreteScheduler",
        scheduler_overrides=(("timestep_spacing", "trailing"),),
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="SDXL-Lightning 4-step LoRA, Euler trailing",
    ),
    ModelSpec(
        name="hyper-sd",
        family="sdxl",
        role="student",
        base="sdxl",
        repo_id="ByteDance/Hyper-SD",
        storage="lora_file",
        filename="Hyper-SDXL-4steps-lora.safetensors",
        scheduler="DDIMScheduler",
        scheduler_overrides=(("timestep_spacing", "trailing"),),
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="Hyper-SDXL 4-step LoRA, DDIM trailing",
    ),
    ModelSpec(
        name="tcd",
        family="sdxl",
        role="student",
        base="sdxl",
        repo_id="h1t/TCD-SDXL-LoRA",
        storage="lora_file",
        filename="pytorch_lora_weights.safetensors",
        scheduler="TCDScheduler",
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="TCD LoRA for SDXL, 4 TCD steps (eta 0.3, the scheduler's default)",
    ),
    ModelSpec(
        name="sd21",
        family="sd21",
        architecture="sd",
        role="base",
        repo_id="stabilityai/stable-diffusion-2-1-base",
        storage="pipeline",
        scheduler="EulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=7.5,
        resolution=512,
        variant="fp16",
        description="Stable Diffusion 2.1 base, 50 Euler steps with CFG",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="sd-turbo",
        family="sd21",
        architecture="sd",
        role="student",
        base="sd21",
        repo_id="stabilityai/sd-turbo",
        storage="pipeline",
        scheduler="EulerAncestralDiscreteScheduler",
        scheduler_overrides=(("timestep_spacing", "trailing"),),
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=512,
        variant="fp16",
        description="SD-Turbo (full pipeline repo; its UNet is used)",
    ),
    ModelSpec(
        name="tiny-sdxl",
        family="tiny-sdxl",
        architecture="sdxl",
        role="base",
        repo_id="builtin:tiny-sdxl",
        storage="random",
        scheduler="EulerDiscreteScheduler",
        num_inference_steps=20,
        guidance_scale=5.0,
        resolution=64,
        seed=0,
        description="tiny random SDXL-architecture model (noise images; smoke tests and benchmarks)",
        embedder="pixels:32",
    ),
    ModelSpec(
        name="tiny-dmd",
        family="tiny-sdxl",
        architecture="sdxl",
        role="student",
        base="tiny-sdxl",
        repo_id="builtin:tiny-dmd",
        storage="random",
        scheduler="LCMScheduler",
        scheduler_overrides=(("original_inference_steps", 4),),
        num_inference_steps=4,
        timesteps=(999, 749, 499, 249),
        guidance_scale=0.0,
        resolution=64,
        seed=1,
        description="tiny random student on the DMD2 schedule",
    ),
    ModelSpec(
        name="tiny-lcm",
        family="tiny-sdxl",
        architecture="sdxl",
        role="student",
        base="tiny-sdxl",
        repo_id="builtin:tiny-lcm",
        storage="random",
        scheduler="LCMScheduler",
        num_inference_steps=4,
        guidance_scale=8.0,
        resolution=64,
        seed=2,
        description="tiny random LCM-style student with a guidance embedding",
    ),
]


def _tiny_pair(
    architecture: str,
    base: str,
    student: str,
    shaped_like: str,
    *,
    guidance: float,
    scheduler: str = "FlowMatchEulerDiscreteScheduler",
    student_scheduler: str | None = None,
    student_overrides: tuple[tuple[str, Any], ...] = (),
    student_note: str,
) -> list[ModelSpec]:
    """A tiny random base (8 steps) and student (4 steps, no CFG) of a transformer family, 64 px, built in memory:
    the offline tests' and benchmarks' stand-ins for that family's real pair."""
    common = dict(family=base, architecture=architecture, storage="random", resolution=64)
    return [
        ModelSpec(
            name=base, role="base", repo_id=f"builtin:{base}", scheduler=scheduler, num_inference_steps=8,
            guidance_scale=guidance, seed=0, embedder="pixels:32",
            description=f"tiny random {shaped_like}-architecture model (noise images; smoke tests and benchmarks)",
            **common,
        ),
        ModelSpec(
            name=student, role="student", base=base, repo_id=f"builtin:{student}",
            scheduler=student_scheduler or scheduler, scheduler_overrides=student_overrides,
            num_inference_steps=4, guidance_scale=0.0, seed=1,
            description=f"tiny random {shaped_like}-architecture student ({student_note})", **common,
        ),
    ]  # fmt: skip


# Flow-matching transformers. Sources of every default: docs/model-pairs.md, "Where the facts come from".
_REGISTRY_LIST += [
    ModelSpec(
        name="sd35-large",
        family="sd35",
        architecture="sd3",
        role="base",
        repo_id="stabilityai/stable-diffusion-3.5-large",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=28,
        guidance_scale=3.5,
        resolution=1024,
        description="Stable Diffusion 3.5 Large (MMDiT, flow matching, shift 3), 28 steps with CFG 3.5",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="sd35-large-turbo",
        family="sd35",
        architecture="sd3",
        role="student",
        base="sd35-large",
        repo_id="stabilityai/stable-diffusion-3.5-large-turbo",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="SD3.5 Large Turbo (ADD-distilled; full pipeline repo, its transformer is used), 4 steps, no CFG",
    ),
    *_tiny_pair("sd3", "tiny-sd3", "tiny-sd3-turbo", "SD3", guidance=5.0, student_note="4 steps, no CFG"),
]

# SD3.5 Medium (MMDiT-X: dual attention, QK norm; a family of its own, its networks are not Large's) and DP-DMD
# (arXiv 2602.03139), its 4-NFE student released as one bare transformer state dict. Sources: the SD3.5 Medium card
# (40 steps, guidance 4.5) and file list (one-file transformer, fp16 files only for the text encoders: no variant);
# github.com/Multimedia-Analytics-Laboratory/dpdmd README (hub repo TianheWu/dpdmd, the file name, `torch.load` then
# `pipe.transformer.load_state_dict(strict=True)`: diffusers keys, no prefix; 4 steps, guidance_scale=1.0, 1024²,
# the base's own scheduler) and train_sd35_dpdmd.py (the student scheduler is a copy of the teacher's,
# set_timesteps(4); the checkpoint is the bf16 FSDP state dict, torch.save'd). Unverified: that the file sits at the
# repo root (the README names it bare) and is bf16 (inferred from the training script; the file was not inspected);
# Medium's scheduler shift 3.0 (not seen; it is read from the repo at load time, only the description states it).
_REGISTRY_LIST += [
    ModelSpec(
        name="sd35-medium", family="sd35-medium", architecture="sd3", role="base",
        repo_id="stabilityai/stable-diffusion-3.5-medium", storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler", num_inference_steps=40, guidance_scale=4.5, resolution=1024,
        description="Stable Diffusion 3.5 Medium (MMDiT-X, flow matching, shift 3), 40 steps with CFG 4.5",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="dp-dmd", family="sd35-medium", architecture="sd3", role="student", base="sd35-medium",
        repo_id="TianheWu/dpdmd", storage="unet_file", filename="DPDMD-SD35M-4NFE-natural.pt",
        scheduler="FlowMatchEulerDiscreteScheduler", num_inference_steps=4, guidance_scale=1.0, resolution=1024,
        description="DP-DMD 4-NFE SD3.5 Medium student (a bf16 transformer state dict, .pt), 4 steps, no CFG",
    ),
]  # fmt: skip

_REGISTRY_LIST += [
    ModelSpec(
        name="flux-dev",
        family="flux",
        role="base",
        repo_id="black-forest-labs/FLUX.1-dev",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=3.5,
        resolution=1024,
        description="FLUX.1-dev (guidance-distilled rectified flow; guidance 3.5 is an input, not CFG), 50 steps",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="flux-schnell",
        family="flux",
        role="student",
        base="flux-dev",
        repo_id="black-forest-labs/FLUX.1-schnell",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="FLUX.1-schnell (timestep-distilled; full pipeline repo, its transformer is used), 4 steps",
    ),
    *_tiny_pair(
        "flux",
        "tiny-flux",
        "tiny-schnell",
        "FLUX.1-dev",
        guidance=3.5,
        student_overrides=(("use_dynamic_shifting", False), ("shift", 1.0)),
        student_note="FLUX.1-schnell-shaped: no guidance input, no shift; 4 steps",
    ),  # fmt: skip
]

# PixArt-α and its LCM student PixArt-δ (the paper's appendix pair): a DiT on VP latents with a T5 encoder.
_REGISTRY_LIST += [
    ModelSpec(
        name="pixart-alpha",
        family="pixart",
        role="base",
        repo_id="PixArt-alpha/PixArt-XL-2-1024-MS",
        storage="pipeline",
        scheduler="DPMSolverMultistepScheduler",
        num_inference_steps=20,
        guidance_scale=4.5,
        resolution=1024,
        description="PixArt-α XL/2 at 1024 px (DiT, ε-prediction, T5 text), DPM-Solver++ 20 steps with CFG 4.5",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="pixart-delta",
        family="pixart",
        role="student",
        base="pixart-alpha",
        repo_id="PixArt-alpha/PixArt-LCM-XL-2-1024-MS",
        storage="pipeline",
        scheduler="LCMScheduler",
        num_inference_steps=4,
        guidance_scale=0.0,
        resolution=1024,
        description="PixArt-δ (LCM-distilled PixArt-α; full pipeline repo, its transformer is used), 4 steps, no CFG",
    ),
    *_tiny_pair(
        "pixart",
        "tiny-pixart",
        "tiny-pixart-lcm",
        "PixArt-α",
        guidance=4.5,
        scheduler="DPMSolverMultistepScheduler",
        student_scheduler="LCMScheduler",
        student_note="PixArt-δ-shaped: LCMScheduler, 4 steps without CFG",
    ),  # fmt: skip
]

# Z-Image and Z-Image-Turbo: a single-stream DiT with a Qwen3 text encoder, flow matching.
_REGISTRY_LIST += [
    ModelSpec(
        name="z-image",
        family="zimage",
        role="base",
        repo_id="Tongyi-MAI/Z-Image",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=4.0,
        resolution=1024,
        description="Z-Image (S3-DiT, flow matching, shift 3), 50 steps with guidance 4 (Z-Image's own CFG scale)",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    ModelSpec(
        name="z-image-turbo",
        family="zimage",
        role="student",
        base="z-image",
        repo_id="Tongyi-MAI/Z-Image-Turbo",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=9,
        guidance_scale=0.0,
        resolution=1024,
        description="Z-Image-Turbo (distilled; full pipeline repo, its transformer is used), 9 steps, no CFG",
    ),
    *_tiny_pair(
        "zimage", "tiny-zimage", "tiny-zimage-turbo", "Z-Image", guidance=4.0, student_note="4 steps, no CFG"
    ),
]

# Qwen-Image and Qwen-Image-Lightning, a student shipped as a LoRA on the base with its own scheduler config.
QWEN_LIGHTNING_SCHEDULER: tuple[tuple[str, Any], ...] = (
    ("base_shift", math.log(3)),
    ("max_shift", math.log(3)),
    ("shift_terminal", None),
)
"""How the Lightning repo's scheduler config differs from Qwen-Image's: a constant shift of 3 (``mu = ln 3`` at every
resolution, "we use shift=3 in distillation"), no terminal stretch."""
_REGISTRY_LIST += [
    ModelSpec(
        name="qwen-image",
        family="qwenimage",
        role="base",
        repo_id="Qwen/Qwen-Image",
        storage="pipeline",
        scheduler="FlowMatchEulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=4.0,
        resolution=1328,
        description="Qwen-Image (MMDiT, Qwen2.5-VL text, flow matching), 50 steps with true CFG 4, 1328 px",
        embedder="open_clip:ViT-B-32:laion2b_s34b_b79k",
    ),
    *(
        ModelSpec(
            name=name,
            family="qwenimage",
            role="student",
            base="qwen-image",
            repo_id="lightx2v/Qwen-Image-Lightning",
            storage="lora_file",
            filename=f"Qwen-Image-Lightning-{steps}steps-V2.0.safetensors",
            scheduler="FlowMatchEulerDiscreteScheduler",
            scheduler_overrides=QWEN_LIGHTNING_SCHEDULER,
            num_inference_steps=steps,
            guidance_scale=1.0,
            resolution=1328,
            description=f"Qwen-Image-Lightning {steps}-step V2.0 (a LoRA on the base), shift 3, no CFG",
        )
        for name, steps in (("qwen-image-lightning", 8), ("qwen-image-lightning-4step", 4))
    ),
    *_tiny_pair(
        "qwenimage",
        "tiny-qwen-image",
        "tiny-qwen-image-lightning",
        "Qwen-Image",
        guidance=4.0,
        student_overrides=QWEN_LIGHTNING_SCHEDULER,
        student_note="Qwen-Image-Lightning's scheduler: shift 3; 4 steps, no CFG",
    ),  # fmt: skip
]

# SANA-Sprint (arXiv 2503.09641: sCM + LADD, 1-4 steps, guidance an input) and its teacher (SANA 1.6B fine-tuned with
# dense timestep embedding and QK norm). Sources and what is unverified: docs/model-pairs.md. The student is sampled
# as the flow schedule its SCMScheduler steps equal (stochastic flow Euler, σ = sin s / (sin s + cos s): see
# conceptspace/models/families/sana.py); the teacher on SANA's flow DPM-Solver++, whatever its repo's config says.
SANA_DPM: tuple[tuple[str, Any], ...] = (("flow_shift", 3.0), ("use_flow_sigmas", True), ("prediction_type", "flow_prediction"))  # fmt: skip
SANA_SPRINT_FLOW: tuple[tuple[str, Any], ...] = (("stochastic_sampling", True), ("shift", 1.0), ("use_dynamic_shifting", False))  # fmt: skip
_SANA = dict(family="sana-sprint", architecture="sana", resolution=1024)
_REGISTRY_LIST += [
    ModelSpec(
        name="sana-teacher", role="base", repo_id="Efficient-Large-Model/SANA_Sprint_1.6B_1024px_teacher_diffusers",
        storage="pipeline", scheduler="DPMSolverMultistepScheduler", scheduler_overrides=SANA_DPM,
        num_inference_steps=20, guidance_scale=4.5, embedder="open_clip:ViT-B-32:laion2b_s34b_b79k", **_SANA,
        description="SANA-Sprint's teacher (SANA 1.6B, dense timestep embedding, QK norm), 20 flow DPM-Solver steps, CFG 4.5",
    ),
    ModelSpec(
        name="sana-sprint", role="student", base="sana-teacher", storage="pipeline",
        repo_id="Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers", scheduler="FlowMatchEulerDiscreteScheduler",
        scheduler_overrides=SANA_SPRINT_FLOW, num_inference_steps=2, guidance_scale=4.5, **_SANA,
        description="SANA-Sprint 1.6B (sCM+LADD; SCMScheduler's 2 steps), guidance 4.5 as an input, no CFG",
    ),
    *(
        ModelSpec(name=name, family="tiny-sana", architecture="sana", storage="random", resolution=64, seed=seed, **spec)
        for name, seed, spec in (
            ("tiny-sana", 0, dict(role="base", repo_id="builtin:tiny-sana", scheduler="DPMSolverMultistepScheduler",
             scheduler_overrides=SANA_DPM, num_inference_steps=8, guidance_scale=4.5, embedder="pixels:32",
             description="tiny random SANA-Sprint-teacher-architecture model (noise images; tests and benchmarks)")),
            ("tiny-sana-sprint", 1, dict(role="student", base="tiny-sana", repo_id="builtin:tiny-sana-sprint",
             scheduler="FlowMatchEulerDiscreteScheduler", scheduler_overrides=SANA_SPRINT_FLOW,
             num_inference_steps=2, guidance_scale=4.5,
             description="tiny random SANA-Sprint-architecture student (2 steps, guidance embedded)")),
        )
    ),
]  # fmt: skip

_TESTBED_WEIGHTS = Path(__file__).parent.parent / "testbed" / "weights"
_REGISTRY_LIST += [
    ModelSpec(
        name="shapes",
        family="testbed",
        architecture="sd",
        role="base",
        repo_id="conceptspace/testbed-shapes",
        storage="pipeline",
        scheduler="EulerDiscreteScheduler",
        num_inference_steps=50,
        guidance_scale=5.0,
        resolution=32,
        description="the embedded testbed: a miniature Stable Diffusion trained on a procedural shapes world",
        embedder="testbed:clip",
        local_dir=str(_TESTBED_WEIGHTS / "shapes"),
    ),
    ModelSpec(
        name="dmd",
        family="testbed",
        architecture="sd",
        role="student",
        base="shapes",
        repo_id="conceptspace/testbed-dmd",
        storage="unet_folder",
        subfolder="unet",
        scheduler="LCMScheduler",
        scheduler_overrides=(("original_inference_steps", 4),),
        num_inference_steps=4,
        timesteps=(999, 749, 499, 249),
        guidance_scale=0.0,
        resolution=32,
        description="DMD2-style 4-step student of the testbed, trained by conceptspace.testbed.train",
        local_dir=str(_TESTBED_WEIGHTS / "dmd"),
    ),
]

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _REGISTRY_LIST}


ARCHITECTURES: dict[str, Any] = {}
"""The family adapters by architecture name: :data:`conceptspace.models.families.FAMILIES` is this dict, filled
when the modules in :data:`ARCHITECTURE_PROVIDERS` are imported (a family added there is known here too)."""

ARCHITECTURE_PROVIDERS = ["conceptspace.models.families"]
"""Modules imported before an entry's ``architecture`` is checked, so that their adapters are known."""


def register(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add a model to the registry (see docs/model-pairs.md). A student's base must already be registered, and
    the entry's architecture must be one a family adapter answers to."""
    if spec.name in REGISTRY and not overwrite:
        raise ValueError(f"model {spec.name!r} is already registered; pass overwrite=True to replace it")
    if spec.role == "student" and spec.base not in REGISTRY:
        raise ValueError(f"student {spec.name!r} names base {spec.base!r}, which is not registered")
    if spec.role == "student" and REGISTRY[spec.base].family != spec.family:
        raise ValueError(
            f"student {spec.name!r} is of family {spec.family!r} but its base {spec.base!r} is of family "
            f"{REGISTRY[spec.base].family!r}; load_pair would refuse the pair"
        )
    for module in ARCHITECTURE_PROVIDERS:
        importlib.import_module(module)
    if spec.architecture_name not in ARCHITECTURES:
        close = difflib.get_close_matches(spec.architecture_name, sorted(ARCHITECTURES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"model {spec.name!r}: unknown architecture {spec.architecture_name!r}; {hint}known architectures: "
            f"{', '.join(sorted(ARCHITECTURES))} (architecture= names the family adapter that loads its weights)"
        )
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """The registry entry called ``name``, or the one whose hub repository ``name`` is
    (``"stabilityai/stable-diffusion-xl-base-1.0"`` → ``sdxl``).

    Raises:
        UnknownModelError (a ValueError and a KeyError): an unknown name, with the close registry names (a
            misspelling) or the registry's names; a repository several entries share, with their names.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    in_repo = [key for key, spec in REGISTRY.items() if spec.repo_id.lower() == str(name).strip().lower()]
    if len(in_repo) == 1:
        return REGISTRY[in_repo[0]]
    if in_repo:
        raise UnknownModelError(
            f"{name} holds several registry models ({', '.join(in_repo)}): name the one you mean"
        )
    close = difflib.get_close_matches(str(name), list(REGISTRY), n=3, cutoff=0.6)
    if close:
        raise UnknownModelError(
            f"unknown model {name!r}; did you mean {' or '.join(close)}? "
            f"(`conceptspace models` lists all {len(REGISTRY)})"
        )
    raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}")


def bases() -> list[ModelSpec]:
    return [spec for spec in REGISTRY.values() if spec.role == "base"]


def students_of(base: str) -> list[ModelSpec]:
    return [spec for spec in REGISTRY.values() if spec.role == "student" and spec.base == base]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


def is_cached(spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when the files that ``spec`` needs are in the Hugging Face cache (always true for random models):
    its key files and, for folder layouts, the UNet weights in at least one variant."""
    from huggingface_hub import try_to_load_from_cache

    if spec.local_dir:
        return all((Path(spec.local_dir) / filename).is_file() for filename in spec.key_files)

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(spec.repo_id, filename, cache_dir=cache_dir), str)

    if not all(cached(filename) for filename in spec.key_files):
        return False
    if spec.storage in ("pipeline", "unet_folder"):
        folder = _weights_folder(spec)
        names = ["diffusion_pytorch_model"] + (
            [f"diffusion_pytorch_model.{spec.variant}"] if spec.variant else []
        )
        # one file, or the index of a sharded checkpoint (SD3.5's and FLUX's transformers)
        candidates = [
            name + ext for name in names for ext in (".safetensors", ".bin", ".safetensors.index.json")
        ]
        return any(cached(folder + name) for name in candidates)
    return True


def _weights_folder(spec: ModelSpec) -> str:
    """The repo-relative folder (with a trailing slash, or "") that holds the denoising network's weights."""
    if spec.storage == "pipeline":
        return f"{spec.network_folder}/"
    return f"{spec.subfolder}/" if spec.subfolder else ""


def _missing_error(
    spec: ModelSpec, cache_dir: str | os.PathLike | None, detail: str = ""
) -> ModelNotFoundError:
    from huggingface_hub import constants

    where = cache_dir or constants.HF_HUB_CACHE
    files = ", ".join(spec.key_files) or "its files"
    if spec.storage in ("pipeline", "unet_folder"):
        kind = "transformer" if spec.network_folder == "transformer" else "UNet"
        files += f" and {kind} weights {_weights_folder(spec)}diffusion_pytorch_model[.{spec.variant or 'fp16'}].safetensors"
    option = "--student-path" if spec.role == "student" else "--base-path"
    reason = "HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline() else "it could not be downloaded"
    # `hf download` fills the default cache: name the one we read from when it is another.
    command = spec.fetch_command + (f" --cache-dir {shlex.quote(os.fspath(cache_dir))}" if cache_dir else "")
    message = (
        f"model {spec.name!r} needs {spec.repo_id} ({files}), which is not in the Hugging Face cache at {where} "
        f"and {reason}. Fetch it with `{command}`, or point {option} at a local copy."
    )
    if detail:
        message += f" ({detail})"
    return ModelNotFoundError(message)
