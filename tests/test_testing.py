"""The offline test helpers: the real CLIP tokenizer and deterministic tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from conceptspace import testing

BOS, EOS = 49406, 49407

PROMPTS = [
    "a photo of a cat",
    "A Cute PUPPY, sitting on a beach at sunset!",
    "Hello, world! It's a dog's life: (really?) -- yes... #tag @user $5 100%",
    "don't stop'n'go: 123,456.78 + 9/10 = x_y",
    "café naïve résumé Ünïcödé 東京タワー 🐶🚗",
    "tabs\tand\nnewlines   and  many   spaces",
    "a futuristic city " * 30,  # far over 77 tokens: truncated
]


@pytest.fixture(scope="module")
def tokenizer():
    return testing.clip_tokenizer()


@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_clip_tokenizer_matches_open_clip(tokenizer, prompt: str):
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.tokenize([prompt])[0].tolist()
    ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == len(reference) == 77
    end = reference.index(EOS)
    assert ids[: end + 1] == reference[: end + 1]
    assert ids[0] == BOS
    if len(prompt) > 300:
        assert end == 76  # truncated to 77 with the end token kept last


def test_clip_tokenizer_shape(tokenizer):
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS, EOS, EOS)
    ids = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [BOS, 320, 2368, EOS] and set(ids[4:]) == {EOS}


def test_tokenizer_files_with_openclip_padding(tmp_path):
    from transformers import CLIPTokenizer

    directory = testing.write_clip_tokenizer_files(tmp_path / "tok", pad_token="!")
    assert json.loads((directory / "tokenizer_config.json").read_text())["pad_token"] == "!"
    tok = CLIPTokenizer.from_pretrained(directory)
    assert tok.pad_token_id == 0
    ids = tok("a cat", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [BOS, 320, 2368, EOS] and set(ids[4:]) == {0}


def test_tiny_models_are_deterministic_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = testing.tiny_sdxl_unet(seed=3)
    assert torch.equal(torch.rand(3), expected)
    again = testing.tiny_sdxl_unet(seed=3).state_dict()
    other = testing.tiny_sdxl_unet(seed=4).state_dict()
    for key, value in first.state_dict().items():
        assert torch.equal(value, again[key]), key
    assert not torch.equal(first.state_dict()["conv_in.weight"], other["conv_in.weight"])
    lcm = testing.tiny_sdxl_unet(seed=3, lcm=True)
    assert (
        lcm.config.time_cond_proj_dim == testing.LCM_TIME_COND_DIM and first.config.time_cond_proj_dim is None
    )


def test_write_hub_cache_subset(tmp_path):
    cache = testing.write_hub_cache(tmp_path, names=["lightning"])
    assert [p.name for p in cache.iterdir()] == ["models--ByteDance--SDXL-Lightning"]
    repo = cache / "models--ByteDance--SDXL-Lightning"
    assert (repo / "refs" / "main").read_text() == testing.SNAPSHOT_REVISION
    file = repo / "snapshots" / testing.SNAPSHOT_REVISION / "sdxl_lightning_4step_unet.safetensors"
    assert file.is_symlink() and file.resolve().parent == repo / "blobs"
