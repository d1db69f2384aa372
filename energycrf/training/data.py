"""Data for the two training stages, with an order that can be resumed exactly.

Stage 1 (paper 3.4.1) reads clean samples ``z`` (latents from safetensors shards, or
random patches of images) and noises them on the fly; stage 2 (paper 3.5) reads
``(z_s, z_f)`` pairs (and optional ``prompt_embeds``) from safetensors shards.

Everything random is a pure function of ``(seed, epoch, index)``:

- the sample order of an epoch is ``torch.randperm`` seeded with ``seed + epoch``
  (as in ``DistributedSampler``), cut to whole global batches; rank ``r`` of ``R``
  takes positions ``r, r + R, ...`` of each global batch;
- a patch's crop and flips depend on its dataset index only;
- a sample's noise (and sampled noise level) depends on ``(seed, epoch, index)``.

So a run resumed from ``(epoch, batch)`` sees exactly the data an uninterrupted run
sees, and the union of the ranks' batches in a ``torchrun`` job is the single-process
global batch, noise included.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "ImagePatches",
    "LatentShards",
    "ResumableDistributedSampler",
    "NoiseSpec",
    "sample_seed",
    "collate",
]


def sample_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy ``SeedSequence``)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(*parts))


# --------------------------------------------------------------------------- datasets
class ImagePatches(Dataset):
    """Random ``patch_size`` crops of a list of images, as clean samples ``z``.

    Parameters
    ----------
    images:
        arrays ``[H, W]`` (one channel) or ``[C, H, W]``, float values (e.g. in [0, 1]).
    patch_size:
        side of the square crops; every image must be at least this large.
    length:
        number of distinct patches (the epoch length).
    seed:
        item ``i`` is drawn from a generator seeded by ``(seed, i)``.
    augment:
        random horizontal / vertical flips and 90-degree rotations.
    """

    def __init__(self, images: Sequence[Any], patch_size: int, length: int = 100_000,
                 seed: int = 0, augment: bool = True):
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size: expected an int >= 1, got {patch_size!r}")
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length: expected an int >= 1, got {length!r}")
        if len(images) == 0:
            raise ValueError("images: expected at least one image, got an empty sequence")
        self.images: list[torch.Tensor] = []
        for k, im in enumerate(images):
            t = torch.as_tensor(np.asarray(im), dtype=torch.float32)
            if t.ndim == 2:
                t = t[None]
            if t.ndim != 3:
                raise ValueError(f"images[{k}]: expected [H, W] or [C, H, W], got shape {tuple(t.shape)}")
            if t.shape[-1] < patch_size or t.shape[-2] < patch_size:
                raise ValueError(f"images[{k}]: shape {tuple(t.shape)} is smaller than patch_size={patch_size}")
            self.images.append(t.contiguous())
        channels = {t.shape[0] for t in self.images}
        if len(channels) != 1:
            raise ValueError(f"images: all images need the same number of channels, got {sorted(channels)}")
        self.patch_size = patch_size
        self.length = length
        self.seed = int(seed)
        self.augment = augment
        # pick images in proportion to their number of possible crops
        areas = torch.tensor([(t.shape[-2] - patch_size + 1) * (t.shape[-1] - patch_size + 1)
                              for t in self.images], dtype=torch.float64)
        self._weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} patches")
        g = _generator(self.seed, 0x9A7C, index)
        k = int(torch.multinomial(self._weights, 1, generator=g))
        im = self.images[k]
        p = self.patch_size
        top = int(torch.randint(0, im.shape[-2] - p + 1, (1,), generator=g))
        left = int(torch.randint(0, im.shape[-1] - p + 1, (1,), generator=g))
        patch = im[:, top:top + p, left:left + p]
        if self.augment:
            flips = torch.randint(0, 2, (2,), generator=g).tolist()
            rot = int(torch.randint(0, 4, (1,), generator=g))
            if flips[0]:
                patch = patch.flip(-1)
            if flips[1]:
                patch = patch.flip(-2)
            patch = torch.rot90(patch, rot, dims=(-2, -1))
        return {"z": patch.contiguous(), "index": index}


class LatentShards(Dataset):
    """Rows of every ``*.safetensors`` shard in a directory (sorted by name).

    Each shard holds tensors with a common leading (sample) dimension under ``keys``;
    stage 1 uses ``keys=("z",)``, stage 2 ``keys=("z_s", "z_f")`` and, when present,
    ``prompt_embeds`` (listed in ``optional_keys``). Rows are read lazily with
    ``safe_open`` (no pickle, shards need not fit in memory together).
    """

    def __init__(self, directory: str | os.PathLike, keys: Sequence[str] = ("z_s", "z_f"),
                 optional_keys: Sequence[str] = ("prompt_embeds",)):
        directory = Path(directory)
        if not directory.is_dir():
            raise ValueError(f"directory: expected a directory of .safetensors shards, got {str(directory)!r}")
        shards = sorted(directory.glob("*.safetensors"))
        if not shards:
            raise ValueError(f"directory: no .safetensors shards in {str(directory)!r}")
        self.keys = tuple(keys)
        self.shards: list[Path] = []
        self.counts: list[int] = []
        present_optional: set[str] | None = None
        for shard in shards:
            with safe_open(str(shard), framework="pt") as fh:
                names = set(fh.keys())
                missing = [k for k in self.keys if k not in names]
                if missing:
                    raise ValueError(f"directory: shard {shard.name!r} lacks keys {missing} "
                                     f"(has {sorted(names)})")
                rows = {fh.get_slice(k).get_shape()[0] for k in self.keys}
                opt = {k for k in optional_keys if k in names}
                rows |= {fh.get_slice(k).get_shape()[0] for k in opt}
            if len(rows) != 1:
                raise ValueError(f"directory: shard {shard.name!r} has keys with different "
                                 f"leading sizes {sorted(rows)}")
            present_optional = opt if present_optional is None else present_optional & opt
            self.shards.append(shard)
            self.counts.append(rows.pop())
        self.optional_keys = tuple(sorted(present_optional or ()))
        self._offsets = np.cumsum([0] + self.counts)
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        s = int(np.searchsorted(self._offsets, index, side="right") - 1)
        row = index - int(self._offsets[s])
        fh = self._handles.get(s)
        if fh is None:
            fh = self._handles[s] = safe_open(str(self.shards[s]), framework="pt")
        out: dict[str, Any] = {k: fh.get_slice(k)[row:row + 1][0].clone()
                               for k in self.keys + self.optional_keys}
        out["index"] = index
        return out

    def __getstate__(self):  # file handles do not travel to worker processes
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts; ``index`` becomes a long tensor."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        vals = [b[key] for b in batch]
        out[key] = torch.as_tensor(vals, dtype=torch.long) if key == "index" else torch.stack(vals)
    return out


# --------------------------------------------------------------------------- sampler
class ResumableDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` that drops incomplete global batches and can start mid-epoch.

    Epoch ``e``'s order is ``randperm(N)`` seeded with ``seed + e``, cut to
    ``floor(N / B) * B`` samples with ``B = batch_size * num_replicas`` the global
    batch. Rank ``r`` yields positions ``r, r + R, r + 2R, ...``, so ``batch_size``
    consecutive items of every rank together form one global batch. ``start_batch``
    skips the global batches already consumed in this epoch (set by the trainer on
    resume).
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.global_batch = batch_size * num_replicas
        self.batches_per_epoch = len(dataset) // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset: {len(dataset)} samples are fewer than one global batch "
                             f"({batch_size} x {num_replicas} processes)")
        self.start_batch = 0

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        order = order[: self.batches_per_epoch * self.global_batch]
        order = order[self.start_batch * self.global_batch:]
        return iter(order[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


# --------------------------------------------------------------------------- noise
@dataclass
class NoiseSpec:
    """How stage 1 corrupts a clean sample ``z``.

    ``mode="alpha"`` is the paper's 3.4.1 noising ``z~ = sqrt(a) z + sqrt(1 - a) n``;
    ``mode="sigma"`` is additive white Gaussian noise ``z~ = z + sigma n`` (image
    denoising). ``level`` is a fixed value or a ``(low, high)`` range sampled uniformly
    per sample.
    """

    mode: str = "alpha"
    level: float | tuple[float, float] = 0.5

    def __post_init__(self):
        if self.mode not in ("alpha", "sigma"):
            raise ValueError(f"mode: expected 'alpha' or 'sigma', got {self.mode!r}")
        lv = self.level
        if isinstance(lv, (list, tuple)):
            if len(lv) != 2 or not float(lv[0]) <= float(lv[1]):
                raise ValueError(f"level: expected a number or a (low, high) pair with low <= high, got {lv!r}")
            self.level = (float(lv[0]), float(lv[1]))
            lo, hi = self.level
        else:
            self.level = lo = hi = float(lv)
        if self.mode == "alpha" and not (0.0 < lo and hi <= 1.0):
            raise ValueError(f"level: alpha must lie in (0, 1], got {lv!r}")
        if self.mode == "sigma" and lo < 0:
            raise ValueError(f"level: sigma must be >= 0, got {lv!r}")

    def draw(self, shape: Sequence[int], indices: torch.Tensor, seed: int, epoch: int,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``(noise [B, *shape], level [B])`` from generators seeded by
        ``(seed, epoch, index)``."""
        noises, levels = [], []
        for idx in indices.tolist():
            g = _generator(seed, 0x5EED, epoch, idx)
            if isinstance(self.level, tuple):
                lo, hi = self.level
                levels.append(lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64)))
            else:
                levels.append(self.level)
            noises.append(torch.randn(tuple(shape), generator=g, dtype=dtype))
        return torch.stack(noises), torch.tensor(levels, dtype=dtype)

    def apply(self, z: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Corrupt ``z`` with the drawn ``noise`` at per-sample ``level``."""
        if self.mode == "sigma":
            return z + level.to(z.dtype).view(-1, *([1] * (z.ndim - 1))) * noise
        from energycrf.learned.losses import add_noise

        return add_noise(z, level.to(z.dtype), noise=noise)


def epochs_for(steps: int, batches_per_epoch: int) -> int:
    return math.ceil(steps / batches_per_epoch)
