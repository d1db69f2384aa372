#!/usr/bin/env python
"""Grayscale Gaussian denoising on held-out scikit-image photographs: energycrf vs the classics.

One run, same noisy inputs for every method (energycrf.apps.denoise.heldout_pair), sigma in
{15, 25, 50} on the 0-255 scale. Methods:

- ``Staged FoE``: the shipped energycrf/pretrained/denoise-sigma{S}/staged/, one gradient
  step on each of 5 Field-of-Experts energies with 48 learned 7x7 filters and
  piecewise-linear influence functions (1 torch thread);
- ``FoE energy``: the shipped energycrf/pretrained/denoise-sigma{S}/foe/, a Unary +
  Field-of-Experts (Student-t) energy minimised by its solver (at sigma 25 the 7x7 energy
  learned through its L-BFGS minimiser; at 15 and 50 the earlier 5x5 one, 6 mean-field
  steps; 1 torch thread);
- ``LatentCRF``: the shipped energycrf/pretrained/denoise-sigma{S}/latentcrf/ (1 torch thread);
- ``BM3D`` (the ``bm3d`` package, ``sigma_psd`` = the true sigma);
- ``NL-means``, ``TV`` (Chambolle) and ``wavelet`` (BayesShrink) from scikit-image, with
  the true sigma; the NL-means filtering strength and the TV weight are tuned per sigma
  on a crop of a *training* photograph (astronaut), never on the test images.

Reported per method and sigma: PSNR and SSIM (skimage.metrics, data range 1, output
clipped to [0, 1]) averaged over the test photographs, and the CPU time
(``time.process_time``, all threads of this process) per image after one untimed warm-up call
on a 64x64 crop, with its ratio to BM3D's, and each method's PSNR difference to BM3D image
by image (mean, smallest, largest, and on how many images it is ahead).

    python benchmarks/denoising.py                         # table to stdout
    python benchmarks/denoising.py --json /tmp/den.json --figure docs/img/denoising.png
    python benchmarks/denoising.py --outside --sigmas 25   # photographs outside skimage

``--outside`` measures on photographs that ship with other installed packages instead
(:data:`OUTSIDE`: matplotlib's ``grace_hopper.jpg``, scikit-learn's ``china.jpg`` and
``flower.jpg``), grey, the central 256 x 256 crop (``--crop 0``: the whole photograph), never used
in training or tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import energycrf  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

from energycrf.apps.denoise import SIGMAS, TEST_IMAGES, denoise, heldout_pair, load_denoiser, skimage_gray
from energycrf.apps.photographs import PHOTOGRAPHS
from machine_info import cpu_name  # noqa: E402  (benchmarks/ is the script's folder)


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu_name()}, {os.cpu_count()} logical cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread), load average {load}")


def paired_vs(rows: dict, name: str, reference: str = "BM3D") -> str:
    """Method ``name`` against ``reference`` image by image: the mean PSNR difference, its
    smallest and largest per-image value, and on how many images it is ahead."""
    diff = np.array([a["psnr"] - b["psnr"] for a, b in zip(rows[name]["per_image"], rows[reference]["per_image"])])
    return f"{diff.mean():+.2f} [{diff.min():+.2f}, {diff.max():+.2f}] ({int((diff > 0).sum())}/{diff.size})"


def per_draw_vs(rows: dict, name: str, reference: str = "BM3D") -> str:
    """Method ``name`` against ``reference``: the mean PSNR difference over the photographs, one
    figure per noise draw (does a difference hold on other noise?)."""
    pairs = zip(rows[name]["per_image"], rows[reference]["per_image"])
    by_draw: dict[int, list[float]] = {}
    for a, b in pairs:
        by_draw.setdefault(a.get("draw", 0), []).append(a["psnr"] - b["psnr"])
    return ", ".join(f"draw {d}: {np.mean(v):+.2f}" for d, v in sorted(by_draw.items()))


def tune(sigma: float) -> dict[str, float]:
    """TV weight and NL-means h factor maximising PSNR on a 256x256 astronaut crop."""
    clean = skimage_gray("astronaut")[64:320, 128:384]
    rng = np.random.default_rng(7)
    noisy = clean + rng.normal(0, sigma / 255, clean.shape)
    s = sigma / 255

    def score(est):
        return peak_signal_noise_ratio(clean, np.clip(est, 0, 1), data_range=1.0)

    tv = max((score(denoise_tv_chambolle(noisy, weight=f * s)), f) for f in (0.4, 0.6, 0.8, 1.0, 1.3, 1.7))[1]
    nlm = max((score(denoise_nl_means(noisy, h=f * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True)), f)
              for f in (0.4, 0.5, 0.6, 0.8, 1.0))[1]
    return {"tv_weight_factor": tv, "nlm_h_factor": nlm}


#: The shipped models' rows: name -> load_denoiser(model=...).
SHIPPED = {"Staged FoE (ours)": "staged", "FoE energy (ours)": "foe", "LatentCRF (ours)": "latentcrf"}
CLASSICS = ("BM3D", "NL-means", "TV", "wavelet")


def methods(sigma: float, tuned: dict[str, float], extra: dict[str, str] | None = None,
            only: list[str] | None = None):
    """name -> denoising function for every row (``only``: those rows and BM3D), models loaded here."""
    s = sigma / 255

    def bm3d_denoise(x):
        import bm3d  # imported when measured: the table's other rows need no bm3d

        return bm3d.bm3d(x, sigma_psd=s)

    out = {}
    wanted = (lambda name: True) if only is None else (lambda name: name in only or name == "BM3D")
    loaders = {name: (lambda model=model: load_denoiser(sigma, model=model)) for name, model in SHIPPED.items()}
    for name, directory in (extra or {}).items():  # a checkpoint outside the package, e.g. a run's final/
        loaders[name] = lambda directory=directory: load_denoiser(sigma, checkpoint=directory.format(sigma=int(sigma)))
    for name, load in loaders.items():
        if wanted(name):
            out[name] = lambda x, den=load(): denoise(x.astype(np.float32), denoiser=den)
    classics = {
        "BM3D": bm3d_denoise,
        "NL-means": lambda x: denoise_nl_means(x, h=tuned["nlm_h_factor"] * s, sigma=s, patch_size=5,
                                               patch_distance=6, fast_mode=True),
        "TV": lambda x: denoise_tv_chambolle(x, weight=tuned["tv_weight_factor"] * s),
        "wavelet": lambda x: denoise_wavelet(x, sigma=s, method="BayesShrink", mode="soft", rescale_sigma=True),
    }
    out.update({name: fn for name, fn in classics.items() if wanted(name)})
    return out


#: Photographs outside skimage that load offline: name -> (package, file).
OUTSIDE = {"grace_hopper": ("matplotlib", "grace_hopper.jpg"), "china": ("sklearn", "china.jpg"),
           "flower": ("sklearn", "flower.jpg")}
CROP = 256


def outside_photograph(name: str, crop: int = CROP) -> np.ndarray:
    """An :data:`OUTSIDE` photograph as float64 grey in ``[0, 1]``, its central ``crop x crop`` part
    (``crop=0``: the whole photograph)."""
    from skimage.color import rgb2gray

    if name not in OUTSIDE:
        raise ValueError(f"name must be one of {sorted(OUTSIDE)}, got {name!r}")
    package, file = OUTSIDE[name]
    if package == "matplotlib":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(file) as f:
            rgb = np.asarray(Image.open(f).convert("RGB"))
    else:
        from sklearn.datasets import load_sample_image

        rgb = load_sample_image(file)
    grey = rgb2gray(rgb).astype(np.float64)
    if isinstance(crop, bool) or not isinstance(crop, int) or not 0 <= crop <= min(grey.shape):
        raise ValueError(f"crop: expected an int in [0, {min(grey.shape)}] (0: the whole photograph), got {crop!r}")
    if crop == 0:
        return grey
    top, left = (grey.shape[0] - crop) // 2, (grey.shape[1] - crop) // 2
    return grey[top : top + crop, left : left + crop]


def noisy_pair(name: str, sigma: float, crop: int = CROP, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(clean, noisy)``: the skimage test set's own pair, or an outside photograph with noise seeded by
    sigma, the name and the noise draw (the same noisy copy in every run; draw 0 is the docs' tables')."""
    if name not in OUTSIDE:
        return heldout_pair(name, sigma, draw)
    clean = outside_photograph(name, crop)
    rng = np.random.default_rng([int(round(sigma)), sorted(OUTSIDE).index(name), 25] + ([draw] if draw else []))
    return clean, clean + rng.normal(0.0, sigma / 255.0, clean.shape)


def input_psnr(name: str, sigma: float, crop: int = CROP, draw: int = 0) -> float:
    """PSNR of the noisy input itself (clipped to [0, 1] like every output)."""
    clean, noisy = noisy_pair(name, sigma, crop, draw)
    return float(peak_signal_noise_ratio(clean, np.clip(noisy, 0, 1), data_range=1.0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="denoising benchmark (see module docstring)")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    p.add_argument("--images", nargs="+", default=None, help="skimage test photographs (default: the test set)")
    p.add_argument("--outside", action="store_true", help="the photographs outside skimage (OUTSIDE) instead")
    p.add_argument("--crop", type=int, default=CROP, help="--outside: the central crop's size (0: whole photographs)")
    p.add_argument("--json", default=None, help="write per-image results here")
    p.add_argument("--figure", default=None, help="write the picture (noisy, each method, clean) here")
    p.add_argument("--figure-image", default="camera")
    p.add_argument("--figure-sigma", type=float, default=25)
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help="measure only these rows (BM3D, the reference, always runs); default: all")
    p.add_argument("--draws", type=int, default=1, metavar="N",
                   help="measure each photograph under N independent noise draws (0 .. N-1; draw 0 is the "
                        "docs' tables'); the paired differences then run over every (photograph, draw)")
    p.add_argument("--extra", nargs="+", default=[], metavar="NAME=DIR",
                   help="also measure the denoiser in DIR ({sigma} is replaced by the noise level), "
                        "e.g. 'Staged 7x7=/work/runs/denoise/staged-sigma{sigma}/final'")
    args = p.parse_args(argv)
    if args.crop < 0:
        p.error(f"--crop: expected an int >= 0 (0: the whole photograph), got {args.crop}")
    if args.draws < 1:
        p.error(f"--draws: expected an int >= 1, got {args.draws}")
    if args.images is None:
        args.images = sorted(OUTSIDE) if args.outside else list(TEST_IMAGES)
    extra = {}
    for item in args.extra:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            p.error(f"--extra: expected NAME=DIR, got {item!r}")
        extra[name] = directory
    known = list(SHIPPED) + list(extra) + list(CLASSICS)
    unknown = [m for m in args.methods or [] if m not in known]
    if unknown:
        p.error(f"--methods: expected names among {known}, got {unknown}")
    photographs = sorted(OUTSIDE) if args.outside else sorted(PHOTOGRAPHS)
    unknown = [i for i in args.images if i not in photographs]
    if unknown:
        p.error(f"--images: expected names among {photographs}{'' if args.outside else ' (skimage)'}, got {unknown}")
    bad = [s for s in args.sigmas if not 0 < s < float("inf")]
    if bad:
        p.error(f"--sigmas: expected positive noise levels (0-255 scale), got {bad}")
    shipped_rows = [m for m in (args.methods or SHIPPED) if m in SHIPPED]
    unshipped = [s for s in args.sigmas if float(s) not in SIGMAS]
    if shipped_rows and unshipped:
        p.error(f"--sigmas: the shipped rows {shipped_rows} exist for sigma in {SIGMAS}, got {unshipped} "
                "(measure other levels with --methods and --extra)")
    for name, directory in extra.items():  # each loads and is trained for its sigma, before any measurement
        for sigma in args.sigmas:
            folder = Path(directory.format(sigma=int(sigma)))
            if not (folder / "denoiser.json").is_file():
                p.error(f"--extra: expected a denoiser folder (denoiser.json) for {name!r} at sigma {sigma:g}, "
                        f"got {str(folder)!r}")
            try:
                load_denoiser(sigma, checkpoint=folder)
            except (ValueError, TypeError, OSError, RuntimeError, KeyError) as err:
                p.error(f"--extra: expected a denoiser for sigma {sigma:g} as {name!r}, got {str(folder)!r}: "
                        + " ".join(str(err).split()))
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    print(f"test photographs: {', '.join(args.images)}"
          + (f" ({'whole' if args.crop == 0 else f'central {args.crop} x {args.crop}'})" if args.outside else ""))
    results: dict = {"machine": machine(), "images": args.images, "crop": args.crop if args.outside else None,
                     "sigmas": {}}
    shown: dict[str, np.ndarray] = {}
    for sigma in args.sigmas:
        tuned = tune(sigma)
        rows = {}
        for name, fn in methods(sigma, tuned, extra, args.methods).items():
            fn(noisy_pair(args.images[0], sigma, args.crop)[1][:64, :64])  # one-off warm-up, not timed
            per = []
            for img, draw in ((i, d) for d in range(args.draws) for i in args.images):
                clean, noisy = noisy_pair(img, sigma, args.crop, draw)
                t0 = time.process_time()
                est = np.asarray(fn(noisy), dtype=np.float64)
                cpu = time.process_time() - t0
                est = np.clip(est, 0, 1)
                per.append({"image": img, "draw": draw, "psnr": peak_signal_noise_ratio(clean, est, data_range=1.0),
                            "ssim": structural_similarity(clean, est, data_range=1.0), "cpu_s": cpu})
                if sigma == args.figure_sigma and img == args.figure_image and draw == 0:
                    shown[name] = est
                    shown["noisy"], shown["clean"] = noisy, clean
            rows[name] = {"psnr": float(np.mean([r["psnr"] for r in per])),
                          "ssim": float(np.mean([r["ssim"] for r in per])),
                          "cpu_s": float(np.mean([r["cpu_s"] for r in per])), "per_image": per}
        noisy_psnr = float(np.mean([input_psnr(i, sigma, args.crop, d)
                                    for d in range(args.draws) for i in args.images]))
        results["sigmas"][str(int(sigma))] = {"tuned": tuned, "noisy_psnr": noisy_psnr, "methods": rows}
        bm = rows["BM3D"]["cpu_s"]
        print(f"\nsigma = {sigma:g} (noisy input: {noisy_psnr:.2f} dB; TV weight {tuned['tv_weight_factor']:g} sigma, "
              f"NL-means h {tuned['nlm_h_factor']:g} sigma)")
        print("| method | PSNR (dB) | SSIM | CPU s / image | CPU vs BM3D | PSNR - BM3D's, per image: mean [min, max] "
              "(images ahead) |")
        print("|---|---:|---:|---:|---:|---|")
        for name, r in rows.items():
            paired = "" if name == "BM3D" else paired_vs(rows, name)
            print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['cpu_s']:.3f} | {r['cpu_s'] / bm:.3f}x "
                  f"| {paired} |")
        if args.draws > 1:
            for name in rows:
                if name != "BM3D":
                    print(f"{name} - BM3D, mean per noise draw: {per_draw_vs(rows, name)}")
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.figure and shown:
        figure(shown, args.figure, args.figure_image, args.figure_sigma)
    return 0


def figure(shown: dict[str, np.ndarray], path: str, image: str, sigma: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["noisy"] + [k for k in shown if k not in ("noisy", "clean")] + ["clean"]
    clean = shown["clean"]
    h, w = clean.shape
    crop = (slice(h // 8, h // 8 + h // 2), slice(w // 4, w // 4 + w // 2))
    cols = 4
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.3 * rows), dpi=110)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), order):
        im = np.clip(shown[k], 0, 1)
        ax.imshow(im[crop], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        title = k if k == "clean" else f"{k}\n{peak_signal_noise_ratio(clean, im, data_range=1.0):.2f} dB"
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{image}, sigma = {sigma:g} (crop; PSNR on the whole image)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
