"""Input checks shared by every energy: clear errors instead of deep tracebacks.

Messages name the argument, what was expected and what was got.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}" if not hasattr(value, "__len__") else type(value).__name__


def check_latent(name: str, value: Any) -> Tensor:
    """Check that ``value`` is a floating ``[B, C, H, W]`` tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, C, H, W], got {_describe(value)}")
    if value.dim() != 4:
        raise ValueError(
            f"{name} must have rank 4 (shape [B, C, H, W]), got rank {value.dim()} with shape {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype (float32 or float64), got {value.dtype}")
    if value.shape[0] < 1 or value.shape[1] < 1 or value.shape[2] < 1 or value.shape[3] < 1:
        raise ValueError(f"{name} must have non-empty dimensions, got shape {tuple(value.shape)}")
    return value


def check_condition(c: Any, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """Check a condition: None, pooled ``[B, D]`` or tokens ``[B, L, D]`` with the latents' batch size."""
    if c is None:
        return None
    if not isinstance(c, Tensor):
        raise TypeError(f"c must be None or a torch.Tensor of shape [B, D] or [B, L, D], got {_describe(c)}")
    if c.dim() not in (2, 3):
        raise ValueError(
            f"c must have shape [B, D] (pooled) or [B, L, D] (tokens), got rank {c.dim()} with shape {tuple(c.shape)}"
        )
    if not c.is_floating_point():
        raise TypeError(f"c must have a floating-point dtype, got {c.dtype}")
    if c.shape[0] != batch:
        raise ValueError(f"c must have the latents' batch size {batch} in dimension 0, got shape {tuple(c.shape)}")
    if c.device != device:
        raise ValueError(f"c must be on the latents' device {device}, got {c.device}")
    return c


def check_pair(y: Any, x: Any) -> tuple[Tensor, Tensor]:
    """Check the state ``y`` and the observation ``x`` together."""
    check_latent("y", y)
    check_latent("x", x)
    if y.shape != x.shape:
        raise ValueError(f"y and x must have the same shape, got y {tuple(y.shape)} and x {tuple(x.shape)}")
    if y.dtype != x.dtype:
        raise TypeError(f"y and x must have the same dtype, got y {y.dtype} and x {x.dtype}")
    if y.device != x.device:
        raise ValueError(f"y and x must be on the same device, got y {y.device} and x {x.device}")
    return y, x


def check_positive(name: str, value: Any, *, allow_tensor: bool = True) -> None:
    """Check a positive finite number (or a tensor of them)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive number, got bool {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        return
    if allow_tensor and isinstance(value, Tensor):
        if not value.is_floating_point() and value.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        if value.numel() == 0 or not bool(torch.isfinite(value).all()) or bool((value <= 0).any()):
            raise ValueError(f"{name} must hold positive finite values, got {value.tolist()}")
        return
    raise TypeError(f"{name} must be a positive number, got {_describe(value)}")


def check_int(name: str, value: Any, *, minimum: int, odd: bool = False) -> int:
    """Check an integer argument of a constructor."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if odd and value % 2 == 0:
        raise ValueError(f"{name} must be odd (a centred window), got {value}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
