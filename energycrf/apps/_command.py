"""What the ``energycrf`` commands share; imports nothing heavy (no torch, no numpy).

A command checks its arguments and paths before any work (:func:`check_input_file`,
:func:`check_output_file`, :func:`check_output_dir`), writes its outputs atomically
(:func:`atomic_path`: a temporary file in the same folder, renamed when complete), says
what it will do in one line (:func:`announce`) and shows one overall progress bar
(:func:`progress_bar`). A mistake in the arguments is a :class:`UsageError`, which names
the option, what was expected and what was got; the router (``energycrf/cli.py``)
prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["UsageError", "MissingDependency", "integer", "number", "one_of", "path", "check_input_file",
           "check_output_file", "check_output_dir", "check_out_of_inputs", "atomic_path", "threads_for_load",
           "announce", "progress_bar", "require", "plural", "check_non_quadratic_methods", "check_device"]


class UsageError(ValueError):
    """A wrong argument: ``"{option}: expected {expected}, got {got}"`` (exit status 2)."""

    def __init__(self, option: str, expected: str, got: str, hint: str | None = None):
        self.option = option
        super().__init__(f"{option}: expected {expected}, got {got}" + (f"; {hint}" if hint else ""))


class MissingDependency(RuntimeError):
    """An optional package the command needs is not installed (exit status 1)."""


# --------------------------------------------------------------------------- argument types
def integer(minimum: int | None = None, maximum: int | None = None, odd: bool = False):
    """An argparse ``type``: an int within ``[minimum, maximum]``, odd if ``odd``."""
    kind = "an odd integer" if odd else "an integer"
    if minimum is not None and maximum is not None:
        expected = f"{kind} from {minimum} to {maximum}"
    else:
        expected = (kind + (f" >= {minimum}" if minimum is not None else "")
                    + (f" <= {maximum}" if maximum is not None else ""))

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
                or (odd and value % 2 == 0)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(minimum: float | None = None, positive: bool = False):
    """An argparse ``type``: a finite float, ``> 0`` if ``positive``, else ``>= minimum``."""
    expected = "a number > 0" if positive else ("a number" if minimum is None else f"a number >= {minimum:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if (not math.isfinite(value) or (positive and value <= 0)
                or (minimum is not None and value < minimum)):
            raise argparse.ArgumentTypeError(f"expected a finite {expected[2:]}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def one_of(values: Iterable[str], what: str):
    """An argparse ``type``: one of ``values`` (for long lists that ``choices=`` would print in full)."""
    values = tuple(values)

    def parse(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"expected {what} ({', '.join(values)}), got {text!r}")
        return text

    parse.__name__ = "one_of"
    return parse


def path(text: str) -> Path:
    """An argparse ``type``: a non-empty path (``Path("")`` would be the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    return Path(text)


# --------------------------------------------------------------------------- paths
def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (by inode when both exist, else by resolved path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def check_input_file(path: str | os.PathLike, option: str, suffixes: Iterable[str] | None = None,
                     what: str = "a file") -> Path:
    """``path`` as a ``Path``: an existing, readable file with one of ``suffixes`` (any if ``None``)."""
    p, text = Path(path), os.fspath(path)  # the text as given: Path("") is "."
    if not p.exists():
        raise UsageError(option, f"an existing {what.removeprefix('a ').removeprefix('an ')}", f"{text!r} (no such file)")
    if not p.is_file():
        raise UsageError(option, what, f"{text!r} (not a file)")
    if suffixes is not None and p.suffix.lower() not in tuple(suffixes):
        raise UsageError(option, f"{what} ({', '.join(suffixes)})", repr(text))
    if not os.access(p, os.R_OK):
        raise UsageError(option, "a readable file", f"{text!r} (permission denied)")
    return p


def _writable_folder(folder: Path, option: str, shown: str | Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(option, "a path inside a folder", f"{str(shown)!r} ({str(existing)!r} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(option, "a path in a folder you can write to", f"{str(shown)!r}")


def check_output_file(path: str | os.PathLike, option: str, suffixes: Iterable[str], *,
                      inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> Path:
    """``path`` as a ``Path``, checked before any work: a known suffix, an existing folder that
    can be written to, not one of ``inputs``, and no existing file unless ``overwrite``."""
    p, text = Path(path), os.fspath(path)  # the text as given: Path("") is "."
    suffixes = tuple(suffixes)
    if not text:
        raise UsageError(option, "a file name", "''")
    if p.suffix.lower() not in suffixes:
        raise UsageError(option, f"a file name ending in {', '.join(suffixes)}", repr(text))
    if p.is_dir():
        raise UsageError(option, "a file name", f"{text!r} (a folder)")
    if not p.parent.is_dir():
        raise UsageError(option, "a file in an existing folder", f"{text!r} (no folder {str(p.parent)!r})")
    _writable_folder(p.parent, option, text)
    for source in inputs:
        if same_file(p, Path(source)):
            raise UsageError(option, "a file other than the input", f"{text!r}, the input itself")
    if os.path.lexists(p) and not overwrite:  # a dangling link is something the user made: not replaced unasked
        raise UsageError(option, "a file that does not exist yet",
                         f"{text!r}, which exists" + ("" if p.exists() else " (a broken symbolic link)"),
                         "pass --overwrite to replace it")
    return p


def check_output_dir(path: str | os.PathLike, option: str, names: Iterable[str], *,
                     inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> Path:
    """The output folder ``path`` (created when written), checked before any work: not a
    file, inside a folder that can be written to, and none of the files ``names`` that the
    command writes there is one of ``inputs`` or exists already (unless ``overwrite``)."""
    p, text = Path(path), os.fspath(path)  # the text as given: Path("") is "."
    if not text:
        raise UsageError(option, "a folder name", "''")
    if p.exists() and not p.is_dir():
        raise UsageError(option, "a folder", f"{text!r} (a file)")
    _writable_folder(p, option, text)
    targets = [p / name for name in names]
    for target in targets:
        for source in inputs:
            if same_file(target, Path(source)):
                raise UsageError(option, "a folder where no input would be overwritten",
                                 f"{text!r}, where {target.name} is the input {str(source)!r}")
    existing = [t.name for t in targets if t.exists()]
    if existing and not overwrite:
        raise UsageError(option, "a folder without earlier results", f"{text!r}, which holds {', '.join(existing)}",
                         "pass --overwrite to replace them, or choose another folder")
    return p


def check_out_of_inputs(path: str | os.PathLike, option: str, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output folder ``path`` that is, or is inside, one of the input folders
    ``inputs`` (``{option: path}``; ``None`` and missing paths are skipped): the command
    would write into its own inputs. Checked before any work, as ``energycrf train`` does."""
    out = Path(os.path.abspath(path)).resolve()
    for name, source in inputs.items():
        if source is None or not Path(source).exists():
            continue
        src = Path(os.path.abspath(source)).resolve()
        if out == src or src in out.parents:
            where = "an input itself" if out == src else "inside an input"
            raise UsageError(option, "a folder other than the inputs",
                             f"{os.fspath(path)!r}, {where} ({name} {os.fspath(source)!r})")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write to; rename it onto ``path`` when the
    block completes, remove it when the block fails, so ``path`` is either the old file or
    the complete new one. The temporary name ends with the same suffix (writers that pick
    the format by the suffix pick the same one)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# --------------------------------------------------------------------------- the run
def threads_for_load(default: int) -> tuple[int, str]:
    """Torch threads for this machine now, and why: the cores the 1-minute load average
    leaves idle, ``max(1, min(default, round(cores - load)))``. On a busy machine a second
    thread makes each small operation wait for a core; ``default`` is torch's own choice."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this system: torch's choice
        return default, f"torch's default ({cores} cores, load average unknown)"
    threads = max(1, min(default, round(cores - load)))
    return threads, f"load average {load:.1f} on {cores} cores"


def plural(n: int, word: str) -> str:
    """``"1 method"``, ``"3 methods"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def check_non_quadratic_methods(option: str, labels: list[str], names: list[str]) -> None:
    """Before any work: a :class:`UsageError` when none of the solver methods ``names`` (the
    registry names of ``labels``, as given) can minimise the command's energy, which has a
    Field of Experts term and is therefore not quadratic: each of them declares
    ``quadratic_only`` (imports the solver registry, and so torch)."""
    from ..solvers import SOLVERS, method_names

    refused = [(label, name) for label, name in zip(labels, names) if SOLVERS[name].quadratic_only]
    if not refused or len(refused) < len(names):
        return
    applicable = [n for n in method_names() if not SOLVERS[n].quadratic_only]
    why = "; ".join(f"{label} minimises quadratic energies only"
                    + (" (with a circular boundary)" if name == "fft" else "") for label, name in refused)
    raise UsageError(option, f"a method for non-quadratic energies, one of {', '.join(applicable)}",
                     f"{', '.join(repr(label) for label, _ in refused)} ({why}, and this command's energy has a "
                     "Field of Experts term)")


def check_device(text: str, option: str = "--device"):
    """``text`` as a ``torch.device`` that exists on this machine (imports torch): a valid
    device string, and for CUDA a machine with CUDA and an index below its device count."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(option, "a torch device such as cpu, cuda or cuda:0", repr(text)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(option, "cpu, or a CUDA device on a machine with CUDA", f"{text!r} (no CUDA here)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(option, f"a CUDA device index below {count}", f"{text!r} ({plural(count, 'device')} here)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(option, "cpu, or an MPS device on a machine with MPS", f"{text!r} (no MPS here)")
    return device


def announce(command: str, text: str) -> None:
    """One line saying what the command will do, before it starts."""
    print(f"energycrf {command}: {text}", flush=True)


def progress_bar(total: float, desc: str, enabled: bool = True, unit: str = "it"):
    """The one overall bar of a command (tqdm: done/total, elapsed and the time left)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, {remaining} left")


def require(modules: dict[str, str]) -> None:
    """Raise :class:`MissingDependency` unless every top-level module is installed
    (``{module: what to install}``), without importing them."""
    missing = [hint for name, hint in modules.items() if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependency(f"needs {', '.join(dict.fromkeys(missing))}")
