"""The two-stage trainer (paper 3.4-3.5, section 4).

Stage 1 learns from clean samples ``z`` (latents or image patches) corrupted on the fly
(:class:`~energycrf.training.data.NoiseSpec`: the paper's ``z~ = sqrt(a) z + sqrt(1-a) n``
or additive Gaussian noise), with the denoising loss ``L_NT = ||z - M(z~)||_2`` and,
when ``adversarial=True``, the latent adversarial game: the model minimises
``L_NT-F = L_NT + L_SCE(D(M(z~)), 1)`` (eq. 13) and the discriminator, in an alternating
step on the same batch, ``L_disc = L_SCE(D(z), 1) + L_SCE(D(M(z~)), 0)`` (eq. 14).
Stage 2 distils a diffusion model: ``L_DT = ||z_f - M(z_s)||_2`` on ``(z_s, z_f)``
pairs read from safetensors shards, started from a stage-1 checkpoint.

Optimisation follows the paper: AdamW with linear warm-up and cosine decay (5000
warm-up steps, base rate 1e-3 in stage 1 and 1e-5 in stage 2 by default). On CUDA the
forward pass runs under ``torch.autocast`` (float16 with a ``GradScaler``, or bfloat16);
on CPU everything stays float32.

Checkpoints (:mod:`energycrf.training.checkpoint`) hold the weights, the optimiser,
scheduler and grad-scaler states, the global RNG states and the data position, so a
run stopped after ``k`` steps and resumed ends bit-identical to an uninterrupted run
(same device and thread settings). Under ``torchrun`` the model is wrapped in
``DistributedDataParallel`` and each process reads its share of every global batch
(:class:`~energycrf.training.data.ResumableDistributedSampler`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..io import read_safetensors
from .checkpoint import (STATE_JSON, atomic_write_text, capture_rng_state, latest_checkpoint, load_checkpoint,
                         prune_checkpoints, save_checkpoint)
from .config import TrainConfig
from .data import NoiseSpec, ResumableDistributedSampler, collate
from .distributed import DistInfo, all_reduce_mean, barrier, init_distributed, max_over_ranks
from .guards import NonFiniteGuard, RunningStats, grads_finite, nonfinite_input
from .logs import plot_loss_curve, read_log
from .resume import newest_resumable, read_trainer_checkpoint, restore
from .schedule import warmup_cosine_scheduler
from .stopping import StopRequest

__all__ = ["TrainConfig", "Trainer", "plot_loss_curve", "read_log"]


def _default_forward(model: nn.Module, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    return model(x) if c is None else model(x, c)


class Trainer:
    """Train ``model`` (``M``) on ``dataset`` with the config's stage and objectives.

    Parameters
    ----------
    model:
        the module to train, called as ``model(x)`` or ``model(x, c)`` (or through
        ``forward_fn(model, x, c)``).
    config:
        a :class:`TrainConfig`.
    dataset:
        stage 1: items with ``"z"`` (clean sample) and ``"index"``; stage 2: items with
        ``"z_s"``, ``"z_f"`` and ``"index"`` (see :mod:`energycrf.training.data`);
        an optional condition under ``config.condition_key``.
    discriminator:
        required when ``config.adversarial`` (e.g. the appendix-D discriminator).
    loss_fn:
        ``loss_fn(pred, target) -> scalar``; defaults to ``L_NT`` (stage 1) or
        ``L_DT`` (stage 2) from :mod:`energycrf.learned.losses`.
    gen_adv_fn, disc_loss_fn:
        ``gen_adv_fn(logits_fake) -> scalar`` (the ``L_SCE(D(M(z~)), 1)`` term of
        eq. 13) and ``disc_loss_fn(logits_real, logits_fake) -> scalar`` (eq. 14);
        default to :mod:`energycrf.learned.losses`.
    dist:
        a :class:`~energycrf.training.distributed.DistInfo`; by default read from the
        ``torchrun`` environment.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        dataset: Dataset,
        discriminator: nn.Module | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        gen_adv_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        disc_loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        forward_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
        dist: DistInfo | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        if config.adversarial and discriminator is None:
            raise ValueError("discriminator: config.adversarial=True needs a discriminator module, got None")
        self.config = config
        self.dist = dist if dist is not None else init_distributed(timeout=config.dist_timeout)
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.discriminator = discriminator.to(self.device) if discriminator is not None else None
        self.dataset = dataset
        self.forward_fn = forward_fn or _default_forward
        self.loss_fn = loss_fn or self._default_loss()
        if config.adversarial:
            self.gen_adv_fn, self.disc_loss_fn = self._default_adv(gen_adv_fn, disc_loss_fn)
        self.noise = NoiseSpec(config.noise_mode, config.noise_level)
        self.output_dir = Path(config.output_dir)

        self.model_ddp: nn.Module = self.model
        self.disc_ddp: nn.Module | None = self.discriminator
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model_ddp = DDP(self.model, device_ids=ids)
            if self.discriminator is not None:
                self.disc_ddp = DDP(self.discriminator, device_ids=ids)

        lr = config.base_lr
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=config.betas,
                                           eps=config.eps, weight_decay=config.weight_decay)
        self.scheduler = warmup_cosine_scheduler(self.optimizer, config.warmup_steps,
                                                 config.max_steps, config.min_lr_ratio)
        self.disc_optimizer = self.disc_scheduler = None
        if config.adversarial:
            self.disc_optimizer = torch.optim.AdamW(
                self.discriminator.parameters(), lr=config.disc_lr or lr, betas=config.betas,
                eps=config.eps, weight_decay=config.weight_decay)
            self.disc_scheduler = warmup_cosine_scheduler(self.disc_optimizer, config.warmup_steps,
                                                          config.max_steps, config.min_lr_ratio)
        self.use_amp = bool(config.amp) and self.device.type == "cuda"
        self.amp_dtype = getattr(torch, config.amp_dtype)
        scaler_on = self.use_amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=scaler_on)
        self.disc_scaler = torch.amp.GradScaler("cuda", enabled=scaler_on)

        self.sampler = ResumableDistributedSampler(
            dataset, batch_size=config.batch_size, num_replicas=self.dist.world_size,
            rank=self.dist.rank, seed=config.seed)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.guard = NonFiniteGuard(config.on_nonfinite)
        self._stats = RunningStats(self.model, self.discriminator)  # copied before each forward pass
        self._disc_stats = RunningStats(self.discriminator)
        self._saved_step: int | None = None
        self._saved_path: Path | None = None

    @property
    def skipped(self) -> int:
        """Batches skipped for non-finite values (``on_nonfinite="skip"``), over the whole run."""
        return self.guard.skipped

    # ------------------------------------------------------------------ losses
    def _default_loss(self):
        from functools import partial

        from energycrf.learned import losses

        fn = losses.denoising_loss if self.config.stage == 1 else losses.distillation_loss
        return partial(fn, norm=self.config.loss_norm)

    def _default_adv(self, gen_adv_fn, disc_loss_fn):
        from energycrf.learned import losses

        def gen_adv(logits_fake):  # the L_SCE(D(M(z~)), 1) term of eq. 13
            return losses.sigmoid_cross_entropy(logits_fake, 1.0)

        return gen_adv_fn or gen_adv, disc_loss_fn or losses.discriminator_loss

    def _disc_logits(self, disc: nn.Module, real: torch.Tensor, fake: torch.Tensor):
        # one batch through D so that its batch norm sees real and generated latents together
        logits = disc(torch.cat([real, fake], dim=0)).float()
        return logits[: real.shape[0]], logits[real.shape[0]:]

    # ------------------------------------------------------------------ data
    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def _batches(self):
        """Yield ``(epoch, batch)`` from the current step on, epoch after epoch."""
        while True:
            epoch, start = divmod(self.step, self.batches_per_epoch)
            self.sampler.set_epoch(epoch)
            self.sampler.start_batch = start
            # a private generator: creating a loader iterator must not draw from the global RNG
            loader = DataLoader(self.dataset, batch_size=self.config.batch_size, sampler=self.sampler,
                                collate_fn=collate, drop_last=True, num_workers=0,
                                generator=torch.Generator().manual_seed(self.config.seed + epoch))
            for batch in loader:
                yield epoch, batch

    def _inputs(self, epoch: int, batch: dict[str, Any]):
        cfg = self.config
        c = batch.get(cfg.condition_key)
        if cfg.stage == 1:
            z = batch["z"].float()
            noise, level = self.noise.draw(z.shape[1:], batch["index"], cfg.seed, epoch)
            x = self.noise.apply(z, noise, level)
            target = z
        else:
            x, target = batch["z_s"].float(), batch["z_f"].float()
        dev = self.device
        return x.to(dev), target.to(dev), (c.to(dev) if c is not None else None)

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _reject(self, bad: bool, what: str, detail: str, stats: RunningStats, optimizer, agree: bool = True,
                kept: str | None = None) -> bool:
        """Whether a rank found ``what`` non-finite (agreed over ranks unless ``agree=False``); if
        so, put ``stats`` back, drop ``optimizer``'s gradients, then stop or skip (the guard)."""
        worst = max_over_ranks([self.dist.rank + 1 if bad else 0], self.device)[0] if agree else int(bad)
        if not worst:
            return False
        stats.restore()
        optimizer.zero_grad(set_to_none=True)
        if not bad:
            what, detail = f"{what} on rank {worst - 1}", f"the {what} is non-finite on rank {worst - 1}"
        self.guard.handle(what, detail, self.step, self.batches_per_epoch, kept)
        return True

    def train_step(self, x: torch.Tensor, target: torch.Tensor, c: torch.Tensor | None) -> dict[str, float] | None:
        """One update on a checked batch; ``None`` when a non-finite loss or gradient skipped it."""
        cfg = self.config
        self.model_ddp.train()
        logs: dict[str, torch.Tensor] = {}
        self.optimizer.zero_grad(set_to_none=True)
        self._stats.save()
        with self._autocast():
            pred = self.forward_fn(self.model_ddp, x, c)
            m = cfg.loss_margin
            if m:
                h, w = pred.shape[-2:]
                if 2 * m >= min(h, w):
                    raise ValueError(f"loss_margin: {m} leaves nothing of a {h}x{w} sample")
                loss_main = self.loss_fn(pred[..., m:h - m, m:w - m].float(), target[..., m:h - m, m:w - m])
            else:
                loss_main = self.loss_fn(pred.float(), target)
            loss = loss_main
            if cfg.adversarial:
                self.discriminator.requires_grad_(False)
                _, fake_logits = self._disc_logits(self.discriminator, target, pred)
                adv = self.gen_adv_fn(fake_logits)
                self.discriminator.requires_grad_(True)
                loss = loss_main + cfg.adv_weight * adv
                logs["loss_adv"] = adv.detach()
        if self._reject(not bool(torch.isfinite(loss.detach())), "loss", f"the loss is {loss.item()}",
                        self._stats, self.optimizer):
            return None
        self.scaler.scale(loss).backward()
        # gradients are all-reduced, the same on every rank; a float16 GradScaler skips inf / NaN steps itself
        if not self.scaler.is_enabled() and self._reject(not grads_finite(self.model.parameters()), "gradient",
                                                         "a gradient holds NaN or inf", self._stats,
                                                         self.optimizer, agree=False):
            return None
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logs["loss"] = loss.detach()
        logs["loss_main"] = loss_main.detach()

        if cfg.adversarial:
            self.disc_ddp.train()
            self.disc_optimizer.zero_grad(set_to_none=True)
            self._disc_stats.save()
            with self._autocast():
                d_loss = self.disc_loss_fn(*self._disc_logits(self.disc_ddp, target, pred.detach()))
            kept = ("the model was updated by this batch; the discriminator's weights, running statistics and "
                    "optimiser are as before it")
            if not self._reject(not bool(torch.isfinite(d_loss.detach())), "discriminator loss",
                                f"the discriminator loss is {d_loss.item()}", self._disc_stats,
                                self.disc_optimizer, kept=kept):
                self.disc_scaler.scale(d_loss).backward()
                if self.disc_scaler.is_enabled() or not self._reject(
                        not grads_finite(self.discriminator.parameters()), "discriminator gradient",
                        "a discriminator gradient holds NaN or inf", self._disc_stats, self.disc_optimizer,
                        agree=False, kept=kept):
                    self.disc_scaler.step(self.disc_optimizer)
                    self.disc_scaler.update()
                    self.disc_scheduler.step()
                    logs["loss_disc"] = d_loss.detach()
        return {k: float(all_reduce_mean(v.float())) for k, v in logs.items()}

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        cfg = self.config
        epoch, batch = divmod(self.step, self.batches_per_epoch)
        st: dict[str, Any] = {
            "step": self.step,
            "config": cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "data": {"seed": cfg.seed, "epoch": epoch, "batch_in_epoch": batch,
                     "batches_per_epoch": self.batches_per_epoch,
                     "global_batch": cfg.batch_size * self.dist.world_size,
                     "world_size": self.dist.world_size},
            "nonfinite_skipped": self.guard.skipped,
        }
        if cfg.adversarial:
            st["disc_optimizer"] = self.disc_optimizer.state_dict()
            st["disc_scheduler"] = self.disc_scheduler.state_dict()
            st["disc_scaler"] = self.disc_scaler.state_dict()
        return st

    def save_checkpoint(self) -> Path | None:
        """Write ``output_dir/step-N`` (rank 0) and point ``output_dir/latest`` at it.

        The log goes first (a checkpoint never runs ahead of it: resuming keeps the
        records up to its step), then the checkpoint, the pointer, the pruning of old
        checkpoints and the picture; a kill between any two leaves a resumable run.
        """
        path = None
        if self.dist.is_main:
            modules: dict[str, nn.Module] = {"model": self.model}
            if self.discriminator is not None:
                modules["discriminator"] = self.discriminator
            name = f"step-{self.step:07d}"
            self._write_log()
            path = save_checkpoint(self.output_dir / name, modules, self.state())
            atomic_write_text(self.output_dir / "latest", name + "\n")
            prune_checkpoints(self.output_dir, self.config.keep_checkpoints, keep=name)
            plot_loss_curve(self.output_dir / "log.jsonl", self.output_dir / "loss_curve.png")
        barrier()
        self._saved_step, self._saved_path = self.step, path
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, optimiser, scheduler, scaler, RNG and data position from ``path``.

        All or nothing (:mod:`energycrf.training.resume`): the files are verified and
        every field and compatibility check passes before any state is replaced.
        """
        modules, st = read_trainer_checkpoint(path)
        restore(self, path, modules, st)

    def init_from(self, path: str | Path, strict: bool = True) -> None:
        """Load only the model weights of a checkpoint (stage 2 starts from stage 1): a
        checkpoint folder, a run's ``output_dir`` (its newest checkpoint, as ``latest`` names
        it), a ``.safetensors`` file or a folder holding one."""
        path = Path(path)
        if path.is_dir() and not (path / STATE_JSON).is_file():
            path = latest_checkpoint(path) or path  # a run folder: its newest checkpoint
        if (path / STATE_JSON).is_file():
            modules, _ = load_checkpoint(path)
            sd = modules["model"]
        else:
            files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
            if not files:
                raise ValueError(f"path: no checkpoint or .safetensors weights at {str(path)!r}")
            sd = read_safetensors(files[0])
        self.model.load_state_dict(sd, strict=strict)

    # ------------------------------------------------------------------ logging
    def _write_log(self) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write_text(self.output_dir / "log.jsonl", lines)

    # ------------------------------------------------------------------ main loop
    def fit(self, stop_after: int | None = None, resume: bool = True) -> dict[str, Any]:
        """Train until ``config.max_steps`` (or ``stop_after`` more steps) and checkpoint.

        ``resume=True`` continues from ``output_dir/latest`` when it exists (from the newest
        checkpoint that reads whole when it is damaged, with a warning). SIGINT /
        SIGTERM finish the current step, write a checkpoint and return; under ``torchrun``
        the ranks agree before every step, so all stop after the same one (also when
        ``torchrun`` itself was killed, :mod:`energycrf.training.stopping`). Batches, losses
        and gradients with NaN / inf stop or are skipped (``config.on_nonfinite``).
        Returns ``{"step", "loss", "checkpoint", "stopped"}``; ``stopped`` says a stop was
        requested during this call, also when it came during the last step, which then ends as
        planned (call ``fit`` again only when it is False).
        """
        cfg = self.config
        if stop_after is not None and (not isinstance(stop_after, int) or stop_after < 0):
            raise ValueError(f"stop_after: expected an int >= 0 or None, got {stop_after!r}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume:  # the newest checkpoint that reads whole; damaged newer ones are skipped with a warning
            found = newest_resumable(self.output_dir)
            if found is not None:
                restore(self, *found)
        if self.dist.is_main:
            atomic_write_text(self.output_dir / "config.json", json.dumps(cfg.to_dict(), indent=1))
        end = cfg.max_steps if stop_after is None else min(cfg.max_steps, self.step + stop_after)
        self._saved_step = None  # a checkpoint written by this call, not an earlier one, may serve as the final one

        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"stage {cfg.stage}", dynamic_ncols=True)
        last: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            with StopRequest() as stop:
                for epoch, batch in (self._batches() if self.step < end else ()):
                    x, target, c = self._inputs(epoch, batch)
                    # the ranks agree before each step: all stop after the same one, all skip (or stop on) a
                    # batch with NaN / inf on any rank, before the forward pass can touch the statistics
                    found = nonfinite_input({"x": x, "target": target, cfg.condition_key: c})
                    stopping, worst = max_over_ranks([int(stop.local()), self.dist.rank + 1 if found else 0],
                                                     self.device)
                    if stopping:
                        break
                    lr = self.optimizer.param_groups[0]["lr"]
                    skipped = self.guard.skipped
                    out = None
                    if worst:
                        self.guard.handle(*(found or (f"input on rank {worst - 1}",
                                                      f"an input on rank {worst - 1} holds NaN or inf")),
                                          self.step, self.batches_per_epoch)
                    else:
                        out = self.train_step(x, target, c)
                    self.step += 1
                    last = out or last
                    rec = {"step": self.step, "epoch": epoch, "lr": lr, **(out or {})}
                    if self.guard.mode == "skip":
                        rec["skipped"] = self.guard.skipped
                    if self.guard.skipped != skipped:
                        rec["nonfinite"] = self.guard.last
                    rec["time"] = round(time.perf_counter() - t0, 4)
                    if "nonfinite" in rec or cfg.log_every and (self.step % cfg.log_every == 0 or self.step == end):
                        self.history.append(rec)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{last.get('loss', math.nan):.4g}", lr=f"{lr:.2e}")
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                        self.save_checkpoint()
                    if self.step >= end:
                        break
                # the final checkpoint (unless this step's was just written): rank 0 writes, all ranks meet in
                # its barrier; a repeated signal does not interrupt it
                path = self._saved_path if self._saved_step == self.step else self.save_checkpoint()
                # a signal during the last step (or its checkpoint) ended no loop, but it asked for a stop: the
                # caller must hear of it, or a loop of fit(stop_after=n) calls would lose it (agreed by the ranks)
                (stopped,) = max_over_ranks([int(stop.local())], self.device)
        finally:
            if bar is not None:
                bar.close()
        return {"step": self.step, "loss": last.get("loss", math.nan), "checkpoint": path, "stopped": bool(stopped)}
