#!/usr/bin/env python
"""Where the FoE energy should start: PSNR of the *untrained* minimiser against the filters' scale.

The FoE energy of ``scripts/train_denoisers_full.py --model foe`` (48 Student-t experts 7x7 on
the DCT basis, unary weight 1) with the basis times ``init_scale`` and expert weight ``alpha``,
minimised by ``ec.solve(..., "lbfgs")`` in float64 (to ``gtol=1e-5``, as the run validates) on the 256x256 centre crops of
the held-out photographs at sigma 25 (the FoE run's validation set), beside BM3D on the same
crops. docs/denoising.md "Training the full-size models" has the table this prints.

    python benchmarks/foe_filter_scale.py                       # the documented pairs
    python benchmarks/foe_filter_scale.py --pairs 16:0.003 32:0.0015
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import energycrf  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skimage.metrics import peak_signal_noise_ratio

from energycrf.apps.denoise import TEST_IMAGES, FoEEnergyDenoiser, PixelDenoiser, heldout_pair
from machine_info import cpu_name  # noqa: E402  (benchmarks/ is the script's folder)

PAIRS = ["1:0.05", "2:0.0125", "2:0.03", "4:0.01", "4:0.02", "4:0.04", "8:0.006", "8:0.012", "16:0.0015",
         "16:0.003", "16:0.006", "32:0.0008", "32:0.0015", "64:0.0004"]


def crops(sigma: float, size: int = 256):
    for name in TEST_IMAGES:
        clean, noisy = heldout_pair(name, sigma)
        top, left = (clean.shape[0] - size) // 2, (clean.shape[1] - size) // 2
        yield name, clean[top:top + size, left:left + size], noisy[top:top + size, left:left + size]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--pairs", nargs="+", default=PAIRS, metavar="SCALE:ALPHA")
    p.add_argument("--sigma", type=float, default=25.0)
    p.add_argument("--no-bm3d", action="store_true")
    args = p.parse_args(argv)
    pairs = []
    for item in args.pairs:
        try:
            scale, alpha = (float(v) for v in item.split(":"))
        except ValueError:
            p.error(f"--pairs: expected SCALE:ALPHA with two numbers, got {item!r}")
        if not (scale > 0 and alpha > 0):
            p.error(f"--pairs: expected positive SCALE and ALPHA, got {item!r}")
        pairs.append((scale, alpha))
    torch.set_num_threads(1)
    print(f"machine: {cpu_name()}, torch {torch.__version__} (1 thread); sigma {args.sigma:g}, 256x256 crops of "
          f"{', '.join(TEST_IMAGES)}")
    data = list(crops(args.sigma))
    print("| init_scale | alpha | " + " | ".join(n for n, _, _ in data) + " | mean PSNR (dB) | CPU s |")
    print("|---:|---:|" + "---:|" * (len(data) + 2))
    if not args.no_bm3d:
        import bm3d

        t0 = time.process_time()
        scores = [peak_signal_noise_ratio(c, np.clip(bm3d.bm3d(n, sigma_psd=args.sigma / 255), 0, 1), data_range=1.0)
                  for _, c, n in data]
        print(f"| BM3D | | {' | '.join(f'{v:.2f}' for v in scores)} | {np.mean(scores):.2f} | "
              f"{time.process_time() - t0:.0f} |", flush=True)
    for scale, alpha in pairs:
        model = FoEEnergyDenoiser(num_filters=48, kernel_size=7, alpha=alpha, init_scale=scale, num_iterations=1000,
                                  method="lbfgs", unary_weight=(25.0 / args.sigma) ** 2, filter_init="dct",
                                  expert_weights="learned", differentiation="implicit", gtol=1e-5)
        den = PixelDenoiser(model, sigma=args.sigma, kind="foe_energy", pad=12).double().eval()
        t0 = time.process_time()
        scores = []
        with torch.no_grad():  # eval mode in float64: ec.solve's minimiser, as the run's validation sees it
            for _, clean, noisy in data:
                est = den(torch.from_numpy(noisy)[None, None])[0, 0].numpy()
                scores.append(peak_signal_noise_ratio(clean, np.clip(est, 0, 1), data_range=1.0))
        print(f"| {scale:g} | {alpha:g} | {' | '.join(f'{v:.2f}' for v in scores)} | {np.mean(scores):.2f} | "
              f"{time.process_time() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
