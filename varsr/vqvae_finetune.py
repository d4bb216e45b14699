"""Fine-tuning VARSR's multi-scale VQVAE on a user's domain (spec varsr.md 13, issues #8/#13).

VARSR's own VQVAE training code was never released; this follows VAR's tokenizer recipe
(reconstruction + straight-through residual quantisation, commitment beta = 0.25, codebook
trained through the loss, no EMA) with the last scale *without* phi as in spec 2.3, so the
tokens stay those VARSR predicts. Perceptual/GAN terms of VAR's recipe are not reproduced
(LPIPS is an option of the common loop). The loop itself is ``common.vq_finetune``.

The result is written in the official layout ({'trainer': {'vae_local': state_dict}}), which
`varsr.official.load_official_vqvae` reads strictly, so it drops in for VQVAE.pth.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from common.checkpoint import atomic_save, save_safetensors_atomic
from varsr.model import VQVAE, model_config
from varsr.official import VAE_KEY, load_official_vqvae

COMMIT_BETA = 0.25  # VAR's VectorQuantizer2 default


def vqvae_step(model: VQVAE, hr: torch.Tensor, beta: float = COMMIT_BETA):
    """``step_fn`` for ``common.vq_finetune.finetune``: hr in [-1, 1] -> (recon, {commit, codebook})."""
    return model.forward_train(hr, beta)


def build_vqvae(size: str = "tiny", init: str | None = None) -> VQVAE:
    """A trainable VQVAE of ``size`` ("tiny", or "full"/"d24"/...: all full sizes share VQVAE.pth's
    shape), initialised from an official-layout file when ``init`` is given."""
    cfg = model_config("d24" if size == "full" else size)
    vqvae = VQVAE(cfg)
    if init:
        load_official_vqvae(init, vqvae)
    return vqvae.train().requires_grad_(True)


def crop_for(size: str = "tiny") -> int:
    """Image side the quantizer's last scale needs (16 * patch_nums[-1]): 96 tiny, 512 full."""
    return model_config("d24" if size == "full" else size).patch_nums[-1] * 16


def export_vqvae(vqvae: VQVAE, path) -> Path:
    """Write ``vqvae`` alone in the official trainer layout (``.safetensors``: '/'-flattened)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in vqvae.state_dict().items()}
    if str(path).endswith(".safetensors"):
        prefix = "/".join(VAE_KEY) + "/"
        return save_safetensors_atomic(
            {prefix + k: v for k, v in sd.items()}, path, metadata={"format": "varsr-official"}
        )
    return atomic_save({VAE_KEY[0]: {VAE_KEY[1]: sd}}, path)


def step_fn(beta: float = COMMIT_BETA):
    return partial(vqvae_step, beta=beta)
