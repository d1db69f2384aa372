"""The real saved layers (``ec.LatentCRF``, the denoisers' models) use the checked, atomic file
pair of :mod:`energycrf.io`: changed bytes and non-finite weights are refused naming the file,
and a save killed at any file operation leaves the old or the new layer."""

from __future__ import annotations

import re
import warnings

import pytest
import safetensors.torch
import torch

import energycrf as ec
from energycrf.apps.denoise import FoEEnergyDenoiser
from energycrf.io import IntegrityError, IntegrityWarning
from tests.training._faults import Killed, KillSwitch


def _crf(seed: int, num_iterations: int = 2):
    torch.manual_seed(seed)
    return ec.LatentCRF(channels=4, cond_dim=8, num_iterations=num_iterations, num_filters=3, kernel_size=3,
                        hidden_channels=8, attention_dim=8)


def _denoiser(seed: int, num_filters: int = 3):
    torch.manual_seed(seed)
    return FoEEnergyDenoiser(num_filters=num_filters, kernel_size=3)


LAYERS = {"latent_crf": (_crf, ec.LatentCRF), "foe_denoiser": (_denoiser, FoEEnergyDenoiser)}


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return a.config == b.config and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", LAYERS)
def test_changed_weight_bytes_are_refused_naming_the_file(kind, tmp_path):
    make, cls = LAYERS[kind]
    layer = make(0)
    layer.save_pretrained(tmp_path)
    assert _same(cls.from_pretrained(tmp_path), layer)
    path = next(tmp_path.glob("*.safetensors"))  # the one weights file (its name depends on the layer)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=re.escape(str(path)) + ".*sha256"):
        cls.from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", LAYERS)
def test_non_finite_weights_are_never_saved(kind, tmp_path):
    make, cls = LAYERS[kind]
    good, bad = make(0), make(1)
    good.save_pretrained(tmp_path / "d")
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    name, tensor = next((n, t) for n, t in bad.state_dict().items() if t.is_floating_point() and t.numel())
    tensor.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=re.escape(repr(name)) + ".*non-finite"):
        bad.save_pretrained(tmp_path / "d")
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before
    assert _same(cls.from_pretrained(tmp_path / "d"), good)


@pytest.mark.parametrize("kind", LAYERS)
def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_layer(kind, tmp_path, monkeypatch):
    make, cls = LAYERS[kind]
    old, new = make(0, 2), make(1, 3)
    switch = KillSwitch(monkeypatch, extra=((safetensors.torch, "save_file"),))
    old.save_pretrained(tmp_path / "probe")
    switch.arm(None)
    new.save_pretrained(tmp_path / "probe")
    switch.revive()
    count = switch.calls
    assert count >= 4
    outcomes = set()
    for at in range(count):
        target = tmp_path / f"run{at}" / "d"
        old.save_pretrained(target)
        switch.arm(at)
        with pytest.raises(Killed):
            new.save_pretrained(target)
        switch.revive()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = cls.from_pretrained(target)
        assert all(issubclass(w.category, IntegrityWarning) for w in caught)
        assert _same(loaded, old) or _same(loaded, new), f"killed at operation {at}"
        outcomes.add("new" if _same(loaded, new) else "old")
    assert outcomes == {"old", "new"}
