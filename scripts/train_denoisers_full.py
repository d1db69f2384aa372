#!/usr/bin/env python
"""Long, resumable training runs of the full-size denoisers (issue 25), one model and sigma per run.

Models (the shipped kinds, larger and trained longer than scripts/train_denoisers.py's recipes):

- ``staged``: Chen and Pock's trainable reaction-diffusion at full size, 5 stages of 48
  filters 7x7 (the DCT basis to start) with per-filter piecewise-linear influence
  functions (:class:`energycrf.apps.denoise.StagedFoEDenoiser`). TNRD practice: *greedy*
  phases ``greedy-1 .. greedy-5`` (phase ``t`` trains stage ``t`` alone, the earlier stages
  frozen, on the loss of ``y_t``), then a *joint* phase that fine-tunes all stages on
  the loss of ``y_5`` at a lower learning rate.
- ``foe``: one Field-of-Experts energy (48 Student-t experts 7x7 with a learned weight
  each, and the unary weight; :class:`energycrf.apps.denoise.FoEEnergyDenoiser`) learned
  through its minimiser (Chen et al.'s opt-MRF, a bilevel problem): the lower problem is
  solved by the project's L-BFGS to ``gtol``, the gradient comes from implicit
  differentiation (``Unrolled(differentiation="implicit")``); at inference the learned
  energy is minimised by ``ec.solve``.

Data: random patches of the scikit-image training photographs
(``energycrf.apps.denoise.TRAIN_IMAGES``) with Gaussian noise of ``--sigma`` (0-255 scale),
the loss ``L_NT`` in its mean-squared form on the patch interior (``margin`` pixels of
real image context around it). Validation: PSNR on the held-out photographs
(``TEST_IMAGES``, never trained on) every ``validate_every`` steps.

Everything goes under ``--run-dir`` (keep it outside the repository)::

    run.json              the recipe, architecture and every command that ran on this folder
    <phase>/              one Trainer folder per phase: step-N checkpoints (atomic), latest,
                          log.jsonl, loss_curve.png
    validation.jsonl      held-out PSNRs, one record per validation
    learning_curve.png    training loss and held-out PSNR against the global step
    final/                the trained denoiser (safetensors + JSON, PixelDenoiser.save_pretrained)

Stopping (Ctrl-C, SIGTERM, a killed session) loses at most ``checkpoint_every`` steps;
``--resume`` continues exactly where the last checkpoint stands (bit-identical to an
uninterrupted run on the same device and thread count), also on a GPU
(``--device cuda``, same script)::

    python scripts/train_denoisers_full.py --model staged --sigma 25 --run-dir /work/runs/denoise/staged-sigma25
    python scripts/train_denoisers_full.py --model staged --sigma 25 --run-dir /work/runs/denoise/staged-sigma25 --resume

``--init DIR`` starts from a trained denoiser of the same kind and architecture (a run's
``final/``) instead of the DCT start: another noise level is then a fine-tune of the joint
phase only (Chen and Pock train every sigma from scratch; about a seventh of the cost)::

    python scripts/train_denoisers_full.py --model staged --sigma 15 --run-dir /work/runs/denoise/staged-sigma15 \
        --init /work/runs/denoise/staged-sigma25/final --set greedy_steps=0 --set joint_steps=600

``run.json`` names the start by its path and the SHA-256 of its weights: once the run has a checkpoint,
``--resume`` needs no ``--init`` folder (the recorded path is accepted also when it is gone); an ``--init``
at another path must hold the same weights.
Every option and ``--set`` entry is checked before anything is created (``_denoise_run_settings.py``):
a mistake is one line naming the option, exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import energycrf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from energycrf.apps.denoise import (PRETRAINED_ROOT, TEST_IMAGES, TRAIN_IMAGES, FoEEnergyDenoiser, PixelDenoiser,
                                    StagedFoEDenoiser, heldout_pair, skimage_gray)
from energycrf.io import atomic_write_text
from energycrf.learned.unrolled import Staged
from energycrf.training import ImagePatches, TrainConfig, Trainer
from energycrf.training.distributed import init_distributed
from energycrf.training.logs import read_log
from energycrf.training.resume import newest_resumable, restore
from energycrf.training.stopping import StopRequest

from _denoise_run_settings import KEYS  # noqa: F401  (every --set key's type and range)
from _denoise_run_settings import UsageError, check_patches, check_run_dir, check_settings, run_settings, write_run_json

# architectures: TNRD's 5 stages of 48 filters 7x7; opt-MRF's 48 Student-t experts 7x7
ARCH = {
    # 48 filters of 7x7 diffuse about twice as much as 24 of 5x5 with the same influence: half the start
    "staged": dict(num_stages=5, num_filters=48, kernel_size=7, num_knots=63, span=4.0, alpha=0.05,
                   unary_weight=0.05),
    # the filters' scale sets where the expert log(1 + z^2 / 2) bends: unit-norm filters answer noise of
    # sigma 25 with z ~ 0.4, the quadratic part, and learning them up by Adam took 400 steps to 29.6 dB
    # on the four 256x256 crops (measured). Filters 32 times the unit-norm DCT basis put noise past the
    # bend; with alpha = 0.0015 the untrained minimiser is already 33.27 dB there (BM3D 33.47; a sharp
    # ridge in alpha: 0.0008 gives 22.8 dB, measured; docs/denoising.md)
    "foe": dict(num_filters=48, kernel_size=7, alpha=0.0015, init_scale=32.0, num_iterations=1000, method="lbfgs",
                unary_weight=1.0, filter_init="dct", expert_weights="learned", differentiation="implicit",
                gtol=1e-5, cg_tol=1e-6),
}
# the training recipe: Adam steps per phase, learning rates (7x7 taps are ~5/7 the size of 5x5 ones:
# the 5x5 model's 3e-3 scaled down), batch, patches whose interior (margin = the receptive field of
# 5 stages of 7x7 filters and their adjoints, 30 pixels) carries the loss, reflection padding at inference
RECIPES = {
    "staged": dict(greedy_steps=600, joint_steps=3000, lr=2e-3, joint_lr=1e-3, warmup=50, batch_size=8,
                   patch_size=120, margin=30, pad=30, checkpoint_every=50, validate_every=200, val_crop=0,
                   dtype="float32"),
    # float64: L-BFGS in float32 stalls near |grad E| ~ 3e-4 |grad E(x)| (round-off of the energy), short of
    # the fixed point that implicit differentiation assumes; float64 reaches gtol = 1e-5 (~25 iterations at the unit-norm start, ~76 at the 32-fold one)
    # lr: Adam moves a weight by about lr a step; the 32-fold taps get 8 times the 5x5 model's rate.
    # 200 steps: the start is near its optimum, and a step costs ~31 s on one core (76 L-BFGS iterations
    # in float64 on 8 patches, then 69 conjugate-gradient steps for the implicit gradient; measured)
    "foe": dict(steps=200, lr=0.016, warmup=20, batch_size=8, patch_size=64, margin=10, pad=12,
                checkpoint_every=20, validate_every=100, val_crop=256, dtype="float64"),
}


def psnr(ref: np.ndarray, est: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(ref, np.clip(est, 0, 1), data_range=1.0))


def build(model: str, sigma: float, arch: dict, recipe: dict) -> PixelDenoiser:
    if model == "staged":
        return PixelDenoiser(StagedFoEDenoiser(**arch), sigma=sigma, kind="staged_foe", pad=recipe["pad"])
    return PixelDenoiser(FoEEnergyDenoiser(**arch), sigma=sigma, kind="foe_energy", pad=recipe["pad"])


def phases(model: str, arch: dict, recipe: dict) -> list[dict]:
    """The run's phases in order: name, steps, learning rate, and (staged) the stages it runs and trains."""
    if model == "foe":
        return [dict(name="train", steps=recipe["steps"], lr=recipe["lr"], stages=None, trains=None)]
    T = arch["num_stages"]
    out = [dict(name=f"greedy-{t}", steps=recipe["greedy_steps"], lr=recipe["lr"], stages=t, trains=t - 1)
           for t in range(1, T + 1) if recipe["greedy_steps"] > 0]
    if recipe["joint_steps"] > 0:  # greedy_steps=0 and joint_steps=0: no phase, the start is measured
        out.append(dict(name="joint", steps=recipe["joint_steps"], lr=recipe["joint_lr"], stages=T, trains=None))
    return out


class StageView(torch.nn.Module):
    """The first ``stages`` stages of a staged denoiser as a denoiser (parameters shared, not copied)."""

    def __init__(self, den: PixelDenoiser, stages: int):
        super().__init__()
        layer = den.model.layer
        self.inner = PixelDenoiser(_Run(Staged(list(layer.energies)[:stages], layer.step_size)), den.sigma,
                                   den.offset, den.scale, kind=den.kind, pad=den.pad)

    def forward(self, x):
        return self.inner(x)


class _Run(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def phase_forward(den: PixelDenoiser, phase: dict, dtype: torch.dtype):
    """The ``(model, x, c) -> y`` the Trainer calls in this phase (computing in ``dtype``, the loss in
    float32), and the denoiser it validates."""
    if phase["stages"] is None or phase["stages"] == len(den.model.layer.energies):
        return (lambda model, x, c: model(x.to(dtype)).float()), den
    view = StageView(den, phase["stages"])

    def forward(model, x, c):
        view.train(model.training)
        return view(x.to(dtype)).float()

    return forward, view


def freeze_for(den: PixelDenoiser, phase: dict) -> None:
    """Greedy phase: only stage ``trains`` learns; otherwise every parameter does."""
    for t, energy in enumerate(getattr(den.model.layer, "energies", [])):
        for p in energy.parameters():
            p.requires_grad_(phase["trains"] is None or t == phase["trains"])


@torch.no_grad()
def validate(den: torch.nn.Module, sigma: float, images, crop: int, device) -> dict[str, float]:
    """Held-out PSNR per photograph (the same noisy copies as the benchmark; a centre ``crop`` when > 0)."""
    was = den.training
    den.eval()
    out = {}
    for name in images:
        clean, noisy = heldout_pair(name, sigma)
        if crop:
            h, w = clean.shape
            top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
            clean, noisy = clean[top:top + crop, left:left + crop], noisy[top:top + crop, left:left + crop]
        x = torch.from_numpy(noisy)[None, None].to(device=device, dtype=next(den.parameters()).dtype)
        out[name] = round(psnr(clean, den(x)[0, 0].double().cpu().numpy()), 3)
    den.train(was)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def plot_learning_curve(run_dir: Path, plan: list[dict], reference: float | None) -> None:
    """Training loss (per phase, against the global step) above the held-out PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, dpi=100)
    offset = 0
    for ph in plan:
        recs = read_log(run_dir / ph["name"] / "log.jsonl") if (run_dir / ph["name"] / "log.jsonl").is_file() else []
        recs = [r for r in recs if "loss" in r]
        if recs:
            ax1.plot([offset + r["step"] for r in recs], [r["loss"] for r in recs], lw=0.8, label=ph["name"])
        ax1.axvline(offset, color="0.85", lw=0.6)
        ax2.axvline(offset, color="0.85", lw=0.6)
        offset += ph["steps"]
    ax1.set_yscale("log")
    ax1.set_ylabel("training loss (MSE, x' scale)")
    val = read_jsonl(run_dir / "validation.jsonl")
    if val:
        ax2.plot([r["global_step"] for r in val], [r["mean_psnr"] for r in val], "o-", ms=3, label="held-out mean")
    if reference is not None:
        ax2.axhline(reference, color="k", ls="--", lw=0.8, label=f"shipped model ({reference:.2f} dB)")
    ax2.set_xlabel("global step (phases one after the other)")
    ax2.set_ylabel("held-out PSNR (dB)")
    for ax, size in ((ax1, 7), (ax2, 8)):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=size, ncol=3 if ax is ax1 else 1)
    fig.tight_layout()
    tmp = run_dir / ".learning_curve.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(run_dir / "learning_curve.png")


def shipped_reference(model: str, sigma: float, images, crop: int) -> float | None:
    """The shipped model's mean held-out PSNR from its denoiser.json (whole photographs only)."""
    path = PRETRAINED_ROOT / f"denoise-sigma{int(sigma)}" / model / "denoiser.json"
    if crop or not path.is_file():
        return None
    scores = json.loads(path.read_text()).get("info", {}).get("test_psnr", {})
    return float(np.mean([scores[i] for i in images])) if all(i in scores for i in images) else None


def read_init(path: str, model: str, den: PixelDenoiser) -> dict:
    """Load the ``--init`` folder (a trained denoiser of this kind and architecture) into ``den``; name
    it by path and the SHA-256 of its weights, which is what ``--resume`` compares."""
    folder = Path(path)
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not (folder / "denoiser.json").is_file() or not weights:
        raise UsageError("--init", "a trained denoiser folder (a run's final/, safetensors and JSON)", repr(path))
    try:
        start = PixelDenoiser.from_pretrained(folder)
    except (ValueError, OSError, KeyError) as err:
        raise UsageError("--init", "a denoiser folder that loads", f"{path!r} ({err})") from None
    if start.kind != den.kind:
        raise UsageError("--init", f"a {den.kind!r} denoiser for --model {model}", f"a {start.kind!r} one in {path!r}")
    mine, theirs = den.model.state_dict(), start.model.state_dict()
    wrong = sorted(k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape)
    if wrong or set(theirs) - set(mine):
        raise UsageError("--init", "a denoiser of this run's architecture (pass the same --set entries)",
                         f"{path!r}, another one (first difference: {(wrong or sorted(set(theirs) - set(mine)))[0]!r})")
    den.model.load_state_dict(theirs)
    digest = hashlib.sha256(b"".join(w.read_bytes() for w in weights)).hexdigest()
    out = {"path": str(folder.resolve()), "sha256": digest, "sigma": start.sigma}
    if den.kind == "foe_energy" and start.sigma != den.sigma:
        # the energy is a MAP objective: the data term's weight is 1 / (2 sigma^2) times the prior's scale,
        # so another noise level keeps the prior and rescales w by (sigma_init / sigma)^2
        factor = (start.sigma / den.sigma) ** 2
        with torch.no_grad():
            den.model.energy[0].log_weight.add_(math.log(factor))
        out["unary_weight_times"] = factor
    return out


def resolve_init(args, meta: dict | None, plan: list[dict], den: PixelDenoiser) -> dict | None:
    """The run's start: ``--init`` (checked against the weights ``run.json`` records, by SHA-256, not
    by path), the recorded one (loaded only while the run has no checkpoint), or none. Once the run
    has a checkpoint nothing is loaded from the start: ``--init`` may then name its recorded folder
    even after that folder moved or went."""
    recorded = (meta or {}).get("settings", {}).get("init")
    if args.init is None and recorded is None:
        return None
    if meta is not None and recorded is None:
        raise UsageError("--init", f"none (the run in {args.run_dir!r} started without one)", repr(args.init))
    checkpointed = bool(plan) and (Path(args.run_dir) / plan[0]["name"] / "latest").is_file()
    if checkpointed and (args.init is None or not Path(args.init).exists()
                         and Path(args.init).resolve() == Path(recorded["path"])):
        return recorded  # the first phase resumes from its checkpoint: the start is not needed
    path = args.init if args.init is not None else recorded["path"]
    if args.init is None and not (Path(path) / "denoiser.json").is_file():
        raise UsageError("--init", f"the start of the run in {args.run_dir!r}, which has no checkpoint yet",
                         f"nothing: {path!r} (run.json) is gone", "pass --init with a folder of the same weights "
                         f"(sha256 {recorded['sha256'][:16]}...)")
    init = read_init(path, args.model, den)
    if recorded is not None and {**recorded, "path": None} != {**init, "path": None}:
        raise UsageError("--init", f"the weights the run in {args.run_dir!r} started from (sha256 "
                         f"{recorded['sha256'][:16]}..., sigma {recorded['sigma']:g})",
                         f"other weights in {path!r} (sha256 {init['sha256'][:16]}..., sigma {init['sigma']:g})")
    return init


def finished_step(phase_dir: Path) -> int:
    """The step of the phase's newest checkpoint (0 when there is none)."""
    latest = phase_dir / "latest"
    return int(latest.read_text().strip().split("-")[-1]) if latest.is_file() else 0


def cost(phase: dict) -> float:
    """A phase's relative cost per step: ``t`` stages forward and one backward (greedy), or all ``T``
    both ways (about three forwards each; joint); 1 for the one-phase FoE run."""
    if phase["stages"] is None:
        return 1.0
    return phase["stages"] + 2.0 if phase["trains"] is not None else 3.0 * phase["stages"]


def run_phase(den, k: int, phase: dict, plan: list[dict], args, recipe: dict, dist, budget: list, images,
              stop: StopRequest) -> bool:
    """Train one phase to its end (or until the step budget of this invocation runs out, or a stop is
    requested): returns whether the phase is complete."""
    run_dir = Path(args.run_dir)
    phase_dir = run_dir / phase["name"]
    offset = sum(p["steps"] for p in plan[:k])
    torch.manual_seed(args.seed + 1000 * k)
    freeze_for(den, phase)
    ds = ImagePatches(images, patch_size=recipe["patch_size"],
                      length=phase["steps"] * recipe["batch_size"], seed=args.seed + k)
    cfg = TrainConfig(output_dir=str(phase_dir), stage=1, max_steps=phase["steps"], batch_size=recipe["batch_size"],
                      lr=phase["lr"], weight_decay=0.0, warmup_steps=min(recipe["warmup"], phase["steps"]),
                      min_lr_ratio=0.05, noise_mode="sigma", noise_level=args.sigma / 255.0, loss_norm="mse",
                      loss_margin=recipe["margin"], seed=args.seed + k, log_every=args.log_every,
                      checkpoint_every=0, keep_checkpoints=2, progress=not args.no_progress, amp=False)
    forward, view = phase_forward(den, phase, getattr(torch, recipe["dtype"]))
    trainer = Trainer(den, cfg, ds, forward_fn=forward, dist=dist)
    found = newest_resumable(phase_dir)
    if found is not None:
        restore(trainer, *found)
    elif k > 0:  # a new phase starts from the previous phase's last weights
        prev = run_dir / plan[k - 1]["name"]
        trainer.init_from(prev / (prev / "latest").read_text().strip())
    val_path = run_dir / "validation.jsonl"
    records = [r for r in read_jsonl(val_path) if r["global_step"] <= offset + trainer.step]
    write_jsonl(val_path, records)
    every, chunk = recipe["validate_every"], recipe["checkpoint_every"]
    reference = shipped_reference(args.model, args.sigma, args.val_images, recipe["val_crop"])

    def maybe_validate():
        s = trainer.step
        due = s == phase["steps"] or (s > 0 and s % every == 0)
        if not due or any(r["global_step"] == offset + s for r in records):
            return
        t0 = time.perf_counter()
        scores = validate(view, args.sigma, args.val_images, recipe["val_crop"], dist.device)
        rec = {"phase": phase["name"], "step": s, "global_step": offset + s, "psnr": scores,
               "mean_psnr": round(float(np.mean(list(scores.values()))), 3), "crop": recipe["val_crop"],
               "seconds": round(time.perf_counter() - t0, 1)}
        records.append(rec)
        write_jsonl(val_path, records)
        print(json.dumps({"validation": rec}), flush=True)

    maybe_validate()  # a run stopped between its checkpoint and its validation catches up
    while trainer.step < phase["steps"]:
        if (budget[0] is not None and budget[0] <= 0) or stop.local():
            return False
        n = chunk if budget[0] is None else min(chunk, budget[0])
        n = min(n, phase["steps"] - trainer.step, chunk - trainer.step % chunk)
        before, t0 = trainer.step, time.perf_counter()
        out = trainer.fit(stop_after=n, resume=False)  # ends with an atomic checkpoint
        done = trainer.step - before
        if budget[0] is not None:
            budget[0] -= done
        rate = (time.perf_counter() - t0) / max(done, 1)
        # the rest of the run at this rate, each phase weighted by its cost relative to this one's
        left = (phase["steps"] - trainer.step) + sum(p["steps"] * cost(p) / cost(phase) for p in plan[k + 1:])
        print(json.dumps({"phase": phase["name"], "step": trainer.step, "global_step": offset + trainer.step,
                          "loss": out["loss"], "lr": trainer.optimizer.param_groups[0]["lr"],
                          "s_per_step": round(rate, 3), "eta_h_at_this_rate": round(left * rate / 3600, 2)}),
              flush=True)
        maybe_validate()
        plot_learning_curve(run_dir, plan, reference)
        if out["stopped"] or done < n or stop.local():  # SIGINT / SIGTERM in fit or between: checkpoint written
            return False
    return True


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="train_denoisers_full.py", description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(RECIPES),
                   help="staged: the 5-stage model (TNRD); foe: one FoE energy learned through its minimiser")
    p.add_argument("--sigma", type=float, required=True, help="noise level, 0-255 scale (15, 25, 50 are shipped)")
    p.add_argument("--run-dir", required=True, help="the run's folder (checkpoints, logs, plot, final model)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the same run can move between them)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the training patches and of any random start")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe or architecture entry (JSON value), e.g. --set joint_steps=4000")
    p.add_argument("--val-images", nargs="+", default=list(TEST_IMAGES),
                   help="photographs the learning curve is measured on (the held-out ones by default)")
    p.add_argument("--train-images", nargs="+", default=list(TRAIN_IMAGES),
                   help="the training photographs (a subset of TRAIN_IMAGES; default: all of them)")
    p.add_argument("--max-steps-now", type=int, default=None,
                   help="stop after this many steps in this invocation (a checkpoint is written); resume later")
    p.add_argument("--log-every", type=int, default=10, help="write the loss to the phase's log.jsonl every N steps")
    p.add_argument("--export", default=None, help="also write the final denoiser to this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from this trained denoiser (same kind and architecture, e.g. another sigma's final/)")
    args = p.parse_args(argv)
    arch, recipe = dict(ARCH[args.model]), dict(RECIPES[args.model])
    try:  # every usage mistake is found here, before anything is created or trained
        if args.model == "foe" and math.isfinite(args.sigma) and args.sigma > 0:
            arch["unary_weight"] = arch["unary_weight"] * (25.0 / args.sigma) ** 2  # the MAP weight: 1/sigma^2
        given = check_settings(args, arch, recipe, TRAIN_IMAGES, TEST_IMAGES)
        images = [skimage_gray(n) for n in args.train_images]
        check_patches(recipe, given, [im.shape for im in images])
        try:
            den = build(args.model, args.sigma, arch, recipe)
        except (ValueError, TypeError) as err:
            raise UsageError("--set", "an architecture the model accepts", str(err)) from None
        plan = phases(args.model, arch, recipe)
        settings = run_settings(args, arch, recipe)
        meta = check_run_dir(args, settings)
        init = resolve_init(args, meta, plan, den)  # the first phase starts from den's weights
    except UsageError as err:
        p.exit(2, f"{p.prog}: error: {err}\n")
    torch.set_num_threads(args.threads)
    dist = init_distributed(device=args.device)
    den = den.to(getattr(torch, recipe["dtype"]))
    meta = write_run_json(args, meta, settings, init, argv)
    print(json.dumps({"started": args.run_dir, "pid": os.getpid()}), flush=True)  # denoise_runs.sh waits for it
    run_dir = Path(args.run_dir)
    budget = [args.max_steps_now]
    t0 = time.process_time()
    if all(ph["steps"] == 0 for ph in plan):  # nothing to train (e.g. --init with a rescaled unary): measure it
        records = read_jsonl(run_dir / "validation.jsonl")
        if not records:
            scores = validate(den, args.sigma, args.val_images, recipe["val_crop"], dist.device)
            records = [{"phase": "none", "step": 0, "global_step": 0, "psnr": scores,
                        "mean_psnr": round(float(np.mean(list(scores.values()))), 3), "crop": recipe["val_crop"]}]
            write_jsonl(run_dir / "validation.jsonl", records)
        plan = []
    with StopRequest() as stop:  # a signal between two fit calls (validating, plotting) is a stop too, not a kill
        for k, phase in enumerate(plan):
            if finished_step(run_dir / phase["name"]) >= phase["steps"] and k + 1 < len(plan) \
                    and finished_step(run_dir / plan[k + 1]["name"]) > 0:
                continue  # done, and the next phase has its own checkpoints
            if not run_phase(den, k, phase, plan, args, recipe, dist, budget, images, stop):
                print(json.dumps({"stopped": phase["name"], "resume": "the same command with --resume"}),
                      flush=True)
                return 0
    den = den.cpu().float().eval()  # the last phase ran (or was restored) above: den holds its final weights
    val = read_jsonl(run_dir / "validation.jsonl")
    den.info = {"train_images": list(args.train_images), "test_images": list(args.val_images), "arch": arch,
                "recipe": recipe, "phases": [{k: ph[k] for k in ("name", "steps", "lr")} for ph in plan],
                "seed": args.seed, **({"init": init} if init else {}), "validation": val[-1] if val else None,
                "train_cpu_s_last_invocation": round(time.process_time() - t0, 1),
                "commands": [c["command"] for c in meta["commands"]]}
    if not recipe["val_crop"]:
        den.info["test_psnr"] = val[-1]["psnr"] if val else None
    for target in [run_dir / "final"] + ([Path(args.export)] if args.export else []):
        den.save_pretrained(target)
    print(json.dumps({"done": str(run_dir / "final"), "validation": val[-1] if val else None}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
