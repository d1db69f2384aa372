r"""The Field-of-Experts higher-order term (paper eqs. 4-6, 10) and its score operator.

With ``M`` filters :math:`J_m` (``[C, s, s]``) and responses :math:`u_m = J_m \odot y`
(a ``conv2d`` with ``M`` output channels),

.. math::

    E_f = \sum_m \sum_k \rho(u_{m,k}), \qquad
    \nabla E_f = \sum_m J_m^- \odot \rho'(J_m \odot y),

where :math:`J_m^-` is the mirrored filter (``conv_transpose2d``). For the paper's expert
:math:`\rho' = -\mathrm{relu}`, and the higher-order message of eq. 11 is

.. math::

    \xi_{HO}(y) = \tfrac12 \sum_m J_m^- \odot \mathrm{relu}(J_m \odot y) = -\tfrac12 \nabla E_f,

exposed as :meth:`FieldOfExperts.score`.

Curvature blocks: :math:`A_i = \sum_m \sum_o a(u_{m,i-o})\, J_m[:, o] J_m[:, o]^\top` with the
potential's majoriser weight :math:`a` (zero for the concave paper expert). Operator norms
:math:`\|C_m\|^2 = \max_\omega \sum_c |\hat J_{m,c}(\omega)|^2` give the well-posedness margin.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_int, check_positive
from .energy import Energy, _sample_dot
from .fused import ConvolutionRequest
from .operators import BOUNDARIES, correlate, correlate_adjoint
from .potentials import Potential, ReLUExpert

__all__ = ["FieldOfExperts"]

_CONSTRAINTS = (None, "normalize", "clip")


class FieldOfExperts(Energy):
    r"""Field-of-Experts energy :math:`E_f = \sum_m \sum_k \rho((J_m \odot y)_k)` (paper eq. 6).

    Args:
        channels: latent channels ``C``.
        num_filters: the number of experts ``M``.
        kernel_size: the odd filter size ``s``.
        potential: a :class:`~energycrf.energies.potentials.Potential`; default the paper's
            :class:`~energycrf.energies.potentials.ReLUExpert` (eq. 10).
        zero_center: zero the centre tap of every filter (the paper's footnote to eq. 9).
        filter_constraint: ``None``, ``"normalize"`` (each filter rescaled to L2 norm
            ``filter_norm``) or ``"clip"`` (taps clipped to ``[-filter_clip, filter_clip]``),
            the bounded responses the paper asks for (3.2.3).
        filter_norm: the norm used by ``"normalize"``.
        filter_clip: the bound used by ``"clip"``.
        init_scale: the L2 norm of each zero-mean random initial filter.
        boundary: ``"zeros"`` or ``"circular"`` (needs ``s <= H, W``).

    Example:
        >>> import torch, energycrf as ec
        >>> E = ec.energies.FieldOfExperts(channels=4, num_filters=8, kernel_size=5)
        >>> y = torch.randn(2, 4, 16, 16)
        >>> torch.allclose(E.score(y), -0.5 * E.grad(y, y))
        True
    """

    is_quadratic = False

    def __init__(
        self,
        channels: int = 4,
        num_filters: int = 8,
        kernel_size: int = 5,
        potential: Potential | None = None,
        zero_center: bool = False,
        filter_constraint: str | None = None,
        filter_norm: float = 0.1,
        filter_clip: float = 0.1,
        init_scale: float = 0.1,
        boundary: str = "zeros",
    ):
        super().__init__()
        self.channels = check_int("channels", channels, minimum=1)
        self.num_filters = check_int("num_filters", num_filters, minimum=1)
        self.kernel_size = check_int("kernel_size", kernel_size, minimum=1, odd=True)
        if potential is None:
            potential = ReLUExpert()
        if not isinstance(potential, Potential):
            raise TypeError(f"potential must be a Potential (ReLUExpert, StudentT, ...), got {potential!r}")
        self.potential = potential
        self.zero_center = bool(zero_center)
        if filter_constraint not in _CONSTRAINTS:
            raise ValueError(f"filter_constraint must be one of {_CONSTRAINTS}, got {filter_constraint!r}")
        self.filter_constraint = filter_constraint
        check_positive("filter_norm", filter_norm, allow_tensor=False)
        check_positive("filter_clip", filter_clip, allow_tensor=False)
        check_positive("init_scale", init_scale, allow_tensor=False)
        self.filter_norm, self.filter_clip = float(filter_norm), float(filter_clip)
        self.boundary = check_choice("boundary", boundary, BOUNDARIES)
        self.interaction_radius = kernel_size - 1
        self.periodic = boundary == "circular"

        raw = torch.randn(num_filters, channels, kernel_size, kernel_size)
        if kernel_size > 1:
            raw = raw - raw.mean(dim=(1, 2, 3), keepdim=True)  # zero DC response, like derivative filters
        raw = init_scale * raw / raw.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        self.weight = nn.Parameter(raw)
        mask = torch.ones(kernel_size, kernel_size)
        if zero_center:
            mask[kernel_size // 2, kernel_size // 2] = 0
        self.register_buffer("tap_mask", mask, persistent=False)

    def _check_spatial(self, height, width):
        if self.periodic and self.kernel_size > min(height, width):
            raise ValueError(
                f"a circular FieldOfExperts with kernel_size={self.kernel_size} needs H and W >= {self.kernel_size}, "
                f"got H={height}, W={width}; use boundary='zeros'"
            )

    # ---------------------------------------------------------------- operators
    def filters(self) -> Tensor:
        """The effective filters :math:`J` ``[M, C, s, s]`` (centre mask and constraint applied)."""
        j = self.weight * self.tap_mask
        if self.filter_constraint == "normalize":
            j = self.filter_norm * j / j.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        elif self.filter_constraint == "clip":
            j = j.clamp(-self.filter_clip, self.filter_clip)
        return j

    def _filters_like(self, y: Tensor) -> Tensor:
        return self.filters().to(dtype=y.dtype, device=y.device)

    def responses(self, y: Tensor) -> Tensor:
        r"""Filter responses :math:`u_m = J_m \odot y`, ``Tensor[B, M, H, W]``."""
        return correlate(self.check_operand(y), self._filters_like(y), self.boundary)

    def score(self, y: Tensor) -> Tensor:
        r"""The higher-order message :math:`\xi_{HO}(y) = -\tfrac12 \nabla E_f(y)` (paper eq. 11), like ``y``.

        For the paper's expert this is :math:`\tfrac12 \sum_m J_m^- \odot \mathrm{relu}(J_m \odot y)`.
        """
        return -0.5 * self._grad(self.check_operand(y), y, None)

    # ---------------------------------------------------------------- energy
    def _relu_squared(self) -> bool:
        r"""The paper's expert with ``eps = 1``: :math:`\rho = -\mathrm{relu}^2/2`, :math:`\rho' = -\mathrm{relu}`."""
        return type(self.potential) is ReLUExpert and self.potential.eps == 1.0

    def energy(self, y, x, c=None):
        return self._energy_of_responses(correlate(y, self._filters_like(y), self.boundary))

    def _energy_of_responses(self, u: Tensor) -> Tensor:
        """:math:`E_f` from fresh responses ``u`` (changed in place)."""
        if self._relu_squared():
            # relu in place on the fresh responses and one inner product: no temporaries of the
            # responses' size (on a large image those passes would cost more than the convolution)
            r = torch.relu_(u)
            return -0.5 * _sample_dot(r, r)
        return self.potential.rho(u).sum((1, 2, 3))

    def _convolution_request(self, y):
        """A host's request (:mod:`~energycrf.energies.fused`): the filter bank :math:`J`, whose
        responses this term computes anyway. Subclasses (which may evaluate differently)
        compute their own."""
        if type(self) is not FieldOfExperts:
            return None
        return ConvolutionRequest(self.kernel_size, self.boundary, lambda: self._filters_like(y), host=True)

    def _shared_energy(self, y, x, c, convolved, bank):
        """:math:`E_f` from the responses ``convolved`` a sum computed with other filters in one
        convolution (``bank``: the filters :math:`J` it used)."""
        return self._energy_of_responses(convolved)

    _owns_grad = True

    def _grad(self, y, x, c):
        return self._energy_and_grad(y, x, c, with_energy=False)[1]

    def _energy_and_grad(self, y, x, c, with_energy=True, convolved=None, bank=None):
        """The responses ``u`` are computed once and serve the energy and the gradient
        (``convolved``: ``u``, when a sum computed it with other filters in one convolution;
        the responses are changed in place; ``bank``: the filters ``J`` it used)."""
        j = self._filters_like(y) if bank is None else bank
        u = correlate(y, j, self.boundary) if convolved is None else convolved
        if self._relu_squared():
            # rho = -relu^2 / 2, rho' = -relu: the sign goes on the (small) filter bank;
            # relu in place on the fresh responses (conv2d does not save its output)
            r = torch.relu_(u)
            value = -0.5 * _sample_dot(r, r) if with_energy else None
            return value, correlate_adjoint(r, -j, self.boundary)
        value = self.potential.rho(u).sum((1, 2, 3)) if with_energy else None
        return value, correlate_adjoint(self.potential.rho_prime(u), j, self.boundary)

    def _curvature(self, y, x, c):
        b, channels, h, w = y.shape
        if isinstance(self.potential, ReLUExpert):  # concave: the tangent bound
            return y.new_zeros(b, h, w, channels, channels)
        j = self._filters_like(y)
        weights = self.potential.majorizer_weight(correlate(y, j, self.boundary))
        # outer products of taps: G_m[(c, c'), o] = J_m[c, o] J_m[c', o]
        taps = torch.einsum("mcij,mdij->mcdij", j, j).reshape(self.num_filters, channels * channels, *j.shape[-2:])
        blocks = correlate_adjoint(weights, taps, self.boundary)  # [B, C*C, H, W]
        return blocks.reshape(b, channels, channels, h, w).permute(0, 3, 4, 1, 2)

    def operator_norms(self, grid: int = 128) -> Tensor:
        r""":math:`\|C_m\|^2 = \max_\omega \sum_c |\hat J_{m,c}(\omega)|^2`, ``Tensor[M]``.

        Evaluated on a ``grid x grid`` frequency lattice of the zero-padded filters (the exact
        norm for a circular boundary on that grid; within a fraction of a percent of the
        supremum over all frequencies for the small filters used here).
        """
        j = self.filters().detach().double()
        spectrum = torch.fft.fft2(j, s=(max(grid, self.kernel_size), max(grid, self.kernel_size)))
        return (spectrum.abs() ** 2).sum(1).flatten(1).amax(1)

    def convexity_margin(self, c=None):
        lowest = self.potential.min_curvature
        if lowest is None:
            return None
        return min(lowest, 0.0) * float(self.operator_norms().sum())

    def extra_repr(self):
        return (
            f"channels={self.channels}, num_filters={self.num_filters}, kernel_size={self.kernel_size}, "
            f"potential={self.potential!r}, zero_center={self.zero_center}, "
            f"filter_constraint={self.filter_constraint!r}, boundary={self.boundary!r}"
        )
