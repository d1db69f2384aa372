"""SplicePlan: the paper's default, timestep grids equal to diffusers' DDIM, impossible plans refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from energycrf.integrations.plan import CLEAN, SplicePlan, ddim_timesteps


def test_paper_plan_on_the_sd15_grid():
    plan = SplicePlan()
    assert (plan.pre_steps, plan.pre_run, plan.post_steps, plan.post_run) == (40, 31, 50, 2)
    assert plan.crf_output == "clean" and SplicePlan.paper() == plan
    assert plan.unet_calls == 33 and plan.baseline_unet_calls == 50
    s = plan.schedule(num_train_timesteps=1000, spacing="leading", steps_offset=1)
    assert s.pre == tuple(range(976, 225, -25))
    assert s.splice_timestep == 201 and s.post == (21, 1)
    assert s.timesteps == s.pre + (21, 1) and len(s.timesteps) == 33
    assert s.prev_timesteps[s.crf_index] == 201  # 226 -> 201, not 226 -> 21
    assert s.prev_timesteps[-2:] == (1, CLEAN)
    assert s.target_timestep == CLEAN and s.post_entry_timestep == 21
    assert s.teacher_timesteps("plan") == s.pre + tuple(range(201, 0, -20))
    assert s.teacher_timesteps("full") == tuple(range(981, 0, -20))
    assert plan.saving() == pytest.approx(0.34)
    assert plan.saving(0.5) == pytest.approx(1 - 33.5 / 50)


def test_post_output_targets_the_first_post_timestep():
    s = SplicePlan(crf_output="post").schedule(1000, "leading", 1)
    assert s.target_timestep == 21


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("n", [1, 7, 20, 40, 50, 333, 999])
def test_grids_equal_diffusers_ddim(spacing, offset, n):
    diffusers = pytest.importorskip("diffusers")
    s = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    s.set_timesteps(n)
    assert ddim_timesteps(n, 1000, spacing, offset) == s.timesteps.tolist()


@given(
    pre_steps=st.integers(2, 60),
    pre_frac=st.floats(0, 1),
    post_steps=st.integers(1, 60),
    post_run=st.integers(0, 6),
    spacing=st.sampled_from(["leading", "trailing", "linspace"]),
    offset=st.integers(0, 1),
    crf_output=st.sampled_from(["clean", "post"]),
)
def test_valid_plans_give_consistent_schedules(pre_steps, pre_frac, post_steps, post_run, spacing, offset, crf_output):
    pre_run = 1 + int(pre_frac * (pre_steps - 2))
    post_run = min(post_run, post_steps)
    if crf_output == "post" and post_run == 0:
        with pytest.raises(ValueError, match="crf_output='post'"):
            SplicePlan(pre_steps, pre_run, post_steps, post_run, crf_output)
        return
    plan = SplicePlan(pre_steps, pre_run, post_steps, post_run, crf_output)
    try:
        s = plan.schedule(1000, spacing, offset)
    except ValueError as err:  # only refusal allowed: post steps not below the splice point
        assert "not below the splice timestep" in str(err)
        grid_pre = ddim_timesteps(pre_steps, 1000, spacing, offset)
        grid_post = ddim_timesteps(post_steps, 1000, spacing, offset)
        assert grid_post[-post_run] >= grid_pre[pre_run]
        return
    ts, prev = s.timesteps, s.prev_timesteps
    assert len(ts) == plan.unet_calls == len(prev)
    assert all(a > b for a, b in zip(ts, ts[1:]))  # strictly decreasing
    assert all(p < t for t, p in zip(ts, prev))  # every step lowers the noise
    assert prev[s.crf_index] == s.splice_timestep
    assert all(t < s.splice_timestep for t in s.post)
    assert SplicePlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    "kwargs,error,needle",
    [
        (dict(pre_run=40), ValueError, "pre_run must be < pre_steps"),
        (dict(pre_run=0), ValueError, "pre_run must be >= 1"),
        (dict(post_run=51), ValueError, "post_run must be <= post_steps"),
        (dict(post_run=-1), ValueError, "post_run must be >= 0"),
        (dict(pre_steps=1, pre_run=1), ValueError, "pre_steps must be >= 2"),
        (dict(crf_output="x0"), ValueError, "crf_output must be one of"),
        (dict(crf_output="post", post_run=0), ValueError, "post_run=0"),
        (dict(pre_run=31.0), TypeError, "pre_run must be an int"),
        (dict(post_run=True), TypeError, "post_run must be an int"),
    ],
)
def test_bad_plans_refused(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        SplicePlan(**kwargs)


def test_impossible_schedule_refused():
    plan = SplicePlan(pre_run=31, post_run=45)  # last 45 of 50 start at t = 881 > 201
    with pytest.raises(ValueError, match="first post-CRF timestep 881 .* not below the splice timestep 201"):
        plan.schedule(1000, "leading", 1)
    with pytest.raises(ValueError, match="num_steps must be <= num_train_timesteps"):
        SplicePlan(pre_steps=2000, pre_run=3).schedule(1000)
    with pytest.raises(ValueError, match="spacing"):
        SplicePlan().schedule(1000, "uniform")
    with pytest.raises(ValueError, match="teacher='full' needs the splice timestep"):
        SplicePlan(pre_steps=30, pre_run=20).schedule(1000, "leading", 1).teacher_timesteps("full")
    with pytest.raises(ValueError, match="unknown plan fields"):
        SplicePlan.from_dict({"pre_steps": 40, "cfg": 7})
    with pytest.raises(ValueError, match="crf_cost"):
        SplicePlan().saving(-1.0)
