"""Ground truth for a model family whose world is known: a probe that reads each image's factors back.

A package that knows its world registers a :class:`GroundTruth` under the family's name (the testbed registers
``"testbed"``: its probe reads shape, colour and background, size and position). The studies (``compare``,
``transfer``, SliderSpace directions, ``evaluate``, the verdicts) ask :func:`ground_truth_for` and add the probe's
rows where a pair's family has one; nothing else in the library names the testbed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GroundTruth:
    """What a world's probe reads, and the functions that turn its readings into rows.

    ``load_probe(device=None)`` gives a probe whose ``predict(images, probabilities=False)`` maps a uint8 batch
    (n, H, W, 3) to ``{factor: array}`` (class indices for categorical factors, numbers for continuous ones, and
    ``<factor>_probs`` with ``probabilities``). ``fixed_factors(prompt)`` says which levels a prompt fixes and
    refuses words outside the world (ValueError). ``diversity_rows`` / ``paired_difference_rows`` are the world's
    tidy diversity rows from readings; ``classifier(device=None)`` is the Inception Score's classifier there.
    """

    family: str
    categorical: tuple[str, ...]
    """Factors read as classes (``shape``, ``colour`` …)."""
    continuous: tuple[str, ...]
    """Factors read as numbers (``size``, ``x``, ``y`` in pixels)."""
    levels: Mapping[str, tuple[str, ...]]
    """Each factor's levels (a categorical one's in the probe's class order), as prompts name them."""
    diversity_measure: str
    """The measure of the probe's readings that studies rank diversity by (``entropy_shape_colour``)."""
    load_probe: Callable[..., Any]
    fixed_factors: Callable[[str], Mapping[str, Any]]
    diversity_rows: Callable[..., list[dict[str, Any]]]
    paired_difference_rows: Callable[..., list[dict[str, Any]]]
    classifier: Callable[..., Any]

    @property
    def name(self) -> str:
        """How rows name what measured them (their ``embedder`` column)."""
        return f"{self.family} probe"


GROUND_TRUTHS: dict[str, GroundTruth] = {}
"""Every registered ground truth by family name."""

GROUND_TRUTH_PROVIDERS = {"testbed": "conceptspace.testbed"}
"""The module that registers each known family's ground truth, imported on first use."""


def register_ground_truth(truth: GroundTruth) -> None:
    """Make ``truth`` the ground truth of pairs of its family."""
    GROUND_TRUTHS[truth.family] = truth


def ground_truth_for(family: str) -> GroundTruth | None:
    """The ground truth of a model family (a pair's ``pair.base.family``), or None when its world is unknown."""
    if family not in GROUND_TRUTHS and family in GROUND_TRUTH_PROVIDERS:
        importlib.import_module(GROUND_TRUTH_PROVIDERS[family])
    return GROUND_TRUTHS.get(family)


__all__ = [
    "GROUND_TRUTHS",
    "GROUND_TRUTH_PROVIDERS",
    "GroundTruth",
    "ground_truth_for",
    "register_ground_truth",
]
