"""scripts/denoise_runs.sh: every spec checked before any run starts (an empty one too; only no
arguments means the default runs), a sigma in its shortest spelling (25.0 is the run of 25), RUNS
relative to the caller's folder, --status (also of a missing or empty folder), a fromSIGMA run that
resumes from its checkpoint when its start is gone, and a run that exits at once reported as such."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _runs_sh(tmp_path, *specs, cwd=None, **env):
    env = {**os.environ, "RUNS": str(tmp_path / "runs"), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(REPO_ROOT / "scripts" / "denoise_runs.sh"), *specs], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("specs", [["bogus:25"], ["staged"], ["staged:0"], ["foe:-5"], ["staged:abc"],
                                   ["staged:25:fromx"], ["staged:25:from25"], ["staged:25:"], ["--stat"],
                                   ["staged:25", "bogus:25"], ["foe:25 staged"], [""], [" "], ["staged:25", ""],
                                   ["staged:25\nbogus:3"], ["staged:25.0:from25"], ["foe:050:from50.00"]])
def test_runs_script_checks_every_spec_before_it_starts_anything(tmp_path, specs):
    (tmp_path / "runs").mkdir()
    out = _runs_sh(tmp_path, *specs, PYTHON="false")  # a spec let through starts no real run
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("denoise_runs.sh: error: run spec: expected"), out
    assert not any((tmp_path / "runs").iterdir())


def _lines(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def test_runs_script_status_lists_every_run_and_its_last_step(tmp_path):
    runs = tmp_path / "runs"
    direct = runs / "staged-sigma25"  # started directly: no stdout.log, the phases' logs
    _lines(direct / "run.json", [{"settings": {}}])
    _lines(direct / "greedy-1" / "log.jsonl", [{"step": 2, "loss": 0.5}, {"step": 4, "loss": 0.4}])
    _lines(direct / "greedy-2" / "log.jsonl", [{"step": 2, "loss": 0.3}])
    os.utime(direct / "greedy-1" / "log.jsonl", (1e9, 1e9))  # greedy-2 is the newer one
    _lines(direct / "validation.jsonl", [{"global_step": 4, "mean_psnr": 27.5}])
    stopped = runs / "foe-sigma25"  # by denoise_runs.sh, then stopped
    step = {"phase": "train", "step": 40, "loss": 0.1, "s_per_step": 31.0}
    _lines(stopped / "run.json", [{"settings": {}}])
    _lines(stopped / "stdout.log", [{"started": str(stopped), "pid": 1}, step,
                                    {"validation": {"global_step": 40}}, {"stopped": "train", "resume": "..."}])
    _lines(stopped / "validation.jsonl", [{"global_step": 40, "mean_psnr": 28.1}])
    failed = runs / "staged-sigma15"
    _lines(failed / "run.json", [{"settings": {}}])
    _lines(failed / "stdout.log", ["train_denoisers_full.py: error: --resume: expected ..."])
    (runs / "foe-sigma50" / "final").mkdir(parents=True)
    _lines(runs / "foe-sigma50" / "run.json", [{"settings": {}}])
    (runs / "not-a-run").mkdir()
    out = _runs_sh(tmp_path, "--status")
    assert out.returncode == 0 and out.stderr == "", out
    blocks = {b.split("\n")[0].split(": ")[0]: b.strip().split("\n")[1:] for b in out.stdout.split("== ")[1:]}
    assert set(blocks) == {str(d) for d in (direct, stopped, failed, runs / "foe-sigma50")}, out.stdout
    assert blocks[str(direct)] == ['progress: greedy-2/log.jsonl: {"step": 2, "loss": 0.3}',
                                   'validation: {"global_step": 4, "mean_psnr": 27.5}']
    assert blocks[str(stopped)] == [f"progress: {json.dumps(step)}",
                                    'validation: {"global_step": 40, "mean_psnr": 28.1}']
    assert f"== {stopped}: stopped" in out.stdout and f"== {direct}: not running" in out.stdout
    assert f"== {failed}: not running, its last output: train_denoisers_full.py: error: --resume" in out.stdout
    assert f"== {runs / 'foe-sigma50'}: finished" in out.stdout


def test_runs_script_reports_a_run_that_exits_at_once(tmp_path, load_script, capsys):
    """A run folder started with other --set settings: the script's one-line refusal, not 'started'."""
    mod = load_script("scripts/train_denoisers_full.py")
    run = tmp_path / "runs" / "staged-sigma25"
    assert mod.main(["--model", "staged", "--sigma", "25", "--run-dir", str(run), "--set", "lr=0.5",
                     "--max-steps-now", "0", "--no-progress"]) == 0
    out = _runs_sh(tmp_path, "staged:25")
    assert out.returncode == 2 and "started" not in out.stdout, out
    assert out.stderr == (f"{run}: not started (exit status 2): train_denoisers_full.py: error: --resume: expected "
                          f"the settings the run in {str(run)!r} was started with, got other settings: recipe "
                          "lr=0.002 (run.json: 0.5); resume it with its own command (run.json), or start a new run "
                          "in another folder\n")
    assert not (run / "pid").exists()


@pytest.mark.parametrize("behaviour", ["starts", "fails"])
def test_runs_script_says_started_once_the_run_has_checked_its_settings(tmp_path, behaviour):
    """A stand-in for python: one that says {"started": ..., "pid": N} and goes on is 'started'; one
    that exits with an error is reported with its last line and its exit status."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n" + ('echo "{\\"started\\": \\"x\\", \\"pid\\": $$}"\nexec sleep 30\n'
                                     if behaviour == "starts" else 'echo "boom: it failed" >&2\nexit 3\n'))
    fake.chmod(0o755)
    (tmp_path / "runs").mkdir()
    out = _runs_sh(tmp_path, "foe:25", PYTHON=str(fake))
    run = tmp_path / "runs" / "foe-sigma25"
    if behaviour == "starts":
        pid = int((run / "pid").read_text())
        os.kill(pid, signal.SIGTERM)
        assert out.returncode == 0 and out.stdout == f"{run}: started (pid {pid})\n", out
    else:
        assert out.returncode == 3 and out.stdout == "", out
        assert out.stderr == f"{run}: not started (exit status 3): boom: it failed\n"


def _fake_python(tmp_path):
    """A stand-in for python that writes its arguments to calls.log and says it started."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls.log"}\n'
                    'echo "{\\"started\\": \\"x\\", \\"pid\\": $$}"\n')
    fake.chmod(0o755)
    return str(fake)


def _calls(tmp_path):
    path = tmp_path / "calls.log"
    return path.read_text().splitlines() if path.is_file() else []


def test_runs_script_writes_a_sigma_in_its_shortest_spelling(tmp_path):
    (tmp_path / "runs").mkdir()
    out = _runs_sh(tmp_path, "staged:25.0 staged:025", "foe:.50", "foe:7.50", PYTHON=_fake_python(tmp_path))
    assert out.returncode == 0 and out.stderr == "", out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["foe-sigma0.5", "foe-sigma7.5",
                                                                      "staged-sigma25"]
    calls = _calls(tmp_path)
    assert len(calls) == 3 and "--model staged --sigma 25 " in calls[0] and "--sigma 0.5 " in calls[1], calls


def test_runs_script_takes_paths_relative_to_the_callers_folder(tmp_path):
    here = tmp_path / "here"
    run = here / "r8" / "foe-sigma25"
    _lines(run / "run.json", [{"settings": {}}])
    out = _runs_sh(tmp_path, "--status", cwd=here, RUNS="r8")  # first: on the old code nothing is started
    assert out.returncode == 0 and out.stdout.startswith(f"== {run}: not running\n"), out
    fake = _fake_python(tmp_path)
    out = _runs_sh(tmp_path, "foe:25", cwd=here, RUNS="r8", PYTHON=fake)
    assert out.returncode == 0 and out.stdout.startswith(f"{run}: started"), out
    (run / "final").mkdir()
    out = _runs_sh(tmp_path, "foe:25", cwd=here, RUNS="r8", EXPORT="shipped", PYTHON=fake)
    assert out.returncode == 0 and f"--export {here}/shipped/denoise-sigma25/foe" in _calls(tmp_path)[-1], out


def test_runs_script_status_of_a_folder_without_runs(tmp_path):
    out = _runs_sh(tmp_path, "--status")  # tmp_path/runs does not exist
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr == f"denoise_runs.sh: error: RUNS: expected a folder of runs, got '{tmp_path / 'runs'}' (no " \
                         "such folder)\n"
    (tmp_path / "runs" / "not-a-run").mkdir(parents=True)
    out = _runs_sh(tmp_path, "--status")
    assert out.returncode == 0 and out.stdout == f"no runs in {tmp_path / 'runs'}\n" and out.stderr == "", out


def test_runs_script_resumes_a_from_run_with_a_checkpoint_when_its_start_is_gone(tmp_path):
    """staged-sigma25/final is gone (or not there yet): staged:15:from25 resumes from its checkpoint,
    without --init; foe:15:from25, with no checkpoint, waits for its start; with the start there,
    both get --init."""
    runs = tmp_path / "runs"
    _lines(runs / "staged-sigma15" / "run.json", [{"settings": {}}])
    _lines(runs / "staged-sigma15" / "joint" / "latest", ["step-0000050"])
    fake = _fake_python(tmp_path)
    out = _runs_sh(tmp_path, "staged:15:from25", "foe:15:from25", PYTHON=fake)
    assert out.returncode == 0 and out.stderr == "", out
    assert out.stdout.splitlines()[1] == f"{runs / 'foe-sigma15'}: waits for {runs / 'foe-sigma25' / 'final'}", out
    assert len(_calls(tmp_path)) == 1 and "--init" not in _calls(tmp_path)[0]
    assert "--set greedy_steps=0 --set joint_steps=600" in _calls(tmp_path)[0]
    (runs / "foe-sigma15" / "final").mkdir(parents=True)  # finished with no steps: its export needs the start
    out = _runs_sh(tmp_path, "foe:15:from25", PYTHON=fake, EXPORT=str(tmp_path / "shipped"))
    assert out.returncode == 1 and out.stderr.startswith(f"{runs / 'foe-sigma15'}: finished, not exported"), out
    assert _runs_sh(tmp_path, "foe:15:from25", PYTHON=fake).stdout == f"{runs / 'foe-sigma15'}: finished\n"
    (runs / "foe-sigma15" / "final").rmdir()
    for model in ("staged", "foe"):
        (runs / f"{model}-sigma25" / "final").mkdir(parents=True)
    out = _runs_sh(tmp_path, "staged:15:from25", "foe:15:from25", PYTHON=fake)
    assert out.returncode == 0 and len(_calls(tmp_path)) == 3, out
    assert all(f"--init {runs}/" in call for call in _calls(tmp_path)[1:])

