"""Model pairs: loading a base and its distilled student with one shared VAE, one set of tokenizers and text
encoders, and two denoising networks.

:func:`load_pair` turns two registry names (:mod:`conceptspace.models.registry`) into a :class:`ModelPair` that
the sampler (:mod:`conceptspace.sampling`) runs in any regime. Everything that depends on the architecture —
pipeline and network classes, text encoding, the network's call — is asked of the pair's family adapter
(:mod:`conceptspace.models.families`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from conceptspace.io import torch_load_error
from conceptspace.models.families import Family, family_of
from conceptspace.models.memory import PLANS, MemoryPlan, Placement, place, place_student, store_in_fp8
from conceptspace.models.registry import (
    REGISTRY,
    IncompatibleModelsError,
    ModelNotFoundError,
    ModelSpec,
    Role,
    StorageKind,
    _missing_error,
    bases,
    get_spec,
    hub_offline,
    is_cached,
    register,
    students_of,
)
from conceptspace.models.sizes import PlanChoice, accelerator_memory, pair_sizes, parse_memory_size, plan_for

LoRAStudent = Literal["adapter", "merged"]
"""How a student stored as a LoRA on its base is held: ``"adapter"`` (default: hooked into the base's network,
switched on for the student's steps; no second network) or ``"merged"`` (a copy of the base's network with the LoRA
merged: one more network in memory, no per-layer LoRA term at run time)."""

__all__ = [
    "REGISTRY",
    "IncompatibleModelsError",
    "LoRAStudent",
    "ModelNotFoundError",
    "ModelPair",
    "ModelSpec",
    "Role",
    "StorageKind",
    "bases",
    "check_device",
    "default_device",
    "default_dtype",
    "get_spec",
    "hub_offline",
    "is_cached",
    "load_network_state_dict",
    "load_pair",
    "read_state_dict",
    "register",
    "students_of",
    "with_overrides",
    "with_student",
]


@dataclass
class ModelPair:
    """A base model and (optionally) one distilled student sharing one VAE and one set of text encoders.

    ``pipeline`` is the base's diffusers pipeline: it owns the VAE, tokenizers, text encoders, the base network and
    the image processor. ``student_network`` (the student's denoising network, a UNet or a transformer) is the only
    extra weight a pair holds — except for a student stored as a LoRA on its base, which by default is held as
    ``student_adapter``: the LoRA hooked into the base's own network, switched on for the student's steps only, so
    that ``student_network`` *is* the base's network and the pair holds the adapter's weights alone.
    ``family`` is the base's architecture adapter. Every sampling call gets fresh schedulers made from
    ``base_scheduler_config`` / ``student_scheduler_config``.
    """

    base: ModelSpec
    student: ModelSpec | None
    pipeline: Any
    student_network: Any | None
    base_scheduler_config: Mapping[str, Any]
    student_scheduler_config: Mapping[str, Any] | None = None
    base_prediction_type: str = "epsilon"
    student_prediction_type: str = "epsilon"
    paths: dict[str, str] = field(default_factory=dict)
    student_adapter: Any | None = None
    """A LoRA student's :class:`~conceptspace.lora.LoRAHandle` on the base's network (disabled outside the student's
    denoiser calls), or None for a student with a network of its own."""
    memory_plan: MemoryPlan = "resident"
    """Where the parts live while sampling (:mod:`conceptspace.models.memory`)."""
    execution_device: torch.device | None = None
    """The device the networks run on, when a plan other than ``resident`` keeps parts elsewhere between calls."""
    fp8: bool = False
    """Whether the denoising networks keep their weights in fp8 (layerwise casting)."""
    quantization: Any = None
    """The diffusers quantization config the networks were loaded with, if any."""
    placement: Placement | None = None
    """``model-offload``'s ledger: which part is on the accelerator, and every move so far."""
    memory_choice: PlanChoice | None = None
    """The plan checked against the accelerator's memory before loading (``str()`` says it), when one was."""
    # One unset scheduler per class and config, copied for each call: building one from its config costs
    # milliseconds (config validation, logging), a copy microseconds.
    _scheduler_prototypes: dict[tuple[str, str], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def family(self) -> Family:
        return family_of(self.base)

    @property
    def device(self) -> torch.device:
        """The device sampling runs on (under an offload plan the parts visit it; latents live there)."""
        return self.execution_device if self.execution_device is not None else self.base_network.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_network.dtype

    @property
    def weights(self) -> dict[str, Any]:
        """How the weights are held, as run.json records it: the dtype, and where they differ from the default the
        fp8 storage, the quantization config and a merged LoRA student (what changes the images, so a resumed run
        must match it; the memory plan changes none)."""
        held: dict[str, Any] = {"dtype": str(self.dtype).replace("torch.", "")}
        if self.fp8:
            held["fp8"] = True
        if self.quantization is not None:
            to_dict = getattr(self.quantization, "to_dict", None)
            held["quantization"] = to_dict() if callable(to_dict) else repr(self.quantization)
        if self.student is not None and self.student.storage == "lora_file" and self.student_adapter is None:
            held["lora_student"] = "merged"
        return held

    @property
    def base_network(self) -> Any:
        """The base's denoising network (``pipeline.unet``, or ``pipeline.transformer`` for transformer families)."""
        return getattr(self.pipeline, self.family.network_folder)

    @property
    def default_resolution(self) -> int:
        """The resolution pairs are compared at: the student's native one when there is a student."""
        return (self.student or self.base).resolution

    def network(self, role: Role) -> Any:
        """The denoising network of ``role``."""
        if role == "base":
            return self.base_network
        if self.student_network is None:
            raise ValueError(
                f"this pair has no student; load one with load_pair({self.base.name!r}, STUDENT)"
            )
        return self.student_network

    def spec(self, role: Role) -> ModelSpec:
        if role == "base":
            return self.base
        if self.student is None:
            raise ValueError(
                f"this pair has no student; load one with load_pair({self.base.name!r}, STUDENT)"
            )
        return self.student

    def make_scheduler(self, role: Role) -> Any:
        """A fresh scheduler for ``role`` (its class and overrides from the registry applied)."""
        import diffusers

        spec = self.spec(role)
        config = self.base_scheduler_config if role == "base" else self.student_scheduler_config
        overrides = spec.scheduler_config_overrides()
        key = (spec.scheduler, repr(sorted({**dict(config), **overrides}.items())))
        prototype = self._scheduler_prototypes.get(key)
        if prototype is None:
            scheduler_cls = getattr(diffusers, spec.scheduler)
            with _diffusers_errors_only():  # another class's config: its extra fields are ignored, not wrong
                prototype = scheduler_cls.from_config(dict(config), **overrides)
            self._scheduler_prototypes[key] = prototype
        return copy.deepcopy(prototype)

    def prediction_type(self, role: Role) -> str:
        return self.base_prediction_type if role == "base" else self.student_prediction_type

    def to_diffusers(self, role: Role = "base") -> Any:
        """A diffusers pipeline for ``role`` that shares this pair's components (no extra memory).

        It is the reference the sampler is tested against; ``dtype`` is passed to ``from_pipe`` so that
        diffusers does not upcast the shared modules (diffusers#12754).
        """
        if role == "student" and self.student_adapter is not None:
            raise ValueError(
                f"student {self.spec('student').name!r} is held as a LoRA adapter on the base's network, so no "
                "pipeline of its own can share this pair's components: sample it with conceptspace (sample(pair, "
                "…, Distilled())), or load the pair with lora_student='merged' to give it a network of its own"
            )
        scheduler = self.make_scheduler(role)
        # float32 needs no cast; passing it anyway makes diffusers re-cast every module and warn.
        dtype = _dtype_kwargs(self.dtype) if self.dtype != torch.float32 else {}
        unet = {} if role == "base" else {self.family.network_folder: self.network("student")}
        with _diffusers_errors_only():
            pipe = type(self.pipeline).from_pipe(self.pipeline, scheduler=scheduler, **unet, **dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def to(self, device: str | torch.device) -> ModelPair:
        """Every part on ``device`` (the ``resident`` plan)."""
        if self.memory_plan != "resident":
            raise ValueError(
                f"this pair's parts are placed by its {self.memory_plan!r} memory plan, which moves them itself: load it "
                f"again with device={str(device)!r} to run elsewhere"
            )
        if torch.device(device) == self.device and (
            self.student_network is None or self.student_network.device == self.device
        ):
            return self
        with _diffusers_errors_only():
            self.pipeline.to(device)
        if self.student_network is not None:
            self.student_network.to(device)
        return self


@contextlib.contextmanager
def _diffusers_errors_only() -> Iterator[None]:
    """Hide diffusers' spurious "modules that should be kept in float32: []" warning on every .to()."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` for diffusers versions that renamed ``torch_dtype`` (they warn on the old name)."""
    from diffusers.pipelines import pipeline_utils

    return {"dtype": dtype} if hasattr(pipeline_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a ``torch.device`` that exists on this machine (None stays None: the default), or a ValueError
    that names it and says what to use instead."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is not a device name: use cpu, cuda, cuda:N (the N-th GPU) or mps"
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {device!r} asks for a CUDA GPU, but torch {torch.__version__} sees none on this machine "
                "(no GPU, no driver, or a CPU-only torch build): use --device cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device {device!r} does not exist: this machine has {count} CUDA GPU(s), cuda:0 …"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {device!r} asks for Apple's MPS, which is not available here: use --device cpu"
        )
    return parsed


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def _first_line(error: BaseException) -> str:
    """An exception's first message line, or its type when the message is empty."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _prediction_type(spec: ModelSpec, scheduler_config: Mapping[str, Any]) -> str:
    """What the network predicts: its scheduler config's ``prediction_type`` after the registry's overrides (flow
    matching schedulers: the velocity, :data:`conceptspace.schedules.FLOW`)."""
    from conceptspace import schedules

    if schedules.is_flow(spec.scheduler):
        return schedules.FLOW
    return spec.scheduler_config_overrides().get(
        "prediction_type", scheduler_config.get("prediction_type", "epsilon")
    )


def _variants(spec: ModelSpec, dtype: torch.dtype) -> list[str | None]:
    """Weight variants to try in order: the fp16 files first when loading in half precision."""
    if spec.variant is None:
        return [None]
    return [spec.variant, None] if dtype == torch.float16 else [None, spec.variant]


def _load_with_variants(
    loader: Any, spec: ModelSpec, dtype: torch.dtype, cache_dir: Any, path: str | None = None, **kwargs: Any
) -> Any:
    errors = []
    for variant in _variants(spec, dtype):
        try:
            # HF_HUB_OFFLINE alone is not enough for sharded checkpoints: diffusers still asks the hub for the
            # shard list unless told local_files_only (seen with SD3.5's sharded transformer).
            offline = {"local_files_only": True} if hub_offline() and path is None else {}
            return loader(variant=variant, cache_dir=cache_dir, **_dtype_kwargs(dtype), **offline, **kwargs)
        except ModelNotFoundError:  # a family's own missing repo (HiDream's Llama) names itself
            raise
        except (OSError, ValueError) as error:  # diffusers reports absent files and variants with either
            errors.append(f"variant={variant}: {_first_line(error)}")
        except (TypeError, KeyError, AttributeError, IndexError) as error:  # a config the class cannot build
            where = os.path.join(path or spec.repo_id, kwargs.get("subfolder") or spec.subfolder or "")
            raise ModelNotFoundError(
                f"the config.json in {where} (model {spec.name!r}) does not describe a model that diffusers can "
                f"build ({type(error).__name__}: {_first_line(error)}); download it again or fix the file"
            ) from None
    if path is not None:  # a local copy was given: the hub cache and `hf download` are beside the point
        raise ModelNotFoundError(
            f"{path} is not a usable local copy of {spec.repo_id} for model {spec.name!r} (expected "
            f"{', '.join(spec.key_files)} and its weights): " + "; ".join(errors)
        )
    raise _missing_error(spec, cache_dir, "; ".join(errors))


def _require_local(spec: ModelSpec, cache_dir: Any, path: str | None) -> None:
    if path is not None:
        if not Path(path).exists():
            raise ModelNotFoundError(f"local path for model {spec.name!r} does not exist: {path}")
        return
    if hub_offline() and not is_cached(spec, cache_dir):
        raise _missing_error(spec, cache_dir)


def _load_base_pipeline(
    spec: ModelSpec, dtype: torch.dtype, cache_dir: Any, path: str | None, quantization: Any = None
) -> Any:
    family = family_of(spec)
    if spec.storage == "random":
        return family.random_pipeline(spec.seed, dtype)
    if spec.storage != "pipeline":
        raise ValueError(f"base model {spec.name!r} must be stored as a full pipeline, not {spec.storage!r}")
    _require_local(spec, cache_dir, path)
    source = path or spec.repo_id
    pipeline_cls = family.pipeline_class()
    kwargs: dict[str, Any] = {}
    if "safety_checker" in inspect.signature(pipeline_cls.__init__).parameters:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if quantization is not None:
        from diffusers import PipelineQuantizationConfig

        kwargs["quantization_config"] = PipelineQuantizationConfig(
            quant_mapping={family.network_folder: quantization}
        )
    pipeline = _load_with_variants(
        lambda **kw: pipeline_cls.from_pretrained(source, **kw, **kwargs), spec, dtype, cache_dir, path
    )
    family.check_pipeline(pipeline, source, spec.name)
    return pipeline


def _load_student_network(
    spec: ModelSpec,
    base_pipeline: Any,
    dtype: torch.dtype,
    cache_dir: Any,
    path: str | None,
    quantization: Any = None,
) -> tuple[Any, Mapping[str, Any]]:
    """The student's denoising network and the scheduler config it is sampled with."""
    family = family_of(spec)
    quantized = {"quantization_config": quantization} if quantization is not None else {}
    network_class = family.network_class()
    base_scheduler_config = base_pipeline.scheduler.config
    if spec.storage == "random":
        # An LCM student with guidance > 1 is the kind that takes w as an input (LCM-SDXL's time_cond_proj_dim).
        network = family.random_network(
            spec.seed, embeds_guidance=spec.scheduler == "LCMScheduler" and spec.guidance_scale > 1
        )
        return (network if dtype == torch.float32 else network.to(dtype)), base_scheduler_config
    _require_local(spec, cache_dir, path)
    source = path or spec.repo_id
    if spec.storage == "pipeline":
        unet = _load_with_variants(
            lambda **kw: network_class.from_pretrained(
                source, subfolder=family.network_folder, **kw, **quantized
            ),
            spec,
            dtype,
            cache_dir,
            path,
        )
        return unet, _student_pipeline_scheduler_config(spec, source, cache_dir, base_scheduler_config)
    if spec.storage == "unet_folder":
        unet = _load_with_variants(
            lambda **kw: network_class.from_pretrained(source, subfolder=spec.subfolder, **kw, **quantized),
            spec,
            dtype,
            cache_dir,
            path,
        )
        return unet, base_scheduler_config
    file_path = path or _cached_file(spec, cache_dir)
    base_network = getattr(base_pipeline, family.network_folder)
    if spec.storage == "lora_file":
        from conceptspace.lora import merge_lora

        network = copy.deepcopy(base_network)
        merge_lora(network, _student_lora(base_network, file_path, spec))
        return network, base_scheduler_config
    network = load_network_state_dict(
        file_path, network_class, base_network.config, dtype=dtype, name=spec.name
    )
    return network, base_scheduler_config


def _check_quantizable(
    base: ModelSpec, student: ModelSpec | None, lora_student: str, quantization: Any
) -> None:
    """A quantization config reaches only networks that diffusers' ``from_pretrained`` reads: refuse the others
    before anything loads."""
    if quantization is None:
        return
    how = {"random": "is built in memory", "unet_file": "is a bare state dict",
           "lora_file": "is a LoRA merged into a copy of the base's network"}  # fmt: skip
    for spec in (base, student):
        if spec is None or spec.storage in ("pipeline", "unet_folder"):
            continue
        if spec.storage == "lora_file" and lora_student == "adapter":
            continue  # an adapter on the quantized base
        raise ValueError(
            f"{spec.name!r} {how[spec.storage]}, not read by from_pretrained, so quantization cannot be applied to "
            "it: load it unquantized, or keep a LoRA student an adapter (lora_student='adapter') on the quantized base"
        )


def _student_lora(base_network: Any, file_path: str | os.PathLike, spec: ModelSpec) -> Any:
    """A LoRA student's file read and checked against the base's network (resolved to its module names, in its
    dtype)."""
    from conceptspace.lora import LoRAFormatError, LoRAMismatchError, coverage, read_lora

    try:
        lora = read_lora(file_path, unet=base_network).to(base_network.dtype)
        report = coverage(base_network, lora)
        if not report.complete:
            raise LoRAMismatchError(report.summary())
    except (LoRAFormatError, LoRAMismatchError) as error:
        raise IncompatibleModelsError(
            f"student {spec.name!r} is a LoRA on {spec.base!r}, but {file_path} does not fit that base's "
            f"{type(base_network).__name__}: {_first_line(error)}"
        ) from None
    return lora


def _student_adapter(base_network: Any, file_path: str | os.PathLike, spec: ModelSpec) -> Any:
    """A LoRA student as an adapter: the LoRA hooked into the base's network, unfused and switched off (the
    sampler switches it on for the student's steps, :func:`conceptspace.sampling.switched_on`)."""
    from conceptspace.lora import apply_lora

    handle = apply_lora(base_network, _student_lora(base_network, file_path, spec), track_timestep=False)
    handle.enabled = False
    return handle


def _student_pipeline_scheduler_config(
    spec: ModelSpec, source: str, cache_dir: Any, fallback: Mapping[str, Any]
) -> Mapping[str, Any]:
    import diffusers

    # SchedulerMixin is not a ConfigMixin: read the config through the spec's scheduler class.
    try:
        config = getattr(diffusers, spec.scheduler).load_config(
            source, subfolder="scheduler", cache_dir=cache_dir
        )
    except OSError:
        return fallback  # the student repo ships no scheduler: sample it on its base's config
    return config


def _cached_file(spec: ModelSpec, cache_dir: Any) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(spec.repo_id, spec.filename, cache_dir=cache_dir)
    except Exception as error:  # offline, missing, network: all mean the same to the user
        raise _missing_error(spec, cache_dir, _first_line(error)) from error


def load_network_state_dict(
    file_path: str | os.PathLike,
    network_class: type,
    config: Mapping[str, Any],
    *,
    dtype: torch.dtype,
    name: str = "student",
) -> Any:
    """Build a ``network_class`` (e.g. ``UNet2DConditionModel``) with ``config`` and fill it from a bare state-dict
    file (.safetensors, or .bin/.pt read with ``weights_only=True`` so that a malicious pickle cannot run code).
    """
    from accelerate import init_empty_weights

    state_dict = read_state_dict(file_path)
    with init_empty_weights():
        network = network_class.from_config(dict(config))
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if mismatched:
            key = mismatched[0]
            problems.append(
                f"{len(mismatched)} shape mismatches (e.g. {key}: {tuple(state_dict[key].shape)} in the file, "
                f"{tuple(expected[key].shape)} expected)"
            )
        raise IncompatibleModelsError(
            f"{file_path} is not a {network_class.__name__} state dict for {name!r}'s architecture: "
            + ", ".join(problems)
        )
    network.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, assign=True)
    return network.eval()


def read_state_dict(file_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a pickle through ``torch.load(weights_only=True)``."""
    file_path = Path(file_path)
    if not file_path.is_file():
        raise FileNotFoundError(f"no state-dict file at {file_path}")
    if file_path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file_path))
        except Exception as error:  # SafetensorError is not a ValueError and does not name the file
            raise ValueError(
                f"{file_path} is not a readable .safetensors file; it may be truncated or corrupt "
                f"({_first_line(error)})"
            ) from error
    try:
        state_dict = torch.load(file_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(torch_load_error(file_path, error)) from None
    if (
        isinstance(state_dict, dict)
        and "state_dict" in state_dict
        and isinstance(state_dict["state_dict"], dict)
    ):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{file_path} does not hold a flat dict of tensors")
    return state_dict


def load_pair(
    base: str | ModelSpec,
    student: str | ModelSpec | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    base_path: str | os.PathLike | None = None,
    student_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    lora_student: LoRAStudent = "adapter",
    memory: MemoryPlan | Literal["auto"] = "resident",
    fp8: bool = False,
    device_memory: int | str | None = None,
    quantization: Any = None,
) -> ModelPair:
    """Load a base model and one of its distilled students with shared VAE and text encoders.

    Args:
        base: registry name (``"sdxl"``) or a :class:`ModelSpec`.
        student: registry name (``"dmd2"``), a spec, or None for a base-only pair.
        dtype: weights dtype; default float16 on CUDA, float32 on CPU.
        device: default CUDA when available.
        base_path / student_path: a local folder or file that replaces the registry's hub source.
        cache_dir: Hugging Face hub cache to read (default: HF_HUB_CACHE).
        lora_student: a student stored as a LoRA on its base (Qwen-Image-Lightning, LCM-LoRA, Lightning, Hyper-SD
            and TCD LoRAs) is held as an ``"adapter"`` on the base's network, switched on for its steps only (the
            pair holds the adapter's weights, not a second network), or as a ``"merged"`` copy of the base's
            network (one more network in memory; each step skips the adapter's low-rank term).

    Raises:
        ModelNotFoundError: a model is not cached (with HF_HUB_OFFLINE=1) or not downloadable; the message
            names the repo, the files and the ``hf download`` command.
        IncompatibleModelsError: the two UNets' architectures differ (the message names the fields).
        MemoryPlanError: the plan does not fit the accelerator (the message names what would).

    Example:
        >>> pair = load_pair("sdxl", "dmd2")                      # doctest: +SKIP
        >>> images = sample(pair, "a cute puppy", Hybrid(), seeds=range(4)).images   # doctest: +SKIP
    """
    base_spec = base if isinstance(base, ModelSpec) else get_spec(base)
    if base_spec.role != "base":
        raise ValueError(f"{base_spec.name!r} is a student of {base_spec.base!r}, not a base model")
    student_spec = _student_spec(base_spec, student)
    for spec, path, option in (
        (base_spec, base_path, "base_path"),
        (student_spec, student_path, "student_path"),
    ):
        if spec is not None and spec.storage == "random" and path is not None:
            raise ValueError(
                f"{spec.name!r} is built in (tiny random weights made in memory), so {option} {path} would be "
                f"ignored: drop it, or load your model under a registry name of its architecture "
                f"(conceptspace models lists them)"
            )
    device = check_device(device) or default_device()
    dtype = dtype or default_dtype(device)
    if memory not in (*PLANS, "auto"):
        raise ValueError(f"unknown memory plan {memory!r}; plans: {', '.join(PLANS)} or auto")
    if fp8 and quantization is not None:
        raise ValueError(
            "fp8=True and a quantization config both set how the networks' weights are stored: pick one"
        )
    _check_quantizable(base_spec, student_spec, lora_student, quantization)
    base_path = base_path if base_path is not None else base_spec.local_dir
    base_path = os.path.abspath(base_path) if base_path is not None else None
    if student_spec is not None and student_path is None:
        student_path = student_spec.local_dir
    student_path = os.path.abspath(student_path) if student_path is not None else None

    # A missing model fails here, before minutes go into loading the other one.
    for spec, path in ((base_spec, base_path), (student_spec, student_path)):
        if spec is not None and spec.storage != "random":
            _require_local(spec, cache_dir, path)
    # so does a plan that cannot fit the accelerator
    choice = _plan_choice(
        base_spec, student_spec, memory, device, dtype, fp8, lora_student, device_memory, quantization,
        cache_dir=cache_dir, base_path=base_path, student_path=student_path,
    )  # fmt: skip
    pipeline = _load_base_pipeline(base_spec, dtype, cache_dir, base_path, quantization)
    pipeline.set_progress_bar_config(disable=True)
    base_scheduler_config = dict(pipeline.scheduler.config)
    pair = ModelPair(
        base=base_spec,
        student=student_spec,
        pipeline=pipeline,
        student_network=None,
        base_scheduler_config=base_scheduler_config,
        base_prediction_type=_prediction_type(base_spec, base_scheduler_config),
        paths={k: v for k, v in {"base": base_path, "student": student_path}.items() if v},
    )
    if student_spec is not None:
        _attach_student(pair, student_spec, dtype, cache_dir, student_path, lora_student, quantization)
    if fp8:
        store_in_fp8(pair)
        pair.fp8 = True
    pair.quantization = quantization
    pair.memory_choice = choice
    return place(pair, choice.plan if choice is not None else memory, device)


def _plan_choice(
    base: ModelSpec,
    student: ModelSpec | None,
    memory: str,
    device: torch.device,
    dtype: torch.dtype,
    fp8: bool,
    lora_student: str,
    device_memory: int | str | None,
    quantization: Any,
    **paths: Any,
) -> PlanChoice | None:
    """The plan checked against the accelerator before loading; None where there is nothing to check: the CPU, a
    plan named for parts whose sizes cannot be read before loading (quantized networks, files without a safetensors
    header or a published count)."""
    available = parse_memory_size(device_memory) if device_memory is not None else accelerator_memory(device)
    if available is None:
        return PlanChoice("resident", 0, 0) if memory == "auto" else None
    sizes = None
    if quantization is None:
        bytes_per_weight = torch.finfo(dtype).bits // 8
        sizes = pair_sizes(
            base, student, bytes_per_weight=bytes_per_weight, fp8=fp8, lora_student=lora_student, **paths
        )
    if sizes is None and memory != "auto":
        return None
    return plan_for(sizes, available, memory)


def with_student(
    pair: ModelPair,
    student: str | ModelSpec,
    *,
    student_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    lora_student: LoRAStudent = "adapter",
) -> ModelPair:
    """``pair``'s base with another student: the base pipeline is shared (not reloaded); only the student's network
    is read, in the pair's dtype, quantization and fp8 storage, and placed by its memory plan. ``pair`` itself is
    unchanged; a student no longer needed leaves the shared base with
    :func:`~conceptspace.models.memory.release_student` (its LoRA hooks, its part of the plan's ledger).

    Example:
        >>> pairs = [with_student(pair, name) for name in ("lightning", "turbo")]   # doctest: +SKIP
    """
    student_spec = _student_spec(pair.base, student)
    if student_path is None:
        student_path = student_spec.local_dir
    student_path = os.path.abspath(student_path) if student_path is not None else None
    if student_spec.storage != "random":
        _require_local(student_spec, cache_dir, student_path)
    paths = {k: v for k, v in pair.paths.items() if k != "student"}
    other = replace(
        pair,
        student=student_spec,
        student_network=None,
        student_adapter=None,
        paths=paths,
        memory_choice=None,
    )
    if student_path:
        other.paths["student"] = student_path
    _check_quantizable(pair.base, student_spec, lora_student, pair.quantization)
    _attach_student(other, student_spec, pair.dtype, cache_dir, student_path, lora_student, pair.quantization)
    if other.student_network is not pair.base_network:
        place_student(other)
    return other


def _student_spec(base_spec: ModelSpec, student: str | ModelSpec | None) -> ModelSpec | None:
    """The student's spec, checked to be a student of ``base_spec``'s family."""
    student_spec = student if isinstance(student, ModelSpec) or student is None else get_spec(student)
    if student_spec is None:
        return None
    if student_spec.role != "student":
        raise ValueError(f"{student_spec.name!r} is a base model, not a distilled student")
    if (
        student_spec.family != base_spec.family
        or student_spec.architecture_name != base_spec.architecture_name
    ):
        raise IncompatibleModelsError(
            f"{student_spec.name!r} is a {student_spec.family} student; it cannot pair with the "
            f"{base_spec.family} base {base_spec.name!r} (its students: "
            f"{', '.join(s.name for s in students_of(base_spec.name)) or 'none'})"
        )
    return student_spec


def _attach_student(
    pair: ModelPair,
    student_spec: ModelSpec,
    dtype: torch.dtype,
    cache_dir: Any,
    student_path: str | None,
    lora_student: LoRAStudent = "adapter",
    quantization: Any = None,
) -> None:
    if lora_student not in ("adapter", "merged"):
        raise ValueError(f"lora_student must be 'adapter' or 'merged', got {lora_student!r}")
    if student_spec.storage == "lora_file" and lora_student == "adapter":
        file_path = student_path or _cached_file(student_spec, cache_dir)
        pair.student_adapter = _student_adapter(pair.base_network, file_path, student_spec)
        pair.student_network = pair.base_network
        scheduler_config: Mapping[str, Any] = pair.base_scheduler_config
    else:
        unet, scheduler_config = _load_student_network(
            student_spec, pair.pipeline, dtype, cache_dir, student_path, quantization
        )
        pair.family.check_compatible(
            pair.base_network.config, unet.config, (pair.base.name, student_spec.name)
        )
        pair.student_network = unet.eval()
    pair.student_scheduler_config = dict(scheduler_config)
    pair.student_prediction_type = _prediction_type(student_spec, scheduler_config)


def with_overrides(spec: ModelSpec, **changes: Any) -> ModelSpec:
    """A copy of ``spec`` with fields changed, e.g. ``with_overrides(get_spec("turbo"), num_inference_steps=1)``."""
    return replace(spec, **changes)
