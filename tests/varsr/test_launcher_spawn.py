"""Plain `python launch/train_varsr.py nproc=2 run.device=cpu ...` runs the 2-rank gloo DDP job torchrun
would: both ranks log, and every step's loss (the rank mean) equals a single process with the same
global batch (the expectation of tests/varsr/test_parallel_ddp.py; deterministic bicubic LR, no
refiner noise, AdamW eps 1e-4 for the same reason as there)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from common.config import REPO_ROOT

COMMON = [
    "+exp=quick",
    "run.device=cpu",
    "run.wandb_mode=disabled",
    "parallel.backend=ddp",
    "data.lq_mode=bicubic",
    "loss.diff_weight=0",
    "optim.eps=1e-4",
    "schedule.max_steps=3",
    "validation.every_steps=0",
    "checkpoint.every_steps=0",
    "checkpoint.export_official=false",
    "logging.every_steps=1",
]


@pytest.mark.slow
def test_plain_launcher_runs_two_ranks(tmp_path):
    from varsr.config import load_train_config
    from varsr.train import Trainer

    torch.set_num_threads(1)
    ref = Trainer(load_train_config(COMMON + ["data.batch_size=4", f"run.run_dir={tmp_path / 'ref'}"])).fit()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    run_dir = tmp_path / "spawned"
    res = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "launch" / "train_varsr.py"),
            *COMMON,
            "nproc=2",
            "data.batch_size=2",
            f"run.run_dir={run_dir}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "r0 varsr.train] step 3/3" in out and "r1 varsr.train] step 3/3" in out  # both ranks trained
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    got = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(got) == len(ref["losses"]) == 3
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_plain_launcher_offload_runs_a_world_of_one(tmp_path):
    """`parallel.cpu_offload=true` on one device: the launcher starts a 1-rank torchrun job (FSDP2 needs a
    process group; in-process it would stop with a one-line error) and trains to the plain losses."""
    from varsr.config import load_train_config
    from varsr.train import Trainer

    torch.set_num_threads(1)
    base = COMMON + ["data.batch_size=2", "schedule.max_steps=2"]
    ref = Trainer(load_train_config(base + [f"run.run_dir={tmp_path / 'ref'}", "parallel.backend=none"])).fit()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    run_dir = tmp_path / "offload"
    res = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "launch" / "train_varsr.py"),
            *base,
            "nproc=1",
            "parallel.backend=fsdp2",
            "parallel.cpu_offload=true",
            "parallel.param_dtype=fp32",
            f"run.run_dir={run_dir}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    got = [r["train/loss"] for r in rows if "train/loss" in r]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6)
