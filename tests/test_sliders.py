"""Concept Slider training: strict recipes, the file a training writes, the direction it learns, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conceptspace.lora import apply_lora, read_lora
from conceptspace.sliders import RecipeError, SliderRecipe, load_recipe, recipe_from_dict, train_slider

SLIDERS = Path(__file__).resolve().parent.parent / "sliders"
MINIMAL = {"name": "size", "target": "a shape", "positive": "a large shape", "negative": "a small shape"}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def shapes_pair():
    from conceptspace.models import load_pair

    return load_pair("shapes", device="cpu", dtype=torch.float32)


# ------------------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("path", sorted(SLIDERS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name and recipe.positive != recipe.negative


def test_misspelt_key_is_refused_naming_the_right_one(tmp_path: Path) -> None:
    text = "name: size\ntarget: a shape\npostive: a large shape\nnegative: a small shape\n"
    with pytest.raises(RecipeError, match="'postive'.*'positive'"):
        load_recipe(_write(tmp_path, text))


@pytest.mark.parametrize("text", ["", "# nothing\n", "{}\n"])
def test_empty_recipe_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(RecipeError, match="empty"):
        load_recipe(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rank": "4"}, "'rank' must be int"),
        ({"rank": True}, "'rank' must be int"),
        ({"eta": "big"}, "'eta' must be"),
        ({"t_range": [0]}, "t_range"),
        ({"positive": ""}, "'positive' must be a non-empty string"),
        ({"layers": "attention"}, "layers must be one of"),
        ({"steps": 0}, "steps must be at least 1"),
    ],
)
def test_wrong_values_are_refused(change: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({**MINIMAL, **change})


def test_missing_prompt_is_refused() -> None:
    with pytest.raises(RecipeError, match="missing required key.*negative"):
        recipe_from_dict({k: v for k, v in MINIMAL.items() if k != "negative"})


def test_neutral_defaults_to_target() -> None:
    recipe = recipe_from_dict(MINIMAL)
    assert recipe.neutral_prompt == "a shape"
    assert recipe_from_dict({**MINIMAL, "neutral": "a thing"}).neutral_prompt == "a thing"


# ----------------------------------------------------------------------------------------------------- training
def _recipe(**changes) -> SliderRecipe:
    return recipe_from_dict({**MINIMAL, "sampling_steps": 10, "lr": 2e-3, **changes})


def test_training_writes_a_lora_with_recipe_and_chosen_layers(shapes_pair, tmp_path: Path) -> None:
    out = train_slider(
        shapes_pair, _recipe(layers="cross-attention", steps=3), tmp_path / "s.safetensors", progress=False
    )
    lora = read_lora(out)
    assert lora.metadata["recipe"]["positive"] == "a large shape"
    assert lora.metadata["base_model"] == "shapes" and lora.metadata["steps"] == 3
    assert lora.rank == 4 and lora.alpha == 1.0
    assert lora.modules and all(".attn2." in name for name in lora.modules)
    assert {name.rsplit(".attn2.", 1)[1] for name in lora.modules} == {"to_q", "to_k", "to_v", "to_out.0"}


def test_default_layers_are_self_attention(shapes_pair, tmp_path: Path) -> None:
    out = train_slider(shapes_pair, _recipe(steps=1), tmp_path / "s.safetensors", progress=False)
    assert all(".attn1." in name for name in read_lora(out).modules)


def test_sdxl_added_conditions(tiny_sdxl_pair, tmp_path: Path) -> None:
    # SDXL's UNet needs pooled text embeds and time ids with every call: training must pass them, batch-sized
    unet = tiny_sdxl_pair.base_network
    calls: list[tuple[int, dict]] = []

    def record(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        calls.append((sample.shape[0], kwargs.get("added_cond_kwargs") or {}))

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = train_slider(
            tiny_sdxl_pair, _recipe(steps=2, sampling_steps=2), tmp_path / "x.safetensors", progress=False
        )
    finally:
        handle.remove()
    assert calls, "training never called the UNet"
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    for batch, added in calls:
        assert set(added) == {"text_embeds", "time_ids"}
        assert tuple(added["text_embeds"].shape) == (batch, pooled) and tuple(added["time_ids"].shape) == (
            batch,
            6,
        )
    assert read_lora(out).metadata["base_model"] == "tiny-sdxl"


def test_slider_moves_epsilon_along_the_concept_direction(shapes_pair, tmp_path: Path) -> None:
    losses: list[float] = []
    out = train_slider(
        shapes_pair, _recipe(steps=30, seed=1), tmp_path / "s.safetensors", progress=False, losses=losses
    )
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    from conceptspace.sampling import encode_text

    unet = shapes_pair.base_network

    def cond(prompt: str) -> torch.Tensor:
        return encode_text(
            shapes_pair, prompt, negative_prompt=None, cfg=False, height=32, width=32
        ).inputs["encoder_hidden_states"]

    g = torch.Generator().manual_seed(123)
    x = torch.randn(8, unet.config.in_channels, 32, 32, generator=g)  # the testbed's 32×32×4 latents
    cosines = []
    with torch.no_grad():
        for t in (800, 500, 200):
            ts = torch.tensor(t)
            e = {
                p: unet(x, ts, encoder_hidden_states=cond(p).repeat(8, 1, 1)).sample
                for p in MINIMAL.values()
                if p != "size"
            }
            with apply_lora(unet, out, scale=1.0):
                e_slider = unet(x, ts, encoder_hidden_states=cond("a shape").repeat(8, 1, 1)).sample
            change = (e_slider - e["a shape"]).flatten()
            direction = (e["a large shape"] - e["a small shape"]).flatten()
            cosines.append(float(F.cosine_similarity(change, direction, dim=0)))
    assert min(cosines) > 0, cosines


# ---------------------------------------------------------------------------------------------------------- CLI
def test_cli_trains_a_three_step_slider(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conceptspace.cli import app

    recipe = _write(tmp_path, "\n".join(f"{k}: {v}" for k, v in MINIMAL.items()) + "\nsampling_steps: 4\n")
    out = tmp_path / "cli.safetensors"
    args = [
        "slider",
        "train",
        str(recipe),
        "--base",
        "shapes",
        "--out",
        str(out),
        "--steps",
        "3",
        "--device",
        "cpu",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and read_lora(out).metadata["steps"] == 3


def test_cli_refuses_a_misspelt_recipe(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conceptspace.cli import app

    recipe = _write(tmp_path, "name: x\ntarget: a\npositive: b\nnegative: c\nstpes: 3\n")
    result = CliRunner().invoke(app, ["slider", "train", str(recipe), "--base", "shapes"])
    assert result.exit_code != 0 and isinstance(result.exception, RecipeError)
    assert "'steps'" in str(result.exception)
