"""``operators.conv2d``: float64 convolutions on the CPU in bands of output rows, and depthwise
ones as sums of shifted inputs, give the same values and gradients as ``F.conv2d`` (strides 1
and 2, groups, padding, odd, even and rectangular windows)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from energycrf.energies import operators

F64 = torch.float64


@given(batch=st.integers(1, 2), groups=st.integers(1, 2), cin=st.integers(1, 3), cout=st.integers(1, 3),
       taps=st.integers(1, 6), taps_w=st.integers(1, 6), stride=st.integers(1, 2), padding=st.integers(0, 3),
       height=st.integers(6, 23), width=st.integers(6, 13), seed=st.integers(0, 10_000))
def test_banded_conv2d_equals_conv2d_in_values_and_gradients(batch, groups, cin, cout, taps, taps_w, stride, padding,
                                                             height, width, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, cin * groups, height, width, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(cout * groups, cin, taps, taps_w, generator=g, dtype=F64, requires_grad=True)
    ref = F.conv2d(u, w, padding=padding, stride=stride, groups=groups)
    with mock.patch.object(operators, "BAND_ELEMENTS", 1), \
            mock.patch.object(operators.F, "conv2d", wraps=F.conv2d) as calls:
        out = operators.conv2d(u, w, padding=padding, stride=stride, groups=groups)
    depthwise = stride == 1 and cin == 1 and cout == 1  # one filter per channel: by shifts, no conv2d
    bands = -(-ref.shape[-2] // 4)  # bands of at least 4 output rows
    assert calls.call_count == (0 if depthwise else bands)  # the banded path ran (one call when <= 4 rows)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    seed_grad = torch.randn(ref.shape, generator=g, dtype=F64)
    got = torch.autograd.grad(out, (u, w), seed_grad)
    want = torch.autograd.grad(ref, (u, w), seed_grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@given(batch=st.integers(1, 2), channels=st.integers(1, 4), taps=st.integers(1, 6), taps_w=st.integers(1, 6),
       padding=st.integers(0, 3), height=st.integers(6, 17), width=st.integers(6, 13),
       zeros=st.sampled_from(["none", "centre", "all"]), weight_grad=st.booleans(), seed=st.integers(0, 10_000))
def test_depthwise_float64_by_shifts_equals_conv2d(batch, channels, taps, taps_w, padding, height, width, zeros,
                                                  weight_grad, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, channels, height, width, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(channels, 1, taps, taps_w, generator=g, dtype=F64)
    if zeros == "centre":
        w[..., taps // 2, taps_w // 2] = 0.0
    elif zeros == "all":
        w.zero_()
    w.requires_grad_(weight_grad)
    ref = F.conv2d(u, w, padding=padding, groups=channels)
    with mock.patch.object(operators.F, "conv2d", wraps=F.conv2d) as calls:
        out = operators.conv2d(u, w, padding=padding, groups=channels)
    assert calls.call_count == 0
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    seed_grad = torch.randn(ref.shape, generator=g, dtype=F64)
    inputs = (u, w) if weight_grad else (u,)
    got = torch.autograd.grad(out, inputs, seed_grad)
    want = torch.autograd.grad(ref, inputs, seed_grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_depthwise_input_that_conv2d_refuses_gets_its_error():
    """A window larger than the padded image, or weights of another dtype: ``F.conv2d``'s error."""
    u = torch.randn(1, 3, 3, 3, dtype=F64)
    with pytest.raises(RuntimeError, match="[Kk]ernel size"):
        operators.conv2d(u, torch.randn(3, 1, 4, 4, dtype=F64), groups=3)
    with pytest.raises(RuntimeError, match="type|dtype"):
        operators.conv2d(u, torch.randn(3, 1, 3, 3), padding=1, groups=3)


def test_other_dtypes_and_small_images_call_conv2d_once():
    w = torch.randn(2, 1, 5, 5)
    for u in (torch.randn(1, 1, 512, 512), torch.randn(1, 1, 16, 16, dtype=F64)):
        with mock.patch.object(operators.F, "conv2d", wraps=F.conv2d) as calls:
            operators.conv2d(u, w.to(u.dtype), padding=2)
        assert calls.call_count == 1
    with mock.patch.object(operators.F, "conv2d", wraps=F.conv2d) as calls:  # float64, 512 x 512: bands
        operators.conv2d(torch.randn(1, 1, 512, 512, dtype=F64), w.double(), padding=2)
    assert calls.call_count > 1
