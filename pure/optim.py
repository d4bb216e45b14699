"""Optimizer, learning-rate schedule and FLOP count of PURE training.

Official recipe (PURE `scripts/train.sh`, spec pure.md §6): AdamW (0.9, 0.95), eps 1e-8, weight
decay 0.1 on all parameters, lr 4e-4 with a 0.5-epoch linear warm-up from 0 then a half-cosine
to 0, updated every iteration; grad clip 4.0. The loop sets the lr each step (`lr_at`), so no
scheduler state exists and resuming needs only the step counter.
"""

from __future__ import annotations

import math

import torch


def make_optimizer(params, optim_cfg) -> torch.optim.Optimizer:
    """AdamW with weight decay on all parameters (official PURE: no exclusion of norms/embeddings).

    Fused kernel per `optim.fused` (None = when every parameter is on CUDA; common.parallel)."""
    from common.parallel import fused_adamw

    params = list(params)
    fused = fused_adamw(getattr(optim_cfg, "fused", None), params)
    return torch.optim.AdamW(
        params,
        lr=optim_cfg.lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
        fused=fused or None,
    )


def lr_at(step: int, total: int, warmup: int, peak: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to `peak` over `warmup` steps, then half-cosine to `min_lr` at `total`."""
    if warmup > 0 and step < warmup:
        return peak * step / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


def flops_per_token(model_cfg, seq_len: int, head_fraction: float = 1.0) -> float:
    """Training FLOPs per token: 6N for the matmul weights (embedding lookup excluded) plus the
    attention score/value matmuls 12*L*C*T (PaLM appendix B). lm_head counts only for the
    `head_fraction` of positions that go through it (PureLoss skips unsupervised prompt positions:
    `pure.losses.supervised_positions`), so MFU is not inflated by logits never computed."""
    c, L = model_cfg.hidden_size, model_cfg.num_hidden_layers
    kv = model_cfg.num_key_value_heads * (c // model_cfg.num_attention_heads)
    per_layer = 2 * c * c + 2 * c * kv + 3 * c * model_cfg.intermediate_size
    n = L * per_layer + head_fraction * model_cfg.vocab_size * c
    return 6.0 * n + 12.0 * L * c * seq_len
