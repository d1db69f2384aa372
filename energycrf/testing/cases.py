"""Test cases for the conformance suite: a shape, a condition kind and a seed.

A :class:`Case` fixes everything a check needs to build an energy and its inputs
deterministically: latents ``y``, an observation ``x`` (both ``[B, C, H, W]``) and a
condition ``c`` that is ``None``, pooled ``[B, D]`` or tokens ``[B, L, D]``, one per
sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

CONDITION_KINDS = (None, "pooled", "tokens")


@dataclasses.dataclass(frozen=True)
class Case:
    """One drawn test case.

    Attributes:
        batch, channels, height, width: the latent shape ``[B, C, H, W]``.
        condition: ``None``, ``"pooled"`` (``c`` is ``[B, D]``) or ``"tokens"``
            (``c`` is ``[B, L, D]``).
        cond_dim: ``D``, the embedding width (factories of text-conditioned terms use it).
        tokens: ``L``, the number of tokens when ``condition == "tokens"``.
        seed: seeds the inputs and a factory's hyper-parameters (:meth:`generator`).
        init_seed: with ``seed``, seeds torch's global RNG inside :meth:`seeded`, where a
            factory initialises its parameters (the state_dict check rebuilds a term with
            another ``init_seed``: same hyper-parameters, fresh parameters).
        scale: standard deviation of ``y`` and ``x``.
        dtype: the dtype the checks run in (float64 for tight tolerances).
    """

    batch: int = 2
    channels: int = 3
    height: int = 4
    width: int = 5
    condition: str | None = None
    cond_dim: int = 6
    tokens: int = 3
    seed: int = 0
    init_seed: int = 0
    scale: float = 1.0
    dtype: torch.dtype = torch.float64

    def __post_init__(self):
        for name in ("batch", "channels", "height", "width", "cond_dim", "tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Case.{name} must be a positive int, got {value!r}")
        if self.condition not in CONDITION_KINDS:
            raise ValueError(
                f"Case.condition must be one of {CONDITION_KINDS}, got {self.condition!r}"
            )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded by ``seed`` and ``salt`` (for factories' own draws)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def uniform(self, low: float, high: float, salt: int = 0, size=()) -> torch.Tensor:
        """Uniform draws in ``[low, high)`` from :meth:`generator` (float64, CPU)."""
        u = torch.rand(size, generator=self.generator(salt), dtype=torch.float64)
        return low + (high - low) * u

    @contextlib.contextmanager
    def seeded(self, salt: int = 0) -> Iterator[None]:
        """Seed torch's global RNG inside the block (module initialisers use it), then restore."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + self.init_seed * 7_919 + salt + 7)
            yield

    def replace(self, **changes) -> Case:
        return dataclasses.replace(self, **changes)

    def condition_tensor(self, batch: int | None = None, dtype=None, device=None, salt: int = 0):
        """The condition ``c`` of this case (``None``, ``[B, D]`` or ``[B, L, D]``)."""
        if self.condition is None:
            return None
        b = self.batch if batch is None else batch
        shape = (b, self.cond_dim) if self.condition == "pooled" else (b, self.tokens, self.cond_dim)
        g = self.generator(10_000 + salt)
        c = torch.randn(shape, generator=g, dtype=torch.float64)
        return c.to(dtype=dtype or self.dtype, device=device)

    def inputs(self, dtype=None, device=None, salt: int = 0):
        """``(y, x, c)`` for this case, reproducible from ``seed`` (and ``salt``)."""
        dtype = dtype or self.dtype
        g = self.generator(20_000 + salt)
        y = self.scale * torch.randn(self.shape, generator=g, dtype=torch.float64)
        x = self.scale * torch.randn(self.shape, generator=g, dtype=torch.float64)
        c = self.condition_tensor(dtype=dtype, device=device, salt=salt)
        return y.to(dtype=dtype, device=device), x.to(dtype=dtype, device=device), c


DEFAULT_CASES = (
    Case(batch=1, channels=1, height=1, width=1, seed=1),
    Case(batch=2, channels=3, height=3, width=5, condition="pooled", seed=2),
    Case(batch=3, channels=2, height=4, width=3, condition="tokens", seed=3),
    Case(batch=1, channels=4, height=5, width=5, seed=4),
)
"""The fixed cases :func:`energycrf.testing.check_energy` runs when none are given:
a 1x1 image, odd and non-square shapes, ``B`` and ``C`` from 1 up, every condition kind."""
