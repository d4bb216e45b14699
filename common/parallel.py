"""Training-speed and sharding pieces shared by VARSR and PURE (used by each app's ``parallelize.py``).

- :data:`DTYPES` / :func:`get_dtype`: the one name -> dtype map (``fp32`` | ``bf16`` | ``fp16``).
- :func:`apply_activation_checkpointing`: recompute transformer blocks in backward, ``full``
  (keep only each block's input) or ``selective`` (keep matmul and attention outputs, recompute
  the cheap element-wise ops: norms, activations, residual adds, RoPE).
- :func:`compile_blocks`: ``torch.compile`` each block in place, as FSDP2 users do (compile
  every block, then ``fully_shard`` it), so graphs stay small, one compile serves all blocks of
  the same shape, and state-dict keys keep their names (no ``_orig_mod.`` prefix).
- :func:`fused_adamw`: the fused AdamW kernel on CUDA, the portable one elsewhere.
- :func:`fsdp2_kwargs`: mesh + mixed precision + (optional) CPU offload for ``fully_shard``.
- :func:`loader_kwargs`: DataLoader options that keep a GPU fed (workers, pinned memory,
  prefetch, persistent workers).

Order of application in both apps: activation checkpointing, then compile, then sharding.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AC_MODES = ("none", "full", "selective")


def get_dtype(name: str) -> torch.dtype:
    """``DTYPES[name]`` with a one-line error naming the allowed values."""
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"dtype must be one of {' | '.join(DTYPES)}, got {name!r}") from None


def ac_mode(value) -> str:
    """Normalise an activation-checkpointing setting: true/full, selective, false/none."""
    v = str(value).strip().lower()
    v = {"true": "full", "false": "none", "1": "full", "0": "none", "": "none"}.get(v, v)
    if v not in AC_MODES:
        raise ValueError(f"activation_checkpointing must be one of true/full | selective | false/none, got {value!r}")
    return v


@functools.lru_cache(maxsize=1)
def _saved_ops() -> frozenset:
    """ATen ops whose outputs selective checkpointing keeps: the FLOP-heavy matmuls and attention.

    Everything else in a block (norms, SiLU/GELU, RoPE, residual adds, dropout) costs a few
    memory-bound passes to recompute but holds as much memory as a matmul output, so it is
    recomputed. Attention kernels are resolved by name because which exist depends on the build.
    """
    aten = torch.ops.aten
    names = (
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    )
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def _selective_policy(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_selective_policy)


def apply_activation_checkpointing(blocks: Iterable[nn.Module], mode="full") -> int:
    """Checkpoint every module in ``blocks`` (non-reentrant, RNG state replayed for dropout/drop-path).

    The bound ``forward`` of each block is replaced instead of inserting a wrapper module, so
    parameter and state-dict names stay the official ones. Without grad (validation, sampling)
    the original forward runs. Returns the number of blocks wrapped (re-applying is a no-op).
    """
    mode = ac_mode(mode)
    if mode == "none":
        return 0
    from torch.utils.checkpoint import checkpoint

    extra = {"context_fn": _selective_context} if mode == "selective" else {}
    n = 0
    for block in blocks:
        if getattr(block, "_arsr_ac", None):
            continue
        inner = block.forward

        @functools.wraps(inner)
        def fwd(*args, __inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return __inner(*args, **kwargs)
            return checkpoint(__inner, *args, use_reentrant=False, **extra, **kwargs)

        block.forward = fwd
        block._arsr_ac = mode
        n += 1
    return n


def compile_blocks(blocks: Iterable[nn.Module], backend: str = "inductor", fullgraph: bool = False) -> int:
    """``torch.compile`` each block in place (``nn.Module.compile``); returns how many were compiled.

    Blocks of one model share code and shapes; with dynamo's default of treating module
    parameters as graph inputs, the blocks reuse one compiled graph instead of compiling each.
    FSDP2's hooks run outside the compiled region (dynamo skips them by default).
    """
    n = 0
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile(backend=backend, fullgraph=fullgraph)
            n += 1
    return n


def fused_adamw(fused: bool | None, params: Iterable[torch.Tensor]) -> bool:
    """Whether to ask AdamW for its fused kernel: ``None`` = yes when every parameter is on CUDA.

    Parameters offloaded to the CPU (FSDP2 CPU offload) therefore get the portable kernel.
    """
    if fused is not None:
        return bool(fused)
    params = list(params)
    return bool(params) and all(p.device.type == "cuda" for p in params)


def fsdp2_kwargs(dist, param_dtype: str, reduce_dtype: str, cpu_offload: bool = False) -> dict:
    """Keyword arguments for ``fully_shard``: a 1-D mesh over all ranks, mixed precision, offload.

    ``cpu_offload``: FSDP2 ``CPUOffloadPolicy`` keeps the fp32 parameter shards, their gradients
    and therefore the AdamW state in host memory and runs the optimizer step on the CPU; only the
    unsharded low-precision parameters of the block being computed live on the GPU.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=get_dtype(param_dtype), reduce_dtype=get_dtype(reduce_dtype))
    offload = CPUOffloadPolicy(pin_memory=dist.device.type == "cuda") if cpu_offload else OffloadPolicy()
    return {"mesh": mesh, "mp_policy": mp, "offload_policy": offload}


def loader_kwargs(
    num_workers: int,
    device: torch.device | str,
    prefetch_factor: int = 2,
    persistent_workers: bool = True,
    pin_memory: bool | None = None,
) -> dict:
    """DataLoader options that overlap host-side loading with device compute.

    ``pin_memory`` (default: on CUDA) makes host->device copies asynchronous with
    ``non_blocking=True``; ``prefetch_factor`` batches per worker are prepared ahead;
    ``persistent_workers`` keeps workers (and their decoded-image caches) across iterators.
    """
    dev = torch.device(device)
    kw = {"num_workers": int(num_workers), "pin_memory": dev.type == "cuda" if pin_memory is None else bool(pin_memory)}
    if num_workers > 0:
        kw.update(prefetch_factor=int(prefetch_factor), persistent_workers=bool(persistent_workers))
    return kw
