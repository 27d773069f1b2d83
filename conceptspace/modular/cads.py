"""CADS as a diffusers guider: condition-annealed sampling inside any modular pipeline's denoising loop.

A modular pipeline's loop denoiser hands its guider every model input as a ``(conditional, unconditional)`` pair,
asks it for the batches to run (:meth:`prepare_inputs`), runs the network on each and asks it to combine the
predictions. A guider can therefore change what the conditional batch sees without touching the pipeline: CADS
corrupts the conditional branch's text embeddings and leaves the unconditional one alone, then combines as
classifier-free guidance does. The maths is :func:`conceptspace.sampling.remedies.cads_corrupt`, the one the
:class:`~conceptspace.remedies.CADS` regime runs, with the same per-sample noise — so for the same seeds a modular
pipeline with this guider makes conceptspace's images.

:class:`SeededConditioningGuidance` is what the conditioning remedies add to classifier-free guidance with
conceptspace's one-pass rule (:class:`~conceptspace.modular.one_pass.OnePassCFGGuidance`) (CADS here,
cond-noise in :mod:`conceptspace.modular.cond_noise`): which guider inputs are text, their padding masks, the
seeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers.configuration_utils import register_to_config

from conceptspace.modular.one_pass import OnePassCFGGuidance
from conceptspace.sampling.loop import check_guidance
from conceptspace.sampling.remedies import CADS, cads_corrupt, cads_gamma, token_weights
from conceptspace.sampling.sampler import check_seed

if TYPE_CHECKING:
    from diffusers.modular_pipelines.modular_pipeline import BlockState

__all__ = [
    "CADSGuidance",
    "DEFAULT_MASK_INPUTS",
    "DEFAULT_TEXT_INPUTS",
    "SeededConditioningGuidance",
    "text_input_names",
]

DEFAULT_TEXT_INPUTS: dict[str, str] = {
    "prompt_embeds": "encoder_hidden_states",
    "text_embeds": "text_embeds",
    "encoder_hidden_states": "encoder_hidden_states",
    "cap_feats": "encoder_hidden_states",
}
"""The guider inputs that carry the prompt's embedding in diffusers' modular loop denoisers, each mapped to the
name conceptspace's family gives it (the salt of its noise, so both draw the same noise for the same seed): SDXL's
``prompt_embeds`` (the UNet's ``encoder_hidden_states``) and pooled ``text_embeds``; the transformers'
``encoder_hidden_states`` (Qwen-Image, SD3, LTX, Wan, Anima); Z-Image's ``cap_feats`` (a list of per-sample
sequences). Inputs a loop does not have are skipped. SD3's loop also calls its pooled embedding ``text_embeds``,
which conceptspace's SD3 family names ``pooled_projections``: map it so to reproduce conceptspace's SD3 draws."""

DEFAULT_MASK_INPUTS: list[str] = ["encoder_hidden_states_mask", "encoder_attention_mask"]
"""Guider inputs that mark a padded text sequence's real tokens (Qwen-Image's, LTX's and Wan's names). A text
input's mask is the first of these the batch has with the text's (batch, tokens) shape; without one every token
counts as real."""


def text_input_names(text_inputs: Mapping[str, str] | Sequence[str], owner: str) -> dict[str, str]:
    """``text_inputs`` as ``{guider input: noise name}``: a mapping as given, a list of names each its own noise
    name; a ValueError naming ``owner`` for anything else."""
    if isinstance(text_inputs, Mapping):
        names = dict(text_inputs)
    elif isinstance(text_inputs, Sequence) and not isinstance(text_inputs, str):
        names = {name: name for name in text_inputs}
    else:
        names = None
    if not names or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise ValueError(
            f"{owner}: text_inputs must be a non-empty mapping from guider input names to noise names (or a list "
            f"of names), got {text_inputs!r}"
        )
    return names


class SeededConditioningGuidance(OnePassCFGGuidance):
    """Classifier-free guidance whose conditional batch gets a per-sample change to its text inputs: the base of
    the conditioning remedies' guiders. Subclasses say when the change is active (:meth:`perturbs`) and what it is
    (:meth:`perturb`).

    Guidance: ``guidance_scale`` in diffusers' convention (``uncond + s·(cond − uncond)``; with
    ``use_original_formulation``, ``cond + s·(cond − uncond)``), one conditional pass at ``<= 1``
    (:class:`OnePassCFGGuidance`). ``enabled=False`` is one plain conditional pass, unchanged.

    Seeds: the noise of row ``i`` is drawn from its sample's seed, as conceptspace draws it, so a sample does not
    depend on its batch. Give the seeds of a call with :meth:`set_seeds` (the seeds of the per-sample generators
    the pipeline is called with reproduce conceptspace's images); they are state, not configuration, and stay set
    until changed. Without them row ``i`` is seeded ``seed + i`` (``seed``: a config parameter, default 0) — fixed,
    so a pipeline call repeats itself, but then the conditioning noise does not follow the latent generator.
    """

    def __init__(
        self,
        *,
        owner: str,
        guidance_scale: float,
        guidance_rescale: float,
        use_original_formulation: bool,
        start: float,
        stop: float,
        enabled: bool,
        text_inputs: Mapping[str, str] | Sequence[str],
        mask_inputs: Sequence[str],
        seed: int,
    ) -> None:
        check_guidance(guidance_scale, f"{owner}: guidance_scale")
        # by keyword: diffusers' config decorator marks positional arguments as defaults, which from_config drops
        super().__init__(
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            use_original_formulation=use_original_formulation,
            start=start,
            stop=stop,
            enabled=enabled,
        )
        self.text_inputs = text_input_names(text_inputs, owner)
        if isinstance(mask_inputs, str) or not all(isinstance(m, str) for m in mask_inputs):
            raise ValueError(
                f"{owner}: mask_inputs must be a list of guider input names, got {mask_inputs!r}"
            )
        self.mask_inputs = tuple(mask_inputs)
        self.seed = check_seed(seed, f" ({owner}: seed)")
        self.seeds: tuple[int, ...] | None = None

    # ------------------------------------------------------------------------------------------------ seeds
    def set_seeds(self, seeds: Iterable[int] | None) -> None:
        """The seed of each sample of the next calls (row ``i`` of the batch: ``seeds[i]``); None: ``seed + i``."""
        self.seeds = None if seeds is None else tuple(check_seed(s) for s in seeds)

    def batch_seeds(self, batch: int) -> tuple[int, ...]:
        """The seeds of a batch of ``batch`` rows: those set, or ``seed + i``."""
        if self.seeds is None:
            return tuple(self.seed + i for i in range(batch))
        if len(self.seeds) != batch:
            raise ValueError(
                f"{type(self).__name__}: {len(self.seeds)} seeds are set for a batch of {batch} samples: call "
                "set_seeds() with one seed per sample (num_images_per_prompt × prompts), or None"
            )
        return self.seeds

    # ----------------------------------------------------------------------------------------------- guidance
    def perturbs(self) -> bool:
        """Whether the conditional batch is changed at the current step (set by ``set_state``); each remedy's
        guider says (CADS: γ < 1; cond-noise: the first steps)."""
        raise NotImplementedError(f"{type(self).__name__} must say when it perturbs: define perturbs()")

    def perturb(
        self, clean: torch.Tensor, real: torch.Tensor, seeds: tuple[int, ...], name: str
    ) -> torch.Tensor:
        """One text input of the conditional batch (batch first), changed; ``real``: its tokens' weights
        (:func:`~conceptspace.sampling.remedies.token_weights`), ``name``: its noise name; each remedy's guider
        says how."""
        raise NotImplementedError(f"{type(self).__name__} must say what it changes: define perturb()")

    def prepare_inputs(self, data: dict[str, Any]) -> list[BlockState]:
        return self.perturbed(super().prepare_inputs(data))

    def prepare_inputs_from_block_state(
        self, data: BlockState, input_fields: dict[str, str | tuple[str, str]]
    ) -> list[BlockState]:
        return self.perturbed(super().prepare_inputs_from_block_state(data, input_fields))

    def perturbed(self, batches: list[BlockState]) -> list[BlockState]:
        """The batches with the conditional one's text inputs changed where :meth:`perturbs` says so (new
        tensors: the pipeline's own stay as they were)."""
        if not self._enabled or not self.perturbs():
            return batches
        for batch in batches:
            if getattr(batch, self._identifier_key) == "pred_cond":
                self.perturb_batch(batch)
        return batches

    def perturb_batch(self, batch: BlockState) -> None:
        values = batch.as_dict()
        for key, name in self.text_inputs.items():
            clean = values.get(key)
            if isinstance(clean, torch.Tensor):
                real = token_weights(values, key, self.mask_for(values, key))
                batch[key] = self.perturb(clean, real, self.batch_seeds(clean.shape[0]), name)
            elif (
                isinstance(clean, list | tuple) and clean and all(isinstance(c, torch.Tensor) for c in clean)
            ):
                # one unpadded sequence per sample (Z-Image's cap_feats): each a batch of one with its own seed
                seeds = self.batch_seeds(len(clean))
                batch[key] = [
                    self.perturb(c[None], token_weights({key: c[None]}, key, None), (s,), name)[0]
                    for c, s in zip(clean, seeds, strict=True)
                ]

    def mask_for(self, values: Mapping[str, Any], key: str) -> str | None:
        """The first of :attr:`mask_inputs` that ``values`` holds with the shape of ``values[key]``'s tokens."""
        text = values[key]
        for name in self.mask_inputs:
            mask = values.get(name)
            if isinstance(mask, torch.Tensor) and text.dim() == 3 and mask.shape == text.shape[:2]:
                return name
        return None


class CADSGuidance(SeededConditioningGuidance):
    """Condition-annealed sampling (Sadat et al., ICLR 2024, arXiv 2310.17347) on top of classifier-free guidance,
    for any modular pipeline: ``pipe.update_components(guider=CADSGuidance(...))``.

    At a step of normalised time t = timestep / ``num_train_timesteps`` (1: noise; the timestep is the one the
    loop gives ``set_state``), each text input y of the conditional batch becomes √γ(t)·y + s·√(1 − γ(t))·n
    (γ: 0 above ``tau2``, 1 below ``tau1``, linear between), rescaled to y's per-sample mean and std over its real
    tokens and mixed back with weight ``psi``; the unconditional batch is untouched. Exactly the
    :class:`~conceptspace.remedies.CADS` regime's maths and noise (:func:`~conceptspace.sampling.remedies.
    cads_corrupt`), so with the same seeds (:meth:`set_seeds`) and guidance the images are conceptspace's.

    Args:
        guidance_scale: the CFG scale CADS sits on (the paper's setting); default 1.0, one conditional pass, as a
            distilled student runs (conceptspace's CADS regime over ``"distilled"``).
        tau1, tau2, noise_scale, psi, rescale: the paper's defaults (0.6, 0.9, 0.25, 1.0, True).
            ``noise_scale=0`` is diffusers' ``ClassifierFreeGuidance`` at the same scale exactly (at scales >= 1;
            below, see :class:`OnePassCFGGuidance`).
        num_train_timesteps: the scheduler's, which normalises the timestep (1000 for SDXL's and the flow
            schedulers, whose timesteps are σ·1000).
        text_inputs, mask_inputs: which guider inputs are text and which mark padding (:data:`DEFAULT_TEXT_INPUTS`,
            :data:`DEFAULT_MASK_INPUTS`).
        seed: the fallback seeds ``seed + i`` when none are set (:class:`SeededConditioningGuidance`).
        guidance_rescale, use_original_formulation, start, stop, enabled: as ``ClassifierFreeGuidance``'s.
    """

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 1.0,
        tau1: float = 0.6,
        tau2: float = 0.9,
        noise_scale: float = 0.25,
        psi: float = 1.0,
        rescale: bool = True,
        num_train_timesteps: int = 1000,
        text_inputs: dict[str, str] | list[str] = DEFAULT_TEXT_INPUTS,  # noqa: B006 (copied, never changed)
        mask_inputs: list[str] = DEFAULT_MASK_INPUTS,  # noqa: B006
        seed: int = 0,
        guidance_rescale: float = 0.0,
        use_original_formulation: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        CADS(tau1=tau1, tau2=tau2, noise_scale=noise_scale, psi=psi)  # the regime's checks: one home
        if not (isinstance(num_train_timesteps, int) and num_train_timesteps >= 1):
            raise ValueError(
                f"cads: num_train_timesteps must be a whole number >= 1, got {num_train_timesteps!r}"
            )
        super().__init__(
            owner="cads",
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            use_original_formulation=use_original_formulation,
            start=start,
            stop=stop,
            enabled=enabled,
            text_inputs=text_inputs,
            mask_inputs=mask_inputs,
            seed=seed,
        )
        self.tau1, self.tau2, self.noise_scale, self.psi = tau1, tau2, noise_scale, psi
        self.rescale, self.num_train_timesteps = rescale, num_train_timesteps

    def gamma(self) -> float:
        """γ at the current step's timestep (1: the clean condition)."""
        if self._timestep is None:
            raise ValueError(
                "CADSGuidance needs the step's timestep: the loop calls set_state() before prepare_inputs"
            )
        return cads_gamma(float(self._timestep) / self.num_train_timesteps, self.tau1, self.tau2)

    def perturbs(self) -> bool:
        return self.noise_scale != 0 and self.gamma() != 1.0

    def perturb(
        self, clean: torch.Tensor, real: torch.Tensor, seeds: tuple[int, ...], name: str
    ) -> torch.Tensor:
        step = int(round(float(self._timestep)))
        return cads_corrupt(
            clean, real, seeds, name, step, self.gamma(), noise_scale=self.noise_scale, psi=self.psi,
            rescale=self.rescale,
        )  # fmt: skip
