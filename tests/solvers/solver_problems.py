"""Tiny problems for the solver tests: built-in energies, user terms, explicit matrices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

import energycrf as ec
from energycrf.energies import potentials

F64 = torch.float64


def pairwise(channels: int, radius: int = 1, strength: float = 1.0, boundary: str = "zeros", compat=None):
    kernel = ec.energies.LocalKernel(radius=radius, sigma=1.0, strength=strength, boundary=boundary)
    return ec.energies.Pairwise(channels=channels, kernel=kernel, compatibility=compat)


def random_compat(channels: int, seed: int) -> torch.Tensor:
    """A well-conditioned ``P`` (``C x C``): identity plus a small random part."""
    g = torch.Generator().manual_seed(seed)
    return torch.eye(channels) + 0.3 * torch.randn(channels, channels, generator=g)


def unary_pairwise_energy(channels, radius, boundary, weights, strength, compat, seed):
    """Unary (one weight or one per channel) + Pairwise (LocalKernel; identity, matrix or text compatibility)."""
    kernel = ec.energies.LocalKernel(radius=radius, sigma=1.0 + 0.3 * seed % 2, strength=strength, boundary=boundary)
    compatibility = {"identity": None, "matrix": random_compat(channels, seed), "text": "text"}[compat]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pairwise = ec.energies.Pairwise(channels=channels, kernel=kernel, compatibility=compatibility,
                                            **({"cond_dim": 3} if compat == "text" else {}))
    unary = ec.energies.Unary(weight=weights[0] if len(weights) == 1 else weights[:channels])
    return (unary + pairwise).double()


unary_pairwise_params = st.fixed_dictionaries({
    "channels": st.integers(1, 3),
    "radius": st.integers(1, 2),
    "boundary": st.sampled_from(["zeros", "circular"]),
    "weights": st.lists(st.floats(0.05, 3.0), min_size=3, max_size=3).map(lambda w: w[:1] if w[0] > 1.5 else w),
    "strength": st.floats(0.1, 4.0),
    "compat": st.sampled_from(["identity", "matrix", "text"]),
    "seed": st.integers(0, 1000),
})


def unary_pairwise_case(params, extra_h, extra_w, batch=2):
    E = unary_pairwise_energy(**params)
    s = 2 * params["radius"] + 1
    H, W = s + extra_h, s + extra_w
    g = torch.Generator().manual_seed(params["seed"])
    x = torch.randn(batch, params["channels"], H, W, generator=g, dtype=F64)
    c = torch.randn(batch, 3, generator=g, dtype=F64) if params["compat"] == "text" else None
    return E, x, c


def quadratic_energy(channels=2, radius=1, strength=1.0, boundary="zeros", weight=1.0, seed=0, dtype=F64):
    E = ec.energies.Unary(weight=weight) + pairwise(channels, radius, strength, boundary, random_compat(channels, seed))
    return E.to(dtype)


def spectral_case(kind: str, channels: int = 2):
    """Unary + Pairwise cases of the FFT preconditioner: zero or circular boundary, channels
    that mix (a matrix compatibility), per-sample compatibility (text). Seeded without touching
    the global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _spectral_case(kind, channels)


def _spectral_case(kind: str, channels: int):
    K = ec.energies
    if kind == "zeros":
        return K.Unary(weight=[1.0, 0.5][:channels]) + K.Pairwise(channels=channels)
    if kind == "circular":
        return K.Unary() + K.Pairwise(channels=channels, kernel=K.LocalKernel(radius=1, boundary="circular"))
    if kind == "matrix":  # channels mix: a C x C solve per frequency
        return K.Unary() + K.Pairwise(channels=channels, compatibility=torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    if kind == "text":  # per-sample compatibility: no shared spectrum
        return K.Unary() + K.Pairwise(channels=channels, compatibility="text", cond_dim=3)
    raise ValueError(kind)


def make_potential(name: str):
    return {
        "relu": lambda: potentials.ReLUExpert(),
        "student_t": lambda: potentials.StudentT(alpha=1.0),
        "charbonnier": lambda: potentials.Charbonnier(eps=1.0),
        "huber": lambda: potentials.Huber(delta=0.5),
    }[name]()


def foe(channels=2, num_filters=3, kernel_size=3, potential="charbonnier", boundary="zeros", scale=0.5, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ec.energies.FieldOfExperts(
            channels=channels, num_filters=num_filters, kernel_size=kernel_size,
            potential=make_potential(potential), init_scale=scale, boundary=boundary,
        )


def convex_energy(channels=2, dtype=F64, seed=0, boundary="zeros"):
    """Strongly convex, non-quadratic: Unary + Pairwise + FoE (Charbonnier, convex)."""
    E = quadratic_energy(channels, boundary=boundary, seed=seed) + foe(channels, potential="charbonnier", seed=seed,
                                                                       boundary=boundary)
    return E.to(dtype)


class BoxSmooth(ec.Energy):
    """A user quadratic term: ``a * sum_i (sum of y over the 1 x 3 window at i)^2`` (zero padding).

    Written with ``energy`` only; its gradient, curvature and radius come from the fallbacks.
    Strong positive coupling: the Hessian's top eigenvalue is 3x its diagonal, so undamped
    Jacobi diverges on it.
    """

    is_quadratic = True

    def __init__(self, a: float = 1.0):
        super().__init__()
        self.a = a

    def energy(self, y, x, c=None):
        C = y.shape[1]
        k = torch.ones(C, 1, 1, 3, dtype=y.dtype, device=y.device)
        return self.a * (F.conv2d(y, k, padding=(0, 1), groups=C) ** 2).sum((1, 2, 3))


class SiteWeightedUnary(ec.Energy):
    """A user quadratic term whose Hessian depends on the site: ``sum_i w_i (y_i - x_i)^2`` with a
    fixed ``[H, W]`` weight map. It declares its radius (0) but is not translation invariant."""

    is_quadratic = True
    interaction_radius = 0

    def __init__(self, height: int, width: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("site_weight", 0.5 + torch.rand(height, width, generator=g, dtype=F64))

    def energy(self, y, x, c=None):
        return (self.site_weight.to(y) * (y - x) ** 2).sum((1, 2, 3))


class Wobble(ec.Energy):
    """A user non-quadratic, non-convex term: ``b * sum (1 - cos(y_i - y_right(i)))``.

    Its exact Hessian blocks (the fallback curvature) are not majorisers, so coordinate
    descent needs its safeguard.
    """

    def __init__(self, b: float = 2.0):
        super().__init__()
        self.b = b

    def energy(self, y, x, c=None):
        return self.b * (1 - torch.cos(3.0 * (y[..., 1:] - y[..., :-1]))).sum((1, 2, 3))


def autograd_grad(E, y, x, c=None):
    return torch.func.grad(lambda v: E.energy(v, x, c).sum())(y).detach()


def explicit_hessian(E, y, x, c=None):
    """The dense Hessian of one sample's energy, ``[n, n]`` with ``n = C H W`` (row-major ``c, h, w``)."""
    shape = y.shape[1:]

    def f(v):
        return E.energy(v.view(1, *shape), x[:1], None if c is None else c[:1]).sum()

    # reverse-over-reverse (torch.func.hessian's forward-over-reverse imports a deprecated jit path)
    return torch.func.jacrev(torch.func.grad(f))(y[0].flatten())


def dense_operator(op, like):
    """The matrix ``[n, n]`` (columns ``op(e_k)``) of a linear operator on tensors shaped like ``like``."""
    eye = torch.eye(like.numel(), dtype=like.dtype)
    return torch.stack([op(eye[k].view_as(like)).reshape(-1) for k in range(like.numel())], 1)


def exact_quadratic_minimiser(E, x, c=None):
    """``y* = -H^{-1} grad E(0)`` for each sample of a quadratic energy, by a dense solve."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        zero = torch.zeros_like(xb)
        cb = None if c is None else c[b : b + 1]
        H = explicit_hessian(E, zero, xb, cb)
        g0 = autograd_grad(E, zero, xb, cb).flatten()
        out.append(torch.linalg.solve(H, -g0).view_as(xb))
    return torch.cat(out)
