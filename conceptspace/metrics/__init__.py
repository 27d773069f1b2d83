"""Diversity and quality metrics with honest uncertainty: every number comes with ``n`` and a 95% interval.

Diversity (of the images one regime made for one prompt), from image embeddings:

- ``pairwise_distance``: mean cosine distance ``1 - cos(e_i, e_j)`` over all pairs ``i < j`` (the paper's
  "mean pairwise DreamSim" when the embedder is DreamSim);
- ``vendi``: the Vendi score of order ``q``, the exponential of the entropy of the eigenvalues of ``K/n``
  (``K`` the cosine-similarity matrix): the effective number of distinct images, 1 for identical images and
  ``k`` for ``k`` mutually orthogonal ones;
- ``lpips``: mean pairwise LPIPS between the images themselves (needs the optional ``lpips`` package).

Uncertainty:

- pairwise distances: percentile bootstrap over images, computed on pairs of *distinct original* images (a
  resample holds duplicates, and a duplicate pair's distance 0 would bias the replicate downwards);
- Vendi: delete-one jackknife (a normal interval; leave-one-out sets hold no duplicates, and a bootstrap
  cannot be repaired for the Vendi score's entropy, see ``docs/metrics.md``);
- two regimes on the same prompts and seeds: the difference, with a CI from resampling *seed indices* jointly for
  both regimes (jackknife over seeds for Vendi) and a two-sided paired permutation p-value (regime labels swapped
  at random within each seed pair);
- over prompts: the mean of per-prompt values, with a CI from resampling prompts (``"prompts"``), images within
  fixed prompts (``"images"``), or both (``"both"``, two-stage).

Quality: FID through torchmetrics (Inception weights from a local file, or any feature extractor module), and
CLIP score ``100 * max(cos(image, text), 0)`` from embeddings, with the paper's control metric, the percent change
of CLIP score between slider scale 0 and scale ``s``.

Results come out as tidy rows (:func:`conceptspace.results.metric_row`) ready for
:func:`conceptspace.results.write_metrics`.

- :mod:`~conceptspace.metrics.measures` — the diversity measures as plain numbers;
- :mod:`~conceptspace.metrics.draws` — their intervals and paired tests for one prompt (:func:`diversity`,
  :func:`compare_diversity`, :func:`lpips_diversity`);
- :mod:`~conceptspace.metrics.rows` — tidy rows for one prompt and averaged over prompts;
- :mod:`~conceptspace.metrics.reference` — a regime's samples against a reference set (the base model's own samples):
  precision, recall, density and coverage (:func:`prdc`), CMMD (:func:`cmmd`) and their rows
  (:func:`reference_rows`).

FID, Inception Score and CLIP score live in :mod:`conceptspace.quality`, the estimates and resampling in
:mod:`conceptspace.stats`; their names are importable from here as before.
"""

from __future__ import annotations

from conceptspace.metrics.draws import (
    EXACT_JACKKNIFE_MAX,
    JACKKNIFE_GROUPS,
    compare_diversity,
    diversity,
    lpips_diversity,
)
from conceptspace.metrics.measures import (
    conditional_vendi,
    cosine_distance_matrix,
    lpips_distance_matrix,
    metric_name,
    pairwise_distance,
    vendi_score,
    vendi_score_from_similarity,
)
from conceptspace.metrics.reference import (
    CMMD_SCALE,
    CMMD_SIGMA,
    PRDC_METRICS,
    REFERENCE_METRICS,
    cmmd,
    prdc,
    reference_rows,
)
from conceptspace.metrics.rows import (
    RESAMPLE_MODES,
    average_over_prompts,
    diversity_over_prompts,
    diversity_rows,
    paired_over_prompts,
    paired_rows,
)
from conceptspace.quality import (  # their home is conceptspace.quality; importable from here as before
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    Embedder,
    clip_change_rows,
    clip_score,
    clip_score_change,
    clip_score_change_with,
    clip_score_rows,
    clip_score_with,
    clip_scores,
    fid,
    frechet_distance,
    image_features,
    inception_classifier,
    inception_features,
    inception_score,
    inception_score_of,
)
from conceptspace.results import ALL_PROMPTS, DIVERSITY_METRICS, metric_row  # noqa: F401
from conceptspace.stats import (  # noqa: F401  (their home is conceptspace.stats; importable from here as before)
    ArrayLike,
    Estimate,
    ImagesLike,
    as_array,
    as_embeddings,
    as_images,
    bootstrap_counts,
    check_finite,
    check_settings,
    jackknife_se,
    keyed_rng,
    normal_quantile,
    percentile_interval,
    permutation_p_value,
    swaps,
    t_quantile,
)

__all__ = [
    "ALL_PROMPTS",
    "CMMD_SCALE",
    "CMMD_SIGMA",
    "DIVERSITY_METRICS",
    "EXACT_JACKKNIFE_MAX",
    "Embedder",
    "Estimate",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "JACKKNIFE_GROUPS",
    "PRDC_METRICS",
    "REFERENCE_METRICS",
    "RESAMPLE_MODES",
    "average_over_prompts",
    "clip_change_rows",
    "clip_score",
    "clip_score_change",
    "clip_score_change_with",
    "clip_score_rows",
    "clip_score_with",
    "clip_scores",
    "cmmd",
    "compare_diversity",
    "conditional_vendi",
    "cosine_distance_matrix",
    "diversity",
    "diversity_over_prompts",
    "diversity_rows",
    "fid",
    "frechet_distance",
    "image_features",
    "inception_classifier",
    "inception_features",
    "inception_score",
    "inception_score_of",
    "lpips_distance_matrix",
    "lpips_diversity",
    "metric_name",
    "paired_over_prompts",
    "paired_rows",
    "pairwise_distance",
    "prdc",
    "reference_rows",
    "vendi_score",
    "vendi_score_from_similarity",
]
