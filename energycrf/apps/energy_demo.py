"""A denoising energy on a real photograph: well-posedness, per-term breakdown, a solve and a picture.

``energycrf energy-demo`` loads a grayscale photograph from ``skimage.data`` (``camera`` by
default, shipped inside the scikit-image wheel), adds Gaussian noise (sigma = 25/255,
``numpy.random.default_rng(seed)``, unclipped), and builds

    E(y | x) = Unary + Pairwise + FieldOfExperts

on the ``C = 1`` image: a unit-weight data term, a radius-1 Gaussian pairwise term, and
eight 5x5 derivative filters with the convex Charbonnier expert (``--expert`` picks
another, including the paper's ReLU expert). It prints the convexity margin
(``E.check_well_posed``), the per-term energy at the noisy and at the clean image,
minimises ``E`` with ``ec.solve`` and saves ``demo.png`` (images, per-term energy density
maps at the solution, the energy history) and ``summary.json`` to ``--out``
(``./energycrf-energy-demo-out``). The picture's field-of-experts and error maps leave
out a border of ``kernel_size // 2`` pixels, where the zero padding of the filters makes
a bright ring (:data:`BORDER_NOTE`, the figure's caption, says why).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from ._command import UsageError, announce, atomic_path, check_non_quadratic_methods, check_output_dir, integer, number
from ._command import path, write_text
from .photographs import PHOTOGRAPHS as IMAGES
from .photographs import add_gaussian_noise, load_photograph

EXPERTS = ("charbonnier", "huber", "student-t", "relu")
FILES = ("demo.png", "summary.json")
KERNEL_SIZE = 5
#: what the figure leaves out of the field-of-experts and error maps, and why (its caption)
BORDER_NOTE = (
    "Field-of-experts and error maps without their outer {b} pixels (kernel_size // 2): there the "
    "{k}x{k} filters reach past the image into FieldOfExperts' zero padding (boundary='zeros'), see a false "
    "edge between the photograph and 0, and the expert pulls the border pixels toward 0: a bright ring that "
    "is an artefact of the boundary, not of the photograph (its other boundary, 'circular', would join "
    "opposite edges of the photograph instead)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", choices=IMAGES, default="camera", help="skimage.data photograph (default: camera)")
    # below 16 pixels the filters' border (kernel_size // 2 each side) leaves too little to measure; the
    # upper bound keeps the solvers' filter responses within a few GB
    parser.add_argument("--size", type=integer(minimum=16, maximum=4096), default=512,
                        help="resize so the longer side has this many pixels, 16 to 4096 (default: 512, camera's "
                             "own size)")
    parser.add_argument("--sigma", type=number(minimum=0.0), default=25.0,
                        help="noise standard deviation in 1/255 units (default: 25)")
    parser.add_argument("--seed", type=integer(minimum=0), default=0, help="seed of the noise (default: 0)")
    parser.add_argument("--expert", choices=EXPERTS, default="charbonnier",
                        help="the Field-of-Experts potential (default: charbonnier; relu is the paper's eq. 10)")
    parser.add_argument("--method", default="lbfgs", help="ec.solve method (default: lbfgs)")
    parser.add_argument("--max-iters", type=integer(minimum=1), default=200,
                        help="solver iterations at most (default: 200)")
    parser.add_argument("--out", type=path, default=Path("energycrf-energy-demo-out"),
                        help="output folder (default: ./energycrf-energy-demo-out)")
    parser.add_argument("--overwrite", action="store_true", help="replace demo.png and summary.json of an earlier run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out, "--out", FILES, overwrite=args.overwrite)
    from ..solvers import method_names  # the registry (imports torch)

    if args.method not in method_names():
        raise UsageError("--method", f"an ec.solve method ({', '.join(method_names())})", repr(args.method))
    check_non_quadratic_methods("--method", [args.method], [args.method])
    import torch

    import energycrf as ec

    clean_np = load_photograph(args.image, args.size)
    noisy_np = add_gaussian_noise(clean_np, args.sigma, args.seed)
    clean = torch.from_numpy(clean_np).float()[None, None]        # [1, 1, H, W]
    noisy = torch.from_numpy(noisy_np).float()[None, None]

    E = build_energy(args.expert)
    E.requires_grad_(False)
    h, w = clean.shape[-2:]
    announce("energy-demo", f"minimise {' + '.join(E.names)} on a {h}x{w} photograph with {args.method}, "
             f"at most {args.max_iters} iterations, then a picture and a summary in {out}")
    print(f"image: skimage.data.{args.image}(), grayscale, {h}x{w}, noise sigma {args.sigma:g}/255, seed {args.seed}")
    print(f"energy: {' + '.join(E.names)}  ({args.expert} expert)")

    margin = E.check_well_posed(on_fail="ignore")
    if margin is None:
        verdict = "unknown (a term does not report its curvature bound)"
    elif margin > 0:
        verdict = "strongly convex: a unique minimiser exists"
    else:
        verdict = "NOT guaranteed bounded below: a solver may diverge"
    print(f"well-posedness: convexity margin {margin if margin is None else f'{margin:.4f}'} -> {verdict}")

    with torch.no_grad():
        at_noisy = {k: float(v) for k, v in E.breakdown(noisy, noisy).items()}
        at_clean = {k: float(v) for k, v in E.breakdown(clean, noisy).items()}
    at_noisy["total"], at_clean["total"] = sum(at_noisy.values()), sum(at_clean.values())

    t0 = time.perf_counter()
    res = ec.solve(E, noisy, method=args.method, max_iters=args.max_iters, progress=not args.quiet)
    solve_time = time.perf_counter() - t0
    y = res.y
    with torch.no_grad():
        at_solution = {k: float(v) for k, v in E.breakdown(y, noisy).items()}
    at_solution["total"] = sum(at_solution.values())

    _print_table(["term", "E(noisy | noisy)", "E(clean | noisy)", "E(solution | noisy)"],
                 [[k, at_noisy[k], at_clean[k], at_solution[k]] for k in at_noisy])
    psnr = {"noisy": _psnr(noisy, clean), "solution": _psnr(y, clean)}
    print(f"solve: method {res.method}, {int(res.iterations[0])} iterations, status {res.status[0]}, "
          f"{solve_time:.2f} s")
    print(f"PSNR: noisy {psnr['noisy']:.2f} dB -> solution {psnr['solution']:.2f} dB")

    figure = out / "demo.png"
    densities = energy_densities(E, y, noisy)
    with atomic_path(figure) as tmp:
        save_figure(tmp, clean, noisy, y, densities, res.energies[:, 0], psnr, margin, args)
    summary = {
        "image": args.image, "height": h, "width": w, "sigma": args.sigma, "seed": args.seed,
        "expert": args.expert, "terms": list(E.names), "convexity_margin": margin,
        "energy_at_noisy": at_noisy, "energy_at_clean": at_clean, "energy_at_solution": at_solution,
        "psnr_db": psnr, "method": res.method, "iterations": int(res.iterations[0]),
        "status": res.status[0], "solve_seconds": solve_time,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(f"saved {figure} and {out / 'summary.json'}")
    return 0


def derivative_filters(kernel_size: int = KERNEL_SIZE):
    """Eight 5x5 finite-difference filters: first differences in four directions, second
    differences along rows, columns and the mixed one, and a wide second difference."""
    import torch

    f = torch.zeros(8, 1, kernel_size, kernel_size)
    m = kernel_size // 2
    f[0, 0, m, m], f[0, 0, m, m + 1] = -1, 1          # d/dx
    f[1, 0, m, m], f[1, 0, m + 1, m] = -1, 1          # d/dy
    f[2, 0, m, m], f[2, 0, m + 1, m + 1] = -1, 1      # diagonal
    f[3, 0, m, m + 1], f[3, 0, m + 1, m] = -1, 1      # anti-diagonal
    f[4, 0, m, m - 1:m + 2] = torch.tensor([1.0, -2.0, 1.0])
    f[5, 0, m - 1:m + 2, m] = torch.tensor([1.0, -2.0, 1.0])
    f[6, 0, m - 1:m + 1, m - 1:m + 1] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    f[7, 0, m - 2:m + 3, m] = torch.tensor([0.5, 0.0, -1.0, 0.0, 0.5])
    return f


def build_energy(expert: str = "charbonnier"):
    """Unary + Pairwise + FieldOfExperts for a one-channel image with values in [0, 1]."""
    import torch

    from energycrf import energies

    potentials = {
        "charbonnier": lambda: energies.Charbonnier(eps=0.01),
        "huber": lambda: energies.Huber(delta=0.01),
        "student-t": lambda: energies.StudentT(alpha=1.0),
        "relu": lambda: energies.ReLUExpert(eps=1.0),
    }
    if expert not in potentials:
        raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
    scale = 10.0 if expert == "student-t" else 0.07  # Student-t is flat near 0: larger responses
    foe = energies.FieldOfExperts(channels=1, num_filters=8, kernel_size=KERNEL_SIZE, potential=potentials[expert]())
    with torch.no_grad():
        foe.weight.copy_(scale * derivative_filters(KERNEL_SIZE))
    pairwise = energies.Pairwise(channels=1, kernel=energies.LocalKernel(radius=1, sigma=1.0, strength=0.05))
    return energies.Unary(weight=1.0) + pairwise + foe


def energy_densities(E, y, x) -> dict:
    """Per-site energy of each built-in term, ``{name: [H, W] array}``; each map sums to the
    term's energy (checked). Computed from the terms' public operators:

    - unary: ``sum_k w_k (y_ik - x_ik)^2``;
    - pairwise: ``1/2 sum_j W_ij ||P(y_i - y_j)||^2 = 1/2 (d_i q_i - 2 y_i^T M (W y)_i + (W q)_i)``
      with ``q_j = y_j^T M y_j``;
    - Field of Experts: ``sum_m rho((J_m * y)_i)``, each window's energy at its centre.
    """
    import torch

    from energycrf import energies

    maps = {}
    with torch.no_grad():
        for name, term in zip(E.names, E.terms):
            if isinstance(term, energies.Unary):
                w = term.weight().to(y)
                w = w.reshape(1, -1, 1, 1) if w.dim() == 1 else w
                density = (w * (y - x) ** 2).sum(1)
            elif isinstance(term, energies.Pairwise):
                M = term.compatibility_matrix(None, y.shape[0], y.dtype, y.device)      # [B, C, C]
                My = torch.einsum("bcd,bdhw->bchw", M, y)
                q = (y * My).sum(1, keepdim=True)                                       # y_i^T M y_i
                d = term.degree(y.shape[-2], y.shape[-1], y.dtype, y.device)           # [H, W]
                density = 0.5 * (d * q[:, 0] - 2 * (My * term.message(y)).sum(1) + term.kernel.message(q)[:, 0])  # q has one channel
            elif isinstance(term, energies.FieldOfExperts):
                density = term.potential.rho(term.responses(y)).sum(1)
            else:
                continue
            total = float(term.energy(y, x, None).sum())
            if not math.isclose(float(density.sum()), total, rel_tol=1e-3, abs_tol=1e-3 * max(1.0, abs(total))):
                raise RuntimeError(f"density of {name} sums to {float(density.sum())}, its energy is {total}")
            maps[name] = density[0].cpu().numpy()
    return maps


def save_figure(path: Path, clean, noisy, solution, densities: dict, energies, psnr: dict, margin, args) -> None:
    """clean | noisy | solution | energy history, then one density map per term and the error."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    ncols = max(4, len(densities) + 1)
    fig, axes = plt.subplots(2, ncols, figsize=(3.2 * ncols, 6.6), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    images = [("clean", clean), (f"noisy, {psnr['noisy']:.2f} dB", noisy),
              (f"solution ({args.method}), {psnr['solution']:.2f} dB", solution)]
    for ax, (title, img) in zip(axes[0], images):
        ax.imshow(img[0, 0].clamp(0, 1).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    ax = axes[0, 3]
    ax.set_axis_on()
    ax.plot(energies.cpu().numpy(), marker=".")
    ax.set_xlabel("iteration")
    ax.set_ylabel("E(y | x)")
    ax.set_title("energy during the solve", fontsize=9)
    b = KERNEL_SIZE // 2  # the boundary artefact's width (BORDER_NOTE)

    def inner(a):
        return a[b:a.shape[0] - b, b:a.shape[1] - b] if min(a.shape) > 2 * b else a

    for ax, (name, density) in zip(axes[1], densities.items()):
        cropped = name == "field_of_experts"
        density = inner(density) if cropped else density
        im = ax.imshow(density, cmap="magma", vmin=min(0.0, float(density.min())),
                       vmax=max(float(np.percentile(density, 99.5)), 1e-12))  # a few edges would wash it out
        ax.set_title(f"{name} energy per site\n(at the solution{f', border {b} px cut*' if cropped else ''})",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax = axes[1, len(densities)]
    err = inner((solution - clean)[0, 0].abs().cpu().numpy())
    im = ax.imshow(err, cmap="viridis")
    ax.set_title(f"|solution - clean|\n(border {b} px cut*)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    margin_text = "unknown" if margin is None else f"{margin:.3g}"
    fig.suptitle(f"energycrf energy-demo: skimage.data.{args.image}(), noise sigma {args.sigma:g}/255, "
                 f"{args.expert} expert, convexity margin {margin_text}", fontsize=11)
    import textwrap

    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.text(0.01, 0.01, textwrap.fill("* " + BORDER_NOTE.format(b=b, k=KERNEL_SIZE), 190), fontsize=8,
             va="bottom", ha="left")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _psnr(y, clean) -> float:
    mse = float(((y - clean) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _print_table(header: list[str], rows: list[list]) -> None:
    cells = [header] + [[r[0]] + [f"{v:.4f}" for v in r[1:]] for r in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(wd) if k == 0 else c.rjust(wd) for k, (c, wd) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * wd for wd in widths))

