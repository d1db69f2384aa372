"""What a sampling method costs, counted in UNet calls.

- :class:`UNetCallCounter`: a forward hook on a pipeline's UNet that counts its calls
  (with classifier-free guidance one call evaluates the doubled batch ``[negative;
  positive]``, as the pipeline does);
- :func:`crf_cost`: the CRF's cost in *UNet-call equivalents* on this machine, now:
  ``r = median(t_CRF) / median(t_UNet)``, the UNet evaluated as the pipeline evaluates it
  for a guided step (batch ``2B``), the CRF on the positive half (batch ``B``), timed in
  interleaved repeats so that a slow spell of a shared machine hits both alike.

A method's budget is then ``UNet calls + r`` per CRF call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

__all__ = ["UNetCallCounter", "CostReport", "interleaved_medians", "crf_cost"]


class UNetCallCounter:
    """Counts the forward calls of ``module`` (a UNet) while the context is open.

    ``calls`` is the number of forward calls, ``batch_sizes`` the leading size of each
    call's first input. ``reset()`` starts again from zero.

    Example::

        with UNetCallCounter(pipe.unet) as counter:
            pipe("a bag", num_inference_steps=8)
        counter.calls  # 8
    """

    def __init__(self, module: torch.nn.Module):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module (a pipeline's unet), got {type(module).__name__}")
        self.module = module
        self.calls = 0
        self.batch_sizes: list[int] = []
        self._handle = None

    def _hook(self, module, args, kwargs, output):
        self.calls += 1
        x = args[0] if args else kwargs.get("sample")
        self.batch_sizes.append(int(x.shape[0]) if isinstance(x, torch.Tensor) else -1)

    def reset(self) -> None:
        self.calls = 0
        self.batch_sizes = []

    def __enter__(self) -> UNetCallCounter:
        if self._handle is not None:
            raise RuntimeError("UNetCallCounter is already counting (not re-entrant)")
        self._handle = self.module.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None


@dataclass(frozen=True)
class CostReport:
    """The CRF's cost against one guided UNet call, measured in the same run.

    Attributes:
        unet_calls: ``crf_seconds / unet_seconds``, the CRF's cost in UNet calls.
        crf_seconds, unet_seconds: medians over ``repeats`` interleaved timings.
        batch_size: images per call (the UNet sees ``2 * batch_size`` when ``guided``).
    """

    unet_calls: float
    crf_seconds: float
    unet_seconds: float
    batch_size: int
    repeats: int
    guided: bool
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def interleaved_medians(fns: list[Callable[[], object]], repeats: int = 9, warmup: int = 1) -> list[float]:
    """Median wall time of each function, the functions taking turns ``repeats`` times.

    ``warmup`` untimed rounds come first (allocations, lazy initialisation).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    times: list[list[float]] = [[] for _ in fns]
    for r in range(warmup + repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[k].append(dt)
    return [statistics.median(t) for t in times]


@torch.no_grad()
def crf_cost(pipe, crf: Callable, batch_size: int = 8, *, repeats: int = 9, guided: bool = True,
             prompt_embeds: torch.Tensor | None = None, timestep: int = 500, seed: int = 0) -> CostReport:
    """The CRF's cost in UNet calls for ``pipe`` at ``batch_size`` images (see the module docstring).

    ``prompt_embeds`` (``[B, L, D]``, the CRF's condition) default to the pipeline's
    encoding of empty prompts; the latent is Gaussian noise of the UNet's sample shape.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not callable(crf):
        raise TypeError(f"crf must be callable as crf(z, c), got {type(crf).__name__}")
    unet = pipe.unet
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size, cfg.sample_size)
    device, dtype = unet.device, unet.dtype
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((batch_size, cfg.in_channels, *size), generator=gen).to(device=device, dtype=dtype)
    if prompt_embeds is None:
        prompt_embeds = pipe.encode_prompt([""] * batch_size, device, 1, False)[0]
    c = prompt_embeds.to(device=device, dtype=dtype)
    if c.shape[0] != batch_size:
        raise ValueError(f"prompt_embeds must have batch_size={batch_size} rows, got {tuple(c.shape)}")
    zu, cu = (torch.cat([z, z]), torch.cat([c, c])) if guided else (z, c)
    t = torch.tensor(timestep, device=device)
    was_training = crf.training if isinstance(crf, torch.nn.Module) else None
    if was_training:
        crf.eval()
    try:
        c_crf = None if getattr(crf, "cond_dim", 0) is None else c  # an unconditioned LatentCRF takes no c
        t_crf, t_unet = interleaved_medians([lambda: crf(z, c_crf), lambda: unet(zu, t, encoder_hidden_states=cu)],
                                            repeats=repeats)
    finally:
        if was_training:
            crf.train()
    return CostReport(t_crf / t_unet, t_crf, t_unet, batch_size, repeats, guided, torch.get_num_threads())
