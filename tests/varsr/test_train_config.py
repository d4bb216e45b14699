"""Every VARSR training config composes against the schema; defaults are the official recipe."""

from pathlib import Path

import pytest

from varsr.config import load_train_config

EXPS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs/varsr/exp").glob("*.yaml"))


def test_default_is_official_recipe():
    c = load_train_config([])
    assert (c.model.depth, c.model.patch_nums) == (24, (1, 2, 3, 4, 6, 9, 13, 18, 24, 32))
    assert c.degradation.name == "varsr_mild" and c.degradation.resize_back and not c.degradation.usm_gt
    assert (c.optim.lr, list(c.optim.betas), c.optim.weight_decay, c.optim.grad_clip) == (5e-5, [0.9, 0.95], 0.05, 2.0)
    s = c.schedule
    assert (s.epochs, s.warmup_epochs, s.warmup_start, s.flat_fraction, s.end_ratio) == (5, 0.1, 0.005, 0.3, 0.01)
    assert (c.precision.dtype, c.precision.init_scale, c.precision.growth_interval, c.precision.max_scale) == (
        "fp16",
        2048,
        1000,
        32768,
    )
    assert c.parallel.backend == "ddp" and c.data.batch_size == 4 and c.loss.diff_weight == 2.0
    assert (c.data.crop_size, c.data.crop_mode, c.data.resize_shorter_to) == (512, "resize_center", 640)
    assert "diffloss" in c.optim.no_decay_keys and not c.ema.enabled


@pytest.mark.parametrize("exp", EXPS)
def test_every_exp_composes(exp):
    c = load_train_config([f"+exp={exp}"])
    assert c.data.sources


def test_quick_is_tiny_cpu_and_typos_fail():
    q = load_train_config(["+exp=quick"])
    assert q.model.depth == 2 and q.run.device == "cpu" and q.data.crop_size == q.model.image_size
    with pytest.raises(Exception, match="learning_rate"):
        load_train_config(["optim.learning_rate=1"])
