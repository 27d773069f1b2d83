"""The report's figures, drawn from tidy rows with matplotlib and seaborn: diversity per regime with 95% CIs,
differences between regimes, commitment and other per-step curves, SliderSpace directions, and the comparison's
Pareto view; one colour per regime in every figure (colour-blind-safe). :mod:`conceptspace.report` lays them out."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from conceptspace.io import atomic_write
from conceptspace.results import ALL_PROMPTS, DIVERSITY_METRICS

__all__ = [
    "FIXED_COLOURS",
    "PALETTE",
    "colours_for",
    "draw_figures",
    "is_number",
    "metric_family",
    "metric_stem",
    "href",
    "ordered_prompts",
    "panel_title",
    "pareto_figure",
    "run_colours",
    "save_figure",
]

ASSETS = "assets"
"""The report's own folder inside a run folder (figures go to ``assets/figures/``)."""


def href(path: Path | str) -> str:
    """A path relative to the report as a URL (``#``, ``?``, spaces and the like percent-encoded)."""
    return quote(Path(path).as_posix(), safe="/")


MAX_PROMPTS_PER_PLOT = 12  # more prompts than this: figures show the first ones and "(all prompts)"


# Colour-blind-safe palette (seaborn "colorblind"); the fixed regimes keep their colour in every report.
PALETTE = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#56b4e9")


FIXED_COLOURS = {"base": PALETTE[0], "distilled": PALETTE[1], "hybrid": PALETTE[2]}


_DIRECTION_SUFFIX = re.compile(r"_dir_\d+$")


def metric_stem(metric: str) -> str:
    """The metric without a SliderSpace direction suffix: ``variance_share_dir_3`` → ``variance_share``."""
    return _DIRECTION_SUFFIX.sub("", metric)


def metric_family(row: dict[str, Any]) -> str:
    """``"direction"`` (rows with a SliderSpace ``direction``), ``"curve"`` (rows with a ``step``: commitment and
    any other per-step metric), ``"ratio"`` (a LoRA's transfer ratio at one ``scale``), ``"scale"`` (one model's
    change at one LoRA ``scale``), ``"difference"`` (``diff_*`` metrics: one regime against another, usually with
    a ``p_value``), ``"diversity"`` (:data:`DIVERSITY_METRICS`) or ``"other"``."""
    name = str(row["metric"])
    if row.get("direction") is not None:
        return "direction"
    if row.get("step") is not None:
        return "curve"
    if is_number(row.get("scale")) and row.get("model") is not None:
        return "ratio" if name.endswith("transfer_ratio") else "scale"
    if name.startswith("diff_"):
        return "difference"
    lowered = name.lower()
    if name in DIVERSITY_METRICS or "pairwise" in lowered or "vendi" in lowered:
        return "diversity"
    return "other"


def colours_for(names: Iterable[str]) -> dict[str, str]:
    colours = dict(FIXED_COLOURS)
    rest = [c for c in PALETTE if c not in FIXED_COLOURS.values()]
    for index, name in enumerate(n for n in dict.fromkeys(names) if n not in FIXED_COLOURS):
        colours[name] = rest[index % len(rest)]
    return colours


def run_colours(run: dict[str, Any], regimes: list[str], rows: list[dict[str, Any]]) -> dict[str, str]:
    """One colour per regime; where run.json gives each regime a ``model`` (a LoRA sweep: ``<model>@<scale>``),
    one per model instead, shared by its regimes and by every row that names it (the base blue, the students the
    colours that follow), so a model reads the same in every figure and table."""
    colours = colours_for(regimes + [str(r["regime"]) for r in rows])
    records = run.get("regimes") if isinstance(run.get("regimes"), dict) else {}
    model_of = {
        str(name): str(record["model"])
        for name, record in records.items()
        if isinstance(record, dict) and record.get("model") is not None
    }
    if not model_of:
        return colours
    models = list(dict.fromkeys(model_of.values()))
    by_model = dict(
        zip(models, [PALETTE[0], PALETTE[1], *PALETTE[3:], PALETTE[2]] * len(models), strict=False)
    )
    model_of.update({str(r["regime"]): str(r["model"]) for r in rows if r.get("model") in by_model})
    return {**colours, **by_model, **{regime: by_model[model] for regime, model in model_of.items()}}


def pareto_figure(
    table: list[dict[str, Any]], d_name: str, q_name: str, higher: bool, colours: dict[str, str]
) -> Any:
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    points = [e for e in table if e["diversity"] is not None and e["quality"] is not None]
    if not points:
        return None
    with matplotlib.rc_context({"figure.dpi": 100, "savefig.dpi": 144}):
        figure = Figure(figsize=(6.4, 4.6), layout="constrained")
        ax = figure.subplots()
        largest = max(e["evaluations"] or 1 for e in points)
        handles: dict[str, Any] = {}
        for e in points:
            d, q = e["diversity"], e["quality"]
            x, y = float(d["value"]), float(q["value"])
            ax.errorbar(
                x,
                y,
                xerr=[[_half(x, d["ci_low"], below=True)], [_half(x, d["ci_high"], below=False)]],
                yerr=[[_half(y, q["ci_low"], below=True)], [_half(y, q["ci_high"], below=False)]],
                fmt="none",
                ecolor=colours.get(e["method"], PALETTE[-1]),
                lw=1.2,
                capsize=2,
            )
            size = 40 + 360 * (e["evaluations"] or 1) / largest
            ax.scatter(
                [x],
                [y],
                s=size,
                color=colours.get(e["method"], PALETTE[-1]),
                alpha=0.85,
                zorder=3,
                edgecolors="#111111" if e["pareto"] else "none",
                linewidths=1.8,
            )
            handles[e["method"]] = Line2D(  # one marker size in the legend, whatever the method's cost
                [], [], marker="o", ls="", ms=7, color=colours.get(e["method"], PALETTE[-1])
            )
        ax.set_xlabel(_label(d_name + " → more diverse", 60))
        ax.set_ylabel(_label(q_name + (" → better" if higher else " (lower is better)"), 60))
        if not higher:
            ax.invert_yaxis()
        # a legend, not labels beside the points: methods that land close together would print over each other
        _legend(figure, handles)
    return figure


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def panel_title(row: dict[str, Any]) -> str:
    embedder = row.get("embedder")
    return f"{row['metric']} ({embedder})" if embedder else str(row["metric"])


def _label(text: Any, width: int = 28) -> str:
    """Text safe for matplotlib: one line, shortened, and no mathtext (``$`` escaped)."""
    flat = " ".join(str(text).split())
    short = flat[: width - 1].rstrip() + "…" if len(flat) > width else flat
    return short.replace("$", r"\$")


def ordered_prompts(rows: Sequence[dict[str, Any]]) -> tuple[list[str], bool]:
    prompts = list(dict.fromkeys(str(r["prompt"]) for r in rows if r["prompt"] != ALL_PROMPTS))
    truncated = len(prompts) > MAX_PROMPTS_PER_PLOT
    if truncated:
        prompts = prompts[:MAX_PROMPTS_PER_PLOT] if not any(r["prompt"] == ALL_PROMPTS for r in rows) else []
    if any(r["prompt"] == ALL_PROMPTS for r in rows):
        prompts.append(ALL_PROMPTS)
    return prompts, truncated


def draw_figures(
    run_dir: Path,
    rows: list[dict[str, Any]],
    regimes: list[str],
    colours: dict[str, str],
    written: set[Path],
    notes: list[str],
) -> list[dict[str, Any]]:
    import matplotlib
    import seaborn as sns

    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        families[metric_family(row)].append(row)
    style = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85)}
    style.update({"axes.titleweight": "bold", "figure.dpi": 100, "savefig.dpi": 144})
    figures = []
    with matplotlib.rc_context(style):
        spec = [
            ("diversity", "Diversity per regime", _DIVERSITY_CAPTION),
            ("difference", "Differences between regimes", _DIFFERENCE_CAPTION),
            ("other", "Other metrics", _OTHER_CAPTION),
        ]
        for family, heading, caption in spec:
            if families[family]:
                figure = _points_figure(families[family], regimes, colours, zero_line=family == "difference")
                figures.append(save_figure(run_dir, figure, family, heading, caption, written))
        for family, heading, caption in [
            ("scale", "Change against the LoRA scale", _SCALE_CAPTION),
            ("ratio", "Transfer ratio per scale", _RATIO_CAPTION),
        ]:
            if families[family]:
                figure = _scale_figure(families[family], colours, ratio=family == "ratio")
                figures.append(save_figure(run_dir, figure, family, heading, caption, written))
        by_stem: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in families["direction"]:
            by_stem[metric_stem(str(row["metric"]))].append(row)
        for stem, group in by_stem.items():
            if any(row.get("factor") is not None for row in group):
                figure, caption = _factor_heatmap(group), _FACTOR_CAPTION
            else:
                figure, caption = _direction_figure(group, regimes, colours), _DIRECTION_CAPTION
            figures.append(
                save_figure(run_dir, figure, f"direction-{stem}", f"{stem} per direction", caption, written)
            )
        by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in families["curve"]:
            by_metric[str(row["metric"])].append(row)
        for metric, group in by_metric.items():
            figure = _curves_figure(group, regimes, colours)
            caption = _COMMITMENT_CAPTION if metric == "commitment" else _CURVE_CAPTION
            heading = "Commitment curves" if metric == "commitment" else f"{metric} per step"
            figures.append(save_figure(run_dir, figure, f"curve-{metric}", heading, caption, written))
    if any(ordered_prompts(group)[1] for group in families.values() if group):
        notes.append(
            f"Figures show at most {MAX_PROMPTS_PER_PLOT} prompts (or only the mean over all prompts, when the "
            "rows have one); the tables hold every row."
        )
    return figures


_DIVERSITY_CAPTION = (
    "Mean with 95% confidence interval, per prompt (x) and regime (colour); one panel per diversity metric. "
    "Higher is more diverse."
)


_DIFFERENCE_CAPTION = (
    "Difference between two regimes with its 95% confidence interval; an interval that excludes 0 (dashed) is "
    "a difference the data support. p-values are in the tables."
)


_OTHER_CAPTION = (
    "Mean with 95% confidence interval, per prompt (x) and regime (colour); one panel per metric."
)


_SCALE_CAPTION = (
    "How far each model (colour) moves from its own scale-0 images as the LoRA's scale grows: mean over the "
    "same seeds at every scale with its 95% confidence interval, one panel per metric. 0 at scale 0 by "
    "construction."
)


_RATIO_CAPTION = (
    "The student's change over the base's at each scale (base over student for a LoRA trained on the student), "
    "with its 95% confidence interval, seeds resampled jointly: 1 (dashed) = the LoRA moves the student as far "
    "as the model it was trained on, 0 = it does not transfer."
)


_COMMITMENT_CAPTION = (
    "Similarity of each step's x̂0 to the final image against the fraction of sampling steps run: mean with 95% "
    "confidence band, one panel per prompt. A curve that starts high commits to its final image at once "
    "(distilled models); one that climbs slowly commits gradually (base models)."
)


_DIRECTION_CAPTION = (
    "One value per SliderSpace direction (x: direction index, 0 = most variance) and regime (colour), with its "
    "95% confidence interval."
)


_FACTOR_CAPTION = (
    "Correlation of each direction's coordinate (rows) with each factor the testbed probe reads (columns): what "
    "each discovered direction means."
)


_CURVE_CAPTION = (
    "Mean with 95% confidence band against the fraction of sampling steps run, one panel per prompt."
)


def save_figure(
    run_dir: Path, figure: Any, name: str, heading: str, caption: str, written: set[Path]
) -> dict[str, Any]:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "figure"
    rel = Path(ASSETS, "figures", f"{safe}.png")
    atomic_write(run_dir / rel, lambda tmp: figure.savefig(tmp, format="png", metadata={"Software": None}))
    written.add(run_dir / rel)
    width, height = (round(v * 144) for v in figure.get_size_inches())
    return {
        "src": href(rel),
        "heading": heading,
        "caption": caption,
        "width": width,
        "height": height,
        "alt": heading,
    }


def _panels(
    count: int, max_columns: int, width: float, height: float, extra: float = 0.5, **subplots: Any
) -> tuple[Any, Any]:
    """A figure of ``count`` panels of ``width`` × ``height`` inches, at most ``max_columns`` a row (``extra``
    inches on top for the legend), and its axes flattened; axes beyond ``count`` are hidden by the caller."""
    from matplotlib.figure import Figure

    columns = max(1, min(count, max_columns))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows + extra), layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False, **subplots).ravel()


def _points_figure(
    rows: list[dict[str, Any]], regimes: list[str], colours: dict[str, str], *, zero_line: bool
) -> Any:

    panels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        panels[panel_title(row)].append(row)
    hues = [
        r
        for r in dict.fromkeys([*regimes, *(str(r["regime"]) for r in rows)])
        if any(str(row["regime"]) == r for row in rows)
    ]
    widest = max(len(ordered_prompts(group)[0]) for group in panels.values())
    panel_width = min(11.0, max(3.4, 0.32 * widest * max(1, len(hues)) + 1.4))
    figure, axes = _panels(len(panels), max(1, int(11.5 // panel_width)), panel_width, 3.5)
    handles: dict[str, Any] = {}
    for ax, (title, group) in zip(axes, panels.items(), strict=False):
        prompts, _ = ordered_prompts(group)
        position = {p: i for i, p in enumerate(prompts)}
        width = 0.7 / max(1, len(hues))
        for h, regime in enumerate(hues):
            points = [r for r in group if str(r["regime"]) == regime and str(r["prompt"]) in position]
            if not points:
                continue
            xs = [position[str(r["prompt"])] + (h - (len(hues) - 1) / 2) * width for r in points]
            ys = [float(r["value"]) for r in points]
            handles[regime] = ax.errorbar(
                xs, ys, yerr=_yerr(points), fmt="o", ms=6, capsize=3, lw=1.5, color=colours[regime]
            )
        if ALL_PROMPTS in position and len(prompts) > 1:
            ax.axvline(len(prompts) - 1.5, color="#999999", lw=1, ls=":")
        if zero_line:
            ax.axhline(0, color="#555555", lw=1, ls="--")
        ax.set_xticks(range(len(prompts)))
        ax.set_xticklabels(
            [_label(p, 24) for p in prompts],
            rotation=25 if len(prompts) > 2 else 0,
            ha="right" if len(prompts) > 2 else "center",
        )
        ax.set_xlim(-0.6, len(prompts) - 0.4)
        ax.grid(axis="x", visible=False)
        ax.set_title(_label(title, 60))
        ax.set_ylabel(_label(group[0]["metric"], 40))
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    _legend(figure, handles)
    return figure


def _legend(figure: Any, handles: dict[str, Any]) -> None:
    """One legend above all panels, with as many entries a line as the figure's width holds (at most six)."""
    if handles:
        labels = [_label(h, 30) for h in handles]
        longest = max(len(line) for label in labels for line in label.splitlines())
        # an entry: its text (~0.6 em a character at 10 pt) plus the marker, its padding and the column gap
        entry_inches = 0.085 * longest + 0.7
        fitting = int(figure.get_figwidth() // entry_inches)
        figure.legend(
            list(handles.values()),
            labels,
            loc="outside upper center",
            ncols=max(1, min(len(handles), 6, fitting)),
            frameon=False,
        )


def _yerr(points: Sequence[dict[str, Any]]) -> list[list[float]]:
    """matplotlib's ``yerr`` for rows with a CI: the lengths of the bars below and above each value."""
    return [
        [_half(r["value"], r["ci_low"], below=True) for r in points],
        [_half(r["value"], r["ci_high"], below=False) for r in points],
    ]


def _half(value: float, bound: float, *, below: bool) -> float:
    """Length of one error bar (0 where the CI is missing or does not contain the value)."""
    if not (is_number(value) and is_number(bound)):
        return 0.0
    return max(0.0, (value - bound) if below else (bound - value))


def _direction_figure(rows: list[dict[str, Any]], regimes: list[str], colours: dict[str, str]) -> Any:
    """One line per regime across the directions, with CI bars. Rows with a ``scale`` (a slider's effect) get
    one panel per scale and one line per model."""

    panels: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        panels[row.get("scale")].append(row)
    by_model = any(row.get("scale") is not None and row.get("model") for row in rows)

    def hue(row: dict[str, Any]) -> str:
        return str(row["model"]) if by_model else str(row["regime"])

    hues = list(dict.fromkeys([*([] if by_model else regimes), *(hue(r) for r in rows)]))
    hues = [h for h in hues if any(hue(r) == h for r in rows)]
    palette = colours_for(hues) if by_model else colours
    directions = sorted({int(r["direction"]) for r in rows})
    figure, axes = _panels(len(panels), 2, 5.6, 3.2)
    handles: dict[str, Any] = {}
    for ax, (scale, group) in zip(axes, panels.items(), strict=False):
        for h, name in enumerate(hues):
            points = sorted((r for r in group if hue(r) == name), key=lambda r: int(r["direction"]))
            if not points:
                continue
            xs = [int(r["direction"]) + (h - (len(hues) - 1) / 2) * 0.08 for r in points]
            handles[name] = ax.errorbar(
                xs, [float(r["value"]) for r in points], yerr=_yerr(points), fmt="o-", ms=4, lw=1.4, capsize=2,
                color=palette.get(name, PALETTE[-1]),
            )  # fmt: skip
        ax.set_xticks(directions)
        ax.set_xlabel("direction")
        ax.set_ylabel(_label(metric_stem(str(group[0]["metric"])), 40))
        if scale is not None:
            ax.set_title(f"scale {scale:+g}" if is_number(scale) else _label(scale))
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    _legend(figure, handles)
    return figure


def _scale_figure(rows: list[dict[str, Any]], colours: dict[str, str], *, ratio: bool) -> Any:
    """Lines against the LoRA scale with CI bars, one panel per metric (and prompt, when there are several): one
    line per model for a change, one per student-over-base pair for a transfer ratio."""

    several_prompts = len({str(r["prompt"]) for r in rows}) > 1
    panels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        panels[panel_title(row) + (f" — {row['prompt']}" if several_prompts else "")].append(row)

    def series(row: dict[str, Any]) -> str:
        return str(row["regime"] if ratio else row["model"])

    names = list(dict.fromkeys(series(r) for r in rows))
    scales = sorted({float(r["scale"]) for r in rows} | ({0.0} if not ratio else set()))
    # the models side by side at each scale, so that equal values do not hide one
    nudge = 0.015 * ((scales[-1] - scales[0]) or 1.0)
    figure, axes = _panels(len(panels), 2, 5.6, 3.3, extra=0.6)
    handles: dict[str, Any] = {}
    for ax, (title, group) in zip(axes, panels.items(), strict=False):
        for i, name in enumerate(names):
            points = sorted((r for r in group if series(r) == name), key=lambda r: float(r["scale"]))
            if not points:
                continue
            shift = (i - (len(names) - 1) / 2) * nudge
            xs = [float(r["scale"]) + shift for r in points]
            ys = [float(r["value"]) for r in points]
            colour = colours.get(name, PALETTE[-1])
            handles[name] = ax.errorbar(xs, ys, yerr=_yerr(points), fmt="o", ms=5, capsize=3, color=colour)
            if not ratio and 0.0 not in {float(r["scale"]) for r in points}:
                # a change from scale 0 is 0 there by definition: the line passes through it (no marker: not measured)
                xs, ys = zip(*sorted([*zip(xs, ys, strict=True), (shift, 0.0)]), strict=True)
            ax.plot(xs, ys, lw=1.6, color=colour)
        if ratio:
            ax.axhline(1, color="#555555", lw=1, ls="--")
        ax.axhline(0, color="#999999", lw=0.8, ls=":" if ratio else "--")
        ax.set_xticks(scales, [f"{s:+g}" if s else "0" for s in scales])
        ax.set_xlabel("LoRA scale")
        ax.set_title(_label(title, 60))
        ax.set_ylabel(_label(group[0]["metric"], 40))
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    _legend(figure, handles)
    return figure


def _factor_heatmap(rows: list[dict[str, Any]]) -> Any:
    import numpy as np
    from matplotlib.figure import Figure

    directions = sorted({int(r["direction"]) for r in rows})
    factors = list(dict.fromkeys(str(r["factor"]) for r in rows))
    values = np.full((len(directions), len(factors)), np.nan)
    for row in rows:
        values[directions.index(int(row["direction"])), factors.index(str(row["factor"]))] = float(
            row["value"]
        )
    figure = Figure(figsize=(0.62 * len(factors) + 2.2, 0.38 * len(directions) + 1.6), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(factors)), [_label(f, 16) for f in factors], rotation=45, ha="right")
    ax.set_yticks(range(len(directions)), [f"dir {d}" for d in directions])
    ax.grid(False)
    figure.colorbar(image, ax=ax, shrink=0.8)
    return figure


def _curves_figure(rows: list[dict[str, Any]], regimes: list[str], colours: dict[str, str]) -> Any:

    prompts, _ = ordered_prompts(rows)
    figure, axes = _panels(len(prompts), 3, 3.9, 3.1, sharey=True)
    hues = [r for r in dict.fromkeys([*regimes, *(str(r["regime"]) for r in rows)])]
    handles: dict[str, Any] = {}
    for ax, prompt in zip(axes, prompts, strict=False):
        for regime in hues:
            points = sorted(
                (r for r in rows if str(r["prompt"]) == prompt and str(r["regime"]) == regime),
                key=lambda r: int(r["step"]),
            )
            if not points:
                continue
            n_steps = max(int(r["step"]) for r in points) + 1
            xs = [(int(r["step"]) + 1) / n_steps for r in points]
            ys = [float(r["value"]) for r in points]
            (handles[regime],) = ax.plot(
                xs, ys, marker="o", ms=3.5, lw=1.8, color=colours.get(regime, PALETTE[-1])
            )
            band = [(x, r["ci_low"], r["ci_high"]) for x, r in zip(xs, points, strict=True)]
            band = [b for b in band if is_number(b[1]) and is_number(b[2])]
            if band:
                ax.fill_between(
                    [b[0] for b in band],
                    [b[1] for b in band],
                    [b[2] for b in band],
                    color=colours.get(regime, PALETTE[-1]),
                    alpha=0.2,
                    lw=0,
                )
        ax.set_xlim(0, 1.03)
        ax.set_title(_label(prompt, 40))
        ax.set_xlabel("fraction of steps run")
        ax.set_ylabel(_label(rows[0]["metric"], 40))
    for ax in axes[len(prompts) :]:
        ax.set_visible(False)
    _legend(figure, handles)
    return figure
