"""Which of the student's steps decides a factor? The testbed's x̂0 after every step, read by the factor probe.

For a prompt that leaves one factor free (default "a triangle": colour), per model and step: the share of seeds
whose x̂0 already shows the final image's level of that factor (with a 95% bootstrap CI), the probe's mean
confidence in its reading, and the x̂0's mean pixel standard deviation (a blurred mean image has less contrast
than the final one). A student that commits at its first step shows a sharp x̂0 whose level its later steps
keep; a sharp step-1 x̂0 whose level changes later means the later steps re-decide (docs/testbed.md).

Then the control: rendered images of known level (the prompt's fixed factors, the rest drawn from the world),
noised to t, and each model's one-step x̂0 from there: the share that shows the level it was handed. An exact
denoiser keeps it wherever the latent still carries it; a model that overturns it at t is re-deciding, not blind.

    python analyses/student_steps.py -n 128 --seed 5000
    python analyses/student_steps.py --student-path runs/testbed/dmd --prompt "a red shape" --factor shape
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from conceptspace import Base, Distilled, decode, load_pair, sample
from conceptspace.sampling import encode_text, make_denoiser
from conceptspace.stats import mean_estimate
from conceptspace.testbed.data import fixed_factors, render, sample_factors, to_tensor
from conceptspace.testbed.probe import load_probe

HANDED_AT = (999, 899, 749, 499)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=128, help="seeds")
    parser.add_argument("--seed", type=int, default=5000, help="first seed")
    parser.add_argument("--prompt", default="a triangle")
    parser.add_argument("--factor", default="colour", choices=("shape", "colour", "background"))
    parser.add_argument("--student-path", help="a student folder (default: the shipped dmd)")
    parser.add_argument("--base-steps", type=int, default=12)
    args = parser.parse_args()

    paths = {"student_path": args.student_path} if args.student_path else {}
    pair = load_pair("shapes", "dmd", dtype=torch.float32, device="cpu", **paths)
    probe = load_probe()
    seeds = range(args.seed, args.seed + args.n)
    print(f"{args.prompt!r}, factor {args.factor}, n = {args.n} seeds from {args.seed}")
    print(f"{'model':<10} {'step':>4} {'t':>4}  {'x̂0 shows the final level [95% CI]':<36} confidence  pixel std")
    for regime in (Distilled(), Base(steps=args.base_steps)):
        result = sample(pair, args.prompt, regime, seeds, output_type="latent", record_x0=True, progress=False)
        decoded = [decode(pair, result.trajectory[:, step], output_type="pt") for step in range(len(result.schedule))]
        readings = [probe.predict(images, value_range=(0, 1), probabilities=True) for images in decoded]
        final = readings[-1][args.factor]
        for step, (images, reading, scheduled) in enumerate(zip(decoded, readings, result.schedule, strict=True)):
            if step >= 4:
                break
            same = mean_estimate((reading[args.factor] == final).astype(float), seed=step)
            confidence = reading[f"{args.factor}_probs"].max(axis=1).mean()
            contrast = float(images.std(dim=(2, 3)).mean())
            print(
                f"{regime.name:<10} {step + 1:>4} {scheduled.timestep:>4}  {same.value:.2f} "
                f"[{same.ci_low:.2f}, {same.ci_high:.2f}]{'':<22} {confidence:.2f}        {contrast:.3f}"
            )
        final_contrast = float(decode(pair, result.images, output_type="pt").std(dim=(2, 3)).mean())
        print(f"{regime.name:<10} final image pixel std {final_contrast:.3f}")

    factors = sample_factors(args.n, np.random.default_rng(args.seed), fixed=fixed_factors(args.prompt))
    vae = pair.pipeline.vae
    with torch.no_grad():
        latents = vae.encode(to_tensor(render(factors))).latent_dist.mean * vae.config.scaling_factor
    cond = encode_text(pair, args.prompt, negative_prompt=None, cfg=False, height=32, width=32).repeat(args.n)
    alphas = pair.make_scheduler("base").alphas_cumprod
    generator = torch.Generator().manual_seed(args.seed)
    print(f"\nhanded a rendered image noised to t: one-step x̂0 shows its {args.factor} [95% CI]")
    for t in HANDED_AT:
        a = alphas[t]
        noised = a.sqrt() * latents + (1 - a).sqrt() * torch.randn(latents.shape, generator=generator)
        cells = []
        for model in ("base", "distilled"):
            with torch.no_grad():
                eps = make_denoiser(pair, model, 1.0)(noised, torch.tensor(t), cond)
            x0 = (noised - (1 - a).sqrt() * eps) / a.sqrt()
            reading = probe.predict(decode(pair, x0, output_type="pt"), value_range=(0, 1))
            kept = mean_estimate((reading[args.factor] == getattr(factors, args.factor)).astype(float), seed=t)
            cells.append(f"{model} {kept.value:.2f} [{kept.ci_low:.2f}, {kept.ci_high:.2f}]")
        print(f"  t = {t}: " + ";  ".join(cells))


if __name__ == "__main__":
    main()
