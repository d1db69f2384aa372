"""The payoff check the demo prints: the default corrector against the best free sampler at its budget.

On the demo's images (held-out prompts x seeds), the shipped default LatentCRF (a
corrector: ``N`` UniPC calls, then the CRF) and DPM-Solver++ with the cheapest whole
number of calls at or above the corrector's cost (``N`` + its cost in UNet calls,
measured in the same run) are compared image by image against the 50-step DDIM teacher
(the same prompt and seed): the paired differences of latent MSE, PSNR and Frechet
distance with their 95% intervals (:mod:`energycrf.apps.ldm.paired`) and one verdict line.
The full measurement (three seed sets of 320 images, every sampler and CRF) is
``energycrf sweep``, reported in docs/payoff.md.
"""

from __future__ import annotations

import math

PEER = ("dpmpp", "trailing")  # DPM-Solver++ 2M with trailing spacing: the best free sampler measured


def unet_calls(corrector_calls: int, teacher_steps: int = 50) -> int:
    """UNet calls per image of the check: teacher, corrector, and the peer at one more call (cost < 1 call)."""
    return teacher_steps + corrector_calls + corrector_calls + 1


def payoff_check(pipe, classifier, reference, prompts, seeds, *, guidance: float = 4.0, teacher_steps: int = 50,
                 n_boot: int = 2000, cost_repeats: int = 9, progress=None, crf=None) -> dict:
    """The paired comparison (see the module docstring); ``prompts`` are ``(text, class)`` pairs.

    ``progress``: a bar advanced by the UNet calls done; ``crf``: the corrector (default:
    the shipped default, ``pretrained.load_crf()``). Returns the differences, the verdict
    and what was compared.
    """
    from energycrf.integrations.corrector import sample_latents
    from energycrf.integrations.cost import crf_cost
    from energycrf.integrations.plan import CorrectorPlan

    from . import paired, pretrained

    crf = pretrained.load_crf() if crf is None else crf
    if not isinstance(getattr(crf, "plan", None), CorrectorPlan):
        raise ValueError("the payoff check needs a corrector (a CRF whose recorded plan is a CorrectorPlan)")
    img_prompts = [p for p, _ in prompts for _ in seeds]
    img_seeds = [int(s) for _ in prompts for s in seeds]
    labels = [c for _, c in prompts for _ in seeds]
    groups = [i for i in range(len(prompts)) for _ in seeds]
    n = len(img_prompts)
    emb = pipe.encode_prompt([img_prompts[0]] * 8, pipe.device, 1, False)[0]
    cost = crf_cost(pipe, crf, 8, repeats=cost_repeats, prompt_embeds=emb).unet_calls
    calls = crf.plan.calls
    peer_calls = math.ceil(calls + cost)
    kw = dict(guidance_scale=guidance, batch_size=16)

    def done(k):
        if progress is not None:
            progress.update(k * n)

    z_teacher = sample_latents(pipe, img_prompts, img_seeds, sampler="ddim", steps=teacher_steps, **kw)
    done(teacher_steps)
    z_crf = sample_latents(pipe, img_prompts, img_seeds, crf=crf, **kw)
    done(calls)
    z_peer = sample_latents(pipe, img_prompts, img_seeds, sampler=PEER[0], spacing=PEER[1], steps=peer_calls, **kw)
    done(peer_calls)
    teacher, a, b = (paired.measure(pipe, classifier, z, labels, groups) for z in (z_teacher, z_crf, z_peer))
    diff = paired.paired_estimates(a, b, teacher, reference, n_boot=n_boot)
    folder = getattr(crf, "pretrained_dir", None)
    return {"crf": folder.name if folder is not None else None, "crf_plan": crf.plan.to_dict(), "crf_calls": calls, "crf_cost": cost, "peer": "DPM-Solver++ (trailing)",
            "peer_calls": peer_calls, "images": n, "difference": {k: e.to_dict() for k, e in diff.items()},
            "beats": paired.beats(diff)}


def _fmt(e: dict) -> str:
    return f"{e['value']:+.3g} [{e['low']:+.3g}, {e['high']:+.3g}]"


def verdict_line(check: dict) -> str:
    """One line: who wins at this budget on this run's images, and how sure it is."""
    d, b = check["difference"], check["beats"]
    budget = check["crf_calls"] + check["crf_cost"]
    name = f" {check['crf']}" if check.get("crf") else ""
    head = (f"Verdict at {check['peer_calls']} UNet calls ({check['images']} paired images): LatentCRF corrector{name} "
            f"({check['crf_calls']} calls + {check['crf_cost']:.2f} = {budget:.2f}) minus {check['peer']} "
            f"{check['peer_calls']}: latent MSE {_fmt(d['latent_mse'])}, PSNR {_fmt(d['psnr'])} dB, "
            f"Frechet {_fmt(d['frechet'])}")
    if b["all"]:
        tail = "the CRF wins on every measure, intervals excluding zero"
    elif b["teacher"] and b["accuracy_not_lower"]:
        tail = "the CRF is closer to the teacher; the Frechet difference is not resolved at this sample size"
    elif d["latent_mse"]["low"] > 0 and d["psnr"]["high"] < 0:
        tail = f"{check['peer']} wins on the teacher measures"
    else:
        tail = "not resolved at this sample size"
    return f"{head} -> {tail} (three seed sets of 320 images: docs/payoff.md)"
