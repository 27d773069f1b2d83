"""Group inference (Parmar et al., "Scaling Group Inference for Diverse and High-Quality Generation", arXiv
2508.15773): start ``candidates`` samples for every image wanted, and after the first step(s) keep the subset whose
x̂0 previews lie farthest apart — a group chosen for its diversity, at the cost of the candidates' early steps.

The paper scores a group by a quadratic objective — each member's quality plus the pairwise distances between
members — and prunes the candidates progressively on x̂0 previews. Here the distances are between x̂0 latents
(average-pooled to at most 8×8 per channel: the layout that a distilled model fixes at its first step) and the
subset is grown greedily (the classic max-sum-dispersion heuristic: the farthest-apart pair's first member, then
each time the candidate with the largest summed distance to those chosen). The quality term is left out: a preview
in latent space has no prompt-alignment score, and ``compare`` measures quality beside diversity.

The group is a batch's samples of one prompt: an image depends on its batch's other seeds, as under repellency
(sample with ``batch_size=len(seeds)`` to choose all of a prompt's images together). Candidate ``j`` of row ``i``
(``j >= 1``) draws its noise from :func:`candidate_seed` ``(seed_i, j)``; candidate 0 is the row's own seed, so
``candidates=1`` is ``over`` exactly. Each prompt's kept samples fill its own rows of the batch in candidate
order; a prompt with one image in the batch keeps its own seed's sample (with a warning: there is no group).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from conceptspace.models.families import Conditioning
from conceptspace.models.loading import ModelPair
from conceptspace.sampling.loop import Segment
from conceptspace.sampling.regimes import REGIMES, Regime
from conceptspace.sampling.remedies import describe_remedy, inner_regime

__all__ = ["GroupInference", "GroupSelection", "candidate_seed", "greedy_dispersion", "preview_features"]

PREVIEW_SIZE = 8
"""The side to which x̂0 latents are average-pooled before their distances are taken."""


def candidate_seed(seed: int, j: int) -> int:
    """The seed of candidate ``j >= 1`` of the image seeded ``seed`` (63 bits of a hash: any seed maps to a
    valid generator seed, and distinct ``(seed, j)`` to distinct seeds in practice)."""
    digest = hashlib.sha256(f"group-inference:{int(seed)}:{int(j)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def preview_features(x0: torch.Tensor) -> torch.Tensor:
    """One row per sample: its x̂0 latent average-pooled to at most :data:`PREVIEW_SIZE` per side, flattened."""
    x0 = x0.float()
    if x0.dim() == 4:
        size = (min(PREVIEW_SIZE, x0.shape[-2]), min(PREVIEW_SIZE, x0.shape[-1]))
        x0 = F.adaptive_avg_pool2d(x0, size)
    return x0.flatten(1)


def greedy_dispersion(features: torch.Tensor, keep: int) -> torch.Tensor:
    """The sorted indices of ``keep`` rows of ``features`` chosen to lie far apart: the first member of the
    farthest-apart pair, then each time the row whose summed distance to the chosen ones is largest (ties: the
    lowest index). All rows when ``keep`` is their number."""
    rows = features.shape[0]
    if not 1 <= keep <= rows:
        raise ValueError(f"cannot keep {keep} of {rows} samples")
    if keep == rows:
        return torch.arange(rows)
    distances = torch.cdist(features.double(), features.double())
    chosen = [int(distances.max(dim=1).values.argmax())]
    summed = distances[chosen[0]].clone()
    for _ in range(keep - 1):
        summed[chosen] = -math.inf
        chosen.append(int(summed.argmax()))
        summed = summed + distances[chosen[-1]]
    return torch.tensor(sorted(chosen))


def _slot_groups(cond: Conditioning, slots: int) -> list[list[int]]:
    """The image slots ``0 … slots-1`` grouped by identical conditioning (one group per prompt), in order of
    first slot; rows ``0 … slots-1`` of ``cond`` hold one sample of each slot."""
    flat = torch.cat([v[:slots].detach().flatten(1).float() for v in cond.inputs.values()], dim=1)
    _, prompt = torch.unique(flat, dim=0, return_inverse=True)
    groups: dict[int, list[int]] = {}
    for slot, key in enumerate(prompt.tolist()):
        groups.setdefault(key, []).append(slot)
    return list(groups.values())


@dataclass(frozen=True)
class GroupSelection:
    """The row selection of one segment (a :class:`~conceptspace.sampling.loop.RowSelection`): after the steps at
    the scheduler indices in ``sizes``, each prompt's samples are cut to ``sizes[index]`` per image kept.

    Rows are laid out rank by rank: the sample at row ``p`` belongs to image slot ``p % slots`` (the batch's row
    of that prompt and seed), as the candidates start (:meth:`GroupInference.candidate_seeds`) and as every cut
    leaves them, so after the last cut row ``i`` is image ``i`` of the batch, with its own prompt."""

    sizes: dict[int, int]
    """Scheduler index → candidates per kept image left after that step (after the last cut: 1)."""
    entering: int
    """Candidates per kept image at the segment's first step."""
    spatial: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda latents: latents, compare=False)
    """The family's :meth:`~conceptspace.models.families.base.Family.spatial_latents`: previews pool an image grid."""

    def rows_per_image(self, index: int) -> int:
        return min([self.entering] + [size for at, size in self.sizes.items() if at < index])

    def __call__(self, index: int, x0: torch.Tensor, cond: Conditioning) -> torch.Tensor | None:
        if index not in self.sizes:
            return None
        per_image, slots = self.sizes[index], x0.shape[0] // self.rows_per_image(index)
        features = preview_features(self.spatial(x0))
        kept = torch.empty(slots * per_image, dtype=torch.long)
        for group in _slot_groups(cond, slots):
            # the prompt's candidates; a prompt with one image in the batch has nothing to choose between
            rows = torch.tensor([p for p in range(x0.shape[0]) if p % slots in group])
            if len(group) * per_image == 1:
                warnings.warn(
                    "group inference: a batch holds one image of a prompt, so its candidates have no group to be "
                    "diverse in and the image's own seed is kept; sample a prompt's seeds in one batch "
                    "(batch_size=len(seeds))",
                    stacklevel=2,
                )
                chosen = rows[:1]
            else:
                chosen = rows[greedy_dispersion(features[rows], len(group) * per_image)]
            for rank in range(per_image):  # rank by rank, each prompt's picks into its own slots
                for position, slot in enumerate(group):
                    kept[rank * slots + slot] = chosen[rank * len(group) + position]
        return kept


@dataclass(frozen=True)
class GroupInference(Regime):
    """``over`` (default the student alone) started ``candidates`` times per image; after the steps at the
    positions ``prune`` (0: the first step) the candidates are cut, geometrically from ``candidates`` to 1 per
    image, keeping the most dispersed x̂0 previews of each prompt (:func:`greedy_dispersion`).

    Costs ``candidates`` times ``over``'s network evaluations up to the first cut, and the survivors' after:
    ``conceptspace compare`` counts them per kept image. ``candidates=1`` is ``over`` exactly. Must be the
    outermost regime (``group-inference:over=cads``, not CADS over it).
    """

    over: Regime | str = "distilled"
    candidates: int = 4
    prune: tuple[int, ...] = (0,)
    name: str = field(default="group-inference", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (
            isinstance(self.candidates, int)
            and not isinstance(self.candidates, bool)
            and self.candidates >= 1
        ):
            raise ValueError(
                f"group-inference: candidates must be a whole number >= 1, got {self.candidates!r}"
            )
        prune = (self.prune,) if isinstance(self.prune, int) else tuple(self.prune)
        if not prune or any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in prune):
            raise ValueError(f"group-inference: prune lists step positions >= 0, got {self.prune!r}")
        object.__setattr__(self, "prune", tuple(sorted(set(prune))))

    def candidate_seeds(self, seeds: Sequence[int]) -> list[int]:
        own = [int(s) for s in seeds]
        return own + [candidate_seed(s, j) for j in range(1, self.candidates) for s in own]

    def segments(
        self, pair: ModelPair, device: torch.device, latent_shape: tuple[int, int] | None = None
    ) -> list[Segment]:
        inner = inner_regime(self.over).segments(pair, device, latent_shape)
        if self.candidates == 1:
            return inner
        positions = [segment.start + offset for segment in inner for offset in range(len(segment.denoisers))]
        if self.prune[-1] >= len(positions) - 1:
            raise ValueError(
                f"group-inference: prune={list(self.prune)} needs a step after the last cut, but "
                f"{inner_regime(self.over).name} runs {len(positions)} steps (positions 0 to {len(positions) - 1})"
            )
        cuts = len(self.prune)
        after = {p: max(1, round(self.candidates ** (1 - (i + 1) / cuts))) for i, p in enumerate(self.prune)}
        segments, position, entering = [], 0, self.candidates
        for segment in inner:
            sizes = {
                segment.start + offset: after[position + offset]
                for offset in range(len(segment.denoisers))
                if position + offset in after
            }
            segments.append(
                replace(segment, select=GroupSelection(sizes, entering, pair.family.spatial_latents))
            )
            position += len(segment.denoisers)
            entering = min([entering, *sizes.values()])
        return segments

    def describe(self) -> dict[str, Any]:
        return describe_remedy(self)


REGIMES["group-inference"] = GroupInference  # type: ignore[assignment]
