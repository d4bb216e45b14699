"""Issue 16 through the VARSR trainer: a second training on a live run dir is one line (exit 2) and
writes nothing; a NaN step never becomes a checkpoint, an export or the pruning of the last good
step (optim.nonfinite=stop), or is dropped (skip); a resume with a changed model names the tensors
and leaves the run's config.yaml alone."""

import json
import os

import pytest
import torch

from common.integrity import NonFiniteError
from common.train_state import CheckpointMismatch, list_steps, load_model_only, step_dir
from tests.common.test_run_safety import _holder
from tests.folder_cases import load_launcher, user_error


def test_second_training_on_a_live_run_dir_is_one_line_and_writes_nothing(tmp_path, capsys):
    """Bad case 5: the first run's metrics.jsonl gets no rows of the second (which is refused at once)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 5, "train/loss": 1.0}\n')
    first = _holder(run)
    try:
        line = user_error(
            capsys, load_launcher("train_varsr").main, ["+exp=quick", f"run.run_dir={run}", "run.wandb_mode=disabled"]
        )
    finally:
        first.communicate("")
    assert f"{run} is in use by training (pid {first.pid}" in line, line
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]  # no config.yaml, no checkpoints
    assert (run / "metrics.jsonl").read_text() == '{"step": 5, "train/loss": 1.0}\n'


def _cfg(run_dir, policy):
    from varsr.config import tiny_train_config

    cfg = tiny_train_config(str(run_dir))
    cfg.schedule.max_steps = 3
    cfg.checkpoint.every_steps, cfg.checkpoint.keep, cfg.checkpoint.export_official = 1, 1, True
    cfg.optim.nonfinite = policy
    return cfg


def _nan_at_step_3(monkeypatch):
    """The loss of the 3rd optimizer step is NaN (as after a silently corrupted resume)."""
    import varsr.losses

    real, calls = varsr.losses.varsr_loss, []

    def loss(*a, **k):
        out, stats = real(*a, **k)
        calls.append(1)
        return (out * float("nan") if len(calls) == 3 else out), stats

    monkeypatch.setattr(varsr.losses, "varsr_loss", loss)


def _weights(path, model):
    """The checkpoint's parameters (buffers such as attention masks hold -inf on purpose)."""
    sd = {k: torch.empty_like(v) for k, v in model.state_dict().items()}
    load_model_only(path, sd)
    return {k: sd[k] for k, _ in model.named_parameters()}


@pytest.mark.slow  # two tiny VARSR trainer builds (~10 s idle)
def test_nan_step_stops_without_checkpoint_export_or_pruning(tmp_path, monkeypatch, capsys):
    from varsr.train import Trainer

    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "VARSR.pth").write_bytes(b"the previous good export")
    _nan_at_step_3(monkeypatch)
    trainer = Trainer(_cfg(run, "stop"))
    with pytest.raises(NonFiniteError, match="non-finite loss or gradient norm at step 3"):
        trainer.fit()
    assert [s for s, _ in list_steps(run)] == [2]  # step 2 is neither replaced nor pruned
    assert (run / "export" / "VARSR.pth").read_bytes() == b"the previous good export"
    good = _weights(step_dir(run, 2), trainer.model)
    assert all(v.isfinite().all() for v in good.values())
    monkeypatch.undo()

    # a resume with a changed model: the tensors are named, config.yaml (the run's own) is kept
    config_yaml = (run / "config.yaml").read_text()
    changed = _cfg(run, "stop")
    changed.model.depth = 3
    with pytest.raises(CheckpointMismatch, match=r"2 tensor\(s\)|only in this model: blocks.2."):
        Trainer(changed)
    assert (run / "config.yaml").read_text() == config_yaml
    assert [s for s, _ in list_steps(run)] == [2]


@pytest.mark.slow  # one tiny VARSR training (~8 s idle)
def test_nan_step_is_skipped_when_configured(tmp_path, monkeypatch, caplog, capsys):
    from varsr.train import Trainer

    cfg = _cfg(tmp_path, "skip")
    cfg.checkpoint.keep = 0
    _nan_at_step_3(monkeypatch)
    trainer = Trainer(cfg)
    with caplog.at_level("WARNING"):
        assert trainer.fit()["step"] == 3
    assert "step 3: non-finite loss or gradient norm; update skipped" in caplog.text + capsys.readouterr().out
    w2, w3 = _weights(step_dir(tmp_path, 2), trainer.model), _weights(step_dir(tmp_path, 3), trainer.model)
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # the NaN update was dropped, not applied
    assert all(v.isfinite().all() for v in w3.values())
    meta = json.loads((step_dir(tmp_path, 3) / "meta.json").read_text())
    assert meta["app"] == "varsr" and "state/__0_0.distcp" in meta["checksums"]
    assert os.path.getsize(tmp_path / "export" / "VARSR.pth") > 0
