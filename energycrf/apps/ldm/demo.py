"""LatentCRF on the shipped text-to-image model: pictures and Table 1 on a small sample.

``energycrf demo`` loads the project's Fashion-MNIST latent diffusion pipeline (trained
offline, shipped in ``energycrf/pretrained/ldm-fashion``) and its LatentCRF, then

1. generates a few held-out prompts with the same seeds three ways: DDIM 50 steps, DDIM 33
   steps, and LatentCRF with 33 UNet calls (31 of 40 steps, the CRF, the last 2 of 50),
   and writes a PNG grid (rows: prompts x seeds; columns: the three methods);
2. measures the rows of Table 1 (LDM 50 / 33 / 20, LatentCRF 33 / 20, DPM-Solver++ 33 /
   20) on a small sample: Frechet distance on classifier features, class accuracy, Vendi
   diversity, ms per image twice, labelled: the steady state (the fastest of interleaved
   timed runs) and what this run waited per image; prints the table and writes
   ``table.json`` / ``table.md``;
3. with the table, the payoff check (:mod:`energycrf.apps.ldm.verdict`): on the same
   images, the shipped default corrector (11 UniPC calls + the CRF) against DPM-Solver++
   with one more call, paired against the 50-step teacher; prints the verdict line for
   that budget and writes ``verdict.json``.

It says first what it will do (images and UNet calls), then shows one progress bar with
the time left. Default: the picture (4 prompts x 2 seeds) and a table of 10 prompts x 8
seeds; ``--full`` is the run of docs/ldm.md (2 prompts per class, 16 seeds), ``--no-table``
the picture only. Torch threads: ``--threads``, by default the cores that the load average
leaves idle (:func:`energycrf.apps._command.threads_for_load`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .._command import UsageError, announce, atomic_path, check_output_dir, integer, number, progress_bar
from .evaluate_command import (TABLE_FILES, TIMING_REPEATS, add_run_options, require_fashion_mnist, require_ldm,
                               set_threads, table_size)

PICTURE = "ldm_vs_latentcrf.png"
VERDICT = "verdict.json"
GRID_SEEDS = (0, 1)
FULL = {"per_class": 2, "seeds": 16}  # the table of docs/ldm.md
DEFAULT = {"per_class": 1, "seeds": 8}  # the small table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="energycrf-demo-out", help="output directory (PNG grid, table)")
    parser.add_argument("--per-class", type=integer(minimum=1), default=None,
                        help=f"held-out prompts per class for the table (default {DEFAULT['per_class']}, "
                             f"{FULL['per_class']} with --full)")
    parser.add_argument("--seeds", type=integer(minimum=2), default=None,
                        help=f"seeds (images) per prompt for the table (default {DEFAULT['seeds']}, "
                             f"{FULL['seeds']} with --full)")
    parser.add_argument("--full", action="store_true",
                        help=f"the table of docs/ldm.md: --per-class {FULL['per_class']} --seeds {FULL['seeds']} "
                             "unless given (about 3 times the default's work)")
    parser.add_argument("--grid-prompts", type=integer(minimum=1, maximum=10), default=4, help="prompts in the picture")
    parser.add_argument("--guidance", type=number(minimum=0.0), default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--no-table", action="store_true", help="only the picture")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    add_run_options(parser)


def grid_png(columns: dict, rows: list[str], path: Path) -> Path:
    """Save a grid: one column per method (``{name: [N, 1, H, W] tensor}``), one row per (prompt, seed) image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns)
    n = len(rows)
    fig, axes = plt.subplots(n, len(names), figsize=(1.6 * len(names) + 2.2, 1.5 * n), squeeze=False)
    for j, name in enumerate(names):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(columns[name][i, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keep the long prompt labels
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    if args.full and args.no_table:
        raise UsageError("--full", "the full table, or --no-table (the picture only)", "both")
    for key, value in (FULL if args.full else DEFAULT).items():  # what was given stays
        if getattr(args, key) is None:
            setattr(args, key, value)
    out = check_output_dir(args.out, "--out", (PICTURE,) + (() if args.no_table else TABLE_FILES + (VERDICT,)),
                           overwrite=args.overwrite)
    require_ldm()
    threads = set_threads(args.threads)
    if not args.no_table:
        require_fashion_mnist()

    from tqdm.auto import tqdm

    from energycrf.integrations.plan import SplicePlan

    from . import captions, pretrained
    from . import evaluate as E
    from . import verdict as V

    held = captions.evaluation_prompts(per_class=1)
    prompts = [held[k] for k in (7, 1, 9, 3, 8, 0, 5, 2, 4, 6)][: args.grid_prompts]  # varied classes first
    methods = [E.Method("LDM 50", steps=50), E.Method("LDM 33", steps=33), E.Method("LatentCRF 33", plan=SplicePlan.paper())]
    grid_images = len(prompts) * len(GRID_SEEDS)
    work = sum(m.unet_calls for m in methods) * grid_images
    what = f"a picture of {grid_images} images x {len(methods)} methods"
    if not args.no_table:
        table_methods = E.table_methods()
        eval_prompts = captions.evaluation_prompts(per_class=args.per_class)
        images, table_work = table_size(table_methods, len(eval_prompts), args.seeds)
        check_calls = V.unet_calls(pretrained.load_crf().plan.calls) * len(eval_prompts) * args.seeds
        work += table_work + check_calls
        what += (f", then Table 1: {len(table_methods)} rows x {len(eval_prompts)} prompts x {args.seeds} seeds "
                 f"and {TIMING_REPEATS} timing rounds ({images} images), then the payoff check on the same images")
    announce("demo", f"{what}; {work} UNet calls in all; {threads}")

    t_all = time.perf_counter()
    pipe = pretrained.load_pipeline()
    crf = pretrained.load_crf(pretrained.SPLICE_CRF)  # the paper's splice (Table 1)
    print(f"pipeline: {pretrained.pipeline_dir()} | LatentCRF: {pretrained.crf_dir(pretrained.SPLICE_CRF)} "
          f"({sum(p.numel() for p in crf.parameters())} parameters)")

    with progress_bar(work, "demo", args.progress, unit="UNet call") as bar:
        # 1. the picture: same seeds, three methods
        cols = {}
        for m in methods:
            cols[m.name] = E.sample(pipe, [p for p, _ in prompts], GRID_SEEDS, m, crf, args.guidance)
            bar.update(m.unet_calls * grid_images)
        labels = [f"{p}\n(seed {s})" for p, _ in prompts for s in GRID_SEEDS]
        with atomic_path(out / PICTURE) as tmp:
            grid_png(cols, labels, tmp)
        diff = {m: float((cols[m] - cols["LDM 50"]).abs().mean()) for m in ("LDM 33", "LatentCRF 33")}
        tqdm.write(f"picture: {out / PICTURE}  (mean |difference| to LDM 50: LDM 33 {diff['LDM 33']:.4f}, "
                   f"LatentCRF 33 {diff['LatentCRF 33']:.4f})")

        # 2. the table on a small sample
        if not args.no_table:
            t_table = time.perf_counter()
            rows = E.run_table(pipe, crf, eval_prompts, range(args.seeds), table_methods, out_dir=out,
                               guidance_scale=args.guidance, prompts_per_call=5, progress=bar,
                               timing_repeats=TIMING_REPEATS)
            t_table = time.perf_counter() - t_table
            clf = pretrained.load_classifier()
            check = V.payoff_check(pipe, clf, E.reference_features(clf).features, eval_prompts, range(args.seeds),
                                   guidance=args.guidance, progress=bar)
            with atomic_path(out / VERDICT) as tmp:
                tmp.write_text(json.dumps(check, indent=2) + "\n", encoding="utf-8")
    if not args.no_table:
        print(f"\nTable 1 on this model ({len(eval_prompts)} held-out prompts x {args.seeds} seeds, "
              f"guidance {args.guidance}; small sample, see docs/ldm.md for the full run, --full):\n")
        print(E.markdown_table(rows))
        print(f"\n{E.TABLE_LEGEND}")
        print("The LatentCRF rows and the picture use the paper's DDIM splice with the shipped `latent-crf`; "
              "the payoff check below uses the default corrector (docs/payoff.md compares both).")
        print(f"The table took {t_table:.0f} s for {images} images, warm-ups and timing rounds included: "
              f"{1000 * t_table / images:.0f} ms per image waited.")
        print(f"written: {out / 'table.json'}, {out / 'table.md'}, {out / VERDICT}")
        print(f"\n{V.verdict_line(check)}")
    print(f"demo finished in {time.perf_counter() - t_all:.0f} s")
    return 0
