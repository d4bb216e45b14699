"""Row 13 of issue 18: a rank's CUDA RNG stream survives a resume on a node with fewer visible GPUs.

Saving every visible GPU's state and restoring all of them raised on a node that shows fewer GPUs
at the same world size (e.g. 8 GPUs per node before, one GPU per SLURM task after). No GPU here:
torch's own ``torch.cuda`` RNG functions run over fake per-device generators, so the index errors
are the ones a real node raises.
"""

import pytest
import torch
import torch.cuda.random as cuda_random

from common.checkpoint import atomic_save, rng_state, safe_load, set_rng_state


class _FakeGenerator:
    def __init__(self, index: int):
        self.state = torch.full((16,), index, dtype=torch.uint8)

    def get_state(self):
        return self.state.clone()

    def set_state(self, s):
        self.state = s.clone()


def _fake_node(monkeypatch, visible: int, current: int) -> tuple:
    """Pretend CUDA is up with ``visible`` devices, bound to ``current`` (as init_distributed does)."""
    gens = tuple(_FakeGenerator(i) for i in range(visible))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "default_generators", gens)
    for mod in (torch.cuda, cuda_random):
        monkeypatch.setattr(mod, "device_count", lambda: visible)
        monkeypatch.setattr(mod, "current_device", lambda: current)
    monkeypatch.setattr(cuda_random, "_lazy_init", lambda: None)
    monkeypatch.setattr(cuda_random, "is_initialized", lambda: True)
    monkeypatch.setattr(cuda_random, "_lazy_call", lambda cb, **kw: cb())  # CUDA "initialised": run now
    return gens


def test_rank_restores_its_own_device_on_a_node_with_fewer_gpus(tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # saved by local rank 3 of a node with 8 visible GPUs
        gens = _fake_node(m, visible=8, current=3)
        gens[3].state = torch.arange(16, dtype=torch.uint8) * 7  # this rank's advanced stream
        atomic_save(rng_state(), tmp_path / "rank_00003.pt")
    with monkeypatch.context() as m:  # resumed with one visible GPU per task (CUDA_VISIBLE_DEVICES=3)
        gens = _fake_node(m, visible=1, current=0)
        set_rng_state(safe_load(tmp_path / "rank_00003.pt"))
        assert torch.equal(gens[0].state, torch.arange(16, dtype=torch.uint8) * 7)


def test_same_node_restores_only_the_current_device(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        gens = _fake_node(m, visible=2, current=1)
        gens[1].state = torch.full((16,), 42, dtype=torch.uint8)
        atomic_save(rng_state(), tmp_path / "r.pt")
        gens[0].state = torch.full((16,), 9, dtype=torch.uint8)  # another rank's device: not ours to touch
        gens[1].state = torch.zeros(16, dtype=torch.uint8)
        set_rng_state(safe_load(tmp_path / "r.pt"))
        assert torch.equal(gens[1].state, torch.full((16,), 42, dtype=torch.uint8))
        assert torch.equal(gens[0].state, torch.full((16,), 9, dtype=torch.uint8))


@pytest.mark.parametrize("current,expect", [(0, 0), (1, 1)])
def test_older_checkpoints_with_every_gpu_listed(monkeypatch, current, expect):
    """Checkpoints written before the fix hold a list (one state per visible GPU): the current
    device's entry is restored, other entries are left alone, nothing raises on a smaller node."""
    states = [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(8)]
    with monkeypatch.context() as m:
        gens = _fake_node(m, visible=2, current=current)
        base = rng_state()
        base["cuda"] = states
        set_rng_state(base)
        assert torch.equal(gens[current].state, states[expect])
        assert torch.equal(gens[1 - current].state, torch.full((16,), 1 - current, dtype=torch.uint8))
