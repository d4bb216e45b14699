"""Process-group setup for torchrun, the deepspeed launcher, srun and mpirun, and small rank helpers.

Everything here degrades to a no-op single process when the script is not launched by torchrun,
so the same training code runs in a unit test, on one GPU and on many nodes.

Collectives: app code (``pure/``, ``varsr/``, ``launch/``) never calls ``torch.distributed``
collectives itself (a test enforces it); it uses the helpers here, which put every tensor on the
process group's device (CUDA for NCCL, CPU for gloo) and hand the result back on the caller's device.
"""

from __future__ import annotations

import datetime
import os
import random
import sys
from dataclasses import dataclass

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


# One group, a backend per device type: an NCCL-only group refuses CPU tensors on the first multi-rank step.
CUDA_BACKEND = "cuda:nccl,cpu:gloo"


def init_distributed(device: str | None = None, timeout_min: int = 30) -> DistInfo:
    """Initialise torch.distributed from torchrun's environment (idempotent).

    On CUDA (unless ``device="cpu"``) the default group is ``cuda:nccl,cpu:gloo`` (:data:`CUDA_BACKEND`):
    NCCL moves CUDA tensors and gloo the CPU tensors that take part in collectives too (FSDP2
    ``cpu_offload`` keeps gradient shards on the host, so clipping all-reduces CPU norms; DCP's
    saver needs a CPU backend). Subgroups and device meshes inherit both. Without CUDA: gloo, so
    CPU CI exercises the real multi-process code paths.
    """
    from common.launch_env import export_torch_env, local_device_index

    want_cuda = torch.cuda.is_available() and device != "cpu"
    export_torch_env()  # srun / mpirun ranks: their variables -> RANK, WORLD_SIZE, ... (errors are loud)
    if not _launched_by_torchrun():
        dev = torch.device("cuda", 0) if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(dev)
        return DistInfo(0, 1, 0, dev, None)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        dev = torch.device("cuda", local_device_index(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
        backend = CUDA_BACKEND
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
    return DistInfo(rank, world, local_rank, dev, backend)


def destroy_distributed() -> None:
    global _CPU_GROUP
    _CPU_GROUP = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    # DeepSpeed caches a clone of the world group; after a destroy it names a dead group, and the next
    # deepspeed.initialize in this process (tests, notebooks) fails with "Group ... is not registered".
    ds_groups = sys.modules.get("deepspeed.utils.groups")
    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP"):
        if getattr(ds_groups, name, None) is not None:
            setattr(ds_groups, name, None)


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return get_rank() == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def group_device(group=None) -> torch.device:
    """The device a collective on ``group`` must use: CUDA for NCCL, CPU for gloo (and no group).

    NCCL only moves CUDA tensors; handing it a CPU tensor raises on the first multi-rank step,
    which gloo/single-process tests never notice. Every helper below routes through this.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return torch.device("cpu")
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _on_group_device(t, group=None) -> torch.Tensor:
    """A fresh tensor holding ``t`` (tensor or number/list) on ``group``'s device (never aliases ``t``)."""
    dev = group_device(group)
    if isinstance(t, torch.Tensor):
        return t.detach().to(dev, copy=True)
    return torch.as_tensor(t, dtype=torch.float64 if not isinstance(t, bool) else torch.float32, device=dev)


def _reduce(t, op, group=None) -> torch.Tensor:
    src_dev = t.device if isinstance(t, torch.Tensor) else torch.device("cpu")
    out = _on_group_device(t, group)
    if _active():
        dist.all_reduce(out, op=op, group=group)
    return out.to(src_dev)


def barrier(group=None) -> None:
    if _active():
        # NCCL's barrier guesses a device from the rank when none is given; name the bound one.
        dev = group_device(group)
        if dev.type == "cuda":
            dist.barrier(group=group, device_ids=[dev.index])
        else:
            dist.barrier(group=group)


def all_reduce_sum(t, group=None) -> torch.Tensor:
    """Sum of ``t`` over ranks as a new tensor on ``t``'s device (numbers become float64 CPU tensors)."""
    return _reduce(t, dist.ReduceOp.SUM, group)


def all_reduce_mean(t, group=None) -> torch.Tensor:
    """Mean of ``t`` over ranks (returns a new tensor; identity in a single process)."""
    n = dist.get_world_size(group) if _active() else 1
    return _reduce(t, dist.ReduceOp.SUM, group) / n


def all_reduce_max(t, group=None) -> torch.Tensor:
    return _reduce(t, dist.ReduceOp.MAX, group)


def any_rank(flag: bool, group=None) -> bool:
    """True on every rank when ``flag`` is true on at least one (pre-emption, early stop)."""
    return bool(all_reduce_max(torch.tensor([1.0 if flag else 0.0]), group).item())


def all_gather_object(obj, group=None) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (small picklable objects: RNG states, stats)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size(group)
    # The object collectives pickle into a byte tensor placed on torch.cuda.current_device() for
    # NCCL; init_distributed binds that device to the local rank, so nothing else is needed here.
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast_object(obj, src: int = 0, group=None):
    """Send a picklable object from ``src`` to every rank (used for run-dir names, not for weights)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


_CPU_GROUP = None


def new_cpu_group():
    """A gloo group over all ranks (created once; collective): for CPU-side work that runs next to
    NCCL training, e.g. DCP's collectives of an async checkpoint save on a background thread.

    Made whenever a process group exists, a world of one included: DCP's ``async_save`` refuses a
    group without a CPU backend, and an NCCL world of one (torchrun with one GPU, the offload
    recipes) is still distributed. ``None`` only when no process group was initialised."""
    global _CPU_GROUP
    if _CPU_GROUP is None and dist.is_available() and dist.is_initialized():
        _CPU_GROUP = dist.new_group(backend="gloo")
    return _CPU_GROUP


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch; ranks get distinct but reproducible streams."""
    s = int(seed) + 1000 * int(rank)
    random.seed(s)
    import numpy as np  # lazily: the GPU benchmark imports this module on a bare torch install

    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    return s
