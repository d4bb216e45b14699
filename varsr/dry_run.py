"""VARSR dry runs (``dry_run=`` / preflight of launch/train_varsr.py and launch/sample_varsr.py).

The real code at full size on fake tensors (``common/dry_run.py``). Training builds the models
with ``varsr.model.build_models``, wraps the transformer with ``varsr.parallelize.parallelize``
(FSDP2 with its mixed precision, activation checkpointing and offload) and runs one micro-batch
the way ``varsr.train.Trainer.train_step`` does (autocast in ``precision.dtype``, GradScaler,
``varsr_loss`` with the frozen VQVAE encoding the HR, clip, AdamW step). DDP is not wrapped --
its reducer is C++ code that reads real storage -- so its gradient buckets and bucketed
all-reduce are added in closed form (full fp32 gradients, ``bucket_cap_mb`` 25) and labelled.
Sampling runs ``varsr.sample.sample_sr`` on a batch of model-size LR images: prefix, the scale
loop over the per-block KV caches (CFG doubles the rows), the refiner and the VQVAE decode.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from common.batch_plan import apply_batch_plan
from common.devices import Device
from common.dry_run import measure, nbytes, prime_optimizer, simulation, with_group
from common.dry_run_report import DryRunApp, Report
from common.parallel import ac_mode

TRAIN_KEYS = "nproc, data.batch_size, parallel.backend, parallel.activation_checkpointing, parallel.cpu_offload"
SAMPLE_KEYS = "dtype, tile_batch, fastvar.enabled"
DDP_BUCKET_BYTES = 25 * 2**20  # torch DDP's default bucket_cap_mb


def depth(cfg) -> int:
    m = cfg.model
    return int(m["depth"] if isinstance(m, dict) else m.depth)


def _model_cfg(cfg, layers):
    from varsr.model import VARSRModelConfig, config_from_dict

    m = cfg.model if isinstance(cfg.model, VARSRModelConfig) else config_from_dict(dict(cfg.model))
    if layers is None:
        return m
    # keep the width and heads of the full model: only the block count shrinks (the preflight's 1-/2-layer runs)
    return dataclasses.replace(m, depth=int(layers), width=m.embed_dim, num_heads=m.heads)


def simulate_train(cfg, device: Device, world: int, layers: int | None = None) -> list[Report]:
    from varsr.losses import varsr_loss
    from varsr.model import build_models
    from varsr.optim import build_optimizer
    from varsr.parallelize import grad_sync, is_sharded, parallelize

    mcfg = _model_cfg(cfg, layers)
    cfg, _ = apply_batch_plan(cfg, world)  # as varsr.train: optim.global_batch -> micro-batch x accumulation
    par = cfg.parallel
    ddp = par.backend == "ddp" and world > 1
    offload = bool(par.cpu_offload)
    group = with_group(world, offload) and par.backend == "fsdp2"
    B, S, accum = cfg.data.batch_size, mcfg.image_size, max(1, cfg.optim.grad_accum)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision.dtype]
    with simulation(world if group else 1, group=group) as dist:
        model, vqvae = build_models(mcfg)
        model.train()
        n_params = sum(p.numel() for p in model.parameters())
        shard = par if group else dataclasses.replace(par, backend="none")
        wrapped = parallelize(model, shard, dist, amp=cfg.precision.dtype)
        o = cfg.optim
        fused = (not (offload and group)) if o.fused is None else o.fused  # as common.parallel.fused_adamw on CUDA
        if is_sharded(wrapped) and amp is torch.float16:
            # fused AdamW's fake kernel refuses ShardedGradScaler's (1,)-shaped overflow flag; the step runs
            # outside the memory tracker (common.dry_run.measure), so only its roofline time is the unfused one
            fused = False
        optimizer = build_optimizer(wrapped, o.lr, o.betas, o.eps, o.weight_decay, tuple(o.no_decay_keys), fused)
        prime_optimizer(optimizer, wrapped.parameters(), keep_grads=accum > 1)
        if is_sharded(wrapped):  # as varsr.train: FSDP2 agrees on overflow across ranks
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler as scaler_cls
        else:
            scaler_cls = torch.amp.GradScaler
        scaler = scaler_cls("cpu", init_scale=cfg.precision.init_scale, enabled=amp is torch.float16)
        hr = torch.zeros(B, 3, S, S)
        lr = torch.zeros(B, 3, S, S) if mcfg.lr_prefix else None
        label = torch.zeros(B, dtype=torch.long)

        def forward():
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                return varsr_loss(wrapped, vqvae, hr, lr, label, diff_weight=cfg.loss.diff_weight)[0]

        def backward(loss):
            with grad_sync(wrapped, True):  # the last micro-batch: gradients are reduced
                scaler.scale(loss / accum).backward()

        def after():  # unscale, clip, AdamW: in place (common.dry_run.measure)
            scaler.unscale_(optimizer)
            clip = o.grad_clip if o.grad_clip > 0 else float("inf")
            gn = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), clip)
            if hasattr(gn, "full_tensor"):
                gn.full_tensor()
            scaler.step(optimizer)
            scaler.update()

        m = measure(forward, wrapped, optimizer, device, 1.0, offload and group, after=after, backward=backward)
        grad_bytes = nbytes(p for p in model.parameters() if p.requires_grad)
    wrap = {"ddp": "DDP", "fsdp2": "FSDP2", "none": "one process"}[par.backend] + (f" x{world}" if world > 1 else "")
    title = (
        f"VARSR d{mcfg.depth} training, {wrap}{' + CPU offload' if offload else ''}, {cfg.precision.dtype}, "
        f"AC {ac_mode(par.activation_checkpointing)}, micro-batch {B} x {S}px, grad_accum {accum}"
    )
    r = Report(title, device, world, m, B * accum, "image", None, accum, TRAIN_KEYS)
    if ddp:
        m.device_bytes["gradients"] += grad_bytes
        r.sources["gradients"] = "measured + DDP gradient buckets (closed form: one fp32 copy of every gradient)"
        m.traffic.collectives["allreduce (DDP buckets, closed form)"] = [
            math.ceil(grad_bytes / DDP_BUCKET_BYTES),
            grad_bytes,
        ]
    r.host["model + VQVAE built on CPU per rank (fp32)"] = (n_params + sum(p.numel() for p in vqvae.parameters())) * 4
    r.notes.append("the on-device degradation of the batch runs before the forward and is not included")
    r.notes.append(f"{n_params / 1e9:.2f} B transformer parameters; MFU not shown: FLOPs are as executed")
    if cfg.data.num_workers:
        r.notes.append(f"plus {cfg.data.num_workers} data worker processes per rank (image decoding, crops)")
    return [r]


def simulate_sample(cfg, device: Device, world: int = 1, layers: int | None = None, batch: int = 1):
    """``sample_sr`` of ``batch`` model-size images (a tiled output runs ``tile_batch`` such tiles at once)."""
    from varsr.model import build_models
    from varsr.sample import sample_sr

    mcfg = _model_cfg(cfg, layers)
    B, S = int(batch), mcfg.image_size
    dt = None if cfg.dtype == "fp32" else cfg.dtype
    with simulation(1):
        model, vqvae = build_models(mcfg)
        model.eval()
        lr = torch.zeros(B, 3, S, S)
        rows = 2 * B if cfg.cfg != 0 else B
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.dtype)
        kv = sum(c.k.nbytes + c.v.nbytes for c in model.new_cache(rows, amp))

        def step():
            fv = cfg.fastvar if cfg.fastvar.enabled else None
            sample_sr(model, vqvae, lr, cfg=cfg.cfg, top_k=cfg.top_k, color_fix=cfg.color_fix, fastvar=fv, dtype=dt)

        m = measure(step, torch.nn.ModuleList([model, vqvae]), None, device, 1.0)
    m.device_bytes["KV cache"] = kv
    taken = min(kv, m.device_bytes["temporaries"])
    m.device_bytes["temporaries"] -= taken
    m.device_bytes["activations"] = max(0, m.device_bytes["activations"] - (kv - taken))
    title = f"VARSR d{mcfg.depth} sampling, batch {B} x {S}px, cfg {cfg.cfg}, {cfg.dtype}"
    r = Report(title, device, world, m, B, "image", None, 1, SAMPLE_KEYS)
    r.sources["KV cache"] = "the model's own new_cache (CFG rows included)"
    r.notes.append("eager (compile changes kernels, not these categories)")
    return [r]


TRAIN = DryRunApp(simulate_train, depth)
SAMPLE = DryRunApp(simulate_sample, depth)
