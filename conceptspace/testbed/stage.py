"""What every testbed training stage shares: seeding and noise draws, the batch stream, loss logging, checkpoints
and saving (atomically, through :func:`conceptspace.io.atomic_write_folder`)."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptspace.io import atomic_write_folder, write_json
from conceptspace.testbed.data import ShapesDataset


class TrainingLog:
    """Loss logging: a line every ``every`` steps (stdout, flushed) and the full history for the stage's json."""

    def __init__(self, stage: str, steps: int, every: int = 50, quiet: bool = False) -> None:
        self.stage, self.steps, self.every, self.quiet = stage, steps, every, quiet
        self.history: list[dict[str, float]] = []
        self.start = time.perf_counter()
        self.before = 0.0  # seconds spent before a resume
        self._acc: dict[str, list[float]] = {}

    def __call__(self, step: int, **losses: float) -> None:
        for k, v in losses.items():
            self._acc.setdefault(k, []).append(float(v))
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            row = {"step": step + 1, "seconds": round(self.seconds, 1)}
            row.update({k: float(np.mean(v)) for k, v in self._acc.items()})
            self.history.append(row)
            self._acc = {}
            if not self.quiet:
                text = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step", "seconds"))
                print(f"[{self.stage}] step {step + 1}/{self.steps} {row['seconds']}s {text}", flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start + self.before

    def state(self) -> dict[str, Any]:
        return {"history": self.history, "seconds": self.seconds}

    def restore(self, state: dict[str, Any]) -> None:
        self.history, self.before = state["history"], state["seconds"]


def save_model(model: Any, out_dir: str | os.PathLike, *, fp16: bool = True) -> Path:
    # half()/float(), not to(dtype): diffusers warns on to(dtype) about float32 modules even when there are none
    model = copy.deepcopy(model).to("cpu")
    model = model.half() if fp16 else model.float()
    return atomic_write_folder(out_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))


def write_stage_log(out_dir: Path, stage: str, seed: int, steps: int, log: TrainingLog, **extra: Any) -> None:
    write_json(
        out_dir / "training_log.json",
        {
            "stage": stage,
            "seed": seed,
            "steps": steps,
            "seconds": round(log.seconds, 1),
            **extra,
            "history": log.history,
        },
    )


def _rng_state(gen: torch.Generator, rng: np.random.Generator) -> dict[str, Any]:
    return {"gen": gen.get_state(), "rng": json.dumps(rng.bit_generator.state)}


def _restore_rng(state: dict[str, Any], gen: torch.Generator, rng: np.random.Generator) -> None:
    gen.set_state(state["gen"])
    rng.bit_generator.state = json.loads(state["rng"])


class Checkpoint:
    """A stage's training state every ``every`` steps, beside its output folder, so a killed stage resumes.

    Saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``: state dicts, generator states
    and the log history only. Resuming continues the same data stream and random draws, so a resumed stage gives
    the same weights as an uninterrupted one. The file is removed when the stage's output is saved.
    """

    def __init__(self, out_dir: str | os.PathLike, every: int | None) -> None:
        out_dir = Path(out_dir)
        self.path = out_dir.parent / f".{out_dir.name}.checkpoint.pt"
        self.every = every

    def load(self) -> dict[str, Any] | None:
        if not self.every or not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def due(self, step: int, steps: int) -> bool:
        return bool(self.every) and (step + 1) % self.every == 0 and step + 1 < steps

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def resume(
        self, stateful: dict[str, Any], gen: torch.Generator, rng: np.random.Generator, log: TrainingLog
    ) -> int:
        """Restore a saved state into ``stateful`` (state dicts by key), the generators and the log; the number of
        steps already done (0 without a checkpoint)."""
        if (state := self.load()) is None:
            return 0
        for key, module in stateful.items():
            module.load_state_dict(state[key])
        _restore_rng(state, gen, rng)
        log.restore(state)
        return state["step"]

    def save_if_due(
        self,
        step: int,
        steps: int,
        stateful: dict[str, Any],
        gen: torch.Generator,
        rng: np.random.Generator,
        log: TrainingLog,
    ) -> None:
        """After ``step``: save everything :meth:`resume` restores, every ``every`` steps."""
        if self.due(step, steps):
            state = {key: module.state_dict() for key, module in stateful.items()}
            self.save({"step": step + 1, **state, **log.state(), **_rng_state(gen, rng)})


def setup_stage(seed: int, num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)


def randn(shape: Sequence[int], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Normal noise drawn on the CPU generator, then moved: the same numbers on every device."""
    return torch.randn(tuple(shape), generator=gen).to(device)


def randint(low: int, high: int, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=gen).to(device)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: Iterable[torch.Tensor]) -> None:
    """One update on ``loss``, with the gradients of ``params`` clipped to norm 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


class _BatchRange(torch.utils.data.Dataset):
    """Batches ``first … first + count − 1`` of a :class:`ShapesDataset`, for a prefetching ``DataLoader``."""

    def __init__(self, data: ShapesDataset, first: int, count: int) -> None:
        self.data, self.first, self.count = data, first, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str]]:
        batch = self.data.batch(self.first + index)
        return batch.images, batch.captions


def batch_stream(data: ShapesDataset, first: int, count: int, workers: int) -> Any:
    """``(images, captions)`` of batches ``first …`` in order; rendered by ``workers`` processes ahead of the
    training loop (0: in the loop). Each batch is a function of its index, so the stream is the same either way."""
    return torch.utils.data.DataLoader(
        _BatchRange(data, first, count),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=8 if workers else None,
        persistent_workers=False,
    )
