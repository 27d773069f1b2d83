"""Memory: a LoRA student held as an adapter on its base's network (no second network; the merged copy's images),
and the memory plans — every plan gives every regime's and remedy's images, model offloading keeps one part on the
accelerator at a time (the ledger of moves, step by step), fp8 storage halves the networks' bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conceptspace import Base, Distilled, Hybrid, ReplaceFinal, SkipFirst, load_pair, sample, schedule_of
from conceptspace.lora import write_lora
from conceptspace.models import REGISTRY
from conceptspace.models.loading import with_student
from conceptspace.models.memory import Move, held_bytes, release_student
from conceptspace.models.sizes import (
    ACTIVATION_RESERVE,
    MemoryPlanError,
    component_parameters,
    pair_sizes,
    parse_memory_size,
    plan_for,
)
from conceptspace.pipeline import DiversityPipeline
from conceptspace.remedies import CADS, CondNoise, IntervalGuidance, Renoise, SliderSpaceScales
from conceptspace.sampling import StepInfo
from conceptspace.testing import random_lora

PROMPT = "a red circle"
SEEDS = [0, 1]
LORA_STUDENTS = sorted(name for name, spec in REGISTRY.items() if spec.storage == "lora_file")


def _images(pair, regime, seeds=SEEDS) -> np.ndarray:
    size = pair.default_resolution if pair.default_resolution <= 64 else 64
    return sample(
        pair, PROMPT, regime, seeds, height=size, width=size, output_type="np", progress=False
    ).images


def _load(student: str, hub_cache: Path, **options):
    return load_pair(
        REGISTRY[student].base, student, cache_dir=hub_cache, device="cpu", dtype=torch.float32, **options
    )


# ---------------------------------------------------------------------------------------------- LoRA students
@pytest.mark.parametrize("student", LORA_STUDENTS)
def test_a_lora_student_is_an_adapter_with_the_merged_copys_images(student, hub_cache):
    adapter, merged = _load(student, hub_cache), _load(student, hub_cache, lora_student="merged")
    assert adapter.student_network is adapter.base_network and adapter.student_adapter is not None
    assert merged.student_network is not merged.base_network and merged.student_adapter is None
    for regime in (Distilled(), Hybrid(), ReplaceFinal(n=1, base_steps=4), Base(steps=2)):
        ours, reference = _images(adapter, regime), _images(merged, regime)
        assert np.abs(ours - reference).max() <= 1e-4, regime.name
    # the adapter is off outside the student's steps: the base is the base
    assert not adapter.student_adapter.enabled
    distilled, base = (
        _images(adapter, Distilled()),
        _images(adapter, Base(steps=len(adapter.student.timesteps or ()) or 4)),
    )
    assert np.abs(distilled - base).max() > 1e-2


def test_the_qwen_image_pair_holds_the_base_pipeline_plus_the_adapter(hub_cache):
    base_only = held_bytes(load_pair("qwen-image", cache_dir=hub_cache, device="cpu", dtype=torch.float32))
    adapter = held_bytes(_load("qwen-image-lightning", hub_cache))
    merged = held_bytes(_load("qwen-image-lightning", hub_cache, lora_student="merged"))
    # every storage counted once: the adapter pair holds the base pipeline and the LoRA's factors, nothing else
    assert sum(adapter.values()) - sum(base_only.values()) == adapter["student_adapter"] > 0
    assert adapter["student_adapter"] <= 0.5 * base_only["base"]
    # the merged copy is one whole network more
    assert sum(merged.values()) - sum(base_only.values()) == merged["student"] == base_only["base"]


def test_an_adapter_student_refuses_a_pipeline_of_its_own_but_serves_diversity_pipeline(hub_cache):
    pair = _load("qwen-image-lightning-4step", hub_cache)
    with pytest.raises(ValueError, match="lora_student='merged'"):
        pair.to_diffusers("student")
    pipe = DiversityPipeline.from_pair(pair, "hybrid")
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    images = pipe(
        PROMPT, num_images_per_prompt=2, generator=generators, height=64, width=64, output_type="np"
    ).images
    np.testing.assert_allclose(images, _images(pair, Hybrid()), atol=1e-6)


# ------------------------------------------------------------------------------------------------ memory plans
def _sliders(pair, folder: Path) -> str:
    network = pair.base_network
    targets = [n for n, _ in network.named_modules() if n.endswith((".to_q", ".add_v_proj"))]
    for k in range(2):
        write_lora(
            random_lora(network, targets, seed=k, ranks=(2,), size=0.3), folder / f"slider_{k}.safetensors"
        )
    return str(folder)


@pytest.fixture(scope="module", params=["qwen-image-lightning-4step", "tiny-dmd"])
def plan_pairs(request, hub_cache):
    """A pair under every plan: Qwen-Image + Lightning (a LoRA student held as an adapter, through the real loading
    code) and the tiny SDXL pair (two networks)."""
    if request.param == "tiny-dmd":
        return {plan: load_pair("tiny-sdxl", "tiny-dmd", device="cpu", memory=plan) for plan in ("resident", "model-offload", "group-offload")}  # fmt: skip
    return {plan: _load(request.param, hub_cache, memory=plan) for plan in ("resident", "model-offload", "group-offload")}  # fmt: skip


def _regimes(sliders: str):
    return [
        Base(steps=3), Distilled(), Hybrid(), Hybrid(k=2, base_schedule="own", base_steps=6), SkipFirst(),
        ReplaceFinal(n=1, base_steps=4), CADS(), CondNoise(strength=2.0), IntervalGuidance(), Renoise(eta=0.5),
        SliderSpaceScales(sliders=sliders, scale=1.0),
    ]  # fmt: skip


@pytest.mark.parametrize("plan", ["model-offload", "group-offload"])
def test_every_plan_gives_every_regimes_images(plan, plan_pairs, tmp_path):
    resident, placed = plan_pairs["resident"], plan_pairs[plan]
    assert placed.memory_plan == plan and placed.device == torch.device("cpu")
    for regime in _regimes(_sliders(resident, tmp_path)):
        ours, reference = _images(placed, regime), _images(resident, regime)
        assert np.abs(ours - reference).max() <= 1e-4, regime.name


def _steps_and_resident(pair, regime) -> tuple[list[tuple[str, list[str], list[Move]]], list[Move]]:
    """Per step (model, the parts resident after it, the moves made during it); and every move of the call."""
    placement = pair.placement
    before = len(placement.moves)
    record: list[tuple[str, list[str], list[Move]]] = []
    mark = [before]

    def callback(info: StepInfo) -> None:
        record.append((info.model, list(placement.resident), placement.moves[mark[0] :]))
        mark[0] = len(placement.moves)

    sample(
        pair, PROMPT, regime, SEEDS, height=64, width=64, output_type="np", progress=False, callback=callback
    )
    return record, placement.moves[before:]


@pytest.mark.parametrize(
    "student",
    [n for n, s in REGISTRY.items() if n.startswith("tiny-") and s.role == "student" and n != "tiny-lcm"],
)
def test_model_offload_keeps_one_part_on_the_accelerator_step_by_step(student):
    base = REGISTRY[student].base
    pair = load_pair(base, student, device="cpu", memory="model-offload")
    switch = min(2, len(schedule_of(Distilled(), pair)) - 1)  # SANA-Sprint's student has 2 steps
    for regime in (Hybrid(k=switch), ReplaceFinal(n=switch, base_schedule="student")):
        steps, moves = _steps_and_resident(pair, regime)
        for index, (model, resident, during) in enumerate(steps):
            assert resident == ["base" if model == "base" else "student"]
            moved_on = [m.part for m in during if m.direction == "on"]
            assert len(set(moved_on)) == len(moved_on)  # nothing moved twice in a step
            assert len(during) <= 2 + 2 * (
                index == 0
            )  # the other part off, this one on (step 0: text and VAE too)
        # the text encoders run (and leave) before the first step, the VAE after the last; one part at a time
        # (with CFG a prompt runs through the text encoders twice: they move once, as one part)
        assert moves.count(Move("text_encoders", "on")) == moves.count(Move("text_encoders", "off")) == 1
        assert moves.index(Move("text_encoders", "off")) < moves.index(Move(steps[0][1][0], "on"))
        assert moves[-1] == Move("vae", "on")
        switches = sum(1 for a, b in zip(steps, steps[1:], strict=False) if a[0] != b[0])
        network_moves = [m for m in moves if m.part in ("base", "student")]
        assert len(network_moves) == 2 * (switches + 1)  # each network's turn: on once, off once
    sizes = pair.placement.sizes
    assert pair.placement.peak_bytes == max(sizes.values()) < sum(sizes.values())


def test_a_student_attached_later_joins_the_plan_and_leaves_it():
    pair = load_pair("tiny-sdxl", "tiny-dmd", device="cpu", memory="model-offload")
    other = with_student(pair, "tiny-lcm")
    assert other.placement is pair.placement
    steps, _ = _steps_and_resident(other, Hybrid())
    assert [resident for _, resident, _ in steps] == [["base"]] + [["student tiny-lcm"]] * (len(steps) - 1)
    reference = load_pair("tiny-sdxl", "tiny-lcm", device="cpu")
    np.testing.assert_allclose(_images(other, Hybrid()), _images(reference, Hybrid()), atol=1e-5)
    release_student(other)
    assert "student tiny-lcm" not in pair.placement.parts and not hasattr(other.student_network, "_hf_hook")
    np.testing.assert_allclose(_images(pair, Hybrid()), _images(load_pair("tiny-sdxl", "tiny-dmd", device="cpu"), Hybrid()), atol=1e-5)  # fmt: skip


def test_a_lora_student_released_leaves_the_base_as_it_was(hub_cache):
    pair = _load("lcm-lora", hub_cache)
    base = _images(pair, Base(steps=2))
    other = with_student(pair, "lightning-lora", cache_dir=hub_cache)
    release_student(other)
    assert not other.student_adapter.applied and pair.student_adapter.applied
    np.testing.assert_allclose(_images(pair, Base(steps=2)), base, atol=1e-6)


def test_a_placed_pair_refuses_to_move_as_a_whole():
    pair = load_pair("tiny-sdxl", "tiny-dmd", device="cpu", memory="model-offload")
    with pytest.raises(ValueError, match="model-offload"):
        pair.to("cpu")
    with pytest.raises(ValueError, match="unknown memory plan 'everything'"):
        load_pair("tiny-sdxl", "tiny-dmd", device="cpu", memory="everything")


@pytest.mark.parametrize("plan", ["resident", "model-offload", "group-offload"])
def test_fp8_storage_halves_the_networks_and_runs_under_every_plan(plan):
    plain = load_pair("tiny-sdxl", "tiny-dmd", device="cpu", dtype=torch.bfloat16)
    fp8 = load_pair("tiny-sdxl", "tiny-dmd", device="cpu", dtype=torch.bfloat16, fp8=True, memory=plan)
    before, after = held_bytes(plain), held_bytes(fp8)
    for part in ("base", "student"):
        weights = sum(p.numel() for p in plain.network("base" if part == "base" else "student").parameters())
        # the networks' weights drop from 2 bytes to 1 (diffusers keeps norms and embeddings in the compute dtype)
        assert after[part] < 0.75 * before[part] and before[part] >= 2 * weights
    assert after["vae"] == before["vae"]
    ours, reference = _images(fp8, Hybrid()), _images(plain, Hybrid())
    assert np.isfinite(ours).all() and 0 < np.abs(ours - reference).max() < 0.5


# ------------------------------------------------------------------------------------------- sizes and auto
def _largest_component(base: str, student: str | None, cache_dir) -> int:
    counts = component_parameters(REGISTRY[base], cache_dir)[0]
    own = (component_parameters(REGISTRY[student], cache_dir) or ({}, None))[
        0
    ]  # a full student: the base's size
    return 2 * max([*counts.values(), *own.values()])


@pytest.mark.parametrize(("base", "student"), [("qwen-image", "qwen-image-lightning"), ("sdxl", "dmd2"), ("sdxl", "lcm"), ("flux-dev", "flux-schnell")])  # fmt: skip
def test_sizes_read_from_the_headers_are_what_the_loaded_pair_holds(base, student, hub_cache):
    sizes = pair_sizes(base, student, bytes_per_weight=4, cache_dir=hub_cache)
    assert set(sizes.sources.values()) == {"files"}
    held = held_bytes(load_pair(base, student, cache_dir=hub_cache, device="cpu", dtype=torch.float32))
    assert sizes.parts.keys() == held.keys()
    for (
        part,
        expected,
    ) in held.items():  # (the headers know no non-persistent buffers, e.g. CLIP's position ids)
        assert sizes.parts[part] == pytest.approx(expected, rel=0.01), part


def test_every_registered_pair_peaks_at_its_largest_part_under_model_offload(empty_cache):
    checked = 0
    for student in (s for s in REGISTRY.values() if s.role == "student" and s.storage != "random"):
        sizes = pair_sizes(student.base, student.name, cache_dir=empty_cache)
        if sizes is None:  # no published count (a .bin or a LoRA file of unknown size): read once downloaded
            continue
        assert sizes.peak("model-offload") <= 1.3 * _largest_component(
            student.base, student.name, empty_cache
        )
        assert sizes.peak("model-offload") < sizes.peak("resident")
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize(("base", "student"), [("z-image", "z-image-turbo"), ("flux-dev", "flux-schnell"), ("sd35-large", "sd35-large-turbo")])  # fmt: skip
def test_auto_fits_the_big_pairs_on_a_24gb_card(base, student, empty_cache):
    sizes = pair_sizes(base, student, cache_dir=empty_cache)
    assert set(sizes.sources.values()) == {"published"}
    choice = plan_for(sizes, parse_memory_size("24GB"))
    assert choice.plan == "model-offload" and choice.peak + ACTIVATION_RESERVE <= 24 * 2**30
    assert "model-offload" in str(choice)


def test_auto_refuses_flux_on_an_8gb_card_naming_what_would_fit(empty_cache):
    with pytest.raises(MemoryPlanError, match="group-offload") as error:
        plan_for(pair_sizes("flux-dev", "flux-schnell", cache_dir=empty_cache), parse_memory_size("8GB"))
    assert "--fp8" in str(error.value) and "\n" not in str(error.value)


def test_load_pair_plans_before_loading_and_refuses_before_loading(hub_cache, monkeypatch):
    import conceptspace.models.loading as loading

    sizes = pair_sizes("qwen-image", "qwen-image-lightning", bytes_per_weight=4, cache_dir=hub_cache)
    between = ACTIVATION_RESERVE + (sizes.peak("model-offload") + sizes.peak("resident")) // 2
    pair = _load("qwen-image-lightning", hub_cache, memory="auto", device_memory=between)
    assert pair.memory_plan == "model-offload" and pair.memory_choice.plan == "model-offload"
    roomy = _load("qwen-image-lightning", hub_cache, memory="auto", device_memory="80GB")
    assert roomy.memory_plan == "resident"

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model although the plan cannot fit")

    monkeypatch.setattr(loading, "_load_base_pipeline", no_loading)
    too_small = ACTIVATION_RESERVE + sizes.peak("model-offload") // 2
    for plan in ("auto", "model-offload", "resident"):
        with pytest.raises(MemoryPlanError, match="does not fit"):
            _load("qwen-image-lightning", hub_cache, memory=plan, device_memory=too_small)


def test_memory_sizes_parse_like_cards_are_sold():
    assert parse_memory_size("24GB") == parse_memory_size("24 GiB") == 24 * 2**30
    assert parse_memory_size("12000MB") == 12000 * 2**20 and parse_memory_size(1234) == 1234
    for text in ("lots", "24"):  # a size without its unit is refused, not read as bytes
        with pytest.raises(ValueError, match="24GB"):
            parse_memory_size(text)


def test_fp8_sizes_are_one_byte_a_weight_at_any_dtype(empty_cache):
    for bytes_per_weight in (2, 4):
        plain = pair_sizes(
            "flux-dev", "flux-schnell", bytes_per_weight=bytes_per_weight, cache_dir=empty_cache
        )
        fp8 = pair_sizes(
            "flux-dev", "flux-schnell", bytes_per_weight=bytes_per_weight, fp8=True, cache_dir=empty_cache
        )
        assert fp8.parts["base"] == plain.parts["base"] // bytes_per_weight == int(11.9e9)
        assert fp8.parts["text_encoders"] == plain.parts["text_encoders"] and fp8.in_fp8() is fp8


def test_a_named_plan_loads_where_sizes_cannot_be_read_but_auto_refuses(monkeypatch):
    """(Weights with no safetensors header and no published count, or quantized networks: only auto needs a size.)"""
    import conceptspace.models.loading as loading

    monkeypatch.setattr(loading, "pair_sizes", lambda *args, **kwargs: None)
    options = dict(device="cpu", device_memory="80GB")
    assert load_pair("tiny-sdxl", "tiny-dmd", memory="model-offload", **options).memory_choice is None
    with pytest.raises(MemoryPlanError, match="name a plan"):
        load_pair("tiny-sdxl", "tiny-dmd", memory="auto", **options)


def test_diversity_pipeline_refuses_offload_it_cannot_take_over():
    pair = load_pair("tiny-flux", "tiny-schnell", device="cpu")
    base_pipe, student_pipe = pair.to_diffusers("base"), pair.to_diffusers("student")
    base_pipe.enable_group_offload(onload_device=torch.device("cpu"), offload_type="leaf_level")
    with pytest.raises(ValueError, match="group offloading.*memory='group-offload'"):
        DiversityPipeline(base_pipe, student_pipe, "tiny-schnell")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA GPU (benchmarks/gpu_memory.sh runs this)")
@pytest.mark.parametrize("plan", ["model-offload", "group-offload"])
def test_on_a_gpu_the_parts_visit_the_device_and_leave_it(plan):
    """What the CPU cannot show: the parts really move, the images match the resident pair's, and the measured peak
    stays under the resident one."""
    cuda = torch.device("cuda")
    resident = load_pair("tiny-flux", "tiny-schnell", device=cuda, dtype=torch.float32)
    expected = _images(resident, Hybrid())
    torch.cuda.synchronize()
    del resident
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    pair = load_pair("tiny-flux", "tiny-schnell", device=cuda, dtype=torch.float32, memory=plan)
    np.testing.assert_allclose(_images(pair, Hybrid()), expected, atol=1e-4)
    assert all(p.device.type == "cpu" for p in pair.base_network.parameters())
    if pair.placement is not None:
        assert pair.placement.resident == ["vae"]
        pair.placement.release()
        assert all(p.device.type == "cpu" for p in pair.pipeline.vae.parameters())


def test_diversity_pipeline_keeps_the_users_model_offload():
    reference = load_pair("tiny-flux", "tiny-schnell", device="cpu")
    expected = _images(reference, Hybrid())
    pair = load_pair("tiny-flux", "tiny-schnell", device="cpu")
    base_pipe, student_pipe = pair.to_diffusers("base"), pair.to_diffusers("student")
    for pipe in (base_pipe, student_pipe):
        pipe.enable_model_cpu_offload(device="cpu")
    diversity = DiversityPipeline(base_pipe, student_pipe, "tiny-schnell")
    assert diversity.pair.memory_plan == "model-offload" and not base_pipe._all_hooks
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    images = diversity(
        PROMPT, num_images_per_prompt=2, generator=generators, height=64, width=64, output_type="np"
    )
    np.testing.assert_allclose(images.images, expected, atol=1e-5)
    assert Move("student", "on") in diversity.pair.placement.moves and diversity.pair.placement.resident == [
        "vae"
    ]


def test_the_published_counts_match_the_published_architectures():
    """The size table against the published configs built on the meta device (benchmarks/bench_flow.py's)."""
    import importlib.util

    from accelerate import init_empty_weights
    from diffusers import (
        FluxTransformer2DModel,
        QwenImageTransformer2DModel,
        SD3Transformer2DModel,
        ZImageTransformer2DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen3Config,
        Qwen3Model,
        T5Config,
        T5EncoderModel,
    )

    from conceptspace.models.sizes import PUBLISHED_PARAMETERS

    spec = importlib.util.spec_from_file_location(
        "bench_flow", Path(__file__).parents[1] / "benchmarks" / "bench_flow.py"
    )
    flow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flow)
    with init_empty_weights():
        built = {
            ("flux-dev", "transformer"): FluxTransformer2DModel(
                **flow.FLUX_TRANSFORMER, guidance_embeds=True
            ),
            ("sd35-large", "transformer"): SD3Transformer2DModel(**flow.SD35_LARGE_TRANSFORMER),
            ("flux-dev", "text_encoder_2"): T5EncoderModel(T5Config(vocab_size=32128, **flow.T5_XXL)),
            ("sd35-large", "text_encoder_2"): CLIPTextModelWithProjection(CLIPTextConfig(**flow.CLIP_G)),
            # the repos' config.json files: Qwen-Image's transformer and Qwen2.5-VL-7B, Z-Image's (diffusers'
            # defaults) and Qwen3-4B
            ("qwen-image", "transformer"): QwenImageTransformer2DModel(
                patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56),
            ),
            ("qwen-image", "text_encoder"): Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
                text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4),
                vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                   out_hidden_size=3584, patch_size=14, fullatt_block_indexes=[7, 15, 23, 31]),
            )),
            ("z-image", "transformer"): ZImageTransformer2DModel(),
            ("z-image", "text_encoder"): Qwen3Model(Qwen3Config(
                vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
            )),
        }  # fmt: skip
    for (name, part), model in built.items():
        # (T5's input embedding is its shared one; built empty, the two are not tied yet)
        count = sum(p.numel() for key, p in model.named_parameters() if key != "encoder.embed_tokens.weight")
        assert PUBLISHED_PARAMETERS[name][part] == pytest.approx(count, rel=0.01), (name, part, count)


@pytest.mark.parametrize("plan", ["resident", "model-offload", "group-offload"])
def test_quantized_networks_run_under_every_plan(plan, hub_cache):
    """diffusers' own quantization (torchao int8 weights, on the CPU) for both networks, loaded through the real
    loading code; images close to the unquantized pair's, the networks' bytes halved."""
    pytest.importorskip("torchao", reason="pip install -e '.[quantization]' (scripts/test.sh does)")
    from diffusers import TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    options = dict(cache_dir=hub_cache, device="cpu", dtype=torch.bfloat16)
    plain = load_pair("flux-dev", "flux-schnell", **options)
    quantized = load_pair(
        "flux-dev", "flux-schnell", **options, memory=plan, quantization=TorchAoConfig(Int8WeightOnlyConfig())
    )
    assert "Int8" in type(quantized.base_network.transformer_blocks[0].attn.to_q.weight).__name__
    before, after = held_bytes(plain), held_bytes(quantized)
    for part in ("base", "student"):
        assert after[part] < 0.75 * before[part]
    ours, reference = _images(quantized, Hybrid()), _images(plain, Hybrid())
    assert np.isfinite(ours).all() and 0 < np.abs(ours - reference).mean() < 0.05
    with pytest.raises(ValueError, match="pick one"):
        load_pair(
            "flux-dev",
            "flux-schnell",
            **options,
            fp8=True,
            quantization=TorchAoConfig(Int8WeightOnlyConfig()),
        )


def test_a_lora_student_stays_an_adapter_on_a_quantized_base(hub_cache):
    pytest.importorskip("torchao", reason="pip install -e '.[quantization]' (scripts/test.sh does)")
    from diffusers import TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    options = dict(cache_dir=hub_cache, device="cpu", dtype=torch.bfloat16)
    config = TorchAoConfig(Int8WeightOnlyConfig())
    plain = load_pair("qwen-image", "qwen-image-lightning-4step", **options)
    quantized = load_pair("qwen-image", "qwen-image-lightning-4step", **options, quantization=config)
    assert quantized.student_network is quantized.base_network
    ours, reference = _images(quantized, Distilled()), _images(plain, Distilled())
    assert np.isfinite(ours).all() and np.abs(ours - reference).mean() < 0.05
    with pytest.raises(ValueError, match="quantization cannot be applied"):
        load_pair(
            "qwen-image", "qwen-image-lightning-4step", **options, quantization=config, lora_student="merged"
        )


def test_run_json_records_how_the_weights_are_held(tmp_path):
    from conceptspace.generate import generate

    plain = load_pair("tiny-sdxl", "tiny-dmd", device="cpu")
    assert plain.weights == {"dtype": "float32"}  # the default adds nothing: earlier runs still resume
    fp8 = load_pair(
        "tiny-sdxl", "tiny-dmd", device="cpu", dtype=torch.bfloat16, fp8=True, memory="model-offload"
    )
    assert fp8.weights == {"dtype": "bfloat16", "fp8": True}
    generate(fp8, ["a red circle"], [Distilled()], [0], tmp_path, progress=False)
    import json

    run = json.loads((tmp_path / "run.json").read_text())
    assert (run["dtype"], run["fp8"], run["memory_plan"]) == ("bfloat16", True, "model-offload")
