"""conceptspace: study and fix what distillation does to diffusion models.

>>> from conceptspace import load_pair, sample, Hybrid          # doctest: +SKIP
>>> pair = load_pair("sdxl", "dmd2")                             # doctest: +SKIP
>>> result = sample(pair, "a photo of a person", Hybrid(k=1), seeds=range(8), record_x0=True)  # doctest: +SKIP
"""

from conceptspace.diversity import diversity_run, measure_diversity
from conceptspace.embeddings import Embedder, load_embedder
from conceptspace.models import (
    REGISTRY,
    IncompatibleModelsError,
    ModelNotFoundError,
    ModelPair,
    ModelSpec,
    get_spec,
    load_pair,
    register,
)
from conceptspace.report import build_report
from conceptspace.sampling import (
    Base,
    Distilled,
    Hybrid,
    Regime,
    ReplaceFinal,
    SampleResult,
    SkipFirst,
    StepInfo,
    TrajectoryRecorder,
    decode,
    regime_from_name,
    sample,
    schedule_of,
)
from conceptspace.sliderspace import ActivationResult, SliderSpace
from conceptspace.trajectories import commitment_curve, steps_to_commit

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "ActivationResult",
    "Base",
    "Distilled",
    "Hybrid",
    "IncompatibleModelsError",
    "ModelNotFoundError",
    "ModelPair",
    "ModelSpec",
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
    "diversity_run",
    "load_embedder",
    "measure_diversity",
    "steps_to_commit",
    "commitment_curve",
    "get_spec",
    "load_pair",
    "regime_from_name",
    "register",
    "sample",
    "schedule_of",
]
