"""A small CNN classifier of Fashion-MNIST, the feature network of the evaluation.

Trained on the training split only. Its 64-dim penultimate activations are the features
of the Frechet distance and of the Vendi score (the role Inception / CLIP features play
for natural images, paper section 4 and appendix E); its predictions give the text
alignment (accuracy on the prompted class). Input: ``(N, 1, 32, 32)`` in [0, 1] (the
pipeline's ``output_type="pt"`` images; real photographs through
``(to_model_range(x) + 1) / 2``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_DIM = 64


class FashionClassifier(nn.Module):
    """conv(16)-pool-conv(32)-pool-conv(64)-pool-fc(64)-fc(10), ReLU, batch norm."""

    def __init__(self, width: int = 16, feature_dim: int = FEATURE_DIM, num_classes: int = 10):
        super().__init__()
        if width < 1 or feature_dim < 1:
            raise ValueError(f"width and feature_dim must be >= 1, got {width}, {feature_dim}")
        self.config = dict(width=width, feature_dim=feature_dim, num_classes=num_classes)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(4 * w * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1:] != (1, 32, 32):
            raise ValueError(f"x must have shape (N, 1, 32, 32) in [0, 1], got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, feature_dim)`` (after ReLU)."""
        self._check(x)
        h = self.body((x - 0.5) / 0.5)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 10)``."""
        return self.head(self.features(x))


def real_images(split: str = "test", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST photographs as classifier input ``(N, 1, 32, 32)`` in [0, 1] and labels."""
    from energycrf.apps.ldm import data

    x, y = data.load_fashion_mnist(split)
    if limit:
        x, y = x[:limit], y[:limit]
    return (data.to_model_range(x) + 1) / 2, torch.as_tensor(y)


def train_classifier(
    x: torch.Tensor, y: torch.Tensor, epochs: int = 2, batch_size: int = 128, lr: float = 2e-3,
    seed: int = 0, width: int = 16, progress: bool = True,
) -> FashionClassifier:
    """Train with cross-entropy (AdamW, cosine decay) and random 2-pixel shifts."""
    from tqdm.auto import tqdm

    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    torch.manual_seed(seed)
    model = FashionClassifier(width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch_size)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    with tqdm(total=steps, desc="classifier", disable=not progress, mininterval=5.0) as bar:
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for k in range(0, len(x), batch_size):
                idx = perm[k : k + batch_size]
                dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
                xb = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
    return model.eval()


@torch.no_grad()
def accuracy(model: FashionClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    pred = torch.cat([model(x[k : k + batch_size]).argmax(1) for k in range(0, len(x), batch_size)])
    return float((pred == y).float().mean())


def save_classifier(model: FashionClassifier, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` in directory ``path`` (atomic file writes)."""
    from ...io import save_safetensors

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "model.safetensors.tmp"
    save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({**model.config, **(info or {})}, indent=2) + "\n", encoding="utf-8")
    return path


def load_classifier(path: str | os.PathLike) -> FashionClassifier:
    """Load a classifier saved by :func:`save_classifier` (safetensors only), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no classifier at {path} (model.safetensors missing)")
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    model = FashionClassifier(width=cfg["width"], feature_dim=cfg["feature_dim"], num_classes=cfg["num_classes"])
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval()
