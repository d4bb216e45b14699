"""Exponential moving average of model weights, shared by VARSR and PURE training (optional in both).

Neither official recipe uses an EMA. When enabled (`ema.enabled`), the average is what
validation and export use (`ema.use_for_eval`, default true); the raw weights keep training.

The average is a name -> fp32 tensor dict over the model's parameters, keyed by the names the
*unwrapped* model reports (`clean_param_name`), so it checkpoints like a state dict and exports
with the official names. Under FSDP2 the parameters are DTensor shards and so is the average:
each rank averages only its own shard (no communication per step); `state_dict(full=True)`
gathers it for a full-file checkpoint (a collective).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from common.config import PROBABILITY, at_least, checks

# Prefixes/infixes that wrappers insert into parameter names (DDP, torch.compile, activation
# checkpointing, FSDP1). FSDP2 keeps the original names.
_WRAPPER_TOKENS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def clean_param_name(name: str) -> str:
    """The parameter name as the unwrapped model would report it."""
    for tok in _WRAPPER_TOKENS:
        name = name.replace(tok, "")
    return name.removeprefix("module.")


@checks(decay=PROBABILITY, start_step=at_least(0))
@dataclass
class EMAConfig:
    """Exponential moving average of the trained weights (not in either official recipe)."""

    enabled: bool = False  # keep an fp32 average of every trainable parameter (one extra fp32 copy)
    decay: float = 0.9999  # per optimizer step
    start_step: int = 0  # copy the weights until this step, then start averaging
    use_for_eval: bool = True  # validation and export use the average (false: the raw trained weights)


def _is_dtensor(t) -> bool:
    return hasattr(t, "full_tensor") and hasattr(t, "device_mesh")


class EMA:
    """fp32 average of a model's trainable parameters, ``shadow = decay * shadow + (1 - decay) * p`` per step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, start_step: int = 0):
        self.decay, self.start_step = float(decay), int(start_step)
        self.shadow = {
            clean_param_name(n): p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Before start_step the average just tracks the weights (early weights are noise).
        d = 0.0 if step < self.start_step else self.decay
        cleaned = ((clean_param_name(n), p) for n, p in model.named_parameters())
        named = [(self.shadow[k], p.detach()) for k, p in cleaned if k in self.shadow]
        fp32 = [(s, p) for s, p in named if p.dtype == torch.float32]
        if fp32:  # one multi-tensor kernel per step instead of a launch per parameter (hundreds for a 7B)
            torch._foreach_lerp_([s for s, _ in fp32], [p for _, p in fp32], 1.0 - d)
        for s, p in named:  # low-precision weights (DeepSpeed bf16): one fp32 copy alive at a time
            if p.dtype != torch.float32:
                s.lerp_(p.float(), 1.0 - d)

    def state_dict(self, full: bool = False) -> dict:
        """`full=True` gathers DTensor shards into full tensors (collective: every rank calls it)."""
        shadow = {n: (t.full_tensor() if full and _is_dtensor(t) else t) for n, t in self.shadow.items()}
        return {"decay": self.decay, "start_step": self.start_step, "shadow": shadow}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Accepts full tensors or shards like ours; a full tensor is cut to this rank's shard."""
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        for n, t in state["shadow"].items():
            if n not in self.shadow:
                continue
            cur = self.shadow[n]
            if _is_dtensor(cur) and not _is_dtensor(t):
                from torch.distributed.tensor import distribute_tensor

                t = distribute_tensor(t.to(cur.device), cur.device_mesh, cur.placements)
            cur.copy_(t)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (e.g. a CPU copy for export)."""
        for n, p in model.named_parameters():
            n = clean_param_name(n)
            if n in self.shadow:
                p.copy_(self.shadow[n].to(p.dtype))

    @contextmanager
    def applied(self, model: nn.Module):
        """Temporarily put the averaged weights into ``model`` (validation / export of a wrapped or
        sharded model in place); the raw weights are restored on exit, bit for bit."""
        raw = {n: p.detach().clone() for n, p in model.named_parameters() if clean_param_name(n) in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in raw:
                        p.copy_(raw[n])


@contextmanager
def eval_weights(ema: EMA | None, model: nn.Module, use_ema: bool = True):
    """Context for validation/export: the EMA weights inside when `ema` exists and `use_ema`, else the raw ones."""
    if ema is None or not use_ema:
        yield model
        return
    with ema.applied(model):
        yield model
