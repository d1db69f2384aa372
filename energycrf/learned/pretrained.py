"""diffusers-native saving and loading for the learned layers: :class:`PretrainedModel`.

One way, in both environments (docs/latent-crf.md, "Saving and loading"):

- **The bases.** When diffusers can be imported, :class:`PretrainedModel` is a
  ``diffusers.ModelMixin`` and a ``diffusers.ConfigMixin``: a layer built on it
  (:class:`~energycrf.learned.latent_crf.LatentCRF`) is a diffusers model. Its constructor
  arguments are registered with ``register_to_config``, so ``layer.config`` is diffusers'
  ``FrozenDict``; ``from_config``, ``dtype`` and ``device`` are diffusers' own; and a
  pipeline that holds the layer as a component saves and loads it with
  ``DiffusionPipeline.save_pretrained`` / ``from_pretrained``. Without diffusers the same
  class stands on :class:`LocalModelMixin` and :class:`LocalConfigMixin`, small stand-ins
  with the same config API, so the core package needs no diffusers.
- **The files.** ``save_pretrained`` and ``from_pretrained`` are the package's own in both
  environments. They take diffusers' arguments (``variant``, ``subfolder``, ``torch_dtype``,
  ``device_map``, ...) and use diffusers' file names: ``config.json`` and
  ``diffusion_pytorch_model.safetensors``, or ``diffusion_pytorch_model.<variant>.safetensors``.
  Only safetensors files are written or read. :mod:`energycrf.io` writes them atomically
  with checksums, and they are verified on load. A directory written by energycrf 0.1
  (``config.json`` + ``model.safetensors``) still loads.

diffusers' own ``ModelMixin.save_pretrained`` / ``from_pretrained`` are replaced because
they would give up the atomic writes and the checksums, and the config would hold objects
that are not JSON (a kernel): :class:`LatentCRF` registers its kernel's spec dict instead.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .. import __version__

try:  # ImportError also when sys.modules["diffusers"] is None (how the tests hide it)
    from diffusers import ConfigMixin as _DiffusersConfigMixin
    from diffusers import ModelMixin as _DiffusersModelMixin
    from diffusers import __version__ as _DIFFUSERS_VERSION
except ImportError:
    _DiffusersConfigMixin = _DiffusersModelMixin = _DIFFUSERS_VERSION = None

__all__ = ["PretrainedModel", "ModelMixin", "ConfigMixin", "LocalModelMixin", "LocalConfigMixin", "FrozenConfig",
           "HAS_DIFFUSERS", "CONFIG_NAME", "WEIGHTS_NAME", "LEGACY_WEIGHTS_NAME", "weights_name"]

#: Whether the layers are ``diffusers.ModelMixin`` subclasses (diffusers could be imported).
HAS_DIFFUSERS = _DiffusersModelMixin is not None
CONFIG_NAME = "config.json"
#: diffusers' name for a model's safetensors weights (``SAFETENSORS_WEIGHTS_NAME``).
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PLAN_FILE = "plan.json"  # the plan a layer was trained for, beside its weights (see _carried_files)
#: The weights' name in the directories written by energycrf 0.1; still read.
LEGACY_WEIGHTS_NAME = "model.safetensors"
# every weights file of this layout: the current name with or without a variant, and the legacy name
_WEIGHTS_PATTERN = r"(diffusion_pytorch_model(\.[A-Za-z0-9_-]+)?|model)\.safetensors"
_VARIANT = re.compile(r"[A-Za-z0-9_-]+")
_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# ModelMixin.from_pretrained's download and memory options: they mean nothing for a small layer
# read from a local directory, so they are accepted and ignored
_IGNORED = frozenset({"cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "mirror",
                      "user_agent", "low_cpu_mem_usage", "max_memory", "offload_folder", "offload_state_dict",
                      "disable_mmap", "flashpack_kwargs", "resume_download"})
# options that ask for what is never done here: accepted at their defaults only
_DEFAULTS_ONLY = {
    "use_safetensors": ((None, True), "only safetensors weights are read, never pickle files"),
    "use_flashpack": ((None, False), "the weights are safetensors files"),
    "from_flax": ((None, False), "the weights are safetensors files of PyTorch tensors"),
    "quantization_config": ((None,), "the layers are not quantized"),
    "ignore_mismatched_sizes": ((None, False), "the weights must fit the config exactly"),
    "dduf_entries": ((None,), "the layer is read from a directory"),
    "parallel_config": ((None,), "the layer runs on one device"),
}


def weights_name(variant: str | None = None) -> str:
    """The weights file of ``variant``: ``diffusion_pytorch_model[.<variant>].safetensors``
    (diffusers' ``_add_variant``)."""
    if variant is None:
        return WEIGHTS_NAME
    if not isinstance(variant, str) or not _VARIANT.fullmatch(variant):
        raise ValueError(f"variant: expected None or a name of letters, digits, '_' and '-' (such as 'fp16'), "
                         f"got {variant!r}")
    return f"diffusion_pytorch_model.{variant}.safetensors"


# ---------------------------------------------------------------------------------------
# the stand-ins without diffusers


class FrozenConfig(dict):
    """A read-only ``dict`` whose entries are also attributes (diffusers' ``FrozenDict``
    without diffusers); ``dict(config)`` gives a copy to change."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no entry {name!r}") from None

    def _read_only(self, *args: Any, **kwargs: Any):
        raise TypeError("a layer's config is read-only: copy it with dict(config)")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = __ior__ = _read_only
    setdefault = pop = popitem = update = clear = _read_only

    def __reduce__(self):
        return (type(self), (dict(self),))


class LocalConfigMixin:
    """The part of ``diffusers.ConfigMixin`` the layers use: ``register_to_config``, ``config``,
    ``from_config``."""

    config_name = CONFIG_NAME
    ignore_for_config: list[str] = []

    def register_to_config(self, **kwargs: Any) -> None:
        self._internal_dict = FrozenConfig({**(self.__dict__.get("_internal_dict") or {}), **kwargs})

    @property
    def config(self) -> FrozenConfig:
        return self._internal_dict

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **kwargs: Any):
        """The layer ``cls(**config, **kwargs)``; entries named ``_...`` are metadata and left out."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config: expected a mapping of constructor arguments, got {type(config).__name__}")
        return cls(**{k: v for k, v in config.items() if not str(k).startswith("_")}, **kwargs)


class LocalModelMixin(nn.Module):
    """The part of ``diffusers.ModelMixin`` the layers use: ``dtype`` and ``device``."""

    @property
    def device(self) -> torch.device:
        return next((t.device for t in (*self.parameters(), *self.buffers())), torch.device("cpu"))

    @property
    def dtype(self) -> torch.dtype:
        floating = (t.dtype for t in (*self.parameters(), *self.buffers()) if t.is_floating_point())
        return next(floating, torch.get_default_dtype())


#: ``diffusers.ModelMixin`` when diffusers can be imported, else :class:`LocalModelMixin`.
ModelMixin = _DiffusersModelMixin if HAS_DIFFUSERS else LocalModelMixin
#: ``diffusers.ConfigMixin`` when diffusers can be imported, else :class:`LocalConfigMixin`.
ConfigMixin = _DiffusersConfigMixin if HAS_DIFFUSERS else LocalConfigMixin


# ---------------------------------------------------------------------------------------
# loading options


def _device(map_location: Any, device_map: Any) -> torch.device:
    """The one device the layer is loaded to, from ``map_location`` and diffusers' ``device_map``."""
    device = None
    if device_map is not None:
        if isinstance(device_map, Mapping):
            if set(device_map) != {""}:
                raise ValueError(f"device_map: the layer goes on one device; pass a device or {{'': device}}, "
                                 f"got a map of {sorted(map(str, device_map))}")
            device_map = device_map[""]
        if isinstance(device_map, str) and device_map in _STRATEGIES:
            raise ValueError(f"device_map: the layer goes on one device, so there is nothing to balance; pass a "
                             f"device such as 'cuda' or 'cpu', got {device_map!r}")
        if isinstance(device_map, bool) or not isinstance(device_map, (str, int, torch.device)):
            raise TypeError(f"device_map: expected None, a device (str, int or torch.device) or {{'': device}}, "
                            f"got {type(device_map).__name__}")
        if isinstance(device_map, int) and device_map < 0:
            raise ValueError(f"device_map: an accelerator index must be >= 0, got {device_map}")
        device = _as_device("device_map", device_map)
    if map_location is not None:
        location = _as_device("map_location", map_location)
        if device is not None and location != device:
            raise ValueError(f"map_location={str(location)!r} and device_map={str(device)!r} disagree; pass one")
        device = location
    return device if device is not None else torch.device("cpu")


def _as_device(name: str, value: Any) -> torch.device:
    if isinstance(value, bool) or not isinstance(value, (str, int, torch.device)):
        raise TypeError(f"{name}: expected a device (str, int or torch.device), got {type(value).__name__}")
    try:
        return torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{name}: expected a device such as 'cpu' or 'cuda:0', got {value!r}") from e


def _dtype(torch_dtype: Any, dtype: Any) -> torch.dtype | None:
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError(f"torch_dtype={torch_dtype} and dtype={dtype} disagree; pass one")
    value = dtype if dtype is not None else torch_dtype
    if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise TypeError(f"torch_dtype: expected None or a floating torch.dtype (torch.float16, torch.bfloat16, "
                        f"torch.float32, torch.float64), got {value!r}")
    return value


def _casts_only(args: tuple, kwargs: dict) -> bool:
    """Whether ``.to(*args, **kwargs)`` changes the dtype without moving the layer."""
    dtype = "dtype" in kwargs or any(isinstance(a, torch.dtype) for a in args)
    moves = "device" in kwargs or any(isinstance(a, (str, int, torch.device, torch.Tensor)) for a in args)
    return dtype and not moves


# ---------------------------------------------------------------------------------------
# the base class


class PretrainedModel(ModelMixin, ConfigMixin):
    """A layer saved and loaded the diffusers way, with checked atomic files (see the module docstring).

    A subclass registers its constructor arguments (JSON values only) with
    ``self.register_to_config(**arguments)`` at the end of ``__init__``; a layer that
    registers none (it cannot be described by its arguments) refuses ``config`` and
    ``save_pretrained`` with a ``TypeError``. ``_load_overrides`` names the config entries
    that ``from_pretrained`` may replace (they must leave the weights' shapes alone).
    """

    config_name = CONFIG_NAME
    _load_overrides: frozenset[str] = frozenset()
    # why a layer may have no config (completes the TypeError's message)
    _no_config_reason = "it registered no constructor arguments"

    @property
    def config(self):
        """The constructor arguments (JSON values) that rebuild this layer's architecture:
        diffusers' ``FrozenDict`` (a read-only ``dict``; ``dict(layer.config)`` for a copy)."""
        config = self.__dict__.get("_internal_dict")
        if config is None:
            raise TypeError(
                f"this {type(self).__name__} cannot be described by a config ({self._no_config_reason}); "
                "save its state_dict with safetensors.torch.save_file instead"
            )
        return config

    def register_to_config(self, **kwargs: Any) -> None:
        # the config stays the constructor's arguments, so that cls(**layer.config) rebuilds the layer:
        # the metadata that diffusers' from_config passes on (_class_name, _diffusers_version, ...) stays out
        arguments = {k: v for k, v in kwargs.items() if not str(k).startswith("_")}
        if arguments:
            super().register_to_config(**arguments)

    def to(self, *args: Any, **kwargs: Any):
        # diffusers 0.42's ModelMixin.to logs "modules that should be kept in float32: []" on every
        # dtype cast, also for models that keep none; a plain cast here never moves the layer, so
        # none of ModelMixin.to's device checks apply
        if HAS_DIFFUSERS and _casts_only(args, kwargs) and not self._keep_in_fp32_modules:
            return nn.Module.to(self, *args, **kwargs)
        return super().to(*args, **kwargs)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        save_function: Any = None, safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size: int | str | None = None, push_to_hub: bool = False, *,
                        extra_files: Mapping[str, str] | None = None, **kwargs: Any) -> Path:
        """Write ``config.json`` and ``diffusion_pytorch_model[.<variant>].safetensors`` into ``save_directory``.

        diffusers' signature and names. ``config.json`` holds the registered config with
        ``_class_name``, ``_energycrf_version`` (and ``_diffusers_version``), and the sha256 of
        each weights file in the directory. The files are built beside the directory and
        swapped into place (:func:`energycrf.io.write_pretrained`), so after a crash the
        directory holds the old layer or the new one. Non-finite weights are refused.

        Args:
            save_directory: the directory (created if needed). Its other files (a ``plan.json``,
                a README) are kept. Weights of other variants are kept when the config is
                unchanged and removed when it changed. An energycrf 0.1 ``model.safetensors``
                is replaced by a save without a variant.
            is_main_process: ``False`` writes nothing (one writer per directory).
            variant: ``"fp16"`` and the like: the weights go to
                ``diffusion_pytorch_model.fp16.safetensors`` in the layer's current dtype
                (cast it first: ``layer.half().save_pretrained(d, variant="fp16")``).
            max_shard_size: accepted and ignored (the layers are small and never sharded).
            extra_files: more files to write with the layer, as one unit: plain name -> text.
                ``plan.json`` is written without being asked when the layer carries a plan
                (``layer.plan``) or was loaded from a folder with one (see ``_carried_files``).
            save_function, safe_serialization, push_to_hub: only their defaults (the files are
                safetensors, and nothing is uploaded).

        Returns:
            ``Path(save_directory)``.
        """
        from ..io import write_pretrained

        if kwargs.pop("use_flashpack", False):
            self._refuse("use_flashpack", True, "the weights are safetensors files")
        if kwargs:
            raise TypeError(f"save_pretrained got unexpected keyword arguments {sorted(kwargs)}")
        if save_function is not None:
            self._refuse("save_function", save_function, "the weights are written with safetensors, atomically")
        if safe_serialization is not True:
            self._refuse("safe_serialization", safe_serialization, "only safetensors files are written, never pickle")
        if push_to_hub:
            self._refuse("push_to_hub", push_to_hub, "nothing is uploaded; push the directory with huggingface_hub")
        name = weights_name(variant)
        if not is_main_process:
            return Path(save_directory)
        extra_files = {**self._carried_files(save_directory), **dict(extra_files or {})}
        config = {"_class_name": type(self).__name__, "_energycrf_version": __version__,
                  **({"_diffusers_version": _DIFFUSERS_VERSION} if HAS_DIFFUSERS else {}),
                  **{k: v for k, v in self.config.items() if not str(k).startswith("_")}}
        return write_pretrained(save_directory, config, self.state_dict(), extra_files=extra_files,
                                weights_name=name, weights_pattern=_WEIGHTS_PATTERN,
                                drop=(LEGACY_WEIGHTS_NAME,) if variant is None else ())

    def _carried_files(self, save_directory) -> dict[str, str]:
        """The files that say how the layer is used, kept with it when it is saved elsewhere.

        ``plan.json`` (the plan it was trained for; written by the integrations, read by
        ``generate``): from ``self.plan`` when the layer carries one (``to_dict()``), else
        copied from the folder it was loaded from (:attr:`pretrained_dir`). Without this a
        layer loaded and saved again would lose its plan, and ``generate`` would run another.
        """
        import json

        plan = getattr(self, "plan", None)
        if hasattr(plan, "to_dict"):
            return {PLAN_FILE: json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n"}
        source = getattr(self, "pretrained_dir", None)
        if plan is None and not hasattr(self, "plan") and source is not None and (Path(source) / PLAN_FILE).is_file():
            if Path(os.path.abspath(source)) != Path(os.path.abspath(save_directory)):
                return {PLAN_FILE: (Path(source) / PLAN_FILE).read_text(encoding="utf-8")}
        return {}

    @staticmethod
    def _refuse(name: str, value: Any, why: str):
        raise ValueError(f"{name}={value!r} is not supported: {why}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None, *,
                        subfolder: str | None = None, variant: str | None = None, torch_dtype: torch.dtype | None = None,
                        map_location: str | torch.device | None = None, device_map: Any = None,
                        output_loading_info: bool = False, **kwargs: Any):
        """Load a layer from a *local* directory written by :meth:`save_pretrained` (or by energycrf 0.1).

        Reads ``config.json`` and ``diffusion_pytorch_model[.<variant>].safetensors``. Without
        a variant it falls back to energycrf 0.1's ``model.safetensors``. The checksums recorded
        in ``config.json`` are verified. Nothing is downloaded and no pickle is ever read.
        Like diffusers, the layer comes back in eval mode.

        Args:
            pretrained_model_name_or_path: the directory (a pipeline's directory with ``subfolder``).
            subfolder: the layer's folder inside it (``"crf"`` for ``pipeline_dir/crf``).
            variant: read ``diffusion_pytorch_model.<variant>.safetensors``.
            torch_dtype: cast the loaded layer to this floating dtype (``dtype=`` is the same).
                Without it the layer is float32, whatever the file's dtype.
            map_location, device_map: the device to load to (``"cuda"``, ``0``, ``{"": "cuda:1"}``;
                default the CPU). A layer goes on one device only.
            output_loading_info: also return diffusers' loading report (always empty lists:
                the weights must match the layer exactly).
            **kwargs: the config entries in ``_load_overrides`` (for :class:`LatentCRF`:
                ``num_iterations``, ``return_all``), and ``ModelMixin.from_pretrained``'s options
                (``cache_dir``, ``local_files_only``, ``low_cpu_mem_usage``, ... are ignored;
                ``use_safetensors=False`` and the like are refused). Passing the directory as
                ``directory=`` still works.
        """
        from ..io import read_pretrained

        if "directory" in kwargs:  # the keyword of energycrf 0.1
            if pretrained_model_name_or_path is not None:
                raise TypeError("from_pretrained got the directory twice (pretrained_model_name_or_path and directory)")
            pretrained_model_name_or_path = kwargs.pop("directory")
        if isinstance(pretrained_model_name_or_path, bool) or not isinstance(pretrained_model_name_or_path,
                                                                             (str, os.PathLike)):
            raise TypeError(f"pretrained_model_name_or_path: expected a local directory (str or path), got "
                            f"{type(pretrained_model_name_or_path).__name__}")
        torch_dtype = _dtype(torch_dtype, kwargs.pop("dtype", None))
        device = _device(map_location, device_map)
        for name in list(kwargs):
            if name in _IGNORED:
                kwargs.pop(name)
            elif name in _DEFAULTS_ONLY:
                value = kwargs.pop(name)
                allowed, why = _DEFAULTS_ONLY[name]
                if not any(value is a or (a is not None and value == a) for a in allowed):
                    cls._refuse(name, value, why)
        init_keys = cls._init_keys()
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in cls._load_overrides}
        if kwargs:
            config_keys = sorted(set(kwargs) & init_keys)
            if config_keys:
                raise TypeError(f"from_pretrained can override {sorted(cls._load_overrides)} only (they keep the "
                                f"weights' shapes), got {config_keys}")
            raise TypeError(f"from_pretrained got unexpected keyword arguments {sorted(kwargs)}")
        path = Path(pretrained_model_name_or_path)
        if subfolder:
            if not isinstance(subfolder, str) or Path(subfolder).is_absolute():
                raise ValueError(f"subfolder: expected a relative folder name such as 'crf', got {subfolder!r}")
            path = path / subfolder
        names = [weights_name(variant)] if variant is not None else [WEIGHTS_NAME, LEGACY_WEIGHTS_NAME]
        if path.is_dir() and not any((path / n).is_file() for n in names):
            found = sorted(p.name for p in path.iterdir() if re.fullmatch(_WEIGHTS_PATTERN, p.name))
            if found:  # the weights are there under another variant's name
                raise FileNotFoundError(f"from_pretrained: {str(path)!r} has no {names[0]!r}; its weights files are "
                                        f"{found}: pass the variant of one of them (variant='fp16' reads "
                                        "'diffusion_pytorch_model.fp16.safetensors')")

        config, state = read_pretrained(path, map_location=device, weights_name=names)
        config_file = path / CONFIG_NAME
        name = config.pop("_class_name", cls.__name__)
        if name != cls.__name__:
            raise ValueError(f"{str(config_file)!r} describes a {name}, not a {cls.__name__}")
        arguments = {k: v for k, v in config.items() if not str(k).startswith("_")}  # the rest is metadata
        unknown = sorted(set(arguments) - init_keys)
        if unknown:
            raise ValueError(f"{str(config_file)!r} has config entries that {cls.__name__} does not take: {unknown} "
                             f"(written by a newer energycrf, or edited?); it takes {sorted(init_keys)}")
        model = cls(**{**arguments, **overrides})
        model.load_state_dict(state, strict=True)
        if torch_dtype is not None:
            nn.Module.to(model, dtype=torch_dtype)
        nn.Module.to(model, device)
        model.eval()
        model.pretrained_dir = Path(os.path.abspath(path))  # where it came from: generate() reads the plan beside it
        if output_loading_info:
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    @classmethod
    def _init_keys(cls) -> set[str]:
        """The names of the constructor's arguments (what a config may hold)."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return {p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
