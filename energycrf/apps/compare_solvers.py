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

from ._command import UsageError, announce, check_input_file, check_non_quadratic_methods, check_output_dir, integer, number
from ._command import one_of, path, plural, progress_bar
from ._command import atomic_path, write_text
from .photographs import PHOTOGRAPHS

__all__ = ["add_arguments", "run", "load_latent", "noisy_photograph", "default_energy"]


FILES = ("table.md", "gap.png")
LATENT_SUFFIXES = (".safetensors", ".npy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("problem")
    src.add_argument("--image", type=one_of(PHOTOGRAPHS, "a skimage.data photograph"), default="camera",
                     help="a skimage.data photograph (default: camera)")
    src.add_argument("--size", type=integer(minimum=1), default=128,
                     help="resize the photograph to SIZE x SIZE (default 128)")
    src.add_argument("--sigma", type=number(minimum=0.0), default=25.0,
                     help="noise standard deviation in 1/255 units (default 25)")
    src.add_argument("--seed", type=integer(minimum=0), default=0, help="seed of the noise and of the FoE filters")
    src.add_argument("--latent", type=path, default=None, help="a saved latent (.safetensors or .npy) instead of the photograph")
    src.add_argument("--key", default=None, help="the tensor's name inside a .safetensors file")
    en = parser.add_argument_group("energy")
    en.add_argument("--unary-weight", type=number(positive=True), default=1.0,
                    help="weight of the data term, a positive number (default 1)")
    en.add_argument("--pairwise-strength", type=number(minimum=0.0), default=1.0,
                    help="interior degree of the Gaussian radius-2 kernel")
    en.add_argument("--filters", type=integer(minimum=1), default=8, help="FoE filters (paper ReLU expert)")
    en.add_argument("--kernel-size", type=integer(minimum=1, odd=True), default=5,
                    help="side of the FoE filters, odd (a centred window; default 5)")
    en.add_argument("--filter-scale", type=number(minimum=0.0), default=0.1, help="L2 norm of each FoE filter")
    run_ = parser.add_argument_group("solvers")
    run_.add_argument("--methods", default=None,
                      help="comma-separated registry names, each optionally with options as "
                           "name:key=value:... (e.g. lbfgs:precondition=fft,lbfgs:precondition=chebyshev; "
                           "default: all that apply)")
    run_.add_argument("--max-iters", type=integer(minimum=1), default=200,
                      help="iterations of each method at most (default 200)")
    run_.add_argument("--tol", type=number(minimum=0.0), default=None,
                      help="relative energy change at which a method stops, a number >= 0 "
                           "(default: the solvers' own, from the dtype)")
    run_.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                      help="precision of the problem and the solves (default float64)")
    run_.add_argument("--start", choices=("x", "quadratic"), default="x",
                      help="start every method at x or at the minimiser of the quadratic part (default x)")
    run_.add_argument("--out-dir", type=path, default=Path("compare-solvers"),
                      help="where table.md and gap.png are written (default ./compare-solvers)")
    run_.add_argument("--overwrite", action="store_true", help="replace table.md and gap.png of an earlier run")
    run_.add_argument("--progress", dest="progress", action="store_true", default=True,
                      help="show the progress bar (the default)")
    run_.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    run_.add_argument("--no-warmup", dest="warmup", action="store_false",
                      help="no untimed warm-up iteration before each method's timed run (by default one goes "
                           "first, so that one-time costs such as kernel compilation are not timed)")


def noisy_photograph(name: str = "camera", size: int = 128, sigma: float = 25.0, seed: int = 0):
    """``(x, clean)``: a grayscale ``skimage.data`` photograph in ``[0, 1]`` resized to
    ``[1, 1, size, size]`` float64, and the same with the project's noise protocol
    (:func:`energycrf.apps.photographs.add_gaussian_noise`: std ``sigma / 255``, unclipped)."""
    import torch

    from .photographs import add_gaussian_noise, load_photograph

    if name not in PHOTOGRAPHS:
        raise UsageError("--image", "a skimage.data photograph such as 'camera'", repr(name))
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise UsageError("--size", "a positive int", repr(size))
    clean = load_photograph(name, size, square=True)
    noisy = add_gaussian_noise(clean, sigma, seed)
    return torch.from_numpy(noisy)[None, None], torch.from_numpy(clean)[None, None]


def load_latent(path: Path, key: str | None = None):
    """A ``[B, C, H, W]`` tensor from a ``.safetensors`` (no pickle) or ``.npy`` file."""
    import numpy as np
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError("--latent", "an existing file", f"{str(path)!r} (no such file)")
    if path.suffix == ".npy":
        t = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if key is None:
            if len(tensors) != 1:
                raise UsageError("--key", f"the name of one of the tensors {sorted(tensors)} in {path.name}", "none")
            key = next(iter(tensors))
        if key not in tensors:
            raise UsageError("--key", f"one of the tensors {sorted(tensors)} in {path.name}", repr(key))
        t = tensors[key]
    else:
        raise UsageError("--latent", "a .safetensors or .npy file", repr(path.name))
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or not t.is_floating_point():
        raise UsageError("--latent", "a floating [B, C, H, W] or [C, H, W] array", f"{t.dtype} {tuple(t.shape)}")
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


def check_methods(specs: list[str] | None) -> None:
    """``--methods``: registry names with valid options, each once, and one at least that can
    minimise this command's non-quadratic energy (needs the registry: imports the solvers)."""
    from ..solvers import get_solver, method_names
    from ..solvers.compare import parse_method

    names = []
    for spec in specs or ():
        try:
            name, options = parse_method(spec)
            if name not in method_names():
                raise ValueError(f"unknown method {name!r}")
            get_solver(name, **options)
        except (ValueError, TypeError) as err:
            detail = " ".join(str(err).split()).removeprefix("methods: ")
            raise UsageError("--methods", f"registry names ({', '.join(method_names())}), each optionally "
                             "name:key=value:...", f"{spec!r} ({detail})") from None
        names.append(name)
    repeated = sorted({spec for spec in specs or () if specs.count(spec) > 1})
    if repeated:
        raise UsageError("--methods", "each method once", f"{', '.join(map(repr, repeated))} more than once")
    if specs:
        check_non_quadratic_methods("--methods", specs, names)


def run(args: argparse.Namespace) -> int:
    if args.latent is not None:
        if args.latent.suffix not in LATENT_SUFFIXES:
            raise UsageError("--latent", "a .safetensors or .npy file", repr(str(args.latent)))
        check_input_file(args.latent, "--latent", LATENT_SUFFIXES, what="a saved latent")
    out = check_output_dir(args.out_dir, "--out-dir", FILES,
                           inputs=[args.latent] if args.latent is not None else [], overwrite=args.overwrite)
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    if methods is not None and not methods:
        raise UsageError("--methods", "at least one method name", repr(args.methods))
    check_methods(methods)

    import torch

    from ..solvers.compare import default_methods

    dtype = getattr(torch, args.dtype)
    if args.latent is not None:
        try:
            x = load_latent(args.latent, args.key).to(dtype)
        except UsageError:
            raise
        except Exception as err:  # a truncated or foreign file
            raise UsageError("--latent", "a readable .safetensors or .npy latent",
                             f"{str(args.latent)!r} ({' '.join(str(err).split())})") from err
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise UsageError("--latent", "a latent with finite values",
                             f"{str(args.latent)!r} ({bad} of {x.numel()} values NaN or infinite)")
        what = f"latent {args.latent.name} {tuple(x.shape)}"
    else:
        x, _ = noisy_photograph(args.image, args.size, args.sigma, args.seed)
        x = x.to(dtype)
        what = f"skimage {args.image} {args.size}x{args.size}, sigma {args.sigma:g}/255"
    E = default_energy(x.shape[1], args.unary_weight, args.pairwise_strength, args.filters,
                       args.kernel_size, args.filter_scale, args.seed).to(dtype)
    margin = E.check_well_posed(on_fail="warn")
    methods = list(default_methods()) if methods is None else methods
    announce("compare-solvers", f"{plural(len(methods), 'method')} on {what}, up to {args.max_iters} iterations each"
             + (", one untimed warm-up iteration first" if args.warmup else ""))
    with progress_bar(len(methods), "compare-solvers", args.progress, unit="method") as bar:
        comp = compare_each(E, x, methods, bar, y0=None if args.start == "x" else args.start,
                            max_iters=args.max_iters, tol=args.tol, warmup=args.warmup)
    header = (
        f"# Solver comparison\n\nProblem: {what}; energy Unary + Pairwise + FieldOfExperts "
        f"(convexity margin {'unknown' if margin is None else format(margin, '.4g')}); dtype {args.dtype}; start {args.start}; best energy {comp.best_energy:.12g}; "
        + ("times after one untimed iteration of each method" if args.warmup
           else "times without an untimed warm-up iteration") + ".\n\n"
    )
    table = comp.to_markdown() + "".join(f"\n{m}: skipped ({why})" for m, why in comp.skipped.items())
    write_text(out / "table.md", header + table + "\n")
    with atomic_path(out / "gap.png") as tmp:
        comp.plot(tmp, title=f"energy gap, {what}")
    print(table)
    print(f"wrote {out / 'table.md'} and {out / 'gap.png'}")
    return 0


def compare_each(E, x, methods: list[str], bar, **options):
    """:func:`energycrf.solvers.compare_solvers` one method at a time (each run as it would be
    in one call: its own solver, warm-up and timing), so that ``bar`` advances per method;
    then one :class:`~energycrf.solvers.Comparison` against the best energy of all, as
    ``compare_solvers`` builds it. Methods that do not apply are in ``.skipped`` (first
    sentence of the reason), not in the rows."""
    import ast
    import dataclasses
    import math

    import torch

    from ..solvers.compare import Comparison, compare_solvers

    runs, skipped = {}, {}
    for m in methods:
        bar.set_description_str(f"compare-solvers: {m}")
        try:
            runs[m] = compare_solvers(E, x, methods=[m], **options)
        except ValueError as err:
            prefix = "no method applies to this energy: "
            if not str(err).startswith(prefix):
                raise
            try:
                reason = ast.literal_eval(str(err)[len(prefix):])[m]
            except (ValueError, SyntaxError, KeyError, TypeError):
                reason = str(err)[len(prefix):]
            skipped[m] = " ".join(reason.split()).split(". ")[0]
        bar.update(1)
    bar.set_description_str("compare-solvers")
    if not runs:
        raise ValueError("no method applies to this energy: " + "; ".join(f"{m}: {why}" for m, why in skipped.items()))
    results = {m: comp.results[m] for m, comp in runs.items()}
    finite = [float(r.energies.to(torch.float64).sum(1).min()) for r in results.values()
              if torch.isfinite(r.energies).all()]
    target = next(iter(runs.values())).target_gap
    comp = Comparison(rows=[], results=results, best_energy=min(finite) if finite else math.nan,
                      target_gap=target, skipped=skipped)
    for m, one in runs.items():  # the gaps again, against the best of all methods
        gap = comp.gap_curve(m)
        hit = torch.nonzero(gap <= target).flatten()
        k = int(hit[0]) if len(hit) else None
        comp.rows.append(dataclasses.replace(one.rows[0], gap=float(gap[-1]), iterations_to_gap=k,
                                             seconds_to_gap=None if k is None else float(results[m].times[k])))
    return comp
