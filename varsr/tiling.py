"""Tiled x4 inference for LR images of any size (spec varsr.md section 10, upstream `test_tile.py`).

The LR is bicubic-resized to a multiple of 64 px (>= 512) and cut into 32x32-token tiles
(512 px) with an 8-token overlap; each tile is generated independently (latent f_hat incl. the
refiner residual), the latents are blended with a separable Gaussian window and decoded once
(optionally with decoder tiling for very large outputs).  The tile arithmetic is validated for
every size >= 512 px (upstream issue #27: assertion on custom sizes).
"""
from __future__ import annotations

import math

import torch

from .sample import _core, apply_color_fix, generate_fhat, resize_bicubic


def tiled_size(w: int, h: int, scale: int = 4, min_side: int = 512) -> tuple[int, int]:
    """Working (W', H') in px: ceil(side / 16) * 16 * scale, at least min_side."""
    return (max(math.ceil(w / 16) * 16 * scale, min_side), max(math.ceil(h / 16) * 16 * scale, min_side))


def tile_offsets(n_tokens: int, tile: int = 32, overlap: int = 8) -> list[int]:
    """Tile start offsets along one axis: stride tile - overlap, last tile snapped to the border."""
    if n_tokens < tile:
        raise ValueError(f"latent side {n_tokens} is smaller than the tile ({tile} tokens)")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, {tile}), got {overlap}")
    stride = tile - overlap
    n = math.ceil((n_tokens - tile) / stride) + 1
    return [min(i * stride, n_tokens - tile) for i in range(n)]


def gaussian_window(tile: int = 32, var: float = 0.01) -> torch.Tensor:
    """MultiDiffusion weights: row centre tile/2, column centre (tile-1)/2 (as upstream)."""
    r = torch.arange(tile, dtype=torch.float64)
    wr = torch.exp(-((r - tile / 2) ** 2) / (tile * tile) / (2 * var))
    wc = torch.exp(-((r - (tile - 1) / 2) ** 2) / (tile * tile) / (2 * var))
    return torch.outer(wr, wc).float()


def _ramp(n: int, edge: int, device) -> torch.Tensor:
    """Blend weights: linear ramps of length `edge` at both ends (strictly positive)."""
    r = torch.ones(n, device=device)
    if edge > 0:
        r[:edge] = torch.linspace(1 / edge, 1, edge, device=device)
        r[-edge:] = torch.linspace(1, 1 / edge, edge, device=device)
    return r


@torch.no_grad()
def decode_tiled(vqvae, f_hat: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
    """Decode a large latent in overlapping tiles blended with linear ramps -> [-1, 1].

    Approximate: GroupNorm statistics are per tile, which the ramps hide in practice; use it only
    when a one-shot decode does not fit in memory.
    """
    B, _, H, W = f_hat.shape
    if H <= tile and W <= tile:
        return vqvae.decode_fhat(f_hat)
    s = 16  # decoder up-sampling factor
    out = f_hat.new_zeros(B, 3, H * s, W * s)
    wsum = f_hat.new_zeros(1, 1, H * s, W * s)
    th, tw = min(tile, H), min(tile, W)
    w = torch.outer(_ramp(th * s, overlap * s if th < H else 0, f_hat.device),
                    _ramp(tw * s, overlap * s if tw < W else 0, f_hat.device))
    for top in tile_offsets(H, th, overlap if th < H else 0):
        for left in tile_offsets(W, tw, overlap if tw < W else 0):
            img = vqvae.decode_fhat(f_hat[..., top:top + th, left:left + tw])
            out[..., top * s:(top + th) * s, left * s:(left + tw) * s] += img * w
            wsum[..., top * s:(top + th) * s, left * s:(left + tw) * s] += w
    return out / wsum


@torch.no_grad()
def sample_tiled(model, vqvae, lr: torch.Tensor, scale: int = 4, cfg: float = 7.0, top_k: int = 1,
                 top_p: float = 0.0, temperature: float = 1.0, generator: torch.Generator | None = None,
                 color_fix: str | None = "adain", fastvar=None, overlap: int | None = None,
                 decoder_tile: int | None = None, tile_batch: int | None = None) -> torch.Tensor:
    """LR (1, 3, h, w) in [0, 1] -> SR (1, 3, scale*h, scale*w) in [0, 1] (label 0, cfg 7).

    overlap defaults to a quarter tile (8 tokens for 32-token tiles, the upstream setting).
    """
    if lr.dim() == 3:
        lr = lr[None]
    if lr.shape[0] != 1:
        return torch.cat([sample_tiled(model, vqvae, x[None], scale, cfg, top_k, top_p, temperature,
                                       generator, color_fix, fastvar, overlap, decoder_tile, tile_batch)
                          for x in lr])
    core = _core(model)
    tile = core.patch_nums[-1]
    overlap = tile // 4 if overlap is None else overlap
    px = core.cfg.image_size // tile  # pixels per latent token (16)
    h, w = lr.shape[-2:]
    W2, H2 = tiled_size(w, h, scale, core.cfg.image_size)
    lr_up = resize_bicubic(lr.float(), (H2, W2))
    gh, gw = H2 // px, W2 // px
    acc = lr.new_zeros(1, vqvae.quantize.cvae, gh, gw, dtype=torch.float32)
    wsum = lr.new_zeros(1, 1, gh, gw, dtype=torch.float32)
    win = gaussian_window(tile).to(lr.device)
    lefts = tile_offsets(gw, tile, overlap)
    step = tile_batch or len(lefts)
    for top in tile_offsets(gh, tile, overlap):
        for j in range(0, len(lefts), step):  # tiles of a row are batched
            row = lefts[j:j + step]
            crops = torch.cat([lr_up[..., top * px:(top + tile) * px, lf * px:(lf + tile) * px] for lf in row])
            f = generate_fhat(model, vqvae, crops * 2 - 1, cfg, top_k, top_p, temperature, generator, fastvar)
            for k, lf in enumerate(row):
                acc[..., top:top + tile, lf:lf + tile] += win * f[k:k + 1].float()
                wsum[..., top:top + tile, lf:lf + tile] += win
    f_full = acc / wsum
    img = decode_tiled(vqvae, f_full, decoder_tile) if decoder_tile else vqvae.decode_fhat(f_full)
    out = resize_bicubic((img.float() + 1) / 2, (h * scale, w * scale))
    ref = resize_bicubic(lr.float(), (h * scale, w * scale))
    return apply_color_fix(out, ref, color_fix).clamp_(0, 1)
