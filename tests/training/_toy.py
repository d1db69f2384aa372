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


def ddp_worker(rank: int, world: int, port: int, out_dir: str, per_rank_batch: int, steps: int) -> None:
    """One process of a gloo ``DistributedDataParallel`` run (spawned by the tests)."""
    import os

    from energycrf.training import ImagePatches, TrainConfig, Trainer, init_distributed
    from energycrf.training.distributed import cleanup_distributed

    saved_env, saved_threads = dict(os.environ), torch.get_num_threads()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        info = init_distributed(device="cpu")
        torch.manual_seed(0)
        model = ToyDenoiser(dropout=0.0)
        cfg = TrainConfig(output_dir=out_dir, max_steps=steps, batch_size=per_rank_batch, lr=3e-3,
                          warmup_steps=2, noise_mode="sigma", noise_level=(0.05, 0.2), log_every=1,
                          progress=False, seed=5)
        ds = ImagePatches(toy_images(3, 32), patch_size=12, length=64, seed=1)
        Trainer(model, cfg, ds, dist=info).fit()
    finally:
        cleanup_distributed()
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
