"""Small models and data shared by the training tests (fast on 2 CPU cores)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ToyDenoiser(nn.Module):
    """A residual two-layer CNN with dropout (so the global torch RNG matters)."""

    def __init__(self, channels: int = 1, width: int = 6, dropout: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.drop = nn.Dropout2d(dropout)
        self.conv2 = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, c=None):
        return x - self.conv2(self.drop(torch.relu(self.conv1(x))))


def toy_images(n: int = 3, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ims = []
    for _ in range(n):
        a, b, c = rng.uniform(1, 4, 3)
        ims.append((0.5 + 0.4 * np.sin(a * 3 * xx + b * 2 * yy) * np.cos(c * 2 * yy)).astype(np.float32))
    return ims
