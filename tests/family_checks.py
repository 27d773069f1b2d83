"""Checks every family's tests share: what the hybrid's networks are called with, seen through forward hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conceptspace import Distilled, Hybrid, sample

Recording = Callable[[Any, list], Any]
"""``recording(network, calls)`` registers a forward hook appending ``(input, scheduler timestep, output)``."""


def check_hybrid_hand_off(pair: Any, recording: Recording, prompt: str, seeds: list[int]) -> None:
    """The hybrid runs the base once, in one pass (base guidance 0), at the student's first timestep, and the
    student at the rest of its own."""
    base_calls: list = []
    student_calls: list = []
    handles = [recording(pair.base_unet, base_calls), recording(pair.student_unet, student_calls)]
    try:
        result = sample(pair, prompt, Hybrid(k=1), seeds, output_type="latent", progress=False)
    finally:
        for handle in handles:
            handle.remove()
    expected = [float(s.timestep) for s in sample(pair, prompt, Distilled(), [0], progress=False).schedule]
    assert [t for _, t, _ in base_calls] == pytest.approx(expected[:1], abs=0.5)
    assert base_calls[0][0].shape[0] == len(seeds)  # one pass: no unconditional half
    assert [t for _, t, _ in student_calls] == pytest.approx(expected[1:], abs=0.5)
    assert [s.model for s in result.schedule] == ["base"] + ["distilled"] * (len(expected) - 1)
