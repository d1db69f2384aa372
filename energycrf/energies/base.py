"""The energy classes in one place: :class:`Energy` (:mod:`~energycrf.energies.energy`) and its
flat sums and scalings, :class:`SumEnergy` and :class:`ScaledEnergy`
(:mod:`~energycrf.energies.composite`).

``from energycrf.energies.base import Energy, SumEnergy, ScaledEnergy`` keeps working; the
terms import from the modules that define these.
"""

from __future__ import annotations

from .composite import ScaledEnergy, SumEnergy
from .energy import Energy, EnergyWarning, IllPosedEnergyError
from .energy import _sample_dot  # noqa: F401  (re-exported: solvers.base imports it from here)

__all__ = [
    "Energy",
    "SumEnergy",
    "ScaledEnergy",
    "EnergyWarning",
    "IllPosedEnergyError",
]
