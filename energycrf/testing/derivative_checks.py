"""The checks of a term's derivatives: gradient, curvature blocks, the site-wise majoriser,
the interaction radius and translation invariance (see :mod:`energycrf.testing.conformance`).

Each check is ``check_<name>(make_energy, case, **options)`` and raises ``AssertionError``
with a precise message when the term breaks the contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .cases import Case
from .numerics import (ATOL, RTOL, MakeEnergy, _atol_for, _check_flags, _close, _shape_check, build, full_hessian,
                       hessian_site_blocks, leaf_terms, non_interacting_sites, site_distance,
                       uses_fallback_curvature)

__all__ = [
    "check_grad",
    "check_gradcheck",
    "check_curvature",
    "check_interaction_radius",
    "check_translation_invariance",
    "check_majorizer",
]


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
        what = ("quadratic term" if energy.is_quadratic
                else "torch.func fallback, which differentiates the terms' _grad: check grad first")
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
