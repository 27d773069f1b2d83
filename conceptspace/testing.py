"""Offline stand-ins for what users download: every registry entry's Hugging Face repo laid out with tiny random
weights (:func:`write_hub_cache`), so the real loading code runs with ``HF_HUB_OFFLINE=1``; tiny CLIP embedders
and random LoRAs. The tiny models themselves live in :mod:`conceptspace.models.tiny` (re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from conceptspace.models.families.hidream import LLAMA_REPO_ID
from conceptspace.models.tiny import (  # noqa: F401  (re-exported: the tests' and benchmarks' builders)
    LCM_TIME_COND_DIM,
    SD_EULER_SCHEDULER,
    TEXT_HIDDEN,
    TEXT_PROJECTION,
    TIME_EMBED_DIM,
    clip_tokenizer,
    tiny_flux_pipeline,
    tiny_pixart_pipeline,
    tiny_qwenimage_pipeline,
    tiny_sana_pipeline,
    tiny_sd3_pipeline,
    tiny_sd3_transformer,
    tiny_sd_components,
    tiny_sd_pipeline,
    tiny_sd_unet,
    tiny_sdxl_components,
    tiny_sdxl_pipeline,
    tiny_sdxl_unet,
    tiny_vae,
    tiny_zimage_pipeline,
    write_clip_tokenizer_files,
)
from conceptspace.models.tiny_flux2 import tiny_flux2_pipeline
from conceptspace.models.tiny_hidream import tiny_hidream_pipeline, write_tiny_llama_repo
from conceptspace.models.tiny_krea2 import tiny_krea2_pipeline

SNAPSHOT_REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_tiny_hf_clip(folder: str | os.PathLike, *, seed: int = 1) -> str:
    """A tiny transformers ``CLIPModel`` (random weights; 24-dimensional projections, 30×30 images) with its image
    processor and the real CLIP tokenizer in ``folder``; returns its embedder spec ``hf-clip:<folder>``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    text = dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=1,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=1,
        image_size=30,
        patch_size=6,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(
        folder
    )
    write_clip_tokenizer_files(folder)
    return f"hf-clip:{folder}"


def _snapshot(cache_dir: Path, repo_id: str) -> Path:
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(SNAPSHOT_REVISION)
    snapshot = repo_dir / "snapshots" / SNAPSHOT_REVISION
    # a fresh folder: writing again through the old blob links would change the blobs they point to
    shutil.rmtree(snapshot, ignore_errors=True)
    snapshot.mkdir(parents=True)
    return snapshot


def _link_blobs(snapshot: Path) -> None:
    """Move a snapshot's files into the repo's ``blobs/`` and leave relative symlinks, as ``hf download`` does."""
    blobs = snapshot.parent.parent / "blobs"
    blobs.mkdir(exist_ok=True)
    for file in sorted(p for p in snapshot.rglob("*") if p.is_file() and not p.is_symlink()):
        blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
        if blob.exists():
            file.unlink()
        else:
            file.replace(blob)
        file.symlink_to(os.path.relpath(blob, file.parent))


def _write_clip_tokenizers(snapshot: Path, folders: Sequence[str], family: str) -> None:
    """CLIP tokenizer folders as the hub repos hold them: vocab.json + merges.txt (not transformers 5's
    tokenizer.json), with the OpenCLIP tokenizers (SDXL's and SD3's second, SD 2.x's only one) padding with "!"."""
    for sub in folders:
        shutil.rmtree(snapshot / sub)
        openclip = sub == "tokenizer_2" or family == "sd21"
        write_clip_tokenizer_files(snapshot / sub, pad_token="!" if openclip else "<|endoftext|>")


def _rename_class(snapshot: Path, old: str, new: str) -> None:
    """Write ``new`` for the class name ``old`` in a snapshot's model_index.json and component configs."""
    for config in [snapshot / "model_index.json", *snapshot.glob("*/config.json")]:
        text = config.read_text()
        if f'"{old}"' in text:
            config.write_text(text.replace(f'"{old}"', f'"{new}"'))


def _write_qwen_tokenizer(folder: Path) -> None:
    """The Z-Image and Qwen-Image repos' tokenizer layout: ``Qwen2Tokenizer`` with vocab.json and merges.txt beside tokenizer.json."""
    from conceptspace.models.tiny import _qwen_tokenizer_object

    vocab = _qwen_tokenizer_object().get_vocab(with_added_tokens=False)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "Qwen2Tokenizer"}))
    _rename_class(folder.parent, "TokenizersBackend", "Qwen2Tokenizer")


@dataclass(frozen=True)
class _RepoLayout:
    """How one family's pipeline repos lay out their files beyond ``save_pretrained``'s defaults."""

    pipeline: Callable[[int], Any]
    """Seed → a tiny pipeline of the family (seed 0 for the base repo, 10 for a student's)."""
    clip_tokenizers: tuple[str, ...] = ()
    """Folders holding CLIP tokenizers (the others hold T5 or Qwen tokenizers, written as they are)."""
    sharded_network: bool = False
    """The denoising network as shards with their index.json."""
    legacy_class: tuple[str, str] | None = None
    """(diffusers' class name, the older name the repo's configs use)."""
    qwen_tokenizer: bool = False
    companion_repos: tuple[tuple[str, Callable[[Path], Any]], ...] = ()
    """(repo id, writer of its snapshot folder) of repos the pipeline is loaded with but does not ship (HiDream's
    Llama encoder)."""


_REPO_LAYOUTS: dict[str, _RepoLayout] = {
    "sdxl": _RepoLayout(tiny_sdxl_pipeline, clip_tokenizers=("tokenizer", "tokenizer_2")),
    "sd21": _RepoLayout(tiny_sd_pipeline, clip_tokenizers=("tokenizer",)),
    "sd35": _RepoLayout(tiny_sd3_pipeline, clip_tokenizers=("tokenizer", "tokenizer_2"), sharded_network=True),
    "sd35-medium": _RepoLayout(  # MMDiT-X; its transformer is one file (4.94 GB), not shards
        lambda seed: tiny_sd3_pipeline(seed, medium=True), clip_tokenizers=("tokenizer", "tokenizer_2")
    ),
    "flux": _RepoLayout(  # the student repo: schnell's shape; its tokenizer_2 is T5's
        lambda seed: tiny_flux_pipeline(seed, schnell=seed != 0), clip_tokenizers=("tokenizer",), sharded_network=True
    ),
    "pixart": _RepoLayout(  # the student repo: PixArt-δ's LCM; the repos predate PixArtTransformer2DModel
        lambda seed: tiny_pixart_pipeline(seed, lcm=seed != 0),
        legacy_class=("PixArtTransformer2DModel", "Transformer2DModel"),
    ),
    "zimage": _RepoLayout(tiny_zimage_pipeline, sharded_network=True, qwen_tokenizer=True),
    "qwenimage": _RepoLayout(tiny_qwenimage_pipeline, sharded_network=True, qwen_tokenizer=True),
    "sana-sprint": _RepoLayout(  # the student repo: a SanaSprintPipeline with SCMScheduler; the teacher a SanaPipeline
        lambda seed: tiny_sana_pipeline(seed, sprint=seed != 0),
        legacy_class=("GemmaTokenizer", "GemmaTokenizerFast"),
    ),
    "hidream": _RepoLayout(  # the student repo: Fast's FlowMatchLCMScheduler; no repo ships the Llama encoder
        lambda seed: tiny_hidream_pipeline(seed, fast=seed != 0, llama=False),
        clip_tokenizers=("tokenizer", "tokenizer_2"),
        sharded_network=True, companion_repos=((LLAMA_REPO_ID, write_tiny_llama_repo),),
    ),
    "krea2": _RepoLayout(  # the student repo: Turbo's Krea2Pipeline, is_distilled in its model_index.json
        lambda seed: tiny_krea2_pipeline(seed, distilled=seed != 0), sharded_network=True, qwen_tokenizer=True
    ),
    **{  # FLUX.2 [klein] 4B and 9B: Flux2KleinPipeline repos, the step-distilled ones with is_distilled set
        family: _RepoLayout(
            lambda seed: tiny_flux2_pipeline(seed, distilled=seed != 0), sharded_network=True, qwen_tokenizer=True
        )
        for family in ("flux2-klein-4b", "flux2-klein-9b")
    },
}


_NETWORK_FILES: dict[str, tuple[Callable[[int], Any], torch.dtype]] = {
    "sdxl": (tiny_sdxl_unet, torch.float16),
    "sd21": (tiny_sd_unet, torch.float16),
    "sd35-medium": (lambda seed: tiny_sd3_transformer(seed, medium=True), torch.bfloat16),
}
"""Per family, the tiny network (seed → module) a student stored as a bare state dict (``unet_file``) holds, and the
dtype its repo's file is in: DMD2's and Lightning's fp16, DP-DMD's bf16 (its training script saves the bf16 FSDP
state dict as it is)."""


def write_hub_cache(cache_dir: str | os.PathLike, names: Iterable[str] | None = None) -> Path:
    """Write tiny random weights for registry entries into a Hugging Face hub cache, in each repo's real layout.

    Full pipeline repos become ``save_pretrained`` folders laid out as :data:`_REPO_LAYOUTS` says per family (SDXL's
    and SD 2.x's with ``fp16`` variant weights beside the full-precision ones and vocab.json/merges.txt CLIP
    tokenizers; SD3.5's, FLUX.1's, Z-Image's and Qwen-Image's transformers sharded with their index; PixArt's under
    the legacy class name ``Transformer2DModel``; Z-Image's and Qwen-Image's ``Qwen2Tokenizer``), the LCM UNet a
    UNet folder (both variants) at the repo root, DMD2 a pickled fp16 state dict (``.bin``), SDXL-Lightning a fp16
    ``.safetensors`` state dict, DP-DMD a pickled bf16 SD3.5 Medium transformer state dict (``.pt``, diffusers keys;
    its base's transformer one file, not shards), SANA-Sprint a ``SanaSprintPipeline`` repo (``SCMScheduler``) beside
    its teacher's ``SanaPipeline`` (flow DPM-Solver; both with a ``GemmaTokenizerFast``), and the LoRA students LoRA
    files in their repos' key layouts. As in a real cache, snapshot files are symlinks into the repo's ``blobs/``.
    ``names`` defaults to every downloadable entry.
    """
    from diffusers import EulerAncestralDiscreteScheduler
    from safetensors.torch import save_file

    from conceptspace.models import REGISTRY

    cache_dir = Path(cache_dir)
    specs = (
        [REGISTRY[n] for n in names]
        if names is not None
        else [s for s in REGISTRY.values() if s.storage != "random" and not s.local_dir]
    )
    unets = {"sdxl": tiny_sdxl_unet, "sd21": tiny_sd_unet}
    snapshots: dict[str, Path] = {}  # one fresh snapshot per repo: ByteDance/SDXL-Lightning holds two students
    for spec in specs:
        if spec.repo_id not in snapshots:
            snapshots[spec.repo_id] = _snapshot(cache_dir, spec.repo_id)
        snapshot = snapshots[spec.repo_id]
        if spec.storage == "pipeline":
            layout = _REPO_LAYOUTS[spec.family]
            pipe = layout.pipeline(0 if spec.role == "base" else 10)
            if spec.role == "student" and spec.scheduler == "EulerAncestralDiscreteScheduler":
                pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(
                    pipe.scheduler.config, timestep_spacing="trailing"
                )
            pipe.save_pretrained(snapshot)
            if layout.sharded_network:
                folder = snapshot / spec.network_folder
                (folder / "diffusion_pytorch_model.safetensors").unlink()
                getattr(pipe, spec.network_folder).save_pretrained(folder, max_shard_size="100KB")
            if layout.legacy_class:
                _rename_class(snapshot, *layout.legacy_class)
            if layout.qwen_tokenizer:
                _write_qwen_tokenizer(snapshot / "tokenizer")
            if spec.variant:
                pipe.to(torch.float16).save_pretrained(snapshot, variant=spec.variant)
            _write_clip_tokenizers(snapshot, layout.clip_tokenizers, spec.family)
            for repo_id, write in layout.companion_repos:
                if repo_id not in snapshots:
                    snapshots[repo_id] = _snapshot(cache_dir, repo_id)
                    write(snapshots[repo_id])
        elif spec.storage == "unet_folder":
            unet = unets[spec.family](seed=20, lcm=spec.scheduler == "LCMScheduler")
            unet.save_pretrained(snapshot / (spec.subfolder or ""))
            unet.to(torch.float16).save_pretrained(snapshot / (spec.subfolder or ""), variant="fp16")
        elif spec.storage == "unet_file":
            network, dtype = _NETWORK_FILES[spec.family]
            state_dict = {k: v.to(dtype).contiguous() for k, v in network(30).state_dict().items()}
            if spec.filename.endswith(".safetensors"):
                save_file(state_dict, str(snapshot / spec.filename))
            else:
                torch.save(state_dict, snapshot / spec.filename)
        elif spec.storage == "lora_file":
            _write_student_lora(spec, snapshot, seed=40 + len(snapshots))
    for snapshot in snapshots.values():
        _link_blobs(snapshot)
    return cache_dir


def _write_student_lora(spec: Any, snapshot: Path, *, seed: int) -> None:
    """A student stored as a LoRA on its base's tiny network (the base repo's, seed 0), keyed as its repo ships it:
    kohya keys for ByteDance's files, the Lightning layout for Qwen-Image-Lightning's, diffusers keys otherwise."""
    from conceptspace.lora import write_lora

    if spec.family == "qwenimage":
        network = tiny_qwenimage_pipeline(0).transformer
        targets = [n for n, m in network.named_modules() if n.endswith((".to_q", ".add_v_proj", ".img_mlp.net.2"))]
        lora = random_lora(network, targets, seed=seed, ranks=(4,), alphas=(2.0,), size=0.2)
        write_lightning_lora(lora, snapshot / spec.filename)
        return
    unets = {"sdxl": tiny_sdxl_unet, "sd21": tiny_sd_unet}
    base_network = unets[spec.family](seed=0)
    targets = [n for n, m in base_network.named_modules() if n.endswith((".to_q", ".to_v", ".to_out.0"))]
    lora = random_lora(base_network, targets, seed=seed, ranks=(4,), size=0.2)
    kind = "kohya" if spec.repo_id.startswith("ByteDance/") else "diffusers"
    write_lora(lora, snapshot / spec.filename, format=kind, dtype=torch.float16)


def write_lightning_lora(lora: Any, path: str | os.PathLike) -> Path:
    """A LoRA in Qwen-Image-Lightning's key layout (``diffusion_model.<module>.lora_down.weight`` /
    ``.lora_up.weight`` / ``.alpha``, bf16 factors), the layout the lightx2v files use."""
    from safetensors.torch import save_file

    tensors = {}
    for name, weights in lora.modules.items():
        key = f"diffusion_model.{name}"
        tensors[f"{key}.lora_down.weight"] = weights.down.to(torch.bfloat16).contiguous()
        tensors[f"{key}.lora_up.weight"] = weights.up.to(torch.bfloat16).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(weights.alpha), dtype=torch.bfloat16)
    save_file(tensors, str(path))
    return Path(path)


def random_lora(
    unet: Any,
    targets: Sequence[str],
    *,
    seed: int = 0,
    ranks: Sequence[int] = (2,),
    alphas: Sequence[float] | None = None,
    size: float = 1.0,
) -> Any:
    """A LoRA with random factors (both nonzero, unlike a freshly initialised one) on ``targets`` of ``unet``:
    module i gets rank ``ranks[i % len(ranks)]`` and alpha ``alphas[i % len(alphas)]`` (default: its rank, so
    scale 1 adds up·down), factors drawn from a normal distribution times ``size``. Linear and conv layers."""
    from conceptspace.lora import LoRA, LoRAWeights, network_name

    generator = torch.Generator().manual_seed(seed)
    modules = dict(unet.named_modules())
    weights = {}
    for i, name in enumerate(targets):
        module, rank = modules[name], ranks[i % len(ranks)]
        if isinstance(module, torch.nn.Conv2d):
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=generator)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=generator)
        else:
            down = torch.randn(rank, module.in_features, generator=generator)
            up = torch.randn(module.out_features, rank, generator=generator)
        alpha = float(rank) if alphas is None else float(alphas[i % len(alphas)])
        weights[name] = LoRAWeights(down=down * size, up=up * size, alpha=alpha)
    return LoRA(weights, network=network_name(unet))
