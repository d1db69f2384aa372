"""Paired measures of generated Fashion-MNIST images against the teacher, with bootstrap intervals.

One *row* is one method at one budget on one seed set: images ``(prompt, seed)``,
prompt-major (each prompt with every seed of the set), from final latents. For each row
(:func:`measure`, :func:`row_estimates`):

- **latent MSE** to the teacher (the same prompt and seed at 50 DDIM steps), per image;
- **PSNR** of the decoded image to the teacher's decoded image (range 1), per image;
- **Frechet distance** of the classifier features to real test photographs (jackknife
  interval over the generated images and the reference images: a bootstrap resample's
  repeated images inflate the distance, see :mod:`energycrf.integrations.metrics`);
- **class accuracy** of the classifier on the prompted class, per image;
- **Vendi score** (cosine kernel, per prompt over its seeds; bootstrap over prompts).

:func:`paired_estimates` gives the difference ``a - b`` of two rows on the same images
for each measure, its interval from resampling the images (prompts for Vendi) jointly,
or for the Frechet distance from leaving the same image out of both rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from energycrf.integrations import metrics as M

MEASURES = ("latent_mse", "psnr", "frechet", "accuracy", "vendi")
#: Which direction is better for each measure (+1: higher is better).
BETTER = {"latent_mse": -1, "psnr": +1, "frechet": -1, "accuracy": +1, "vendi": +1}


@dataclass
class Measured:
    """Per-image data of one row: latents, decoded images, classifier features, correctness."""

    latents: torch.Tensor
    images: torch.Tensor
    features: np.ndarray
    correct: np.ndarray
    groups: np.ndarray  # the prompt index of each image

    def __len__(self) -> int:
        return len(self.latents)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Images in ``[0, 1]``, ``(n, 1, 32, 32)``, as the pipeline decodes them (VAE, then ``x / 2 + 0.5``)."""
    vae = pipe.vae
    out = []
    for k in range(0, len(latents), batch_size):
        z = latents[k : k + batch_size].to(device=vae.device, dtype=vae.dtype)
        x = vae.decode(z / vae.config.scaling_factor, return_dict=False)[0]
        out.append((x.float().cpu() / 2 + 0.5).clamp(0, 1))
    x = torch.cat(out)
    if x.shape[1] != 1:  # RGB pipelines: grayscale for the Fashion-MNIST classifier
        x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (32, 32):
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x


@torch.no_grad()
def measure(pipe, classifier, latents: torch.Tensor, labels, groups) -> Measured:
    """Decode ``latents``, classify the images; ``labels`` the prompted class and ``groups`` the prompt of each image."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(labels) != len(latents) or len(groups) != len(latents):
        raise ValueError(f"labels and groups must have one entry per latent ({len(latents)}), "
                         f"got {len(labels)} and {len(groups)}")
    images = decode(pipe, latents)
    feats = classifier.features(images)
    pred = classifier.head(feats).argmax(1).numpy()
    return Measured(latents.float(), images, feats.double().numpy(), pred == labels, groups)


def _per_group_vendi(m: Measured) -> np.ndarray:
    return np.array([M.vendi_score(m.features[m.groups == g]) for g in np.unique(m.groups)])


def per_image(m: Measured, teacher: Measured | None) -> dict[str, np.ndarray]:
    """Per-image values (per-prompt for ``vendi``); the teacher measures are absent without a teacher."""
    out = {"accuracy": m.correct.astype(np.float64), "vendi": _per_group_vendi(m)}
    if teacher is not None:
        if len(teacher) != len(m) or not np.array_equal(teacher.groups, m.groups):
            raise ValueError("the teacher's images must be the same (prompt, seed) pairs in the same order")
        out["latent_mse"] = M.latent_mse(m.latents, teacher.latents)
        out["psnr"] = M.psnr(m.images, teacher.images)
    return out


def row_estimates(m: Measured, teacher: Measured | None, reference: np.ndarray, *, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, M.Estimate]:
    """Every measure of one row with its 95% interval (``teacher=None``: the teacher's own row)."""
    vals = per_image(m, teacher)
    est = {k: M.bootstrap_mean(v, n_boot=n_boot, seed=seed) for k, v in vals.items()}
    est["frechet"] = M.jackknife_frechet(m.features, reference)
    return {k: est[k] for k in MEASURES if k in est}


def paired_estimates(a: Measured, b: Measured, teacher: Measured, reference: np.ndarray, *, n_boot: int = 2000,
                     seed: int = 0) -> dict[str, M.Estimate]:
    """``a - b`` for every measure, paired by image (by prompt for Vendi), with 95% intervals."""
    va, vb = per_image(a, teacher), per_image(b, teacher)
    est = {k: M.paired_difference(va[k], vb[k], n_boot=n_boot, seed=seed) for k in va}
    est["frechet"] = M.paired_frechet_jackknife(a.features, b.features, reference)
    return {k: est[k] for k in MEASURES if k in est}


def beats(diff: dict) -> dict:
    """Whether ``a`` beats ``b`` from the paired differences ``a - b`` (dicts or :class:`Estimate` s).

    ``teacher``: latent MSE lower and PSNR higher, both intervals excluding zero;
    ``frechet``: FD lower, interval excluding zero; ``accuracy_not_lower``: the accuracy
    difference's interval reaches zero or above; ``all``: the three together.
    """
    e = {k: v if isinstance(v, M.Estimate) else M.Estimate.from_dict(v) for k, v in diff.items()}
    teacher = e["latent_mse"].high < 0 and e["psnr"].low > 0
    frechet = e["frechet"].high < 0
    acc = e["accuracy"].high >= 0
    return {"teacher": bool(teacher), "frechet": bool(frechet), "accuracy_not_lower": bool(acc),
            "all": bool(teacher and frechet and acc)}
