"""Reproduce the shipped Fashion-MNIST latent diffusion model (energycrf/pretrained/ldm-fashion).

    OMP_NUM_THREADS=1 python scripts/train_ldm.py --out energycrf/pretrained/ldm-fashion

Trains the AutoencoderKL, encodes the 60,000 training photographs, trains the
text-conditioned UNet (checkpoints in --workdir, so an interrupted run resumes), assembles
the MiniLM Stable Diffusion pipeline, saves it with save_pretrained (safetensors) and
prints the training time. --tiny runs the whole path in seconds (for tests).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="directory of the saved pipeline")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/energycrf-ldm-work"), help="checkpoints (resume)")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--vae-batch", type=int, default=64)
    ap.add_argument("--unet-steps", type=int, default=1500)
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--ema", type=float, default=0.995, help="EMA decay of the UNet weights")
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (tests)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from energycrf.apps.ldm import data, train

    log = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    args.workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    images, labels = data.load_fashion_mnist("train")
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    x = data.to_model_range(images)
    y = torch.as_tensor(labels)

    t0 = time.perf_counter()
    vae = train.train_vae(x, args.vae_steps, batch_size=args.vae_batch, workdir=args.workdir, seed=args.seed,
                          tiny=args.tiny, log=log, progress=not args.quiet)
    t_vae = time.perf_counter() - t0
    with torch.no_grad():
        rec = vae.decode(vae.encode(x[:512]).latent_dist.mean).sample
    vae_mse = float((rec - x[:512]).pow(2).mean())
    log(f"VAE trained in {t_vae:.0f} s; reconstruction MSE (range [-1,1]) {vae_mse:.4f}; "
        f"scaling_factor {vae.config.scaling_factor:.4f}")

    t0 = time.perf_counter()
    z = train.encode_latents(vae, x)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    unet = train.train_unet(z, y, args.unet_steps, batch_size=args.unet_batch, lr=args.unet_lr,
                            ema_decay=args.ema, workdir=args.workdir, seed=args.seed, tiny=args.tiny, log=log,
                            progress=not args.quiet)
    t_unet = time.perf_counter() - t0
    pipe = train.assemble_pipeline(vae, unet)
    total = time.perf_counter() - t_start
    info = {
        "dataset": "Fashion-MNIST train split (Debian dataset-fashion-mnist)",
        "images": int(len(x)),
        "vae_steps": args.vae_steps, "vae_batch": args.vae_batch, "vae_reconstruction_mse": vae_mse,
        "unet_steps": args.unet_steps, "unet_batch": args.unet_batch, "unet_lr": args.unet_lr, "ema": args.ema,
        "seed": args.seed, "threads": args.threads,
        "seconds": {"vae": round(t_vae, 1), "encode": round(t_enc, 1), "unet": round(t_unet, 1), "total": round(total, 1)},
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, {args.threads} thread(s), CPU",
        "parameters": {"vae": sum(p.numel() for p in vae.parameters()), "unet": sum(p.numel() for p in unet.parameters())},
    }
    train.save_pipeline(pipe, args.out, info)
    print(f"training time: {total:.0f} s (VAE {t_vae:.0f} s, encode {t_enc:.0f} s, UNet {t_unet:.0f} s); "
          f"pipeline saved to {args.out}")
    print(json.dumps(info["parameters"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
