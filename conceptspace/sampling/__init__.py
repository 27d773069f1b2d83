"""One sampler for every regime: a small loop over (denoiser, timestep) pairs with x̂0 reported at each step.

A regime is only a choice of denoiser per step:

- :class:`Base`        — the base model with CFG on its own schedule;
- :class:`Distilled`   — the student on its own schedule (e.g. DMD2's [999, 749, 499, 249]);
- :class:`Hybrid`      — the base for the first ``k`` steps of the student's schedule (CFG 0), the student after;
- :class:`SkipFirst`   — the student's schedule without its first ``n`` steps (an ablation);
- :class:`ReplaceFinal`— the student for the first steps, the base for the final ``n`` (the causal control).

Regimes turn into :class:`Segment` s: one scheduler, a range of its steps and the denoiser of each step. Within a
segment the scheduler's own ``step`` moves the latent (one call per step, so LCM's re-noising and ancestral noise
happen exactly as in diffusers). Where consecutive segments use different schedulers the latent is handed over
deterministically: x̂0 and ε̂ from the last step are recombined at the receiving scheduler's first timestep.

The package: :mod:`~conceptspace.sampling.loop` (denoisers, segments, :func:`denoise`),
:mod:`~conceptspace.sampling.regimes` (the regimes, their registry and spec parser),
:mod:`~conceptspace.sampling.remedies` (the field's remedies, registered as regimes when the package is imported)
and :mod:`~conceptspace.sampling.sampler` (:func:`sample`: text, noise, batches, images).
"""

from conceptspace.models.families import Conditioning
from conceptspace.sampling import (
    group_inference,  # noqa: F401 (registers the "group-inference" regime)
    guided,  # noqa: F401 (registers diffusers' guiders as the "guider" regime)
    remedies,  # noqa: F401 (importing it registers the remedies as regimes)
    repellency,  # noqa: F401 (registers SPELL's batch repellency as the "repellency" regime)
)
from conceptspace.sampling.loop import (
    Denoiser,
    ModelName,
    OutputType,
    RenoiseStep,
    RowSelection,
    ScheduledStep,
    Segment,
    StepInfo,
    TrajectoryRecorder,
    check_guidance,
    denoise,
    latent_size,
    make_denoiser,
    schedule_of_segments,
    switched_on,
)
from conceptspace.sampling.regimes import (
    REGIME_PROVIDERS,
    REGIMES,
    Base,
    Distilled,
    Hybrid,
    Named,
    Regime,
    ReplaceFinal,
    SkipFirst,
    check_regime_name,
    parse_regime,
    regime_from_name,
    registered_regimes,
    schedule_of,
)
from conceptspace.sampling.sampler import (
    SEED_RANGE,
    SampleResult,
    SamplingMemoryError,
    check_prompt,
    check_seed,
    decode,
    encode_text,
    initial_latents,
    out_of_memory_as_error,
    sample,
    sample_latents,
    seeds_from,
)

__all__ = [
    "Base",
    "Conditioning",
    "Denoiser",
    "Distilled",
    "Hybrid",
    "ModelName",
    "Named",
    "OutputType",
    "REGIMES",
    "REGIME_PROVIDERS",
    "Regime",
    "RenoiseStep",
    "RowSelection",
    "ReplaceFinal",
    "SEED_RANGE",
    "SampleResult",
    "SamplingMemoryError",
    "ScheduledStep",
    "Segment",
    "SkipFirst",
    "StepInfo",
    "TrajectoryRecorder",
    "check_guidance",
    "check_regime_name",
    "check_prompt",
    "check_seed",
    "decode",
    "denoise",
    "encode_text",
    "initial_latents",
    "latent_size",
    "make_denoiser",
    "out_of_memory_as_error",
    "parse_regime",
    "regime_from_name",
    "registered_regimes",
    "sample",
    "sample_latents",
    "schedule_of",
    "schedule_of_segments",
    "seeds_from",
    "switched_on",
]
