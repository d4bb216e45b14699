"""Loss golden: a 20-step tiny VARSR run with a fixed seed must reproduce the stored losses.

An accidental change to the model, loss, data walk or optimizer shows up as a diff here; an
intended one regenerates the golden in the same commit:

    ARSR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/varsr/test_train_golden.py

The tolerance (rtol 1e-3) absorbs CPU-kernel rounding differences between machines, not math changes.
"""

import json
import os
from pathlib import Path

import pytest

from varsr.config import tiny_train_config
from varsr.train import Trainer

GOLDEN = Path(__file__).with_name("golden_losses.json")
STEPS = 20


def run_golden(run_dir) -> list[float]:
    cfg = tiny_train_config(str(run_dir))  # seed 0, bundled photos, bicubic LR, lr 1e-3, fp32
    cfg.schedule.max_steps = STEPS
    return Trainer(cfg).fit()["losses"]


@pytest.mark.slow  # 20 tiny steps: ~10 s idle, up to a minute on a loaded 2-core machine
def test_losses_match_golden(tmp_path):
    losses = run_golden(tmp_path)
    assert len(losses) == STEPS
    if os.environ.get("ARSR_UPDATE_GOLDEN"):
        GOLDEN.write_text(
            json.dumps({"steps": STEPS, "config": "varsr.config.tiny_train_config", "losses": losses}, indent=1) + "\n"
        )
    golden = json.loads(GOLDEN.read_text())["losses"]
    assert losses == pytest.approx(golden, rel=1e-3), "loss trajectory changed: see module docstring"
