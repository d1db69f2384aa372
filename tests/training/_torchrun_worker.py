"""A worker script for ``torchrun --nproc_per_node 2`` (run by ``test_distributed_stop.py``).

Trains the toy model without end in ``OUT/run``; writes ``OUT/pid-RANK`` at the start,
``OUT/running-RANK`` once a few steps are done and ``OUT/done-RANK.json`` when ``fit``
returns. The repository root must be on ``PYTHONPATH``.
"""

import json
import os
import sys
from pathlib import Path

import torch

from energycrf.training import ImagePatches, TrainConfig, Trainer
from tests.training._toy import ToyDenoiser, toy_images

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
(out / f"pid-{rank}").write_text(str(os.getpid()))
torch.set_num_threads(1)
torch.manual_seed(0)
calls = [0]


def forward(model, x, c):
    calls[0] += 1
    if calls[0] == 3:
        (out / f"running-{rank}").write_text("")
    return model(x)


cfg = TrainConfig(output_dir=str(out / "run"), max_steps=10**6, batch_size=2, lr=1e-3, warmup_steps=2,
                  noise_mode="sigma", noise_level=0.1, log_every=100, progress=False, seed=5)
ds = ImagePatches(toy_images(2, 24), patch_size=8, length=16, seed=1)
res = Trainer(ToyDenoiser(), cfg, ds, forward_fn=forward).fit()
(out / f"done-{rank}.json").write_text(json.dumps({"step": res["step"]}))
