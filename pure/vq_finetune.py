"""Fine-tuning PURE's LlamaGen VQ-8 tokenizer on a user's domain.

LlamaGen's recipe for the quantiser part: l2-normalised codebook lookup, straight-through
estimator, commitment 0.25 * ||z - sg(z_q)||^2 + codebook ||z_q - sg(z)||^2 (no EMA, entropy
loss off as in its default config). Its perceptual/GAN terms are not reproduced (LPIPS is an
option of the common loop, ``common.vq_finetune``). Note that PURE's Chameleon was trained on
the released codes: a fine-tuned VQ changes what every token means, so the LLM would need
fine-tuning on re-tokenized data too.

The result is saved as ``{'model': state_dict}``, the layout of LlamaGen's ``vq_ds8_c2i.pt``,
which `pure.official.load_llamagen_vq` reads strictly.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from common.checkpoint import atomic_save
from pure.model.vq import VQModel, vq_config
from pure.official import load_llamagen_vq

COMMIT_BETA = 0.25  # LlamaGen's VectorQuantizer default


def vq_step(model: VQModel, hr: torch.Tensor, beta: float = COMMIT_BETA):
    """``step_fn`` for ``common.vq_finetune.finetune``: hr in [-1, 1] -> (recon, {commit, codebook})."""
    return model.forward_train(hr, beta)


def build_vq(size: str = "tiny", init: str | None = None) -> VQModel:
    """A trainable VQ of ``size`` ("tiny", or "full"/"ds8" = the released VQ-8), initialised
    from a LlamaGen-layout file when ``init`` is given."""
    vq = VQModel(vq_config("ds8" if size == "full" else size))
    if init:
        load_llamagen_vq(vq, init)
    return vq.train().requires_grad_(True)


def export_vq(vq: VQModel, path) -> Path:
    """Write ``{'model': state_dict}`` atomically (loadable with weights_only=True)."""
    return atomic_save({"model": {k: v.detach().cpu().contiguous() for k, v in vq.state_dict().items()}}, path)


def step_fn(beta: float = COMMIT_BETA):
    return partial(vq_step, beta=beta)
