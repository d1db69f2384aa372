"""A plain DDIM sampler loop with the CRF splice, for any latent diffusion model.

Nothing here depends on diffusers: a model is any callable

    model(z_t, t, cond) -> prediction          (z_t: [B, C, H, W], t: int64 tensor [B])

that predicts the noise (``"epsilon"``), the velocity (``"v"``) or the clean latent
(``"x0"``) of the variance-preserving forward process (paper section 3.4):

    z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps,      a_t = alpha_bar_t = prod_{s <= t} (1 - beta_s)

The deterministic DDIM step (eta = 0) from ``t`` to ``t'`` is

    z0_hat = (z_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t)
    z_t'   = sqrt(a_t') z0_hat + sqrt(1 - a_t') eps_hat

with, for ``v = sqrt(a_t) eps - sqrt(1 - a_t) z_0``: ``z0_hat = sqrt(a_t) z_t - sqrt(1 - a_t) v``,
``eps_hat = sqrt(a_t) v + sqrt(1 - a_t) z_t``. A :class:`~energycrf.integrations.plan.SplicePlan`
picks the timesteps; :func:`splice_sample` runs it with the CRF at the splice point, and
:func:`teacher_pair` produces distillation pairs ``(z_s, z_f)``. The diffusers adapter
uses the same :func:`ddim_step` and :func:`crf_to_target`.

Classifier-free guidance belongs inside ``model`` (evaluate both branches, combine);
``crf_cond`` is what the CRF sees (the positive prompt's embeddings).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .plan import CLEAN, SplicePlan, SpliceSchedule

__all__ = [
    "NoiseSchedule",
    "predict_x0_eps",
    "ddim_step",
    "crf_to_target",
    "ddim_sample",
    "splice_sample",
    "teacher_pair",
    "PREDICTIONS",
]

PREDICTIONS = ("epsilon", "v", "x0")
_ALIASES = {"epsilon": "epsilon", "eps": "epsilon", "v": "v", "v_prediction": "v", "x0": "x0", "sample": "x0"}


def _prediction(prediction: str) -> str:
    if prediction not in _ALIASES:
        raise ValueError(
            f"prediction must be one of {PREDICTIONS} (or the diffusers names 'v_prediction', 'sample'), "
            f"got {prediction!r}"
        )
    return _ALIASES[prediction]


class NoiseSchedule:
    """The cumulative products ``a_t = alpha_bar_t`` of a discrete VP noise schedule.

    ``a(t)`` for ``t = 0 .. T-1``; ``a(-1)`` is ``final_alpha_cumprod`` (1 by default:
    the clean end, as diffusers' ``set_alpha_to_one=True``).
    """

    def __init__(self, alphas_cumprod: Tensor, final_alpha_cumprod: float = 1.0):
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if a.numel() < 2 or not torch.isfinite(a).all() or (a <= 0).any() or (a > 1).any():
            raise ValueError("alphas_cumprod must hold at least 2 finite values in (0, 1]")
        if (a[1:] > a[:-1]).any():
            raise ValueError("alphas_cumprod must be non-increasing in t")
        if not 0 < final_alpha_cumprod <= 1:
            raise ValueError(f"final_alpha_cumprod must be in (0, 1], got {final_alpha_cumprod}")
        self.alphas_cumprod = a
        self.final_alpha_cumprod = float(final_alpha_cumprod)

    @classmethod
    def from_betas(
        cls,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        num_train_timesteps: int = 1000,
        final_alpha_cumprod: float = 1.0,
    ) -> NoiseSchedule:
        """``linear``: betas evenly spaced; ``scaled_linear`` (Stable Diffusion): their
        square roots evenly spaced. Defaults: Stable Diffusion 1.5."""
        n = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        else:
            raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {beta_schedule!r}")
        return cls(torch.cumprod(1.0 - betas, 0), final_alpha_cumprod)

    @classmethod
    def from_diffusers(cls, scheduler) -> NoiseSchedule:
        """The schedule of a diffusers scheduler (any with ``alphas_cumprod``)."""
        a = getattr(scheduler, "alphas_cumprod", None)
        if a is None:
            raise TypeError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod")
        final = getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0))
        return cls(a, float(final))

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    def a(self, t: int) -> float:
        """``alpha_bar_t`` (``t = -1``: the clean end)."""
        t = int(t)
        if t == CLEAN:
            return self.final_alpha_cumprod
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep must be in [0, {self.num_train_timesteps}) or -1, got {t}")
        return float(self.alphas_cumprod[t])

    def sigma(self, t: int) -> float:
        """The sigma-space noise level ``sqrt((1 - a_t) / a_t)`` (Euler/Karras parametrisation)."""
        a = self.a(t)
        return ((1.0 - a) / a) ** 0.5


def predict_x0_eps(model_output: Tensor, z_t: Tensor, a_t: float, prediction: str = "epsilon") -> tuple[Tensor, Tensor]:
    """``(z0_hat, eps_hat)`` from a model's output at noise level ``a_t`` (module docstring)."""
    prediction = _prediction(prediction)
    sa, sb = a_t**0.5, (1.0 - a_t) ** 0.5
    if prediction == "epsilon":
        return (z_t - sb * model_output) / sa, model_output
    if prediction == "x0":
        return model_output, (z_t - sa * model_output) / sb
    return sa * z_t - sb * model_output, sa * model_output + sb * z_t


def ddim_step(
    model_output: Tensor,
    z_t: Tensor,
    a_t: float,
    a_prev: float,
    prediction: str = "epsilon",
    eta: float = 0.0,
    noise: Tensor | None = None,
    clip: Callable[[Tensor], Tensor] | None = None,
    rederive_eps: bool = False,
) -> tuple[Tensor, Tensor]:
    """One DDIM step (Song et al., eqs. 12 and 16) from noise level ``a_t`` to ``a_prev``.

    Returns ``(z_prev, z0_hat)``. ``eta > 0`` adds ``sigma_t = eta sqrt((1-a')/(1-a))
    sqrt(1 - a/a')`` times ``noise``; ``clip`` (optional) post-processes ``z0_hat``, and
    ``rederive_eps=True`` re-derives ``eps_hat`` from the clipped ``z0_hat`` (diffusers'
    ``use_clipped_model_output``).
    """
    z0, eps = predict_x0_eps(model_output, z_t, a_t, prediction)
    if clip is not None:
        z0 = clip(z0)
    if rederive_eps:
        eps = (z_t - a_t**0.5 * z0) / (1.0 - a_t) ** 0.5
    std = 0.0
    if eta > 0:
        var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
        std = eta * max(var, 0.0) ** 0.5
    z_prev = a_prev**0.5 * z0 + max(1.0 - a_prev - std**2, 0.0) ** 0.5 * eps
    if std > 0:
        if noise is None:
            raise ValueError("eta > 0 needs `noise` (a tensor like z_t)")
        z_prev = z_prev + std * noise
    return z_prev, z0


def crf_to_target(crf_out: Tensor, z_s: Tensor, a_s: float, a_target: float, crf_output: str) -> Tensor:
    """The latent that enters the post-CRF steps, from the CRF output ``M = M(z_s, c)``.

    ``crf_output="post"``: ``M`` is that latent. ``"clean"``: ``M`` is the clean latent; the
    DDIM jump with ``M`` as the ``x_0`` prediction gives
    ``sqrt(a_p) M + sqrt(1 - a_p) (z_s - sqrt(a_s) M) / sqrt(1 - a_s)`` (``a_p = 1``: ``M``).
    """
    if crf_output == "post":
        return crf_out
    if crf_output != "clean":
        raise ValueError(f"crf_output must be 'clean' or 'post', got {crf_output!r}")
    if a_target >= 1.0:
        return crf_out
    eps = (z_s - a_s**0.5 * crf_out) / (1.0 - a_s) ** 0.5
    return a_target**0.5 * crf_out + (1.0 - a_target) ** 0.5 * eps


def _check_latent(name: str, z) -> Tensor:
    if not isinstance(z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 4:
        raise ValueError(f"{name} must be [B, C, H, W], got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {z.dtype}")
    return z


def _call_model(model, z, t: int, cond, name="model"):
    tt = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)
    out = model(z, tt, cond)
    if not isinstance(out, Tensor) or out.shape != z.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a tensor shaped like the latent {tuple(z.shape)}, got {got}")
    return out


def ddim_sample(
    model: Callable,
    z: Tensor,
    schedule: NoiseSchedule,
    timesteps,
    prev_timesteps=None,
    cond=None,
    prediction: str = "epsilon",
    on_step: Callable[[int, int, int, Tensor], Tensor | None] | None = None,
) -> Tensor:
    """DDIM (eta = 0) over explicit ``timesteps``; step ``i`` goes ``timesteps[i] -> prev_timesteps[i]``.

    ``prev_timesteps`` defaults to the next entry (-1, the clean end, after the last).
    ``on_step(i, t, t_prev, z_prev)`` runs after each step and may return a replacement.
    """
    _check_latent("z", z)
    prediction = _prediction(prediction)
    timesteps = [int(t) for t in timesteps]
    if prev_timesteps is None:
        prev_timesteps = timesteps[1:] + [CLEAN]
    prev_timesteps = [int(t) for t in prev_timesteps]
    if len(prev_timesteps) != len(timesteps):
        raise ValueError(
            f"prev_timesteps must have one entry per timestep ({len(timesteps)}), got {len(prev_timesteps)}"
        )
    for t, tp in zip(timesteps, prev_timesteps):
        if tp >= t:
            raise ValueError(f"each step must lower the timestep, got {t} -> {tp}")
    for i, (t, tp) in enumerate(zip(timesteps, prev_timesteps)):
        out = _call_model(model, z, t, cond)
        z, _ = ddim_step(out, z, schedule.a(t), schedule.a(tp), prediction)
        if not torch.isfinite(z).all():
            raise FloatingPointError(f"non-finite latent after the DDIM step at t={t} (step {i})")
        if on_step is not None:
            new = on_step(i, t, tp, z)
            if new is not None:
                z = new
    return z


def _apply_crf(crf, z_s: Tensor, crf_cond, sched: SpliceSchedule, schedule: NoiseSchedule, crf_output: str) -> Tensor:
    out = crf(z_s, crf_cond)
    if not isinstance(out, Tensor) or out.shape != z_s.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"crf must return a tensor shaped like its input {tuple(z_s.shape)}, got {got}")
    if not torch.isfinite(out).all():
        raise FloatingPointError("the CRF returned non-finite values at the splice point")
    a_p = schedule.a(sched.post_entry_timestep) if sched.post else 1.0  # no post step: M is the output
    return crf_to_target(out, z_s, schedule.a(sched.splice_timestep), a_p, crf_output)


def splice_sample(
    model: Callable,
    crf: Callable,
    z: Tensor,
    schedule: NoiseSchedule,
    plan: SplicePlan | None = None,
    cond=None,
    crf_cond=None,
    prediction: str = "epsilon",
    spacing: str = "leading",
    steps_offset: int = 0,
) -> Tensor:
    """Sample from noise ``z`` (at the first pre-CRF timestep) with the plan's splice.

    Runs ``plan.pre_run`` DDIM steps to the splice timestep ``t_s``, applies
    ``crf(z_s, crf_cond)``, converts per ``plan.crf_output`` (:func:`crf_to_target`), and runs
    the ``plan.post_run`` final steps: ``plan.unet_calls`` model calls in all.
    """
    plan = SplicePlan() if plan is None else plan
    if not isinstance(plan, SplicePlan):
        raise TypeError(f"plan must be a SplicePlan or None, got {type(plan).__name__}")
    sched = plan.schedule(schedule.num_train_timesteps, spacing, steps_offset)

    def on_step(i, t, tp, z_prev):
        if i == sched.crf_index:
            return _apply_crf(crf, z_prev, crf_cond, sched, schedule, plan.crf_output)
        return None

    return ddim_sample(
        model, z, schedule, sched.timesteps, sched.prev_timesteps, cond, prediction, on_step=on_step
    )


def teacher_pair(
    model: Callable,
    z: Tensor,
    schedule: NoiseSchedule,
    plan: SplicePlan | None = None,
    cond=None,
    prediction: str = "epsilon",
    spacing: str = "leading",
    steps_offset: int = 0,
    teacher: str = "plan",
) -> tuple[Tensor, Tensor]:
    """Distillation pair ``(z_s, z_f)`` along a teacher trajectory (paper section 3.5).

    ``z_s``: the latent at the splice timestep; ``z_f``: the CRF's target, the final
    latent (``crf_output="clean"``) or the latent at the first post-CRF timestep
    (``"post"``). ``teacher`` as in :meth:`SpliceSchedule.teacher_timesteps`.
    """
    plan = SplicePlan() if plan is None else plan
    sched = plan.schedule(schedule.num_train_timesteps, spacing, steps_offset)
    ts = list(sched.teacher_timesteps(teacher))
    captured: dict[int, Tensor] = {}

    def on_step(i, t, tp, z_prev):
        if tp in (sched.splice_timestep, sched.target_timestep):
            captured[tp] = z_prev
        return None

    z_final = ddim_sample(model, z, schedule, ts, None, cond, prediction, on_step=on_step)
    z_f = z_final if sched.target_timestep == CLEAN else captured[sched.target_timestep]
    return captured[sched.splice_timestep], z_f
