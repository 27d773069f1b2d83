"""The embedded testbed: a miniature Stable-Diffusion-style world whose ground truth is known.

- :mod:`conceptspace.testbed.data`: the procedural world. 32×32 RGB images of one shape with six factors
  (shape, colour, size, x, y, background), anti-aliased numpy rendering (50,000 images in seconds), captions
  that mention or omit each factor at random, the prompt → fixed-factors parser, and an on-the-fly dataset.
- :mod:`conceptspace.testbed.probe`: a small CNN that reads the six factors back from any 32×32 image, with
  shipped weights in ``weights/probe/`` (safetensors + ``config.json``).
- :mod:`conceptspace.testbed.diversity`: ground-truth diversity from factors (true or probed): entropy of the
  shape×colour distribution and spreads of size and position, with bootstrap 95% intervals.
- :mod:`conceptspace.testbed.train`: training of the miniature Stable Diffusion (tiny AutoencoderKL, CLIP, UNet)
  and of its DMD-style 4-step student, one function per stage, from a seed. The stages live in
  :mod:`~conceptspace.testbed.encoders` (VAE, CLIP), :mod:`~conceptspace.testbed.base_unet` and
  :mod:`~conceptspace.testbed.dmd`, built on :mod:`~conceptspace.testbed.model` (configs, schedule, tokenizer)
  and :mod:`~conceptspace.testbed.stage` (logging, checkpoints, saving).
- :mod:`conceptspace.testbed.pair`: the shipped pair (``weights/shapes/``, ``weights/dmd/``) as registry specs and
  :func:`~conceptspace.testbed.pair.load_testbed_pair`.
- :mod:`conceptspace.testbed.commitment`: commitment of x̂0 trajectories per factor family (distributional, per
  seed), with the base read at the student's timesteps.
- :mod:`conceptspace.testbed.evaluate`: probe-based diversity per regime (base / distilled / hybrid) and sample grids.
- :mod:`conceptspace.testbed.embedder`: the testbed CLIP's image tower as the embedder ``testbed:clip``.
- ``weights/sliderspace/<study>/``: SliderSpace sliders trained on the base (:data:`SLIDERS`; the remedy
  ``SliderSpaceScales(sliders="testbed:a-shape")`` names them so).

Importing the package registers the testbed with the library's registries (the embedder ``testbed:clip``, the
shipped sliders ``testbed:<study>``, the probe as the ``testbed`` family's ground truth) and loads no weights.
"""

from pathlib import Path

from conceptspace.embeddings import register_embedder
from conceptspace.ground_truth import GroundTruth, register_ground_truth
from conceptspace.sampling.remedies import SLIDER_SOURCES

SLIDERS = Path(__file__).parent / "weights" / "sliderspace"
"""Shipped SliderSpace studies' sliders, one folder per prompt (``a-shape``: 4 directions of "a shape")."""


def _testbed_factory(argument: str, **options):  # noqa: ANN202 - signature of EmbedderFactory
    from conceptspace.testbed.embedder import testbed_embedder

    return testbed_embedder(argument, **options)


register_embedder("testbed", _testbed_factory)
SLIDER_SOURCES["testbed"] = SLIDERS


def _register_ground_truth() -> None:
    from conceptspace.testbed import data, diversity, probe

    register_ground_truth(
        GroundTruth(
            family="testbed",
            categorical=data.CATEGORICAL,
            continuous=data.CONTINUOUS,
            levels=data.LEVELS,
            diversity_measure="entropy_shape_colour",
            load_probe=probe.load_probe,
            fixed_factors=data.fixed_factors,
            diversity_rows=diversity.diversity_rows,
            paired_difference_rows=diversity.paired_difference_rows,
            classifier=lambda device=None: probe.ProbeClasses(probe.load_probe(device=device)),
        )
    )


_register_ground_truth()
