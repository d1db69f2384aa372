"""A 2-process gloo DDP run equals the single-process run with the same global batch; joining a
process group fails fast and clearly."""

import time

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from energycrf.training import TrainConfig, Trainer, init_distributed, read_log
from energycrf.training import trainer as trainer_module

from ._ddp import free_port, spawn
from ._toy import ToyDenoiser, ddp_worker, toy_images


def _weights(out_dir):
    latest = (out_dir / "latest").read_text().strip()
    return load_file(str(out_dir / latest / "model.safetensors"))


def test_two_gloo_processes_match_one_process(tmp_path):
    steps = 6
    ddp_worker(0, 1, free_port(), str(tmp_path / "single"), 4, steps)  # global batch 4
    spawn(ddp_worker, (2, free_port(), str(tmp_path / "ddp"), 2, steps), nprocs=2, timeout=90)
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    # and training moved the weights: the comparison is not trivially between initial states
    torch.manual_seed(0)
    init = ToyDenoiser(dropout=0.0).state_dict()
    assert any((init[k] - a[k]).abs().max() > 1e-3 for k in a)
    la, lb = read_log(tmp_path / "single" / "log.jsonl"), read_log(tmp_path / "ddp" / "log.jsonl")
    assert [r["step"] for r in lb] == list(range(1, steps + 1))
    for ra, rb in zip(la, lb):
        assert abs(ra["loss"] - rb["loss"]) <= 1e-5 * abs(ra["loss"])  # all-reduced mean = global mean


@pytest.mark.parametrize("rank", [0, 1])
def test_rendezvous_without_a_peer_times_out_quickly(monkeypatch, rank):
    """WORLD_SIZE=2 and nobody else: a clear error after ``timeout`` seconds, not a 30-minute wait."""
    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK=str(rank), WORLD_SIZE="2",
                     LOCAL_RANK=str(rank)).items():
        monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"WORLD_SIZE=2.*127\.0\.0\.1:\d+.*timeout=1"):
        init_distributed(device="cpu", timeout=1)
    assert time.monotonic() - t0 < 20
    assert not dist.is_initialized()


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                        (float("inf"), ValueError), ("5", TypeError), (True, TypeError)])
def test_timeout_is_validated(bad, error):
    with pytest.raises(error, match="timeout"):
        init_distributed(device="cpu", timeout=bad)
    with pytest.raises(error, match="dist_timeout"):
        TrainConfig(dist_timeout=bad)


def test_trainer_passes_its_timeout_to_the_process_group(monkeypatch, tmp_path):
    seen = {}

    def fake_init(**kw):
        seen.update(kw)
        return init_distributed(device="cpu")

    monkeypatch.setattr(trainer_module, "init_distributed", fake_init)
    from energycrf.training import ImagePatches

    ds = ImagePatches(toy_images(1, 16), patch_size=8, length=4)
    Trainer(ToyDenoiser(), TrainConfig(output_dir=str(tmp_path), batch_size=2, dist_timeout=7.5), ds)
    assert seen == {"timeout": 7.5}
    assert TrainConfig().dist_timeout is None  # torch's default


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only torch")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="device.*'cuda:1'.*CUDA is not available"):
        init_distributed(device="cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_missing_cuda_device_is_a_clear_error():
    with pytest.raises(ValueError, match="device.*does not exist"):
        init_distributed(device=f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("name, value", [("WORLD_SIZE", "abc"), ("WORLD_SIZE", "0"), ("RANK", "-1"),
                                         ("LOCAL_RANK", "x")])
def test_a_malformed_torchrun_variable_is_named(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"environment variable {name}: expected an integer"):
        init_distributed(device="cpu")


def test_collective_tensors_outlive_the_calls_that_hand_them_to_gloo(monkeypatch):
    """A gloo thread may drop a collective's tensor after the caller moved on (during interpreter
    exit that aborted a finished run): the tensors ``all_reduce_mean`` and ``max_over_ranks`` hand
    over stay alive in Python, and the results are still the mean and the maximum."""
    import gc
    import weakref

    from energycrf.training import distributed

    handed = []

    def fake_all_reduce(t, op):  # the other rank contributes 3 x t (SUM) or 5 everywhere (MAX)
        handed.append(weakref.ref(t))
        if op == dist.ReduceOp.SUM:
            t.mul_(4)
        else:
            t.clamp_(min=5)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    value = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    for _ in range(2):  # the buffers are reused: a second call is not polluted by the first
        torch.testing.assert_close(distributed.all_reduce_mean(value), 2 * value)
        assert distributed.max_over_ranks([1, 7, 0], torch.device("cpu")) == [5, 7, 5]
    assert distributed.all_reduce_mean(torch.tensor(3.0)).shape == ()
    gc.collect()
    assert len(handed) == 5 and all(ref() is not None for ref in handed)
    # also while the interpreter exits, which clears the module's dict: the buffers keep their Python objects
    saved = dict(distributed._BUFFERS)
    try:
        distributed._BUFFERS.clear()
        del saved
        gc.collect()
        assert all(ref() is not None for ref in handed)
    finally:
        distributed._BUFFERS.update({(t.numel(), t.dtype, str(t.device)): t for t in (r() for r in handed)})
