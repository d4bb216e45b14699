"""Process-group setup for torchrun (single node, multi-node, SLURM via torchrun) and small rank helpers.

Everything here degrades to a no-op single process when the script is not launched by torchrun,
so the same training code runs in a unit test, on one GPU and on many nodes.
"""
from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """What a process needs to know about its place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.backend is not None


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _export_slurm_env() -> None:
    """Under Hydra's submitit launcher (one SLURM task per GPU) derive torchrun's variables.

    submitit knows the job's node list and rank layout; exporting them here lets the same
    ``init_distributed`` serve torchrun, the deepspeed launcher and SLURM.
    """
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception:  # not a submitit job (e.g. srun torchrun ...): torchrun sets the variables itself
        pass


def init_distributed(device: str | None = None, timeout_min: int = 30) -> DistInfo:
    """Initialise torch.distributed from torchrun's environment (idempotent).

    NCCL is used when CUDA is available (and not disabled by ``device="cpu"``), gloo otherwise, so
    CPU CI can exercise the real multi-process code paths.
    """
    want_cuda = torch.cuda.is_available() and device != "cpu"
    _export_slurm_env()
    if not _launched_by_torchrun():
        dev = torch.device("cuda", 0) if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(dev)
        return DistInfo(0, 1, 0, dev, None)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
    return DistInfo(rank, world, local_rank, dev, backend)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (returns a new tensor; identity in a single process)."""
    if get_world_size() == 1:
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def broadcast_object(obj):
    """Send a picklable object from rank 0 to every rank (used for run-dir names, not for weights)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch; ranks get distinct but reproducible streams."""
    s = int(seed) + 1000 * int(rank)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    return s
