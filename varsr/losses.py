"""VARSR training objective (spec varsr.md section 5): CE over all scales + 2.0 x refiner loss.

The same loss trains the C2I pretraining model (spec 7; `lr=None`).  Its class-label dropout to
the null class (VAR's `cond_drop_rate`, the CFG training trick) is applied here, on the training
side, rather than inside `VARSR.forward`: the module then stays a deterministic function of its
inputs (teacher-forced == KV-cached logits, evaluation passes need no train/eval switch), and the
dropout draws come from the training loop's RNG, which the checkpoints save and restore.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model.vqvae import VQVAE
from .parallelize import unwrap


def drop_labels(
    label: torch.Tensor, null_class: int, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by `null_class` with probability p (p == 0 draws no random numbers)."""
    if p <= 0:
        return label
    drop = torch.rand(label.shape, device=label.device, generator=generator) < p
    return torch.where(drop, torch.full_like(label, null_class), label)


def varsr_loss(
    model,
    vqvae: VQVAE,
    hr: torch.Tensor,
    lr: torch.Tensor | None,
    label: torch.Tensor,
    diff_weight: float = 2.0,
    cond_drop_prob: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """hr, lr in [-1, 1] at the model size (lr already resized back; None for a C2I model); label Long(B).

    CE is averaged over all L positions and the batch (no smoothing, no per-scale weights).  The
    refiner target is relative to the argmax-predicted last-scale token and its condition is not
    detached, so the diffusion loss also trains the transformer (spec 4).  `model` may be wrapped
    (DDP / FSDP2); everything that touches its parameters runs inside `model(...)`.

    C2I: labels must be real classes (< num_classes - 1); each is dropped to the null class with
    probability `cond_drop_prob` (None -> the model config's value: 0.1 for C2I, 0 for SR).
    """
    mcfg = unwrap(model).cfg
    if mcfg.null_class is not None:
        _check_labels(label, mcfg)
        p = mcfg.label_drop_prob if cond_drop_prob is None else cond_drop_prob
        label = drop_labels(label, mcfg.null_class, p, generator)
    elif cond_drop_prob:
        raise ValueError("cond_drop_prob > 0 needs a null class; the SR model (lr_prefix=True) has none")
    targets = vqvae.encode_for_training(hr)
    codebook = vqvae.quantize.embedding.weight
    logits, _, diff = model(lr, label, targets.x_inputs, r_last=targets.r_last, codebook=codebook)
    V = logits.shape[-1]
    gt = targets.gt_idx
    ce_tok = F.cross_entropy(logits.reshape(-1, V), gt.reshape(-1), reduction="none").view_as(gt)
    ce = ce_tok.mean()
    loss = ce + diff_weight * diff
    with torch.no_grad():
        n_last = mcfg.patch_nums[-1] ** 2
        acc = (logits.argmax(-1) == gt).float()
        # Device tensors: the training loop reads them once per logging window (no sync per step).
        stats = {
            "loss": loss.detach(),
            "ce": ce.detach(),
            "diff": diff.detach(),
            "ce_tail": ce_tok[:, -n_last:].mean(),
            "acc": acc.mean() * 100,
            "acc_tail": acc[:, -n_last:].mean() * 100,
        }
        if mcfg.null_class is not None:
            stats["label_drop"] = (label == mcfg.null_class).float().mean()
    return loss, stats


def _check_labels(label: torch.Tensor, mcfg) -> None:
    """C2I labels must be real classes. On the CPU a one-line error; on CUDA an asynchronous device
    assert, because reading the labels back would stall the host every step."""
    if label.is_cuda:
        torch._assert_async(((label >= 0) & (label < mcfg.null_class)).all())
        return
    top = int(label.max())
    if top >= mcfg.null_class or int(label.min()) < 0:
        raise ValueError(
            f"C2I label {top} out of range: the model has {mcfg.null_class} real classes "
            f"(num_classes={mcfg.num_classes} includes the null class)"
        )
