"""HTML reports of a run folder, rebuilt from its files alone (no model is loaded or run).

>>> from conceptspace.report import build_report                 # doctest: +SKIP
>>> build_report("runs/puppy")                                     # doctest: +SKIP
PosixPath('runs/puppy/report.html')

The report is one self-contained folder: ``report.html`` (CSS inline, no script, no font or file from the
network) next to ``assets/`` (thumbnails and figures), with every image linked by a path relative to the report,
so the run folder can be zipped, moved or opened offline. All text that came from a user (prompts, regime and
file names, run parameters) is escaped.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from conceptspace.figures import (
    ASSETS,
    FIXED_COLOURS,
    PALETTE,
    draw_figures,
    href,
    is_number,
    metric_family,
    metric_stem,
    panel_title,
    pareto_figure,
    run_colours,
    save_figure,
)
from conceptspace.io import STRIP_PREFIX, atomic_write, parse_image_name, write_text
from conceptspace.results import (
    ALL_PROMPTS,
    DIVERSITY_METRICS,
    REQUIRED_COLUMNS,
    format_p_value,
    read_metrics,
)

__all__ = ["ALL_PROMPTS", "DIVERSITY_METRICS", "build_report", "metric_family"]


REPORT = "report.html"
TABLE_OPEN_ROWS = 40  # tables with more rows start collapsed


def build_report(
    run_dir: str | os.PathLike, *, title: str | None = None, thumbnail: int | None = 256
) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/assets/`` from the files in ``run_dir``; return the report.

    Reads ``metrics.json`` (tidy rows, see :mod:`conceptspace.results`), ``run.json`` when present and the
    images of each regime folder (``<regime>/<prompt#>_<seed>.png`` and x̂0 strips
    ``<regime>/trajectory_<prompt#>_<seed>.png``); nothing else is needed and no model is run. The page shows
    image grids per prompt and regime (click a thumbnail for the full-size image), x̂0 strips, figures
    (diversity per regime with 95% CIs, commitment curves against the fraction of steps run, a point-with-CI
    plot for any other metric), one table per metric with every row (value [CI], n, p-value where present) and
    the run's parameters (models, the schedule each regime ran, versions, wall times).

    A folder with images but no ``metrics.json`` (``conceptspace generate`` writes none) still gets a report:
    grids, strips and run details, with a note naming the commands that measure. A folder with neither raises
    :class:`FileNotFoundError`. ``assets/`` belongs to the report: files there that this build did not write are
    removed. Thumbnails are at most ``thumbnail`` pixels on their longer side (strips: half that in height) and
    are reused while newer than their image; ``thumbnail=None`` links the full-size images directly. Every file
    is written atomically, the report last.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if thumbnail is not None and (isinstance(thumbnail, bool) or int(thumbnail) < 16):
        raise ValueError(f"thumbnail must be at least 16 pixels or None, got {thumbnail!r}")
    run = _read_run(run_dir)
    has_metrics = (run_dir / "metrics.json").exists()
    rows = read_metrics(run_dir) if has_metrics else []
    images = _find_images(run_dir, run)
    if not has_metrics and not images:
        raise FileNotFoundError(
            f"nothing to report in {run_dir}: it has no metrics.json and no images. Make images with "
            "`conceptspace generate` or `conceptspace trajectory` (which also writes commitment curves to "
            "metrics.json), measure diversity with `conceptspace diversity`, then build the report."
        )

    notes: list[str] = []
    if not has_metrics:
        notes.append(
            "No metrics.json in this folder, so no figures or tables: `conceptspace diversity` measures these "
            "images, and `conceptspace trajectory` records commitment curves."
        )
    elif not rows:
        notes.append("metrics.json holds no rows.")

    regimes = _regime_order(run, images, rows)
    colours = run_colours(run, regimes, rows)
    written: set[Path] = set()
    prompt_blocks = _image_blocks(run_dir, run, images, regimes, colours, thumbnail, written, notes)
    figures = draw_figures(run_dir, rows, regimes, colours, written, notes) if rows else []
    figures += _run_figures(run_dir, run, notes)
    context = {
        "comparison": _comparison(run_dir, run, rows, colours, written),
        "verdicts": _verdicts(rows),
        "blanks": _blanks(rows),
        "title": title or f"conceptspace report: {run_dir.resolve().name}",
        "subtitle": _subtitle(run, images, regimes),
        "notes": notes,
        "overview": _overview(run, images, regimes, colours),
        "headline": _headline(rows, regimes, colours),
        "prompts": prompt_blocks,
        "has_strips": any(r["strips"] for p in prompt_blocks for r in p["regimes"]),
        "has_images": any(r["images"] for p in prompt_blocks for r in p["regimes"]),
        "figures": figures,
        "tables": _tables(rows, colours),
        "details": _details(run, colours),
        "files": [
            {"name": name, "href": quote(name)}
            for name in ("run.json", "metrics.json", "metrics.csv")
            if (run_dir / name).is_file()
        ],
        "built": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "version": _version(),
    }
    html = _environment().get_template("report.html").render(**context)
    _remove_stale_assets(run_dir / ASSETS, written)
    return write_text(run_dir / REPORT, html)


def _verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's claims judged on the rows (:mod:`conceptspace.verdicts`); none when nothing could be judged."""
    from conceptspace.verdicts import verdicts

    found = verdicts(rows)
    if all(v.reproduced is None for v in found):
        return []
    css = {True: "yes", False: "no", None: "none"}
    return [{**asdict(v), "label": v.label, "css": css[v.reproduced]} for v in found]


def _blanks(rows: list[dict[str, Any]]) -> list[str]:
    """One line per prompt with blank samples: each regime's share of blank images (``blank_share`` rows)."""
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row["metric"] == "blank_share":
            by_prompt[str(row["prompt"])].append(f"{row['regime']} {row['value']:.0%} of {row['n']}")
    return [f"{prompt}: {', '.join(shares)}" for prompt, shares in by_prompt.items()]


# ---------------------------------------------------------------------------------------------- reading files


def _read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(run, dict):
        raise ValueError(f"{path} must hold a JSON object (the run record)")
    return run


@dataclass
class _Image:
    path: Path  # relative to the run folder
    regime: str
    prompt: str
    prompt_index: int | None
    seed: int | None
    strip: bool


def _find_images(run_dir: Path, run: dict[str, Any]) -> list[_Image]:
    """Every PNG directly inside a sub-folder of the run (``assets/`` excepted), with its prompt and seed
    from run.json's image list, or else from the file name and run.json's prompts."""
    prompts = [str(p) for p in run.get("prompts") or [] if isinstance(p, str)]
    listed: dict[str, tuple[str, Any]] = {}
    records = run.get("regimes")
    if isinstance(records, dict):
        for record in records.values():
            items = record.get("images") if isinstance(record, dict) else None
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and isinstance(item.get("path"), str):
                    listed[Path(item["path"]).as_posix()] = (str(item.get("prompt", "")), item.get("seed"))
    found = []
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name != ASSETS):
        if folder.is_symlink() or folder.name.startswith("."):
            continue
        for file in sorted(folder.glob("*.png")):
            if not file.is_file() or file.name.startswith("."):
                continue
            rel = file.relative_to(run_dir)
            strip = file.name.startswith(STRIP_PREFIX)
            parsed = parse_image_name(file.name)
            index, seed = parsed if parsed else (None, None)
            image_path = rel.parent / (file.name.removeprefix(STRIP_PREFIX) if parsed else file.name)
            if image_path.as_posix() in listed:
                prompt = listed[image_path.as_posix()][0]
            elif index is not None and index < len(prompts):
                prompt = prompts[index]
            elif index is not None:
                prompt = f"prompt #{index}"
            else:
                prompt = "(other images)"
            found.append(_Image(rel, folder.name, prompt, index, seed, strip))
    return found


def _run_figures(run_dir: Path, run: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    """Images a command listed in run.json's ``figures`` (``[{"path", "heading", "caption"}]``, paths relative to
    the run folder), e.g. the strips of SliderSpace's direction sliders; a missing file becomes a note."""
    from PIL import Image

    figures = []
    for entry in run.get("figures") or []:
        path = run_dir / str(entry.get("path", ""))
        if not path.is_file():
            notes.append(f"run.json lists the figure {entry.get('path')!r}, which is missing")
            continue
        with Image.open(path) as image:
            width, height = image.size
        scale = 1.44 * max(1.0, 360 / width)  # small images shown at least 360 px wide
        figures.append(
            {
                "src": href(path.relative_to(run_dir)),
                "heading": str(entry.get("heading") or path.stem),
                "caption": str(entry.get("caption") or ""),
                "width": round(width * scale),
                "height": round(height * scale),
                "alt": str(entry.get("heading") or path.stem),
            }
        )
    return figures


def _regime_order(run: dict[str, Any], images: list[_Image], rows: list[dict[str, Any]]) -> list[str]:
    order: dict[str, None] = {}
    if isinstance(run.get("regimes"), dict):
        order.update(dict.fromkeys(str(k) for k in run["regimes"]))
    order.update(dict.fromkeys(i.regime for i in images))
    order.update(dict.fromkeys(str(r["regime"]) for r in rows if metric_family(r) != "difference"))
    return list(order)


# ---------------------------------------------------------------------------------------------- images


def _thumbnail(run_dir: Path, image: _Image, size: int | None, written: set[Path]) -> dict[str, Any]:
    """Make (or reuse) the thumbnail of one image; return what the template needs to show it."""
    from PIL import Image

    source = run_dir / image.path
    with Image.open(source) as opened:
        width, height = opened.size
        if size is None:
            return {"src": href(image.path), "width": width, "height": height}
        scale = min(1.0, (size // 2) / height) if image.strip else min(1.0, size / max(width, height))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        thumb_rel = Path(ASSETS, "thumbs", image.path).with_suffix(".jpg")
        thumb = run_dir / thumb_rel
        if not _fresh(thumb, source, target):
            picture = opened.convert("RGB")
            if target != (width, height):
                picture = picture.resize(target, Image.Resampling.LANCZOS)
            atomic_write(thumb, lambda tmp: picture.save(tmp, format="JPEG", quality=88))
    written.add(thumb)
    return {"src": href(thumb_rel), "width": target[0], "height": target[1]}


def _fresh(thumb: Path, source: Path, size: tuple[int, int]) -> bool:
    from PIL import Image

    try:
        if thumb.stat().st_mtime_ns < source.stat().st_mtime_ns:
            return False
        with Image.open(thumb) as existing:
            return existing.size == size
    except OSError:
        return False


def _image_blocks(
    run_dir: Path,
    run: dict[str, Any],
    images: list[_Image],
    regimes: list[str],
    colours: dict[str, str],
    size: int | None,
    written: set[Path],
    notes: list[str],
) -> list[dict[str, Any]]:
    """One block per prompt (run.json's order), holding one row of thumbnails and of strips per regime."""
    prompt_order: dict[str, None] = dict.fromkeys(str(p) for p in run.get("prompts") or [])
    for image in sorted(images, key=lambda i: (i.prompt_index is None, i.prompt_index or 0)):
        prompt_order.setdefault(image.prompt, None)
    steps = _schedules(run)
    grouped: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: {"images": [], "strips": []}
    )
    unreadable = []
    for image in sorted(images, key=lambda i: (i.seed is None, i.seed or 0, i.path.name)):
        try:
            shown = _thumbnail(run_dir, image, size, written)
        except OSError:
            unreadable.append(image.path.as_posix())
            continue
        seed = "" if image.seed is None else f"seed {image.seed}"
        shown.update(
            href=href(image.path),
            name=image.path.as_posix(),
            seed=seed,
            alt=f"{image.regime}, {seed or image.path.name}: {image.prompt}",
        )
        if image.strip:
            shown["frames"] = _frame_labels(steps.get(image.regime), shown["width"], shown["height"])
        grouped[image.prompt, image.regime]["strips" if image.strip else "images"].append(shown)
    if unreadable:
        notes.append(f"Skipped {len(unreadable)} unreadable image(s): {', '.join(unreadable[:5])}")
    blocks = []
    for number, prompt in enumerate(prompt_order, start=1):
        rows = [
            {
                "name": regime,
                "colour": colours[regime],
                "schedule": _compact_schedule(steps.get(regime)),
                **grouped[prompt, regime],
            }
            for regime in regimes
            if (prompt, regime) in grouped
        ]
        if rows:
            blocks.append({"number": number, "text": prompt, "regimes": rows})
    return blocks


def _frame_labels(schedule: list[dict[str, Any]] | None, width: int, height: int) -> list[dict[str, Any]]:
    """Labels under each frame of an x̂0 strip (timestep and model), when the strip's width fits the schedule."""
    if not schedule or not 0.5 <= width / len(schedule) / height <= 2:
        return []  # frames are equally wide; a width that does not fit this schedule gets no labels
    return [{"timestep": s.get("timestep"), "model": str(s.get("model", ""))} for s in schedule]


# ---------------------------------------------------------------------------------------------- run record


def _schedules(run: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The schedule each regime ran: ``[{"step", "timestep", "model"}, …]`` per regime name."""
    schedules: dict[str, list[dict[str, Any]]] = {}
    records = run.get("regimes")
    if isinstance(records, dict):
        for name, record in records.items():
            if isinstance(record, dict) and isinstance(record.get("schedule"), list):
                schedules[str(name)] = [s for s in record["schedule"] if isinstance(s, dict)]
    if isinstance(run.get("schedule"), dict):
        for name, schedule in run["schedule"].items():
            if isinstance(schedule, list):
                schedules.setdefault(str(name), [s for s in schedule if isinstance(s, dict)])
    return schedules


def _compact_schedule(schedule: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Runs of consecutive steps by one model: ``[{"model", "timesteps", "count", "colour"}, …]``; a long run
    shows its first three timesteps, an ellipsis and its last."""
    segments: list[dict[str, Any]] = []
    for step in schedule or []:
        model = str(step.get("model", "?"))
        if segments and segments[-1]["model"] == model:
            segments[-1]["all"].append(step.get("timestep"))
        else:
            segments.append({"model": model, "all": [step.get("timestep")]})
    for segment in segments:
        every = segment.pop("all")
        segment["count"] = len(every)
        shown = [str(t) for t in every]
        segment["timesteps"] = " ".join(shown if len(shown) <= 5 else [*shown[:3], "…", shown[-1]])
        segment["colour"] = FIXED_COLOURS.get(segment["model"], PALETTE[-1])
    return segments


def _seconds(timings: Any) -> float | None:
    if not isinstance(timings, dict):
        return None
    values = [v for k, v in timings.items() if k != "writing" and isinstance(v, (int, float))]
    return float(sum(values)) if values else None


def _overview(
    run: dict[str, Any], images: list[_Image], regimes: list[str], colours: dict[str, str]
) -> list[dict[str, Any]]:
    """One card per regime: its schedule, number of images and sampling time."""
    records = run.get("regimes") if isinstance(run.get("regimes"), dict) else {}
    schedules = _schedules(run)
    cards = []
    for regime in regimes:
        record = records.get(regime) if isinstance(records.get(regime), dict) else {}
        count = sum(1 for i in images if i.regime == regime and not i.strip)
        seconds = _seconds(record.get("timings"))
        if not count and regime not in schedules:
            continue
        cards.append(
            {
                "name": regime,
                "colour": colours[regime],
                "schedule": _compact_schedule(schedules.get(regime)),
                "steps": len(schedules.get(regime) or []),
                "images": count,
                "seconds": seconds,
                "per_image": seconds / count if seconds is not None and count else None,
            }
        )
    return cards


def _subtitle(run: dict[str, Any], images: list[_Image], regimes: list[str]) -> list[str]:
    parts = []
    base, student = run.get("base"), run.get("student")
    if isinstance(base, dict) and base.get("name"):
        parts.append(f"base {base['name']}")
    if isinstance(student, dict) and student.get("name"):
        parts.append(f"student {student['name']}")
    prompts = run.get("prompts") or sorted({i.prompt for i in images})
    seeds = run.get("seeds")
    if prompts:
        parts.append(f"{len(prompts)} prompt{'s' * (len(prompts) != 1)}")
    if isinstance(seeds, list) and seeds:
        parts.append(f"{len(seeds)} seed{'s' * (len(seeds) != 1)} each")
    if regimes:
        parts.append(f"{len(regimes)} regime{'s' * (len(regimes) != 1)}")
    if run.get("command"):
        parts.append(f"`{run['command']}` run")
    return parts


def _details(run: dict[str, Any], colours: dict[str, str]) -> dict[str, Any]:
    """The run's parameters, grouped for the details section (empty without run.json)."""
    if not run:
        return {}
    models = []
    for role in ("base", "student"):
        spec = run.get(role)
        if isinstance(spec, dict):
            source = str(spec.get("repo_id", ""))
            if spec.get("filename"):
                source += f" [{spec['filename']}]"
            models.append(
                {
                    "role": role,
                    "name": spec.get("name", ""),
                    "source": source,
                    "scheduler": spec.get("scheduler", ""),
                    "steps": spec.get("num_inference_steps", ""),
                    "cfg": spec.get("guidance_scale", ""),
                    "resolution": spec.get("resolution", ""),
                }
            )
    records = run.get("regimes") if isinstance(run.get("regimes"), dict) else {}
    schedules = _schedules(run)
    phases: dict[str, None] = {}
    regimes = []
    for name in dict.fromkeys([*records, *schedules]):
        record = records.get(name) if isinstance(records.get(name), dict) else {}
        timings = record.get("timings") if isinstance(record.get("timings"), dict) else {}
        phases.update(dict.fromkeys(timings))
        settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
        regimes.append(
            {
                "name": name,
                "colour": colours.get(name, PALETTE[-1]),
                "schedule": _compact_schedule(schedules.get(name)),
                "full_schedule": ", ".join(
                    f"{s.get('timestep')}:{s.get('model')}" for s in schedules.get(name) or []
                ),
                "settings": _inline(
                    {k: v for k, v in settings.items() if k not in ("name", "regime") and v is not None}
                ),
                "timings": timings,
                "total": sum(v for v in timings.values() if isinstance(v, (int, float))),
            }
        )
    shown = {
        "base",
        "student",
        "regimes",
        "schedule",
        "wall_time",
        "prompts",
        "seeds",
        "versions",
        "parameters",
    }
    wall = run.get("wall_time") if isinstance(run.get("wall_time"), dict) else {}
    return {
        "models": models,
        "regimes": regimes,
        "phases": list(phases),
        "total_seconds": wall.get("total") if isinstance(wall.get("total"), (int, float)) else None,
        "parameters": _pairs(run.get("parameters")),
        "versions": _pairs(run.get("versions")),
        "prompts": [str(p) for p in run.get("prompts") or []],
        "seeds": _seed_text(run.get("seeds")),
        "other": _pairs({k: v for k, v in run.items() if k not in shown}),
    }


def _pairs(mapping: Any) -> list[tuple[str, str]]:
    if not isinstance(mapping, dict):
        return []
    return [(str(k), v if isinstance(v, str) else _inline(v)) for k, v in mapping.items()]


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_inline(v)}" for k, v in value.items()) or "—"
    if value is None:
        return "—"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _seed_text(seeds: Any) -> str:
    if not isinstance(seeds, list) or not seeds:
        return ""
    if all(isinstance(s, int) for s in seeds) and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]} ({len(seeds)} seeds)" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(str(s) for s in seeds)


# ---------------------------------------------------------------------------------------------- comparison
def _comparison(
    run_dir: Path,
    run: dict[str, Any],
    rows: list[dict[str, Any]],
    colours: dict[str, str],
    written: set[Path],
) -> dict[str, Any] | None:
    """The ranked table and the Pareto figure of a ``conceptspace compare`` folder (None for other runs)."""
    settings = (run.get("parameters") or {}).get("compare")
    if not settings or not rows:
        return None
    from conceptspace.ranking import NO_CLEAR_WINNER, no_clear_winner, ranking

    table = ranking(rows, settings)
    diversity, quality = settings["diversity"], settings["quality"]

    def cell(entry: dict[str, Any], key: str, signed: bool = False) -> dict[str, str] | None:
        value = entry.get(key)
        if value is None:
            return None
        text = f"{value['value']:+.3g}" if signed else _num(value["value"])
        return {"value": text, "ci": _ci(value["ci_low"], value["ci_high"])}

    lines = [
        {
            "rank": entry["rank"] or "ref.",
            "method": entry["method"],
            "colour": colours.get(entry["method"], PALETTE[-1]),
            "cells": [
                cell(entry, "diversity"),
                cell(entry, "diversity_vs_student", True),
                cell(entry, "diversity_vs_base", True),
                cell(entry, "quality"),
                cell(entry, "quality_vs_student", True),
                cell(entry, "fd"),
            ],
            "evaluations": _num(entry["evaluations"]),
            "seconds": _secs(entry["seconds_per_image"]["value"]) if entry["seconds_per_image"] else "—",
            "relative": "—" if entry["relative_seconds"] is None else f"×{entry['relative_seconds']:.2f}",
            "pareto": entry["pareto"],
        }
        for entry in table
    ]
    d_name = f"{diversity['metric']} ({diversity.get('embedder')})"
    q_name = f"{quality['metric']} ({quality.get('embedder')})"
    figure = pareto_figure(table, d_name, q_name, bool(quality.get("higher_is_better", True)), colours)
    saved = None
    if figure is not None:
        caption = (
            f"Each method's {d_name} (x) against its {q_name} (y), mean over prompts with 95% intervals; marker area "
            "∝ network evaluations per image; a black ring marks the methods no other beats on diversity, quality "
            "and evaluations at once (the Pareto set; a method only when it is more diverse than the student beyond "
            "its interval)."
        )
        saved = save_figure(
            run_dir, figure, "compare-pareto", "Diversity, quality and cost", caption, written
        )
    return {
        "diversity": d_name,
        "quality": q_name,
        "quality_direction": "higher is better"
        if quality.get("higher_is_better", True)
        else "lower is better",
        "lines": lines,
        "figure": saved,
        "no_clear_winner": NO_CLEAR_WINNER if no_clear_winner(table) else None,
    }


# ---------------------------------------------------------------------------------------------- numbers


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _ci(low: Any, high: Any) -> str:
    if not (is_number(low) and is_number(high)):
        return ""
    return f"[{_num(float(low))}, {_num(float(high))}]"


def _secs(value: Any) -> str:
    if not is_number(value):
        return "—"
    return f"{value:.3g} s" if value < 10 else f"{value:.1f} s"


# ---------------------------------------------------------------------------------------------- tables


def _tables(rows: list[dict[str, Any]], colours: dict[str, str]) -> list[dict[str, Any]]:
    """One table per metric (direction metrics ``…_dir_k`` share one, with a direction column), every row in file
    order; extra columns are those the metric's rows use."""
    by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_metric[metric_stem(str(row["metric"]))].append(row)
    tables = []
    for metric, group in by_metric.items():
        extra: dict[str, None] = {}
        for row in group:
            extra.update(
                dict.fromkeys(
                    k
                    for k, v in row.items()
                    if k not in REQUIRED_COLUMNS and k != "p_value" and v is not None
                )
            )
        has_p = any(row.get("p_value") is not None for row in group)
        tables.append(
            {
                "metric": metric,
                "family": metric_family(group[0]),
                "columns": list(extra),
                "has_p": has_p,
                "open": len(group) <= TABLE_OPEN_ROWS,
                "rows": [
                    {
                        "prompt": str(row["prompt"]),
                        "regime": str(row["regime"]),
                        "colour": colours.get(str(row["regime"]), PALETTE[-1]),
                        "extra": [_num(row.get(k)) if row.get(k) is not None else "" for k in extra],
                        "value": _num(row["value"]),
                        "ci": _ci(row["ci_low"], row["ci_high"]),
                        "n": _num(row["n"]),
                        "p": format_p_value(row.get("p_value")),
                        "significant": is_number(row.get("p_value")) and row["p_value"] < 0.05,
                    }
                    for row in group
                ],
            }
        )
    return tables


def _headline(
    rows: list[dict[str, Any]], regimes: list[str], colours: dict[str, str]
) -> dict[str, Any] | None:
    """Diversity and other per-image metrics averaged over prompts (``(all prompts)`` rows, or the only prompt's
    rows), one line per metric, one column per regime; a LoRA sweep's rows by scale instead
    (:func:`_scale_headline`)."""
    if any(metric_family(r) in ("scale", "ratio") for r in rows):
        return _scale_headline(rows, colours)
    flat = [r for r in rows if metric_family(r) in ("diversity", "other")]
    chosen = [r for r in flat if r["prompt"] == ALL_PROMPTS]
    label = "mean over all prompts"
    if not chosen and len({r["prompt"] for r in flat}) == 1:
        chosen = flat
        label = f"prompt: {flat[0]['prompt']}" if flat else label
    if not chosen:
        return None
    present = [r for r in regimes if any(str(row["regime"]) == r for row in chosen)]
    lines: dict[str, dict[str, dict[str, str]]] = {}
    for row in chosen:
        key = panel_title(row)
        lines.setdefault(key, {})[str(row["regime"])] = {
            "value": _num(row["value"]),
            "ci": _ci(row["ci_low"], row["ci_high"]),
        }
    return {
        "label": label,
        "columns": [{"name": r, "colour": colours[r]} for r in present],
        "lines": [
            {"metric": k, "series": None, "cells": [v.get(r) for r in present]} for k, v in lines.items()
        ],
    }


def _scale_headline(rows: list[dict[str, Any]], colours: dict[str, str]) -> dict[str, Any]:
    """A LoRA sweep at a glance: one column per scale (and one for measures over all scales, e.g. a slope), one
    line per metric and model (or student-over-base ratio), so the page stays as wide as the scales are many."""
    swept = [
        r for r in rows if metric_family(r) in ("scale", "ratio", "other") and r.get("model") is not None
    ]
    prompt = str(swept[0]["prompt"])  # a sweep has one prompt; of several, the tables hold the others
    swept = [r for r in swept if str(r["prompt"]) == prompt]
    scales = sorted({float(r["scale"]) for r in swept if is_number(r.get("scale"))})
    overall = any(not is_number(r.get("scale")) for r in swept)
    keys: list[float | None] = [*scales, *([None] if overall else [])]
    lines: dict[tuple[str, str], dict[float | None, dict[str, str]]] = {}
    for row in swept:
        model = str(row["model"])
        series = model if metric_family(row) == "scale" or row["regime"] == model else str(row["regime"])
        scale = float(row["scale"]) if is_number(row.get("scale")) else None
        lines.setdefault((panel_title(row), series), {})[scale] = {
            "value": _num(row["value"]),
            "ci": _ci(row["ci_low"], row["ci_high"]),
        }
    order: dict[str, int] = {}  # each metric's lines together, metrics in the order they first come
    for metric, _ in lines:
        order.setdefault(metric, len(order))
    return {
        "label": f"prompt: {prompt}",
        "columns": [
            {"name": "all scales" if k is None else f"scale {k:+g}" if k else "scale 0", "colour": None}
            for k in keys
        ],
        "lines": [
            {
                "metric": metric,
                "series": {"name": series, "colour": colours.get(series, PALETTE[-1])},
                "cells": [cells.get(k) for k in keys],
            }
            for (metric, series), cells in sorted(lines.items(), key=lambda item: order[item[0][0]])
        ],
    }


# ---------------------------------------------------------------------------------------------- output


def _environment() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("conceptspace", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(num=_num, secs=_secs)
    return environment


def _remove_stale_assets(assets: Path, written: set[Path]) -> None:
    """Delete files in ``assets/`` that this build did not write (old thumbnails, figures of gone metrics)."""
    if not assets.is_dir():
        return
    keep = {p.resolve() for p in written}
    for path in sorted(assets.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_symlink() or path.is_file():
            if path.resolve() not in keep:
                path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            shutil.rmtree(path)
    if not any(assets.iterdir()):
        assets.rmdir()


def _version() -> str:
    from conceptspace._version import __version__

    return __version__
