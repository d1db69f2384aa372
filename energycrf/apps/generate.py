"""Images (and latents) from a local diffusers pipeline with a LatentCRF, without it, or both side by side.

    energycrf generate --pipeline ./my-sd --crf ./my-crf --prompt "a red bicycle" --seeds 0-3 --out pics
    energycrf generate --pipeline ./my-sd --crf ./my-crf --prompts prompts.txt --seed 7 --compare --out pics
    energycrf generate --prompt "a catalogue shot of a bag" --seed 0 --out pics     # the shipped model

With the CRF, the pipeline runs the plan recorded with it (``plan.json`` beside the CRF;
``--plan`` replaces it) through :func:`energycrf.integrations.diffusers.generate`.
Without it (``--no-crf``, or the second half of ``--compare``) a sampler runs as many steps
as the plan has UNet calls (``--steps`` to choose), from the same initial noise: a corrector
plan's own sampler and spacing (the same calls without the correction), else the
pipeline's scheduler (``--sampler`` to choose). For each method the command prints the UNet calls
per image batch, counted by a forward hook on the UNet, and the wall time per image.

Files in ``--out`` (which must not hold any of them: nothing is ever overwritten):
``NNN-SLUG-seedS-crf.png`` / ``-nocrf.png`` per image, ``-compare.png`` (the two side by
side, with ``--compare``), ``latents.safetensors`` (with ``--latents``: one tensor per
method, ``crf`` and ``nocrf``, rows in the order of ``generate.json``) and
``generate.json`` (the prompts, seeds, files, plan, UNet calls and times).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ._command import (UsageError, announce, check_device, check_out_of_inputs, integer, number, plural, progress_bar,
                       require)
from .pipelines import (DIFFUSERS_EXTRA, SAMPLER_CHOICES, SHIPPED_CLASS, check_crf_dir, check_pipeline_dir,
                        check_plan_path, pipeline_info, read_prompts, seed_list)

RECORD = "generate.json"
LATENTS = "latents.safetensors"
VARIANTS = {"crf": "with the CRF", "nocrf": "without the CRF"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=None,
                        help="local diffusers pipeline directory (model_index.json); default: the shipped Fashion-MNIST model")
    parser.add_argument("--crf", default=None,
                        help="LatentCRF directory (config.json, model.safetensors, plan.json); default with the "
                             "shipped pipeline: its default CRF; required otherwise unless --no-crf")
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeat for more)")
    parser.add_argument("--prompts", default=None, metavar="FILE", help="text file, one prompt per line")
    parser.add_argument("--seed", type=integer(minimum=0), default=None, help="one seed for every prompt (default 0)")
    parser.add_argument("--seeds", type=seed_list, default=None, metavar="LIST",
                       help="seeds for every prompt: 0,3,5-8 (one image per prompt and seed)")
    parser.add_argument("--out", required=True, help="output folder (created; files in it are never overwritten)")
    parser.add_argument("--latents", action="store_true", help=f"also write the final latents ({LATENTS})")
    parser.add_argument("--no-crf", action="store_true", help="only the pipeline's sampler, without the CRF")
    parser.add_argument("--compare", action="store_true",
                       help="both, from the same noise: -crf.png, -nocrf.png and -compare.png side by side")
    parser.add_argument("--plan", default=None,
                        help="the CRF's plan instead of the recorded one: a plan.json file or inline JSON")
    parser.add_argument("--steps", type=integer(minimum=1), default=None,
                        help="sampler steps of the run without the CRF (default: the CRF plan's UNet calls; 50 with --no-crf "
                             "and no CRF)")
    parser.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                        help="sampler of the run without the CRF (default: a corrector plan's own sampler and spacing, "
                             "else the pipeline's scheduler)")
    parser.add_argument("--guidance", type=number(minimum=0.0), default=None,
                        help="classifier-free guidance scale (default: the pipeline's own; 4 for the shipped model)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (default none)")
    parser.add_argument("--batch-size", type=integer(minimum=1), default=4, help="images per pipeline call")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="weights' dtype of the pipeline (default float32)")
    parser.add_argument("--threads", type=integer(minimum=0), default=0,
                        help="torch threads (default 0: the cores the load average leaves idle, at least 1)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def slug(text: str, width: int = 40) -> str:
    """A file-name part from a prompt: lower-case letters, digits and dashes, at most ``width`` characters."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:width].strip("-")
    return s or "prompt"


def image_names(prompts: list[str], seeds: list[int], variants: list[str], compare: bool) -> list[dict]:
    """One entry per image (prompt-major): its prompt, seed and file name per variant (and the pair)."""
    items = []
    for p, text in enumerate(prompts):
        for seed in seeds:
            stem = f"{len(items):03d}-{slug(text)}-seed{seed}"
            files = {v: f"{stem}-{v}.png" for v in variants}
            if compare:
                files["compare"] = f"{stem}-compare.png"
            items.append({"prompt": text, "prompt_index": p, "seed": seed, "files": files})
    return items


def validate(args: argparse.Namespace) -> dict:
    """Check the arguments and paths before any work; returns what the run needs."""
    from .ldm import pretrained  # light: paths only

    shipped = args.pipeline is None
    pipeline = pretrained.pipeline_dir() if shipped else check_pipeline_dir(args.pipeline)
    shipped = shipped or pipeline_info(pipeline)["class"] == SHIPPED_CLASS
    if args.seed is not None and args.seeds is not None:
        raise UsageError("--seeds", "either --seed or --seeds", "both")
    if args.no_crf and args.compare:
        raise UsageError("--no-crf", "either --no-crf or --compare (which runs both)", "both")
    crf = None
    if args.no_crf:
        if args.crf is not None or args.plan is not None:
            raise UsageError("--no-crf", "no --crf or --plan with --no-crf", "both")
    elif args.crf is not None:
        crf = check_crf_dir(args.crf)
    elif shipped and args.pipeline is None:
        crf = pretrained.crf_dir()
    else:
        raise UsageError("--crf", "a LatentCRF directory for this pipeline (or --no-crf)", "none")
    if args.plan is not None:
        check_plan_path(args.plan)
    prompts = [p.strip() for p in args.prompt]
    if any(not p for p in prompts):
        raise UsageError("--prompt", "a non-empty prompt", repr(""))
    if args.prompts is not None:
        prompts += [text for text, _ in read_prompts(args.prompts)]
    if not prompts:
        raise UsageError("--prompt", "a prompt (--prompt TEXT or --prompts FILE)", "none")
    seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]
    variants = ["nocrf"] if args.no_crf else (["crf", "nocrf"] if args.compare else ["crf"])
    items = image_names(prompts, seeds, variants, args.compare)
    names = [f for item in items for f in item["files"].values()] + [RECORD] + ([LATENTS] if args.latents else [])
    out = Path(args.out)
    if not args.out:
        raise UsageError("--out", "a folder name", "''")
    if out.exists() and not out.is_dir():
        raise UsageError("--out", "a folder", f"{args.out!r} (a file)")
    check_out_of_inputs(out, "--out", {"--pipeline": pipeline, "--crf": crf})
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise UsageError("--out", "a folder without the files this run writes",
                         f"{args.out!r}, which holds {taken[0]}" + (f" and {len(taken) - 1} more" if len(taken) > 1 else ""),
                         "generate never overwrites: choose another folder")
    return {"pipeline": pipeline, "shipped": shipped, "crf": crf, "prompts": prompts, "seeds": seeds,
            "variants": variants, "items": items, "out": out}


def run(args: argparse.Namespace) -> int:
    job = validate(args)
    require({"diffusers": DIFFUSERS_EXTRA, "transformers": DIFFUSERS_EXTRA})
    plan = None
    if args.plan is not None:
        from .pipelines import plan_option

        plan = plan_option(args.plan)
    device = check_device(args.device) if args.device is not None else None

    import torch

    from .ldm.evaluate_command import set_threads
    from .pipelines import baseline_sampler, describe_plan, load_crf_for, load_pipeline, render, sampler_label

    threads = set_threads(args.threads)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(job["pipeline"], device, args.dtype)
    crf = None
    if job["crf"] is not None:
        crf, plan = load_crf_for(job["crf"], pipe, device, plan)
    from .distill_data import default_guidance

    # the scale the pipeline uses when none is given (4 for the shipped model), said and recorded as used
    guidance = args.guidance if args.guidance is not None else default_guidance(pipe)
    steps = args.steps or (plan.unet_calls if plan is not None else 50)
    prompts = [item["prompt"] for item in job["items"]]
    seeds = [item["seed"] for item in job["items"]]
    sampler, spacing = baseline_sampler(args.sampler, plan)
    what = {"crf": f"LatentCRF, {describe_plan(plan)}" if plan is not None else "",
            "nocrf": f"{sampler_label(pipe, sampler, spacing)}, {steps} steps"}
    announce("generate", f"{plural(len(prompts), 'image')} ({' and '.join(what[v] for v in job['variants'])}) "
             f"on {device} into {job['out']}; {threads}")
    results = {}
    with progress_bar(len(prompts) * len(job["variants"]), "generate", args.progress, unit="image") as bar:
        for v in job["variants"]:
            results[v] = render(pipe, prompts, seeds, crf=crf if v == "crf" else None, plan=plan, sampler=sampler,
                                spacing=spacing, steps=steps, guidance_scale=guidance, negative_prompt=args.negative_prompt,
                                batch_size=args.batch_size, progress=bar)
    write_outputs(job, results, args.latents)
    summary = {}
    for v, r in results.items():
        expected = plan.unet_calls if v == "crf" else steps
        counted = r.unet_calls
        summary[v] = {"method": what[v], "unet_calls": counted, "expected_unet_calls": expected,
                      "ms_per_image": r.ms_per_image}
        print(f"{VARIANTS[v]} ({what[v]}): {counted} UNet calls per image batch (counted; "
              f"expected {expected}), {r.ms_per_image:.1f} ms per image")
    record = {"pipeline": str(job["pipeline"]), "crf": None if job["crf"] is None else str(job["crf"]),
              "plan": None if plan is None else plan.to_dict(), "guidance_scale": guidance,
              "negative_prompt": args.negative_prompt, "sampler": sampler, "spacing": spacing, "steps": steps,
              "batch_size": args.batch_size, "device": str(device), "dtype": args.dtype, "methods": summary,
              "images": job["items"]}
    from ._command import write_text

    write_text(job["out"] / RECORD, json.dumps(record, indent=2) + "\n")
    pictures = sum(len(item["files"]) for item in job["items"])
    print(f"written: {plural(pictures, 'PNG file')}, {RECORD}" + (f", {LATENTS}" if args.latents else "")
          + f" in {job['out']}")
    return 0


def _to_pil(image):
    """A ``(c, H, W)`` tensor in [0, 1] as an 8-bit PIL image (grey for one channel)."""
    from PIL import Image

    a = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(a[..., 0] if a.shape[2] == 1 else a[..., :3])


def write_outputs(job: dict, results: dict, latents: bool) -> None:
    """The PNGs (and the side-by-side pictures and latents), each written atomically."""
    import torch

    from ._command import atomic_path

    out = job["out"]
    for k, item in enumerate(job["items"]):
        for v in job["variants"]:
            with atomic_path(out / item["files"][v]) as tmp:
                _to_pil(results[v].images[k]).save(tmp, format="PNG")
        if "compare" in item["files"]:
            pair = torch.cat([results["crf"].images[k], results["nocrf"].images[k]], dim=2)
            with atomic_path(out / item["files"]["compare"]) as tmp:
                _to_pil(pair).save(tmp, format="PNG")
    if latents:
        from ..io import save_safetensors

        meta = {"order": json.dumps([[i["prompt"], i["seed"]] for i in job["items"]])}
        with atomic_path(out / LATENTS) as tmp:
            save_safetensors({v: r.latents.contiguous() for v, r in results.items()}, tmp, metadata=meta)
