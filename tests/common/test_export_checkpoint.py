"""launch/export_checkpoint.py: exporting a training checkpoint (model keys only) gives exactly what the
end-of-training export from the live model gives (VARSR official .pth, PURE HF shards + config.json)."""

import json

import pytest
import torch

import common.checkpoint_dcp as cdcp
from launch.export_checkpoint import main as export_main


@pytest.fixture
def read_keys(monkeypatch):
    """Every checkpoint key DCP reads from disk while the fixture is active."""
    keys = []
    real = cdcp.SafeFileSystemReader.read_data

    def spy(self, plan, planner):
        keys.extend(item.dest_index.fqn for item in plan.items)
        return real(self, plan, planner)

    monkeypatch.setattr(cdcp.SafeFileSystemReader, "read_data", spy)
    return keys


@pytest.mark.slow  # two tiny trainings + exports: ~20 s idle
def test_varsr_export_equals_live_export_ema_and_raw(tmp_path, read_keys):
    from varsr.config import tiny_train_config
    from varsr.train import Trainer

    cfg = tiny_train_config(str(tmp_path / "run"))
    cfg.schedule.max_steps = 2
    cfg.ema.enabled, cfg.ema.decay, cfg.ema.use_for_eval = True, 0.5, True
    cfg.checkpoint.export_official = True
    trainer = Trainer(cfg)
    trainer.fit()
    live = torch.load(tmp_path / "run/export/VARSR.pth", weights_only=True)["trainer"]["var_wo_ddp"]
    read_keys.clear()
    export_main(["app=varsr", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'ema.pth'}"])
    assert read_keys and not any(k.startswith("optim") for k in read_keys)  # never reads optimizer state
    got = torch.load(tmp_path / "ema.pth", weights_only=True)["trainer"]
    assert set(got) == {"var_wo_ddp"}  # random test tokenizer: no init.vqvae to copy
    assert set(got["var_wo_ddp"]) == set(live)
    for k, v in live.items():
        assert torch.equal(got["var_wo_ddp"][k], v), k
    export_main(["app=varsr", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'raw.pth'}", "ema=false"])
    raw = torch.load(tmp_path / "raw.pth", weights_only=True)["trainer"]["var_wo_ddp"]
    params = dict(trainer.model.named_parameters())
    assert any(not torch.equal(raw[k], live[k]) for k in params)  # the EMA really differs from the weights
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(raw[k], v), k


@pytest.mark.slow
def test_pure_export_equals_live_export(tmp_path, read_keys):
    from safetensors.torch import load_file

    from pure.train import main
    from tests.pure.test_train import make_cfg

    cfg = make_cfg(tmp_path, n_records=2, **{"schedule.epochs": 1, "export.hf_dir": str(tmp_path / "live")})
    main(cfg)
    read_keys.clear()
    export_main(["app=pure", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'hf'}"])
    assert read_keys and all(k.startswith("model.lm.") for k in read_keys)
    live, got = sorted((tmp_path / "live").glob("*.safetensors")), sorted((tmp_path / "hf").glob("*.safetensors"))
    assert [p.name for p in live] == [p.name for p in got] and live
    for a, b in zip(live, got):
        ta, tb = load_file(a), load_file(b)
        assert set(ta) == set(tb)
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    config = {d: json.loads((tmp_path / d / "config.json").read_text()) for d in ("hf", "live")}
    assert config["hf"] == config["live"]


def test_export_refuses_writing_into_its_checkpoints(tmp_path):
    from varsr.config import tiny_train_config
    from varsr.train import Trainer

    cfg = tiny_train_config(str(tmp_path))
    cfg.schedule.max_steps = 1
    Trainer(cfg).fit()
    with pytest.raises(SystemExit) as e:
        export_main(["app=varsr", f"run_dir={tmp_path}", f"out={tmp_path / 'checkpoints/x.pth'}"])
    assert e.value.code == 2
