"""How many base steps does the hybrid need? A diagnostic for one pair and prompt set.

>>> from conceptspace import load_pair                                    # doctest: +SKIP
>>> from conceptspace.diagnose import diagnose                            # doctest: +SKIP
>>> result = diagnose(load_pair("shapes", "dmd"), ["a shape"], range(32), "out/diagnose")  # doctest: +SKIP
>>> result.k, result.call                                                 # doctest: +SKIP

For the prompts and seeds given, it measures (every number with a 95% interval over seeds):

1. the diversity of x̂0 at each of the student's steps, of the base's x̂0 on the same timesteps (the base alone
   on the student's schedule, ``base-at-student-steps``: what the hybrid's base steps are), and of the base's x̂0
   at the steps of its own schedule nearest them (``x0_pairwise_distance`` rows with a ``step``: the report
   draws them as curves);
2. the commitment curve: how similar each step's x̂0 already is to the final image (``commitment`` rows);
3. for k = 1…K, the hybrid's final-image diversity and its cost in network evaluations per image (a CFG step
   counts two), next to the base's and the student's, and each hybrid's paired difference from the base on the
   same seeds (``diff_pairwise_distance``, ``regime="hybrid-k<k> - base"``); and the same for the σ boundaries
   between the student's steps: the base on its own, finer schedule down to the student's k-th timestep t, the
   student after (``boundary-t<t>``, ``Hybrid(k, base_schedule="own")``);
4. a recommendation: the cheapest (then smallest) k or boundary whose difference from the base has an interval
   that reaches 0 (the base's diversity within its CI); when none does, the most diverse, said so — with the
   calls that use it: conceptspace's ``sample``, ``DiversityPipeline``, and for a k on a family with a diffusers
   modular pipeline, :func:`conceptspace.modular.hybrid`.

It writes ``metrics.json``/``.csv``, ``run.json`` (command ``"diagnose"``, with the recommendation), a few images
per regime and ``report.html``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptspace.embeddings import Embedder, resolve_embedder
from conceptspace.io import ensure_writable_dir, environment_versions, image_name, write_image, write_json
from conceptspace.metrics import diversity_over_prompts, diversity_rows, paired_over_prompts, paired_rows
from conceptspace.models import ModelPair
from conceptspace.remedies import evaluations
from conceptspace.report import build_report
from conceptspace.results import ALL_PROMPTS, metric_row, write_metrics
from conceptspace.sampling import (
    Base,
    Distilled,
    Hybrid,
    Regime,
    SampleResult,
    check_prompt,
    check_seed,
    sample,
)
from conceptspace.stats import check_settings, mean_estimate
from conceptspace.trajectories import decode_trajectory

__all__ = ["Diagnosis", "KChoice", "boundary_name", "diagnose", "hybrid_name"]

BASE, STUDENT = "base", "distilled"
BASE_AT_STUDENT = "base-at-student-steps"
METRIC = "pairwise_distance"
X0_METRIC = "x0_pairwise_distance"
DIFF_METRIC = "diff_pairwise_distance"


def hybrid_name(k: int) -> str:
    """The regime name of the hybrid with ``k`` base steps (as ``compare`` names ``hybrid:k=2``)."""
    return f"hybrid-k{k}"


def boundary_name(timestep: int) -> str:
    """The regime name of the hybrid whose base runs its own schedule down to the student's ``timestep``."""
    return f"boundary-t{timestep}"


@dataclass(frozen=True)
class _Switch:
    """One hybrid of the sweep: k base steps on the student's schedule, or (``boundary``) the base on its own
    schedule down to the student's k-th timestep."""

    name: str
    regime: Hybrid
    k: int
    boundary: int | None = None


@dataclass(frozen=True)
class KChoice:
    """One hybrid of the sweep: its final-image diversity, its paired difference from the base, and its cost."""

    k: int
    value: float
    ci_low: float
    ci_high: float
    diff: float
    diff_low: float
    diff_high: float
    evaluations: int  # network evaluations per image (a CFG step counts two)
    base_evaluations: int
    boundary: int | None = None
    """The hand-off timestep where the base ran its own schedule down to it; None: k steps on the student's."""

    @property
    def label(self) -> str:
        if self.boundary is None:
            return f"k={self.k}"
        return (
            f"boundary t={self.boundary} (the base's own schedule, then the student from its step {self.k})"
        )

    @property
    def reaches_base(self) -> bool:
        """Whether the base's diversity lies within reach: the difference's interval includes 0 or is above it."""
        upper = (
            self.diff if math.isnan(self.diff_high) else self.diff_high
        )  # no interval (n_boot=0): the value
        return upper >= 0


@dataclass
class Diagnosis:
    """What :func:`diagnose` found: the tidy ``rows``, the sweep per k, the recommended ``k`` and the call."""

    rows: list[dict[str, Any]]
    choices: list[KChoice]
    k: int
    reaches_base: bool
    recommendation: str  # one sentence
    call: str  # one line of Python that samples the recommended hybrid
    boundary: int | None = None
    """The recommended boundary's hand-off timestep, None when the recommendation is a k on the student's
    schedule."""
    regime: Hybrid | None = None
    """The recommended hybrid as the regime that was measured (what ``call`` samples)."""
    calls: dict[str, str] = field(default_factory=dict)
    """The recommended hybrid in each API: ``"sample"`` (= ``call``), ``"DiversityPipeline"`` and, where the family
    has a diffusers modular pipeline and the choice is a k, ``"modular"``."""
    base: dict[str, float] = field(default_factory=dict)  # value, ci_low, ci_high, evaluations
    student: dict[str, float] = field(default_factory=dict)
    out_dir: Path | None = None
    report: Path | None = None

    @property
    def choice(self) -> KChoice:
        """The recommended hybrid's entry of the sweep."""
        return next(c for c in self.choices if c.k == self.k and c.boundary == self.boundary)


def diagnose(
    pair: ModelPair,
    prompts: str | Sequence[str],
    seeds: Iterable[int],
    out_dir: str | os.PathLike,
    *,
    max_k: int | None = None,
    embedder: Embedder | str | None = None,
    base: Base | None = None,
    base_guidance: float = 0.0,
    boundaries: bool = True,
    n_boot: int = 1000,
    n_perm: int = 1000,
    images_kept: int = 8,
    batch_size: int = 4,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    report: bool = True,
    progress: bool = True,
    parameters: Mapping[str, Any] | None = None,
) -> Diagnosis:
    """Measure what the hybrid ``Hybrid(k)`` buys for k = 1…K on ``pair`` and recommend a k (see the module doc).

    Args:
        pair: a loaded pair with a student (:func:`conceptspace.load_pair`).
        prompts: one prompt or several; with several, the decision uses the mean over prompts (its interval
            resamples the images within each prompt).
        seeds: one image per seed and regime, the same seeds in every regime (the differences are paired); at
            least two.
        out_dir: where metrics, run.json, images and the report go.
        max_k: the largest k tried (default: the student's steps − 1, at least 1; at most the student's steps).
        embedder: an :class:`~conceptspace.embeddings.Embedder` or a spec (default: the pair's, as ``diversity``).
        base: the base reference regime (default ``Base()``: the registry's steps and CFG); e.g. ``Base(steps=12)``
            for a faster, coarser reference.
        base_guidance: the CFG scale of the hybrid's base steps (``Hybrid``'s; 0 = no CFG pass).
        boundaries: also sweep the σ boundaries (the base on its own schedule down to the student's k-th
            timestep); they cost one more sampling pass per k.
        n_boot / n_perm: bootstrap resamples for the 95% intervals, permutations for the paired p-values.
        images_kept: final images written per prompt and regime, for the report's grids.

    Returns:
        a :class:`Diagnosis`; its ``rows`` are also in ``out_dir/metrics.json``.
    """
    started = time.perf_counter()
    prompt_list, seed_list, base, ks = _checked_request(
        pair, prompts, seeds, base, max_k, images_kept, n_boot, n_perm
    )
    sweep = _sweep(pair, ks, base, base_guidance, boundaries)  # checks base_guidance before any work
    out = ensure_writable_dir(out_dir)
    model = _embedder(embedder, pair, progress)
    options = dict(
        negative_prompt=negative_prompt, height=height, width=width, batch_size=batch_size, progress=progress
    )
    at_student = Hybrid(k=_student_steps(pair), base_guidance=base_guidance)
    regimes = {BASE: base, STUDENT: Distilled(), BASE_AT_STUDENT: at_student}
    costs = {name: _cost(regime, pair) for name, regime in regimes.items()}
    costs.update({switch.name: _cost(switch.regime, pair) for switch in sweep})

    finals, per_step, commitment_rows, step_info, records = _measure(
        pair, prompt_list, seed_list, regimes, sweep, costs, model, out, options, images_kept, n_boot
    )
    stats = dict(n_boot=n_boot, embedder=model.name)
    rows = _step_rows(per_step, step_info, **stats) + commitment_rows
    rows += _final_rows(finals, costs, sweep, n_perm=n_perm, **stats)
    summary = ALL_PROMPTS if len(prompt_list) > 1 else prompt_list[0]
    result = _decided(pair, rows, summary, sweep, costs, out)
    write_metrics(out, rows)
    write_json(
        out / "run.json",
        _run_record(
            pair,
            prompt_list,
            seed_list,
            base,
            base_guidance,
            sweep,
            model,
            records,
            result,
            parameters,
            started,
        ),
    )
    if report:
        result.report = build_report(
            out, title=f"conceptspace diagnose: {pair.base.name} → {pair.student.name}"
        )
    return result


def _measure(
    pair: ModelPair,
    prompts: list[str],
    seeds: list[int],
    recorded: dict[str, Regime],
    sweep: list[_Switch],
    costs: dict[str, dict[str, int]],
    model: Embedder,
    out: Path,
    options: dict[str, Any],
    images_kept: int,
    n_boot: int,
) -> tuple[dict, dict, list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every prompt sampled in every regime and embedded: the final images' embeddings (prompt → regime), the x̂0
    embeddings at the student's steps (prompt → regime → (n, steps, d)), the commitment rows, the steps matched
    between the schedules, and each regime's record for run.json; a few images kept per regime."""
    finals: dict[str, dict[str, np.ndarray]] = {}
    per_step: dict[str, dict[str, np.ndarray]] = {}
    commitment_rows: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any]] = {}
    step_info: list[dict[str, Any]] = []
    for index, prompt in enumerate(prompts):
        runs, step_info = _sample_prompt(pair, prompt, seeds, recorded, sweep, options)
        student_steps = [s["step"] for s in step_info]
        finals[prompt] = {name: _embed(model, run.images) for name, run in runs.items()}
        per_step[prompt] = {
            STUDENT: _embed_steps(pair, model, runs[STUDENT].trajectory, student_steps),
            BASE_AT_STUDENT: _embed_steps(pair, model, runs[BASE_AT_STUDENT].trajectory, student_steps),
            BASE: _embed_steps(pair, model, runs[BASE].trajectory, [s["base_step"] for s in step_info]),
        }
        for name in (STUDENT, BASE_AT_STUDENT, BASE):
            commitment_rows += _commitment_rows(
                prompt, name, per_step[prompt][name], finals[prompt][name], step_info, model.name, n_boot
            )
        for name, run in runs.items():
            _keep_images(out / name, index, run, images_kept)
            _record(records, name, run, costs[name])
    return finals, per_step, commitment_rows, step_info, records


def _decided(
    pair: ModelPair,
    rows: list[dict[str, Any]],
    summary: str,
    sweep: list[_Switch],
    costs: dict[str, int],
    out: Path,
) -> Diagnosis:
    """The diagnosis the rows support: each k's and boundary's standing (on the ``summary`` prompt's rows), the
    recommended one and the calls that use it."""
    choices = _choices(rows, summary, sweep, costs)
    chosen, reaches, sentence = _recommend(choices)
    regime = next(sw.regime for sw in sweep if (sw.k, sw.boundary) == (chosen.k, chosen.boundary))
    calls = _calls(pair, chosen, regime)
    return Diagnosis(
        rows=rows,
        choices=choices,
        k=chosen.k,
        boundary=chosen.boundary,
        regime=regime,
        reaches_base=reaches,
        recommendation=sentence,
        call=calls["sample"],
        calls=calls,
        base=_reference(rows, summary, BASE, costs),
        student=_reference(rows, summary, STUDENT, costs),
        out_dir=out,
    )


def _sample_prompt(
    pair: ModelPair,
    prompt: str,
    seeds: list[int],
    recorded: dict[str, Regime],
    sweep: list[_Switch],
    options: dict[str, Any],
) -> tuple[dict[str, SampleResult], list[dict[str, Any]]]:
    """One prompt in every regime (the ``recorded`` ones — the student and the base, on its own schedule and on the
    student's — with their x̂0), and the base's own steps matched to the student's."""
    runs = {
        name: sample(pair, prompt, regime, seeds, output_type="pt", record_x0=True, **options)
        for name, regime in recorded.items()
    }
    for switch in sweep:
        runs[switch.name] = sample(pair, prompt, switch.regime, seeds, output_type="pt", **options)
    return runs, _matched_steps(runs[STUDENT], runs[BASE])


# ------------------------------------------------------------------------------------------------- checks
def _checked_request(
    pair: ModelPair,
    prompts: str | Sequence[str],
    seeds: Iterable[int],
    base: Base | None,
    max_k: int | None,
    images_kept: int,
    n_boot: int,
    n_perm: int,
) -> tuple[list[str], list[int], Base, list[int]]:
    """The prompts, seeds, base reference and ks of a diagnosis, once every argument is known to be usable."""
    prompt_list = _checked_prompts(prompts)
    seed_list = _checked_seeds(seeds)
    check_settings(0.95, n_boot, n_perm)
    if pair.student is None:
        raise ValueError("diagnose needs a pair with a student: load_pair(base, student)")
    if base is None:
        base = Base()
    elif not isinstance(base, Base):
        raise ValueError(f"base must be a Base regime (e.g. Base(steps=12)), got {base!r}")
    if images_kept < 0:
        raise ValueError(f"images_kept must be 0 or more, got {images_kept}")
    return prompt_list, seed_list, base, _ks(max_k, _student_steps(pair))


def _student_steps(pair: ModelPair) -> int:
    return len(Distilled().segments(pair, pair.device)[0].denoisers)


def _sweep(
    pair: ModelPair, ks: list[int], base: Base, base_guidance: float, boundaries: bool
) -> list[_Switch]:
    """The hybrids to measure: k = 1…K on the student's schedule, then (``boundaries``) the base on its own
    schedule down to the student's k-th timestep for each k that leaves the student a step and the base one of
    its own above the hand-off."""
    sweep = [_Switch(hybrid_name(k), Hybrid(k=k, base_guidance=base_guidance), k) for k in ks]
    if not boundaries:
        return sweep
    student = Distilled().segments(pair, pair.device)[0]
    for k in ks:
        if k >= len(student.denoisers):
            continue
        regime = Hybrid(k=k, base_guidance=base_guidance, base_schedule="own", base_steps=base.steps)
        try:
            regime.segments(pair, pair.device)
        except ValueError:  # the base's own schedule has no step above this hand-off
            continue
        timestep = student.timestep(k)
        sweep.append(_Switch(boundary_name(timestep), regime, k, boundary=timestep))
    return sweep


def _checked_prompts(prompts: str | Sequence[str]) -> list[str]:
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompt_list:
        raise ValueError("give at least one prompt")
    for prompt in prompt_list:
        check_prompt(prompt)
    return prompt_list


def _checked_seeds(seeds: Iterable[int]) -> list[int]:
    seed_list = list(seeds)
    for seed in seed_list:
        check_seed(seed)
    if len(seed_list) < 2:
        raise ValueError(f"diversity is measured between images: give at least 2 seeds, got {len(seed_list)}")
    if len(set(seed_list)) != len(seed_list):
        raise ValueError(
            "seeds repeat: each seed makes one image, and a repeated one adds a copy, not diversity"
        )
    return seed_list


def _ks(max_k: int | None, student_steps: int) -> list[int]:
    """k = 1…K: K defaults to the student's steps − 1 (the last step stays the student's), at least 1."""
    if max_k is None:
        return list(range(1, max(1, student_steps - 1) + 1))
    if isinstance(max_k, bool) or not isinstance(max_k, int) or not 1 <= max_k <= student_steps:
        raise ValueError(
            f"max_k must be a whole number between 1 and the student's {student_steps} steps, got {max_k!r}"
        )
    return list(range(1, max_k + 1))


def _embedder(embedder: Embedder | str | None, pair: ModelPair, progress: bool) -> Embedder:
    model = resolve_embedder(embedder, pair, device=pair.device, progress=progress)
    model.progress = False  # a bar per embedding call would drown the sampling bars
    return model


def _cost(regime: Any, pair: ModelPair) -> dict[str, int]:
    return evaluations(regime.segments(pair, pair.device))


# ----------------------------------------------------------------------------------------------- sampling
def _matched_steps(student: SampleResult, base: SampleResult) -> list[dict[str, Any]]:
    """Per student step, the base's step whose timestep is nearest (the base runs its own, longer schedule)."""
    base_timesteps = np.array([float(s.timestep) for s in base.schedule])
    matched = []
    for step in student.schedule:
        base_step = int(np.abs(base_timesteps - float(step.timestep)).argmin())
        matched.append(
            {
                "step": step.step,
                "timestep": step.timestep,
                "base_step": base_step,
                "base_timestep": base.schedule[base_step].timestep,
            }
        )
    return matched


def _embed(model: Embedder, images: torch.Tensor) -> np.ndarray:
    return model.embed_images(images).numpy()


def _embed_steps(pair: ModelPair, model: Embedder, trajectory: torch.Tensor, steps: list[int]) -> np.ndarray:
    """The chosen steps' x̂0, decoded and embedded: (n, len(steps), d)."""
    decoded = decode_trajectory(pair, trajectory[:, steps])
    n, count = decoded.shape[:2]
    return model.embed_images(decoded.flatten(0, 1)).view(n, count, -1).numpy()


def _keep_images(folder: Path, prompt_index: int, run: SampleResult, count: int) -> None:
    from PIL import Image

    for seed, image in zip(run.seeds[:count], run.images[:count], strict=False):
        pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        write_image(folder / image_name(prompt_index, seed), Image.fromarray(pixels))


def _record(records: dict[str, dict[str, Any]], name: str, run: SampleResult, cost: dict[str, int]) -> None:
    record = records.setdefault(name, {"schedule": run.schedule_dicts(), "evaluations": cost, "timings": {}})
    record["settings"] = {k: v for k, v in run.settings.items() if k != "guidance_used"}
    for phase, seconds in run.timings.items():
        record["timings"][phase] = record["timings"].get(phase, 0.0) + seconds


# ------------------------------------------------------------------------------------------------------- rows
def _over_prompts(
    by_prompt: Mapping[str, Mapping[str, np.ndarray]], n_boot: int, **extra: Any
) -> list[dict[str, Any]]:
    """Diversity rows per prompt, and their mean over prompts (images resampled within each) when several."""
    if len(by_prompt) == 1:
        prompt, by_regime = next(iter(by_prompt.items()))
        return diversity_rows(by_regime, prompt, metrics=(METRIC,), n_boot=n_boot, **extra)
    return diversity_over_prompts(by_prompt, metrics=(METRIC,), resample="images", n_boot=n_boot, **extra)


def _step_rows(
    per_step: Mapping[str, Mapping[str, np.ndarray]], steps: list[dict[str, Any]], n_boot: int, embedder: str
) -> list[dict[str, Any]]:
    rows = []
    for index, info in enumerate(steps):
        by_prompt = {p: {name: e[:, index] for name, e in regimes.items()} for p, regimes in per_step.items()}
        for row in _over_prompts(by_prompt, n_boot, embedder=embedder):
            row["metric"] = X0_METRIC
            row.update(info)
            if row["regime"] != BASE:  # the student's own timesteps
                row.pop("base_step"), row.pop("base_timestep")
            else:  # the base's own step nearest the student's timestep: say which
                row["timestep"] = info["base_timestep"]
            rows.append(row)
    return rows


def _commitment_rows(
    prompt: str,
    regime: str,
    steps: np.ndarray,
    final: np.ndarray,
    info: list[dict[str, Any]],
    embedder: str,
    n_boot: int,
) -> list[dict[str, Any]]:
    """Cosine similarity of each step's x̂0 to the final image in the embedder's space (what
    :func:`conceptspace.trajectories.embedding_commitment` measures, on embeddings already made), with a
    percentile-bootstrap interval over seeds."""
    curve = (steps * final[:, None]).sum(-1)  # unit embeddings: the dot product is the cosine
    rows = []
    for index, entry in enumerate(info):
        estimate = mean_estimate(curve[:, index], n_boot=n_boot)
        where = {"step": entry["step"], "timestep": entry["timestep"]}
        if regime == BASE:
            where.update(timestep=entry["base_timestep"], base_step=entry["base_step"])
        rows.append(
            metric_row(
                prompt, regime, "commitment", estimate.value, estimate.ci_low, estimate.ci_high, estimate.n,
                **where, similarity=embedder,
            )
        )  # fmt: skip
    return rows


def _final_rows(
    finals: Mapping[str, Mapping[str, np.ndarray]],
    costs: Mapping[str, dict[str, int]],
    sweep: list[_Switch],
    n_boot: int,
    n_perm: int,
    embedder: str,
) -> list[dict[str, Any]]:
    """Final-image diversity per regime (with its cost, k and boundary), and each hybrid's and the student's
    paired difference from the base."""
    rows = _over_prompts(finals, n_boot, embedder=embedder)
    pairs = [(switch.name, BASE) for switch in sweep] + [(STUDENT, BASE)]
    switches = {switch.name: switch for switch in sweep}
    settings = dict(metrics=(METRIC,), n_boot=n_boot, n_perm=n_perm, embedder=embedder)
    if len(finals) == 1:
        prompt, by_regime = next(iter(finals.items()))
        rows += paired_rows(by_regime, prompt, pairs, **settings)
    else:
        rows += paired_over_prompts(finals, pairs, resample="images", **settings)
    for row in rows:
        regime = row["regime"].split(" - ")[0]
        if regime in switches:
            row["k"] = switches[regime].k
            if switches[regime].boundary is not None:
                row["boundary"] = switches[regime].boundary
        row["evaluations"] = costs[regime]["total"]
        row["base_evaluations"] = costs[regime]["base"]
    return rows


def _summary_row(rows: list[dict[str, Any]], prompt: str, regime: str, metric: str) -> dict[str, Any]:
    return next(
        r
        for r in rows
        if r["prompt"] == prompt and r["regime"] == regime and r["metric"] == metric and "step" not in r
    )


def _choices(
    rows: list[dict[str, Any]], prompt: str, sweep: list[_Switch], costs: Mapping[str, dict[str, int]]
) -> list[KChoice]:
    choices = []
    for switch in sweep:
        name = switch.name
        own = _summary_row(rows, prompt, name, METRIC)
        diff = _summary_row(rows, prompt, f"{name} - {BASE}", DIFF_METRIC)
        choices.append(
            KChoice(
                switch.k, own["value"], own["ci_low"], own["ci_high"], diff["value"], diff["ci_low"],
                diff["ci_high"], costs[name]["total"], costs[name]["base"], boundary=switch.boundary,
            )
        )  # fmt: skip
    return choices


def _reference(
    rows: list[dict[str, Any]], prompt: str, regime: str, costs: Mapping[str, dict[str, int]]
) -> dict[str, float]:
    row = _summary_row(rows, prompt, regime, METRIC)
    return {
        "value": row["value"],
        "ci_low": row["ci_low"],
        "ci_high": row["ci_high"],
        "evaluations": costs[regime]["total"],
    }


def _recommend(choices: list[KChoice]) -> tuple[KChoice, bool, str]:
    """The cheapest, then smallest, k that reaches the base; else the most diverse k, and a sentence either way."""
    reaching = [c for c in choices if c.reaches_base]
    if reaching:
        chosen = min(reaching, key=lambda c: (c.evaluations, c.base_evaluations, c.k, c.boundary is not None))
        return (
            chosen,
            True,
            f"{chosen.label}: the cheapest hybrid whose diversity reaches the base's within its 95% CI "
            f"(hybrid − base {chosen.diff:+.4f} [{chosen.diff_low:+.4f}, {chosen.diff_high:+.4f}]), at "
            f"{chosen.evaluations} network evaluations per image.",
        )
    chosen = max(choices, key=lambda c: c.value)
    return (
        chosen,
        False,
        f"no k up to {max(c.k for c in choices)} reaches the base's diversity within its 95% CI; {chosen.label} "
        f"comes closest (hybrid − base {chosen.diff:+.4f} [{chosen.diff_low:+.4f}, {chosen.diff_high:+.4f}]), at "
        f"{chosen.evaluations} network evaluations per image.",
    )


def _hybrid_arguments(regime: Hybrid) -> str:
    """``Hybrid(...)``'s arguments for ``regime``, its defaults left out: the call makes the regime measured."""
    options = f"k={regime.k}" + (f", base_guidance={regime.base_guidance:g}" if regime.base_guidance else "")
    if regime.base_schedule != "student":
        options += f', base_schedule="{regime.base_schedule}"'
    if regime.base_steps is not None:
        options += f", base_steps={regime.base_steps}"
    return options


def _calls(pair: ModelPair, chosen: KChoice, regime: Hybrid) -> dict[str, str]:
    """The recommended hybrid (``regime``, the one measured) in each API a user may sample with: one line each."""
    options = _hybrid_arguments(regime)
    base_guidance = regime.base_guidance
    student = pair.student.name if pair.student else "?"
    calls = {
        "sample": (
            "from conceptspace import Hybrid, load_pair, sample; "
            f'images = sample(load_pair("{pair.base.name}", "{student}"), "your prompt", Hybrid({options}), '
            "seeds=range(4)).images"
        ),
        "DiversityPipeline": (
            "from conceptspace import DiversityPipeline, Hybrid; "
            f'pipe = DiversityPipeline(base_pipe, student_pipe, student="{student}", regime=Hybrid({options}))'
        ),
    }
    if chosen.boundary is None and pair.family.name in _modular_families():
        base_network = (
            "None" if pair.student_adapter is not None else f"base_pipe.{pair.family.network_folder}"
        )
        guidance = f", base_guidance={base_guidance:g}" if base_guidance else ""
        calls["modular"] = (
            "from conceptspace.modular import hybrid; "
            f"pipe = hybrid(student_modular_pipe, {base_network}, k={chosen.k}{guidance})"
        )
    return calls


def _modular_families() -> set[str]:
    from conceptspace.modular.blocks import LOOP_SEAMS

    return {seam.family for seam in LOOP_SEAMS.values()}


def _run_record(
    pair: ModelPair,
    prompts: list[str],
    seeds: list[int],
    base: Base,
    base_guidance: float,
    sweep: list[_Switch],
    model: Embedder,
    records: dict[str, dict[str, Any]],
    result: Diagnosis,
    parameters: Mapping[str, Any] | None,
    started: float,
) -> dict[str, Any]:
    return {
        "command": "diagnose",
        "base": asdict(pair.base),
        "student": asdict(pair.student) if pair.student else None,
        "paths": pair.paths,
        "device": str(pair.device),
        **pair.weights,
        "prompts": prompts,
        "seeds": seeds,
        "parameters": {
            "base_regime": base.describe(),
            "base_guidance": base_guidance,
            "ks": sorted({switch.k for switch in sweep if switch.boundary is None}),
            "boundaries": [switch.boundary for switch in sweep if switch.boundary is not None],
            "embedder": model.name,
            **(dict(parameters) if parameters else {}),
        },
        "recommendation": {
            "k": result.k,
            "boundary": result.boundary,
            "reaches_base": result.reaches_base,
            "sentence": result.recommendation,
            "call": result.call,
            "calls": result.calls,
            "choices": [{**asdict(c), "reaches_base": c.reaches_base} for c in result.choices],
            "base": result.base,
            "student": result.student,
        },
        "versions": environment_versions(),
        "regimes": records,
        "wall_time": {
            "total": time.perf_counter() - started,
            **{name: record["timings"] for name, record in records.items()},
        },
    }
