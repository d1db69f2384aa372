"""Train a LatentCRF corrector for a few-step sampler of the shipped Fashion-MNIST pipeline.

    energycrf train-corrector --sampler dpmpp --spacing trailing --calls 8 --out DIR

The plan (:class:`~energycrf.integrations.plan.CorrectorPlan`): the sampler runs ``N``
UNet calls, then the CRF maps its final latent towards the teacher's (50 DDIM steps, same
prompt and noise). Data: training captions only (never the held-out evaluation
templates), one seed per image from ``--seed-base`` on (disjoint from the evaluation
seeds); the latents are cached in ``--work``. ``DIR`` receives the CRF with its plan
(``plan.json``), ``training.json`` (the command, the settings, the losses, the times),
``loss.csv`` and ``loss.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from pathlib import Path

from energycrf.apps._command import UsageError, check_output_dir

SAMPLERS = ("ddim", "dpmpp", "unipc")
OUTPUTS = ("config.json", "diffusion_pytorch_model.safetensors", "plan.json", "training.json", "loss.csv", "loss.png")
SPACINGS = ("leading", "trailing", "linspace")
NORMALIZATIONS = ("batch", "group", "none", "mean_field")


def corrector_config(normalization: str = "none", *, iterations: int = 5, filters: int = 8, filter_size: int = 3,
                     hidden: int = 32, text: bool = True) -> dict:
    """The corrector's architecture: by default ``LatentCRF(channels=4, cond_dim=384, normalization="none")``.

    Without a normalisation the untrained layer is close to the identity, the right start for a
    corrector of a latent that is already close to the target; the default batch norm
    starts at a standardised latent and spends most of a short training getting back.
    The other arguments are the ablations' knobs (the layer's defaults are left out of
    the config): ``iterations`` unrolled steps, ``filters`` FoE experts (0: no
    higher-order term), ``filter_size``, ``hidden`` the compatibility network's width,
    ``text=False`` an unconditioned layer (no text in the pairwise term).
    """
    config = dict(channels=4, cond_dim=384 if text else None, normalization=normalization)
    for key, value, default in (("num_iterations", iterations, 5), ("num_filters", filters, 8),
                                ("kernel_size", filter_size, 3), ("hidden_channels", hidden, 32)):
        if value != default:
            config[key] = value
    return config


def _architecture(args: argparse.Namespace) -> dict:
    return corrector_config(args.normalization, iterations=args.iterations, filters=args.filters,
                            filter_size=args.filter_size, hidden=args.hidden, text=not args.no_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sampler", default="dpmpp", help=f"the sampler the CRF corrects: {', '.join(SAMPLERS)}")
    parser.add_argument("--spacing", default="trailing", help=f"its timestep spacing: {', '.join(SPACINGS)}")
    parser.add_argument("--calls", type=int, default=8, help="its UNet calls N")
    parser.add_argument("--out", required=True, help="output directory (the CRF, plan.json, training.json, loss plot)")
    parser.add_argument("--pipeline", default=None, help="diffusers pipeline directory (default: the shipped one)")
    parser.add_argument("--images", type=int, default=640, help="training pairs (training captions, one seed each)")
    parser.add_argument("--seed-base", type=int, default=100000, help="image i uses seed seed-base + i")
    parser.add_argument("--teacher-steps", type=int, default=50, help="DDIM steps of the teacher")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (cosine decay to 0)")
    parser.add_argument("--pixel-weight", type=float, default=0.0,
                        help="weight of the decoded-image MSE to the teacher's image in the loss (0: latent MSE only)")
    parser.add_argument("--normalization", default="none", help=f"the CRF's psi_N: {', '.join(NORMALIZATIONS)}")
    parser.add_argument("--iterations", type=int, default=5, help="the CRF's unrolled steps T")
    parser.add_argument("--filters", type=int, default=8, help="FoE experts M (0: no higher-order term)")
    parser.add_argument("--filter-size", type=int, default=3, help="FoE filter size s (odd)")
    parser.add_argument("--hidden", type=int, default=32, help="width of the compatibility network")
    parser.add_argument("--no-text", action="store_true", help="an unconditioned CRF (no text in the pairwise term)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="pairs held out for the validation loss")
    parser.add_argument("--seed", type=int, default=0, help="captions, initialisation and batches")
    parser.add_argument("--work", default="energycrf-corrector-cache", help="latent cache (shared by plans)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    parser.add_argument("--overwrite", action="store_true", help="replace a corrector already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_arguments(args: argparse.Namespace) -> None:
    """A :class:`UsageError` (one line, status 2) for a bad option, before any work."""
    for name, choices in (("sampler", SAMPLERS), ("spacing", SPACINGS), ("normalization", NORMALIZATIONS)):
        if getattr(args, name) not in choices:
            raise UsageError(f"--{name}", f"one of {', '.join(choices)}", repr(getattr(args, name)))
    for name, low in (("calls", 1), ("images", 2), ("teacher_steps", 1), ("steps", 1), ("batch_size", 1),
                      ("seed_base", 0), ("threads", 0), ("iterations", 1), ("filters", 0), ("filter_size", 1),
                      ("hidden", 1)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name.replace('_', '-')}", f"an integer >= {low}", str(getattr(args, name)))
    if args.filter_size % 2 == 0:
        raise UsageError("--filter-size", "an odd integer", str(args.filter_size))
    if not 0.0 <= args.val_fraction < 1.0:
        raise UsageError("--val-fraction", "a number in [0, 1)", str(args.val_fraction))
    if args.calls >= args.teacher_steps:  # the student is the cheaper sampler the CRF corrects
        raise UsageError("--calls", f"fewer UNet calls than the teacher's --teacher-steps ({args.teacher_steps})",
                         str(args.calls))
    for name, ok, expected in (("lr", args.lr > 0, "a finite number > 0"),
                               ("guidance", args.guidance >= 0, "a finite number >= 0"),
                               ("pixel_weight", args.pixel_weight >= 0, "a finite number >= 0")):
        if not (ok and math.isfinite(getattr(args, name))):
            raise UsageError(f"--{name.replace('_', '-')}", expected, str(getattr(args, name)))
    check_output_dir(args.out, "--out", OUTPUTS, overwrite=args.overwrite)
    work = Path(args.work)
    if work.exists() and not work.is_dir():
        raise UsageError("--work", "a folder (the latent cache)", f"{args.work!r} (a file)")
    if work.resolve() == Path(args.out).resolve():
        raise UsageError("--work", "a folder other than --out (the cache is shared by plans)", repr(args.work))


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every option written out."""
    parts = ["energycrf", "train-corrector"]
    for key, value in sorted(vars(args).items()):
        if key.startswith("_") or key in ("command", "no_progress", "overwrite") or value is None or value is False:
            continue
        if value is True:
            parts.append(f"--{key.replace('_', '-')}")
            continue
        parts += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def plot_losses(hist: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(hist["step"], hist["loss"], lw=0.6, alpha=0.6, label="training batch")
    ax.plot(hist["val_step"], hist["val_loss"], "o-", ms=2, label="held-out pairs")
    if hist["identity_val_loss"] == hist["identity_val_loss"]:  # not NaN
        ax.axhline(hist["identity_val_loss"], color="grey", ls="--", lw=0.8, label="no CRF (identity)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("latent MSE to the teacher")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(args: argparse.Namespace, pipe=None) -> dict:
    """The run behind ``energycrf train-corrector`` (``pipe``: an already loaded pipeline)."""
    import torch

    from energycrf.apps.ldm import pretrained
    from energycrf.apps.ldm.crf_training import distillation_prompts
    from energycrf.integrations.bundle import save_crf
    from energycrf.integrations.corrector import corrector_pairs, fit_corrector
    from energycrf.integrations.plan import CorrectorPlan
    from energycrf.learned.latent_crf import LatentCRF

    if args.threads:
        torch.set_num_threads(args.threads)
    plan = CorrectorPlan(args.sampler, args.spacing, args.calls)
    pipe = pipe if pipe is not None else pretrained.load_pipeline(args.pipeline)
    prompts = distillation_prompts(args.images, seed=args.seed)
    seeds = [args.seed_base + i for i in range(args.images)]
    t0 = time.perf_counter()
    data = corrector_pairs(pipe, prompts, seeds, plan, teacher_steps=args.teacher_steps,
                           guidance_scale=args.guidance, cache_dir=args.work, progress=not args.no_progress)
    t_data = time.perf_counter() - t0
    torch.manual_seed(args.seed)
    crf = LatentCRF(**_architecture(args))
    t0 = time.perf_counter()
    vae = pipe.vae
    frozen = [p.requires_grad for p in vae.parameters()]
    pixel = {}
    if args.pixel_weight > 0:
        vae.requires_grad_(False)
        sf = vae.config.scaling_factor
        pixel["decoder"] = lambda z: vae.decode(z / sf, return_dict=False)[0] / 2 + 0.5  # noqa: E731
        with torch.no_grad():
            pixel["x_target"] = torch.cat([pixel["decoder"](z) for z in data["z_teacher"].split(64)])
    try:
        cond = None if args.no_text else data["prompt_embeds"]
        hist = fit_corrector(crf, data["z_in"], data["z_teacher"], cond, steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
                             progress=not args.no_progress, pixel_weight=args.pixel_weight, **pixel)
    finally:
        for p, flag in zip(vae.parameters(), frozen):
            p.requires_grad_(flag)
    t_fit = time.perf_counter() - t0
    out = Path(args.out)
    record = {
        "command": command_line(args),
        "plan": plan.to_dict(),
        "crf_config": _architecture(args),
        "data": {"images": args.images, "captions": "training templates (captions.TRAIN_TEMPLATES)",
                 "seeds": f"{args.seed_base}..{args.seed_base + args.images - 1}, one per image",
                 "teacher": f"DDIM {args.teacher_steps} steps (the pipeline's scheduler configuration)",
                 "guidance_scale": args.guidance},
        "optimiser": {"name": "AdamW", "lr": args.lr, "weight_decay": 0.01, "steps": args.steps,
                      "batch_size": args.batch_size, "schedule": "50 warm-up steps, cosine decay to 0"},
        "loss": "mean (M(z_N, c) - z_T)^2" + (f" + {args.pixel_weight} mean (D(M(z_N, c)) - D(z_T))^2, D the VAE "
                                              "decoder" if args.pixel_weight > 0 else ""),
        "final": {"train_loss_last50": sum(hist["loss"][-50:]) / len(hist["loss"][-50:]),
                  "val_loss": hist["val_loss"][-1], "val_loss_untrained": hist["val_loss"][0],
                  "identity_val_loss": hist["identity_val_loss"],
                  "val_pixel_loss": hist["val_pixel_loss"][-1] if hist["val_pixel_loss"] else None,
                  "train_size": hist["train_size"],
                  "val_size": hist["val_size"]},
        "seconds": {"data": round(t_data, 1), "fit": round(t_fit, 1)},
        "threads": torch.get_num_threads(),
    }
    csv = "step,loss,val_loss\n" + "".join(
        f"{s},{l:.6g},{dict(zip(hist['val_step'], hist['val_loss'])).get(s, '')}\n" for s, l in zip(hist["step"], hist["loss"]))
    save_crf(crf, out, plan, extra_files={"training.json": json.dumps(record, indent=2) + "\n", "loss.csv": csv})
    plot_losses(hist, out / "loss.png", f"corrector for {plan.describe()}")
    return record


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    rec = train(args)
    f = rec["final"]
    print(f"held-out latent MSE to the teacher: {f['val_loss']:.5g} (no CRF: {f['identity_val_loss']:.5g}); "
          f"data {rec['seconds']['data']} s, fit {rec['seconds']['fit']} s")
    print(f"written: {args.out} (plan.json, training.json, loss.csv, loss.png)")
    return 0
