"""Shared VARSR fixtures."""

import torch

from varsr.model import build_models


def lively(size: str):
    """A tiny model with non-negligible branch gains, in eval mode.

    At init the AdaLN gammas are ~1e-5, so attention (and with it the KV cache, the mask, RoPE and
    pruning) barely touches the logits and errors there would hide; raising the gamma biases to 1
    makes every branch count.
    """
    torch.manual_seed(0)
    model, vqvae = build_models(size)
    with torch.no_grad():
        for blk in model.blocks:
            blk.ada_lin[-1].bias[: 2 * model.C].fill_(1.0)  # gamma_1, gamma_2
    return model.eval(), vqvae
