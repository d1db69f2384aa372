"""LatentCRF on the shipped text-to-image model: pictures and Table 1 on a small sample.

``energycrf demo`` loads the project's Fashion-MNIST latent diffusion pipeline (trained
offline, shipped in ``energycrf/pretrained/ldm-fashion``) and its LatentCRF, then

1. generates a few held-out prompts with the same seeds three ways: DDIM 50 steps, DDIM 33
   steps, and LatentCRF with 33 UNet calls (31 of 40 steps, the CRF, the last 2 of 50),
   and writes a PNG grid (rows: prompts x seeds; columns: the three methods);
2. measures the rows of Table 1 (LDM 50 / 33 / 20, LatentCRF 33 / 20, DPM-Solver++ 33 /
   20) on a small sample: Frechet distance on classifier features, class accuracy, Vendi
   diversity, ms per image; prints the table and writes ``table.json`` / ``table.md``.

Runs in a few minutes on 2 CPU cores; ``--seeds 16 --per-class 2`` for the docs' numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="energycrf-demo-out", help="output directory (PNG grid, table)")
    parser.add_argument("--per-class", type=int, default=1, help="held-out prompts per class for the table")
    parser.add_argument("--seeds", type=int, default=8, help="seeds (images) per prompt for the table")
    parser.add_argument("--grid-prompts", type=int, default=4, help="prompts in the picture")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--no-table", action="store_true", help="only the picture")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")


def grid_png(columns: dict[str, torch.Tensor], rows: list[str], path: Path) -> Path:
    """Save a grid: one column per method, one row per (prompt, seed) image."""
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
    from tqdm.auto import tqdm

    from energycrf.integrations.plan import SplicePlan
    from energycrf.apps.ldm import captions, pretrained
    from energycrf.apps.ldm import evaluate as E

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t_all = time.perf_counter()
    pipe = pretrained.load_pipeline()
    crf = pretrained.load_crf(pretrained.SPLICE_CRF)  # the paper's splice (Table 1)
    print(f"pipeline: {pretrained.pipeline_dir()} | LatentCRF: {pretrained.crf_dir(pretrained.SPLICE_CRF)} "
          f"({sum(p.numel() for p in crf.parameters())} parameters)")

    # 1. the picture: same seeds, three methods
    held = captions.evaluation_prompts(per_class=1)
    prompts = [held[k] for k in (7, 1, 9, 3, 8, 0, 5, 2, 4, 6)][: args.grid_prompts]  # varied classes first
    seeds = [0, 1]
    methods = [E.Method("LDM 50", steps=50), E.Method("LDM 33", steps=33), E.Method("LatentCRF 33", plan=SplicePlan.paper())]
    cols = {}
    for m in tqdm(methods, desc="picture"):
        cols[m.name] = E.sample(pipe, [p for p, _ in prompts], seeds, m, crf, args.guidance)
    labels = [f"{p}\n(seed {s})" for p, _ in prompts for s in seeds]
    png = grid_png(cols, labels, out / "ldm_vs_latentcrf.png")
    diff = {m: float((cols[m] - cols["LDM 50"]).abs().mean()) for m in ("LDM 33", "LatentCRF 33")}
    print(f"picture: {png}  (mean |difference| to LDM 50: LDM 33 {diff['LDM 33']:.4f}, "
          f"LatentCRF 33 {diff['LatentCRF 33']:.4f})")

    # 2. the table on a small sample
    if not args.no_table:
        eval_prompts = captions.evaluation_prompts(per_class=args.per_class)
        rows = E.run_table(pipe, crf, eval_prompts, range(args.seeds), out_dir=out, guidance_scale=args.guidance,
                           prompts_per_call=5)
        print(f"\nTable 1 on this model ({len(eval_prompts)} held-out prompts x {args.seeds} seeds, "
              f"guidance {args.guidance}; small sample, see docs/ldm.md for the full run):\n")
        print(E.markdown_table(rows))
        print(f"\nwritten: {out / 'table.json'}, {out / 'table.md'}")
    print(f"demo finished in {time.perf_counter() - t_all:.0f} s")
    return 0
