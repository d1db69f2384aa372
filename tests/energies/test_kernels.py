"""Spatial kernels W^s of the pairwise term: conformance of Pairwise with every kernel, and
each kernel's message operator against an explicit matrix built from its definition."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.testing.strategies import positive_floats, tensors
from energycrf.testing.suite import RegistryConformance

K = ec.energies


class TestKernelsConformance(RegistryConformance):
    family = "kernels"


def _offsets(H, W, periodic):
    """Signed offsets (dh, dw) from site i to site j, ``[n, n]`` each (torus-wrapped if periodic)."""
    hh, ww = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    hh, ww = hh.reshape(-1), ww.reshape(-1)
    dh = hh[None, :] - hh[:, None]
    dw = ww[None, :] - ww[:, None]
    if periodic:
        dh = (dh + H // 2) % H - H // 2
        dw = (dw + W // 2) % W - W // 2
    return dh, dw


def explicit_local(window: torch.Tensor, H: int, W: int, periodic: bool) -> torch.Tensor:
    """W^s_ij = k(j - i) for offsets inside the window (the window is point-symmetric)."""
    r = window.shape[-1] // 2
    dh, dw = _offsets(H, W, periodic)
    inside = (dh.abs() <= r) & (dw.abs() <= r)
    return torch.where(inside, window[(dh + r).clamp(0, 2 * r), (dw + r).clamp(0, 2 * r)], 0.0)


def explicit_long_range(sigma, weight, H, W, periodic):
    dh, dw = _offsets(H, W, periodic)
    m = weight * torch.exp(-(dh.double() ** 2 + dw.double() ** 2) / (2 * sigma**2))
    m.fill_diagonal_(0)
    return m


def _check_message(kernel, matrix, y):
    B, C, H, W = y.shape
    ref = (y.reshape(B, C, H * W) @ matrix.T).reshape(y.shape)
    torch.testing.assert_close(kernel.message(y), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kernel.degree(H, W, y.dtype, y.device), matrix.sum(1).reshape(H, W),
                               rtol=1e-10, atol=1e-10)
    dense = kernel.dense(H, W)
    torch.testing.assert_close(dense, matrix, rtol=1e-10, atol=1e-12)


@given(radius=st.integers(1, 2), sigma=positive_floats(0.3, 3.0), strength=positive_floats(0.1, 3.0),
       circular=st.booleans(), H=st.integers(1, 7), W=st.integers(1, 7), data=st.data())
def test_gaussian_local_kernel_matches_its_definition(radius, sigma, strength, circular, H, W, data):
    """k(o) = strength exp(-|o|^2 / 2 sigma^2) / sum (zero centre); zeros: no wrap; circular: wraps."""
    if circular and 2 * radius + 1 > min(H, W):
        H = W = 2 * radius + 1 + (H % 2)
    kernel = K.LocalKernel(radius=radius, sigma=sigma, strength=strength,
                           boundary="circular" if circular else "zeros").double()
    o = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(o[:, None] ** 2 + o[None, :] ** 2) / (2 * sigma**2))
    g[radius, radius] = 0
    window = strength * g / g.sum()
    torch.testing.assert_close(kernel.weights().detach(), window, rtol=1e-6, atol=1e-7)  # stored in float32
    matrix = explicit_local(kernel.weights().detach(), H, W, circular)
    _check_message(kernel, matrix, data.draw(tensors((2, 3, H, W))))


@given(batch=st.integers(1, 5), channels=st.integers(1, 6), radius=st.integers(1, 2), circular=st.booleans(),
       H=st.integers(5, 40), W=st.integers(5, 12), banded=st.booleans(), data=st.data())
def test_local_kernel_message_of_a_float32_batch_matches_its_definition(batch, channels, radius, circular, H, W,
                                                                        banded, data):
    """float32 runs ``F.conv2d`` (float64 the shifted sums) on the ``B C`` images packed as
    channels and, with ``banded`` (the size threshold lowered to 0), cut into bands of rows
    with halos: every image still gets its own message, at every row, for either boundary."""
    from unittest import mock

    from energycrf.energies import operators

    kernel = K.LocalKernel(radius=radius, sigma=1.3, boundary="circular" if circular else "zeros")
    y = data.draw(tensors((batch, channels, H, W))).float()
    matrix = explicit_local(kernel.weights().detach().double(), H, W, circular)
    ref = (y.double().reshape(batch, channels, H * W) @ matrix.T).reshape(y.shape)
    with mock.patch.object(operators, "BAND_WORK", 0 if banded else operators.BAND_WORK):
        out = kernel.message(y)
    assert out.dtype == torch.float32 and out.shape == y.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@given(size=st.sampled_from([1, 3, 5, 7]), batch=st.integers(1, 3), channels=st.integers(1, 3),
       H=st.integers(7, 30), W=st.integers(7, 12), circular=st.booleans(), seed=st.integers(0, 2**16))
def test_correlate_shared_equals_a_per_channel_convolution_for_any_window(size, batch, channels, H, W, circular,
                                                                          seed):
    """``operators.correlate_shared`` with any odd window (not symmetric, ``1 x 1`` included) and
    banding forced equals ``correlate`` with the window repeated per channel."""
    from unittest import mock

    from energycrf.energies import operators

    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, channels, H, W, generator=g)
    window = torch.randn(size, size, generator=g)
    boundary = "circular" if circular and size <= min(H, W) else "zeros"
    ref = operators.correlate(y.double(), window.double().expand(channels, 1, size, size), boundary, groups=channels)
    with mock.patch.object(operators, "BAND_WORK", 0):
        got = operators.correlate_shared(y, window, boundary)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


@given(radius=st.integers(1, 3), batch=st.integers(1, 3), channels=st.integers(1, 3), H=st.integers(7, 20),
       W=st.integers(7, 12), circular=st.booleans(), banded=st.booleans(), learnable=st.booleans(),
       scales=st.lists(st.sampled_from([1.0, -2.0, 0.37, -0.74]), min_size=1, max_size=5),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_message_operator_is_the_scaled_message(radius, batch, channels, H, W, circular, banded, learnable,
                                                scales, dtype, seed):
    """``LocalKernel.message_operator(shape, ...)(v, s)`` (the window cast, its convolution weight
    and its scalings kept between products) equals ``scaled_message(v, s)`` for any sequence of
    scales, banded or not; another shape or dtype falls back to ``scaled_message``."""
    from unittest import mock

    from energycrf.energies import operators

    boundary = "circular" if circular and 2 * radius + 1 <= min(H, W) else "zeros"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kernel = K.LocalKernel(radius=radius, sigma=1.2, boundary=boundary, learnable=learnable)
        if learnable:
            with torch.no_grad():
                kernel.raw_weights.add_(0.3 * torch.randn_like(kernel.raw_weights))
    g = torch.Generator().manual_seed(seed)
    shape = (batch, channels, H, W)
    with mock.patch.object(operators, "BAND_WORK", 0 if banded else operators.BAND_WORK):
        message = kernel.message_operator(torch.Size(shape), dtype, torch.device("cpu"))
        for s in scales:
            v = torch.randn(shape, generator=g, dtype=dtype)
            torch.testing.assert_close(message(v, s), kernel.scaled_message(v, s), rtol=0, atol=0)
        other = torch.randn(batch, channels, H + 1, W, generator=g, dtype=dtype)
        torch.testing.assert_close(message(other, 0.5), kernel.scaled_message(other, 0.5), rtol=0, atol=0)
        wide = torch.randn(shape, generator=g, dtype=torch.float64 if dtype == torch.float32 else torch.float32)
        torch.testing.assert_close(message(wide, 0.5), kernel.scaled_message(wide, 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 1, 181, 97), (1, 3, 96, 80), (2, 2, 130, 64)])
@pytest.mark.parametrize("boundary", ["zeros", "circular"])
def test_banded_message_of_large_float32_images_and_its_gradients(shape, boundary):
    """Above the size threshold, a float32 image with few channels is cut into bands (the last
    one past the image when the rows do not divide): message and autograd gradients (in ``y``
    and in a learnable window) equal float64's shifted sums, which never band."""
    from energycrf.energies import operators

    B, C, H, W = shape
    n = B * C
    assert n * H * W * 25 >= operators.BAND_WORK and n < operators.CHANNEL_BLOCK  # the banded path
    g = torch.Generator().manual_seed(H)
    kernel = K.LocalKernel(radius=2, learnable=True, boundary=boundary)
    with torch.no_grad():
        kernel.raw_weights.add_(0.5 * torch.randn(kernel.raw_weights.shape, generator=g))
    y64 = torch.randn(shape, generator=g, dtype=torch.float64)
    probe = torch.randn(shape, generator=g, dtype=torch.float64)
    results = []
    for dtype in (torch.float32, torch.float64):
        k = copy.deepcopy(kernel).to(dtype)
        y = y64.to(dtype).requires_grad_(True)
        out = k.message(y)
        assert out.is_contiguous()  # a cropped last band is copied out, not returned as a view
        grads = torch.autograd.grad((out * probe.to(dtype)).sum(), [y, k.raw_weights])
        results.append([out.double(), *(t.double() for t in grads)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-4)


def test_banded_message_under_vmap_and_of_an_empty_batch():
    """``torch.func.vmap`` over the banded path (forced) equals a loop, with no fallback
    warning (the suite turns warnings into errors); an empty batch gives an empty message."""
    from unittest import mock

    from energycrf.energies import operators

    kernel = K.LocalKernel(radius=2, learnable=True)
    ys = torch.randn(3, 2, 1, 37, 11, generator=torch.Generator().manual_seed(0))
    with mock.patch.object(operators, "BAND_WORK", 0):
        mapped = torch.func.vmap(kernel.message)(ys)
        looped = torch.stack([kernel.message(y) for y in ys])
        grad = torch.func.vmap(torch.func.grad(lambda y: kernel.message(y).square().sum()))(ys)
        grad_looped = torch.stack([torch.func.grad(lambda y: kernel.message(y).square().sum())(y) for y in ys])
    torch.testing.assert_close(mapped, looped, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_looped, rtol=1e-5, atol=1e-5)
    empty = torch.zeros(0, 2, 40, 40)
    assert operators.correlate_shared(empty, kernel.weights(), "zeros").shape == empty.shape


@given(H=st.integers(1, 6), W=st.integers(1, 6), data=st.data())
def test_learnable_local_kernel_is_symmetric_and_matches_its_window(H, W, data):
    kernel = K.LocalKernel(radius=2, learnable=True).double()
    with torch.no_grad():
        kernel.raw_weights.add_(data.draw(tensors(kernel.raw_weights.shape)))
    k = kernel.weights().detach()
    assert bool((k >= 0).all()) and float(k[2, 2]) == 0.0
    torch.testing.assert_close(k, k.flip(0, 1))
    _check_message(kernel, explicit_local(k, H, W, False), data.draw(tensors((1, 2, H, W))))


@given(sigma=positive_floats(0.5, 5.0), weight=positive_floats(0.01, 1.0), circular=st.booleans(),
       H=st.integers(1, 7), W=st.integers(1, 7), data=st.data())
def test_long_range_kernel_matches_its_definition(sigma, weight, circular, H, W, data):
    """W^s_ij = weight exp(-|j - i|^2 / 2 sigma^2) for i != j, offsets on the torus when circular."""
    kernel = K.LongRangeKernel(sigma=sigma, weight=weight, boundary="circular" if circular else "zeros")
    matrix = explicit_long_range(sigma, weight, H, W, circular)
    _check_message(kernel, matrix, data.draw(tensors((2, 2, H, W))))


@given(H=st.integers(1, 5), W=st.integers(1, 5), data=st.data())
def test_dense_kernel_is_the_matrix(H, W, data):
    from energycrf.testing.cases import Case
    from energycrf.testing.registry import dense_matrix

    matrix = dense_matrix(Case(height=H, width=W, seed=data.draw(st.integers(0, 100)))).double()
    kernel = K.DenseKernel(matrix)
    _check_message(kernel, matrix, data.draw(tensors((2, 3, H, W))))


@pytest.mark.parametrize(
    "kernel",
    [K.LocalKernel(radius=1), K.LocalKernel(radius=2, boundary="circular"), K.LocalKernel(learnable=True),
     K.LongRangeKernel(sigma=2.0), K.LongRangeKernel(sigma=2.0, boundary="zeros")],
    ids=repr,
)
def test_dense_is_symmetric_nonnegative_zero_diagonal(kernel):
    m = kernel.dense(5, 6).detach()
    torch.testing.assert_close(m, m.T, rtol=1e-12, atol=1e-7)
    assert bool((m >= -1e-12).all())
    assert float(m.diagonal().abs().max()) <= 1e-7


def test_pairwise_with_local_kernel_equals_pairwise_with_its_dense_matrix():
    """The dense kernel is the reference the local and FFT kernels are held to (energy, grad, curvature)."""
    torch.manual_seed(0)
    y, x = torch.randn(2, 3, 5, 6, dtype=torch.float64), torch.randn(2, 3, 5, 6, dtype=torch.float64)
    for kernel in (K.LocalKernel(radius=2, sigma=1.3), K.LocalKernel(radius=1, boundary="circular"),
                   K.LongRangeKernel(sigma=3.0, weight=0.2), K.LongRangeKernel(sigma=3.0, boundary="zeros")):
        a = K.Pairwise(channels=3, kernel=kernel).double()
        b = K.Pairwise(channels=3, kernel=K.DenseKernel(kernel.dense(5, 6))).double()
        for f in ("__call__", "grad", "curvature"):
            torch.testing.assert_close(getattr(a, f)(y, x), getattr(b, f)(y, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: K.LocalKernel(radius=0), r"radius.*>= 1.*0"),
        (lambda: K.LocalKernel(radius=1.5), r"radius.*int.*float"),
        (lambda: K.LocalKernel(sigma=-1.0), r"sigma.*positive.*-1"),
        (lambda: K.LocalKernel(strength=0.0), r"strength.*positive.*0"),
        (lambda: K.LocalKernel(boundary="reflect"), r"boundary.*zeros.*circular.*reflect"),
        (lambda: K.LongRangeKernel(sigma=0.0), r"sigma.*positive"),
        (lambda: K.LongRangeKernel(weight=-0.1), r"weight.*positive"),
        (lambda: K.LongRangeKernel(boundary="mirror"), r"boundary.*mirror"),
        (lambda: K.DenseKernel(torch.ones(3, 4)), r"matrix.*square.*\(3, 4\)"),
        (lambda: K.DenseKernel(torch.tensor([[0.0, 1.0], [2.0, 0.0]])), r"matrix.*symmetric"),
        (lambda: K.DenseKernel(torch.tensor([[0.0, -1.0], [-1.0, 0.0]])), r"matrix.*non-negative"),
        (lambda: K.DenseKernel(torch.ones(2, 2)), r"matrix.*diagonal"),
        (lambda: K.DenseKernel(torch.zeros(2, 2, dtype=torch.int64)), r"matrix.*floating.*int64"),
        (lambda: K.Pairwise(channels=2, kernel="gaussian"), r"kernel.*SpatialKernel.*gaussian"),
    ],
)
def test_bad_kernel_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize(
    "kernel, H, W, match",
    [
        (K.LocalKernel(radius=2, boundary="circular"), 4, 6, r"H and W >= 5.*H=4"),
        (K.DenseKernel(torch.zeros(6, 6)), 2, 2, r"6 sites.*H\*W = 2\*2 = 4"),
    ],
)
def test_kernel_size_limits_are_reported(kernel, H, W, match):
    E = K.Pairwise(channels=1, kernel=kernel)
    y = torch.zeros(1, 1, H, W)
    with pytest.raises(ValueError, match=match):
        E(y, y)


_ = math


@pytest.mark.parametrize("radius, circular", [(1, False), (2, False), (1, True), (2, True)])
def test_declared_radius_is_tight(radius, circular):
    """Sites exactly ``radius`` apart do interact (a loose radius would cost solvers colours)."""
    from energycrf.testing import full_hessian, site_distance

    kernel = K.LocalKernel(radius=radius, boundary="circular" if circular else "zeros")
    E = K.Pairwise(channels=1, kernel=kernel).double()
    y = torch.randn(1, 1, 6, 7, generator=torch.Generator().manual_seed(radius), dtype=torch.float64)
    hess = full_hessian(E, y, y).reshape(42, 42)
    dist = site_distance(6, 7, circular)
    assert E.interaction_radius == radius and E.periodic == circular
    assert float(hess[dist == radius].abs().max()) > 1e-6
    assert float(hess[dist > radius].abs().max()) == 0.0

