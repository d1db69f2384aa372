"""A stop request (SIGTERM / SIGINT) to scripts/train_denoisers_full.py is never lost: not when it
comes during the last step of a chunk of steps (``Trainer.fit`` then ends as planned and says it
was asked to stop), nor between two chunks (validation, plotting), where it used to kill the
process. The run stops with a checkpoint and its "stopped" line, and a resume ends where an
uninterrupted run does."""

from __future__ import annotations

import json
import os
import signal

import pytest
from safetensors.torch import load_file

from tests.apps.tiny_denoise_runs import run_tiny


@pytest.fixture
def sigterm_guard():
    """Without the fix a SIGTERM outside the trainer would end pytest: record it here instead."""
    seen = []
    old = signal.signal(signal.SIGTERM, lambda *a: seen.append(True))
    yield seen
    signal.signal(signal.SIGTERM, old)


def _lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def _steps(lines):
    return [r["step"] for r in lines if "step" in r and "phase" in r and "validation" not in r]


@pytest.mark.parametrize("when", ["last step of a chunk", "validation"])
def test_a_stop_request_is_never_lost(tmp_path, load_script, capsys, monkeypatch, sigterm_guard, when):
    mod = load_script("scripts/train_denoisers_full.py")
    run_tiny(mod, "staged", tmp_path / "whole")
    whole = _lines(capsys)
    if when == "validation":  # the first validation (greedy-1, step 4) is between two fit calls
        real = mod.validate

        def validate(*args, **kw):
            os.kill(os.getpid(), signal.SIGTERM)
            monkeypatch.setattr(mod, "validate", real)
            return real(*args, **kw)

        monkeypatch.setattr(mod, "validate", validate)
        stopped_at = 4
    else:  # the 2nd training step is the last of the first chunk (checkpoint_every=2)
        real_forward = mod.phase_forward

        def phase_forward(den, phase, dtype):
            forward, view = real_forward(den, phase, dtype)
            calls = [0]

            def counted(model, x, c):
                calls[0] += 1
                if calls[0] == 2 and phase["name"] == "greedy-1":
                    os.kill(os.getpid(), signal.SIGTERM)
                return forward(model, x, c)

            return counted, view

        monkeypatch.setattr(mod, "phase_forward", phase_forward)
        stopped_at = 2
    run_tiny(mod, "staged", tmp_path / "run")
    lines = _lines(capsys)
    assert not sigterm_guard  # the script's own handler took the signal
    assert _steps(lines) == list(range(2, stopped_at + 1, 2)) and lines[-1] == {"stopped": "greedy-1",
                                                          "resume": "the same command with --resume"}
    assert not (tmp_path / "run" / "final").exists()
    monkeypatch.undo()
    run_tiny(mod, "staged", tmp_path / "run", "--resume")
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bit-identical to the whole run
    assert _steps(whole)[-1] == 4 and "done" in _lines(capsys)[-1]
