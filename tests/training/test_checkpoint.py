import json
import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from energycrf.training import checkpoint as ck

leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                   st.floats(allow_nan=False, width=64), st.text(max_size=5),
                   st.builds(lambda n: torch.randn(n, dtype=torch.float64), st.integers(0, 4)))
trees = st.recursive(leaves, lambda ch: st.one_of(
    st.lists(ch, max_size=3),
    st.tuples(ch, ch),
    st.dictionaries(st.text(min_size=1, max_size=4).filter(lambda k: not k.startswith("__")), ch, max_size=3),
    st.dictionaries(st.integers(0, 9), ch, max_size=3)), max_leaves=12)


def _same(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    else:
        assert a == b


@given(trees)
def test_flatten_roundtrip_keeps_types_and_values(tree):
    tensors, meta = ck.flatten_state(tree)
    json.dumps(meta)  # JSON-able
    _same(ck.unflatten_state(json.loads(json.dumps(meta)), tensors), tree)


def test_flatten_refuses_objects_that_would_need_pickle():
    with pytest.raises(TypeError, match="pickle"):
        ck.flatten_state({"a": object()})


def _trained_adamw(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(7, 5)).square().sum().backward()
        opt.step()
    return model, opt


def test_optimizer_state_roundtrip_gives_identical_next_step(tmp_path):
    model, opt = _trained_adamw()
    ck.save_checkpoint(tmp_path / "c", {"model": model}, {"optimizer": opt.state_dict()})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["model.safetensors", "state.json",
                                                                 "state.safetensors"]
    mods, st = ck.load_checkpoint(tmp_path / "c")
    model2 = torch.nn.Linear(5, 3)
    model2.load_state_dict(mods["model"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    opt2.load_state_dict(st["optimizer"])
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    x = torch.randn(4, 5)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_rng_state_roundtrip():
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    random.random(); np.random.randn(); torch.randn(2)
    tensors, meta = ck.flatten_state(ck.capture_rng_state())
    expect = (random.random(), np.random.randn(3), torch.randn(3))
    random.seed(9); np.random.seed(9); torch.manual_seed(9)
    ck.restore_rng_state(ck.unflatten_state(json.loads(json.dumps(meta)), tensors))
    got = (random.random(), np.random.randn(3), torch.randn(3))
    assert got[0] == expect[0] and np.array_equal(got[1], expect[1]) and torch.equal(got[2], expect[2])


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    ck.save_checkpoint(tmp_path / "c", {"model": model}, {"step": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_safetensors", boom)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "c", {"model": model}, {"step": 2})
    after = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary left behind
    assert ck.load_checkpoint(tmp_path / "c")[1] == {"step": 1}


def test_latest_checkpoint_prefers_pointer_then_highest_step(tmp_path):
    assert ck.latest_checkpoint(tmp_path) is None
    for s in (3, 12):
        ck.save_checkpoint(tmp_path / f"step-{s:07d}", {}, {"step": s})
    assert ck.latest_checkpoint(tmp_path).name == "step-0000012"
    ck.atomic_write_text(tmp_path / "latest", "step-0000003\n")
    assert ck.latest_checkpoint(tmp_path).name == "step-0000003"


def test_load_rejects_foreign_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory"):
        ck.load_checkpoint(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an energycrf checkpoint"):
        ck.load_checkpoint(tmp_path)
