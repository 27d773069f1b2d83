"""Tiny random HiDream-I1 models: a ``HiDreamImageTransformer2DModel`` (sparse MoE DiT), the four text encoders of
``HiDreamImagePipeline`` (two CLIPs with projection, T5, a Llama decoder read layer by layer) and a FLUX-style VAE,
in the real components' classes; and the Llama encoder's own repo (meta-llama/Llama-3.1-8B-Instruct), which the
HiDream repos do not ship, as the hub cache holds it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

from conceptspace.models.tiny import (
    T5_HIDDEN,
    TEXT_HIDDEN,
    TEXT_PROJECTION,
    clip_tokenizer,
    seeded,
    t5_tokenizer,
    tiny_flow_vae,
    tiny_t5_encoder,
)

LLAMA_HIDDEN = 16
LLAMA_LAYERS = 2
"""The tiny Llama's width and depth: the transformer reads each of its layers' hidden states (one per block)."""
CLIP_POSITIONS = 248
"""HiDream's CLIPs are Long-CLIP (248 positions): ``HiDreamImagePipeline`` pads their prompts to 128 tokens."""
LLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")

HIDREAM_FULL_SCHEDULER: dict[str, Any] = {
    "flow_shift": 3.0,
    "use_flow_sigmas": True,
    "prediction_type": "flow_prediction",
}
"""HiDream-I1-Full's ``UniPCMultistepScheduler`` on flow sigmas, shift 3 (the official inference.py's
``FlowUniPCMultistepScheduler(shift=3.0)``, which the repo's diffusers config stands for)."""
HIDREAM_FAST_SCHEDULER: dict[str, Any] = {"shift": 3.0, "use_dynamic_shifting": False}
"""HiDream-I1-Fast's ``FlowMatchLCMScheduler`` (inference.py: ``FlashFlowMatchEulerDiscreteScheduler``, shift 3);
HiDream-I1-Dev's is the same with shift 6."""


@functools.lru_cache(maxsize=1)
def _llama_tokenizer_object() -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` in Llama 3's conventions (every byte a token, no merges, the
    ``<|begin_of_text|>`` token put before every text)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in LLAMA_SPECIALS])
    bos = LLAMA_SPECIALS[0]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return tokenizer


def llama_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` as Llama-3.1-8B-Instruct's repo ships it (``<|begin_of_text|>`` first,
    ``<|eot_id|>`` its end; ``HiDreamImagePipeline`` pads with that end token), built offline."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_llama_tokenizer_object(),
        bos_token=LLAMA_SPECIALS[0],
        eos_token=LLAMA_SPECIALS[2],
        model_max_length=131072,
    )


def tiny_llama_encoder(seed: int = 0) -> Any:
    """A tiny ``LlamaForCausalLM`` returning every layer's hidden states (as diffusers' docs load the real one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=_llama_tokenizer_object().get_vocab_size(),
        hidden_size=LLAMA_HIDDEN,
        intermediate_size=32,
        num_hidden_layers=LLAMA_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=_llama_tokenizer_object().token_to_id(LLAMA_SPECIALS[0]),
        eos_token_id=_llama_tokenizer_object().token_to_id(LLAMA_SPECIALS[2]),
        output_hidden_states=True,
    )
    with seeded(seed):
        return LlamaForCausalLM(config).eval()


def write_tiny_llama_repo(folder: str | Path, *, seed: int = 50) -> Path:
    """Llama-3.1-8B-Instruct's repo layout in ``folder``: config.json, generation_config.json, sharded safetensors
    with their index, and a ``PreTrainedTokenizerFast`` (tokenizer.json with its config)."""
    folder = Path(folder)
    tiny_llama_encoder(seed).save_pretrained(folder, max_shard_size="20KB")
    llama_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # as the real repo names it
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _clip_encoder() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=TEXT_HIDDEN, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=CLIP_POSITIONS, vocab_size=49408,
        hidden_act="gelu", projection_dim=TEXT_PROJECTION,
    )  # fmt: skip
    return CLIPTextModelWithProjection(config).eval()


def tiny_hidream_transformer(seed: int = 0) -> Any:
    """A tiny ``HiDreamImageTransformer2DModel``: one dual-stream and one single-stream block (each with two routed
    experts, one active, and the shared one), each reading one Llama layer, T5 and the two CLIPs' pooled output."""
    from diffusers import HiDreamImageTransformer2DModel

    with seeded(seed):
        return HiDreamImageTransformer2DModel(
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            caption_channels=[T5_HIDDEN, LLAMA_HIDDEN],
            text_emb_dim=2 * TEXT_PROJECTION,
            num_routed_experts=2,
            num_activated_experts=1,
            axes_dims_rope=(4, 2, 2),
            max_resolution=(32, 32),
            llama_layers=list(range(LLAMA_LAYERS)),
        ).eval()


def tiny_hidream_components(seed: int = 0, *, fast: bool = False) -> dict[str, Any]:
    """The components of a tiny ``HiDreamImagePipeline``: HiDream-I1-Full's (``UniPCMultistepScheduler`` on flow
    sigmas) or, ``fast``, HiDream-I1-Fast's (``FlowMatchLCMScheduler``)."""
    from diffusers import FlowMatchLCMScheduler, UniPCMultistepScheduler

    scheduler = (
        FlowMatchLCMScheduler(**HIDREAM_FAST_SCHEDULER)
        if fast
        else UniPCMultistepScheduler(**HIDREAM_FULL_SCHEDULER)
    )
    with seeded(seed + 1000):
        text_encoder, text_encoder_2 = _clip_encoder(), _clip_encoder()
    return {
        "transformer": tiny_hidream_transformer(seed),
        "vae": tiny_flow_vae(seed + 2000),
        "scheduler": scheduler,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": clip_tokenizer(),
        "text_encoder_3": tiny_t5_encoder(seed + 3000),
        "tokenizer_3": t5_tokenizer(),
        "text_encoder_4": tiny_llama_encoder(seed + 4000),
        "tokenizer_4": llama_tokenizer(),
    }


def tiny_hidream_pipeline(
    seed: int = 0, *, fast: bool = False, llama: bool = True, dtype: torch.dtype = torch.float32
) -> Any:
    """A tiny ``HiDreamImagePipeline`` (see :func:`tiny_hidream_components`); ``llama=False`` leaves out the Llama
    encoder and its tokenizer, as the HiDream repos do (they are read from their own repo)."""
    import diffusers

    components = tiny_hidream_components(seed, fast=fast)
    if not llama:
        components.update(text_encoder_4=None, tokenizer_4=None)
    pipe = diffusers.HiDreamImagePipeline(**components)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
