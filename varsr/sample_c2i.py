"""Class-to-image sampling for the C2I pretraining model (`ImgVAR_RoPE`, spec varsr.md sections 6-7).

Same KV-cached scale loop as SR (`varsr.sample.scale_loop`); only the prefix and the guidance
differ: the unconditional CFG branch is the null class (index num_classes - 1, the class that
label dropout trains), and its weight ramps quadratically, t = cfg * (si / (K - 1))^2
(test_C2I.py defaults: cfg 4.0, top_k 20, top_p 0.75).  The refiner is guided with the last
scale's t (= cfg), exactly as in SR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .parallelize import for_sampling
from .sample import _core, cfg_ramp, scale_loop

C2I_RAMP_POWER = 2.0


def _labels(label: torch.Tensor | Sequence[int] | int, device) -> torch.Tensor:
    if isinstance(label, int):
        label = [label]
    return torch.as_tensor(label, dtype=torch.long, device=device).reshape(-1)


@torch.no_grad()
def generate_c2i_fhat(
    model,
    vqvae,
    label,
    cfg: float = 4.0,
    top_k: int = 20,
    top_p: float = 0.75,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    fastvar=None,
    refine: bool = True,
    refiner_temperature: float = 1.0,
    on_scale: Callable[[int, torch.Tensor], None] | None = None,
    return_logits: bool = False,
):
    """Class labels (B,) -> accumulated latent f_hat (B, Cvae, G, G) (+ guided per-scale logits)."""
    core = _core(model)
    if core.cfg.lr_prefix:
        raise ValueError("generate_c2i_fhat needs a C2I model (lr_prefix=False); use varsr.sample.sample_sr")
    null = core.cfg.null_class
    device = core.lvl_1L.device  # a buffer: on the compute device even where FSDP2 offloads parameters
    labels = _labels(label, device)
    if int(labels.max()) > null or int(labels.min()) < 0:  # the null class itself is allowed (unconditional)
        raise ValueError(f"class label out of range [0, {null}] (null class = {null})")
    B, K = labels.shape[0], len(core.patch_nums)
    doubled = cfg != 0  # cfg 0: plain conditional sampling, no null branch
    if doubled:
        labels = torch.cat([labels, torch.full_like(labels, null)])
    ramp = [cfg_ramp(cfg, si, K, C2I_RAMP_POWER) for si in range(K)] if doubled else None
    with for_sampling(model) as core:  # FSDP2: parameters gathered (every rank samples)
        x, cond = core.prefix(None, labels)
        return scale_loop(
            core,
            vqvae,
            x,
            cond,
            B,
            ramp,
            top_k,
            top_p,
            temperature,
            generator,
            fastvar,
            refine,
            refiner_temperature,
            on_scale,
            return_logits,
        )


@torch.no_grad()
def sample_c2i(
    model,
    vqvae,
    label,
    cfg: float = 4.0,
    top_k: int = 20,
    top_p: float = 0.75,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    refiner_temperature: float = 1.0,
    fastvar=None,
) -> torch.Tensor:
    """Class labels (int, list or Long(B)) -> images (B, 3, S, S) in [0, 1], S = model size."""
    f_hat = generate_c2i_fhat(
        model, vqvae, label, cfg, top_k, top_p, temperature, generator, fastvar, refiner_temperature=refiner_temperature
    )
    return ((vqvae.decode_fhat(f_hat).float() + 1) / 2).clamp_(0, 1)
