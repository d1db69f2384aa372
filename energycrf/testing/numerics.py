"""Shared tools of the energy checks: building a term for a case, comparing tensors, dense
Hessians of tiny problems and the site geometry (distances, non-interacting site sets).

``full_hessian`` is the brute-force reference the checks hold a term's analytic quantities
against: the Hessian of ``E(y, x, c).sum()`` in ``y`` by ``torch.func``, affordable only
for the tiny cases of the suite.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .cases import Case

MakeEnergy = Callable[[Case], torch.nn.Module]

RTOL = 1e-9
ATOL = 1e-9


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


@torch.no_grad()
def randomize_parameters(module: torch.nn.Module, generator: torch.Generator, spread: float = 0.5) -> None:
    """Multiply every floating parameter by ``1 + spread * U(0, 1)`` elementwise (keeps signs
    and zero patterns, so constraints such as non-negativity survive)."""
    for p in module.parameters():
        if p.is_floating_point():
            u = torch.rand(p.shape, generator=generator, dtype=torch.float64).to(p)
            p.mul_(1 + spread * u)
