"""SANA: a linear-attention DiT (``SanaTransformer2DModel``) on DC-AE latents, conditioned on Gemma-2's hidden states
with their attention mask (``SanaPipeline``), and SANA-Sprint, its sCM/LADD-distilled 1–4-step student
(``SanaSprintPipeline``).

One adapter serves both, told apart by the network: SANA-Sprint's transformer has a guidance *embedding*
(``guidance_embeds``), which only ``SanaSprintPipeline`` can call. What each pipeline does, and how it is done here:

- ``SanaPipeline``: flow matching (the repos' DPM-Solver++ on flow sigmas, shift 3), CFG above scale 1, the
  transformer called with σ·1000·``timestep_scale`` (SANA-Sprint's teacher, with its dense timestep embedding,
  has ``timestep_scale`` 0.001: it sees σ).
- ``SanaSprintPipeline``: ``SCMScheduler`` in TrigFlow, angles s from π/2 (1.5708) down, latents z = σ_d·(cos s·x0 +
  sin s·ε). Before each call it turns z into the flow-matching input at σ = sin s / (sin s + cos s),
  x = z/σ_d / (sin s + cos s) = (1−σ)·x0 + σ·ε, calls the transformer with timestep σ and the guidance scale ×
  ``guidance_embeds_scale`` (no CFG), and turns the flow velocity it returns back into TrigFlow's; the scheduler
  takes x̂0 = cos s·z − sin s·F and re-noises it with fresh noise at the next angle. In flow units that step *is*
  ``FlowMatchEulerDiscreteScheduler``'s ``stochastic_sampling`` step (x̂0 = x − σ·v, then (1−σ')·x̂0 + σ'·noise, the
  same noise drawn from the same generators), σ_d cancels exactly (it is 0.5, a power of two), and the last angle,
  0, is σ = 0. So the student is sampled here as that flow schedule with σ_i = sin s_i/(sin s_i + cos s_i)
  (:func:`sprint_sigmas`): its x̂0 is read like any flow model's, and the hybrid hands latents between the teacher's
  flow schedule and the student's at equal σ with the loop's own flow-to-flow hand-off — no TrigFlow state is
  ever kept. ``tests/test_sana_family.py`` holds this equal to ``SanaSprintPipeline``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from conceptspace.models.families.base import Conditioning, Family

MAX_SEQUENCE_LENGTH = 300
"""Gemma tokens per prompt after the instruction is cut away: both SANA pipelines' ``__call__`` default."""
MAX_TIMESTEP = 1.57080
"""SANA-Sprint's first TrigFlow angle (≈ π/2, pure noise): ``SanaSprintPipeline.__call__``'s ``max_timesteps``."""
INTERMEDIATE_TIMESTEP = 1.3
"""Its second angle in the 2-step schedule: ``SanaSprintPipeline.__call__``'s ``intermediate_timesteps`` (the
scheduler takes it for 2 steps only; other step counts space the angles evenly from :data:`MAX_TIMESTEP` to 0)."""


def complex_human_instruction() -> list[str]:
    """The instruction SANA's pipelines put before every prompt by default (``complex_human_instruction``), read from
    ``SanaPipeline.__call__``'s signature so that it stays diffusers' own."""
    from diffusers import SanaPipeline

    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


def sprint_sigmas(steps: int) -> list[float]:
    """The flow-matching σ of each SANA-Sprint step: ``SCMScheduler``'s angles s (:data:`MAX_TIMESTEP`, then
    :data:`INTERMEDIATE_TIMESTEP` for 2 steps, else evenly spaced to 0), as ``SanaSprintPipeline`` converts them:
    σ = sin s / (sin s + cos s), in float32. The first is 1.0000033 (cos 1.5708 < 0), as the pipeline's."""
    if steps < 1:
        raise ValueError(f"SANA-Sprint needs at least 1 step, got {steps}")
    if steps == 2:
        angles = torch.tensor([MAX_TIMESTEP, INTERMEDIATE_TIMESTEP]).float()
    else:
        angles = torch.linspace(MAX_TIMESTEP, 0, steps + 1).float()[:-1]
    return (torch.sin(angles) / (torch.cos(angles) + torch.sin(angles))).tolist()


class Sana(Family):
    """SANA transformers (``SanaPipeline``) and SANA-Sprint students (``SanaSprintPipeline``'s conventions)."""

    name: ClassVar[str] = "sana"
    text_mask_input: ClassVar[str | None] = "encoder_attention_mask"
    network_folder: ClassVar[str] = "transformer"
    pipeline_class_name: ClassVar[str] = "SanaPipeline"
    network_class_name: ClassVar[str] = "SanaTransformer2DModel"
    # not guidance_embeds / timestep_scale: the student and its teacher differ there by design, not in shape
    shared_config_fields = (
        "patch_size",
        "in_channels",
        "out_channels",
        "num_layers",
        "num_attention_heads",
        "attention_head_dim",
        "num_cross_attention_heads",
        "cross_attention_head_dim",
        "cross_attention_dim",
        "caption_channels",
        "mlp_ratio",
        "qk_norm",
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
        # both pipelines' defaults: no caption cleaning, the instruction before the prompt (not the negative one)
        positive, mask, negative, negative_mask = pipeline.encode_prompt(
            prompt,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt or "",
            num_images_per_prompt=1,
            device=device,
            clean_caption=False,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            complex_human_instruction=complex_human_instruction(),
        )
        return Conditioning(
            {"encoder_hidden_states": positive, "encoder_attention_mask": mask},
            {"encoder_hidden_states": negative, "encoder_attention_mask": negative_mask} if cfg else None,
        )

    def embeds_guidance(self, network: Any) -> bool:
        return bool(getattr(network.config, "guidance_embeds", False))

    def guidance_condition(self, pipeline: Any, network: Any, scale: float, batch: int) -> torch.Tensor:
        # SanaSprintPipeline: the scale times the transformer's guidance_embeds_scale (0.1), one per row
        return torch.full((batch,), float(scale)) * network.config.guidance_embeds_scale

    def predict(
        self,
        network: Any,
        sample: torch.Tensor,
        t: torch.Tensor,
        inputs: Mapping[str, torch.Tensor],
        guidance_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The flow velocity at ``sample`` (a flow-matching latent at σ = t/1000), as each pipeline calls its network:
        SANA-Sprint with σ and its guidance input, SANA with t·``timestep_scale``."""
        timestep = t.expand(sample.shape[0]).to(sample.dtype)
        if self.embeds_guidance(network):
            timestep, extra = timestep / 1000, {"guidance": guidance_condition}
        else:
            timestep, extra = timestep * network.config.timestep_scale, {}
        out = network(
            sample.to(network.dtype),
            encoder_hidden_states=inputs["encoder_hidden_states"].to(network.dtype),
            encoder_attention_mask=inputs["encoder_attention_mask"],
            timestep=timestep,
            return_dict=False,
            **extra,
        )[0].float()
        if network.config.out_channels // 2 == sample.shape[1]:  # learned variance (SanaPipeline drops it)
            out = out.chunk(2, dim=1)[0]
        return out.to(sample.dtype)

    def scheduler_timestep(self, network_timestep: torch.Tensor, network: Any = None) -> torch.Tensor:
        """The scheduler's t from ``network``'s timestep input, as :meth:`predict` calls it: SANA-Sprint's σ = t/1000,
        SANA's t·``timestep_scale`` (σ for SANA-Sprint's teacher); t as it is when the network is not given. These
        are the flow scheduler's timesteps conceptspace samples SANA-Sprint with; diffusers' ``SanaSprintPipeline``
        steps by SCM angles instead, so a window given in its timesteps does not carry over."""
        if network is None:
            return network_timestep
        if self.embeds_guidance(network):
            return network_timestep * 1000
        return network_timestep / network.config.timestep_scale

    def timestep_kwargs(
        self, scheduler: Any, network: Any, steps: int, latent_shape: tuple[int, int]
    ) -> dict[str, Any]:
        # SanaPipeline passes nothing; a SANA-Sprint network samples SCMScheduler's angles as flow sigmas
        return {"sigmas": sprint_sigmas(steps)} if self.embeds_guidance(network) else {}

    def random_pipeline(self, seed: int, dtype: torch.dtype) -> Any:
        from conceptspace.models.tiny import tiny_sana_pipeline

        return tiny_sana_pipeline(seed=seed, dtype=dtype)

    def random_network(self, seed: int, *, embeds_guidance: bool = False) -> Any:
        """A tiny SANA-Sprint-shaped student (always with its guidance embedding: SANA's distilled students are
        SANA-Sprint's)."""
        from conceptspace.models.tiny import tiny_sana_transformer

        return tiny_sana_transformer(seed=seed, sprint=True)
