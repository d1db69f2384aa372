#!/usr/bin/env python
"""Short recipes for the grayscale denoisers: the shipped LatentCRF ones (energycrf/pretrained/denoise-sigma{S}/latentcrf/).

The shipped ``staged`` and ``foe`` checkpoints are the full-size models of the long runs of
``scripts/train_denoisers_full.py`` (docs/denoising.md); this script's ``staged`` and ``foe``
recipes are the earlier small models (24 filters of 5x5), trained only into another ``--out``.

For each sigma (0-255 scale) and model, the stage-1 trainer learns from random patches of
the scikit-image training photographs (energycrf.apps.denoise.TRAIN_IMAGES) corrupted by
additive Gaussian noise of that sigma, with the denoising loss L_NT (mean squared form),
AdamW and warm-up + cosine decay. Models:

- ``foe``: a Unary + FieldOfExperts (24 Student-t experts, 5x5, started from the DCT
  basis) energy minimised by 6 mean-field steps, learned through
  energycrf.learned.unrolled.Unrolled;
- ``staged``: five stages, each one gradient step on its own Unary + FieldOfExperts energy
  (24 filters of 5x5 from the DCT basis, per-filter piecewise-linear influence functions),
  energycrf.learned.unrolled.Staged (Chen and Pock's trainable reaction-diffusion);
- ``latentcrf``: the LatentCRF layer (channels=1, cond_dim=None; Algorithm 1 with the
  paper's ReLU experts, the mean-field normalisation K^-1 and the MLP compatibility).

Each is then measured (PSNR) on the held-out photographs (energycrf.apps.denoise.TEST_IMAGES)
and saved with save_pretrained.

    python scripts/train_denoisers.py                      # the LatentCRF checkpoints (a few min per sigma)
    python scripts/train_denoisers.py --models staged foe --out /tmp/small   # the small models (2-20 min per run)
    python scripts/train_denoisers.py --models foe --sigmas 25 --steps 100 --out /tmp/try

Everything is seeded; on the same machine and thread count the run is repeatable.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

try:
    import energycrf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from energycrf.apps.denoise import (PRETRAINED_ROOT, TEST_IMAGES, TRAIN_IMAGES, FoEEnergyDenoiser, PixelDenoiser,
                               StagedFoEDenoiser, heldout_pair, skimage_gray)
from energycrf.learned.latent_crf import LatentCRF
from energycrf.training import ImagePatches, TrainConfig, Trainer

CRF_ARCH = dict(channels=1, cond_dim=None, num_iterations=5, num_filters=24, kernel_size=5,
                compatibility="mlp", hidden_channels=16, normalization="mean_field")
FOE_ARCH = dict(num_filters=24, kernel_size=5, alpha=1.0, num_iterations=6, method="mean_field", init_scale=1.0,
                filter_init="dct")
STAGED_ARCH = dict(num_stages=5, num_filters=24, kernel_size=5, num_knots=63, span=4.0, alpha=0.1,
                   unary_weight=0.05)
# per model: steps, learning rate, batch size, patch size, the border left out of the loss
# (the zero-padded patch edge), and the reflection padding used on whole images
RECIPES = {
    "foe": dict(steps=400, lr=3e-3, batch_size=8, patch_size=48, margin=8, pad=8),
    "latentcrf": dict(steps=800, lr=2e-3, batch_size=8, patch_size=48, margin=8, pad=8),
    "staged": dict(steps=3000, lr=3e-3, batch_size=16, patch_size=64, margin=12, pad=20),
}


def psnr(ref: np.ndarray, est: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(ref, np.clip(est, 0, 1), data_range=1.0))


@torch.no_grad()
def evaluate(den: PixelDenoiser, sigma: float) -> dict[str, float]:
    out = {}
    for name in TEST_IMAGES:
        clean, noisy = heldout_pair(name, sigma)
        y = den(torch.from_numpy(noisy).float()[None, None])[0, 0].double().numpy()
        out[name] = round(psnr(clean, y), 3)
    return out


def train_one(model: str, sigma: float, args) -> PixelDenoiser:
    torch.manual_seed(args.seed)
    recipe = dict(RECIPES[model])
    for key in ("steps", "lr", "batch_size", "patch_size", "margin"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    steps, lr, batch_size = recipe["steps"], recipe["lr"], recipe["batch_size"]
    images = [skimage_gray(n) for n in TRAIN_IMAGES]
    ds = ImagePatches(images, patch_size=recipe["patch_size"], length=steps * batch_size, seed=args.seed)
    if model == "foe":
        den = PixelDenoiser(FoEEnergyDenoiser(**FOE_ARCH), sigma=sigma, scale=args.scale, kind="foe_energy",
                            pad=recipe["pad"])
    elif model == "staged":
        arch = dict(STAGED_ARCH, **{k: v for k, v in (("num_stages", args.stages), ("num_filters", args.filters),
                                                        ("kernel_size", args.kernel_size)) if v is not None})
        den = PixelDenoiser(StagedFoEDenoiser(**arch), sigma=sigma, scale=args.scale, kind="staged_foe",
                            pad=recipe["pad"])
    else:
        den = PixelDenoiser(LatentCRF(**CRF_ARCH), sigma=sigma, scale=args.scale, kind="latent_crf",
                            pad=recipe["pad"])
    cfg = TrainConfig(output_dir=str(Path(args.work_dir) / f"{model}-sigma{int(sigma)}"), stage=1,
                      max_steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.0,
                      warmup_steps=args.warmup, min_lr_ratio=0.05, noise_mode="sigma",
                      noise_level=sigma / 255.0, loss_norm="mse", loss_margin=recipe["margin"], seed=args.seed,
                      log_every=10,
                      checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    t0 = time.process_time()
    Trainer(den, cfg, ds).fit(resume=args.resume)
    cpu = time.process_time() - t0
    den.eval()
    scores = evaluate(den, sigma)
    den.info = {"train_images": list(TRAIN_IMAGES), "test_images": list(TEST_IMAGES),
                "steps": steps, "batch_size": batch_size, "patch_size": recipe["patch_size"],
                "lr": lr, "warmup_steps": args.warmup, "loss_margin": recipe["margin"], "seed": args.seed, "threads": torch.get_num_threads(),
                "train_cpu_s": round(cpu, 1), "test_psnr": scores,
                "command": "python scripts/train_denoisers.py " + " ".join(args.argv)}
    return den


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=["latentcrf"])
    p.add_argument("--sigmas", type=float, nargs="+", default=[15, 25, 50])
    p.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--patch-size", type=int, default=None, help="override the recipe's patch size")
    p.add_argument("--margin", type=int, default=None,
                   help="override the recipe's border left out of the loss (zero-padded patch edges)")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--stages", type=int, default=None, help="staged model: override the number of stages")
    p.add_argument("--filters", type=int, default=None, help="staged model: override the filters per stage")
    p.add_argument("--kernel-size", type=int, default=None, help="staged model: override the filter size")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--resume", action="store_true", help="continue interrupted runs in --work-dir")
    p.add_argument("--work-dir", default="/tmp/energycrf-denoise-train")
    p.add_argument("--out", default=str(PRETRAINED_ROOT), help="where denoise-sigma{S}/ directories go")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--reevaluate", action="store_true",
                   help="do not train: reload the checkpoints in --out, measure them again, rewrite denoiser.json")
    args = p.parse_args(argv)
    staged_only = [f"--{name.replace('_', '-')}" for name in ("stages", "filters", "kernel_size")
                   if getattr(args, name) is not None]
    if staged_only and "staged" not in args.models:
        p.error(f"{', '.join(staged_only)}: only the staged model has them, and --models {' '.join(args.models)} "
                "does not train it")
    small = [m for m in args.models if m != "latentcrf"]
    if small and Path(args.out).resolve() == PRETRAINED_ROOT.resolve():
        p.error(f"--models {' '.join(small)}: the shipped staged and foe checkpoints are the full-size models of "
                "scripts/train_denoisers_full.py; this short recipe would replace them: pass --out DIR")
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    torch.set_num_threads(args.threads)
    for model in args.models:
        for sigma in args.sigmas:
            if args.reevaluate:
                path = Path(args.out) / f"denoise-sigma{int(sigma)}" / model
                den = PixelDenoiser.from_pretrained(path)
                den.pad = RECIPES[model]["pad"]
                den.eval()
                den.info["test_psnr"] = evaluate(den, sigma)
                den.save_pretrained(path)
                print(json.dumps({"model": model, "sigma": sigma, "dir": str(path),
                                  "test_psnr": den.info["test_psnr"]}), flush=True)
                continue
            den = train_one(model, sigma, args)
            path = den.save_pretrained(Path(args.out) / f"denoise-sigma{int(sigma)}" / model)
            print(json.dumps({"model": model, "sigma": sigma, "dir": str(path), "test_psnr": den.info["test_psnr"],
                              "train_cpu_s": den.info["train_cpu_s"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
