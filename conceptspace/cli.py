"""The ``conceptspace`` command: a thin layer over the Python API (parse, call, say where results went)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core


class _Commands(typer.core.TyperGroup):
    """The command group; Ctrl-C in any command prints one line saying what was kept (the study's own message)
    and exits with the shell's status 130, where typer would exit silently."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as interrupt:
            typer.secho(str(interrupt) or "interrupted", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Commands,
    help="Study and fix what distillation does to diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Errors a user can fix: one line on stderr, exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    FloatingPointError,
    MemoryError,
)


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class BaseSchedule(str, Enum):
    student = "student"
    own = "own"


class Memory(str, Enum):
    resident = "resident"
    model_offload = "model-offload"
    group_offload = "group-offload"
    auto = "auto"


class LoRAStudentMode(str, Enum):
    adapter = "adapter"
    merged = "merged"


@app.callback()
def _before_every_command() -> None:
    # here rather than in main(): commands invoked in-process (typer's CliRunner, a notebook) are quiet too
    _quiet_import_chatter()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


@app.command()
def models(
    cache_dir: Annotated[
        Path | None, typer.Option(help="Hugging Face hub cache (default: HF_HUB_CACHE).")
    ] = None,
) -> None:
    """List the registry: every base with its students, their defaults, and whether each is in the local cache.

    Example: conceptspace models
    """
    from conceptspace.models.registry import REGISTRY, is_cached

    specs = list(REGISTRY.values())
    name_w = max(len("name"), *(len(spec.name) for spec in specs))
    base_w = max(len("base"), *(len(spec.base or "-") for spec in specs))
    arch_w = max(len("arch"), *(len(spec.architecture_name) for spec in specs))
    typer.echo(
        f"{'name':<{name_w}} {'role':<8} {'base':<{base_w}} {'cached':<7} {'steps':<6} {'cfg':<5} {'res':<5} "
        f"{'arch':<{arch_w}} source"
    )
    for spec in specs:
        if spec.storage == "random" or spec.local_dir:
            cached = "builtin" if spec.storage == "random" else "shipped"
        else:
            cached = "yes" if is_cached(spec, cache_dir) else "no"
        source = spec.repo_id + (f" [{spec.filename}]" if spec.filename else "")
        typer.echo(
            f"{spec.name:<{name_w}} {spec.role:<8} {spec.base or '-':<{base_w}} {cached:<7} "
            f"{spec.num_inference_steps:<6} {spec.guidance_scale:<5g} {spec.resolution:<5} "
            f"{spec.architecture_name:<{arch_w}} {source}"
        )


@app.command()
def plan(
    base: Annotated[str | None, typer.Option(help="One base (default: every registered pair).")] = None,
    student: StudentOpt = None,
    device_memory: Annotated[
        list[str],
        typer.Option(help="Card sizes to plan for, e.g. 24GB (repeatable; default 24, 48 and 80 GB)."),
    ] = [],  # noqa: B006
    dtype: Annotated[DType, typer.Option(help="Weights dtype the pair would load in.")] = DType.bfloat16,
    fp8: Fp8Opt = False,
    cache_dir: CacheOpt = None,
) -> None:
    """Say before loading whether a pair fits a card: each part's size (from the files' safetensors headers when
    they are cached, else the published parameter counts), the peaks of the resident and model-offload plans, and
    per card size the plan that fits (what --memory auto would pick, or what to ask for when nothing lossless fits).

    Example: conceptspace plan --base flux-dev --device-memory 24GB
    """
    from conceptspace.models.registry import REGISTRY
    from conceptspace.models.sizes import GIB, gib, parse_memory_size, plan_rows

    try:
        cards = [parse_memory_size(size) for size in device_memory] or [24 * GIB, 48 * GIB, 80 * GIB]
    except ValueError as error:
        _fail(f"--device-memory: {error}")
    if base is not None and base not in REGISTRY:
        _fail(f"unknown base {base!r} (conceptspace models lists them)")
    pairs = [
        (spec.base, spec.name)
        for spec in REGISTRY.values()
        if spec.role == "student"
        and (student is None or spec.name == student)
        # one base, or every published one (the tiny test pairs only by name)
        and (spec.base == base if base is not None else REGISTRY[spec.base].storage != "random")
    ]
    if not pairs:
        _fail(f"no registered pair matches --base {base} --student {student}")
    bytes_per_weight = 4 if dtype == DType.float32 else 2
    rows = plan_rows(pairs, cards, bytes_per_weight=bytes_per_weight, fp8=fp8, cache_dir=cache_dir)
    width = max(len(row.name) for row in rows)
    cards_header = "  ".join(gib(card).ljust(19) for card in cards)
    typer.echo(
        f"{'pair':<{width}}  {'sizes':<9} {'text':>5} {'base':>5} {'student':>7} {'vae':>4}  {'resident':>8} "
        f"{'offload':>7}  {cards_header}"
    )
    for row in rows:
        if row.sizes is None:
            typer.echo(f"{row.name:<{width}}  unknown: not downloaded, and no published count")
            continue
        parts, sources = row.sizes.parts, "+".join(sorted(set(row.sizes.sources.values())))
        student_gb = f"{parts.get('student', parts.get('student_adapter', 0)) / 1e9:.1f}"
        student_gb += "a" if "student_adapter" in parts else ""
        typer.echo(
            f"{row.name:<{width}}  {sources:<9} {parts.get('text_encoders', 0) / 1e9:>5.1f} {parts['base'] / 1e9:>5.1f} "
            f"{student_gb:>7} {parts.get('vae', 0) / 1e9:>4.1f}  {row.sizes.peak('resident') / 1e9:>8.1f} "
            f"{row.sizes.peak('model-offload') / 1e9:>7.1f}  "
            + "  ".join(f"{row.fits[c]:<19}" for c in cards)
        )
    typer.echo(
        "GB of weights (decimal; 'a': a LoRA student's adapter on the base's network); the plan per card keeps "
        "1.5 GiB for activations. Load with --memory PLAN (and --fp8)."
    )


def _regime_names(regime: list[str]) -> tuple[list[str], list[str]]:
    """The ``--regime`` specs and their regime names; an unknown name fails here, suggesting close ones."""
    from conceptspace.sampling import check_regime_name

    specs = _listed(regime)
    names = [spec.partition(":")[0] for spec in specs]
    for name in names:
        try:
            check_regime_name(name)
        except ValueError as error:
            _fail(str(error))
    return specs, names


def build_regimes(
    regime: list[str],
    k: int = 1,
    base_guidance: float = 0.0,
    base_schedule: BaseSchedule | None = None,
    skip: int = 1,
    replace: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    student_steps: int | None = None,
) -> list:
    """The regimes of ``--regime`` specs (repeatable, comma-separated; :func:`conceptspace.sampling.parse_regime`,
    the parser ``compare`` uses), with the command's shared options as each regime's defaults."""
    from conceptspace.sampling import Distilled, parse_regime

    specs, names = _regime_names(regime)
    schedule = (base_schedule or BaseSchedule.student).value
    # the shared options, as each regime names them; a spec's own options win (--regime hybrid:k=2)
    # the remedies run over the student's regime ("distilled", their default, unless --student-steps says more)
    over_student = {"over": Distilled(steps=student_steps)} if student_steps is not None else {}
    defaults: dict[str, dict[str, object]] = {
        "base": {"steps": steps, "guidance_scale": guidance},
        "distilled": {"steps": student_steps},
        "hybrid": {"k": k, "base_guidance": base_guidance, "base_schedule": schedule, "base_steps": steps},
        "skip-first": {"n": skip},
        "replace-final": {
            "n": replace,
            "base_schedule": "own",
            "base_steps": steps,
            "base_guidance": guidance,
        },
        "cads": over_student,
        "cond-noise": over_student,
        "renoise": over_student,
        "uncond-first": over_student,
        "guider": over_student,
        "cfg-zero-star": over_student,
        "repellency": over_student,
        "group-inference": over_student,
        "interval-guidance": {"guidance_scale": guidance},  # over the hybrid with two base steps
    }
    return [parse_regime(spec, **defaults.get(name, {})) for spec, name in zip(specs, names, strict=True)]


def _prepare(
    base: str,
    student: str | None,
    regime: list[str],
    prompt: list[str],
    prompts: Path | None,
    n: int,
    seed: int,
    out: Path,
    k: int,
    base_guidance: float,
    base_schedule: BaseSchedule,
    skip: int,
    replace: int | None,
    steps: int | None,
    guidance: float | None,
    student_steps: int | None,
    height: int | None = None,
    width: int | None = None,
    embedder: str | None = None,
    measures: bool = False,
    **load_options: Any,
) -> tuple:
    """The one pre-flight of the sampling commands: every option is checked, then the embedder is loaded (the
    ``--embedder``; for a command that ``measures`` diversity the base's by default), then the pair
    (``load_options``: :func:`_load_pair`'s). What can fail so fails before any diffusion network is built.
    Returns (pair, regimes, prompts, seeds, parameters, embedder or None)."""
    from conceptspace.models import get_spec
    from conceptspace.sampling import check_guidance

    _, names = _regime_names(regime)  # a misspelt regime fails first
    prompt_list = _read_prompts(prompt, prompts)
    why = "diversity is measured between images: " if measures else ""
    seeds = _seeds(seed, n, least=2 if measures else 1, why=why)
    if student is None and any(name != "base" for name in names):
        _fail(f"regimes {', '.join(x for x in names if x != 'base')} need a --student")
    _check_image_size(height, width)
    for option, value in (("--guidance", guidance), ("--base-guidance", base_guidance)):
        try:
            if value is not None:
                check_guidance(value, option)
        except ValueError as error:
            _fail(str(error))
    # numbers are checked before anything is loaded: the regimes check their own
    built = build_regimes(
        regime, k, base_guidance, base_schedule, skip, replace, steps, guidance, student_steps
    )
    loaded = None
    if embedder is not None or measures:  # a study that measures defaults to the base's embedder
        from conceptspace.embeddings import resolve_embedder

        device, cache_dir = load_options.get("device"), load_options.get("cache_dir")
        quiet = load_options.get("quiet", False)
        loaded = resolve_embedder(
            embedder, get_spec(base), device=device, cache_dir=cache_dir, progress=not quiet
        )
    pair = _load_pair(base, student, out=out, **load_options)
    parameters = {
        "k": k,
        "base_guidance": base_guidance,
        "base_schedule": base_schedule.value,
        "skip": skip,
        "replace": replace,
    }
    return pair, built, prompt_list, seeds, parameters, loaded


def _listed(items: list[str]) -> list[str]:
    """A repeatable, comma-separated option's values in order: ``["a,b", "c"]`` → ``["a", "b", "c"]``."""
    return [value.strip() for item in items for value in item.split(",") if value.strip()]


def _read_prompts(prompt: list[str], prompts: Path | None) -> list[str]:
    """The --prompt texts, then the --prompts file's; none at all fails."""
    from conceptspace.prompts import read_prompt_file

    prompt_list = list(prompt) + (read_prompt_file(prompts) if prompts else [])
    if not prompt_list:
        _fail("give at least one --prompt (or --prompts FILE)")
    return prompt_list


def _seeds(seed: int, n: int, least: int = 1, why: str = "") -> list[int]:
    """The seeds of -n images from --seed: image i gets seed + i (each must fit a generator); fewer than ``least``
    images fail, saying ``why`` the command needs them."""
    from conceptspace.sampling import seeds_from

    if n < least:
        _fail(f"{why}-n must be at least {least}, got {n}")
    return seeds_from(seed, n)


def _check_image_size(height: int | None, width: int | None) -> None:
    for option, value in (("--height", height), ("--width", width)):
        if value is not None and value < 1:
            _fail(f"{option} must be a positive number of pixels, got {value}")


def _silence_libraries() -> None:
    """--quiet: no progress bars or info logs from diffusers, transformers and huggingface_hub either."""
    import diffusers
    import huggingface_hub
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    huggingface_hub.utils.disable_progress_bars()


def _print_run(run: dict, out: Path) -> None:
    width = max(14, *(len(name) for name in run["regimes"]))
    for name, record in run["regimes"].items():
        models_run = " ".join(f"{s['timestep']}:{s['model'][0]}" for s in record["schedule"])
        seconds = sum(v for key, v in record["timings"].items() if key != "writing")
        typer.echo(
            f"{name:<{width}} {len(record['images']):>4} images  {seconds:7.2f} s  schedule {models_run}"
        )
    typer.echo(f"wrote {out / 'run.json'}")


def _generate(trajectories: bool, options: dict) -> None:
    from conceptspace.generate import generate as generate_images

    pair, regimes, prompts, seeds, parameters, embedder = _prepare(**options)
    run = generate_images(
        pair,
        prompts,
        regimes,
        seeds,
        options["out"],
        negative_prompt=options["negative_prompt"],
        height=options["height"],
        width=options["width"],
        batch_size=options["batch_size"],
        trajectories=trajectories,
        commitment_embedder=embedder,
        progress=not options["quiet"],
        parameters=parameters,
        command="trajectory" if trajectories else "generate",
    )
    _print_run(run, options["out"])


# Options shared by `generate` and `trajectory` (typer needs them spelled out on each command).
BaseOpt = Annotated[
    str, typer.Option("--base", help="Base model (registry name, see `conceptspace models`).")
]
StudentOpt = Annotated[str | None, typer.Option("--student", help="Distilled student of the base.")]
RegimeOpt = Annotated[
    list[str],
    typer.Option(
        "--regime",
        "--regimes",
        help="base, distilled, hybrid, skip-first, replace-final, or a remedy: cads, cond-noise, interval-guidance, "
        "renoise, uncond-first, cfg-zero-star, repellency, group-inference, guider (a diffusers guider: "
        "guider:guider=ClassifierFreeZeroStarGuidance), sliderspace; options after colons, as compare takes them (hybrid:k=2, renoise:eta=0); repeat or "
        "comma-separate.",
    ),
]
PromptOpt = Annotated[list[str], typer.Option("--prompt", help="Prompt text (repeatable).")]
AlsoEmbedderOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="More embedder specs for the diversity rows (repeatable; default: DINOv2 when its weights are "
        "cached, beside --embedder's CLIP; 'none' for none)."
    ),
]
PromptsOpt = Annotated[
    Path | None, typer.Option(help="File of prompts: one per line, or a CSV with a 'prompt' column.")
]
NOpt = Annotated[int, typer.Option("-n", help="Images per prompt and regime.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
KOpt = Annotated[int, typer.Option("--k", help="hybrid: number of base steps at the start.")]
BaseGuidanceOpt = Annotated[float, typer.Option(help="hybrid: the base's CFG scale (0 = no CFG pass).")]
BaseScheduleOpt = Annotated[
    BaseSchedule,
    typer.Option(help="hybrid: base on the student's timesteps, or on its own schedule until the hand-off."),
]
SkipOpt = Annotated[int, typer.Option(help="skip-first: number of the student's first steps skipped.")]
ReplaceOpt = Annotated[
    int | None,
    typer.Option(
        help="replace-final: number of final student steps given to the base (default all but the first)."
    ),
]
StepsOpt = Annotated[int | None, typer.Option(help="Base steps on its own schedule (default: registry).")]
GuidanceOpt = Annotated[
    float | None,
    typer.Option(
        help="Base CFG scale in the base, replace-final and interval-guidance regimes (default: registry)."
    ),
]
StudentStepsOpt = Annotated[
    int | None, typer.Option(help="Student steps in the distilled regime (default: registry timesteps).")
]
HeightOpt = Annotated[
    int | None, typer.Option(help="Image height (default: the student's native resolution).")
]
WidthOpt = Annotated[int | None, typer.Option(help="Image width (default: the student's native resolution).")]
NegativeOpt = Annotated[str | None, typer.Option(help="Negative prompt for CFG passes.")]
BatchOpt = Annotated[
    int,
    typer.Option(
        help="Images per forward pass (changes speed, and the images only at float-rounding level)."
    ),
]
DTypeOpt = Annotated[
    DType | None, typer.Option(help="Weights dtype (default float16 on CUDA, float32 on CPU).")
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="Device, e.g. cuda, cuda:1, cpu (default: CUDA if available).")
]
BasePathOpt = Annotated[Path | None, typer.Option(help="Local folder replacing the base's hub source.")]
StudentPathOpt = Annotated[
    Path | None, typer.Option(help="Local folder or UNet file replacing the student's hub source.")
]
CacheOpt = Annotated[Path | None, typer.Option(help="Hugging Face hub cache (default: HF_HUB_CACHE).")]
EmbedderOpt = Annotated[
    str | None, typer.Option(help="Embedder spec (default: the base's, e.g. open_clip:ViT-B-32:…).")
]


MemoryOpt = Annotated[
    Memory,
    typer.Option(
        help="Where the pair's parts live: resident (all on the device), model-offload (each part on it only while "
        "it runs), group-offload (a block at a time), auto (the cheapest that fits; conceptspace plan tells)."
    ),
]
Fp8Opt = Annotated[bool, typer.Option("--fp8", help="Keep the denoising networks' weights in fp8 (lossy).")]
DeviceMemoryOpt = Annotated[
    str | None, typer.Option(help="Accelerator memory to plan for, e.g. 24GB (default: its free memory).")
]
LoRAStudentOpt = Annotated[
    LoRAStudentMode,
    typer.Option(
        help="A student stored as a LoRA: an adapter on the base's network, or a merged copy (faster)."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _memory_options(
    memory: Memory, fp8: bool, device_memory: str | None, lora_student: LoRAStudentMode
) -> dict:
    """load_pair's memory keywords from the options (a bad --device-memory fails before anything loads)."""
    from conceptspace.models.sizes import parse_memory_size

    try:
        size = parse_memory_size(device_memory) if device_memory is not None else None
    except ValueError as error:
        _fail(f"--device-memory: {error}")
    return {"memory": memory.value, "fp8": fp8, "device_memory": size, "lora_student": lora_student.value}


def _say_plan(pair: Any) -> None:
    if pair.memory_choice is not None and pair.memory_choice.device_memory:
        typer.echo(str(pair.memory_choice), err=True)


def _load_pair(
    base: str,
    student: str | None,
    *,
    out: Path | None = None,
    dtype: DType | None = None,
    device: str | None = None,
    base_path: Path | None = None,
    student_path: Path | None = None,
    cache_dir: Path | None = None,
    memory: Memory = Memory.resident,
    fp8: bool = False,
    device_memory: str | None = None,
    lora_student: LoRAStudentMode = LoRAStudentMode.adapter,
    quiet: bool = False,
    **_: object,
) -> Any:
    """The pair the shared loading options name, its memory plan said on stderr. A bad --device or --device-memory,
    or an --out that cannot be written, fails before anything loads. Other options (a command's ``locals()``) are
    ignored."""
    import torch

    from conceptspace.io import ensure_writable_dir
    from conceptspace.models import check_device, load_pair

    device = check_device(device)
    memory_options = _memory_options(memory, fp8, device_memory, lora_student)
    if out is not None:
        ensure_writable_dir(out)
    if quiet:
        _silence_libraries()
    pair = load_pair(
        base,
        student,
        dtype=getattr(torch, dtype.value) if dtype else None,
        device=device,
        base_path=base_path,
        student_path=student_path,
        cache_dir=cache_dir,
        **memory_options,
    )
    _say_plan(pair)
    return pair


@app.command()
def generate(
    base: BaseOpt = "sdxl",
    student: StudentOpt = None,
    regime: RegimeOpt = ["distilled"],  # noqa: B006 - typer reads the default
    prompt: PromptOpt = [],  # noqa: B006
    prompts: PromptsOpt = None,
    n: NOpt = 4,
    seed: SeedOpt = 0,
    out: OutOpt = Path("out/generate"),
    k: KOpt = 1,
    base_guidance: BaseGuidanceOpt = 0.0,
    base_schedule: BaseScheduleOpt = BaseSchedule.student,
    skip: SkipOpt = 1,
    replace: ReplaceOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    student_steps: StudentStepsOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    negative_prompt: NegativeOpt = None,
    batch_size: BatchOpt = 4,
    dtype: DTypeOpt = None,
    device: DeviceOpt = None,
    base_path: BasePathOpt = None,
    student_path: StudentPathOpt = None,
    cache_dir: CacheOpt = None,
    memory: MemoryOpt = Memory.resident,
    fp8: Fp8Opt = False,
    device_memory: DeviceMemoryOpt = None,
    lora_student: LoRAStudentOpt = LoRAStudentMode.adapter,
    quiet: QuietOpt = False,
) -> None:
    """Generate images in one or more regimes; writes DIR/<regime>/<prompt#>_<seed>.png and DIR/run.json.

    Example: conceptspace generate --base sdxl --student dmd2 --regime hybrid --prompt "a cute puppy" -n 8 --out runs/puppy
    """
    _generate(False, locals())


@app.command()
def trajectory(
    base: BaseOpt = "sdxl",
    student: StudentOpt = None,
    regime: RegimeOpt = ["base", "distilled", "hybrid"],  # noqa: B006
    prompt: PromptOpt = [],  # noqa: B006
    prompts: PromptsOpt = None,
    n: NOpt = 4,
    seed: SeedOpt = 0,
    out: OutOpt = Path("out/trajectory"),
    k: KOpt = 1,
    base_guidance: BaseGuidanceOpt = 0.0,
    base_schedule: BaseScheduleOpt = BaseSchedule.student,
    skip: SkipOpt = 1,
    replace: ReplaceOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    student_steps: StudentStepsOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    negative_prompt: NegativeOpt = None,
    batch_size: BatchOpt = 4,
    dtype: DTypeOpt = None,
    device: DeviceOpt = None,
    base_path: BasePathOpt = None,
    student_path: StudentPathOpt = None,
    cache_dir: CacheOpt = None,
    memory: MemoryOpt = Memory.resident,
    fp8: Fp8Opt = False,
    device_memory: DeviceMemoryOpt = None,
    lora_student: LoRAStudentOpt = LoRAStudentMode.adapter,
    embedder: Annotated[
        str | None,
        typer.Option(
            help="Measure commitment in this embedder's space on decoded x̂0 (e.g. dreamsim:ensemble); default latent correlation."
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Like generate, plus one x̂0 strip per sample (DIR/<regime>/trajectory_<prompt#>_<seed>.png, steps left to
    right) and commitment curves (DIR/metrics.json and .csv: similarity of each step's x̂0 to the final image, with
    95% CIs).

    Example: conceptspace trajectory --base sdxl --student dmd2 --regime base,distilled --prompt "a car" -n 4 --out runs/traj
    """
    _generate(True, locals())


@app.command()
def diversity(
    base: BaseOpt = "sdxl",
    student: StudentOpt = None,
    regime: RegimeOpt = ["base", "distilled", "hybrid"],  # noqa: B006
    prompt: PromptOpt = [],  # noqa: B006
    prompts: PromptsOpt = None,
    n: NOpt = 100,
    seed: SeedOpt = 0,
    out: OutOpt = Path("out/diversity"),
    embedder: Annotated[
        str | None,
        typer.Option(
            help="Embedder spec, e.g. open_clip:ViT-B-32:laion2b_s34b_b79k or dreamsim:ensemble (default: the pair's)."
        ),
    ] = None,
    metric: Annotated[
        list[str],
        typer.Option("--metric", "--metrics", help="pairwise_distance, vendi (repeat or comma-separate)."),
    ] = ["pairwise_distance", "vendi"],  # noqa: B006
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    n_perm: Annotated[int, typer.Option(help="Permutations for the paired p-values.")] = 1000,
    reuse: Annotated[
        bool,
        typer.Option(help="Reuse images an earlier run in --out made for the same pair, prompts and seeds."),
    ] = True,
    k: KOpt = 1,
    base_guidance: BaseGuidanceOpt = 0.0,
    base_schedule: BaseScheduleOpt = BaseSchedule.student,
    skip: SkipOpt = 1,
    replace: ReplaceOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    student_steps: StudentStepsOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    negative_prompt: NegativeOpt = None,
    batch_size: BatchOpt = 4,
    dtype: DTypeOpt = None,
    device: DeviceOpt = None,
    base_path: BasePathOpt = None,
    student_path: StudentPathOpt = None,
    cache_dir: CacheOpt = None,
    memory: MemoryOpt = Memory.resident,
    fp8: Fp8Opt = False,
    device_memory: DeviceMemoryOpt = None,
    lora_student: LoRAStudentOpt = LoRAStudentMode.adapter,
    quiet: QuietOpt = False,
) -> None:
    """Generate (or reuse) images per regime, measure their diversity with 95% CIs and paired tests, and write
    DIR/metrics.json, DIR/metrics.csv and DIR/report.html.

    Example: conceptspace diversity --base sdxl --student dmd2 --regimes base,distilled,hybrid --prompt "a cute puppy" -n 100 --embedder dreamsim:ensemble --out runs/table2
    """
    from conceptspace.diversity import diversity_run
    from conceptspace.results import ALL_PROMPTS, format_p_value

    options = locals()
    pair, regimes, prompt_list, seeds, parameters, loaded = _prepare(**options, measures=True)
    metrics = _listed(metric)
    rows = diversity_run(
        pair,
        prompt_list,
        regimes,
        seeds,
        out,
        embedder=loaded,
        reuse=reuse,
        metrics=metrics,
        n_boot=n_boot,
        n_perm=n_perm,
        progress=not quiet,
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        batch_size=batch_size,
        parameters=parameters,
    )
    # one prompt: its own rows (n counts images); several: their average (n counts prompts, beside the images)
    averaged = len(prompt_list) > 1
    summary = [r for r in rows if (r["prompt"] == ALL_PROMPTS) == averaged]
    typer.echo(
        f"{'regime':<24} {'metric':<26} {'value':>8}  95% CI               "
        + ("prompts images  p" if averaged else "images  p")
    )
    for row in summary:
        p_value = format_p_value(row["p_value"]) if "p_value" in row else ""
        ci = f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]"
        counts = f"{row['n']:<7} {row.get('n_images', ''):<7}" if averaged else f"{row['n']:<7}"
        typer.echo(
            f"{row['regime']:<24} {row['metric']:<26} {row['value']:8.4f}  {ci:<20} {counts} {p_value}"
        )
    typer.echo(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'} and {out / 'report.html'}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/demo"),
    prompt: Annotated[
        list[str],
        typer.Option("--prompt", help="Prompt (repeatable; default: a shape, a triangle, a red shape)."),
    ] = [],  # noqa: B006
    n: Annotated[int, typer.Option("-n", help="Seeds per prompt and regime.")] = 48,
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    quiet: QuietOpt = False,
) -> None:
    """Run the study on the embedded testbed: base, distilled, hybrid and replace-final samples with x̂0
    trajectories, diversity by factor probe and testbed CLIP with 95% CIs, a verdict per claim of the paper,
    metrics.json/csv and report.html. No download; about a minute on a CPU.

    Example: conceptspace demo --out out/demo
    """
    from conceptspace.demo import DEMO_BASE_STEPS, DEMO_PROMPTS, run_demo, summary_lines
    from conceptspace.verdicts import verdict_lines, verdicts

    if n < 2:
        _fail(f"-n must be at least 2 (diversity needs two images), got {n}")
    if quiet:
        _silence_libraries()
    result = run_demo(out, prompts=prompt or DEMO_PROMPTS, n=n, seed=seed, n_boot=n_boot, progress=not quiet)
    for line in summary_lines(result.rows):
        typer.echo(line)
    typer.echo(
        f"\nThe paper's claims on these {n} seeds per prompt, per factor family [family, metric] (base: "
        f"{DEMO_BASE_STEPS} Euler steps, not 50, to keep the demo short; -n raises the seeds):"
    )
    for line in verdict_lines(verdicts(result.rows)):
        typer.echo(line)
    typer.echo(
        f"wrote {result.out_dir / 'metrics.json'}, {result.out_dir / 'metrics.csv'} and {result.report}"
    )


testbed_app = typer.Typer(help="The embedded testbed: retrain its models.", no_args_is_help=True)
app.add_typer(testbed_app, name="testbed")


@testbed_app.command("train")
def testbed_train(
    out: Annotated[
        Path, typer.Argument(help="Folder for the trained models (shapes/, dmd/, clip_vision/, parts/).")
    ],
    seed: Annotated[int, typer.Option(help="Seed of every stage.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[
        int, typer.Option(help="CPU threads (training is deterministic per thread count).")
    ] = 1,
    workers: Annotated[int, typer.Option(help="Processes rendering batches ahead (useful with a GPU).")] = 0,
    vae_steps: Annotated[int | None, typer.Option(help="VAE steps (default: the shipped budget).")] = None,
    clip_steps: Annotated[int | None, typer.Option(help="CLIP steps.")] = None,
    unet_steps: Annotated[int | None, typer.Option(help="UNet steps.")] = None,
    dmd_steps: Annotated[int | None, typer.Option(help="Student steps.")] = None,
) -> None:
    """Retrain the testbed's VAE, CLIP, UNet and DMD student from a seed (resumable: finished stages are kept).

    Load the result with `--base-path OUT/shapes --student-path OUT/dmd`, or `load_pair("shapes", "dmd",
    base_path=..., student_path=...)`.

    Example: conceptspace testbed train runs/testbed --seed 0
    """
    from conceptspace.testbed.train import train_all

    steps = {"vae": vae_steps, "clip": clip_steps, "unet": unet_steps, "dmd": dmd_steps}
    budget = {stage: value for stage, value in steps.items() if value is not None}
    train_all(out, seed, budget, num_threads=threads, device=device, workers=workers)
    typer.echo(f"wrote {out / 'shapes'}, {out / 'dmd'} and {out / 'clip_vision'}")


@app.command()
def transfer(
    ctx: typer.Context,
    lora: Annotated[Path, typer.Option("--lora", help="The LoRA (slider) file or folder to transfer.")],
    prompt: Annotated[str, typer.Option("--prompt", help="The prompt every image is sampled from.")],
    base: BaseOpt = "sdxl",
    student: Annotated[
        list[str] | None,
        typer.Option(
            "--student",
            "--students",
            help="Students of the base to measure, e.g. dmd2,lightning,lcm (repeat or comma-separate; default dmd2).",
        ),
    ] = None,
    scales: Annotated[
        str, typer.Option("--scales", help="Comma-separated LoRA scales; must include 0 (the reference).")
    ] = "-2,-1,0,1,2",
    n: NOpt = 4,
    seed: SeedOpt = 0,
    seeds: Annotated[
        str | None,
        typer.Option("--seeds", hidden=True, help="Deprecated: the seeds as a range 0-3 or a list 0,1,5."),
    ] = None,
    out: OutOpt = Path("out/transfer"),
    text: Annotated[
        str | None, typer.Option(help="Concept text for the CLIP score change (default: the prompt).")
    ] = None,
    embedder: EmbedderOpt = None,
    t_start: Annotated[
        int | None,
        typer.Option(help="LoRA off while the timestep is above this (slider convention, e.g. 700)."),
    ] = None,
    reverse: Annotated[
        bool, typer.Option("--reverse", help="The LoRA was trained on the student: ratio base / student.")
    ] = False,
    allow_partial: Annotated[
        bool,
        typer.Option("--allow-partial", help="Apply the modules that fit when the LoRA fits only in part."),
    ] = False,
    probe_factor: Annotated[
        str | None,
        typer.Option(
            help="Testbed only: the factor the slider moves (size, x, y, colour=red, colour=red-blue)."
        ),
    ] = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    dtype: DTypeOpt = None,
    device: DeviceOpt = None,
    base_path: BasePathOpt = None,
    student_path: StudentPathOpt = None,
    cache_dir: CacheOpt = None,
    memory: MemoryOpt = Memory.resident,
    fp8: Fp8Opt = False,
    device_memory: DeviceMemoryOpt = None,
    lora_student: LoRAStudentOpt = LoRAStudentMode.adapter,
    quiet: QuietOpt = False,
) -> None:
    """Apply a LoRA at several scales to the base and each student (each with its own sampler settings), and
    measure how far each moves from scale 0; write per-model grids, metrics.json/csv and report.html.

    Example: conceptspace transfer --lora age.safetensors --base sdxl --student dmd2,lcm --prompt "a portrait" --scales -2,-1,0,1,2 -n 4 --out runs/age
    """
    options = locals()
    from conceptspace.transfer import transfer as run_transfer

    students = _listed(student or ["dmd2"])  # the default is said in the help: --student is None everywhere
    if student_path is not None and len(students) != 1:
        _fail(f"--student-path replaces one student's weights: give one --student, not {len(students)}")
    _check_image_size(height, width)
    seed_list = _transfer_seeds(ctx, seeds, seed, n)
    if quiet:
        _silence_libraries()  # before the embedder loads, which comes first
    rows = run_transfer(
        lora,
        base,
        students,
        prompt,
        scales,
        seed_list,
        out,
        text=text,
        embedder=embedder,
        t_start=t_start,
        reverse=reverse,
        allow_partial=allow_partial,
        probe_factor=probe_factor,
        device=device,
        height=height,
        width=width,
        cache_dir=cache_dir,
        progress=not quiet,
        loader=_student_loader(options),
    )
    _print_transfer(rows, probe_factor)
    typer.echo(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'} and {out / 'report.html'}")


def _transfer_seeds(ctx: typer.Context, seeds: str | None, seed: int, n: int) -> list[int] | str:
    """transfer's seeds: -n from --seed, or the deprecated --seeds (a range or a list), which replaces both."""
    if seeds is None:
        return _seeds(seed, n, least=2, why="transfer measures each change with a CI over paired seeds: ")
    # the source by name: typer brings its own copy of click, whose ParameterSource is another class
    given = [
        flag
        for flag, name in (("-n", "n"), ("--seed", "seed"))
        if ctx.get_parameter_source(name).name != "DEFAULT"
    ]
    if given:
        _fail(
            f"--seeds replaces -n and --seed: give -n N --seed FIRST, not --seeds with {' and '.join(given)}"
        )
    typer.secho("note: --seeds is deprecated: give -n N --seed FIRST", err=True)
    return seeds


def _student_loader(options: dict[str, Any]) -> Callable[[str, str], Any]:
    """transfer's loader: the first student loads with the base under the command's loading options; each next one
    shares the base pipeline, and the one before leaves it."""
    from conceptspace.models import release_student, with_student

    loaded: list[Any] = []  # the pair of the student being measured

    def loader(base: str, student: str) -> Any:
        if not loaded:
            loaded.append(_load_pair(**{**options, "base": base, "student": student}))
            return loaded[-1]
        previous = loaded.pop()
        lora_student = options["lora_student"].value
        loaded.append(
            with_student(previous, student, cache_dir=options["cache_dir"], lora_student=lora_student)
        )
        release_student(previous)
        return loaded[-1]

    return loader


def _print_transfer(rows: list[dict], probe_factor: str | None) -> None:
    """transfer's table: each model's distance to scale 0 and CLIP score change per scale, then the transfer ratios
    and, on the testbed, what the probe saw change."""
    from conceptspace.transfer import scale_label

    clip = {(r["model"], r["scale"]): r for r in rows if r["metric"] == "clip_score_change"}
    typer.echo(f"{'model':<14} {'scale':>6}  {'distance to scale 0 [95% CI]':<32} clip score change %")
    for row in rows:
        if row["metric"] != "distance_to_scale_0":
            continue
        ci = f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]"
        change = clip.get((row["model"], row["scale"]))
        change_text = (
            f"{change['value']:+.2f} [{change['ci_low']:+.2f}, {change['ci_high']:+.2f}]" if change else ""
        )
        typer.echo(
            f"{row['model']:<14} {scale_label(row['scale']):>6}  {row['value']:.4f} {ci:<25} {change_text}"
        )
    for row in rows:
        if row["metric"] == "transfer_ratio":
            typer.echo(
                f"transfer ratio {row['regime']} at {scale_label(row['scale'])}: {row['value']:.3f} "
                f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
            )
    for row in rows:
        label = {
            "probe_factor_change": f"{probe_factor} change on {row.get('model')} at {scale_label(row.get('scale', 0))}",
            "probe_factor_rank_correlation": f"{probe_factor} rank correlation with scale on {row.get('model')}",
            "probe_transfer_ratio": f"{probe_factor} transfer ratio {row['regime']} at {scale_label(row.get('scale', 0))}",
        }.get(row["metric"])
        if label:
            typer.echo(f"{label}: {row['value']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]")


slider_app = typer.Typer(help="Concept Sliders: train text sliders from recipes.", no_args_is_help=True)
app.add_typer(slider_app, name="slider")


@slider_app.command("train")
def slider_train(
    recipe: Annotated[Path, typer.Argument(help="A slider recipe (sliders/*.yaml).")],
    base: Annotated[
        str, typer.Option(help="The base model to train on (registry name, e.g. sdxl or shapes).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="The .safetensors file to write (default: out/sliders/NAME-BASE.safetensors)."),
    ] = None,
    train_steps: Annotated[
        int | None, typer.Option("--train-steps", "--steps", help="Training steps (default: the recipe's).")
    ] = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a Concept Slider on a base model's UNet and write it as a diffusers LoRA (recipe in its metadata).

    Example: conceptspace slider train sliders/testbed-size.yaml --base shapes
    """
    from conceptspace.sliders import load_recipe, train_slider

    parsed = load_recipe(recipe)
    out = out or Path("out") / "sliders" / f"{parsed.name}-{base}.safetensors"
    written = train_slider(base, parsed, out, steps=train_steps, device=device, progress=not quiet)
    typer.echo(f"wrote {written}")


sliderspace_app = typer.Typer(
    help="SliderSpace: discover a concept's directions, train a slider per direction, measure activation.",
    no_args_is_help=True,
)
app.add_typer(sliderspace_app, name="sliderspace")
StudyDirArg = Annotated[Path, typer.Argument(help="A folder written by `conceptspace sliderspace discover`.")]


@sliderspace_app.command("discover")
def sliderspace_discover(
    prompt: Annotated[str, typer.Option("--prompt", help="The concept prompt to sample.")],
    base: BaseOpt = "sdxl",
    student: StudentOpt = None,
    n: Annotated[int, typer.Option("-n", help="Images to sample and embed.")] = 1000,
    n_directions: Annotated[
        int, typer.Option("--n-directions", help="How many directions (principal components) to keep.")
    ] = 16,
    regime: Annotated[
        str, typer.Option(help="Sample the student (distilled, the reference's choice) or the base.")
    ] = "distilled",
    embedder: EmbedderOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 4,
    out: OutOpt = Path("out/sliderspace"),
    device: DeviceOpt = None,
    memory: MemoryOpt = Memory.resident,
    fp8: Fp8Opt = False,
    device_memory: DeviceMemoryOpt = None,
    lora_student: LoRAStudentOpt = LoRAStudentMode.adapter,
    quiet: QuietOpt = False,
) -> None:
    """Sample N images of a concept, embed them and find its directions of variation (PCA); write the study folder.

    Example: conceptspace sliderspace discover --base shapes --student dmd --prompt "a shape" -n 1000 --n-directions 8 --out runs/space
    """
    options = locals()
    from conceptspace.directions import discover

    if student is None and regime != "base":
        _fail(f"regime {regime} needs a --student (or sample the base with --regime base)")
    pair = _load_pair(**options)
    space = discover(
        pair, prompt, out, n=n, n_directions=n_directions, regime=regime, embedder=embedder, seed=seed,
        batch_size=batch_size, device=device, progress=not quiet,
    )  # fmt: skip
    ratios = ", ".join(f"{r:.3f}" for r in space.explained_variance_ratio_[:8])
    typer.echo(f"explained variance ratio of the top directions: {ratios}")
    typer.echo(f"wrote {out / 'sliderspace.safetensors'}, {out / 'metrics.json'} and {out / 'report.html'}")


@sliderspace_app.command("train")
def sliderspace_train(
    study: StudyDirArg,
    directions: Annotated[
        str | None, typer.Option(help="Directions to train, e.g. 0,1,2 (default: all).")
    ] = None,
    model: Annotated[str, typer.Option(help="Train on the base (default) or the student.")] = "base",
    train_steps: Annotated[
        int, typer.Option("--train-steps", "--steps", help="Training steps per direction.")
    ] = 300,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-2,
    measure_seeds: Annotated[int, typer.Option(help="Seeds per model and scale for the effect rows.")] = 16,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a rank-1 slider per direction (loss −cos(Δφ(x̂0), v_k)), then show and measure each on both models.

    Example: conceptspace sliderspace train runs/space --directions 0,1,2
    """
    from conceptspace.directions import train_direction_sliders

    if quiet:
        _silence_libraries()
    chosen = [int(k) for k in directions.split(",") if k.strip()] if directions else None
    written = train_direction_sliders(
        study, directions=chosen, model=model, steps=train_steps, lr=lr, measure_seeds=measure_seeds, device=device,
        progress=not quiet,
    )  # fmt: skip
    typer.echo(f"wrote {len(written)} sliders to {study / 'sliders'}; effects in {study / 'metrics.json'}")


@sliderspace_app.command("activation")
def sliderspace_activation(
    study: StudyDirArg,
    regime: Annotated[
        list[str],
        typer.Option(
            "--regime", "--regimes", help="Regimes (repeat or comma-separate); base is the reference."
        ),
    ] = ["base", "distilled", "hybrid"],  # noqa: B006 - typer reads the default
    n: Annotated[int, typer.Option("-n", help="Images per regime (the same seeds in every regime).")] = 256,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Measure the variance each regime puts along each discovered direction (share of the base's, paired test).

    Example: conceptspace sliderspace activation runs/space --regimes base,distilled,hybrid -n 256
    """
    from conceptspace.directions import measure_activation
    from conceptspace.results import format_p_value

    if quiet:
        _silence_libraries()
    rows = measure_activation(
        study, regimes=_listed(regime), n=n, n_boot=n_boot,
        device=device,
        progress=not quiet,
    )  # fmt: skip
    p_values = {
        (r["regime"], r.get("direction")): r["p_value"]
        for r in rows
        if r["metric"].startswith("variance_log_ratio_")
    }
    typer.echo(
        "variance along each direction as a share of the base's [95% CI], paired test p (first 4 shown)"
    )
    for row in rows:
        if row["metric"].startswith("variance_share_") and (row.get("direction") or 0) < 4:
            p = p_values.get((row["regime"], row.get("direction")), float("nan"))
            typer.echo(
                f"{row['regime']:<12} {row['metric']:<26} {row['value']:.3f} "
                f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]  {format_p_value(p, named=True)}"
            )
    typer.echo(f"wrote {study / 'activation' / 'metrics.json'} and {study / 'activation' / 'report.html'}")


lora_app = typer.Typer(help="LoRA and slider files: inspect and convert.", no_args_is_help=True)
app.add_typer(lora_app, name="lora")


class LoRAFormat(str, Enum):
    diffusers = "diffusers"
    kohya = "kohya"
    peft = "peft"


@lora_app.command("inspect")
def lora_inspect(
    path: Annotated[Path, typer.Argument(help="A LoRA file (.safetensors, .pt) or a peft adapter folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """Show a LoRA's format, modules, ranks, alpha, metadata and which registry models it fits.

    Example: conceptspace lora inspect sliders/age.safetensors
    """
    import json

    from conceptspace.models.lora_fit import inspect_lora

    info = inspect_lora(path)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    typer.echo(f"{info['path']}: {info['format']} format, {info['modules']} modules, {info['dtype']}")
    typer.echo(f"rank {info['rank']}  alpha {info['alpha'] if info['alpha'] is not None else 'per module'}")
    # rank, alpha and target modules are shown above; the rest is what the author recorded
    recorded = {k: v for k, v in info["metadata"].items() if k not in ("rank", "alpha", "target_modules")}
    if recorded:
        typer.echo("metadata: " + ", ".join(f"{k}={v}" for k, v in recorded.items()))
    for family, fit in info["fits"].items():
        verdict = "unknown" if fit["fits"] is None else ("fits" if fit["fits"] else "does not fit")
        detail = (
            ""
            if fit["fits"] is None
            else f" ({fit['matched']} matched, {fit['missing']} missing, {fit['mismatched']} mis-shaped)"
        )
        typer.echo(f"  {family:<10} {verdict}{detail}: {', '.join(fit['models'])}")


@lora_app.command("convert")
def lora_convert(
    source: Annotated[Path, typer.Argument(help="The LoRA to read (any supported format).")],
    out: Annotated[Path, typer.Argument(help="The .safetensors file (a folder for peft) to write.")],
    to: Annotated[
        LoRAFormat,
        typer.Option(
            help="diffusers (pipe.load_lora_weights), kohya (A1111, ComfyUI) or peft (an adapter folder)."
        ),
    ],
    base_model: Annotated[
        str | None, typer.Option(help="Record the base model in the file's metadata.")
    ] = None,
) -> None:
    """Convert a LoRA between kohya, diffusers and peft layouts (written atomically, metadata kept).

    Example: conceptspace lora convert slider.pt --to diffusers slider.safetensors
    """
    from conceptspace.lora import read_lora, write_lora

    if to is LoRAFormat.peft and out.suffix:
        _fail(f"a peft adapter is a folder: give a folder name without a suffix, not {out.name!r}")
    if to is not LoRAFormat.peft and out.suffix != ".safetensors":
        _fail(f"write to a .safetensors file, not {out.name!r}")
    lora = read_lora(source)
    written = write_lora(
        lora, out, format=to.value, metadata={"base_model": base_model} if base_model else None
    )
    typer.echo(f"wrote {written} ({to.value}, {len(lora.modules)} modules, rank {lora.rank})")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by generate, trajectory or diversity.")],
    title: Annotated[str | None, typer.Option(help="Report title (default: the folder's name).")] = None,
) -> None:
    """Rebuild DIR/report.html from the files in DIR (metrics.json, run.json, images) without running a model.

    Example: conceptspace report runs/table2
    """
    from conceptspace.report import build_report

    typer.echo(f"wrote {build_report(run_dir, title=title)}")


# ------------------------------------------------------------------------------ prompt-set runs: run, evaluate
@app.command("run")
def run_prompts(
    prompts: Annotated[
        Path,
        typer.Option(
            help="Prompt set: a CSV with case_number,prompt,evaluation_seed columns (COCO-30k format), or text "
            "with one prompt per line."
        ),
    ],
    out: OutOpt,
    base: BaseOpt = "sdxl",
    student: StudentOpt = None,
    regime: RegimeOpt = ["distilled"],  # noqa: B006 - typer reads the default
    n: Annotated[int, typer.Option("-n", "--per-prompt", help="Images per prompt and regime.")] = 1,
    seed: Annotated[
        int, typer.Option(help="Seed of image 0 where the file gives none; image i uses seed + i.")
    ] = 0,
    from_case: Annotated[int | None, typer.Option(help="First case_number to run (inclusive).")] = None,
    till_case: Annotated[int | None, typer.Option(help="Last case_number to run (inclusive).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out: keep finished images, make the rest.")
    ] = False,
    k: KOpt = 1,
    base_guidance: BaseGuidanceOpt = 0.0,
    base_schedule: BaseScheduleOpt = BaseSchedule.student,
    skip: SkipOpt = 1,
    replace: ReplaceOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    student_steps: StudentStepsOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    negative_prompt: NegativeOpt = None,
    batch_size: BatchOpt = 4,
    dtype: DTypeOpt = None,
    device: DeviceOpt = None,
    base_path: BasePathOpt = None,
    student_path: StudentPathOpt = None,
    cache_dir: CacheOpt = None,
    memory: MemoryOpt = Memory.resident,
    fp8: Fp8Opt = False,
    device_memory: DeviceMemoryOpt = None,
    lora_student: LoRAStudentOpt = LoRAStudentMode.adapter,
    quiet: QuietOpt = False,
) -> None:
    """Sample a whole prompt set in one or more regimes: DIR/<regime>/<case>_<i>.png, DIR/manifest.jsonl, DIR/run.json.

    Resumable (--resume after any interruption, even kill -9) and sharded over processes with
    `accelerate launch -m conceptspace run ...` (see docs/runs.md).

    Example: conceptspace run --base sdxl --student dmd2 --regimes distilled,hybrid --prompts coco_30k.csv --till-case 999 --out runs/coco
    """
    options = locals()
    import torch

    from conceptspace.io import ensure_writable_dir
    from conceptspace.models import default_device
    from conceptspace.runs import WRITE_ERRORS, accelerate_state, read_cases, run_lock, run_prompt_set

    cases = read_cases(prompts, seed=seed, from_case=from_case, till_case=till_case)
    # the accelerate state first: it gives each process its own GPU before the models are loaded
    state = accelerate_state(torch.device(device) if device else default_device())
    if device is None and state.num_processes > 1:
        options["device"] = str(state.device)
    ensure_writable_dir(out)
    # the folder's lock before the models load: a second process into a busy folder is refused at once
    with run_lock(out, state.process_index):
        # the prompt file is read (as cases) already: _prepare only checks the options, builds regimes, loads the pair
        pair, regimes, *_ = _prepare(**{**options, "prompt": [cases[0].prompt], "prompts": None})
        try:
            summary = run_prompt_set(
                pair,
                cases,
                regimes,
                out,
                per_prompt=n,
                batch_size=batch_size,
                height=height,
                width=width,
                negative_prompt=negative_prompt,
                resume=resume,
                progress=not quiet,
                prompts_file=prompts,
            )
        except OSError as error:
            if error.errno in WRITE_ERRORS:  # a full disk: the user's to fix, one line
                _fail(error.strerror or str(error))
            raise
    if not state.is_main_process:
        return
    made = ", ".join(f"{name} {count}" for name, count in summary["written"].items()) or "none"
    by = f" (process 0 of {summary['processes']})" if summary["processes"] > 1 else ""
    typer.echo(f"made {made}{by}; {summary['skipped']} already finished")
    state_text = "complete" if summary["complete"] else "incomplete: rerun with --resume"
    typer.echo(f"wrote {out / 'manifest.jsonl'} and {out / 'run.json'} ({state_text})")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by `conceptspace run`.")],
    fid_ref: Annotated[
        str | None,
        typer.Option(help="FID reference: a regime of this run (e.g. base) or a folder of real images."),
    ] = None,
    embedder: Annotated[
        str | None,
        typer.Option(
            help="CLIP embedder spec, e.g. open_clip:ViT-B-32:laion2b_s34b_b79k (default: the base's)."
        ),
    ] = None,
    fid_weights: Annotated[
        Path | None, typer.Option(help="Local FID Inception weights file (needed offline unless cached).")
    ] = None,
    inception_score: Annotated[
        bool,
        typer.Option(
            "--inception-score",
            help="Also the Inception Score per regime (the FID network; on the testbed its probe).",
        ),
    ] = False,
    reference_regime: Annotated[
        str | None,
        typer.Option(
            help="Also precision, recall, density, coverage and CMMD of every other regime against this one's "
            "images (e.g. base), in the embedder's space."
        ),
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    device: DeviceOpt = None,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """CLIP score (each image against its prompt), FID, Inception Score and coverage of a reference regime per
    regime of a run; writes DIR/metrics.json and .csv.

    Example: conceptspace evaluate runs/coco --fid-ref data/coco-val2014 --embedder open_clip:ViT-B-32:laion2b_s34b_b79k
    """
    import json

    from conceptspace.evaluate import evaluate_run

    if quiet:
        _silence_libraries()
    rows = evaluate_run(
        run_dir,
        embedder=embedder,
        fid_ref=fid_ref,
        fid_weights=fid_weights,
        inception_score=inception_score,
        reference_regime=reference_regime,
        device=device,
        cache_dir=cache_dir,
        n_boot=n_boot,
        progress=not quiet,
    )
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    if not run.get("complete"):
        typer.secho(
            f"note: the run is not complete ({run.get('finished', '?')} of {run.get('images', '?')} images); "
            "these metrics use the finished ones",
            err=True,
        )
    typer.echo(f"{'regime':<16} {'metric':<17} {'value':>9}  95% CI                n")
    for row in rows:
        ci = "" if row["metric"] == "fid" else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        typer.echo(f"{row['regime']:<16} {row['metric']:<17} {row['value']:9.4g}  {ci:<21} {row['n']}")
    typer.echo(f"wrote {run_dir / 'metrics.json'} and {run_dir / 'metrics.csv'}")


@app.command("compare")
def compare_methods(
    base: BaseOpt = "sdxl",
    student: StudentOpt = None,
    methods: Annotated[
        list[str],
        typer.Option(
            "--methods",
            "--method",
            help="Methods to compare with the base and the student: regime names with options after colons, "
            "e.g. hybrid, hybrid:k=2, cads, cads:noise_scale=0.1, cond-noise:strength=2, interval-guidance, "
            "renoise:eta=0.5 (repeat or comma-separate).",
        ),
    ] = ["hybrid", "cads", "cond-noise", "interval-guidance", "renoise"],  # noqa: B006
    prompt: PromptOpt = [],  # noqa: B006
    prompts: PromptsOpt = None,
    n: NOpt = 64,
    seed: SeedOpt = 0,
    out: OutOpt = Path("out/compare"),
    embedder: Annotated[
        str | None, typer.Option(help="Embedder spec for diversity and quality (default: the pair's).")
    ] = None,
    also_embedder: AlsoEmbedderOpt = None,
    fid_ref: Annotated[
        str | None,
        typer.Option(
            help="Folder of reference images for the Fréchet distances (default: the base's images)."
        ),
    ] = None,
    fid_weights: Annotated[
        Path | None, typer.Option(help="Local FID Inception weights file (FID runs when they are at hand).")
    ] = None,
    inception_score: Annotated[
        bool, typer.Option("--inception-score", help="Also the Inception Score (on the testbed: its probe).")
    ] = False,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    n_perm: Annotated[int, typer.Option(help="Permutations for the paired p-values.")] = 1000,
    reuse: Annotated[
        bool, typer.Option(help="Reuse images an earlier comparison in --out made with the same settings.")
    ] = True,
    height: HeightOpt = None,
    width: WidthOpt = None,
    negative_prompt: NegativeOpt = None,
    batch_size: BatchOpt = 4,
    dtype: DTypeOpt = None,
    device: DeviceOpt = None,
    base_path: BasePathOpt = None,
    student_path: StudentPathOpt = None,
    cache_dir: CacheOpt = None,
    memory: MemoryOpt = Memory.resident,
    fp8: Fp8Opt = False,
    device_memory: DeviceMemoryOpt = None,
    lora_student: LoRAStudentOpt = LoRAStudentMode.adapter,
    quiet: QuietOpt = False,
) -> None:
    """Which method restores the student's diversity best, at what quality and cost: every method on the same
    seeds as the base and the student, with 95% CIs; writes DIR/metrics.json/.csv, DIR/run.json, DIR/report.html.

    Example: conceptspace compare --base sdxl --student dmd2 --methods hybrid,cads,cond-noise,hybrid:k=2 --prompt "a cute puppy" -n 64 --out runs/compare
    """
    options = locals()
    from conceptspace.comparison import compare, parse_method
    from conceptspace.sampling import Base

    specs = _listed(methods)
    for spec in specs:
        parse_method(spec)  # a misspelt method fails before any model loads
    if student is None:
        _fail(
            "compare needs a --student: the methods are compared with it (e.g. --base shapes --student dmd)"
        )
    prompt_list = _read_prompts(prompt, prompts)
    seeds = _seeds(seed, n, least=2, why="a comparison measures diversity: ")
    pair = _load_pair(**options)
    result = compare(
        pair,
        prompt_list,
        specs,
        seeds=seeds,
        out_dir=out,
        base=Base(steps=steps, guidance_scale=guidance),
        embedder=embedder,
        also_embedders=[] if also_embedder == ["none"] else also_embedder,
        fid_ref=fid_ref,
        fid_weights=fid_weights,
        inception_score=inception_score,
        n_boot=n_boot,
        n_perm=n_perm,
        reuse=reuse,
        progress=not quiet,
        batch_size=batch_size,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
    )
    for line in ranking_lines(result.ranking):
        typer.echo(line)
    typer.echo(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'} and {result.report}")


@app.command()
def diagnose(
    base: BaseOpt = "sdxl",
    student: StudentOpt = None,
    prompt: PromptOpt = [],  # noqa: B006
    prompts: PromptsOpt = None,
    n: NOpt = 32,
    seed: SeedOpt = 0,
    out: OutOpt = Path("out/diagnose"),
    max_k: Annotated[
        int | None,
        typer.Option("--max-k", help="Largest k (base steps) tried (default: the student's steps − 1)."),
    ] = None,
    embedder: Annotated[
        str | None, typer.Option(help="Embedder spec for diversity and commitment (default: the pair's).")
    ] = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    base_guidance: BaseGuidanceOpt = 0.0,
    boundaries: Annotated[
        bool,
        typer.Option(
            "--boundaries/--no-boundaries",
            help="Also sweep the σ boundaries: the base on its own schedule down to the student's k-th timestep.",
        ),
    ] = True,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    height: HeightOpt = None,
    width: WidthOpt = None,
    negative_prompt: NegativeOpt = None,
    batch_size: BatchOpt = 4,
    dtype: DTypeOpt = None,
    device: DeviceOpt = None,
    base_path: BasePathOpt = None,
    student_path: StudentPathOpt = None,
    cache_dir: CacheOpt = None,
    memory: MemoryOpt = Memory.resident,
    fp8: Fp8Opt = False,
    device_memory: DeviceMemoryOpt = None,
    lora_student: LoRAStudentOpt = LoRAStudentMode.adapter,
    quiet: QuietOpt = False,
) -> None:
    """How many base steps the hybrid needs: x̂0 diversity and commitment per step for the base and the student,
    the hybrid's diversity and cost for k = 1…K and for the σ boundaries between the student's steps, and the
    cheapest that reaches the base's diversity, with the calls that use it; writes DIR/metrics.json/.csv, DIR/run.json and DIR/report.html.

    Example: conceptspace diagnose --base shapes --student dmd --prompt "a shape" -n 32 --out runs/diagnose
    """
    from conceptspace.diagnose import diagnose as run_diagnosis
    from conceptspace.models import get_spec

    options = locals()
    load_options = (
        "dtype", "device", "base_path", "student_path", "cache_dir", "memory", "fp8", "device_memory",
        "lora_student", "quiet",
    )  # fmt: skip
    if student is None:
        _fail(
            "diagnose needs a --student: it picks the student's number of base steps (e.g. --base shapes --student dmd)"
        )
    if max_k is not None:
        student_spec = get_spec(student)
        student_steps = len(student_spec.timesteps or ()) or student_spec.num_inference_steps
        if not 1 <= max_k <= student_steps:
            _fail(f"--max-k must be between 1 and the student's {student_steps} steps, got {max_k}")
    if n_boot < 0:
        _fail(f"--n-boot must be 0 or more, got {n_boot}")
    pair, regimes, prompt_list, seeds, _, loaded = _prepare(
        base, student, ["base", "distilled", "hybrid"], prompt, prompts, n, seed, out, 1, base_guidance,
        BaseSchedule.student, 1, None, steps, guidance, None, height, width, embedder, measures=True,
        **{key: options[key] for key in load_options},
    )  # fmt: skip
    result = run_diagnosis(
        pair,
        prompt_list,
        seeds,
        out,
        max_k=max_k,
        embedder=loaded,
        base=regimes[0],
        base_guidance=base_guidance,
        boundaries=boundaries,
        n_boot=n_boot,
        n_perm=n_boot,
        batch_size=batch_size,
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        progress=not quiet,
        parameters={"n": n, "seed": seed, "n_boot": n_boot},
    )

    _print_diagnosis(result)
    typer.echo(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'}, {out / 'run.json'} and {result.report}")


def _print_diagnosis(result: Any) -> None:
    """diagnose's table (k, diversity, difference from the base, cost), the references, the recommendation and
    the call."""

    def ci(low: float, high: float, signed: bool = False) -> str:
        mark = "+" if signed else ""
        return f"[{low:{mark}.3f}, {high:{mark}.3f}]"

    typer.echo(
        f"{'hybrid':<10} {'diversity [95% CI]':<24} {'hybrid − base [95% CI]':<30} {'NFE':>4}  reaches base?"
    )
    for c in result.choices:
        name = f"k={c.k}" if c.boundary is None else f"base>{c.boundary}"
        typer.echo(
            f"{name:<10} {c.value:.3f} {ci(c.ci_low, c.ci_high):<18} {c.diff:+.3f} "
            f"{ci(c.diff_low, c.diff_high, True):<23} {c.evaluations:>4}  {'yes' if c.reaches_base else 'no'}"
        )
    for name, ref in (("base", result.base), ("distilled", result.student)):
        typer.echo(
            f"{name:<10} {ref['value']:.3f} {ci(ref['ci_low'], ref['ci_high']):<18} {'':<30} {ref['evaluations']:>4}"
        )
    typer.echo(f"recommendation: {result.recommendation}")
    for api, call in result.calls.items():
        typer.echo(f"{api}: {call}")


def ranking_lines(table: list[dict]) -> list[str]:
    """The ranked table as text: rank, method, diversity gain over the student, quality change, NFE, s/image; and
    a last line when no method is more diverse than the student beyond its interval."""
    from conceptspace.ranking import NO_CLEAR_WINNER, no_clear_winner

    def cell(value: dict | None, signed: bool = False) -> str:
        if value is None:
            return "—"
        mark = "+" if signed else ""
        return f"{value['value']:{mark}.3f} [{value['ci_low']:{mark}.3f}, {value['ci_high']:{mark}.3f}]"

    lines = [
        f"{'rank':<5} {'method':<24} {'diversity − distilled':<26} {'quality − distilled':<26} {'NFE':>4} "
        f"{'s/image':>8}  Pareto"
    ]
    for entry in table:
        seconds = entry["seconds_per_image"]
        lines.append(
            f"{entry['rank'] or 'ref.'!s:<5} {entry['method']:<24} {cell(entry['diversity_vs_student'], True):<26} "
            f"{cell(entry['quality_vs_student'], True):<26} {entry['evaluations'] or 0:>4.0f} "
            f"{'—' if seconds is None else format(seconds['value'], '.4f'):>8}  {'yes' if entry['pareto'] else ''}"
        )
    if no_clear_winner(table):
        lines.append(NO_CLEAR_WINNER)
    return lines


def _quiet_import_chatter() -> None:
    """Import-time notes of optional packages that say nothing about the user's run stay out of the output (and of
    the one-line error contract): torchao's deprecation warnings and diffusers' note about torchao's moved tensor
    classes, printed whenever diffusers imports an installed torchao; and diffusers' warning about an empty list of
    float32 modules."""
    import logging

    for name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # diffusers warns on every network.to(dtype) about modules to keep in float32, even when the list is empty
    logging.getLogger("diffusers.models.modeling_utils").addFilter(
        lambda record: "kept in float32: []" not in record.getMessage()
    )


def _user_errors() -> tuple[type[BaseException], ...]:
    """:data:`USER_ERRORS`, and an embedder's missing optional package once the embedders are loaded (only their
    code raises it, and importing them for an except clause would slow every command down)."""
    embeddings = sys.modules.get("conceptspace.embeddings.base")
    return USER_ERRORS + ((embeddings.MissingDependencyError,) if embeddings is not None else ())


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    _quiet_import_chatter()
    try:
        app()
    except _user_errors() as error:
        if os.environ.get("CONCEPTSPACE_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
