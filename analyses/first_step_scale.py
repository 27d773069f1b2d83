"""Claims 4-6 against scale, exactly: which step decides, and when the hybrid restores diversity.

A base model and its mode-seeking student are both modelled as *exact* denoisers of the same data, a mixture of
K coherent patterns ("modes": one per shape×colour of the testbed) spread over the latent, with isotropic
within-mode variation σ_w² per dimension, under Stable Diffusion's schedule (scaled_linear 0.00085–0.012):

* the **base** knows the data's prior over modes (uniform) and samples with 50-step Euler ("leading" spacing,
  timesteps 981 … 1; Euler on SD's schedule is deterministic DDIM in VP form);
* the **student** samples with LCM at DMD2's timesteps [999, 749, 499, 249] (x̂0, then fresh noise to the next
  level). Its first step is a *generator* with a collapsed output distribution π_s over modes (the seed picks
  mode k ~ π_s; x̂0 = μ_k + σ_w·z): mode-seeking distillation is what collapses it, and that is taken as given
  (its entropy is the shipped 8×8 testbed student's, measured). Its later steps are exact denoisers with the
  data's likelihood and π_s as prior — backward simulation trains them on the student's own outputs;
* **hybrid**: the base's x̂0 at t = 999 (no CFG), then the student from 749 on (the paper's setting);
  **replace-final**: the student at 999, then the base's own schedule from t ≤ 749 (deterministic hand-off);
  **skip-first**: the student from pure noise at 749.

Everything depends on the data only through the squared distance between two modes' latent means, m² = ||μ_j −
μ_k||² (for a pattern covering P positions × C channels with per-dimension contrast a, m² ≈ 2a²·P·C): the
posterior weights see only the projection of x_t onto the span of the means, and the orthogonal part of the
latent evolves on its own, so the simulation runs exactly in K dimensions. The information a step at t sees about
the modes is m²·ᾱ_t/(1−ᾱ_t) (the "coarse SNR"). For each m² the script reports, over n seeds (95% bootstrap CIs):

* the mode entropy (bits, of log2 K) of the final images per regime;
* the base's first x̂0: the share of the between-mode variance it carries (seed dependence of E[x0|x_999]);
* commitment: the share of seeds whose x̂0 after step 1 is mostly (posterior weight ≥ ½) the final image's mode,
  for base and student, and the share of the base's steps it needs until 60% of seeds are committed.
  (The argmax mode alone would say nothing: the exact deterministic base keeps its argmax from the first step.)

``--vae NAME=FOLDER`` measures a testbed VAE's separations — the mean ||Δz||² between the scaled latents of two
images that differ only in colour, only in shape or only in background (256 random images) — and marks them on
the figure with the simulation's values at them; ``--separations NAME=M2`` marks any other value. Writes DIR/results.json (tidy rows) and DIR/first_step_scale.png and prints a table.

    python analyses/first_step_scale.py --out runs/first-step-scale          # ≈ 20 s
    python analyses/first_step_scale.py --vae 8x8=conceptspace/testbed/weights/shapes/vae --vae 32x32=runs/testbed/parts/vae
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BETA_START, BETA_END, TRAIN_STEPS = 0.00085, 0.012, 1000
STUDENT_TIMESTEPS = (999, 749, 499, 249)
BASE_TIMESTEPS = tuple(range(981, 0, -20))  # SD's 50-step Euler, "leading" spacing with steps_offset 1
N_MODES = 18
WITHIN_STD = 1.0
STUDENT_ENTROPY_BITS = 3.36  # the shipped 8×8 testbed student's shape×colour entropy for "a shape"
SEPARATIONS = tuple(float(v) for v in np.geomspace(10, 1e5, 17))
REGIMES = ("base", "distilled", "hybrid", "replace-final", "skip-first")
COMMITTED = 0.6


def latent_separations(vae_dir: str, n: int = 256, seed: int = 0) -> dict[str, float]:
    """Mean ||z(a) − z(b)||² of a testbed VAE's scaled latents for images that differ in one factor only."""
    import dataclasses

    import torch
    from diffusers import AutoencoderKL

    from conceptspace.testbed.data import LEVELS, render, sample_factors

    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
    rng = np.random.default_rng(seed)
    factors = sample_factors(n, rng)

    def latents(batch: Any) -> torch.Tensor:
        pixels = torch.from_numpy(render(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor

    reference = latents(factors)
    out = {}
    for name in ("colour", "shape", "background"):
        k = len(LEVELS[name])
        other = (getattr(factors, name) + 1 + rng.integers(k - 1, size=n)) % k  # another level, uniformly
        moved = latents(dataclasses.replace(factors, **{name: other}))
        out[name] = float(((moved - reference) ** 2).flatten(1).sum(1).mean())
    return out


def alphas_cumprod() -> np.ndarray:
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_STEPS, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def collapsed_prior(k: int, bits: float) -> np.ndarray:
    """A geometric prior over k modes with the given entropy: a mode-seeking student's output distribution."""

    def entropy(ratio: float) -> float:
        p = ratio ** np.arange(k)
        p /= p.sum()
        return float(-(p * np.log2(p)).sum())

    low, high = 1e-6, 1.0  # entropy rises with the ratio; bisect
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if entropy(mid) < bits else (low, mid)
    p = low ** np.arange(k)
    return p / p.sum()


class Mixture:
    """K modes at (m/√2)·e_k with within-mode std σ_w, in the K-dimensional span of their means (exact)."""

    def __init__(self, separation: float, k: int = N_MODES, within_std: float = WITHIN_STD) -> None:
        self.means = math.sqrt(separation / 2.0) * np.eye(k)
        self.within_var = within_std**2

    def posterior(
        self, x: np.ndarray, alpha_bar: float, log_prior: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(weights over modes (n, K), E[x0 | x_t] (n, K)) for a denoiser with this prior."""
        var = alpha_bar * self.within_var + 1.0 - alpha_bar
        offset = x[:, None, :] - math.sqrt(alpha_bar) * self.means[None]
        log_w = log_prior[None] - (offset**2).sum(-1) / (2.0 * var)
        w = np.exp(log_w - log_w.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        gain = math.sqrt(alpha_bar) * self.within_var / var
        component_means = self.means[None] + gain * offset
        return w, np.einsum("nk,nkd->nd", w, component_means)

    def modes_of(self, x0: np.ndarray) -> np.ndarray:
        return ((x0[:, None, :] - self.means[None]) ** 2).sum(-1).argmin(1)


def simulate(mix: Mixture, prior_s: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    """Final modes per regime and the first-step statistics, all on the same n seeds."""
    abar = alphas_cumprod()
    rng = np.random.default_rng(seed)
    k = len(prior_s)
    log_uniform, log_student = np.full(k, -math.log(k)), np.log(prior_s)
    noise = rng.standard_normal((n, k))
    fresh = [rng.standard_normal((n, k)) for _ in STUDENT_TIMESTEPS]

    def ddim(x: np.ndarray, timesteps: tuple[int, ...], log_prior: np.ndarray, record: bool = False):
        history = []
        for i, t in enumerate(timesteps):
            w, x0 = mix.posterior(x, abar[t], log_prior)
            history.append(w)
            if i + 1 < len(timesteps):
                eps = (x - math.sqrt(abar[t]) * x0) / math.sqrt(1 - abar[t])
                nxt = abar[timesteps[i + 1]]
                x = math.sqrt(nxt) * x0 + math.sqrt(1 - nxt) * eps
        return (x0, history) if record else x0

    def lcm(x: np.ndarray, start: int, first_x0: np.ndarray | None = None) -> np.ndarray:
        x0 = first_x0
        for i in range(start, len(STUDENT_TIMESTEPS)):
            if i > start or first_x0 is None:
                _, x0 = mix.posterior(x, abar[STUDENT_TIMESTEPS[i]], log_student)
            if i + 1 < len(STUDENT_TIMESTEPS):
                nxt = abar[STUDENT_TIMESTEPS[i + 1]]
                x = math.sqrt(nxt) * x0 + math.sqrt(1 - nxt) * fresh[i + 1]
        return x0

    # the student's first step: a generator whose seed picks mode k ~ π_s
    picked = np.minimum(np.searchsorted(np.cumsum(prior_s), rng.random(n)), k - 1)
    student_first = mix.means[picked] + math.sqrt(mix.within_var) * rng.standard_normal((n, k))
    base_x0, base_history = ddim(noise, BASE_TIMESTEPS, log_uniform, record=True)
    student_x0 = lcm(noise, 0, first_x0=student_first)
    _, hybrid_first = mix.posterior(noise, abar[999], log_uniform)
    hybrid_x0 = lcm(noise, 0, first_x0=hybrid_first)
    # replace-final: the student's first x̂0 and ε̂ recombined at the base's first timestep ≤ 749
    eps = (noise - math.sqrt(abar[999]) * student_first) / math.sqrt(1 - abar[999])
    tail = tuple(t for t in BASE_TIMESTEPS if t <= 749)
    handed = math.sqrt(abar[tail[0]]) * student_first + math.sqrt(1 - abar[tail[0]]) * eps
    replace_x0 = ddim(handed, tail, log_uniform)
    skip_x0 = lcm(fresh[1], 1)  # pure noise at 749

    final = {
        "base": mix.modes_of(base_x0),
        "distilled": mix.modes_of(student_x0),
        "hybrid": mix.modes_of(hybrid_x0),
        "replace-final": mix.modes_of(replace_x0),
        "skip-first": mix.modes_of(skip_x0),
    }
    rows = np.arange(n)
    base_commit = np.array([(w[rows, final["base"]] >= 0.5).mean() for w in base_history])
    passed = np.flatnonzero(base_commit >= COMMITTED)
    between = mix.means - mix.means.mean(0)
    student_first_w, _ = mix.posterior(student_first, 1.0, log_uniform)
    return {
        "final": final,
        "base_step1_commitment": float(base_commit[0]),
        "student_step1_commitment": float((student_first_w[rows, final["distilled"]] >= 0.5).mean()),
        "base_steps_to_commit": float((passed[0] + 1) / len(BASE_TIMESTEPS)) if len(passed) else 1.0,
        "base_x0_999_between_share": float(hybrid_first.var(0).sum() / (between**2).mean(0).sum()),
    }


def entropy_bits(labels: np.ndarray, k: int) -> float:
    p = np.bincount(labels, minlength=k) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def entropy_ci(labels: np.ndarray, k: int, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    draws = rng.integers(len(labels), size=(n_boot, len(labels)))
    counts = np.stack([np.bincount(labels[d], minlength=k) for d in draws]) / len(labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(counts > 0, counts * np.log2(counts), 0.0), axis=1)
    low, high = np.percentile(h, [2.5, 97.5])
    return float(low), float(high)


def run(n: int = 4000, seed: int = 0, n_boot: int = 500, separations=SEPARATIONS) -> list[dict[str, Any]]:
    prior_s = collapsed_prior(N_MODES, STUDENT_ENTROPY_BITS)
    rng = np.random.default_rng(seed + 1)
    abar = alphas_cumprod()
    rows: list[dict[str, Any]] = []

    def add(m2: float, regime: str, metric: str, value: float, ci=(math.nan, math.nan), count: int = n):
        rows.append(
            dict(
                separation=m2, regime=regime, metric=metric, value=value, ci_low=ci[0], ci_high=ci[1], n=count
            )
        )

    for m2 in separations:
        out = simulate(Mixture(m2), prior_s, n, seed)
        add(m2, "-", "coarse_snr_999", m2 * abar[999] / (1 - abar[999]), count=0)
        add(m2, "-", "coarse_snr_749", m2 * abar[749] / (1 - abar[749]), count=0)
        for regime, labels in out["final"].items():
            add(
                m2,
                regime,
                "mode_entropy_bits",
                entropy_bits(labels, N_MODES),
                entropy_ci(labels, N_MODES, rng, n_boot),
            )
        for metric in ("base_step1_commitment", "base_steps_to_commit", "base_x0_999_between_share"):
            add(m2, "base", metric, out[metric])
        add(m2, "distilled", "student_step1_commitment", out["student_step1_commitment"])
    return rows


def table(rows: list[dict[str, Any]]) -> dict[float, dict[tuple[str, str], dict[str, Any]]]:
    by: dict[float, dict[tuple[str, str], dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["separation"], {})[(r["regime"], r["metric"])] = r
    return by


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"K = {N_MODES} modes (log2 K = {math.log2(N_MODES):.2f} bits), student prior {STUDENT_ENTROPY_BITS} bits"
    )
    head = f"{'m²':>8} {'SNR999':>7} {'SNR749':>7} " + " ".join(f"{r:>13}" for r in REGIMES)
    print(head + f" {'E[x0|x999]':>10} {'commit b/s':>11} {'b steps':>7}")
    for m2, v in table(rows).items():
        cells = " ".join(f"{v[(r, 'mode_entropy_bits')]['value']:>13.2f}" for r in REGIMES)
        print(
            f"{m2:>8.0f} {v[('-', 'coarse_snr_999')]['value']:>7.2f} {v[('-', 'coarse_snr_749')]['value']:>7.1f} "
            f"{cells} {v[('base', 'base_x0_999_between_share')]['value']:>10.2f} "
            f"{v[('base', 'base_step1_commitment')]['value']:>5.2f}/{v[('distilled', 'student_step1_commitment')]['value']:<5.2f}"
            f" {v[('base', 'base_steps_to_commit')]['value']:>7.2f}"
        )


def plot(rows: list[dict[str, Any]], path: Path, marks: dict[str, float]) -> None:
    by = table(rows)
    m2 = np.array(sorted(by))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for regime in REGIMES:
        cells = [by[m][(regime, "mode_entropy_bits")] for m in m2]
        value = np.array([c["value"] for c in cells])
        left.plot(m2, value, marker="o", ms=3, label=regime)
        left.fill_between(m2, [c["ci_low"] for c in cells], [c["ci_high"] for c in cells], alpha=0.2)
    left.set(
        xscale="log",
        xlabel="mode separation m² = ||μ_j − μ_k||² in unit-std latents",
        ylabel=f"final mode entropy, bits (of {math.log2(N_MODES):.2f})",
    )
    left.legend(fontsize=8)
    for metric, label in (
        ("base_step1_commitment", "base: step-1 commitment"),
        ("base_steps_to_commit", "base: share of steps to 60%"),
        ("base_x0_999_between_share", "base: E[x0|x_999] between-mode share"),
    ):
        right.plot(m2, [by[m][("base", metric)]["value"] for m in m2], marker="o", ms=3, label=label)
    right.plot(
        m2,
        [by[m][("distilled", "student_step1_commitment")]["value"] for m in m2],
        marker="o",
        ms=3,
        label="student: step-1 commitment",
    )
    right.set(xscale="log", xlabel="mode separation m²", ylabel="share", ylim=(-0.02, 1.02))
    right.legend(fontsize=8)
    for axis in (left, right):
        for name, value in marks.items():
            axis.axvline(value, color="grey", ls=":", lw=1)
            axis.text(
                value, axis.get_ylim()[1], name, rotation=90, va="top", ha="right", fontsize=7, color="grey"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=4000, help="seeds per separation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--separations",
        nargs="*",
        default=[],
        metavar="NAME=M2",
        help="geometries to mark on the figure, e.g. colour-8x8=83",
    )
    parser.add_argument(
        "--vae",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="a testbed VAE folder whose factor separations to measure and mark",
    )
    parser.add_argument("--out", type=Path, default=Path("out/first_step_scale"))
    args = parser.parse_args()
    marks = {name: float(value) for name, value in (item.split("=", 1) for item in args.separations)}
    for item in args.vae:
        name, folder = item.split("=", 1)
        for factor, value in latent_separations(folder).items():
            marks[f"{factor} {name}"] = value
            print(f"{name}: {factor} separation m² = {value:.0f}")
    start = time.perf_counter()
    rows = run(n=args.n, seed=args.seed, separations=tuple(sorted({*SEPARATIONS, *marks.values()})))
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    (args.out / "results.json").write_text(json.dumps(clean, indent=2) + "\n", encoding="utf-8")
    plot(rows, args.out / "first_step_scale.png", marks)
    print(f"{time.perf_counter() - start:.1f} s; wrote {args.out / 'results.json'} and first_step_scale.png")


if __name__ == "__main__":
    main()
