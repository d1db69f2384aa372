"""The splice plan: which denoising steps a latent diffusion model runs, where the CRF goes.

The paper's inference pipeline (section 4, "Inference Pipeline"; appendix G) runs

    31 DDIM steps of a 40-step schedule  ->  the CRF  ->  the last 2 steps of a 50-step schedule

so 33 UNet calls replace 50. A :class:`SplicePlan` states this with four integers and
one choice:

- ``pre_steps`` / ``pre_run``: the pre-CRF schedule has ``pre_steps`` timesteps, of which
  the first ``pre_run`` are run. The latent then sits at the splice timestep
  ``t_s = pre_grid[pre_run]`` (with the Stable Diffusion 1.5 scheduler: 201).
- the CRF ``M`` maps ``z_{t_s}`` to ``M(z_{t_s}, c)``;
- ``post_steps`` / ``post_run``: the last ``post_run`` timesteps of a ``post_steps``-step
  schedule are run after the CRF (SD 1.5: t = 21, 1);
- ``crf_output``: what ``M(z_s)`` stands for.
  ``"clean"`` (default, the paper's distillation target ``z_f``, section 3.5): the clean
  latent ``z_0``. It is carried to the first post-CRF timestep ``t_p`` by the
  deterministic DDIM jump that uses ``M(z_s)`` as the ``x_0`` prediction:
  ``eps = (z_s - sqrt(a_s) M) / sqrt(1 - a_s)``, ``z_{t_p} = sqrt(a_p) M + sqrt(1 - a_p) eps``
  (``a`` = the cumulative product ``alpha_bar`` of the noise schedule).
  ``"post"``: the latent at ``t_p`` itself; it goes into the post-CRF steps unchanged.

Timestep grids follow DDIM's spacing rules (``leading``, ``trailing``, ``linspace``,
with ``steps_offset``), read from the scheduler's configuration, so the plan gives
the same timesteps as ``DDIMScheduler.set_timesteps``.

A :class:`CorrectorPlan` states the other use of the CRF: a sampler ``S`` (DDIM,
DPM-Solver++ or UniPC) with timestep spacing ``P`` runs ``N`` UNet calls to the end, and
the CRF corrects the final (clean) latent, ``z_0 <- M(z_0, c)``. :func:`plan_from_dict`
reads either plan back from its dictionary.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["SplicePlan", "SpliceSchedule", "CorrectorPlan", "plan_from_dict", "ddim_timesteps", "CLEAN", "SAMPLERS"]

#: The timestep value that stands for "the clean latent" (after the final step).
CLEAN = -1

_CRF_OUTPUTS = ("clean", "post")
_SPACINGS = ("leading", "trailing", "linspace")
#: The samplers a :class:`CorrectorPlan` can name (diffusers' DDIM, DPM-Solver++ 2M, UniPC).
SAMPLERS = ("ddim", "dpmpp", "unipc")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def ddim_timesteps(
    num_steps: int,
    num_train_timesteps: int = 1000,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> list[int]:
    """The decreasing timestep grid of a ``num_steps``-step DDIM schedule.

    ``leading``: ``k * (T // N) + steps_offset`` for ``k = N-1 .. 0``;
    ``trailing``: ``round(T - k * T / N) - 1``; ``linspace``: ``round(linspace(0, T-1, N))``
    reversed (``T = num_train_timesteps``, ``N = num_steps``). Identical to
    ``diffusers.DDIMScheduler.set_timesteps`` with the same configuration.
    """
    _check_int("num_steps", num_steps, 1)
    _check_int("num_train_timesteps", num_train_timesteps, 1)
    _check_int("steps_offset", steps_offset, 0)
    if num_steps > num_train_timesteps:
        raise ValueError(
            f"num_steps must be <= num_train_timesteps ({num_train_timesteps}), got {num_steps}"
        )
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        grid = [k * ratio + steps_offset for k in range(num_steps - 1, -1, -1)]
    elif spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        grid = [int(t) - 1 for t in np.round(np.arange(num_train_timesteps, 0, -ratio))]
    elif spacing == "linspace":
        grid = [int(t) for t in np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1]]
    else:
        raise ValueError(f"spacing must be one of {_SPACINGS}, got {spacing!r}")
    if any(t >= num_train_timesteps for t in grid):
        raise ValueError(
            f"steps_offset={steps_offset} pushes the {spacing} grid of {num_steps} steps past "
            f"num_train_timesteps={num_train_timesteps} (largest timestep {max(grid)})"
        )
    return grid


@dataclass(frozen=True)
class SpliceSchedule:
    """The concrete timesteps of a plan for one noise schedule (see :meth:`SplicePlan.schedule`).

    Attributes:
        pre: the pre-CRF timesteps that are run (one UNet call each).
        splice_timestep: ``t_s``, the timestep of the latent the CRF receives.
        post: the post-CRF timesteps that are run (one UNet call each).
        target_timestep: the timestep the CRF output stands for: ``post[0]`` for
            ``crf_output="post"``, :data:`CLEAN` (-1) for ``"clean"``.
        prev_timesteps: for each entry of :attr:`timesteps`, the timestep its step lands
            on (-1 = clean). The step at ``pre[-1]`` lands on ``t_s``, not on ``post[0]``.
        pre_grid, post_grid: the full grids of both schedules.
    """

    pre: tuple[int, ...]
    splice_timestep: int
    post: tuple[int, ...]
    target_timestep: int
    prev_timesteps: tuple[int, ...]
    pre_grid: tuple[int, ...]
    post_grid: tuple[int, ...]

    @property
    def timesteps(self) -> tuple[int, ...]:
        """All UNet-call timesteps in order: ``pre + post``."""
        return self.pre + self.post

    @property
    def crf_index(self) -> int:
        """Index (in :attr:`timesteps`) of the step after which the CRF is applied."""
        return len(self.pre) - 1

    @property
    def post_entry_timestep(self) -> int:
        """The timestep of the latent that enters the post-CRF steps (-1 when none run)."""
        return self.post[0] if self.post else CLEAN

    def teacher_timesteps(self, teacher: str = "plan") -> tuple[int, ...]:
        """Timesteps of a teacher trajectory through the splice point (distillation data).

        ``"plan"``: the plan's pre-CRF steps, then every post-grid step from ``t_s`` down
        (``t_s`` is inserted when it is not on the post grid): ``z_s`` has exactly the
        distribution the CRF meets at inference. ``"full"``: the whole post grid (the
        paper's "step 40 of 50" data, section 4); ``t_s`` must lie on it.
        """
        if teacher == "plan":
            tail = [t for t in self.post_grid if t < self.splice_timestep]
            return self.pre + (self.splice_timestep,) + tuple(tail)
        if teacher == "full":
            if self.splice_timestep not in self.post_grid:
                raise ValueError(
                    f"teacher='full' needs the splice timestep {self.splice_timestep} on the post-CRF grid "
                    f"{list(self.post_grid)}; use teacher='plan'"
                )
            return self.post_grid
        raise ValueError(f"teacher must be 'plan' or 'full', got {teacher!r}")


@dataclass(frozen=True)
class SplicePlan:
    """Where the CRF replaces denoising steps (defaults: the paper's 31 of 40, CRF, last 2 of 50).

    Example::

        >>> plan = SplicePlan()
        >>> plan.unet_calls, plan.baseline_unet_calls
        (33, 50)
        >>> s = plan.schedule(num_train_timesteps=1000, spacing="leading", steps_offset=1)
        >>> s.pre[-1], s.splice_timestep, s.post
        (226, 201, (21, 1))
    """

    pre_steps: int = 40
    pre_run: int = 31
    post_steps: int = 50
    post_run: int = 2
    crf_output: str = "clean"

    def __post_init__(self):
        _check_int("pre_steps", self.pre_steps, 2)
        _check_int("pre_run", self.pre_run, 1)
        _check_int("post_steps", self.post_steps, 1)
        _check_int("post_run", self.post_run, 0)
        if self.pre_run >= self.pre_steps:
            raise ValueError(
                f"pre_run must be < pre_steps: running all {self.pre_steps} pre-CRF steps leaves a clean "
                f"latent and nothing for the CRF to replace (got pre_run={self.pre_run})"
            )
        if self.post_run > self.post_steps:
            raise ValueError(
                f"post_run must be <= post_steps ({self.post_steps}), got {self.post_run}"
            )
        if self.crf_output not in _CRF_OUTPUTS:
            raise ValueError(f"crf_output must be one of {_CRF_OUTPUTS}, got {self.crf_output!r}")
        if self.crf_output == "post" and self.post_run == 0:
            raise ValueError(
                "crf_output='post' says the CRF output is the latent at the first post-CRF timestep, "
                "but post_run=0 runs no post-CRF step; use crf_output='clean'"
            )

    @classmethod
    def paper(cls) -> SplicePlan:
        """The paper's plan: 31 of 40 DDIM steps, CRF, the last 2 of 50 (33 UNet calls)."""
        return cls()

    @property
    def unet_calls(self) -> int:
        """UNet calls per image batch: ``pre_run + post_run``."""
        return self.pre_run + self.post_run

    @property
    def baseline_unet_calls(self) -> int:
        """UNet calls of the unspliced post-CRF schedule (the teacher): ``post_steps``."""
        return self.post_steps

    def saving(self, crf_cost: float = 0.0) -> float:
        """Fraction of the baseline's cost saved, the CRF costing ``crf_cost`` UNet calls.

        ``1 - (unet_calls + crf_cost) / baseline_unet_calls``; the paper's plan with a free
        CRF saves 34%.
        """
        if not isinstance(crf_cost, (int, float)) or isinstance(crf_cost, bool) or not math.isfinite(crf_cost) or crf_cost < 0:
            raise ValueError(f"crf_cost must be a finite number >= 0 (in UNet calls), got {crf_cost!r}")
        return 1.0 - (self.unet_calls + crf_cost) / self.baseline_unet_calls

    def schedule(
        self,
        num_train_timesteps: int = 1000,
        spacing: str = "leading",
        steps_offset: int = 0,
    ) -> SpliceSchedule:
        """The plan's timesteps for one noise schedule; raises ``ValueError`` if impossible.

        The post-CRF steps must all sit strictly below the splice timestep (the CRF moves
        the latent towards the clean end; a post-CRF step above ``t_s`` would add noise
        back and is refused).
        """
        pre_grid = ddim_timesteps(self.pre_steps, num_train_timesteps, spacing, steps_offset)
        post_grid = ddim_timesteps(self.post_steps, num_train_timesteps, spacing, steps_offset)
        pre = tuple(pre_grid[: self.pre_run])
        t_s = pre_grid[self.pre_run]
        post = tuple(post_grid[len(post_grid) - self.post_run :]) if self.post_run else ()
        if post and post[0] >= t_s:
            raise ValueError(
                f"impossible plan: the first post-CRF timestep {post[0]} (last {self.post_run} of "
                f"{self.post_steps}) is not below the splice timestep {t_s} (after {self.pre_run} of "
                f"{self.pre_steps}); lower post_run or raise pre_run"
            )
        prev = list(pre[1:]) + [t_s] + (list(post[1:]) + [CLEAN] if post else [])
        target = post[0] if self.crf_output == "post" else CLEAN
        return SpliceSchedule(
            pre=pre,
            splice_timestep=t_s,
            post=post,
            target_timestep=target,
            prev_timesteps=tuple(prev),
            pre_grid=tuple(pre_grid),
            post_grid=tuple(post_grid),
        )

    def schedule_for(self, config: Mapping) -> SpliceSchedule:
        """:meth:`schedule` with the grid settings read from a scheduler configuration."""
        return self.schedule(
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            spacing=str(config.get("timestep_spacing", "leading")),
            steps_offset=int(config.get("steps_offset", 0)),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping) -> SplicePlan:
        if not isinstance(data, Mapping):
            raise TypeError(f"plan data must be a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown plan fields {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class CorrectorPlan:
    """Sampler ``S`` with spacing ``P`` for ``N`` UNet calls, then the CRF on the final latent.

    The CRF ``M`` is a *corrector*: it receives the sampler's clean latent ``z_0`` (the
    latent the VAE would decode) and returns the corrected one, ``z_0 <- M(z_0, c)``; it
    is trained to map that latent to the teacher's (many-step) latent for the same prompt
    and noise. Cost: ``N`` UNet calls plus one CRF call.

    Example::

        >>> plan = CorrectorPlan("dpmpp", "trailing", 8)
        >>> plan.unet_calls, plan.describe()
        (8, 'dpmpp (trailing) 8 + CRF')
        >>> plan_from_dict(plan.to_dict()) == plan
        True
    """

    sampler: str = "dpmpp"
    spacing: str = "trailing"
    calls: int = 8

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.spacing not in _SPACINGS:
            raise ValueError(f"spacing must be one of {_SPACINGS}, got {self.spacing!r}")
        _check_int("calls", self.calls, 1)

    @property
    def unet_calls(self) -> int:
        """UNet calls per image batch: ``calls``."""
        return self.calls

    def describe(self) -> str:
        return f"{self.sampler} ({self.spacing}) {self.calls} + CRF"

    def to_dict(self) -> dict:
        return {"kind": "corrector", **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping) -> CorrectorPlan:
        if not isinstance(data, Mapping):
            raise TypeError(f"plan data must be a mapping, got {type(data).__name__}")
        data = dict(data)
        if data.pop("kind", "corrector") != "corrector":
            raise ValueError("plan data of kind 'corrector' expected")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown plan fields {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**data)


def plan_from_dict(data: Mapping) -> SplicePlan | CorrectorPlan:
    """A :class:`SplicePlan` or :class:`CorrectorPlan` from its ``to_dict()`` (``kind`` tells which)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"plan data must be a mapping, got {type(data).__name__}")
    kind = data.get("kind", "splice")
    if kind == "corrector":
        return CorrectorPlan.from_dict(data)
    if kind == "splice":
        return SplicePlan.from_dict({k: v for k, v in data.items() if k != "kind"})
    raise ValueError(f"plan kind must be 'splice' or 'corrector', got {kind!r}")
