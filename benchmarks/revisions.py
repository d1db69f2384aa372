"""Before and after: one benchmark script run on two revisions of the package, alternately.

A change that must not slow things down (a refactor, say) is measured against the revision
before it in one run: each round runs the benchmark once on each revision, in turn (the
order swapped every round), so that load from other processes falls on both alike. Each
revision runs from its own git worktree (``git worktree add --detach``, removed afterwards)
with ``PYTHONPATH`` pointing at it, so its own ``energycrf`` and its own copy of the script
run.

    python benchmarks/revisions.py --base b9f01b5 --rounds 2 \\
        --grep "fastest|latent|camera" -- solvers_benchmark.py --no-memory
    python benchmarks/revisions.py --base b9f01b5 -- grad_vs_autograd.py --repeats 30

Prints the lines of each run's output that match ``--grep`` (all lines without it), under a
heading naming the revision and round, and keeps every full output in ``--out``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from machine_info import cpu_name  # benchmarks/ is the script's folder

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def _run(tree: Path, script: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, str(tree / "benchmarks" / script[0]), *script[1:]], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script[0]} failed in {tree} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the revision before (a commit, tag or branch)")
    ap.add_argument("--new", default=None, help="the revision after (default: the working tree as it is)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--grep", default=None, help="a regular expression: print only the matching lines")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "energycrf-revisions")
    ap.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS]: a script of benchmarks/")
    args = ap.parse_args(argv)
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not script or not (REPO / "benchmarks" / script[0]).is_file():
        ap.error(f"script: expected the name of a script in benchmarks/, got {script[:1]}")
    if args.rounds < 1:
        ap.error(f"--rounds: expected a positive number, got {args.rounds}")
    pattern = re.compile(args.grep) if args.grep else None
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="energycrf-revisions-") as scratch:
        trees = {}
        for label, rev in (("before", args.base), ("after", args.new)):
            if rev is None:
                trees[label] = (REPO, f"working tree at {_git('rev-parse', '--short', 'HEAD')}")
                continue
            path = Path(scratch) / label
            _git("worktree", "add", "--detach", "-q", str(path), rev)
            trees[label] = (path, _git("rev-parse", "--short", rev))
        try:
            print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average "
                  f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
            print(f"script: {' '.join(script)}")
            for label, (_, rev) in trees.items():
                print(f"{label}: {rev}")
            for r in range(args.rounds):
                order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
                for label in order:
                    tree, rev = trees[label]
                    output = _run(tree, script)
                    (args.out / f"{label}-{r}.txt").write_text(output)
                    print(f"\n## {label} ({rev}), round {r + 1}, load average {os.getloadavg()[0]:.2f}")
                    for line in output.splitlines():
                        if pattern is None or pattern.search(line):
                            print(line)
        finally:
            for label, (tree, _) in trees.items():
                if tree != REPO:
                    _git("worktree", "remove", "--force", str(tree))
    print(f"\nfull outputs: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
