"""Training: the two-stage trainer, resumable data, pickle-free checkpoints, torchrun support."""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import ImagePatches, LatentShards, NoiseSpec, ResumableDistributedSampler
from .distributed import DistInfo, init_distributed
from .schedule import WarmupCosine, warmup_cosine_scheduler
from .trainer import TrainConfig, Trainer, plot_loss_curve, read_log

__all__ = [
    "TrainConfig",
    "Trainer",
    "ImagePatches",
    "LatentShards",
    "NoiseSpec",
    "ResumableDistributedSampler",
    "DistInfo",
    "init_distributed",
    "WarmupCosine",
    "warmup_cosine_scheduler",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "plot_loss_curve",
    "read_log",
]
