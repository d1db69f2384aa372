r"""The pairwise term (paper eq. 3) with its message-passing operator.

.. math::

    E_p = \tfrac12 \sum_i \sum_j W^s_{ij} \, \| P(c) (y_i - y_j) \|^2
    \qquad \text{(each unordered pair once)}

With :math:`M = P(c)^\top P(c)` and :math:`d_i = \sum_j W^s_{ij}`:

.. math::

    \nabla_i E_p = 2 M \big(d_i y_i - (W^s y)_i\big), \qquad
    E_p = \sum_i y_i^\top M \big(d_i y_i - (W^s y)_i\big), \qquad
    A_i = 2 d_i M,

the pairwise part of the paper's eq. 8. :math:`(W^s y)_i` is the message-passing step of
Algorithm 1, exposed as :meth:`Pairwise.message` for the learned layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validation import check_int
from .energy import Energy, _sample_dot
from .fused import ConvolutionRequest
from .hessian import HessianStructure
from .compatibility import (
    Compatibility,
    IdentityCompatibility,
    MatrixCompatibility,
    TextCompatibility,
)
from .kernels import LocalKernel, SpatialKernel, default_kernel

__all__ = ["Pairwise"]


def _make_compatibility(compatibility, channels: int, cond_dim: int | None) -> Compatibility:
    if compatibility is None or compatibility == "identity":
        return IdentityCompatibility(channels)
    if isinstance(compatibility, Compatibility):
        return compatibility
    if isinstance(compatibility, torch.Tensor):
        return MatrixCompatibility(compatibility)
    if compatibility == "learnable":
        return MatrixCompatibility(torch.eye(channels), learnable=True)
    if compatibility == "text":
        if cond_dim is None:
            raise ValueError("compatibility='text' needs cond_dim (the width D of the text embeddings)")
        return TextCompatibility(channels, cond_dim)
    raise ValueError(
        "compatibility must be None, 'identity', 'learnable', 'text', a [D, C] tensor or a Compatibility, "
        f"got {compatibility!r}"
    )


class Pairwise(Energy):
    r"""Pairwise compatibility term :math:`E_p` (paper eq. 3; gradient eq. 8).

    Args:
        channels: latent channels ``C``.
        kernel: the spatial kernel :math:`W^s` (a :class:`~energycrf.energies.kernels.SpatialKernel`);
            default a Gaussian window of radius 2 with interior degree 1, zero boundary.
        compatibility: :math:`P(c)`: ``None``/``"identity"``, ``"learnable"``, ``"text"``
            (needs ``cond_dim``), a fixed ``[D, C]`` tensor, or a
            :class:`~energycrf.energies.compatibility.Compatibility`.
        cond_dim: the text-embedding width for ``compatibility="text"``.

    Example:
        >>> import torch, energycrf as ec
        >>> E = ec.energies.Pairwise(channels=4)
        >>> y = torch.ones(2, 4, 8, 8)
        >>> E(y, y)  # constant images have zero pairwise energy
        tensor([0., 0.])
    """

    is_quadratic = True
    quadratic_anchor = "zero"  # the gradient 2 M (d y - W^s y) is linear in y

    def __init__(
        self,
        channels: int = 4,
        kernel: SpatialKernel | None = None,
        compatibility=None,
        cond_dim: int | None = None,
    ):
        super().__init__()
        self.channels = check_int("channels", channels, minimum=1)
        if kernel is None:
            kernel = default_kernel()
        if not isinstance(kernel, SpatialKernel):
            raise TypeError(f"kernel must be a SpatialKernel (LocalKernel, LongRangeKernel, DenseKernel), got {kernel!r}")
        self.kernel = kernel
        self.compatibility = _make_compatibility(compatibility, channels, cond_dim)
        if self.compatibility.channels != channels:
            raise ValueError(
                f"compatibility acts on {self.compatibility.channels} channels but channels={channels}"
            )

    @property
    def cond_dim(self):  # type: ignore[override]
        return self.compatibility.cond_dim

    @property
    def requires_condition(self):  # type: ignore[override]
        return self.compatibility.requires_condition

    @property
    def interaction_radius(self):  # type: ignore[override]
        return self.kernel.radius

    @property
    def periodic(self):  # type: ignore[override]
        return self.kernel.periodic

    @property
    def translation_invariant(self):  # type: ignore[override]
        return self.kernel.translation_invariant

    def _declares_radius(self):
        return True

    def _check_spatial(self, height, width):
        self.kernel.check_size(height, width)

    # ---------------------------------------------------------------- public operators
    def message(self, y: Tensor) -> Tensor:
        r"""Message passing :math:`(W^s y)_i = \sum_j W^s_{ij} y_j` (Algorithm 1), like ``y``."""
        return self.kernel.message(self.check_operand(y))

    def degree(self, height: int, width: int, dtype: torch.dtype, device) -> Tensor:
        r"""The degree :math:`d_i = \sum_j W^s_{ij}`, ``Tensor[H, W]``."""
        return self.kernel.degree(height, width, dtype, device)

    def compatibility_matrix(self, c: Tensor | None, batch: int, dtype: torch.dtype, device) -> Tensor:
        r""":math:`M = P(c)^\top P(c)`, ``Tensor[B, C, C]``."""
        return self.compatibility.matrix(c, batch, dtype, device)

    # ---------------------------------------------------------------- energy
    def _residual(
        self, y: Tensor, c: Tensor | None, scale: float = 1.0, scaled_message: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor]:
        r"""``M`` (``None`` for the identity, skipping a product) and ``scale (d y - W^s y)``:
        one message (the scale folded into the kernel) and one fused pass.
        ``scaled_message`` is :math:`-s\,W^s y` when the caller has it already."""
        b, _, h, w = y.shape
        identity = isinstance(self.compatibility, IdentityCompatibility)
        m = None if identity else self.compatibility_matrix(c, b, y.dtype, y.device)
        d = self.degree(h, w, y.dtype, y.device)
        if scaled_message is None:
            scaled_message = self.kernel.scaled_message(y, -scale)
        return m, torch.addcmul(scaled_message, d, y, value=scale)

    def energy(self, y, x, c=None):
        return self._shared_energy(y, x, c)

    def _convolution_request(self, y):
        r"""A guest's request (:mod:`~energycrf.energies.fused`): the message :math:`-2 W^s y` of a
        :class:`~energycrf.energies.kernels.LocalKernel` as ``C`` outputs of a filter bank, its window
        on the diagonal of a ``C x C`` block per tap. Other kernels, and subclasses (which may
        evaluate differently), compute their own."""
        if type(self) is not Pairwise or type(self.kernel) is not LocalKernel:
            return None
        kernel = self.kernel

        def bank():
            window = kernel.weights().to(dtype=y.dtype, device=y.device)
            eye = torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
            return eye[:, :, None, None] * (-2.0 * window)  # [C, C, s, s]

        return ConvolutionRequest(2 * kernel.radius + 1, kernel.boundary, bank)

    def _shared_energy(self, y, x, c, convolved=None, bank=None):
        """:math:`E_p`; ``convolved``: :math:`-2 W^s y`, when a sum computed it with other filters."""
        m, residual = self._residual(y, c, 2.0, convolved)  # 2 (d y - W^s y): the scale is exact
        if m is None:
            return 0.5 * _sample_dot(y, residual)
        return 0.5 * torch.einsum("bchw,bcd,bdhw->b", y, m, residual)

    def _grad(self, y, x, c):
        return self._energy_and_grad(y, x, c, with_energy=False)[1]

    def _energy_and_grad(self, y, x, c, with_energy=True, convolved=None, bank=None):
        """``convolved``: :math:`-2 W^s y`, when a sum computed it with other filters (one convolution)."""
        m, residual = self._residual(y, c, 2.0, convolved)
        g = residual if m is None else torch.einsum("bcd,bdhw->bchw", m, residual)
        return (0.5 * _sample_dot(y, g) if with_energy else None), g

    _owns_grad = True

    def _hessian_vector_product(self, y, x, c, v):
        return self._grad(v, x, c)  # the gradient 2M(d v - W^s v) is linear in v and free of x

    def _hessian_structure(self, x, c):
        if not isinstance(self.compatibility, IdentityCompatibility):  # M mixes channels
            return super()._hessian_structure(x, c)
        # 2 (d v - W^s v): the degree computed once, the message scaled by -2 in the window
        d = self.degree(*x.shape[-2:], x.dtype, x.device)
        message = self.kernel.message_operator(x.shape, x.dtype, x.device)
        return HessianStructure(2 * d, lambda v, s: message(v, -2.0 * s))

    def _curvature(self, y, x, c):
        b, _, h, w = y.shape
        m = self.compatibility_matrix(c, b, y.dtype, y.device)
        d = self.degree(h, w, y.dtype, y.device)
        return 2 * d[None, :, :, None, None] * m[:, None, None]

    def convexity_margin(self, c=None):
        return 0.0  # positive semi-definite

    def curvature_bound(self, height, width, c=None):
        r""":math:`2 \lambda_{\max}(M) \, \lambda_{\max}(D - W^s)`: the Hessian is :math:`2 M \otimes (D - W^s)`,
        whose eigenvalues are products of the two factors' (the kernel's Laplacian bound)."""
        if isinstance(self.compatibility, IdentityCompatibility):
            top = 1.0
        else:
            batch = 1 if c is None else c.shape[0]
            m = self.compatibility_matrix(c, batch, torch.float64, None if c is None else c.device).detach()
            top = float(torch.linalg.eigvalsh(0.5 * (m + m.transpose(-1, -2))).amax())
        return 2 * max(top, 0.0) * self.kernel.laplacian_bound(height, width)

    def extra_repr(self):
        return f"channels={self.channels}"
