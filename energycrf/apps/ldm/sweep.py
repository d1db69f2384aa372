"""Quality against cost for samplers and LatentCRF variants on the shipped model (``energycrf sweep``).

    energycrf sweep --budgets 6,7,8,9,12,13 --methods ddim,dpmpp,unipc,crf-splice,correctors \\
        --per-class 2 --seeds 16 --seed-sets 2 --out sweep-out

For every method, budget and seed set, the final latents of the held-out prompts x seeds
are generated once and cached (``OUT/cache``; a later run with the same settings reuses
them and generates nothing), measured against the 50-step DDIM teacher with
:mod:`energycrf.apps.ldm.paired`, and written as ``sweep.json``, ``sweep.md`` and
``pareto.png``. The budget of a CRF method is its UNet calls plus the CRF's cost in UNet
calls, measured in the same run (:func:`energycrf.integrations.cost.crf_cost`); every
pipeline call's UNet calls are counted by a forward hook and checked against the plan.

Methods: ``ddim`` (the pipeline's spacing), ``dpmpp`` and ``unipc`` (trailing spacing;
``dpmpp:leading`` etc. name another), ``crf-splice`` (the shipped DDIM-splice CRF: N - 1
DDIM calls to the splice point nearest its training point t = 201, the CRF, one last
step), ``crf:NAME`` or ``crf:PATH`` (a CRF with its recorded plan, at its own budget), and
``correctors`` (every shipped corrector). The paper's Table 4 on this model:
``crf-splice-nopost`` (all ``N`` calls before the CRF, no step after it) and
``crf-splice-nocrf`` (the splice plan with the identity in place of the CRF).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from energycrf.apps._command import UsageError, check_output_dir
from energycrf.apps.ldm.sweep_report import markdown, pareto_figure

LABELS = {"ddim": "DDIM", "dpmpp": "DPM-Solver++", "unipc": "UniPC"}
DEFAULT_SPACING = {"ddim": None, "dpmpp": "trailing", "unipc": "trailing"}
SPLICE_TARGET = 201  # the shipped CRF's splice timestep (the paper's plan)


@dataclass(frozen=True)
class Spec:
    """One method: a plain sampler (``sampler``, ``spacing``) or a CRF (``crf``, ``kind``)."""

    key: str
    label: str
    sampler: str | None = None
    spacing: str | None = None
    kind: str = "plain"  # "plain", "splice" (at every budget) or "recorded" (the CRF's own plan)
    crf: object = field(default=None, compare=False, repr=False)
    post_run: int = 1  # "splice": DDIM steps after the CRF


def plain(sampler: str, spacing: str | None = "default") -> Spec:
    spacing = DEFAULT_SPACING[sampler] if spacing == "default" else spacing
    key = sampler + (f"-{spacing}" if spacing else "")
    return Spec(key, LABELS[sampler] + (f" ({spacing})" if spacing else ""), sampler, spacing)


def splice_plan_for(calls: int, config, target: int = SPLICE_TARGET, post_run: int = 1):
    """The DDIM splice with ``calls`` UNet calls: ``calls - post_run`` pre-CRF steps, the CRF, the last
    ``post_run`` of 50 (``post_run=0``: the CRF's output is the final latent).

    Of the pre-CRF grids (``pre_steps`` = ``calls`` .. 1000) the one whose splice timestep
    is nearest ``target`` (ties: the fewer steps); ``calls = 20`` gives 19 of 25 (t = 201).
    """
    from energycrf.integrations.plan import SplicePlan

    if calls - post_run < 1:
        raise ValueError(f"a splice with {post_run} step(s) after the CRF needs more than {post_run} calls, got {calls}")
    best = None
    for pre_steps in range(max(2, calls - post_run + 1), 1001):
        plan = SplicePlan(pre_steps=pre_steps, pre_run=calls - post_run, post_steps=50, post_run=post_run)
        try:
            t_s = plan.schedule_for(config).splice_timestep
        except ValueError:
            continue
        if best is None or abs(t_s - target) < best[0]:
            best = (abs(t_s - target), plan)
    if best is None:
        raise ValueError(f"no DDIM splice plan with {calls} UNet calls")
    return best[1]


# the DDIM-splice rows: label, DDIM steps after the CRF, identity in place of the CRF (Table 4)
SPLICE_METHODS = {"crf-splice": ("LatentCRF (DDIM splice)", 1, False),
                  "crf-splice-nopost": ("LatentCRF (DDIM splice, no post step)", 0, False),
                  "crf-splice-nocrf": ("DDIM splice without the CRF (identity)", 1, True)}


def identity_crf():
    """``crf(z, c) = z`` as a module: the splice plan without a CRF (the paper's Table 4 "no CRF" row)."""
    import torch

    class Identity(torch.nn.Module):
        cond_dim = None  # takes no condition

        def forward(self, z, c=None):
            return z

    return Identity()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _weights_digest(module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _generate(pipe, spec: Spec, calls: int, prompts, seeds, guidance, batch_size, progress, desc):
    """Latents of one row, and the UNet calls per pipeline call counted by the hook."""
    from energycrf.integrations.corrector import sample_latents
    from energycrf.integrations.cost import UNetCallCounter

    kw = dict(guidance_scale=guidance, batch_size=batch_size, progress=progress, desc=desc)
    with UNetCallCounter(pipe.unet) as counter:
        if spec.kind == "plain":
            z = sample_latents(pipe, prompts, seeds, sampler=spec.sampler, spacing=spec.spacing, steps=calls, **kw)
        elif spec.kind == "splice":
            plan = splice_plan_for(calls, pipe.scheduler.config, post_run=spec.post_run)
            z = sample_latents(pipe, prompts, seeds, crf=spec.crf, plan=plan, **kw)
        else:
            z = sample_latents(pipe, prompts, seeds, crf=spec.crf, plan=spec.crf.plan, **kw)
    batches = math.ceil(len(prompts) / batch_size)
    return z, counter.calls / batches


def _row_latents(pipe, cache: Path, spec: Spec, calls: int, prompts, seeds, settings, progress, log):
    """Cached latents of one row (``log`` counts generated rows); checks the hook's count against the plan."""
    from safetensors import safe_open
    from ...io import save_safetensors

    key = {"method": spec.key, "calls": calls, "prompts": prompts, "seeds": seeds, **settings}
    if spec.crf is not None:
        key["crf"] = _weights_digest(spec.crf)
        key["plan"] = spec.crf.plan.to_dict() if spec.kind == "recorded" else "splice"
    path = cache / f"{spec.key}-{calls}-s{seeds[0]}-{seeds[-1]}-{_digest(key)}.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("z"), float(json.loads(f.metadata()["info"])["counted"])
    z, counted = _generate(pipe, spec, calls, prompts, seeds, settings["guidance"], settings["batch_size"], progress,
                           f"{spec.key} {calls}")
    if counted != calls:
        raise RuntimeError(f"{spec.label}: the UNet hook counted {counted} calls per pipeline call, the plan says {calls}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_safetensors({"z": z.contiguous()}, tmp, metadata={"info": json.dumps({"key": key, "counted": counted})})
    tmp.replace(path)
    log.append(path.name)
    return z, counted


def _budgets_of(spec: Spec, budgets) -> list[int]:
    return [int(spec.crf.plan.unet_calls)] if spec.kind == "recorded" else list(budgets)


def run_sweep(pipe, classifier, reference, specs, budgets, prompts, seed_sets, out_dir, *, teacher_steps: int = 50,
              guidance: float = 4.0, batch_size: int = 32, n_boot: int = 2000, cost_repeats: int = 9,
              cost_batch: int = 8, progress: bool = True, command: str | None = None,
              cache_dir: str | Path | None = None) -> dict:
    """Generate (or reuse), measure and report every row; returns what ``sweep.json`` holds.

    ``prompts``: ``(text, class)`` pairs; ``seed_sets``: lists of seeds (disjoint sets give
    independent replications); ``reference``: real images' classifier features;
    ``cache_dir``: where the latents are kept (default ``out_dir/cache``; sweeps of other
    method lists can share one).
    """
    from tqdm.auto import tqdm

    from energycrf.apps.ldm import paired
    from energycrf.integrations.cost import crf_cost

    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    settings = {"guidance": float(guidance), "batch_size": int(batch_size),
                "scheduler": {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}}
    generated: list[str] = []
    costs = {}
    for s in specs:
        if s.crf is not None:
            emb = pipe.encode_prompt([prompts[0][0]] * cost_batch, pipe.device, 1, False)[0]
            costs[s.key] = crf_cost(pipe, s.crf, cost_batch, repeats=cost_repeats, prompt_embeds=emb).to_dict()
    teacher_spec = plain("ddim", None)
    jobs = [(k, s, c) for k in range(len(seed_sets)) for s in specs for c in _budgets_of(s, budgets)]
    rows, comparisons = [], []
    for k, seeds in enumerate(seed_sets):
        img_prompts = [p for p, _ in prompts for _ in seeds]
        img_seeds = [int(s) for _ in prompts for s in seeds]
        labels = [c for _, c in prompts for _ in seeds]
        groups = [i for i in range(len(prompts)) for _ in seeds]
        zt, counted = _row_latents(pipe, cache, teacher_spec, teacher_steps, img_prompts, img_seeds, settings,
                                   progress, generated)
        teacher = paired.measure(pipe, classifier, zt, labels, groups)
        measured = {}
        rows.append({"method": "teacher", "label": f"DDIM {teacher_steps} (teacher)", "kind": "teacher",
                     "seed_set": k, "seeds": [seeds[0], seeds[-1]], "unet_calls": teacher_steps,
                     "unet_calls_counted": counted, "crf_cost": 0.0, "budget": float(teacher_steps),
                     "images": len(zt), "estimates": {key: e.to_dict() for key, e in
                                                      paired.row_estimates(teacher, None, reference, n_boot=n_boot).items()}})
        for _, spec, calls in tqdm([j for j in jobs if j[0] == k], desc=f"seed set {k}", disable=not progress):
            z, counted = _row_latents(pipe, cache, spec, calls, img_prompts, img_seeds, settings, progress, generated)
            m = paired.measure(pipe, classifier, z, labels, groups)
            measured[(spec.key, calls)] = m
            cost = costs.get(spec.key, {}).get("unet_calls", 0.0)
            est = paired.row_estimates(m, teacher, reference, n_boot=n_boot)
            rows.append({"method": spec.key, "label": spec.label, "kind": spec.kind, "seed_set": k,
                         "seeds": [seeds[0], seeds[-1]], "unet_calls": calls, "unet_calls_counted": counted,
                         "crf_cost": cost, "budget": calls + cost, "images": len(z),
                         "plan": None if spec.crf is None else (spec.crf.plan.to_dict() if spec.kind == "recorded"
                                                                else splice_plan_for(calls, pipe.scheduler.config,
                                                                                     post_run=spec.post_run).to_dict()),
                         "estimates": {key: e.to_dict() for key, e in est.items()}})
        comparisons += _compare(specs, budgets, costs, measured, teacher, reference, k, n_boot, paired)
    result = {"command": command, "prompts": [p for p, _ in prompts], "seed_sets": [list(s) for s in seed_sets],
              "budgets": list(budgets), "teacher_steps": teacher_steps, "guidance": guidance, "bootstrap": n_boot,
              "costs": costs, "rows": rows, "comparisons": comparisons, "generated": generated,
              "reference_images": int(len(reference)), "images_per_row": len(prompts) * len(seed_sets[0])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    (out / "sweep.md").write_text(markdown(result) + "\n", encoding="utf-8")
    pareto_figure(result, out / "pareto.png")
    return result


def _compare(specs, budgets, costs, measured, teacher, reference, k, n_boot, paired) -> list[dict]:
    """Each CRF row against each plain sampler at the same calls, at the cheapest budget >= its cost ("same
    cost") and at the next budget measured above that one ("next budget": a margin of one budget step)."""
    out = []
    peers = [s for s in specs if s.kind == "plain"]
    for spec in (s for s in specs if s.crf is not None):
        cost = costs[spec.key]["unet_calls"]
        for calls in _budgets_of(spec, budgets):
            a = measured[(spec.key, calls)]
            for peer in peers:
                have = sorted(c for (key, c) in measured if key == peer.key)
                same_cost = next((c for c in have if c >= calls + cost), None)
                above = next((c for c in have if same_cost is not None and c > same_cost), None)
                for rule, c in (("same calls", calls if calls in have else None), ("same cost", same_cost),
                                ("next budget", above)):
                    if c is None:
                        continue
                    d = paired.paired_estimates(a, measured[(peer.key, c)], teacher, reference, n_boot=n_boot)
                    out.append({"seed_set": k, "method": spec.key, "label": spec.label, "calls": calls,
                                "budget": calls + cost, "peer": peer.key, "peer_label": peer.label, "peer_calls": c,
                                "rule": rule, "difference": {key: e.to_dict() for key, e in d.items()},
                                "beats": paired.beats(d)})
    return out


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budgets", default="6,7,8,9,12,13", help="comma list of UNet-call budgets")
    parser.add_argument("--methods", default="ddim,dpmpp,unipc,crf-splice,correctors",
                        help="comma list: ddim, dpmpp, unipc (SAMPLER:SPACING for another spacing), crf-splice, "
                             "crf-splice-nopost, crf-splice-nocrf (Table 4), crf:NAME or crf:PATH, correctors (all "
                             "shipped); the samplers and splices run at every budget, a CRF with a recorded plan at "
                             "its own calls only")
    parser.add_argument("--per-class", type=int, default=2, help="held-out prompts per class (10 classes)")
    parser.add_argument("--seeds", type=int, default=16, help="seeds per seed set")
    parser.add_argument("--seed-sets", type=int, default=2, help="disjoint seed sets (0..S-1, S..2S-1, ...)")
    parser.add_argument("--teacher-steps", type=int, default=50, help="DDIM steps of the teacher")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--batch-size", type=int, default=32, help="images per pipeline call")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (FD: a jackknife instead)")
    parser.add_argument("--cost-repeats", type=int, default=15, help="interleaved timings of CRF and UNet")
    parser.add_argument("--cost-batch", type=int, default=8, help="images per call when timing CRF and UNet")
    parser.add_argument("--pipeline", default=None, help="diffusers pipeline directory (default: the shipped one)")
    parser.add_argument("--out", default="energycrf-sweep-out", help="output folder (sweep.json, sweep.md, pareto.png)")
    parser.add_argument("--cache", default=None, help="latent cache folder (default: OUT/cache)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


OUTPUTS = ("sweep.json", "sweep.md", "pareto.png")


def check_crfs(specs: list[Spec], pipe) -> None:
    """Each CRF fits the pipeline's latents and text (:func:`energycrf.apps.pipelines.check_crf_fits`,
    naming --methods), before any image."""
    from energycrf.apps.pipelines import check_crf_fits

    for s in specs:
        if s.crf is not None and s.key != "crf-splice-nocrf":
            check_crf_fits(s.crf, pipe, "--methods")


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise UsageError("--budgets", "a comma list of integers >= 1", repr(text)) from None
    if not budgets or budgets[0] < 1:
        raise UsageError("--budgets", "a comma list of integers >= 1", repr(text))
    return budgets


def method_tokens(text: str) -> list[str]:
    """The method tokens, checked for form (before anything is loaded)."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    for t in tokens:
        head, _, tail = t.partition(":")
        if head in LABELS and tail in ("", "leading", "trailing", "linspace"):
            continue
        if t in SPLICE_METHODS or t == "correctors" or (head == "crf" and tail):
            continue
        raise UsageError("--methods", f"ddim, dpmpp, unipc (each with :SPACING), {', '.join(SPLICE_METHODS)}, "
                         "crf:NAME|PATH or correctors", repr(t))
    if not tokens:
        raise UsageError("--methods", "at least one method", repr(text))
    return tokens


def build_specs(tokens: list[str]) -> list[Spec]:
    from energycrf.apps.ldm import pretrained

    specs = []
    for t in tokens:
        head, _, tail = t.partition(":")
        if head in LABELS:
            specs.append(plain(head, tail or "default"))
        elif t in SPLICE_METHODS:
            label, post_run, identity = SPLICE_METHODS[t]
            crf = identity_crf() if identity else pretrained.load_crf(pretrained.SPLICE_CRF)
            specs.append(Spec(t, label, kind="splice", crf=crf, post_run=post_run))
        else:
            names = pretrained.corrector_names() if t == "correctors" else [tail]
            for name in names:
                try:
                    crf = pretrained.load_crf(name)
                except (FileNotFoundError, ValueError) as err:
                    raise UsageError("--methods", "crf:NAME of a shipped CRF or crf:PATH of a saved one",
                                     repr(t), " ".join(str(err).split())) from None
                if crf.plan is None:
                    raise UsageError("--methods", "CRFs that record their plan (plan.json; energycrf "
                                     "train-corrector writes it)", f"{name!r}, which records none")
                key = "crf-" + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in Path(name).name)
                specs.append(Spec(key, f"LatentCRF {Path(name).name}", kind="recorded", crf=crf))
    return specs


def run(args: argparse.Namespace) -> int:
    budgets = parse_budgets(args.budgets)
    tokens = method_tokens(args.methods)
    for name, low in (("per_class", 1), ("seeds", 2), ("seed_sets", 1), ("teacher_steps", 1), ("batch_size", 1),
                      ("bootstrap", 10), ("cost_repeats", 1), ("cost_batch", 1), ("threads", 0)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name.replace('_', '-')}", f"an integer >= {low}", str(getattr(args, name)))
    check_output_dir(args.out, "--out", OUTPUTS, overwrite=args.overwrite)
    if args.cache is not None and Path(args.cache).exists() and not Path(args.cache).is_dir():
        raise UsageError("--cache", "a folder (the latent cache)", f"{args.cache!r} (a file)")
    if args.teacher_steps in budgets and any(t.partition(":")[0] == "ddim" and t in ("ddim", "ddim:leading")
                                             for t in tokens):
        raise UsageError("--budgets", f"budgets other than the teacher's {args.teacher_steps} steps when ddim is a "
                         "method (that row is the teacher itself)", repr(args.budgets))
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise UsageError("--guidance", "a finite number >= 0", str(args.guidance))
    import shlex

    import torch

    from energycrf.apps.ldm import captions, pretrained
    from energycrf.apps.ldm.evaluate import reference_features
    from energycrf.integrations.metrics import disjoint_seed_sets

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = build_specs(tokens)
    pipe = pretrained.load_pipeline(args.pipeline)
    check_crfs(specs, pipe)
    clf = pretrained.load_classifier()
    ref = reference_features(clf).features
    prompts = captions.evaluation_prompts(per_class=args.per_class)
    command = shlex.join(["energycrf", "sweep"] + [x for k, v in sorted(vars(args).items())
                                                   if not k.startswith("_") and k not in ("command", "no_progress")
                                                   and v is not None for x in (f"--{k.replace('_', '-')}", str(v))])
    res = run_sweep(pipe, clf, ref, specs, budgets, prompts, disjoint_seed_sets(args.seed_sets, args.seeds), args.out,
                    teacher_steps=args.teacher_steps, guidance=args.guidance, batch_size=args.batch_size,
                    n_boot=args.bootstrap, cost_repeats=args.cost_repeats, cost_batch=args.cost_batch,
                    progress=not args.no_progress, command=command, cache_dir=args.cache)
    print(markdown(res))
    print(f"generated {len(res['generated'])} rows; written: {Path(args.out) / 'sweep.json'}, sweep.md, pareto.png")
    return 0
