"""Diversity measures of one set of images, as plain numbers: the mean pairwise cosine distance, the Vendi score of
order ``q`` and LPIPS distances, with the weighted sums over pairs that the intervals resample."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from conceptspace.results import DIVERSITY_METRICS
from conceptspace.stats import ArrayLike, ImagesLike, as_array, as_embeddings, as_images, check_finite

# ----------------------------------------------------------------------------------------------------------------
# names and orders


def vendi_order(q: float | str) -> float:
    """The Vendi order ``q`` as a float (``"inf"`` allowed); a clear error unless it is a number ≥ 0."""
    try:
        q = float(q)
    except (TypeError, ValueError):
        raise ValueError(f"Vendi order q must be a number >= 0 or 'inf', got {q!r}") from None
    if not q >= 0:
        raise ValueError(f"Vendi order q must be >= 0 or inf, got {q}")
    return q


def split_metric(metric: str, q: float | str = 1.0) -> tuple[str, float]:
    """A metric name and the Vendi order it asks for: ``"vendi_q2"`` → ``("vendi", 2.0)``, any other name →
    itself with ``q`` (so a metric list can hold ``vendi`` and ``vendi_q2`` side by side)."""
    if metric.startswith("vendi_q"):
        return "vendi", vendi_order(metric.removeprefix("vendi_q"))
    return metric, vendi_order(q)


def metric_name(metric: str, q: float | str = 1.0) -> str:
    """The row name of a diversity metric: ``vendi`` for q=1, ``vendi_q2``, ``vendi_qinf``… for other orders (a
    ``vendi_q<order>`` name gives its own order)."""
    metric, q = split_metric(metric, q)
    if metric not in DIVERSITY_METRICS:
        raise ValueError(f"unknown diversity metric {metric!r}; choose from {', '.join(DIVERSITY_METRICS)}")
    if metric != "vendi" or vendi_order(q) == 1:
        return metric
    return f"vendi_q{vendi_order(q):g}"


# ----------------------------------------------------------------------------------------------------------------
# point measures


def cosine_distance_matrix(embeddings: ArrayLike) -> np.ndarray:
    """``(n, n)`` matrix of cosine distances ``1 - cos``; 0 on the diagonal, 2 for antipodal embeddings."""
    x = as_embeddings(embeddings, min_n=1)
    distances = 1.0 - x @ x.T
    np.fill_diagonal(distances, 0.0)
    return np.clip(distances, 0.0, 2.0)


def pairwise_distance(embeddings: ArrayLike) -> float:
    """Mean cosine distance over all pairs of distinct images (0 for identical images, at most 2)."""
    x = as_embeddings(embeddings)
    return float(CosinePairs(x).mean(np.ones((1, len(x))))[0])


def vendi_score(embeddings: ArrayLike, q: float | str = 1.0) -> float:
    """Vendi score of order ``q`` with the cosine-similarity kernel (1 ≤ score ≤ n).

    From the eigenvalues λ of ``K/n``: q=1 → ``exp(-Σ λ log λ)``, q=inf → ``1/max λ``, otherwise
    ``(Σ λ^q)^(1/(1-q))``. Identical embeddings score 1, ``k`` mutually orthogonal ones score ``k``.
    """
    x = as_embeddings(embeddings)
    return float(vendi_of_subsets(x, np.arange(len(x))[None], vendi_order(q))[0])


def vendi_score_from_similarity(similarity: ArrayLike, q: float | str = 1.0) -> float:
    """Vendi score of order ``q`` from an ``(n, n)`` positive semi-definite similarity matrix with unit diagonal."""
    k = as_array(similarity, "similarity")
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"similarity must be a square (n, n) matrix, got shape {tuple(k.shape)}")
    if len(k) < 1:
        raise ValueError("similarity is empty")
    check_finite(k, "similarity")
    if not np.allclose(k, k.T, atol=1e-8):
        raise ValueError("similarity must be symmetric")
    eigenvalues = np.linalg.eigvalsh(k)
    if eigenvalues.min() < -1e-6 * max(1.0, eigenvalues.max()):
        raise ValueError(
            f"similarity is not positive semi-definite (smallest eigenvalue {eigenvalues.min():.3g})"
        )
    return float(vendi_from_eigenvalues(eigenvalues[None], vendi_order(q))[0])


def conditional_vendi(embeddings: ArrayLike, prompts: Sequence[str], q: float | str = 1.0) -> float:
    """The prompt-aware Vendi score: the Conditional-Vendi score (Jalali et al., arXiv 2411.02817) with the exact
    prompt as the condition — ``exp(H_q(K_x ∘ K_t) − H_q(K_t))``, the matrix entropies of order ``q`` of the
    joint kernel (cosine similarity times "same prompt") and of the prompt kernel alone.

    Why this one: pooling a prompt set's images into one Vendi score counts the variety *between* prompts (a
    circle and a square differ because they were asked to) as the model's diversity; conditioning on the prompt
    removes exactly that share and keeps the variety within each prompt's images. With the exact prompt as the
    condition the joint kernel is block-diagonal, so at q = 1 the score is the weighted geometric mean of the
    prompts' own Vendi scores, ``exp(Σ_p w_p log Vendi_p)`` with ``w_p`` each prompt's share of the images; at
    other orders (equal shares) the power mean of their eigenvalue sums. Between 1 and the largest prompt's
    image count; one prompt gives its plain Vendi score.
    """
    x = as_embeddings(embeddings)
    if isinstance(prompts, str):  # a string would be read as one prompt per character
        raise ValueError("prompts: give one prompt per embedding (a list of strings), not one string")
    labels = list(prompts)
    if len(labels) != len(x):
        raise ValueError(f"give one prompt per embedding: {len(labels)} prompts for {len(x)} embeddings")
    codes = np.unique(np.array(labels, dtype=object), return_inverse=True)[1]
    same = (codes[:, None] == codes[None, :]).astype(float)
    order = vendi_order(q)
    joint, condition = np.linalg.eigvalsh(np.stack([(x @ x.T) * same, same]))
    joint_score, prompt_score = vendi_from_eigenvalues(np.stack([joint, condition]), order)
    return float(joint_score / prompt_score)  # exp(H(joint) − H(prompt)): the scores are exp(entropy)


def vendi_from_eigenvalues(eigenvalues: np.ndarray, q: float) -> np.ndarray:
    """Vendi scores from a batch ``(S, k)`` of kernel eigenvalues (any scale: normalised to sum 1 here)."""
    lam = np.clip(eigenvalues, 0.0, None)
    lam = lam / lam.sum(axis=1, keepdims=True)
    lam = np.where(lam < 1e-12, 0.0, lam)  # round-off eigenvalues of a rank-deficient kernel
    if q == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(lam > 0, lam * np.log(lam), 0.0)
        return np.exp(-terms.sum(axis=1))
    if math.isinf(q):
        return 1.0 / lam.max(axis=1)
    if q == 0:
        return (lam > 0).sum(axis=1).astype(float)
    return (lam**q).sum(axis=1) ** (1.0 / (1.0 - q))


def vendi_of_subsets(x: np.ndarray, subsets: np.ndarray, q: float) -> np.ndarray:
    """Vendi score of each row of ``subsets`` (an ``(S, m)`` index array into the unit embeddings ``x``).

    The nonzero eigenvalues of ``K/m = X Xᵀ/m`` are those of ``XᵀX/m``: the smaller of the two is decomposed,
    in chunks of about 20 M numbers.
    """
    n_subsets, m = subsets.shape
    d = x.shape[1]
    out = np.empty(n_subsets)
    if m <= d:  # m×m kernels, gathered from the full similarity matrix
        similarity = x @ x.T
        chunk = max(1, int(2e7 // (m * m)))
        for start in range(0, n_subsets, chunk):
            rows = subsets[start : start + chunk]
            kernels = similarity[rows[:, :, None], rows[:, None, :]]
            out[start : start + chunk] = vendi_from_eigenvalues(np.linalg.eigvalsh(kernels), q)
        return out
    chunk = max(1, int(2e7 // (m * d)))  # d×d Gram matrices of the chosen rows
    for start in range(0, n_subsets, chunk):
        rows = x[subsets[start : start + chunk]]  # (c, m, d)
        grams = rows.transpose(0, 2, 1) @ rows
        out[start : start + chunk] = vendi_from_eigenvalues(np.linalg.eigvalsh(grams), q)
    return out


# ----------------------------------------------------------------------------------------------------------------
# pairwise statistics with weights (bootstrap counts or subset indicators)


class CosinePairs:
    """Sums of pairwise cosine distances for weighted sets of unit embeddings, without an n×n matrix.

    For weights w (a bootstrap count per original image, or a 0/1 indicator), Σ_{a,b} w_a w_b (1 − x_a·x_b)
    = (Σ w)² − ‖Σ w_a x_a‖²; diagonal terms vanish because a unit vector has distance 0 to itself.
    """

    upper = 2.0

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.size = len(x)

    def weighted_sums(self, weights: np.ndarray) -> np.ndarray:
        """Σ_{a,b} w_a w_b d(a, b) over ordered pairs, for each row of ``weights``."""
        return weights.sum(axis=1) ** 2 - ((weights @ self.x) ** 2).sum(axis=1)

    def mean(self, weights: np.ndarray) -> np.ndarray:
        """Mean distance over ordered pairs of distinct *original* images, for each row of ``weights``.

        A pair of an image with its own copy (a bootstrap duplicate) is dropped: there are
        (Σ w)² − Σ w² such ordered pairs, and the diagonal terms of the weighted sum are 0.
        """
        pairs = weights.sum(axis=1) ** 2 - (weights**2).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(pairs > 0, self.weighted_sums(weights) / pairs, np.nan)
        return np.clip(means, 0.0, self.upper)


class MatrixPairs(CosinePairs):
    """The same for any precomputed symmetric distance matrix with a zero diagonal (e.g. LPIPS)."""

    upper = math.inf

    def __init__(self, distances: np.ndarray) -> None:
        self.distances = distances
        self.size = len(distances)

    def weighted_sums(self, weights: np.ndarray) -> np.ndarray:
        return ((weights @ self.distances) * weights).sum(axis=1)


# ----------------------------------------------------------------------------------------------------------------
# LPIPS (optional)


def load_lpips(net: str, device: str | torch.device | None) -> Callable[..., torch.Tensor]:
    """``lpips.LPIPS(net=net)`` on ``device``; a clear error naming the install when the package is absent."""
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError(
            "LPIPS diversity needs the optional `lpips` package, which conceptspace does not install: "
            "pip install lpips (it fetches torchvision backbone weights on first use)"
        ) from None
    return lpips.LPIPS(net=net, verbose=False).eval().to(device or "cpu")


def lpips_distance_matrix(
    images: ImagesLike,
    *,
    net: str = "alex",
    model: Callable[..., torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """``(n, n)`` LPIPS distances between images in [0, 1] (rescaled to LPIPS's [-1, 1] here).

    ``model`` is any callable ``model(x, y) -> (b, ...)`` distances; by default ``lpips.LPIPS(net=net)``, which
    needs ``pip install lpips``. Runs ``n (n - 1) / 2`` pairs, ``batch_size`` at a time.
    """
    x = as_images(images).float()
    if len(x) < 2:
        raise ValueError(f"images: need at least 2 images, got {len(x)}")
    model = model if model is not None else load_lpips(net, device)
    device = device or "cpu"
    x = x * 2.0 - 1.0
    first, second = np.triu_indices(len(x), k=1)
    values = []
    with torch.no_grad():
        for start in range(0, len(first), batch_size):
            i, j = first[start : start + batch_size], second[start : start + batch_size]
            out = model(x[i].to(device), x[j].to(device))
            values.append(out.detach().to("cpu", torch.float64).reshape(len(i), -1).mean(dim=1).numpy())
    distances = np.zeros((len(x), len(x)))
    distances[first, second] = np.concatenate(values)
    distances[second, first] = distances[first, second]
    check_finite(distances, "LPIPS distances")
    return distances
