"""PURE training objective: next-token cross-entropy (+ optional z-loss) of a ChameleonForCausalLM.

Official recipe (spec pure.md §5): CE over all 73,728 classes averaged over every supervised token
of the micro-batch (labels shifted by one: position t predicts label t+1), z-loss weight 0; the
z-loss, when weighted, averages logsumexp^2 over positions whose own label is supervised.
Statistics are device tensors (the loop reads them once per logging window).
`PureLoss` is the root module the training engines wrap (pure/parallelize.py), so FSDP2 and
DeepSpeed see the loss computation as the model's forward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pure.sequence import IGNORE, image_label_mask


def _ce_chunk(logits: torch.Tensor, target: torch.Tensor):
    lf = logits.float()
    lse = torch.logsumexp(lf, dim=-1)
    return lse - lf.gather(-1, target[:, None])[:, 0], lse


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(own, nxt): positions whose own label is supervised, and those that predict a supervised
    next label. Only `own | nxt` go through lm_head (also what MFU counts for the head)."""
    own = labels != IGNORE
    nxt = torch.zeros_like(own)
    nxt[:, :-1] = own[:, 1:]
    return own, nxt


class PureLoss(nn.Module):
    """Root module for training: next-token CE (+ optional z-loss) of the wrapped ChameleonForCausalLM.

    Only supervised positions go through lm_head (the -100 prompt half needs no logits), and the
    fp32 CE is computed in checkpointed chunks so at most `chunk` x V fp32 values are alive.
    """

    def __init__(self, lm: nn.Module, z_loss_weight: float = 0.0, chunk: int = 2048):
        super().__init__()
        self.lm = lm
        self.z_loss_weight = float(z_loss_weight)
        self.chunk = int(chunk)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids=None, attention_mask=None):
        h = self.lm.forward_hidden(input_ids, position_ids=position_ids, attention_mask=attention_mask)
        # CE: position t predicts label t+1 (shifted mask). z-loss (official training forward):
        # logsumexp^2 at every position whose *own* label is supervised (unshifted mask, so the
        # last position counts and the one before the first supervised label does not).
        own, nxt = supervised_positions(labels)
        nxt_img = torch.zeros_like(own)
        nxt_img[:, :-1] = image_label_mask(labels)[:, 1:]
        target = torch.zeros_like(labels)
        target[:, :-1] = labels[:, 1:].clamp_min(0)  # -100 -> 0 where no CE term is taken
        rows = own | nxt  # only these positions go through lm_head
        hs, tg, in_ce, in_z = h[rows], target[rows], nxt[rows], own[rows]
        is_img = nxt_img[rows]
        logits = self.lm.lm_head(hs)
        ces, lses = [], []
        for s in range(0, max(tg.numel(), 1), self.chunk):
            lg, t = logits[s : s + self.chunk], tg[s : s + self.chunk]
            if torch.is_grad_enabled() and t.numel():
                ce, lse = checkpoint(_ce_chunk, lg, t, use_reentrant=False)
            else:
                ce, lse = _ce_chunk(lg, t)
            ces.append(ce)
            lses.append(lse)
        ce, lse = torch.cat(ces), torch.cat(lses)
        ce = torch.where(in_ce, ce, torch.zeros_like(ce))
        n_ce, n_z = in_ce.sum().clamp_min(1), in_z.sum().clamp_min(1)  # device tensors: no host sync
        loss = ce.sum() / n_ce
        z = torch.where(in_z, lse.float() ** 2, torch.zeros_like(lse)).sum() / n_z
        if self.z_loss_weight:
            loss = loss + self.z_loss_weight * z
        if tg.numel() == 0:
            loss = loss + 0.0 * logits.sum()  # keep the graph connected for every rank's backward
        with torch.no_grad():
            img, txt = is_img & in_ce, ~is_img & in_ce
            n_img, n_txt = img.sum(), txt.sum()
            stats = {
                "ce": ce.sum() / n_ce,
                "z_loss": z.detach(),
                "ce_image": (ce * img).sum() / n_img.clamp_min(1),
                "ce_text": (ce * txt).sum() / n_txt.clamp_min(1),
                "n_image": n_img,
                "n_text": n_txt,
            }
        return loss, stats
