"""The family seam: the sampler reaches every network through the pair's family adapter, and a new family is one
adapter plus registry entries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import conceptspace
from conceptspace.models import FAMILIES, REGISTRY, Conditioning, ModelSpec, family_of, load_pair, register
from conceptspace.models.families import StableDiffusionXL
from conceptspace.sampling import Hybrid, sample


class CountingSDXL(StableDiffusionXL):
    """SDXL, recording every network call: a family added from outside the package."""

    name = "counting-sdxl"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []  # (id of the network, timestep, batch rows)

    def predict(self, network, sample, t, inputs, guidance_condition=None):
        self.calls.append((id(network), int(t), sample.shape[0]))
        return super().predict(network, sample, t, inputs, guidance_condition)


@pytest.fixture
def counting_family():
    family = CountingSDXL()
    saved = dict(REGISTRY)
    FAMILIES[family.name] = family
    for spec in (REGISTRY["tiny-sdxl"], REGISTRY["tiny-dmd"]):
        register(
            ModelSpec(
                **{
                    **{f: getattr(spec, f) for f in spec.__dataclass_fields__},
                    "name": f"counting-{spec.name}",
                    "family": "counting",
                    "architecture": family.name,
                    "base": "counting-tiny-sdxl" if spec.role == "student" else None,
                }
            )
        )
    yield family
    del FAMILIES[family.name]
    REGISTRY.clear()
    REGISTRY.update(saved)


def test_a_new_family_is_an_adapter_and_registry_entries(counting_family):
    pair = load_pair("counting-tiny-sdxl", "counting-tiny-dmd", device="cpu", dtype=torch.float32)
    assert pair.family is counting_family
    result = sample(pair, "a red circle", Hybrid(k=1), [0, 1], output_type="latent", progress=False)
    # every step went through the adapter, with the network the schedule names, one row per image (no CFG)
    networks = {"base": id(pair.network("base")), "distilled": id(pair.network("student"))}
    assert counting_family.calls == [(networks[step.model], step.timestep, 2) for step in result.schedule]
    plain = load_pair("tiny-sdxl", "tiny-dmd", device="cpu", dtype=torch.float32)
    reference = sample(plain, "a red circle", Hybrid(k=1), [0, 1], output_type="latent", progress=False)
    torch.testing.assert_close(result.latents, reference.latents, rtol=0, atol=0)


def test_an_unknown_architecture_is_named_with_the_known_ones(counting_family):
    spec = ModelSpec(
        name="mystery",
        family="mystery",
        role="base",
        repo_id="builtin:mystery",
        storage="random",
        scheduler="EulerDiscreteScheduler",
        num_inference_steps=4,
        guidance_scale=5.0,
        resolution=64,
    )
    with pytest.raises(
        ValueError, match=r"unknown architecture 'mystery' \(model 'mystery'\); known .*sd, sdxl"
    ):
        load_pair(spec, device="cpu")
    assert family_of("sdxl") is FAMILIES["sdxl"] and family_of(REGISTRY["shapes"]).name == "sd"


def test_conditioning_batches_keep_rows_in_order_and_put_the_unconditional_first():
    a = Conditioning({"h": torch.full((1, 2), 1.0)}, {"h": torch.full((1, 2), -1.0)})
    b = Conditioning({"h": torch.full((1, 2), 2.0)}, {"h": torch.full((1, 2), -2.0)})
    batch = Conditioning.concatenate([a, b, a])
    assert batch.inputs["h"][:, 0].tolist() == [1.0, 2.0, 1.0]
    assert batch.with_unconditional()["h"][:, 0].tolist() == [-1.0, -2.0, -1.0, 1.0, 2.0, 1.0]
    assert a.repeat(3).inputs["h"].shape == (3, 2) and a.repeat(3).negative["h"].shape == (3, 2)
    with pytest.raises(ValueError, match="without CFG"):
        Conditioning({"h": torch.zeros(1, 2)}).with_unconditional()


def test_the_library_does_not_import_its_test_helpers():
    """conceptspace.testing builds hub caches for tests; the library must work without it (no import cycle)."""
    package = Path(conceptspace.__file__).parent
    importers = []
    for file in package.rglob("*.py"):
        if file.name == "testing.py":
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(name == "conceptspace.testing" for name in names) or (
                isinstance(node, ast.ImportFrom)
                and node.module == "conceptspace"
                and "testing" in [a.name for a in node.names]
            ):
                importers.append(str(file.relative_to(package)))
    assert importers == []
