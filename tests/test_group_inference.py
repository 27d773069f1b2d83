"""Group inference as a regime: its zero setting, its selection checked against the wrapped regime's own samples
and a hand-run greedy choice, its cost, its trajectories, prompts kept apart in one batch, and its errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conceptspace.models.families import Conditioning
from conceptspace.sampling import (
    Distilled,
    Hybrid,
    encode_text,
    latent_size,
    parse_regime,
    sample,
    sample_latents,
)
from conceptspace.sampling.group_inference import (
    GroupInference,
    candidate_seed,
    greedy_dispersion,
    preview_features,
)
from conceptspace.sampling.remedies import CADS, evaluations

PROMPT = "a red circle"
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def pair(tiny_sdxl_pair):
    return tiny_sdxl_pair


def _run(pair, regime, seeds=SEEDS, **kwargs):
    return sample(
        pair, PROMPT, regime, seeds, height=64, width=64, output_type="latent", progress=False,
        batch_size=len(seeds), **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("over", [Distilled(), Hybrid(k=1)], ids=["distilled", "hybrid"])
def test_one_candidate_is_the_wrapped_regime_exactly(pair, over):
    assert torch.equal(_run(pair, GroupInference(over=over, candidates=1)).images, _run(pair, over).images)


def test_the_kept_images_are_the_wrapped_regimes_own_samples_chosen_by_their_first_step_previews(pair):
    """The independent reference: every candidate sampled alone by the wrapped regime (a sample does not depend on
    its batch there), the first step's x̂0 of all of them fed to the greedy choice by hand."""
    regime = GroupInference(candidates=3)
    candidates = regime.candidate_seeds(SEEDS)
    alone = _run(pair, Distilled(), candidates, record_x0=True)
    chosen = greedy_dispersion(preview_features(alone.trajectory[:, 0]), len(SEEDS))
    grouped = _run(pair, regime, record_x0=True)
    assert torch.allclose(grouped.images, alone.images[chosen], atol=1e-5)
    # the trajectories are the kept samples' whole trajectories, the dropped samples' gone
    assert grouped.trajectory.shape == (len(SEEDS), *alone.trajectory.shape[1:])
    assert torch.allclose(grouped.trajectory, alone.trajectory[chosen], atol=1e-5)


def test_candidate_zero_is_the_images_own_seed_and_the_others_distinct():
    regime = GroupInference(candidates=4)
    candidates = regime.candidate_seeds([5, 6])
    assert candidates[:2] == [5, 6]
    assert len(set(candidates)) == 8
    assert candidates[2:4] == [candidate_seed(5, 1), candidate_seed(6, 1)]
    assert all(0 <= seed < 2**63 for seed in candidates)


def test_greedy_dispersion_takes_one_member_of_each_planted_cluster():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    points = torch.cat([centre + 0.1 * torch.randn(5, 4, generator=generator) for centre in centres])
    order = torch.randperm(20, generator=generator)
    chosen = greedy_dispersion(points[order], 4)
    clusters = {int(order[i]) // 5 for i in chosen}
    assert clusters == {0, 1, 2, 3}
    assert chosen.tolist() == sorted(chosen.tolist())


def test_greedy_dispersion_follows_its_rule_step_by_step():
    """A hand-written rule on random points: the first member of the farthest pair, then the largest summed
    distance to the chosen ones."""
    points = torch.randn(9, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    distance = {
        (i, j): float((points[i] - points[j]).norm()) for i, j in itertools.product(range(9), repeat=2)
    }
    far = max(distance.values())
    first = min(i for i in range(9) if any(abs(distance[i, j] - far) < 1e-12 for j in range(9)))
    chosen = [first]
    for _ in range(3):
        rest = [i for i in range(9) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (sum(distance[i, j] for j in chosen), -i)))
    assert greedy_dispersion(points, 4).tolist() == sorted(chosen)


def test_the_chosen_group_lies_farther_apart_than_the_first_candidates(pair):
    regime = GroupInference(candidates=4)
    seeds = list(range(6))
    alone = _run(pair, Distilled(), regime.candidate_seeds(seeds), record_x0=True)
    features = preview_features(alone.trajectory[:, 0]).double()
    chosen = greedy_dispersion(features, len(seeds))

    def spread(rows):
        return float(torch.pdist(features[rows]).mean())

    assert spread(chosen) > spread(torch.arange(len(seeds)))


@pytest.mark.parametrize(
    ("regime", "expected"),
    [
        (GroupInference(candidates=4), {"base": 0, "distilled": 4 + 3, "total": 7}),
        (GroupInference(candidates=4, prune=(0, 1)), {"base": 0, "distilled": 4 + 2 + 2, "total": 8}),
        (GroupInference(candidates=3, prune=(0, 1)), {"base": 0, "distilled": 3 + 2 + 2, "total": 7}),
        (GroupInference(over=Hybrid(k=1), candidates=2), {"base": 2, "distilled": 3, "total": 5}),
        (GroupInference(candidates=1), {"base": 0, "distilled": 4, "total": 4}),
    ],
    ids=["one-cut", "two-cuts", "two-cuts-rounded", "hybrid", "zero"],
)
def test_cost_counts_every_candidates_evaluations_per_kept_image(pair, regime, expected):
    # the 4-step student: M candidates run up to the cut, then the survivors (round(√M) per image after the first
    # of two cuts)
    assert evaluations(regime.segments(pair, pair.device)) == expected


def test_two_cuts_keep_two_per_image_then_one(pair):
    counts = []
    grouped = _run(
        pair, GroupInference(candidates=4, prune=(0, 1)), callback=lambda info: counts.append(len(info.x0))
    )
    assert counts == [6, 3, 3, 3] and grouped.images.shape[0] == 3


def test_prompts_sharing_a_batch_are_chosen_among_their_own_candidates_and_keep_their_rows(pair):
    """Two prompts interleaved in one batch (a prompt-set run): each keeps its own rows, chosen among its own
    candidates — the reference is each prompt sampled alone on its candidates' seeds."""
    shape = latent_size(pair, 64, 64)
    prompts = ["a red circle", "a blue square", "a red circle", "a blue square"]
    conds = [encode_text(pair, p, negative_prompt=None, cfg=False, height=64, width=64) for p in prompts]
    regime = GroupInference(candidates=3)
    grouped = sample_latents(pair, regime, Conditioning.concatenate(conds), [0, 1, 2, 3], latent_shape=shape)
    later = False
    for rows in ([0, 2], [1, 3]):  # the seeds are the rows: each prompt's candidates in the batch's order
        alone = sample(pair, prompts[rows[0]], Distilled(), regime.candidate_seeds(rows), height=64, width=64,
                       output_type="latent", progress=False, record_x0=True)  # fmt: skip
        chosen = greedy_dispersion(preview_features(alone.trajectory[:, 0]), len(rows))
        assert torch.allclose(grouped[rows], alone.images[chosen], atol=1e-5)
        later |= chosen.tolist() != list(range(len(rows)))
    assert later  # some prompt kept a candidate other than its own seeds: the test could tell rows apart


def test_a_prompt_with_one_image_in_the_batch_keeps_its_own_seed_and_says_why(pair):
    with pytest.warns(UserWarning, match="one image of a prompt"):
        alone = _run(pair, GroupInference(candidates=3), seeds=[7])
    assert torch.allclose(
        alone.images, _run(pair, Distilled(), seeds=[7]).images, atol=1e-5
    )  # batch of 3 vs 1


def test_a_prompt_set_run_does_not_pad_a_groups_batch(pair):
    """A short batch of a prompt-set run is padded with copies of its last sample, which would join its group."""
    from conceptspace.runs import sample_batch

    regime = GroupInference(candidates=2)
    images = sample_batch(pair, regime, ["a red circle"] * 2, [0, 1], batch_size=4, height=64, width=64)
    expected = sample(pair, "a red circle", regime, [0, 1], height=64, width=64, batch_size=2, progress=False)
    assert [np.asarray(a).tolist() for a in images] == [np.asarray(b).tolist() for b in expected.images]


def test_spec_and_description(pair):
    regime = parse_regime("group-inference:candidates=8:over=hybrid")
    assert regime.candidate_seeds([0])[0] == 0 and len(regime.candidate_seeds([0])) == 8
    assert regime.describe()["over"]["regime"] == "group-inference"  # under the name the spec gives it
    assert regime.describe()["over"]["candidates"] == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(candidates=0), "candidates must be a whole number >= 1"),
        (dict(candidates=2.5), "candidates must be a whole number >= 1"),
        (dict(prune=(-1,)), "prune lists step positions"),
        (dict(prune=()), "prune lists step positions"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupInference(**kwargs)


def test_a_cut_at_the_last_step_is_refused(pair):
    with pytest.raises(ValueError, match="needs a step after the last cut"):
        GroupInference(candidates=2, prune=(3,)).segments(pair, pair.device)


def test_selecting_inside_another_remedy_is_refused(pair):
    with pytest.raises(ValueError, match="must be the outermost"):
        _run(pair, CADS(over=GroupInference(candidates=2)))


def test_previews_pool_the_familys_image_grid():
    """FLUX.2 holds its latents as a reshape of the patchified grid: the previews pool that grid, not the memory."""
    from conceptspace import load_pair
    from conceptspace.models.families.flux2 import patchified

    flux2 = load_pair("tiny-flux2-klein", "tiny-flux2-klein-distilled", device="cpu")
    selection = GroupInference(candidates=2).segments(flux2, flux2.device)[0].select
    latents = torch.randn(2, 8, 8, 8)
    assert torch.equal(selection.spatial(latents), patchified(latents))
    assert torch.equal(flux2.family.spatial_latents(latents), patchified(latents))
