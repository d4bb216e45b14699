"""Optimizer, parameter groups and learning-rate schedule of VARSR training.

Follows the official recipe (VARSR `train.py` + `utils/lr_control.py`, README command):
AdamW β=(0.9, 0.95), weight decay 0.05 except on a no-decay group, peak lr 5e-5 without batch
scaling, a linear warm-up from 0.005·peak, then `lin0`: constant for 30 % of the remaining
iterations and a linear decay to 0.01·peak at the last iteration.

Names are matched after removing wrapper prefixes so the same groups come out for a plain
module, a DDP/FSDP2-wrapped one or one with activation-checkpoint wrappers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from common.ema import clean_param_name  # wrapper-free names, shared with the EMA

# Substrings that put a parameter in the no-decay group. The list is the official one (VAR's list
# reused by VARSR, which adds "diffloss" so the whole refiner MLP is never decayed). Many entries
# name modules our model does not have; they are kept so a VAR/C2I-shaped model groups the same way.
NO_DECAY_KEYS: tuple[str, ...] = (
    "cls_token",
    "start_token",
    "task_token",
    "cfg_uncond",
    "pos_embed",
    "pos_1LC",
    "pos_start",
    "start_pos",
    "lvl_embed",
    "gamma",
    "beta",
    "ada_gss",
    "moe_bias",
    "scale_mul",
    "diffloss",
)


def is_no_decay(name: str, param: torch.Tensor, no_decay_keys=NO_DECAY_KEYS) -> bool:
    """Official rule: 1-D tensors, biases and any name containing a no-decay key."""
    name = clean_param_name(name)
    return param.ndim <= 1 or name.endswith("bias") or any(k in name for k in no_decay_keys)


def param_groups(model: nn.Module, weight_decay: float, no_decay_keys=NO_DECAY_KEYS) -> list[dict]:
    """Two AdamW groups, ``decay`` and ``no_decay``; each also lists its parameter ``names``.

    Frozen parameters (requires_grad False) are left out of the optimizer entirely.
    """
    groups = {
        "decay": {"params": [], "names": [], "weight_decay": float(weight_decay), "group": "decay"},
        "no_decay": {"params": [], "names": [], "weight_decay": 0.0, "group": "no_decay"},
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = "no_decay" if is_no_decay(name, p, no_decay_keys) else "decay"
        groups[key]["params"].append(p)
        groups[key]["names"].append(clean_param_name(name))
    return [g for g in groups.values() if g["params"]]


def build_optimizer(
    model: nn.Module,
    lr: float,
    betas=(0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.05,
    no_decay_keys=NO_DECAY_KEYS,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`. ``fused`` defaults to True on CUDA only."""
    from common.parallel import fused_adamw

    groups = param_groups(model, weight_decay, no_decay_keys)
    fused = fused_adamw(fused, (p for g in groups for p in g["params"]))
    # AdamW ignores unknown group keys ("names", "group") but keeps them in state_dict, which
    # makes a checkpoint self-describing.
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=bool(fused) or None)


@dataclass(frozen=True)
class LinearSchedule:
    """Closed form of the official ``lin0`` schedule as a multiplier of the peak lr.

    ``step`` counts optimizer steps from 0. Warm-up: ``warmup_start + (1 - warmup_start)·step/W``
    for step < W. After it, with progress ``p = (step - W) / (total - 1 - W)``: 1 while
    ``p < flat_fraction``, then ``end_ratio + (1 - end_ratio)·(1 - p)/(1 - flat_fraction)``, which
    reaches ``end_ratio`` exactly at the last step (official: T = 0.3 for VARSR's ``lin0``,
    wpe = 0.01 from the README command).
    """

    total_steps: int
    warmup_steps: int
    warmup_start: float = 0.005
    flat_fraction: float = 0.3
    end_ratio: float = 0.01

    def __call__(self, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            return self.warmup_start + (1.0 - self.warmup_start) * step / w
        span = max(self.total_steps - 1 - w, 1)
        p = min(max((step - w) / span, 0.0), 1.0)
        if p < self.flat_fraction or self.flat_fraction >= 1.0:
            return 1.0
        return self.end_ratio + (1.0 - self.end_ratio) * (1.0 - p) / (1.0 - self.flat_fraction)


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Official: ``round(wp · iters_per_epoch)``; clamped so at least one post-warm-up step exists."""
    w = int(round(warmup_epochs * steps_per_epoch))
    return max(0, min(w, total_steps - 1))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LinearSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR driven by :class:`LinearSchedule` (one ``.step()`` per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)


def grad_norm_total(params) -> float:
    """Global L2 norm of the (already unscaled) gradients, for logging when clipping is off."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def finite_or_nan(x: float) -> float:
    return x if math.isfinite(x) else float("nan")
