"""``ec.compare_solvers``: run several methods on one energy, tabulate and plot them.

The reference is the lowest total energy any method reached, :math:`E^\\star`; the gap of a
method at iteration ``t`` is the relative gap of the batch's total energy,
:math:`(E_t - E^\\star) / |E^\\star|`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .api import SOLVERS, get_solver, method_names
from .options import check_start
from .problem import Problem
from .start import quadratic_start_operator
from .result import SolveResult

__all__ = ["compare_solvers", "parse_method", "Comparison", "ComparisonRow", "DEFAULT_METHODS",
           "default_methods"]


def default_methods() -> tuple[str, ...]:
    """The methods :func:`compare_solvers` runs when none are named: every registered method
    (:data:`~energycrf.solvers.SOLVERS`, in registry order, a user's included), except variants,
    classes that subclass another registered method's class (``sequential`` is
    ``coordinate_descent`` one site at a time): they run when named."""
    method_names()  # the installed packages' solvers join the registry first
    classes = list(SOLVERS.values())
    return tuple(name for name, cls in SOLVERS.items()
                 if not any(other is not cls and issubclass(cls, other) for other in classes))


def __getattr__(name: str):
    if name == "DEFAULT_METHODS":  # read from the registry when asked, so it includes a user's methods
        return default_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ComparisonRow:
    method: str
    energy: float  # total over the batch
    gap: float  # (energy - best) / |best|
    iterations: int
    seconds: float
    status: str  # "converged", "max_iters", "diverged", "stalled", a mix like "converged x3, max_iters x1", or "skipped: ..."
    iterations_to_gap: int | None = None
    seconds_to_gap: float | None = None


@dataclass
class Comparison:
    """The table of :func:`compare_solvers`, the runs behind it, and the figure helper."""

    rows: list[ComparisonRow]
    results: dict[str, SolveResult]
    best_energy: float
    target_gap: float
    skipped: dict[str, str] = field(default_factory=dict)

    def gap_curve(self, method: str) -> Tensor:
        """The relative gap of the total energy at each iteration of ``method``."""
        total = self.results[method].energies.detach().cpu().to(torch.float64).sum(1)
        return (total - self.best_energy) / max(abs(self.best_energy), 1e-300)

    def to_markdown(self) -> str:
        head = (
            "| method | final energy | gap to best | iterations | seconds | "
            f"iterations to {self.target_gap:g} | seconds to {self.target_gap:g} | status |\n"
            "|---|---:|---:|---:|---:|---:|---:|---|\n"
        )

        def fmt(v, spec):
            return "-" if v is None else format(v, spec)

        body = "".join(
            f"| {r.method} | {r.energy:.10g} | {r.gap:.2e} | {r.iterations} | {r.seconds:.3f} | "
            f"{fmt(r.iterations_to_gap, 'd')} | {fmt(r.seconds_to_gap, '.3f')} | {r.status} |\n"
            for r in self.rows
        )
        return head + body

    def __str__(self) -> str:
        return self.to_markdown()

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Energy gap against iterations and against wall time (log scale); saved to ``path`` if given."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, (ax_it, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
        floor = 1e-16
        for name, res in self.results.items():
            gap = self.gap_curve(name).clamp_min(floor).numpy()
            its = range(len(gap))
            ax_it.plot(its, gap, label=name, lw=1.6)
            ax_t.plot(res.times.numpy(), gap, label=name, lw=1.6)
        for ax, xl in ((ax_it, "iteration"), (ax_t, "wall time [s]")):
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel("relative energy gap  (E - E*) / |E*|")
            ax.axhline(self.target_gap, color="0.6", ls=":", lw=1)
            ax.grid(True, which="both", alpha=0.25)
        ax_t.set_xscale("symlog", linthresh=1e-2)
        ax_t.set_xlim(left=0)
        ax_it.legend(fontsize=8)
        fig.suptitle(title or "energy gap to the best energy found")
        fig.tight_layout()
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """A method of :func:`compare_solvers`: ``"name"``, or ``"name:key=value:key=value"`` for the
    method with options (``"lbfgs:precondition=chebyshev:degree=3"``), so that variants of one
    method can be compared. Values are read as ``true``/``false``, ``none``, ints, floats, or
    else strings. Returns ``(name, options)``."""
    if not isinstance(spec, str):
        raise TypeError(f"methods: expected method names (str), got {type(spec).__name__}")
    name, *parts = spec.split(":")
    options: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"methods: expected 'name' or 'name:key=value:...', got {spec!r}")
        if key.strip() in options:
            raise ValueError(f"methods: option {key.strip()!r} given twice in {spec!r}")
        options[key.strip()] = _option_value(value.strip())
    return name.strip(), options


def _option_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _status_summary(res: SolveResult) -> str:
    counts: dict[str, int] = {}
    for s in res.status:
        counts[s] = counts.get(s, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k} x{v}" for k, v in counts.items())


def compare_solvers(
    E: Any,
    x: Tensor,
    c: Tensor | None = None,
    methods: list[str] | tuple[str, ...] | None = None,
    *,
    y0: Tensor | str | None = None,
    max_iters: int | dict[str, int] = 200,
    tol: float | None = None,
    gtol: float | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    target_gap: float = 1e-6,
    figure: str | Path | None = None,
    progress: bool = False,
    warmup: bool = True,
) -> Comparison:
    """Run ``methods`` on the same problem and compare them against the best energy found.

    Methods that do not apply to this energy (``fft`` on a non-quadratic energy,
    ``coordinate_descent`` with global coupling, ...) are skipped, with the reason in the
    table; a ``ValueError`` is raised only when none applies.

    Args:
        methods: registry names (default: :func:`default_methods`, every registered method but
            variants), each optionally with options, ``"name:key=value:..."``
            (:func:`parse_method`): ``["lbfgs:precondition=fft",
            "lbfgs:precondition=chebyshev"]`` compares two preconditioners. Such a label is the
            row's name; its options override those given for the name in ``options``.
        y0: the common start: ``None`` (``x``), a tensor, or ``"quadratic"`` (the minimiser
            of the quadratic part, see :meth:`Solver.solve`; methods it does not apply to
            are skipped).
        max_iters: one budget for all, or per method (by label, else by name).
        options: per-method options, e.g. ``{"mean_field": {"damping": 0.5}}`` (by name or label).
        target_gap: the relative gap for the "iterations/seconds to gap" columns.
        figure: save the gap-vs-iterations / gap-vs-time figure there.
        warmup: run each method for one iteration (none with a budget of 0), untimed, on a
            solver object of its own and discarded, before its timed run, so that one-time
            costs do not fall on whichever method meets them first:
            oneDNN's kernels compiled per convolution shape, FFT plans, the allocator's first
            buffers, a library's first call.

    Returns:
        A :class:`Comparison` (``.rows``, ``.results``, ``.to_markdown()``, ``.plot()``).

    Example:
        >>> import torch, energycrf as ec
        >>> E = ec.energies.Unary() + ec.energies.Pairwise(channels=1)
        >>> x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
        >>> table = ec.compare_solvers(E, x, methods=["coordinate_descent", "conjugate_gradient"])
        >>> [r.method for r in table.rows]
        ['coordinate_descent', 'conjugate_gradient']
    """
    methods = list(default_methods() if methods is None else methods)
    specs = {m: parse_method(m) for m in methods}
    unknown = [m for m, (name, _) in specs.items() if name not in method_names()]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected names from {method_names()}")
    if not methods:
        raise ValueError("methods: expected at least one method name")
    if len(specs) < len(methods):
        raise ValueError(f"methods: each label once, got {methods}")
    # the start depends on the energy, not on the method: refuse a bad one here, not as "no method applies"
    problem = Problem(E, x, c)  # checks E, x and c
    if check_start(y0, x) == "quadratic":
        quadratic_start_operator(problem)
    options = dict(options or {})
    method_options = {m: {**options.get(name, {}), **(options.get(m, {}) if m != name else {}), **own}
                      for m, (name, own) in specs.items()}
    for m, (name, _) in specs.items():  # bad options are the caller's error, not "does not apply": raise now
        get_solver(name, **method_options[m])
    results: dict[str, SolveResult] = {}
    skipped: dict[str, str] = {}
    for m in methods:
        name = specs[m][0]
        budget = max_iters.get(m, max_iters.get(name, 200)) if isinstance(max_iters, dict) else max_iters

        def run(iters, **kw):  # a solver object of its own per run
            return get_solver(name, **method_options[m]).solve(
                E, x, c, y0=y0, max_iters=iters, tol=tol, gtol=gtol, on_diverge="ignore", **kw)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # divergence is reported in the table
                if warmup:  # one-time costs, untimed (see the docstring)
                    run(min(1, budget))
                results[m] = run(budget, progress=progress)
        except ValueError as err:  # the method does not apply to this energy
            skipped[m] = str(err)
    if not results:
        raise ValueError(f"no method applies to this energy: {skipped}")
    finite = [float(r.energies.to(torch.float64).sum(1).min()) for r in results.values()
              if torch.isfinite(r.energies).all()]
    best = min(finite) if finite else float("nan")
    rows = []
    comp = Comparison(rows=rows, results=results, best_energy=best, target_gap=target_gap, skipped=skipped)
    for m, res in results.items():
        gap = comp.gap_curve(m)
        hit = torch.nonzero(gap <= target_gap).flatten()
        k = int(hit[0]) if len(hit) else None
        rows.append(
            ComparisonRow(
                method=m,
                energy=float(res.energies[-1].to(torch.float64).sum()),
                gap=float(gap[-1]),
                iterations=res.num_iterations,
                seconds=res.wall_time,
                status=_status_summary(res),
                iterations_to_gap=k,
                seconds_to_gap=None if k is None else float(res.times[k]),
            )
        )
    for m, why in skipped.items():
        rows.append(ComparisonRow(m, float("nan"), float("nan"), 0, 0.0, "skipped: " + why.split(". ")[0]))
    if figure is not None:
        comp.plot(figure)
    return comp
