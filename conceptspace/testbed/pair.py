"""The testbed's model pair: the miniature Stable Diffusion (registry name ``shapes``) and its DMD-style 4-step
student (``dmd``).

Both ship in ``weights/`` next to this file in diffusers folder format (``weights/shapes/`` is a
``StableDiffusionPipeline`` folder, ``weights/dmd/unet/`` the student's UNet), trained by
:mod:`conceptspace.testbed.train`, and load offline with the library's own loader:

    >>> pair = load_testbed_pair()                                     # doctest: +SKIP
    >>> sample(pair, "a red circle", Distilled(), seeds=range(8))       # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from conceptspace.models import ModelPair, ModelSpec, get_spec, load_pair

__all__ = ["TESTBED_BASE", "TESTBED_DMD", "WEIGHTS_DIR", "load_testbed_pair"]

WEIGHTS_DIR = Path(__file__).parent / "weights"

TESTBED_BASE: ModelSpec = get_spec("shapes")
TESTBED_DMD: ModelSpec = get_spec("dmd")


def load_testbed_pair(
    weights_dir: str | os.PathLike = WEIGHTS_DIR,
    *,
    student: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> ModelPair:
    """The shipped (or ``weights_dir``'s) testbed base + student, loaded offline with :func:`load_pair`."""
    weights_dir = Path(weights_dir)
    return load_pair(
        TESTBED_BASE,
        TESTBED_DMD if student else None,
        dtype=dtype,
        device=device,
        base_path=weights_dir / "shapes",
        student_path=weights_dir / "dmd" if student else None,
    )
