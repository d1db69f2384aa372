"""Write stage-2 distillation shards (z_s, z_f, prompt embeddings) from a local diffusers pipeline.

    energycrf distill-data --pipeline ./sd15 --prompts captions.txt --out ./shards
    torchrun --nproc-per-node 8 -m energycrf distill-data ...     # one shard series per rank

The pipeline directory is loaded with ``local_files_only=True`` (nothing is downloaded).
An ``--out`` that holds shards is refused unless ``--resume`` (complete shards of an
earlier run with the same settings are kept; a resume with other settings is refused,
naming the option) or ``--overwrite`` (the earlier run's shard files are removed first, so
no shard of other settings stays beside the new ones); each shard is written atomically.
An ``--out`` that is, or is inside, the ``--pipeline`` folder is refused.
The plan defaults to the paper's (31 of 40, CRF, last 2 of 50). The teacher is DDIM: a
pipeline saved with another scheduler (Stable Diffusion 1.5's PNDM, SDXL's Euler) is refused
before any work unless ``--ddim`` (DDIM on the same noise schedule). The guidance scale
defaults to the pipeline's own, the one ``energycrf generate`` and ``evaluate`` use. See
:mod:`energycrf.integrations.distill` for the shard format.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ._command import (UsageError, announce, check_device, check_input_file, check_out_of_inputs, integer, number,
                       require, same_file)

DIFFUSERS_EXTRA = 'the diffusers extra: pip install "energycrf[diffusers]"'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, help="local diffusers pipeline directory (model_index.json)")
    parser.add_argument("--prompts", required=True, help="text file, one prompt per line (blank lines skipped)")
    parser.add_argument("--out", required=True, help="output directory for the shards")
    parser.add_argument("--resume", action="store_true",
                        help="continue an earlier run in --out: its complete shards with the same settings are kept")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds shards (those this run writes are replaced)")
    parser.add_argument("--pre-steps", type=integer(minimum=1), default=40,
                        help="the plan: steps of the schedule before the CRF (default 40)")
    parser.add_argument("--pre-run", type=integer(minimum=1), default=31,
                        help="the plan: of those, the steps run before the CRF replaces the rest (default 31)")
    parser.add_argument("--post-steps", type=integer(minimum=1), default=50,
                        help="the plan: steps of the schedule after the CRF (default 50)")
    parser.add_argument("--post-run", type=integer(minimum=1), default=2,
                        help="the plan: of those, the last steps run after the CRF (default 2)")
    parser.add_argument("--crf-output", choices=["clean", "post"], default="clean",
                        help="what the CRF learns to output: the final clean latent (default) or the latent at the "
                             "first post-CRF step")
    parser.add_argument("--teacher", choices=["plan", "full"], default="plan",
                        help="teacher trajectory: 'plan' follows the plan's own steps to the splice (what the CRF "
                             "meets; default), 'full' the whole post-CRF schedule (the paper's data)")
    parser.add_argument("--batch-size", type=integer(minimum=1), default=4,
                        help="prompts per pipeline call (default 4)")
    parser.add_argument("--shard-size", type=integer(minimum=1), default=256,
                        help="prompts per shard file (default 256)")
    parser.add_argument("--seed", type=integer(minimum=0), default=0,
                        help="prompt i uses the noise of seed SEED + i, whatever the rank (default 0)")
    parser.add_argument("--guidance-scale", type=number(minimum=0.0), default=None,
                        help="classifier-free guidance of the teacher (default: the pipeline's own, 7.5 for Stable "
                             "Diffusion, 5 for SDXL, 4 for the shipped model: what generate and evaluate use)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt of the teacher (default none)")
    parser.add_argument("--ddim", action="store_true", help="replace the pipeline's scheduler by DDIM (same config)")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="weights' dtype of the pipeline (default float32; the shards are float32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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
    if args.resume and args.overwrite:
        raise UsageError("--resume", "either --resume (keep the earlier shards) or --overwrite (replace them)", "both")
    for shard in shard_files(out, temporary=True):  # --overwrite removes them, a resume rewrites unreadable ones
        if same_file(shard, source):
            raise UsageError("--out", "a folder where no input would be overwritten",
                             f"{args.out!r}, where the shard name {shard.name} is the input --prompts {args.prompts!r}")
    shards = shard_files(out)
    if shards and not (args.resume or args.overwrite):
        raise UsageError("--out", "a folder without shards", f"{args.out!r}, which holds {len(shards)} shards",
                         "pass --resume to continue that run, --overwrite to write over it, or choose another folder")

    from ..integrations.plan import SplicePlan  # (imports the integrations package: torch)

    try:
        plan = SplicePlan(args.pre_steps, args.pre_run, args.post_steps, args.post_run, args.crf_output)
    except ValueError as err:
        raise UsageError("--pre-steps/--pre-run/--post-steps/--post-run", "a valid splice plan",
                         " ".join(str(err).split())) from None
    if shards and args.resume:
        check_resume(shards, plan, args, prompts)
    if args.device is not None:
        check_device(args.device, "--device")
    scheduler = _scheduler_class(Path(args.pipeline))
    if scheduler not in (None, "DDIMScheduler") and not args.ddim:
        raise UsageError("--pipeline", "a pipeline with a DDIMScheduler (the teacher is DDIM, the paper's sampler)",
                         f"{scheduler} in {args.pipeline!r}",
                         "pass --ddim to run the teacher with DDIM on the same noise schedule")
    return plan, prompts, out


#: the file names of this command's shards (and their temporary files): rank{r:03d}-of-{w:03d}-{k:05d}
SHARD_NAME = re.compile(r"rank(\d{3})-of-(\d{3})-\d{5}\.safetensors(\.tmp)?")


def shard_files(out: Path, temporary: bool = False) -> list[Path]:
    """The shard files of an earlier run in ``out`` (with ``temporary``: also unfinished ones)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if (m := SHARD_NAME.fullmatch(p.name)) and (temporary or not m[3]))


def _shard_metadata(shards: list[Path]) -> list[dict]:
    """The metadata of the readable shards (an unreadable one is regenerated, so it is not compared)."""
    import json

    from safetensors import safe_open

    metas = []
    for path in shards:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["energycrf"])
        except Exception:  # noqa: BLE001 - corrupt, empty or foreign: rewritten by the run
            continue
        if isinstance(meta, dict):
            metas.append(meta)
    return metas


def check_resume(shards: list[Path], plan, args: argparse.Namespace, prompts: list[str],
                 guidance: float | None = None) -> None:
    """Refuse a ``--resume`` whose settings differ from those recorded in the shards of ``--out``
    (the run would mix two data sets, or rewrite some shards and keep others): one line
    naming the first differing option, as ``energycrf train --resume`` does."""
    from ..integrations.distill import rank_and_world_size

    _, world = rank_and_world_size()
    now_plan = json.loads(json.dumps(plan.to_dict()))
    for meta in _shard_metadata(shards):
        rank, then_world, k = meta.get("rank"), meta.get("world_size"), meta.get("shard")
        indices, seeds = meta.get("prompt_indices") or [], meta.get("seeds") or []
        changed = None
        if meta.get("plan") != now_plan:
            changed = ("--pre-steps/--pre-run/--post-steps/--post-run/--crf-output",
                       _plan_text(meta.get("plan")), _plan_text(now_plan))
        elif meta.get("teacher") != args.teacher:
            changed = ("--teacher", meta.get("teacher"), args.teacher)
        elif then_world != world:
            changed = ("the processes (WORLD_SIZE)", then_world, world)
        elif indices and seeds and seeds[0] - indices[0] != args.seed:
            changed = ("--seed", seeds[0] - indices[0], args.seed)
        elif guidance is not None and meta.get("guidance_scale") != float(guidance):
            changed = ("--guidance-scale", meta.get("guidance_scale"), float(guidance))
        elif any(not 0 <= i < len(prompts) for i in indices) or meta.get("prompts") != [prompts[i] for i in indices]:
            changed = ("--prompts", "other prompts", "these")
        elif isinstance(rank, int) and isinstance(k, int) and indices:
            mine = len(range(rank, len(prompts), world))
            start = (indices[0] - rank) // world  # the position of the shard's first prompt in this rank's list
            if start != k * args.shard_size or len(indices) != min(args.shard_size, mine - start):
                changed = ("--shard-size", f"shards of {len(indices) if k == 0 else 'another size'}", args.shard_size)
        if changed is not None:
            option, then, now = changed
            raise UsageError("--resume", "the settings of the shards in --out",
                             f"other {option} (was {then}, now {now})",
                             "a resume repeats them; pass --overwrite to replace the shards, or choose another --out")


def _plan_text(plan) -> str:
    if not isinstance(plan, dict):
        return repr(plan)
    return ", ".join(f"{k} {v}" for k, v in plan.items())


def remove_earlier_shards(out: Path, rank: int, world: int) -> int:
    """``--overwrite``: remove the shards of an earlier run that this process is responsible for
    (those of its rank number, whatever their number of processes; rank 0 also those of
    ranks this run does not have), so that no stale shard of other settings stays beside
    the new ones. Only files named as this command names its shards; returns how many."""
    removed = 0
    for path in shard_files(out, temporary=True):
        r = int(SHARD_NAME.fullmatch(path.name)[1])
        if r == rank or (rank == 0 and r >= world):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _scheduler_class(pipeline: Path) -> str | None:
    """The scheduler's class name in the pipeline's ``scheduler/scheduler_config.json``; ``None`` if unreadable."""
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
    if args.resume:  # the guidance the shards were written with: known now that the pipeline is loaded
        check_resume(shard_files(out), plan, args, prompts, guidance)
    removed = remove_earlier_shards(out, rank, world) if args.overwrite else 0
    mine = len(range(rank, len(prompts), world))
    announce("distill-data", f"{mine} of {len(prompts)} prompts (rank {rank} of {world}), DDIM teacher "
             f"'{args.teacher}' with guidance {guidance:g} on {device}, in shards of up to {args.shard_size} prompts "
             f"in {out}" + (f" (replacing {removed} earlier shard file(s))" if removed else ""))
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
