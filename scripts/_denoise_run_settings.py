"""The settings of ``scripts/train_denoisers_full.py``, checked before anything is created or trained.

:data:`KEYS` gives every recipe and architecture key its type and range; :func:`check_settings`
checks the options, the ``--set`` entries against that table and what the keys must satisfy
together; :func:`check_run_dir` checks the run folder (a new run, or ``--resume`` with the settings
of its ``run.json``). A mistake is a :class:`UsageError` (``OPTION: expected ..., got ...``): the
script prints it as one line and exits with status 2.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from energycrf.apps._command import UsageError, check_device
from energycrf.apps.photographs import PHOTOGRAPHS

__all__ = ["KEYS", "UsageError", "check_settings", "check_patches", "run_settings", "check_run_dir",
           "write_run_json"]

# every recipe / architecture key: ("int", minimum), ("number",) (finite and > 0), or ("choice", names);
# steps may be 0 (a phase of no steps is left out; a run of none measures its start)
KEYS = {
    "num_stages": ("int", 1), "num_filters": ("int", 1), "kernel_size": ("odd", 3), "num_knots": ("int", 2),
    "span": ("number",), "alpha": ("number",), "unary_weight": ("number",), "init_scale": ("number",),
    "num_iterations": ("int", 1), "method": ("choice", None), "filter_init": ("choice", ("random", "dct")),
    "expert_weights": ("choice", ("shared", "learned")), "differentiation": ("choice", ("backprop", "implicit")),
    "gtol": ("number",), "cg_tol": ("number",),
    "greedy_steps": ("int", 0), "joint_steps": ("int", 0), "steps": ("int", 0), "lr": ("number",),
    "joint_lr": ("number",), "warmup": ("int", 0), "batch_size": ("int", 1), "patch_size": ("int", 1),
    "margin": ("int", 0), "pad": ("int", 0), "checkpoint_every": ("int", 1), "validate_every": ("int", 1),
    "val_crop": ("int", 0), "dtype": ("choice", ("float32", "float64")),
}


def _choices(key: str, spec) -> tuple[str, ...]:
    if spec[1] is not None:
        return spec[1]
    from energycrf.solvers.api import method_names  # "method": a solver of the registry

    return tuple(method_names())


def _typed(key: str, text: str):
    """The ``--set`` value ``text`` (JSON, or a bare word) as the type of ``key``'s row in KEYS."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    spec, integral = KEYS[key], isinstance(value, int) and not isinstance(value, bool)
    got = text if integral or isinstance(value, float) else repr(text)
    if spec[0] in ("int", "odd"):
        odd = spec[0] == "odd"
        if not integral or value < spec[1] or (odd and value % 2 == 0):
            raise UsageError(f"--set {key}", f"an {'odd ' if odd else ''}int >= {spec[1]}", got)
        return value
    if spec[0] == "number":
        if not (integral or isinstance(value, float)) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"--set {key}", "a finite number > 0", got)
        return float(value)
    if not isinstance(value, str) or value not in _choices(key, spec):
        raise UsageError(f"--set {key}", f"one of {list(_choices(key, spec))}", got)
    return value


def check_settings(args, arch: dict, recipe: dict, train_images, test_images) -> list[str]:
    """Check the options and apply the ``--set`` entries to ``arch`` and ``recipe`` (in place);
    returns the keys set, the last one set last (a clash is blamed on it)."""
    if not math.isfinite(args.sigma) or args.sigma <= 0:
        raise UsageError("--sigma", "a finite noise level > 0 (0-255 scale)", f"{args.sigma:g}")
    for option, value, low in (("--threads", args.threads, 1), ("--seed", args.seed, 0),
                               ("--log-every", args.log_every, 0), ("--max-steps-now", args.max_steps_now, 0)):
        if value is not None and value < low:
            raise UsageError(option, f"an int >= {low}", str(value))
    check_device(args.device)
    unknown = [n for n in args.train_images if n not in train_images]
    if unknown or not args.train_images:
        raise UsageError("--train-images", f"names among {list(train_images)} (never the held-out photographs)",
                         str(unknown or "none"))
    held_out = [n for n in PHOTOGRAPHS if n not in args.train_images]
    unknown = [n for n in args.val_images if n not in held_out]
    if unknown or not args.val_images:
        raise UsageError("--val-images", f"photographs not trained on, among {held_out} (default {list(test_images)})",
                         str(unknown or "none"))
    for option, path in (("--run-dir", args.run_dir), ("--export", args.export)):
        if path is not None and (not path or Path(path).exists() and not Path(path).is_dir()):
            raise UsageError(option, "a folder", f"{path!r}" + (" (a file)" if path else ""))
    given = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or (key not in arch and key not in recipe):
            raise UsageError("--set", f"KEY=VALUE with KEY one of {sorted(arch) + sorted(recipe)}", repr(item))
        (arch if key in arch else recipe)[key] = _typed(key, value)
        given = [k for k in given if k != key] + [key]
    missing = sorted(k for k in {**arch, **recipe} if k not in KEYS)
    assert not missing, f"keys without a row in KEYS: {missing}"
    if arch.get("filter_init", "dct") == "dct" and arch["num_filters"] > arch["kernel_size"] ** 2 - 1:
        raise UsageError("--set num_filters", f"at most kernel_size^2 - 1 = {arch['kernel_size'] ** 2 - 1} (the "
                                              "DCT start's filters)", str(arch["num_filters"]))
    every, chunk = recipe["validate_every"], recipe["checkpoint_every"]
    if every % chunk:  # validations fall on checkpoints
        if _last(given, "checkpoint_every", "validate_every") == "checkpoint_every":
            raise UsageError("--set checkpoint_every", f"a divisor of validate_every ({every})", str(chunk))
        raise UsageError("--set validate_every", f"a multiple of checkpoint_every ({chunk})", str(every))
    return given


def _last(given: list[str], *keys: str) -> str:
    """Which of ``keys`` was set last (the last of them when none was)."""
    return max(reversed(keys), key=lambda k: given.index(k) if k in given else -1)


def check_patches(recipe: dict, given: list[str], shapes) -> None:
    """The patches hold a loss (an interior inside ``margin``) and fit in every training photograph."""
    size, margin = recipe["patch_size"], recipe["margin"]
    if size <= 2 * margin:
        if _last(given, "margin", "patch_size") == "margin":
            raise UsageError("--set margin", f"an int < patch_size / 2 = {size / 2:g} (the loss is on the patch "
                                             "interior)", str(margin))
        raise UsageError("--set patch_size", f"an int > 2 * margin = {2 * margin} (the loss is on the patch interior)",
                         str(size))
    smallest = min(min(s) for s in shapes)
    if size > smallest:
        raise UsageError("--set patch_size", f"at most {smallest}, the smallest side of the training photographs",
                         str(size))


def run_settings(args, arch: dict, recipe: dict) -> dict:
    """What ``run.json`` records and ``--resume`` compares (the start, ``init``, aside)."""
    return json.loads(json.dumps({"model": args.model, "sigma": args.sigma, "arch": arch, "recipe": recipe,
                                  "seed": args.seed, "val_images": list(args.val_images),
                                  "train_images": list(args.train_images)}))


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key} {k}={b.get(k)!r} (run.json: {a.get(k)!r})" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{key}={b!r} (run.json: {a!r})")
    return out


def check_run_dir(args, settings: dict) -> dict | None:
    """The run's ``run.json`` when ``--resume`` continues it with the same settings, ``None`` for a new
    run; a UsageError when the folder holds another run or no run but other files."""
    run_dir = Path(args.run_dir)
    path = run_dir / "run.json"
    if path.is_file():
        if not args.resume:
            raise UsageError("--run-dir", "a new or empty folder", f"{args.run_dir!r}, which holds a run (run.json)",
                             "pass --resume to continue it, or choose another folder")
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as err:  # not a usage mistake: status 1
            raise SystemExit(f"error: {str(path)!r} does not read as JSON ({err})") from None
        old = {k: v for k, v in meta.get("settings", {}).items() if k != "init"}
        diff = _differences(old, settings)
        if diff:
            raise UsageError("--resume", f"the settings the run in {args.run_dir!r} was started with",
                             "other settings: " + "; ".join(diff),
                             "resume it with its own command (run.json), or start a new run in another folder")
        return meta
    if run_dir.is_dir() and any(run_dir.iterdir()) and not args.resume:
        raise UsageError("--run-dir", "an empty or new folder", f"{args.run_dir!r}, which holds files but no run.json")
    return None


def write_run_json(args, meta: dict | None, settings: dict, init: dict | None, argv: list[str]) -> dict:
    """Create the run folder and ``run.json`` (a new run), or add this command to it (a resume)."""
    import shlex

    import torch

    if meta is None:
        meta = {"settings": {**settings, **({"init": init} if init else {})}, "commands": []}
    elif init:  # the same weights, perhaps found at another path: record where they are now
        meta["settings"]["init"] = init
    meta["commands"].append({"command": "python scripts/train_denoisers_full.py " + shlex.join(argv),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": args.device,
                             "threads": args.threads, "torch": torch.__version__})
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    from energycrf.io import atomic_write_text

    atomic_write_text(run_dir / "run.json", json.dumps(meta, indent=1) + "\n")
    return meta
