"""Field-of-Experts term (paper eqs. 4-6, 10, 11): conformance over its registered options,
the energy and the score operator against explicit convolutions with mirrored filters,
the filter options, bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.testing.strategies import odd_kernel_sizes, positive_floats, shapes, tensors
from energycrf.testing.suite import RegistryConformance

K = ec.energies


class TestFieldOfExpertsConformance(RegistryConformance):
    family = "field_of_experts"


def _pad(y, s, circular):
    p = s // 2
    return F.pad(y, (p, p, p, p), mode="circular") if circular else F.pad(y, (p, p, p, p))


def reference_responses(J, y, circular):
    """u_m = J_m (*) y: correlation of the padded image with each [C, s, s] filter."""
    return F.conv2d(_pad(y, J.shape[-1], circular), J)


def reference_xi_ho(J, y, circular):
    """Paper eq. 11: xi_HO(y) = 1/2 sum_m J_m^- (*) relu(J_m (*) y), J^- the mirrored filter.

    Written as a correlation with the flipped filter (channels swapped); with a circular
    boundary the response image is padded circularly too."""
    u = F.relu(reference_responses(J, y, circular))
    mirrored = J.flip(-1, -2).transpose(0, 1)  # [C, M, s, s]
    return 0.5 * F.conv2d(_pad(u, J.shape[-1], circular), mirrored)


@given(shape=shapes(max_size=6), s=odd_kernel_sizes(5), M=st.integers(1, 3), zero_center=st.booleans(),
       circular=st.booleans(), data=st.data())
def test_energy_and_score_match_the_paper(shape, s, M, zero_center, circular, data):
    B, C, H, W = shape
    if circular and s > min(H, W):
        s = 1 if min(H, W) < 3 else 3
    torch.manual_seed(data.draw(st.integers(0, 10_000)))
    E = K.FieldOfExperts(channels=C, num_filters=M, kernel_size=s, zero_center=zero_center,
                         boundary="circular" if circular else "zeros", init_scale=1.0).double()
    y = data.draw(tensors(shape))
    J = E.filters().detach()
    u = reference_responses(J, y, circular)
    torch.testing.assert_close(E.responses(y).detach(), u, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(E(y, y).detach(), (-0.5 * F.relu(u) ** 2).sum((1, 2, 3)), rtol=1e-10, atol=1e-10)
    xi = reference_xi_ho(J, y, circular)
    torch.testing.assert_close(E.score(y).detach(), xi, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(E.grad(y, y).detach(), -2 * xi, rtol=1e-10, atol=1e-10)
    assert E.interaction_radius == s - 1 and E.periodic == circular


@given(s=odd_kernel_sizes(5), C=st.integers(1, 3), norm=positive_floats(0.05, 2.0), clip=positive_floats(0.01, 0.5))
def test_filter_options(s, C, norm, clip):
    torch.manual_seed(s * 10 + C)
    zc = K.FieldOfExperts(channels=C, num_filters=3, kernel_size=s, zero_center=True)
    assert float(zc.filters().detach()[..., s // 2, s // 2].abs().max()) == 0.0
    nz = K.FieldOfExperts(channels=C, num_filters=3, kernel_size=s, filter_constraint="normalize", filter_norm=norm)
    torch.testing.assert_close(nz.filters().detach().flatten(1).norm(dim=1), torch.full((3,), norm), rtol=1e-5, atol=1e-6)
    cl = K.FieldOfExperts(channels=C, num_filters=3, kernel_size=s, filter_constraint="clip", filter_clip=clip,
                          init_scale=1.0)
    assert float(cl.filters().detach().abs().max()) <= clip + 1e-7


def test_zero_center_survives_training_steps():
    """The centre tap stays zero after the raw parameters move (it is a mask, not an init)."""
    torch.manual_seed(0)
    E = K.FieldOfExperts(channels=2, num_filters=2, kernel_size=3, zero_center=True)
    with torch.no_grad():
        for p in E.parameters():
            p.add_(torch.randn_like(p))
    assert float(E.filters().detach()[..., 1, 1].abs().max()) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_size": 4}, r"kernel_size.*odd.*4"),
        ({"kernel_size": 0}, r"kernel_size.*>= 1.*0"),
        ({"num_filters": 0}, r"num_filters.*>= 1.*0"),
        ({"channels": 0}, r"channels.*>= 1.*0"),
        ({"boundary": "reflect"}, r"boundary.*zeros.*circular.*reflect"),
        ({"filter_constraint": "l1"}, r"filter_constraint.*normalize.*clip.*l1"),
        ({"filter_norm": 0.0}, r"filter_norm.*positive.*0"),
        ({"filter_clip": -1.0}, r"filter_clip.*positive.*-1"),
        ({"init_scale": -0.1}, r"init_scale.*positive"),
        ({"potential": "relu"}, r"potential.*Potential.*relu"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        K.FieldOfExperts(**kwargs)


def test_circular_window_larger_than_image_is_reported():
    E = K.FieldOfExperts(channels=1, kernel_size=5, boundary="circular")
    y = torch.zeros(1, 1, 3, 7)
    with pytest.raises(ValueError, match=r"H and W >= 5.*H=3"):
        E(y, y)
