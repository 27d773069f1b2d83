"""Tiny random models of each architecture family, built in memory: the ``tiny-*`` registry entries, tests and
benchmarks run on them without any download.

The builders follow diffusers' own ``get_dummy_components`` pattern. The CLIP tokenizer is the real one, built
offline from the BPE merges that open_clip ships.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

TEXT_HIDDEN = 32
TEXT_PROJECTION = 32
TIME_EMBED_DIM = 8
LCM_TIME_COND_DIM = 32


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_clip_tokenizer_files(directory: str | os.PathLike, *, pad_token: str = "<|endoftext|>") -> Path:
    """Write the real CLIP tokenizer (vocab.json, merges.txt, configs) built from open_clip's shipped BPE file.

    ``pad_token="!"`` gives the OpenCLIP tokenizers of SDXL's ``tokenizer_2`` and of SD 2.x, which pad with id 0.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe_path = _open_clip_bpe_file()
    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    config = {"model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer", **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def _open_clip_bpe_file() -> Path:
    # Found, not imported: importing open_clip is slow and pulls in its own dependencies for one data file.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the tiny models' CLIP tokenizer is built from open_clip's BPE file: pip install open_clip_torch"
        )
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


@functools.lru_cache(maxsize=1)
def _tokenizer_dir() -> str:
    return str(write_clip_tokenizer_files(Path(tempfile.mkdtemp(prefix="conceptspace-clip-tok-"))))


def clip_tokenizer() -> Any:
    """A real ``CLIPTokenizer`` (49408 tokens, 77 positions), built offline."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_dir())
    tokenizer.model_max_length = 77
    return tokenizer


class seeded:
    """Build modules under a fixed seed without disturbing the caller's global RNG."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.random.set_rng_state(self._state)


def _text_config(**extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        vocab_size=49408,
        hidden_act="gelu",
        **extra,
    )


def tiny_vae(seed: int = 0) -> Any:
    from diffusers import AutoencoderKL

    with seeded(seed):
        return AutoencoderKL(
            block_out_channels=(16, 32),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        ).eval()


def _tiny_unet(seed: int, lcm: bool, **conditioning: Any) -> Any:
    from diffusers import UNet2DConditionModel

    with seeded(seed):
        return UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            norm_num_groups=8,
            time_cond_proj_dim=LCM_TIME_COND_DIM if lcm else None,
            **conditioning,
        ).eval()


def tiny_sdxl_unet(seed: int = 0, *, lcm: bool = False) -> Any:
    """A tiny UNet with SDXL's conditioning (two text encoders, pooled text + time ids); ``lcm`` adds LCM's
    guidance-embedding input (``time_cond_proj_dim``)."""
    return _tiny_unet(
        seed,
        lcm,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_PROJECTION,
        cross_attention_dim=2 * TEXT_HIDDEN,
    )


def tiny_sd_unet(seed: int = 0, *, lcm: bool = False) -> Any:
    """A tiny SD 1.x/2.x-style UNet (one text encoder)."""
    return _tiny_unet(seed, lcm, cross_attention_dim=TEXT_HIDDEN)


SD_EULER_SCHEDULER: dict[str, Any] = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)
"""The ``EulerDiscreteScheduler`` config SD 1.x/2.x and SDXL ship (their 1000-step ``scaled_linear`` betas)."""


def _euler_scheduler(**overrides: Any) -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**{**SD_EULER_SCHEDULER, **overrides})


def tiny_sdxl_components(seed: int = 0, *, lcm: bool = False) -> dict[str, Any]:
    """The components of a tiny ``StableDiffusionXLPipeline``."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with seeded(seed + 1000):
        text_encoder = CLIPTextModel(_text_config()).eval()
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=TEXT_PROJECTION)).eval()
    return {
        "unet": tiny_sdxl_unet(seed, lcm=lcm),
        "vae": tiny_vae(seed + 2000),
        "scheduler": _euler_scheduler(),
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": clip_tokenizer(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sd_components(seed: int = 0, *, lcm: bool = False) -> dict[str, Any]:
    """The components of a tiny ``StableDiffusionPipeline``."""
    from transformers import CLIPTextModel

    with seeded(seed + 1000):
        text_encoder = CLIPTextModel(_text_config()).eval()
    return {
        "unet": tiny_sd_unet(seed, lcm=lcm),
        "vae": tiny_vae(seed + 2000),
        "scheduler": _euler_scheduler(),
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def _pipeline(class_name: str, components: dict[str, Any], dtype: torch.dtype) -> Any:
    """A diffusers pipeline of ``class_name`` from tiny components, in ``dtype``, without progress bars."""
    import diffusers

    pipe = getattr(diffusers, class_name)(**components)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0, *, lcm: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    return _pipeline("StableDiffusionXLPipeline", tiny_sdxl_components(seed, lcm=lcm), dtype)


def tiny_sd_pipeline(seed: int = 0, *, lcm: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    return _pipeline("StableDiffusionPipeline", tiny_sd_components(seed, lcm=lcm), dtype)


# --------------------------------------------------------------------------------------------- flow matching
T5_HIDDEN = 2 * TEXT_HIDDEN
"""The tiny T5's width: the two CLIPs' concatenated hidden states are padded to it (SD3's joint sequence)."""


@functools.lru_cache(maxsize=1)
def _t5_tokenizer_object() -> Any:
    """A Unigram ``tokenizers.Tokenizer`` in T5's conventions (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``▁`` word
    marks, ``</s>`` appended): letters, digits and punctuation, and every letter at a word start."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    characters = string.ascii_lowercase + string.digits + ",.'-!?"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.5)]
    vocab += [("▁" + c, -1.0) for c in string.ascii_lowercase] + [(c, -2.0) for c in characters]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return tokenizer


def t5_tokenizer() -> Any:
    """A ``T5TokenizerFast`` (character-level Unigram vocabulary, T5's special tokens), built offline."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(
        tokenizer_object=_t5_tokenizer_object(),
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )


def tiny_t5_encoder(seed: int = 0) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(_t5_tokenizer_object().get_vocab()),
        d_model=T5_HIDDEN,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with seeded(seed):
        return T5EncoderModel(config).eval()


def tiny_sd3_transformer(seed: int = 0, *, medium: bool = False) -> Any:
    """A tiny ``SD3Transformer2DModel`` (one joint block) for the tiny SD3 pipeline's latents and text.

    ``medium``: SD3.5 Medium's MMDiT-X shape instead — RMS QK-normalization and, in the first of two blocks (Medium:
    its first blocks of 24), a second image-only attention (``dual_attention_layers``), so that its state dict holds
    the keys (``attn2.*``, ``norm_q``/``norm_k``) a Medium checkpoint holds and a plain SD3 network lacks."""
    from diffusers import SD3Transformer2DModel

    shape = (
        {"num_layers": 2, "dual_attention_layers": (0,), "qk_norm": "rms_norm"}
        if medium
        else {"num_layers": 1}
    )
    with seeded(seed):
        return SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            out_channels=4,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=T5_HIDDEN,
            caption_projection_dim=32,
            pooled_projection_dim=2 * TEXT_PROJECTION,
            pos_embed_max_size=96,
            **shape,
        ).eval()


SD3_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
"""The ``FlowMatchEulerDiscreteScheduler`` config SD3.5 Large and Large Turbo ship."""


def tiny_flow_vae(seed: int = 0) -> Any:
    """The tiny VAE with SD3's latent statistics (``shift_factor`` and ``scaling_factor`` of diffusers' tests)."""
    vae = tiny_vae(seed)
    vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5035)
    return vae


def tiny_sd3_components(seed: int = 0, *, medium: bool = False) -> dict[str, Any]:
    """The components of a tiny ``StableDiffusion3Pipeline`` (``medium``: with SD3.5 Medium's transformer shape)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextModelWithProjection

    with seeded(seed + 1000):
        text_encoder = CLIPTextModelWithProjection(_text_config(projection_dim=TEXT_PROJECTION)).eval()
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=TEXT_PROJECTION)).eval()
    return {
        "transformer": tiny_sd3_transformer(seed, medium=medium),
        "vae": tiny_flow_vae(seed + 2000),
        "scheduler": FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": clip_tokenizer(),
        "text_encoder_3": tiny_t5_encoder(seed + 3000),
        "tokenizer_3": t5_tokenizer(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sd3_pipeline(seed: int = 0, *, dtype: torch.dtype = torch.float32, medium: bool = False) -> Any:
    return _pipeline("StableDiffusion3Pipeline", tiny_sd3_components(seed, medium=medium), dtype)


FLUX_DEV_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
"""FLUX.1-dev's ``FlowMatchEulerDiscreteScheduler`` config (resolution-dependent shift)."""
FLUX_SCHNELL_SCHEDULER: dict[str, Any] = {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
"""FLUX.1-schnell's: no shift."""


def tiny_flux_transformer(seed: int = 0, *, guidance_embeds: bool = True) -> Any:
    """A tiny ``FluxTransformer2DModel`` (one double and one single block) over the tiny VAE's 2×2-packed latents;
    ``guidance_embeds`` as FLUX.1-dev (True) or schnell (False)."""
    from diffusers import FluxTransformer2DModel

    with seeded(seed):
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * 4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=T5_HIDDEN,
            pooled_projection_dim=TEXT_HIDDEN,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 4, 8),
        ).eval()


def tiny_flux_components(seed: int = 0, *, schnell: bool = False) -> dict[str, Any]:
    """The components of a tiny ``FluxPipeline`` shaped like FLUX.1-dev (or schnell: no guidance embedding, no
    shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextModel

    with seeded(seed + 1000):
        text_encoder = CLIPTextModel(_text_config()).eval()
    return {
        "transformer": tiny_flux_transformer(seed, guidance_embeds=not schnell),
        "vae": tiny_flow_vae(seed + 2000),
        "scheduler": FlowMatchEulerDiscreteScheduler(
            **(FLUX_SCHNELL_SCHEDULER if schnell else FLUX_DEV_SCHEDULER)
        ),
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": tiny_t5_encoder(seed + 3000),
        "tokenizer_2": t5_tokenizer(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_flux_pipeline(seed: int = 0, *, schnell: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    return _pipeline("FluxPipeline", tiny_flux_components(seed, schnell=schnell), dtype)


# ------------------------------------------------------------------------------------------------------- PixArt
PIXART_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
}
"""The DiT betas PixArt-α trains with (its repo's ``scheduler_config.json``)."""
PIXART_DPM_SCHEDULER: dict[str, Any] = {
    **PIXART_BETAS,
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": True,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}
"""PixArt-XL-2-1024-MS's ``DPMSolverMultistepScheduler`` config."""


def tiny_pixart_transformer(seed: int = 0) -> Any:
    """A tiny ``PixArtTransformer2DModel`` (one block; learned variance like PixArt-α's 8 output channels).
    ``sample_size`` 128, as the 1024-px checkpoints, so that it takes their resolution/aspect-ratio micro-conditions;
    the width is a multiple of 3 because those conditions fill two thirds of the timestep embedding."""
    from diffusers import PixArtTransformer2DModel

    with seeded(seed):
        return PixArtTransformer2DModel(
            sample_size=128,
            num_layers=1,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=T5_HIDDEN,
            in_channels=4,
            cross_attention_dim=24,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        ).eval()


def tiny_pixart_components(seed: int = 0, *, lcm: bool = False) -> dict[str, Any]:
    """The components of a tiny ``PixArtAlphaPipeline``: PixArt-α's DPM-Solver++ (or, ``lcm``, PixArt-δ's
    ``LCMScheduler`` on the same betas)."""
    from diffusers import DPMSolverMultistepScheduler, LCMScheduler

    scheduler = LCMScheduler(**PIXART_BETAS) if lcm else DPMSolverMultistepScheduler(**PIXART_DPM_SCHEDULER)
    return {
        "transformer": tiny_pixart_transformer(seed),
        "vae": tiny_vae(seed + 2000),
        "scheduler": scheduler,
        "text_encoder": tiny_t5_encoder(seed + 3000),
        "tokenizer": t5_tokenizer(),
    }


def tiny_pixart_pipeline(seed: int = 0, *, lcm: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    return _pipeline("PixArtAlphaPipeline", tiny_pixart_components(seed, lcm=lcm), dtype)


# ------------------------------------------------------------------------------------------------------ Z-Image
QWEN_HIDDEN = 32
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
"""Qwen3's chat-template structure (user turn, then the assistant's turn opened), which ``ZImagePipeline`` applies
to every prompt before encoding it."""
ZIMAGE_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0}
"""The ``FlowMatchEulerDiscreteScheduler`` config the Z-Image and Z-Image-Turbo repos ship."""


@functools.lru_cache(maxsize=1)
def _qwen_tokenizer_object() -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` (every byte a token, no merges) with Qwen's chat special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(_bytes_to_unicode().values())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    )
    return tokenizer


def qwen_tokenizer() -> Any:
    """A ``Qwen2TokenizerFast``-compatible tokenizer (byte-level, Qwen's special tokens and chat template), built
    offline."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_qwen_tokenizer_object(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def tiny_qwen3_encoder(seed: int = 0) -> Any:
    """A tiny ``Qwen3Model`` (two layers: the pipeline reads the second-to-last hidden states)."""
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=_qwen_tokenizer_object().get_vocab_size(),
        hidden_size=QWEN_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
    )
    with seeded(seed):
        return Qwen3Model(config).eval()


def tiny_zimage_transformer(seed: int = 0) -> Any:
    """A tiny ``ZImageTransformer2DModel`` (one main and one refiner layer) for the tiny VAE's latents."""
    from diffusers import ZImageTransformer2DModel

    with seeded(seed):
        return ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=4,
            dim=32,
            n_layers=1,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            cap_feat_dim=QWEN_HIDDEN,
            axes_dims=[4, 6, 6],
            axes_lens=[1024, 64, 64],
        ).eval()


def tiny_zimage_components(seed: int = 0) -> dict[str, Any]:
    """The components of a tiny ``ZImagePipeline``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return {
        "transformer": tiny_zimage_transformer(seed),
        "vae": tiny_flow_vae(seed + 2000),
        "scheduler": FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER),
        "text_encoder": tiny_qwen3_encoder(seed + 3000),
        "tokenizer": qwen_tokenizer(),
    }


def tiny_zimage_pipeline(seed: int = 0, *, dtype: torch.dtype = torch.float32) -> Any:
    return _pipeline("ZImagePipeline", tiny_zimage_components(seed), dtype)


# --------------------------------------------------------------------------------------------------- Qwen-Image
QWENIMAGE_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}
"""The ``FlowMatchEulerDiscreteScheduler`` config of the Qwen/Qwen-Image repo."""


def tiny_qwen25vl_encoder(seed: int = 0) -> Any:
    """A tiny ``Qwen2_5_VLForConditionalGeneration`` (two text layers, one vision block the text path never uses):
    the pipeline reads the last hidden states of its language model."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokens = _qwen_tokenizer_object()
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": tokens.get_vocab_size(),
            "hidden_size": QWEN_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "bos_token_id": tokens.token_to_id("<|endoftext|>"),
            "eos_token_id": tokens.token_to_id("<|im_end|>"),
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": QWEN_HIDDEN,
            "fullatt_block_indexes": [0],
        },
    )
    with seeded(seed):
        return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwenimage_vae(seed: int = 0) -> Any:
    """A tiny ``AutoencoderKLQwenImage`` (8× spatial compression like the real one, 4 latent channels with their
    own mean and std)."""
    from diffusers import AutoencoderKLQwenImage

    with seeded(seed):
        return AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.1, -0.2, 0.3, 0.0],
            latents_std=[1.5, 0.8, 1.2, 2.0],
        ).eval()


def tiny_qwenimage_transformer(seed: int = 0) -> Any:
    """A tiny ``QwenImageTransformer2DModel`` (two dual-stream blocks) for the tiny Qwen-Image VAE's latents."""
    from diffusers import QwenImageTransformer2DModel

    with seeded(seed):
        return QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=QWEN_HIDDEN,
            axes_dims_rope=(2, 2, 4),
        ).eval()


def tiny_qwenimage_components(seed: int = 0) -> dict[str, Any]:
    """The components of a tiny ``QwenImagePipeline``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return {
        "transformer": tiny_qwenimage_transformer(seed),
        "vae": tiny_qwenimage_vae(seed + 2000),
        "scheduler": FlowMatchEulerDiscreteScheduler(**QWENIMAGE_SCHEDULER),
        "text_encoder": tiny_qwen25vl_encoder(seed + 3000),
        "tokenizer": qwen_tokenizer(),
    }


def tiny_qwenimage_pipeline(seed: int = 0, *, dtype: torch.dtype = torch.float32) -> Any:
    return _pipeline("QwenImagePipeline", tiny_qwenimage_components(seed), dtype)


# --------------------------------------------------------------------------------------------- SANA / SANA-Sprint
GEMMA_HIDDEN = 16
SANA_DPM_SCHEDULER: dict[str, Any] = {
    "flow_shift": 3.0,
    "use_flow_sigmas": True,
    "prediction_type": "flow_prediction",
}
"""SANA's flow DPM-Solver++ (diffusers' ``convert_sana_to_diffusers.py`` default, the SANA repos' scheduler)."""


def gemma_tokenizer() -> Any:
    """A ``GemmaTokenizer`` (Gemma's conventions: "▁" for spaces, byte fallback; one token per character), built
    offline; it saves and loads as itself."""
    import string

    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁", *string.printable[:94]]
    return GemmaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def tiny_gemma2_encoder(seed: int = 0) -> Any:
    """A tiny ``Gemma2Model`` (one layer), SANA's text encoder's class."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=len(gemma_tokenizer()), hidden_size=GEMMA_HIDDEN, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
    )  # fmt: skip
    with seeded(seed):
        return Gemma2Model(config).eval()


def tiny_sana_transformer(seed: int = 0, *, sprint: bool = False) -> Any:
    """A tiny ``SanaTransformer2DModel`` with QK norm, as SANA-Sprint and its teacher have. ``sprint``: the student's
    guidance embedding (called with σ as its timestep); else the teacher's dense timestep embedding, which
    ``SanaPipeline`` feeds σ·1000·``timestep_scale`` = σ."""
    from diffusers import SanaTransformer2DModel

    shape = {"guidance_embeds": True} if sprint else {"timestep_scale": 0.001}
    with seeded(seed):
        return SanaTransformer2DModel(
            patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
            num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8,
            caption_channels=GEMMA_HIDDEN, sample_size=32, qk_norm="rms_norm_across_heads", **shape,
        ).eval()  # fmt: skip


def tiny_dc_ae(seed: int = 0) -> Any:
    """A tiny ``AutoencoderDC`` (deep-compression VAE; 2× here, SANA's is 32×), diffusers' test shape."""
    from diffusers import AutoencoderDC

    with seeded(seed):
        return AutoencoderDC(
            in_channels=3, latent_channels=4, attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
            encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), downsample_block_type="conv",
            upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
            scaling_factor=0.41407,
        ).eval()  # fmt: skip


def tiny_sana_pipeline(seed: int = 0, *, sprint: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    """A tiny ``SanaPipeline`` (the teacher: flow DPM-Solver) or, ``sprint``, ``SanaSprintPipeline`` (``SCMScheduler``,
    its repo's config: trigflow, σ_data 0.5)."""
    from diffusers import DPMSolverMultistepScheduler, SCMScheduler

    scheduler = SCMScheduler(sigma_data=0.5) if sprint else DPMSolverMultistepScheduler(**SANA_DPM_SCHEDULER)
    components = {
        "transformer": tiny_sana_transformer(seed, sprint=sprint),
        "vae": tiny_dc_ae(seed + 2000),
        "scheduler": scheduler,
        "text_encoder": tiny_gemma2_encoder(seed + 3000),
        "tokenizer": gemma_tokenizer(),
    }
    return _pipeline("SanaSprintPipeline" if sprint else "SanaPipeline", components, dtype)
