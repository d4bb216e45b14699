"""Issue 16 through the PURE trainer: a NaN step never becomes a checkpoint or an HF export
(optim.nonfinite=stop), or its update is dropped (skip); an existing export.hf_dir is refused at start."""

import pytest
import torch

from common.integrity import NonFiniteError
from common.train_state import list_steps, load_model_only, step_dir
from tests.pure.test_train import make_cfg


def _nan_at_step(monkeypatch, bad: int):
    """The loss of optimizer step ``bad`` (1 micro-batch per step) is NaN."""
    from pure.losses import PureLoss

    real, calls = PureLoss.forward, []

    def forward(self, *a, **k):
        loss, stats = real(self, *a, **k)
        calls.append(1)
        return (loss * float("nan") if len(calls) == bad else loss), stats

    monkeypatch.setattr(PureLoss, "forward", forward)


def _cfg(tmp_path, policy):
    over = {"schedule.epochs": 3, "checkpoint.every_steps": 1, "checkpoint.keep": 0, "optim.nonfinite": policy}
    return make_cfg(tmp_path, n_records=2, **over, **{"export.hf_dir": str(tmp_path / "hf")})


def _lm(path, like):
    sd = {k: torch.empty_like(v) for k, v in like.items()}
    load_model_only(path, sd)
    return sd


@pytest.mark.slow  # two tiny PURE trainings of 3 steps
def test_nan_step_stops_or_is_skipped(tmp_path, monkeypatch, capsys):
    from pure.train import Trainer

    _nan_at_step(monkeypatch, 2)
    trainer = Trainer(_cfg(tmp_path / "stop", "stop"))
    with pytest.raises(NonFiniteError, match="at step 2"):
        trainer.fit()
    assert [s for s, _ in list_steps(tmp_path / "stop" / "run")] == [1]
    assert not (tmp_path / "stop" / "hf").exists()

    monkeypatch.undo()
    _nan_at_step(monkeypatch, 2)
    trainer = Trainer(_cfg(tmp_path / "skip", "skip"))
    assert trainer.fit()["step"] == 3
    assert "step 2: non-finite loss or gradient norm; update skipped" in capsys.readouterr().out
    like = {k: v for k, v in trainer.engine.module.state_dict().items()}
    run = tmp_path / "skip" / "run"
    w1, w2 = _lm(step_dir(run, 1), like), _lm(step_dir(run, 2), like)
    params = [k for k, p in trainer.engine.module.named_parameters()]
    assert all(torch.equal(w1[k], w2[k]) for k in params)  # step 2's update was dropped
    assert all(w2[k].isfinite().all() for k in params) and (tmp_path / "skip" / "hf").is_dir()


def test_existing_hf_dir_is_refused_at_start(tmp_path):
    from pure.train import Trainer

    cfg = _cfg(tmp_path, "stop")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "model-00001-of-00001.safetensors").write_bytes(b"another model")
    with pytest.raises(ValueError, match=r"export.hf_dir=.* already exists; set export.overwrite=true"):
        Trainer(cfg)
    assert (tmp_path / "hf" / "model-00001-of-00001.safetensors").read_bytes() == b"another model"
