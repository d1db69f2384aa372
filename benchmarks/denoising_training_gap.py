#!/usr/bin/env python
"""A denoiser against BM3D on its own *training* photographs: is a gap on unseen photographs over-fitting?

For each training photograph (energycrf.apps.denoise.TRAIN_IMAGES), its central 256 x 256 crop
with Gaussian noise of sigma (seeded by the photograph's index), denoised by the shipped model
(or ``--checkpoint DIR``) and by BM3D: the PSNR difference per photograph and its mean.
docs/denoising.md "What this shows, honestly" quotes the sigma-25 run of the staged model.

    python benchmarks/denoising_training_gap.py                    # the shipped staged model, sigma 25
    python benchmarks/denoising_training_gap.py --checkpoint /work/runs/denoise/staged-sigma25/final
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

try:
    import energycrf  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skimage.metrics import peak_signal_noise_ratio

from energycrf.apps.denoise import TRAIN_IMAGES, denoise, load_denoiser, skimage_gray


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--sigma", type=float, default=25.0)
    p.add_argument("--model", default="staged", help="a shipped model (staged, foe, latentcrf)")
    p.add_argument("--checkpoint", default=None, help="a denoiser folder instead of the shipped model")
    args = p.parse_args(argv)
    import bm3d

    torch.set_num_threads(1)
    den = (load_denoiser(checkpoint=args.checkpoint) if args.checkpoint
           else load_denoiser(args.sigma, model=args.model))
    s = args.sigma / 255
    diffs = []
    print("| training photograph | BM3D (dB) | ours - BM3D (dB) |\n|---|---:|---:|")
    for i, name in enumerate(TRAIN_IMAGES):
        clean = skimage_gray(name)
        top, left = (clean.shape[0] - 256) // 2, (clean.shape[1] - 256) // 2
        clean = clean[top:top + 256, left:left + 256]
        noisy = clean + np.random.default_rng(100 + i).normal(0, s, clean.shape)
        ref = peak_signal_noise_ratio(clean, np.clip(bm3d.bm3d(noisy, sigma_psd=s), 0, 1), data_range=1.0)
        ours = peak_signal_noise_ratio(clean, np.clip(denoise(noisy.astype(np.float32), denoiser=den), 0, 1),
                                       data_range=1.0)
        diffs.append(ours - ref)
        print(f"| {name} | {ref:.2f} | {ours - ref:+.2f} |", flush=True)
    diffs = np.array(diffs)
    print(f"mean {diffs.mean():+.3f} dB, ahead on {int((diffs > 0).sum())} of {diffs.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
