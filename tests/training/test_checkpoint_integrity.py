"""Checkpoint files: checksums, clear errors naming the damaged file, old checkpoints, killed saves."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import safetensors.torch
import torch
from safetensors.torch import save_file

from energycrf.training import checkpoint as ck

from ._faults import Killed, KillSwitch


def _modules(seed=0):
    torch.manual_seed(seed)
    return {"model": torch.nn.Linear(4, 3), "discriminator": torch.nn.Linear(3, 1)}


def _state(step):
    return {"step": step, "moments": torch.arange(5.0) * step, "nested": {"lr": 0.1 * step}}


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's data: still a valid safetensors file
    path.write_bytes(bytes(data))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_v1(directory, modules, state):
    """A checkpoint exactly as written before checksums existed (no "integrity" entry)."""
    directory.mkdir(parents=True)
    for name, module in modules.items():
        save_file({k: v.detach().clone() for k, v in module.state_dict().items()},
                  str(directory / f"{name}.safetensors"))
    tensors, meta = ck.flatten_state(state)
    save_file(tensors, str(directory / "state.safetensors"))
    (directory / "state.json").write_text(json.dumps(
        {"format": "energycrf-checkpoint-v1", "modules": sorted(modules), "state": meta}, indent=1))


def _same_state(a, b):
    assert a["step"] == b["step"] and a["nested"] == b["nested"] and torch.equal(a["moments"], b["moments"])


@pytest.mark.parametrize("name", ["model", "discriminator", "state"])
def test_changed_bytes_in_a_tensor_file_are_refused_by_name(tmp_path, name):
    ck.save_checkpoint(tmp_path / "c", _modules(), _state(2))
    assert set(json.loads((tmp_path / "c" / "state.json").read_text())["integrity"]["sha256"]) == {
        "model.safetensors", "discriminator.safetensors", "state.safetensors"}
    _flip_last_byte(tmp_path / "c" / f"{name}.safetensors")
    with pytest.raises(ck.IntegrityError, match=re.escape(str(tmp_path / "c" / f"{name}.safetensors")) + ".*sha256"):
        ck.load_checkpoint(tmp_path / "c")


def test_changed_json_is_refused_by_name(tmp_path):
    ck.save_checkpoint(tmp_path / "c", _modules(), _state(2))
    path = tmp_path / "c" / "state.json"
    doc = json.loads(path.read_text())
    doc["state"]["step"] = 7  # still valid JSON, still a plausible value
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*digest"):
        ck.load_checkpoint(tmp_path / "c")


@pytest.mark.parametrize("name", ["model.safetensors", "discriminator.safetensors", "state.safetensors"])
def test_truncated_tensor_file_names_its_path(tmp_path, name):
    ck.save_checkpoint(tmp_path / "c", _modules(), _state(2))
    _truncate(tmp_path / "c" / name)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "c" / name))):
        ck.load_checkpoint(tmp_path / "c")
    # without checksums (an old checkpoint) the parser's error is reported with the path too
    _write_v1(tmp_path / "old", _modules(), _state(2))
    _truncate(tmp_path / "old" / name)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "old" / name)) + ".*truncated"):
        ck.load_checkpoint(tmp_path / "old")


@pytest.mark.parametrize("text", ["{not json", '{"format": "energycrf-checkpoint-v1", "mod', "\udcff"])
def test_corrupt_state_json_names_its_path(tmp_path, text):
    ck.save_checkpoint(tmp_path / "c", _modules(), _state(2))
    path = tmp_path / "c" / "state.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*JSON"):
        ck.load_checkpoint(tmp_path / "c")


def test_malformed_manifest_entries_are_refused(tmp_path):
    _write_v1(tmp_path / "c", _modules(), _state(2))
    path = tmp_path / "c" / "state.json"
    doc = json.loads(path.read_text())
    for bad, field in (({**doc, "modules": "model"}, "modules"), ({**doc, "state": [1]}, "state"),
                       ({**doc, "integrity": {"sha256": 3}}, "integrity"), ([doc], "object")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=re.escape(str(path)) + f".*{field}"):
            ck.load_checkpoint(tmp_path / "c")


def test_non_finite_weights_are_refused_on_save_and_on_load(tmp_path):
    mods = _modules()
    with torch.no_grad():
        mods["discriminator"].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="discriminator.*'bias'.*non-finite"):
        ck.save_checkpoint(tmp_path / "c", mods, _state(2))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    _write_v1(tmp_path / "old", mods, _state(2))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "old" / "discriminator.safetensors"))
                       + ".*'bias'.*non-finite"):
        ck.load_checkpoint(tmp_path / "old")


def test_module_names_that_would_collide_with_the_state_are_refused(tmp_path):
    for name in ("state", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="modules"):
            ck.save_checkpoint(tmp_path / "c", {name: torch.nn.Linear(1, 1)}, {})


def test_a_checkpoint_without_checksums_still_loads(tmp_path):
    mods = _modules()
    _write_v1(tmp_path / "step-0000003", mods, _state(3))
    assert ck.latest_checkpoint(tmp_path) == tmp_path / "step-0000003"
    modules, state = ck.load_checkpoint(tmp_path / "step-0000003")
    _same_state(state, _state(3))
    for name, m in mods.items():
        assert all(torch.equal(modules[name][k], v) for k, v in m.state_dict().items())


def _content(directory):
    modules, state = ck.load_checkpoint(directory)
    return modules["model"]["weight"], state


def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch):
    """Re-save a checkpoint over an existing one; kill the process at every file operation."""
    switch = KillSwitch(monkeypatch, extra=((safetensors.torch, "save_file"),))
    old_mods, new_mods = _modules(0), _modules(1)
    old_w, new_w = old_mods["model"].weight.detach().clone(), new_mods["model"].weight.detach().clone()
    ck.save_checkpoint(tmp_path / "probe" / "c", old_mods, _state(1))
    switch.arm(None)  # count the operations of a save over an existing checkpoint
    ck.save_checkpoint(tmp_path / "probe" / "c", new_mods, _state(2))
    switch.revive()
    count = switch.calls
    assert count >= 8 and {"replace", "fsync", "save_file", "rmtree"} <= set(switch.log)
    seen = set()
    for at in range(count + 1):
        out = tmp_path / f"run{at}"
        ck.save_checkpoint(out / "c", old_mods, _state(1))
        switch.arm(at)
        if at < count:
            with pytest.raises(Killed):
                ck.save_checkpoint(out / "c", new_mods, _state(2))
        else:
            ck.save_checkpoint(out / "c", new_mods, _state(2))
        switch.revive()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            weight, state = _content(out / "c")
        assert all(issubclass(w.category, ck.IntegrityWarning) for w in caught)
        if state["step"] == 1:
            assert torch.equal(weight, old_w)
            _same_state(state, _state(1))
        else:
            assert torch.equal(weight, new_w)
            _same_state(state, _state(2))
        seen.add((state["step"], bool(caught)))
        # the next save restores order: one directory, nothing stale beside it
        ck.save_checkpoint(out / "c", new_mods, _state(3))
        assert [p.name for p in out.iterdir()] == ["c"]
        assert _content(out / "c")[1]["step"] == 3
    # every outcome happened: old, new, and the copy read from beside a missing directory
    assert {(1, False), (2, False)} <= seen and any(w for _, w in seen)
