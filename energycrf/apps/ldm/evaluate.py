"""Evaluate a text-to-image pipeline, with or without a LatentCRF splice (paper Table 1).

For one sampling method (DDIM or DPM-Solver++ with N steps, or a :class:`SplicePlan`
with a CRF), on fixed prompts and seeds (the seed list gives the same initial noise to
every method), :func:`evaluate` measures

- **Frechet distance** ``||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_r^{1/2} S_g S_r^{1/2})^{1/2})``
  between Gaussians fitted to classifier features of generated images and of real test
  photographs (the FID formula with the project's Fashion-MNIST classifier as the
  feature network; values are not comparable to Inception FIDs);
- **text alignment**: the classifier's accuracy on the prompted class;
- **Vendi score** (appendix E): per prompt, the features of its images (one per seed) give
  the cosine kernel ``K_ij = <f_i, f_j> / (|f_i| |f_j|)``; ``VS = exp(-sum_k l_k log l_k)``
  with ``l_k`` the eigenvalues of ``K / n``; averaged over prompts;
- **ms per image**: wall time of the pipeline calls (text encoding, UNet calls, CRF, VAE
  decode) divided by the number of images, after one untimed warm-up call.

:func:`run_table` evaluates the rows of Table 1 (LDM 50, LDM 33, LatentCRF 33, LDM 20,
LatentCRF 20, DPM-Solver++ 33 and 20) and writes JSON + a Markdown table. ``energycrf
evaluate`` is the command-line front end (:func:`add_arguments`, :func:`run`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SCHEDULERS = ("ddim", "dpm++")


# --------------------------------------------------------------------------- metrics


def frechet_distance(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``(n1, d)`` and ``(n2, d)``.

    The matrix square root term uses ``tr((A B)^{1/2}) = tr((A^{1/2} B A^{1/2})^{1/2})``
    with symmetric eigendecompositions in float64 (``A^{1/2} B A^{1/2}`` is PSD).
    """
    a, b = (np.asarray(torch.as_tensor(f).double()) for f in (f1, f2))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (n, d) arrays with the same d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(a)} and {len(b)}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def vendi_score(features: np.ndarray | torch.Tensor) -> float:
    """Vendi score (q = 1) of ``(n, d)`` features with the cosine kernel.

    ``exp(-sum l log l)``, ``l`` the eigenvalues of ``K / n`` (0 log 0 = 0); between 1 (all
    identical) and n (mutually orthogonal). Same as ``vendi.score_K(K)``.
    """
    x = torch.as_tensor(features).double()
    if x.ndim != 2 or len(x) < 1:
        raise ValueError(f"features must be a non-empty (n, d) array, got shape {tuple(x.shape)}")
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    lam = torch.linalg.eigvalsh(x @ x.T / len(x)).clamp_min(0)
    lam = lam[lam > 0]
    return float(torch.exp(-(lam * lam.log()).sum()))


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One row of the table: a scheduler with ``steps``, or a CRF ``plan`` (DDIM)."""

    name: str
    steps: int | None = None
    scheduler: str = "ddim"
    plan: object | None = None  # energycrf.integrations.plan.SplicePlan

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if (self.steps is None) == (self.plan is None):
            raise ValueError(f"method {self.name!r}: give exactly one of steps= and plan=")

    @property
    def unet_calls(self) -> int:
        return int(self.steps) if self.plan is None else int(self.plan.unet_calls)


def plan_20():
    """The appendix-G plan: 19 of 25 DDIM steps (t_s = 201, as in the paper's plan), CRF, the last of 50."""
    from energycrf.integrations.plan import SplicePlan

    return SplicePlan(pre_steps=25, pre_run=19, post_steps=50, post_run=1)


def table_methods() -> list[Method]:
    """Table 1 rows: LDM 50, LDM 33, LatentCRF 33, LDM 20, LatentCRF 20, DPM-Solver++ 33 / 20."""
    from energycrf.integrations.plan import SplicePlan

    return [
        Method("LDM (DDIM)", steps=50),
        Method("LDM (DDIM)", steps=33),
        Method("LatentCRF", plan=SplicePlan.paper()),
        Method("LDM (DDIM)", steps=20),
        Method("LatentCRF", plan=plan_20()),
        Method("DPM-Solver++", steps=33, scheduler="dpm++"),
        Method("DPM-Solver++", steps=20, scheduler="dpm++"),
    ]


def _scheduler_for(pipe, name: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(pipe.scheduler.config)
    return DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
    )


def sample(pipe, prompts: Sequence[str], seeds: Sequence[int], method: Method, crf=None,
           guidance_scale: float = 4.0) -> torch.Tensor:
    """Images ``(len(prompts) * len(seeds), 1, H, W)`` in [0, 1]: for each prompt, one per seed."""
    gens = [torch.Generator().manual_seed(int(s)) for _ in prompts for s in seeds]
    kwargs = dict(prompt=list(prompts), num_images_per_prompt=len(seeds), generator=gens,
                  guidance_scale=guidance_scale, output_type="pt")
    original = pipe.scheduler
    try:
        pipe.scheduler = _scheduler_for(pipe, method.scheduler)
        if method.plan is not None:
            if crf is None:
                raise ValueError(f"method {method.name!r} has a plan but crf=None")
            from energycrf.integrations.diffusers import generate

            with torch.no_grad():
                out = generate(pipe, crf, method.plan, **kwargs)
        else:
            with torch.no_grad(), warnings.catch_warnings():
                # diffusers' DPM-Solver set_timesteps calls np.array on a tensor (numpy 2 warns)
                warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
                out = pipe(num_inference_steps=method.steps, **kwargs)
    finally:
        pipe.scheduler = original
    return out.images


@dataclass
class Reference:
    """Real test photographs' classifier features (the Frechet reference)."""

    features: np.ndarray
    n: int = field(init=False)

    def __post_init__(self):
        self.n = len(self.features)


@torch.no_grad()
def reference_features(classifier, limit: int = 2000) -> Reference:
    """Features of the first ``limit`` Fashion-MNIST test photographs."""
    from energycrf.apps.ldm.classifier import real_images

    x, _ = real_images("test", limit=limit)
    return Reference(torch.cat([classifier.features(x[k : k + 500]) for k in range(0, len(x), 500)]).numpy())


def evaluate(
    pipe,
    crf=None,
    plan=None,
    prompts: Sequence[tuple[str, int]] = (),
    seeds: Sequence[int] = tuple(range(16)),
    *,
    num_inference_steps: int = 50,
    scheduler: str = "ddim",
    classifier=None,
    reference: Reference | None = None,
    guidance_scale: float = 4.0,
    prompts_per_call: int = 2,
    name: str | None = None,
    keep_images: bool = False,
    progress: bool = True,
) -> dict:
    """Measure one method on ``prompts`` (``(text, class)`` pairs) x ``seeds``.

    Without ``plan`` the pipeline runs ``num_inference_steps`` steps of ``scheduler``
    (``"ddim"`` or ``"dpm++"``); with ``plan`` (and ``crf``) the DDIM splice of
    :func:`energycrf.integrations.diffusers.generate`. ``classifier`` defaults to the
    shipped one; ``reference`` to features of 2000 real test photographs.

    Returns a dict: ``method``, ``unet_calls``, ``frechet``, ``accuracy``, ``vendi``,
    ``ms_per_image``, ``images``, ``prompts``, ``seeds`` (and ``samples`` if ``keep_images``).
    """
    from tqdm.auto import tqdm

    prompts = list(prompts)
    if not prompts or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of (text, class) pairs, got {prompts!r:.80}")
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2:
        raise ValueError(f"seeds must hold at least 2 seeds (Vendi needs several images per prompt), got {seeds}")
    if plan is not None and crf is None:
        raise ValueError("plan was given but crf is None; pass the LatentCRF to splice in")
    if crf is not None and plan is None:
        from energycrf.integrations.plan import SplicePlan

        plan = SplicePlan.paper()
    if prompts_per_call < 1:
        raise ValueError(f"prompts_per_call must be >= 1, got {prompts_per_call}")
    method = Method(name or ("LatentCRF" if plan is not None else {"ddim": "LDM (DDIM)", "dpm++": "DPM-Solver++"}.get(scheduler, scheduler)),
                    steps=None if plan is not None else num_inference_steps, scheduler=scheduler, plan=plan)
    if classifier is None:
        from energycrf.apps.ldm.pretrained import load_classifier

        classifier = load_classifier()
    if reference is None:
        reference = reference_features(classifier)

    sample(pipe, [prompts[0][0]], seeds[:1], method, crf, guidance_scale)  # warm-up, untimed
    images, seconds = [], 0.0
    chunks = [prompts[k : k + prompts_per_call] for k in range(0, len(prompts), prompts_per_call)]
    for chunk in tqdm(chunks, desc=f"{method.name} {method.unet_calls}", disable=not progress):
        t0 = time.perf_counter()
        images.append(sample(pipe, [p for p, _ in chunk], seeds, method, crf, guidance_scale))
        seconds += time.perf_counter() - t0
    x = torch.cat(images).float()
    if x.shape[1] != 1:  # RGB pipelines: grayscale for the Fashion-MNIST classifier
        x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (32, 32):
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        feats = classifier.features(x)
        pred = classifier.head(feats).argmax(1)
    labels = torch.tensor([c for _, c in prompts]).repeat_interleave(len(seeds))
    n = len(seeds)
    vendi = [vendi_score(feats[k * n : (k + 1) * n]) for k in range(len(prompts))]
    result = {
        "method": method.name,
        "scheduler": method.scheduler,
        "unet_calls": method.unet_calls,
        "plan": None if plan is None else plan.to_dict(),
        "frechet": frechet_distance(feats.numpy(), reference.features),
        "accuracy": float((pred == labels).float().mean()),
        "vendi": float(np.mean(vendi)),
        "ms_per_image": 1000.0 * seconds / len(x),
        "images": int(len(x)),
        "reference_images": reference.n,
        "guidance_scale": guidance_scale,
        "prompts": [p for p, _ in prompts],
        "seeds": seeds,
    }
    if keep_images:
        result["samples"] = x
    return result


def run_table(
    pipe,
    crf,
    prompts: Sequence[tuple[str, int]],
    seeds: Sequence[int],
    methods: Sequence[Method] | None = None,
    out_dir: str | Path | None = None,
    timing_repeats: int = 3,
    **kwargs,
) -> list[dict]:
    """Evaluate every method (default :func:`table_methods`) on the same prompts and seeds.

    Writes ``table.json`` and ``table.md`` in ``out_dir`` when given. Rows are relative to
    the first row (the 50-step teacher) for the Vendi change and the speed-up. With
    ``timing_repeats > 0`` the ms per image come from :func:`time_methods` (the quality
    pass's own time is kept as ``ms_per_image_single_pass``).
    """
    methods = list(methods) if methods is not None else table_methods()
    if timing_repeats < 0:
        raise ValueError(f"timing_repeats must be >= 0, got {timing_repeats}")
    if kwargs.get("classifier") is None:
        from energycrf.apps.ldm.pretrained import load_classifier

        kwargs["classifier"] = load_classifier()
    if kwargs.get("reference") is None:
        kwargs["reference"] = reference_features(kwargs["classifier"])
    rows = []
    for m in methods:
        r = evaluate(pipe, crf if m.plan is not None else None, m.plan, prompts, seeds,
                     num_inference_steps=m.steps or 50, scheduler=m.scheduler, name=m.name, **kwargs)
        r.pop("samples", None)
        rows.append(r)
    if timing_repeats:
        # the single pass above is exposed to a shared machine's load; time again, interleaved
        ms = time_methods(pipe, crf, methods, [p for p, _ in prompts[:2]], list(seeds),
                          timing_repeats, kwargs.get("guidance_scale", 4.0), kwargs.get("progress", True))
        for r, t in zip(rows, ms):
            r["ms_per_image_single_pass"] = r["ms_per_image"]
            r["ms_per_image"] = t
            r["timing"] = f"min of {timing_repeats} interleaved runs, {2 * len(list(seeds))} images each"
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        (out / "table.md").write_text(markdown_table(rows) + "\n", encoding="utf-8")
    return rows


def time_methods(pipe, crf, methods: Sequence[Method], prompts: Sequence[str], seeds: Sequence[int],
                 repeats: int = 3, guidance_scale: float = 4.0, progress: bool = True) -> list[float]:
    """Milliseconds per image of each method: the minimum over ``repeats`` interleaved runs.

    Methods take turns (round robin) on the same batch, so a slow spell of a shared machine
    hits them alike, and the minimum discards it; one untimed warm-up round first.
    """
    from tqdm.auto import tqdm

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    n = len(prompts) * len(seeds)
    best = [math.inf] * len(methods)
    for r in tqdm(range(repeats + 1), desc="timing", disable=not progress):
        for k, m in enumerate(methods):
            t0 = time.perf_counter()
            sample(pipe, list(prompts), seeds, m, crf if m.plan is not None else None, guidance_scale)
            if r:  # round 0 is the warm-up
                best[k] = min(best[k], 1000.0 * (time.perf_counter() - t0) / n)
    return best


def markdown_table(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`evaluate` results; changes are relative to the first row."""
    if not rows:
        raise ValueError("rows must not be empty")
    base = rows[0]
    lines = [
        "| Method | UNet calls | Frechet (classifier) | Class accuracy | Vendi | ms / image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        dv = 100 * (r["vendi"] / base["vendi"] - 1)
        dt = 100 * (1 - r["ms_per_image"] / base["ms_per_image"])
        rel = "" if r is base else f" ({dv:+.1f}%)"
        relt = "" if r is base else f" ({dt:+.1f}% faster)"
        lines.append(
            f"| {r['method']} | {r['unet_calls']} | {r['frechet']:.3f} | {r['accuracy']:.3f} | "
            f"{r['vendi']:.3f}{rel} | {r['ms_per_image']:.1f}{relt} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=None, help="diffusers pipeline directory (default: the shipped ldm-fashion)")
    parser.add_argument("--crf", default=None, help="LatentCRF directory (default: the shipped DDIM-splice CRF)")
    parser.add_argument("--per-class", type=int, default=1, help="held-out prompts per class (10 classes)")
    parser.add_argument("--seeds", type=int, default=16, help="images per prompt (seeds 0..N-1)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--rows", default="all", help="'all' (Table 1) or comma list of ldm50,ldm33,crf33,ldm20,crf20,dpm33,dpm20")
    parser.add_argument("--out", default="energycrf-evaluate-out", help="output directory (table.json, table.md)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")


_ROW_KEYS = ("ldm50", "ldm33", "crf33", "ldm20", "crf20", "dpm33", "dpm20")


def run(args: argparse.Namespace) -> int:
    from energycrf.apps.ldm import captions, pretrained

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = table_methods()
    if args.rows != "all":
        want = [k.strip() for k in args.rows.split(",") if k.strip()]
        bad = [k for k in want if k not in _ROW_KEYS]
        if bad:
            raise SystemExit(f"--rows: unknown {bad}; expected 'all' or a subset of {list(_ROW_KEYS)}")
        rows = [rows[_ROW_KEYS.index(k)] for k in want]
    pipe = pretrained.load_pipeline(args.pipeline)
    crf = pretrained.load_crf(args.crf or pretrained.SPLICE_CRF) if any(m.plan is not None for m in rows) else None
    prompts = captions.evaluation_prompts(per_class=args.per_class)
    res = run_table(pipe, crf, prompts, range(args.seeds), rows, out_dir=args.out, guidance_scale=args.guidance)
    print(markdown_table(res))
    print(f"written: {Path(args.out) / 'table.json'}, {Path(args.out) / 'table.md'}")
    return 0
