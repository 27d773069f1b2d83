"""What one registry entry is: :class:`ModelSpec`, the data that loads and samples a checkpoint with its own
defaults, and :func:`tiny_pair`, the in-memory random stand-ins of a family. No torch, no diffusers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

StorageKind = Literal["pipeline", "unet_folder", "unet_file", "lora_file", "random"]
Role = Literal["base", "student"]

NETWORK_FOLDERS: dict[str, str] = {
    name: "transformer"
    for name in ("sd3", "flux", "pixart", "zimage", "qwenimage", "sana", "flux2", "hidream", "krea2")
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


def tiny_pair(
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
