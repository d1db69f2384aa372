"""What ``energycrf train`` leaves in ``--out``: the CRF and its plan, the log, the loss plot, the record.

Written by rank 0 once every stage has run, in this order: ``plan.json``, the CRF
(``crf.save_pretrained``), ``log.jsonl`` (the stages' records, each with its ``stage``),
``loss.png`` and, last, ``training.json``, whose presence marks a finished run. A stopped
run (``--stop-after``, SIGINT / SIGTERM) writes the log and the plot so far.
"""

from __future__ import annotations

import json
import os

from ._command import announce, atomic_path
from .train_options import command_line, stage_value

#: what each logged loss is (the trainer's names)
CURVES = {"loss_main": "L_NT (3.4.1)", "loss_adv": "L_SCE(D(M(z~)), 1) (eqs. 12-13)",
          "loss_disc": "discriminator L_disc (eq. 14)"}


def write_log(out, stages) -> list[dict]:
    """``out/log.jsonl``: the records of every stage's log in order, each with its ``stage``; and the plot."""
    from ..io import atomic_write_text
    from ..training import read_log

    records = [{"stage": k, **r} for k in stages for r in read_log(out / "checkpoints" / f"stage{k}" / "log.jsonl")]
    atomic_write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    plot_losses(records, out / "loss.png")
    return records


def plot_losses(records: list[dict], png) -> None:
    """One panel per stage: stage 1's ``L_NT``, adversarial and discriminator losses, stage 2's ``L_DT``."""
    stages = sorted({r["stage"] for r in records})
    if not stages:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.4), dpi=110, squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [r for r in records if r["stage"] == stage]
        keys = list(CURVES) if any("loss_adv" in r for r in rows) else ["loss"]
        names = {**CURVES, "loss": "L_NT (3.4.1)" if stage == 1 else "L_DT (3.5)"}
        positive = True
        for key in keys:
            steps, values = [r["step"] for r in rows if key in r], [r[key] for r in rows if key in r]
            ax.plot(steps, values, lw=1.2, marker="." if len(steps) < 30 else None, label=names[key])
            positive &= all(v > 0 for v in values)
        if positive:
            ax.set_yscale("log")
        ax.set_title(f"stage {stage}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def stopped(args, dist, trainers: dict, stage: int, requested: bool) -> int:
    """A run stopped before its end (``--stop-after``: status 0; a signal: 130): the log so far, and how to go on."""
    if dist.is_main:
        write_log(args.out, sorted(trainers))
        trainer = trainers.get(stage)
        where = (f"at step {trainer.step} of {trainer.config.max_steps} of stage {stage}" if trainer is not None
                 else f"before stage {stage}")
        why = f"stopped after {args.stop_after} steps (--stop-after)" if requested else "interrupted"
        announce("train", f"{why} {where}; the checkpoint is in {os.fspath(args.out / 'checkpoints')}; "
                          "continue with the same command and --resume")
    return 0 if requested else 130


def _final(trainer) -> dict:
    last = trainer.history[-1] if trainer.history else {}
    return {k: v for k, v in last.items() if k == "step" or k.startswith("loss")}


def training_record(args, run: dict, crf, trainers: dict, noise: dict | None, seconds: dict, dist) -> dict:
    """``training.json``: the command, the pipeline, the plan, the CRF, each stage's data, settings and final losses."""
    import torch

    from .. import __version__

    sched, stages = run["sched"], {}
    for stage, trainer in trainers.items():
        entry = {"steps": trainer.config.max_steps, "batch_size": stage_value(args.batch_size, stage),
                 "global_batch": stage_value(args.batch_size, stage) * dist.world_size,
                 "lr": stage_value(args.lr, stage), "warmup": stage_value(args.warmup, stage),
                 "optimiser": "AdamW (weight decay 0.01), linear warm-up then cosine decay to 0",
                 "grad_clip": args.grad_clip or None}
        if stage == 1:
            s1 = run["stage1"]
            folder = args.images if s1["kind"] == "images" else args.latents
            entry["data"] = {"kind": s1["kind"], "folder": os.fspath(folder.resolve()), "files": len(s1["files"]),
                             "samples": run["rows"][1], "captions": s1["counts"], "default_caption": args.caption}
            if s1["kind"] == "images":
                entry["data"]["size"] = list(s1["size"])
            entry["noise"] = {**noise, "splice_timestep": sched.splice_timestep,
                              "corruption": "z~ = sqrt(a) z + sqrt(1 - a) n, a uniform in the alpha range"}
            adv = args.adv_weight if trainer.config.adversarial else 0
            entry["loss"] = LOSS_1.format(w=adv) if adv else "L_NT = ||z - M(z~)||_2 (paper 3.4.1)"
            entry["discriminator"] = {"channels": list(args.disc_channels)} if adv else None
        else:
            sh = run["shards"]
            entry["data"] = {k: v for k, v in sh.items() if k != "plan"}
            entry["init"] = ("stage 1's final checkpoint" if 1 in trainers else
                             os.fspath(args.init.resolve()) if args.init else "the untrained layer")
            entry["loss"] = "L_DT = ||z_f - M(z_s)||_2 (paper 3.5)"
        entry["final"] = _final(trainer)
        stages[str(stage)] = entry
    return {
        "command": command_line(args),
        "cwd": os.getcwd(),
        "processes": dist.world_size,
        "device": str(dist.device),
        "threads": torch.get_num_threads(),
        "energycrf_version": __version__,
        "pipeline": run["facts"].to_dict(),
        "plan": run["plan"].to_dict(),
        "plan_source": run["plan_source"],
        "timesteps": {"pre": list(sched.pre), "splice": sched.splice_timestep, "post": list(sched.post),
                      "target": sched.target_timestep},
        "crf_config": dict(crf.config),
        "stages": stages,
        "seconds": seconds,
    }


LOSS_1 = ("L_NT-F = L_NT + {w} L_SCE(D(M(z~)), 1) (eq. 13; L_SCE: eq. 12), L_NT = ||z - M(z~)||_2 (3.4.1); "
          "the discriminator D minimises L_disc = L_SCE(D(z), 1) + L_SCE(D(M(z~)), 0) (eq. 14)")


def write_outputs(args, run: dict, crf, trainers: dict, noise: dict | None, seconds: dict, dist) -> None:
    """``plan.json``, the CRF, the log and plot, then ``training.json`` (the mark of a finished run)."""
    from ..integrations.bundle import CRF_PLAN_FILE
    from ..io import atomic_write_text

    out = args.out
    atomic_write_text(out / CRF_PLAN_FILE, json.dumps(run["plan"].to_dict(), indent=2, sort_keys=True) + "\n")
    crf.eval()
    crf.save_pretrained(out)
    write_log(out, sorted(trainers))
    record = training_record(args, run, crf, trainers, noise, seconds, dist)
    atomic_write_text(out / "training.json", json.dumps(record, indent=2) + "\n")
    final = ", ".join(f"stage {k} {'L_NT' if k == 1 else 'L_DT'} "
                      f"{_final(t).get('loss_main', _final(t).get('loss')):.4g}"
                      for k, t in sorted(trainers.items()) if _final(t))
    announce("train", f"final {final}; the CRF, plan.json, training.json, log.jsonl and loss.png are in "
                      f"{os.fspath(out)}")
