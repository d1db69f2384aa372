"""The trainer's configuration: everything that defines a training run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .data import NoiseSpec
from .distributed import _check_timeout
from .guards import ON_NONFINITE

__all__ = ["TrainConfig"]

_STAGE_LR = {1: 1e-3, 2: 1e-5}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint).

    ``batch_size`` is per process; the global batch is ``batch_size * world_size``.
    ``lr=None`` takes the paper's rate for the stage (1e-3 or 1e-5). ``noise_mode`` and
    ``noise_level`` (a number or a ``[low, high]`` range) define stage 1's corruption.
    ``checkpoint_every=0`` writes a checkpoint only when the run stops. ``loss_margin``
    leaves a border of that many sites out of the main loss (patches whose zero-padded
    borders would otherwise weigh on what is learned for the interior).
    ``on_nonfinite``: what a batch, loss or gradient holding NaN / inf does: ``"stop"`` raises
    a ``FloatingPointError`` naming the step and the batch, ``"skip"`` skips the batch and
    counts it (:mod:`energycrf.training.guards`); neither lets it reach the weights.
    ``dist_timeout``: seconds the processes of a ``torchrun`` run wait for each other, at
    the rendezvous and in every collective (``None``: torch's default, 30 min for gloo).
    """

    output_dir: str = "runs/energycrf"
    stage: int = 1
    max_steps: int = 1000
    batch_size: int = 16
    lr: float | None = None
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 5000
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    noise_mode: str = "alpha"
    noise_level: float | tuple[float, float] = 0.5
    adversarial: bool = False
    adv_weight: float = 1.0
    loss_norm: str = "l2"
    loss_margin: int = 0
    disc_lr: float | None = None
    amp: bool = True
    amp_dtype: str = "float16"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True
    condition_key: str = "prompt_embeds"
    on_nonfinite: str = "stop"
    dist_timeout: float | None = None

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage: expected 1 or 2, got {self.stage!r}")
        for name in ("max_steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        for name in ("warmup_steps", "log_every", "checkpoint_every", "keep_checkpoints", "loss_margin"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr: expected a positive float or None, got {self.lr!r}")
        if self.loss_norm not in ("l2", "mse"):
            raise ValueError(f"loss_norm: expected 'l2' (the paper) or 'mse', got {self.loss_norm!r}")
        if self.amp_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"amp_dtype: expected 'float16' or 'bfloat16', got {self.amp_dtype!r}")
        if not isinstance(self.on_nonfinite, str) or self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite: expected 'stop' or 'skip', got {self.on_nonfinite!r}")
        if self.dist_timeout is not None and not isinstance(self.dist_timeout, (int, float)):
            raise TypeError("dist_timeout: expected a number of seconds or None, "
                            f"got {type(self.dist_timeout).__name__}")
        _check_timeout(self.dist_timeout, "dist_timeout")
        self.betas = tuple(float(b) for b in self.betas)
        if isinstance(self.noise_level, list):
            self.noise_level = tuple(self.noise_level)
        NoiseSpec(self.noise_mode, self.noise_level)  # validates

    @property
    def base_lr(self) -> float:
        return float(self.lr) if self.lr is not None else _STAGE_LR[self.stage]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        if isinstance(self.noise_level, tuple):
            d["noise_level"] = list(self.noise_level)
        return d
