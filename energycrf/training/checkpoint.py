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

Writes are atomic: the directory is assembled under a temporary name next to the
target and moved into place with ``os.replace``; the ``latest`` pointer file is
replaced the same way, so a run killed at any moment leaves either the previous or the
new checkpoint, never a partial one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "flatten_state",
    "unflatten_state",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "atomic_write_text",
]

_STEP_DIR = re.compile(r"^step-(\d+)$")


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
def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone breaks storage sharing, which safetensors refuses to write
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(
    directory: str | os.PathLike,
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    state: dict[str, Any],
) -> Path:
    """Write ``modules`` (``name.safetensors`` each) and ``state`` atomically to ``directory``.

    ``state`` is flattened with :func:`flatten_state`. An existing ``directory`` is
    replaced only after the new one is complete.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        for name, module in modules.items():
            sd = _module_state(module) if isinstance(module, torch.nn.Module) else {
                k: v.detach().to("cpu").contiguous().clone() for k, v in module.items()
            }
            save_file(sd, str(tmp / f"{name}.safetensors"))
        tensors, meta = flatten_state(state)
        save_file(tensors, str(tmp / "state.safetensors"))
        with open(tmp / "state.json", "w", encoding="utf-8") as fh:
            json.dump({"format": "energycrf-checkpoint-v1", "modules": sorted(modules), "state": meta},
                      fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(module_state_dicts, state)``."""
    directory = Path(directory)
    meta_path = directory / "state.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"directory: no checkpoint at {str(directory)!r} (state.json missing)")
    with open(meta_path, encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta.get("format") != "energycrf-checkpoint-v1":
        raise ValueError(f"directory: {str(directory)!r} is not an energycrf checkpoint "
                         f"(format {meta.get('format')!r})")
    tensors = load_file(str(directory / "state.safetensors"))
    modules = {name: load_file(str(directory / f"{name}.safetensors")) for name in meta["modules"]}
    return modules, unflatten_state(meta["state"], tensors)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``output_dir/latest``, else the highest ``step-N`` directory."""
    output_dir = Path(output_dir)
    pointer = output_dir / "latest"
    if pointer.is_file():
        cand = output_dir / pointer.read_text(encoding="utf-8").strip()
        if (cand / "state.json").is_file():
            return cand
    best: tuple[int, Path] | None = None
    if output_dir.is_dir():
        for p in output_dir.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / "state.json").is_file():
                if best is None or int(m.group(1)) > best[0]:
                    best = (int(m.group(1)), p)
    return None if best is None else best[1]
