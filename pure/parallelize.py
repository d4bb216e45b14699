"""All distributed-training code for PURE: FSDP2, DeepSpeed ZeRO, single process, activation checkpointing.

`build_engine(root, lm, optim_cfg, par_cfg, dist)` returns an `Engine` with one interface for the
training loop (`forward`, `backward`, `step`, `train_state`, `full_model_state_dict`), so
train.py never branches on the backend. `root` is the module whose forward computes the loss
(it wraps `lm`, a ChameleonForCausalLM); `lm` is what gets sharded layer by layer.

Official PURE (xllmx) uses FSDP1 FULL_SHARD over decoder layers + embeddings + lm_head with bf16
params / fp32 reduction and non-reentrant activation checkpointing; ours uses FSDP2
`fully_shard` with the same wrapping and `MixedPrecisionPolicy`, or DeepSpeed ZeRO (any stage).

Learning rates are set by the loop each step (`Engine.set_lr`), so no backend-specific scheduler
state exists and resuming needs only the step counter.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from common import parallel as par
from pure.optim import make_optimizer

DTYPES = par.DTYPES  # the one dtype map (common.parallel); kept here for callers of pure.parallelize


def apply_activation_checkpointing(lm: nn.Module, mode="full") -> None:
    """Recompute every decoder layer in backward (common.parallel: full | selective, non-reentrant).

    The bound `forward` is wrapped instead of inserting a wrapper module, so state-dict keys stay
    the HF names (checkpoint_wrapper would add `_checkpoint_wrapped_module.`).
    """
    par.apply_activation_checkpointing(lm.model.layers, mode)


class Engine:
    """Single-process (and FSDP2) engine: plain autograd + torch AdamW + global-norm clipping."""

    kind = "none"

    def __init__(self, root: nn.Module, optim_cfg, dist):
        self.module = root
        self.dist = dist
        self.grad_accum = max(1, int(optim_cfg.grad_accum))
        self.grad_clip = float(optim_cfg.grad_clip)
        self.optimizer = make_optimizer([p for p in root.parameters() if p.requires_grad], optim_cfg)
        self._micro = 0

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def backward(self, loss: torch.Tensor) -> None:
        # Loss of one micro-batch is a mean over its supervised tokens; dividing by the number of
        # accumulation steps makes the step gradient the mean of micro-batch means (official).
        (loss / self.grad_accum).backward()
        self._micro += 1

    def boundary(self) -> bool:
        """True when the next `step` call will update the weights."""
        return self._micro % self.grad_accum == 0

    def step(self, skip=None) -> torch.Tensor | None:
        """Clip + AdamW at accumulation boundaries; returns the pre-clip grad norm there, else None.

        ``skip(norm) -> bool``: drop this update when true (``optim.nonfinite=skip``)."""
        if not self.boundary():
            return None
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        if skip is None or not skip(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()  # a device tensor: the loop reads it once per logging window, not per step

    # ---- export: full (unsharded) model state; checkpoints go through train_state() ----
    def _state_options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def full_model_state_dict(self) -> dict:
        """Unsharded model tensors (on every rank in one process; on rank 0 only under FSDP2)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.module, options=self._state_options())

    def train_state(self, run_dir, objects: dict, keep: int, async_save: bool = False, app: str = "pure"):
        """The checkpoint manager for this engine (common.train_state): sharded DCP under FSDP2,
        so each rank writes/reads only its shards and any world size resumes."""
        from common.train_state import TrainState

        return TrainState(run_dir, self.module, self.optimizer, objects, keep=keep, async_save=async_save, app=app)


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO-{0,1,2,3}: DeepSpeed owns backward scaling, clipping, the step and checkpoints."""

    kind = "deepspeed"

    def __init__(self, root: nn.Module, optim_cfg, par_cfg, dist, micro_batch: int):
        import deepspeed

        self.dist = dist
        self.grad_accum = max(1, int(optim_cfg.grad_accum))
        self.grad_clip = float(optim_cfg.grad_clip)
        config = deepspeed_config(optim_cfg, par_cfg, micro_batch, dist.world_size)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=root, model_parameters=[p for p in root.parameters() if p.requires_grad], config=config
        )
        self.module = self.engine

    def backward(self, loss):
        self.engine.backward(loss)  # divides by gradient_accumulation_steps itself
        # DeepSpeed counts micro-batches in engine.step(), which must follow every backward; the loop
        # calls step() once per optimizer step, so the non-final micro-batches are stepped here
        # (no update happens off the boundary). Without this, grad_accum=k took a step every k^2 micro-batches.
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()

    def boundary(self) -> bool:
        return self.engine.is_gradient_accumulation_boundary()

    def step(self, skip=None):  # skip: refused at start (DeepSpeed steps inside engine.step)
        at_boundary = self.boundary()
        self.engine.step()
        if not at_boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return None
        return norm.detach() if torch.is_tensor(norm) else norm  # a tensor stays on the device (no sync here)

    def full_model_state_dict(self) -> dict:
        # ZeRO-3 keeps partitions; gather each parameter in turn (rank 0 keeps the copy).
        import deepspeed

        out = {}
        for name, p in self.engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None, enabled=hasattr(p, "ds_id")):
                if self.dist.is_main:
                    out[name] = p.detach().to("cpu", copy=True)
        return out

    def train_state(self, run_dir, objects: dict, keep: int, async_save: bool = False, app: str = "pure"):
        """DeepSpeed's own engine files (loaded under common.checkpoint_ds's allowlist, converted to
        the universal form to resume on another world size); ``objects`` (EMA) go to DCP next to them."""
        from common.train_state import TrainState

        return TrainState(
            run_dir, self.engine, None, objects, keep=keep, async_save=async_save, engine=self.engine, app=app
        )


class Zero3Build:
    """Build the model already partitioned by ZeRO-3 (for ``pure.build.build_lm(partitioned=...)``).

    Without it every rank built the whole fp32 model on its host before ``deepspeed.initialize``
    partitioned it: 8 x 28 GB for the 7B on one node. Under ``deepspeed.zero.Init`` each module's
    parameters are partitioned (in the DeepSpeed config's dtype, on the rank's device) as soon as
    the module is built, so a rank holds one module whole at most, then its 1/world share.
    """

    def __init__(self, optim_cfg, par_cfg, dist, micro_batch: int):
        self.config = deepspeed_config(optim_cfg, par_cfg, micro_batch, dist.world_size)
        self.dist = dist

    def construct(self):
        import deepspeed

        deepspeed.init_distributed()  # adopts the torch process group (Init reads the world size from it)
        return deepspeed.zero.Init(config_dict_or_path=self.config)

    @contextlib.contextmanager
    def gather(self, params, modify: bool = True):
        """Make ``params`` whole on every rank; yields whether this rank's writes are kept (rank 0's
        are re-partitioned on exit when ``modify``; without it nothing is written back)."""
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
            yield self.dist.is_main or not modify


def zero3_build(optim_cfg, par_cfg, dist, micro_batch: int) -> Zero3Build | None:
    """The partitioned builder when the run is DeepSpeed ZeRO-3 (the stage of the merged DeepSpeed
    config, which a `deepspeed_config` file may set), else None (plain build)."""
    if par_cfg.backend != "deepspeed" or dist.backend is None:
        return None
    build = Zero3Build(optim_cfg, par_cfg, dist, micro_batch)
    return build if int(build.config["zero_optimization"].get("stage", 0)) >= 3 else None


def deepspeed_config(optim_cfg, par_cfg, micro_batch: int, world_size: int) -> dict:
    """The DeepSpeed JSON config from our structured config (+ optional yaml/json overrides)."""
    bf16 = par_cfg.param_dtype == "bf16"
    cfg = {
        "train_micro_batch_size_per_gpu": int(micro_batch),
        "gradient_accumulation_steps": max(1, int(optim_cfg.grad_accum)),
        "train_batch_size": int(micro_batch) * max(1, int(optim_cfg.grad_accum)) * int(world_size),
        "gradient_clipping": float(optim_cfg.grad_clip),
        "bf16": {"enabled": bf16},
        "zero_optimization": {
            "stage": int(par_cfg.zero_stage),
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": 5e7,
        },
        # torch_adam: DeepSpeed's fused CPU/GPU Adam needs a compiled op; torch's AdamW is exact and portable.
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim_cfg.lr,
                "betas": list(optim_cfg.betas),
                "eps": optim_cfg.eps,
                "weight_decay": optim_cfg.weight_decay,
                "torch_adam": True,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if bf16:
        # Accumulate and all-reduce gradients in fp32 like FSDP's reduce_dtype.
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    if getattr(par_cfg, "cpu_offload", False):
        # ZeRO-Offload: fp32 master weights, gradients and AdamW moments in host memory, step on the CPU
        # (memory arithmetic: pure/config.py ParallelConfig.cpu_offload). pin_memory only helps CUDA copies.
        if int(par_cfg.zero_stage) < 1:
            raise ValueError("parallel.cpu_offload with DeepSpeed needs parallel.zero_stage >= 1 (ZeRO-Offload)")
        cuda = torch.cuda.is_available()
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if par_cfg.deepspeed_config:
        cfg = _deep_merge(cfg, _read_cfg(par_cfg.deepspeed_config))
    return cfg


def _read_cfg(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"DeepSpeed config not found: {p}")
    if p.suffix in (".yaml", ".yml"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    return json.loads(p.read_text())


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_fsdp2(root: nn.Module, lm: nn.Module, par_cfg, dist) -> None:
    """FULL_SHARD per decoder layer, embed_tokens and lm_head, then the root (final norm etc.)."""
    from torch.distributed.fsdp import fully_shard

    kw = par.fsdp2_kwargs(dist, par_cfg.param_dtype, par_cfg.reduce_dtype, getattr(par_cfg, "cpu_offload", False))
    fully_shard(lm.model.embed_tokens, reshard_after_forward=par_cfg.reshard_after_forward, **kw)
    for layer in lm.model.layers:
        fully_shard(layer, reshard_after_forward=par_cfg.reshard_after_forward, **kw)
    # lm_head runs last in forward and first in backward: keeping it unsharded saves one all-gather.
    fully_shard(lm.lm_head, reshard_after_forward=False, **kw)
    fully_shard(root, reshard_after_forward=False, **kw)


def fsdp2_meta_init(dist) -> bool:
    """FSDP2 on several ranks builds the model on `meta` and broadcasts rank 0's weights
    (official: "rank 0 loads weights and broadcasts"), so no rank but 0 ever holds a full copy."""
    return dist.world_size > 1


def materialize_from_rank0(root: nn.Module, full_state: dict | None, dist, cpu_offload: bool = False) -> None:
    """Allocate a meta-built, already sharded `root` on the device (host memory under CPU offload,
    where FSDP2 keeps the shards) and fill it from rank 0's full state dict (keys as
    `root.state_dict()`); other ranks pass None."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    root.to_empty(device="cpu" if cpu_offload else dist.device)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(root, full_state if dist.is_main else {}, options=opts)


def build_engine(
    root: nn.Module, lm: nn.Module, optim_cfg, par_cfg, dist, micro_batch: int, full_state: dict | None = None
) -> Engine:
    """Apply activation checkpointing + the configured sharding and build the optimizer.

    `full_state`: rank 0's weights for a meta-built root under multi-rank FSDP2 (fsdp2_meta_init)."""
    backend = par_cfg.backend
    offload = bool(getattr(par_cfg, "cpu_offload", False))
    compile_blocks = bool(getattr(par_cfg, "compile", False))
    if compile_blocks and backend == "deepspeed":  # a config error: said before any runtime condition
        # ZeRO-3 gathers parameters in hooks that dynamo cannot trace per block
        raise ValueError("parallel.compile is for backend fsdp2 | none; DeepSpeed runs eager here")
    if offload and (backend == "none" or dist.backend is None):
        raise ValueError(
            "parallel.cpu_offload needs parallel.backend=fsdp2 | deepspeed and a process group "
            "(launch/train_pure.py starts a torchrun world of one for it)"
        )
    if backend == "deepspeed" and dist.backend is None:  # else DeepSpeed goes looking for MPI (mpi4py)
        raise ValueError(
            "parallel.backend=deepspeed needs a process group: run under torchrun or the deepspeed launcher "
            "(launch/train_pure.py starts a torchrun world of one for it)"
        )
    apply_activation_checkpointing(lm, par_cfg.activation_checkpointing)
    if compile_blocks:
        par.compile_blocks(lm.model.layers, backend=par_cfg.compile_backend)
    if backend == "deepspeed":
        return DeepSpeedEngine(root, optim_cfg, par_cfg, dist, micro_batch)
    if backend == "fsdp2":
        if dist.world_size > 1 or dist.backend is not None:
            apply_fsdp2(root, lm, par_cfg, dist)
            if any(p.is_meta for p in root.parameters()):
                materialize_from_rank0(root, full_state, dist, offload)
        eng = Engine(root, optim_cfg, dist)
        eng.kind = "fsdp2"
        return eng
    if backend == "none":
        if dist.world_size > 1:
            raise ValueError("parallel.backend=none runs one process; use fsdp2 or deepspeed under torchrun")
        return Engine(root, optim_cfg, dist)
    raise ValueError(f"unknown parallel.backend {backend!r}; expected none | fsdp2 | deepspeed")
