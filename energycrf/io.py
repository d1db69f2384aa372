"""Files that are either complete and verified or refused: the on-disk contract of the package.

Everything the package saves (training checkpoints, ``save_pretrained`` directories) is
safetensors for tensors and JSON for the rest, and goes through the helpers below:

- **checksums**: every tensor file's sha256 (and a digest of the JSON that records
  them) is written with it and compared on load, so changed bytes are an error that
  names the file, not weights that load silently;
- **verified reads**: a truncated or garbled safetensors or JSON file raises
  :class:`IntegrityError` naming the path (never a bare parser error); non-finite
  weights are refused by name on save and on load;
- **atomic directories**: a directory is assembled under a hidden sibling name
  ``.NAME.tmp-XXXX``, its marker file (the JSON with the checksums) written last, every
  file and the directory fsynced, then moved into place with a rename swap (the old one
  renamed to ``.NAME.old-XXXX``, the new one renamed to ``NAME``, the old one removed).
  A process killed at any point leaves ``NAME`` as the old or the new directory, or,
  between the two renames, no ``NAME`` but a complete sibling: readers take that one
  (with an :class:`IntegrityWarning`) and the next save puts it back in place.

One writer per directory at a time: a save removes the stale siblings of its target.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

__all__ = [
    "IntegrityError",
    "IntegrityWarning",
    "sha256_file",
    "finish_file",
    "json_digest",
    "atomic_write_text",
    "read_json",
    "check_finite",
    "read_safetensors",
    "save_safetensors",
    "stage_directory",
    "replace_directory",
    "settle_directory",
    "recovered_directory",
    "remove_directory",
    "write_pretrained",
    "read_pretrained",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INTEGRITY_KEY = "_integrity"
_CHUNK = 1 << 20


class IntegrityError(ValueError):
    """A saved file is damaged, truncated, inconsistent with its checksum, or holds
    values that cannot be right (a negative step, non-finite weights); the message
    names the file (and the field or tensor)."""


class IntegrityWarning(UserWarning):
    """Something on disk was damaged or interrupted and a complete copy was used instead;
    the message names both."""


# --------------------------------------------------------------------------- single files
def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def finish_file(path: str | os.PathLike) -> str:
    """Flush a just-written file to the disk and return its sha256 (one read)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
        os.fsync(fh.fileno())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    # a rename is durable once its directory is; not every platform can open a directory
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_digest(obj: Any) -> str:
    """The sha256 of ``obj``'s canonical JSON (sorted keys, no spaces): equal for equal content."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _write_text(tmp, text)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing file raises ``FileNotFoundError`` and unreadable
    content :class:`IntegrityError`, both naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{str(path)!r} is damaged: not valid JSON ({e})") from e


def check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise :class:`IntegrityError` naming the first floating tensor with a NaN or an inf."""
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise IntegrityError(f"{where}: tensor {name!r} holds non-finite values (NaN or inf)")


def _umask() -> int:
    try:  # Linux shows it without changing it
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, the file's permissions then set by the umask as for any
    other file (safetensors creates it readable by its owner only, so a shared model or
    checkpoint would be unreadable to the rest of a group)."""
    from safetensors.torch import save_file

    save_file(dict(tensors), os.fspath(path), metadata=None if metadata is None else dict(metadata))
    os.chmod(path, 0o666 & ~_umask())


def read_safetensors(path: str | os.PathLike, *, sha256: str | None = None, device: str = "cpu",
                     finite: bool = False) -> dict[str, torch.Tensor]:
    """Load a safetensors file, checked against ``sha256`` when given (never unpickles).

    Raises ``FileNotFoundError`` when it is missing and :class:`IntegrityError` when its
    bytes differ from the checksum, it cannot be parsed (truncated, garbled) or, with
    ``finite=True``, a floating tensor holds NaN or inf; every message names the path.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing")
    got = sha256_file(path) if sha256 is not None else None
    try:  # parsed before the checksum is compared, so that a truncated file is reported as such
        tensors = load_file(str(path), device=device)
    except SafetensorError as e:
        raise IntegrityError(f"{str(path)!r} is truncated or damaged: not a readable safetensors file ({e})") from e
    if got != sha256:
        raise IntegrityError(f"{str(path)!r} is damaged: its sha256 is {got}, not the {sha256} recorded "
                             "when it was written")
    if finite:
        check_finite(tensors, repr(str(path)))
    return tensors


# --------------------------------------------------------------------------- directories
def _absolute(target: str | os.PathLike) -> Path:
    # a sibling needs the directory's own name: "." or "a/.." have none until made absolute
    return Path(os.path.abspath(target))


def _sibling(target: Path, kind: str) -> Path:
    target = _absolute(target)
    return target.with_name(f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}")


def _siblings(target: Path, kind: str) -> list[Path]:
    target = _absolute(target)
    if not target.parent.is_dir():
        return []
    prefix = f".{target.name}.{kind}-"
    found = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recovered_directory(target: str | os.PathLike, marker: str) -> Path | None:
    """Where ``target``'s content is when a save was killed between its two renames.

    ``None`` while ``target`` exists. Otherwise the newest complete new copy (its
    ``marker`` is written last) or else the old copy set aside by the rename swap.
    """
    target = Path(target)
    if target.exists():
        return None
    for p in _siblings(target, "tmp"):
        if (p / marker).is_file():
            return p
    olds = _siblings(target, "old")
    return olds[0] if olds else None


def remove_directory(path: str | os.PathLike) -> None:
    """Take ``path`` out of sight with one rename, then delete it (a kill halfway
    through never leaves a half-deleted directory under its own name)."""
    path = Path(path)
    trash = _sibling(path, "trash")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def settle_directory(target: str | os.PathLike, marker: str) -> None:
    """Before a save: put back a copy an interrupted save left aside, drop stale siblings."""
    target = Path(target)
    found = recovered_directory(target, marker)
    if found is not None:
        os.replace(found, target)
    for kind in ("tmp", "old", "trash"):
        for p in _siblings(target, kind):
            shutil.rmtree(p, ignore_errors=True)


def stage_directory(target: str | os.PathLike) -> Path:
    """Create and return the empty hidden sibling a new version of ``target`` is built in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = _sibling(target, "tmp")
    staged.mkdir()
    return staged


def replace_directory(staged: Path, target: Path) -> None:
    """Move the complete ``staged`` directory to ``target`` (rename swap when it exists)."""
    _fsync_dir(staged)
    try:
        cwd = Path.cwd()
    except OSError:
        cwd = None
    target = absolute = _absolute(target)
    if target.exists():
        old = _sibling(target, "old")
        os.replace(target, old)
        os.replace(staged, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)
        _fsync_dir(target.parent)
    if cwd is not None and (cwd == absolute or absolute in cwd.parents):
        try:  # the process stood in the directory that was swapped out: stand in the new one
            os.chdir(cwd)
        except OSError:
            pass


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path, skip: Iterable[str]) -> None:
    """Hard-link (or copy) ``old``'s entries other than ``skip`` into ``new``."""
    skip = set(skip)
    for entry in old.iterdir():
        if entry.name in skip:
            continue
        dst = new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dst)
        elif entry.is_dir():
            shutil.copytree(entry, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(dst))


# --------------------------------------------------------------------------- save_pretrained pair
def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    # what describes the architecture: the entries not named with a leading underscore
    return {k: v for k, v in config.items() if not str(k).startswith("_")}


def _vouched_weights(target: Path, config: Mapping[str, Any], weights_name: str, pattern: str | None,
                     drop: set[str]) -> dict[str, str]:
    """The other weights files of ``target`` (those its ``config.json`` records, and those named
    like ``pattern``) that stay: name -> recorded sha256. A file stays when the old config
    records it and describes the same architecture as ``config``; the others join ``drop``."""
    try:
        old = read_json(target / CONFIG_NAME)
    except (FileNotFoundError, IntegrityError):
        old = None
    integrity = old.pop(INTEGRITY_KEY, None) if isinstance(old, dict) else None
    recorded = integrity if isinstance(integrity, dict) else {}
    same = isinstance(old, dict) and _public(old) == _public(config)
    names = {n for n in recorded if n != "config"}
    if pattern is not None:
        names |= {p.name for p in target.iterdir() if p.is_file() and re.fullmatch(pattern, p.name)}
    kept = {}
    for name in sorted(names - {weights_name} - drop):
        if Path(name).name != name:  # a recorded name is data read from disk: never a path
            continue
        sha = recorded.get(name)
        if same and isinstance(sha, str) and (target / name).is_file():
            kept[name] = sha
        else:
            drop.add(name)
    return kept


def write_pretrained(directory: str | os.PathLike, config: Mapping[str, Any],
                     tensors: Mapping[str, torch.Tensor], *,
                     extra_files: Mapping[str, str] | None = None, weights_name: str = WEIGHTS_NAME,
                     weights_pattern: str | None = None, drop: Iterable[str] = ()) -> Path:
    """Write ``config.json`` + the weights ``weights_name`` (+ ``extra_files``, name -> text) as one unit.

    The pair (the huggingface_hub layout; ``weights_name`` defaults to ``model.safetensors``)
    is built in a hidden sibling directory and swapped into place (see the module
    docstring): after a crash at any point the directory loads as the old or the new
    content. Other entries already in the directory are carried over (hard links, copies
    where links fail), except the names in ``drop``. ``config.json`` gains an
    ``"_integrity"`` entry, the sha256 of the weights and the digest of the rest of the
    config, that :func:`read_pretrained` checks and removes. The other weights files (those
    the old ``config.json`` records, and those whose names match the regular expression
    ``weights_pattern``: variants such as ``diffusion_pytorch_model.fp16.safetensors``) keep
    their recorded sha256 when the old config records them and describes the same
    architecture (equal entries, those named ``_...`` aside); the others are removed, so a
    directory never holds weights its config does not vouch for. Non-finite tensors are
    refused by name and nothing is written.
    """
    extra = dict(extra_files or {})
    if Path(weights_name).name != weights_name or weights_name.startswith(".") or weights_name == CONFIG_NAME:
        raise ValueError(f"weights_name: expected a plain file name other than {CONFIG_NAME!r}, got {weights_name!r}")
    for name in extra:
        if name in (CONFIG_NAME, weights_name) or Path(name).name != name or name.startswith("."):
            raise ValueError(f"extra_files: {name!r} is not a plain file name other than the config and weights")
    config = dict(config)
    if INTEGRITY_KEY in config:
        raise ValueError(f"config: the key {INTEGRITY_KEY!r} is reserved for the checksums")
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    check_finite(state, "save_pretrained")
    target = Path(directory).resolve() if Path(directory).is_symlink() else _absolute(directory)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"directory: {str(target)!r} exists and is not a directory")
    settle_directory(target, CONFIG_NAME)
    drop = set(drop)
    kept = _vouched_weights(target, config, weights_name, weights_pattern, drop) if target.is_dir() else {}
    staged = stage_directory(target)
    try:
        if target.is_dir():
            _carry_over(target, staged, skip=(CONFIG_NAME, weights_name, *extra, *drop))
        save_safetensors(state, staged / weights_name, metadata={"format": "pt"})
        weights_sha = finish_file(staged / weights_name)
        for name, text in extra.items():
            _write_text(staged / name, text)
        config[INTEGRITY_KEY] = {"config": json_digest(config), weights_name: weights_sha, **kept}
        _write_text(staged / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")  # the marker: last
        replace_directory(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return Path(directory)


def read_pretrained(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                    weights_name: str | Sequence[str] = WEIGHTS_NAME
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify what :func:`write_pretrained` wrote: ``(config, state_dict)``.

    ``weights_name`` names the weights file, or lists the names to try in order (the first
    that exists is read). A directory written before checksums existed loads unchecked (it
    has no ``"_integrity"`` entry); every other check (readable files, finite weights)
    applies, and a weights file that a checksummed ``config.json`` does not record is
    refused. The config comes back without ``"_integrity"``; the caller checks ``_class_name``.
    """
    names = [weights_name] if isinstance(weights_name, str) else list(weights_name)
    if not names:
        raise ValueError("weights_name: expected a file name or a non-empty list of them, got an empty list")
    path = Path(directory)
    if not path.is_dir():
        found = recovered_directory(path, CONFIG_NAME)
        if found is None:
            raise FileNotFoundError(
                f"from_pretrained: {str(directory)!r} is not a directory; it loads a local directory written by "
                f"save_pretrained (config.json + {names[0]}) and never downloads"
            )
        warnings.warn(f"from_pretrained: {str(path)!r} is missing because a save was interrupted between its two "
                      f"renames; loading the complete copy {str(found)!r} (the next save puts it back in place)",
                      IntegrityWarning, stacklevel=2)
        path = found
    config_file = path / CONFIG_NAME
    weights_file = next((path / n for n in names if (path / n).is_file()), path / names[0])
    if not config_file.is_file():
        raise FileNotFoundError(f"from_pretrained: {str(config_file)!r} is missing")
    if not weights_file.is_file():
        others = " or ".join(repr(n) for n in names[1:])
        raise FileNotFoundError(
            f"from_pretrained: {str(weights_file)!r} is missing{f' (and so is {others})' if others else ''} "
            "(only safetensors weights are loaded, never pickle files such as pytorch_model.bin)"
        )
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise IntegrityError(f"{str(config_file)!r} must hold a JSON object, got {type(config).__name__}")
    integrity = config.pop(INTEGRITY_KEY, None)
    weights_sha = None
    if integrity is not None:
        if not (isinstance(integrity, dict) and all(isinstance(v, str) for v in integrity.values())
                and isinstance(integrity.get("config"), str)):
            raise IntegrityError(f"{str(config_file)!r} is damaged: its {INTEGRITY_KEY!r} entry is malformed")
        if json_digest(config) != integrity["config"]:
            raise IntegrityError(f"{str(config_file)!r} is damaged: its content differs from the digest recorded "
                                 "when it was written")
        weights_sha = integrity.get(weights_file.name)
        if weights_sha is None:
            raise IntegrityError(
                f"{str(weights_file)!r} is not one of the weights files {str(config_file)!r} records a sha256 for "
                f"({sorted(k for k in integrity if k != 'config')}): it was not written with this config; "
                "save the layer again"
            )
    state = read_safetensors(weights_file, sha256=weights_sha, device=str(map_location), finite=True)
    return config, state
