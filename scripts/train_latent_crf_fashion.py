"""Train the shipped LatentCRF for the Fashion-MNIST pipeline: stage 1 then stage 2.

    OMP_NUM_THREADS=1 python scripts/train_latent_crf_fashion.py \
        --pipeline energycrf/pretrained/ldm-fashion/pipeline --out energycrf/pretrained/ldm-fashion/latent-crf

Stage 1: VAE latents of the 60,000 training photographs, noised around the splice point
(t in [101, 301], t_s = 201), denoising + adversarial loss (eq. 13-14). Stage 2: distillation
pairs (z_s at t = 201, z_f the final latent) from the pipeline's own DDIM trajectories
(paper plan, classifier-free guidance), L_DT. Work files (latents, checkpoints, shards) go
to --work; every part resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--pipeline", type=Path, required=True, help="the diffusers pipeline directory")
    ap.add_argument("--vae", type=Path, default=None, help="VAE directory for stage 1 (default: <pipeline>/vae)")
    ap.add_argument("--out", type=Path, required=True, help="where the trained LatentCRF is saved")
    ap.add_argument("--work", type=Path, default=Path("/tmp/energycrf-fashion-crf"))
    ap.add_argument("--stages", default="1,2")
    ap.add_argument("--stage1-steps", type=int, default=800)
    ap.add_argument("--stage2-steps", type=int, default=2000)
    ap.add_argument("--stage2-lr", type=float, default=1e-3)
    ap.add_argument("--distill-samples", type=int, default=1280)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffusers import AutoencoderKL

    from energycrf.integrations.plan import SplicePlan
    from energycrf.apps.ldm import crf_training as CT
    from energycrf.apps.ldm import data, train
    from energycrf.training import latest_checkpoint

    stages = {int(s) for s in args.stages.split(",") if s.strip()}
    args.work.mkdir(parents=True, exist_ok=True)
    plan = SplicePlan.paper()
    times = {}
    s1_dir, s2_dir, shard_dir = args.work / "stage1", args.work / "stage2", args.work / "shards"
    crf = CT.build_crf()

    if 1 in stages:
        t0 = time.perf_counter()
        lat_path = args.work / "train_latents.safetensors"
        if lat_path.is_file():
            from safetensors.torch import load_file

            d = load_file(str(lat_path))
            z, y = d["z"], d["y"]
        else:
            vae = AutoencoderKL.from_pretrained(str(args.vae or args.pipeline / "vae")).eval()
            images, labels = data.load_fashion_mnist("train")
            z = train.encode_latents(vae, data.to_model_range(images))
            y = torch.as_tensor(labels)
            from energycrf.io import save_safetensors

            save_safetensors({"z": z.contiguous(), "y": y}, lat_path)
        bank = train.caption_bank()
        sched_cfg = train.build_scheduler().config
        t_s = plan.schedule_for(sched_cfg).splice_timestep
        level = CT.alpha_range(sched_cfg, t_s - 100, t_s + 100)
        print(f"stage 1: {len(z)} latents, alpha in {level[0]:.3f}..{level[1]:.3f} (t in {t_s - 100}..{t_s + 100})")
        res = CT.train_stage1(crf, CT.CaptionedLatents(z, y, bank, args.seed), s1_dir, args.stage1_steps, level,
                              seed=args.seed)
        times["stage1"] = round(time.perf_counter() - t0, 1)
        print(f"stage 1 done: {res} in {times['stage1']} s", flush=True)

    if 2 in stages:
        from energycrf.integrations.distill import generate_distillation_data

        t0 = time.perf_counter()
        pipe = train.load_pipeline(args.pipeline)
        prompts = CT.distillation_prompts(args.distill_samples, seed=args.seed)
        generate_distillation_data(pipe, prompts, shard_dir, plan, batch_size=32, shard_size=320,
                                   seed=args.seed, guidance_scale=args.guidance)
        times["distill_data"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        init = latest_checkpoint(s1_dir)
        if init is None:
            raise SystemExit(f"stage 2 needs a stage-1 checkpoint in {s1_dir}; run --stages 1 first")
        res = CT.train_stage2(crf, shard_dir, s2_dir, args.stage2_steps, init=init, lr=args.stage2_lr, seed=args.seed)
        times["stage2"] = round(time.perf_counter() - t0, 1)
        print(f"stage 2 done: {res} in {times['stage2']} s", flush=True)

    crf.eval()
    crf.save_pretrained(args.out)
    info = {"stages": sorted(stages), "stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps, "stage2_lr": args.stage2_lr,
            "distill_samples": args.distill_samples, "guidance_scale": args.guidance, "plan": plan.to_dict(),
            "seconds": times, "threads": args.threads, "seed": args.seed}
    (args.out / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"LatentCRF saved to {args.out}; times {times}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
