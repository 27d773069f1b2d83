"""The factor probe: a small CNN that reads shape, colour, size, position and background from any 32×32 image.

It turns generated images into factors, so a model's diversity can be measured against the world's ground truth
(:mod:`conceptspace.testbed.diversity`). Trained on freshly rendered images (:mod:`conceptspace.testbed.data`)
with mild noise, blur and colour jitter, so that slightly imperfect samples still read correctly.

Architecture: the image plus two coordinate channels (CoordConv, so the network can regress position), four 3×3
convolutions with batch norm (32 → 32 → 64 → 64 channels, three of them stride 2: 32 → 4 pixels), one hidden
layer of 128, and heads: classification for shape, colour and background, regression for size, x and y.
About 200,000 parameters; it runs channels-last on the CPU.

Files: ``model.safetensors`` (the state dict, float16; no pickle) and ``config.json`` (architecture, the world it
was trained on, training settings and held-out accuracy). The shipped probe lives in ``weights/probe/`` next to
this file and loads offline with :func:`load_probe`.

Example:
    >>> probe = load_probe()                                   # the shipped weights, CPU
    >>> out = probe.predict(images)                            # doctest: +SKIP
    >>> out["shape"], out["size"]                              # doctest: +SKIP
    (array([0, 2, ...]), array([5.13, 8.92, ...]))             # indices into SHAPES, radii in pixels
    >>> factor_diversity(probe.predict_factors(images))        # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from conceptspace.io import atomic_write, write_json
from conceptspace.testbed.data import (
    CATEGORICAL,
    CONTINUOUS,
    FACTORS,
    IMAGE_SIZE,
    LEVELS,
    SIZE_RANGE,
    FactorBatch,
    named_levels,
    render,
    sample_factors,
    to_tensor,
)

__all__ = [
    "PROBE_DIR",
    "Augment",
    "FactorProbe",
    "ProbeConfig",
    "evaluate_probe",
    "load_probe",
    "train_probe",
]

PROBE_DIR = Path(__file__).parent / "weights" / "probe"
"""Where the shipped probe's ``model.safetensors`` and ``config.json`` live."""
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "conceptspace-testbed-probe"

# regression targets are standardised: (value - centre) / scale
_CENTRE = {"size": sum(SIZE_RANGE) / 2, "x": IMAGE_SIZE / 2, "y": IMAGE_SIZE / 2}
_SCALE = {"size": (SIZE_RANGE[1] - SIZE_RANGE[0]) / 2, "x": IMAGE_SIZE / 4, "y": IMAGE_SIZE / 4}


@dataclass(frozen=True)
class ProbeConfig:
    """Architecture of a :class:`FactorProbe`."""

    channels: tuple[int, int, int] = (32, 32, 64)
    hidden: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != 3 or min(self.channels) < 1 or self.hidden < 1:
            raise ValueError(f"channels must be three positive ints and hidden positive, got {self}")


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class FactorProbe(nn.Module):
    """Reads the six factors of 32×32 images (see the module docstring for the architecture).

    ``forward`` takes ``float (n, 3, 32, 32)`` in [-1, 1] and returns raw outputs: logits per categorical factor and
    standardised regressions; :meth:`predict` is the user-facing call.
    """

    def __init__(self, config: ProbeConfig | None = None) -> None:
        super().__init__()
        self.config = config or ProbeConfig()
        # config.json's contents when loaded, the training settings when trained
        self.metadata: dict[str, Any] = {}
        c1, c2, c3 = self.config.channels
        self.features = nn.Sequential(
            _block(5, c1, 2),  # RGB + two coordinate channels → 16×16
            _block(c1, c2, 1),
            _block(c2, c3, 2),  # 8×8
            _block(c3, c3, 2),  # 4×4
            nn.Flatten(),
            nn.Linear(c3 * (IMAGE_SIZE // 8) ** 2, self.config.hidden),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict(
            {name: nn.Linear(self.config.hidden, len(LEVELS[name])) for name in CATEGORICAL}
        )
        self.regression = nn.Linear(self.config.hidden, len(CONTINUOUS))
        ramp = torch.linspace(-1.0, 1.0, IMAGE_SIZE)
        coordinates = torch.stack(
            [ramp[None, :].expand(IMAGE_SIZE, -1), ramp[:, None].expand(-1, IMAGE_SIZE)]
        )
        self.register_buffer("coordinates", coordinates[None], persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"the probe reads (n, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) images, got {tuple(images.shape)}"
            )
        coordinates = self.coordinates.to(images.dtype).expand(len(images), -1, -1, -1)
        x = torch.cat([images, coordinates], dim=1).contiguous(memory_format=torch.channels_last)
        hidden = self.features(x)
        out = {name: head(hidden) for name, head in self.heads.items()}
        out["regression"] = self.regression(hidden)
        return out

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------------------------
    # inference

    @torch.no_grad()
    def predict(
        self,
        images: Any,
        *,
        value_range: tuple[float, float] = (-1.0, 1.0),
        batch_size: int = 1024,
        probabilities: bool = False,
    ) -> dict[str, np.ndarray]:
        """The factors of ``images`` as numpy arrays, keyed like :meth:`FactorBatch.as_dict`.

        ``images``: ``uint8`` ``(n, 32, 32, 3)`` or ``(n, 3, 32, 32)`` (array or tensor), or float ``(n, 3, 32, 32)``
        with values in ``value_range`` (default [-1, 1], the diffusion models' convention; pass ``(0, 1)`` for
        diffusers' ``output_type="pt"``; values outside are clamped). Categorical factors come back as ``int64`` indices into
        :data:`~conceptspace.testbed.data.LEVELS`, size/x/y as ``float64`` pixels; with ``probabilities=True``
        also ``"<factor>_probs"`` ``(n, levels)`` softmax arrays.
        """
        x = _as_input(images, value_range)
        was_training = self.training
        self.eval()
        parts: dict[str, list[np.ndarray]] = {}
        try:
            for start in range(0, len(x), batch_size):
                batch = x[start : start + batch_size].to(self.device, next(self.parameters()).dtype)
                for key, value in self._decode(self(batch), probabilities).items():
                    parts.setdefault(key, []).append(value)
        finally:
            self.train(was_training)
        if not parts:
            return self._decode(self._empty_output(), probabilities)
        return {key: np.concatenate(values) for key, values in parts.items()}

    def predict_factors(self, images: Any, **options: Any) -> FactorBatch:
        """:meth:`predict` as a :class:`FactorBatch` (for ``named_levels``, ``matches``, diversity measures)."""
        out = self.predict(images, **options)
        return FactorBatch(**{name: out[name] for name in FACTORS})

    def _decode(self, out: Mapping[str, torch.Tensor], probabilities: bool) -> dict[str, np.ndarray]:
        decoded: dict[str, np.ndarray] = {}
        for name in CATEGORICAL:
            logits = out[name].float()
            decoded[name] = logits.argmax(dim=1).cpu().numpy().astype(np.int64)
            if probabilities:
                decoded[f"{name}_probs"] = logits.softmax(dim=1).cpu().numpy()
        regression = out["regression"].double().cpu().numpy()
        for j, name in enumerate(CONTINUOUS):
            decoded[name] = regression[:, j] * _SCALE[name] + _CENTRE[name]
        return {key: decoded[key] for key in [*FACTORS, *sorted(k for k in decoded if k not in FACTORS)]}

    def _empty_output(self) -> dict[str, torch.Tensor]:
        out = {name: torch.zeros(0, len(LEVELS[name])) for name in CATEGORICAL}
        out["regression"] = torch.zeros(0, len(CONTINUOUS))
        return out

    # ------------------------------------------------------------------------------------------------------------
    # files

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float16,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``model.safetensors`` (floating tensors in ``dtype``) and ``config.json`` (with ``metadata``, e.g.
        training settings and evaluation) into ``directory``, each atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        state = {
            key: (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous()
            for key, value in self.state_dict().items()
        }
        atomic_write(
            directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"})
        )
        config = {
            "format": FORMAT,
            "version": 1,
            "architecture": asdict(self.config),
            "levels": {name: list(LEVELS[name]) for name in FACTORS},
            "regression": {name: {"centre": _CENTRE[name], "scale": _SCALE[name]} for name in CONTINUOUS},
            "image_size": IMAGE_SIZE,
            "input": "float (n, 3, 32, 32) in [-1, 1]",
            "weights_dtype": str(dtype).removeprefix("torch."),
            **dict(metadata or {}),
        }
        write_json(directory / CONFIG_NAME, config)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike | None = None, *, device: str | torch.device | None = None
    ) -> FactorProbe:
        """Load a probe saved by :meth:`save_pretrained` (default: the shipped one), in float32, in eval mode."""
        from safetensors.torch import load_file

        directory = Path(directory) if directory is not None else PROBE_DIR
        weights, config_path = directory / WEIGHTS_NAME, directory / CONFIG_NAME
        for path in (weights, config_path):
            if not path.is_file():
                hint = (
                    "the shipped probe is missing from the package; rebuild it with "
                    f"`python -m conceptspace.testbed.probe --out {PROBE_DIR}`"
                    if directory == PROBE_DIR
                    else "train one with conceptspace.testbed.probe.train_probe(...).save_pretrained(dir)"
                )
                raise FileNotFoundError(f"no probe file {path}: {hint}")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("format") != FORMAT:
            raise ValueError(f"{config_path} is not a testbed probe config (format {config.get('format')!r})")
        levels = {name: tuple(values) for name, values in config.get("levels", {}).items()}
        if levels != LEVELS or config.get("image_size") != IMAGE_SIZE:
            raise ValueError(
                f"the probe in {directory} was trained on another testbed world (factor levels or image size "
                "differ from conceptspace.testbed.data): retrain it"
            )
        probe = cls(ProbeConfig(**config["architecture"]))
        state = {
            key: value.float() if value.is_floating_point() else value
            for key, value in load_file(weights).items()
        }
        probe.load_state_dict(state)
        probe.metadata = config
        return probe.to(device or "cpu", memory_format=torch.channels_last).eval()


class ProbeClasses(nn.Module):
    """The probe as an 18-class image classifier: log p(shape) + log p(colour) for images in [0, 1], the joint
    class of the testbed's Inception Score (its classes are what the world varies, as ImageNet's are for
    Inception)."""

    def __init__(self, probe: FactorProbe) -> None:
        super().__init__()
        self.probe = probe

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.probe(images * 2 - 1)
        shape, colour = out["shape"].log_softmax(dim=1), out["colour"].log_softmax(dim=1)
        return (shape[:, :, None] + colour[:, None, :]).reshape(len(images), -1)


BLANK_CONTRAST = 40
"""An image is *blank* (background only: no object for the probe to read) when none of its pixels differs from the
image's median colour by more than this (of 255) in any channel. Chosen from data (the shipped pair, "a shape",
"a triangle" and "a red shape", 64 seeds each in the demo's four regimes): at this contrast an image has either no
such pixel or at least 4 (an object's edge); the blank ones never differ by more than 40 anywhere, and the probe
reads them as whatever its bias says (a green triangle)."""


def blank_images(images: Any) -> np.ndarray:
    """Which of ``images`` (uint8 ``(N, H, W, 3)``, or anything :func:`numpy.asarray` makes one) are blank (see
    :data:`BLANK_CONTRAST`)."""
    pixels = np.asarray(images).astype(np.int16)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) pixels, got shape {pixels.shape}")
    median = np.median(pixels.reshape(len(pixels), -1, 3), axis=1)
    deviation = np.abs(pixels - median[:, None, None, :]).max(axis=-1)
    return ~(deviation > BLANK_CONTRAST).any(axis=(1, 2))


def load_probe(
    directory: str | os.PathLike | None = None, *, device: str | torch.device | None = None
) -> FactorProbe:
    """The shipped probe (or one saved in ``directory``), ready for :meth:`FactorProbe.predict`."""
    return FactorProbe.from_pretrained(directory, device=device)


def _as_input(images: Any, value_range: tuple[float, float]) -> torch.Tensor:
    """Images of any accepted form → ``float32 (n, 3, 32, 32)`` CPU tensor in [-1, 1]."""
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise ValueError(
            f"images must be a batch (n, 32, 32, 3) or (n, 3, 32, 32), got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[-1] == 3 and tensor.shape[1] != 3:
        tensor = tensor.permute(0, 3, 1, 2)
    if tensor.dtype == torch.uint8:
        return tensor.float().div(127.5).sub(1.0).contiguous()
    if not tensor.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {tensor.dtype}")
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    scaled = (tensor.detach().float() - low) * (2.0 / (high - low)) - 1.0
    return scaled.clamp(-1.0, 1.0).contiguous()  # pixels out of range (a decoder's overshoot) saturate


# ----------------------------------------------------------------------------------------------------------------
# training


@dataclass(frozen=True)
class Augment:
    """Corruptions applied to training images (in [-1, 1] units), so generated images with a little noise, blur or
    colour drift still read correctly. Held-out evaluation uses clean renders unless told otherwise."""

    noise: float = 0.08  # Gaussian noise std, drawn per image from U[0, noise]
    blur: float = 0.3  # probability of a 3×3 blur of random strength
    jitter: float = 0.04  # per-channel offset, U[-jitter, jitter]


def _augment(x: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    n = len(x)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    if augment.blur:
        blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        strength = (uniform(n, 1, 1, 1) < augment.blur) * uniform(n, 1, 1, 1)
        x = x + strength * (blurred - x)
    if augment.jitter:
        x = x + (uniform(n, 3, 1, 1) * 2 - 1) * augment.jitter
    if augment.noise:
        x = x + torch.randn(x.shape, generator=generator) * uniform(n, 1, 1, 1) * augment.noise
    return x


def _targets(factors: FactorBatch) -> dict[str, torch.Tensor]:
    targets = {name: torch.from_numpy(getattr(factors, name)) for name in CATEGORICAL}
    regression = np.stack(
        [(getattr(factors, name) - _CENTRE[name]) / _SCALE[name] for name in CONTINUOUS], axis=1
    )
    targets["regression"] = torch.from_numpy(regression).float()
    return targets


def train_probe(
    seed: int = 0,
    steps: int = 800,
    *,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    regression_weight: float = 20.0,
    config: ProbeConfig | None = None,
    augment: Augment | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FactorProbe:
    """Train a probe on ``steps`` batches of fresh renders (batch ``k`` from generator ``[seed, k]``).

    Loss: cross-entropy per categorical factor plus ``regression_weight`` × MSE of the standardised size/x/y;
    AdamW with a one-cycle learning-rate schedule peaking at ``lr``. The default 800 steps × 128 images take about
    1.5 minutes on one CPU core. ``probe.metadata["training"]`` records the settings and the time taken.
    """
    if steps < 1 or batch_size < 2:
        raise ValueError(f"need steps >= 1 and batch_size >= 2, got {steps} and {batch_size}")
    augment = augment if augment is not None else Augment()
    torch.manual_seed(seed)
    probe = FactorProbe(config).to(device, memory_format=torch.channels_last).train()
    optimiser = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    bar = tqdm(range(steps), desc="training the factor probe", disable=not progress, leave=False)
    for step in bar:
        rng = np.random.default_rng([seed, step])
        factors = sample_factors(batch_size, rng)
        images = _augment(to_tensor(render(factors)), augment, generator).to(device)
        targets = {key: value.to(device) for key, value in _targets(factors).items()}
        out = probe(images)
        loss = sum(F.cross_entropy(out[name], targets[name]) for name in CATEGORICAL)
        loss = loss + regression_weight * F.mse_loss(out["regression"], targets["regression"])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    probe.eval()
    probe.metadata = {
        "training": {
            "seed": seed,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "regression_weight": regression_weight,
            "augment": asdict(augment),
            "seconds": round(time.perf_counter() - started, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
    }
    return probe


def evaluate_probe(
    probe: FactorProbe,
    n: int = 1000,
    *,
    seed: int = 12345,
    augment: Augment | None = None,
) -> dict[str, Any]:
    """Held-out accuracy of ``probe`` on ``n`` fresh renders from ``seed`` (clean unless ``augment`` is given).

    Returns ``n``, ``seed``, ``accuracy`` per categorical factor, ``mae`` / ``rmse`` / ``max_error`` in pixels per
    continuous factor, and ``level_accuracy``: how often the named level (small/large, left/center/right,
    top/middle/bottom, and the categorical names) matches the truth, which counts near-threshold misses.
    """
    rng = np.random.default_rng(seed)
    factors = sample_factors(n, rng)
    images = to_tensor(render(factors))
    if augment is not None:
        images = _augment(images, augment, torch.Generator().manual_seed(seed))
    predicted = probe.predict(images)
    truth = factors.as_dict()
    true_levels, predicted_levels = named_levels(factors), named_levels(predicted)
    return {
        "n": n,
        "seed": seed,
        "augmented": augment is not None,
        "accuracy": {name: float((predicted[name] == truth[name]).mean()) for name in CATEGORICAL},
        "mae": {name: float(np.abs(predicted[name] - truth[name]).mean()) for name in CONTINUOUS},
        "rmse": {name: float(np.sqrt(((predicted[name] - truth[name]) ** 2).mean())) for name in CONTINUOUS},
        "max_error": {name: float(np.abs(predicted[name] - truth[name]).max()) for name in CONTINUOUS},
        "level_accuracy": {
            name: float((predicted_levels[name] == true_levels[name]).mean()) for name in FACTORS
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m conceptspace.testbed.probe [--seed 0] [--steps 800] [--out DIR]``: train, save, evaluate."""
    parser = argparse.ArgumentParser(
        description="Train the testbed's factor probe and save it with its accuracy."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--eval-n", type=int, default=10_000, help="held-out images for the recorded accuracy"
    )
    parser.add_argument("--out", type=Path, default=PROBE_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    probe = train_probe(args.seed, args.steps, batch_size=args.batch_size)
    probe.save_pretrained(args.out, metadata=probe.metadata)
    loaded = load_probe(args.out)  # evaluate what ships: the float16 weights
    evaluation = {
        "clean": evaluate_probe(loaded, args.eval_n),
        "augmented": evaluate_probe(loaded, args.eval_n, augment=Augment()),
    }
    probe.save_pretrained(args.out, metadata={**probe.metadata, "evaluation": evaluation})
    print(json.dumps({"training": probe.metadata["training"], "evaluation": evaluation}, indent=2))
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
