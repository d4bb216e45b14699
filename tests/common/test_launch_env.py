"""Row 8 of issue 18 (environment part): srun and mpirun ranks get torch.distributed's variables, and a
job whose variables do not describe a world stops loudly (one line, exit 2) instead of every task
training alone on ``cuda:0`` in the same run directory. Expected values are written out by hand from
SLURM's / Open MPI's / MPICH's documented variables. The real multi-process worlds:
``tests/common/test_multinode.py``."""

import os
import subprocess
import sys

import pytest

from common import dist as cd
from common.config import REPO_ROOT
from common.launch_env import expand_hostlist, export_torch_env, local_device_index, torch_env
from common.paths import UserError

SRUN = {  # task 5 of `srun -N2 --ntasks-per-node=4` on gpu007-gpu008, job 123456
    "SLURM_JOB_ID": "123456",
    "SLURM_NTASKS": "8",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu[007-008]",
    "SLURM_TASKS_PER_NODE": "4(x2)",
}


def test_hostlist():
    assert expand_hostlist("gpu[007-009,012],login1") == ["gpu007", "gpu008", "gpu009", "gpu012", "login1"]
    assert expand_hostlist("a[1-2]-b[01-02]") == ["a1-b01", "a1-b02", "a2-b01", "a2-b02"]
    assert expand_hostlist("node5") == ["node5"]
    with pytest.raises(ValueError):
        expand_hostlist("gpu[1-2")


def test_srun_task():
    name, env = torch_env(SRUN)
    assert name == "SLURM"
    assert env == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "NODE_RANK": "1",
        "GROUP_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu007",
        "MASTER_PORT": "23456",  # 20000 + 123456 % 40000: the same on every task of the job
    }
    # a step narrower than the allocation, and variables the user set are kept
    step = dict(SRUN, SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="gpu008", MASTER_PORT="4000")
    _, env = torch_env(step)
    assert env["WORLD_SIZE"] == "2" and env["MASTER_ADDR"] == "gpu008" and "MASTER_PORT" not in env


def test_torchrun_and_single_task_untouched():
    assert torch_env(dict(SRUN, RANK="3", WORLD_SIZE="16")) == (None, {})  # srun torchrun ...: its workers
    assert torch_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == (None, {})  # one task: self-spawn inside
    assert torch_env({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}) == (None, {})


def test_mpirun_ranks():
    ompi = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    }
    name, env = torch_env(ompi)
    assert name == "Open MPI"
    assert env == {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",  # one node
        "MASTER_PORT": "29500",
    }
    mpich = {"PMI_RANK": "6", "PMI_SIZE": "16", "MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "8"}
    with pytest.raises(UserError, match="export MASTER_ADDR"):  # two nodes, nobody said where rank 0 is
        torch_env(mpich)
    _, env = torch_env(dict(mpich, MASTER_ADDR="host0"))
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("6", "16", "2", "8")
    _, env = torch_env(dict(mpich, SLURM_JOB_NODELIST="cn[10-11]", SLURM_JOB_ID="7"))  # mpirun inside sbatch
    assert env["MASTER_ADDR"] == "cn10" and env["MASTER_PORT"] == "20007"
    name, env = torch_env(dict(SRUN, PMI_RANK="5", PMI_SIZE="8"))  # srun --mpi=pmi2: no MPI_LOCALRANKID
    assert name == "SLURM" and env["LOCAL_RANK"] == "1"


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"SLURM_PROCID": None}, "without SLURM_PROCID"),
        ({"SLURM_LOCALID": "x"}, "SLURM_LOCALID='x' is not an integer"),
        ({"SLURM_JOB_NODELIST": None}, "MASTER_ADDR"),
        ({"SLURM_JOB_NODELIST": "gpu[1-"}, "cannot read SLURM_JOB_NODELIST"),
        ({"SLURM_PROCID": "8"}, "outside a world of 8"),
    ],
)
def test_broken_srun_variables_are_errors(bad, match):
    env = {k: v for k, v in {**SRUN, **bad}.items() if v is not None}
    with pytest.raises(UserError, match=match):
        export_torch_env(env)


def test_local_device_index():
    assert local_device_index(3, 8) == 3
    assert local_device_index(3, 1) == 0  # srun --gpus-per-task=1: each task sees its own GPU as cuda:0
    with pytest.raises(UserError, match="only 2 CUDA devices"):
        local_device_index(3, 2)


def test_init_distributed_refuses_instead_of_training_alone(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in SRUN.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLURM_PROCID")
    with pytest.raises(UserError, match="SLURM_PROCID"):
        cd.init_distributed("cpu")


def test_launcher_exit_2_on_broken_slurm_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update({k: v for k, v in SRUN.items() if k != "SLURM_JOB_NODELIST"})
    res = subprocess.run(
        [sys.executable, str(REPO_ROOT / "launch" / "train_varsr.py"), "+exp=quick", f"run.run_dir={tmp_path}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: SLURM job without SLURM_JOB_NODELIST") and "Traceback" not in res.stderr
    assert not (tmp_path / "checkpoints").exists()
