"""Where embedder weights come from: Hugging Face cache look-ups, local paths told apart from repo ids, and the
offline errors that name what to fetch and the command that fetches it."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence

from conceptspace.embeddings.base import EmbedderNotFoundError, EmbedderSpecError
from conceptspace.models import hub_offline

_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def cache_dir_option(cache_dir: str | os.PathLike | None) -> str:
    """`` --cache-dir DIR`` for an ``hf download`` command when a cache other than the default is read."""
    return f" --cache-dir {shlex.quote(os.fspath(cache_dir))}" if cache_dir else ""


def hub_cache_location(cache_dir: str | os.PathLike | None) -> str:
    """The Hugging Face hub cache folder that is read: ``cache_dir``, else ``HF_HUB_CACHE``."""
    from huggingface_hub import constants

    return os.fspath(cache_dir) if cache_dir else constants.HF_HUB_CACHE


def is_cached(repo_id: str, filename: str, cache_dir: str | os.PathLike | None) -> bool:
    """Whether one file of a hub repo is in the cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir), str)


def looks_like_path(text: str) -> bool:
    """Whether a spec argument is meant as a file system path (a hub repo id is ``name`` or ``org/name``)."""
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or bool(re.match(r"[A-Za-z]:[\\/]", text))
        or text.count("/") > 1
        or text.endswith((".pt", ".pth", ".bin", ".safetensors", ".tar"))
    )


def resolve_hf_source(
    source: str, spec: str, cache_dir: str | os.PathLike | None, required: Sequence[str]
) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is a local folder); raises when offline and not cached."""
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        return expanded, True
    if looks_like_path(source) or not _REPO_ID.fullmatch(source):
        if os.path.exists(expanded):
            raise EmbedderNotFoundError(f"embedder {spec!r}: {source} is a file, not a model folder")
        if looks_like_path(source):
            raise EmbedderNotFoundError(f"embedder {spec!r}: local model folder {source} does not exist")
        raise EmbedderSpecError(
            f"embedder {spec!r}: {source!r} is neither a hub repo id (org/name) nor an existing local folder"
        )
    if hub_offline():
        missing = [name for name in required if not is_cached(source, name, cache_dir)]
        if not any(is_cached(source, name, cache_dir) for name in _HF_WEIGHT_FILES):
            missing.append("model.safetensors")
        if missing:
            raise hf_missing_error(spec, source, cache_dir, f"missing {', '.join(missing)}")
    return source, False


def hf_missing_error(
    spec: str, repo_id: str, cache_dir: str | os.PathLike | None, detail: str = ""
) -> EmbedderNotFoundError:
    """The error for a hub repo that is neither cached nor downloadable, with the command that fetches it."""
    reason = "HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline() else "it could not be downloaded"
    command = f"hf download {repo_id} --include '*.json' '*.txt' '*.safetensors'{cache_dir_option(cache_dir)}"
    prefix = spec.split(":", 1)[0]
    message = (
        f"embedder {spec!r} needs {repo_id}, which is not in the Hugging Face cache at "
        f"{hub_cache_location(cache_dir)} and {reason}. Fetch it with `{command}` (configs, tokenizer files and "
        f"safetensors weights), or give a local folder: '{prefix}:/path/to/folder'."
    )
    return EmbedderNotFoundError(message + (f" ({detail})" if detail else ""))
