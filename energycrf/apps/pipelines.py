"""What ``energycrf generate`` and ``energycrf evaluate --reference`` share: a local diffusers
pipeline, its prompts and seeds, and one pass of images with or without the CRF.

The checks at the top (:func:`check_pipeline_dir`, :func:`read_prompts`, :func:`seed_list`)
import nothing heavy, so the commands answer a usage error at once; :func:`load_pipeline`,
:func:`load_crf` and :func:`render` import torch and diffusers when called.

:func:`render` runs one *method* on images given as ``(prompt, seed)`` pairs, in batches:
the seed fixes each image's initial noise (a CPU generator per image), so two methods
given the same pairs start every image from the same noise. A method is the pipeline's
sampler with ``steps`` calls (``sampler="pipeline"``: the pipeline's own scheduler class,
or ``"ddim"``, ``"dpmpp"``, ``"unipc"``), or a CRF with its plan through
:func:`energycrf.integrations.diffusers.generate`. Every pipeline call is counted by a
forward hook on the UNet (:class:`energycrf.integrations.cost.UNetCallCounter`) and timed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._command import UsageError, check_input_file

__all__ = ["SHIPPED_CLASS", "SAMPLER_CHOICES", "check_pipeline_dir", "pipeline_info", "read_prompts", "seed_list",
           "check_crf_dir", "plan_option", "reference_files", "IMAGE_SUFFIXES", "load_pipeline", "load_crf",
           "check_crf_fits", "check_scheduler_fits", "render", "Rendered",
           "describe_plan", "baseline_sampler", "sampler_label"]

#: The class of the shipped Fashion-MNIST pipeline (its prompts go through the MiniLM encoder).
SHIPPED_CLASS = "MiniLMStableDiffusionPipeline"
#: ``--sampler``: the pipeline's own scheduler class, or one of the library's samplers.
SAMPLER_CHOICES = ("pipeline", "ddim", "dpmpp", "unipc")
DIFFUSERS_EXTRA = 'the diffusers extra: pip install "energycrf[diffusers]"'


# --------------------------------------------------------------------------- checks (light)
def check_pipeline_dir(path: str | os.PathLike, option: str = "--pipeline") -> Path:
    """A local diffusers pipeline directory: a folder with a readable ``model_index.json``."""
    p = Path(path)
    if not (p / "model_index.json").is_file():
        raise UsageError(option, "a local diffusers pipeline directory (with model_index.json)", repr(os.fspath(path)))
    try:
        json.loads((p / "model_index.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UsageError(option, "a pipeline directory whose model_index.json is JSON",
                         f"{os.fspath(path)!r} (model_index.json does not parse)") from None
    return p


def pipeline_info(path: str | os.PathLike) -> dict:
    """``{"class": ..., "image_channels": ...}`` of a checked pipeline directory, read from its JSON files."""
    p = Path(path)
    index = json.loads((p / "model_index.json").read_text(encoding="utf-8"))
    channels = None
    vae = p / "vae" / "config.json"
    if vae.is_file():
        try:
            channels = int(json.loads(vae.read_text(encoding="utf-8")).get("out_channels", 3))
        except (ValueError, TypeError):
            channels = None
    return {"class": index.get("_class_name"), "image_channels": channels}


def check_crf_dir(path: str | os.PathLike, option: str = "--crf") -> Path:
    """A saved LatentCRF: a folder with ``config.json`` (and its weights)."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UsageError(option, "a LatentCRF directory (with config.json)", repr(os.fspath(path)))
    return p


def read_prompts(path: str | os.PathLike, option: str = "--prompts") -> list[tuple[str, str | None]]:
    """The prompts of a UTF-8 text file, one a line (blank lines and lines starting with ``#`` skipped).

    A line may end with a tab and a class label (``a photo of a bag<TAB>8``): the class the
    image should show, for the class accuracy of ``energycrf evaluate``. Returns
    ``[(prompt, label or None)]``.
    """
    source = check_input_file(path, option, what="a text file of prompts")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(option, "a UTF-8 text file, one prompt per line", repr(os.fspath(path))) from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text, _, label = line.partition("\t")
        if not text.strip():
            raise UsageError(option, "a prompt before the tab of each line", f"line {number} of {os.fspath(path)!r}")
        prompts.append((text.strip(), label.strip() or None))
    if not prompts:
        raise UsageError(option, "a text file with one prompt per line", f"{os.fspath(path)!r} (no prompts)")
    return prompts


def seed_list(text: str) -> list[int]:
    """An argparse ``type``: seeds as a comma list of integers and ranges, ``0,3,5-8`` (no repeats)."""
    import argparse

    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise argparse.ArgumentTypeError(f"expected seeds such as 0,3,5-8 (integers >= 0), got {text!r}")
        seeds.extend(range(int(m[1]), int(m[2] or m[1]) + 1))
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r} (a seed repeats)")
    return seeds


def check_plan_path(text: str, option: str = "--plan") -> None:
    """Before any work (light): a ``--plan`` that is not inline JSON (``{...}``) must be an existing
    file, refused as "no such file" like every other missing path (not as JSON that does not parse)."""
    source = Path(text)
    if text.strip().startswith("{") or source.is_file():
        return
    raise UsageError(option, "a plan.json file or inline JSON",
                     f"{text!r} ({'not a file' if source.exists() else 'no such file'})")


def plan_option(text: str, option: str = "--plan"):
    """A plan from ``--plan``: a JSON file (a CRF's ``plan.json``) or inline JSON (imports the integrations: torch)."""
    from energycrf.integrations.plan import plan_from_dict

    check_plan_path(text, option)
    source = Path(text)
    try:
        data = json.loads(source.read_text(encoding="utf-8") if source.is_file() else text)
    except (ValueError, UnicodeDecodeError, OSError):
        raise UsageError(option, "a plan as a JSON file or inline JSON, such as "
                         '\'{"kind": "corrector", "sampler": "dpmpp", "spacing": "trailing", "calls": 8}\'',
                         repr(text)) from None
    try:
        return plan_from_dict(data)
    except (TypeError, ValueError) as err:
        raise UsageError(option, "a valid splice or corrector plan", f"{text!r} ({' '.join(str(err).split())})") from None


#: The image files a ``--reference`` folder is read for (PIL reads them).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def reference_files(path: str | os.PathLike, option: str = "--reference", limit: int | None = None) -> list[Path]:
    """The image files in folder ``path`` and its subfolders, sorted (the first ``limit``); at least 2."""
    p, text = Path(path), os.fspath(path)
    if not p.is_dir():
        raise UsageError(option, "a folder of real images", f"{text!r} ({'not a folder' if p.exists() else 'no such folder'})")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if limit is not None:
        files = files[:limit]
    if len(files) < 2:
        raise UsageError(option, f"a folder with at least 2 images ({', '.join(IMAGE_SUFFIXES)})",
                         f"{text!r} ({len(files)} found)")
    return files


# --------------------------------------------------------------------------- loading (heavy)
def load_pipeline(path: str | os.PathLike, device=None, dtype: str = "float32"):
    """The pipeline at ``path``, offline (``local_files_only``), progress bar off, on ``device`` in ``dtype``.

    The shipped model's class (:data:`SHIPPED_CLASS`) loads through
    :func:`energycrf.apps.ldm.pretrained.load_pipeline` (its prompts need the MiniLM encoder);
    any other through ``diffusers.DiffusionPipeline`` (the class named in ``model_index.json``).
    """
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch_dtype = getattr(torch, dtype)
    if pipeline_info(path)["class"] == SHIPPED_CLASS:
        from .ldm.train import load_pipeline as load_shipped

        pipe = load_shipped(path, dtype=torch_dtype)
    else:
        from diffusers import DiffusionPipeline
        from transformers.utils import logging as transformers_logging

        from .ldm.train import _quiet_pipeline_import

        bar = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # its per-component "Loading weights" bars
        try:
            with _quiet_pipeline_import():
                pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, dtype=torch_dtype)
        finally:
            if bar:
                transformers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or "cpu")


def load_crf(path: str | os.PathLike, device=None):
    """The LatentCRF at ``path`` with its recorded plan as ``crf.plan`` (``None`` if it records none)."""
    from energycrf.integrations.bundle import load_crf as _load

    crf = _load(path)
    return crf.to(device) if device is not None else crf


def load_crf_for(path: str | os.PathLike, pipe, device=None, plan=None, option: str = "--crf"):
    """``(crf, plan)``: the CRF at ``path`` checked against ``pipe``, and the plan to run: ``plan``, else
    the one recorded with the CRF, else the paper's (said in one line: no ``plan.json`` beside it),
    checked against the pipeline's scheduler before any image."""
    crf = load_crf(path, device)
    check_crf_fits(crf, pipe, option)
    plan = plan or crf.plan
    if plan is None:
        from energycrf.integrations.plan import SplicePlan

        plan = SplicePlan()
        print(f"{option}: no plan recorded with {str(path)!r} (no plan.json); running the paper's plan "
              f"({plan.unet_calls} UNet calls)", flush=True)
    check_scheduler_fits(pipe, plan)
    return crf, plan


def check_crf_fits(crf, pipe, option: str = "--crf") -> None:
    """The CRF's latent channels and condition width are the pipeline's (UNet channels, text width)."""
    cfg, unet = getattr(crf, "config", {}) or {}, pipe.unet.config
    width = unet.cross_attention_dim if isinstance(unet.cross_attention_dim, int) else None
    want = {"channels": unet.in_channels, "cond_dim": width}
    got = {k: cfg.get(k) for k in want}
    bad = [k for k in want if want[k] is not None and got[k] is not None and got[k] != want[k]]
    if bad:
        raise UsageError(option, "a LatentCRF for this pipeline (" + ", ".join(f"{k}={want[k]}" for k in want) + ")",
                         ", ".join(f"{k}={got[k]}" for k in want))


def check_scheduler_fits(pipe, plan, option: str = "--pipeline") -> None:
    """A splice plan runs on the pipeline's own scheduler: DDIM, Euler or DPM-Solver(++) (a corrector
    plan brings its own sampler). Stable Diffusion 1.5 is saved with PNDM: refused here, before any image."""
    from energycrf.integrations.diffusers import check_scheduler
    from energycrf.integrations.plan import SplicePlan

    if not isinstance(plan, SplicePlan):
        return
    try:
        check_scheduler(pipe.scheduler)
    except ValueError as err:
        name = type(pipe.scheduler).__name__
        why = " ".join(str(err).split()).split(". ")[0].removeprefix(name).strip()  # the reason, not the API advice
        raise UsageError(option, "a pipeline whose scheduler the CRF's splice plan can run on (DDIMScheduler, "
                         "EulerDiscreteScheduler or DPMSolverMultistepScheduler with its default timesteps)",
                         f"{name} ({why})", "save the pipeline with pipe.scheduler = DDIMScheduler.from_config("
                         "pipe.scheduler.config) before pipe.save_pretrained(DIR)") from None


# --------------------------------------------------------------------------- one pass of images
@dataclass
class Rendered:
    """One method's images: ``latents`` ``(n, C, h, w)`` (float32, CPU), ``images`` ``(n, c, H, W)``
    in [0, 1], the UNet calls counted per pipeline batch, and the wall time of the calls."""

    latents: object
    images: object
    calls_per_batch: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unet_calls(self) -> int:
        """UNet calls per image batch (the same for every batch: else a ``RuntimeError``)."""
        if len(set(self.calls_per_batch)) != 1:
            raise RuntimeError(f"the pipeline batches took different numbers of UNet calls: {self.calls_per_batch}")
        return self.calls_per_batch[0]

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / max(1, len(self.images))


class _LastLatents:
    """Step-end callback keeping the latents after the last step (those the pipeline decodes)."""

    tensor_inputs = ["latents"]

    def __init__(self):
        self.value = None

    def __call__(self, pipe, i, t, kwargs):
        self.value = kwargs["latents"].detach()
        return kwargs


def _plain_scheduler(pipe, sampler: str, spacing: str | None = None):
    """A fresh scheduler for a run without the CRF: the pipeline's own class, or a library sampler."""
    from energycrf.integrations.schedulers import make_scheduler

    config = pipe.scheduler.config
    if sampler == "pipeline":
        return type(pipe.scheduler).from_config(config)
    return make_scheduler(config, sampler, spacing)


def baseline_sampler(sampler: str | None, plan) -> tuple[str, str | None]:
    """``(sampler, spacing)`` of the runs without the CRF: ``sampler`` when given; else a corrector
    plan's own sampler and spacing (the same calls without the correction: the difference is the
    CRF's), else the pipeline's scheduler."""
    if sampler is not None:
        return sampler, None
    if plan is not None and hasattr(plan, "sampler"):
        return plan.sampler, plan.spacing
    return "pipeline", None


def sampler_label(pipe, sampler: str, spacing: str | None = None) -> str:
    """``"DDIM"``, ``"EulerDiscrete"`` (the pipeline's scheduler), ``"UniPC (trailing)"`` ..."""
    if sampler == "pipeline":
        return type(pipe.scheduler).__name__.removesuffix("Scheduler").removesuffix("Multistep")
    name = {"ddim": "DDIM", "dpmpp": "DPM-Solver++", "unipc": "UniPC"}[sampler]
    return name + (f" ({spacing})" if spacing else "")


def render(pipe, prompts: Sequence[str], seeds: Sequence[int], *, crf=None, plan=None, sampler: str = "pipeline",
           spacing: str | None = None, steps: int | None = None, guidance_scale: float | None = None,
           negative_prompt: str | None = None, batch_size: int = 4, progress=None) -> Rendered:
    """Images ``(prompts[i], seeds[i])`` of one method (see the module docstring), in order.

    ``crf`` given: ``generate(pipe, crf, plan)`` (``plan=None``: the CRF's recorded plan);
    else ``steps`` calls of ``sampler`` (``spacing``: its timestep spacing, ``None`` the
    configuration's). ``guidance_scale=None`` keeps the pipeline's default.
    ``progress``: a bar advanced by the images of each batch. The pipeline's scheduler is restored.
    """
    import time

    import torch

    from energycrf.integrations.cost import UNetCallCounter
    from energycrf.integrations.schedulers import quiet_scheduler_warnings

    if len(prompts) != len(seeds) or not prompts:
        raise ValueError(f"prompts and seeds must be non-empty and paired, got {len(prompts)} and {len(seeds)}")
    if crf is None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1 for a run without the CRF, got {steps!r}")
    original = pipe.scheduler
    out = Rendered([], [])
    extra = {} if guidance_scale is None else {"guidance_scale": float(guidance_scale)}
    try:
        for k in range(0, len(prompts), batch_size):
            batch = list(prompts[k : k + batch_size])
            gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[k : k + batch_size]]
            last = _LastLatents()
            kw = dict(prompt=batch, generator=gens, output_type="pt", callback_on_step_end=last,
                      callback_on_step_end_tensor_inputs=last.tensor_inputs, **extra)
            if negative_prompt is not None:
                kw["negative_prompt"] = [negative_prompt] * len(batch)
            t0 = time.perf_counter()
            with torch.no_grad(), UNetCallCounter(pipe.unet) as counter, quiet_scheduler_warnings():
                if crf is not None:
                    from energycrf.integrations.diffusers import generate

                    images = generate(pipe, crf, plan, **kw).images
                else:
                    pipe.scheduler = _plain_scheduler(pipe, sampler, spacing)
                    images = pipe(num_inference_steps=steps, **kw).images
                    pipe.scheduler = original
            out.seconds += time.perf_counter() - t0
            out.calls_per_batch.append(counter.calls)
            if last.value is None or not torch.isfinite(last.value).all():
                raise FloatingPointError(f"non-finite latents for images {k}..{k + len(batch) - 1}")
            out.latents.append(last.value.float().cpu())
            out.images.append(images.float().cpu())
            if progress is not None:
                progress.update(len(batch))
    finally:
        pipe.scheduler = original
    out.latents, out.images = torch.cat(out.latents), torch.cat(out.images)
    return out


def describe_plan(plan) -> str:
    """A short description of a splice or corrector plan."""
    if hasattr(plan, "describe"):
        return plan.describe()
    return (f"{plan.pre_run} of {plan.pre_steps} steps, CRF, last {plan.post_run} of {plan.post_steps} "
            f"({plan.unet_calls} UNet calls)")
