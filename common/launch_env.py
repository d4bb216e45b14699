"""torch.distributed's ``env://`` variables from the schedulers that start one process per rank.

torchrun and the deepspeed launcher export ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
``MASTER_PORT`` themselves. ``srun`` (plain, or under Hydra's submitit launcher) and ``mpirun``
start the ranks directly and export their own variables instead; :func:`export_torch_env` maps
them, so ``init_distributed`` forms one world under every launcher. A job whose variables do not
describe a world raises :class:`~common.paths.UserError` (one line, exit 2): silently training
alone on ``cuda:0`` in a shared run directory, once per task, is the failure this prevents.

Rules (a variable already set is never replaced):

- SLURM (``SLURM_NTASKS`` > 1, one task per GPU): ``RANK = SLURM_PROCID``, ``WORLD_SIZE =
  SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``), ``LOCAL_RANK = SLURM_LOCALID``, ``NODE_RANK =
  SLURM_NODEID``, ``LOCAL_WORLD_SIZE`` from ``SLURM_STEP_TASKS_PER_NODE`` (``8(x4)`` form),
  ``MASTER_ADDR`` = the first host of ``SLURM_STEP_NODELIST`` / ``SLURM_JOB_NODELIST`` /
  ``SLURM_NODELIST`` (compressed ``node[01-04]`` form), ``MASTER_PORT`` = ``20000 + job id mod
  40000``: every task of a job computes the same port, jobs sharing a node get different ones.
- Open MPI (``OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE``) and MPICH / Intel MPI
  (``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS``), size > 1. MPI exports no
  host list: on one node (local size = size) ``MASTER_ADDR`` is ``127.0.0.1``; across nodes it
  is the first host of the SLURM allocation when inside one, else you export it
  (``mpirun -x MASTER_ADDR=host0``). ``MASTER_PORT`` = the SLURM rule inside an allocation, else
  29500 (torchrun's default).
"""

from __future__ import annotations

import os
import re

from common.paths import UserError

DEFAULT_PORT = 29500
_MPI = (  # (name, rank, size, local rank, local size)
    (
        "Open MPI",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    ("MPICH/Intel MPI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)


def expand_hostlist(spec: str) -> list[str]:
    """SLURM's compressed host list (``gpu[001-003,007],login-a[1-2]b``) as host names, in order."""
    items, depth, cur = [], 0, ""
    for ch in spec.strip():
        depth += ch == "["
        depth -= ch == "]"
        if depth < 0:
            raise ValueError(f"unbalanced brackets in host list {spec!r}")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"unbalanced brackets in host list {spec!r}")
    items.append(cur)
    hosts: list[str] = []
    for item in filter(None, (i.strip() for i in items)):
        hosts.extend(_expand_one(item))
    return hosts


def _expand_one(item: str) -> list[str]:
    m = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", item)
    if m is None:
        return [item]
    head, ranges, tail = m.groups()
    out = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad range {part!r} in host list entry {item!r}")
        width = len(lo)  # node[001-010]: zero padding is part of the name
        for n in range(int(lo), int(hi or lo) + 1):
            out.extend(head + str(n).zfill(width) + rest for rest in _expand_one(tail))
    return out


def _tasks_per_node(spec: str) -> list[int]:
    """``SLURM_*TASKS_PER_NODE`` (``8(x2),4``) as one count per node."""
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            raise ValueError(f"bad tasks-per-node value {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def _int(env, name: str, who: str) -> int:
    value = env.get(name)
    if value is None:
        raise UserError(f"{who} job without {name}: cannot place this process in the world")
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{who} job: {name}={value!r} is not an integer") from None


def _slurm_port(env) -> str | None:
    job = env.get("SLURM_JOB_ID")
    return str(20000 + int(job) % 40000) if job and job.isdigit() else None


def _slurm_first_host(env) -> str | None:
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if env.get(name):
            try:
                return expand_hostlist(env[name])[0]
            except (ValueError, IndexError) as e:
                raise UserError(f"SLURM job: cannot read {name}={env[name]!r} ({e})") from None
    return None


def _from_slurm(env) -> dict[str, str]:
    world = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS", "SLURM")
    out = {
        "RANK": str(_int(env, "SLURM_PROCID", "SLURM")),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(_int(env, "SLURM_LOCALID", "SLURM")),
    }
    if "SLURM_NODEID" in env:
        out["NODE_RANK"] = out["GROUP_RANK"] = str(_int(env, "SLURM_NODEID", "SLURM"))
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        if per_node:
            counts = _tasks_per_node(per_node)
            if int(out["NODE_RANK"]) < len(counts):
                out["LOCAL_WORLD_SIZE"] = str(counts[int(out["NODE_RANK"])])
    host = _slurm_first_host(env)
    if host is None:
        raise UserError("SLURM job without SLURM_JOB_NODELIST/SLURM_NODELIST: cannot find rank 0's host (MASTER_ADDR)")
    out["MASTER_ADDR"] = host
    out["MASTER_PORT"] = _slurm_port(env) or str(DEFAULT_PORT)
    return out


def _from_mpi(env, name, rank, size, local_rank, local_size) -> dict[str, str]:
    world = _int(env, size, name)
    out = {"RANK": str(_int(env, rank, name)), "WORLD_SIZE": str(world), "LOCAL_RANK": str(_int(env, local_rank, name))}
    if local_size in env:
        out["LOCAL_WORLD_SIZE"] = str(_int(env, local_size, name))
    if "MASTER_ADDR" not in env:
        if out.get("LOCAL_WORLD_SIZE") == str(world):
            out["MASTER_ADDR"] = "127.0.0.1"  # every rank on this node
        else:
            host = _slurm_first_host(env)
            if host is None:
                raise UserError(
                    f"{name} job over several nodes: export MASTER_ADDR=<host of rank 0> "
                    "(e.g. mpirun -x MASTER_ADDR=$(hostname) -x MASTER_PORT=29500 ...)"
                )
            out["MASTER_ADDR"] = host
    out["MASTER_PORT"] = _slurm_port(env) or str(DEFAULT_PORT)
    return out


def torch_env(env=None) -> tuple[str | None, dict[str, str]]:
    """(the scheduler that started this process, the variables to add); ``(None, {})`` when torchrun
    or the deepspeed launcher already set them, or when nothing describes a world of several ranks."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return None, {}
    for name, rank, size, local_rank, local_size in _MPI:
        if size in env and _int(env, size, name) > 1:
            if local_rank not in env and "SLURM_PROCID" in env:
                continue  # srun --mpi=pmi2 sets PMI_RANK/PMI_SIZE as well: SLURM's variables describe the task
            out = _from_mpi(env, name, rank, size, local_rank, local_size)
            return name, {k: v for k, v in out.items() if k not in env}
    if "SLURM_NTASKS" in env and _int(env, "SLURM_NTASKS", "SLURM") > 1:
        return "SLURM", {k: v for k, v in _from_slurm(env).items() if k not in env}
    return None, {}


def export_torch_env(env=None) -> str | None:
    """Add the variables of :func:`torch_env` to ``env`` (``os.environ``); returns the scheduler's name."""
    env = os.environ if env is None else env
    name, add = torch_env(env)
    env.update(add)
    if name is not None:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        if not 0 <= rank < world or not 0 <= int(env["LOCAL_RANK"]) < world:
            raise UserError(f"{name} job: rank {rank} / local rank {env['LOCAL_RANK']} outside a world of {world}")
    return name


def local_device_index(local_rank: int, visible: int) -> int:
    """The CUDA device of a rank: its local rank, or 0 when the scheduler shows each task one GPU
    (``srun --gpus-per-task=1`` sets ``CUDA_VISIBLE_DEVICES`` per task)."""
    if visible == 1:
        return 0
    if 0 <= local_rank < visible:
        return local_rank
    raise UserError(f"local rank {local_rank} but only {visible} CUDA devices are visible to this process")
