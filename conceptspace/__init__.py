"""conceptspace: study and fix what distillation does to diffusion models.

>>> from conceptspace import load_pair, sample, Hybrid          # doctest: +SKIP
>>> pair = load_pair("sdxl", "dmd2")                             # doctest: +SKIP
>>> result = sample(pair, "a photo of a person", Hybrid(k=1), seeds=range(8), record_x0=True)  # doctest: +SKIP
"""

from typing import TYPE_CHECKING

from conceptspace._lazy import lazy_exports
from conceptspace._version import __version__

# Public names and the module that defines each. They are imported on first use (PEP 562), so that
# `import conceptspace` and the command line's help answer without loading torch and diffusers.
_EXPORTS = {
    "conceptspace.comparison": ("compare",),
    "conceptspace.pipeline": ("DiversityPipeline",),
    "conceptspace.diversity": ("diversity_run", "measure_diversity"),
    "conceptspace.embeddings": ("Embedder", "load_embedder"),
    "conceptspace.metrics.reference": ("cmmd", "prdc"),
    "conceptspace.models.registry": (
        "REGISTRY",
        "IncompatibleModelsError",
        "ModelNotFoundError",
        "ModelSpec",
        "UnknownModelError",
        "get_spec",
        "register",
    ),
    "conceptspace.models.loading": ("ModelPair", "load_pair"),
    "conceptspace.remedies": ("CADS", "CondNoise", "IntervalGuidance", "Renoise"),
    "conceptspace.report": ("build_report",),
    "conceptspace.sampling": (
        "Base",
        "Distilled",
        "Hybrid",
        "Named",
        "Regime",
        "ReplaceFinal",
        "SampleResult",
        "SkipFirst",
        "StepInfo",
        "TrajectoryRecorder",
        "decode",
        "parse_regime",
        "regime_from_name",
        "sample",
        "schedule_of",
    ),
    "conceptspace.sliderspace": ("ActivationResult", "SliderSpace"),
    "conceptspace.trajectories": ("commitment_curve", "steps_to_commit"),
}

if TYPE_CHECKING:
    from conceptspace.comparison import compare
    from conceptspace.diversity import diversity_run, measure_diversity
    from conceptspace.embeddings import Embedder, load_embedder
    from conceptspace.metrics.reference import cmmd, prdc
    from conceptspace.models.loading import ModelPair, load_pair
    from conceptspace.models.registry import (
        REGISTRY,
        IncompatibleModelsError,
        ModelNotFoundError,
        ModelSpec,
        UnknownModelError,
        get_spec,
        register,
    )
    from conceptspace.pipeline import DiversityPipeline
    from conceptspace.remedies import CADS, CondNoise, IntervalGuidance, Renoise
    from conceptspace.report import build_report
    from conceptspace.sampling import (
        Base,
        Distilled,
        Hybrid,
        Named,
        Regime,
        ReplaceFinal,
        SampleResult,
        SkipFirst,
        StepInfo,
        TrajectoryRecorder,
        decode,
        parse_regime,
        regime_from_name,
        sample,
        schedule_of,
    )
    from conceptspace.sliderspace import ActivationResult, SliderSpace
    from conceptspace.trajectories import commitment_curve, steps_to_commit


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


__all__ = [
    "__version__",
    "REGISTRY",
    "ActivationResult",
    "CADS",
    "CondNoise",
    "IntervalGuidance",
    "Renoise",
    "Base",
    "Distilled",
    "DiversityPipeline",
    "Hybrid",
    "IncompatibleModelsError",
    "ModelNotFoundError",
    "ModelPair",
    "ModelSpec",
    "UnknownModelError",
    "Named",
    "Regime",
    "ReplaceFinal",
    "SampleResult",
    "SkipFirst",
    "SliderSpace",
    "StepInfo",
    "TrajectoryRecorder",
    "decode",
    "Embedder",
    "build_report",
    "cmmd",
    "compare",
    "diversity_run",
    "load_embedder",
    "measure_diversity",
    "steps_to_commit",
    "commitment_curve",
    "get_spec",
    "load_pair",
    "parse_regime",
    "prdc",
    "regime_from_name",
    "register",
    "sample",
    "schedule_of",
]
