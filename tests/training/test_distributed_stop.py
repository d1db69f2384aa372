"""Stopping a torchrun / DDP run: the ranks agree on the step to stop after, one final
checkpoint is written, the workers do not outlive their launcher, and a NaN on one rank
stops or skips on all of them.

Every multi-process run here is bounded in time (:mod:`._ddp`): a deadlock fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from energycrf.training import read_log

from ._ddp import free_port, gone, kill_all, spawn
from ._toy import ddp_nonfinite_worker, ddp_stop_worker

STEPS = 7


@pytest.mark.parametrize("first", [0, 1])
def test_sigterm_reaching_the_ranks_at_different_steps_stops_both_after_the_same_step(tmp_path, first):
    """Rank ``first`` is signalled during step 3, the other would be during step 5: both stop
    after step 3, rank 0 writes the one final checkpoint, and resuming from it ends bit-identical
    to the uninterrupted run (dropout included)."""
    stop_at = {first: 3, 1 - first: 5}
    spawn(ddp_stop_worker, (2, free_port(), str(tmp_path), stop_at, STEPS), nprocs=2, timeout=90)
    reports = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["stopped"]["step"] for r in reports] == [3, 3]
    assert reports[0]["stopped"]["checkpoint"].endswith("step-0000003")
    assert reports[1]["stopped"]["checkpoint"] is None  # rank 0 writes
    assert reports[0]["after_stop"] == ["config.json", "latest", "log.jsonl", "loss_curve.png", "step-0000003"]
    assert [r["resumed"]["step"] for r in reports] == [STEPS, STEPS]

    def weights(name):
        d = tmp_path / name
        return load_file(str(d / (d / "latest").read_text().strip() / "model.safetensors"))

    whole, resumed = weights("whole"), weights("stopped")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_workers_exit_when_torchrun_is_killed(tmp_path):
    """``kill -9`` of torchrun: its workers notice, stop after the same step, write the final
    checkpoint and exit (they would otherwise train on, orphaned, until ``max_steps``), without
    aborting on the way out."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    log = open(tmp_path / "torchrun.log", "wb")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(Path(__file__).with_name("_torchrun_worker.py")), str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"running-{r}").exists() for r in (0, 1)):
            assert proc.poll() is None, f"torchrun exited early:\n{(tmp_path / 'torchrun.log').read_text()}"
            assert time.monotonic() < deadline, "the workers did not start within 60 s"
            time.sleep(0.1)
        pids = [int((tmp_path / f"pid-{r}").read_text()) for r in (0, 1)]
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 30
        while not all(gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(gone(p) for p in pids), "the workers outlived torchrun"
        steps = [json.loads((tmp_path / f"done-{r}.json").read_text())["step"] for r in (0, 1)]
        assert steps[0] == steps[1] >= 3
        assert (tmp_path / "run" / "latest").read_text().strip() == f"step-{steps[0]:07d}"
        log.flush()
        printed = (tmp_path / "torchrun.log").read_text(errors="replace")
        assert "terminate called" not in printed, f"a worker aborted while exiting:\n{printed}"
    finally:
        kill_all(pids)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_a_nan_on_one_rank_stops_or_skips_on_every_rank(tmp_path):
    """The ranks agree on a non-finite batch or loss: all raise (no rank is left waiting in
    the gradient all-reduce), or all skip the same batches."""
    spawn(ddp_nonfinite_worker, (2, free_port(), str(tmp_path)), nprocs=2, timeout=90)
    r0, r1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["stop"]["step"] == r1["stop"]["step"] == 2
    assert "step 3 (epoch 0, batch 2 of the epoch)" in r0["stop"]["error"]
    assert "an input on rank 1 holds NaN or inf" in r0["stop"]["error"]
    assert "input 'x' has 1 of 288 entries NaN or inf" in r1["stop"]["error"]
    assert r0["skip"] == r1["skip"] == {"step": 6, "skipped": 2}
    log = read_log(tmp_path / "skip" / "log.jsonl")
    assert [(r["step"], r.get("nonfinite")) for r in log if "nonfinite" in r] == [(2, "input on rank 1"),
                                                                                  (4, "loss")]
