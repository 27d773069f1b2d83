"""Image and text embedders behind one small interface: images in, L2-normalised embeddings out.

Every embedder is named by a spec string ``PREFIX:ARGUMENT`` and loaded with :func:`load_embedder`:

==============================================  ===================================================================
``open_clip:ViT-B-32:laion2b_s34b_b79k``        any open_clip model with a pretrained tag (Hugging Face hub cache)
``open_clip:ViT-B-32:/path/to/ckpt.pt``         ... or with a local checkpoint file
``open_clip:hf-hub:org/repo``                   ... or an open_clip repo on the hub (``local-dir:/folder`` too)
``hf-clip:openai/clip-vit-large-patch14``       a transformers ``CLIPModel`` from the hub or a local folder
``dinov2:facebook/dinov2-base``                 a transformers DINOv2 model (image only: the CLS token)
``dreamsim:ensemble``                           DreamSim (``ensemble``, ``dino_vitb16``, ``open_clip_vitb32``,
                                                ``clip_vitb32``); needs ``pip install 'conceptspace[dreamsim]'``
``testbed:...``                                 supplied by :mod:`conceptspace.testbed` via :func:`register_embedder`
==============================================  ===================================================================

Each model is fed through its own preprocessing (open_clip's preprocess transform, the Hugging Face image
processor, DreamSim's resize). Inputs are first turned into 8-bit RGB PIL images, the format those transforms were
built for, so a list of PIL images, a ``uint8`` array ``(N, H, W, 3)``, a float array in [0, 1] (diffusers'
``output_type="np"``) and a float tensor ``(N, 3, H, W)`` in [0, 1] holding the same pixels give the same
embeddings. Embeddings come back as float32 CPU tensors ``(N, D)`` with unit L2 norm, so ``a @ b.T`` is the cosine
similarity and ``1 - a @ b.T`` the cosine distance (for DreamSim: the DreamSim distance itself).

Offline first: with ``HF_HUB_OFFLINE=1`` a model whose files are not cached raises :class:`EmbedderNotFoundError`
naming the repo (or files) and the command that fetches them.

Example:
    >>> embedder = load_embedder("open_clip:ViT-B-32:laion2b_s34b_b79k")     # doctest: +SKIP
    >>> images = embedder.embed_images(pil_images)                            # doctest: +SKIP
    >>> texts = embedder.embed_texts(["a photo of a dog"])                    # doctest: +SKIP
    >>> clip_score = 100 * (images @ texts.T).clamp(min=0)                    # doctest: +SKIP

Modules: :mod:`~conceptspace.embeddings.base` the :class:`Embedder` interface and its errors;
:mod:`~conceptspace.embeddings.images` the accepted image inputs; :mod:`~conceptspace.embeddings.hub` Hugging Face
cache look-ups and the offline errors; one module per backend (:mod:`~conceptspace.embeddings.openclip`,
:mod:`~conceptspace.embeddings.huggingface` for hf-clip and dinov2, :mod:`~conceptspace.embeddings.dreamsim`,
:mod:`~conceptspace.embeddings.pixels`); :mod:`~conceptspace.embeddings.registry` the spec prefixes,
:func:`load_embedder` and :func:`default_embedder`.
"""

from __future__ import annotations

from conceptspace.embeddings.base import (
    EXAMPLE_SPEC,
    Embedder,
    EmbedderNotFoundError,
    EmbedderSpecError,
    MissingDependencyError,
    TextNotSupportedError,
)
from conceptspace.embeddings.dreamsim import (
    DREAMSIM_TYPES,
    DreamSimEmbedder,
    default_dreamsim_dir,
    dreamsim_required_files,
)
from conceptspace.embeddings.huggingface import DINOv2Embedder, HFCLIPEmbedder
from conceptspace.embeddings.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageLike, Images
from conceptspace.embeddings.openclip import OpenCLIPEmbedder
from conceptspace.embeddings.pixels import PixelEmbedder
from conceptspace.embeddings.registry import (
    EmbedderFactory,
    default_embedder,
    embedder_prefixes,
    load_embedder,
    register_embedder,
    resolve_embedder,
)

__all__ = [
    "DREAMSIM_TYPES",
    "EXAMPLE_SPEC",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "DINOv2Embedder",
    "DreamSimEmbedder",
    "Embedder",
    "EmbedderFactory",
    "EmbedderNotFoundError",
    "EmbedderSpecError",
    "HFCLIPEmbedder",
    "ImageLike",
    "Images",
    "MissingDependencyError",
    "OpenCLIPEmbedder",
    "PixelEmbedder",
    "TextNotSupportedError",
    "default_dreamsim_dir",
    "default_embedder",
    "dreamsim_required_files",
    "embedder_prefixes",
    "load_embedder",
    "resolve_embedder",
    "register_embedder",
]
