"""The testbed's procedural world, its captions, the shipped factor probe and the ground-truth diversity measures."""

import itertools
import math

import numpy as np
import pytest
import torch

from conceptspace.testbed import data
from conceptspace.testbed.data import (
    BACKGROUNDS,
    COLOURS,
    FACTORS,
    LEVELS,
    SHAPES,
    SIZE_RANGE,
    FactorBatch,
    Factors,
    Mentions,
    ShapesDataset,
    caption_for,
    captions,
    fixed_factors,
    matches,
    named_levels,
    render,
    sample_factors,
)
from conceptspace.testbed.diversity import (
    diversity_rows,
    entropy,
    expected_diversity,
    factor_diversity,
    family_of,
    paired_difference,
    std,
)


def _coverage(images: np.ndarray, factors: FactorBatch) -> np.ndarray:
    """Per-pixel shape coverage recovered from the pixels: (pixel - background) / (colour - background)."""
    background = np.array(list(BACKGROUNDS.values()), float)[factors.background][:, None, None]
    colour = np.array(list(COLOURS.values()), float)[factors.colour][:, None, None]
    difference = colour - background
    channel = np.abs(difference).argmax(-1)[:, 0, 0]  # the channel where shape and background differ most
    ratio = (images.astype(float) - background) / np.where(difference == 0, 1, difference)
    return np.clip(np.take_along_axis(ratio, channel[:, None, None, None], -1)[..., 0], 0, 1)


@pytest.fixture(scope="module")
def world():
    factors = sample_factors(2000, np.random.default_rng(7))
    return factors, render(factors)


# ------------------------------------------------------------------------------------------------------------------
# the world


def test_palette_is_distinct():
    palette = {**COLOURS, **BACKGROUNDS}
    for (a, ca), (b, cb) in itertools.combinations(palette.items(), 2):
        assert np.linalg.norm(np.subtract(ca, cb)) > 60, (a, b)
    assert len(SHAPES) >= 3 and len(COLOURS) >= 6 and len(BACKGROUNDS) >= 2


def test_sampling_rendering_and_captions_are_deterministic_per_seed():
    a, b, c = (sample_factors(300, seed) for seed in (3, 3, 4))
    for name in FACTORS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.x, c.x)
    np.testing.assert_array_equal(render(a), render(b))
    assert captions(a, 5) == captions(b, 5) != captions(a, 6)
    # rendering one image alone or inside a batch gives the same pixels
    np.testing.assert_array_equal(render(a[17]), render(a)[17:18])
    np.testing.assert_array_equal(render(a, chunk=7), render(a, chunk=300))


def test_dataset_batches_are_reproducible_and_in_range():
    dataset = ShapesDataset(batch_size=16, seed=1, num_batches=3)
    batches = list(dataset)
    assert len(dataset) == len(batches) == 3
    images, texts, factors = batches[1]
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert len(texts) == len(factors) == 16
    again = ShapesDataset(batch_size=16, seed=1).batch(1)
    assert torch.equal(again.images, images) and again.captions == texts
    assert not torch.equal(ShapesDataset(batch_size=16, seed=2).batch(1).images, images)
    np.testing.assert_array_equal(data.from_tensor(images), render(factors))
    red = ShapesDataset(batch_size=32, seed=0, fixed={"colour": "red"}, mentions=Mentions.all()).batch(0)
    assert all(" red " in text for text in red.captions)


def test_factors_are_recoverable_from_pixels(world):
    factors, images = world
    coverage = _coverage(images, factors)
    centres = np.arange(32) + 0.5
    area = coverage.sum(axis=(1, 2))
    centroid_x = (coverage * centres[None, None, :]).sum(axis=(1, 2)) / area
    centroid_y = (coverage * centres[None, :, None]).sum(axis=(1, 2)) / area
    assert np.abs(centroid_x - factors.x).max() < 0.2
    assert np.abs(centroid_y - factors.y).max() < 0.2
    r = factors.size
    expected_area = np.select(
        [factors.shape == 0, factors.shape == 1],
        [math.pi * r**2, (2 * data.SQUARE_HALF_SIDE * r) ** 2],
        3 * math.sqrt(3) / 4 * (data.TRIANGLE_CIRCUMRADIUS * r) ** 2,
    )
    assert np.abs(area / expected_area - 1).max() < 0.05
    colours = np.array(list(COLOURS.values()))[factors.colour]
    backgrounds = np.array(list(BACKGROUNDS.values()))[factors.background]
    for i in range(len(factors)):
        full, empty = coverage[i] > 0.999, coverage[i] == 0
        assert full.sum() >= 9  # even the smallest shape has a solid core
        assert (images[i][full] == colours[i]).all()
        assert (images[i][empty] == backgrounds[i]).all()
        # the shape stays inside the image, one pixel clear of every edge
        border = np.ones((32, 32), bool)
        border[1:-1, 1:-1] = False
        assert (images[i][border] == backgrounds[i]).all()
    assert SIZE_RANGE[0] <= factors.size.min() and factors.size.max() <= SIZE_RANGE[1]


def test_named_levels_are_balanced_and_conditioning_hits_them(world):
    factors, _ = world
    levels = named_levels(factors)
    for name in FACTORS:
        shares = np.array([(levels[name] == level).mean() for level in LEVELS[name]])
        expected = 1 / len(LEVELS[name])
        assert np.abs(shares - expected).max() < 0.05, (name, shares)
    rng = np.random.default_rng(0)
    for _ in range(20):
        names = rng.choice(FACTORS, size=rng.integers(1, 7), replace=False)
        fixed = {str(name): str(rng.choice(LEVELS[name])) for name in names}
        conditioned = sample_factors(200, rng, fixed=fixed)
        assert matches(conditioned, fixed).all(), fixed
    # conditioning moves only the fixed factors
    free, red = sample_factors(50, 11), sample_factors(50, 11, fixed={"colour": "red"})
    np.testing.assert_array_equal(free.x, red.x)
    assert (red.colour == LEVELS["colour"].index("red")).all()


def test_factor_batch_round_trips():
    factors = sample_factors(5, 0)
    items = list(factors)
    assert all(isinstance(item, Factors) for item in items)
    again = FactorBatch.from_factors(items)
    for name in FACTORS:
        np.testing.assert_array_equal(getattr(again, name), getattr(factors, name))
    assert len(factors[1:3]) == 2 and len(FactorBatch.concatenate([factors, factors])) == 10
    assert fixed_factors(items[0].caption()) == items[0].levels()
    with pytest.raises(ValueError, match="unknown colour"):
        Factors("circle", "pink", 5.0, 16.0, 16.0, "black")


# ------------------------------------------------------------------------------------------------------------------
# captions and prompts


def test_captions_mention_only_true_factors_at_the_set_rates(world):
    factors, _ = world
    texts = captions(factors, 0)
    mentioned = {name: 0 for name in FACTORS}
    for i, text in enumerate(texts):
        fixed = fixed_factors(text)
        assert matches(factors[i : i + 1], fixed).all(), (text, factors[i])
        for name in fixed:
            mentioned[name] += 1
    rates = Mentions()
    for name in FACTORS:
        assert abs(mentioned[name] / len(texts) - getattr(rates, name)) < 0.05, name
    assert set(captions(factors[:50], 0, Mentions.none())) == {"a shape"}
    full = captions(factors[:50], 0, Mentions.all())
    assert all(fixed_factors(text).keys() == set(FACTORS) for text in full)
    assert captions(factors[:3], 0, Mentions.all())[0] == factors[0].caption()


def test_prompt_parser_round_trips_every_combination():
    options = [[None, *LEVELS[name]] for name in FACTORS]
    count = 0
    for choice in itertools.product(*options):
        levels = {name: level for name, level in zip(FACTORS, choice, strict=True) if level is not None}
        assert fixed_factors(caption_for(levels)) == levels
        count += 1
    assert count == math.prod(len(LEVELS[name]) + 1 for name in FACTORS)


def test_prompt_parser_examples_and_errors():
    assert fixed_factors("a shape") == {}
    assert fixed_factors("A small red circle on the left.") == {
        "shape": "circle",
        "colour": "red",
        "size": "small",
        "x": "left",
    }
    assert fixed_factors("a red shape on a white background") == {"colour": "red", "background": "white"}
    assert caption_for({"colour": "orange"}) == "an orange shape"
    assert caption_for({"x": "right", "y": "top"}) == "a shape at the top right"
    for prompt in data.UNDERSPECIFIED_PROMPTS:
        assert len(fixed_factors(prompt)) <= 1, prompt
    for prompt in data.SPECIFIED_PROMPTS:
        assert fixed_factors(prompt).keys() == set(FACTORS), prompt
    with pytest.raises(ValueError, match="unknown word 'dog'"):
        fixed_factors("a red dog")
    with pytest.raises(ValueError, match="two colours"):
        fixed_factors("a red blue shape")
    with pytest.raises(ValueError, match="background colour"):
        fixed_factors("a white circle")
    with pytest.raises(ValueError, match="unknown shape"):
        sample_factors(3, 0, fixed={"shape": "star"})


# ------------------------------------------------------------------------------------------------------------------
# the shipped probe


@pytest.fixture(scope="module")
def probe():
    from conceptspace.testbed.probe import load_probe

    return load_probe()


def test_shipped_probe_is_small_and_reaches_its_thresholds(probe):
    from conceptspace.testbed.probe import PROBE_DIR, evaluate_probe

    assert (PROBE_DIR / "model.safetensors").stat().st_size < 1_000_000
    assert probe.metadata["training"]["seed"] == 0
    result = evaluate_probe(probe, n=1000, seed=2024)  # a stream training never used
    for name in ("shape", "colour", "background"):
        assert result["accuracy"][name] >= 0.98, result
    for name in ("size", "x", "y"):
        assert result["mae"][name] < 0.3, result


def test_probe_reads_every_input_format_alike(probe):
    factors = sample_factors(64, 5)
    pixels = render(factors)
    reference = probe.predict(pixels)
    tensor = data.to_tensor(pixels)
    for images, options in [
        (tensor, {}),
        ((tensor + 1) / 2, {"value_range": (0.0, 1.0)}),
        (torch.from_numpy(pixels).permute(0, 3, 1, 2), {}),
    ]:
        out = probe.predict(images, batch_size=17, **options)
        for name in FACTORS:
            np.testing.assert_allclose(out[name], reference[name], atol=1e-4)
    with_probs = probe.predict(pixels[:4], probabilities=True)
    assert with_probs["shape_probs"].shape == (4, 3)
    np.testing.assert_allclose(with_probs["colour_probs"].sum(1), 1, rtol=1e-5)
    assert len(probe.predict(pixels[:0])["shape"]) == 0


def test_probe_diversity_matches_the_ground_truth_of_a_prompt(probe):
    prompt = "a red shape"
    factors = sample_factors(400, 9, fixed=fixed_factors(prompt))
    measured = factor_diversity(probe.predict_factors(render(factors)), n_boot=300)
    truth = expected_diversity(prompt, n=20_000)
    for measure in ("entropy_shape_colour", "entropy_colour", "entropy_background"):
        estimate = measured[measure]
        assert estimate.ci_low - 0.02 <= truth[measure] <= estimate.ci_high + 0.02, (measure, estimate)
    for measure in ("std_size", "std_x", "std_y", "spread_position"):
        assert abs(measured[measure].value / truth[measure] - 1) < 0.15, (measure, measured[measure])
    assert (
        measured["entropy_position"].ci_low - 0.05
        <= truth["entropy_position"]
        <= measured["entropy_position"].ci_high + 0.05
    )


# ------------------------------------------------------------------------------------------------------------------
# diversity measures


def test_identical_images_have_no_diversity():
    same = sample_factors(
        100, 0, fixed=dict(zip(FACTORS, ["circle", "red", "small", "left", "top", "black"], strict=True))
    )
    same = FactorBatch(
        **{**same.as_dict(), "size": np.full(100, 5.0), "x": np.full(100, 8.0), "y": np.full(100, 8.0)}
    )
    result = factor_diversity(same)
    for measure, estimate in result.items():
        assert (estimate.value, estimate.ci_low, estimate.ci_high) == (0.0, 0.0, 0.0), measure
        assert estimate.n == 100


@pytest.mark.parametrize("k", [1, 2, 3, 6, 18])
def test_entropy_of_a_uniform_mix_is_log2_k(k):
    rng = np.random.default_rng(k)
    for n in (100, 1000):
        estimate = entropy(rng.integers(0, k, n), 18)  # a random mix
        assert estimate.ci_low <= math.log2(k) <= estimate.ci_high, (n, estimate)
        assert estimate.ci_low <= estimate.value <= estimate.ci_high
        assert estimate.ci_high - estimate.ci_low < (0.3 if n == 100 else 0.05)
        even = entropy(np.repeat(np.arange(k), n // k), 18)  # an exactly even one
        assert even.ci_low <= math.log2(k) + 0.01 and 0 <= even.value - math.log2(k) < 0.1


def test_entropy_interval_covers_the_truth_most_of_the_time():
    rng = np.random.default_rng(0)
    p = 1 / np.arange(1, 19)
    p /= p.sum()
    truth = -(p * np.log2(p)).sum()
    hits = 0
    for _ in range(200):
        estimate = entropy(rng.choice(18, size=200, p=p), 18)
        hits += estimate.ci_low <= truth <= estimate.ci_high
    assert hits / 200 > 0.9


def test_std_and_expected_diversity():
    values = np.random.default_rng(0).uniform(0, 6, 2000)
    estimate = std(values, n_boot=500)
    assert estimate.ci_low < 6 / math.sqrt(12) < estimate.ci_high
    truth = expected_diversity("a shape", n=50_000)
    assert truth["entropy_shape_colour"] == pytest.approx(math.log2(18))
    assert truth["std_size"] == pytest.approx((SIZE_RANGE[1] - SIZE_RANGE[0]) / math.sqrt(12), rel=0.02)
    assert expected_diversity("a red circle on a black background", n=1000)["entropy_shape_colour"] == 0
    assert expected_diversity("a large shape", n=50_000)["std_size"] < truth["std_size"]
    rows = diversity_rows(sample_factors(50, 0), "a shape", "truth", n_boot=50)
    assert {row["metric"] for row in rows} >= {"entropy_shape_colour", "std_x"} and rows[0]["n"] == 50


def test_layout_measures_against_the_world():
    """The position spread and the 3 × 3 cell entropy: the hand formula, the world's exact values, CI coverage and
    width over repeated draws, and the probe's reading of rendered images."""
    f = sample_factors(300, 3)
    assert factor_diversity(f, ["spread_position"], n_boot=0)["spread_position"].value == pytest.approx(
        math.sqrt(np.var(f.x, ddof=1) + np.var(f.y, ddof=1))
    )
    truth = expected_diversity("a shape", n=200_000)
    assert truth["entropy_position"] == pytest.approx(math.log2(9))
    assert expected_diversity("a shape on the left")["entropy_position"] == pytest.approx(math.log2(3))
    assert expected_diversity("a shape at the top left")["entropy_position"] == 0
    hits, widths = (
        {"spread_position": 0, "entropy_position": 0},
        {"spread_position": [], "entropy_position": []},
    )
    for rep in range(150):
        estimates = factor_diversity(sample_factors(128, 100 + rep), list(hits), n_boot=300, seed=rep)
        for measure, estimate in estimates.items():
            hits[measure] += estimate.ci_low <= truth[measure] <= estimate.ci_high
            widths[measure].append(estimate.ci_high - estimate.ci_low)
    assert 0.88 <= hits["spread_position"] / 150 <= 0.99, hits
    # (the world's positions are uniform: its entropy sits at the bound log2 9, where the clipped interval always
    # reaches; the estimator's coverage away from the bound is test_entropy_interval_covers_the_truth_most_of_the_time)
    assert hits["entropy_position"] / 150 >= 0.88, hits
    assert np.median(widths["spread_position"]) < 0.15 * truth["spread_position"]
    assert np.median(widths["entropy_position"]) < 0.6
    # every image in one cell, at one point: no layout diversity; a paired difference of a set with itself is 0
    assert family_of("spread_position") == "layout" and family_of("entropy_shape") == "appearance"
    same = paired_difference(f, f, "entropy_position", n_boot=100)
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)


def test_blank_images_are_background_only():
    from conceptspace.testbed.probe import BLANK_CONTRAST, blank_images

    world = render(sample_factors(300, 4))
    assert not blank_images(world).any()  # every image of the world shows its object
    background = np.broadcast_to(world[:1, :1, :1], world[:3].shape).copy()
    faint, edge = background.copy(), background.copy()
    faint[1, 10:16, 10:16] = np.clip(faint[1, 10:16, 10:16].astype(int) + BLANK_CONTRAST - 5, 0, 255)
    edge[2, 10:12, 10:12] = np.clip(edge[2, 10:12, 10:12].astype(int) + BLANK_CONTRAST + 20, 0, 255)
    assert (
        blank_images(background[:1]).all()
        and blank_images(faint[1:2]).all()
        and not blank_images(edge[2:3]).any()
    )
    with pytest.raises(ValueError, match="N, H, W, 3"):
        blank_images(world[0])


def test_probe_training_is_deterministic_and_saves_as_safetensors(tmp_path):
    from conceptspace.testbed.probe import FactorProbe, load_probe, train_probe

    first, second = (train_probe(seed=3, steps=3, batch_size=8, progress=False) for _ in range(2))
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    first.save_pretrained(tmp_path, metadata=first.metadata)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_probe(tmp_path)
    assert isinstance(loaded, FactorProbe) and loaded.metadata["training"]["steps"] == 3
    pixels = render(sample_factors(8, 0))
    expected, got = first.predict(pixels), loaded.predict(pixels)
    np.testing.assert_allclose(got["size"], expected["size"], atol=0.05)  # float16 weights
    with pytest.raises(FileNotFoundError, match="no probe file"):
        load_probe(tmp_path / "missing")
