"""The learned layer: energies and solvers made trainable, and their training objectives.

- :mod:`energycrf.learned.latent_crf`: :class:`LatentCRF`, the paper's Algorithm 1 (eq. 11)
  as an ``nn.Module``, and its compatibility network :math:`\\psi_{\\theta_C}`
  (:class:`CompatibilityNetwork`);
- :mod:`energycrf.learned.unrolled`: any energy + solver as a trainable layer,
  :math:`y^\\star(\\theta) \\approx \\arg\\min_y E_\\theta(y, x, c)`, differentiated by
  backpropagation through the steps or implicitly (:class:`Unrolled`, :class:`Staged`,
  :func:`conjugate_gradient`);
- :mod:`energycrf.learned.losses`: ``L_NT``, ``L_SCE``, ``L_NT-F``, ``L_disc``, ``L_DT``
  (paper sections 3.4-3.5, appendix D).

It builds on :mod:`energycrf.energies` and :mod:`energycrf.solvers`; neither imports it.
``ec.LatentCRF``, ``ec.Unrolled`` and ``ec.losses`` are the same objects. ``LatentCRF`` and
``CompatibilityNetwork`` load on first use: :class:`LatentCRF` is a ``diffusers.ModelMixin``
when diffusers is installed (:mod:`energycrf.learned.pretrained`), and importing diffusers
takes seconds that ``Unrolled`` and the losses do not need.
"""

from typing import TYPE_CHECKING, Any

from . import losses
from .unrolled import ImplicitDifferentiationWarning, Staged, Unrolled, conjugate_gradient

if TYPE_CHECKING:  # for type checkers and the API reference (docs/api.md); loaded by __getattr__ below
    from .latent_crf import CompatibilityNetwork, LatentCRF

__all__ = [
    "LatentCRF",
    "CompatibilityNetwork",
    "Unrolled",
    "Staged",
    "ImplicitDifferentiationWarning",
    "conjugate_gradient",
    "losses",
]


def __getattr__(name: str) -> Any:
    if name in ("LatentCRF", "CompatibilityNetwork"):
        from . import latent_crf

        return getattr(latent_crf, name)
    raise AttributeError(f"module 'energycrf.learned' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
