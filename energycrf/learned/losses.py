"""Training objectives of the learned LatentCRF layer (paper sections 3.4-3.5, appendix D).

Notation: ``z`` a clean latent, ``n ~ N(0, I)``, ``alpha`` the noise ratio, ``M`` the
LatentCRF layer (the inference map of Algorithm 1), ``D`` the latent discriminator.

- Noising (3.4.1): :func:`add_noise`, ``z~ = sqrt(alpha) z + sqrt(1 - alpha) n``.
- Denoising (3.4.1): :func:`denoising_loss`, ``L_NT = || z - M(z~) ||_2``.
- Sigmoid cross-entropy (eq. 12): :func:`sigmoid_cross_entropy`,
  ``L_SCE(a, t) = max(a, 0) - a t + log(1 + exp(-|a|))``.
- Discriminator (appendix D): :class:`LatentDiscriminator`, one logit per location.
- CRF objective (eq. 13): :func:`generator_loss`,
  ``L_NT-F = L_NT + L_SCE(D(M(z~)), 1)``.
- Discriminator objective (eq. 14): :func:`discriminator_loss`,
  ``L_disc = L_SCE(D(z), 1) + L_SCE(D(M(z~)), 0)``.
- Distillation (3.5): :func:`distillation_loss`, ``L_DT = || z_f - M(z_s) ||_2``.

The paper writes ``L_SCE(M(z~), 1)``; the logits are the discriminator's, so the
functions here take ``D``'s output ``a = D(.)`` explicitly. Every location of the
``[B, 1, H, W]`` logit map is one prediction head (appendix D) and is averaged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = [
    "add_noise",
    "denoising_loss",
    "distillation_loss",
    "sigmoid_cross_entropy",
    "LatentDiscriminator",
    "generator_loss",
    "discriminator_loss",
]

_REDUCTIONS = ("mean", "sum", "none")
_NORMS = ("l2", "mse")


def _check_tensor(name: str, value, *, rank: int | None = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    if rank is not None and value.dim() != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(value.shape)}")
    return value


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def add_noise(
    z: Tensor,
    alpha: float | Tensor,
    noise: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Noise a clean latent as in paper 3.4.1: ``z~ = sqrt(alpha) z + sqrt(1 - alpha) n``.

    Args:
        z: clean latents ``[B, ...]``.
        alpha: the noise ratio ``alpha in (0, 1]`` (``1`` = no noise): a number, or a
            tensor ``[B]`` with one ratio per sample (a sampled noise level).
        noise: ``n``, like ``z``; drawn from ``N(0, I)`` with ``generator`` when omitted.

    Returns:
        ``z~``, like ``z``.
    """
    _check_tensor("z", z)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, Tensor)):
        raise TypeError(f"alpha must be a number or a tensor [B], got {type(alpha).__name__}")
    if isinstance(alpha, Tensor):
        if alpha.dim() == 0:
            alpha = alpha.reshape(1).expand(z.shape[0])
        if alpha.dim() != 1 or alpha.shape[0] != z.shape[0]:
            raise ValueError(f"alpha must be a number or a tensor of shape [B={z.shape[0]}], got {tuple(alpha.shape)}")
        if not bool(((alpha > 0) & (alpha <= 1)).all()):
            raise ValueError(f"alpha must lie in (0, 1], got {alpha.tolist()}")
        a = alpha.to(dtype=z.dtype, device=z.device).reshape(-1, *([1] * (z.dim() - 1)))
        sa, sn = a.sqrt(), (1 - a).sqrt()
    else:
        if not (0 < float(alpha) <= 1):
            raise ValueError(f"alpha must lie in (0, 1], got {alpha!r}")
        sa, sn = math.sqrt(alpha), math.sqrt(1.0 - alpha)
    if noise is None:
        noise = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
    elif not isinstance(noise, Tensor) or noise.shape != z.shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"noise must be a tensor shaped like z {tuple(z.shape)}, got {got}")
    return sa * z + sn * noise


def denoising_loss(output: Tensor, target: Tensor, *, norm: str = "l2", reduction: str = "mean") -> Tensor:
    r"""The latent denoising loss ``L_NT = || z - M(z~) ||_2`` (paper 3.4.1).

    Args:
        output: ``M(z~)``, the layer's output ``[B, ...]``.
        target: the clean latent ``z``, same shape.
        norm: ``"l2"`` (the paper: the Euclidean norm of each sample's residual) or
            ``"mse"`` (the mean squared residual per sample, a common, scale-free variant).
        reduction: over the batch, ``"mean"`` (default), ``"sum"`` or ``"none"`` (``[B]``).
    """
    _check_tensor("output", output)
    _check_tensor("target", target)
    if output.shape != target.shape:
        raise ValueError(
            f"output and target must have the same shape, got {tuple(output.shape)} and {tuple(target.shape)}"
        )
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    _check_reduction(reduction)
    r = (target - output).flatten(1)
    per_sample = r.square().mean(1) if norm == "mse" else torch.linalg.vector_norm(r, dim=1)
    return _reduce(per_sample, reduction)


def distillation_loss(output: Tensor, final: Tensor, *, norm: str = "l2", reduction: str = "mean") -> Tensor:
    r"""The distillation loss ``L_DT = || z_f - M(z_s) ||_2`` (paper 3.5).

    ``output`` is ``M(z_s)`` (the layer applied to the diffusion latent at an
    intermediate step ``s``, step 40 of 50 in the paper) and ``final`` the final latent
    ``z_f``. Same arguments as :func:`denoising_loss`.
    """
    return denoising_loss(output, final, norm=norm, reduction=reduction)


def sigmoid_cross_entropy(logits: Tensor, target: float | Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Sigmoid cross-entropy on logits, paper eq. 12.

    .. math:: L_{SCE}(a, t) = \max(a, 0) - a t + \log(1 + e^{-|a|})

    which equals ``-t log sigmoid(a) - (1 - t) log(1 - sigmoid(a))`` without overflow.

    Args:
        logits: ``a``, any shape (the discriminator's ``[B, 1, H, W]`` map).
        target: ``t``: a number (``1`` for natural latents, ``0`` for generated ones) or a
            tensor broadcastable to ``logits``; values in ``[0, 1]``.
        reduction: ``"mean"`` over every element (each location is one prediction head),
            ``"sum"`` or ``"none"`` (elementwise).
    """
    _check_tensor("logits", logits)
    _check_reduction(reduction)
    if isinstance(target, bool) or not isinstance(target, (int, float, Tensor)):
        raise TypeError(f"target must be a number or a tensor, got {type(target).__name__}")
    if isinstance(target, Tensor):
        t = target.to(dtype=logits.dtype, device=logits.device)
        try:
            torch.broadcast_shapes(t.shape, logits.shape)
        except RuntimeError:
            raise ValueError(
                f"target of shape {tuple(target.shape)} does not broadcast to logits {tuple(logits.shape)}"
            ) from None
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError("target values must lie in [0, 1]")
    else:
        if not 0.0 <= float(target) <= 1.0:
            raise ValueError(f"target must lie in [0, 1], got {target!r}")
        t = float(target)
    loss = logits.clamp_min(0) - logits * t + torch.log1p(torch.exp(-logits.abs()))
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class LatentDiscriminator(nn.Module):
    r"""The latent-space discriminator of appendix D: one logit per location.

    Three convolutions (``64, 64, 128`` output channels by default), each spectrally
    normalised and followed by batch norm and a LeakyReLU, then a point-wise (``1 x 1``)
    convolution to one channel. Input ``[B, C, H, W]`` latents, output ``[B, 1, H, W]``
    logits: every spatial location is a prediction head. ``padding = kernel_size // 2``
    keeps the spatial size.

    Batch norm normalises with the statistics of the batch it sees: pass real and
    generated latents through ``D`` in *one* batch (``D(torch.cat([z, M(z~)]))``, then
    split the logits), or the per-batch normalisation removes differences in the mean
    and scale between the two sets.

    Args:
        in_channels: latent channels ``C`` (4 for Stable Diffusion).
        channels: the widths of the three convolutions.
        kernel_size: of the three convolutions (odd).
        negative_slope: of the LeakyReLU.
    """

    def __init__(
        self,
        in_channels: int = 4,
        channels: Sequence[int] = (64, 64, 128),
        *,
        kernel_size: int = 3,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        channels = tuple(channels)
        if not channels or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            layers += [
                spectral_norm(nn.Conv2d(prev, width, kernel_size, padding=kernel_size // 2)),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(negative_slope),
            ]
            prev = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(prev, 1, kernel_size=1)

    def forward(self, z: Tensor) -> Tensor:
        _check_tensor("z", z, rank=4)
        if z.shape[1] != self.in_channels:
            raise ValueError(f"z must have {self.in_channels} channels, got shape {tuple(z.shape)}")
        return self.head(self.features(z))


def generator_loss(
    output: Tensor,
    target: Tensor,
    fake_logits: Tensor | None = None,
    *,
    adversarial_weight: float = 1.0,
    norm: str = "l2",
) -> Tensor:
    r"""The CRF's objective, paper eq. 13: ``L_NT-F = L_NT + lambda L_SCE(D(M(z~)), 1)``.

    Args:
        output: ``M(z~)``.
        target: ``z``.
        fake_logits: ``D(M(z~))`` (keep the graph to the layer); ``None`` gives ``L_NT``.
        adversarial_weight: ``lambda`` (``1`` in the paper).
        norm: passed to :func:`denoising_loss`.
    """
    loss = denoising_loss(output, target, norm=norm)
    if fake_logits is None:
        return loss
    if isinstance(adversarial_weight, bool) or not isinstance(adversarial_weight, (int, float)) or adversarial_weight < 0:
        raise ValueError(f"adversarial_weight must be a non-negative number, got {adversarial_weight!r}")
    return loss + adversarial_weight * sigmoid_cross_entropy(fake_logits, 1.0)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    r"""The discriminator's objective, paper eq. 14.

    ``L_disc = L_SCE(D(z), 1) + L_SCE(D(M(z~)), 0)``: ``real_logits = D(z)`` on natural
    latents, ``fake_logits = D(M(z~).detach())`` on the layer's outputs.
    """
    return sigmoid_cross_entropy(real_logits, 1.0) + sigmoid_cross_entropy(fake_logits, 0.0)
