"""How far one L-BFGS step gets on the solver benchmark's problems, per preconditioner.

The 3x target of the solver benchmark needs the 1e-6 relative gap in fewer than the 3 fused
evaluations that two iterations take. This script measures the gap (float64, against a
tightly converged float64 minimum) after each of the first three iterations of energycrf's
L-BFGS (float32, as benchmarked) with:

- the FFT preconditioner of the quadratic part with ``refine`` = 0, 1, 2, 4 Richardson
  steps for the zero boundary (``refine=1`` is the default);
- the default ``refine=1`` started at ``y0="quadratic"`` (the quadratic part's minimiser)
  instead of ``x``;
- an experimental variant whose circulant also holds the Field of Experts' mean curvature,
  :math:`\\hat K - \\sum_m \\bar p_m |\\hat J_m|^2` with :math:`\\bar p_m` the share of positive
  responses of filter ``m`` at the start (the ReLU expert's :math:`\\rho'' = -1` there), and
  ``refine`` exact Richardson steps on the quadratic part plus that mean FoE term with a zero
  boundary: the best a stationary operator can do about the FoE term.

    python benchmarks/preconditioner_gaps.py                                  # ~1 min
    python benchmarks/preconditioner_gaps.py --problems camera --size 64      # seconds
"""

from __future__ import annotations

import argparse
import copy

import torch

import energycrf as ec
import energycrf.solvers.lbfgs as lbfgs_module
from energycrf.energies.operators import correlate, correlate_adjoint
from energycrf.solvers.preconditioners import spectral as S
from energycrf.solvers.quadratic_part import quadratic_part
from energycrf.apps.compare_solvers import default_energy, noisy_photograph
from solvers_benchmark import latent_batch, machine  # noqa: E402  (benchmarks/ is the script's folder)


def _foe_mean_hvp(foe, weights, v):
    """``sum_m w_m J_m^T J_m v`` (zero boundary)."""
    j = foe._filters_like(v)
    return correlate_adjoint(weights.view(1, -1, 1, 1) * correlate(v, j, foe.boundary), j, foe.boundary)


class MeanCurvaturePreconditioner(S.SpectralPreconditioner):
    """Experimental: the circulant of the quadratic part plus the FoE's mean curvature."""

    def __init__(self, E_quadratic, foe, x, c, y, refine):
        super().__init__(E_quadratic, x, c, y, refine=0, frame=False)
        u = correlate(y, foe._filters_like(y), foe.boundary)
        self.w = -(u > 0).to(y.dtype).mean((0, 2, 3))  # mean rho'' per filter (ReLU expert)
        B, C, H, W = y.shape
        R = foe.kernel_size - 1
        s = 2 * R + 1
        impulses = torch.zeros(C, C, s, s, dtype=y.dtype)
        impulses[torch.arange(C), torch.arange(C), R, R] = 1.0
        foe_taps = _foe_mean_hvp(foe, self.w, impulses).permute(1, 0, 2, 3)[None]  # [1, out, in, s, s]
        q_taps, _, crop = S._circulant_taps(E_quadratic, x, c, y)
        q_taps = S._place_taps(q_taps, H, W) if crop else q_taps
        K = torch.fft.rfft2(q_taps + S._place_taps(foe_taps, H, W)).permute(0, 3, 4, 1, 2)
        self.Kinv = torch.linalg.inv(0.5 * (K + K.conj().transpose(-1, -2)))
        self.diagonal = False
        self.foe, self.refine = foe, refine

    def __call__(self, v):
        z = self.apply_circulant(v)
        for _ in range(self.refine):
            with torch.no_grad():
                Az = self.quadratic_part._hessian_vector_product(self._y, self._x, self._c, z) + _foe_mean_hvp(self.foe, self.w, z)
            z = z + self.apply_circulant(v - Az)
        return z


def gaps(E64, x, best, iters=3, **options):
    """Relative gaps (float64 energy ``E64``) of the start and the first ``iters`` float32 iterates."""
    Ef, xf, x64 = copy.deepcopy(E64).float(), x.float(), x.double()
    its = [xf.clone()]
    ec.solve(Ef, xf, method="lbfgs", precondition="fft", max_iters=iters, tol=0.0, gtol=0.0, on_diverge="ignore",
             callback=lambda t, y, e: its.append(y.clone()), **options)
    with torch.no_grad():
        return [(float(E64(y.double(), x64).sum()) - best) / abs(best) for y in its]


def main(argv=None) -> list[tuple[str, str, list[float]]]:
    """Prints the table; returns its rows ``(problem, preconditioner, gaps after 1, 2, 3 iterations)``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--problems", default="camera,latent", help="comma-separated: camera, latent")
    ap.add_argument("--size", type=int, default=512, help="camera size (default 512)")
    args = ap.parse_args(argv)
    problems = args.problems.split(",")
    if not set(problems) <= {"camera", "latent"}:
        ap.error(f"--problems: expected names from camera, latent, got {args.problems!r}")
    torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}\n")
    print("| problem | preconditioner | gap after 1 | after 2 | after 3 iterations |")
    print("|---|---|---:|---:|---:|")
    table = []

    def row(name, label, g):
        table.append((name, label, g[1:]))
        print(f"| {name} | {label} | " + " | ".join(f"{v:.1e}" for v in g[1:]) + " |", flush=True)

    for name in problems:
        x = noisy_photograph("camera", args.size, 25.0, 0)[0] if name == "camera" else latent_batch()
        E = default_energy(x.shape[1], seed=0).double()
        x64 = x.double()
        ref = ec.solve(E, x64, method="lbfgs", precondition="fft", max_iters=60, tol=1e-15, gtol=0.0,
                       on_diverge="ignore")
        with torch.no_grad():
            best = float(E(ref.y, x64).sum())
        rows = [(f"FFT, refine={k}", {"refine": k}) for k in (0, 1, 2, 4)]
        rows.append(("FFT, refine=1, from y0='quadratic'", {"refine": 1, "y0": "quadratic"}))
        for label, options in rows:
            row(name, label, gaps(E, x, best, **options))
        original = lbfgs_module.make_preconditioner
        try:
            for k in (1, 4):
                def make(kind, problem, y, refine=0, degree=None, _k=k):  # make_preconditioner's signature
                    foe = next(t for t in problem.E.terms if not t.is_quadratic)
                    return MeanCurvaturePreconditioner(quadratic_part(problem.E), foe, problem.x, problem.c, y, _k)

                lbfgs_module.make_preconditioner = make
                row(name, f"FFT + FoE mean curvature, {k} exact Richardson steps", gaps(E, x, best))
        finally:
            lbfgs_module.make_preconditioner = original
    return table


if __name__ == "__main__":
    main()
