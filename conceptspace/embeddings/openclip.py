"""open_clip models as embedders (``open_clip:MODEL:TAG``, a checkpoint file, ``hf-hub:`` or ``local-dir:``), with
the checks that find missing weights before open_clip tries to download them."""

from __future__ import annotations

import difflib
import inspect
import os
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from conceptspace.embeddings.base import Embedder, EmbedderNotFoundError, EmbedderSpecError
from conceptspace.embeddings.hub import cache_dir_option, hub_cache_location, is_cached, looks_like_path
from conceptspace.embeddings.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resize_and_normalise
from conceptspace.io import first_line
from conceptspace.models import hub_offline

_OPEN_CLIP_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_OPEN_CLIP_WEIGHTS = "open_clip_pytorch_model.bin"


def _safetensors_alternatives(filename: str) -> list[str]:
    """The files open_clip tries before ``filename`` (mirrors ``open_clip.pretrained._get_safe_alternatives``)."""
    if filename == _OPEN_CLIP_WEIGHTS:
        return ["open_clip_model.safetensors"]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors"]
    return []


class OpenCLIPEmbedder(Embedder):
    """An open_clip model: ``open_clip:MODEL:TAG``, ``open_clip:MODEL:/path/to/checkpoint``, or
    ``open_clip:hf-hub:org/repo`` / ``open_clip:local-dir:/folder``. Images go through the model's own validation
    transform; texts through ``open_clip.get_tokenizer(MODEL)``."""

    has_text = True

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        *,
        name: str,
        cache_dir: str | os.PathLike | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        import open_clip

        self.model_name = model_name
        self.pretrained = pretrained
        self.cache_dir = os.fspath(cache_dir) if cache_dir else None
        pretrained = self._check_available(open_clip, model_name, pretrained)
        if self.dtype not in _OPEN_CLIP_PRECISION:
            raise ValueError(f"open_clip runs in float32, float16 or bfloat16, not {self.dtype}")
        precision = _OPEN_CLIP_PRECISION[self.dtype]
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name,
                pretrained=pretrained,
                precision=precision,
                device=self.device,
                cache_dir=self.cache_dir,
            )
        except (RuntimeError, OSError) as error:
            # open_clip reports a failed download as RuntimeError("Failed to download weights ...").
            if self._hub_file is None or not re.search(r"download|hf hub", str(error), re.IGNORECASE):
                raise
            raise self._missing_error(first_line(error)) from error
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self._input_dtype = open_clip.get_input_dtype(precision) or torch.float32
        self.dim = getattr(model.visual, "output_dim", None)
        self._tokenizer: Any = None

    def _check_available(self, open_clip: Any, model_name: str, pretrained: str | None) -> str | None:
        """Validate the model/tag/path before anything is built; raise the offline error when weights are absent."""
        self._hub_file: tuple[str, str] | None = None
        if model_name.startswith(("hf-hub:", "local-dir:")):
            schema, _, identifier = model_name.partition(":")
            if schema == "local-dir" and not os.path.isdir(os.path.expanduser(identifier)):
                raise EmbedderNotFoundError(
                    f"embedder {self.name!r}: open_clip folder {identifier} does not exist"
                )
            if schema == "hf-hub":
                self._hub_file = (identifier, "open_clip_config.json")
                if hub_offline() and not is_cached(identifier, "open_clip_config.json", self.cache_dir):
                    raise self._missing_error()
            return None
        if model_name.replace("/", "-") not in open_clip.list_models():
            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5)
            raise EmbedderSpecError(
                f"embedder {self.name!r}: open_clip has no model {model_name!r}"
                + (f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()")
            )
        if not pretrained:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise EmbedderSpecError(
                f"embedder {self.name!r} names no weights: use 'open_clip:{model_name}:TAG' (tags: "
                f"{', '.join(tags) or 'none'}) or 'open_clip:{model_name}:/path/to/checkpoint.pt'"
            )
        config = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not config:
            path = os.path.expanduser(pretrained)
            if os.path.isfile(path):
                return path
            if looks_like_path(pretrained) or os.path.exists(path):
                raise EmbedderNotFoundError(
                    f"embedder {self.name!r}: checkpoint file {pretrained} does not exist"
                )
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise EmbedderSpecError(
                f"embedder {self.name!r}: {pretrained!r} is neither a pretrained tag of {model_name} (tags: "
                f"{', '.join(tags) or 'none'}) nor an existing checkpoint file"
            )
        if config.get("file"):
            return pretrained
        if config.get("hf_hub"):
            # open_clip's convention: "org/name/file" names a file, "org/name/" the default weights file.
            repo_id, filename = os.path.split(config["hf_hub"])
            filename = filename or _OPEN_CLIP_WEIGHTS
            self._hub_file = (repo_id, filename)
            candidates = [*_safetensors_alternatives(filename), filename]
            if hub_offline() and not any(is_cached(repo_id, f, self.cache_dir) for f in candidates):
                raise self._missing_error()
        elif config.get("url") and hub_offline():
            url = config["url"]
            folder = Path(self.cache_dir or "~/.cache/clip").expanduser()
            if not (folder / os.path.basename(url)).is_file():
                raise EmbedderNotFoundError(
                    f"embedder {self.name!r} needs {os.path.basename(url)} in {folder}, and HF_HUB_OFFLINE=1 forbids "
                    f"downloading it: fetch {url} into that folder, or pass a local checkpoint: "
                    f"'open_clip:{model_name}:/path/to/checkpoint.pt'"
                )
        return pretrained

    def _missing_error(self, detail: str = "") -> EmbedderNotFoundError:
        assert self._hub_file is not None
        repo_id, filename = self._hub_file
        reason = "HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline() else "it could not be downloaded"
        alternatives = _safetensors_alternatives(filename)
        files = filename + (f" (or {alternatives[0]})" if alternatives else "")
        command = f"hf download {repo_id} {filename}{cache_dir_option(self.cache_dir)}"
        local = f"a local checkpoint: 'open_clip:{self.model_name}:/path/to/checkpoint.pt'"
        if filename == "open_clip_config.json":  # the hf-hub: form, a whole open_clip repo
            files = "its open_clip config and weights"
            command = f"hf download {repo_id}{cache_dir_option(self.cache_dir)}"
            local = "a local copy of the repo: 'open_clip:local-dir:/path/to/folder'"
        message = (
            f"embedder {self.name!r} needs {files} from the Hugging Face repo {repo_id}, which is not in the cache at "
            f"{hub_cache_location(self.cache_dir)} and {reason}. Fetch it with `{command}`, or pass {local}."
        )
        return EmbedderNotFoundError(message + (f" ({detail})" if detail else ""))

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            import open_clip

            kwargs = {}
            if "cache_dir" in inspect.signature(open_clip.get_tokenizer).parameters:
                kwargs["cache_dir"] = self.cache_dir
            self._tokenizer = open_clip.get_tokenizer(self.model_name, **kwargs)
        return self._tokenizer

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(image) for image in images])
        return self.model.encode_image(pixels.to(self.device, self._input_dtype))

    def _embed_pixel_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = getattr(self.model.visual, "image_mean", None) or OPENAI_CLIP_MEAN
        std = getattr(self.model.visual, "image_std", None) or OPENAI_CLIP_STD
        return self.model.encode_image(resize_and_normalise(pixels, size, mean, std).to(self._input_dtype))

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))
