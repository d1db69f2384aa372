"""save_pretrained / from_pretrained: safetensors + JSON, atomic, local only, never unpickles."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from energycrf.energies import DenseKernel, Pairwise, Unary
from energycrf.energies.kernels import LocalKernel, LongRangeKernel
from energycrf.learned.latent_crf import LatentCRF
from energycrf.learned.pretrained import WEIGHTS_NAME

def _touch(path):
    Path(path).write_text("unpickled!")
    return {}


class _Bomb:
    """Unpickling this object writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _trained_layer(**kwargs):
    torch.manual_seed(0)
    crf = LatentCRF(channels=4, num_iterations=2, **kwargs)
    with torch.no_grad():
        for p in crf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    crf.train()
    crf(torch.randn(3, 4, 8, 8), torch.randn(3, 5, kwargs["cond_dim"]) if kwargs.get("cond_dim") else None)
    return crf.eval()  # batch-norm running statistics moved


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cond_dim": 16},
        {"cond_dim": 16, "compatibility": "linear", "normalization": "mean_field"},
        {"normalization": "group", "num_groups": 2, "kernel": LongRangeKernel(sigma=3.0, boundary="circular")},
        {"normalization": "none", "kernel": LocalKernel(radius=1, learnable=False), "kernel_size": 5},
    ],
)
def test_round_trip_gives_identical_outputs(tmp_path, kwargs):
    crf = _trained_layer(**kwargs)
    crf.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", WEIGHTS_NAME]
    loaded = LatentCRF.from_pretrained(tmp_path / "ckpt").eval()
    x = torch.randn(2, 4, 8, 8)
    c = torch.randn(2, 5, 16) if kwargs.get("cond_dim") else None
    assert torch.equal(crf(x, c), loaded(x, c))
    for (k, a), (k2, b) in zip(crf.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["_class_name"] == "LatentCRF" and config["channels"] == 4


def test_dense_kernel_round_trip(tmp_path):
    n = 6 * 6
    g = torch.Generator().manual_seed(0)
    W = torch.rand(n, n, generator=g)
    W = (W + W.T) / 2
    W.fill_diagonal_(0)
    crf = LatentCRF(channels=2, kernel=DenseKernel(W), normalization="none", num_iterations=2)
    crf.save_pretrained(tmp_path)
    loaded = LatentCRF.from_pretrained(tmp_path)
    assert torch.equal(loaded.pairwise.kernel.matrix, crf.pairwise.kernel.matrix)
    x = torch.randn(1, 2, 6, 6)
    assert torch.equal(crf(x), loaded(x))


def test_overrides_and_overwrite(tmp_path):
    crf = _trained_layer(cond_dim=16)
    crf.save_pretrained(tmp_path)
    crf.save_pretrained(tmp_path)  # overwriting is fine, and leaves no temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS_NAME]
    loaded = LatentCRF.from_pretrained(tmp_path, num_iterations=4, return_all=True)
    assert loaded(torch.randn(1, 4, 8, 8)).shape == (4, 1, 4, 8, 8)
    with pytest.raises(TypeError, match="override"):
        LatentCRF.from_pretrained(tmp_path, channels=3)


def test_missing_directory_and_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory.*never downloads"):
        LatentCRF.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        LatentCRF.from_pretrained(tmp_path)
    LatentCRF(channels=4).save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors.*never pickle"):
        LatentCRF.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    LatentCRF(channels=4).save_pretrained(tmp_path / "ok")
    (tmp_path / WEIGHTS_NAME).write_bytes((tmp_path / "ok" / WEIGHTS_NAME).read_bytes())
    with pytest.raises(ValueError, match="UNet2DModel"):
        LatentCRF.from_pretrained(tmp_path)


def test_layers_without_a_config_refuse_to_save(tmp_path):
    layer = LatentCRF.from_energy(Unary() + Pairwise(4))
    with pytest.raises(TypeError, match="config"):
        layer.save_pretrained(tmp_path)


def test_a_planted_pickle_is_never_loaded(tmp_path, monkeypatch):
    marker = tmp_path / "marker.txt"
    crf = _trained_layer(cond_dim=16)
    crf.save_pretrained(tmp_path / "ckpt")
    # plant pickles under every name a loader might try
    for name in ("pytorch_model.bin", "model.pt", "model.ckpt", "diffusion_pytorch_model.bin"):
        torch.save({"state_dict": _Bomb(marker)}, tmp_path / "ckpt" / name)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle / torch.load must never be called by from_pretrained")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = LatentCRF.from_pretrained(tmp_path / "ckpt").eval()
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(loaded(x), crf(x))
    # with the safetensors file gone the pickle is not a fallback
    (tmp_path / "ckpt" / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError):
        LatentCRF.from_pretrained(tmp_path / "ckpt")
    assert not marker.exists()
    monkeypatch.undo()
    torch.load(tmp_path / "ckpt" / "pytorch_model.bin", weights_only=False)  # the bomb is live
    assert marker.exists()
