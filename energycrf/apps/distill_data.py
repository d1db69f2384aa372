"""Write stage-2 distillation shards (z_s, z_f, prompt embeddings) from a local diffusers pipeline.

    energycrf distill-data --pipeline ./sd15 --prompts captions.txt --out ./shards
    torchrun --nproc-per-node 8 -m energycrf distill-data ...     # one shard series per rank

The pipeline directory is loaded with ``local_files_only=True`` (nothing is downloaded).
An ``--out`` that holds shards is refused unless ``--resume`` (complete shards of an
earlier run with the same settings are kept) or ``--overwrite``; each shard is written
atomically.
The plan defaults to the paper's (31 of 40, CRF, last 2 of 50). The teacher is DDIM: a
pipeline saved with another scheduler (Stable Diffusion 1.5's PNDM, SDXL's Euler) is refused
before any work unless ``--ddim`` (DDIM on the same noise schedule). The guidance scale
defaults to the pipeline's own, the one ``energycrf generate`` and ``evaluate`` use. See
:mod:`energycrf.integrations.distill` for the shard format.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._command import (UsageError, announce, check_device, check_input_file, check_out_of_inputs, integer, number,
                       require)

DIFFUSERS_EXTRA = 'the diffusers extra: pip install "energycrf[diffusers]"'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, help="local diffusers pipeline directory (model_index.json)")
    parser.add_argument("--prompts", required=True, help="text file, one prompt per line (blank lines skipped)")
    parser.add_argument("--out", required=True, help="output directory for the shards")
    parser.add_argument("--resume", action="store_true",
                        help="continue an earlier run in --out: its complete shards with the same settings are kept")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds shards (those this run writes are replaced)")
    parser.add_argument("--pre-steps", type=integer(minimum=1), default=40)
    parser.add_argument("--pre-run", type=integer(minimum=1), default=31)
    parser.add_argument("--post-steps", type=integer(minimum=1), default=50)
    parser.add_argument("--post-run", type=integer(minimum=1), default=2)
    parser.add_argument("--crf-output", choices=["clean", "post"], default="clean")
    parser.add_argument("--teacher", choices=["plan", "full"], default="plan")
    parser.add_argument("--batch-size", type=integer(minimum=1), default=4)
    parser.add_argument("--shard-size", type=integer(minimum=1), default=256)
    parser.add_argument("--seed", type=integer(minimum=0), default=0)
    parser.add_argument("--guidance-scale", type=number(minimum=0.0), default=None,
                        help="classifier-free guidance of the teacher (default: the pipeline's own, 7.5 for Stable "
                             "Diffusion, 5 for SDXL, 4 for the shipped model: what generate and evaluate use)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--ddim", action="store_true", help="replace the pipeline's scheduler by DDIM (same config)")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--no-progress", action="store_true")


def validate(args: argparse.Namespace):
    """Check the arguments and paths before any work; returns ``(plan, prompts, out)``."""
    if not (Path(args.pipeline) / "model_index.json").is_file():
        raise UsageError("--pipeline", "a local diffusers pipeline directory (with model_index.json)",
                         repr(args.pipeline))
    source = check_input_file(args.prompts, "--prompts", what="a text file of prompts")
    try:
        prompts = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise UsageError("--prompts", "a UTF-8 text file, one prompt per line", repr(args.prompts)) from None
    if not prompts:
        raise UsageError("--prompts", "a text file with one prompt per line", f"{args.prompts!r} (no prompts)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError("--out", "a folder", f"{args.out!r} (a file)")
    check_out_of_inputs(out, "--out", {"--pipeline": args.pipeline})
    shards = sorted(out.glob("rank*-of-*.safetensors")) if out.is_dir() else []
    if shards and not (args.resume or args.overwrite):
        raise UsageError("--out", "a folder without shards", f"{args.out!r}, which holds {len(shards)} shards",
                         "pass --resume to continue that run, --overwrite to write over it, or choose another folder")

    from ..integrations.plan import SplicePlan  # (imports the integrations package: torch)

    try:
        plan = SplicePlan(args.pre_steps, args.pre_run, args.post_steps, args.post_run, args.crf_output)
    except ValueError as err:
        raise UsageError("--pre-steps/--pre-run/--post-steps/--post-run", "a valid splice plan",
                         " ".join(str(err).split())) from None
    if args.device is not None:
        check_device(args.device, "--device")
    scheduler = _scheduler_class(Path(args.pipeline))
    if scheduler not in (None, "DDIMScheduler") and not args.ddim:
        raise UsageError("--pipeline", "a pipeline with a DDIMScheduler (the teacher is DDIM, the paper's sampler)",
                         f"{scheduler} in {args.pipeline!r}",
                         "pass --ddim to run the teacher with DDIM on the same noise schedule")
    return plan, prompts, out


def _scheduler_class(pipeline: Path) -> str | None:
    """The scheduler's class name in the pipeline's ``scheduler/scheduler_config.json``; ``None`` if unreadable."""
    import json

    try:
        return json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def default_guidance(pipe) -> float:
    """The guidance scale ``energycrf generate`` and ``evaluate`` use with ``pipe``: 4 for the shipped
    model, else the default of the pipeline's ``__call__`` (7.5 if it has none), so that the
    CRF is distilled from the trajectories it will meet."""
    import inspect

    from .pipelines import SHIPPED_CLASS

    if type(pipe).__name__ == SHIPPED_CLASS:
        return 4.0
    param = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    default = None if param is None else param.default
    return float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else 7.5


def run(args: argparse.Namespace) -> int:
    plan, prompts, out = validate(args)
    require({"diffusers": DIFFUSERS_EXTRA, "transformers": DIFFUSERS_EXTRA})

    import os

    import torch
    from diffusers import DDIMScheduler

    from ..integrations.distill import generate_distillation_data, rank_and_world_size
    from .pipelines import load_pipeline

    rank, world = rank_and_world_size()
    device = args.device
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(args.pipeline, device, args.dtype)  # offline, without the loading bars
    guidance = args.guidance_scale if args.guidance_scale is not None else default_guidance(pipe)
    mine = len(range(rank, len(prompts), world))
    announce("distill-data", f"{mine} of {len(prompts)} prompts (rank {rank} of {world}), DDIM teacher "
             f"'{args.teacher}' with guidance {guidance:g} on {device}, in shards of up to {args.shard_size} prompts "
             f"in {out}")
    if args.ddim:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    extra = {"negative_prompt": args.negative_prompt} if args.negative_prompt else {}
    paths = generate_distillation_data(
        pipe,
        prompts,
        out,
        plan,
        teacher=args.teacher,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        seed=args.seed,
        guidance_scale=guidance,
        rank=rank,
        world_size=world,
        progress=not args.no_progress,
        **extra,
    )
    print(f"rank {rank}/{world}: {len(paths)} shard(s) in {out}")
    return 0
