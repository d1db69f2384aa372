"""Fashion-MNIST reader (IDX files, gzip + numpy), no download.

The 70,000 real 28x28 grayscale photographs of Fashion-MNIST (60,000 training, 10,000
test) come from the Debian package ``dataset-fashion-mnist``, which installs the four
``*-idx?-ubyte.gz`` files in ``/usr/share/datasets/fashion-mnist/``. The IDX format has a
16-byte header for images (magic 2051, count, rows, cols) and 8 bytes for labels (magic
2049, count); the payload is unsigned bytes.

For the diffusion model images are padded to 32x32 (2 pixels of background on each side)
and scaled to [-1, 1], the range ``AutoencoderKL`` expects.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_ROOT = "ENERGYCRF_FASHION_MNIST"

CLASS_NAMES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The directory holding the IDX files: ``root``, else ``$ENERGYCRF_FASHION_MNIST``,
    else ``/usr/share/datasets/fashion-mnist``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_ROOT)
    return Path(env) if env else DEFAULT_ROOT


def _read_idx(path: Path, header: int, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header})")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: expected IDX magic {magic}, got {got}")
    n = int.from_bytes(raw[4:8], "big")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if header == 16:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        if data.size != n * rows * cols:
            raise ValueError(f"{path}: expected {n}x{rows}x{cols} bytes of images, got {data.size}")
        return data.reshape(n, rows, cols)
    if data.size != n:
        raise ValueError(f"{path}: expected {n} labels, got {data.size}")
    return data


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one split: ``(images uint8 (N, 28, 28), labels int64 (N,))``.

    Raises ``FileNotFoundError`` naming the Debian package when the files are missing.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    base = data_root(root)
    img_name, lab_name = _FILES[split]
    img_path, lab_path = base / img_name, base / lab_name
    missing = [str(p) for p in (img_path, lab_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install the Debian package "
            f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist), or point "
            f"${ENV_ROOT} (or root=) at a directory holding the four *-idx?-ubyte.gz files."
        )
    images = _read_idx(img_path, 16, 2051)
    labels = _read_idx(lab_path, 8, 2049).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{base}: {len(images)} images but {len(labels)} labels in split {split!r}")
    return images, labels


def to_model_range(images: np.ndarray | torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, size, size) in [-1, 1], zero-padded (background -1)."""
    x = torch.as_tensor(np.array(images, copy=True))
    if x.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {tuple(x.shape)}")
    x = x.float().div(127.5).sub(1.0).unsqueeze(1)
    h, w = x.shape[-2:]
    if size < max(h, w):
        raise ValueError(f"size must be >= the image size {max(h, w)}, got {size}")
    pt, pl = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(x, (pl, size - w - pl, pt, size - h - pt), value=-1.0)


def from_model_range(x: torch.Tensor, size: int = 28) -> torch.Tensor:
    """Inverse of :func:`to_model_range`: (N, 1, S, S) in [-1, 1] -> (N, 1, size, size) in [0, 1], center crop."""
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    pt, pl = (h - size) // 2, (w - size) // 2
    return ((x[..., pt : pt + size, pl : pl + size] + 1) / 2).clamp(0, 1)
