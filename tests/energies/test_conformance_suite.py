"""The conformance suite itself: each check fails on a term that breaks its part of the
contract (so a passing suite means something), and check_energy reports clearly."""

from __future__ import annotations

import pytest
import torch

import energycrf as ec
from energycrf.testing import (
    CHECKS,
    Case,
    ConformanceError,
    check_batch,
    check_convexity_margin,
    check_curvature,
    check_curvature_bound,
    check_dtype,
    check_energy,
    check_grad,
    check_gradcheck,
    check_interaction_radius,
    check_majorizer,
    check_scaling,
    check_state_dict,
    check_sum,
    check_translation_invariance,
    non_interacting_sites,
    site_distance,
)

K = ec.energies
CASE = Case(batch=2, channels=2, height=5, width=6, seed=3)


class WrongGrad(K.Unary):
    def _grad(self, y, x, c):
        return 2.001 * self.weight().to(y) * (y - x)


class HalfCurvature(K.Pairwise):
    def _curvature(self, y, x, c):
        return 0.5 * super()._curvature(y, x, c)


class SmallRadius(K.Pairwise):
    """Declares radius 1 for a radius-2 kernel."""

    @property
    def interaction_radius(self):
        return 1


class NotPeriodic(K.Pairwise):
    """A circular kernel that claims not to wrap."""

    @property
    def periodic(self):
        return False


class BatchMixing(ec.Energy):
    def energy(self, y, x, c=None):
        return ((y - x) ** 2).sum((1, 2, 3)) + (y.mean(0, keepdim=True) ** 2).sum((1, 2, 3))


class Float32Only(K.Unary):
    def energy(self, y, x, c=None):
        return super().energy(y.float(), x.float(), c)

    def _grad(self, y, x, c):
        return super()._grad(y.float(), x.float(), c)


class Overclaims(K.Unary):
    def convexity_margin(self, c=None):
        return 10 * super().convexity_margin(c)


class Underbounds(K.Unary):
    def curvature_bound(self, height, width, c=None):
        return 0.5 * super().curvature_bound(height, width, c)


class NaNBound(K.Unary):
    def curvature_bound(self, height, width, c=None):
        return float("nan")


class InfBound(K.Unary):
    def curvature_bound(self, height, width, c=None):
        return float("inf")


class NaNMargin(K.Unary):
    def convexity_margin(self, c=None):
        return float("nan")


class NoWarning(ec.Energy):
    """Claims a negative margin, but its check_well_posed never complains."""

    def energy(self, y, x, c=None):
        return -(y**2).sum((1, 2, 3))

    def convexity_margin(self, c=None):
        return -2.0

    def check_well_posed(self, c=None, on_fail="warn"):
        return -2.0


class NotInStateDict(ec.Energy):
    def __init__(self):
        super().__init__()
        self.w = torch.rand(())  # a plain attribute: lost by state_dict

    def energy(self, y, x, c=None):
        return self.w * (y**2).sum((1, 2, 3))


class TangentForConvex(K.FieldOfExperts):
    """Zero curvature (the tangent bound) for a convex expert: not a majoriser."""

    def _curvature(self, y, x, c):
        b, ch, h, w = y.shape
        return y.new_zeros(b, h, w, ch, ch)


class NegativeBlocks(K.Unary):
    def _curvature(self, y, x, c):
        return -super()._curvature(y, x, c)


class GradNotDifferentiable(K.Unary):
    def _grad(self, y, x, c):
        return (2 * self.weight().to(y) * (y - x)).detach()


class SumBreaksFlags(ec.Energy):
    """Quadratic, but forgets to say so; used to see sums keep the AND."""

    is_quadratic = True
    interaction_radius = 0

    def energy(self, y, x, c=None):
        return (y**2).sum((1, 2, 3))

    def _curvature(self, y, x, c):
        b, ch, h, w = y.shape
        return 2 * torch.eye(ch, dtype=y.dtype).expand(b, h, w, ch, ch)


class PositionalWeight(K.Unary):
    """Keeps Unary's translation_invariant = True but weighs each site by its column."""

    def energy(self, y, x, c=None):
        col = torch.arange(1, y.shape[-1] + 1, dtype=y.dtype)
        return (col * (y - x) ** 2).sum((1, 2, 3))


class DataScaledWeight(K.Unary):
    """Keeps translation_invariant = True but scales the weight by the data (same at every site)."""

    def energy(self, y, x, c=None):
        scale = 1 + (x**2).mean((1, 2, 3), keepdim=True)
        return (scale * (y - x) ** 2).sum((1, 2, 3))


def _global_zero_boundary(case):
    kernel = K.LongRangeKernel(sigma=2.0, weight=0.1, boundary="zeros")
    kernel.translation_invariant = True  # wrong: without wrap-around no site is interior
    return K.Pairwise(channels=case.channels, kernel=kernel)


def _pairwise(cls, **kw):
    return lambda case: cls(channels=case.channels, **kw)


BROKEN = [
    ("grad", check_grad, lambda case: WrongGrad(), "autograd"),
    ("curvature", check_curvature, _pairwise(HalfCurvature), "Hessian"),
    ("curvature PSD", check_curvature, lambda case: NegativeBlocks(), "PSD"),
    ("majorizer quadratic", check_majorizer, _pairwise(HalfCurvature), "equality"),
    ("majorizer convex", check_majorizer,
     lambda case: TangentForConvex(channels=case.channels, num_filters=2, kernel_size=3,
                                   potential=K.Charbonnier(eps=0.1), init_scale=2.0), "majorizer violated"),
    ("radius", check_interaction_radius, _pairwise(SmallRadius), "interact"),
    ("periodic", check_interaction_radius,
     _pairwise(NotPeriodic, kernel=K.LocalKernel(radius=1, boundary="circular")), "interact"),
    ("translation invariance", check_translation_invariance, lambda case: PositionalWeight(), "stencil"),
    ("translation invariance (data)", check_translation_invariance, lambda case: DataScaledWeight(),
     "another y and x"),
    ("translation invariance (global)", check_translation_invariance, _global_zero_boundary, "periodic"),
    ("batch mixing (batch)", check_batch, lambda case: BatchMixing(), "single items"),
    ("batch mixing (radius)", check_interaction_radius, lambda case: BatchMixing(), "samples"),
    ("dtype", check_dtype, lambda case: Float32Only(), "float32"),
    ("margin", check_convexity_margin, lambda case: Overclaims(), "exceeds"),
    ("well-posed check", check_convexity_margin, lambda case: NoWarning(), "check_well_posed"),
    ("margin NaN", check_convexity_margin, lambda case: NaNMargin(), "NaN"),
    ("curvature bound", check_curvature_bound, lambda case: Underbounds(), "below the Hessian's largest"),
    ("curvature bound NaN", check_curvature_bound, lambda case: NaNBound(), "must be finite"),
    ("curvature bound inf", check_curvature_bound, lambda case: InfBound(), "must be finite"),
    ("state_dict", check_state_dict, lambda case: NotInStateDict(), "load_state_dict"),
    ("gradcheck of grad", check_gradcheck, lambda case: GradNotDifferentiable(), "Numerical gradient|does not require grad|Jacobian"),
]


@pytest.mark.parametrize("name, check, make, match", BROKEN, ids=[b[0] for b in BROKEN])
def test_each_check_catches_its_bug(name, check, make, match):
    with pytest.raises((AssertionError, RuntimeError), match=match):
        check(make, CASE)


@pytest.mark.parametrize("name, check, make, match", BROKEN, ids=[b[0] for b in BROKEN])
def test_check_energy_collects_the_failure(name, check, make, match):
    check_name = next(k for k, v in CHECKS.items() if v is check)
    with pytest.raises(ConformanceError) as info:
        check_energy(make, [CASE], checks=[check_name])
    assert info.value.failures and all(f.check == check_name for f in info.value.failures)
    assert check_name in str(info.value)


def test_a_correct_term_passes_every_check():
    check_energy(lambda case: K.Unary(weight=torch.rand(case.channels) + 0.5))


def test_sum_and_scaling_checks_hold_for_sums():
    make = lambda case: K.Unary() + SumBreaksFlags()  # noqa: E731
    check_sum(make, CASE)
    check_scaling(make, CASE)


def test_check_energy_arguments():
    with pytest.raises(TypeError, match="make_energy.*callable.*factory.*Unary"):
        check_energy(K.Unary())
    with pytest.raises(ValueError, match="unknown check names.*'hessian'"):
        check_energy(lambda case: K.Unary(), checks=["hessian"])
    with pytest.raises(ValueError, match="no case left"):
        check_energy(lambda case: K.Unary(), conditions=["nonexistent"])
    with pytest.raises(TypeError, match="make_energy must return.*str"):
        check_grad(lambda case: "not an energy", CASE)


@pytest.mark.parametrize("H, W, radius, periodic", [(5, 6, 1, False), (7, 7, 2, True), (4, 5, 1, True),
                                                    (3, 3, 0, False), (6, 6, None, False)])
def test_non_interacting_sites_are_far_apart(H, W, radius, periodic):
    g = torch.Generator().manual_seed(0)
    sites = non_interacting_sites(H, W, radius, periodic, generator=g)
    dist = site_distance(H, W, periodic)[sites][:, sites]
    off = dist[~torch.eye(len(sites), dtype=torch.bool)]
    if radius is None:
        assert len(sites) == 1
    else:
        assert len(sites) >= 1 and bool((off > radius).all())


def test_site_distance_wraps():
    d = site_distance(1, 6, periodic=True)
    assert d[0].tolist() == [0, 1, 2, 3, 2, 1]
    assert site_distance(1, 6, periodic=False)[0].tolist() == [0, 1, 2, 3, 4, 5]
