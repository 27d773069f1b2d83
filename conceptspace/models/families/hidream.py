"""HiDream-I1: a sparse (mixture-of-experts) dual- then single-stream DiT (``HiDreamImageTransformer2DModel``) on
FLUX's VAE latents, conditioned on four text encoders (``HiDreamImagePipeline``): two CLIPs with projection (their
pooled outputs, concatenated), T5's sequence, and every layer's hidden states of Llama-3.1-8B-Instruct, one layer
per transformer block. HiDream-I1-Full is the base (UniPC on flow sigmas, CFG); Dev and Fast are its distilled
students (``FlowMatchLCMScheduler``'s stochastic steps, no CFG).

What the pipeline does, and how it is done here:

- the Llama encoder is not in the HiDream repos: diffusers' docs load it from its own repo and pass it as
  ``text_encoder_4`` / ``tokenizer_4``. :func:`load_hidream_pipeline` does the same when a pair is loaded by hub id
  (from ``meta-llama/Llama-3.1-8B-Instruct`` in the same hub cache, or the folder or repo that the environment
  variable :data:`LLAMA_ENV` names), and says what to fetch when it is missing;
- Llama's hidden states come as ``(layers, batch, tokens, width)``; a :class:`Conditioning` holds batch-first
  tensors, so they are kept as ``(batch, layers, tokens, width)`` and turned back for the network;
- the network predicts the *negative* flow velocity: the pipeline negates its output before the scheduler step, and
  :meth:`HiDream.predict` returns the velocity ``ε − x0`` the same way;
- timesteps are σ·1000, passed as the scheduler gives them; a ``FlowMatchLCMScheduler`` gets ``mu`` from the
  network's largest token count (``max_seq``, not the image's), a ``UniPCMultistepScheduler`` nothing;
- ``HiDreamImagePipeline`` rescales every requested size to the area of 1024² (``default_sample_size``·8 squared)
  before sampling; conceptspace samples the size it is asked for. The two agree at 1024² and at HiDream's listed
  resolutions (768×1360, 880×1168, 832×1248 …, which the rescaling leaves as they are);
- the students' steps re-noise x̂0 with fresh noise. ``HiDreamImagePipeline`` calls ``scheduler.step`` without its
  generator, so its noise comes from torch's global RNG; conceptspace draws it from each sample's own generator
  (as the other stochastic pipelines do), so every image is reproducible from its seed alone.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from conceptspace.models.families.base import Conditioning, Family
from conceptspace.models.registry import IncompatibleModelsError, ModelNotFoundError, hub_offline

MAX_SEQUENCE_LENGTH = 128
"""Tokens per prompt for T5 and Llama (and CLIP's padding): ``HiDreamImagePipeline.__call__``'s default."""
LLAMA_REPO_ID = "meta-llama/Llama-3.1-8B-Instruct"
"""The fourth text encoder's repo (HiDream-I1's README; diffusers' docs name it by its older id
``meta-llama/Meta-Llama-3.1-8B-Instruct``, which the hub redirects here)."""
LLAMA_ENV = "CONCEPTSPACE_HIDREAM_LLAMA"
"""Environment variable naming another source of the Llama encoder: a local folder or a hub repo id."""


def llama_source() -> str:
    """Where the Llama encoder is read from: :data:`LLAMA_ENV` when set, else :data:`LLAMA_REPO_ID`."""
    return os.environ.get(LLAMA_ENV) or LLAMA_REPO_ID


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _llama_missing(source: str, cache_dir: Any, detail: str) -> ModelNotFoundError:
    from huggingface_hub import constants

    where = cache_dir or constants.HF_HUB_CACHE
    cache = f" --cache-dir {cache_dir}" if cache_dir else ""
    if os.path.isdir(source):
        found = f"is read from the folder {source}, which holds no loadable Llama encoder and tokenizer"
    else:
        reason = "HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline() else "it could not be downloaded"
        found = f"is read from {source}, which is not in the Hugging Face cache at {where} and {reason}"
    return ModelNotFoundError(
        f"HiDream-I1 needs its fourth text encoder, Llama-3.1-8B-Instruct, which the HiDream repos do not ship: it "
        f"{found}. Fetch it with `hf download {LLAMA_REPO_ID}{cache}` (a gated repo: accept its licence on the hub "
        f"and `hf auth login` first), or set {LLAMA_ENV} to a local copy ({detail})"
    )


def load_llama(
    source: str | None = None, *, dtype: torch.dtype | None = None, cache_dir: Any = None
) -> tuple[Any, Any]:
    """The Llama encoder and its tokenizer as diffusers' HiDream docs load them (``LlamaForCausalLM`` returning
    every layer's hidden states, ``PreTrainedTokenizerFast``), from ``source`` (default :func:`llama_source`)."""
    from huggingface_hub import hf_hub_download
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    source = source or llama_source()
    local = os.path.isdir(source)
    offline = {"local_files_only": True} if hub_offline() and not local else {}
    if not local:  # absent, gated, offline or unreachable (hub errors are not all OSErrors): one clear error
        try:
            hf_hub_download(source, "config.json", cache_dir=cache_dir, **offline)
        except Exception as error:
            raise _llama_missing(source, cache_dir, _first_line(error)) from None
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(source, cache_dir=cache_dir, **offline)
        encoder = LlamaForCausalLM.from_pretrained(
            source,
            output_hidden_states=True,
            output_attentions=True,
            dtype=dtype,
            cache_dir=cache_dir,
            **offline,
        )
    except OSError as error:
        raise _llama_missing(source, cache_dir, _first_line(error)) from None
    return encoder.eval(), tokenizer


def _ships_llama(source: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether ``source``'s model_index.json names a Llama encoder of its own (a pipeline saved whole)."""
    from diffusers import HiDreamImagePipeline

    keys = ("cache_dir", "local_files_only")
    try:
        index = HiDreamImagePipeline.load_config(source, **{k: kwargs[k] for k in keys if k in kwargs})
    except OSError:
        return False  # from_pretrained reports the missing repo itself
    entry = index.get("text_encoder_4")
    return isinstance(entry, list | tuple) and len(entry) == 2 and entry[1] is not None


def load_hidream_pipeline(source: str, **kwargs: Any) -> Any:
    """``HiDreamImagePipeline.from_pretrained(source, **kwargs)`` with ``text_encoder_4`` / ``tokenizer_4`` read
    by :func:`load_llama` (in the same cache and dtype) unless given or shipped in ``source``.

    Raises:
        ModelNotFoundError: the Llama encoder is not available (the message says what to fetch).
    """
    from diffusers import HiDreamImagePipeline

    if "text_encoder_4" not in kwargs and not _ships_llama(source, kwargs):
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        encoder, tokenizer = load_llama(dtype=dtype, cache_dir=kwargs.get("cache_dir"))
        kwargs = {**kwargs, "text_encoder_4": encoder, "tokenizer_4": tokenizer}
    return HiDreamImagePipeline.from_pretrained(source, **kwargs)


@functools.lru_cache(maxsize=1)
def _pipeline_loader() -> type:
    from diffusers import HiDreamImagePipeline

    class HiDreamImagePipelineWithLlama(HiDreamImagePipeline):
        """``HiDreamImagePipeline`` whose ``from_pretrained`` reads the Llama encoder from its own repo
        (:func:`load_hidream_pipeline`); what it loads is a plain ``HiDreamImagePipeline``."""

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
            return load_hidream_pipeline(os.fspath(pretrained_model_name_or_path), **kwargs)

    return HiDreamImagePipelineWithLlama


def hidream_mu(network: Any) -> float:
    """The ``mu`` ``HiDreamImagePipeline`` gives a flow-matching scheduler: its ``calculate_shift`` of the network's
    ``max_seq`` (the largest token count it takes), whatever the image's size."""
    from diffusers.pipelines.hidream_image.pipeline_hidream_image import calculate_shift

    return float(calculate_shift(network.max_seq))


class HiDream(Family):
    """HiDream-I1 Full / Dev / Fast transformers (``HiDreamImagePipeline``)."""

    name: ClassVar[str] = "hidream"
    text_inputs: ClassVar[tuple[str, ...]] = (
        "encoder_hidden_states_t5",
        "encoder_hidden_states_llama3",
        "pooled_embeds",
    )
    network_folder: ClassVar[str] = "transformer"
    pipeline_class_name: ClassVar[str] = "HiDreamImagePipeline"
    network_class_name: ClassVar[str] = "HiDreamImageTransformer2DModel"
    latent_multiple: ClassVar[int] = 2
    shared_config_fields = (
        "patch_size",
        "in_channels",
        "out_channels",
        "num_layers",
        "num_single_layers",
        "attention_head_dim",
        "num_attention_heads",
        "caption_channels",
        "text_emb_dim",
        "num_routed_experts",
        "num_activated_experts",
        "axes_dims_rope",
        "llama_layers",
    )

    def companions(self) -> dict[str, str]:
        return {
            "text_encoder_4": llama_source()
        }  # where loading reads it: CONCEPTSPACE_HIDREAM_LLAMA or the hub

    def pipeline_class(self) -> type:
        """``HiDreamImagePipeline``, with a ``from_pretrained`` that also reads its Llama encoder."""
        return _pipeline_loader()

    def check_pipeline(self, pipeline: Any, source: str, name: str) -> None:
        if (
            getattr(pipeline, "text_encoder_4", None) is None
            or getattr(pipeline, "tokenizer_4", None) is None
        ):
            raise IncompatibleModelsError(
                f"{name!r} ({source}) loaded without its Llama text encoder (text_encoder_4 / tokenizer_4); "
                f"fetch {LLAMA_REPO_ID} or set {LLAMA_ENV}"
            )

    def encode_text(
        self,
        pipeline: Any,
        prompt: str,
        *,
        negative_prompt: str | None,
        cfg: bool,
        height: int,
        width: int,
        device: torch.device,
    ) -> Conditioning:
        # as __call__ encodes: every encoder in its own dtype, the negative prompt "" when none is given
        t5, negative_t5, llama, negative_llama, pooled, negative_pooled = pipeline.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            do_classifier_free_guidance=cfg,
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )

        def inputs(t5: torch.Tensor, llama: torch.Tensor, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
            # Llama's (layers, batch, …) held batch-first, as every conditioning tensor is
            return {
                "encoder_hidden_states_t5": t5,
                "encoder_hidden_states_llama3": llama.transpose(0, 1),
                "pooled_embeds": pooled,
            }

        return Conditioning(
            inputs(t5, llama, pooled), inputs(negative_t5, negative_llama, negative_pooled) if cfg else None
        )

    def predict(
        self,
        network: Any,
        sample: torch.Tensor,
        t: torch.Tensor,
        inputs: Mapping[str, torch.Tensor],
        guidance_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The flow velocity at ``sample``: minus the network's output, as ``HiDreamImagePipeline`` steps with it."""
        out = network(
            hidden_states=sample,
            timesteps=t.expand(sample.shape[0]),
            encoder_hidden_states_t5=inputs["encoder_hidden_states_t5"],
            encoder_hidden_states_llama3=inputs["encoder_hidden_states_llama3"].transpose(0, 1),
            pooled_embeds=inputs["pooled_embeds"],
            return_dict=False,
        )[0]
        return -out

    def timestep_kwargs(
        self, scheduler: Any, network: Any, steps: int, latent_shape: tuple[int, int]
    ) -> dict[str, Any]:
        # the pipeline calls UniPC's set_timesteps with the step count alone, the others with mu (and no sigmas)
        if type(scheduler).__name__ == "UniPCMultistepScheduler":
            return {}
        accepts_mu = "mu" in inspect.signature(scheduler.set_timesteps).parameters
        return {"mu": hidream_mu(network)} if accepts_mu else {}

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny_hidream import tiny_hidream_pipeline

        return tiny_hidream_pipeline(seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        from conceptspace.models.tiny_hidream import tiny_hidream_transformer

        return tiny_hidream_transformer(seed)
