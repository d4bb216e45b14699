"""The global batch a config states, split over the world the launcher found, and the LR that goes with it.

``optim.global_batch`` (samples per optimizer step, over all ranks) is the recipe; the world size
is whatever the launcher started (``nproc=auto`` follows the visible GPUs). :func:`plan_batch`
derives the per-rank micro-batch and the accumulation count so that
``micro_batch x grad_accum x world_size == global_batch`` on any world size that divides it, and
refuses (one line, exit 2) otherwise. ``data.batch_size`` is then the largest micro-batch a rank
may hold (memory), ``optim.grad_accum`` (when not 1) the accumulation you insist on.
``optim.global_batch=0`` keeps the old meaning: ``batch_size x grad_accum x world_size``.

The LR follows each app's official rule (``optim.lr_scaling``): VARSR's trainer multiplies the base
LR by the accumulation count (``tlr = ac * tblr`` in ``utils/arg_util.py``; ``accum``), PURE's uses
its LR as given (``none``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from common.paths import UserError

LR_SCALINGS = ("none", "accum")


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int  # samples per optimizer step over all ranks
    micro_batch: int  # samples per forward on one rank
    accum: int  # micro-batches per optimizer step
    world_size: int
    lr: float  # the effective peak LR
    base_lr: float  # optim.lr
    lr_scaling: str

    def describe(self) -> str:
        rule = f"optim.lr {self.base_lr:g} x accumulation {self.accum}" if self.lr_scaling == "accum" else "optim.lr"
        return (
            f"global batch {self.global_batch} = micro-batch {self.micro_batch} x accumulation {self.accum} "
            f"x {self.world_size} rank(s); lr {self.lr:g} ({rule}, lr_scaling={self.lr_scaling})"
        )


def split_global_batch(global_batch: int, max_micro: int, grad_accum: int, world_size: int) -> tuple[int, int]:
    """(micro-batch, accumulation) with ``micro x accum x world == global_batch``.

    ``grad_accum > 1`` fixes the accumulation; otherwise the micro-batch is the largest divisor of
    the per-rank share not above ``max_micro`` (fewest accumulation steps that fit)."""
    if global_batch % world_size:
        raise UserError(
            f"optim.global_batch={global_batch} cannot be split over {world_size} ranks "
            f"({global_batch} is not a multiple of {world_size}); use a world size that divides it or change it"
        )
    share = global_batch // world_size
    if grad_accum > 1:
        if share % grad_accum or share // grad_accum > max_micro:
            raise UserError(
                f"optim.grad_accum={grad_accum} does not fit optim.global_batch={global_batch} on {world_size} "
                f"ranks: {share} samples per rank need a micro-batch of {share / grad_accum:g} "
                f"(data.batch_size={max_micro} at most); leave optim.grad_accum=1 to derive it"
            )
        return share // grad_accum, grad_accum
    micro = next(m for m in range(min(max_micro, share), 0, -1) if share % m == 0)
    return micro, share // micro


def plan_batch(global_batch: int, batch_size: int, grad_accum: int, world_size: int, lr: float, lr_scaling: str):
    """The :class:`BatchPlan` of a config on ``world_size`` ranks."""
    if lr_scaling not in LR_SCALINGS:
        raise UserError(f"optim.lr_scaling={lr_scaling!r} is not allowed: must be one of {', '.join(LR_SCALINGS)}")
    if global_batch > 0:
        micro, accum = split_global_batch(int(global_batch), int(batch_size), int(grad_accum), int(world_size))
    else:
        micro, accum = int(batch_size), max(1, int(grad_accum))
    eff = lr * accum if lr_scaling == "accum" else lr
    return BatchPlan(micro * accum * world_size, micro, accum, int(world_size), float(eff), float(lr), lr_scaling)


def apply_batch_plan(cfg, world_size: int):
    """(a copy of the app config with ``data.batch_size`` / ``optim.grad_accum`` set to the plan, the plan).

    Works on a dataclass or an OmegaConf config. ``optim.lr`` stays the base LR; trainers use ``plan.lr``."""
    o = cfg.optim
    plan = plan_batch(o.global_batch, cfg.data.batch_size, o.grad_accum, world_size, o.lr, o.lr_scaling)
    if (cfg.data.batch_size, o.grad_accum) != (plan.micro_batch, plan.accum):  # the caller's config stays as given
        cfg = copy.deepcopy(cfg)
        cfg.data.batch_size, cfg.optim.grad_accum = plan.micro_batch, plan.accum
    return cfg, plan
