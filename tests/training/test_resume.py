"""Resuming a run: the trainer state is validated, checked for compatibility before anything is
replaced, damaged checkpoints are skipped with a warning, and a save killed at any point loses
nothing (the resumed run ends bit-identical to an uninterrupted one)."""

from __future__ import annotations

import copy
import json
import re

import pytest
import safetensors.torch
import torch

from energycrf.training import ImagePatches, TrainConfig, Trainer, read_log
from energycrf.training import checkpoint as ck
from energycrf.training import trainer as trainer_module

from ._faults import Killed, KillSwitch
from ._toy import ToyDenoiser, toy_images


def _cfg(tmp, **kw):
    base = dict(output_dir=str(tmp), max_steps=8, batch_size=4, lr=3e-3, warmup_steps=2,
                noise_mode="sigma", noise_level=(0.05, 0.2), log_every=1, progress=False, seed=11)
    base.update(kw)
    return TrainConfig(**base)


def _data():
    return ImagePatches(toy_images(3, 32), patch_size=12, length=40, seed=2)  # 10 batches / epoch


def _trainer(tmp, k=0, width=6, **kw):
    torch.manual_seed(100 * k)  # a fresh, differently initialised model each time
    return Trainer(ToyDenoiser(width=width), _cfg(tmp, **kw), _data())


def _run(tmp, stops, **kw):
    """Train in pieces: ``stops`` = steps per fresh Trainer (each one resumes)."""
    torch.manual_seed(0)
    for k, n in enumerate(stops):
        tr = _trainer(tmp, k, **kw)
        tr.fit(stop_after=n)
    return tr


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def _losses(tmp):
    return [(r["step"], r["loss"]) for r in read_log(tmp / "log.jsonl")]


def _edit_state_json(directory, edit, keep_checksums=False):
    path = directory / "state.json"
    doc = json.loads(path.read_text())
    if not keep_checksums:
        doc.pop("integrity", None)  # as a checkpoint written before checksums: only the fields are checked
    edit(doc["state"])
    path.write_text(json.dumps(doc))
    return path


def _set(*keys, value=None, delete=False):
    def edit(st):
        for k in keys[:-1]:
            st = st[k]
        if delete:
            del st[keys[-1]]
        else:
            st[keys[-1]] = value

    return edit


@pytest.mark.parametrize("edit, field", [
    (_set("step", value=-5), "step"),
    (_set("step", value="3"), "step"),
    (_set("step", value=2.5), "step"),
    (_set("step", value=True), "step"),
    (_set("step", delete=True), "step"),
    (_set("optimizer", delete=True), "optimizer"),
    (_set("optimizer", "param_groups", value={}), "optimizer.param_groups"),
    (_set("scheduler", value=[]), "scheduler"),
    (_set("rng", "torch", delete=True), "rng.torch"),
    (_set("rng", "python", "internal", value=[1, 2]), "rng.python.internal"),
    (_set("data", "global_batch", delete=True), "data.global_batch"),
    (_set("data", "global_batch", value=0), "data.global_batch"),
    (_set("data", "epoch", value=7), "data"),
])
def test_invalid_trainer_state_is_refused_naming_file_and_field(tmp_path, edit, field):
    _run(tmp_path / "run", [3])
    path = _edit_state_json(tmp_path / "run" / "step-0000003", edit)
    tr = _trainer(tmp_path / "other", 5)
    before = copy.deepcopy(tr.model.state_dict())
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(repr(field))):
        tr.load_checkpoint(tmp_path / "run" / "step-0000003")
    assert tr.step == 0 and all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_edited_state_json_with_checksums_is_refused(tmp_path):
    _run(tmp_path / "run", [3])
    path = _edit_state_json(tmp_path / "run" / "step-0000003", _set("step", value=-5), keep_checksums=True)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*digest"):
        _trainer(tmp_path / "other").load_checkpoint(tmp_path / "run" / "step-0000003")


def _snapshot(tr):
    return {
        "params": [p.detach().clone() for p in tr.model.parameters()],
        "optimizer": copy.deepcopy(tr.optimizer.state_dict()),
        "scheduler": copy.deepcopy(tr.scheduler.state_dict()),
        "scaler": copy.deepcopy(tr.scaler.state_dict()),
        "rng": torch.get_rng_state(),
        "step": tr.step,
        "history": copy.deepcopy(tr.history),
    }


def _assert_same(a, b):
    assert a["step"] == b["step"] and a["history"] == b["history"] and torch.equal(a["rng"], b["rng"])
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    assert a["scheduler"] == b["scheduler"] and a["scaler"] == b["scaler"]
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for k in oa["state"]:
        for name, v in oa["state"][k].items():
            assert torch.equal(v, ob["state"][k][name]) if torch.is_tensor(v) else v == ob["state"][k][name]


@pytest.mark.parametrize("change, match", [
    (dict(batch_size=2), "global batch"),
    (dict(width=8), "model"),  # every weight but conv2.bias has another shape
])
def test_a_refused_resume_replaces_no_state(tmp_path, change, match):
    _run(tmp_path / "a", [3])
    tr = _trainer(tmp_path / "b", 1, **change)
    tr.fit(stop_after=2)  # optimiser moments, scheduler position, history: all non-trivial
    before = _snapshot(tr)
    with pytest.raises(ValueError) as info:
        tr.load_checkpoint(tmp_path / "a" / "step-0000003")
    assert match in str(info.value) and str(tmp_path / "a" / "step-0000003") in str(info.value)
    _assert_same(_snapshot(tr), before)


def _damage_model(directory):
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:40])


def test_resume_skips_a_damaged_newest_checkpoint_with_a_warning(tmp_path):
    whole = _run(tmp_path / "whole", [8], checkpoint_every=2, keep_checkpoints=3)
    _run(tmp_path / "pieces", [6], checkpoint_every=2, keep_checkpoints=3)
    assert (tmp_path / "pieces" / "latest").read_text().strip() == "step-0000006"
    _damage_model(tmp_path / "pieces" / "step-0000006")
    torch.manual_seed(0)
    tr = _trainer(tmp_path / "pieces", 1, checkpoint_every=2, keep_checkpoints=3)
    with pytest.warns(ck.IntegrityWarning, match=r"step-0000006.*truncated.*resuming from .*step-0000004"):
        out = tr.fit()
    assert out["step"] == 8 and _same_weights(whole, tr)
    assert _losses(tmp_path / "pieces") == _losses(tmp_path / "whole")
    ck.load_checkpoint(tmp_path / "pieces" / "step-0000006")  # written again, whole


def test_resume_refuses_when_no_checkpoint_is_valid(tmp_path):
    _run(tmp_path / "run", [4], checkpoint_every=2, keep_checkpoints=3)
    for name in ("step-0000002", "step-0000004"):
        _damage_model(tmp_path / "run" / name)
    tr = _trainer(tmp_path / "run", 1, checkpoint_every=2, keep_checkpoints=3)
    with pytest.raises(ck.IntegrityError, match="step-0000004.*truncated.*step-0000002.*truncated.*resume=False"):
        tr.fit()
    assert tr.step == 0


def test_a_checkpoint_without_checksums_resumes_bit_identically(tmp_path):
    whole = _run(tmp_path / "whole", [7])
    _run(tmp_path / "pieces", [3])
    _edit_state_json(tmp_path / "pieces" / "step-0000003", lambda st: None)  # drop the checksums
    tr = _run(tmp_path / "pieces", [0, 4])
    assert tr.step == 7 and _same_weights(whole, tr)


def test_a_run_killed_at_any_point_of_a_checkpoint_save_loses_nothing(tmp_path, monkeypatch):
    """Kill the process at every file operation of the step-4 save; resume: the run ends as
    the uninterrupted one, weights bit for bit and the same logged losses."""
    kw = dict(max_steps=6, checkpoint_every=2, keep_checkpoints=1)
    whole = _run(tmp_path / "whole", [6], **kw)
    switch = KillSwitch(monkeypatch, extra=((safetensors.torch, "save_file"),))
    save = trainer_module.Trainer.save_checkpoint

    def save_and_maybe_die(self):
        if self.step == 4 and not switch.armed:
            switch.arm(switch.at)
        try:
            return save(self)
        finally:
            if not switch.dead:
                switch.revive()

    monkeypatch.setattr(trainer_module.Trainer, "save_checkpoint", save_and_maybe_die)
    switch.at = None  # a first run only counts the operations of that save
    _run(tmp_path / "count", [6], **kw)
    count = len(switch.log)
    assert count >= 12 and {"save_file", "fsync", "replace", "rmtree", "unlink"} <= set(switch.log)
    outcomes = set()
    for at in range(count):
        out = tmp_path / f"kill{at}"
        switch.at = at
        with pytest.raises(Killed):
            _run(out, [6], **kw)
        switch.revive()
        switch.at = None
        pointer = (out / "latest").read_text().strip() if (out / "latest").is_file() else None
        outcomes.add(pointer)
        torch.manual_seed(0)
        tr = _trainer(out, 1, **kw)
        tr.fit()
        assert tr.step == 6 and _same_weights(whole, tr), f"killed at operation {at}"
        assert _losses(out) == _losses(tmp_path / "whole"), f"killed at operation {at}"
        # what the kill left behind is swept by the next complete save
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "latest", "log.jsonl", "loss_curve.png",
                                                         "step-0000006"], f"killed at operation {at}"
    assert outcomes == {"step-0000002", "step-0000004"}  # killed before and after the new pointer
