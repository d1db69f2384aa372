"""The data of ``energycrf train``: what the pipeline fixes, stage 1's latents and captions, stage 2's shards.

Everything a user passes is checked before the work starts and refused with a
:class:`~energycrf.apps._command.UsageError` naming the option: the pipeline's
configuration files, the images (readable), the latents (shapes, channels, finite), the
captions file, the shards (written by ``energycrf distill-data``, one plan, every rank,
this pipeline's noise schedule and widths).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ._command import UsageError

_CFG = "config.json"


@dataclass(frozen=True)
class PipelineFacts:
    """What a pipeline directory fixes for its CRF, read from its configuration files (no weights)."""

    path: str
    class_name: str
    channels: int  # latent channels
    cond_dim: int  # width of the token embeddings the UNet attends to
    image_channels: int | None  # 3 (RGB) or 1 (grey); None without a VAE
    scaling_factor: float
    shift_factor: float | None
    resolution: tuple[int, int] | None  # (H, W) of the images the pipeline makes
    scheduler: dict

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "scheduler"}


def _config(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError("--pipeline", "a pipeline directory with readable configuration files",
                         f"{os.fspath(path)!r} ({type(err).__name__}: {' '.join(str(err).split())})") from None
    if not isinstance(doc, dict):
        raise UsageError("--pipeline", "a pipeline directory with readable configuration files",
                         f"{os.fspath(path)!r} (not a JSON object)")
    return doc


def pipeline_facts(folder: Path) -> PipelineFacts:
    """The latent channels, text width, image format and noise schedule of a pipeline directory."""
    index = _config(folder / "model_index.json")
    for part in ("unet", "scheduler"):
        if not (isinstance(index.get(part), list) and index[part][0] is not None):
            raise UsageError("--pipeline", f"a latent diffusion pipeline with a {part}",
                             f"{os.fspath(folder)!r}, whose model_index.json has none")
    unet = _config(folder / "unet" / _CFG)
    scheduler = _config(folder / "scheduler" / "scheduler_config.json")
    width = unet.get("encoder_hid_dim") or unet.get("cross_attention_dim")
    if isinstance(width, list):
        width = width[0] if len(set(width)) == 1 else None
    if not isinstance(width, int):
        raise UsageError("--pipeline", "a UNet conditioned on text tokens (cross_attention_dim)",
                         f"{os.fspath(folder)!r} (cross_attention_dim {unet.get('cross_attention_dim')!r})")
    vae = _config(folder / "vae" / _CFG) if isinstance(index.get("vae"), list) and index["vae"][0] else None
    channels = int(vae.get("latent_channels", 4)) if vae else int(unet.get("in_channels", 4))
    resolution = None
    if vae is not None:
        factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
        size = unet.get("sample_size")
        if isinstance(size, int):
            resolution = (size * factor, size * factor)
        elif isinstance(size, list) and len(size) == 2:
            resolution = (size[0] * factor, size[1] * factor)
    return PipelineFacts(
        path=os.fspath(folder.resolve()), class_name=str(index.get("_class_name")), channels=channels,
        cond_dim=int(width), image_channels=int(vae.get("in_channels", 3)) if vae else None,
        scaling_factor=float(vae.get("scaling_factor") or 0.18215) if vae else 1.0,
        shift_factor=(float(vae["shift_factor"]) if vae.get("shift_factor") is not None else None) if vae else None,
        resolution=resolution, scheduler={k: v for k, v in scheduler.items() if not k.startswith("_")})


def fingerprint(files: list[Path]) -> list[list]:
    """``[name, size]`` of each input file: a resumed run must see the same data."""
    return [[f.name, f.stat().st_size] for f in files]


# --------------------------------------------------------------------------- stage 1
class Stage1Latents(Dataset):
    """Stage-1 items ``{"z", "prompt_embeds", "index"}``: latent ``i`` with its caption's token states
    ``conds[cond_index[i]]`` (a caption shared by many latents is stored once)."""

    def __init__(self, z: torch.Tensor, cond_index: torch.Tensor, conds: torch.Tensor):
        if z.ndim != 4 or conds.ndim != 3 or cond_index.shape != (len(z),):
            raise ValueError(f"z must be (N, C, h, w), conds (K, L, D) and cond_index (N,), got "
                             f"{tuple(z.shape)}, {tuple(conds.shape)}, {tuple(cond_index.shape)}")
        self.z, self.cond_index, self.conds = z, cond_index.long(), conds

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        return {"z": self.z[index], "prompt_embeds": self.conds[self.cond_index[index]], "index": index}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"z": self.z.contiguous(), "cond_index": self.cond_index, "conds": self.conds.contiguous()}


def captions(files: list[Path], folder: Path, option: str, default: str) -> tuple[list[str], list[str]]:
    """Each file's caption and where it came from: ``NAME.txt`` beside it (``"NAME.txt"``), else its
    ``text`` in ``metadata.jsonl`` (lines ``{"file_name": ..., "text": ...}``), else ``default``
    (``"--caption"``)."""
    table: dict[str, str] = {}
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                table[Path(rec["file_name"]).name] = str(rec["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UsageError(option, "a metadata.jsonl of {\"file_name\": ..., \"text\": ...} lines",
                                 f"line {n} of {os.fspath(meta)!r}: {line[:60]!r}") from None
    texts, sources = [], []
    for f in files:
        side = f.with_suffix(".txt")
        if side.is_file():
            texts.append(" ".join(side.read_text(encoding="utf-8").split()))
            sources.append("NAME.txt")
        elif f.name in table:
            texts.append(table[f.name])
            sources.append("metadata.jsonl")
        else:
            texts.append(default)
            sources.append("--caption")
    return texts, sources


def check_images(files: list[Path]) -> None:
    """Open every image's header: an unreadable one is refused before any work."""
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as im:
                im.size  # noqa: B018 (reads the header)
        except (OSError, UnidentifiedImageError) as err:
            raise UsageError("--images", "a folder of readable images", f"{f.name!r} ({' '.join(str(err).split())})") \
                from None


def load_image(file: Path, size: tuple[int, int], channels: int) -> torch.Tensor:
    """``[channels, H, W]`` in [-1, 1]: the image scaled to cover ``size`` (bicubic) and centre-cropped."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(file) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode == "P":  # a palette (perhaps with a transparent entry): through RGBA, as PIL asks
            im = im.convert("RGBA")
        im = im.convert("L" if channels == 1 else "RGB")
        h, w = size
        scale = max(h / im.height, w / im.width)
        im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.Resampling.BICUBIC)
        top, left = (im.height - h) // 2, (im.width - w) // 2
        a = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.float32)
    t = torch.from_numpy(a.copy()) / 127.5 - 1.0
    return t[None] if channels == 1 else t.permute(2, 0, 1)


@torch.no_grad()
def encode_images(facts: PipelineFacts, files: list[Path], size: tuple[int, int], device, progress: bool,
                  batch_size: int = 8) -> torch.Tensor:
    """The latents the UNet sees: ``scaling_factor * (E[q(z | x)] - shift_factor)``, ``[N, C, h, w]``."""
    import diffusers
    from tqdm.auto import tqdm

    index = json.loads((Path(facts.path) / "model_index.json").read_text(encoding="utf-8"))
    cls = getattr(diffusers, index["vae"][1])
    with quiet_loading():
        vae = cls.from_pretrained(os.path.join(facts.path, "vae"), local_files_only=True).to(device).eval()
    out = []
    for k in tqdm(range(0, len(files), batch_size), desc="encode images", disable=not progress):
        x = torch.stack([load_image(f, size, facts.image_channels) for f in files[k:k + batch_size]]).to(device)
        enc = vae.encode(x)
        z = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
        if facts.shift_factor is not None:
            z = z - facts.shift_factor
        out.append((z * facts.scaling_factor).float().cpu())
    return torch.cat(out)


@contextmanager
def quiet_loading():
    """No "Loading pipeline components" / "Loading weights" bars (the command has its own), and
    not transformers' notices that an image processor the pipeline does not use needs torchvision."""
    import logging

    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    notices = logging.getLogger("transformers.utils.import_utils")
    quiet = lambda record: "requires torchvision (not installed)" not in record.getMessage()  # noqa: E731
    was = dl.is_progress_bar_enabled(), tl.is_progress_bar_enabled()
    dl.disable_progress_bar()
    tl.disable_progress_bar()
    notices.addFilter(quiet)
    try:
        yield
    finally:
        notices.removeFilter(quiet)
        if was[0]:
            dl.enable_progress_bar()
        if was[1]:
            tl.enable_progress_bar()


def text_pipeline(facts: PipelineFacts, device):
    """The pipeline without its UNet and VAE (its text encoders and tokenizers), to encode captions."""
    with quiet_loading():
        if facts.class_name == "MiniLMStableDiffusionPipeline":  # the shipped model: its own class, all of it
            from .ldm.train import load_pipeline

            return load_pipeline(facts.path).to(device)
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(facts.path, unet=None, vae=None, local_files_only=True)
    return pipe.to(device)


@torch.no_grad()
def encode_texts(pipe, texts: list[str], device, batch_size: int = 64) -> torch.Tensor:
    """The positive prompt token embeddings ``[K, L, D]`` the pipeline hands its UNet (and a CRF)."""
    out = []
    for k in range(0, len(texts), batch_size):
        emb = pipe.encode_prompt(prompt=texts[k:k + batch_size], device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)[0]
        out.append(emb.float().cpu())
    return torch.cat(out)


def read_latents(files: list[Path], facts: PipelineFacts) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Each file's ``latents`` as ``[n, C, h, w]`` and its ``prompt_embeds`` as ``[n, L, D]`` (or None), checked."""
    from safetensors import SafetensorError, safe_open

    zs, embeds, shape = [], [], None
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                keys = set(fh.keys())
                if "latents" not in keys:
                    raise UsageError("--latents", "safetensors files holding 'latents'",
                                     f"{f.name!r} with {sorted(keys)}")
                z = fh.get_tensor("latents")
                e = fh.get_tensor("prompt_embeds") if "prompt_embeds" in keys else None
        except (SafetensorError, OSError) as err:
            raise UsageError("--latents", "readable safetensors files", f"{f.name!r} ({err})") from None
        z = z[None] if z.ndim == 3 else z
        if z.ndim != 4 or z.shape[1] != facts.channels or not z.is_floating_point():
            raise UsageError("--latents", f"float latents [N, {facts.channels}, h, w] or [{facts.channels}, h, w] "
                             "(the pipeline's latent channels)", f"{f.name!r} of {z.dtype} {list(z.shape)}")
        if shape is not None and z.shape[1:] != shape:
            raise UsageError("--latents", f"latents of one size ({list(shape)}, as in {files[0].name!r})",
                             f"{f.name!r} of {list(z.shape[1:])}")
        shape = z.shape[1:]
        if not torch.isfinite(z).all():
            raise UsageError("--latents", "finite latents", f"{f.name!r}, which holds NaN or inf")
        if e is not None:
            e = e[None].expand(len(z), -1, -1) if e.ndim == 2 else e
            if e.ndim != 3 or len(e) != len(z) or e.shape[-1] != facts.cond_dim or not torch.isfinite(e).all():
                raise UsageError("--latents", f"finite prompt_embeds [{len(z)}, L, {facts.cond_dim}] or [L, "
                                 f"{facts.cond_dim}] (the UNet's text width)", f"{f.name!r} with {list(e.shape)}")
        zs.append(z.float())
        embeds.append(None if e is None else e.float())
    return zs, embeds


def assemble(zs: list[torch.Tensor], embeds: list[torch.Tensor | None], texts: list[str],
             encoded: dict[str, torch.Tensor]) -> Stage1Latents:
    """Stage 1's data set: file ``k``'s rows take its own ``prompt_embeds`` or its caption's encoding."""
    conds, index, slot = [], [], {}
    for z, e, text in zip(zs, embeds, texts):
        if e is None:
            if text not in slot:
                slot[text] = len(conds)
                conds.append(encoded[text])
            index += [slot[text]] * len(z)
        else:
            index += list(range(len(conds), len(conds) + len(e)))
            conds += list(e)
    shapes = {tuple(c.shape) for c in conds}
    if len(shapes) != 1:
        raise UsageError("--latents", "prompt_embeds of one shape, that of the pipeline's text encoder",
                         f"shapes {sorted(shapes)}")
    return Stage1Latents(torch.cat(zs), torch.tensor(index), torch.stack(conds))


# --------------------------------------------------------------------------- stage 2
def check_shards(folder: Path, facts: PipelineFacts) -> dict:
    """The shards' description (plan, teacher, counts, shapes), refusing shards this run cannot use."""
    from safetensors import SafetensorError

    from ..integrations.distill import DistillationShards
    from ..integrations.plan import SplicePlan

    text = os.fspath(folder)
    try:
        data = DistillationShards(folder)
        plan = SplicePlan.from_dict(data.metadata[0]["plan"])
        splice = int(data.metadata[0]["timesteps"]["splice"])
    except (ValueError, TypeError, KeyError, OSError, SafetensorError) as err:
        raise UsageError("--shards", "a folder of shards written by energycrf distill-data",
                         f"{text!r} ({type(err).__name__}: {' '.join(str(err).split())})") from None
    plans = {json.dumps(m.get("plan"), sort_keys=True) for m in data.metadata}
    if len(plans) != 1:
        raise UsageError("--shards", "shards of one plan", f"{text!r} with {len(plans)} plans")
    worlds = {m.get("world_size") for m in data.metadata}
    ranks = {m.get("rank") for m in data.metadata}
    if len(worlds) != 1 or ranks != set(range(next(iter(worlds)))):
        raise UsageError("--shards", "the shards of every rank of one distill-data run",
                         f"{text!r} with ranks {sorted(ranks)} of world sizes {sorted(worlds)}")
    meta = data.metadata[0]
    first = read_shapes(data.paths[0])
    c, d = first["z_s"][1], first["prompt_embeds"][2]
    if c != facts.channels or d != facts.cond_dim:
        raise UsageError("--shards", f"shards of this pipeline's latents ({facts.channels} channels) and text "
                         f"({facts.cond_dim} wide)", f"{text!r} with {c} channels and text {d} wide")
    return {"folder": os.fspath(folder.resolve()), "files": len(data.paths), "samples": len(data),
            "plan": plan, "splice_timestep": splice,
            "teacher": meta.get("teacher"), "guidance_scale": meta.get("guidance_scale"),
            "latent_shape": first["z_s"][1:], "world_size": next(iter(worlds))}


def read_shapes(file: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as fh:
        return {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}
