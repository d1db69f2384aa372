"""Compare inference solvers on a real problem and write a table and a PNG (energycrf compare-solvers).

The built-in problem is a ``skimage.data`` photograph (grayscale, in ``[0, 1]``) with
Gaussian noise, and the energy ``Unary + Pairwise + FieldOfExperts`` (``C = 1``); or pass
``--latent`` with a saved latent (``.safetensors``: the tensor named ``--key`` or the only
one; ``.npy``), shaped ``[B, C, H, W]`` or ``[C, H, W]``.

Example::

    energycrf compare-solvers --size 128 --out-dir /tmp/cmp
    energycrf compare-solvers --latent z.safetensors --methods mean_field,lbfgs,scipy_lbfgs
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run", "load_latent", "noisy_photograph", "default_energy"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("problem")
    src.add_argument("--image", default="camera", help="a skimage.data photograph (default: camera)")
    src.add_argument("--size", type=int, default=128, help="resize the photograph to SIZE x SIZE (default 128)")
    src.add_argument("--sigma", type=float, default=25.0, help="noise standard deviation in 1/255 units (default 25)")
    src.add_argument("--seed", type=int, default=0, help="seed of the noise and of the FoE filters")
    src.add_argument("--latent", type=Path, default=None, help="a saved latent (.safetensors or .npy) instead of the photograph")
    src.add_argument("--key", default=None, help="the tensor's name inside a .safetensors file")
    en = parser.add_argument_group("energy")
    en.add_argument("--unary-weight", type=float, default=1.0)
    en.add_argument("--pairwise-strength", type=float, default=1.0, help="interior degree of the Gaussian radius-2 kernel")
    en.add_argument("--filters", type=int, default=8, help="FoE filters (paper ReLU expert)")
    en.add_argument("--kernel-size", type=int, default=5)
    en.add_argument("--filter-scale", type=float, default=0.1, help="L2 norm of each FoE filter")
    run_ = parser.add_argument_group("solvers")
    run_.add_argument("--methods", default=None,
                      help="comma-separated registry names, each optionally with options as "
                           "name:key=value:... (e.g. lbfgs:precondition=fft,lbfgs:precondition=chebyshev; "
                           "default: all that apply)")
    run_.add_argument("--max-iters", type=int, default=200)
    run_.add_argument("--tol", type=float, default=None)
    run_.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    run_.add_argument("--start", choices=("x", "quadratic"), default="x",
                      help="start every method at x or at the minimiser of the quadratic part (default x)")
    run_.add_argument("--out-dir", type=Path, default=Path("compare-solvers"),
                      help="where table.md and gap.png are written (default ./compare-solvers)")
    run_.add_argument("--progress", action="store_true", help="show tqdm bars")
    run_.add_argument("--no-warmup", dest="warmup", action="store_false",
                      help="no untimed warm-up iteration before each method's timed run (by default one goes "
                           "first, so that one-time costs such as kernel compilation are not timed)")


def noisy_photograph(name: str = "camera", size: int = 128, sigma: float = 25.0, seed: int = 0):
    """``(x, clean)``: a grayscale ``skimage.data`` photograph in ``[0, 1]`` resized to
    ``[1, 1, size, size]`` float64, and the same with the project's noise protocol
    (:func:`energycrf.apps.photographs.add_gaussian_noise`: std ``sigma / 255``, unclipped)."""
    import torch

    from .photographs import PHOTOGRAPHS, add_gaussian_noise, load_photograph

    if name not in PHOTOGRAPHS:
        raise ValueError(f"--image: expected a skimage.data photograph such as 'camera', got {name!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"--size: expected a positive int, got {size}")
    clean = load_photograph(name, size, square=True)
    noisy = add_gaussian_noise(clean, sigma, seed)
    return torch.from_numpy(noisy)[None, None], torch.from_numpy(clean)[None, None]


def load_latent(path: Path, key: str | None = None):
    """A ``[B, C, H, W]`` tensor from a ``.safetensors`` (no pickle) or ``.npy`` file."""
    import numpy as np
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--latent: no such file {str(path)!r}")
    if path.suffix == ".npy":
        t = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if key is None:
            if len(tensors) != 1:
                raise ValueError(f"--key: {path.name} holds {sorted(tensors)}; name one")
            key = next(iter(tensors))
        if key not in tensors:
            raise ValueError(f"--key: {key!r} not in {path.name} (it holds {sorted(tensors)})")
        t = tensors[key]
    else:
        raise ValueError(f"--latent: expected a .safetensors or .npy file, got {path.name!r}")
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or not t.is_floating_point():
        raise ValueError(f"--latent: expected a floating [B, C, H, W] or [C, H, W] array, got {t.dtype} {tuple(t.shape)}")
    return t


def default_energy(channels: int, unary_weight: float = 1.0, pairwise_strength: float = 1.0,
                   filters: int = 8, kernel_size: int = 5, filter_scale: float = 0.1, seed: int = 0,
                   compatibility=None):
    """``Unary + Pairwise(Gaussian radius 2) + FieldOfExperts(paper ReLU expert)`` with seeded filters
    (``compatibility``: the Pairwise term's, default the identity)."""
    import torch

    import energycrf as ec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return (
            ec.energies.Unary(weight=unary_weight)
            + ec.energies.Pairwise(channels=channels, compatibility=compatibility,
                                   kernel=ec.energies.LocalKernel(radius=2, sigma=1.0, strength=pairwise_strength))
            + ec.energies.FieldOfExperts(channels=channels, num_filters=filters, kernel_size=kernel_size,
                                         init_scale=filter_scale)
        )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..solvers.compare import compare_solvers

    dtype = getattr(torch, args.dtype)
    if args.latent is not None:
        x = load_latent(args.latent, args.key).to(dtype)
        what = f"latent {args.latent.name} {tuple(x.shape)}"
    else:
        x, _ = noisy_photograph(args.image, args.size, args.sigma, args.seed)
        x = x.to(dtype)
        what = f"skimage {args.image} {args.size}x{args.size}, sigma {args.sigma:g}/255"
    E = default_energy(x.shape[1], args.unary_weight, args.pairwise_strength, args.filters,
                       args.kernel_size, args.filter_scale, args.seed).to(dtype)
    margin = E.check_well_posed(on_fail="warn")
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    comp = compare_solvers(E, x, methods=methods, y0=None if args.start == "x" else args.start,
                           max_iters=args.max_iters, tol=args.tol, progress=args.progress,
                           warmup=args.warmup)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Solver comparison\n\nProblem: {what}; energy Unary + Pairwise + FieldOfExperts "
        f"(convexity margin {'unknown' if margin is None else format(margin, '.4g')}); dtype {args.dtype}; start {args.start}; best energy {comp.best_energy:.12g}; "
        + ("times after one untimed iteration of each method" if args.warmup
           else "times without an untimed warm-up iteration") + ".\n\n"
    )
    (out / "table.md").write_text(header + comp.to_markdown(), encoding="utf-8")
    comp.plot(out / "gap.png", title=f"energy gap, {what}")
    print(comp.to_markdown())
    print(f"wrote {out / 'table.md'} and {out / 'gap.png'}")
    return 0
