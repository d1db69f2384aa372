"""What the CRF output should stand for: the clean latent or the latent at the post-CRF timestep.

The plan's ``crf_output`` decides how the CRF output enters the last post-CRF steps
(``"clean"``: carried to t_p = 21 by the DDIM jump; ``"post"``: used as z_21 as it is).
This script measures the consequence with a model whose exact denoiser is known:
Gaussian latents ``z_0 ~ N(mu, s^2 I)``, for which

    E[z_0 | z_t] = mu + sqrt(a_t) s^2 / (a_t s^2 + 1 - a_t) (z_t - sqrt(a_t) mu)

so DDIM with this denoiser is an exact probability-flow sampler. For the same initial
noise it compares, against the 50-step DDIM result:

- 33-step DDIM (the equal-cost baseline without a CRF);
- the paper's plan with an *ideal* CRF for each choice (the teacher's own continuation
  from z_s: the final latent for ``"clean"``, the latent at t = 21 for ``"post"``);
- the same with an imperfect CRF (the ideal output plus Gaussian error of std
  ``--crf-error``), and the CRF output taken as final (no post-CRF steps);
- the plan with the CRF left out (identity under ``"post"``: the latent at 201 goes into
  the step at 21 unchanged; the paper's "no CRF" ablation, Table 4).

    python benchmarks/crf_output_choice.py

Prints a table (RMS difference per latent value) and writes a JSON record to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from energycrf.integrations.plan import SplicePlan  # noqa: E402
from energycrf.integrations.sampler import NoiseSchedule, ddim_sample, splice_sample  # noqa: E402


def gaussian_denoiser(mu: torch.Tensor, s: float, schedule: NoiseSchedule):
    def model(z, t, cond):
        a = schedule.a(int(t[0]))
        x0 = mu + (a**0.5 * s**2 / (a * s**2 + 1 - a)) * (z - a**0.5 * mu)
        return (z - a**0.5 * x0) / (1 - a) ** 0.5

    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--scale", type=float, default=0.8, help="data standard deviation s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crf-error", type=float, default=0.05, help="std of the error added to the ideal CRF")
    ap.add_argument("--out", default="/tmp/energycrf-bench")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    schedule = NoiseSchedule.from_betas(0.00085, 0.012, "scaled_linear")  # Stable Diffusion 1.5
    shape = (args.batch, 4, args.size, args.size)
    mu = torch.randn(1, 4, args.size, args.size, dtype=torch.float64)
    model = gaussian_denoiser(mu, args.scale, schedule)
    plan = SplicePlan()
    sched = plan.schedule(1000, "leading", 1)
    noise = torch.randn(shape, dtype=torch.float64)

    def run(timesteps):
        return ddim_sample(model, noise.clone(), schedule, timesteps)

    ref50 = run(list(sched.post_grid))
    ddim33 = run([int(t) for t in torch.linspace(976, 1, 33).round().tolist()])

    def ideal(kind, error=0.0):
        g = torch.Generator().manual_seed(args.seed + 1)

        def crf(z_s, c):
            return exact(z_s) + error * torch.randn(z_s.shape, generator=g, dtype=z_s.dtype)

        def exact(z_s):
            # continue the teacher from z_s along the 50-step grid below t_s
            tail = [t for t in sched.post_grid if t < sched.splice_timestep]
            captured = {}

            def keep(i, t, tp, z):
                captured[tp] = z

            final = ddim_sample(model, z_s, schedule, [sched.splice_timestep] + tail, on_step=keep)
            return final if kind == "clean" else captured[sched.post[0]]

        return crf

    rows = {}
    rows["DDIM, 50 steps (reference)"] = ref50
    rows["DDIM, 33 steps"] = ddim33
    for error in (0.0, args.crf_error):
        for kind in ("clean", "post"):
            name = "ideal" if error == 0 else f"ideal + N(0, {error}^2)"
            rows[f"plan + {name} CRF, crf_output='{kind}'"] = splice_sample(
                model, ideal(kind, error), noise.clone(), schedule, SplicePlan(crf_output=kind), steps_offset=1
            )
        rows[f"31/40 + {'ideal' if error == 0 else 'noisy'} CRF, no post steps"] = splice_sample(
            model, ideal("clean", error), noise.clone(), schedule, SplicePlan(post_run=0), steps_offset=1
        )
    rows["plan, no CRF (identity, 'post')"] = splice_sample(
        model, lambda z, c: z, noise.clone(), schedule, SplicePlan(crf_output="post"), steps_offset=1
    )
    rms = {k: float((v - ref50).pow(2).mean().sqrt()) for k, v in rows.items()}
    scale = float((ref50 - mu).pow(2).mean().sqrt())
    print(f"Gaussian latents {list(shape)}, s = {args.scale}; RMS of (result - 50-step DDIM); "
          f"RMS of the sample around its mean: {scale:.4f}")
    for k, v in rms.items():
        print(f"  {k:55s} {v:.3e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crf_output_choice.json").write_text(json.dumps({"args": vars(args), "rms_vs_ddim50": rms,
                                                             "sample_rms": scale}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
