"""All distributed wrapping of the VARSR transformer: DDP, FSDP2 (+ CPU offload), activation checkpointing, compile.

This is the only file in ``varsr`` that touches process groups or wrappers, so the model modules
stay plain ``nn.Module``s that run unchanged in a CPU unit test. The training loop talks to the
wrapped model only through the helpers here:

- :func:`parallelize` wraps per :class:`varsr.config.ParallelConfig` (after activation checkpointing);
- :func:`grad_sync` turns off gradient all-reduce on non-final micro-batches of an accumulation;
- :func:`for_sampling` gathers FSDP2 parameters for the sampling helpers that bypass ``forward``;
- :func:`get_full_state` / :func:`set_full_state` move model and optimizer state as full,
  unsharded, name-keyed dicts (official parameter names, no wrapper prefixes), so checkpoints
  written under DDP load under FSDP2 or on one CPU and vice versa.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel as DDP

from common import parallel as par


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DDP wrapper (FSDP2 shards in place, so it is its own bare model)."""
    return model.module if isinstance(model, DDP) else model


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no ModuleList `blocks`; cannot wrap per block")
    return blocks


def apply_activation_checkpointing(model: nn.Module, mode="full") -> nn.Module:
    """Recompute each transformer block in backward (``common.parallel``: full | selective).

    The official code checkpoints every block always, even at inference; here it is a training
    option. Non-reentrant with the RNG state replayed, so drop-path masks match; names unchanged.
    """
    par.apply_activation_checkpointing(_blocks(model), mode)
    return model


def parallelize(model: nn.Module, cfg, dist_info, amp: str = "fp32") -> nn.Module:
    """Wrap ``model`` for training: activation checkpointing, per-block compile, then DDP/FSDP2.

    ``cfg``: a ParallelConfig (``backend`` = ddp | fsdp2 | none, ``activation_checkpointing``,
    ``compile``, ``cpu_offload``, ``param_dtype``, ``reduce_dtype``,
    ``reshard_after_forward``, ``find_unused_parameters``). ``dist_info``: ``common.dist.DistInfo``.
    ``amp``: the training autocast dtype (``precision.dtype``), which ``param_dtype=auto`` follows.
    A single process gets the bare model (plus checkpointing/compile) whatever the backend, so
    tests and one-GPU runs need no process group; ``cpu_offload`` shards even a world of one.
    """
    offload = bool(getattr(cfg, "cpu_offload", False))
    if offload and cfg.backend != "fsdp2":
        raise ValueError(f"parallel.cpu_offload needs parallel.backend=fsdp2 (got {cfg.backend!r})")
    if offload and dist_info.backend is None:
        raise ValueError(
            "parallel.cpu_offload needs a process group: start through launch/train_varsr.py "
            "(it starts a torchrun world of one) or torchrun"
        )
    apply_activation_checkpointing(model, cfg.activation_checkpointing)
    if cfg.compile:
        par.compile_blocks(_blocks(model), backend=cfg.compile_backend)
    if (dist_info.world_size <= 1 and not offload) or cfg.backend == "none":
        return model
    if cfg.backend == "ddp":
        ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        # broadcast_buffers=False as in the official trainer: the only buffers are constant
        # (mask, level ids, zero bias), so re-broadcasting them each step is pure overhead.
        return DDP(
            model, device_ids=ids, broadcast_buffers=False, find_unused_parameters=bool(cfg.find_unused_parameters)
        )
    if cfg.backend == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        from varsr.config import fsdp_param_dtype

        kw = par.fsdp2_kwargs(dist_info, fsdp_param_dtype(cfg.param_dtype, amp), cfg.reduce_dtype, offload)
        for block in _blocks(model):
            fully_shard(block, reshard_after_forward=cfg.reshard_after_forward, **kw)
        # Root wrap covers the prefix encoder, embeddings, head and refiner in one group; the root's
        # parameters stay unsharded after forward because backward needs them right away. The root
        # keeps fp32 parameters (no cast, as under DDP): the model runs its prefix encoder, head and
        # refiner in fp32 with autocast off, so `param_dtype` there would hand an fp32 input to
        # low-precision weights. The blocks (nearly all parameters) compute in `param_dtype`.
        root_mp = dataclasses.replace(kw["mp_policy"], param_dtype=None)
        fully_shard(model, reshard_after_forward=False, **{**kw, "mp_policy": root_mp})
        return model
    raise ValueError(f"parallel.backend must be ddp | fsdp2 | none, got {cfg.backend!r}")


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 shards ``model`` (parameters are DTensors: per-rank checks need a reduction)."""
    return bool(_fsdp_modules(model))


@contextlib.contextmanager
def for_sampling(model: nn.Module):
    """The bare model, with FSDP2 parameters gathered while inside (collective under FSDP2).

    Sampling calls the model's helpers (``prefix``, ``embed_scale``, ``logits``, ``diffloss.sample``)
    rather than its ``forward``, so FSDP2's pre-forward hooks never gather the root's parameters and
    they would meet the activations as sharded DTensors. Every FSDP2 module is unsharded here (in its
    mixed-precision dtype, exactly as a training forward sees it) and resharded on exit; blocks called
    through their own ``forward`` keep doing what their hooks do. Every rank must run the same sampling
    calls. Under DDP or without a wrapper this only unwraps.
    """
    mods = _fsdp_modules(model)
    for m in mods:
        m.unshard()
    try:
        yield unwrap(model)
    finally:
        for m in mods:
            m.reshard()


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool):
    """Skip gradient all-reduce for non-final micro-batches of gradient accumulation."""
    if isinstance(model, DDP):
        if enabled:
            yield
        else:
            with model.no_sync():
                yield
        return
    setter = getattr(model, "set_requires_gradient_sync", None)  # FSDP2 module method
    if setter is not None:
        setter(enabled)
        try:
            yield
        finally:
            setter(True)
        return
    yield


def _options(full: bool = True) -> StateDictOptions:
    # cpu_offload keeps a 1B-parameter full state off the GPU; with full_state_dict only rank 0
    # receives the gathered tensors (other ranks get an empty dict), which is what saving needs.
    return StateDictOptions(full_state_dict=full, cpu_offload=True)


def get_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """``{"model": ..., "optimizer": ...}`` full state dicts keyed by official names (collective).

    Every rank must call this (FSDP2 gathers shards); the content is only guaranteed on rank 0.
    """
    out = {"model": get_model_state_dict(model, options=_options())}
    if optimizer is not None:
        out["optimizer"] = get_optimizer_state_dict(model, optimizer, options=_options())
    return out


def set_full_state(
    model: nn.Module, state: dict, optimizer: torch.optim.Optimizer | None = None, strict: bool = True
) -> None:
    """Load what :func:`get_full_state` produced, on every rank, under any wrapper."""
    opts = StateDictOptions(full_state_dict=True, strict=strict)
    set_model_state_dict(model, state["model"], options=opts)
    if optimizer is not None and "optimizer" in state:
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
