"""VARSR trainer in mode=c2i (class-to-image pretraining, spec varsr.md 7) on a tiny folder-per-class set:
the loss falls when overfitting, the per-class validation grid is written, the exported C2I weights
round-trip through init.c2i_official, config/data mismatches fail with one line, and resume is exact."""

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import bundled_photos, write_image
from varsr.config import SourceConfig, check_train_config, tiny_train_config
from varsr.model import model_config
from varsr.train import Trainer


@pytest.fixture(scope="module")
def class_root(tmp_path_factory):
    """3 class folders x 2 bundled photos, shorter side 112 (> 1.125 * 96 = 108, so crops move)."""
    root = tmp_path_factory.mktemp("c2i_classes")
    photos = bundled_photos()
    for i, (name, img) in enumerate(photos[:6]):
        h, w = img.shape[:2]
        s = 112 / min(h, w)
        small = np.asarray(Image.fromarray(img).resize((max(112, round(w * s)), max(112, round(h * s))), Image.LANCZOS))
        d = root / f"class_{'abc'[i // 2]}"
        d.mkdir(exist_ok=True)
        write_image(d / f"{name}.png", small)
    return root


def c2i_cfg(run_dir, class_root, steps=3, **data):
    cfg = tiny_train_config(str(run_dir))
    cfg.mode = "c2i"
    cfg.model = model_config("c2i_tiny", num_classes=4)  # 3 folders + the null class
    cfg.data.sources = [SourceConfig(root=str(class_root), kind="classes")]
    cfg.data.crop_mode, cfg.data.resize_shorter_to = "resize_random", 108  # spec 7: 1.125 x crop, random crop
    for k, v in data.items():
        setattr(cfg.data, k, v)
    cfg.schedule.max_steps = steps
    return cfg


def test_c2i_overfits(tmp_path, class_root):
    # 6 fixed centre crops in 2 batches of 3 (a few seconds idle): the CE must fall on memorised
    # data (it reaches ~0.3 x its start by step 12; the bound leaves room for noise)
    cfg = c2i_cfg(tmp_path, class_root, steps=12, crop_mode="resize_center", batch_size=3)
    cfg.optim.lr, cfg.schedule.flat_fraction = 3e-3, 1.0
    trainer = Trainer(cfg)
    assert trainer.num_real_classes == 3
    ce, drops = [], []
    out = trainer.fit(callback=lambda t, m: (ce.append(m["ce"]), drops.append(m["label_drop"])))
    assert out["step"] == 12 and all(np.isfinite(out["losses"])) and all(np.isfinite(ce))
    assert sum(ce[-3:]) / 3 < 0.5 * ce[0], ce
    assert min(out["losses"][-3:]) < out["losses"][0]
    assert 0 < sum(drops) and max(drops) < 1  # label dropout to the null class happened, not always


def test_c2i_class_grid_export_and_init(tmp_path, class_root):
    cfg = c2i_cfg(tmp_path / "run", class_root, steps=1)
    cfg.data.sources[0].holdout = 1  # spec 7 validation split: the last image of each class is held out
    cfg.validation.every_steps, cfg.validation.num_images, cfg.validation.samples_per_class = 1, 3, 2
    cfg.checkpoint.export_official = True
    trainer = Trainer(cfg)
    kept = sorted((it[1], Path(it[0]).name) for items in trainer.dataset.items for it in items)
    assert kept == [(0, "astronaut.png"), (1, "coffee.png"), (2, "hubble_deep_field.png")], kept
    out = trainer.fit()
    assert out["step"] == 1 and np.isfinite(out["losses"][0])
    grid = tmp_path / "run" / "val" / "step_00000001.png"
    w, h = Image.open(grid).size  # 3 class rows x 2 samples of 96 px, 4 px padding, no LR/header row
    assert (w, h) == (2 * 96 + 3 * 4, 3 * 96 + 4 * 4)

    # the export is the official C2I layout: init.c2i_official loads it strictly into a fresh run
    init_cfg = c2i_cfg(tmp_path / "from_export", class_root)
    init_cfg.init.c2i_official = str(tmp_path / "run" / "export" / "VARSR_C2I.pth")
    started = Trainer(init_cfg)
    assert started.step == 0
    for name, v in started.model.state_dict().items():
        assert torch.equal(v, trainer.model.state_dict()[name]), name
    trainer.cfg.validation.classes = [3]  # the null class is not a real class
    with pytest.raises(ValueError, match=r"out of range: the data has 3 classes"):
        trainer.validate()


def test_mismatches_fail_with_one_line(tmp_path, class_root):
    def setter(section, key, value):
        return lambda cfg: setattr(getattr(cfg, section) if section else cfg, key, value)

    cases = [
        (
            setter("", "model", model_config("c2i_tiny", num_classes=5)),
            "num_classes=5 .* has 3 class folders.* must be 4",
        ),
        (setter("", "model", model_config("c2i_tiny", num_classes=3)), "must be 4"),
        (setter("", "model", model_config("tiny")), "C2I-shaped transformer"),
        (setter("", "mode", "sr"), "lr_prefix=true"),
        (setter("data", "crop_size", 64), "crop_size=64 must equal the model's image size 96"),
        (setter("init", "varsr", "x.pth"), "init.c2i_official"),
        (setter("data", "sources", [SourceConfig(kind="bundled")]), "kind 'classes'"),
        (setter("data", "sources", [SourceConfig(root=str(tmp_path / "nope"), kind="classes")]), "not a folder"),
    ]
    for change, pattern in cases:
        cfg = c2i_cfg(tmp_path, class_root)
        change(cfg)
        with pytest.raises((ValueError, FileNotFoundError), match=pattern) as err:
            Trainer(cfg)
        assert "\n" not in str(err.value), str(err.value)
    sr = tiny_train_config(str(tmp_path))
    sr.init.c2i_official = "x.pth"
    with pytest.raises(ValueError, match="use init.c2i"):
        check_train_config(sr)


def _params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_c2i_resume_matches_uninterrupted(tmp_path, class_root):
    """Label dropout draws from the step-keyed generator, so a resumed run is bit-identical."""
    n, k = 3, 1
    ref = Trainer(c2i_cfg(tmp_path / "full", class_root, steps=n))
    ref_out = ref.fit()

    cfg = c2i_cfg(tmp_path / "resumed", class_root, steps=n)

    def preempt(trainer, metrics):
        if trainer.step == k:
            os.kill(os.getpid(), signal.SIGTERM)

    first = Trainer(cfg).fit(callback=preempt)
    assert first["preempted"] and first["step"] == k
    again = Trainer(cfg)
    assert again.step == k
    second = again.fit()
    assert second["step"] == n
    assert first["losses"] + second["losses"] == ref_out["losses"]
    ref_params = _params(ref)
    for name, v in _params(again).items():
        assert torch.equal(v, ref_params[name]), name
