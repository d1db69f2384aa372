"""A 2-process gloo DDP run equals the single-process run with the same global batch."""

import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from energycrf.training import read_log

from ._toy import ddp_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(out_dir):
    latest = (out_dir / "latest").read_text().strip()
    return load_file(str(out_dir / latest / "model.safetensors"))


def test_two_gloo_processes_match_one_process(tmp_path):
    steps = 6
    ddp_worker(0, 1, _free_port(), str(tmp_path / "single"), 4, steps)  # global batch 4
    mp.spawn(ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), 2, steps), nprocs=2, join=True)
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    # and training moved the weights: the comparison is not trivially between initial states
    torch.manual_seed(0)
    from ._toy import ToyDenoiser

    init = ToyDenoiser(dropout=0.0).state_dict()
    assert any((init[k] - a[k]).abs().max() > 1e-3 for k in a)
    la, lb = read_log(tmp_path / "single" / "log.jsonl"), read_log(tmp_path / "ddp" / "log.jsonl")
    assert [r["step"] for r in lb] == list(range(1, steps + 1))
    for ra, rb in zip(la, lb):
        assert abs(ra["loss"] - rb["loss"]) <= 1e-5 * abs(ra["loss"])  # all-reduced mean = global mean
