"""Evaluating the energy: depthwise convolutions in float64 and float32, and the energy alone of a sum.

1. The pairwise message :math:`W^s y` of a ``LocalKernel`` is a depthwise convolution (one
``(2r+1) x (2r+1)`` window per channel). In float64 on the CPU ``F.conv2d`` has no
vectorised kernel for it; ``operators.conv2d`` computes it as one multiply-add of a shifted
input per tap (:func:`energycrf.energies.operators.depthwise_by_shifts`). Timed here in one
run, interleaved (medians of ``--rounds`` rounds, 1 torch thread):

- the convolution alone, on the solver benchmark's shapes, against ``F.conv2d``;
- ``Pairwise.grad`` and a one-iteration solve (``solvers_benchmark.fastest_solve``: ``lbfgs``,
  ``precondition="chebyshev"``, from ``y0="quadratic"``, whose start and step take products
  with the quadratic terms) on the 512 x 512
  photograph, against the same code with the convolution sent to ``F.conv2d``.

2. ``E(y, x)`` of the solver benchmark's sum (Unary + Pairwise + FieldOfExperts) takes the
   Field-of-Experts responses and the pairwise message from one convolution
   (``energies/fused.py``), as ``E.energy_and_grad`` does; timed against the sum of the terms'
   own energies (one convolution each), on both problems and both dtypes. Line-search
   trials, coordinate descent and conjugate gradients evaluate the energy alone.

3. In float32 the pairwise message runs as one depthwise ``F.conv2d`` over the ``B C`` images
   of the batch, cut into bands of rows when the images have few channels
   (:func:`energycrf.energies.operators.correlate_shared`: CPU convolutions work in blocks of
   16 channels). Timed against ``F.conv2d`` with ``groups=C`` on the batch as it is, alone and
   inside the one-iteration solve (whose start and boundary refinement apply the quadratic
   part) on both problems.

    python benchmarks/energy_evaluation.py          # ~40 s
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
import torch.nn.functional as F

import energycrf as ec
from energycrf.energies import operators
from energycrf.energies.composite import _add
from energycrf.apps.compare_solvers import default_energy, noisy_photograph
from machine_info import median_ms, under  # noqa: E402  (benchmarks/ is the script's folder)
from solvers_benchmark import fastest_solve, latent_batch, machine  # noqa: E402

F64 = torch.float64


def conv2d_depthwise(u, weight, padding=0):
    """The peer: ``F.conv2d`` with one group per channel."""
    return F.conv2d(u, weight, padding=padding, groups=weight.shape[0])


def through_conv2d():
    """``operators.conv2d`` with its depthwise path sent to ``F.conv2d`` (what it did before; a
    context manager)."""
    return mock.patch.object(operators, "depthwise_by_shifts", conv2d_depthwise)


def plain_message(self, y, scale):
    """The peer of ``LocalKernel.scaled_message``: ``F.conv2d`` with ``groups=C`` on ``[B, C, H, W]``."""
    k = self.weights().to(dtype=y.dtype, device=y.device)
    k = k if scale == 1.0 else scale * k
    return operators.correlate(y, k.expand(y.shape[1], 1, *k.shape), self.boundary, groups=y.shape[1])


def plain_messages():
    """Every ``LocalKernel`` message by :func:`plain_message` (a context manager)."""
    return mock.patch.object(ec.energies.LocalKernel, "scaled_message", plain_message)


def terms_apart(E, y, x):
    """The sum's energy as each term computes its own (what ``SumEnergy`` did before)."""
    E.validate(y, x)
    return _add(t.energy(y, x) for t in E.terms)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--size", type=int, default=512, help="photograph size")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"Machine: {machine()}\n")
    g = torch.Generator().manual_seed(0)
    print("| float64 depthwise convolution | shifted sums ms | F.conv2d ms | shifted sums faster by |")
    print("|---|---:|---:|---:|")
    for shape, taps in [((1, 1, args.size, args.size), 5), ((4, 4, 64, 64), 5), ((1, 4, 128, 128), 3)]:
        u = torch.randn(shape, generator=g, dtype=F64)
        w = torch.rand(shape[1], 1, taps, taps, generator=g, dtype=F64)
        pad = taps // 2
        ours, peer = median_ms([lambda: operators.depthwise_by_shifts(u, w, pad), lambda: conv2d_depthwise(u, w, pad)],
                               args.rounds)
        print(f"| {list(shape)}, {taps} x {taps} | {ours:.3f} | {peer:.3f} | {peer / ours:.1f}x |")

    x = noisy_photograph("camera", args.size, 25.0, 0)[0].to(F64)
    E = default_energy(1, seed=0).to(F64)
    pairwise = E.terms[1]

    print(f"\n| camera {args.size} x {args.size}, float64 | energycrf ms | through F.conv2d ms | faster by |")
    print("|---|---:|---:|---:|")
    for name, f in [("Pairwise.grad", lambda: pairwise.grad(x, x)), ("one-iteration solve", lambda: fastest_solve(E, x))]:
        ours, plain = median_ms([f, under(through_conv2d, f)], max(1, args.rounds // 2))
        print(f"| {name} | {ours:.2f} | {plain:.2f} | {plain / ours:.2f}x |")

    print("\n| E(y, x), Unary + Pairwise + FieldOfExperts | one shared convolution ms | terms apart ms | faster by |")
    print("|---|---:|---:|---:|")
    for name, photo in [(f"camera {args.size} x {args.size}", x), ("latent [4, 4, 64, 64]", latent_batch())]:
        for dtype in (torch.float32, F64):
            y = photo.to(dtype)
            E = default_energy(y.shape[1], seed=0).to(dtype)
            ours, apart = median_ms([lambda: E(y, y), lambda: terms_apart(E, y, y)], args.rounds)
            print(f"| {name}, {str(dtype).removeprefix('torch.')} | {ours:.2f} | {apart:.2f} | {apart / ours:.2f}x |")

    print("\n| float32 pairwise message, 5 x 5 | packed (and banded) ms | F.conv2d, groups=C ms | faster by |")
    print("|---|---:|---:|---:|")
    kernel = ec.energies.LocalKernel(radius=2)
    for shape in [(1, 1, args.size, args.size), (4, 4, 64, 64), (1, 4, 128, 128), (1, 3, 256, 256)]:
        u = torch.randn(shape, generator=g)
        ours, peer = median_ms([lambda: kernel.message(u), lambda: plain_message(kernel, u, 1.0)], args.rounds)
        print(f"| {list(shape)} | {ours:.3f} | {peer:.3f} | {peer / ours:.2f}x |")
    print("\n| one-iteration solve, float32 | energycrf ms | groups=C messages ms | faster by |")
    print("|---|---:|---:|---:|")
    for name, photo in [(f"camera {args.size} x {args.size}", x), ("latent [4, 4, 64, 64]", latent_batch())]:
        y = photo.float()
        E = default_energy(y.shape[1], seed=0).float()

        solve32 = lambda E=E, y=y: fastest_solve(E, y)  # noqa: E731
        ours, plain = median_ms([solve32, under(plain_messages, solve32)], args.rounds)
        print(f"| {name} | {ours:.2f} | {plain:.2f} | {plain / ours:.2f}x |")


if __name__ == "__main__":
    main()
