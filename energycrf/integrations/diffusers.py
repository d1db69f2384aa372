"""Run an unmodified diffusers pipeline with the CRF spliced in (paper section 4).

    >>> from energycrf.integrations.diffusers import generate
    >>> image = generate(pipe, crf, prompt="a photo of a cat").images[0]   # doctest: +SKIP

:func:`generate` goes through the pipeline's own mechanisms only: the ``timesteps=``
argument, a step-end callback (:class:`CRFSpliceCallback`, a ``PipelineCallback``),
``pipe._interrupt`` and ``output_type="latent"``. It returns what the pipeline returns
and puts the pipeline back as it was (its scheduler object and configuration) even when
something fails.

Schedulers (the latent the CRF sees is always the variance-preserving latent
``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps`` that DDIM uses):

- ``DDIMScheduler`` (the paper's sampler): one pipeline call over the spliced timestep
  list ``pre + post`` (paper plan, SD 1.5: 976, 951, ..., 226, 21, 1) with
  :class:`SplicedDDIMScheduler`, whose explicit previous-timestep table sends the step at
  226 to 201 (the splice timestep) instead of 21. The callback applies the CRF to the
  latent at 201 and hands back the latent for t = 21.
- ``EulerDiscreteScheduler`` (sigma space: the sample is ``x = z_t sqrt(1 + sigma_t^2)``,
  ``sigma_t = sqrt((1 - a_t) / a_t)``) and ``DPMSolverMultistepScheduler`` (VP samples,
  multistep history): these keep internal state (step index, model-output history) tied
  to one timestep list, so the splice uses two calls: the pre-CRF steps plus ``t_s``
  (interrupted after the step that lands on ``t_s``, ``output_type="latent"``), the
  conversion to the VP latent, the CRF, the conversion back, then the post-CRF steps
  with ``latents=`` (divided by the scheduler's ``init_noise_sigma``, which the pipeline
  multiplies in). DPM-Solver++ restarts its multistep history after the CRF (the first
  post-CRF step is first order), as it must: the history before the CRF belongs to a
  different trajectory.
- Everything else is refused with a ``ValueError`` that says why and what to use
  (ancestral / LMS / PNDM / Heun schedulers take no explicit timesteps or keep state
  that a splice cannot carry over).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .plan import CLEAN, CorrectorPlan, SplicePlan, SpliceSchedule
from .schedulers import make_scheduler, quiet_scheduler_warnings
from .bundle import CRF_SUBFOLDER, PLAN_FILE, load_pretrained, save_pretrained  # noqa: F401 (re-exported)
from .sampler import NoiseSchedule, crf_to_target, ddim_step

try:  # the `diffusers` extra: pip install "energycrf[diffusers]"
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "energycrf.integrations.diffusers needs diffusers, transformers and accelerate: "
        'pip install "energycrf[diffusers]"'
    ) from err

__all__ = [
    "generate",
    "SplicedDDIMScheduler",
    "CRFSpliceCallback",
    "check_scheduler",
    "positive_condition",
    "save_pretrained",
    "load_pretrained",
]

_SCHEDULE_KWARGS = ("num_inference_steps", "timesteps", "sigmas", "denoising_end", "denoising_start")
_CONDITIONS = ("tokens", "pooled", None)


class SplicedDDIMScheduler(DDIMScheduler):
    """``DDIMScheduler`` that takes explicit timesteps with an explicit previous-timestep table.

    ``set_timesteps(timesteps=[...])`` (what ``pipe(timesteps=...)`` calls) takes any
    strictly decreasing list; the step at ``t`` lands on ``splice_prev[t]`` when the table
    has it, else on the next listed timestep (-1, the clean end, after the last). DDIM's
    own step assumes ``t - T // N`` instead, which is wrong for a spliced list. The step
    is :func:`energycrf.integrations.sampler.ddim_step` (eta, clipping and thresholding
    as in DDIM). With ``num_inference_steps`` it is exactly ``DDIMScheduler``.
    """

    # no __init__ override: diffusers' from_config reads the parent's signature
    splice_prev: dict[int, int] = {}  # set per instance by generate(); read-only here
    _prev_table: dict[int, int] | None = None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None):
        if timesteps is None:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps or timesteps")
            self._prev_table = None
            return super().set_timesteps(num_inference_steps, device)
        if num_inference_steps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        ts = [int(t) for t in (timesteps.tolist() if isinstance(timesteps, Tensor) else timesteps)]
        if not ts:
            raise ValueError("timesteps must not be empty")
        n = self.config.num_train_timesteps
        if any(not 0 <= t < n for t in ts) or any(b >= a for a, b in zip(ts, ts[1:])):
            raise ValueError(f"timesteps must be strictly decreasing integers in [0, {n}), got {ts}")
        table = {}
        for i, t in enumerate(ts):
            default = ts[i + 1] if i + 1 < len(ts) else CLEAN
            prev = int(self.splice_prev.get(t, default))
            if prev >= t or prev < CLEAN:
                raise ValueError(f"previous timestep of {t} must be in [-1, {t}), got {prev}")
            table[t] = prev
        self._prev_table = table
        self.num_inference_steps = len(ts)
        self.timesteps = torch.tensor(ts, dtype=torch.long, device=device)

    def previous_timestep(self, timestep) -> int:
        t = int(timestep)
        if self._prev_table is None:
            return t - self.config.num_train_timesteps // self.num_inference_steps
        if t not in self._prev_table:
            raise ValueError(f"timestep {t} is not in the scheduler's timesteps {list(self._prev_table)}")
        return self._prev_table[t]

    def _a(self, t: int) -> float:
        return float(self.final_alpha_cumprod) if t < 0 else float(self.alphas_cumprod[t])

    def step(
        self,
        model_output: Tensor,
        timestep,
        sample: Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator=None,
        variance_noise: Tensor | None = None,
        return_dict: bool = True,
    ):
        if self._prev_table is None:
            return super().step(
                model_output, timestep, sample, eta, use_clipped_model_output, generator, variance_noise, return_dict
            )
        t = int(timestep)
        tp = self.previous_timestep(t)
        clip = None
        if self.config.thresholding:
            clip = self._threshold_sample
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            clip = lambda z: z.clamp(-r, r)  # noqa: E731
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            noise = variance_noise
            if noise is None:
                noise = torch.randn(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                ) if not isinstance(generator, list) else torch.cat(
                    [torch.randn((1, *model_output.shape[1:]), generator=g, device=model_output.device,
                                 dtype=model_output.dtype) for g in generator]
                )
        prev, z0 = ddim_step(
            model_output, sample, self._a(t), self._a(tp), self.config.prediction_type, eta, noise,
            clip=clip, rederive_eps=use_clipped_model_output,
        )
        if not return_dict:
            return prev, z0
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=z0)


def check_scheduler(scheduler) -> str:
    """Classify a scheduler for the splice: ``"ddim"``, ``"vp"`` or ``"sigma"``; raise if unsupported."""
    name = type(scheduler).__name__
    use = (
        "Use DDIMScheduler, the paper's sampler: "
        "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config) "
        "(EulerDiscreteScheduler and DPMSolverMultistepScheduler are also supported)."
    )
    cfg = scheduler.config
    if isinstance(scheduler, DDIMScheduler):
        return "ddim"
    if isinstance(scheduler, (EulerDiscreteScheduler, DPMSolverMultistepScheduler)):
        for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"):
            if cfg.get(flag, False):
                raise ValueError(
                    f"{name} with {flag}=True cannot be spliced: it derives its own timesteps from the sigma "
                    f"schedule and refuses the explicit timesteps the plan needs. Set {flag}=False, or " + use
                )
        if isinstance(scheduler, EulerDiscreteScheduler):
            if cfg.get("interpolation_type", "linear") != "linear":
                raise ValueError(
                    f"{name} with interpolation_type={cfg.get('interpolation_type')!r} ignores explicit timesteps; "
                    "set interpolation_type='linear', or " + use
                )
            if cfg.get("timestep_type", "discrete") != "discrete":
                raise ValueError(f"{name} with timestep_type='continuous' is not supported. " + use)
            return "sigma"
        return "vp"
    why = (
        "it adds fresh noise at every step and takes no explicit timesteps"
        if "Ancestral" in name
        else "its set_timesteps takes no explicit timesteps or it keeps per-step state that a splice cannot carry over"
    )
    raise ValueError(f"{name} cannot be spliced with the CRF: {why}. " + use)


def positive_condition(pipe, prompt_embeds: Tensor | None, pooled: Tensor | None, condition):
    """The CRF's condition ``c`` from the tensors a step-end callback receives.

    Under classifier-free guidance the pipeline holds ``[negative; positive]`` along the
    batch; the CRF is conditioned on the positive half. ``condition``: ``"tokens"`` (the
    token embeddings ``[B, L, D]``), ``"pooled"`` (SDXL's pooled text embedding
    ``[B, D]``) or ``None``.
    """
    if condition is None:
        return None
    src = prompt_embeds if condition == "tokens" else pooled
    if src is None:
        raise ValueError(
            f"condition={condition!r} needs the pipeline's "
            f"{'prompt_embeds' if condition == 'tokens' else 'add_text_embeds (pooled; SDXL only)'}, "
            "which its step-end callback does not provide"
        )
    if getattr(pipe, "do_classifier_free_guidance", False):
        return src.chunk(2)[1]
    return src


def _crf_device_dtype(crf):
    p = next(iter(crf.parameters()), None) if isinstance(crf, torch.nn.Module) else None
    return (p.device, p.dtype) if p is not None else (None, None)


class CRFSpliceCallback(PipelineCallback):
    """Step-end callback that applies the CRF once, after the step with index ``step_index``.

    At that step it reads the sample (``latents``) and the prompt embeddings, converts the
    sample to the VP latent (divides by ``in_scale``), computes
    ``target = crf_to_target(crf(z_s, c), z_s, ...)`` via ``to_target`` and writes back
    ``target * out_scale`` (``out_scale=None`` leaves the latents untouched: the result is
    kept in :attr:`result` only). ``interrupt=True`` then sets ``pipe._interrupt``.
    A user's own step-end callback (``then``) runs after it, every step.
    """

    def __init__(
        self,
        crf: Callable,
        step_index: int,
        to_target: Callable[[Tensor, Tensor], Tensor],
        condition="tokens",
        in_scale: float = 1.0,
        out_scale: float | None = 1.0,
        interrupt: bool = False,
        then=None,
        then_inputs=None,
    ):
        super().__init__(cutoff_step_ratio=None, cutoff_step_index=int(step_index))
        self.crf = crf
        self.step_index = int(step_index)
        self.to_target = to_target
        self.condition = condition
        self.in_scale = float(in_scale)
        self.out_scale = None if out_scale is None else float(out_scale)
        self.interrupt = interrupt
        self.then = then
        if then is not None and then_inputs is None:
            then_inputs = list(getattr(then, "tensor_inputs", ["latents"]))
        self.then_inputs = list(then_inputs or [])
        self.calls = 0
        self.crf_input: Tensor | None = None
        self.crf_condition = None
        self.result: Tensor | None = None

    @property
    def tensor_inputs(self) -> list[str]:
        names = ["latents"]
        if self.condition == "tokens":
            names.append("prompt_embeds")
        elif self.condition == "pooled":
            names.append("add_text_embeds")
        return names + [n for n in self.then_inputs if n not in names]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        if step_index == self.step_index:
            latents = callback_kwargs["latents"]
            z_s = latents / self.in_scale
            c = positive_condition(
                pipeline, callback_kwargs.get("prompt_embeds"), callback_kwargs.get("add_text_embeds"), self.condition
            )
            device, dtype = _crf_device_dtype(self.crf)
            z_in = z_s if dtype is None else z_s.to(device=device, dtype=dtype)
            c_in = c if (c is None or dtype is None) else c.to(device=device, dtype=dtype)
            out = self.crf(z_in, c_in)
            if not isinstance(out, Tensor) or out.shape != z_in.shape:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"crf must return a tensor shaped like its input {tuple(z_in.shape)}, got {got}")
            if not torch.isfinite(out).all():
                raise FloatingPointError(f"the CRF returned non-finite values at the splice point (step {step_index})")
            self.calls += 1
            self.crf_input, self.crf_condition = z_in, c_in
            target = self.to_target(z_in, out).to(device=latents.device, dtype=latents.dtype)
            self.result = target
            if self.out_scale is not None:
                callback_kwargs["latents"] = target * self.out_scale
            if self.interrupt:
                pipeline._interrupt = True
        if self.then is not None:
            sub = {k: callback_kwargs[k] for k in self.then_inputs if k in callback_kwargs}
            callback_kwargs.update(self.then(pipeline, step_index, timestep, sub) or {})
        return callback_kwargs


def _user_callback(call_kwargs):
    cb = call_kwargs.pop("callback_on_step_end", None)
    inputs = call_kwargs.pop("callback_on_step_end_tensor_inputs", None)
    if cb is not None and isinstance(cb, (PipelineCallback, MultiPipelineCallbacks)):
        inputs = cb.tensor_inputs
    elif cb is not None and not callable(cb):
        raise TypeError(f"callback_on_step_end must be callable, got {type(cb).__name__}")
    return cb, inputs


def _vp_scale(kind: str, noise: NoiseSchedule, t: int) -> float:
    """Scheduler sample = ``scale * z_VP``: ``sqrt(1 + sigma_t^2)`` in sigma space, else 1."""
    if kind != "sigma" or t == CLEAN:
        return 1.0
    return (1.0 + noise.sigma(t) ** 2) ** 0.5


def generate(pipe, crf: Callable, plan: SplicePlan | CorrectorPlan | None = None, *, condition="auto",
             **call_kwargs):
    """Call ``pipe(**call_kwargs)`` with the CRF spliced in per ``plan`` (default: the CRF's own, else the paper's).

    Args:
        pipe: a ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline`` or any pipeline
            with the same ``timesteps=`` / ``callback_on_step_end`` interface, whose
            scheduler is DDIM, Euler or DPM-Solver(++) (see the module docstring).
        crf: the learned layer (``ec.LatentCRF``) or any ``crf(z, c) -> z``. It is put in
            eval mode for the call (batch-norm statistics are not touched) and its mode
            restored afterwards. It runs on its own device and dtype.
        plan: a :class:`SplicePlan`, or a :class:`CorrectorPlan` (its sampler runs all
            its calls, then the CRF corrects the final latent; the pipeline's scheduler
            may be any). ``None``: the plan recorded with the CRF (``crf.plan``, set by
            :func:`energycrf.integrations.bundle.load_crf`, or ``plan.json`` beside the weights of a
            layer loaded with ``from_pretrained``), else the paper's (33 UNet calls).
        condition: what the CRF is conditioned on: ``"tokens"`` (positive prompt token
            embeddings ``[B, L, D]``), ``"pooled"`` (SDXL pooled ``[B, D]``) or ``None``;
            ``"auto"``: ``None`` for a CRF that declares ``cond_dim=None`` (an unconditioned
            ``LatentCRF``), else ``"tokens"``.
        **call_kwargs: passed to the pipeline (``prompt``, ``guidance_scale``, ``generator``,
            ``output_type="latent"``, ``callback_on_step_end`` ...). The plan fixes the
            schedule, so ``num_inference_steps``, ``timesteps``, ``sigmas``,
            ``denoising_end`` and ``denoising_start`` are refused.

    Returns:
        What the pipeline returns.
    """
    if plan is None:
        recorded = getattr(crf, "plan", None)
        folder = getattr(crf, "pretrained_dir", None)  # set by from_pretrained: the plan.json beside the weights
        if not hasattr(crf, "plan") and folder is not None:  # crf.plan = None (set by load_crf): none recorded
            from .bundle import read_plan

            recorded = read_plan(folder)
            if recorded is None:
                warnings.warn(f"generate: no plan recorded with this CRF (no plan.json in {str(folder)!r}); running "
                              f"the paper's plan ({SplicePlan().unet_calls} UNet calls); pass plan= to choose one",
                              UserWarning, stacklevel=2)
        plan = recorded if isinstance(recorded, (SplicePlan, CorrectorPlan)) else SplicePlan()
    if not isinstance(plan, (SplicePlan, CorrectorPlan)):
        raise TypeError(f"plan must be a SplicePlan, a CorrectorPlan or None, got {type(plan).__name__}")
    if not callable(crf):
        raise TypeError(f"crf must be callable as crf(z, c), got {type(crf).__name__}")
    if condition not in _CONDITIONS + ("auto",):
        raise ValueError(f"condition must be one of {_CONDITIONS + ('auto',)}, got {condition!r}")
    if condition == "auto":
        condition = None if getattr(crf, "cond_dim", 0) is None else "tokens"
    clash = [k for k in _SCHEDULE_KWARGS if call_kwargs.get(k) is not None]
    if clash:
        raise ValueError(
            f"generate() sets the schedule from the plan; remove {clash} from the pipeline arguments "
            "(change the SplicePlan instead)"
        )
    for needed in ("scheduler", "unet"):
        if not hasattr(pipe, needed):
            raise TypeError(f"pipe must be a diffusers pipeline with a {needed}, got {type(pipe).__name__}")
    if "timesteps" not in inspect.signature(pipe.__call__).parameters:
        raise TypeError(f"{type(pipe).__name__}.__call__ takes no `timesteps` argument; it cannot be spliced")
    allowed = list(getattr(pipe, "_callback_tensor_inputs", []) or [])
    need = {"tokens": "prompt_embeds", "pooled": "add_text_embeds"}.get(condition)
    if need is not None and need not in allowed:
        raise ValueError(
            f"condition={condition!r} needs {need!r} from the step-end callback, but "
            f"{type(pipe).__name__} only offers {allowed}"
            + (" (pooled embeddings exist in SDXL pipelines; use condition='tokens')" if condition == "pooled" else "")
        )
    original = pipe.scheduler
    corrector = isinstance(plan, CorrectorPlan)
    kind = None if corrector else check_scheduler(original)
    sched = None if corrector else plan.schedule_for(original.config)
    user_cb, user_inputs = _user_callback(call_kwargs)
    was_training = crf.training if isinstance(crf, torch.nn.Module) else None
    try:
        if was_training is not None:
            crf.eval()
        if corrector:
            return _generate_corrector(pipe, crf, plan, condition, user_cb, user_inputs, call_kwargs)
        if kind == "ddim":
            return _generate_ddim(pipe, crf, plan, sched, condition, user_cb, user_inputs, call_kwargs)
        return _generate_two_calls(pipe, crf, plan, sched, kind, condition, user_cb, user_inputs, call_kwargs)
    finally:
        pipe.scheduler = original
        pipe._interrupt = False
        if was_training:
            crf.train()


def _target_fn(noise: NoiseSchedule, sched: SpliceSchedule, plan: SplicePlan):
    a_s = noise.a(sched.splice_timestep)
    a_p = noise.a(sched.post_entry_timestep) if sched.post else 1.0  # no post step: M is the output
    return lambda z_s, out: crf_to_target(out, z_s, a_s, a_p, plan.crf_output)


def _generate_ddim(pipe, crf, plan, sched, condition, user_cb, user_inputs, call_kwargs):
    spliced = SplicedDDIMScheduler.from_config(pipe.scheduler.config)
    spliced.splice_prev = dict(zip(sched.timesteps, sched.prev_timesteps))
    noise = NoiseSchedule.from_diffusers(spliced)
    cb = CRFSpliceCallback(
        crf, sched.crf_index, _target_fn(noise, sched, plan), condition, then=user_cb, then_inputs=user_inputs
    )
    pipe.scheduler = spliced
    out = pipe(timesteps=list(sched.timesteps), callback_on_step_end=cb, **call_kwargs)
    _check_applied(cb)
    return out


def _generate_corrector(pipe, crf, plan: CorrectorPlan, condition, user_cb, user_inputs, call_kwargs):
    """One call of ``plan.calls`` steps of the plan's sampler; after the last step the CRF maps
    the final latent to its correction (``to_target`` is the identity), which the pipeline decodes."""
    cb = CRFSpliceCallback(crf, plan.calls - 1, lambda z, out: out, condition, then=user_cb, then_inputs=user_inputs)
    pipe.scheduler = make_scheduler(pipe.scheduler.config, plan.sampler, plan.spacing)
    with quiet_scheduler_warnings():
        out = pipe(num_inference_steps=plan.calls, callback_on_step_end=cb, **call_kwargs)
    _check_applied(cb)
    return out


def _check_applied(cb: CRFSpliceCallback):
    if cb.calls != 1:
        raise RuntimeError(
            f"the CRF ran {cb.calls} times instead of once: the pipeline did not reach step {cb.step_index} "
            "(was it interrupted by another callback?)"
        )


def _generate_two_calls(pipe, crf, plan, sched, kind, condition, user_cb, user_inputs, call_kwargs):
    work = copy.deepcopy(pipe.scheduler)
    noise = NoiseSchedule.from_diffusers(work)
    t_s, t_p = sched.splice_timestep, sched.post_entry_timestep
    last = not sched.post
    cb = CRFSpliceCallback(
        crf,
        sched.crf_index,
        _target_fn(noise, sched, plan),
        condition,
        in_scale=_vp_scale(kind, noise, t_s),
        out_scale=1.0 if last else None,  # with no post-CRF step the CRF output is the final latent
        interrupt=True,
        then=user_cb,
        then_inputs=user_inputs,
    )
    first = dict(call_kwargs)
    if not last:
        first["output_type"] = "latent"
    pipe.scheduler = work
    out = pipe(timesteps=list(sched.pre) + [t_s], callback_on_step_end=cb, **first)
    _check_applied(cb)
    if last:
        return out
    probe = copy.deepcopy(work)
    probe.set_timesteps(timesteps=list(sched.post), device=cb.result.device)
    init_sigma = float(probe.init_noise_sigma)
    second = dict(call_kwargs)
    second["latents"] = cb.result * (_vp_scale(kind, noise, t_p) / init_sigma)
    if user_cb is not None:
        second["callback_on_step_end"] = user_cb
        if user_inputs is not None and not isinstance(user_cb, (PipelineCallback, MultiPipelineCallbacks)):
            second["callback_on_step_end_tensor_inputs"] = user_inputs
    return pipe(timesteps=list(sched.post), **second)
