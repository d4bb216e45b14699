"""VARSR training objective (spec varsr.md section 5): CE over all scales + 2.0 x refiner loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .model.vqvae import VQVAE
from .parallelize import unwrap


def varsr_loss(model, vqvae: VQVAE, hr: torch.Tensor, lr: torch.Tensor, label: torch.Tensor,
               diff_weight: float = 2.0) -> tuple[torch.Tensor, dict[str, float]]:
    """hr, lr in [-1, 1] at the model size (lr already resized back); label Long(B).

    CE is averaged over all L positions and the batch (no smoothing, no per-scale weights).  The
    refiner target is relative to the argmax-predicted last-scale token and its condition is not
    detached, so the diffusion loss also trains the transformer (spec 4).  `model` may be wrapped
    (DDP / FSDP2); everything that touches its parameters runs inside `model(...)`.
    """
    targets = vqvae.encode_for_training(hr)
    codebook = vqvae.quantize.embedding.weight
    logits, _, diff = model(lr, label, targets.x_inputs, r_last=targets.r_last, codebook=codebook)
    V = logits.shape[-1]
    gt = targets.gt_idx
    ce_tok = F.cross_entropy(logits.reshape(-1, V), gt.reshape(-1), reduction="none").view_as(gt)
    ce = ce_tok.mean()
    loss = ce + diff_weight * diff
    with torch.no_grad():
        n_last = unwrap(model).patch_nums[-1] ** 2
        acc = (logits.argmax(-1) == gt).float()
        stats = {"loss": loss.item(), "ce": ce.item(), "diff": diff.item(),
                 "ce_tail": ce_tok[:, -n_last:].mean().item(), "acc": acc.mean().item() * 100,
                 "acc_tail": acc[:, -n_last:].mean().item() * 100}
    return loss, stats
