"""The testbed's procedural world: 32×32 RGB images of one shape on a plain background, their captions, and the
ground truth behind both.

Factors of one image (all independent; categorical ones uniform):

==============  ============================================================  ==================================
factor          values                                                        caption words
==============  ============================================================  ==================================
``shape``       circle, square, triangle                                      ``circle`` / ``square`` / ``triangle``
``colour``      red, orange, yellow, green, blue, purple (:data:`COLOURS`)    the colour's name
``size``        radius r ~ U[4, 10] px (:data:`SIZE_RANGE`)                   ``small`` (r < 7) / ``large``
``x``, ``y``    centroid of the shape in pixels, shape fully inside           ``left`` / ``center`` / ``right``,
                (uniform over the positions the shape can take)               ``top`` / ``middle`` / ``bottom``
``background``  black, white (:data:`BACKGROUNDS`)                            ``on a black background``…
==============  ============================================================  ==================================

Geometry, in pixel units with (0, 0) the top-left corner of the image and y growing downwards: a circle of radius
r; an axis-aligned square of half-side 0.9 r; an equilateral triangle pointing up with circumradius 1.3 r. For all
three, (x, y) is the centroid of the shape's area, so the coverage-weighted mean of pixel centres is (x, y).
Position words name thirds of the range the centre can take *for that shape and size* (1 px margin from every
edge): "left" is the left third of where this shape could be, so position words are independent of size and shape.
Pixels are exact colours: background pixels are exactly the background colour, fully covered pixels exactly the
shape's colour, and edge pixels a mix by the covered area (exact along each row, 4 sub-rows per pixel).

Captions are ``a [size] [colour] <shape|shape> [position] [on a <background> background]``, each factor mentioned
with its own probability (:class:`Mentions`): "a small red circle on the left", "a square", "a shape",
"a red shape on a white background", "a large blue triangle at the top right on a black background".
:func:`fixed_factors` parses such a prompt back into the named levels it fixes, and :func:`sample_factors` with
``fixed=`` samples the world conditioned on them: the ground-truth distribution of images for that prompt.

Example:
    >>> rng = np.random.default_rng(0)
    >>> factors = sample_factors(4, rng)
    >>> images = render(factors)                        # uint8 (4, 32, 32, 3)
    >>> texts = captions(factors, rng)                  # e.g. ['a large purple shape at the bottom', ...]
    >>> fixed_factors("a red shape on a white background")
    {'colour': 'red', 'background': 'white'}
    >>> for images, texts, factors in ShapesDataset(batch_size=256, seed=0, num_batches=10):  # doctest: +SKIP
    ...     ...                                          # images: float (256, 3, 32, 32) in [-1, 1]
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "STUDY_PROMPTS",
    "BACKGROUNDS",
    "CATEGORICAL",
    "COLOURS",
    "CONTINUOUS",
    "FACTORS",
    "IMAGE_SIZE",
    "LEVELS",
    "SHAPES",
    "SIZE_RANGE",
    "SIZE_THRESHOLD",
    "SPECIFIED_PROMPTS",
    "UNDERSPECIFIED_PROMPTS",
    "X_NAMES",
    "Y_NAMES",
    "Batch",
    "FactorBatch",
    "Factors",
    "Mentions",
    "ShapesDataset",
    "caption_for",
    "captions",
    "fixed_factors",
    "from_tensor",
    "make_batch",
    "matches",
    "named_levels",
    "position_range",
    "render",
    "sample_factors",
    "to_tensor",
]

IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "purple": (150, 60, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (16, 16, 16), "white": (240, 240, 240)}
COLOUR_NAMES = tuple(COLOURS)
BACKGROUND_NAMES = tuple(BACKGROUNDS)
SIZE_RANGE = (4.0, 10.0)
SIZE_THRESHOLD = 7.0
"""Radius at which "small" becomes "large" (small: r < 7)."""
SIZE_NAMES = ("small", "large")
X_NAMES = ("left", "center", "right")
Y_NAMES = ("top", "middle", "bottom")
MARGIN = 1.0
"""Minimum distance in pixels between the shape and every image edge."""
SUPERSAMPLE = 4

FACTORS = ("shape", "colour", "size", "x", "y", "background")
CATEGORICAL = ("shape", "colour", "background")
CONTINUOUS = ("size", "x", "y")
LEVELS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOUR_NAMES,
    "size": SIZE_NAMES,
    "x": X_NAMES,
    "y": Y_NAMES,
    "background": BACKGROUND_NAMES,
}
"""The caption words of each factor (continuous factors are named by bins)."""

# Shape geometry in units of the size r: square half-side, triangle circumradius, and each shape's extent from
# its centroid (left, right, up, down).
SQUARE_HALF_SIDE = 0.9
TRIANGLE_CIRCUMRADIUS = 1.3
_SIN60 = math.sqrt(3.0) / 2.0
_EXTENTS = np.array(
    [
        [1.0, 1.0, 1.0, 1.0],
        [SQUARE_HALF_SIDE] * 4,
        [TRIANGLE_CIRCUMRADIUS * _SIN60] * 2 + [TRIANGLE_CIRCUMRADIUS, TRIANGLE_CIRCUMRADIUS / 2.0],
    ]
)

UNDERSPECIFIED_PROMPTS = (
    "a shape",
    "a circle",
    "a square",
    "a triangle",
    "a red shape",
    "a blue shape",
    "a large shape",
    "a shape on a white background",
)
"""Prompts that leave most factors free: where a distilled student's lost diversity shows."""

STUDY_PROMPTS = ("a shape", "a triangle", "a red shape")
"""The demo's and the testbed analyses' prompts: shape × colour, colour and shape left free, the base's best shapes."""

SPECIFIED_PROMPTS = (
    "a small red circle at the top left on a black background",
    "a large blue square at the bottom right on a white background",
)
"""Prompts that fix every named factor (only within-bin size/position jitter is left): the low-diversity anchor."""


# ----------------------------------------------------------------------------------------------------------------
# factors


@dataclass(frozen=True)
class Factors:
    """The factors of one image: names for categorical factors, pixels for continuous ones."""

    shape: str
    colour: str
    size: float
    x: float
    y: float
    background: str

    def __post_init__(self) -> None:
        for name in CATEGORICAL:
            if getattr(self, name) not in LEVELS[name]:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; choose from {', '.join(LEVELS[name])}"
                )

    def levels(self) -> dict[str, str]:
        """The named level of every factor, e.g. ``{"shape": "circle", "size": "small", "x": "left", ...}``."""
        return {name: str(values[0]) for name, values in FactorBatch.from_factors([self]).levels().items()}

    def caption(self) -> str:
        """The full caption, every factor mentioned."""
        return caption_for(self.levels())


@dataclass(frozen=True, eq=False)
class FactorBatch:
    """The factors of ``n`` images, one numpy array per factor.

    Categorical factors are ``int64`` indices into :data:`SHAPES`, :data:`COLOUR_NAMES`, :data:`BACKGROUND_NAMES`;
    ``size`` (radius), ``x`` and ``y`` (centroid) are ``float64`` pixels. Index with an int for one
    :class:`Factors`, with a slice, mask or index array for a sub-batch.
    """

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    x: np.ndarray
    y: np.ndarray
    background: np.ndarray

    def __post_init__(self) -> None:
        lengths = set()
        for name in FACTORS:
            value = np.asarray(getattr(self, name))
            if value.ndim != 1:
                value = value.reshape(-1)
            if name in CATEGORICAL:
                if value.dtype.kind not in "iu":
                    raise TypeError(
                        f"{name} must be integer indices into {LEVELS[name]}, got dtype {value.dtype}"
                    )
                value = value.astype(np.int64, copy=False)
                if len(value) and (value.min() < 0 or value.max() >= len(LEVELS[name])):
                    raise ValueError(f"{name} indices must be in [0, {len(LEVELS[name])})")
            else:
                value = value.astype(np.float64, copy=False)
            object.__setattr__(self, name, value)
            lengths.add(len(value))
        if len(lengths) > 1:
            raise ValueError(f"all factors need the same length, got {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: Any) -> Factors | FactorBatch:
        if isinstance(index, (int, np.integer)):
            return Factors(
                shape=SHAPES[self.shape[index]],
                colour=COLOUR_NAMES[self.colour[index]],
                size=float(self.size[index]),
                x=float(self.x[index]),
                y=float(self.y[index]),
                background=BACKGROUND_NAMES[self.background[index]],
            )
        return FactorBatch(**{name: getattr(self, name)[index] for name in FACTORS})

    def __iter__(self) -> Iterator[Factors]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"FactorBatch(n={len(self)})"

    @classmethod
    def from_factors(cls, factors: Iterable[Factors]) -> FactorBatch:
        items = list(factors)
        return cls(
            shape=np.array([SHAPES.index(f.shape) for f in items], dtype=np.int64),
            colour=np.array([COLOUR_NAMES.index(f.colour) for f in items], dtype=np.int64),
            size=np.array([f.size for f in items], dtype=np.float64),
            x=np.array([f.x for f in items], dtype=np.float64),
            y=np.array([f.y for f in items], dtype=np.float64),
            background=np.array([BACKGROUND_NAMES.index(f.background) for f in items], dtype=np.int64),
        )

    @classmethod
    def concatenate(cls, batches: Sequence[FactorBatch]) -> FactorBatch:
        return cls(**{name: np.concatenate([getattr(b, name) for b in batches]) for name in FACTORS})

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{factor: array}`` (the same keys :meth:`conceptspace.testbed.probe.FactorProbe.predict` returns)."""
        return {name: getattr(self, name) for name in FACTORS}

    def levels(self) -> dict[str, np.ndarray]:
        """The named level of every factor as string arrays: size binned at :data:`SIZE_THRESHOLD`, positions in
        thirds of each shape's own range (see :func:`position_range`)."""
        return named_levels(self)


def position_range(
    shape: np.ndarray, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_low, x_high, y_low, y_high)``: where the centroid of each shape of this size can be, arrays like size."""
    extents = _EXTENTS[np.asarray(shape)] * np.asarray(size, dtype=np.float64)[..., None]
    return (
        MARGIN + extents[..., 0],
        IMAGE_SIZE - MARGIN - extents[..., 1],
        MARGIN + extents[..., 2],
        IMAGE_SIZE - MARGIN - extents[..., 3],
    )


def named_levels(factors: FactorBatch | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Named levels (string arrays) of a :class:`FactorBatch` or a ``{factor: array}`` mapping (probe output)."""
    f = factors if isinstance(factors, FactorBatch) else FactorBatch(**{k: factors[k] for k in FACTORS})
    x_low, x_high, y_low, y_high = position_range(f.shape, np.clip(f.size, *SIZE_RANGE))
    u = (f.x - x_low) / (x_high - x_low)
    v = (f.y - y_low) / (y_high - y_low)
    return {
        "shape": np.array(SHAPES)[f.shape],
        "colour": np.array(COLOUR_NAMES)[f.colour],
        "size": np.array(SIZE_NAMES)[(f.size >= SIZE_THRESHOLD).astype(int)],
        "x": np.array(X_NAMES)[_third(u)],
        "y": np.array(Y_NAMES)[_third(v)],
        "background": np.array(BACKGROUND_NAMES)[f.background],
    }


def _third(fraction: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(fraction * 3.0), 0, 2).astype(int)


def _check_fixed(fixed: Mapping[str, str] | None) -> dict[str, str]:
    fixed = dict(fixed or {})
    for name, level in fixed.items():
        if name not in LEVELS:
            raise ValueError(f"unknown factor {name!r}; factors are {', '.join(FACTORS)}")
        if level not in LEVELS[name]:
            raise ValueError(f"unknown {name} {level!r}; choose from {', '.join(LEVELS[name])}")
    return fixed


def sample_factors(
    n: int, rng: np.random.Generator | int | None = None, *, fixed: Mapping[str, str] | None = None
) -> FactorBatch:
    """``n`` images' factors from the world's distribution, optionally conditioned on named levels.

    ``fixed`` (e.g. ``{"colour": "red", "x": "left"}``, or ``fixed_factors(prompt)``) restricts each named factor
    to that level: categorical factors to the value, size to its half of :data:`SIZE_RANGE`, positions to their
    third. Every draw uses the same six uniforms per image, so for one seed a conditioned sample differs from the
    unconditioned one only in the fixed factors (and in x, y where a fixed shape or size changes the range a
    position maps into). ``rng``: a generator or a seed.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    fixed = _check_fixed(fixed)
    rng = np.random.default_rng(rng)
    uniforms = rng.random((6, n))

    def categorical(name: str, row: int) -> np.ndarray:
        if name in fixed:
            return np.full(n, LEVELS[name].index(fixed[name]), dtype=np.int64)
        return np.minimum((uniforms[row] * len(LEVELS[name])).astype(np.int64), len(LEVELS[name]) - 1)

    def within(name: str, row: int, low: Any, high: Any) -> np.ndarray:
        fraction = uniforms[row]
        if name in fixed:  # the named bin: half of the size range, a third of the position range
            bins = len(LEVELS[name])
            fraction = (LEVELS[name].index(fixed[name]) + fraction) / bins
        return low + fraction * (high - low)

    shape = categorical("shape", 0)
    colour = categorical("colour", 1)
    background = categorical("background", 2)
    low, high = SIZE_RANGE
    if "size" in fixed:  # bins split at the threshold, not at the midpoint
        low, high = (low, SIZE_THRESHOLD) if fixed["size"] == "small" else (SIZE_THRESHOLD, high)
    size = low + uniforms[3] * (high - low)
    x_low, x_high, y_low, y_high = position_range(shape, size)
    x = within("x", 4, x_low, x_high)
    y = within("y", 5, y_low, y_high)
    return FactorBatch(shape=shape, colour=colour, size=size, x=x, y=y, background=background)


def matches(factors: FactorBatch | Mapping[str, Any], fixed: Mapping[str, str]) -> np.ndarray:
    """Boolean mask: which images have every named level in ``fixed`` (e.g. ``fixed_factors(prompt)``)."""
    fixed = _check_fixed(fixed)
    levels = named_levels(factors)
    mask = np.ones(len(levels["shape"]), dtype=bool)
    for name, level in fixed.items():
        mask &= levels[name] == level
    return mask


# ----------------------------------------------------------------------------------------------------------------
# rendering


def _coverage(factors: FactorBatch, supersample: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape, ``float32 (n, H, W)``.

    Each shape is, row by row, an interval ``[x - w, x + w]`` (``w`` its half-width at that height). Pixels are
    cut into ``supersample`` rows; each row's interval covers every pixel by an exact length, and the rows are
    averaged: exact area coverage horizontally, ``supersample``-fold sampling vertically.
    """
    s = supersample
    rows = ((np.arange(IMAGE_SIZE * s, dtype=np.float32) + 0.5) / s)[None]  # subrow centres, pixel units
    left_edges = np.arange(IMAGE_SIZE, dtype=np.float32)[None, None]
    r = factors.size.astype(np.float32)[:, None]
    dy = rows - factors.y.astype(np.float32)[:, None]  # (n, rows)
    half = np.full(dy.shape, -1.0, dtype=np.float32)  # half-width of the shape on each subrow; < 0: empty
    for shape_index, shape in enumerate(SHAPES):
        members = factors.shape == shape_index
        if not members.any():
            continue
        rm, dym = r[members], dy[members]
        if shape == "circle":
            squared = rm * rm - dym * dym
            width = np.where(squared >= 0, np.sqrt(np.maximum(squared, 0)), -1.0)
        elif shape == "square":
            side = SQUARE_HALF_SIDE * rm
            width = np.where(np.abs(dym) <= side, side, -1.0)
        else:  # equilateral triangle, apex up: |dx| sin60 <= inradius + dy / 2 and dy <= inradius
            inradius = 0.5 * TRIANGLE_CIRCUMRADIUS * rm
            width = np.where(dym <= inradius, (inradius + 0.5 * dym) / _SIN60, -1.0)
        half[members] = width
    x = factors.x.astype(np.float32)[:, None]
    low, high = (x - half)[..., None], (x + half)[..., None]  # (n, rows, 1)
    overlap = np.minimum(high, left_edges + 1.0)
    overlap -= np.maximum(low, left_edges)
    np.clip(overlap, 0.0, 1.0, out=overlap)
    coverage = overlap.reshape(len(factors), IMAGE_SIZE, s, IMAGE_SIZE).sum(axis=2)
    coverage *= np.float32(1.0 / s)
    return coverage


_COLOUR_TABLE = np.array(list(COLOURS.values()), dtype=np.float32)
_BACKGROUND_TABLE = np.array(list(BACKGROUNDS.values()), dtype=np.float32)


def render(
    factors: FactorBatch | Factors | Iterable[Factors], *, supersample: int = SUPERSAMPLE, chunk: int = 64
) -> np.ndarray:
    """Images of the factors: ``uint8 (n, 32, 32, 3)``, anti-aliased (exact coverage along rows, ``supersample``
    sub-rows per pixel row). Vectorised over ``chunk`` images at a time: 50,000 images in about 2 s on one core.
    """
    if isinstance(factors, Factors):
        factors = FactorBatch.from_factors([factors])
    elif not isinstance(factors, FactorBatch):
        factors = FactorBatch.from_factors(factors)
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    images = np.empty((len(factors), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for start in range(0, len(factors), chunk):
        part = factors[start : start + chunk]
        coverage = _coverage(part, supersample).reshape(len(part), 1, IMAGE_SIZE * IMAGE_SIZE)
        background = _BACKGROUND_TABLE[part.background][:, :, None]  # channels first: long inner loops
        mixed = coverage * (_COLOUR_TABLE[part.colour][:, :, None] - background)
        mixed += background + 0.5  # + 0.5: round half up, so exact colours stay exact
        out = images[start : start + chunk].reshape(len(part), IMAGE_SIZE * IMAGE_SIZE, 3)
        out[...] = mixed.transpose(0, 2, 1)  # float → uint8 truncates
    return images


def to_tensor(images: np.ndarray, device: str | torch.device | None = None) -> torch.Tensor:
    """``uint8 (n, H, W, 3)`` → ``float32 (n, 3, H, W)`` in [-1, 1] (the diffusion models' pixel convention)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return tensor.float().div_(127.5).sub_(1.0).contiguous()


def from_tensor(images: torch.Tensor) -> np.ndarray:
    """``float (n, 3, H, W)`` in [-1, 1] → ``uint8 (n, H, W, 3)`` (clamped and rounded), the inverse of
    :func:`to_tensor`."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------
# captions

_X_PHRASES = {"left": "on the left", "center": "in the center", "right": "on the right"}
_Y_PHRASES = {"top": "at the top", "middle": "in the middle", "bottom": "at the bottom"}
_FILLER = frozenset({"a", "an", "the", "shape", "on", "in", "at", "background"})
_WORDS: dict[str, tuple[str, str]] = {
    level: (name, level) for name in FACTORS for level in LEVELS[name]
}  # every level word is unique across factors


@dataclass(frozen=True)
class Mentions:
    """Probability that a caption mentions each factor (independently per factor and image).

    With the defaults a caption names 3.4 factors on average, and every subset of factors is common: "a shape"
    is 0.56% of captions, "a <colour> shape" 1.3% (so "a red shape" 0.22%), "a <shape>" 1.3%. ``Mentions.all()`` always names everything, ``Mentions.none()``
    gives "a shape" for every image.
    """

    shape: float = 0.7
    colour: float = 0.7
    size: float = 0.5
    x: float = 0.5
    y: float = 0.5
    background: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            p = getattr(self, f.name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"mention probability of {f.name} must be in [0, 1], got {p}")

    @classmethod
    def all(cls) -> Mentions:
        return cls(**{name: 1.0 for name in FACTORS})

    @classmethod
    def none(cls) -> Mentions:
        return cls(**{name: 0.0 for name in FACTORS})

    def probabilities(self) -> np.ndarray:
        return np.array([getattr(self, name) for name in FACTORS])


def caption_for(levels: Mapping[str, str]) -> str:
    """The caption that mentions exactly the named ``levels`` (a subset of factors), e.g.
    ``{"colour": "red", "background": "white"}`` → ``"a red shape on a white background"``.

    Template: ``a [size] [colour] <shape|shape> [position] [on a <background> background]``, position
    ``on the left`` / ``at the top`` / ``at the top left``.
    """
    levels = _check_fixed(levels)
    words = [levels[name] for name in ("size", "colour") if name in levels]
    words.append(levels.get("shape", "shape"))
    if "x" in levels and "y" in levels:
        words.append(f"at the {levels['y']} {levels['x']}")
    elif "x" in levels:
        words.append(_X_PHRASES[levels["x"]])
    elif "y" in levels:
        words.append(_Y_PHRASES[levels["y"]])
    if "background" in levels:
        words.append(f"on a {levels['background']} background")
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def captions(
    factors: FactorBatch,
    rng: np.random.Generator | int | None = None,
    mentions: Mentions | None = None,
) -> list[str]:
    """One caption per image, mentioning each factor with its :class:`Mentions` probability (deterministic given
    ``rng``'s seed). A caption only ever names true levels: ``matches(factors, fixed_factors(caption))`` holds."""
    rng = np.random.default_rng(rng)
    mentions = mentions if mentions is not None else Mentions()
    mentioned = rng.random((len(factors), len(FACTORS))) < mentions.probabilities()
    levels = named_levels(factors)
    columns = [levels[name].tolist() for name in FACTORS]
    return [
        caption_for({name: columns[j][i] for j, name in enumerate(FACTORS) if mentioned[i, j]})
        for i in range(len(factors))
    ]


def fixed_factors(prompt: str) -> dict[str, str]:
    """The factors a prompt fixes, as named levels: ``"a small red shape on the left"`` →
    ``{"size": "small", "colour": "red", "x": "left"}``; ``"a shape"`` and ``""`` → ``{}``.

    Word-based: any caption :func:`captions` writes parses back to what it mentions, and so does any prompt made
    of level words (:data:`LEVELS`) and template words (a, an, the, shape, on, in, at, background). A background
    word needs the word "background". Raises ``ValueError`` on unknown words and on contradictions.
    """
    words = re.findall(r"[a-z]+", prompt.lower())  # "" (unconditional) fixes nothing
    found: dict[str, str] = {}
    for word in words:
        if word in _FILLER:
            continue
        if word not in _WORDS:
            vocabulary = ", ".join(level for name in FACTORS for level in LEVELS[name])
            raise ValueError(
                f"prompt {prompt!r}: unknown word {word!r}; the testbed knows {vocabulary} and the template words "
                f"{', '.join(sorted(_FILLER))}"
            )
        name, level = _WORDS[word]
        if found.get(name, level) != level:
            raise ValueError(f"prompt {prompt!r} names two {name}s: {found[name]!r} and {level!r}")
        found[name] = level
    if "background" in found and "background" not in words:
        raise ValueError(
            f"prompt {prompt!r}: {found['background']!r} is a background colour here; write "
            f"'on a {found['background']} background'"
        )
    return {name: found[name] for name in FACTORS if name in found}


# ----------------------------------------------------------------------------------------------------------------
# batches on the fly


class Batch(NamedTuple):
    """One training batch: ``images`` float ``(n, 3, 32, 32)`` in [-1, 1], ``captions``, and their ``factors``."""

    images: torch.Tensor
    captions: list[str]
    factors: FactorBatch


def make_batch(
    n: int,
    rng: np.random.Generator | int | None = None,
    *,
    mentions: Mentions | None = None,
    fixed: Mapping[str, str] | None = None,
    device: str | torch.device | None = None,
) -> Batch:
    """``n`` fresh images with captions: factors (optionally conditioned on ``fixed``), render, caption."""
    rng = np.random.default_rng(rng)
    factors = sample_factors(n, rng, fixed=fixed)
    texts = captions(factors, rng, mentions)
    return Batch(to_tensor(render(factors), device), texts, factors)


class ShapesDataset:
    """An endless (or ``num_batches``-long) stream of :class:`Batch` es made on the fly: no files.

    Batch ``k`` is a function of ``(seed, k, batch_size)`` alone (its generator is seeded with ``[seed, k]``), so
    iteration is reproducible, restartable at any batch (:meth:`batch`), and two datasets with different seeds are
    independent. A train/held-out split is two seeds. Iterating unpacks as ``images, captions, factors``.
    """

    def __init__(
        self,
        batch_size: int = 256,
        *,
        seed: int = 0,
        num_batches: int | None = None,
        mentions: Mentions | None = None,
        fixed: Mapping[str, str] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_batches is not None and num_batches < 0:
            raise ValueError(f"num_batches must be >= 0 or None, got {num_batches}")
        self.batch_size = batch_size
        self.seed = seed
        self.num_batches = num_batches
        self.mentions = mentions if mentions is not None else Mentions()
        self.fixed = _check_fixed(fixed)
        self.device = device

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(batch_size={self.batch_size}, seed={self.seed}, num_batches={self.num_batches}, "
            f"mentions={self.mentions}, fixed={self.fixed})"
        )

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless ShapesDataset has no length (pass num_batches=)")
        return self.num_batches

    def batch(self, index: int) -> Batch:
        """Batch number ``index`` (the same every time)."""
        if index < 0:
            raise IndexError(f"batch index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, index])
        return make_batch(self.batch_size, rng, mentions=self.mentions, fixed=self.fixed, device=self.device)

    def __iter__(self) -> Iterator[Batch]:
        index = 0
        while self.num_batches is None or index < self.num_batches:
            yield self.batch(index)
            index += 1
