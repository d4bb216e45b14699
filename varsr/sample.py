"""VARSR inference at the model size (512^2): scale loop with KV cache, image-based CFG, refiner.

Spec varsr.md sections 6 and 9.  The negative class (label 1, "low quality") is the CFG branch;
its weight ramps linearly over scales (t = cfg * si / (K - 1)).  Token draws use a dedicated
generator (top-k 1, i.e. greedy, by default).  Larger images: `sample_tiled` (varsr.tiling).
Official quirks not reproduced (spec 12): no extra unguided last-scale draw, the refiner is
unguided only when t == 0, no hard-coded CUDA or 1024-token reshapes.  `scale_loop` is shared
with class-to-image sampling (varsr.sample_c2i).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .fastvar import make_state
from .parallelize import unwrap as _core  # bare module under DDP


def cfg_ramp(cfg: float, si: int, num_scales: int, power: float = 1.0) -> float:
    """Guidance weight at scale si: 0 at the 1x1 map, cfg at the last scale.

    power 1 (linear) is the SR schedule; the C2I model uses power 2 (spec 6).
    """
    if power == 1:  # keep the SR arithmetic unchanged (bit-identical to earlier outputs)
        return cfg * si / (num_scales - 1)
    return cfg * (si / (num_scales - 1)) ** power


def sample_tokens(logits: torch.Tensor, top_k: int = 1, top_p: float = 0.0, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """VAR's top-k / top-p sampling on (B, l, V) logits -> Long (B, l).

    top_k keeps every logit >= the k-th largest (ties keep all maxima); top_p drops the smallest
    tokens whose cumulative probability stays <= 1 - top_p.  temperature <= 0 means argmax.
    """
    B, l, V = logits.shape
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < V:
        thresh = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < thresh, float("-inf"))
    if 0 < top_p < 1:
        s_logits, s_idx = logits.sort(dim=-1, descending=False)
        drop = s_logits.softmax(-1).cumsum(-1) <= (1 - top_p)
        drop[..., -1:] = False
        logits = logits.masked_fill(drop.scatter(-1, s_idx, drop), float("-inf"))
    probs = logits.softmax(-1).view(-1, V)
    return torch.multinomial(probs, 1, replacement=True, generator=generator).view(B, l)


@torch.no_grad()
def generate_fhat(model, vqvae, lr: torch.Tensor, cfg: float = 6.0, top_k: int = 1, top_p: float = 0.0,
                  temperature: float = 1.0, generator: torch.Generator | None = None, fastvar=None,
                  label: int = 0, refine: bool = True, refiner_temperature: float = 1.0,
                  on_scale: Callable[[int, torch.Tensor], None] | None = None,
                  return_logits: bool = False):
    """LR in [-1, 1] at the model size -> accumulated latent f_hat (B, Cvae, G, G).

    With return_logits, also the guided per-scale logits [(B, pn^2, V)] (used by the KV-cache
    consistency test).  `on_scale(si, f_hat)` is called after every scale (intermediate export).
    """
    core = _core(model)
    B, K = lr.shape[0], len(core.patch_nums)
    doubled = cfg != 0  # cfg 0: the negative branch would get weight 0 at every scale
    labels = torch.full((B,), label, dtype=torch.long, device=lr.device)
    if doubled:  # negative class = num_classes - 1 ("low quality"); shares LR prefix and tokens
        labels = torch.cat([labels, torch.full_like(labels, core.cfg.num_classes - 1)])
        lr = torch.cat([lr, lr])
    x, cond = core.prefix(lr, labels)
    return scale_loop(core, vqvae, x, cond, B, [cfg_ramp(cfg, si, K) for si in range(K)] if doubled else None,
                      top_k, top_p, temperature, generator, fastvar, refine, refiner_temperature, on_scale,
                      return_logits)


def scale_loop(core, vqvae, x: torch.Tensor, cond: torch.Tensor, B: int, ramp: list[float] | None,
               top_k: int, top_p: float, temperature: float, generator: torch.Generator | None, fastvar,
               refine: bool, refiner_temperature: float, on_scale, return_logits: bool):
    """KV-cached next-scale loop shared by SR and C2I sampling.

    `x`, `cond`: prefix tokens and AdaLN condition from `core.prefix`, already doubled
    ([cond; guidance branch], 2B rows) when `ramp` (guidance weight t per scale) is given;
    logits = (1 + t) l_cond - t l_branch.  The refiner is guided with the last scale's t.
    """
    pns, K = core.patch_nums, len(core.patch_nums)
    quant = vqvae.quantize
    doubled = ramp is not None
    caches, state = core.new_cache(), make_state(fastvar, pns)
    G = pns[-1]
    f_hat = torch.zeros(B, quant.cvae, G, G, device=x.device, dtype=quant.embedding.weight.dtype)
    all_logits, t, h = [], 0.0, None
    for si in range(K):
        if state is not None:
            state.set_step(si)
        h = core.run_blocks(x, cond, core.rope_rows(si, x.device), None, caches, state)
        logits = core.logits(h[:, -1:] if si == 0 else h, cond)  # step 0: read the SOS output
        if doubled:
            t = ramp[si]
            logits = (1 + t) * logits[:B] - t * logits[B:]
        if return_logits:
            all_logits.append(logits)
        idx = sample_tokens(logits, top_k, top_p, temperature, generator)
        f_hat, nxt = quant.accumulate(si, idx, f_hat)
        if on_scale is not None:
            on_scale(si, f_hat)
        if nxt is not None:
            x = core.embed_scale(nxt, si + 1)
            x = torch.cat([x, x]) if doubled else x
    if refine:
        e = quant.embedding(idx)  # the guided last-scale tokens condition both CFG halves
        e = torch.cat([e, e]) if doubled else e
        z = core.refiner_condition(h, e).float().flatten(0, 1)  # one row per token: [cond; neg]
        res = core.diffloss.sample(z, cfg_t=t, guided=doubled and t != 0, temperature=refiner_temperature,
                                   generator=generator)[: B * G * G]
        res = (res * core.cfg.vae_scale).view(B, G * G, -1).transpose(1, 2).reshape(B, -1, G, G)
        f_hat = f_hat + res.to(f_hat.dtype)
    return (f_hat, all_logits) if return_logits else f_hat


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
def sample_sr(model, vqvae, lr: torch.Tensor, cfg: float = 6.0, top_k: int = 1, top_p: float = 0.0,
              generator: torch.Generator | None = None, color_fix: str | None = "adain", fastvar=None,
              temperature: float = 1.0, refiner_temperature: float = 1.0,
              on_scale: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """LR (B, 3, H, W) in [0, 1] -> SR (B, 3, S, S) in [0, 1], S = model size (512).

    The LR should already be resized to S (PIL bicubic for official parity, see
    varsr.evaluate); other sizes are resized here with torch bicubic.  The AdaIN colour fix
    uses that resized LR as reference (official default).
    """
    core = _core(model)
    S = core.cfg.image_size
    lr = resize_bicubic(lr.float(), (S, S))
    f_hat = generate_fhat(model, vqvae, lr * 2 - 1, cfg, top_k, top_p, temperature, generator, fastvar,
                          refiner_temperature=refiner_temperature, on_scale=on_scale)
    img = (vqvae.decode_fhat(f_hat).float() + 1) / 2
    return apply_color_fix(img, lr, color_fix).clamp_(0, 1)


def sample_tiled(model, vqvae, lr: torch.Tensor, **kwargs) -> torch.Tensor:
    """Latent-tiled x4 SR for LR of any size (see varsr.tiling.sample_tiled)."""
    from .tiling import sample_tiled as _tiled
    return _tiled(model, vqvae, lr, **kwargs)
