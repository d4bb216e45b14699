"""A previous run's outputs are never silently reused or reported as this run's (issue 16, poor class).

Sampling resumes by default (``skip_existing=true``) and degradation on request; a run with other
settings over the same ``out_dir`` used to keep the old images and score them as its own. Now the
settings that shape the outputs are recorded in ``<out_dir>/run_settings.json`` and a change is a
one-line refusal naming it, unless ``overwrite=true`` redoes the outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.folder_cases import load_launcher, tree_hash, user_error


@pytest.fixture
def stub_varsr(monkeypatch):
    """The VARSR model is not what is tested: each output's grey level is the run's cfg / 10, so an
    output tells which settings made it."""
    import varsr.evaluate as ve

    monkeypatch.setattr(ve, "load_models", lambda cfg, device: (None, None))
    monkeypatch.setattr(ve, "sr_one", lambda m, v, img, cfg, *a, **k: torch.full((1, 3, 16, 16), cfg.cfg / 10))
    return load_launcher("sample_varsr").main


def _lr(d, n=2):
    d.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(d / f"x{i}.png")
    return d


def _grey(path) -> int:
    return int(np.asarray(Image.open(path))[0, 0, 0])


def test_sampling_with_other_settings_over_old_outputs_is_refused(tmp_path, capsys, stub_varsr):
    lr, out = _lr(tmp_path / "lr"), tmp_path / "out"
    base = [f"lr_dir={lr}", f"out_dir={out}", "model=tiny", "ckpt=null", "vae_ckpt=null", "metrics=[]"]
    stub_varsr([*base, "cfg=6"])
    before = tree_hash(out)
    assert _grey(out / "x0.png") == 153  # 0.6 * 255
    line = user_error(capsys, stub_varsr, [*base, "cfg=4"])
    assert "holds 2 output(s) made with other settings (cfg: 6.0 -> 4.0)" in line and "overwrite=true" in line
    assert tree_hash(out) == before
    # another checkpoint is another setting too
    line = user_error(capsys, stub_varsr, [*base, "cfg=6", f"ckpt={tmp_path / 'lr' / 'x0.png'}"])
    assert "ckpt: None ->" in line
    # the same settings resume (nothing redone), a new input is added with them
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(lr / "x2.png")
    assert stub_varsr([*base, "cfg=6"])["images"] == 3 and _grey(out / "x2.png") == 153
    # overwrite=true redoes every output with the new settings and records them
    stub_varsr([*base, "cfg=4", "overwrite=true"])
    assert {_grey(out / f"x{i}.png") for i in range(3)} == {102}
    assert json.loads((out / "run_settings.json").read_text())["cfg"] == 4.0


def test_degrade_resume_with_another_seed_or_preset_is_refused(tmp_path, capsys):
    hr = tmp_path / "hr"
    hr.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(hr / f"h{i}.png")
    out = tmp_path / "pairs"
    degrade = load_launcher("degrade").main
    base = [f"hr_dir={hr}", f"out_dir={out}", "device=cpu", "progress=false", "skip_existing=true"]
    assert degrade([*base, "seed=0"])["written"] == 2
    before = tree_hash(out)
    line = user_error(capsys, degrade, [*base, "seed=1"])
    assert "(seed: 0 -> 1)" in line
    line = user_error(capsys, degrade, [*base, "seed=0", "degradation=varsr_mild"])
    assert "degradation:" in line
    assert tree_hash(out) == before
    # batching never changes a pair: a resume with another batch size keeps them
    assert degrade([*base, "seed=0", "batch_size=1"])["existing"] == 2
