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


def forward_signalling_at(call: int | None):
    """A trainer ``forward_fn`` (``model(x)``) that sends this process SIGTERM during its ``call``-th
    call (1-based; ``None``: never): a signal arriving in the middle of a training step."""
    import os
    import signal

    calls = [0]

    def forward(model, x, c):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return model(x)

    return forward


def ddp_stop_worker(rank: int, world: int, port: int, out_dir: str, stop_at: dict[int, int], steps: int) -> None:
    """One process of a 2-process run stopped by SIGTERM, then resumed (spawned by the tests).

    In one process group: an uninterrupted run to ``steps`` in ``out_dir/whole``; a run in
    ``out_dir/stopped`` where rank ``r`` sends itself SIGTERM during the forward pass of step
    ``stop_at[r]`` (the ranks are hit at different steps, as by a signal reaching them apart
    in time); then a fresh trainer that resumes it to ``steps``. Writes what each fit returned
    (and, rank 0, the checkpoints after the stop) to ``out_dir/rank-R.json``.
    """
    import json
    import os
    from pathlib import Path

    from energycrf.training import ImagePatches, TrainConfig, Trainer, init_distributed
    from energycrf.training.distributed import barrier, cleanup_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = Path(out_dir)
    info = init_distributed(device="cpu")
    ds = ImagePatches(toy_images(3, 32), patch_size=12, length=32, seed=1)  # 8 global batches of 4 / epoch

    def fit(name: str, signal_at: int | None = None) -> dict:
        torch.manual_seed(0)
        forward = forward_signalling_at(signal_at)
        cfg = TrainConfig(output_dir=str(out / name), max_steps=steps, batch_size=2, lr=3e-3, warmup_steps=2,
                          noise_mode="sigma", noise_level=(0.05, 0.2), log_every=1, progress=False, seed=5)
        res = Trainer(ToyDenoiser(dropout=0.1), cfg, ds, forward_fn=forward, dist=info).fit()
        return {"step": res["step"], "checkpoint": None if res["checkpoint"] is None else str(res["checkpoint"])}

    try:
        report = {"whole": fit("whole"), "stopped": fit("stopped", stop_at.get(rank))}
        barrier()
        report["after_stop"] = sorted(p.name for p in (out / "stopped").iterdir())
        report["resumed"] = fit("stopped")
        (out / f"rank-{rank}.json").write_text(json.dumps(report))
    finally:
        cleanup_distributed()


def ddp_nonfinite_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One process of a 2-process run where one rank meets a NaN (spawned by the tests).

    ``stop``: rank 1's input holds a NaN at step 3; ``skip``: rank 1's input at step 2 and
    rank 0's loss at step 4 are NaN. Writes what each rank saw to ``out_dir/rank-R.json``.
    """
    import json
    import os
    from pathlib import Path

    from energycrf.training import ImagePatches, TrainConfig, Trainer, init_distributed
    from energycrf.training.distributed import cleanup_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = Path(out_dir)
    info = init_distributed(device="cpu", timeout=60)
    ds = ImagePatches(toy_images(3, 32), patch_size=12, length=32, seed=1)

    class Poisoning(Trainer):
        def _inputs(self, epoch, batch):
            x, target, c = super()._inputs(epoch, batch)
            if self.dist.rank == 1 and self.step + 1 == self.bad_input_step:
                x = x.clone()
                x[0, 0, 2, 2] = float("nan")
            return x, target, c

    def trainer(name: str, mode: str, bad_input_step: int, bad_loss_step: int | None = None) -> Poisoning:
        torch.manual_seed(0)

        def forward(model, x, c):
            y = model(x)
            return y * float("nan") if rank == 0 and tr.step + 1 == bad_loss_step else y

        cfg = TrainConfig(output_dir=str(out / name), max_steps=6, batch_size=2, lr=3e-3, warmup_steps=2,
                          noise_mode="sigma", noise_level=0.1, log_every=1, progress=False, seed=5,
                          on_nonfinite=mode)
        tr = Poisoning(ToyDenoiser(), cfg, ds, forward_fn=forward, dist=info)
        tr.bad_input_step = bad_input_step
        return tr

    report = {}
    try:
        tr = trainer("stop", "stop", 3)
        try:
            tr.fit()
        except FloatingPointError as e:
            report["stop"] = {"error": str(e), "step": tr.step}
        tr = trainer("skip", "skip", 2, 4)
        res = tr.fit()
        report["skip"] = {"step": res["step"], "skipped": tr.skipped}
        (out / f"rank-{rank}.json").write_text(json.dumps(report))
    finally:
        cleanup_distributed()
