"""`energycrf sweep` on a tiny random pipeline: UNet calls by hook, the cache, the outputs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from energycrf.apps._command import UsageError

from tests.apps.ldm.conftest import needs_text


def _crfs(tmp_path):
    import energycrf as ec
    from energycrf.integrations.bundle import load_crf, save_crf
    from energycrf.integrations.plan import CorrectorPlan

    torch.manual_seed(0)
    crf = ec.LatentCRF(channels=4, cond_dim=384)
    with torch.no_grad():
        for p in crf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_crf(crf, tmp_path / "corr", CorrectorPlan("dpmpp", "trailing", 2))
    splice = ec.LatentCRF(channels=4, cond_dim=384, normalization="none").eval()
    return load_crf(tmp_path / "corr"), splice


@needs_text
def test_sweep_counts_calls_by_hook_reuses_the_cache_and_reports(tiny_pipe, tmp_path):
    from energycrf.apps.ldm import sweep as S
    from energycrf.apps.ldm.classifier import FashionClassifier
    from energycrf.integrations.cost import UNetCallCounter

    corr, splice = _crfs(tmp_path)
    specs = [S.plain("ddim"), S.plain("dpmpp"), S.Spec("crf-splice", "LatentCRF (DDIM splice)", kind="splice", crf=splice),
             S.Spec("crf-corr", "LatentCRF corr", kind="recorded", crf=corr)]
    torch.manual_seed(0)
    clf = FashionClassifier(width=4).eval()
    ref = np.random.default_rng(0).normal(size=(40, 64))
    prompts = [("a photo of a bag", 8), ("a coat", 4)]
    kw = dict(teacher_steps=4, batch_size=4, n_boot=20, cost_repeats=1, cost_batch=2, progress=False)
    out = tmp_path / "out"
    with UNetCallCounter(tiny_pipe.unet) as counter:
        res = S.run_sweep(tiny_pipe, clf, ref, specs, [2, 3], prompts, [[0, 1], [2, 3]], out, **kw)
    rows = res["rows"]
    # per seed set: the teacher, ddim 2 / 3, dpmpp 2 / 3, the splice 2 / 3, the corrector at its own 2
    assert len(rows) == 2 * 8 and {r["images"] for r in rows} == {4}
    assert all(r["unet_calls_counted"] == r["unet_calls"] for r in rows)
    timing = 2 * 2  # crf_cost: one warm-up and one timed UNet call per CRF
    assert counter.calls == sum(r["unet_calls"] for r in rows) + timing
    assert len(res["generated"]) == 16 and len(list((out / "cache").glob("*.safetensors"))) == 16
    corr_rows = [r for r in rows if r["method"] == "crf-corr"]
    assert [r["unet_calls"] for r in corr_rows] == [2, 2] and corr_rows[0]["plan"]["kind"] == "corrector"
    assert all(r["budget"] == pytest.approx(2 + r["crf_cost"]) and r["crf_cost"] > 0 for r in corr_rows)
    assert [r["plan"]["pre_run"] for r in rows if r["method"] == "crf-splice"][:2] == [1, 2]
    teacher = [r for r in rows if r["kind"] == "teacher"][0]
    assert "latent_mse" not in teacher["estimates"] and "frechet" in teacher["estimates"]
    e = rows[1]["estimates"]
    assert set(e) == {"latent_mse", "psnr", "frechet", "accuracy", "vendi"}
    assert all(v["low"] <= v["value"] <= v["high"] and v["n"] in (4, 2) for v in e.values())
    same = [c for c in res["comparisons"] if c["rule"] == "same calls"]
    assert {(c["method"], c["peer"], c["calls"]) for c in same} >= {("crf-corr", "dpmpp-trailing", 2),
                                                                     ("crf-splice", "ddim", 3)}
    assert set(same[0]["beats"]) == {"teacher", "frechet", "accuracy_not_lower", "all"}
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["images_per_row"] == 4
    md = (out / "sweep.md").read_text()
    assert "Seed set 1 (seeds 2-3)" in md and "Paired differences" in md and "Verdicts" in md
    assert (out / "pareto.png").stat().st_size > 5000
    # a second run generates nothing: only the CRF timing calls the UNet
    with UNetCallCounter(tiny_pipe.unet) as counter:
        again = S.run_sweep(tiny_pipe, clf, ref, specs, [2, 3], prompts, [[0, 1], [2, 3]], out, **kw)
    assert counter.calls == timing and again["generated"] == []
    # another output folder sharing the cache: nothing generated either
    with UNetCallCounter(tiny_pipe.unet) as counter:
        other = S.run_sweep(tiny_pipe, clf, ref, specs[:2], [2], prompts, [[0, 1]], tmp_path / "out2",
                            cache_dir=out / "cache", **kw)
    assert counter.calls == 0 and other["generated"] == [] and (tmp_path / "out2" / "sweep.md").is_file()
    assert [r["estimates"]["latent_mse"] for r in again["rows"][1:8]] == [r["estimates"]["latent_mse"] for r in rows[1:8]]


def test_splice_plan_for_budget():
    from energycrf.apps.ldm import sweep as S
    from energycrf.apps.ldm.train import SCHEDULER_CONFIG

    p20 = S.splice_plan_for(20, SCHEDULER_CONFIG)
    assert (p20.pre_steps, p20.pre_run, p20.post_run, p20.unet_calls) == (25, 19, 1, 20)
    assert p20.schedule_for(SCHEDULER_CONFIG).splice_timestep == 201
    for calls in (2, 6, 8, 12):
        assert S.splice_plan_for(calls, SCHEDULER_CONFIG).unet_calls == calls


def _args(argv):
    from energycrf.apps.ldm import sweep as S

    p = argparse.ArgumentParser()
    S.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.parametrize("bad, needle", [(["--budgets", "6,x"], "--budgets"), (["--budgets", "0"], "--budgets"),
                                         (["--methods", "euler"], "--methods"), (["--methods", "dpmpp:middle"], "--methods"),
                                         (["--seeds", "1"], "--seeds"), (["--bootstrap", "3"], "--bootstrap"),
                                         (["--budgets", "6,50", "--methods", "ddim,dpmpp"], "teacher's 50 steps")])
def test_sweep_refuses_bad_options_before_work(tmp_path, bad, needle):
    from energycrf.apps.ldm import sweep as S

    with pytest.raises(UsageError, match=needle):  # one line naming the option, status 2 from the CLI
        S.run(_args(["--out", str(tmp_path / "x"), *bad]))
    assert not (tmp_path / "x").exists()


def test_splice_ablation_plans_and_methods():
    from energycrf.apps.ldm import sweep as S
    from energycrf.apps.ldm.train import SCHEDULER_CONFIG

    # Table 4 "no post step": every call before the CRF, whose output is the final latent
    for calls in (2, 6, 8, 12):
        p = S.splice_plan_for(calls, SCHEDULER_CONFIG, post_run=0)
        assert (p.pre_run, p.post_run, p.unet_calls) == (calls, 0, calls)
        with1 = S.splice_plan_for(calls, SCHEDULER_CONFIG)
        t0 = p.schedule_for(SCHEDULER_CONFIG).splice_timestep
        t1 = with1.schedule_for(SCHEDULER_CONFIG).splice_timestep
        assert abs(t0 - S.SPLICE_TARGET) <= abs(t1 - S.SPLICE_TARGET) + 1000 // calls  # nearest grid to t = 201
    with pytest.raises(ValueError, match="more than 1 calls"):
        S.splice_plan_for(1, SCHEDULER_CONFIG)
    assert S.method_tokens("ddim,crf-splice-nopost,crf-splice-nocrf") == ["ddim", "crf-splice-nopost",
                                                                           "crf-splice-nocrf"]
    ident = S.identity_crf()
    z = torch.randn(2, 4, 8, 8)
    assert ident(z, torch.randn(2, 3, 384)) is z and ident.cond_dim is None and not list(ident.parameters())
    specs = S.build_specs(["crf-splice", "crf-splice-nopost", "crf-splice-nocrf"])
    assert [(s.kind, s.post_run) for s in specs] == [("splice", 1), ("splice", 0), ("splice", 1)]
    assert specs[0].crf is not specs[1].crf and type(specs[2].crf).__name__ == "Identity"


@needs_text
def test_sweep_runs_the_splice_ablations_with_their_call_counts(tiny_pipe, tmp_path):
    from energycrf.apps.ldm import sweep as S
    from energycrf.apps.ldm.classifier import FashionClassifier

    _, splice = _crfs(tmp_path)
    specs = [S.plain("ddim"), S.Spec("crf-splice-nopost", "no post", kind="splice", crf=splice, post_run=0),
             S.Spec("crf-splice-nocrf", "no CRF", kind="splice", crf=S.identity_crf(), post_run=1)]
    torch.manual_seed(0)
    clf = FashionClassifier(width=4).eval()
    ref = np.random.default_rng(0).normal(size=(40, 64))
    res = S.run_sweep(tiny_pipe, clf, ref, specs, [2, 3, 4], [("a photo of a bag", 8), ("a coat", 4)], [[0, 1]],
                      tmp_path / "out", teacher_steps=5, batch_size=4, n_boot=20, cost_repeats=1, cost_batch=2,
                      progress=False)
    # each CRF row against DDIM at the cheapest budget >= its cost and at the next budget above that
    rules = {(c["method"], c["calls"], c["rule"]): c["peer_calls"] for c in res["comparisons"]}
    for method in ("crf-splice-nopost", "crf-splice-nocrf"):
        assert rules[(method, 2, "same cost")] == 3 and rules[(method, 2, "next budget")] == 4
        assert (method, 3, "next budget") not in rules and (method, 4, "same cost") not in rules
    rows = {r["method"]: r for r in res["rows"] if r["unet_calls"] in (3, 50)}
    assert all(r["unet_calls_counted"] == 3 for k, r in rows.items() if k != "teacher")  # the hook agrees with the plan
    assert (rows["crf-splice-nopost"]["plan"]["pre_run"], rows["crf-splice-nopost"]["plan"]["post_run"]) == (3, 0)
    assert (rows["crf-splice-nocrf"]["plan"]["pre_run"], rows["crf-splice-nocrf"]["plan"]["post_run"]) == (2, 1)
    # the two rows differ from plain DDIM 3 (the splice changes the trajectory) and from each other
    mse = {k: r["estimates"]["latent_mse"]["value"] for k, r in rows.items() if k != "teacher"}
    assert len({round(v, 12) for v in mse.values()}) == 3


def test_sweep_keeps_an_earlier_run_and_checks_paths_and_crfs_before_work(tmp_path, capsys):
    from energycrf import cli

    out = tmp_path / "done"
    out.mkdir()
    (out / "sweep.md").write_text("an earlier run\n")
    (tmp_path / "cache.txt").write_text("a file\n")
    for argv, option in ((["--out", str(out)], "--out"),
                         (["--out", str(tmp_path / "new"), "--cache", str(tmp_path / "cache.txt")], "--cache"),
                         (["--out", str(tmp_path / "new"), "--methods", "dpmpp,crf:nope"], "--methods")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["sweep", "--budgets", "6", *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and f"error: {option}: expected" in err, err
    assert (out / "sweep.md").read_text() == "an earlier run\n" and not (tmp_path / "new").exists()


def test_check_crfs_refuses_a_crf_of_another_pipeline():
    from types import SimpleNamespace

    import energycrf as ec
    from energycrf.apps.ldm import sweep as S

    pipe = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(in_channels=4, cross_attention_dim=384)))
    ok = S.Spec("crf-a", "a", kind="recorded", crf=ec.LatentCRF(channels=4, cond_dim=384))
    S.check_crfs([ok, S.Spec("crf-b", "b", kind="recorded", crf=ec.LatentCRF(channels=4, cond_dim=None)),
                  S.Spec("crf-splice-nocrf", "no CRF", kind="splice", crf=S.identity_crf())], pipe)
    with pytest.raises(UsageError, match="--methods: expected a LatentCRF for this pipeline.*cond_dim=32"):
        S.check_crfs([ok, S.Spec("crf-c", "c", kind="recorded", crf=ec.LatentCRF(channels=4, cond_dim=32))], pipe)
