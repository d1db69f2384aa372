r"""One convolution for the filter banks of several terms of a sum (the terms' hook).

Terms that correlate ``y`` with a filter bank through windows of the same size and boundary
can share one ``correlate``: the banks stacked as the output channels of one convolution cost
about as much as the largest alone (CPU convolutions vectorise over blocks of output
channels). The Field-of-Experts responses :math:`u = J \odot y` (``M`` outputs) and the
pairwise message :math:`-2 W^s y` of a local kernel (its window as a ``C x C`` diagonal block
per tap) are such a pair. The values are the same up to rounding: each output channel is the
same sum of products.

The hook. A term offers a :class:`ConvolutionRequest` from ``_convolution_request(y)``
(``None``: it computes its own). A sum (:func:`shared_convolutions`) pairs each *guest*
request, in the order of the terms, with the first *host* request of the same window size
and boundary that has no guest yet, correlates ``y`` once with the host's bank followed by the
guest's, and hands each of the two terms its output channels as
``_shared_energy(y, x, c, convolved=..., bank=...)`` and
``_energy_and_grad(y, x, c, with_energy, convolved=..., bank=...)``. A host is a term that
convolves ``y`` with a dense bank anyway (the Field of Experts); a guest one that is cheaper
alone (a depthwise window) unless it rides along with a host. Terms without a partner
compute their own. This module knows no term: it imports the operators only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .operators import correlate

__all__ = ["ConvolutionRequest", "shared_convolutions"]


@dataclass(frozen=True, eq=False)
class ConvolutionRequest:
    """A term's offer to share the correlation of ``y`` with its filter bank (see the module).

    Attributes:
        size: the odd window size ``s`` of the bank.
        boundary: ``"zeros"`` or ``"circular"`` (:func:`~energycrf.energies.operators.correlate`).
        bank: ``bank()`` -> the filter bank ``[K, C, s, s]`` in ``y``'s dtype and device; called
            only when the request is paired.
        host: ``True`` for a term that correlates ``y`` with its bank anyway (it takes one guest),
            ``False`` for a guest (it joins a host's correlation, or computes its own way).
    """

    size: int
    boundary: str
    bank: Callable[[], Tensor]
    host: bool = False


def shared_convolutions(terms: Sequence, y: Tensor) -> dict[int, dict[str, Tensor]]:
    """The shared operands of the terms of a sum, by term index: ``{"convolved": u, "bank": J}``
    with ``u`` the term's output channels of the one correlation (the term may change them in
    place) and ``J`` its bank. Terms that are not paired are absent (they compute their own)."""
    requests = [t._convolution_request(y) for t in terms]
    hosts = [k for k, r in enumerate(requests) if r is not None and r.host]
    guests = [k for k, r in enumerate(requests) if r is not None and not r.host]
    shared: dict[int, dict[str, Tensor]] = {}
    if not hosts or not guests:
        return shared
    for k in guests:
        guest = requests[k]
        for f in hosts:
            host = requests[f]
            if f in shared or (host.size, host.boundary) != (guest.size, guest.boundary):
                continue
            host_bank, guest_bank = host.bank(), guest.bank()
            out = correlate(y, torch.cat([host_bank, guest_bank], 0), host.boundary)
            m = host_bank.shape[0]
            shared[f] = {"convolved": out[:, :m], "bank": host_bank}
            shared[k] = {"convolved": out[:, m:], "bank": guest_bank}
            break
    return shared
