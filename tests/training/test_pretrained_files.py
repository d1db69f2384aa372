"""The save_pretrained / from_pretrained pair's files (energycrf.io): one atomic unit, checked on load.

``Tiny`` uses :func:`write_pretrained` / :func:`read_pretrained` the way the layers rebuilt from
a ``config`` (``LatentCRF``, the denoisers' models) do.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import energycrf
from energycrf.io import IntegrityError, IntegrityWarning, read_pretrained, write_pretrained

from ._faults import Killed, KillSwitch


class Tiny(nn.Module):
    def __init__(self, width: int = 3, depth: int = 1):
        super().__init__()
        self.config = {"width": width, "depth": depth}
        self.lin = nn.Linear(width, width)
        self.register_buffer("count", torch.tensor(depth))

    def save_pretrained(self, directory, **kw):
        return write_pretrained(directory, {"_class_name": "Tiny", **self.config}, self.state_dict(), **kw)

    @classmethod
    def from_pretrained(cls, directory):
        config, state = read_pretrained(directory)
        assert config.pop("_class_name") == "Tiny"
        model = cls(**config)
        model.load_state_dict(state, strict=True)
        return model


def _tiny(seed, depth=1):
    torch.manual_seed(seed)
    return Tiny(depth=depth)


def _same(a, b):
    return a.config == b.config and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                                          b.state_dict().values()))


def test_round_trip_writes_the_pair_only_and_records_checksums(tmp_path):
    m = _tiny(0)
    assert m.save_pretrained(tmp_path / "d") == tmp_path / "d"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["_class_name"] == "Tiny" and set(config["_integrity"]) == {"config", "model.safetensors"}
    assert _same(Tiny.from_pretrained(tmp_path / "d"), m)


def test_changed_weight_bytes_are_refused_naming_the_file(tmp_path):
    _tiny(0).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=re.escape(str(path)) + ".*sha256"):
        Tiny.from_pretrained(tmp_path)


def test_changed_config_is_refused_naming_the_file(tmp_path):
    _tiny(0).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["depth"] = 4  # the weights still fit: without the digest this would load silently
    path.write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match=re.escape(str(path)) + ".*digest"):
        Tiny.from_pretrained(tmp_path)


def _write_old(directory, model, config=None):
    """A directory as save_pretrained wrote it before checksums existed."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config or {"_class_name": "Tiny", **model.config}))


def test_truncated_weights_and_corrupt_json_name_the_path(tmp_path):
    for d, write in ((tmp_path / "new", lambda d: _tiny(0).save_pretrained(d)),
                     (tmp_path / "old", lambda d: _write_old(d, _tiny(0)))):
        write(d)
        weights = d / "model.safetensors"
        good = weights.read_bytes()
        weights.write_bytes(good[: len(good) // 2])
        with pytest.raises(IntegrityError, match=re.escape(str(weights)) + ".*truncated"):
            Tiny.from_pretrained(d)
        weights.write_bytes(good)
        (d / "config.json").write_text('{"_class_name": "Ti')
        with pytest.raises(IntegrityError, match=re.escape(str(d / "config.json")) + ".*JSON"):
            Tiny.from_pretrained(d)
        (d / "config.json").write_text("[1, 2]")
        with pytest.raises(IntegrityError, match=re.escape(str(d / "config.json")) + ".*object"):
            Tiny.from_pretrained(d)


def test_non_finite_weights_are_refused_on_load_and_on_save(tmp_path):
    m = _tiny(0)
    with torch.no_grad():
        m.lin.weight[1, 2] = float("inf")
    _write_old(tmp_path / "old", m)
    with pytest.raises(IntegrityError, match=re.escape(str(tmp_path / "old" / "model.safetensors"))
                       + ".*'lin.weight'.*non-finite"):
        Tiny.from_pretrained(tmp_path / "old")
    good = _tiny(1)
    good.save_pretrained(tmp_path / "d")
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    with pytest.raises(ValueError, match="'lin.weight'.*non-finite"):
        m.save_pretrained(tmp_path / "d")
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "old"]


def test_directories_written_before_checksums_still_load(tmp_path):
    m = _tiny(2)
    _write_old(tmp_path / "old", m)
    assert _same(Tiny.from_pretrained(tmp_path / "old"), m)
    shipped = sorted(Path(energycrf.__file__).parent.rglob("config.json"))
    shipped = [p.parent for p in shipped if (p.parent / "model.safetensors").is_file()]
    assert shipped
    for directory in shipped:
        config, state = read_pretrained(directory)
        assert isinstance(config, dict) and "_integrity" not in config and state


def test_missing_files_give_the_from_pretrained_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory.*never downloads"):
        read_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_pretrained(tmp_path)
    _tiny(0).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors.*never pickle"):
        read_pretrained(tmp_path)


def test_other_entries_of_the_directory_are_kept(tmp_path):
    d = tmp_path / "d"
    _tiny(0).save_pretrained(d)
    (d / "notes.txt").write_text("mine")
    (d / "sub").mkdir()
    (d / "sub" / "x.bin").write_bytes(b"\x00\x01")
    os.symlink("notes.txt", d / "link")
    new = _tiny(1, depth=2)
    new.save_pretrained(d, extra_files={"denoiser.json": '{"sigma": 25}\n'})
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "denoiser.json", "link", "model.safetensors",
                                                   "notes.txt", "sub"]
    assert (d / "notes.txt").read_text() == "mine" and (d / "sub" / "x.bin").read_bytes() == b"\x00\x01"
    assert os.readlink(d / "link") == "notes.txt" and (d / "denoiser.json").read_text() == '{"sigma": 25}\n'
    assert _same(Tiny.from_pretrained(d), new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with pytest.raises(ValueError, match="extra_files"):
        new.save_pretrained(d, extra_files={"config.json": "{}"})


def test_saving_into_the_working_directory_keeps_it_usable(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path / "d")
    _tiny(0).save_pretrained(".")
    new = _tiny(1)
    new.save_pretrained(".")
    assert Path.cwd() == tmp_path / "d" and sorted(os.listdir(".")) == ["config.json", "model.safetensors"]
    assert _same(Tiny.from_pretrained("."), new)


def test_saving_through_a_symlink_updates_the_linked_directory(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "alias")
    new = _tiny(3)
    new.save_pretrained(tmp_path / "alias")
    assert (tmp_path / "alias").is_symlink() and _same(Tiny.from_pretrained(tmp_path / "real"), new)


def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_pair(tmp_path, monkeypatch):
    """Kill the process at every file operation of a save over an existing directory (with an
    entry of its own): it then loads as exactly the old or the new pair, the entry kept."""
    import safetensors.torch

    switch = KillSwitch(monkeypatch, extra=((safetensors.torch, "save_file"),))
    old, new = _tiny(0, depth=1), _tiny(1, depth=2)

    def prepare(d):
        old.save_pretrained(d)
        (d / "notes.txt").write_text("mine")

    prepare(tmp_path / "probe" / "d")
    switch.arm(None)
    new.save_pretrained(tmp_path / "probe" / "d")
    switch.revive()
    count = switch.calls
    assert count >= 6 and {"save_file", "fsync", "replace", "rmtree"} <= set(switch.log)
    seen = set()
    for at in range(count):
        parent = tmp_path / f"run{at}"
        prepare(parent / "d")
        switch.arm(at)
        with pytest.raises(Killed):
            new.save_pretrained(parent / "d")
        switch.revive()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = Tiny.from_pretrained(parent / "d")
        assert all(issubclass(w.category, IntegrityWarning) for w in caught)
        assert _same(loaded, old) or _same(loaded, new), f"killed at operation {at}"
        found = parent / "d" if (parent / "d").is_dir() else next(parent.glob(".d.*"))
        assert (found / "notes.txt").read_text() == "mine"
        seen.add(("new" if _same(loaded, new) else "old", bool(caught)))
        new.save_pretrained(parent / "d")  # the next save restores order
        assert sorted(p.name for p in parent.iterdir()) == ["d"]
        assert sorted(p.name for p in (parent / "d").iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert {("old", False), ("new", False)} <= seen and any(w for _, w in seen)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=oct)
def test_saved_files_take_their_permissions_from_the_umask(tmp_path, umask):
    """A model or checkpoint shared with a group is readable as the umask allows: the weights
    (which safetensors alone creates owner-only) get the same mode as the JSON beside them."""
    from energycrf.training import checkpoint as ck

    old = os.umask(umask)
    try:
        Tiny().save_pretrained(tmp_path / "model")
        ck.save_checkpoint(tmp_path / "ckpt", {"model": nn.Linear(2, 2)}, {"step": 1})
    finally:
        os.umask(old)
    modes = {f"{d}/{p.name}": p.stat().st_mode & 0o777 for d in ("model", "ckpt") for p in (tmp_path / d).iterdir()}
    assert any(name.endswith(".safetensors") for name in modes) and any(name.endswith(".json") for name in modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
