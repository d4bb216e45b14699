"""VARSR EMA: with `ema.enabled`, validation samples from and export writes the averaged weights
(`ema.use_for_eval`, default on); switched off they use the raw ones. Expected averages are computed
from snapshots of the raw weights after every step, not by the EMA class under test."""

import pytest
import torch

from common.ema import EMA
from varsr.config import SourceConfig, tiny_train_config
from varsr.model import build_models
from varsr.official import load_official_varsr
from varsr.parallelize import unwrap
from varsr.train import Trainer

STEPS = 3


def _run(tmp_path, use_for_eval: bool):
    cfg = tiny_train_config(str(tmp_path / "run"))
    cfg.data.sources = [SourceConfig(kind="bundled", limit=2, resize_shorter_to=120)]
    cfg.schedule.max_steps = STEPS
    cfg.optim.lr = 3e-3
    cfg.schedule.flat_fraction = 1.0
    cfg.checkpoint.export_official = True
    cfg.ema.enabled, cfg.ema.decay, cfg.ema.start_step, cfg.ema.use_for_eval = True, 0.5, 1, use_for_eval
    trainer = Trainer(cfg)
    seen_by_validation = {}

    def validate_on(model):  # what validation would sample from, captured at its call
        seen_by_validation.update({k: v.detach().clone() for k, v in unwrap(model).state_dict().items()})
        return {}

    trainer._validate_on = validate_on
    snaps = []
    trainer.fit(
        callback=lambda t, m: snaps.append({k: v.detach().clone() for k, v in unwrap(t.model).state_dict().items()})
    )
    trainer.validate()
    exported = build_models(cfg.model, device="cpu")[0]
    load_official_varsr(trainer.run_dir / "export" / "VARSR.pth", exported)
    return trainer, snaps, seen_by_validation, exported.state_dict()


@pytest.mark.slow  # two tiny trainings with export: ~30 s each on a loaded 2-core machine
@pytest.mark.parametrize("use_for_eval", [True, False])
def test_validation_and_export_use_ema_weights(tmp_path, use_for_eval):
    trainer, snaps, seen, exported = _run(tmp_path, use_for_eval)
    assert len(snaps) == STEPS
    trained = {n for n, p in unwrap(trainer.model).named_parameters() if p.requires_grad}
    raw = snaps[-1]
    moved = [k for k in trained if not torch.allclose(snaps[2][k], snaps[1][k])]
    assert moved
    for k in raw:
        if use_for_eval and k in trained:  # e1 = w1, e2 = (e1 + w2) / 2, e3 = (e2 + w3) / 2
            expected = (snaps[0][k] * 0.5 + snaps[1][k] * 0.5) * 0.5 + snaps[2][k] * 0.5
        else:  # buffers, or EMA switched off: the trained weights
            expected = raw[k]
        torch.testing.assert_close(exported[k], expected.to(exported[k].dtype), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(seen[k], expected.to(seen[k].dtype), rtol=1e-6, atol=1e-7)
    if use_for_eval:
        assert not torch.allclose(exported[moved[0]], raw[moved[0]])
    for k, v in unwrap(trainer.model).state_dict().items():  # raw weights restored after validate/export
        assert torch.equal(v, raw[k]), k


def test_ema_applied_restores_raw_weights_exactly():
    lin = torch.nn.Linear(4, 3)
    ema = EMA(lin, decay=0.9)
    with torch.no_grad():
        lin.weight.add_(1.0)
    before = lin.weight.detach().clone()
    ema.update(lin, step=0)
    with ema.applied(lin):
        torch.testing.assert_close(lin.weight, ema.shadow["weight"])
        assert not torch.equal(lin.weight, before)
    assert torch.equal(lin.weight, before)
