"""The run behind ``energycrf train`` (its options and first checks: :mod:`energycrf.apps.train_options`).

Order: everything the user passed is checked (the pipeline's files, the plan against the
shards and the noise schedule, the data, a resumed run's settings) before the one line
that says what will run. Then the processes join (``torchrun``; gloo on CPU, NCCL on
GPUs), rank 0 prepares stage 1's latents and caption encodings (cached in ``--out/work``),
each stage runs with :class:`energycrf.training.Trainer` (checkpoints, log and curve in
``--out/checkpoints/stageK``; stage 1: ``L_NT-F`` with the discriminator, eqs. 12-14;
stage 2: ``L_DT``), and rank 0 writes the CRF (``crf.save_pretrained``), ``plan.json``,
``log.jsonl``, ``loss.png`` and, last, ``training.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from . import train_data as D
from ._command import UsageError, announce, atomic_path, check_device, plural
from .train_options import ARCH, NOT_RECORDED, PER_STAGE, PLAN_FLAGS, PLAN_OPTIONS, stage_value

RUN_JSON = "run.json"  # in --out/checkpoints: the settings a --resume must repeat


def processes(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")


def describe(plan) -> str:
    return (f"{plan.pre_run} of {plan.pre_steps} steps, CRF ({plan.crf_output}), "
            f"last {plan.post_run} of {plan.post_steps}")


# --------------------------------------------------------------------------- checks before the work
def resolve_plan(args, shards: dict | None):
    """``(plan, where it came from)``: ``--plan``, the plan options, the shards' plan or the paper's;
    a plan given that is not the shards' is refused."""
    from ..integrations.plan import CorrectorPlan, SplicePlan, plan_from_dict
    from ..io import read_json

    given = {name: getattr(args, name) for name in PLAN_OPTIONS if getattr(args, name) is not None}
    if args.plan is not None:
        option, source = "--plan", f"--plan {os.fspath(args.plan)}"
        try:
            plan = plan_from_dict(read_json(args.plan))
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise UsageError("--plan", "a plan.json of a splice plan", f"{os.fspath(args.plan)!r} ({err})") from None
        if isinstance(plan, CorrectorPlan):
            raise UsageError("--plan", "a splice plan (the CRF in place of denoising steps)",
                             f"the corrector plan {plan.describe()!r}", "correctors: energycrf train-corrector")
    elif given:
        option, source = PLAN_FLAGS, "the plan options"
        try:
            plan = SplicePlan(**given)
        except (ValueError, TypeError) as err:
            raise UsageError(PLAN_FLAGS, "a valid splice plan", " ".join(str(err).split())) from None
    elif shards is not None:
        option, source, plan = "--shards", "the shards' plan", shards["plan"]
    else:
        option, source, plan = PLAN_FLAGS, "the paper's plan", SplicePlan()
    if shards is not None and plan != shards["plan"]:
        raise UsageError(option, f"the plan of the shards in {shards['folder']!r} ({describe(shards['plan'])})",
                         describe(plan), "write shards for this plan with energycrf distill-data, or leave the plan "
                         "out to train for the shards' plan")
    return plan, source, option


def settings(args, inputs: dict, world: int) -> dict:
    """What a ``--resume`` must repeat: the options that define the run, the input files, the processes."""
    options = {}
    for key, value in sorted(vars(args).items()):
        if key.startswith("_") or key in (*NOT_RECORDED, "command", "out"):
            continue
        if key in PER_STAGE:
            value = [stage_value(value, 1), stage_value(value, 2)]
        elif isinstance(value, Path):
            value = os.fspath(value.resolve())
        elif isinstance(value, tuple):
            value = list(value)
        options[key] = value
    return json.loads(json.dumps({"options": options, "inputs": inputs, "world_size": world}))


def check_resume(out: Path, now: dict) -> bool:
    """Whether the run in ``out`` is finished; refuses a ``--resume`` with other settings."""
    from ..io import read_json

    record = out / "checkpoints" / RUN_JSON
    if not record.is_file():
        if (out / "training.json").is_file() or (out / "checkpoints").exists():
            raise UsageError("--resume", f"a run of energycrf train in --out (with checkpoints/{RUN_JSON})",
                             f"{os.fspath(out)!r} without it")
        raise UsageError("--resume", "an earlier run in --out", f"none in {os.fspath(out)!r}",
                         "leave --resume out to start a new run")
    try:
        then = read_json(record)
    except ValueError as err:
        raise UsageError("--resume", "a readable record of the run in --out", f"{err}") from None
    before = then.get("options", {}) if isinstance(then, dict) else {}
    then = then if isinstance(then, dict) else {}
    changed = [f"--{k.replace('_', '-')} (was {before.get(k)!r}, now {now['options'].get(k)!r})"
               for k in sorted(set(before) | set(now["options"])) if before.get(k) != now["options"].get(k)]
    changed += [f"the {k} files" for k in sorted(set(then.get("inputs", {})) | set(now["inputs"]))
                if then.get("inputs", {}).get(k) != now["inputs"].get(k)]
    if then.get("world_size") != now["world_size"]:
        changed.append(f"the processes (was {then.get('world_size')}, now {now['world_size']})")
    if changed:
        raise UsageError("--resume", "the settings of the run in --out", f"other {'; '.join(changed)}",
                         "an exact resume repeats them; choose another --out for a new run")
    return (out / "training.json").is_file()


def prepare(args, files: dict, world: int) -> dict:
    """Every check that reads the inputs; returns what the run needs (no work done yet)."""
    from ..learned.latent_crf import LatentCRF

    facts = D.pipeline_facts(args.pipeline)
    if args.device is not None:
        check_device(args.device, "--device")
    shards = D.check_shards(args.shards, facts) if 2 in args.stage else None
    plan, source, option = resolve_plan(args, shards)
    try:
        sched = plan.schedule_for(facts.scheduler)
    except ValueError as err:
        raise UsageError(option, "a plan this pipeline's noise schedule can run",
                         f"{describe(plan)} ({' '.join(str(err).split())})") from None
    if shards is not None and shards["splice_timestep"] != sched.splice_timestep:
        raise UsageError("--shards", "shards of this pipeline's noise schedule (splice timestep "
                         f"{sched.splice_timestep})", f"shards at splice timestep {shards['splice_timestep']}")
    run = {"facts": facts, "shards": shards, "plan": plan, "plan_source": source, "sched": sched, "rows": {}}
    inputs = {}
    if 1 in args.stage:
        kind = "images" if "images" in files else "latents"
        folder = args.images if kind == "images" else args.latents
        texts, sources = D.captions(files[kind], folder, f"--{kind}", args.caption)
        if kind == "images":
            if facts.image_channels not in (1, 3) or (facts.resolution is None and args.resolution is None):
                raise UsageError("--images", "a pipeline whose VAE takes RGB or grey images of a known size",
                                 f"{facts.path!r} (image channels {facts.image_channels}, size {facts.resolution})",
                                 "pass --latents, or --resolution")
            D.check_images(files[kind])
            size = (args.resolution, args.resolution) if args.resolution else facts.resolution
            run["stage1"] = {"kind": kind, "files": files[kind], "texts": texts, "size": size}
            run["rows"][1] = len(files[kind])
        else:
            zs, embeds = D.read_latents(files[kind], facts)
            run["stage1"] = {"kind": kind, "files": files[kind], "texts": texts, "zs": zs, "embeds": embeds}
            run["rows"][1] = sum(len(z) for z in zs)
            sources = ["prompt_embeds" if e is not None else where for e, where in zip(embeds, sources)]
        run["stage1"]["counts"] = {where: sources.count(where) for where in dict.fromkeys(sources)}
        inputs[kind] = D.fingerprint(files[kind]) + [["captions", texts]]
    if shards is not None:
        run["rows"][2] = shards["samples"]
        inputs["shards"] = D.fingerprint(files["shards"])
    if args.init is not None:
        try:
            init = LatentCRF.from_pretrained(args.init)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise UsageError("--init", "a folder holding a saved LatentCRF",
                             f"{os.fspath(args.init)!r} ({' '.join(str(err).split())})") from None
        if (init.channels, init.cond_dim) != (facts.channels, facts.cond_dim):
            raise UsageError("--init", f"a CRF for {facts.channels} latent channels and text {facts.cond_dim} wide",
                             f"one for {init.channels} channels and text {init.cond_dim} wide")
        run["init"] = init
        inputs["init"] = D.fingerprint(sorted(p for p in args.init.iterdir() if p.is_file()))
    for stage, rows in run["rows"].items():
        size = stage_value(args.batch_size, stage)
        if size * world > rows:
            raise UsageError("--batch-size", f"at most {rows // world} per process for the {plural(rows, 'sample')} "
                             f"of stage {stage} ({processes(world)})", str(size))
    run["settings"] = settings(args, inputs, world)
    run["finished"] = check_resume(args.out, run["settings"]) if args.resume else False
    return run


# --------------------------------------------------------------------------- stage 1's data
def stage1_data(args, run: dict, dist, progress: bool):
    """Stage 1's latents and caption encodings: built by rank 0 into ``--out/work`` (reused by a
    resumed run with the same settings), then read by every rank."""
    from safetensors import safe_open
    from ..io import save_safetensors

    from ..training.distributed import barrier

    s1 = run["stage1"]
    cache = args.out / "work" / "stage1-latents.safetensors"
    key = json.dumps({"inputs": run["settings"]["inputs"], "pipeline": run["facts"].to_dict(),
                      "size": list(s1.get("size") or [])}, sort_keys=True)

    def cached() -> bool:
        if not cache.is_file():
            return False
        with safe_open(str(cache), framework="pt") as fh:
            return (fh.metadata() or {}).get("key") == key

    if dist.is_main and not cached():
        facts, device = run["facts"], dist.device
        if s1["kind"] == "images":
            z = D.encode_images(facts, s1["files"], s1["size"], device, progress)
            zs, embeds = list(z.split(1)), [None] * len(z)
        else:
            zs, embeds = s1["zs"], s1["embeds"]
        wanted = sorted({t for t, e in zip(s1["texts"], embeds) if e is None})
        encoded = {}
        if wanted:
            pipe = D.text_pipeline(facts, device)
            encoded = dict(zip(wanted, D.encode_texts(pipe, wanted, device)))
            del pipe
        data = D.assemble(zs, embeds, s1["texts"], encoded)
        with atomic_path(cache) as tmp:
            save_safetensors(data.tensors(), tmp, metadata={"key": key})
    barrier()
    from safetensors.torch import load_file

    t = load_file(str(cache))
    return D.Stage1Latents(t["z"], t["cond_index"], t["conds"])


def noise_level(args, run: dict) -> dict:
    """Stage 1's noise: ``a = abar(t)`` for ``t`` within ``--noise-window`` of the splice timestep."""
    from .ldm.crf_training import alpha_range

    t_s = run["sched"].splice_timestep
    last = int(run["facts"].scheduler.get("num_train_timesteps", 1000)) - 1
    low, high = max(0, t_s - args.noise_window), min(last, t_s + args.noise_window)
    return {"timesteps": [low, high], "alpha": list(alpha_range(run["facts"].scheduler, low, high))}


# --------------------------------------------------------------------------- the stages
def run_stage(stage: int, crf, data, args, dist, noise: dict | None, init, budget: int | None):
    """One stage with :class:`energycrf.training.Trainer`, from its newest checkpoint if any (else
    from ``init``, a stage-1 checkpoint); returns ``(trainer, the step it started at, whether a stop was
    asked for)`` (a signal during the stage's last step ends the stage as planned, and the run after it)."""
    from ..learned.losses import LatentDiscriminator
    from ..training import TrainConfig, Trainer
    from ..training.resume import newest_resumable, restore

    adversarial = stage == 1 and args.adv_weight > 0
    cfg = TrainConfig(
        output_dir=os.fspath(args.out / "checkpoints" / f"stage{stage}"), stage=stage,
        max_steps=stage_value(args.steps, stage), batch_size=stage_value(args.batch_size, stage),
        lr=stage_value(args.lr, stage), warmup_steps=stage_value(args.warmup, stage), grad_clip=args.grad_clip or None,
        amp=args.amp != "none", amp_dtype=args.amp if args.amp != "none" else "float16", seed=args.seed,
        log_every=args.log_every, checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
        noise_mode="alpha", noise_level=tuple(noise["alpha"]) if noise else 0.5, adversarial=adversarial,
        adv_weight=args.adv_weight if adversarial else 1.0)
    disc = LatentDiscriminator(crf.channels, channels=args.disc_channels) if adversarial else None
    trainer = Trainer(crf, cfg, data, discriminator=disc, dist=dist)
    found = newest_resumable(cfg.output_dir)
    if found is not None:
        restore(trainer, *found)
    elif init is not None:
        trainer.init_from(init)
    start = trainer.step
    if args.resume and dist.is_main and start < cfg.max_steps and not getattr(args, "_resumed", False):
        announce("train", f"resuming from step {start} of stage {stage}"
                 + (f" ({os.fspath(found[0])})" if found is not None else ""))
        args._resumed = True  # said once, for the first stage with steps left
    asked_to_stop = trainer.fit(stop_after=budget, resume=False)["stopped"]
    return trainer, start, asked_to_stop


# --------------------------------------------------------------------------- the command
def summary(args, run: dict, noise: dict | None, world: int, threads: str) -> str:
    """The line said before the work starts."""
    parts = []
    if 1 in args.stage:
        s1 = run["stage1"]
        where = ", ".join(f"{n} from {k}" for k, n in s1["counts"].items() if n)
        size = f" cut to {s1['size'][0]}x{s1['size'][1]}" if s1["kind"] == "images" else ""
        parts.append(f"stage 1 on {plural(run['rows'][1], s1['kind'][:-1])}{size} (conditions of the files: "
                     f"{where}), noised to t in {noise['timesteps'][0]}..{noise['timesteps'][1]}")
    if 2 in args.stage:
        sh = run["shards"]
        start = ("" if 1 in args.stage else f" from {os.fspath(args.init)}" if args.init
                 else " from the untrained layer")
        parts.append(f"stage 2 on {plural(sh['files'], 'shard')} ({plural(sh['samples'], 'sample')}){start}")
    steps = " + ".join(str(stage_value(args.steps, k)) for k in args.stage)
    batch = "/".join(str(stage_value(args.batch_size, k)) for k in args.stage)
    device = args.device or ("cuda:LOCAL_RANK" if torch.cuda.is_available() else "cpu")
    return (f"{' then '.join(parts)}; plan {describe(run['plan'])}, splice timestep {run['sched'].splice_timestep} "
            f"({run['plan_source']}); {steps} steps, batch {batch} x {processes(world)} on {device}; "
            f"{threads}; into {os.fspath(args.out)}")


def train(args, files: dict) -> int:
    """``energycrf train``: check, announce, train the stages, write the CRF and its records."""
    from ..io import atomic_write_text
    from ..training.distributed import barrier, cleanup_distributed, init_distributed
    from .ldm.evaluate_command import set_threads

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    run = prepare(args, files, world)
    if run["finished"]:
        if rank == 0:
            announce("train", f"the run in {os.fspath(args.out)} is finished (training.json); the CRF is in "
                              f"{os.fspath(args.out)} (LatentCRF.from_pretrained, or generate --crf); nothing to do")
        return 0
    threads = set_threads(args.threads)
    noise = noise_level(args, run) if 1 in args.stage else None
    if rank == 0:
        announce("train", summary(args, run, noise, world, threads))
    dist = init_distributed(device=args.device)
    try:
        if dist.is_main:
            (args.out / "checkpoints").mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out / "checkpoints" / RUN_JSON, json.dumps(run["settings"], indent=1) + "\n")
        barrier()
        return _stages(args, run, dist, noise)
    finally:
        cleanup_distributed()


def _stages(args, run: dict, dist, noise: dict | None) -> int:
    from ..learned.latent_crf import LatentCRF
    from ..training import LatentShards, latest_checkpoint
    from ..training.distributed import barrier
    from .train_outputs import stopped, write_outputs

    torch.manual_seed(args.seed)
    facts = run["facts"]
    if "init" in run:  # --init: the saved CRF, its own architecture
        crf = run["init"]
    else:
        crf = LatentCRF(channels=facts.channels, cond_dim=facts.cond_dim,
                        **{name: getattr(args, key) for key, (name, _) in ARCH.items()})
    seconds: dict[str, float] = {}
    budget, trainers = args.stop_after, {}
    for stage in args.stage:
        if budget == 0:
            return stopped(args, dist, trainers, stage, requested=True)
        t0 = time.perf_counter()
        if stage == 1:
            data = stage1_data(args, run, dist, progress=not args.no_progress and dist.is_main)
            seconds["stage1_data"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
        else:
            data = LatentShards(args.shards, keys=("z_s", "z_f"), optional_keys=("prompt_embeds",))
        init = latest_checkpoint(args.out / "checkpoints" / "stage1") if stage == 2 and 1 in args.stage else None
        trainer, start, asked_to_stop = run_stage(stage, crf, data, args, dist, noise if stage == 1 else None, init,
                                                  budget)
        seconds[f"stage{stage}"] = round(time.perf_counter() - t0, 1)
        trainers[stage] = trainer
        if budget is not None:
            budget -= trainer.step - start
        if trainer.step < trainer.config.max_steps:
            return stopped(args, dist, trainers, stage, requested=budget == 0)
        if asked_to_stop and stage != args.stage[-1]:  # a signal in the stage's last step: not the next stage
            return stopped(args, dist, trainers, stage, requested=False)
    if dist.is_main:
        write_outputs(args, run, crf, trainers, noise, seconds, dist)
    barrier()
    return 0
