"""Denoise a grey or colour image (channel by channel) with a checkpoint (the ``energycrf denoise`` command).

    energycrf denoise noisy.png --sigma 25 -o clean.png
    energycrf denoise noisy.npy --sigma 50 -o clean.npy     # float arrays, values outside [0, 1] allowed
    energycrf denoise photo.jpg --sigma 15 -o out.png --add-noise --seed 0   # noise it first (a demo)

The arguments, the image files and the command; the models are in
:mod:`energycrf.apps.denoise`, imported when the work starts. Everything is checked
before the model is loaded: the input is read, the output's suffix and folder checked,
the input never overwritten, an existing output replaced only with ``--overwrite``, and
the output written to a temporary file renamed when complete.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .denoise_checkpoints import DEFAULT_MODEL, DEFAULT_SIGMA, DENOISER_JSON, KIND_MODELS, MODELS, SIGMAS
from .denoise_inputs import check_channels_last, check_pixel_values, image_channels
from ._command import UsageError, atomic_path, check_input_file, check_output_file, integer, number

__all__ = ["SIGMAS", "MODELS", "DEFAULT_MODEL", "IMAGE_SUFFIXES", "read_image", "write_image",
           "add_arguments", "run", "main"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: str | os.PathLike, *, alpha: bool = False):
    """Read PNG / JPEG (to float in ``[0, 1]``) or ``.npy`` (float, values kept as they are).

    A grey file (8 or 16 bit, or 1 bit) gives ``[H, W]``, a colour one ``[H, W, 3]``. An alpha
    channel (grey + alpha, RGBA, a palette or a colour key with transparency) is not an image channel: it is
    dropped, or with ``alpha=True`` returned apart, ``(image, alpha)`` (``alpha`` is ``None``
    when there is none), so that it can be written back unchanged."""
    import numpy as np

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"IN: no file at {str(path)!r}")
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"IN: a .npy input must hold floats (pixel values, [0, 1] nominal), got {arr.dtype}")
        return (arr.astype(np.float32), None) if alpha else arr.astype(np.float32)
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"IN: expected a .png, .jpg, .jpeg or .npy file, got {str(path)!r}")
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
        elif im.mode in ("L", "RGB") and "transparency" in im.info:  # a colour key (tRNS): an alpha channel
            im = im.convert("LA" if im.mode == "L" else "RGBA")
        a = im.getchannel("A") if im.mode in ("LA", "La", "RGBA", "RGBa") else None
        if im.mode in ("1", "LA", "La"):
            im = im.convert("L")
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32) / 65535.0
        else:
            arr = np.asarray(im if im.mode == "L" else im.convert("RGB"), dtype=np.float32) / 255.0
    a = None if a is None else np.asarray(a, dtype=np.float32) / 255.0
    return (arr, a) if alpha else arr


def write_image(path: str | os.PathLike, image, alpha=None) -> Path:
    """Write ``.npy`` (float32 as is) or PNG / JPEG (clipped to ``[0, 1]``, 8 bit; grey or RGB).

    ``alpha`` (``[H, W]`` in ``[0, 1]``, from :func:`read_image`) goes back beside the image:
    a PNG becomes grey + alpha or RGBA, a ``.npy`` gets it as its last channel; a JPEG has none."""
    import numpy as np

    path = Path(path)
    suffix = path.suffix.lower()
    arr = np.asarray(image, dtype=np.float32)
    if suffix not in (*IMAGE_SUFFIXES, ".npy"):
        raise ValueError(f"OUT: expected a .png, .jpg, .jpeg or .npy file name, got {str(path)!r}")
    if suffix != ".npy":
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[-1] == 3):
            raise ValueError(f"OUT: a {suffix} file holds a grey [H, W] or RGB [H, W, 3] image, got shape "
                             f"{arr.shape}; write a .npy")
    if alpha is not None and suffix in (".npy", ".png"):  # the last channel; a JPEG has none
        arr = np.concatenate([arr.reshape(*arr.shape[:2], -1), np.asarray(alpha, np.float32)[..., None]], -1)
    if suffix == ".npy":
        np.save(path, arr, allow_pickle=False)
        return path
    from PIL import Image

    q = np.clip(np.rint(np.clip(arr, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(q).save(path, **({"quality": 95} if suffix != ".png" else {}))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="noisy image: .png, .jpg/.jpeg or .npy (float)")
    parser.add_argument("--sigma", type=number(positive=True), default=None,
                        help=f"noise standard deviation on the 0-255 scale; shipped: {', '.join(map(str, SIGMAS))} "
                             f"(default {DEFAULT_SIGMA}; with --checkpoint, the checkpoint's)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output .png, .jpg/.jpeg or .npy")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--model", choices=MODELS, default=None,
                        help="which shipped model: staged Field-of-Experts energies (staged, the default), one "
                             "Field-of-Experts energy minimised by its solver (foe) or the LatentCRF layer (latentcrf); "
                             "with --checkpoint, the checkpoint's")
    parser.add_argument("--checkpoint", default=None,
                        help=f"a denoiser directory; its {DENOISER_JSON} sets the model and sigma "
                             "(default: the shipped one for --sigma and --model)")
    parser.add_argument("--add-noise", action="store_true",
                        help="first add Gaussian noise of level --sigma to IN (to try the denoiser on a clean photo)")
    parser.add_argument("--seed", type=integer(minimum=0), default=0, help="seed of --add-noise")
    parser.add_argument("--threads", type=integer(minimum=1), default=None,
                        help="torch CPU threads (default: torch's choice)")


def validate(args: argparse.Namespace):
    """Check every argument and path before any work; returns the input image (read here:
    a file that is not an image is a usage error, found before the model loads)."""
    if args.checkpoint is not None:
        check_checkpoint(args)
    else:
        args.sigma = float(DEFAULT_SIGMA) if args.sigma is None else args.sigma
        args.model = DEFAULT_MODEL if args.model is None else args.model
    if args.checkpoint is None and float(args.sigma) not in SIGMAS:
        raise UsageError("--sigma", f"one of the shipped levels {', '.join(map(str, SIGMAS))}", f"{args.sigma:g}",
                         "for another level train a denoiser (scripts/train_denoisers.py) and pass its "
                         "directory as --checkpoint")
    src = check_input_file(args.input, "IN", (*IMAGE_SUFFIXES, ".npy"), what="an image")
    check_output_file(args.output, "--output", (*IMAGE_SUFFIXES, ".npy"), inputs=[src], overwrite=args.overwrite)
    try:
        image, alpha = read_image(src, alpha=True)
    except Exception as err:  # not an image, an integer .npy, a truncated file
        detail = " ".join(str(err).split()).removeprefix("IN: ")
        raise UsageError("IN", "a .png/.jpg/.jpeg image or a float .npy array", f"{str(src)!r} ({detail})") from err
    import numpy as np

    try:
        check_channels_last(image, "IN")
        if not np.isfinite(image).all():
            raise ValueError("IN: expected finite pixel values, got NaN or infinite values")
        check_pixel_values(image, args.sigma, "IN")
    except ValueError as err:
        expected, _, got = str(err).removeprefix("IN: expected ").partition(", got ")
        raise UsageError("IN", expected, got) from None
    suffix = Path(args.output).suffix.lower()
    if suffix in IMAGE_SUFFIXES and image_channels(image) not in (1, 3):
        raise UsageError("--output", f"a .npy file for an image of {image_channels(image)} channels",
                         f"{args.output!r} (a {suffix} file holds a grey or RGB image)")
    return image, alpha


def check_checkpoint(args: argparse.Namespace) -> None:
    """``--checkpoint``: a denoiser directory whose readable ``denoiser.json`` sets ``args.model``
    and ``args.sigma``; an explicit ``--model`` or ``--sigma`` that disagrees with it is refused,
    and so is a ``kind`` the loader does not know. (Its weights are read after the checks.)"""
    import json

    ckpt = Path(args.checkpoint)
    meta_path = ckpt / DENOISER_JSON
    if not meta_path.is_file():
        raise UsageError("--checkpoint", f"a denoiser directory holding {DENOISER_JSON}",
                         f"{str(ckpt)!r}" + ("" if ckpt.is_dir() else " (a file)" if ckpt.exists()
                                             else " (no such directory)"))
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError("--checkpoint", f"a denoiser directory with a valid {DENOISER_JSON}",
                         f"{str(meta_path)!r}, which is not valid JSON ({' '.join(str(err).split())})") from None
    if not isinstance(meta, dict):
        raise UsageError("--checkpoint", f"a denoiser directory whose {DENOISER_JSON} is a JSON object",
                         f"{str(meta_path)!r} ({type(meta).__name__})")
    model = KIND_MODELS.get(meta.get("kind"))
    if model is None:
        got = f"kind {meta['kind']!r}" if "kind" in meta else "no \"kind\""
        raise UsageError("--checkpoint", f"a denoiser directory whose {DENOISER_JSON} names its \"kind\", one of "
                         f"{', '.join(KIND_MODELS)}", f"{str(meta_path)!r} with {got}")
    if args.model is not None and args.model != model:
        raise UsageError("--model", f"the checkpoint's model {model!r} (or no --model)",
                         f"{args.model!r}, but {str(meta_path)!r} holds {model!r}")
    args.model = model
    sigma = meta.get("sigma")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < float("inf"):
        got = f"sigma {sigma!r}" if "sigma" in meta else "no \"sigma\""
        raise UsageError("--checkpoint", f"a denoiser directory whose {DENOISER_JSON} gives the \"sigma\" it was "
                         "trained for, a positive number", f"{str(meta_path)!r} with {got}")
    if args.sigma is not None and float(args.sigma) != float(sigma):
        raise UsageError("--sigma", f"the checkpoint's sigma {float(sigma):g} (or no --sigma)",
                         f"{args.sigma:g}, but {str(meta_path)!r} was trained for sigma {float(sigma):g}")
    args.sigma = float(sigma)


def run(args: argparse.Namespace) -> int:
    image, alpha = validate(args)

    import numpy as np
    import torch

    from .denoise import denoise, load_denoiser

    if args.threads:
        torch.set_num_threads(args.threads)
    den = load_denoiser(args.sigma, args.checkpoint, model=args.model)
    if args.add_noise:
        rng = np.random.default_rng(args.seed)
        image = (image + rng.normal(0.0, args.sigma / 255.0, image.shape)).astype(np.float32)
    t0 = time.process_time()
    out = denoise(image, denoiser=den)
    cpu = time.process_time() - t0
    with atomic_path(args.output) as tmp:
        write_image(tmp, out, alpha)
    kept = "" if alpha is None else (", alpha kept" if Path(args.output).suffix.lower() in (".png", ".npy")
                                     else ", alpha dropped (JPEG has none)")
    print(f"denoised {args.input} ({'x'.join(map(str, image.shape))}, sigma {args.sigma:g}{kept}) -> {args.output} "
          f"in {cpu:.2f} s CPU [{den.kind}, {'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'shipped'}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m energycrf.apps.denoise IN --sigma 25 -o OUT`` (same as ``energycrf denoise``)."""
    import sys

    from energycrf.cli import main as cli_main

    return cli_main(["denoise", *(sys.argv[1:] if argv is None else argv)])
