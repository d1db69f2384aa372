"""Train ``ec.LatentCRF`` for the Fashion-MNIST pipeline (paper 3.4-3.5) with the project's trainer.

- **Stage 1** (3.4): VAE latents ``z`` of real training photographs, each paired with the
  MiniLM token states of a training caption of its class, corrupted as
  ``z~ = sqrt(a) z + sqrt(1 - a) n`` with ``a`` drawn around ``abar(t_s)`` (the splice
  point, t_s = 201 for the paper's plan); loss ``L_NT-F = L_NT + L_SCE(D(M(z~)), 1)``
  (eq. 13) against the appendix-D discriminator (eq. 14).
- **Stage 2** (3.5): ``L_DT = ||z_f - M(z_s)||_2`` on ``(z_s, z_f, prompt_embeds)``
  written by :func:`energycrf.integrations.distill.generate_distillation_data` from the
  pipeline's own DDIM trajectories, started from the stage-1 weights.

The model, losses and training loop are the library's (:class:`energycrf.LatentCRF`,
:mod:`energycrf.learned.losses`, :class:`energycrf.training.Trainer`); this module supplies the
data and the configuration.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from energycrf.apps.ldm import captions as _captions

CRF_CONFIG = dict(channels=4, cond_dim=384, num_iterations=5, hidden_channels=32, attention_dim=32, num_filters=8,
                  normalization="none")  # starts at the identity (the latents' channels differ in scale)


def build_crf(**overrides):
    """The LatentCRF used for the Fashion-MNIST pipeline (4 latent channels, 384-dim MiniLM context)."""
    from energycrf.learned.latent_crf import LatentCRF

    return LatentCRF(**{**CRF_CONFIG, **overrides})


class CaptionedLatents(Dataset):
    """Stage-1 items ``{"z", "prompt_embeds", "index"}``: latent ``i`` with a caption of its class.

    The caption of item ``i`` is drawn by a generator seeded with ``(seed, i)`` from the
    training captions (:data:`energycrf.apps.ldm.captions.TRAIN_TEMPLATES`), so epochs and
    resumptions see the same pairs.
    """

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor, bank, seed: int = 0):
        if latents.ndim != 4:
            raise ValueError(f"latents must be (N, C, h, w), got {tuple(latents.shape)}")
        if len(labels) != len(latents):
            raise ValueError(f"labels must have {len(latents)} entries, got {len(labels)}")
        self.latents, self.labels = latents, torch.as_tensor(labels)
        self.emb, self.per_class, _ = bank
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        pool = self.per_class[int(self.labels[index])]
        cap = random.Random(self.seed * 1_000_003 + index).choice(pool)
        return {"z": self.latents[index], "prompt_embeds": self.emb[cap], "index": index}


def alpha_range(scheduler_config: dict, t_low: int, t_high: int) -> tuple[float, float]:
    """``(abar(t_high), abar(t_low))``: the stage-1 noise levels between two timesteps."""
    from diffusers import DDIMScheduler

    a = DDIMScheduler.from_config(scheduler_config).alphas_cumprod
    return float(a[t_high]), float(a[t_low])


def train_stage1(crf, dataset, out_dir: str | Path, steps: int, noise_level: tuple[float, float],
                 batch_size: int = 64, lr: float = 1e-3, warmup: int = 50, adversarial: bool = True,
                 adv_weight: float = 0.1, seed: int = 0, progress: bool = True):
    """Stage 1 with :class:`energycrf.training.Trainer` (resumes from ``out_dir``); returns the fit summary."""
    from energycrf.learned.losses import LatentDiscriminator
    from energycrf.training import TrainConfig, Trainer

    cfg = TrainConfig(output_dir=str(out_dir), stage=1, max_steps=steps, batch_size=batch_size, lr=lr,
                      warmup_steps=warmup, noise_mode="alpha", noise_level=noise_level, adversarial=adversarial,
                      adv_weight=adv_weight, seed=seed, log_every=10, checkpoint_every=100, progress=progress,
                      grad_clip=1.0)
    disc = LatentDiscriminator(crf.channels, channels=(32, 32, 64)) if adversarial else None
    trainer = Trainer(crf, cfg, dataset, discriminator=disc)
    return trainer.fit()


def train_stage2(crf, shard_dir: str | Path, out_dir: str | Path, steps: int, init: str | Path | None = None,
                 batch_size: int = 32, lr: float = 3e-4, warmup: int = 20, seed: int = 0, progress: bool = True):
    """Stage 2 distillation on the shards (``L_DT``), from the stage-1 checkpoint ``init``."""
    from energycrf.training import TrainConfig, Trainer
    from energycrf.training.data import LatentShards

    data = LatentShards(shard_dir, keys=("z_s", "z_f"), optional_keys=("prompt_embeds",))
    cfg = TrainConfig(output_dir=str(out_dir), stage=2, max_steps=steps, batch_size=batch_size, lr=lr,
                      warmup_steps=warmup, seed=seed, log_every=10, checkpoint_every=100, progress=progress,
                      grad_clip=1.0)
    trainer = Trainer(crf, cfg, data)
    if init is not None and trainer.step == 0 and not (Path(out_dir) / "latest").exists():
        trainer.init_from(init)
    return trainer.fit()


def distillation_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` training captions, classes in turn (never the held-out evaluation templates)."""
    rng = random.Random(seed)
    k = len(_captions.CLASS_SYNONYMS)
    return [_captions.random_caption(i % k, rng) for i in range(n)]
