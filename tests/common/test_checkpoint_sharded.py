"""Sharded checkpoints on 2 gloo ranks (bench/checkpoint.py --check): one shard file per rank, no full
copy on disk, per-rank peak memory of save and load below the full model + optimizer size, and the
checkpoint resumes in one process with every weight and Adam moment equal (FSDP2 2 -> 1, DDP 2 -> 1).

Model: 12 x Linear(1024, 1024) + AdamW = 151 MB of state, large enough that gathering it (the old
consolidated path) would show in the resident set; each FSDP2 rank owns half of it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [
    "COMPLETE",
    "meta.json",
    "rng/rank_00000.pt",
    "rng/rank_00001.pt",
    "state/.metadata",
    "state/__0_0.distcp",
    "state/__1_0.distcp",
]


def _bench(tmp_path, strategy, hidden, layers, *extra) -> dict:
    out = tmp_path / "res.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable,
        str(ROOT / "bench/checkpoint.py"),
        "--strategy",
        strategy,
        "--hidden",
        str(hidden),
        "--layers",
        str(layers),
        "--check",
        "--out",
        str(tmp_path / "work"),
        "--json",
        str(out),
        *extra,
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_fsdp2_sharded_save_load_memory_and_resume_on_one_process(tmp_path):
    res = _bench(tmp_path, "fsdp2", 1024, 12)
    full = res["model_optim_bytes"]
    assert full == 3 * 4 * 12 * (1024 * 1024 + 1024)  # params + exp_avg + exp_avg_sq, fp32
    assert res["files"] == FILES
    # each rank wrote its half; nothing holds a full copy (the .metadata index is small)
    assert all(0.4 * full < b < 0.6 * full for b in res["shard_bytes"].values()), res["shard_bytes"]
    assert res["checkpoint_bytes"] < 1.05 * full
    for r in res["ranks"]:
        assert r["sharded_save_peak"] < 0.75 * full, r
        assert r["sharded_load_peak"] < 0.75 * full, r
    assert res["one_process_resume_ok"]


@pytest.mark.slow
def test_ddp_async_checkpoint_dedups_replicas_and_resumes_on_one_process(tmp_path):
    """Also the async path: DCP's collectives run on a background thread over a separate gloo group."""
    res = _bench(tmp_path, "ddp", 256, 4, "--async-save")
    assert res["files"] == FILES
    # replicated tensors are written once across the two shard files, not once per rank
    assert res["checkpoint_bytes"] < 1.1 * res["model_optim_bytes"]
    assert res["one_process_resume_ok"]
