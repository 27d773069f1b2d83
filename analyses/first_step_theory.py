"""Claim 7, checked on a toy problem: the first step of a one-step student is where diversity is lost.

The claim ("Distilling Diversity and Control in Diffusion Models"): x̂0's sensitivity to an ε error is
sqrt((1−ᾱ)/ᾱ), largest at the first step; an MSE-trained student learns E[Y|X] and so loses E[Var(Y|X)] (law of
total variance); that loss is concentrated at the earliest step.

Setup: x0 from a 2-D mixture of 8 isotropic Gaussians (means on a circle of radius 2, std 0.15, equal weights),
noised with Stable Diffusion's schedule (DDPMScheduler, scaled_linear 0.00085–0.012), x_t = √ᾱ·x0 + √(1−ᾱ)·ε.
For each timestep t (DMD2's 999, 749, 499, 249 and a few smaller ones) it computes

* the ε-sensitivity sqrt((1−ᾱ)/ᾱ), and the same measured through DDPMScheduler.step's x̂0;
* the bound: the variance an ideal MSE student keeps, tr Var(E[x0|x_t]) = tr Var(x0) − E[tr Var(x0|x_t)], with
  the exact mixture posterior and Monte Carlo over x_t only (CI: ±1.96 standard errors);
* a trained student: a small MLP x_t → x̂0 fit by MSE on fresh samples, and the trace of the covariance of its
  outputs on fresh x_t (95% bootstrap CI over evaluation samples; it does not cover training randomness);
* mode coverage: the entropy (bits) of the mode assignment of the outputs, where an output counts for mode k only
  if it lies within 3 std of mode k's mean. (The plain nearest-mode entropy is useless here: a collapsed
  student's outputs sit near the origin in uniformly random directions, so their nearest modes are uniform and
  the entropy is log2(8) at every t; it is kept in results.json as ``*_nearest_mode_entropy_bits``.)

Writes DIR/results.json (tidy rows) and DIR/first_step_theory.png, and prints a table.

    python analyses/first_step_theory.py                         # ≈ 1 min on one busy CPU thread
    python analyses/first_step_theory.py --quick --out /tmp/fst  # ≈ 10 s, plus ~8 s of imports
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

PROMPT = "gaussian-mixture-2d"
DMD2_TIMESTEPS = (999, 749, 499, 249)
TIMESTEPS = (*DMD2_TIMESTEPS, 100, 50, 10)
N_MODES, RADIUS, STD = 8, 2.0, 0.15
MODE_RADIUS = 3 * STD  # an output "hits" a mode within this distance of its mean (98.9% of the data do)
MEANS = RADIUS * np.stack(
    [np.cos(2 * np.pi * np.arange(N_MODES) / N_MODES), np.sin(2 * np.pi * np.arange(N_MODES) / N_MODES)],
    axis=1,
)
DATA_TRACE_VAR = RADIUS**2 + 2 * STD**2  # the means average to 0, so tr Var(x0) = E|μ|² + 2σ²
# Sizes for run(): FULL takes about a minute on one busy CPU thread, QUICK a few seconds.
FULL: dict[str, Any] = dict(steps=1500, n_eval=5000, timesteps=TIMESTEPS, n_mc=200_000, n_boot=1000)
QUICK: dict[str, Any] = dict(steps=300, n_eval=2000, timesteps=DMD2_TIMESTEPS, n_mc=20_000, n_boot=200)


class Result(NamedTuple):
    rows: list[dict[str, Any]]
    data: np.ndarray  # evaluation x0 samples
    student_outputs: dict[int, np.ndarray]  # t -> the student's x̂0 on fresh x_t


def scheduler() -> DDPMScheduler:
    # clip_sample=False as in Stable Diffusion's config; the default would clip x̂0 to [-1, 1].
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
    )


def sample_data(rng: np.random.Generator, n: int) -> np.ndarray:
    return MEANS[rng.integers(N_MODES, size=n)] + STD * rng.standard_normal((n, 2))


def add_noise(x0: np.ndarray, alpha_bar: float, rng: np.random.Generator) -> np.ndarray:
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * rng.standard_normal(x0.shape)


def posterior(x_t: np.ndarray, alpha_bar: float) -> tuple[np.ndarray, np.ndarray]:
    """E[x0|x_t] (n, 2) and tr Var(x0|x_t) (n,), exact for the isotropic Gaussian mixture."""
    marginal_var = alpha_bar * STD**2 + 1 - alpha_bar  # per coordinate, of x_t given the component
    offset = x_t[:, None, :] - math.sqrt(alpha_bar) * MEANS[None]  # (n, K, 2)
    log_weight = -(offset**2).sum(-1) / (2 * marginal_var)  # equal π_k and shared variance cancel
    resp = np.exp(log_weight - log_weight.max(1, keepdims=True))
    resp /= resp.sum(1, keepdims=True)
    component_mean = MEANS[None] + math.sqrt(alpha_bar) * STD**2 / marginal_var * offset
    component_trace_var = 2 * STD**2 * (1 - alpha_bar) / marginal_var
    mean = (resp[..., None] * component_mean).sum(1)
    # Law of total variance inside the posterior: E_k[Var] + Var_k[E].
    trace_var = component_trace_var + (resp * (component_mean**2).sum(-1)).sum(1) - (mean**2).sum(1)
    return mean, trace_var


def bound(alpha_bar: float, rng: np.random.Generator, n_mc: int) -> tuple[float, float]:
    """tr Var(E[x0|x_t]) = tr Var(x0) − E[tr Var(x0|x_t)] and its Monte Carlo standard error."""
    _, trace_var = posterior(add_noise(sample_data(rng, n_mc), alpha_bar, rng), alpha_bar)
    return DATA_TRACE_VAR - trace_var.mean(), trace_var.std(ddof=1) / math.sqrt(n_mc)


def measured_sensitivity(t: int) -> float:
    """|Δx̂0| / |Δε| through DDPMScheduler.step, to check the formula against diffusers' own x̂0."""
    x_t, eps, delta = torch.zeros(1, 2), torch.zeros(1, 2), 1e-2
    x0 = scheduler().step(eps, t, x_t).pred_original_sample
    x0_shifted = scheduler().step(eps + delta, t, x_t).pred_original_sample
    return float((x0_shifted - x0).abs().mean() / delta)


def train_student(
    alpha_bar: float, steps: int, seed: int, batch: int = 512, width: int = 128
) -> torch.nn.Module:
    """A one-step student x_t → x̂0 fit by MSE on fresh samples each step, so it can only overfit nothing."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, width),
        torch.nn.SiLU(),
        torch.nn.Linear(width, width),
        torch.nn.SiLU(),
        torch.nn.Linear(width, 2),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    # Decaying to 0 averages out SGD noise, which would otherwise add spurious output variance.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        x0 = sample_data(rng, batch)
        x_t = torch.as_tensor(add_noise(x0, alpha_bar, rng), dtype=torch.float32)
        loss = ((net(x_t) - torch.as_tensor(x0, dtype=torch.float32)) ** 2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return net


def mode_labels(points: np.ndarray) -> np.ndarray:
    """Index of the mode within MODE_RADIUS of each point, or N_MODES where there is none."""
    distance = np.linalg.norm(points[:, None, :] - MEANS[None], axis=-1)
    nearest = distance.argmin(1)
    return np.where(distance.min(1) < MODE_RADIUS, nearest, N_MODES)


def nearest_mode_labels(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None, :] - MEANS[None], axis=-1).argmin(1)


def mode_entropy(labels: np.ndarray) -> float:
    """Entropy (bits) over the 8 modes; off-mode outputs (label N_MODES) count towards no mode."""
    p = np.bincount(labels, minlength=N_MODES + 1)[:N_MODES] / len(labels)
    p = p[p > 0]
    return float((p * np.log2(1 / p)).sum())


def trace_var(points: np.ndarray) -> float:
    return float(points.var(0, ddof=1).sum())


def bootstrap_ci(
    samples: np.ndarray, stat: Callable[[np.ndarray], float], rng: np.random.Generator, n_boot: int
) -> tuple[float, float]:
    """Percentile 95% CI of ``stat`` over resampled rows of ``samples``."""
    stats = [stat(samples[rng.integers(len(samples), size=len(samples))]) for _ in range(n_boot)]
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def row(
    regime: str, metric: str, value: float, ci: tuple[float, float] | None = None, n: int = 0
) -> dict[str, Any]:
    low, high = ci if ci is not None else (math.nan, math.nan)
    return {
        "prompt": PROMPT,
        "regime": regime,
        "metric": metric,
        "value": float(value),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": int(n),
    }


def point_rows(
    regime: str, prefix: str, points: np.ndarray, rng: np.random.Generator, n_boot: int, spread: bool = True
) -> list[dict[str, Any]]:
    """Mode-coverage rows and, if ``spread``, tr Var rows (with bootstrap CIs) for x0 or x̂0 samples."""
    labels, nearest, n = mode_labels(points), nearest_mode_labels(points), len(points)
    rows = [
        row(
            regime,
            f"{prefix}_mode_entropy_bits",
            mode_entropy(labels),
            bootstrap_ci(labels, mode_entropy, rng, n_boot),
            n,
        ),
        row(regime, f"{prefix}_on_mode_fraction", float((labels < N_MODES).mean()), None, n),
        row(
            regime,
            f"{prefix}_nearest_mode_entropy_bits",
            mode_entropy(nearest),
            bootstrap_ci(nearest, mode_entropy, rng, n_boot),
            n,
        ),
    ]
    if spread:
        kept, (low, high) = trace_var(points), bootstrap_ci(points, trace_var, rng, n_boot)
        lost = (1 - kept / DATA_TRACE_VAR, (1 - high / DATA_TRACE_VAR, 1 - low / DATA_TRACE_VAR))
        rows = [
            row(regime, f"{prefix}_trace_var", kept, (low, high), n),
            row(regime, f"{prefix}_fraction_lost", *lost, n),
            *rows,
        ]
    return rows


def run(
    seed: int = 0,
    steps: int = 1500,
    n_eval: int = 5000,
    timesteps: Sequence[int] = TIMESTEPS,
    n_mc: int = 200_000,
    n_boot: int = 1000,
) -> Result:
    """All rows: exact quantities, the bound, and one trained student per timestep."""
    alphas_cumprod = scheduler().alphas_cumprod.double().numpy()
    rng = np.random.default_rng(seed)
    data = sample_data(rng, n_eval)
    rows = [
        row("data", "data_trace_var", DATA_TRACE_VAR),
        *point_rows("data", "data", data, rng, n_boot, spread=False),
    ]
    outputs = {}
    for t in timesteps:
        regime, alpha_bar = f"t={t}", float(alphas_cumprod[t])
        rng = np.random.default_rng([seed, t])  # per t, so a t's numbers do not depend on the others run
        kept, stderr = bound(alpha_bar, rng, n_mc)
        rows += [
            row(regime, "alpha_bar", alpha_bar),
            row(regime, "eps_sensitivity", math.sqrt((1 - alpha_bar) / alpha_bar)),
            row(regime, "eps_sensitivity_diffusers", measured_sensitivity(t)),
            row(regime, "bound_trace_var", kept, (kept - 1.96 * stderr, kept + 1.96 * stderr), n_mc),
            row(
                regime,
                "bound_fraction_lost",
                1 - kept / DATA_TRACE_VAR,
                (1 - (kept + 1.96 * stderr) / DATA_TRACE_VAR, 1 - (kept - 1.96 * stderr) / DATA_TRACE_VAR),
                n_mc,
            ),
        ]
        net = train_student(alpha_bar, steps, seed=seed * 1000 + t)
        x_t = add_noise(sample_data(rng, n_eval), alpha_bar, rng)
        with torch.no_grad():
            student = net(torch.as_tensor(x_t, dtype=torch.float32)).double().numpy()
        ideal, _ = posterior(x_t, alpha_bar)  # the ideal student on the same inputs
        outputs[t] = student
        squared_error = ((student - ideal) ** 2).sum(1)
        rows += [
            *point_rows(regime, "student", student, rng, n_boot),
            *point_rows(regime, "ideal", ideal, rng, n_boot, spread=False),
            row(
                regime,
                "student_mse_to_ideal",
                squared_error.mean(),
                bootstrap_ci(squared_error, lambda v: float(v.mean()), rng, n_boot),
                n_eval,
            ),
        ]
    return Result(rows, data, outputs)


def lookup(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["regime"], r["metric"]): r for r in rows}


def print_table(result: Result, timesteps: Sequence[int]) -> None:
    value = lookup(result.rows)
    data_entropy = value[("data", "data_mode_entropy_bits")]
    print(
        f"tr Var(x0) = {DATA_TRACE_VAR:.3f}; data mode entropy {data_entropy['value']:.2f} bits "
        f"[{data_entropy['ci_low']:.2f}, {data_entropy['ci_high']:.2f}] (log2 8 = 3)"
    )
    header = (
        f"{'t':>4} {'ᾱ':>7} {'sens':>6} {'trVar x0':>8} {'bound trVar':>11} {'lost':>6} "
        f"{'student trVar [95% CI]':>24} {'lost':>6} {'mode H bits [CI]':>19} {'ideal H':>7}"
    )
    print(header)
    for t in timesteps:
        r = f"t={t}"
        student, entropy = value[(r, "student_trace_var")], value[(r, "student_mode_entropy_bits")]
        print(
            f"{t:>4} {value[(r, 'alpha_bar')]['value']:>7.4f} {value[(r, 'eps_sensitivity')]['value']:>6.2f} "
            f"{DATA_TRACE_VAR:>8.3f} {value[(r, 'bound_trace_var')]['value']:>11.4f} "
            f"{value[(r, 'bound_fraction_lost')]['value']:>6.3f} "
            f"{student['value']:>7.4f} [{student['ci_low']:.4f},{student['ci_high']:.4f}] "
            f"{value[(r, 'student_fraction_lost')]['value']:>6.3f} "
            f"{entropy['value']:>5.2f} [{entropy['ci_low']:.2f},{entropy['ci_high']:.2f}] "
            f"{value[(r, 'ideal_mode_entropy_bits')]['value']:>7.2f}"
        )


def plot(result: Result, timesteps: Sequence[int], path: Path, seed: int) -> None:
    alphas_cumprod = scheduler().alphas_cumprod.double().numpy()
    value = lookup(result.rows)
    rng = np.random.default_rng(seed + 1)
    grid = [*range(0, 1000, 25), 999]
    lost = [1 - bound(float(alphas_cumprod[t]), rng, 10_000)[0] / DATA_TRACE_VAR for t in grid]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(grid, lost, color="black", label="bound: ideal MSE student")
    points = [value[(f"t={t}", "student_fraction_lost")] for t in timesteps]
    left.errorbar(
        timesteps,
        [p["value"] for p in points],
        yerr=[[p["value"] - p["ci_low"] for p in points], [p["ci_high"] - p["value"] for p in points]],
        fmt="o",
        color="tab:red",
        capsize=3,
        label="trained MLP student (95% CI)",
    )
    left.set(
        xlabel="timestep t of the one-step student", ylabel="fraction of tr Var(x0) lost", ylim=(-0.05, 1.05)
    )
    sensitivity = left.twinx()
    sensitivity.semilogy(
        grid, [math.sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) for t in grid], "--", color="grey"
    )
    sensitivity.set_ylabel("ε-sensitivity √((1−ᾱ)/ᾱ) (dashed)", color="grey")
    left.legend(loc="center right", fontsize=8)
    left.set_title("variance lost by an MSE student, per timestep", fontsize=10)

    shown = result.data[:2000]
    right.scatter(shown[:, 0], shown[:, 1], s=2, color="lightgrey", label="data x0")
    for t, color in ((999, "tab:red"), (249, "tab:blue")):
        if t in result.student_outputs:
            out = result.student_outputs[t][:2000]
            right.scatter(out[:, 0], out[:, 1], s=2, color=color, label=f"student x̂0, t={t}")
    right.scatter(MEANS[:, 0], MEANS[:, 1], marker="x", color="black", label="mode means")
    right.set_aspect("equal")
    legend = right.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    for handle in legend.legend_handles:
        handle.set_sizes([15])  # the 2-pt scatter markers are too small to read in a legend
    right.set_title("one-step outputs: t=999 collapses to the mean", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    # JSON has no NaN: missing CIs are written as null, as in the project's metrics.json.
    clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    path.write_text(json.dumps(clean, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", type=int, default=None, help=f"training steps per student (default {FULL['steps']})"
    )
    parser.add_argument(
        "--n-eval", type=int, default=None, help=f"evaluation samples (default {FULL['n_eval']})"
    )
    parser.add_argument("--out", type=Path, default=Path("out/first_step_theory"))
    parser.add_argument("--quick", action="store_true", help="small sizes and DMD2's 4 timesteps only")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny networks: threads only add overhead

    sizes = dict(QUICK if args.quick else FULL)
    sizes["steps"] = args.steps or sizes["steps"]
    sizes["n_eval"] = args.n_eval or sizes["n_eval"]

    start = time.perf_counter()
    result = run(seed=args.seed, **sizes)
    print_table(result, sizes["timesteps"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "results.json", result.rows)
    plot(result, sizes["timesteps"], args.out / "first_step_theory.png", args.seed)
    print(f"{time.perf_counter() - start:.1f} s; wrote {args.out / 'results.json'} and first_step_theory.png")


if __name__ == "__main__":
    main()
