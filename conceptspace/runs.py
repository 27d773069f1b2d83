"""Prompt-set runs: many prompts × regimes × images into one folder, resumable and sharded across processes.

A run samples every case of a prompt file (the COCO-30k CSV format ``case_number,prompt,evaluation_seed,…`` or
plain text, one prompt per line) in every regime and writes::

    OUT/run.json                     every parameter (a resumed run must match them), versions, schedules
    OUT/<regime>/<case>_<i>.png      image i of a case; its seed is the case's seed + i
    OUT/manifest.jsonl               one JSON line per finished image (prompt, case_number, i, seed, regime,
                                     schedule, seconds); while a run is going, each process appends to its own
                                     OUT/manifest.<rank>.jsonl, merged into manifest.jsonl when the run ends

Crash safety: images are written atomically (temporary file + rename) and an image's manifest line is appended
(flushed and fsynced) only after its file is in place. An image counts as done when both exist; resuming first
reconciles whatever a kill left behind (a truncated last manifest line, an image without its line, a line
without its image, temporary files) and then makes only the missing images.

Reproducibility: every forward pass has exactly ``batch_size`` rows (a short last batch is padded with a copy of
its last sample, whose output is discarded). A sample's numbers depend on the batch *shape* (libraries pick other
kernels for other batch sizes: on the CPU oneDNN's convolutions, and a matrix-vector instead of a matrix-matrix
product for a batch of one) but not on which samples share the batch (measured on the CPU; expected, not yet
measured, on GPUs). So an image is a function of (prompt, seed, batch size) on a given device, dtype, thread count
and library versions: the same files for any number of processes, any case range and any interruption. Another
batch size changes images at float-rounding level (a grey level or so in a few pixels), which is why a run refuses
to resume with another batch size.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from conceptspace.io import (
    atomic_write,
    case_image_name,
    ensure_writable_dir,
    environment_versions,
    write_image,
    write_json,
)
from conceptspace.models import ModelPair
from conceptspace.prompts import Case, read_cases
from conceptspace.sampling import (
    Conditioning,
    Regime,
    decode,
    encode_text,
    latent_size,
    sample_latents,
    schedule_of,
)

RUN_FILE = "run.json"
MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Writes that fail for these reasons are the user's to fix (free space, then --resume), not bugs.
WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}

__all__ = [
    "Case",
    "WorkItem",
    "accelerate_state",
    "process_shard",
    "run_lock",
    "read_cases",
    "entry_key",
    "image_path",
    "read_manifest",
    "run_prompt_set",
    "sample_batch",
    "work_items",
]


# ----------------------------------------------------------------------------------------------------- work list
@dataclass(frozen=True)
class WorkItem:
    """Image ``i`` of a case in one regime: the unit that is sampled, written and listed in the manifest."""

    regime: str
    case: Case
    i: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.regime, self.case.number, self.i)

    @property
    def seed(self) -> int:
        return self.case.seed + self.i

    @property
    def path(self) -> str:
        """The image's path inside the run folder."""
        return image_path(*self.key)


def work_items(cases: Sequence[Case], regimes: Sequence[str], per_prompt: int) -> list[WorkItem]:
    """Every image of a run, regime by regime, case by case: the order shards and the manifest follow."""
    return [WorkItem(regime, case, i) for regime in regimes for case in cases for i in range(per_prompt)]


def process_shard(items: Sequence[WorkItem], index: int, count: int) -> list[WorkItem]:
    """The items process ``index`` of ``count`` makes: item k goes to process k % count."""
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is outside 0..{count - 1}")
    return list(items[index::count])


# ------------------------------------------------------------------------------------------------------ sampling
def sample_batch(
    pair: ModelPair,
    regime: Regime,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    batch_size: int | None = None,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
) -> list[Any]:
    """One PIL image per (prompt, seed) pair, sampled together in one batch of exactly ``batch_size`` rows.

    Prompts may differ within the batch. A short batch is padded by repeating its last sample (the copies are
    discarded), so every forward pass of a run has the same shape — except under a regime that chooses among a
    batch's samples (group inference), where copies would join a prompt's group. With ``batch_size=1`` the image
    equals ``sample(pair, prompt, regime, [seed], batch_size=1)`` bit for bit.
    """
    rows = len(prompts)
    batch_size = batch_size or rows
    if rows != len(seeds):
        raise ValueError(f"{rows} prompts but {len(seeds)} seeds: give one seed per prompt")
    if not 1 <= rows <= batch_size:
        raise ValueError(f"a batch holds 1 to {batch_size} samples, got {rows}")
    selects = len(regime.candidate_seeds([0])) > 1  # a padded copy would be one more member of a group
    padding = 0 if selects else batch_size - rows
    prompts = list(prompts) + [prompts[-1]] * padding
    seeds = [int(s) for s in seeds] + [int(seeds[-1])] * padding
    height = height or pair.default_resolution
    width = width or pair.default_resolution
    latent_shape = latent_size(pair, height, width)
    segments = regime.segments(pair, pair.device, latent_shape)
    cfg = any(den.needs_negative for segment in segments for den in segment.denoisers)
    with torch.no_grad():
        encoded = {
            prompt: encode_text(
                pair, prompt, negative_prompt=negative_prompt, cfg=cfg, height=height, width=width
            )
            for prompt in dict.fromkeys(prompts)
        }
    cond = Conditioning.concatenate([encoded[prompt] for prompt in prompts])
    final = sample_latents(pair, regime, cond, seeds, latent_shape=latent_shape)
    return list(decode(pair, final, "pil"))[:rows]


# ------------------------------------------------------------------------------------------------------ manifest
def _manifest_files(out: Path) -> list[Path]:
    """manifest.jsonl first, then the per-process shards by rank."""
    shards = sorted(out.glob("manifest.*.jsonl"), key=lambda p: (len(p.name), p.name))
    merged = out / MANIFEST
    return ([merged] if merged.is_file() else []) + shards


def _read_manifest_file(path: Path) -> list[dict[str, Any]]:
    """The entries of one manifest file. An unterminated or unreadable *last* line is what a kill during an append
    leaves behind: it is skipped (and dropped at the next consolidation); a broken line before it is an error."""
    lines = path.read_bytes().split(b"\n")
    complete = [(number, line) for number, line in enumerate(lines[:-1], 1) if line.strip()]
    entries = []
    for position, (number, line) in enumerate(complete):
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if position == len(complete) - 1 and not lines[-1].strip():
                break  # the last line, cut short (e.g. a full disk during the append)
            raise ValueError(
                f"{path} line {number} is not valid JSON; delete that line and resume (its image is remade)"
            ) from None
        if not isinstance(entry, dict) or not {"regime", "case_number", "i"} <= set(entry):
            raise ValueError(f"{path} line {number} is not a manifest entry (needs regime, case_number, i)")
        entries.append(entry)
    return entries


def entry_key(entry: dict[str, Any]) -> tuple[str, int, int]:
    return (str(entry["regime"]), int(entry["case_number"]), int(entry["i"]))


def _merged_entries(out: Path) -> dict[tuple[str, int, int], dict[str, Any]]:
    entries: dict[tuple[str, int, int], dict[str, Any]] = {}
    for path in _manifest_files(out):
        for entry in _read_manifest_file(path):
            entries[entry_key(entry)] = entry  # a repeated image (remade after its file was lost): last wins
    return entries


def read_manifest(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifest entries of a run (manifest.jsonl and any per-process shards merged), one per image, sorted by
    regime, case number and image index. A cut-off last line is skipped; `conceptspace run --resume` repairs it."""
    entries = _merged_entries(Path(run_dir))
    return [entries[key] for key in sorted(entries)]


def _consolidate_manifest(out: Path, order: Sequence[WorkItem]) -> list[dict[str, Any]]:
    """Rewrite manifest.jsonl from every manifest file, keeping one entry per image whose file exists, in work
    order, then delete the shards. Safe to interrupt: the merged file is written atomically before any shard
    goes, and entries repeated in both are merged again next time."""
    shards = [path for path in _manifest_files(out) if path.name != MANIFEST]
    entries = _merged_entries(out)
    position = {item.key: index for index, item in enumerate(order)}
    kept = [entry for key, entry in entries.items() if (out / image_path(*key)).is_file()]
    kept.sort(key=lambda entry: (position.get(entry_key(entry), len(position)), entry_key(entry)))
    text = "".join(json.dumps(entry) + "\n" for entry in kept)
    atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    for shard in shards:
        shard.unlink(missing_ok=True)
    return kept


def image_path(regime: str, case_number: int, i: int) -> str:
    """Where image ``i`` of case ``case_number`` lies inside the run folder (:func:`conceptspace.io.case_image_name`)."""
    return f"{regime}/{case_image_name(case_number, i)}"


class _ManifestShard:
    """This process's manifest file: one line per image, each on disk (fsynced) before the next image starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, entry: dict[str, Any]) -> None:
        data = (json.dumps(entry) + "\n").encode("utf-8")
        while data:  # a regular file takes it in one write unless the disk fills up
            written = os.write(self.fd, data)
            data = data[written:]
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _remove_temporary_files(out: Path, regimes: Sequence[str]) -> None:
    """Temporary files of atomic writes that a kill interrupted (io.atomic_write names them .NAME.*.tmp.EXT)."""
    leftovers = [*out.glob(f".{RUN_FILE}.*.tmp.json"), *out.glob(f".{MANIFEST}.*.tmp.jsonl")]
    for regime in regimes:
        leftovers += (out / regime).glob(".*.tmp.png")
    for path in leftovers:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- run folder checks
def _run_parameters(
    pair: ModelPair,
    cases: Sequence[Case],
    regimes: Sequence[Regime],
    *,
    per_prompt: int,
    batch_size: int,
    height: int,
    width: int,
    negative_prompt: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What decides a run's files: a resumed run must have the same (JSON-normalised) values."""
    prompt_set = hashlib.sha256(
        json.dumps([[case.number, case.prompt, case.seed] for case in cases]).encode("utf-8")
    ).hexdigest()
    parameters = {
        "base": pair.base.name,
        "student": pair.student.name if pair.student else None,
        **pair.weights,
        "device_type": pair.device.type,
        "regimes": {regime.name: regime.describe() for regime in regimes},
        "cases": len(cases),
        "case_range": [cases[0].number, cases[-1].number],
        "prompt_set_sha256": prompt_set,
        "per_prompt": per_prompt,
        "batch_size": batch_size,
        "height": height,
        "width": width,
        "negative_prompt": negative_prompt,
        **(extra or {}),
    }
    return json.loads(json.dumps(parameters, default=str))


def _previous_run(out: Path, parameters: dict[str, Any], regimes: Sequence[str], resume: bool) -> bool:
    """Whether ``out`` holds a run to continue; refuse (ValueError) what cannot be continued or overwritten."""
    run_file = out / RUN_FILE
    manifests = out.is_dir() and bool(_manifest_files(out))
    images = any((out / regime).is_dir() and any((out / regime).glob("*.png")) for regime in regimes)
    if not resume:
        if run_file.is_file() or manifests:
            raise ValueError(
                f"{out} holds a previous run: pass --resume (resume=True) to continue it, or choose another --out"
            )
        if images:
            raise ValueError(f"{out} already holds images that no run.json describes: choose another --out")
        return False
    if not run_file.is_file():
        if manifests or images:
            raise ValueError(
                f"{out} holds images but no {RUN_FILE}, so it is not a run to resume: choose another --out"
            )
        return False
    try:
        recorded = json.loads(run_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{run_file} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if recorded.get("command") != "run":
        raise ValueError(
            f"{run_file} was written by `conceptspace {recorded.get('command')}`, not `conceptspace run`: "
            "choose another --out"
        )
    before, now = _flatten(recorded.get("parameters", {})), _flatten(parameters)
    differing = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if differing:
        shown = ", ".join(dict.fromkeys(_difference(key, before, now) for key in differing))
        raise ValueError(
            f"cannot resume {out}: it was started with other parameters ({shown}); resume with the same options, "
            "or choose another --out"
        )
    return True


def _flatten(parameters: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``regimes.hybrid.k``), so that a difference names the exact setting."""
    flat: dict[str, Any] = {}
    for key, value in parameters.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _difference(key: str, before: dict[str, Any], now: dict[str, Any]) -> str:
    if key not in before or key not in now:  # a regime added or left out: name it once, not each field
        return f"{key.rsplit('.', 1)[0]} {'added' if key not in before else 'left out'}"
    if len(repr(before[key])) + len(repr(now[key])) > 80:  # e.g. the prompt set's hash: the key says enough
        return key
    return f"{key}: {before[key]!r} then, {now[key]!r} now"


# ------------------------------------------------------------------------------------------------------- the run
def accelerate_state(device: torch.device) -> Any:
    """accelerate's ``PartialState`` of this process (one process, or one of those ``accelerate launch`` or
    torchrun started); on a CPU device with ``cpu=True``, which makes several CPU processes talk over gloo."""
    from accelerate import PartialState

    # a process that finishes its share early waits at the last barrier for the slowest one, which may take longer
    # than the default timeout of the process group (10 minutes for NCCL)
    return PartialState(cpu=device.type == "cpu", timeout=timedelta(hours=24))


def _process_state(shard: tuple[int, int] | None, device: torch.device) -> tuple[int, int, Any]:
    """(process index, number of processes, accelerate state or None) for this process."""
    if shard is not None:
        index, count = shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
        return index, count, None
    state = accelerate_state(device)
    return state.process_index, state.num_processes, state


def _wait_for_everyone(state: Any) -> None:
    if state is not None:
        state.wait_for_everyone()


def run_prompt_set(
    pair: ModelPair,
    cases: Sequence[Case],
    regimes: Sequence[Regime],
    out_dir: str | os.PathLike,
    *,
    per_prompt: int = 1,
    batch_size: int = 4,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    resume: bool = False,
    progress: bool = True,
    prompts_file: str | os.PathLike | None = None,
    parameters: dict[str, Any] | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Sample ``per_prompt`` images of every case in every regime into ``out_dir`` (layout in the module doc).

    Under ``accelerate launch`` (or torchrun) each process makes its share of the images (item k of the work list
    goes to process k % num_processes); ``shard=(index, count)`` sets the share by hand instead. ``resume=True``
    continues a run in ``out_dir`` (or starts one there): finished images are kept, missing ones made. Without it,
    a folder that holds a run is refused. ``parameters``: more values recorded in run.json (and compared on resume).

    Returns what this process did: ``{"processes": n, "written": {regime: n}, "skipped": n, "pending": n,
    "complete": bool}`` (``complete``: the whole run, as process 0 sees it at the end).
    """
    if not cases:
        raise ValueError("no prompt given: the prompt set is empty")
    if not regimes:
        raise ValueError("no regime given")
    names = [regime.name for regime in regimes]
    if len(set(names)) != len(names):
        raise ValueError(f"regime names repeat ({', '.join(names)}): each regime writes to its own folder")
    repeated = [number for number, n in Counter(case.number for case in cases).items() if n > 1]
    if repeated:
        raise ValueError(
            f"case number {repeated[0]} repeats: each case needs its own number, images are named by it"
        )
    if per_prompt < 1:
        raise ValueError(f"images per prompt must be at least 1, got {per_prompt}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = ensure_writable_dir(out_dir)
    height = height or pair.default_resolution
    width = width or pair.default_resolution
    latent_shape = latent_size(pair, height, width)
    # every regime's schedule now, so that a regime that cannot run on this pair fails before any file exists
    schedules = {regime.name: schedule_of(regime, pair, pair.device, latent_shape) for regime in regimes}
    recorded = _run_parameters(
        pair,
        cases,
        regimes,
        per_prompt=per_prompt,
        batch_size=batch_size,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
        extra=parameters,
    )
    index, count, state = _process_state(shard, pair.device)
    with run_lock(out, index):
        return _run_locked(
            pair,
            cases,
            regimes,
            out,
            recorded,
            schedules,
            index,
            count,
            state,
            per_prompt=per_prompt,
            batch_size=batch_size,
            height=height,
            width=width,
            negative_prompt=negative_prompt,
            resume=resume,
            progress=progress,
            prompts_file=prompts_file,
        )


def run_lock(out_dir: str | os.PathLike, rank: int = 0) -> _RunLock:
    """The lock :func:`run_prompt_set` holds on ``out_dir`` while it works (see :class:`_RunLock`); take it
    earlier, around loading the models too, so that a second process is refused before it loads anything.
    Re-entrant within a process."""
    return _RunLock(Path(out_dir), rank)


class _RunLock:
    """An exclusive lock on ``OUT/.lock.<rank>`` for as long as this process works on the run.

    Processes of one launch have distinct ranks and share the folder by design; a second launch into the same
    folder (a second ``--resume`` started by hand) meets a held lock on its own rank and is refused before it
    writes anything, instead of both appending to the same manifest shard. The kernel drops the lock when the
    process dies, so a killed run never leaves the folder locked. The file is removed when the lock is released
    (a finished run leaves only its results); a process that locked a file just removed sees that the path no
    longer names it and locks the new one instead.
    """

    _held: ClassVar[
        dict[Path, list[Any]]
    ] = {}  # path -> [open handle, depth] of the locks this process holds

    def __init__(self, out: Path, rank: int) -> None:
        self.path = (out / f".lock.{rank}").absolute()
        self.handle: Any = None
        self.created = False

    def __enter__(self) -> _RunLock:
        import fcntl

        if self.path in self._held:  # this process holds it already: a nested use
            self._held[self.path][1] += 1
            return self
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self.handle = self.path.open("a+")
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.handle.seek(0)
                holder = self.handle.read().strip() or "another process"
                self.handle.close()
                raise RunInProgressError(
                    f"{self.path.parent} is in use by {holder}, which is still writing to it: wait for it to "
                    "finish (it completes the run), or give this one another --out"
                ) from None
            if self._names_our_file():
                break
            self.handle.close()  # the holder removed the file between our open and our lock: lock the new one
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"process {os.getpid()} (started {time.strftime('%Y-%m-%d %H:%M:%S')})")
        self.handle.flush()
        self._held[self.path] = [self.handle, 1]
        return self

    def __exit__(self, *exc: object) -> None:
        entry = self._held[self.path]
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[self.path]
            self.path.unlink(
                missing_ok=True
            )  # while still held: whoever locks the old file next sees it is gone
            entry[0].close()  # closing releases the lock
            if self.created and not any(self.path.parent.iterdir()):
                shutil.rmtree(self.path.parent, ignore_errors=True)  # failed before writing: leave no folder

    def _names_our_file(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self.handle.fileno()).st_ino
        except FileNotFoundError:
            return False


class RunInProgressError(ValueError):
    """Another process is writing to the run folder."""


def _run_locked(
    pair: ModelPair,
    cases: Sequence[Case],
    regimes: Sequence[Regime],
    out: Path,
    recorded: dict[str, Any],
    schedules: dict[str, Any],
    index: int,
    count: int,
    state: Any,
    *,
    per_prompt: int,
    batch_size: int,
    height: int,
    width: int,
    negative_prompt: str | None,
    resume: bool,
    progress: bool,
    prompts_file: str | os.PathLike | None,
) -> dict[str, Any]:
    names = [regime.name for regime in regimes]
    items = work_items(cases, names, per_prompt)
    started = time.perf_counter()

    # Every process checks the folder before any of them writes to it; then the first one prepares it.
    previous = _previous_run(out, recorded, names, resume)
    _wait_for_everyone(state)
    run = {
        "command": "run",
        "parameters": recorded,
        "prompts_file": str(Path(prompts_file).absolute()) if prompts_file else None,
        "base": asdict(pair.base),
        "student": asdict(pair.student) if pair.student else None,
        "paths": pair.paths,
        "device": str(pair.device),
        "versions": environment_versions(),
        "schedule": {name: [asdict(step) for step in steps] for name, steps in schedules.items()},
        "images": len(items),
        "complete": False,
    }
    if index == 0:
        if previous:
            _remove_temporary_files(out, names)
            _consolidate_manifest(out, items)
        else:
            write_json(out / RUN_FILE, run)
    _wait_for_everyone(state)

    done = {key for key in _merged_entries(out) if (out / image_path(*key)).is_file()}
    mine = process_shard(items, index, count)
    pending = [item for item in mine if item.key not in done]
    written = _make_images(
        pair,
        regimes,
        pending,
        out,
        schedules,
        rank=index,
        batch_size=batch_size,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
        progress=progress and index == 0,
    )

    _wait_for_everyone(state)
    complete = False
    if index == 0:
        finished = _consolidate_manifest(out, items)
        complete = len(finished) >= len(items) and all((out / item.path).is_file() for item in items)
        write_json(
            out / RUN_FILE,
            {
                **run,
                "complete": complete,
                "finished": len(finished),
                "processes": count,
                "session_seconds": time.perf_counter() - started,
            },
        )
    return {
        "processes": count,
        "written": dict(written),
        "skipped": len(mine) - len(pending),
        "pending": len(pending),
        "complete": complete,
    }


def _make_images(
    pair: ModelPair,
    regimes: Sequence[Regime],
    pending: Sequence[WorkItem],
    out: Path,
    schedules: dict[str, Any],
    *,
    rank: int,
    batch_size: int,
    height: int,
    width: int,
    negative_prompt: str | None,
    progress: bool,
) -> Counter:
    written: Counter = Counter()
    if not pending:
        return written
    shard = _ManifestShard(out / f"manifest.{rank}.jsonl")
    bar = tqdm(total=len(pending), desc="run", unit="img", disable=not progress)
    try:
        for regime in regimes:
            todo = [item for item in pending if item.regime == regime.name]
            compact_schedule = [[step.timestep, step.model] for step in schedules[regime.name]]
            for first in range(0, len(todo), batch_size):
                batch = todo[first : first + batch_size]
                start = time.perf_counter()
                images = sample_batch(
                    pair,
                    regime,
                    [item.case.prompt for item in batch],
                    [item.seed for item in batch],
                    batch_size=batch_size,
                    height=height,
                    width=width,
                    negative_prompt=negative_prompt,
                )
                seconds = (time.perf_counter() - start) / len(batch)
                for item, image in zip(batch, images, strict=True):
                    _write_finished(shard, out, item, image, compact_schedule, seconds, rank)
                    written[item.regime] += 1
                    bar.update(1)
    finally:
        bar.close()
        shard.close()
    return written


def _write_finished(
    shard: _ManifestShard,
    out: Path,
    item: WorkItem,
    image: Any,
    schedule: list[list[Any]],
    seconds: float,
    rank: int,
) -> None:
    """The image first (atomically), then its manifest line: a line always means a complete file."""
    try:
        write_image(out / item.path, image)
        shard.append(
            {
                "regime": item.regime,
                "case_number": item.case.number,
                "i": item.i,
                "seed": item.seed,
                "prompt": item.case.prompt,
                "path": item.path,
                "schedule": schedule,
                "seconds": round(seconds, 6),
                "rank": rank,
            }
        )
    except OSError as error:
        if error.errno in WRITE_ERRORS:
            raise OSError(
                error.errno,
                f"{WRITE_ERRORS[error.errno]} while writing {out / item.path}; finished images are kept: make "
                "room (or make the folder writable), then rerun with --resume",
            ) from error
        raise
