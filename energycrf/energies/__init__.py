"""Composable energy terms with analytic gradients and per-site curvature blocks.

``E(y, x, c) -> Tensor[B]``; ``E.grad``, ``E.curvature``; ``a + b`` and ``2.0 * a`` compose.
"""

from . import compatibility, kernels, potentials
from .base import Energy, EnergyWarning, IllPosedEnergyError, ScaledEnergy, SumEnergy
from .energy import unchecked_values
from .colouring import axis_colouring, colour_classes
from .compatibility import Compatibility, IdentityCompatibility, MatrixCompatibility, TextCompatibility
from .field_of_experts import FieldOfExperts
from .fused import ConvolutionRequest
from .hessian import HessianStructure
from .kernels import DenseKernel, LocalKernel, LongRangeKernel, SpatialKernel
from .pairwise import Pairwise
from .potentials import Charbonnier, Huber, PiecewiseLinear, Potential, ReLUExpert, StudentT
from .unary import Unary

__all__ = [
    "Energy",
    "SumEnergy",
    "ScaledEnergy",
    "EnergyWarning",
    "unchecked_values",
    "IllPosedEnergyError",
    "ConvolutionRequest",
    "HessianStructure",
    "axis_colouring",
    "colour_classes",
    "Unary",
    "Pairwise",
    "FieldOfExperts",
    "SpatialKernel",
    "LocalKernel",
    "LongRangeKernel",
    "DenseKernel",
    "Compatibility",
    "IdentityCompatibility",
    "MatrixCompatibility",
    "TextCompatibility",
    "Potential",
    "ReLUExpert",
    "StudentT",
    "Charbonnier",
    "Huber",
    "PiecewiseLinear",
    "compatibility",
    "kernels",
    "potentials",
]
