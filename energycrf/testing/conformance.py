"""Conformance checks every energy term must pass, as plain functions.

Each check has the form ``check_<name>(make_energy, case, **options)``: it builds the
energy with ``make_energy(case)`` (an :class:`energycrf.Energy`), draws inputs from the
:class:`~energycrf.testing.Case` and raises ``AssertionError`` with a precise message
when the term breaks the contract. :func:`check_energy` runs all of them over a list of
cases and reports every failure at once.

What is checked (``E`` the energy, ``g = grad E``, ``A_i`` the per-site curvature blocks):

- ``grad`` equals autograd (``torch.func.grad`` of ``E(y, x, c).sum()``) in float64, and
  ``E`` passes ``torch.autograd.gradcheck`` with respect to ``y``, ``x`` and the parameters;
- ``curvature`` gives symmetric PSD ``C x C`` blocks; for quadratic terms they are the
  Hessian's diagonal blocks; for every term they majorise ``E`` on sets ``S`` of
  non-interacting sites::

      E(y + delta_S) <= E(y) + g . delta + 1/2 sum_{i in S} delta_i^T A_i delta_i

  (an equality for quadratic terms);
- ``interaction_radius``: Hessian blocks of sites farther apart (Chebyshev distance, with
  wrap-around when ``periodic``) are zero, and samples of a batch never interact;
- ``translation_invariant`` (when a term claims it): the Hessian's response to a unit
  impulse is the same stencil at every site at least ``interaction_radius`` from the border
  (every site when ``periodic``), at any ``y`` and ``x``;
- sums and positive scalings add and scale ``E``, ``grad``, ``curvature`` and the margin;
- a batch equals its stacked single items (with per-sample conditions);
- outputs follow the input's dtype and device;
- ``state_dict`` round-trips into a freshly built term;
- ``convexity_margin(c)`` is a lower bound on the smallest Hessian eigenvalue, and
  ``check_well_posed`` agrees with its sign;
- ``curvature_bound(H, W, c)``, when given, is an upper bound on the largest one.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch

from .cases import DEFAULT_CASES, Case

MakeEnergy = Callable[[Case], torch.nn.Module]

RTOL = 1e-9
ATOL = 1e-9


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    if dtype == torch.float64:
        return module.double()
    if dtype == torch.float32:
        return module.float()
    return module.to(dtype)


def build(make_energy: MakeEnergy, case: Case, dtype: torch.dtype | None = "case"):
    """``make_energy(case)``, checked to be an ``nn.Module``, cast to ``case.dtype``
    (``dtype=None`` keeps the dtype the factory built it in)."""
    energy = make_energy(case)
    if not isinstance(energy, torch.nn.Module):
        raise TypeError(
            f"make_energy must return an energycrf.Energy (an nn.Module), got {type(energy).__name__}"
        )
    if dtype == "case":
        dtype = case.dtype
    return energy if dtype is None else _cast(energy, dtype)


def _close(actual, expected, what: str, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol,
        msg=lambda m: f"{what}:\n{m}",
    )


def _atol_for(*tensors, atol=ATOL) -> float:
    """An absolute tolerance scaled by the magnitude of the values compared."""
    mag = max((float(t.detach().abs().max()) for t in tensors if t is not None and t.numel()), default=1.0)
    return atol * max(1.0, mag)


def _slice_c(c, b: int):
    return None if c is None else c[b : b + 1]


def _num_terms(energy) -> int:
    terms = getattr(energy, "terms", None)
    return 1 if terms is None else len(terms)


def full_hessian(energy, y, x, c=None) -> torch.Tensor:
    """The Hessian of ``E(y, x, c).sum()`` in ``y``: ``[B, C, H, W, B, C, H, W]`` (``torch.func``)."""
    return torch.func.hessian(lambda v: energy(v, x, c).sum())(y).detach()


def hessian_site_blocks(hess: torch.Tensor) -> torch.Tensor:
    """The diagonal ``C x C`` blocks of a full Hessian, as ``[B, H, W, C, C]``."""
    B, C, H, W = hess.shape[:4]
    n = H * W
    hr = hess.reshape(B, C, n, B, C, n)
    b = torch.arange(B)[:, None]
    s = torch.arange(n)[None, :]
    blocks = hr[b, :, s, b, :, s]  # advanced indices first: [B, n, C, C]
    return blocks.reshape(B, H, W, C, C)


def site_distance(height: int, width: int, periodic: bool) -> torch.Tensor:
    """Chebyshev distance between the sites of an ``height x width`` grid, ``[n, n]``
    (flat index ``h * width + w``); with ``periodic`` the distance wraps around."""
    hh, ww = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    hh, ww = hh.reshape(-1), ww.reshape(-1)
    dh = (hh[:, None] - hh[None, :]).abs()
    dw = (ww[:, None] - ww[None, :]).abs()
    if periodic:
        dh = torch.minimum(dh, height - dh)
        dw = torch.minimum(dw, width - dw)
    return torch.maximum(dh, dw)


def non_interacting_sites(height, width, radius, periodic, generator=None) -> torch.Tensor:
    """A random maximal set of flat site indices pairwise farther apart than ``radius``
    (one site when ``radius`` is None: global coupling)."""
    n = height * width
    order = torch.randperm(n, generator=generator)
    if radius is None:
        return order[:1]
    dist = site_distance(height, width, periodic)
    chosen: list[int] = []
    for i in order.tolist():
        if all(int(dist[i, j]) > radius for j in chosen):
            chosen.append(i)
    return torch.tensor(chosen, dtype=torch.long)


def _check_flags(energy):
    r = energy.interaction_radius
    if r is not None and (not isinstance(r, int) or isinstance(r, bool) or r < 0):
        raise AssertionError(f"interaction_radius must be None or an int >= 0, got {r!r}")
    if not isinstance(energy.periodic, bool):
        raise AssertionError(f"periodic must be a bool, got {energy.periodic!r}")
    if not isinstance(energy.is_quadratic, bool):
        raise AssertionError(f"is_quadratic must be a bool, got {energy.is_quadratic!r}")
    return r


def leaf_terms(energy) -> list:
    """The non-sum, non-scaled terms an energy is built from."""
    if hasattr(energy, "terms"):
        return [leaf for t in energy.terms for leaf in leaf_terms(t)]
    if hasattr(energy, "term") and hasattr(energy, "scale"):
        return leaf_terms(energy.term)
    return [energy]


def uses_fallback_curvature(term) -> bool:
    """Whether a (leaf) term relies on :class:`~energycrf.Energy`'s ``torch.func`` curvature
    fallback (exact Hessian diagonal blocks) instead of its own majoriser blocks."""
    from energycrf.energies.base import Energy

    return type(term)._curvature is Energy._curvature


def _shape_check(t, expected, what):
    if not isinstance(t, torch.Tensor):
        raise AssertionError(f"{what} must be a Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        raise AssertionError(f"{what} has shape {tuple(t.shape)}, expected {tuple(expected)}")


# --------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------


def check_grad(make_energy: MakeEnergy, case: Case, *, rtol=RTOL, atol=ATOL) -> None:
    """``E.grad`` equals ``torch.func.grad`` of ``E(y, x, c).sum()``; ``E(y, x, c)`` is ``[B]``."""
    energy = build(make_energy, case)
    y, x, c = case.inputs()
    value = energy(y, x, c)
    _shape_check(value, (case.batch,), "E(y, x, c)")
    _close(energy.energy(y, x, c), value, "energy(y, x, c) differs from calling the term")
    g = energy.grad(y, x, c)
    _shape_check(g, y.shape, "grad(y, x, c)")
    ref = torch.func.grad(lambda v: energy(v, x, c).sum())(y)
    _close(g, ref, "analytic grad differs from autograd (torch.func.grad)", rtol, _atol_for(ref, atol=atol))


def check_gradcheck(make_energy: MakeEnergy, case: Case, *, parameters: bool = True) -> None:
    """``torch.autograd.gradcheck`` of ``E`` w.r.t. ``y`` and ``x``, of the analytic ``grad``
    w.r.t. ``y`` (it must stay differentiable for unrolled solvers), and of ``E`` w.r.t.
    the term's floating-point parameters."""
    energy = build(make_energy, case)
    y, x, c = case.inputs()
    y = y.clone().requires_grad_(True)
    x = x.clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda a, b: energy(a, b, c), (y, x), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
    torch.autograd.gradcheck(
        lambda a: energy.grad(a, x.detach(), c), (y,), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True
    )
    if not parameters:
        return
    names = [n for n, p in energy.named_parameters() if p.is_floating_point()]
    if not names:
        return
    params = dict(energy.named_parameters())
    leaves = tuple(params[n].detach().clone().requires_grad_(True) for n in names)

    def f(*ps):
        full = {**params, **dict(zip(names, ps))}
        return torch.func.functional_call(energy, full, (y.detach(), x.detach(), c))

    torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def check_curvature(make_energy: MakeEnergy, case: Case, *, rtol=1e-8, atol=1e-8) -> None:
    """Curvature blocks are ``[B, H, W, C, C]`` and symmetric. Terms with their own blocks
    give PSD blocks; quadratic terms, and terms on the ``torch.func`` fallback, give exactly
    the diagonal ``C x C`` blocks of the Hessian (``torch.func.hessian``)."""
    energy = build(make_energy, case)
    y, x, c = case.inputs()
    A = energy.curvature(y, x, c)
    B, C, H, W = case.shape
    _shape_check(A, (B, H, W, C, C), "curvature(y, x, c)")
    if A.dtype != y.dtype:
        raise AssertionError(f"curvature dtype {A.dtype} does not follow the input dtype {y.dtype}")
    _close(A, A.transpose(-1, -2), "curvature blocks are not symmetric", rtol, _atol_for(A, atol=atol))
    leaves = leaf_terms(energy)
    fallback = [uses_fallback_curvature(t) for t in leaves]
    if not any(fallback):
        eig = torch.linalg.eigvalsh(A)
        floor = -_atol_for(A, atol=atol)
        if bool((eig < floor).any()):
            raise AssertionError(f"curvature blocks are not PSD: smallest eigenvalue {float(eig.min()):.3e}")
    if all(f or t.is_quadratic for f, t in zip(fallback, leaves)):
        blocks = hessian_site_blocks(full_hessian(energy, y, x, c))
        what = "quadratic term" if energy.is_quadratic else "torch.func fallback"
        _close(A, blocks, f"curvature ({what}) differs from the Hessian's diagonal blocks",
               rtol, _atol_for(blocks, atol=atol))


def check_interaction_radius(make_energy: MakeEnergy, case: Case, *, atol=1e-10) -> None:
    """Hessian blocks between sites farther apart than ``interaction_radius`` (wrapping
    around when ``periodic``) vanish, and different samples never interact."""
    energy = build(make_energy, case)
    r = _check_flags(energy)
    y, x, c = case.inputs()
    hess = full_hessian(energy, y, x, c)
    B, C, H, W = case.shape
    n = H * W
    hr = hess.reshape(B, C, n, B, C, n)
    tol = _atol_for(hess, atol=atol)
    for b in range(B):
        for b2 in range(B):
            if b2 != b and float(hr[b, :, :, b2].abs().max()) > tol:
                raise AssertionError(f"samples {b} and {b2} of one batch interact (cross Hessian non-zero)")
    if r is None:
        return
    far = site_distance(H, W, energy.periodic) > r  # [n, n]
    b = torch.arange(B)
    within = hr[b, :, :, b]  # [B, C, n, C, n]
    leak = within.abs().amax(dim=(0, 1, 3))  # [n, n]
    bad = far & (leak > tol)
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise AssertionError(
            f"interaction_radius={r} (periodic={energy.periodic}) but sites {divmod(i, W)} and "
            f"{divmod(j, W)} interact (Hessian block {float(leak[i, j]):.3e})"
        )


def check_translation_invariance(make_energy: MakeEnergy, case: Case, *, atol=1e-10) -> None:
    """For a term with ``translation_invariant = True``: the Hessian-vector product of a unit
    impulse (autograd) is the same stencil at two interior sites, and the same at another
    ``(y, x)`` (the condition ``c`` kept: the stencil may depend on it per sample).
    Nothing to check for a term that does not claim it."""
    energy = build(make_energy, case)
    if not bool(getattr(energy, "translation_invariant", False)):
        return
    r = _check_flags(energy)
    periodic = bool(energy.periodic)
    if r is None and not periodic:
        raise AssertionError(
            "translation_invariant=True with global coupling (interaction_radius=None) needs periodic=True: "
            "without wrap-around no site is farther from the border than the coupling"
        )
    m = 1 if r is None else r  # p = (m, m) and q = p + (2, 2) are interior on an (2m + 3)^2 grid
    size = 2 * m + 3
    big = case.replace(height=size, width=size)
    y, x, c = big.inputs()
    y2, x2, _ = big.inputs(salt=1)
    grad = torch.func.grad(lambda v, xx: energy(v, xx, c).sum())

    def hvp(yy, xx, v):
        return torch.func.jvp(lambda u: grad(u, xx), (yy,), (v,))[1].detach()

    win = slice(0, 2 * m + 1), slice(2, 2 * m + 3)  # the stencil's window around p and q
    for ci in range(big.channels):
        at_p, at_q = torch.zeros_like(y), torch.zeros_like(y)
        at_p[:, ci, m, m] = 1.0
        at_q[:, ci, m + 2, m + 2] = 1.0
        h_p, h_q, h_q2 = hvp(y, x, at_p), hvp(y, x, at_q), hvp(y2, x2, at_q)
        tol = _atol_for(h_p, h_q, atol=atol)
        if periodic:
            _close(torch.roll(h_p, shifts=(2, 2), dims=(-2, -1)), h_q,
                   f"Hessian stencil at sites {(m, m)} and {(m + 2, m + 2)} (channel {ci}, periodic)", atol=tol)
        else:
            _close(h_p[..., win[0], win[0]], h_q[..., win[1], win[1]],
                   f"Hessian stencil at interior sites {(m, m)} and {(m + 2, m + 2)} (channel {ci})", atol=tol)
        _close(h_q2, h_q, f"Hessian stencil (channel {ci}) at another y and x", atol=tol)


def check_majorizer(
    make_energy: MakeEnergy, case: Case, *, trials: int = 3, scales: Sequence[float] = (1e-2, 1.0, 10.0),
    rtol=1e-9,
) -> None:
    """The per-site bound ``E(y + delta_S) <= E(y) + g . delta + 1/2 sum_{i in S} delta_i^T A_i
    delta_i`` for random non-interacting sets ``S`` and random ``delta``; equality for
    quadratic terms. Terms on the curvature fallback (exact Hessian blocks, no bound
    promised) are only held to it when quadratic."""
    energy = build(make_energy, case)
    if not energy.is_quadratic and any(uses_fallback_curvature(t) for t in leaf_terms(energy)):
        return
    r = _check_flags(energy)
    y, x, c = case.inputs()
    B, C, H, W = case.shape
    e0 = energy(y, x, c)
    g = energy.grad(y, x, c)
    A = energy.curvature(y, x, c)
    gen = case.generator(555)
    for t in range(trials):
        sites = non_interacting_sites(H, W, r, energy.periodic, generator=gen)
        mask = torch.zeros(H * W, dtype=y.dtype)
        mask[sites] = 1
        mask = mask.reshape(1, 1, H, W)
        for s in scales:
            delta = s * torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype) * mask
            lhs = energy(y + delta, x, c)
            d = delta.permute(0, 2, 3, 1)  # [B, H, W, C]
            quad = torch.einsum("bhwi,bhwij,bhwj->b", d, A, d)
            rhs = e0 + (g * delta).flatten(1).sum(1) + 0.5 * quad
            tol = rtol * (1 + e0.abs() + lhs.abs() + rhs.abs() + quad.abs())
            where = f"(trial {t}, |S|={len(sites)}, delta scale {s}, radius {r}, periodic {energy.periodic})"
            if energy.is_quadratic:
                if bool(((lhs - rhs).abs() > tol).any()):
                    raise AssertionError(
                        f"quadratic term: the site-wise bound is not an equality {where}: "
                        f"E(y+delta)={lhs.tolist()}, bound={rhs.tolist()}"
                    )
            elif bool((lhs > rhs + tol).any()):
                raise AssertionError(
                    f"majorizer violated {where}: E(y+delta)={lhs.tolist()} > bound={rhs.tolist()}"
                )


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


@torch.no_grad()
def randomize_parameters(module: torch.nn.Module, generator: torch.Generator, spread: float = 0.5) -> None:
    """Multiply every floating parameter by ``1 + spread * U(0, 1)`` elementwise (keeps signs
    and zero patterns, so constraints such as non-negativity survive)."""
    for p in module.parameters():
        if p.is_floating_point():
            u = torch.rand(p.shape, generator=generator, dtype=torch.float64).to(p)
            p.mul_(1 + spread * u)


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


# --------------------------------------------------------------------------------------
# running them all
# --------------------------------------------------------------------------------------

CHECKS: dict[str, Callable] = {
    "grad": check_grad,
    "gradcheck": check_gradcheck,
    "curvature": check_curvature,
    "interaction_radius": check_interaction_radius,
    "translation_invariance": check_translation_invariance,
    "majorizer": check_majorizer,
    "sum": check_sum,
    "scaling": check_scaling,
    "batch": check_batch,
    "dtype": check_dtype,
    "state_dict": check_state_dict,
    "convexity_margin": check_convexity_margin,
    "curvature_bound": check_curvature_bound,
}
"""Every check by name (``check_device`` is separate: it needs a CUDA device)."""


@dataclasses.dataclass
class Failure:
    check: str
    case: Case
    error: BaseException

    def __str__(self):
        return f"[{self.check}] {self.case}: {type(self.error).__name__}: {self.error}"


class ConformanceError(AssertionError):
    """Raised by :func:`check_energy` with every failing (check, case) pair."""

    def __init__(self, failures: list[Failure]):
        self.failures = failures
        lines = "\n".join(f"  {f}" for f in failures)
        super().__init__(f"{len(failures)} conformance failure(s):\n{lines}")


def check_energy(
    make_energy: MakeEnergy,
    cases: Iterable[Case] | None = None,
    *,
    checks: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    conditions: Sequence[str | None] | None = None,
    options: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
) -> None:
    """Run the conformance checks on the term ``make_energy(case)`` builds.

    Args:
        make_energy: ``Case -> Energy``; use ``case.channels`` (and ``case.cond_dim`` for
            conditioned terms, ``case.seeded()`` for reproducible initialisation).
        cases: the cases to run (default :data:`~energycrf.testing.cases.DEFAULT_CASES`).
        checks: names from :data:`CHECKS` to run (default all), minus ``skip``.
        conditions: keep only cases whose condition kind is listed (e.g. ``[None]`` for a
            term that needs no condition, ``["pooled"]`` for one that needs ``[B, D]``).
        options: extra keyword arguments per check, e.g. ``{"convexity_margin": {"required": True}}``.
        device: also run :func:`check_device` on this device (e.g. ``"cuda"``).

    Raises:
        ConformanceError: listing every failing (check, case) pair.
    """
    if isinstance(make_energy, torch.nn.Module) or not callable(make_energy):
        raise TypeError(
            "make_energy must be a callable Case -> Energy (a factory, e.g. `lambda case: MyTerm()`), "
            f"got {type(make_energy).__name__}"
        )
    cases = list(DEFAULT_CASES if cases is None else cases)
    if conditions is not None:
        cases = [k for k in cases if k.condition in conditions]
    if not cases:
        raise ValueError("check_energy: no case left to run (check `cases` and `conditions`)")
    names = list(CHECKS if checks is None else checks)
    unknown = [n for n in list(names) + list(skip) if n not in CHECKS]
    if unknown:
        raise ValueError(f"check_energy: unknown check names {unknown}; expected names from {sorted(CHECKS)}")
    names = [n for n in names if n not in set(skip)]
    options = options or {}
    failures: list[Failure] = []
    for case in cases:
        for name in names:
            try:
                CHECKS[name](make_energy, case, **options.get(name, {}))
            except Exception as err:  # noqa: BLE001 - collected and re-raised together
                failures.append(Failure(name, case, err))
        if device is not None:
            try:
                check_device(make_energy, case, device=device)
            except Exception as err:  # noqa: BLE001
                failures.append(Failure("device", case, err))
    if failures:
        raise ConformanceError(failures)
