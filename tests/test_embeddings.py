"""Embedders: tiny random open_clip / HF CLIP / DINOv2 models written to temporary files and loaded through the
real spec strings; offline errors for the real model names; DreamSim through a stand-in package; the registry."""

import contextlib
import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from conceptspace import embeddings
from conceptspace.embeddings import (
    Embedder,
    EmbedderNotFoundError,
    EmbedderSpecError,
    MissingDependencyError,
    TextNotSupportedError,
    default_embedder,
    load_embedder,
    register_embedder,
    registry,
)

TINY_OPEN_CLIP = "cs-test-tiny-openclip"
N_IMAGES = 5


@contextlib.contextmanager
def seeded(seed: int):
    """Build under a fixed seed without touching the session's global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


@pytest.fixture(scope="module")
def open_clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny open_clip model: its config registered with ``add_model_config``, random weights in a checkpoint."""
    import open_clip

    folder = tmp_path_factory.mktemp("open-clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{TINY_OPEN_CLIP}.json")
    with seeded(0):
        model = open_clip.create_model(TINY_OPEN_CLIP)
    torch.save(model.state_dict(), folder / "ckpt.pt")
    return f"open_clip:{TINY_OPEN_CLIP}:{folder / 'ckpt.pt'}"


@pytest.fixture(scope="module")
def hf_clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny transformers CLIPModel folder with a small-crop CLIPImageProcessor and the real CLIP tokenizer."""
    from conceptspace.testing import write_tiny_hf_clip

    return write_tiny_hf_clip(tmp_path_factory.mktemp("hf-clip"))


@pytest.fixture(scope="module")
def dinov2_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny transformers Dinov2Model folder with its BitImageProcessor (ImageNet normalisation, small crop)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=28,
        patch_size=7,
    )
    with seeded(2):
        model = Dinov2Model(config)
    model.save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return f"dinov2:{folder}"


@pytest.fixture(scope="module")
def loaded(open_clip_spec: str, hf_clip_spec: str, dinov2_spec: str) -> dict[str, Embedder]:
    specs = {"open_clip": open_clip_spec, "hf-clip": hf_clip_spec, "dinov2": dinov2_spec}
    return {kind: load_embedder(spec, device="cpu", progress=False) for kind, spec in specs.items()}


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """Five distinct uint8 RGB images (N, H, W, 3), not square so the resize/crop paths run."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(N_IMAGES, 36, 44, 3), dtype=np.uint8)


KINDS = ["open_clip", "hf-clip", "dinov2"]
CLIP_KINDS = ["open_clip", "hf-clip"]
EXPECTED_DIM = {"open_clip": 16, "hf-clip": 24, "dinov2": 32}


@pytest.mark.parametrize("kind", KINDS)
def test_image_embeddings_are_unit_rows_on_cpu(loaded, pixels, kind):
    embedder = loaded[kind]
    out = embedder.embed_images(pixels)
    assert out.shape == (N_IMAGES, EXPECTED_DIM[kind]) and embedder.dim == EXPECTED_DIM[kind]
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(N_IMAGES))
    assert embedder.name.startswith(f"{kind}:")


@pytest.mark.parametrize("kind", KINDS)
def test_batch_size_does_not_change_embeddings(loaded, pixels, kind):
    one = loaded[kind].embed_images(pixels, batch_size=1)
    three = loaded[kind].embed_images(pixels, batch_size=3)
    torch.testing.assert_close(one, three, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_pil_numpy_and_tensor_inputs_agree(loaded, pixels, kind):
    embedder = loaded[kind]
    from_numpy = embedder.embed_images(pixels)
    from_pil = embedder.embed_images([Image.fromarray(p) for p in pixels])
    from_tensor = embedder.embed_images(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    from_float_numpy = embedder.embed_images(pixels.astype(np.float32) / 255)  # diffusers' output_type="np"
    for other in (from_pil, from_tensor, from_float_numpy):
        torch.testing.assert_close(other, from_numpy, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_same_image_same_embedding_different_images_differ(loaded, pixels, kind):
    embedder = loaded[kind]
    repeated = embedder.embed_images(np.stack([pixels[0], pixels[1], pixels[0]]))
    torch.testing.assert_close(repeated[0], repeated[2], atol=1e-6, rtol=0)
    cosine = repeated @ repeated.T
    assert cosine[0, 1] < 1 - 1e-4


def _input_size(embedder) -> tuple[int, int]:
    if hasattr(embedder, "processor"):
        return embedder.processor.crop_size["height"], embedder.processor.crop_size["width"]
    size = embedder.model.visual.image_size
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_embed_pixels_is_differentiable_and_matches_embed_images(loaded, kind):
    embedder = loaded[kind]
    height, width = _input_size(embedder)  # at the model's input size no resize differs between the two paths
    images = np.random.default_rng(1).integers(0, 256, size=(3, height, width, 3), dtype=np.uint8)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).requires_grad_(True)
    embedded = embedder.embed_pixels(pixels)
    torch.testing.assert_close(embedded.detach(), embedder.embed_images(images), atol=1e-4, rtol=0)
    embedded[:, 0].sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in embedder.model.parameters())  # the embedder stays frozen


def test_embed_pixels_on_the_testbed_and_pixels_embedders_and_refusals(loaded):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    for spec in ("testbed:clip", "pixels:8"):
        embedder = load_embedder(spec, device="cpu", dtype=torch.float32, progress=False)
        torch.testing.assert_close(
            embedder.embed_pixels(pixels), embedder.embed_images(images), atol=1e-4, rtol=0
        )
    with pytest.raises(TypeError, match="cannot embed tensors differentiably"):
        loaded["dinov2"].embed_pixels(pixels)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        loaded["hf-clip"].embed_pixels(pixels[:, :1])


def test_image_files_and_single_images_are_accepted(loaded, pixels, tmp_path):
    embedder = loaded["open_clip"]
    path = tmp_path / "image.png"
    Image.fromarray(pixels[2]).save(path)
    expected = embedder.embed_images(pixels[2:3])
    for single in (
        path,
        str(path),
        Image.fromarray(pixels[2]),
        pixels[2],
        iter([Image.fromarray(pixels[2])]),
    ):
        torch.testing.assert_close(embedder.embed_images(single), expected, atol=1e-5, rtol=0)
    assert embedder.embed_images([]).shape == (0, EXPECTED_DIM["open_clip"])


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_text_embeddings_share_the_image_space(loaded, pixels, kind):
    embedder = loaded[kind]
    assert embedder.has_text
    prompts = ["a photo of a cat", "a sunset over the beach", "a futuristic city"]
    texts = embedder.embed_texts(prompts)
    images = embedder.embed_images(pixels)
    assert texts.shape == (3, images.shape[1]) and texts.dtype == torch.float32
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(3))
    scores = images @ texts.T  # cosine(image, text)
    # the shared space is the one CLIP's own image-text logits live in: the model's forward on the same inputs
    # gives logit_scale · cos(image, text) — a text vector from another head or space would not match
    from PIL import Image

    pil = [Image.fromarray(p) for p in pixels]
    with torch.no_grad():
        if kind == "hf-clip":
            tokens = embedder.tokenizer(
                prompts,
                padding="max_length",
                truncation=True,
                max_length=embedder.max_length,
                return_tensors="pt",
            )
            pixel_values = embedder.processor(images=pil, return_tensors="pt")["pixel_values"]
            out = embedder.model(**tokens, pixel_values=pixel_values)
            expected = out.logits_per_image / embedder.model.logit_scale.exp()
        else:
            image_features, text_features, logit_scale = embedder.model(
                torch.stack([embedder.preprocess(im) for im in pil]), embedder.tokenizer(prompts)
            )[:3]
            expected = image_features @ text_features.T
    torch.testing.assert_close(scores, expected.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(embedder.embed_texts(prompts, batch_size=1), texts, atol=1e-5, rtol=0)
    torch.testing.assert_close(embedder.embed_texts(prompts[1]), texts[1:2], atol=1e-5, rtol=0)
    assert not torch.allclose(texts[0], texts[1])


def test_dinov2_has_no_text_tower(loaded):
    embedder = loaded["dinov2"]
    assert not embedder.has_text
    with pytest.raises(TextNotSupportedError, match="images only"):
        embedder.embed_texts(["a cat"])


def test_progress_bar_shows_and_can_be_silenced(open_clip_spec, hf_clip_spec, pixels, capsys):
    load_embedder(open_clip_spec, device="cpu", progress=True).embed_images(pixels)
    assert "embedding [open_clip:" in capsys.readouterr().err
    load_embedder(open_clip_spec, device="cpu", progress=False).embed_images(pixels)
    load_embedder(hf_clip_spec, device="cpu", progress=False).embed_images(pixels)  # no "Loading weights" bar
    assert capsys.readouterr().err == ""


def test_bad_image_inputs_are_clear_errors(loaded, pixels):
    embedder = loaded["open_clip"]
    vae_output = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    with pytest.raises(ValueError, match=r"\[0, 1\].*x / 2 \+ 0.5"):
        embedder.embed_images(vae_output)
    with pytest.raises(ValueError, match="got shape"):
        embedder.embed_images(pixels[0, :, :, 0])
    with pytest.raises(TypeError, match="cannot embed"):
        embedder.embed_images(42)


def test_open_clip_offline_missing_weights_name_repo_and_command(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbedderNotFoundError) as info:
        load_embedder("open_clip:ViT-B-32:laion2b_s34b_b79k", device="cpu", cache_dir=empty_cache)
    message = str(info.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message
    assert (
        f"hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_pytorch_model.bin --cache-dir {empty_cache}"
        in message
    )
    assert "HF_HUB_OFFLINE=1" in message


def test_open_clip_spec_errors(open_clip_spec, tmp_path):
    with pytest.raises(EmbedderNotFoundError, match="does not exist"):
        load_embedder(f"open_clip:{TINY_OPEN_CLIP}:{tmp_path / 'missing.pt'}", device="cpu")
    with pytest.raises(EmbedderSpecError, match="laion2b_s34b_b79k"):  # an unknown tag lists the known ones
        load_embedder("open_clip:ViT-B-32:no-such-tag", device="cpu")
    with pytest.raises(EmbedderSpecError, match="names no weights"):
        load_embedder("open_clip:ViT-B-32", device="cpu")
    with pytest.raises(EmbedderSpecError, match="ViT-B-32"):  # close matches for a misspelt model
        load_embedder("open_clip:ViT-B-33:laion2b_s34b_b79k", device="cpu")


def test_hf_clip_offline_missing_weights_name_repo_and_command(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbedderNotFoundError) as info:
        load_embedder("hf-clip:openai/clip-vit-large-patch14", device="cpu", cache_dir=empty_cache)
    message = str(info.value)
    assert "openai/clip-vit-large-patch14" in message
    assert (
        "hf download openai/clip-vit-large-patch14 --include" in message
        and f"--cache-dir {empty_cache}" in message
    )
    with pytest.raises(EmbedderNotFoundError, match="facebook/dinov2-base"):
        load_embedder("dinov2:facebook/dinov2-base", device="cpu", cache_dir=empty_cache)


def test_hf_local_folder_errors(tmp_path, dinov2_spec, hf_clip_spec):
    with pytest.raises(EmbedderNotFoundError, match="does not exist"):
        load_embedder(f"hf-clip:{tmp_path / 'nowhere'}", device="cpu")
    with pytest.raises(EmbedderSpecError, match="not DINOv2"):
        load_embedder(f"dinov2:{hf_clip_spec.split(':', 1)[1]}", device="cpu")


def test_dreamsim_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dreamsim", None)  # `import dreamsim` raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'conceptspace\[dreamsim\]'"):
        load_embedder("dreamsim:ensemble", device="cpu")
    with pytest.raises(EmbedderSpecError, match="dreamsim:dino_vitb16"):
        load_embedder("dreamsim:no-such-type", device="cpu")


class _FakeDreamSim(torch.nn.Module):
    """Stands in for DreamSim's PerceptualModel: ``embed`` of a (B, 3, 224, 224) batch in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, 12)

    def embed(self, img: torch.Tensor) -> torch.Tensor:
        assert img.shape[1:] == (3, 224, 224) and img.min() >= 0 and img.max() <= 1
        embed = self.proj(torch.nn.functional.adaptive_avg_pool2d(img, 8).flatten(1)).squeeze()
        return embed - embed.mean(dim=-1, keepdim=True)  # like DreamSim: centred, not unit norm


@pytest.fixture
def fake_dreamsim(monkeypatch) -> types.ModuleType:
    """A stand-in ``dreamsim`` package with the real one's entry point and config, recording its calls."""
    from torchvision import transforms

    module = types.ModuleType("dreamsim")
    module.calls = []

    def dreamsim(
        pretrained=True, device="cuda", cache_dir="./models", normalize_embeds=True, dreamsim_type="ensemble"
    ):
        module.calls.append(dict(device=device, cache_dir=cache_dir, dreamsim_type=dreamsim_type))
        torch.hub.set_dir(cache_dir)  # the real package does this for its DINO backbone
        with seeded(3):
            model = _FakeDreamSim().eval()
        resize = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor()])
        return model, lambda image: resize(image.convert("RGB")).unsqueeze(0)

    module.dreamsim = dreamsim
    module.config = types.SimpleNamespace(
        dreamsim_weights={"ensemble": "https://example.invalid/ensemble.zip"}
    )
    monkeypatch.setitem(sys.modules, "dreamsim", module)
    return module


def test_dreamsim_offline_missing_weights_name_files_and_places(fake_dreamsim, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbedderNotFoundError) as info:
        load_embedder("dreamsim:ensemble", device="cpu", cache_dir=tmp_path)
    message = str(info.value)
    for required in (
        "dino_vitb16_pretrain.pth",
        "open_clip_vitb16_pretrain.pth.tar",
        "clip_vitb16_pretrain.pth.tar",
        "ensemble_lora/adapter_config.json",
        "facebookresearch_dino_main/hubconf.py",
        "checkpoints/dino_vitbase16_pretrain.pth",
    ):
        assert required in message
    assert "https://example.invalid/ensemble.zip" in message and str(tmp_path) in message
    assert fake_dreamsim.calls == []


def test_dreamsim_embeds_through_the_package(fake_dreamsim, tmp_path, pixels, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for required in embeddings.dreamsim_required_files("open_clip_vitb32"):
        (tmp_path / required).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / required).write_text("")
    hub_dir = torch.hub.get_dir()
    embedder = load_embedder(
        "dreamsim:open_clip_vitb32", device="cpu", dtype=torch.float16, cache_dir=tmp_path
    )
    assert torch.hub.get_dir() == hub_dir  # dreamsim's torch.hub.set_dir is undone
    assert fake_dreamsim.calls == [
        dict(device="cpu", cache_dir=str(tmp_path), dreamsim_type="open_clip_vitb32")
    ]
    assert embedder.dtype == torch.float32 and not embedder.has_text
    out = embedder.embed_images(pixels, batch_size=2)
    assert out.shape == (N_IMAGES, 12)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(N_IMAGES))
    torch.testing.assert_close(embedder.embed_images(pixels[:1]), out[:1], atol=1e-5, rtol=0)
    # 1 - cosine of the normalised embeddings is DreamSim's own distance, 1 - cos(embed(a), embed(b)).
    model, preprocess = fake_dreamsim.dreamsim(cache_dir=str(tmp_path))
    a, b = (model.embed(preprocess(Image.fromarray(p))) for p in pixels[:2])
    expected = 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)
    torch.testing.assert_close(1 - out[0] @ out[1], expected.squeeze(), atol=1e-5, rtol=0)


def test_dreamsim_required_files_follow_the_package_layout():
    assert embeddings.dreamsim_required_files("ensemble", "0.1.3")[3:6] == [
        "dino_vitb16_lora/adapter_config.json",
        "clip_vitb16_lora/adapter_config.json",
        "open_clip_vitb16_lora/adapter_config.json",
    ]
    assert embeddings.dreamsim_required_files("clip_vitb32", "0.2.1") == [
        "clip_vitb32_pretrain.pth.tar",
        "clip_vitb32_single_lora/adapter_config.json",
    ]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("open_clip", "malformed.*PREFIX:ARGUMENT.*open_clip:ViT-B-32:laion2b_s34b_b79k"),
        ("", "malformed"),
        (":ViT-B-32", "malformed"),
        ("dreamsim:", "malformed"),
        ("clip:ViT-B-32", "unknown embedder prefix 'clip'.*dinov2, dreamsim, hf-clip, open_clip"),
        ("hf-clip:not a repo", "neither a hub repo id"),
    ],
)
def test_malformed_and_unknown_specs(spec, match):
    with pytest.raises(EmbedderSpecError, match=match):
        load_embedder(spec, device="cpu")


class _MeanColour(Embedder):
    """A custom embedder: the mean RGB colour of each image."""

    def __init__(self, argument: str, **options):
        options.pop("cache_dir")
        super().__init__(**options)
        self.argument = argument
        self.dim = 3

    def _embed_image_batch(self, images):
        return torch.stack(
            [torch.from_numpy(np.asarray(image, dtype=np.float32)).mean(dim=(0, 1)) for image in images]
        )


def test_register_embedder(monkeypatch, pixels):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))  # the registry module holds it
    register_embedder("meancolour", _MeanColour)
    assert "meancolour" in embeddings.embedder_prefixes()
    embedder = load_embedder("meancolour:mean-colour", device="cpu", batch_size=2, progress=False)
    assert isinstance(embedder, _MeanColour) and embedder.argument == "mean-colour"
    assert embedder.name == "meancolour:mean-colour" and embedder.batch_size == 2
    expected = torch.nn.functional.normalize(
        torch.from_numpy(pixels.astype(np.float32)).mean(dim=(1, 2)), dim=-1
    )
    torch.testing.assert_close(embedder.embed_images(pixels), expected)
    with pytest.raises(ValueError, match="already registered"):
        register_embedder("meancolour", lambda argument, **options: _MeanColour(argument, **options))
    register_embedder("meancolour", _MeanColour)  # the same factory again is a no-op
    with pytest.raises(ValueError, match="without ':'"):
        register_embedder("a:b", _MeanColour)
    register_embedder("not-an-embedder", lambda argument, **options: object())
    with pytest.raises(TypeError, match="not an Embedder"):
        load_embedder("not-an-embedder:x")


def test_default_embedder_is_the_bases():
    from conceptspace.models import get_spec, with_overrides

    assert default_embedder("sdxl") == "open_clip:ViT-B-32:laion2b_s34b_b79k"
    assert default_embedder("dmd2") == default_embedder("sdxl")  # a student resolves to its base
    assert default_embedder(get_spec("sd-turbo")) == "open_clip:ViT-B-32:laion2b_s34b_b79k"
    assert (
        default_embedder(types.SimpleNamespace(base=get_spec("sd21")))
        == "open_clip:ViT-B-32:laion2b_s34b_b79k"
    )
    assert default_embedder("tiny-dmd") == "pixels:32"
    with pytest.raises(ValueError, match="names no default embedder"):
        default_embedder(with_overrides(get_spec("tiny-sdxl"), embedder=None))
    with pytest.raises(KeyError, match="unknown model"):
        default_embedder("no-such-model")


def test_pixel_embedder_needs_no_weights_and_sees_layout() -> None:
    embedder = load_embedder("pixels:8", progress=False)
    left = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    left[:, :, :32] = 255
    right = left[:, :, ::-1].copy()
    vectors = embedder.embed_images(np.concatenate([left, left, right]))
    assert vectors.shape == (3, 3 * 8 * 8)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(3))
    assert torch.allclose(vectors[0], vectors[1]) and float(vectors[0] @ vectors[2]) < -0.99
    assert default_embedder("tiny-dmd") == "pixels:32"
    with pytest.raises(EmbedderSpecError, match="takes a size"):
        load_embedder("pixels:big")
