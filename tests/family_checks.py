"""Checks every family's tests share: what the hybrid's networks are called with (seen through forward hooks), and
that x̂0 is recorded at every step."""

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
    handles = [recording(pair.base_network, base_calls), recording(pair.student_network, student_calls)]
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


def check_flow_x0(pair: Any, recording: Recording, prompt: str, seeds: list[int]) -> None:
    """At every step of the student, the x̂0 reported is the network input minus σ times the velocity it
    predicted (σ = t / 1000)."""
    import torch

    calls: list = []
    recorded: list = []
    handle = recording(pair.student_network, calls)
    try:
        sample(
            pair, prompt, Distilled(), seeds, output_type="latent", progress=False, callback=recorded.append
        )
    finally:
        handle.remove()
    assert len(calls) == len(recorded) == pair.spec("student").num_inference_steps
    for (x, t, velocity), info in zip(calls, recorded, strict=True):
        torch.testing.assert_close(info.x0, x - t / 1000 * velocity, rtol=0, atol=1e-5)


def check_x0_recorded(pair: Any, regime: Any, prompt: str, **size: int) -> None:
    """x̂0 is recorded at every step of ``regime`` (finite), and the last one is the sample's final latent."""
    import torch

    result = sample(pair, prompt, regime, [0], output_type="latent", record_x0=True, progress=False, **size)
    trajectory = result.trajectory
    assert trajectory.shape[1] == len(result.schedule) and torch.isfinite(trajectory).all()
    torch.testing.assert_close(trajectory[:, -1], result.latents.float(), rtol=0, atol=1e-5)
