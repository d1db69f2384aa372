"""Real photographs that ship with scikit-image (offline), and the noise protocol used throughout.

``load_photograph("camera")`` gives the 512x512 grayscale ``camera`` image in ``[0, 1]``;
``add_gaussian_noise(clean, 25, seed=0)`` adds unclipped Gaussian noise of standard
deviation ``25/255`` drawn by ``numpy.random.default_rng(seed)`` (camera: 20.16 dB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["PHOTOGRAPHS", "load_photograph", "add_gaussian_noise"]

#: skimage.data photographs that load without a download
PHOTOGRAPHS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
               "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
               "rocket", "text")


def load_photograph(name: str = "camera", size: int | None = None, square: bool = False) -> np.ndarray:
    """A grayscale float64 photograph in ``[0, 1]`` from ``skimage.data``.

    Args:
        name: one of :data:`PHOTOGRAPHS`.
        size: resize so the longer side is ``size`` (``None``: keep the original size).
        square: resize to ``size x size`` instead (needs ``size``).
    """
    import numpy as np
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize
    from skimage.util import img_as_float

    if name not in PHOTOGRAPHS:
        raise ValueError(f"name must be one of {PHOTOGRAPHS} (skimage photographs that load offline), got {name!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    if square and size is None:
        raise ValueError("square=True needs a size")
    img = getattr(skimage.data, name)()
    img = rgb2gray(img[..., :3]) if img.ndim == 3 else img_as_float(img)
    img = np.asarray(img, dtype=np.float64)
    if size is not None:
        scale = size / max(img.shape)
        shape = (size, size) if square else tuple(max(1, round(s * scale)) for s in img.shape)
        if shape != img.shape:
            img = resize(img, shape, anti_aliasing=min(shape[0] / img.shape[0], shape[1] / img.shape[1]) < 1)
    return img


def add_gaussian_noise(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """``clean + (sigma / 255) * n`` with ``n ~ N(0, I)`` from ``numpy.random.default_rng(seed)``; not clipped."""
    import numpy as np

    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0 (on the 0-255 scale), got {sigma!r}")
    return clean + (sigma / 255.0) * np.random.default_rng(seed).standard_normal(clean.shape)
