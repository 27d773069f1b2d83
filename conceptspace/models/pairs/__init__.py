"""The registry's entries, one module per family of checkpoints; each module's ``SPECS`` lists its bases, their
students and the tiny random stand-ins the offline tests use. :mod:`conceptspace.models.registry` indexes them."""

from __future__ import annotations

from conceptspace.models.pairs import (
    flux,
    flux2,
    hidream,
    krea2,
    pixart,
    qwenimage,
    sana,
    sd3,
    sd21,
    sdxl,
    testbed,
    zimage,
)
from conceptspace.models.spec import ModelSpec

ALL_SPECS: list[ModelSpec] = [
    spec
    for module in (sdxl, sd21, sd3, flux, flux2, pixart, zimage, qwenimage, sana, krea2, hidream, testbed)
    for spec in module.SPECS
]
"""Every entry, in the order ``conceptspace models`` lists them."""
