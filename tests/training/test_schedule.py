import math

import pytest
import torch

from energycrf.training.schedule import WarmupCosine, warmup_cosine_scheduler


def test_warmup_is_linear_then_cosine_to_floor():
    f = WarmupCosine(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert [f(t) for t in range(10)] == pytest.approx([(t + 1) / 10 for t in range(10)])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway down the cosine
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)
    # monotone decrease after the warm-up
    vals = [f(t) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_scheduler_drives_optimizer_lr_and_state_is_plain_numbers():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sch = warmup_cosine_scheduler(opt, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[:4] == pytest.approx([1e-3 * k / 4 for k in range(1, 5)])
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[12] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    st = sch.state_dict()
    assert st["lr_lambdas"][0] == {"warmup_steps": 4, "total_steps": 20, "min_lr_ratio": 0.0}


@pytest.mark.parametrize("kw,name", [
    (dict(warmup_steps=-1, total_steps=5), "warmup_steps"),
    (dict(warmup_steps=1, total_steps=0), "total_steps"),
    (dict(warmup_steps=1, total_steps=5, min_lr_ratio=2.0), "min_lr_ratio"),
])
def test_bad_arguments_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        WarmupCosine(**kw)
