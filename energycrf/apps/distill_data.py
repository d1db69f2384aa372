"""Write stage-2 distillation shards (z_s, z_f, prompt embeddings) from a local diffusers pipeline.

    energycrf distill-data --pipeline ./sd15 --prompts captions.txt --out ./shards
    torchrun --nproc-per-node 8 -m energycrf distill-data ...     # one shard series per rank

The pipeline directory is loaded with ``local_files_only=True`` (nothing is downloaded).
The plan defaults to the paper's (31 of 40, CRF, last 2 of 50). See
:mod:`energycrf.integrations.distill` for the shard format.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, help="local diffusers pipeline directory (model_index.json)")
    parser.add_argument("--prompts", required=True, help="text file, one prompt per line (blank lines skipped)")
    parser.add_argument("--out", required=True, help="output directory for the shards")
    parser.add_argument("--pre-steps", type=int, default=40)
    parser.add_argument("--pre-run", type=int, default=31)
    parser.add_argument("--post-steps", type=int, default=50)
    parser.add_argument("--post-run", type=int, default=2)
    parser.add_argument("--crf-output", choices=["clean", "post"], default="clean")
    parser.add_argument("--teacher", choices=["plan", "full"], default="plan")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--ddim", action="store_true", help="replace the pipeline's scheduler by DDIM (same config)")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import torch
    from diffusers import DDIMScheduler, DiffusionPipeline

    from ..integrations.distill import generate_distillation_data, rank_and_world_size
    from ..integrations.plan import SplicePlan

    plan = SplicePlan(args.pre_steps, args.pre_run, args.post_steps, args.post_run, args.crf_output)
    prompts = [line.strip() for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"{args.prompts}: no prompts (one per line expected)")
    rank, world = rank_and_world_size()
    device = args.device
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    pipe = DiffusionPipeline.from_pretrained(args.pipeline, local_files_only=True)
    pipe = pipe.to(device, getattr(torch, args.dtype))
    if args.ddim:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    extra = {"negative_prompt": args.negative_prompt} if args.negative_prompt else {}
    paths = generate_distillation_data(
        pipe,
        prompts,
        args.out,
        plan,
        teacher=args.teacher,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        seed=args.seed,
        guidance_scale=args.guidance_scale,
        rank=rank,
        world_size=world,
        progress=not args.no_progress,
        **extra,
    )
    print(f"rank {rank}/{world}: {len(paths)} shard(s) in {args.out}")
    return 0
