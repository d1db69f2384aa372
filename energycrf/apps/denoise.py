"""Grayscale Gaussian denoising with the shipped checkpoints, and the ``energycrf denoise`` command.

A shipped denoiser is a learned model ``M`` trained (``scripts/train_denoisers.py``) on
patches of scikit-image photographs corrupted by additive white Gaussian noise,
``x = y + sigma n`` with ``n ~ N(0, I)`` and pixel values in ``[0, 1]`` (``sigma`` given
on the 0-255 scale, divided by 255). It works on one channel (``C = 1``); colour images
are denoised channel by channel. Pixels enter the model centred and scaled,
``x' = (x - offset) * scale``, and leave as ``y = M(x') / scale + offset``.

Checkpoints live in ``energycrf/pretrained/denoise-sigma{15,25,50}/{staged,foe,latentcrf}/``
(package data): ``denoiser.json`` (the kind of model, ``sigma``, ``offset``, ``scale``, how
it was trained and measured) next to the model's own ``config.json`` + ``model.safetensors``.
``staged`` (the default) is one gradient step on each of five Field-of-Experts energies
with learned filters and influence functions (:class:`StagedFoEDenoiser`); ``foe`` is one
Field-of-Experts energy (Student-t experts) minimised by its solver (at sigma 25 L-BFGS, the
energy learned through its minimiser by implicit differentiation; at 15 and 50 the earlier
energies, 6 mean-field steps, learned through them); ``latentcrf`` is the LatentCRF layer.

Command line (``energycrf denoise``; its arguments, checks and image files are in
:mod:`energycrf.apps.denoise_command`, which imports no torch)::

    energycrf denoise noisy.png --sigma 25 -o clean.png
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .denoise_checkpoints import DEFAULT_MODEL, DEFAULT_SIGMA, DENOISER_JSON, KIND_MODELS, MODELS, SIGMAS
from .denoise_inputs import check_channels_last, check_pixel_values

__all__ = [
    "SIGMAS",
    "TRAIN_IMAGES",
    "TEST_IMAGES",
    "PixelDenoiser",
    "FoEEnergyDenoiser",
    "StagedFoEDenoiser",
    "pretrained_dir",
    "load_denoiser",
    "denoise",
    "skimage_gray",
    "heldout_pair",
]

PRETRAINED_ROOT = Path(__file__).resolve().parents[1] / "pretrained"
DEFAULT_PAD = 8

# scikit-image photographs (bundled with scikit-image, nothing is downloaded).
# Training and evaluation sets are disjoint; ``cat`` is the same photograph as
# ``chelsea`` and is used by neither set.
TRAIN_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "text",
                "page", "hubble_deep_field", "immunohistochemistry", "retina", "cell")
TEST_IMAGES = ("camera", "coins", "clock", "moon")


def skimage_gray(name: str) -> np.ndarray:
    """A scikit-image sample photograph as float64 grayscale in ``[0, 1]`` (the shared loader)."""
    from .photographs import load_photograph

    return load_photograph(name)


def heldout_pair(name: str, sigma: float, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(clean, noisy)`` for a photograph: additive Gaussian noise of ``sigma`` (0-255 scale),
    seeded by ``sigma``, the name and ``draw``, so every evaluation sees the same noisy copy.

    ``draw = 0`` is the copy the training runs validate on and the docs' tables report; ``draw``
    ``= 1, 2, ...`` are further independent noise draws of the same photograph (so that a
    difference between methods can be checked on noise nobody has looked at)."""
    if isinstance(draw, bool) or not isinstance(draw, (int, np.integer)) or draw < 0:
        raise ValueError(f"draw: expected an int >= 0, got {draw!r}")
    clean = skimage_gray(name)
    names = TRAIN_IMAGES + TEST_IMAGES
    index = names.index(name) if name in names else 999
    seed = int(round(sigma)) * 1000 + index if draw == 0 else [int(round(sigma)), index, int(draw)]
    rng = np.random.default_rng(seed)
    return clean, clean + rng.normal(0.0, sigma / 255.0, clean.shape)


class PixelDenoiser(nn.Module):
    """A one-channel model ``M`` applied to pixel values: ``y = M((x - offset) scale) / scale + offset``.

    In eval mode the image is first extended by ``pad`` pixels on each side by reflection (and the
    result cropped back), so that the model's zero-padded filters do not see a false
    edge at the image border.

    Args:
        model: the learned module, called as ``model(x)`` on ``[B, 1, H, W]``.
        sigma: the noise level it was trained for (0-255 scale).
        offset, scale: the pixel normalisation.
        kind: ``"latent_crf"`` (an :class:`energycrf.LatentCRF`), ``"staged_foe"`` (a
            :class:`StagedFoEDenoiser`), ``"foe_energy"`` (a
            :class:`FoEEnergyDenoiser`), or another name registered in ``_LOADERS``.
        pad: reflection padding (pixels) applied before the model.
    """

    def __init__(self, model: nn.Module, sigma: float, offset: float = 0.5, scale: float = 4.0,
                 kind: str = "latent_crf", info: dict[str, Any] | None = None, pad: int = DEFAULT_PAD):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if kind not in _LOADERS:
            raise ValueError(f"kind: expected one of {sorted(_LOADERS)}, got {kind!r}")
        if not float(scale) > 0:
            raise ValueError(f"scale: expected a positive number, got {scale!r}")
        self.model = model
        self.sigma = float(sigma)
        self.offset = float(offset)
        self.scale = float(scale)
        self.kind = kind
        self.info = dict(info or {})
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"pad: expected an int >= 0, got {pad!r}")
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 1:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a tensor [B, 1, H, W] of pixel values, got {got}")
        p = min(self.pad, x.shape[-2] - 1, x.shape[-1] - 1) if not self.training else 0
        if p > 0:
            x = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect")
        y = self.model((x - self.offset) * self.scale) / self.scale + self.offset
        return y[..., p:y.shape[-2] - p, p:y.shape[-1] - p] if p > 0 else y

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the model (its own ``save_pretrained``) and ``denoiser.json`` to ``directory``."""
        from ..training.checkpoint import atomic_write_text

        directory = Path(directory)
        self.model.save_pretrained(directory)
        meta = {"kind": self.kind, "sigma": self.sigma, "offset": self.offset, "scale": self.scale,
                "pad": self.pad, "channels": 1, **({"info": self.info} if self.info else {})}
        atomic_write_text(directory / DENOISER_JSON, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "PixelDenoiser":
        """Load a directory written by :meth:`save_pretrained` (safetensors + JSON only)."""
        directory = Path(directory)
        meta_path = directory / DENOISER_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"directory: {str(directory)!r} holds no {DENOISER_JSON}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"directory: {str(meta_path)!r} is not valid JSON ({' '.join(str(err).split())})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"directory: {str(meta_path)!r} is not a JSON object")
        kind = meta.get("kind")
        if kind not in _LOADERS:
            raise ValueError(f"directory: {str(meta_path)!r} names an unknown model kind {kind!r}")
        for key, positive in (("sigma", True), ("offset", False), ("scale", True)):
            value = meta.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or (positive and value <= 0):
                raise ValueError(f"directory: {str(meta_path)!r}: {key!r} must be a {'positive ' if positive else ''}"
                                 f"finite number, got {value!r}" + (" (missing)" if key not in meta else ""))
        pad = meta.get("pad", 0)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"directory: {str(meta_path)!r}: 'pad' must be an int >= 0, got {pad!r}")
        model = _LOADERS[kind](directory)
        return cls(model, meta["sigma"], meta["offset"], meta["scale"], kind=kind, info=meta.get("info"), pad=pad)


def dct_filters(size: int, count: int) -> torch.Tensor:
    """The first ``count`` 2-D DCT-II basis filters of ``size x size`` without the constant one,
    ordered by frequency ``i + j`` (unit L2 norm, zero mean): the classic FoE starting point."""
    if count > size * size - 1:
        raise ValueError(f"count: a {size} x {size} DCT has {size * size - 1} non-constant filters, got count={count}")
    n = torch.arange(size, dtype=torch.float64)
    basis = torch.cos(torch.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size)) * (2.0 / size) ** 0.5
    basis[0] /= 2.0**0.5
    pairs = sorted(((i, j) for i in range(size) for j in range(size) if i + j > 0), key=lambda p: (p[0] + p[1], p))
    return torch.stack([torch.outer(basis[i], basis[j]) for i, j in pairs[:count]]).float()


class _ConfiguredModel(nn.Module):
    """``save_pretrained`` / ``from_pretrained`` for a module rebuilt from its ``config`` dict
    (``config.json`` + ``model.safetensors``; loading never unpickles) that runs ``self.layer``."""

    config: dict[str, Any]
    layer: nn.Module

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.layer(x)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        from ..io import write_pretrained

        return write_pretrained(directory, {"_class_name": type(self).__name__, **self.config}, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike):
        from ..io import read_pretrained

        config, state = read_pretrained(directory)
        if config.pop("_class_name", cls.__name__) != cls.__name__:
            raise ValueError(f"directory: {str(directory)!r} does not hold a {cls.__name__}")
        model = cls(**config)
        model.load_state_dict(state, strict=True)
        return model


class FoEEnergyDenoiser(_ConfiguredModel):
    r"""A Field-of-Experts energy minimised by a solver, as a trainable module.

    .. math::

        E(y, x) = w \|y - x\|^2 + \sum_m \sum_k \alpha_m \log\big(1 + \tfrac12 (J_m \odot y)_k^2\big)

    (``Unary`` + ``FieldOfExperts`` with Student-t experts, paper eqs. 4-6 with a classic
    expert; one shared :math:`\alpha_m = \alpha`, or with ``expert_weights="learned"`` a
    learned weight per filter as in Chen et al.'s opt-MRF). Training learns ``w``, the
    filters ``J_m`` (started from random zero-mean filters, or the DCT basis with
    ``filter_init="dct"``) and the weights through
    :class:`energycrf.learned.unrolled.Unrolled`:

    - ``differentiation="backprop"``: ``M(x)`` is ``num_iterations`` steps of the solver
      ``method`` from ``y = x``, and training backpropagates through them;
    - ``differentiation="implicit"``: ``M(x)`` is the minimiser :math:`y^\star` itself,
      the solver run until :math:`\|\nabla E\| \le \mathrm{gtol} \|\nabla E(x)\|` (at
      most ``num_iterations`` steps), and training differentiates it implicitly,
      :math:`\partial y^\star/\partial\theta = -H^{-1}\partial_\theta \nabla_y E` (a
      bilevel problem; ``Unrolled``'s implicit mode, its conjugate gradients to ``cg_tol``).
      In eval mode the minimiser is
      ``ec.solve(self.energy, x, method, max_iters=num_iterations, gtol=gtol)``.
    """

    def __init__(self, num_filters: int = 24, kernel_size: int = 5, alpha: float = 1.0,
                 num_iterations: int = 6, method: str = "mean_field", unary_weight: float = 1.0,
                 init_scale: float = 1.0, filter_init: str = "random", expert_weights: str = "shared",
                 differentiation: str = "backprop", gtol: float | None = None, cg_tol: float = 1e-10):
        super().__init__()
        from ..energies import FieldOfExperts, Unary
        from ..energies.potentials import StudentT
        from ..learned.unrolled import Unrolled

        if filter_init not in ("random", "dct"):
            raise ValueError(f"filter_init: expected 'random' or 'dct', got {filter_init!r}")
        if filter_init == "dct" and num_filters > kernel_size**2 - 1:
            raise ValueError(f"filter_init: 'dct' gives {kernel_size**2 - 1} filters of size {kernel_size}, "
                             f"num_filters={num_filters} asks for more")
        if expert_weights not in ("shared", "learned"):
            raise ValueError(f"expert_weights: expected 'shared' or 'learned', got {expert_weights!r}")
        self.config = {"num_filters": int(num_filters), "kernel_size": int(kernel_size), "alpha": float(alpha),
                       "num_iterations": int(num_iterations), "method": str(method),
                       "unary_weight": float(unary_weight), "init_scale": float(init_scale),
                       "filter_init": filter_init, "expert_weights": expert_weights,
                       "differentiation": differentiation, "gtol": None if gtol is None else float(gtol),
                       "cg_tol": float(cg_tol)}
        potential = (StudentT(alpha) if expert_weights == "shared"
                     else StudentT(alpha, num_experts=num_filters, learnable=True))
        foe = FieldOfExperts(channels=1, num_filters=num_filters, kernel_size=kernel_size,
                             potential=potential, init_scale=init_scale)
        if filter_init == "dct":
            with torch.no_grad():
                foe.weight.copy_(init_scale * dct_filters(kernel_size, num_filters)[:, None])
        energy = Unary(weight=unary_weight, learnable=True) + foe
        self.layer = Unrolled(energy, method, num_iterations=num_iterations, differentiation=differentiation,
                              gtol=gtol, cg_tol=cg_tol)

    @property
    def energy(self):
        """The learned energy (an :class:`energycrf.Energy`): solve it with any solver."""
        return self.layer.energy

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.training or self.config["differentiation"] != "implicit":
            return self.layer(x)
        from ..solvers.api import solve

        cfg = self.config
        options = {} if cfg["gtol"] is None else {"gtol": cfg["gtol"]}
        return solve(self.energy, x, method=cfg["method"], max_iters=cfg["num_iterations"], **options).y


class StagedFoEDenoiser(_ConfiguredModel):
    r"""``T`` stages, each one gradient step on its own Field-of-Experts energy with learned experts.

    .. math::

        y_t = y_{t-1} - \nabla_y E_t(y_{t-1}, x), \qquad
        E_t(y, x) = w_t \|y - x\|^2 + \sum_{m=1}^{M} \sum_k \rho_{t,m}\big((J_{t,m} \odot y)_k\big),

    with ``y_0 = x`` (:class:`energycrf.learned.unrolled.Staged`; Chen and Pock's trainable
    reaction-diffusion). Each :math:`E_t` is ``Unary(learnable=True) + FieldOfExperts(channels=1,
    potential=PiecewiseLinear(num_experts=M))``: own weight :math:`w_t`, own filters
    :math:`J_{t,m}` (started from the DCT basis) and own influence functions
    :math:`\rho'_{t,m}` (piecewise linear on ``num_knots`` knots over ``[-span, span]``,
    started from a Student-t influence of scale ``alpha``). ``energies[t]`` is an ordinary
    energy: its ``grad``, ``curvature`` and ``breakdown`` work as for any other.
    """

    def __init__(self, num_stages: int = 5, num_filters: int = 24, kernel_size: int = 5, num_knots: int = 63,
                 span: float = 4.0, alpha: float = 0.1, unary_weight: float = 0.05, init_scale: float = 1.0):
        super().__init__()
        from ..energies import FieldOfExperts, PiecewiseLinear, Unary
        from ..learned.unrolled import Staged

        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f"num_stages: expected an int >= 1, got {num_stages!r}")
        if num_filters > kernel_size**2 - 1:
            raise ValueError(f"num_filters: the DCT start gives {kernel_size**2 - 1} filters of size {kernel_size}, "
                             f"got num_filters={num_filters}")
        self.config = {"num_stages": int(num_stages), "num_filters": int(num_filters),
                       "kernel_size": int(kernel_size), "num_knots": int(num_knots), "span": float(span),
                       "alpha": float(alpha), "unary_weight": float(unary_weight), "init_scale": float(init_scale)}
        start = init_scale * dct_filters(kernel_size, num_filters)[:, None]
        stages = []
        for _ in range(num_stages):
            foe = FieldOfExperts(channels=1, num_filters=num_filters, kernel_size=kernel_size, init_scale=init_scale,
                                 potential=PiecewiseLinear(num_knots, span, num_experts=num_filters, alpha=alpha))
            with torch.no_grad():
                foe.weight.copy_(start)
            stages.append(Unary(weight=unary_weight, learnable=True) + foe)
        self.layer = Staged(stages)

    @property
    def energies(self):
        """The ``T`` stage energies (:class:`energycrf.Energy`)."""
        return list(self.layer.energies)


def _load_latent_crf(directory: Path) -> nn.Module:
    from ..learned.latent_crf import LatentCRF

    return LatentCRF.from_pretrained(directory)


_LOADERS = {"latent_crf": _load_latent_crf, "foe_energy": FoEEnergyDenoiser.from_pretrained,
            "staged_foe": StagedFoEDenoiser.from_pretrained}


def pretrained_dir(sigma: int | float, model: str = DEFAULT_MODEL) -> Path:
    """The shipped checkpoint directory for ``sigma`` (one of :data:`SIGMAS`) and ``model``
    (``"staged"``: one gradient step on each of 5 learned Field-of-Experts energies, the default;
    ``"foe"``: one Field-of-Experts energy minimised by its solver; ``"latentcrf"``: the LatentCRF layer)."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or float(sigma) not in SIGMAS:
        raise ValueError(f"sigma: shipped checkpoints exist for sigma in {SIGMAS} (0-255 scale), got {sigma!r}; "
                         "train one with scripts/train_denoisers.py and pass its directory as checkpoint")
    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    return PRETRAINED_ROOT / f"denoise-sigma{int(sigma)}" / model


def load_denoiser(sigma: int | float | None = None, checkpoint: str | os.PathLike | None = None,
                  model: str | None = None) -> PixelDenoiser:
    """The shipped denoiser for ``sigma`` (default 25) and ``model`` (default ``"staged"``), or the one
    in ``checkpoint``, in eval mode. With a checkpoint, ``sigma`` and ``model`` may be left out; given,
    they must be the checkpoint's own (a checkpoint is trained for one noise level)."""
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, numbers.Real)):
        raise TypeError(f"sigma: expected a number (0-255 scale), got {type(sigma).__name__}")
    if model is not None and model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    if checkpoint is None:
        return PixelDenoiser.from_pretrained(pretrained_dir(DEFAULT_SIGMA if sigma is None else float(sigma),
                                                            model or DEFAULT_MODEL)).eval()
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint: expected a directory path (str or os.PathLike), got {type(checkpoint).__name__}")
    den = PixelDenoiser.from_pretrained(Path(checkpoint)).eval()
    if sigma is not None and float(sigma) != den.sigma:
        raise ValueError(f"sigma: the checkpoint {str(checkpoint)!r} was trained for sigma {den.sigma:g}, "
                         f"got {float(sigma):g} (leave sigma out to use the checkpoint's)")
    if model is not None and KIND_MODELS.get(den.kind) != model:
        raise ValueError(f"model: the checkpoint {str(checkpoint)!r} holds {KIND_MODELS.get(den.kind, den.kind)!r}, "
                         f"got {model!r} (leave model out to use the checkpoint's)")
    return den


@torch.no_grad()
def denoise(image: np.ndarray, sigma: int | float | None = None, denoiser: PixelDenoiser | None = None) -> np.ndarray:
    """Denoise ``image`` (``[H, W]`` or ``[H, W, C]``, channels last, float pixel values on the
    ``[0, 1]`` scale, noise included) with ``denoiser``, or the shipped default for ``sigma``
    (default 25). A ``sigma`` given with a ``denoiser`` must be the one it was trained for.

    Channels are denoised one by one with the one-channel model. Returns float32, same
    shape, not clipped.
    """
    if denoiser is not None and not isinstance(denoiser, PixelDenoiser):
        raise TypeError(f"denoiser: expected a PixelDenoiser (load_denoiser(...)) or None, "
                        f"got {type(denoiser).__name__}")
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, numbers.Real)):
        raise TypeError(f"sigma: expected a number (0-255 scale), got {type(sigma).__name__}")
    if denoiser is not None and sigma is not None and float(sigma) != denoiser.sigma:
        raise ValueError(f"sigma: the denoiser was trained for sigma {denoiser.sigma:g}, got {float(sigma):g} "
                         "(leave sigma out, or load the denoiser for this sigma)")
    if not isinstance(image, (np.ndarray, torch.Tensor, list, tuple)):
        raise TypeError(f"image: expected a float array [H, W] or [H, W, C], got {type(image).__name__}")
    arr = np.asarray(image)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"image: expected float pixel values (scale integers to [0, 1] first), got {arr.dtype}")
    check_channels_last(arr, "image")
    if not np.isfinite(arr).all():
        raise ValueError("image: contains NaN or infinite values")
    den = denoiser if denoiser is not None else load_denoiser(sigma)
    check_pixel_values(arr, den.sigma, "image")
    planes = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    x = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))[:, None]
    y = den(x)[:, 0].numpy()
    return y[0] if arr.ndim == 2 else np.moveaxis(y, 0, -1)
