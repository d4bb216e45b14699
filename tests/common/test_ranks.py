"""Rank identity on a second node: the global rank names the work, the local rank names the GPU.

A bug this catches: ``init_distributed`` binding the device from RANK (cuda:9 on an 8-GPU node) or
reporting LOCAL_RANK as the rank (node 2's ranks then redo node 1's share of every split). The
process group is faked; the environment is what torchrun sets for rank 9 of 16 (node 1, GPU 1).
"""

from __future__ import annotations

import torch


def test_second_node_uses_rank_for_work_and_local_rank_for_device(monkeypatch):
    import common.dist as cdist

    calls = {}
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("device", torch.device(d)))
    monkeypatch.setattr(cdist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(cdist.dist, "init_process_group", lambda backend, **kw: calls.setdefault("backend", backend))
    info = cdist.init_distributed()
    assert (info.rank, info.world_size, info.local_rank) == (9, 16, 1)
    assert info.device == torch.device("cuda", 1) and calls == {"device": torch.device("cuda", 1), "backend": "nccl"}
    assert not info.is_main
    # device=cpu (a CPU job across nodes): gloo, the same ranks
    calls.clear()
    info = cdist.init_distributed("cpu")
    assert (info.rank, info.local_rank, info.device, calls) == (9, 1, torch.device("cpu"), {"backend": "gloo"})
