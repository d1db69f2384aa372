"""Training checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint is a directory::

    step-000120/
        model.safetensors          # the trained module's state_dict
        discriminator.safetensors  # when adversarial training is on
        state.safetensors          # every tensor of the trainer state (optimiser moments,
                                   #   torch / CUDA generator states, numpy's MT19937 key)
        state.json                 # everything else: step, config, optimiser param groups,
                                   #   scheduler, grad scaler, python RNG, sampler position

Nested Python containers are flattened: each tensor is stored under a dotted key in
``state.safetensors`` and replaced by ``{"__tensor__": key}`` in the JSON; tuples and
dicts with non-string keys (the optimiser's integer parameter ids) are tagged so that
they come back with their exact types. Loading never unpickles anything.

``state.json`` is written last and records, under ``"integrity"``, the sha256 of every
tensor file and the digest of its own other content; loading checks them (a checkpoint
written before they existed loads without that check), refuses non-finite module
weights and reports every damaged file by its path (:class:`~energycrf.io.IntegrityError`).

Writes are atomic: the directory is assembled under a hidden name next to the target,
every file flushed to the disk, and moved into place with ``os.replace`` (a rename
swap over an existing one, :mod:`energycrf.io`); the ``latest`` pointer file is replaced
the same way, so a run killed at any moment leaves either the previous or the new
checkpoint, never a partial one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import (
    IntegrityError,
    IntegrityWarning,
    atomic_write_text,
    check_finite,
    finish_file,
    json_digest,
    read_json,
    read_safetensors,
    recovered_directory,
    remove_directory,
    replace_directory,
    save_safetensors,
    settle_directory,
    stage_directory,
)

__all__ = [
    "flatten_state",
    "unflatten_state",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "checkpoint_candidates",
    "prune_checkpoints",
    "capture_rng_state",
    "restore_rng_state",
    "atomic_write_text",
    "IntegrityError",
    "IntegrityWarning",
]

_STEP_DIR = re.compile(r"^step-(\d+)$")
_STEP_SIBLING = re.compile(r"^\.(step-(\d+))\.(tmp|old)-[0-9a-f]{8}$")
# what a killed save leaves behind: hidden sibling directories and temporary files
_LEFTOVER = re.compile(r"^\.(step-\d+\.(tmp|old|trash)-[0-9a-f]{8}|(latest|log\.jsonl|config\.json)\.tmp-[0-9a-f]{8}"
                       r"|loss_curve\.tmp\.png)$")
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
FORMAT = "energycrf-checkpoint-v1"
STATE_JSON = "state.json"


# --------------------------------------------------------------------------- flattening
def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``obj`` into ``(tensors, meta)``: a flat tensor dict and a JSON-able tree.

    Supported leaves: tensors, ``None``, bool, int, float, str. Containers: dict, list,
    tuple. Anything else raises ``TypeError`` naming its path.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            key = path or "root"
            tensors[key] = x.detach().to("cpu").contiguous().clone()
            return {"__tensor__": key}
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            f = float(x)
            if f != f or f in (float("inf"), float("-inf")):
                return {"__float__": repr(f)}
            return f
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: walk(v, f"{path}.{k}" if path else k) for k, v in x.items()}
            items = []
            for k, v in x.items():
                if not isinstance(k, (str, int)):
                    raise TypeError(f"flatten_state: dict key {k!r} at {path!r} is not str or int")
                items.append([k, walk(v, f"{path}.{k}" if path else str(k))])
            return {"__dict__": items}
        raise TypeError(
            f"flatten_state: cannot store a {type(x).__name__} at {path or 'root'!r} "
            "without pickle; expected tensors, numbers, strings, None, lists, tuples or dicts"
        )

    meta = walk(obj, prefix)
    return tensors, meta


def unflatten_state(meta: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(meta, list):
        return [unflatten_state(v, tensors) for v in meta]
    if isinstance(meta, dict):
        if "__tensor__" in meta:
            return tensors[meta["__tensor__"]]
        if "__tuple__" in meta:
            return tuple(unflatten_state(v, tensors) for v in meta["__tuple__"])
        if "__float__" in meta:
            return float(meta["__float__"])
        if "__dict__" in meta:
            return {k: unflatten_state(v, tensors) for k, v in meta["__dict__"]}
        return {k: unflatten_state(v, tensors) for k, v in meta.items()}
    return meta


# --------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """The global generators' states: python ``random``, numpy legacy, torch CPU and CUDA."""
    version, internal, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
        "numpy": {
            "kind": kind,
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["key"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# --------------------------------------------------------------------------- files
def _module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone breaks storage sharing, which safetensors refuses to write
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def _check_module_names(names: Any, where: str) -> None:
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.match(name) or name == "state":
            raise ValueError(f"{where}: module name {name!r} must be a plain file name (letters, digits, '_', "
                             "'-', '.'; not starting with '.') other than 'state'")


def save_checkpoint(
    directory: str | os.PathLike,
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    state: dict[str, Any],
) -> Path:
    """Write ``modules`` (``name.safetensors`` each) and ``state`` atomically to ``directory``.

    ``state`` is flattened with :func:`flatten_state`. The files are assembled in a
    hidden sibling directory, ``state.json`` last with the sha256 of every tensor file
    and the digest of its own content, and swapped into place (:mod:`energycrf.io`): an
    existing ``directory`` is replaced only after the new one is complete. Module
    weights with a NaN or an inf are refused by name and nothing is written.
    """
    directory = Path(directory)
    _check_module_names(modules, "modules")
    weights = {}
    for name, module in modules.items():
        sd = _module_state(module) if isinstance(module, torch.nn.Module) else {
            k: v.detach().to("cpu").contiguous().clone() for k, v in module.items()
        }
        check_finite(sd, f"save_checkpoint: module {name!r}")
        weights[name] = sd
    tensors, meta = flatten_state(state)
    settle_directory(directory, STATE_JSON)
    tmp = stage_directory(directory)
    try:
        sha = {}
        for name, sd in weights.items():
            save_safetensors(sd, tmp / f"{name}.safetensors")
            sha[f"{name}.safetensors"] = finish_file(tmp / f"{name}.safetensors")
        save_safetensors(tensors, tmp / "state.safetensors")
        sha["state.safetensors"] = finish_file(tmp / "state.safetensors")
        doc = {"format": FORMAT, "modules": sorted(modules), "state": meta}
        doc["integrity"] = {"sha256": sha, "json": json_digest(doc)}
        with open(tmp / STATE_JSON, "w", encoding="utf-8") as fh:  # the marker of a complete checkpoint: last
            json.dump(doc, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _manifest(directory: Path) -> tuple[Path, dict[str, Any], dict[str, str]]:
    """Read and check ``state.json``: ``(path, document, sha256 per file)`` (empty for old checkpoints)."""
    path = directory / STATE_JSON
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise IntegrityError(f"{str(path)!r} must hold a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise IntegrityError(f"directory: {str(directory)!r} is not an energycrf checkpoint "
                             f"(format {doc.get('format')!r})")
    modules = doc.get("modules")
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise IntegrityError(f"{str(path)!r}: field 'modules' must be a list of names, got {modules!r:.80}")
    try:
        _check_module_names(modules, repr(str(path)))
    except ValueError as e:
        raise IntegrityError(f"{e} (field 'modules')") from None
    if not isinstance(doc.get("state"), dict):
        raise IntegrityError(f"{str(path)!r}: field 'state' must be a JSON object, got {doc.get('state')!r:.80}")
    if "integrity" not in doc:  # written before checksums existed
        return path, doc, {}
    integrity = doc.pop("integrity")
    files = {f"{m}.safetensors" for m in modules} | {"state.safetensors"}
    sha = integrity.get("sha256") if isinstance(integrity, dict) else None
    if not (isinstance(sha, dict) and set(sha) == files and all(isinstance(v, str) for v in sha.values())
            and isinstance(integrity.get("json"), str)):
        raise IntegrityError(f"{str(path)!r}: field 'integrity' is malformed (expected the sha256 of "
                             f"{sorted(files)} and the digest of the rest)")
    if json_digest(doc) != integrity["json"]:
        raise IntegrityError(f"{str(path)!r} is damaged: its content differs from the digest recorded when "
                             "it was written")
    return path, doc, sha


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(module_state_dicts, state)``.

    Every file is checked against the checksums in ``state.json`` (a checkpoint written
    before they existed loads without that check) and must parse; module weights must
    be finite. Failures raise :class:`IntegrityError` naming the file (and the field
    or tensor). When ``directory`` is missing because a save was killed between its
    two renames, the complete copy beside it is read, with an :class:`IntegrityWarning`.
    """
    directory = Path(directory)
    if not (directory / STATE_JSON).is_file():
        found = recovered_directory(directory, STATE_JSON)
        if found is None:
            raise FileNotFoundError(f"directory: no checkpoint at {str(directory)!r} (state.json missing)")
        warnings.warn(f"checkpoint {str(directory)!r} is missing because a save was interrupted between its two "
                      f"renames; reading the complete copy {str(found)!r}", IntegrityWarning, stacklevel=2)
        directory = found
    path, doc, sha = _manifest(directory)
    tensors = read_safetensors(directory / "state.safetensors", sha256=sha.get("state.safetensors"))
    modules = {name: read_safetensors(directory / f"{name}.safetensors", sha256=sha.get(f"{name}.safetensors"),
                                      finite=True)
               for name in doc["modules"]}
    try:
        state = unflatten_state(doc["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"{str(path)!r}: field 'state' does not match state.safetensors ({e!r})") from e
    return modules, state


def checkpoint_candidates(output_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints of a run, newest first: the one ``output_dir/latest`` names, then the
    ``step-N`` directories by decreasing ``N`` (including one whose save was interrupted
    between its two renames, see :func:`load_checkpoint`)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    steps: dict[Path, int] = {}
    for p in output_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE_JSON).is_file():
            steps[p] = int(m.group(1))
        m = _STEP_SIBLING.match(p.name)
        if m and recovered_directory(output_dir / m.group(1), STATE_JSON) is not None:
            steps[output_dir / m.group(1)] = int(m.group(2))
    found = sorted(steps, key=lambda p: steps[p], reverse=True)
    pointer = output_dir / "latest"
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        cand = output_dir / name
        named = bool(name) and Path(name).name == name and name not in (".", "..")
        if named and ((cand / STATE_JSON).is_file() or recovered_directory(cand, STATE_JSON) is not None):
            if cand in found:
                found.remove(cand)
            found.insert(0, cand)
    return found


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``output_dir/latest``, else the highest ``step-N`` directory."""
    found = checkpoint_candidates(output_dir)
    return found[0] if found else None


def prune_checkpoints(output_dir: str | os.PathLike, keep_checkpoints: int, keep: str) -> None:
    """Keep the newest ``keep_checkpoints`` ``step-N`` directories (and ``keep``; 0 keeps all);
    sweep what killed saves left behind."""
    output_dir = Path(output_dir)
    if keep_checkpoints > 0:
        steps = sorted((int(m.group(1)), p) for p in output_dir.iterdir()
                       if (m := _STEP_DIR.match(p.name)) and p.is_dir())
        for _, p in steps[:-keep_checkpoints]:
            if p.name != keep:
                remove_directory(p)  # out of sight in one rename: never half-deleted under its name
    for p in output_dir.iterdir():
        if _LEFTOVER.match(p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
