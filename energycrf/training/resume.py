"""Resuming a :class:`~energycrf.training.trainer.Trainer` from a checkpoint, all or nothing.

Three phases, in this order:

1. **read** (:func:`read_trainer_checkpoint`): the files are verified
   (:func:`~energycrf.training.checkpoint.load_checkpoint`) and every field the trainer
   restores is checked (``step`` an int >= 0 that agrees with the data position,
   optimiser, scheduler, scaler and RNG states of the right form); a failure is an
   :class:`~energycrf.io.IntegrityError` naming ``state.json`` and the field.
2. **check** (:func:`check_compatible`): the checkpoint must fit this run: the same
   global batch (the data order depends on it), the same weight names and shapes, the
   same optimiser parameter groups; a failure is a ``ValueError`` naming the checkpoint.
3. **apply** (:func:`restore`): only then are the weights, optimiser, scheduler, grad
   scaler, RNG states, step and log history replaced.

:func:`newest_resumable` reads the run's checkpoints newest first and skips damaged
ones with an :class:`~energycrf.io.IntegrityWarning` naming the damaged one and the
one used.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..io import IntegrityError, IntegrityWarning
from .checkpoint import STATE_JSON, checkpoint_candidates, load_checkpoint, restore_rng_state
from .logs import read_log_records

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

__all__ = ["read_trainer_checkpoint", "check_compatible", "restore", "newest_resumable"]

_PY_STATE_LEN = len(random.getstate()[1])
_TORCH_STATE_LEN = torch.get_rng_state().numel()
_NUMPY_KEY_LEN = 624


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


class _Fields:
    """Checks on the fields of one ``state.json``; each failure names the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def require(self, ok: bool, field: str, expected: str, value: Any) -> None:
        if not ok:
            text = repr(value)
            text = text if len(text) <= 80 else text[:77] + "..."  # a long value shortened, visibly
            raise IntegrityError(f"{str(self.path)!r}: field {field!r} must be {expected}, got {text}")

    def get(self, st: dict, field: str) -> Any:
        *parents, key = field.split(".")
        for p in parents:
            st = st[p]
        if key not in st:
            raise IntegrityError(f"{str(self.path)!r}: field {field!r} is missing")
        return st[key]

    def mapping(self, st: dict, field: str) -> dict:
        v = self.get(st, field)
        self.require(isinstance(v, dict), field, "an object", v)
        return v

    def optimizer(self, st: dict, field: str) -> None:
        self.require(isinstance(self.mapping(st, field).get("state"), dict), f"{field}.state", "an object",
                     st[field].get("state"))
        groups = self.get(st, f"{field}.param_groups")
        self.require(isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                      for g in groups),
                     f"{field}.param_groups", "a list of groups with 'params' lists", groups)


def validate_trainer_state(st: Any, path: Path) -> None:
    """Check the fields :func:`restore` uses (``path``: the checkpoint's ``state.json``)."""
    f = _Fields(path)
    f.require(isinstance(st, dict), "state", "an object", st)
    step = f.get(st, "step")
    f.require(_is_int(step), "step", "an int >= 0", step)
    f.mapping(st, "config")
    if "nonfinite_skipped" in st:  # absent from checkpoints written before the non-finite guard
        f.require(_is_int(st["nonfinite_skipped"]), "nonfinite_skipped", "an int >= 0", st["nonfinite_skipped"])
    f.optimizer(st, "optimizer")
    f.mapping(st, "scheduler")
    f.mapping(st, "scaler")
    if any(k in st for k in ("disc_optimizer", "disc_scheduler", "disc_scaler")):
        f.optimizer(st, "disc_optimizer")
        f.mapping(st, "disc_scheduler")
        f.mapping(st, "disc_scaler")
    f.mapping(st, "rng")
    py = f.mapping(st, "rng.python")
    internal = f.get(st, "rng.python.internal")
    f.require(isinstance(internal, list) and len(internal) == _PY_STATE_LEN and all(_is_int(v) for v in internal),
              "rng.python.internal", f"a list of {_PY_STATE_LEN} ints", internal)
    f.require(_is_int(f.get(st, "rng.python.version")), "rng.python.version", "an int", py["version"])
    gauss = f.get(st, "rng.python.gauss_next")
    f.require(gauss is None or isinstance(gauss, float), "rng.python.gauss_next", "None or a float", gauss)
    f.mapping(st, "rng.numpy")
    key = f.get(st, "rng.numpy.key")
    f.require(torch.is_tensor(key) and key.shape == (_NUMPY_KEY_LEN,) and not key.is_floating_point(),
              "rng.numpy.key", f"an integer tensor of {_NUMPY_KEY_LEN} entries", key)
    f.require(isinstance(f.get(st, "rng.numpy.kind"), str), "rng.numpy.kind", "a string", st["rng"]["numpy"]["kind"])
    for name in ("pos", "has_gauss"):
        f.require(_is_int(f.get(st, f"rng.numpy.{name}")), f"rng.numpy.{name}", "an int >= 0",
                  st["rng"]["numpy"][name])
    f.require(isinstance(f.get(st, "rng.numpy.cached_gaussian"), float), "rng.numpy.cached_gaussian", "a float",
              st["rng"]["numpy"]["cached_gaussian"])
    rt = f.get(st, "rng.torch")
    f.require(torch.is_tensor(rt) and rt.dtype == torch.uint8 and rt.shape == (_TORCH_STATE_LEN,), "rng.torch",
              f"a uint8 tensor of {_TORCH_STATE_LEN} entries", rt)
    if "cuda" in st["rng"]:
        cuda = st["rng"]["cuda"]
        f.require(isinstance(cuda, (list, tuple)) and all(torch.is_tensor(t) and t.dtype == torch.uint8 for t in cuda),
                  "rng.cuda", "a list of uint8 tensors", cuda)
    data = f.mapping(st, "data")
    for name in ("global_batch", "batches_per_epoch"):
        f.require(_is_int(f.get(st, f"data.{name}"), 1), f"data.{name}", "an int >= 1", data[name])
    for name in ("epoch", "batch_in_epoch"):
        f.require(_is_int(f.get(st, f"data.{name}")), f"data.{name}", "an int >= 0", data[name])
    position = data["epoch"] * data["batches_per_epoch"] + data["batch_in_epoch"]
    f.require(data["batch_in_epoch"] < data["batches_per_epoch"] and position == step, "data",
              f"the data position of step {step} (epoch x batches_per_epoch + batch_in_epoch)", data)


def read_trainer_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Phase 1: the verified files and the checked fields of a trainer checkpoint."""
    path = Path(path)
    modules, st = load_checkpoint(path)
    if "model" not in modules:
        raise IntegrityError(f"{str(path / STATE_JSON)!r}: field 'modules' names no 'model'")
    validate_trainer_state(st, path / STATE_JSON)
    return modules, st


def _check_weights(name: str, here: dict[str, torch.Tensor], there: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = sorted(set(here) - set(there)), sorted(set(there) - set(here))
    shapes = [f"{k!r} is {tuple(there[k].shape)} there, {tuple(here[k].shape)} here"
              for k in here if k in there and there[k].shape != here[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"path: the {name} weights of checkpoint {str(path)!r} do not fit this run's {name}: "
                         f"missing {missing}, unexpected {unexpected}, shapes: {shapes}")


def _check_groups(name: str, optimizer: torch.optim.Optimizer, saved: dict, path: Path) -> None:
    here = [len(g["params"]) for g in optimizer.param_groups]
    there = [len(g["params"]) for g in saved["param_groups"]]
    if here != there:
        raise ValueError(f"path: the {name} of checkpoint {str(path)!r} has parameter groups of sizes {there}, "
                         f"this run's has {here}")


def _check_scheduler(name: str, saved: dict, groups: int, path: Path) -> None:
    lambdas = saved.get("lr_lambdas", [])
    if len(saved.get("base_lrs", [])) != groups or not isinstance(lambdas, list) or len(lambdas) > groups:
        raise ValueError(f"path: the {name} state of checkpoint {str(path)!r} does not fit this run's {groups} "
                         "parameter group(s)")


def _check_scaler(name: str, scaler: torch.amp.GradScaler, saved: dict, path: Path) -> None:
    if scaler.is_enabled() and not saved:
        raise ValueError(f"path: checkpoint {str(path)!r} was written without a float16 {name} (a CPU or bfloat16 "
                         "run); this run uses one")


def check_compatible(trainer: "Trainer", path: str | Path, modules: dict[str, dict[str, torch.Tensor]],
                     st: dict[str, Any]) -> None:
    """Phase 2: refuse a checkpoint that does not fit ``trainer``, before anything is replaced."""
    path = Path(path)
    gb = trainer.config.batch_size * trainer.dist.world_size
    if st["data"]["global_batch"] != gb:
        raise ValueError(f"path: checkpoint {str(path)!r} was written with global batch {st['data']['global_batch']}, "
                         f"this run has {gb} (batch_size x world_size); resuming would change the data order")
    _check_weights("model", trainer.model.state_dict(), modules["model"], path)
    _check_groups("optimizer", trainer.optimizer, st["optimizer"], path)
    _check_scheduler("scheduler", st["scheduler"], len(trainer.optimizer.param_groups), path)
    _check_scaler("grad scaler", trainer.scaler, st["scaler"], path)
    if trainer.discriminator is not None and "discriminator" in modules:
        _check_weights("discriminator", trainer.discriminator.state_dict(), modules["discriminator"], path)
    if trainer.config.adversarial and "disc_optimizer" in st:
        _check_groups("discriminator optimizer", trainer.disc_optimizer, st["disc_optimizer"], path)
        _check_scheduler("discriminator scheduler", st["disc_scheduler"],
                         len(trainer.disc_optimizer.param_groups), path)
        _check_scaler("discriminator grad scaler", trainer.disc_scaler, st["disc_scaler"], path)


def restore(trainer: "Trainer", path: str | Path, modules: dict[str, dict[str, torch.Tensor]],
            st: dict[str, Any]) -> None:
    """Phases 2 and 3: check, read the log, then replace the trainer's state."""
    check_compatible(trainer, path, modules, st)
    step = st["step"]
    records, problem = read_log_records(trainer.output_dir / "log.jsonl")
    if problem is not None:
        warnings.warn(f"{problem}; the run's history keeps the {len(records)} records before it",
                      IntegrityWarning, stacklevel=3)
    trainer.model.load_state_dict(modules["model"], strict=True)
    if trainer.discriminator is not None and "discriminator" in modules:
        trainer.discriminator.load_state_dict(modules["discriminator"], strict=True)
    trainer.optimizer.load_state_dict(st["optimizer"])
    trainer.scheduler.load_state_dict(st["scheduler"])
    trainer.scaler.load_state_dict(st["scaler"])
    if trainer.config.adversarial and "disc_optimizer" in st:
        trainer.disc_optimizer.load_state_dict(st["disc_optimizer"])
        trainer.disc_scheduler.load_state_dict(st["disc_scheduler"])
        trainer.disc_scaler.load_state_dict(st["disc_scaler"])
    restore_rng_state(st["rng"])
    trainer.step = step
    trainer.guard.skipped = st.get("nonfinite_skipped", 0)
    trainer.history = [r for r in records if r["step"] <= step]


def newest_resumable(output_dir: str | Path) -> tuple[Path, dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
    """The newest checkpoint of a run that reads and checks whole: ``(path, modules, state)``.

    Damaged ones before it are skipped, each with an :class:`~energycrf.io.IntegrityWarning`
    naming it, what is wrong and the checkpoint used instead; ``None`` when the run has
    no checkpoint; :class:`~energycrf.io.IntegrityError` listing them when none is whole.
    """
    damaged: list[tuple[Path, str]] = []
    for path in checkpoint_candidates(output_dir):
        try:
            modules, st = read_trainer_checkpoint(path)
        except (IntegrityError, FileNotFoundError) as e:
            damaged.append((path, str(e)))
            continue
        for bad, why in damaged:
            warnings.warn(f"checkpoint {str(bad)!r} is damaged ({why}); resuming from {str(path)!r}",
                          IntegrityWarning, stacklevel=3)
        return path, modules, st
    if damaged:
        listing = "; ".join(f"{str(p)!r}: {why}" for p, why in damaged)
        raise IntegrityError(f"no checkpoint in {str(output_dir)!r} reads whole ({listing}); remove the damaged "
                             "ones, or pass resume=False to start the run over")
    return None
