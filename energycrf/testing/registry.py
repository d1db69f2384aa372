"""A registry of every built-in energy term, as factories ``Case -> Energy``.

Each :class:`Spec` builds one configuration of a built-in term for a
:class:`~energycrf.testing.Case` (its channels, condition width and image size), with
hyper-parameters drawn from the case's seed and parameters initialised under
``case.seeded()``. The project's tests run the conformance suite over all of them; a
contributor adding a term adds its specs here.

Families mirror the modules of :mod:`energycrf.energies`: ``unary``, ``kernels`` (the
pairwise term with each spatial kernel), ``compatibility`` (the pairwise term with each
compatibility), ``field_of_experts``, ``potentials`` (FoE with each expert), ``user`` (a
term with only ``energy``) and ``sums`` (random sums and scalings of the others).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from energycrf.energies import Energy

from .cases import CONDITION_KINDS, Case

__all__ = ["Spec", "SPECS", "specs", "get", "families", "UserSmoothness", "paper_energy"]


@dataclasses.dataclass(frozen=True)
class Spec:
    """One registered term configuration.

    Attributes:
        name: unique id (``family/variant``).
        family: the module family it belongs to.
        factory: ``Case -> Energy``.
        conditions: condition kinds the term accepts.
        min_size: the smallest ``H`` and ``W`` it supports (circular windows need room).
        builtin: a built-in term (must report its convexity margin).
        smooth: ``False`` when the energy has jumps (gradcheck and majoriser do not apply).
    """

    name: str
    family: str
    factory: Callable[[Case], torch.nn.Module]
    conditions: tuple = CONDITION_KINDS
    min_size: int = 1
    builtin: bool = True
    smooth: bool = True

    def __call__(self, case: Case):
        return self.factory(case)

    def accepts(self, case: Case) -> bool:
        return case.condition in self.conditions and min(case.height, case.width) >= self.min_size

    def adapt(self, case: Case) -> Case:
        """``case`` moved into this spec's domain (condition kind, minimum size)."""
        if case.condition not in self.conditions:
            case = case.replace(condition=self.conditions[case.seed % len(self.conditions)])
        return case.replace(height=max(case.height, self.min_size), width=max(case.width, self.min_size))

    def __repr__(self):
        return f"Spec({self.name})"


def _ec():
    import energycrf.energies as energies

    return energies


def _u(case: Case, low: float, high: float, salt: int) -> float:
    return float(case.uniform(low, high, salt=salt))


# ---------------------------------------------------------------------------- unary
def unary_scalar(case: Case):
    return _ec().Unary(weight=_u(case, 0.3, 3.0, 1))


def unary_per_channel(case: Case):
    w = case.uniform(0.3, 3.0, salt=2, size=(case.channels,)).float()
    return _ec().Unary(weight=w)


def unary_learnable(case: Case):
    w = case.uniform(0.3, 3.0, salt=3, size=(case.channels,)).float()
    return _ec().Unary(weight=w, learnable=True)


# ---------------------------------------------------------------------------- kernels
def _pairwise(case: Case, kernel, compatibility=None, cond_dim=None):
    return _ec().Pairwise(channels=case.channels, kernel=kernel, compatibility=compatibility, cond_dim=cond_dim)


def pairwise_default(case: Case):
    return _ec().Pairwise(channels=case.channels)


def pairwise_gaussian_zeros(case: Case):
    k = _ec().LocalKernel(radius=1 + case.seed % 2, sigma=_u(case, 0.5, 2.0, 4), strength=_u(case, 0.2, 2.0, 5))
    return _pairwise(case, k)


def pairwise_gaussian_circular(case: Case):
    k = _ec().LocalKernel(radius=1, sigma=_u(case, 0.5, 2.0, 6), strength=_u(case, 0.2, 2.0, 7), boundary="circular")
    return _pairwise(case, k)


def pairwise_learnable_kernel(case: Case):
    with case.seeded():
        k = _ec().LocalKernel(radius=1 + case.seed % 2, sigma=_u(case, 0.5, 2.0, 8), learnable=True,
                              boundary="zeros")
        with torch.no_grad():  # move off the Gaussian start, keeping the kernel's symmetry
            k.raw_weights.add_(0.3 * torch.randn_like(k.raw_weights))
    return _pairwise(case, k)


def pairwise_long_range_circular(case: Case):
    k = _ec().LongRangeKernel(sigma=_u(case, 1.0, 4.0, 9), weight=_u(case, 0.05, 0.5, 10), boundary="circular")
    return _pairwise(case, k)


def pairwise_long_range_zeros(case: Case):
    k = _ec().LongRangeKernel(sigma=_u(case, 1.0, 4.0, 11), weight=_u(case, 0.05, 0.5, 12), boundary="zeros")
    return _pairwise(case, k)


def dense_matrix(case: Case) -> torch.Tensor:
    """A random symmetric, non-negative, zero-diagonal ``n x n`` matrix (``n = H W``), some zeros."""
    n = case.height * case.width
    g = case.generator(13)
    a = torch.rand(n, n, generator=g, dtype=torch.float64)
    a = a * (torch.rand(n, n, generator=g, dtype=torch.float64) < 0.6)
    a = 0.5 * (a + a.T)
    a.fill_diagonal_(0)
    return a.float()


def pairwise_dense(case: Case):
    return _pairwise(case, _ec().DenseKernel(dense_matrix(case)))


# ---------------------------------------------------------------------------- compatibility
def compat_identity(case: Case):
    return _pairwise(case, None, compatibility="identity")


def compat_fixed(case: Case):
    rows = 1 + case.seed % (case.channels + 1)
    p = torch.randn(rows, case.channels, generator=case.generator(14), dtype=torch.float64).float()
    return _pairwise(case, None, compatibility=p)


def compat_learnable(case: Case):
    with case.seeded():
        e = _pairwise(case, None, compatibility="learnable")
        with torch.no_grad():
            e.compatibility.weight.add_(0.5 * torch.randn_like(e.compatibility.weight))
    return e


def compat_text(case: Case):
    with case.seeded():
        e = _pairwise(case, None, compatibility="text", cond_dim=case.cond_dim)
        with torch.no_grad():  # the text map starts at zero; make the condition matter
            for p in e.compatibility.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return e


# ---------------------------------------------------------------------------- field of experts
def _foe(case: Case, **kwargs):
    size = kwargs.pop("kernel_size", 3)
    with case.seeded():
        return _ec().FieldOfExperts(channels=case.channels, num_filters=1 + case.seed % 3, kernel_size=size,
                                    init_scale=_u(case, 0.3, 1.5, 15), **kwargs)


def foe_relu(case: Case):
    return _foe(case)


def foe_relu_zero_center(case: Case):
    return _foe(case, zero_center=True)


def foe_relu_circular(case: Case):
    return _foe(case, boundary="circular")


def foe_relu_eps(case: Case):
    return _foe(case, potential=_ec().ReLUExpert(eps=_u(case, 0.2, 0.9, 16)))


def foe_normalize(case: Case):
    return _foe(case, filter_constraint="normalize", filter_norm=_u(case, 0.3, 1.5, 17))


def foe_clip(case: Case):
    return _foe(case, filter_constraint="clip", filter_clip=_u(case, 0.05, 0.3, 18))


def foe_kernel5(case: Case):
    return _foe(case, kernel_size=5, zero_center=True)


def foe_student_t(case: Case):
    return _foe(case, potential=_ec().StudentT(alpha=_u(case, 0.3, 2.0, 19)))


def foe_student_t_circular(case: Case):
    return _foe(case, potential=_ec().StudentT(alpha=_u(case, 0.3, 2.0, 20)), boundary="circular")


def foe_student_t_per_expert(case: Case):
    """Own, uneven weights per expert (learnable ``log_alpha``)."""
    experts = 1 + case.seed % 3  # the FoE factory's num_filters
    potential = _ec().StudentT(alpha=_u(case, 0.3, 2.0, 19), num_experts=experts, learnable=True)
    with case.seeded(), torch.no_grad():
        potential.log_alpha.add_(0.5 * torch.randn_like(potential.log_alpha))
    return _foe(case, potential=potential)


def foe_charbonnier(case: Case):
    return _foe(case, potential=_ec().Charbonnier(eps=_u(case, 0.05, 0.5, 21)))


def foe_huber(case: Case):
    return _foe(case, potential=_ec().Huber(delta=_u(case, 0.05, 0.5, 22)))


def _piecewise_linear(case: Case, per_expert: bool):
    """Knot values: the Student-t influence plus seeded noise (non-convex, uneven slopes)."""
    experts = 1 + case.seed % 3  # the FoE factory's num_filters
    with case.seeded():
        potential = _ec().PiecewiseLinear(num_knots=9 + case.seed % 7, span=_u(case, 0.5, 2.5, 23),
                                          num_experts=experts if per_expert else None,
                                          alpha=_u(case, 0.3, 2.0, 24))
        with torch.no_grad():
            potential.values.add_(0.3 * torch.randn_like(potential.values))
    return potential


def foe_piecewise_linear(case: Case):
    return _foe(case, potential=_piecewise_linear(case, per_expert=False))


def foe_piecewise_linear_per_expert(case: Case):
    return _foe(case, potential=_piecewise_linear(case, per_expert=True), kernel_size=5)


# ---------------------------------------------------------------------------- a user's term
class UserSmoothness(Energy):
    r"""A user's term with only ``energy``: a Lorentzian penalty on neighbour differences,
    :math:`w \sum \log(1 + (y_i - y_j)^2 / \sigma^2)` over horizontal and vertical pairs,
    with a learnable weight ``w``. Non-convex, not quadratic; relies on every fallback."""

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        self.sigma = float(sigma)
        self.log_weight = torch.nn.Parameter(torch.zeros(()))

    def energy(self, y, x, c=None):
        dh = y[:, :, 1:, :] - y[:, :, :-1, :]
        dw = y[:, :, :, 1:] - y[:, :, :, :-1]
        s2 = self.sigma**2
        total = torch.log1p(dh**2 / s2).sum((1, 2, 3)) + torch.log1p(dw**2 / s2).sum((1, 2, 3))
        return self.log_weight.exp() * total


def user_smoothness(case: Case):
    with case.seeded():
        e = UserSmoothness(sigma=_u(case, 0.5, 2.0, 23))
        with torch.no_grad():
            e.log_weight.add_(0.3 * torch.randn(()))
    return e


# ---------------------------------------------------------------------------- the paper's energy
def paper_energy(case: Case, *, kernel=None, compatibility=None):
    """Unary (w = 1) + Pairwise + FieldOfExperts with the ReLU expert and zero centre taps
    (the energy behind the paper's eqs. 7-9)."""
    ec = _ec()
    with case.seeded():
        foe = ec.FieldOfExperts(channels=case.channels, num_filters=2, kernel_size=3, zero_center=True,
                                init_scale=0.4)
    return ec.Unary(weight=1.0) + _pairwise(case, kernel, compatibility) + foe


# ---------------------------------------------------------------------------- registry
_BASE: list[Spec] = [
    Spec("unary/scalar", "unary", unary_scalar),
    Spec("unary/per_channel", "unary", unary_per_channel),
    Spec("unary/learnable", "unary", unary_learnable),
    Spec("kernels/default", "kernels", pairwise_default),
    Spec("kernels/gaussian_zeros", "kernels", pairwise_gaussian_zeros),
    Spec("kernels/gaussian_circular", "kernels", pairwise_gaussian_circular, min_size=3),
    Spec("kernels/learnable", "kernels", pairwise_learnable_kernel),
    Spec("kernels/long_range_circular", "kernels", pairwise_long_range_circular),
    Spec("kernels/long_range_zeros", "kernels", pairwise_long_range_zeros),
    Spec("kernels/dense", "kernels", pairwise_dense),
    Spec("compatibility/identity", "compatibility", compat_identity),
    Spec("compatibility/fixed", "compatibility", compat_fixed),
    Spec("compatibility/learnable", "compatibility", compat_learnable),
    Spec("compatibility/text_pooled", "compatibility", compat_text, conditions=("pooled",)),
    Spec("compatibility/text_tokens", "compatibility", compat_text, conditions=("tokens",)),
    Spec("field_of_experts/relu", "field_of_experts", foe_relu),
    Spec("field_of_experts/relu_zero_center", "field_of_experts", foe_relu_zero_center),
    Spec("field_of_experts/relu_circular", "field_of_experts", foe_relu_circular, min_size=3),
    Spec("field_of_experts/relu_eps", "field_of_experts", foe_relu_eps, smooth=False),
    Spec("field_of_experts/normalize", "field_of_experts", foe_normalize),
    Spec("field_of_experts/clip", "field_of_experts", foe_clip),
    Spec("field_of_experts/kernel5", "field_of_experts", foe_kernel5),
    Spec("potentials/student_t", "potentials", foe_student_t),
    Spec("potentials/student_t_circular", "potentials", foe_student_t_circular, min_size=3),
    Spec("potentials/student_t_per_expert", "potentials", foe_student_t_per_expert),
    Spec("potentials/charbonnier", "potentials", foe_charbonnier),
    Spec("potentials/huber", "potentials", foe_huber),
    Spec("potentials/piecewise_linear", "potentials", foe_piecewise_linear),
    Spec("potentials/piecewise_linear_per_expert", "potentials", foe_piecewise_linear_per_expert),
    Spec("user/smoothness", "user", user_smoothness, builtin=False),
]


def _sum_factory(case: Case):
    """2 or 3 registered terms that accept ``case``, some scaled by a random positive factor."""
    g = case.generator(31)
    pool = [s for s in _BASE if s.accepts(case) and s.smooth and s.family != "user"]
    k = 2 + int(torch.randint(0, 2, (), generator=g))
    picks = [pool[int(i)] for i in torch.randint(0, len(pool), (k,), generator=g)]
    total = None
    for n, spec in enumerate(picks):
        term = spec(case.replace(seed=case.seed + 101 * (n + 1)))
        if bool(torch.rand((), generator=g) < 0.5):
            term = float(0.25 + 2 * torch.rand((), generator=g)) * term
        total = term if total is None else total + term
    return total


def _sum_with_user(case: Case):
    return unary_scalar(case) + user_smoothness(case) + pairwise_gaussian_zeros(case)


SPECS: dict[str, Spec] = {s.name: s for s in _BASE}
SPECS["sums/random"] = Spec("sums/random", "sums", _sum_factory)
SPECS["sums/paper"] = Spec("sums/paper", "sums", paper_energy)
SPECS["sums/with_user"] = Spec("sums/with_user", "sums", _sum_with_user, builtin=False)


def specs(family: str | None = None) -> list[Spec]:
    """All registered specs, or those of one family."""
    out = [s for s in SPECS.values() if family is None or s.family == family]
    if not out:
        raise ValueError(f"no registered spec in family {family!r}; families are {families()}")
    return out


def families() -> list[str]:
    return sorted({s.family for s in SPECS.values()})


def get(name: str) -> Spec:
    if name not in SPECS:
        raise KeyError(f"no registered spec {name!r}; known: {sorted(SPECS)}")
    return SPECS[name]
