"""Which rank is which, and which rank gets which random stream back.

- A second node: the global rank names the work, the local rank names the GPU. Catches
  ``init_distributed`` binding the device from RANK (cuda:9 on an 8-GPU node) or reporting LOCAL_RANK
  as the rank (node 2's ranks then redo node 1's share of every split). The process group is faked;
  the environment is what torchrun sets for rank 9 of 16 (node 1, GPU 1).
- RNG save/restore on two real gloo ranks: after a resume each rank continues its OWN streams (Python,
  NumPy, torch), which differ between ranks. Catches every rank restoring rank 0's file (or one file
  written by all), which resumes dropout / noise identically on all ranks.
"""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp


def test_second_node_uses_rank_for_work_and_local_rank_for_device(monkeypatch):
    import common.dist as cdist

    calls = {}
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)  # an 8-GPU node
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("device", torch.device(d)))
    monkeypatch.setattr(cdist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(cdist.dist, "init_process_group", lambda backend, **kw: calls.setdefault("backend", backend))
    info = cdist.init_distributed()
    assert (info.rank, info.world_size, info.local_rank) == (9, 16, 1)
    assert info.device == torch.device("cuda", 1) and calls["device"] == torch.device("cuda", 1)
    assert "nccl" in calls["backend"]  # NCCL for the GPU (main adds gloo for CPU tensors: cuda:nccl,cpu:gloo)
    assert not info.is_main
    # device=cpu (a CPU job across nodes): gloo, the same ranks
    calls.clear()
    info = cdist.init_distributed("cpu")
    assert (info.rank, info.local_rank, info.device, calls) == (9, 1, torch.device("cpu"), {"backend": "gloo"})


def _draws():
    return [random.random(), float(np.random.rand()), torch.rand(3).tolist()]


def _rng_worker(rank, world, port, out):
    import os

    from common.dist import destroy_distributed, init_distributed, seed_everything
    from common.train_state import TrainState

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_distributed("cpu")
    seed_everything(11, rank)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    TrainState(out, model, opt, {}).save(1)
    after_save = _draws()
    seed_everything(999, 0)  # every stream moved elsewhere, the same on both ranks
    got = TrainState(out, model, opt, {}).resume()
    assert got is not None and got.restore_rng()
    torch.save({"after_save": after_save, "resumed": _draws()}, f"{out}/draws_{rank}.pt")
    destroy_distributed()


@pytest.mark.slow  # two spawned gloo processes, ~10 s
def test_each_rank_resumes_its_own_random_streams(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rng_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f"draws_{r}.pt", weights_only=True) for r in range(2)]
    assert res[0]["after_save"] != res[1]["after_save"]  # distinct per-rank streams to begin with
    for r in range(2):
        assert res[r]["resumed"] == res[r]["after_save"], r
