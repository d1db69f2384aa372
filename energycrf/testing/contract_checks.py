"""The checks of a term's contract with the rest of the package: sums and scalings, batches,
dtypes and devices, ``state_dict`` round trips, and the spectral promises
``convexity_margin`` and ``curvature_bound`` (see :mod:`energycrf.testing.conformance`).
"""

from __future__ import annotations

import math
import warnings

import torch

from .cases import Case
from .numerics import (ATOL, RTOL, MakeEnergy, _atol_for, _close, _num_terms, _slice_c, build, full_hessian,
                       randomize_parameters)

__all__ = [
    "check_sum",
    "check_scaling",
    "check_batch",
    "check_dtype",
    "check_device",
    "check_state_dict",
    "check_convexity_margin",
    "check_curvature_bound",
]


def check_sum(make_energy: MakeEnergy, case: Case, *, rtol=RTOL, atol=ATOL) -> None:
    """``E_a + E_b`` (and ``sum([E_a, E_b])``) adds energy, grad, curvature and margins;
    ``breakdown`` sums to the total; sums are flat."""
    ea = build(make_energy, case)
    eb = build(make_energy, case.replace(seed=case.seed + 1))
    y, x, c = case.inputs()
    total = ea + eb
    n_expected = _num_terms(ea) + _num_terms(eb)
    if len(total.terms) != n_expected:
        raise AssertionError(f"sum of {n_expected} terms is not flat: it has {len(total.terms)} terms")
    for s in (total, sum([ea, eb])):
        va, vb, vs = ea(y, x, c), eb(y, x, c), s(y, x, c)
        _close(vs, va + vb, "energy of a sum differs from the sum of energies", rtol, _atol_for(vs, atol=atol))
        gs = s.grad(y, x, c)
        _close(gs, ea.grad(y, x, c) + eb.grad(y, x, c), "grad of a sum", rtol, _atol_for(gs, atol=atol))
        As = s.curvature(y, x, c)
        _close(As, ea.curvature(y, x, c) + eb.curvature(y, x, c), "curvature of a sum", rtol,
               _atol_for(As, atol=atol))
    parts = total.breakdown(y, x, c)
    if not isinstance(parts, dict) or len(parts) != n_expected:
        raise AssertionError(f"breakdown must be a dict with {n_expected} entries, got {parts!r:.200}")
    _close(sum(parts.values()), total(y, x, c), "breakdown does not sum to the total", rtol,
           _atol_for(vs, atol=atol))
    if total.is_quadratic != (ea.is_quadratic and eb.is_quadratic):
        raise AssertionError("is_quadratic of a sum must be the AND of its terms'")
    ra, rb = ea.interaction_radius, eb.interaction_radius
    expected_r = None if ra is None or rb is None else max(ra, rb)
    if total.interaction_radius != expected_r:
        raise AssertionError(f"interaction_radius of a sum is {total.interaction_radius}, expected {expected_r}")
    if total.periodic != (ea.periodic or eb.periodic):
        raise AssertionError("periodic of a sum must be the OR of its terms'")
    ma, mb, ms = ea.convexity_margin(c), eb.convexity_margin(c), total.convexity_margin(c)
    if ma is None or mb is None:
        if ms is not None:
            raise AssertionError(f"a sum with an unknown margin reports {ms}, expected None")
    elif ms is None or not math.isclose(ms, ma + mb, rel_tol=1e-9, abs_tol=1e-9):
        raise AssertionError(f"convexity_margin of a sum is {ms}, expected {ma} + {mb}")


def check_scaling(make_energy: MakeEnergy, case: Case, *, rtol=RTOL, atol=ATOL) -> None:
    """``s * E`` and ``E * s`` (``s > 0``) scale energy, grad, curvature and the margin, and
    keep radius, periodicity and quadratic-ness."""
    energy = build(make_energy, case)
    y, x, c = case.inputs()
    s = float(case.uniform(0.25, 4.0, salt=77))
    v, g, A, m = energy(y, x, c), energy.grad(y, x, c), energy.curvature(y, x, c), energy.convexity_margin(c)
    for scaled in (s * energy, energy * s):
        _close(scaled(y, x, c), s * v, f"energy of {s} * E", rtol, _atol_for(v, atol=atol * s))
        _close(scaled.grad(y, x, c), s * g, f"grad of {s} * E", rtol, _atol_for(g, atol=atol * s))
        _close(scaled.curvature(y, x, c), s * A, f"curvature of {s} * E", rtol, _atol_for(A, atol=atol * s))
        ms = scaled.convexity_margin(c)
        if m is None:
            if ms is not None:
                raise AssertionError(f"margin of {s} * E is {ms} while E's is unknown (None)")
        elif ms is None or not math.isclose(ms, s * m, rel_tol=1e-9, abs_tol=1e-12):
            raise AssertionError(f"margin of {s} * E is {ms}, expected {s * m}")
        for flag in ("interaction_radius", "periodic", "is_quadratic"):
            if getattr(scaled, flag) != getattr(energy, flag):
                raise AssertionError(f"{flag} of a scaled energy differs from the term's")


def check_batch(make_energy: MakeEnergy, case: Case, *, rtol=RTOL, atol=ATOL) -> None:
    """A batch equals its stacked single items (energy, grad, curvature), conditions per sample."""
    energy = build(make_energy, case)
    y, x, c = case.inputs()
    v, g, A = energy(y, x, c), energy.grad(y, x, c), energy.curvature(y, x, c)
    items = [
        (energy(y[b : b + 1], x[b : b + 1], _slice_c(c, b)),
         energy.grad(y[b : b + 1], x[b : b + 1], _slice_c(c, b)),
         energy.curvature(y[b : b + 1], x[b : b + 1], _slice_c(c, b)))
        for b in range(case.batch)
    ]
    _close(v, torch.cat([i[0] for i in items]), "batched energy differs from single items", rtol, _atol_for(v, atol=atol))
    _close(g, torch.cat([i[1] for i in items]), "batched grad differs from single items", rtol, _atol_for(g, atol=atol))
    _close(A, torch.cat([i[2] for i in items]), "batched curvature differs from single items", rtol,
           _atol_for(A, atol=atol))


def check_dtype(make_energy: MakeEnergy, case: Case) -> None:
    """float32 and float64 inputs give outputs of that dtype (whatever the term was built in),
    and the two agree to float32 accuracy."""
    energy = build(make_energy, case, dtype=None)
    out = {}
    for dt in (torch.float32, torch.float64):
        y, x, c = case.inputs(dtype=dt)
        res = {
            "energy": energy(y, x, c),
            "grad": energy.grad(y, x, c),
            "curvature": energy.curvature(y, x, c),
        }
        res.update({f"breakdown[{k}]": t for k, t in energy.breakdown(y, x, c).items()})
        for what, t in res.items():
            if t.dtype != dt:
                raise AssertionError(f"{what} is {t.dtype} for {dt} inputs")
        out[dt] = res
    for what, t64 in out[torch.float64].items():
        _close(out[torch.float32][what].double(), t64, f"{what}: float32 and float64 disagree", 1e-3,
               _atol_for(t64, atol=1e-4))


def check_device(make_energy: MakeEnergy, case: Case, device: str | torch.device = "cuda") -> None:
    """On ``device`` (a CUDA device), outputs live on that device and match the CPU values."""
    energy = build(make_energy, case)
    y, x, c = case.inputs()
    ref = (energy(y, x, c), energy.grad(y, x, c), energy.curvature(y, x, c))
    energy = energy.to(device)
    y, x, c = case.inputs(device=device)
    got = (energy(y, x, c), energy.grad(y, x, c), energy.curvature(y, x, c))
    for what, r, t in zip(("energy", "grad", "curvature"), ref, got):
        if t.device.type != torch.device(device).type:
            raise AssertionError(f"{what} is on {t.device} for inputs on {device}")
        _close(t.cpu(), r, f"{what} on {device} differs from CPU", 1e-7, _atol_for(r, atol=1e-7))


def check_state_dict(make_energy: MakeEnergy, case: Case, *, rtol=RTOL, atol=ATOL) -> None:
    """A term with randomised parameters, loaded into a freshly built one, gives the same energy."""
    e1 = build(make_energy, case)
    randomize_parameters(e1, case.generator(99))
    e2 = build(make_energy, case.replace(init_seed=case.init_seed + 1))
    sd = e1.state_dict()
    if set(sd) != set(e2.state_dict()):
        raise AssertionError(f"state_dict keys differ between two builds: {sorted(set(sd) ^ set(e2.state_dict()))}")
    e2.load_state_dict(sd)
    y, x, c = case.inputs()
    v1 = e1(y, x, c)
    _close(e2(y, x, c), v1, "energy after load_state_dict differs", rtol, _atol_for(v1, atol=atol))
    _close(e2.grad(y, x, c), e1.grad(y, x, c), "grad after load_state_dict differs", rtol, _atol_for(v1, atol=atol))


def _well_posed_types():
    import energycrf as ec

    for mod in (ec, getattr(ec, "energies", None)):
        if mod is not None and hasattr(mod, "IllPosedEnergyError"):
            return mod.IllPosedEnergyError, getattr(mod, "EnergyWarning", Warning)
    raise AssertionError("energycrf exports no IllPosedEnergyError")


def _sample_spectra(energy, case: Case, y, x, c, atol) -> tuple[list[torch.Tensor], float]:
    """The eigenvalues of each sample's Hessian at ``y`` and the tolerance for comparing them."""
    hess = full_hessian(energy, y, x, c)
    B, n = case.batch, math.prod(case.shape[1:])
    hr = hess.reshape(B, n, B, n)
    return [torch.linalg.eigvalsh(hr[b, :, b]) for b in range(B)], _atol_for(hess, atol=atol)


def check_convexity_margin(make_energy: MakeEnergy, case: Case, *, required: bool = False, atol=1e-8) -> None:
    """``convexity_margin(c)`` (a float, or None when unknown; required for built-in terms)
    bounds the smallest eigenvalue of each sample's Hessian from below at a random point,
    and ``check_well_posed`` passes when it is > 0 and fails (raise / warn) when it is <= 0."""
    energy = build(make_energy, case)
    y, x, c = case.inputs()
    m = energy.convexity_margin(c)
    if m is None:
        if required:
            raise AssertionError("convexity_margin is required (built-in terms must report it), got None")
        return
    if isinstance(m, torch.Tensor) or not isinstance(m, (int, float)) or isinstance(m, bool):
        raise AssertionError(f"convexity_margin must be a python float or None, got {type(m).__name__}")
    if math.isnan(m):
        raise AssertionError("convexity_margin is NaN (None when unknown)")
    spectra, tol = _sample_spectra(energy, case, y, x, c, atol)
    for spectrum in spectra:
        lam = float(spectrum.min())
        if not lam >= m - tol:  # NaN fails too
            raise AssertionError(f"convexity_margin {m:.6g} exceeds the Hessian's smallest eigenvalue {lam:.6g}")
    error, warning = _well_posed_types()
    if m > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("error", warning)
            energy.check_well_posed(c, on_fail="raise")
            energy.check_well_posed(c, on_fail="warn")
    else:
        try:
            energy.check_well_posed(c, on_fail="raise")
        except error:
            pass
        else:
            raise AssertionError(f"check_well_posed(on_fail='raise') passed with margin {m}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            energy.check_well_posed(c, on_fail="warn")
        if not any(issubclass(w.category, warning) for w in caught):
            raise AssertionError(f"check_well_posed(on_fail='warn') gave no {warning.__name__} with margin {m}")


def check_curvature_bound(make_energy: MakeEnergy, case: Case, *, atol=1e-8) -> None:
    """``curvature_bound(H, W, c)`` (a float, or None when unknown) bounds the largest eigenvalue
    of each sample's Hessian from above at a random point, and is at least the convexity margin."""
    energy = build(make_energy, case)
    y, x, c = case.inputs()
    bound = energy.curvature_bound(y.shape[-2], y.shape[-1], c)
    if bound is None:
        return
    if isinstance(bound, torch.Tensor) or not isinstance(bound, (int, float)) or isinstance(bound, bool):
        raise AssertionError(f"curvature_bound must be a python float or None, got {type(bound).__name__}")
    if not math.isfinite(bound):
        raise AssertionError(f"curvature_bound must be finite (None when unknown), got {bound}")
    spectra, tol = _sample_spectra(energy, case, y, x, c, atol)
    for spectrum in spectra:
        lam = float(spectrum.max())
        if not lam <= bound + tol:  # NaN fails too
            raise AssertionError(f"curvature_bound {bound:.6g} is below the Hessian's largest eigenvalue {lam:.6g}")
    margin = energy.convexity_margin(c)
    if margin is not None and not margin <= bound + tol:
        raise AssertionError(f"curvature_bound {bound:.6g} is below convexity_margin {margin:.6g}")
