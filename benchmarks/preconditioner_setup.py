"""The FFT preconditioner's set-up with channels that mix, against the plain way to build it.

``SpectralPreconditioner`` inverts one ``C x C`` block of the quadratic part's spectrum per
frequency, with the eigenvalues raised to a floor (a singular part stays invertible). Timed
here, in one run, interleaved (medians of ``--rounds`` rounds, 1 torch thread):

- the inverse with a Cholesky test of ``K - floor I`` (``_floored_inverse``: every eigenvalue
  is provably above the floor, so the plain inverse) against ``torch.linalg.eigh`` of every
  block clamped at the floor;
- a whole solve (``ec.solve``, ``lbfgs``, ``precondition="fft"``, from ``y0="quadratic"``, one
  iteration) on the latent batch of the solver benchmark with a channel-mixing
  ``MatrixCompatibility``, and with the default identity compatibility (channels do not mix:
  a per-channel division, the same code both ways), with the eigendecomposition patched in.

    python benchmarks/preconditioner_setup.py          # ~10 s
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch

import energycrf as ec
from energycrf.energies.operators import window_spectrum
from energycrf.solvers.preconditioners import spectral as S
from energycrf.solvers.quadratic_part import quadratic_part
from energycrf.apps.compare_solvers import default_energy
from machine_info import median_ms, under  # noqa: E402  (benchmarks/ is the script's folder)
from solvers_benchmark import fastest_solve, latent_batch, machine  # noqa: E402


plain_inverse = S._eigh_floored_inverse  # the eigendecomposition of every block, the library's fallback


def plain_setup():
    """The preconditioner built with the eigendecomposition of every block (a context manager)."""
    return mock.patch.object(S, "_floored_inverse", plain_inverse)


def mixing_energy(channels: int = 4, seed: int = 0):
    """The solver benchmark's energy with a seeded channel-mixing ``MatrixCompatibility``."""
    g = torch.Generator().manual_seed(seed)
    M = torch.eye(channels) + 0.3 * torch.randn(channels, channels, generator=g)
    return default_energy(channels, seed=seed, compatibility=ec.energies.MatrixCompatibility(M))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"Machine: {machine()}\n")

    latent = latent_batch().float()
    print("| step | shape | energycrf ms | plain ms | energycrf faster by |")
    print("|---|---|---:|---:|---:|")
    taps = S._circulant_taps(quadratic_part(mixing_energy().float()), latent, None, latent)[0]
    K = window_spectrum(taps, 64, 64).permute(0, 3, 4, 1, 2)  # as the set-up does
    K = 0.5 * (K + K.conj().transpose(-1, -2))
    ours, plain = median_ms([lambda: S._floored_inverse(K), lambda: plain_inverse(K)], args.rounds)
    print(f"| C x C inverse (Cholesky-tested vs eigh) | {list(K.shape)} | {ours:.3f} | {plain:.3f} "
          f"| {plain / ours:.1f}x |")

    print("\nOne-iteration solve (ec.solve, lbfgs, fft, y0='quadratic'), wall time of the call, median:\n")
    print("| problem | energycrf ms | plain set-up ms | energycrf faster by |")
    print("|---|---:|---:|---:|")
    cases = [("latent [4,4,64,64], identity compatibility", default_energy(4).float(), latent),
             ("latent, MatrixCompatibility", mixing_energy().float(), latent)]
    for name, E, x in cases:
        solve = lambda E=E, x=x: fastest_solve(E, x, precondition="fft")  # noqa: E731
        ours, plain = median_ms([solve, under(plain_setup, solve)], args.rounds)
        print(f"| {name} | {ours:.2f} | {plain:.2f} | {plain / ours:.2f}x |")


if __name__ == "__main__":
    main()
