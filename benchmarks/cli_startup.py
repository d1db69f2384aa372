"""Start-up time of the ``energycrf`` command: ``--help``, a command's ``--help`` and a usage error.

Each call is a fresh ``python -m energycrf ...`` process (what a user's shell starts), timed
from the start of the process to its exit; the calls take turns, round by round, and the
median and the minimum of ``--runs`` rounds are reported. The floor is the interpreter
alone (``python -c pass``); ``python -c "import torch"`` is what every call cost before
issue 23, when the router imported torch first; ``--before DIR`` also times ``energycrf
--help`` from an earlier checkout (``git archive <commit> | tar -x -C DIR``). The machine
line names the CPU, the cores and the load average before and after.

    python benchmarks/cli_startup.py --runs 20
    python benchmarks/cli_startup.py --runs 20 --before /tmp/energycrf-before
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

#: label -> arguments after ``python``; expected exit status
CALLS = {
    "python -c pass (the interpreter)": (["-c", "pass"], 0),
    "python -c 'import torch' (each call before)": (["-c", "import torch"], 0),
    "energycrf --help": (["-m", "energycrf", "--help"], 0),
    "energycrf denoise --help": (["-m", "energycrf", "denoise", "--help"], 0),
    "energycrf denoise missing.png -o out.png (usage error)": (["-m", "energycrf", "denoise", "missing.png", "-o",
                                                                "out.png"], 2),
    "energycrf compare-solvers --size 0 (usage error)": (["-m", "energycrf", "compare-solvers", "--size", "0"], 2),
}


def time_call(args: list[str], status: int, cwd: str, root: Path = REPO_ROOT) -> float:
    """Seconds of one fresh process ``python args`` with the package of ``root`` (checked to
    exit with ``status``)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != status:
        raise RuntimeError(f"python {' '.join(args)} exited with {proc.returncode}, expected {status}:\n{proc.stderr}")
    return seconds


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.system()} {platform.release()} {platform.machine()}, CPU: {cpu_name()}, {cores} logical "
            f"cores visible, Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="rounds (each call once per round; default 20)")
    parser.add_argument("--before", type=Path, default=None,
                        help="an earlier checkout of the repository: time its energycrf --help too")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs: expected an integer >= 1, got {args.runs}")
    calls = {label: (call, status, REPO_ROOT) for label, (call, status) in CALLS.items()}
    if args.before is not None:
        if not (args.before / "energycrf" / "cli.py").is_file():
            parser.error(f"--before: expected a checkout of this repository, got {str(args.before)!r}")
        calls[f"energycrf --help, from {args.before}"] = (["-m", "energycrf", "--help"], 0, args.before)
    load_before = os.getloadavg()
    times = {label: [] for label in calls}
    with tempfile.TemporaryDirectory() as cwd:
        for label, (call, status, root) in calls.items():  # one untimed warm-up each: the file cache
            time_call(call, status, cwd, root)
        for r in range(args.runs):
            labels = list(calls)
            labels = labels[r % len(labels):] + labels[:r % len(labels)]
            for label in labels:
                call, status, root = calls[label]
                times[label].append(time_call(call, status, cwd, root))
    load_after = os.getloadavg()
    print(f"Machine: {machine_line()}; load average (1, 5, 15 min) "
          f"{' '.join(f'{v:.2f}' for v in load_before)} before, {' '.join(f'{v:.2f}' for v in load_after)} after; "
          f"{args.runs} rounds, calls interleaved.\n")
    print("| call | median (s) | min (s) |")
    print("| --- | ---: | ---: |")
    rows = []
    for label, t in times.items():
        rows.append({"call": label, "median_s": statistics.median(t), "min_s": min(t)})
        print(f"| {label} | {statistics.median(t):.3f} | {min(t):.3f} |")
    return rows


if __name__ == "__main__":
    main()
