"""Plain `python launch/train_pure.py nproc=2 run.device=cpu ...` runs the 2-rank gloo FSDP2 job torchrun
would: both ranks log, and the per-step losses (rank means, from metrics.jsonl) equal one process
with the same global batch (micro-batch 1 x 2 accumulation steps), the expectation of
tests/pure/test_parallel.py (rtol 1e-4 there: reduction order under Adam at lr 3e-3)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.config import REPO_ROOT
from tests.pure.test_train import VOCAB, make_cfg

STEPS = 4


@pytest.mark.slow
def test_plain_launcher_runs_two_ranks(tmp_path):
    from pure.train import main

    torch.set_num_threads(1)
    ref = main(make_cfg(tmp_path, **{"data.batch_size": 1, "optim.grad_accum": 2, "schedule.max_steps": STEPS}))
    run_dir = tmp_path / "spawned"
    args = [
        "model=tiny",
        f"model.vocab_size={VOCAB}",
        f"data.meta={tmp_path / 'data' / 'record.json'}",
        "data.batch_size=1",
        "data.num_workers=0",
        "data.pad_to_multiple=8",
        "parallel.backend=fsdp2",
        "parallel.param_dtype=fp32",
        "parallel.activation_checkpointing=false",
        "run.device=cpu",
        "run.wandb_mode=disabled",
        f"run.run_dir={run_dir}",
        "optim.lr=3e-3",
        "schedule.warmup_epochs=0",
        f"schedule.max_steps={STEPS}",
        "logging.every_steps=1",
        "checkpoint.every_steps=0",
        "dropout=0.0",
        "nproc=2",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    res = subprocess.run(
        [sys.executable, str(REPO_ROOT / "launch" / "train_pure.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    got = [r["loss"] for r in rows if "loss" in r]
    assert len(got) == len(ref["losses"]) == STEPS
    np.testing.assert_allclose(got, ref["losses"], rtol=1e-4, atol=1e-4)
    assert ref["losses"][-1] < ref["losses"][0]
    # The launcher ran micro-batch 1 without accumulation: one process would see half of each global
    # batch and log different losses, so the match above needs both ranks' halves (world size 2).
