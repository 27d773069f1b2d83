"""`conceptspace compare`: methods from their specs, the Fréchet distance against torchmetrics' FID, what the
comparison measures and pairs on tiny models and on the testbed, the ranking, reuse and the command line."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conceptspace import Base, Distilled, Hybrid, Named, load_pair, sample
from conceptspace.cli import ranking_lines
from conceptspace.comparison import ALL_PROMPTS, compare, parse_method, ranking
from conceptspace.diversity import generate_or_reuse
from conceptspace.quality import fid, frechet_distance
from conceptspace.ranking import NO_CLEAR_WINNER, no_clear_winner
from conceptspace.remedies import CADS
from conceptspace.sampling import regime_from_name

FAST = dict(n_boot=50, n_perm=50, progress=False)


@pytest.fixture(scope="module")
def pair():
    return load_pair("tiny-sdxl", "tiny-dmd", device="cpu")


@pytest.fixture(scope="module")
def clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    from conceptspace.testing import write_tiny_hf_clip

    return write_tiny_hf_clip(tmp_path_factory.mktemp("hf-clip"))


# ------------------------------------------------------------------------------------------------------ methods
def test_a_method_spec_builds_its_regime_and_names_it_after_its_options():
    assert parse_method("hybrid") == Hybrid()
    k2 = parse_method("hybrid:k=2")
    assert isinstance(k2, Named) and k2.name == "hybrid-k2" and k2.over == Hybrid(k=2)
    cads = parse_method("cads:noise_scale=0.1:rescale=false")
    assert cads.name == "cads-noise_scale0.1-rescalefalse" and cads.over == CADS(
        noise_scale=0.1, rescale=False
    )
    assert parse_method(Hybrid(k=3)) == Hybrid(k=3)
    sliders = parse_method("sliderspace:sliders=runs/space/sliders:scale=2")
    assert sliders.name == "sliderspace-slidersruns_space_sliders-scale2"  # a folder name, not a path
    assert sliders.over.sliders == ("runs/space/sliders",) and sliders.over.scale == 2
    assert parse_method("sliderspace:sliders=runs/space/sliders:name=slider-space").name == "slider-space"
    shipped = parse_method("sliderspace:sliders=testbed:a-shape:scale=2")
    assert (
        shipped.over.sliders == ("testbed:a-shape",)
        and shipped.name == "sliderspace-sliderstestbed_a-shape-scale2"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hybird", "unknown regime 'hybird'"),
        ("hybrid:q=2", "hybrid takes no option 'q'"),
        ("hybrid:k", "is not key=value"),
        ("hybrid:k=0", "k must be a whole number >= 1"),
    ],
)
def test_a_bad_method_spec_says_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_method(spec)


def test_a_named_regime_runs_its_regime_exactly_and_rebuilds_from_its_description(pair):
    named = Named(over=Hybrid(k=2), name="hybrid-k2")
    described = json.loads(json.dumps(named.describe()))
    again = regime_from_name(described.pop("regime"), **described)
    assert again == named
    one = sample(pair, "a red circle", named, [0, 1], output_type="latent", progress=False).images
    two = sample(pair, "a red circle", Hybrid(k=2), [0, 1], output_type="latent", progress=False).images
    assert torch.equal(one, two)
    with pytest.raises(ValueError, match="names its folder"):
        Named(over=Hybrid(), name="a/b")


def test_bad_references_fail_before_anything_is_sampled(pair, tmp_path):
    with pytest.raises(ValueError, match="neither a folder nor a regime"):
        compare(
            pair,
            ["a red circle"],
            ["hybrid"],
            seeds=range(2),
            out_dir=tmp_path / "a",
            fid_ref=tmp_path / "no",
            **FAST,
        )
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_methods_may_not_repeat_or_take_the_references_names(pair, tmp_path):
    with pytest.raises(ValueError, match="always compared"):
        compare(pair, ["a red circle"], ["distilled"], seeds=range(2), out_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="listed twice"):
        compare(pair, ["a red circle"], ["hybrid", "hybrid"], seeds=range(2), out_dir=tmp_path, **FAST)


# ------------------------------------------------------------------------------------------ Fréchet distance
class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)


@pytest.mark.parametrize("dim", [6, 120])  # fewer dimensions than images, and more
def test_the_frechet_distance_equals_torchmetrics_fid_on_the_same_features(dim):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(40, dim))
    b = 1.4 * rng.normal(size=(30, dim)) + 0.3
    theirs = fid(
        torch.tensor(a).reshape(40, dim, 1, 1),
        torch.tensor(b).reshape(30, dim, 1, 1),
        feature_extractor=_Identity(),
    )
    assert frechet_distance(a, b) == pytest.approx(theirs, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="differ in dimension"):
        frechet_distance(a, b[:, :-1])


# ------------------------------------------------------------------------------------------------ tiny models
@pytest.fixture(scope="module")
def compared(pair, clip_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = compare(
        pair,
        ["a red circle", "a blue square"],
        ["hybrid", "cads:noise_scale=0.5"],
        seeds=range(6),
        out_dir=out,
        base=Base(steps=4),
        embedder=clip_spec,
        fid_features=_Identity(),
        inception_score=True,
        is_classifier=torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()),  # 12 "classes"
        batch_size=3,
        **FAST,
    )
    return result


def _row(rows, prompt, regime, metric):
    found = [r for r in rows if (r["prompt"], r["regime"], r["metric"]) == (prompt, regime, metric)]
    assert len(found) == 1, (prompt, regime, metric, len(found))
    return found[0]


def test_compare_measures_diversity_quality_and_cost_per_method_and_prompt(compared):
    rows = compared.rows
    methods = ["base", "distilled", "hybrid", "cads-noise_scale0.5"]
    for prompt in ("a red circle", "a blue square", ALL_PROMPTS):
        for method in methods:
            for metric in ("vendi", "pairwise_distance", "clip_score"):
                row = _row(rows, prompt, method, metric)
                assert math.isfinite(row["value"]) and row["ci_low"] <= row["value"] <= row["ci_high"]
        for method in methods[2:]:
            for reference in ("distilled", "base"):
                p_value = _row(rows, prompt, f"{method} - {reference}", "diff_vendi")["p_value"]
                assert 0 < p_value <= 1  # NaN fails here, as it should
            fd_row = _row(rows, prompt, method, "fd")
            assert fd_row["value"] >= 0 and fd_row["reference"] == "regime:base"
            _row(rows, prompt, method, "fid")
            _row(rows, prompt, f"{method} - distilled", "diff_fd")
    assert not [r for r in rows if r["metric"] == "fd" and r["regime"] == "base"]  # the reference itself
    # costs: the hybrid evaluates as often as the student, the base (4 CFG steps) twice per step
    nfe = {m: _row(rows, ALL_PROMPTS, m, "evaluations")["value"] for m in methods}
    assert nfe == {"base": 8, "distilled": 4, "hybrid": 4, "cads-noise_scale0.5": 4}
    score = _row(rows, ALL_PROMPTS, "hybrid", "inception_score")
    assert score["n"] == 12 and score["classifier"] == "Sequential"
    # by hand from the written images: exp(mean KL(p(y|x) ‖ p(y))) of the 12 pooled "class" logits
    pixels = np.stack(
        [np.asarray(Image.open(f)) for f in sorted((compared.out_dir / "hybrid").glob("*.png"))]
    )
    logits = pixels.reshape(12, 2, pixels.shape[1] // 2, 2, pixels.shape[2] // 2, 3).mean(axis=(2, 4)) / 255.0
    p = np.exp(logits.reshape(12, -1) - logits.reshape(12, -1).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    by_hand = np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean())
    assert score["value"] == pytest.approx(by_hand, rel=1e-3)
    seconds = _row(rows, ALL_PROMPTS, "hybrid", "seconds_per_image")
    assert seconds["value"] > 0 and seconds["n"] == 4  # 2 prompts × 2 batches of 3


def test_paired_quality_differences_are_differences_on_the_same_seeds(compared):
    rows = compared.rows
    for prompt in ("a red circle", ALL_PROMPTS):
        hybrid = _row(rows, prompt, "hybrid", "clip_score")["value"]
        student = _row(rows, prompt, "distilled", "clip_score")["value"]
        diff = _row(rows, prompt, "hybrid - distilled", "diff_clip_score")
        assert diff["value"] == pytest.approx(hybrid - student, abs=1e-9)
        fd_diff = _row(rows, prompt, "hybrid - distilled", "diff_fd")["value"]
        fd_gap = _row(rows, prompt, "hybrid", "fd")["value"] - _row(rows, prompt, "distilled", "fd")["value"]
        assert fd_diff == pytest.approx(fd_gap, abs=1e-9)


def test_every_regime_is_measured_against_the_bases_own_samples_and_paired_against_the_student(compared):
    rows = compared.rows
    for prompt in ("a red circle", "a blue square", ALL_PROMPTS):
        for method in ("distilled", "hybrid", "cads-noise_scale0.5"):
            for metric in ("precision", "recall", "density", "coverage", "cmmd"):
                row = _row(rows, prompt, method, metric)
                assert row["reference"] == "base" and row["embedder"] == compared.rows[0]["embedder"]
                assert math.isfinite(row["value"]) and row["ci_low"] <= row["value"] <= row["ci_high"]
                assert row.get("k", 2) == 2  # 6 seeds: the largest k whose halves (3 seeds) hold k + 1
        for method in ("hybrid", "cads-noise_scale0.5"):
            diff = _row(rows, prompt, f"{method} - distilled", "diff_coverage")
            assert diff["reference"] == "base" and diff["ci_low"] <= diff["value"] <= diff["ci_high"]
            gap = (
                _row(rows, prompt, method, "coverage")["value"]
                - _row(rows, prompt, "distilled", "coverage")["value"]
            )
            assert diff["value"] == pytest.approx(gap, abs=1e-9)  # over prompts too: a mean of differences
    assert not [r for r in rows if r["metric"] in ("coverage", "cmmd") and r["regime"] == "base"]


def test_the_report_and_run_json_of_a_comparison(compared):
    run = json.loads((compared.out_dir / "run.json").read_text())
    assert run["command"] == "compare"
    assert run["parameters"]["compare"]["methods"] == ["hybrid", "cads-noise_scale0.5"]
    assert run["regimes"]["cads-noise_scale0.5"]["settings"]["over"]["noise_scale"] == 0.5
    html = compared.report.read_text()
    assert 'id="comparison"' in html and "compare-pareto.png" in html
    assert (compared.out_dir / "assets" / "figures" / "compare-pareto.png").is_file()
    assert [entry["method"] for entry in compared.ranking][-2:] == ["base", "distilled"]


def test_a_reference_folder_replaces_the_base_as_the_fd_reference(pair, clip_spec, compared, tmp_path):
    import shutil

    shutil.copytree(compared.out_dir, tmp_path / "run")  # the same images, sampled once
    shutil.copytree(compared.out_dir / "base", tmp_path / "real")  # the base's own images, as a folder
    again = compare(
        pair, ["a red circle", "a blue square"], ["hybrid", "cads:noise_scale=0.5"], seeds=range(6),
        out_dir=tmp_path / "run", base=Base(steps=4), embedder=clip_spec, fid_ref=tmp_path / "real",
        batch_size=3, report=False, **FAST,
    )  # fmt: skip
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert sorted(run["reused_regimes"]) == ["base", "cads-noise_scale0.5", "distilled", "hybrid"]
    base_fd = _row(again.rows, ALL_PROMPTS, "base", "fd")  # the base is now measured too
    hybrid_fd = _row(again.rows, ALL_PROMPTS, "hybrid", "fd")
    assert base_fd["reference"] == "folder" and base_fd["value"] == pytest.approx(0.0, abs=1e-6)
    assert hybrid_fd["value"] == pytest.approx(
        _row(compared.rows, ALL_PROMPTS, "hybrid", "fd")["value"], rel=1e-6
    )


def test_images_are_reused_only_from_the_same_regime_settings(pair, tmp_path):
    seeds, prompts = range(2), ["a red circle"]
    options = dict(progress=False, batch_size=2)
    generate_or_reuse(pair, prompts, [Distilled(), Hybrid(k=1)], seeds, tmp_path, **options)
    run = generate_or_reuse(pair, prompts, [Distilled(), Hybrid(k=2)], seeds, tmp_path, **options)
    assert run["reused_regimes"] == ["distilled"]  # the hybrid changed its k: sampled again
    assert run["regimes"]["hybrid"]["settings"]["k"] == 2


# ------------------------------------------------------------------------------------------------------ ranking
def _cell(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def test_ranking_orders_by_diversity_gain_and_marks_the_pareto_set():
    def rows_for(method, diversity, quality, nfe, gain):
        out = [
            {
                "prompt": ALL_PROMPTS,
                "regime": method,
                "metric": "vendi",
                "embedder": "e",
                **_cell(diversity, 0, 9),
            },
            {
                "prompt": ALL_PROMPTS,
                "regime": method,
                "metric": "clip_score",
                "embedder": "e",
                **_cell(quality, 0, 99),
            },
            {
                "prompt": ALL_PROMPTS,
                "regime": method,
                "metric": "evaluations",
                **_cell(nfe, math.nan, math.nan),
            },
        ]
        if gain is not None:
            out.append(
                {"prompt": ALL_PROMPTS, "regime": f"{method} - distilled", "metric": "diff_vendi", "embedder": "e",
                 **_cell(gain, gain - 1, gain + 1)}
            )  # fmt: skip
        return out

    rows = (
        rows_for("base", 5.0, 30.0, 100, 3.0)
        + rows_for("distilled", 2.0, 31.0, 4, None)
        + rows_for("a", 4.0, 29.0, 4, 2.0)  # Pareto: most diverse at 4 evaluations
        + rows_for("b", 3.0, 28.0, 4, 1.0)  # beaten by a on every count
        + rows_for("c", 4.5, 25.0, 8, 2.5)  # more diverse than a, worse quality, dearer: still not beaten
    )
    settings = {
        "methods": ["a", "b", "c"],
        "diversity": {"metric": "vendi", "embedder": "e"},
        "quality": {"metric": "clip_score", "embedder": "e", "higher_is_better": True},
    }
    table = ranking(rows, settings)
    assert [e["method"] for e in table] == ["c", "a", "b", "base", "distilled"]
    assert [e["rank"] for e in table] == [1, 2, 3, None, None]
    assert {e["method"]: e["pareto"] for e in table} == {
        "c": True, "a": True, "b": False, "base": True, "distilled": True
    }  # fmt: skip
    assert [e["versus_student"] for e in table] == [
        "more diverse", "more diverse", "no clear difference", None, None
    ]  # fmt: skip
    assert not no_clear_winner(table)

    # every gain's interval reaches 0: rank 1 is no win, none is in the Pareto set, and the table says so
    straddling = (
        rows_for("base", 5.0, 30.0, 100, 3.0)
        + rows_for("distilled", 2.0, 31.0, 4, None)
        + rows_for("a", 2.1, 31.0, 4, 0.5)
        + rows_for("b", 2.05, 31.0, 4, -0.2)
    )
    table = ranking(straddling, {**settings, "methods": ["a", "b"]})
    assert [(e["method"], e["rank"], e["pareto"]) for e in table][:2] == [("a", 1, False), ("b", 2, False)]
    assert no_clear_winner(table)
    assert ranking_lines(table)[-1] == NO_CLEAR_WINNER


# ---------------------------------------------------------------------------------------------------- testbed
def test_on_the_testbed_compare_reads_the_probe_and_the_base_costs_more(tmp_path):
    torch.manual_seed(0)
    shapes = load_pair("shapes", "dmd", dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="unknown word 'photo'"):  # before any sampling
        compare(shapes, ["a photo of a dog"], ["hybrid"], seeds=range(2), out_dir=tmp_path / "dog", **FAST)
    assert not (tmp_path / "dog" / "run.json").exists()
    result = compare(
        shapes,
        ["a shape", "a red shape"],
        ["hybrid"],
        seeds=range(24),
        out_dir=tmp_path,
        base=Base(steps=12),
        batch_size=24,
        report=False,
        **FAST,
    )
    rows = result.rows
    for prompt in ("a shape", "a red shape", ALL_PROMPTS):
        _row(rows, prompt, "hybrid - distilled", "diff_entropy_shape_colour")
    adherence = _row(rows, ALL_PROMPTS, "distilled", "adherence")  # only "a red shape" fixes a factor
    assert adherence["n"] == 24 and 0 <= adherence["value"] <= 1
    hybrid = next(e for e in result.ranking if e["method"] == "hybrid")
    assert hybrid["quality"] is not None and hybrid["diversity_vs_student"] is not None
    base = next(e for e in result.ranking if e["method"] == "base")
    assert base["evaluations"] == 24 and base["relative_seconds"] > 2  # 24 network passes against 4


def test_ranking_reads_a_single_prompts_rows_where_no_average_over_prompts_exists():
    """One prompt on the testbed: the embedders' measures come with (all prompts) rows, the probe's do not; the
    ranking reads the prompt's own probe rows, and an (all prompts) row wins where both exist."""
    rows = [
        {"prompt": "a shape", "regime": "m - distilled", "metric": "diff_entropy", "embedder": "probe",
         **_cell(0.9, 0.5, 1.7)},
        {"prompt": "a shape", "regime": "m", "metric": "vendi", "embedder": "e", **_cell(9.0, 8.0, 10.0)},
        {"prompt": ALL_PROMPTS, "regime": "m", "metric": "vendi", "embedder": "e", **_cell(3.0, 2.0, 4.0)},
    ]  # fmt: skip
    settings = {
        "methods": ["m"],
        "diversity": {"metric": "entropy", "embedder": "probe"},
        "quality": {"metric": "vendi", "embedder": "e"},
    }
    (entry,) = [e for e in ranking(rows, settings) if e["method"] == "m"]
    assert entry["diversity_vs_student"] == {"value": 0.9, "ci_low": 0.5, "ci_high": 1.7}
    assert entry["quality"]["value"] == 3.0 and entry["versus_student"] == "more diverse"


def test_the_prompt_aware_score_is_the_geometric_mean_of_each_prompts_vendi_and_the_order_2_vendi_is_reported(
    compared,
):
    """With the same seeds per prompt, Conditional-Vendi (q = 1, the prompt as the condition) is the geometric
    mean of the prompts' own Vendi scores — read here off compare's own per-prompt rows."""
    rows = compared.rows
    prompts = ("a red circle", "a blue square")
    for method in ("base", "distilled", "hybrid", "cads-noise_scale0.5"):
        per_prompt = [_row(rows, prompt, method, "vendi")["value"] for prompt in prompts]
        row = _row(rows, ALL_PROMPTS, method, "conditional_vendi")
        assert row["value"] == pytest.approx(math.exp(np.mean(np.log(per_prompt))), rel=1e-9)
        assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["n"] == 12 and row["n_prompts"] == 2
        for prompt in (*prompts, ALL_PROMPTS):
            q2 = _row(rows, prompt, method, "vendi_q2")
            assert 1 <= q2["value"] <= _row(rows, prompt, method, "vendi")["value"] + 1e-9  # q=2 ≤ q=1
    diff = _row(rows, ALL_PROMPTS, "hybrid - distilled", "diff_conditional_vendi")
    gap = _row(rows, ALL_PROMPTS, "hybrid", "conditional_vendi")["value"]
    gap -= _row(rows, ALL_PROMPTS, "distilled", "conditional_vendi")["value"]
    assert diff["value"] == pytest.approx(gap) and diff["ci_low"] <= diff["value"] <= diff["ci_high"]


def test_another_embedder_adds_its_own_diversity_rows_for_the_same_images(
    pair, clip_spec, compared, tmp_path
):
    from conceptspace.diversity import images_by_prompt, read_run
    from conceptspace.embeddings import load_embedder
    from conceptspace.metrics import vendi_score

    shutil.copytree(compared.out_dir, tmp_path / "again")
    again = compare(
        pair, ["a red circle", "a blue square"], ["hybrid", "cads:noise_scale=0.5"], seeds=range(6),
        out_dir=tmp_path / "again", base=Base(steps=4), embedder=clip_spec,
        also_embedders=[clip_spec, "pixels:8"],  # the main one again: no second copy of its rows
        fid_features=_Identity(), inception_score=True,
        is_classifier=torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()), batch_size=3,
        report=False, **FAST,
    )  # fmt: skip
    pixels = [r for r in again.rows if r.get("embedder") == "pixels:8"]
    assert {r["metric"] for r in pixels} == {
        "vendi", "vendi_q2", "pairwise_distance", "conditional_vendi",
        "diff_vendi", "diff_vendi_q2", "diff_pairwise_distance", "diff_conditional_vendi",
    }  # fmt: skip
    files = images_by_prompt(read_run(again.out_dir), again.out_dir)["a red circle"]["hybrid"]
    embedder = load_embedder("pixels:8")
    row = _row(pixels, "a red circle", "hybrid", "vendi")
    assert row["value"] == pytest.approx(
        vendi_score(embedder.embed_images([str(p) for _, p in files])), rel=1e-6
    )
    clip_rows = [r for r in again.rows if r.get("embedder") != "pixels:8"]
    assert len(clip_rows) == len(compared.rows)  # the main embedder given again adds no copy
