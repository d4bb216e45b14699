"""Row 8 of issue 18 (signal part): submitit's pre-emption signal is SIGUSR2 (``--signal=USR2@120``)
and its own USR2 handler requeues the job and exits at once. The loop must checkpoint first: the
handler installed before training (a stand-in with submitit's behaviour here; submitit's real
one runs in tests/common/test_multinode.py) is called only after the checkpoint is on disk."""

import os
import signal

import pytest

from common.checkpoint import PreemptionHandler
from common.train_state import has_checkpoint, list_steps


class FakeRequeue:
    """Records what existed when submitit's handler would have requeued the job, then exits like it."""

    def __init__(self, run_dir=None):
        self.calls, self.run_dir = [], run_dir

    def __call__(self, signum, frame):
        steps = [s for s, p in list_steps(self.run_dir) if (p / "COMPLETE").is_file()] if self.run_dir else []
        self.calls.append((signum, steps))
        raise SystemExit(-1)  # submitit's SignalHandler._exit


@pytest.fixture
def fake_submitit():
    def install(run_dir=None):
        handler = FakeRequeue(run_dir)
        old = signal.signal(signal.SIGUSR2, handler)
        installed.append(old)
        return handler

    installed = []
    yield install
    for old in installed:
        signal.signal(signal.SIGUSR2, old)


def test_usr2_is_held_until_restore(fake_submitit):
    submitit = fake_submitit()
    h = PreemptionHandler()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert h.requested and h.signum == signal.SIGUSR2 and submitit.calls == []
    finally:
        with pytest.raises(SystemExit):
            h.restore()
    assert submitit.calls == [(signal.SIGUSR2, [])]
    assert signal.getsignal(signal.SIGUSR2) is submitit  # submitit's handler is back in place


def test_submitit_signal_variable(monkeypatch):
    from common.checkpoint import preemption_signals

    assert {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2} <= set(preemption_signals())
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "URG")
    assert signal.SIGURG in preemption_signals()


def test_varsr_checkpoints_before_submitit_requeues(tmp_path, fake_submitit):
    from varsr.config import tiny_train_config
    from varsr.train import Trainer

    cfg = tiny_train_config(str(tmp_path))
    cfg.schedule.max_steps = 50
    submitit = fake_submitit(tmp_path)

    def preempt_at_2(trainer, metrics):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)

    trainer = Trainer(cfg)
    with pytest.raises(SystemExit):  # submitit's handler exits after requeueing
        trainer.fit(callback=preempt_at_2)
    assert submitit.calls == [(signal.SIGUSR2, [2])]  # step 2 was complete on disk when it requeued
    assert trainer.step == 2 and has_checkpoint(tmp_path)
