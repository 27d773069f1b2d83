"""``conceptspace demo``: the whole study on the embedded testbed, in about a minute on a laptop CPU.

For a few underspecified prompts the shipped pair (``shapes`` and its 4-step student ``dmd``) samples ``n`` seeds
in four regimes: base (Euler with CFG 5; :data:`DEMO_BASE_STEPS` steps), distilled (4 steps), hybrid (the base for
the first step, the student for the other 3) and replace-final (the student's first step, then the base on its
own schedule: the causal control). It records x̂0 at every step (trajectory strips, and commitment curves: the
probe's shape and colour in each step's x̂0 against the final image's), then measures diversity two ways, each
with 95% intervals and paired differences between regimes on the same seeds:

- ground truth: the factor probe reads shape, colour, size and position from every image
  (:mod:`conceptspace.testbed.diversity`: entropy of shape×colour in bits, spreads in pixels);
- embeddings: pairwise cosine distance and Vendi score in the testbed CLIP's image space (``testbed:clip``).

and judges the paper's claims on them (:mod:`conceptspace.verdicts`). Everything lands in one folder: images per
regime, ``metrics.json`` / ``metrics.csv`` (tidy rows), ``run.json`` and ``report.html``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from conceptspace.diversity import default_pairs, images_by_prompt, measure_diversity
from conceptspace.generate import generate
from conceptspace.models import ModelPair, load_pair
from conceptspace.results import PROBE_EMBEDDER as PROBE
from conceptspace.results import read_metrics, write_metrics
from conceptspace.sampling import Base, Distilled, Hybrid, Regime, ReplaceFinal, seeds_from
from conceptspace.testbed.data import STUDY_PROMPTS
from conceptspace.testbed.probe import FactorProbe
from conceptspace.verdicts import FAMILY_MEASURES, verdict_measure

__all__ = [
    "DEMO_BASE_STEPS",
    "DEMO_N",
    "DEMO_PROMPTS",
    "DemoResult",
    "demo_regimes",
    "probe_rows",
    "run_demo",
    "summary_lines",
]

DEMO_PROMPTS = STUDY_PROMPTS
"""Underspecified prompts: each leaves most of the world's factors free, so there is diversity to keep or lose."""

DEMO_BASE_STEPS = 12
"""Base steps in the demo (the registry's default is 50), to keep it within 90 s on two CPU cores; on the probe's
entropy, within noise of 25 steps (docs/testbed.md, "The demo's settings"); the demo's output says so."""

DEMO_N = 48
"""Seeds per prompt and regime in the demo."""


@dataclass
class DemoResult:
    """What :func:`run_demo` made: the output folder, the report, every metric row, and the run record."""

    out_dir: Path
    report: Path
    rows: list[dict[str, Any]]
    run: dict[str, Any]


def demo_regimes(base_steps: int | None = DEMO_BASE_STEPS) -> list[Regime]:
    """Base (``base_steps`` Euler steps with CFG; None: the registry's), distilled, hybrid with one base step (no
    CFG on it, the student's schedule) and replace-final (the student's first step, then the base's own
    schedule with CFG)."""
    return [Base(steps=base_steps), Distilled(), Hybrid(k=1), ReplaceFinal(base_steps=base_steps)]


def _probe_images(paths: Sequence[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])


def probe_rows(
    run: dict[str, Any],
    run_dir: str | os.PathLike,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    probe: FactorProbe | None = None,
) -> list[dict[str, Any]]:
    """Ground-truth diversity of every prompt and regime of a testbed run (rows with ``embedder="probe"``), and
    paired differences between regimes (``distilled - base``, ``hybrid - base``, ``hybrid - distilled`` …).

    Blank images (:func:`conceptspace.testbed.probe.blank_images`: no object to read) are counted per regime in
    ``blank_share`` rows and left out of the factor measures; a paired difference keeps the seeds whose images are
    blank in neither regime (its ``n`` says how many). ``probe``: the shipped one unless given."""
    from conceptspace.stats import mean_estimate
    from conceptspace.testbed.diversity import diversity_rows, expected_diversity, paired_difference_rows
    from conceptspace.testbed.probe import blank_images, load_probe

    probe = probe or load_probe()
    regimes = list(run["regimes"])
    model = run["base"]["name"] + (f"/{run['student']['name']}" if run.get("student") else "")
    extra = {"embedder": PROBE, "model": model}
    rows: list[dict[str, Any]] = []
    for prompt, by_regime in images_by_prompt(run, run_dir).items():
        world = expected_diversity(prompt)
        pixels = {regime: _probe_images([path for _, path in by_regime[regime]]) for regime in regimes}
        factors = {regime: probe.predict_factors(pixels[regime]) for regime in regimes}
        blank = {regime: blank_images(pixels[regime]) for regime in regimes}
        for regime in regimes:
            share = mean_estimate(blank[regime].astype(float), n_boot=n_boot, seed=seed)
            rows.append(share.row(prompt, regime, "blank_share", ci_method=share.method, **extra))
            if (~blank[regime]).sum() < 2:  # nothing left to measure diversity on
                continue
            kept = factors[regime][~blank[regime]]
            for row in diversity_rows(kept, prompt, regime, n_boot=n_boot, seed=seed, **extra):
                rows.append({**row, "world": world[row["metric"]]})
        for a, b in default_pairs(regimes):
            kept = ~blank[a] & ~blank[b]
            if kept.sum() < 2:
                continue
            rows += paired_difference_rows(
                {a: factors[a][kept], b: factors[b][kept]},
                prompt,
                [(a, b)],
                n_boot=n_boot,
                seed=seed,
                **extra,
            )
        rows += _share_rows(prompt, factors, blank, n_boot=n_boot, seed=seed, **extra)
    return rows


def _share_rows(
    prompt: str,
    factors: dict[str, Any],
    blank: dict[str, np.ndarray],
    *,
    n_boot: int,
    seed: int,
    **extra: Any,
) -> list[dict[str, Any]]:
    """The causal ablation's shares, on each family's verdict measure: ``gap_share_<measure>`` (the share of the
    base − distilled gap that the hybrid and replace-final each restore) and ``restored_ratio_<measure>``
    (replace-final's restoration over the hybrid's), on the seeds blank in none of the four regimes."""
    from conceptspace.testbed.diversity import family_of, restored_share

    needed = ("base", "distilled", "hybrid", "replace-final")
    if not all(regime in factors for regime in needed):
        return []
    kept = ~np.any([blank[regime] for regime in needed], axis=0)
    if kept.sum() < 2:
        return []
    kept_factors = {regime: factors[regime][kept] for regime in needed}
    rows = []
    for family in FAMILY_MEASURES:
        measure = verdict_measure(family, prompt)
        if measure is None:
            continue
        settings = {"n_boot": n_boot, "seed": seed}
        for metric, regime, target, name in (
            (f"gap_share_{measure}", "hybrid", "base", "hybrid"),
            (f"gap_share_{measure}", "replace-final", "base", "replace-final"),
            (f"restored_ratio_{measure}", "replace-final", "hybrid", "replace-final / hybrid"),
        ):
            share = restored_share(kept_factors, measure, regime, "distilled", target, **settings)
            rows.append(
                share.row(prompt, name, metric, ci_method=share.method, family=family_of(measure), **extra)
            )
    return rows


def run_demo(
    out_dir: str | os.PathLike = "out/demo",
    *,
    prompts: Sequence[str] = DEMO_PROMPTS,
    n: int = DEMO_N,
    seed: int = 0,
    pair: ModelPair | None = None,
    regimes: Sequence[Regime] | None = None,
    embedder: str = "testbed:clip",
    n_boot: int = 1000,
    n_perm: int = 1000,
    batch_size: int = 64,
    strips: int = 4,
    progress: bool = True,
) -> DemoResult:
    """Sample, record, measure and report (see the module docstring); returns a :class:`DemoResult`.

    ``pair`` defaults to ``load_pair("shapes", "dmd")`` on the CPU in float32 (the testbed is too small for a GPU to
    help); ``regimes`` default to :func:`demo_regimes`. Rows: probe rows (``embedder="probe"``), embedding rows
    (``embedder="testbed:clip"``) and commitment curves (``metric="commitment"``, ``similarity="testbed:probe"``:
    the share of samples whose x̂0 shows the final shape and colour, over every sample); x̂0 strips for the first
    ``strips`` seeds of each prompt and regime. :func:`conceptspace.verdicts.verdicts` judges the claims on them.
    """
    if n < 2:
        raise ValueError(f"the demo measures diversity, which needs -n of at least 2, got {n}")
    from conceptspace.embeddings import load_embedder
    from conceptspace.report import build_report
    from conceptspace.testbed.commitment import trajectory_rows
    from conceptspace.testbed.probe import load_probe

    out = Path(out_dir)
    pair = pair or load_pair("shapes", "dmd", dtype=torch.float32, device="cpu")
    whole_image = load_embedder("testbed:clip", device=pair.device, progress=False)
    probe = load_probe()
    per_factor = partial(trajectory_rows, probe=probe, n_boot=n_boot, seed=seed, embedder=PROBE)
    run = generate(
        pair,
        list(prompts),
        list(regimes or demo_regimes()),
        seeds_from(seed, n),
        out,
        batch_size=batch_size,
        trajectories=True,
        strips=strips,
        commitment_embedder=whole_image,
        trajectory_measures=per_factor,
        progress=progress,
        parameters={"demo": True},
        command="demo",
    )
    commitment = read_metrics(out)
    embedding = measure_diversity(out, embedder, n_boot=n_boot, n_perm=n_perm, seed=seed, progress=progress)
    rows = probe_rows(run, out, n_boot=n_boot, seed=seed, probe=probe) + embedding + commitment
    write_metrics(out, rows)
    report = build_report(out, title="conceptspace demo: the shapes testbed")
    return DemoResult(out, report, rows, run)


def summary_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The demo's short table, per prompt: each regime's share of blank images, its diversity on the measure each
    factor family's verdicts read (:func:`conceptspace.verdicts.verdict_measure`: layout ``spread_position`` in
    pixels, appearance the free factor's entropy in bits) and its testbed-CLIP pairwise distance, each with its
    95% CI; then the paired differences the verdicts quote — the same rows, so no number appears twice with two
    values."""
    probe = {
        (r["prompt"], r["regime"], r["metric"]): r
        for r in rows
        if r.get("embedder") == PROBE and r.get("step") is None
    }
    clip = {(r["prompt"], r["regime"], r["metric"]): r for r in rows if r.get("embedder") == "testbed:clip"}

    def cell(row: dict[str, Any] | None, digits: int, signed: bool) -> str:
        if row is None:
            return ""
        sign = "+" if signed else ""
        return f"{row['value']:{sign}.{digits}f} [{row['ci_low']:{sign}.{digits}f}, {row['ci_high']:{sign}.{digits}f}]"

    prompts = list(dict.fromkeys(key[0] for key in probe))
    regimes = list(dict.fromkeys(key[1] for key in probe if " - " not in key[1] and " / " not in key[1]))
    differences = [
        regime
        for regime in dict.fromkeys(key[1] for key in probe if " - " in key[1])
        if regime.endswith(" - base") or regime in ("hybrid - distilled", "replace-final - distilled")
    ]
    lines: list[str] = []
    for prompt in prompts:
        layout = verdict_measure("layout", prompt)
        appearance = verdict_measure("appearance", prompt) or "entropy_shape_colour"
        lines += [
            f"{prompt!r}: layout {layout} (px), appearance {appearance} (bits), testbed-CLIP pairwise distance",
            f"  {'regime':<26} {'blank':>6}  {'layout':<22} {'appearance':<22} CLIP",
        ]
        for regime in regimes + differences:
            diff = "diff_" if " - " in regime else ""
            blank = probe.get((prompt, regime, "blank_share"))
            share = f"{blank['value']:.0%}" if blank else ""
            lines.append(
                f"  {regime:<26} {share:>6}  "
                f"{cell(probe.get((prompt, regime, diff + layout)), 2, bool(diff)):<22} "
                f"{cell(probe.get((prompt, regime, diff + appearance)), 2, bool(diff)):<22} "
                f"{cell(clip.get((prompt, regime, diff + 'pairwise_distance')), 3, bool(diff)):<22}".rstrip()
            )
    return lines
