"""VARSR trainer behaviour on the tiny CPU config: overfitting, exact resume, crash-safe checkpoints."""

import os
import signal
from pathlib import Path

import pytest
import torch

from common.train_state import list_steps, read_meta, step_dir
from varsr.config import SourceConfig, tiny_train_config
from varsr.train import Trainer


def _one_image_cfg(run_dir, steps):
    cfg = tiny_train_config(str(run_dir))
    cfg.data.sources = [SourceConfig(kind="bundled", limit=1, resize_shorter_to=120)]  # one batch, repeated
    cfg.schedule.max_steps = steps
    return cfg


@pytest.mark.slow  # 30 tiny steps: ~15 s idle, a minute on a loaded 2-core machine
def test_overfit_one_batch(tmp_path):
    cfg = _one_image_cfg(tmp_path, 30)
    cfg.optim.lr = 3e-3
    cfg.schedule.flat_fraction = 1.0  # constant lr: the point is the optimisation, not the schedule
    trainer = Trainer(cfg)
    ce = []
    out = trainer.fit(callback=lambda t, m: ce.append(m["ce"]))
    assert out["step"] == 30
    assert ce[-1] <= 0.2 * ce[0], ce  # CE on the memorised batch falls by >= 80 %
    assert min(out["losses"][-5:]) < 0.5 * out["losses"][0]  # total (CE + 2 x refiner) falls too


def _params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow  # three trainer builds + 8 steps: ~20-40 s on a loaded 2-core machine
def test_kill_and_resume_matches_uninterrupted(tmp_path):
    n, k = 4, 2
    cfg = tiny_train_config(str(tmp_path / "full"))
    cfg.schedule.max_steps = n
    ref = Trainer(cfg)
    ref_out = ref.fit()
    ref_params = _params(ref)

    cfg_b = tiny_train_config(str(tmp_path / "resumed"))
    cfg_b.schedule.max_steps = n

    def preempt(trainer, metrics):  # SIGTERM as SLURM/torchrun would send it, mid-run
        if trainer.step == k:
            os.kill(os.getpid(), signal.SIGTERM)

    first = Trainer(cfg_b).fit(callback=preempt)
    assert first["preempted"] and first["step"] == k
    assert [s for s, _ in list_steps(cfg_b.run.run_dir)] == [k]
    second_trainer = Trainer(cfg_b)  # auto-resume from run_dir
    assert second_trainer.step == k
    second = second_trainer.fit()
    assert second["step"] == n
    assert first["losses"] + second["losses"] == ref_out["losses"]  # bit-identical loss sequence
    for name, v in _params(second_trainer).items():
        assert torch.equal(v, ref_params[name]), name
    meta = read_meta(step_dir(cfg_b.run.run_dir, n))
    assert meta["step"] == n and meta["extra"]["data"]["global_batches_consumed"] == n
    assert meta["format"] == "dcp" and meta["world_size"] == 1


def test_crash_during_checkpoint_keeps_previous(tmp_path, monkeypatch):
    cfg = tiny_train_config(str(tmp_path))
    cfg.schedule.max_steps = 1
    trainer = Trainer(cfg)
    trainer.fit()  # writes step_00000001/
    root = Path(tmp_path, "checkpoints")
    assert [p.name for p in root.iterdir()] == ["step_00000001"]
    good_files = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def dying_save(obj, f, *a, **kw):  # write part of a shard, then die mid-write
        f.write(b"\x80\x02partial-pickle")
        raise KeyboardInterrupt("killed while writing")

    trainer.step = 2
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.undo()
    # the half-written save is a temp dir, never a checkpoint; the previous one is untouched
    assert sorted(p.name for p in root.iterdir()) == [".tmp_step_00000002", "step_00000001"]
    now = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert {k: v for k, v in now.items() if k.parts[0] == "step_00000001"} == good_files

    resumed = Trainer(cfg)  # the next start cleans the orphan and resumes step 1
    assert resumed.step == 1 and [p.name for p in root.iterdir()] == ["step_00000001"]
    for name, v in resumed.model.state_dict().items():
        assert torch.equal(v, trainer.model.state_dict()[name]), name


def test_planted_pickle_as_newest_checkpoint_never_runs(tmp_path, caplog):
    """A `.metadata` that runs code when unpickled, planted as the newest checkpoint: the trainer
    falls back to the previous good one with a warning naming the file, and the payload never runs."""
    from tests.common.test_train_state import plant_pickle

    cfg = tiny_train_config(str(tmp_path))
    cfg.schedule.max_steps = 1
    trainer = Trainer(cfg)
    trainer.fit()
    good = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    bad = step_dir(tmp_path, 5)
    for p in step_dir(tmp_path, 1).rglob("*"):  # a complete-looking copy ...
        if p.is_file():
            dst = bad / p.relative_to(step_dir(tmp_path, 1))
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(p.read_bytes())
    marker = tmp_path / "PWNED"
    plant_pickle(bad / "state" / ".metadata", marker)  # ... whose index is a payload
    with caplog.at_level("WARNING"):
        resumed = Trainer(cfg)
    assert not marker.exists() and resumed.step == 1
    assert any("step_00000005" in r.getMessage() and ".metadata" in r.getMessage() for r in caplog.records)
    for name, v in resumed.model.state_dict().items():
        assert torch.equal(v, good[name]), name


def test_c2i_mode_fails_with_one_line(tmp_path):
    cfg = tiny_train_config(str(tmp_path))
    cfg.mode = "c2i"
    with pytest.raises(ValueError, match="C2I-shaped transformer"):
        Trainer(cfg)


def test_validation_grid_and_official_export(tmp_path):
    from varsr.model import build_models
    from varsr.official import load_official_varsr

    cfg = tiny_train_config(str(tmp_path))
    cfg.schedule.max_steps = 1
    cfg.validation.every_steps = 1
    cfg.checkpoint.export_official = True
    trainer = Trainer(cfg)
    trainer.fit()
    assert (tmp_path / "val" / "step_00000001.png").is_file()
    rows = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "val/psnr" in line]
    assert rows and float(rows[0].split('"val/psnr": ')[1].split(",")[0].rstrip("}")) > 0
    model, _ = build_models(cfg.model)
    load_official_varsr(tmp_path / "export" / "VARSR.pth", model)  # strict official layout
    for name, v in model.state_dict().items():
        assert torch.equal(v, trainer.model.state_dict()[name]), name
