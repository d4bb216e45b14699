"""PURE training objective: next-token cross-entropy (+ optional z-loss) of a ChameleonForCausalLM.

Official recipe (spec pure.md §5): CE over all 73,728 classes averaged over every supervised token
of the micro-batch (labels shifted by one: position t predicts label t+1), z-loss weight 0.
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
        target = labels[:, 1:]
        sel = target != IGNORE  # shifted mask: position t predicts label t+1 (z-loss uses it too)
        hs, tg = h[:, :-1][sel], target[sel]
        is_img = image_label_mask(labels)[:, 1:][sel]
        logits = self.lm.lm_head(hs)
        ces, lses = [], []
        for s in range(0, max(tg.numel(), 1), self.chunk):
            lg, t = logits[s:s + self.chunk], tg[s:s + self.chunk]
            if torch.is_grad_enabled() and t.numel():
                ce, lse = checkpoint(_ce_chunk, lg, t, use_reentrant=False)
            else:
                ce, lse = _ce_chunk(lg, t)
            ces.append(ce)
            lses.append(lse)
        ce, lse = torch.cat(ces), torch.cat(lses)
        n = max(tg.numel(), 1)
        loss = ce.sum() / n
        z = (lse.float() ** 2).sum() / n
        if self.z_loss_weight:
            loss = loss + self.z_loss_weight * z
        if tg.numel() == 0:
            loss = loss + 0.0 * logits.sum()  # keep the graph connected for every rank's backward
        with torch.no_grad():
            n_img, n_txt = int(is_img.sum()), int((~is_img).sum())
            stats = {
                "ce": ce.sum() / n, "z_loss": z.detach(),
                "ce_image": ce[is_img].sum() / max(n_img, 1), "ce_text": ce[~is_img].sum() / max(n_txt, 1),
                "n_image": n_img, "n_text": n_txt,
            }
        return loss, stats
