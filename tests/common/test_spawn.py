"""Self-spawning launchers (common.spawn, `run_app(..., spawn_script=...)`).

Fast: which launcher started us, how many ranks `nproc` means, when a spawn happens. Slow: a
plain `python script.py nproc=2 run.device=cpu` really runs a 2-rank torchrun job (every rank
sees RANK/WORLD_SIZE), under Hydra multirun too, a failing rank's exit code comes back, and a
bad `nproc` is a one-line error. The training launchers themselves: tests/varsr and tests/pure
`test_launcher_spawn.py`.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from common import spawn
from common.config import REPO_ROOT


def test_launched_externally():
    assert spawn.launched_externally({}) is None
    assert spawn.launched_externally({"SLURM_NTASKS": "1"}) is None  # one task: we spawn inside it
    assert spawn.launched_externally({"RANK": "0", "WORLD_SIZE": "2"}) == "torchrun/deepspeed"
    assert spawn.launched_externally({"TORCHELASTIC_RUN_ID": "x"}) == "torchrun"
    assert spawn.launched_externally({"SLURM_NTASKS": "8"}) == "slurm"
    assert spawn.launched_externally({"OMPI_COMM_WORLD_SIZE": "4"}) == "mpirun"


def test_resolve_nproc(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert spawn.resolve_nproc("auto", "auto") == 1 and spawn.resolve_nproc("3", "cpu") == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert spawn.resolve_nproc("auto", "auto") == 8  # every visible GPU
    assert spawn.resolve_nproc("auto", "cpu") == 1  # run.device=cpu: one CPU rank unless asked
    assert spawn.resolve_nproc(2, "cuda") == 2
    with pytest.raises(ValueError, match="only 8 CUDA devices"):
        spawn.resolve_nproc(9, "auto")
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="nproc must be auto or a positive integer"):
            spawn.resolve_nproc(bad)


def test_maybe_spawn_decisions(monkeypatch):
    from types import SimpleNamespace as NS

    calls = []
    monkeypatch.setattr(spawn, "spawn", lambda script, args, n: calls.append((args, n)) or 0)
    for k in ("RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(k, raising=False)

    def cfg(nproc, offload=False, backend="fsdp2"):
        return NS(nproc=nproc, run=NS(device="cpu"), parallel=NS(cpu_offload=offload, backend=backend))

    assert spawn.maybe_spawn(cfg("1"), "x.py", ["a=1"]) is None  # one rank, nothing to shard: in process
    assert spawn.maybe_spawn(cfg("2"), "x.py", ["a=1"]) == 0
    assert spawn.maybe_spawn(cfg("1", offload=True), "x.py", []) == 0  # world of one for FSDP2/ZeRO offload
    # DeepSpeed without torchrun's variables falls into MPI discovery ("No module named mpi4py"):
    # one rank of ZeRO-3 without offload is a torchrun world of one too (issue 18 row 7)
    assert spawn.maybe_spawn(cfg("1", backend="deepspeed"), "x.py", ["b=2"]) == 0
    assert calls == [(["a=1"], 2), ([], 1), (["b=2"], 1)]
    monkeypatch.setenv("RANK", "0")
    assert spawn.maybe_spawn(cfg("2"), "x.py", []) is None  # already a rank: never spawn again
    assert len(calls) == 3


SCRIPT = textwrap.dedent("""
    import json, os, sys
    from common.config import run_app
    from varsr.config import VARSRTrainConfig, register_configs

    def job(cfg):
        rank = int(os.environ.get("RANK", -1))
        with open(os.environ["SPAWN_LOG"], "a") as f:
            f.write(json.dumps({"rank": rank, "world": int(os.environ.get("WORLD_SIZE", -1)),
                                "lr": cfg.optim.lr, "local_rank": int(os.environ.get("LOCAL_RANK", -1))}) + "\\n")
        if cfg.optim.lr == 0.5 and rank == 1:
            raise SystemExit(3)
        return {}

    register_configs()
    run_app("varsr", "train", VARSRTrainConfig, job, spawn_script=__file__)
""")


def _run(tmp_path, *args):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    log = tmp_path / "log.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SPAWN_LOG": str(log), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    flags = [a for a in args if a == "-m"]  # Hydra's parser wants flags before the overrides
    args = [a for a in args if a != "-m"]
    res = subprocess.run(
        [sys.executable, str(script), *flags, "+exp=quick", "run.device=cpu", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return res, rows


@pytest.mark.slow
def test_plain_call_starts_ranks_and_propagates_exit_codes(tmp_path):
    res, rows = _run(tmp_path, "nproc=2", "optim.lr=0.002")
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted((r["rank"], r["world"], r["local_rank"]) for r in rows) == [(0, 2, 0), (1, 2, 1)]
    assert {r["lr"] for r in rows} == {0.002}  # children composed the same overrides

    res, rows = _run(tmp_path, "nproc=1")  # one rank: runs in this process, no torchrun
    assert res.returncode == 0 and [(r["rank"], r["world"]) for r in rows] == [(-1, -1)]

    res, rows = _run(tmp_path, "nproc=2", "optim.lr=0.5")  # rank 1 exits with 3
    assert res.returncode == 3
    assert "error: rank 1 of 2 exited with code 3" in res.stderr

    res, rows = _run(tmp_path, "nproc=two")
    assert res.returncode == 2 and not rows
    assert res.stderr.strip().splitlines()[-1].startswith("error: nproc must be auto or a positive integer")


@pytest.mark.slow
def test_multirun_spawns_each_job(tmp_path):
    res, rows = _run(tmp_path, "-m", "nproc=2", "optim.lr=0.001,0.003", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.returncode == 0, res.stderr[-2000:]
    got = sorted((r["lr"], r["rank"], r["world"]) for r in rows)
    assert got == [(0.001, 0, 2), (0.001, 1, 2), (0.003, 0, 2), (0.003, 1, 2)]
