"""Atomic checkpoint writes, safe loading, resume discovery, RNG round trips, pre-emption flag."""

import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from common.checkpoint import (
    PreemptionHandler,
    atomic_save,
    rng_state,
    safe_load,
    save_safetensors_atomic,
    set_rng_state,
)


def test_exception_during_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"v": torch.ones(4)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert torch.equal(safe_load(path)["v"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_sigkill_during_write_keeps_previous(tmp_path):
    """A process killed by SIGKILL in the middle of writing leaves the old checkpoint loadable."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from common.checkpoint import atomic_save
        atomic_save({{"step": 1}}, {str(tmp_path / "ckpt.pt")!r})
        real = torch.save
        def dying_save(obj, f):
            f.write(b"x" * 4096); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        atomic_save({{"step": 2}}, {str(tmp_path / "ckpt.pt")!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert safe_load(tmp_path / "ckpt.pt") == {"step": 1}
    # the killed write left its temp file behind; common.train_state deletes such orphans at start
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1


class Args:  # an arbitrary object, as in official trainer dicts
    pass


def test_safe_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"args": Args()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        safe_load(path)


def test_safetensors_atomic(tmp_path):
    p = save_safetensors_atomic({"a": torch.arange(6).view(2, 3)}, tmp_path / "w.safetensors", {"k": "v"})
    assert torch.equal(safe_load(p)["a"], torch.arange(6).view(2, 3))


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    atomic_save({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(safe_load(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_preemption_handler_sets_flag():
    h = PreemptionHandler()
    try:
        assert not h.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert h.requested and h.signum == signal.SIGTERM
    finally:
        h.restore()
