"""VARSR inference at the model size (512^2): LR -> SR image around the generation core.

The scale loop, CFG, refiner and the speed switches live in `varsr.generate` (re-exported here).

Spec varsr.md sections 6 and 9.  The negative class (label 1, "low quality") is the CFG branch;
its weight ramps linearly over scales (t = cfg * si / (K - 1)).  Token draws use a dedicated
generator (top-k 1, i.e. greedy, by default).  Larger images: `sample_tiled` (varsr.tiling).
Official quirks not reproduced (spec 12): no extra unguided last-scale draw, the refiner is
unguided only when t == 0, no hard-coded CUDA or 1024-token reshapes.  `scale_loop` is shared
with class-to-image sampling (varsr.sample_c2i).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# The generation core lives in varsr.generate; re-exported here for existing callers.
from .generate import GenerationTrace, cfg_ramp, generate_fhat, sample_tokens, scale_loop  # noqa: F401
from .parallelize import unwrap as _core  # bare module under DDP


def resize_bicubic(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Tensor bicubic resize (antialiased when shrinking), clamped to [0, 1]."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)


def apply_color_fix(x: torch.Tensor, ref: torch.Tensor, mode: str | None) -> torch.Tensor:
    """x, ref (B, 3, H, W) in [0, 1]; mode in {"adain", "wavelet", "none"/None}."""
    if mode in (None, "none"):
        return x
    from common.color_fix import adain_color_fix, wavelet_color_fix

    if mode == "adain":
        return adain_color_fix(x, ref)
    if mode == "wavelet":
        return wavelet_color_fix(x, ref)
    raise ValueError(f"color_fix must be adain, wavelet or none, got {mode!r}")


@torch.no_grad()
def sample_sr(
    model,
    vqvae,
    lr: torch.Tensor,
    cfg: float = 6.0,
    top_k: int = 1,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
    color_fix: str | None = "adain",
    fastvar=None,
    temperature: float = 1.0,
    refiner_temperature: float = 1.0,
    on_scale: Callable[[int, torch.Tensor], None] | None = None,
    dtype: str | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """LR (B, 3, H, W) in [0, 1] -> SR (B, 3, S, S) in [0, 1], S = model size (512).

    `generator` may be one per image; `dtype` ("bf16"/"fp16": autocast) and `compile` (per-scale
    compiled blocks) are the speed switches of varsr.generate.generate_fhat.

    The LR should already be resized to S (PIL bicubic for official parity, see
    varsr.evaluate); other sizes are resized here with torch bicubic.  The AdaIN colour fix
    uses that resized LR as reference (official default).
    """
    core = _core(model)
    S = core.cfg.image_size
    lr = resize_bicubic(lr.float(), (S, S))
    f_hat = generate_fhat(
        model,
        vqvae,
        lr * 2 - 1,
        cfg,
        top_k,
        top_p,
        temperature,
        generator,
        fastvar,
        refiner_temperature=refiner_temperature,
        on_scale=on_scale,
        dtype=dtype,
        compile=compile,
    )
    img = (vqvae.decode_fhat(f_hat).float() + 1) / 2
    return apply_color_fix(img, lr, color_fix).clamp_(0, 1)


def sample_tiled(model, vqvae, lr: torch.Tensor, **kwargs) -> torch.Tensor:
    """Latent-tiled x4 SR for LR of any size (see varsr.tiling.sample_tiled)."""
    from .tiling import sample_tiled as _tiled

    return _tiled(model, vqvae, lr, **kwargs)
