"""The options of ``energycrf train`` and the checks that need no torch (:mod:`energycrf.apps.train_command`).

Imports nothing heavy: ``energycrf train --help`` and the usage errors about paths and
option combinations answer before torch is loaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._command import UsageError, integer, number, path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: what a run leaves in --out: a second run there needs --resume
RESULTS = ("config.json", "plan.json", "training.json", "log.jsonl", "loss.png", "checkpoints", "work")
NORMALIZATIONS = ("none", "batch", "group", "mean_field")
PLAN_OPTIONS = ("pre_steps", "pre_run", "post_steps", "post_run", "crf_output")
PLAN_FLAGS = "--pre-steps/--pre-run/--post-steps/--post-run/--crf-output"
#: the architecture options: dest -> (LatentCRF argument, the shipped model's value)
ARCH = {"iterations": ("num_iterations", 5), "filters": ("num_filters", 8), "kernel_size": ("kernel_size", 3),
        "hidden_channels": ("hidden_channels", 32), "attention_dim": ("attention_dim", 32),
        "conditioning": ("conditioning", "both"), "compatibility": ("compatibility", "mlp"),
        "normalization": ("normalization", "none")}
#: the options with a value per stage
PER_STAGE = ("steps", "lr", "batch_size", "warmup")
#: options that change neither the data nor the arithmetic of a run (left out of its record)
NOT_RECORDED = ("resume", "stop_after", "no_progress", "debug", "checkpoint_every", "threads", "device")


def stages(text: str) -> tuple[int, ...]:
    """An argparse ``type``: ``1``, ``2`` or ``1,2``."""
    value = tuple(s.strip() for s in text.split(","))
    if value not in (("1",), ("2",), ("1", "2")):
        raise argparse.ArgumentTypeError(f"expected 1, 2 or 1,2, got {text!r}")
    return tuple(int(s) for s in value)


def per_stage(kind, what: str, minimum=None, positive: bool = False):
    """An argparse ``type``: one value for every stage, or ``STAGE1,STAGE2``."""
    one = integer(minimum=minimum) if kind is int else number(minimum=minimum, positive=positive)

    def parse(text: str) -> tuple:
        parts = text.split(",")
        if len(parts) > 2:
            raise argparse.ArgumentTypeError(f"expected {what}, or two (stage 1, stage 2), got {text!r}")
        return tuple(one(p.strip()) for p in parts)

    parse.__name__ = "per_stage"
    return parse


def widths(text: str) -> tuple[int, ...]:
    """An argparse ``type``: comma-separated positive integers (the discriminator's widths)."""
    try:
        value = tuple(int(s) for s in text.split(","))
    except ValueError:
        value = ()
    if not value or min(value) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to train")
    g.add_argument("--stage", type=stages, metavar="1|2|1,2", required=True,
                   help="1, 2 or 1,2 (stage 2 starts from stage 1's weights)")
    g.add_argument("--pipeline", type=path, metavar="DIR", required=True,
                   help="local diffusers pipeline directory (model_index.json): its VAE, text encoder, channels, "
                        "text width and noise schedule")
    g.add_argument("--out", type=path, metavar="DIR", required=True,
                   help="output folder: the CRF, its plan, log, plot, checkpoints")
    g = parser.add_argument_group("data")
    g.add_argument("--images", type=path, metavar="DIR",
                   help="stage 1: a folder of images (PNG, JPEG, WebP, BMP, TIFF)")
    g.add_argument("--latents", type=path, metavar="DIR",
                   help="stage 1: a folder of safetensors files with 'latents' (and optionally 'prompt_embeds')")
    g.add_argument("--caption", default="", metavar="TEXT",
                   help="the caption of an image without its own (default: the empty prompt)")
    g.add_argument("--resolution", metavar="N", type=integer(minimum=8), default=None,
                   help="side of the square the images are cut to (default: the pipeline's)")
    g.add_argument("--shards", type=path, metavar="DIR", help="stage 2: the shards written by energycrf distill-data")
    g.add_argument("--init", type=path, metavar="DIR",
                   help="stage 2 alone: start from this saved CRF (e.g. a stage-1 --out)")
    g = parser.add_argument_group("plan (default: the shards' plan, else the paper's: 31 of 40, CRF, last 2 of 50)")
    g.add_argument("--plan", type=path, metavar="FILE", help="a plan.json (as written beside a CRF)")
    g.add_argument("--pre-steps", metavar="N", type=integer(minimum=2), help="steps of the pre-CRF schedule (40)")
    g.add_argument("--pre-run", metavar="N", type=integer(minimum=1), help="of which run before the CRF (31)")
    g.add_argument("--post-steps", metavar="N", type=integer(minimum=1), help="steps of the post-CRF schedule (50)")
    g.add_argument("--post-run", metavar="N", type=integer(minimum=0), help="its last ones run after the CRF (2)")
    g.add_argument("--crf-output", choices=["clean", "post"],
                   help="what M(z_s) stands for: the clean latent or the first post-CRF one (clean)")
    g.add_argument("--noise-window", metavar="N", type=integer(minimum=0), default=100,
                   help="stage 1 noises to timesteps t_s - N .. t_s + N around the splice timestep t_s")
    g = parser.add_argument_group("the LatentCRF (defaults: the shipped model's; with --init: the init's own)")
    g.add_argument("--iterations", metavar="N", type=integer(minimum=1), help="unrolled mean-field steps (5)")
    g.add_argument("--filters", metavar="N", type=integer(minimum=1), help="Field of Experts filters (8)")
    g.add_argument("--kernel-size", metavar="N", type=integer(minimum=1, odd=True), help="their size (3)")
    g.add_argument("--hidden-channels", metavar="N", type=integer(minimum=1), help="the compatibility MLP's width (32)")
    g.add_argument("--attention-dim", metavar="N", type=integer(minimum=1), help="the cross-attention's width (32)")
    g.add_argument("--conditioning", choices=["film", "cross_attention", "both"], help="how the text enters (both)")
    g.add_argument("--compatibility", choices=["mlp", "linear"], help="psi_C (mlp)")
    g.add_argument("--normalization", choices=NORMALIZATIONS, help="psi_N (none: the untrained layer is the identity)")
    g = parser.add_argument_group("optimisation (one value, or STAGE1,STAGE2)")
    g.add_argument("--steps", metavar="S1[,S2]", type=per_stage(int, "an integer >= 1", minimum=1),
                   default=(800, 2000), help="optimiser steps (800,2000)")
    g.add_argument("--lr", metavar="S1[,S2]", type=per_stage(float, "a number > 0", positive=True),
                   default=(1e-3, 1e-3), help="AdamW peak rate, linear warm-up then cosine decay (1e-3)")
    g.add_argument("--batch-size", metavar="S1[,S2]", type=per_stage(int, "an integer >= 1", minimum=1),
                   default=(64, 32), help="per process (64,32)")
    g.add_argument("--warmup", metavar="S1[,S2]", type=per_stage(int, "an integer >= 0", minimum=0),
                   default=(50, 20), help="warm-up steps (50,20)")
    g.add_argument("--grad-clip", metavar="X", type=number(minimum=0.0), default=1.0,
                   help="gradient norm bound (1; 0: none)")
    g.add_argument("--adv-weight", metavar="X", type=number(minimum=0.0), default=0.1,
                   help="weight of the adversarial term of eq. 13 (0.1; 0: no discriminator)")
    g.add_argument("--disc-channels", metavar="W,W,W", type=widths, default=(32, 32, 64),
                   help="the discriminator's widths (32,32,64)")
    g.add_argument("--amp", choices=["none", "float16", "bfloat16"], default="none",
                   help="mixed precision on CUDA (CPU runs stay float32)")
    g.add_argument("--seed", metavar="N", type=integer(minimum=0), default=0,
                   help="seed of the initial weights, the batches and the noise (default 0)")
    g = parser.add_argument_group("the run")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    g.add_argument("--checkpoint-every", metavar="N", type=integer(minimum=0), default=100,
                   help="steps between checkpoints (0: only when a stage ends or stops)")
    g.add_argument("--log-every", metavar="N", type=integer(minimum=1), default=10, help="steps between log records")
    g.add_argument("--stop-after", metavar="N", type=integer(minimum=1), default=None,
                   help="stop after this many steps of this invocation (checkpointed; continue with --resume)")
    g.add_argument("--device", metavar="DEVICE", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    g.add_argument("--threads", metavar="N", type=integer(minimum=0), default=0,
                   help="torch threads (0: the cores the load average leaves idle)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def stage_value(value: tuple, stage: int):
    """The value of a per-stage option for ``stage``."""
    return value[0] if len(value) == 1 else value[stage - 1]


def _folder(p: Path | None, option: str, what: str, suffixes) -> list[Path]:
    """The files of folder ``p`` with one of ``suffixes``, sorted by name (a UsageError if none)."""
    text = os.fspath(p)
    if not p.exists():
        raise UsageError(option, f"an existing folder of {what}", f"{text!r} (no such folder)")
    if not p.is_dir():
        raise UsageError(option, f"a folder of {what}", f"{text!r} (not a folder)")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
    if not files:
        raise UsageError(option, f"a folder of {what} ({', '.join(suffixes)})", f"{text!r}, which holds none")
    return files


def _one_stage_only(args, option: str, stage: int, why: str) -> None:
    if getattr(args, option.lstrip("-").replace("-", "_")) is not None and stage not in args.stage:
        raise UsageError(option, f"no {option} with --stage {','.join(map(str, args.stage))}",
                         f"{option} {os.fspath(getattr(args, option.lstrip('-').replace('-', '_')))}", why)


def check_arguments(args: argparse.Namespace) -> dict[str, list[Path]]:
    """The checks that need no torch, before any work: a :class:`UsageError` naming the option.
    Returns the input files: ``{"images" | "latents" | "shards": [paths]}``."""
    if not (args.pipeline / "model_index.json").is_file():
        raise UsageError("--pipeline", "a local diffusers pipeline directory (with model_index.json)",
                         repr(os.fspath(args.pipeline)))
    _one_stage_only(args, "--images", 1, "images are stage 1's data")
    _one_stage_only(args, "--latents", 1, "latents are stage 1's data")
    _one_stage_only(args, "--shards", 2, "shards are stage 2's data")
    if args.init is not None and args.stage != (2,):
        raise UsageError("--init", "--init with --stage 2 alone", f"--stage {','.join(map(str, args.stage))}",
                         "with --stage 1,2 stage 2 starts from stage 1's weights")
    files: dict[str, list[Path]] = {}
    if 1 in args.stage:
        if args.images is not None and args.latents is not None:
            raise UsageError("--images", "either --images or --latents", "both")
        if args.images is None and args.latents is None:
            raise UsageError("--images", "a folder of images (or --latents, a folder of latents) for stage 1", "none")
        if args.images is not None:
            files["images"] = _folder(args.images, "--images", "images", IMAGE_SUFFIXES)
        else:
            files["latents"] = _folder(args.latents, "--latents", "latents", (".safetensors",))
    if args.resolution is not None and args.images is None:
        raise UsageError("--resolution", "--resolution with --images only", f"--resolution {args.resolution}",
                         "latents and shards keep their size")
    if 2 in args.stage:
        if args.shards is None:
            raise UsageError("--shards", "a folder of shards written by energycrf distill-data for stage 2", "none")
        files["shards"] = _folder(args.shards, "--shards", "shards", (".safetensors",))
    if args.init is not None:
        if not args.init.is_dir():
            raise UsageError("--init", "a folder holding a saved LatentCRF",
                             f"{os.fspath(args.init)!r} (no such folder)")
        given = [key for key in ARCH if getattr(args, key) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(flag, "no architecture option with --init (the CRF keeps its own)",
                             f"{flag} {getattr(args, given[0])}")
    else:
        for key, (_, default) in ARCH.items():
            if getattr(args, key) is None:
                setattr(args, key, default)
    given = [name for name in PLAN_OPTIONS if getattr(args, name) is not None]
    if args.plan is not None:
        if given:
            raise UsageError("--plan", f"either --plan or {PLAN_FLAGS}", "both")
        if not args.plan.is_file():
            raise UsageError("--plan", "an existing plan.json", f"{os.fspath(args.plan)!r} (no such file)")
    _check_out(args, files)
    return files


def _check_out(args: argparse.Namespace, files: dict[str, list[Path]]) -> None:
    out, text = args.out, os.fspath(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError("--out", "a folder", f"{text!r} (a file)")
    inputs = [args.pipeline, args.images, args.latents, args.shards, args.init]
    for source in (p for p in inputs if p is not None and p.exists()):
        if out.exists() and os.path.samefile(out, source):
            raise UsageError("--out", "a folder other than the inputs", f"{text!r}, an input itself")
    existing = sorted(p.name for p in out.iterdir() if p.name in RESULTS or p.suffix == ".safetensors") \
        if out.is_dir() else []
    if existing and not args.resume:
        raise UsageError("--out", "a folder without earlier results", f"{text!r}, which holds {', '.join(existing)}",
                         "pass --resume to continue that run, or choose another folder")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError("--out", "a folder you can write to", repr(text))


def command_line(args: argparse.Namespace) -> str:
    """``energycrf train`` with every option that defines the run written out (it reproduces it)."""
    import shlex

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parts = ["energycrf", "train"]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", *NOT_RECORDED):
            continue
        value = getattr(args, action.dest, None)
        if isinstance(action, argparse._StoreTrueAction):
            parts += [action.option_strings[0]] if value else []
        elif value is not None:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else os.fspath(value) \
                if isinstance(value, Path) else str(value)
            parts += [action.option_strings[0], text]
    return shlex.join(parts)
