"""The Energy base: flat sums and scalings, indexing, repr, the autograd fallbacks of a
user's term (grad, curvature, interaction-radius estimate), and bad input everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import energycrf as ec
from energycrf.testing import Case, check_curvature, check_grad, full_hessian, hessian_site_blocks
from energycrf.testing.registry import UserSmoothness
from energycrf.testing.suite import EnergyConformance, RegistryConformance

K = ec.energies


class TestUserTermsConformance(RegistryConformance):
    family = "user"


class TestSumsConformance(RegistryConformance):
    family = "sums"


# ------------------------------------------------------------------ user terms with only `energy`
class PointQuartic(ec.Energy):
    """Couples nothing: radius 0."""

    def energy(self, y, x, c=None):
        return ((y - x) ** 4 + (y - x) ** 2).sum((1, 2, 3))


class Offset(ec.Energy):
    """Couples sites (h, w) and (h + dh, w + dw): radius max(|dh|, |dw|)."""

    def __init__(self, dh, dw):
        super().__init__()
        self.dh, self.dw = dh, dw

    def energy(self, y, x, c=None):
        H, W = y.shape[-2:]
        a = y[:, :, : H - self.dh, : W - self.dw]
        b = y[:, :, self.dh :, self.dw :]
        return torch.cosh(a - b).sum((1, 2, 3)) + (y * x).sum((1, 2, 3))


class RollSmoothness(ec.Energy):
    """A common user pattern: torch.roll differences, which wrap around the borders."""

    def energy(self, y, x, c=None):
        d1 = y - torch.roll(y, 1, dims=-1)
        d2 = y - torch.roll(y, 1, dims=-2)
        return (d1**2 + d2**2 + 0.1 * d1**4).sum((1, 2, 3))


class TestOffsetUserTerm(EnergyConformance):
    """A user's term passes the suite through the fallbacks (grad, curvature, radius)."""

    min_size = 1

    def make_energy(self, case):
        return Offset(1, 2)


@pytest.mark.parametrize("term, radius", [(PointQuartic(), 0), (Offset(1, 0), 1), (Offset(0, 1), 1),
                                          (Offset(1, 2), 2), (Offset(2, 2), 2), (UserSmoothness(), 1)])
def test_interaction_radius_is_estimated_for_user_terms(term, radius):
    torch.manual_seed(0)
    y, x = torch.randn(2, 2, 9, 9, dtype=torch.float64), torch.randn(2, 2, 9, 9, dtype=torch.float64)
    term = term.double()
    assert term.estimate_interaction_radius(y, x) == radius
    assert term.resolve_interaction_radius(y, x) == radius


def test_user_declared_radius_is_respected():
    term = PointQuartic()
    term.interaction_radius = 3
    y = torch.zeros(1, 1, 9, 9)
    assert term.resolve_interaction_radius(y, y) == 3


@pytest.mark.parametrize("shape", [(2, 2, 4, 5), (1, 1, 3, 3), (1, 3, 5, 2), (1, 1, 1, 6)])
def test_wrapping_user_term_gets_exact_curvature_blocks(shape):
    """A torch.roll term that declares nothing: the fallback curvature must still be the exact
    diagonal Hessian blocks (the radius probe has to notice the wrap-around coupling)."""
    torch.manual_seed(1)
    y, x = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    term = RollSmoothness()
    blocks = hessian_site_blocks(full_hessian(term, y, x))
    torch.testing.assert_close(term.curvature(y, x), blocks, rtol=1e-9, atol=1e-9)


def test_wrapping_user_term_declaring_periodic_passes():
    term = RollSmoothness()
    term.periodic = True
    term.interaction_radius = 1
    for case in (Case(batch=2, channels=2, height=4, width=5), Case(batch=1, channels=1, height=3, width=3)):
        check_grad(lambda _: term, case)
        check_curvature(lambda _: term, case)


# ------------------------------------------------------------------ composition
def _three():
    torch.manual_seed(0)
    return K.Unary(), K.Pairwise(channels=2), K.FieldOfExperts(channels=2, num_filters=2, kernel_size=3)


def test_sums_are_flat_and_indexable():
    a, b, c = _three()
    for s in ((a + b) + c, a + (b + c), sum([a, b, c]), (a + b) + (c + 0)):
        assert isinstance(s, K.SumEnergy) and len(s.terms) == 3
        assert s[0] is a and s[1] is b and s[2] is c
        assert s["unary"] is a and s["pairwise"] is b and s["field_of_experts"] is c
        assert s.names == ["unary", "pairwise", "field_of_experts"]
    s = (a + b) + (c + a)
    assert len(s.terms) == 4 and s.names[-1] != "unary" and len(set(s.names)) == 4
    with pytest.raises(KeyError, match="nope.*unary"):
        s["nope"]
    with pytest.raises(TypeError, match="int or str.*float"):
        s[1.5]


@pytest.mark.parametrize("global_boundary, local_boundary, invariant", [
    ("circular", "zeros", False),  # global coupling with a zero-boundary term: no interior site (the regression)
    ("circular", "circular", True),
    (None, "zeros", True),  # local terms only: the same stencil away from the border
])
def test_a_sums_translation_invariance_needs_wrap_around_with_global_coupling(global_boundary, local_boundary,
                                                                             invariant):
    """Checked by the conformance suite's stencil comparison too (``check_translation_invariance``)."""
    from energycrf.testing.conformance import check_translation_invariance
    from energycrf.testing.registry import Case

    terms = [K.Pairwise(channels=1, kernel=K.LocalKernel(radius=1, boundary=local_boundary)),
             K.Pairwise(channels=1, kernel=K.LocalKernel(radius=2, sigma=0.8, boundary="circular"))]
    if global_boundary is not None:
        terms.append(K.Pairwise(channels=1, kernel=K.LongRangeKernel(sigma=3.0, weight=0.1, boundary=global_boundary)))
    E = ec.energies.SumEnergy(terms).double()
    assert E.translation_invariant is invariant
    check_translation_invariance(lambda case: E, Case(batch=1, channels=1, height=5, width=5))


def test_scaling_composes_and_stays_flat():
    a, b, _ = _three()
    s = 2 * (a + b)
    assert isinstance(s, K.SumEnergy) and len(s.terms) == 2
    nested = 3.0 * (0.5 * a)
    assert isinstance(nested, K.ScaledEnergy) and nested.term is a and nested.scale == pytest.approx(1.5)
    y, x = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(s(y, x), 2 * (a(y, x) + b(y, x)))
    assert s.breakdown(y, x).keys() == {"unary", "pairwise"}


@pytest.mark.parametrize("scale", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_scale_is_refused(scale):
    a, _, _ = _three()
    with pytest.raises(ValueError, match=r"positive.*" + (r"-1" if scale == -1.0 else "")):
        scale * a
    with pytest.raises(ValueError, match="positive"):
        a * scale


@pytest.mark.parametrize("other", ["2", None, [1.0], True])
def test_scaling_or_adding_non_numbers_is_a_type_error(other):
    a, _, _ = _three()
    with pytest.raises(TypeError):
        a * other
    with pytest.raises(TypeError):
        a + other


def test_repr_is_readable():
    a, b, c = _three()
    text = repr(a + 2.0 * b + c)
    for part in ("unary", "pairwise", "field_of_experts", "Unary", "Pairwise", "FieldOfExperts", "2 *", "radius=2"):
        assert part in text, part
    assert len(text) < 2000 and text.count("\n") < 30


# ------------------------------------------------------------------ bad input
def _terms():
    torch.manual_seed(0)
    return {
        "unary": K.Unary(weight=torch.ones(3)),
        "pairwise": K.Pairwise(channels=3),
        "text_pairwise": K.Pairwise(channels=3, compatibility="text", cond_dim=4),
        "foe": K.FieldOfExperts(channels=3, num_filters=2, kernel_size=3),
        "sum": K.Unary() + K.Pairwise(channels=3) + K.FieldOfExperts(channels=3, num_filters=2, kernel_size=3),
    }


METHODS = ("__call__", "grad", "curvature", "breakdown")
OK = torch.zeros(2, 3, 4, 5)
C_OK = torch.zeros(2, 4)


def _call(term, method, y, x, c):
    return getattr(term, method)(y, x, c)


BAD = [
    # (what, y, x, c, exception, message regex: argument, expected, got)
    ("rank 3 y", torch.zeros(2, 3, 4), OK, C_OK, ValueError, r"\by\b.*rank 4.*\(2, 3, 4\)"),
    ("rank 5 x", OK, torch.zeros(2, 3, 4, 5, 1), C_OK, ValueError, r"\bx\b.*rank 4.*\(2, 3, 4, 5, 1\)"),
    ("y/x mismatch", OK, torch.zeros(2, 3, 4, 6), C_OK, ValueError, r"\by\b.*\bx\b.*\(2, 3, 4, 5\).*\(2, 3, 4, 6\)"),
    ("int y", OK.long(), OK, C_OK, TypeError, r"\by\b.*floating.*int64"),
    ("int x", OK, OK.int(), C_OK, TypeError, r"\bx\b.*floating.*int32"),
    ("list y", [[0.0]], OK, C_OK, TypeError, r"\by\b.*Tensor.*list"),
    ("numpy x", OK, np.zeros((2, 3, 4, 5)), C_OK, TypeError, r"\bx\b.*Tensor.*ndarray"),
    ("dtype mix", OK, OK.double(), C_OK, TypeError, r"\by\b.*\bx\b.*float32.*float64"),
    ("rank 4 c", OK, OK, torch.zeros(2, 1, 1, 4), ValueError, r"\bc\b.*\[B, D\].*\(2, 1, 1, 4\)"),
    ("rank 1 c", OK, OK, torch.zeros(4), ValueError, r"\bc\b.*\[B, D\].*\(4,\)"),
    ("c batch", OK, OK, torch.zeros(3, 4), ValueError, r"\bc\b.*batch.*2.*\(3, 4\)"),
    ("c tokens batch", OK, OK, torch.zeros(1, 5, 4), ValueError, r"\bc\b.*batch.*2.*\(1, 5, 4\)"),
    ("int c", OK, OK, torch.zeros(2, 4, dtype=torch.long), TypeError, r"\bc\b.*floating.*int64"),
    ("list c", OK, OK, [0.0] * 4, TypeError, r"\bc\b.*Tensor.*list"),
]


@pytest.mark.parametrize("name", list(_terms()))
@pytest.mark.parametrize("what, y, x, c, exc, match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_argument_expected_and_got(name, what, y, x, c, exc, match):
    term = _terms()[name]
    for method in METHODS:
        with pytest.raises(exc, match=match):
            _call(term, method, y, x, c)


@pytest.mark.parametrize("name", ["unary", "pairwise", "text_pairwise", "foe", "sum"])
def test_channel_mismatch_is_reported(name):
    term = _terms()[name]
    y = torch.zeros(2, 2, 4, 5)
    for method in METHODS:
        with pytest.raises(ValueError, match=r"(?s)\by\b.*2 channels.*channels=3.*\(2, 2, 4, 5\)"):
            _call(term, method, y, y, C_OK)


def test_condition_width_is_checked_by_conditioned_terms():
    term = _terms()["text_pairwise"]
    for c in (torch.zeros(2, 5), torch.zeros(2, 3, 5)):
        with pytest.raises(ValueError, match=r"\bc\b.*4.*" + str(tuple(c.shape)).replace("(", r"\(").replace(")", r"\)")):
            term(OK, OK, c)


def test_public_operators_validate_their_input():
    """message (Pairwise) and score / responses (FieldOfExperts) are public: same clear errors."""
    terms = _terms()
    for op in (terms["pairwise"].message, terms["foe"].score, terms["foe"].responses):
        with pytest.raises(ValueError, match=r"\by\b.*rank 4.*\(3, 4, 5\)"):
            op(torch.zeros(3, 4, 5))
        with pytest.raises(TypeError, match=r"\by\b.*floating.*int64"):
            op(OK.long())
    for op in (terms["foe"].score, terms["foe"].responses):
        with pytest.raises(ValueError, match=r"(?s)\by\b.*2 channels.*3"):
            op(torch.zeros(2, 2, 4, 5))


def test_on_fail_is_checked():
    with pytest.raises(ValueError, match=r"on_fail.*warn.*raise.*ignore.*'loud'"):
        K.Unary().check_well_posed(on_fail="loud")
