"""Exponential moving average of model weights (optional; the official recipe has none).

Kept as a name -> tensor dict over the *unwrapped* model so it checkpoints like a state dict and
exports with the official names. Not supported under FSDP2 (sharded parameters); the trainer
refuses that combination with a one-line error.
"""
from __future__ import annotations

import torch
from torch import nn

from varsr.optim import clean_param_name


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, start_step: int = 0):
        self.decay, self.start_step = float(decay), int(start_step)
        self.shadow = {clean_param_name(n): p.detach().clone().float()
                       for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Before start_step the average just tracks the weights (early weights are noise).
        d = 0.0 if step < self.start_step else self.decay
        for n, p in model.named_parameters():
            n = clean_param_name(n)
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - d)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "start_step": self.start_step, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        for n, t in state["shadow"].items():
            if n in self.shadow:
                self.shadow[n].copy_(t)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (e.g. a CPU copy for export)."""
        for n, p in model.named_parameters():
            n = clean_param_name(n)
            if n in self.shadow:
                p.copy_(self.shadow[n].to(p.dtype))
