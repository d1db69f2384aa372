"""The run's ``log.jsonl`` and its loss-curve picture."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..io import IntegrityError

__all__ = ["read_log", "read_log_records", "plot_loss_curve"]


def read_log_records(path: str | Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a ``log.jsonl`` up to the first unreadable line, and what was wrong
    with that line (``None`` when every line reads)."""
    path = Path(path)
    if not path.is_file():
        return [], None
    records: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        return [], f"{str(path)!r} is not UTF-8 text ({e})"
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            return records, f"{str(path)!r} line {n} is not valid JSON ({e})"
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            return records, f"{str(path)!r} line {n} is not a log record with an integer 'step'"
        records.append(rec)
    return records, None


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (empty when it does not exist); a damaged line
    raises :class:`~energycrf.io.IntegrityError` naming the file and the line."""
    records, problem = read_log_records(path)
    if problem is not None:
        raise IntegrityError(problem)
    return records


def plot_loss_curve(log_path: str | Path, png_path: str | Path) -> Path | None:
    """Plot every ``loss*`` column of ``log.jsonl`` against the step (log scale) to a PNG."""
    recs = read_log(log_path)
    if not recs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # every loss column of the run (a batch skipped for non-finite values has a record without losses)
    keys = list(dict.fromkeys(k for r in recs for k in r if k.startswith("loss")))
    if "loss_adv" not in keys:  # loss == loss_main without the adversarial term
        keys = [k for k in keys if k != "loss_main"]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    window = max(1, len(recs) // 25)
    for i, k in enumerate(keys):
        steps = [r["step"] for r in recs if k in r]
        vals = [r[k] for r in recs if k in r]
        color = f"C{i}"
        ax.plot(steps, vals, color=color, lw=0.8, alpha=0.35)
        if window > 1:  # running mean over `window` records
            smooth = [sum(vals[max(0, j - window + 1): j + 1]) / len(vals[max(0, j - window + 1): j + 1])
                      for j in range(len(vals))]
            ax.plot(steps, smooth, color=color, lw=1.6, label=f"{k} (running mean of {window})")
        else:
            ax.plot([], [], color=color, label=k)
    if all(v > 0 for k in keys for v in (r.get(k, 1.0) for r in recs)):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
