"""Evaluate any local diffusers text-to-image pipeline with its LatentCRF (``energycrf evaluate --reference``).

    energycrf evaluate --pipeline ./my-sd --crf ./my-crf --prompts prompts.txt --reference ./real --out eval

Every image is a ``(prompt, seed)`` pair (each prompt with seeds ``0 .. N-1``), generated
from the same initial noise by every *row*:

- the **teacher**: the pipeline's own scheduler with ``--teacher-steps`` (50) steps;
- the **baselines**: a sampler without the CRF with each of ``--steps`` (default: the CRF
  plan's UNet calls): ``--sampler``, by default a corrector plan's own sampler and spacing
  (the same calls without the correction, so the difference is the CRF's), else the
  pipeline's scheduler;
- the **LatentCRF**: the CRF with its recorded plan (``--plan`` replaces it), through
  :func:`energycrf.integrations.diffusers.generate`.

The measures (those of ``energycrf sweep``, :mod:`energycrf.integrations.metrics`), each
with a 95% interval:

- **latent MSE** ``mean((z - z_T)^2)`` and **PSNR** ``10 log10(1 / mean((x - x_T)^2))`` to
  the teacher's latent ``z_T`` and image ``x_T`` (same prompt and seed), per image,
  bootstrap over images;
- **Frechet distance** ``||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_r^{1/2} S_g S_r^{1/2})^{1/2})``
  of the feature network's features of the generated images to those of the real images
  in ``--reference`` (jackknife interval over both sets);
- **Vendi score** (cosine kernel, q = 1, paper appendix E) per prompt over its seeds,
  averaged over prompts (bootstrap over prompts);
- **class accuracy** where there are classes: prompts labelled ``TEXT<TAB>CLASS`` and a
  feature network with a classifier head;
- **UNet calls** per image batch, counted by a forward hook, and **ms per image** (wall
  time of this run's pipeline calls / images, one pass: not a benchmark).

Then, for the LatentCRF against each baseline, the paired difference ``CRF - baseline`` of
every measure (same images; the Frechet difference with one image left out of both rows).

With fewer images than feature dimensions (EfficientNet 1280, Inception 2048) every
Frechet distance is computed exactly in the subspace that the features of all rows and
of the reference span (:func:`frechet_subspace`): the distance depends on the features
only through their differences, all of which lie in it, so nothing changes but the time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from energycrf.integrations import metrics as M

MEASURES = ("latent_mse", "psnr", "frechet", "vendi", "accuracy")
HEADERS = {"latent_mse": "Latent MSE to teacher", "psnr": "PSNR to teacher (dB)", "frechet": "Frechet ({})",
           "vendi": "Vendi", "accuracy": "Class accuracy"}
#: +1: higher is better
BETTER = {"latent_mse": -1, "psnr": +1, "frechet": -1, "vendi": +1, "accuracy": +1}


@dataclass
class Row:
    """One method's images and their measurements."""

    key: str
    label: str
    expected_calls: int
    rendered: object  # pipelines.Rendered
    features: np.ndarray | None = None
    logits: np.ndarray | None = None


def frechet_subspace(reference: np.ndarray, sets: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """``reference`` and ``sets`` in coordinates of the span of ``{x - mean(reference)}`` over all their rows.

    Every Frechet distance between any of them (or subsets of their rows, as a jackknife
    takes) is unchanged: means and covariances of rows ``x`` become ``B (mu - m)`` and
    ``B S B^T`` with ``B`` an orthonormal basis of a subspace that holds every ``x - m``,
    and the distance is invariant to translation and to isometries of that subspace.
    Returns the inputs unchanged when the span is not smaller than the feature dimension.
    """
    d = reference.shape[1]
    m = reference.mean(0)
    x = np.concatenate([reference, *sets]) - m
    if len(x) >= d:
        return reference, list(sets)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    basis = vt[s > max(s.max(), 1e-300) * 1e-10] if s.size else vt[:0]
    project = lambda a: (a - m) @ basis.T  # noqa: E731
    return project(reference), [project(a) for a in sets]


def _labels(prompts: Sequence[tuple[str, str | None]], num_classes: int, class_names: Sequence[str] = ()):
    """Class indices of labelled prompts, ``None`` when no prompt has a label; a ``ValueError`` for bad ones."""
    labels = [label for _, label in prompts]
    if all(label is None for label in labels):
        return None
    if any(label is None for label in labels):
        raise ValueError("either every prompt has a class label (TEXT<TAB>CLASS) or none has")
    names = {n.lower(): k for k, n in enumerate(class_names)}
    out = []
    for label in labels:
        k = names.get(label.lower()) if not label.isdigit() else int(label)
        if k is None or not 0 <= k < num_classes:
            raise ValueError(f"class label {label!r} is not a class of the feature network (0..{num_classes - 1}"
                             + (f" or one of {', '.join(class_names)}" if class_names else "") + ")")
        out.append(k)
    return np.array(out)


def reference_features(files: Sequence[Path], net, progress=None) -> np.ndarray:
    """The feature network's features of real images (read with PIL, one at a time, then batched)."""
    from PIL import Image

    feats, batch = [], []

    def flush():
        if batch:
            feats.append(net(torch.cat(batch))[0].numpy())
            batch.clear()

    for f in files:
        with Image.open(f) as im:
            im = im.convert("L" if net.channels == 1 else "RGB")
            x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()) / 255.0
        x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
        batch.append(net.prepare(x))
        if len(batch) == net.batch_size:
            flush()
        if progress is not None:
            progress.update(1)
    flush()
    return np.concatenate(feats)


def _per_prompt(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return np.array([M.vendi_score(values[groups == g]) for g in np.unique(groups)])


def row_measures(row: Row, teacher: Row | None, fd_features: np.ndarray, fd_reference: np.ndarray,
                 groups: np.ndarray, labels, *, n_boot: int = 2000) -> dict[str, M.Estimate]:
    """Every measure of one row with its interval (``teacher=None``: the teacher's own row)."""
    est = {}
    if teacher is not None:
        est["latent_mse"] = M.bootstrap_mean(M.latent_mse(row.rendered.latents, teacher.rendered.latents), n_boot=n_boot)
        est["psnr"] = M.bootstrap_mean(M.psnr(row.rendered.images, teacher.rendered.images), n_boot=n_boot)
    est["frechet"] = M.jackknife_frechet(fd_features, fd_reference)
    est["vendi"] = M.bootstrap_mean(_per_prompt(row.features, groups), n_boot=n_boot)
    if labels is not None and row.logits is not None:
        est["accuracy"] = M.bootstrap_mean((row.logits.argmax(1) == labels).astype(np.float64), n_boot=n_boot)
    return est


def paired_measures(a: Row, b: Row, teacher: Row, fd_a, fd_b, fd_reference, groups, labels, *,
                    n_boot: int = 2000) -> dict[str, M.Estimate]:
    """``a - b`` for every measure, paired by image (by prompt for Vendi), with 95% intervals."""
    est = {
        "latent_mse": M.paired_difference(M.latent_mse(a.rendered.latents, teacher.rendered.latents),
                                          M.latent_mse(b.rendered.latents, teacher.rendered.latents), n_boot=n_boot),
        "psnr": M.paired_difference(M.psnr(a.rendered.images, teacher.rendered.images),
                                    M.psnr(b.rendered.images, teacher.rendered.images), n_boot=n_boot),
        "frechet": M.paired_frechet_jackknife(fd_a, fd_b, fd_reference),
        "vendi": M.paired_difference(_per_prompt(a.features, groups), _per_prompt(b.features, groups), n_boot=n_boot),
    }
    if labels is not None and a.logits is not None:
        est["accuracy"] = M.paired_difference((a.logits.argmax(1) == labels).astype(np.float64),
                                              (b.logits.argmax(1) == labels).astype(np.float64), n_boot=n_boot)
    return est


def evaluate_pipeline(pipe, prompts: Sequence[tuple[str, str | None]], seeds: Sequence[int], net,
                      reference: np.ndarray, *, crf=None, plan=None, steps: Sequence[int] = (), sampler: str | None = None,
                      teacher_steps: int = 50, guidance_scale: float | None = None, negative_prompt: str | None = None,
                      batch_size: int = 4, n_boot: int = 2000, progress=None, class_names: Sequence[str] = ()) -> dict:
    """The rows and paired differences of the module docstring, as a JSON-ready dict.

    ``sampler=None``: the baselines run a corrector plan's own sampler, else the pipeline's
    scheduler (:func:`energycrf.apps.pipelines.baseline_sampler`).
    """
    from .pipelines import baseline_sampler, describe_plan, render, sampler_label

    sampler, spacing = baseline_sampler(sampler, plan if crf is not None else None)

    labels_per_prompt = _labels(prompts, net.num_classes, class_names) if net.num_classes else None
    texts = [t for t, _ in prompts for _ in seeds]
    image_seeds = [int(s) for _ in prompts for s in seeds]
    groups = np.repeat(np.arange(len(prompts)), len(seeds))
    labels = None if labels_per_prompt is None else np.repeat(labels_per_prompt, len(seeds))
    kw = dict(guidance_scale=guidance_scale, negative_prompt=negative_prompt, batch_size=batch_size, progress=progress)
    teacher_label = sampler_label(pipe, "pipeline")
    rows = [Row("teacher", f"{teacher_label} {teacher_steps} (teacher)", teacher_steps,
                render(pipe, texts, image_seeds, steps=teacher_steps, **kw))]
    for s in steps:
        rows.append(Row(f"{sampler}-{s}", f"{sampler_label(pipe, sampler, spacing)} {s}", s,
                        render(pipe, texts, image_seeds, sampler=sampler, spacing=spacing, steps=s, **kw)))
    if crf is not None:
        rows.append(Row("crf", f"LatentCRF ({describe_plan(plan)})", plan.unet_calls,
                        render(pipe, texts, image_seeds, crf=crf, plan=plan, **kw)))
    for row in rows:
        f, lg = net(row.rendered.images)
        row.features, row.logits = f.numpy(), (None if lg is None else lg.numpy())
    fd_reference, fd_rows = frechet_subspace(reference, [r.features for r in rows])
    teacher = rows[0]
    out_rows = []
    for row, fd in zip(rows, fd_rows):
        est = row_measures(row, None if row is teacher else teacher, fd, fd_reference, groups, labels, n_boot=n_boot)
        out_rows.append({"key": row.key, "method": row.label, "unet_calls": row.rendered.unet_calls,
                         "expected_unet_calls": row.expected_calls, "ms_per_image": row.rendered.ms_per_image,
                         "images": len(texts), "measures": {k: est[k].to_dict() for k in MEASURES if k in est}})
    differences = []
    if crf is not None:
        for k in range(1, len(rows) - 1):
            est = paired_measures(rows[-1], rows[k], teacher, fd_rows[-1], fd_rows[k], fd_reference, groups, labels,
                                  n_boot=n_boot)
            differences.append({"a": rows[-1].label, "b": rows[k].label,
                                "measures": {m: est[m].to_dict() for m in MEASURES if m in est}})
    return {
        "settings": {"prompts": [t for t, _ in prompts], "labels": [lab for _, lab in prompts], "seeds": list(seeds),
                     "images_per_row": len(texts), "features": net.name, "feature_dim": int(reference.shape[1]),
                     "reference_images": int(len(reference)), "teacher_steps": teacher_steps, "sampler": sampler,
                     "spacing": spacing,
                     "guidance_scale": guidance_scale, "plan": None if plan is None else plan.to_dict(),
                     "class_accuracy": labels is not None},
        "rows": out_rows,
        "differences": differences,
    }


def _cell(d: dict | None, digits: int = 4) -> str:
    return "n/a" if d is None else M.Estimate.from_dict(d).format(digits)


def markdown(result: dict) -> str:
    """The rows table and the paired-differences table, with a legend."""
    st = result["settings"]
    shown = [m for m in MEASURES if any(m in r["measures"] for r in result["rows"])]
    head = [HEADERS[m].format(st["features"]) for m in shown]
    lines = ["| Method | UNet calls | " + " | ".join(head) + " | ms / image |",
             "|---|---:|" + "---:|" * len(shown) + "---:|"]
    for r in result["rows"]:
        cells = " | ".join(_cell(r["measures"].get(m)) for m in shown)
        lines.append(f"| {r['method']} | {r['unet_calls']} | {cells} | {r['ms_per_image']:.1f} |")
    if result["differences"]:
        lines += ["", "| Paired difference | " + " | ".join(head) + " |", "|---|" + "---:|" * len(shown)]
        for d in result["differences"]:
            cells = " | ".join(_cell(d["measures"].get(m)) for m in shown)
            lines.append(f"| {d['a']} - {d['b']} | {cells} |")
    lines += ["", f"{len(st['prompts'])} prompts x {len(st['seeds'])} seeds = {st['images_per_row']} images per row, "
              f"the same initial noise in every row; teacher: {st['teacher_steps']} steps of the pipeline's scheduler; "
              f"features: {st['features']} ({st['feature_dim']} dimensions), reference: {st['reference_images']} real "
              "images. Values with 95% intervals: bootstrap over images (Vendi: over prompts), jackknife for the "
              "Frechet distance. Lower is better for latent MSE and Frechet, higher for PSNR, Vendi and accuracy. "
              "ms / image: this run's wall time of the pipeline calls per image (one pass, not a benchmark)."]
    return "\n".join(lines)


def write(result: dict, out: Path) -> None:
    """``table.json`` and ``table.md`` in ``out``, each written atomically."""
    from ._command import write_text

    write_text(out / "table.json", json.dumps(result, indent=2, default=float) + "\n")
    write_text(out / "table.md", markdown(result) + "\n")
