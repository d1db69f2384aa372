"""Per-sample scalars between the device and the host.

The driver's per-sample bookkeeping and the line search decide on the host, in float64:
a batch's ``[B]`` scalars (energies, slopes, gradient norms, ``max |y|``) cross in one
transfer (:func:`_host`), numpy judges them, and the resulting masks and step lengths go
back as small ``[B]`` tensors (:func:`_device_mask`, :func:`_device_values`). One transfer
replaces the many small tensor operations and device synchronisations the same tests
would cost on the device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__: list[str] = []


def _host(*values: Tensor) -> np.ndarray:
    """``[len(values), B]`` float64 on the host: per-sample scalars in one transfer."""
    stacked = torch.stack(values)
    if stacked.requires_grad:
        stacked = stacked.detach()
    if stacked.dtype in (torch.float32, torch.float64):  # numpy widens these on the host
        return stacked.cpu().numpy().astype(np.float64)
    return stacked.to(device="cpu", dtype=torch.float64).numpy()


def _host_mask(mask: Tensor | np.ndarray) -> np.ndarray:
    """A ``[B]`` bool tensor (or host array) on the host."""
    return mask if isinstance(mask, np.ndarray) else mask.detach().cpu().numpy()


def _device_mask(mask: np.ndarray, like: Tensor) -> Tensor:
    """A host bool array as a ``[B]`` tensor on ``like``'s device."""
    return torch.from_numpy(mask).to(like.device)


def _device_values(values: np.ndarray, like: Tensor) -> Tensor:
    """Host float64 values as a ``[B]`` tensor of ``like``'s dtype and device."""
    return torch.from_numpy(values).to(dtype=like.dtype, device=like.device)


def _max_abs(a: Tensor) -> Tensor:
    """Per-sample ``max |a|`` of a ``[B, ...]`` tensor -> ``[B]`` (one pass; NaN if any entry is).

    ``abs().amax`` rather than ``vector_norm(ord=inf)``, which is much slower on the CPU
    (see ``docs/solvers.md``, "Stopping, divergence and batches")."""
    return a.abs().amax(tuple(range(1, a.dim())))


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, 1, ...]`` matching ``like``'s rank."""
    return mask.view(-1, *([1] * (like.dim() - 1)))
