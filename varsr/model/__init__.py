"""VARSR modules: multi-scale VQVAE, transformer, RoPE and diffusion refiner (pure nn.Modules)."""

from __future__ import annotations

import torch

from .config import VARSRModelConfig, config_from_dict, model_config
from .transformer import VARSR
from .vqvae import VQVAE, TrainTargets

__all__ = ["VARSR", "VQVAE", "TrainTargets", "VARSRModelConfig", "model_config", "config_from_dict", "build_models"]


def build_models(cfg: VARSRModelConfig | str, device: torch.device | str | None = None) -> tuple[VARSR, VQVAE]:
    """Instantiate (VARSR, VQVAE) for a config or size name; `device="meta"` builds no storage.

    The VQVAE is returned frozen (eval, no grad): VARSR only ever uses it as a fixed tokenizer.
    """
    if isinstance(cfg, str):
        cfg = model_config(cfg)
    with torch.device(device if device is not None else "cpu"):
        model, vqvae = VARSR(cfg), VQVAE(cfg)
    vqvae.eval().requires_grad_(False)
    return model, vqvae
