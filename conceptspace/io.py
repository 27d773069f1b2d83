"""Files out: every write is atomic (temporary file + rename), so an interrupted run never leaves a
half-written file that looks complete."""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename.

    The file gets the mode a plain ``open()`` would give it (0666 less the umask; temporary files are 0600), and
    a folder at ``path`` is refused rather than replaced."""
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(
            f"{path} is a folder; a file is to be written there: remove it or choose another name"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_folder(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_folder)`` and move the folder to ``path`` by renames; an existing folder is replaced only
    once the new one is complete."""
    import shutil

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(
            f"{path} is a file; a folder is to be written there: remove it or choose another name"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write(tmp)
        mask = _umask()
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700 folders
        for file in tmp.rglob("*"):
            if file.is_file():
                os.chmod(file, 0o666 & ~mask)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_image(path: str | os.PathLike, image: Any) -> Path:
    """Save a PIL image atomically (format from the final suffix)."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    return str(value)


def environment_versions() -> dict[str, str]:
    """Versions of the packages that decide numerical results, for run.json."""
    import diffusers
    import torch
    import transformers

    from conceptspace._version import __version__

    versions = {
        "conceptspace": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        versions["gpu"] = torch.cuda.get_device_name()
    return versions


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Check that ``path`` can be created (or is) a folder we can write to, with a clear error otherwise.

    Nothing is created: a command that fails later (say, a model that is not downloaded) leaves no empty folder.
    """
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PermissionError(f"cannot write to output folder {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to output folder {path}: {existing} is not writable")
    return path


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none), for one-line error messages."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def torch_load_error(file: str | os.PathLike, error: BaseException) -> str:
    """What went wrong when ``torch.load(file, weights_only=True)`` raised ``error``, in our words.

    torch's own message for a refused pickle advises re-running with ``weights_only=False``, which would run the
    file's code: that advice never reaches the user. A truncated or corrupt file is named as such."""
    import pickle

    if isinstance(error, pickle.UnpicklingError) and _is_pickle_stream(file):
        return (
            f"{file} cannot be read with torch.load(weights_only=True): it holds pickled Python objects, not only "
            "tensors, and unpickling them could run code, which is refused. Get a .safetensors version of it, or "
            "convert it to .safetensors yourself only where you trust its source"
        )
    # torch wraps the unpickler's own complaint ("Unsupported operand 110") in advice that does not apply here.
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    lines = str(error).strip().splitlines()
    if unpickler:
        detail = unpickler.group(1).strip()
    elif lines:
        detail = lines[0].split(". This is an internal")[0]
    else:
        detail = type(error).__name__
    return f"{file} is not a readable checkpoint ({detail}): it is truncated or corrupt; download or export it again"


def _is_pickle_stream(file: str | os.PathLike) -> bool:
    """Whether ``file`` holds a complete pickle (bare, or torch.save's zip with its data.pkl), read as opcodes only:
    nothing is unpickled, so nothing in it runs. Garbage and truncated files are not pickle streams."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return False
                data = archive.read(name)
        else:
            data = Path(file).read_bytes()
        ops = list(pickletools.genops(data))
    except Exception:  # any parse failure means "not a pickle"
        return False
    return bool(ops) and ops[-1][0].name == "STOP"


# ---------------------------------------------------------------------------------------------------- file names
STRIP_PREFIX = "trajectory_"
"""An x̂0 strip is named after its image with this prefix."""
_IMAGE_NAME = re.compile(r"(\d+)_(-?\d+)\.png")


def image_name(prompt_index: int, seed: int) -> str:
    """File name of image ``seed`` of prompt number ``prompt_index`` inside its regime folder."""
    return f"{prompt_index:03d}_{seed}.png"


def case_image_name(case_number: int, index: int) -> str:
    """File name of image ``index`` of case ``case_number`` of a prompt set (``conceptspace run``): cases number in
    the thousands, so the name is not padded; :func:`parse_image_name` reads it as ``(case, index)``."""
    return f"{case_number}_{index}.png"


def strip_name(prompt_index: int, seed: int) -> str:
    """File name of the x̂0 strip of image ``seed`` of prompt number ``prompt_index``."""
    return STRIP_PREFIX + image_name(prompt_index, seed)


def parse_image_name(file_name: str) -> tuple[int, int] | None:
    """``(prompt number, seed)`` of a name :func:`image_name` or :func:`strip_name` wrote (a prompt set's
    ``<case>_<i>.png`` reads as ``(case, i)``); None for any other name."""
    match = _IMAGE_NAME.fullmatch(file_name.removeprefix(STRIP_PREFIX))
    return (int(match.group(1)), int(match.group(2))) if match else None


def scale_label(scale: float) -> str:
    """``0``, ``+1``, ``-0.5``: the scale as it appears in folder and regime names."""
    return "0" if scale == 0 else f"{scale:+g}"


def scale_grid(images_by_row: dict[Any, list[Any]], columns: Sequence[Any], title: str) -> Any:
    """One image: one row per key of ``images_by_row`` (a scale or a model name, labelled at the left), one
    column per entry of ``columns`` (seeds or scales, labelled on top)."""
    from PIL import Image, ImageDraw

    def label(key: Any) -> str:
        return scale_label(key) if isinstance(key, (int, float)) else str(key)[:8]

    first = next(iter(images_by_row.values()))[0]
    w, h = (
        max(side, 64) for side in first.size
    )  # small images (the testbed's 32²) are enlarged to stay legible
    margin_left, margin_top = 48, 14
    grid = Image.new("RGB", (margin_left + w * len(columns), margin_top + h * len(images_by_row)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((2, 1), title[:8], fill="black")
    for j, column in enumerate(columns):
        draw.text((margin_left + j * w + 2, 1), label(column), fill="black")
    for i, (key, images) in enumerate(images_by_row.items()):
        draw.text((2, margin_top + i * h + h // 2 - 5), label(key), fill="black")
        for j, image in enumerate(images):
            cell = image.convert("RGB").resize((w, h), Image.NEAREST)
            grid.paste(cell, (margin_left + j * w, margin_top + i * h))
    return grid
