"""Self-spawning training launchers: ``python launch/train_*.py ...`` uses every GPU of the node.

When a training launcher was not started by torchrun, the deepspeed launcher, SLURM (several
tasks) or MPI, :func:`maybe_spawn` starts the ranks itself exactly as
``torchrun --standalone --nproc_per_node=N launch/train_*.py ARGS`` would (same elastic agent,
same environment variables, same rendezvous), and the parent only waits and returns the job's
exit code. ``N`` comes from the config key ``nproc``: ``auto`` = the number of visible CUDA
devices (1 on CPU or with ``run.device=cpu``), or an integer (``nproc=2 run.device=cpu`` runs a
2-process gloo job on a laptop). A single rank is also started through torchrun when the
config needs a process group on one device: ``parallel.cpu_offload`` (FSDP2 / ZeRO-Offload
shard over a world of one) and ``parallel.backend=deepspeed`` (without torchrun's rendezvous
variables DeepSpeed looks for an MPI launcher and stops at "No module named mpi4py").

Children see torchrun's ``RANK``/``WORLD_SIZE`` and therefore never spawn again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Variables set by the launchers we defer to (torchrun/torch elastic, the deepspeed launcher,
# Open MPI / MPICH / Intel MPI).
_LAUNCHER_VARS = (
    ("TORCHELASTIC_RUN_ID", "torchrun"),
    ("RANK", "torchrun/deepspeed"),
    ("LOCAL_RANK", "torchrun/deepspeed"),
    ("OMPI_COMM_WORLD_SIZE", "mpirun"),
    ("PMI_SIZE", "mpirun"),
)


def launched_externally(env=None) -> str | None:
    """Which launcher started this process (``None`` when it was started by hand)."""
    env = os.environ if env is None else env
    for var, name in _LAUNCHER_VARS:
        if var in env:
            return name
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:  # srun with one task per GPU
        return "slurm"
    return None


def resolve_nproc(nproc, device: str = "auto") -> int:
    """Ranks to start for ``nproc`` (``auto`` | int) and ``run.device`` (auto | cpu | cuda)."""
    import torch

    cuda = device != "cpu" and torch.cuda.is_available()
    value = str(nproc).strip().lower()
    if value == "auto":
        return torch.cuda.device_count() if cuda else 1
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"nproc must be auto or a positive integer, got {nproc!r}") from None
    if n < 1:
        raise ValueError(f"nproc must be auto or a positive integer, got {nproc!r}")
    if cuda and n > torch.cuda.device_count():
        raise ValueError(
            f"nproc={n} but only {torch.cuda.device_count()} CUDA devices are visible "
            "(use run.device=cpu for simulated CPU ranks)"
        )
    return n


def _select(cfg, dotted: str, default=None):
    """``cfg.a.b`` for a dataclass or OmegaConf node; ``default`` when a level is missing."""
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None) if node is not None else None
    return default if node is None else node


def spawn(script: str | Path, args: list[str], nproc: int) -> int:
    """Run ``script args`` on ``nproc`` local ranks through torchrun's own entry; returns the exit code.

    A failed rank's exit code is returned as is (2 for a one-line user error), a rank killed
    by a signal gives 128 + signal, like a shell.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    targs = parse_args(["--standalone", f"--nproc_per_node={int(nproc)}", str(script), *map(str, args)])
    try:
        run(targs)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = int(failure.exitcode)
        code = 128 - code if code < 0 else (code or 1)  # negative exit code = killed by signal -code
        print(f"error: rank {rank} of {nproc} exited with code {code} (its own message is above)", file=sys.stderr)
        return code
    except SignalException as e:  # the parent was asked to stop; torchrun already stopped the ranks
        return 128 + int(e.sigval)
    return 0


def needs_process_group(cfg) -> bool:
    """Whether even one rank must run under torchrun (a process group over a world of one)."""
    return bool(_select(cfg, "parallel.cpu_offload", False)) or _select(cfg, "parallel.backend") == "deepspeed"


def maybe_spawn(cfg, script: str | Path, args: list[str]) -> int | None:
    """Start the job's ranks when nobody else did; ``None`` means: run in this process.

    ``cfg`` is the validated config (``nproc``, ``run.device``, ``parallel.cpu_offload``,
    ``parallel.backend``), ``args`` the command-line overrides the children compose again.
    """
    if launched_externally() is not None:
        return None
    n = resolve_nproc(_select(cfg, "nproc", "auto"), str(_select(cfg, "run.device", "auto")))
    if n == 1 and not needs_process_group(cfg):
        return None
    return spawn(Path(script).resolve(), list(args), n)
