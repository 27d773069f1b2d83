"""SliderSpace on a model pair: discover a concept's directions of variation, train a slider for each, and measure
which directions each sampling regime activates (``conceptspace sliderspace discover | train | activation``).

One folder holds a whole study:

* :func:`discover` samples ``n`` images of one prompt (default: the student, as the reference code does), embeds
  them, fits a :class:`~conceptspace.sliderspace.SliderSpace` and writes ``sliderspace.safetensors``,
  ``samples.safetensors`` (final latents, embeddings, seeds), some of the images, ``metrics.json`` (the
  explained-variance curve; on the testbed, how each direction correlates with the probe's factors), ``run.json``
  and ``report.html``.
* :func:`train_direction_sliders` trains one rank-1 LoRA per direction (cross-attention to_k/to_v) so that the
  change it causes in the embedding of x̂0 points along the direction (loss −cos(Δφ, v_k)), at the sampler's own
  timesteps, from the stored latents re-noised to one of them; writes ``sliders/direction_KK.safetensors`` (our
  LoRA format: ``conceptspace transfer`` takes them), strips along each direction on the base and the student,
  and the effect of each slider on both models measured along its direction, with CIs.
* :func:`measure_activation` samples each regime on fresh paired seeds and measures the variance along every
  direction, its share of the base's and a paired test (``activation/``).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from conceptspace import schedules
from conceptspace.chunked import finish_pass, sample_and_embed
from conceptspace.embeddings import resolve_embedder
from conceptspace.ground_truth import GroundTruth, ground_truth_for
from conceptspace.io import (
    atomic_write,
    ensure_writable_dir,
    environment_versions,
    write_image,
    write_json,
)
from conceptspace.lora import apply_lora, read_lora, write_lora
from conceptspace.models import ModelPair, ModelSpec, load_pair
from conceptspace.results import metric_row, read_metrics, write_metrics
from conceptspace.sampling import (
    Base,
    Conditioning,
    Denoiser,
    Distilled,
    Regime,
    check_prompt,
    encode_text,
    make_denoiser,
    regime_from_name,
    sample,
    schedule_of,
    seeds_from,
)
from conceptspace.sliders import TrainableLoRA, target_modules
from conceptspace.sliderspace import SliderSpace

__all__ = ["discover", "load_study", "measure_activation", "train_direction_sliders"]

SPACE_FILE = "sliderspace.safetensors"
SAMPLES_FILE = "samples.safetensors"
SLIDER_DIR = "sliders"
ACTIVATION_DIR = "activation"
ACTIVATION_SEED = 1_000_000  # activation samples start here: never the seeds the space was fitted on
# ---------------------------------------------------------------------------------------------------- discover


def discover(
    pair: ModelPair | tuple[str, str],
    prompt: str,
    out_dir: str | os.PathLike,
    *,
    n: int = 1000,
    n_directions: int = 16,
    regime: Regime | str = "distilled",
    embedder: Any = None,
    seed: int = 0,
    batch_size: int = 16,
    keep_images: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SliderSpace:
    """Sample ``n`` images of ``prompt`` in ``regime``, embed them and fit ``n_directions`` directions; write the
    study folder (see the module docstring) and return the fitted space.

    ``pair``: a loaded pair or ``(base, student)`` registry names. ``regime``: ``"distilled"`` (default, as the
    reference code samples the student) or ``"base"``, or any regime. ``embedder``: a spec or a loaded embedder
    (default: the base's registry embedder). Seeds are ``seed … seed + n − 1``.

    Example:
        >>> space = discover(("shapes", "dmd"), "a shape", "runs/space", n=1000, n_directions=8)  # doctest: +SKIP
    """
    check_prompt(prompt)  # "" samples unconditionally, whitespace alone is refused
    if n_directions < 1:
        raise ValueError(f"n_directions must be at least 1, got {n_directions}")
    if n <= n_directions:
        raise ValueError(
            f"n = {n} samples cannot give {n_directions} directions: sample more than the directions"
        )
    out = ensure_writable_dir(out_dir)
    pair = load_pair(*pair, device=device) if isinstance(pair, tuple) else pair
    regime = regime_from_name(regime) if isinstance(regime, str) else regime
    embedder = resolve_embedder(embedder, pair, device=device, progress=False)
    started = time.perf_counter()
    seeds = seeds_from(seed, n)
    truth = ground_truth_for(pair.base.family)  # in a known world (the testbed): the probe reads every image
    made = sample_and_embed(
        pair, prompt, regime, seeds, embedder, out, batch_size=batch_size, keep_images=keep_images,
        progress=progress, desc=f"discover [{regime.name}]",
        read=_probe_reader(truth, pair) if truth is not None else None,
    )  # fmt: skip
    latents, embeddings = made.latents, made.embeddings
    space = SliderSpace(n_directions=n_directions).fit(embeddings)

    from safetensors.torch import save_file

    samples = {
        "latents": latents.contiguous(),
        "embeddings": torch.from_numpy(embeddings).float().contiguous(),
        "seeds": torch.tensor(seeds, dtype=torch.int64),
    }
    atomic_write(out / SAMPLES_FILE, lambda tmp: save_file(samples, str(tmp)))
    space.save(out / SPACE_FILE)

    extra = {
        "model": pair.spec("student" if _uses_student(regime) else "base").name,
        "embedder": embedder.name,
    }
    rows = space.explained_variance_rows(prompt, regime=regime.name, **extra)
    if truth is not None:
        rows += _probe_correlation_rows(
            truth, space, embeddings, made.readings, prompt=prompt, regime=regime.name
        )
    write_metrics(out, rows)
    run = {
        "command": "sliderspace discover",
        "base": asdict(pair.base),
        "student": asdict(pair.student) if pair.student else None,
        "prompts": [prompt],
        "seeds": seeds,
        "parameters": {
            "prompt": prompt,
            "n": n,
            "n_directions": n_directions,
            "regime": regime.describe(),
            "embedder": embedder.name,
            "seed": seed,
            "batch_size": batch_size,
        },
        "explained_variance_ratio": space.explained_variance_ratio_.tolist(),
        "versions": environment_versions(),
        "regimes": {regime.name: {"images": made.images, "schedule": None}},
        "wall_time": {"total": time.perf_counter() - started},
    }
    write_json(out / "run.json", run)
    finish_pass(out)
    from conceptspace.report import build_report

    build_report(out, title=f"SliderSpace of {prompt!r}")
    return space


def _uses_student(regime: Regime) -> bool:
    return not isinstance(regime, Base)


def _probe_reader(truth: GroundTruth, pair: ModelPair) -> Callable[[list[Any]], dict[str, np.ndarray]]:
    """The probe's reading of a chunk of images."""
    probe = truth.load_probe(device=pair.device)

    def read(images: list[Any]) -> dict[str, np.ndarray]:
        return probe.predict(np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]))

    return read


def _probe_correlation_rows(
    truth: GroundTruth,
    space: SliderSpace,
    embeddings: np.ndarray,
    reads: list[dict[str, np.ndarray]],
    *,
    prompt: str,
    regime: str,
) -> list[dict[str, Any]]:
    """In a known world: Pearson correlation of each direction's coordinate with each probe factor (on the testbed
    size, x, y, and one indicator per level of shape, colour and background), with a Fisher-z 95% interval."""
    factors = {
        name: np.concatenate([r[name] for r in reads]) for name in truth.continuous + truth.categorical
    }
    columns = {name: factors[name].astype(float) for name in truth.continuous}
    for name in truth.categorical:  # one indicator per level
        for index, level in enumerate(truth.levels[name]):
            columns[f"{name}={level}"] = (factors[name] == index).astype(float)
    coordinates = space.transform(embeddings)
    n = len(coordinates)
    rows = []
    for k in range(coordinates.shape[1]):
        for factor, values in columns.items():
            r = _pearson(coordinates[:, k], values)
            half = 1.96 / math.sqrt(n - 3) if n > 3 else math.nan
            low, high = (math.tanh(math.atanh(np.clip(r, -0.999999, 0.999999)) + d) for d in (-half, half))
            rows.append(
                metric_row(prompt, regime, f"probe_correlation_dir_{k}", r, low, high, n, direction=k,
                           factor=factor, ci_method="Fisher z", embedder=truth.name)
            )  # fmt: skip
    return rows


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


# --------------------------------------------------------------------------------------------------- the study


def load_study(run_dir: str | os.PathLike) -> tuple[SliderSpace, dict[str, Any]]:
    """The fitted space and run.json of a folder :func:`discover` wrote (a clear error if it is not one)."""
    run_dir = Path(run_dir)
    space_file, run_file = run_dir / SPACE_FILE, run_dir / "run.json"
    if not space_file.is_file() or not run_file.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a SliderSpace folder (no {SPACE_FILE} or run.json): run `conceptspace sliderspace "
            "discover --out DIR` first"
        )
    return SliderSpace.load(space_file), json.loads(run_file.read_text(encoding="utf-8"))


def _study_pair(run: dict[str, Any], pair: ModelPair | None, device: Any) -> ModelPair:
    if pair is not None:
        return pair
    student = run["student"]["name"] if run.get("student") else None
    return load_pair(run["base"]["name"], student, device=device)


def _regime_of(run: dict[str, Any]) -> Regime:
    described = dict(run["parameters"]["regime"])
    name = described.pop("regime")
    described.pop("name", None)
    return regime_from_name(name, **{k: tuple(v) if isinstance(v, list) else v for k, v in described.items()})


def _read_samples(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / SAMPLES_FILE))


# ------------------------------------------------------------------------------------------------------ train


def train_direction_sliders(
    run_dir: str | os.PathLike,
    *,
    pair: ModelPair | None = None,
    directions: Sequence[int] | None = None,
    model: str = "base",
    steps: int = 300,
    lr: float = 1e-2,
    rank: int = 1,
    layers: str = "cross-attention-kv",
    batch_size: int = 4,
    seed: int = 0,
    scales: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    measure_seeds: int = 16,
    embedder: Any = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[Path]:
    """Train one slider per direction of the study in ``run_dir`` on ``model`` (``"base"`` or ``"student"``),
    write them to ``run_dir/sliders/``, then show and measure them on both models; return the slider files.

    The loss is −cos(φ(x̂0 with the slider) − φ(x̂0 without), v_k), where φ is the study's embedder (run
    differentiably through the VAE decoder), x̂0 the model's own prediction at a random one of its sampler's
    timesteps from a stored latent re-noised to it. After training, per direction: a strip
    ``sliders/direction_KK.png`` (rows: base, student; columns: ``scales``) and, over ``measure_seeds`` seeds,
    ``direction_effect`` rows (the mean change of the coordinate along v_k from scale 0 to each scale, per model)
    and ``direction_transfer_ratio`` rows (student / base), appended to ``run_dir/metrics.json``.
    """
    run_dir = Path(run_dir)
    space, run = load_study(run_dir)
    directions = _checked_slider_arguments(space, model, directions, steps, batch_size, rank, scales)
    pair = _study_pair(run, pair, device)
    if model == "student" and pair.student is None:
        raise ValueError("the study has no student to train on; use model='base'")
    embedder = resolve_embedder(
        embedder or run["parameters"]["embedder"], pair, device=device, progress=False
    )
    prompt = run["parameters"]["prompt"]
    training = _training_setup(pair, run, run_dir, model, prompt)

    slider_dir = run_dir / SLIDER_DIR
    written = [
        _train_direction(
            pair,
            space,
            k,
            training,
            embedder,
            prompt,
            slider_dir,
            steps=steps,
            lr=lr,
            rank=rank,
            layers=layers,
            batch_size=batch_size,
            seed=seed + k,
            progress=progress,
        )
        for k in tqdm(directions, desc="direction sliders", disable=not progress, leave=False)
    ]
    rows = _measure_sliders(
        pair, space, written, directions, prompt, embedder, scales=scales,
        seeds=seeds_from(ACTIVATION_SEED, measure_seeds), out=slider_dir, progress=progress,
    )  # fmt: skip
    _replace_slider_rows(run_dir, directions, rows)
    run["sliders"] = {
        "files": sorted(
            {*run.get("sliders", {}).get("files", []), *(str(p.relative_to(run_dir)) for p in written)}
        ),
        "trained_on": training.spec.name,
        "steps": steps,
        "lr": lr,
        "rank": rank,
        "layers": layers,
        "timesteps": training.timesteps,
        "scales": list(scales),
        "measure_seeds": measure_seeds,
    }
    run["figures"] = _slider_figures(run, run_dir, directions, training.spec.name, scales)
    write_json(run_dir / "run.json", run)
    from conceptspace.report import build_report

    build_report(run_dir, title=f"SliderSpace of {prompt!r}")
    return written


def _checked_slider_arguments(
    space: SliderSpace,
    model: str,
    directions: Sequence[int] | None,
    steps: int,
    batch_size: int,
    rank: int,
    scales: Sequence[float],
) -> list[int]:
    """The directions to train (default: all), every argument checked before anything loads."""
    if model not in ("base", "student"):
        raise ValueError(f"model must be 'base' or 'student', got {model!r}")
    directions = list(range(space.n_directions)) if directions is None else [int(k) for k in directions]
    for k in directions:
        if not 0 <= k < space.n_directions:
            raise ValueError(
                f"direction {k} does not exist: the study has directions 0-{space.n_directions - 1}"
            )
    if steps < 1 or batch_size < 1 or rank < 1:
        raise ValueError("steps, batch_size and rank must be at least 1")
    if 0.0 not in [float(s) for s in scales]:
        raise ValueError(f"scales {list(scales)} must include 0, the reference the effect is measured from")
    return directions


@dataclass(frozen=True)
class _Training:
    """What every direction's slider trains from: the model's spec and denoiser, the prompt's conditioning, the
    study's stored latents and the sampler's timesteps, with a scheduler to re-noise to them."""

    spec: ModelSpec
    denoiser: Denoiser
    cond: Conditioning
    latents: torch.Tensor
    timesteps: list[int]
    scheduler: Any


def _training_setup(
    pair: ModelPair, run: dict[str, Any], run_dir: Path, model: str, prompt: str
) -> _Training:
    """The training inputs shared by every direction, for ``model`` (``"base"`` or ``"student"``)."""
    latents = _read_samples(run_dir)["latents"]
    role = "base" if model == "base" else "student"
    spec = pair.spec(role)
    denoiser = make_denoiser(pair, "base" if model == "base" else "distilled", spec.guidance_scale)
    timesteps = [step.timestep for step in schedule_of(_regime_of(run), pair, pair.device)]
    size = latents.shape[-1] * pair.pipeline.vae_scale_factor
    with torch.no_grad():
        cond = encode_text(pair, prompt, negative_prompt=None, cfg=denoiser.uses_cfg, height=size, width=size)
    return _Training(spec, denoiser, cond, latents, timesteps, pair.make_scheduler(role))


def _train_direction(
    pair: ModelPair,
    space: SliderSpace,
    k: int,
    training: _Training,
    embedder: Any,
    prompt: str,
    slider_dir: Path,
    *,
    steps: int,
    lr: float,
    rank: int,
    layers: str,
    batch_size: int,
    seed: int,
    progress: bool,
) -> Path:
    """Train direction ``k``'s slider and write it, with what it was trained on and its losses in its metadata,
    to ``slider_dir/direction_KK.safetensors``."""
    direction = torch.from_numpy(space.components_[k]).float().to(pair.device)
    lora, losses = _train_one(
        pair, training.denoiser.network, training.denoiser, training.cond, training.latents, training.timesteps,
        training.scheduler, direction, embedder, steps=steps, lr=lr, rank=rank, layers=layers,
        batch_size=batch_size, seed=seed, name=str(k), progress=progress,
    )  # fmt: skip
    metadata = {
        "kind": "sliderspace",
        "direction": k,
        "explained_variance_ratio": float(space.explained_variance_ratio_[k]),
        "prompt": prompt,
        "base_model": pair.base.name,
        "trained_on": training.spec.name,
        "embedder": embedder.name,
        "steps": steps,
        "initial_loss": float(np.mean(losses[:10])),
        "final_loss": float(np.mean(losses[-10:])),
    }
    lora.metadata = metadata
    return write_lora(lora, slider_dir / f"direction_{k:02d}.safetensors", metadata=metadata)


def _replace_slider_rows(run_dir: Path, directions: Sequence[int], rows: list[dict[str, Any]]) -> None:
    """Write the sliders' rows to the study's metrics, in place of earlier ones for the same directions."""
    # a later call for other directions keeps the earlier ones' measurements (and strips)
    retrained = set(directions)
    kept = [
        r
        for r in read_metrics(run_dir)
        if not (str(r["metric"]).startswith("direction_") and r.get("direction") in retrained)
    ]
    write_metrics(run_dir, kept + rows)


def _slider_figures(
    run: dict[str, Any], run_dir: Path, directions: Sequence[int], trained_on: str, scales: Sequence[float]
) -> list[dict[str, Any]]:
    """run.json's figures: the earlier ones for other directions, then a strip per trained direction."""
    retrained = set(directions)
    earlier = [f for f in run.get("figures") or [] if f.get("direction") not in retrained]
    return earlier + [
        {
            "direction": k,
            "path": str((run_dir / SLIDER_DIR / f"direction_{k:02d}.png").relative_to(run_dir)),
            "heading": f"Slider for direction {k}",
            "caption": f"The slider trained on {trained_on} for direction {k}, at scales "
            f"{', '.join(f'{s:g}' for s in scales)} (columns) on the base and the student (rows), one seed.",
        }
        for k in directions
    ]


def _train_one(
    pair: ModelPair,
    unet: Any,
    denoiser: Denoiser,
    cond: Conditioning,
    latents: torch.Tensor,
    timesteps: Sequence[int],
    scheduler: Any,
    direction: torch.Tensor,
    embedder: Any,
    *,
    steps: int,
    lr: float,
    rank: int,
    layers: str,
    batch_size: int,
    seed: int,
    name: str,
    progress: bool,
) -> tuple[Any, list[float]]:
    """One rank-``rank`` LoRA trained so the embedding change it causes in x̂0 points along ``direction``."""
    import torch.nn.functional as F

    generator = torch.Generator("cpu").manual_seed(seed)
    picker = random.Random(seed)
    flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(False)
    vae = pair.pipeline.vae
    slider = TrainableLoRA(unet, target_modules(unet, layers), rank, 1.0, generator)
    # both factors random: with one factor zero, as for text sliders, −cos has no gradient at the start
    with torch.no_grad():
        for weights in slider.lora.modules.values():
            weights.up.copy_(torch.randn(weights.up.shape, generator=generator) * 1e-3)
    optimiser = torch.optim.AdamW(slider.parameters(), lr=lr)
    batch_cond = cond.repeat(batch_size)
    losses: list[float] = []

    def embedded_x0(model_input: torch.Tensor, t: torch.Tensor, level: schedules.NoiseLevel) -> torch.Tensor:
        output = denoiser(model_input, t, batch_cond)
        x0, _ = schedules.split(output.float(), denoiser.prediction_type, model_input.float(), level)
        pixels = pair.family.decode(vae, x0.to(vae.dtype))
        return embedder.embed_pixels(((pixels.float() + 1) / 2).clamp(0, 1))

    try:
        bar = tqdm(range(steps), desc=f"slider for direction {name}", disable=not progress, leave=False)
        for _ in bar:
            index = torch.tensor([picker.randrange(len(latents)) for _ in range(batch_size)])
            x0 = latents[index].to(pair.device, torch.float32)
            t = int(picker.choice(list(timesteps)))
            level = schedules.noise_level_at(scheduler, t).to(x0)
            noise = torch.randn(x0.shape, generator=generator).to(pair.device)
            # the network's input at t: the variance-preserving sample (VP), (1 − σ)·x0 + σ·ε (flow matching)
            model_input = (level.alpha * x0 + level.sigma * noise).to(pair.dtype)
            timestep = torch.tensor(
                t, device=pair.device, dtype=torch.float32 if schedules.is_flow(scheduler) else None
            )
            with torch.no_grad(), slider.at(0.0):
                reference = embedded_x0(model_input, timestep, level)
            with slider.at(1.0):
                moved = embedded_x0(model_input, timestep, level)
            loss = -F.cosine_similarity(moved - reference, direction.expand_as(moved), dim=-1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(cos=f"{-losses[-1]:.3f}")
    finally:
        slider.remove()
        for param, flag in zip(unet.parameters(), flags, strict=True):
            param.requires_grad_(flag)
    return slider.export({}), losses


def _measure_sliders(
    pair: ModelPair,
    space: SliderSpace,
    files: Sequence[Path],
    directions: Sequence[int],
    prompt: str,
    embedder: Any,
    *,
    scales: Sequence[float],
    seeds: Sequence[int],
    out: Path,
    progress: bool,
) -> list[dict[str, Any]]:
    """Per direction: strips on both models and the change along v_k per model and scale, with CIs."""
    from conceptspace.transfer import (
        mean_row,
        per_seed_slope,
        ratio_row,
        ratio_rows_per_scale,
        scale_grid,
        scale_label,
    )

    models = [("base", Base(), pair.base.name)]
    if pair.student is not None:
        models.append(("student", Distilled(), pair.student.name))
    rows: list[dict[str, Any]] = []
    moved_scales = [s for s in scales if s != 0]
    bar = tqdm(
        total=len(models) * (1 + len(files) * len(moved_scales)),
        desc="measuring sliders",
        disable=not progress,
        leave=False,
    )

    def coordinates_of(regime: Regime) -> tuple[np.ndarray, Any]:
        """Every direction's coordinate for each seed, and the first seed's image."""
        result = sample(pair, prompt, regime, seeds, progress=False)
        bar.update(1)
        return space.transform(embedder.embed_images(result.images).double().numpy()), result.images[0]

    # scale 0 is the model without a slider: sampled once per model, shared by every direction
    unmoved = {name: coordinates_of(regime) for _, regime, name in models}
    for k, file in zip(directions, files, strict=True):
        lora = read_lora(file)
        change: dict[str, dict[float, np.ndarray]] = {}
        strip: dict[str, list[Any]] = {}
        for role, regime, name in models:
            handle = apply_lora(pair.network(role), lora, scale=0.0)
            by_scale = {0.0: unmoved[name]}
            try:
                for s in moved_scales:
                    handle.scale = float(s)
                    by_scale[s] = coordinates_of(regime)
            finally:
                handle.remove()
            coordinates = {s: by_scale[s][0][:, k] for s in scales}
            strip[name] = [by_scale[s][1] for s in scales]
            change[name] = {s: coordinates[s] - coordinates[0.0] for s in scales}
            for s in scales:
                if s != 0:
                    rows.append(mean_row(change[name][s], prompt, f"{name}@{scale_label(s)}", "direction_effect",
                                          seed=k, model=name, scale=s, direction=k, embedder=embedder.name))  # fmt: skip
        write_image(out / f"direction_{k:02d}.png", scale_grid(strip, list(scales), f"dir {k}"))
        slopes = {}
        for _, _, name in models:
            slopes[name] = per_seed_slope(np.stack([change[name][s] for s in scales], axis=1), scales)
            rows.append(
                mean_row(slopes[name], prompt, name, "direction_effect_slope", seed=k, model=name, direction=k,
                         embedder=embedder.name)
            )  # fmt: skip
        if len(models) == 2:
            base_name, student_name = models[0][2], models[1][2]
            ratio = f"{student_name} / {base_name}"
            rows.append(
                ratio_row(slopes[student_name], slopes[base_name], prompt, ratio, "direction_transfer_ratio_slope",
                          model=student_name, direction=k, embedder=embedder.name)
            )  # fmt: skip
            rows += ratio_rows_per_scale(change[student_name], change[base_name], prompt, ratio,
                                         "direction_transfer_ratio", model=student_name, direction=k,
                                         embedder=embedder.name)  # fmt: skip
    bar.close()
    return rows


# -------------------------------------------------------------------------------------------------- activation


def measure_activation(
    run_dir: str | os.PathLike,
    *,
    pair: ModelPair | None = None,
    regimes: Sequence[Regime | str] = ("base", "distilled", "hybrid"),
    n: int = 256,
    seed: int = ACTIVATION_SEED,
    batch_size: int = 16,
    keep_images: int = 16,
    n_boot: int = 1000,
    embedder: Any = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample ``n`` images per regime on the same seeds (paired), embed them with the study's embedder and measure
    the variance along every direction of the study in ``run_dir``: per regime, its share of the base's, and a
    paired test. Writes ``run_dir/activation/`` (images, metrics.json/csv, run.json, report.html); returns the rows.
    """
    run_dir = Path(run_dir)
    space, run = load_study(run_dir)
    regimes = [regime_from_name(r) if isinstance(r, str) else r for r in regimes]
    names = [r.name for r in regimes]
    if len(set(names)) != len(names):
        raise ValueError(f"regimes repeat: {', '.join(names)}")
    if "base" not in names:
        raise ValueError("activation is measured against the base: include the base regime")
    if n < 3:
        raise ValueError(f"n must be at least 3 to measure a variance with a CI, got {n}")
    out = ensure_writable_dir(run_dir / ACTIVATION_DIR)
    pair = _study_pair(run, pair, device)
    embedder = resolve_embedder(
        embedder or run["parameters"]["embedder"], pair, device=device, progress=False
    )
    prompt = run["parameters"]["prompt"]
    seeds = seeds_from(seed, n)
    started = time.perf_counter()
    embeddings, records = {}, {}
    for regime in regimes:
        made = sample_and_embed(
            pair, prompt, regime, seeds, embedder, out, batch_size=batch_size, keep_images=keep_images,
            progress=progress, desc=f"activation [{regime.name}]",
        )  # fmt: skip
        embeddings[regime.name] = made.embeddings
        records[regime.name] = {
            "images": made.images,
            "schedule": [asdict(step) for step in schedule_of(regime, pair, pair.device)],
            "settings": regime.describe(),
        }  # fmt: skip
    result = space.activation(embeddings, reference="base", n_boot=n_boot, seed=seed, paired=True)
    rows = result.rows(prompt, embedder=embedder.name)
    write_metrics(out, rows)
    write_json(
        out / "run.json",
        {
            "command": "sliderspace activation",
            "study": str(run_dir),
            "base": run["base"],
            "student": run.get("student"),
            "prompts": [prompt],
            "seeds": seeds,
            "parameters": {"n": n, "seed": seed, "n_boot": n_boot, "embedder": embedder.name,
                           "n_directions": space.n_directions},
            "versions": environment_versions(),
            "regimes": records,
            "wall_time": {"total": time.perf_counter() - started},
        },
    )  # fmt: skip
    finish_pass(out)
    from conceptspace.report import build_report

    build_report(out, title=f"Directions activated per regime: {prompt!r}")
    return rows
