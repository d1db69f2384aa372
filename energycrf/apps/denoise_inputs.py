"""What a denoiser accepts as an image (light: numpy only, shared by :mod:`energycrf.apps.denoise`
and the ``energycrf denoise`` command): channels last, pixel values on the ``[0, 1]`` scale."""

from __future__ import annotations

__all__ = ["image_channels", "check_pixel_values", "check_channels_last"]


def image_channels(image) -> int:
    """The number of channels the denoiser sees in an ``[H, W]`` or ``[H, W, C]`` array."""
    return 1 if image.ndim == 2 else int(image.shape[-1])


def check_pixel_values(image, sigma: float, name: str = "image") -> None:
    """``image`` holds pixel values on the ``[0, 1]`` scale, noise of ``sigma`` (0-255 scale)
    included: within ``[-m, 1 + m]``, ``m = 0.5 + 8 sigma / 255``. Data on the 0-255 scale, or
    a [-1, 1] normalisation, is refused rather than denoised as nonsense."""
    import numpy as np

    margin = 0.5 + 8.0 * float(sigma) / 255.0
    low, high = float(np.min(image)), float(np.max(image))
    if low < -margin or high > 1.0 + margin:
        hint = "; 0-255 data: divide it by 255" if high > 2.0 + margin else ""
        raise ValueError(f"{name}: expected pixel values on the [0, 1] scale (with noise of sigma {float(sigma):g}: "
                         f"within [{-margin:.2f}, {1 + margin:.2f}]), got values from {low:.4g} to {high:.4g}{hint}")


def check_channels_last(image, name: str = "image") -> None:
    """``[H, W]`` or ``[H, W, C]``: an array whose first axis is a handful and its last many
    (``(3, 64, 64)``) is channels-first, which would be read as 3 rows of 64 channels."""
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"{name}: expected a non-empty [H, W] or [H, W, C] array, got shape {tuple(image.shape)}")
    if image.ndim == 3 and image.shape[0] <= 4 < image.shape[2]:
        raise ValueError(f"{name}: expected channels last, [H, W, C], got shape {tuple(image.shape)}, which looks "
                         "channels-first [C, H, W] (np.moveaxis(image, 0, -1) gives [H, W, C])")
