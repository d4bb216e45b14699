"""Multi-node launchers and schedulers through their real engines, on localhost (issue 18, build item 3).

- two torchrun agents (``--nnodes=2 --nproc_per_node=1``, c10d rendezvous on 127.0.0.1) form one world
  of 2 and train the tiny VARSR for a step: the checkpoint holds both ranks' shards;
- two processes started with the variables ``srun`` sets, and two with ``mpirun``'s (Open MPI), form
  one world through ``common.dist.init_distributed`` and save a checkpoint with two rank shards;
- Hydra's submitit launcher (``submitit_local``: submitit's own job environment, signal handler and
  requeue) with a USR2 sent to the running job: the loop checkpoints, submitit requeues, the
  requeued job resumes from that checkpoint.

Never more than two training processes at once; free ports are asked from the OS.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from common.config import REPO_ROOT
from common.train_state import list_steps, read_meta

pytestmark = pytest.mark.slow
LAUNCHER = str(REPO_ROOT / "launch" / "train_varsr.py")
TINY = [
    "+exp=quick",
    "run.device=cpu",
    "run.wandb_mode=disabled",
    "checkpoint.export_official=false",
    "validation.every_steps=0",
    "logging.every_steps=1",
]


def free_port(lo: int = 0, hi: int = 65535) -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if lo <= port <= hi:
            return port
    raise RuntimeError("no free port in range")


def clean_env(**extra) -> dict:
    """This environment without any launcher's variables, one thread per process, plus ``extra``."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop + ("SLURM_", "OMPI_", "PMI_", "SUBMITIT"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), **{k: str(v) for k, v in extra.items()})
    return env


def run_pair(cmds_envs, timeout=300) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd, env in cmds_envs
    ]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outs)]


def assert_two_rank_checkpoint(run_dir, step: int) -> None:
    (got, path), *_ = [(s, p) for s, p in list_steps(run_dir) if (p / "COMPLETE").is_file()][-1:]
    assert got == step and read_meta(path)["world_size"] == 2
    assert sorted(f.name for f in (path / "state").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert sorted(f.name for f in (path / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]


def test_two_torchrun_agents_form_one_world(tmp_path):
    port, run_dir = free_port(), tmp_path / "run"
    agent = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        "--rdzv_id=arsr_test",
        LAUNCHER,
        *TINY,
        "parallel.backend=ddp",
        "schedule.max_steps=1",
        "checkpoint.every_steps=1",
        f"run.run_dir={run_dir}",
    ]
    res = run_pair([(agent, clean_env()), (agent, clean_env())])
    for r in res:
        assert r.returncode == 0, r.stdout[-3000:]
    out = "".join(r.stdout for r in res)
    assert "global batch 4 = micro-batch 2 x accumulation 1 x 2 rank(s)" in out  # rank 0's first line
    assert "step 1/1" in out
    assert_two_rank_checkpoint(run_dir, 1)


WORLD_PROBE = """
import json, os, torch
from common.dist import all_gather_object, destroy_distributed, init_distributed
from common.train_state import TrainState
info = init_distributed("cpu")
addr = [os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]]
got = all_gather_object([info.rank, info.world_size, info.local_rank, *addr])
torch.manual_seed(0)
TrainState(os.environ["PROBE_RUN_DIR"], torch.nn.Linear(4, 2)).save(1)
print("PROBE " + json.dumps(got))
destroy_distributed()
"""


def probe_pair(tmp_path, env_of_rank) -> list:
    run_dir = tmp_path / "run"
    res = run_pair([([sys.executable, "-c", WORLD_PROBE], env_of_rank(r, run_dir)) for r in (0, 1)], timeout=180)
    outs = []
    for r in res:
        assert r.returncode == 0, r.stdout[-3000:]
        outs.append(json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("PROBE "))[6:]))
    assert outs[0] == outs[1]  # both ranks saw the same world
    assert_two_rank_checkpoint(run_dir, 1)
    return outs[0]


def test_srun_variables_form_one_world(tmp_path):
    port = free_port(20000, 59999)  # the port rule: 20000 + job id mod 40000
    job = port - 20000

    def env(rank, run_dir):
        return clean_env(
            SLURM_JOB_ID=job,
            SLURM_NTASKS=2,
            SLURM_PROCID=rank,
            SLURM_LOCALID=rank,
            SLURM_NODEID=0,
            SLURM_JOB_NODELIST="localhost",
            SLURM_TASKS_PER_NODE="2",
            PROBE_RUN_DIR=run_dir,
        )

    world = probe_pair(tmp_path, env)
    assert world == [[0, 2, 0, "localhost", str(port)], [1, 2, 1, "localhost", str(port)]]


def test_mpirun_variables_form_one_world(tmp_path):
    port = free_port()

    def env(rank, run_dir):
        return clean_env(
            OMPI_COMM_WORLD_RANK=rank,
            OMPI_COMM_WORLD_SIZE=2,
            OMPI_COMM_WORLD_LOCAL_RANK=rank,
            OMPI_COMM_WORLD_LOCAL_SIZE=2,
            MASTER_PORT=port,  # as with `mpirun -x MASTER_PORT=...`; the address is derived (one node)
            PROBE_RUN_DIR=run_dir,
        )

    world = probe_pair(tmp_path, env)
    assert world == [[0, 2, 0, "127.0.0.1", str(port)], [1, 2, 1, "127.0.0.1", str(port)]]


def _wait_for(cond, timeout, what, proc):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"launcher exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_submitit_usr2_checkpoints_before_requeue(tmp_path):
    """Hydra's submitit launcher (local executor: submitit's job environment, its USR2 handler and its
    requeue, exit code 144 -> the controller starts the job again) on a run that is signalled mid-way."""
    import psutil

    run_dir, sweep = tmp_path / "run", tmp_path / "sweep"
    cmd = [
        sys.executable,
        LAUNCHER,
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=60",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        "schedule.max_steps=400",
        "checkpoint.every_steps=0",
        f"run.run_dir={run_dir}",
    ]
    proc = subprocess.Popen(
        cmd,
        env=clean_env(),
        cwd=REPO_ROOT,
        start_new_session=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and metrics.read_text().count("train/loss") >= 2, 240, "training", proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        tasks = [c for c in children if "submitit.core._submit" in " ".join(c.cmdline())]
        assert len(tasks) == 1
        os.kill(tasks[0].pid, signal.SIGUSR2)  # what SLURM sends with --signal=USR2@<signal_delay_s>

        def resumed():
            logs = list(sweep.rglob("*_log.out"))
            return any("resumed from" in p.read_text(errors="replace") for p in logs)

        _wait_for(resumed, 240, "the requeued job to resume", proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the session started above: launcher, controller, task
        proc.wait()
    log = "".join(p.read_text(errors="replace") for p in sorted(sweep.rglob("*_log.*")))
    saved = [ln for ln in log.splitlines() if "pre-emption signal: checkpointed step" in ln]
    assert len(saved) == 1, log[-3000:]
    step = int(saved[0].rsplit("step ", 1)[1].split(",")[0])
    assert 2 <= step < 400
    # order in submitit's own log: our checkpoint, then submitit's requeue, then the resume of that step
    i_saved = log.index("pre-emption signal: checkpointed step")
    i_requeue = log.index("Requeued job")
    i_resumed = log.index(f"step_{step:08d} at step {step}")
    assert i_saved < i_requeue and "resumed from" in log[i_resumed - 200 : i_resumed]
    assert (run_dir / "checkpoints" / f"step_{step:08d}" / "COMPLETE").is_file()
