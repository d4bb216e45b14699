"""VARSR loop: per-step metrics stay on the device and are read once per logging window."""

import math

import varsr.train as vt
from varsr.config import SourceConfig, tiny_train_config


def test_metrics_are_read_once_per_log_window(tmp_path, monkeypatch):
    calls, real = [], vt.all_reduce_mean
    monkeypatch.setattr(vt, "all_reduce_mean", lambda t, *a, **k: calls.append(tuple(t.shape)) or real(t, *a, **k))
    cfg = tiny_train_config(str(tmp_path / "run"))
    cfg.data.sources = [SourceConfig(kind="bundled", limit=2, resize_shorter_to=120)]
    cfg.schedule.max_steps, cfg.logging.every_steps = 5, 2
    seen = []
    out = vt.Trainer(cfg).fit(callback=lambda t, m: seen.append(m["loss"]))
    assert len(calls) == 2  # steps 2 and 4; step 5's row is read at the end without a collective
    assert len(out["losses"]) == 5 and all(math.isfinite(x) for x in out["losses"])
    assert all(not isinstance(x, float) for x in seen)  # the callback gets device tensors, not host floats
    assert out["losses"] == [float(x) for x in seen]
