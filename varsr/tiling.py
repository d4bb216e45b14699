"""VARSR x4 super-resolution for LR images of any size and aspect ratio (issue 8; spec varsr.md 10).

Two paths, chosen per image by `restore_image` (`tile="auto"`: tiled when the x`scale` output is
larger than the model size on either side):

* direct (output fits in the model's S x S, S = 512 for d24): the LR is resized so its longer side
  is S (PIL bicubic, exactly the official step for square inputs), reflect-padded to S x S when it
  is not square (no squashing), generated in one go, cropped back and resized to scale x LR.
* tiled: the LR is bicubic-upscaled by exactly `scale`, padded (reflect, replicate when the pad is
  larger than the image) to a multiple of 16 px and at least S per side -- the aspect ratio is never
  touched, unlike upstream `test_tile.py` which stretched to multiples of 64 -- and cut into S x S
  (pn x pn token) tiles overlapping by a quarter tile (upstream: 8 of 32 tokens), the last row and
  column snapped to the border.  Each tile's latent f_hat (incl. the refiner residual) is
  generated, tiles of a row batched; the latents are blended with upstream's Gaussian window using
  weights normalised *before* accumulation (so a position covered by one tile keeps that tile's
  latent bit for bit; one tile == the direct path exactly), decoded with the GroupNorm-aware tiled
  decoder (`varsr.tiled_decode`) and cropped to exactly scale x LR.  Peak memory is a few
  image-sized buffers plus one tile batch and one decoder tile; the number of tiles only costs time.

`plan_tiles` computes the geometry and a memory/time estimate that is logged before any work, and
`check_limits` refuses, with one line naming `max_output_pixels`, outputs above the pixel limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.paths import ImageRejected  # a folder run skips and counts such an image

from .parallelize import unwrap as _core
from .sample import apply_color_fix, generate_fhat, resize_bicubic, sample_sr
from .tiled_decode import DEFAULT_HALO, decode_tiled, decoder_tiles, tile_bytes

MIN_LR_SIDE = 1  # any image works: smaller sides are padded up to the model size


def tiled_size(w: int, h: int, scale: int = 4, min_side: int = 512) -> tuple[int, int]:
    """Working canvas (W', H') in px for the tiled path: scale * side rounded up to 16, >= min_side."""
    return (max(math.ceil(w * scale / 16) * 16, min_side), max(math.ceil(h * scale / 16) * 16, min_side))


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


@dataclass
class TilePlan:
    """Geometry and cost estimate of one tiled restoration (all sizes (height, width))."""

    lr: tuple[int, int]
    scale: int
    out: tuple[int, int]  # exactly scale x LR
    work: tuple[int, int]  # padded canvas in px
    grid: tuple[int, int]  # latent tokens of the canvas
    tile: int  # tokens per tile side (the model's last scale)
    rows: list[int]
    cols: list[int]
    decoder_tile: int  # latent cells per decoder tile side; 0 = one-shot decode
    est_bytes: int = 0

    @property
    def n_tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def n_decoder_tiles(self) -> int:
        if not self.decoder_tile or max(self.grid) <= self.decoder_tile:
            return 1
        return len(decoder_tiles(*self.grid, self.decoder_tile))

    def describe(self) -> str:
        (h, w), (H, W), (gh, gw) = self.lr, self.out, self.grid
        return (
            f"{w}x{h} -> {W}x{H} ({W * H / 1e6:.1f} Mpx): {len(self.rows)}x{len(self.cols)} = {self.n_tiles} "
            f"latent tiles of {self.tile}x{self.tile} on a {gw}x{gh} grid, {self.n_decoder_tiles} decoder "
            f"tile(s); est. peak memory {self.est_bytes / 2**30:.2f} GiB; time ~ {self.n_tiles} x one "
            f"model-size image (progress per tile below)"
        )


def plan_tiles(
    h: int,
    w: int,
    model,
    vqvae,
    scale: int = 4,
    overlap: int | None = None,
    decoder_tile: int | None = None,
    tile_batch: int | None = 4,
) -> TilePlan:
    """Tile geometry for an h x w LR and a rough peak-memory estimate (fp32 buffers).

    decoder_tile None -> twice the model grid (64 cells = 1024 px for d24); 0 -> one-shot decode.
    tile_batch: tiles generated together (None = a whole row); each holds its own KV cache (about
    1 GB per tile for d24 in fp32), so this is what bounds the generation memory.
    """
    if min(h, w) < MIN_LR_SIDE:
        raise ImageRejected(f"input is {w}x{h} px; the minimum is {MIN_LR_SIDE}x{MIN_LR_SIDE}")
    core = _core(model)
    tile = core.patch_nums[-1]
    S = core.cfg.image_size
    px = S // tile  # pixels per latent token (16)
    overlap = tile // 4 if overlap is None else overlap
    W2, H2 = tiled_size(w, h, scale, S)
    gh, gw = H2 // px, W2 // px
    dtile = 2 * tile if decoder_tile is None else decoder_tile
    plan = TilePlan(
        (h, w),
        scale,
        (h * scale, w * scale),
        (H2, W2),
        (gh, gw),
        tile,
        tile_offsets(gh, tile, overlap),
        tile_offsets(gw, tile, overlap),
        dtile,
    )
    # image-sized fp32 buffers (LR canvas, decoded canvas, crop, colour-fix reference + temporaries)
    img = 3 * 4 * (5 * H2 * W2 + 3 * plan.out[0] * plan.out[1])
    cvae, dec = vqvae.quantize.cvae, vqvae.decoder
    lat = 4 * gh * gw * (3 * cvae + 4 * dec.conv_in.out_channels)  # blend buffers + decoder global stage
    batch = min(tile_batch or len(plan.cols), len(plan.cols))
    kv = 2 * core.cfg.depth * 2 * batch * (core.cfg.prefix_len + core.cfg.seq_len) * core.cfg.embed_dim * 4
    weights = 4 * (sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in vqvae.parameters()))
    one_shot = 8 * 4 * dec.conv_out.in_channels * H2 * W2  # ~8 live full-resolution activations
    dec_tile = tile_bytes(vqvae, dtile, DEFAULT_HALO) if plan.n_decoder_tiles > 1 else one_shot
    plan.est_bytes = img + lat + max(kv, dec_tile) + weights
    return plan


def check_limits(plan: TilePlan, max_output_pixels: int | None) -> None:
    """One-line refusal when the output is larger than the configured pixel limit."""
    H, W = plan.out
    if max_output_pixels and H * W > max_output_pixels:
        raise ImageRejected(
            f"output {W}x{H} = {H * W} px exceeds max_output_pixels={max_output_pixels} "
            f"({plan.n_tiles} tiles, est. {plan.est_bytes / 2**30:.1f} GiB); "
            f"set max_output_pixels={H * W} to run it anyway"
        )


def pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pad (B, C, h, w) at the bottom/right to `size`: reflect when possible, else replicate."""
    ph, pw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if ph <= 0 and pw <= 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, max(pw, 0), 0, max(ph, 0)), mode=mode)


@torch.no_grad()
def sample_tiled(
    model,
    vqvae,
    lr: torch.Tensor,
    scale: int = 4,
    cfg: float = 7.0,
    top_k: int = 1,
    top_p: float = 0.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    color_fix: str | None = "adain",
    fastvar=None,
    overlap: int | None = None,
    decoder_tile: int | None = None,
    tile_batch: int | None = 4,
    refiner_temperature: float = 1.0,
    decoder_stats: str = "exact",
    max_output_pixels: int | None = None,
    plan: TilePlan | None = None,
    log=None,
) -> torch.Tensor:
    """LR (1, 3, h, w) in [0, 1] -> SR (1, 3, scale*h, scale*w) in [0, 1] (label 0; upstream cfg 7)."""
    from common.logging import progress

    if lr.dim() == 3:
        lr = lr[None]
    if lr.shape[0] != 1:
        return torch.cat(
            [
                sample_tiled(
                    model,
                    vqvae,
                    x[None],
                    scale,
                    cfg,
                    top_k,
                    top_p,
                    temperature,
                    generator,
                    color_fix,
                    fastvar,
                    overlap,
                    decoder_tile,
                    tile_batch,
                    refiner_temperature,
                    decoder_stats,
                    max_output_pixels,
                    plan,
                    log,
                )
                for x in lr
            ]
        )
    h, w = lr.shape[-2:]
    plan = plan or plan_tiles(h, w, model, vqvae, scale, overlap, decoder_tile, tile_batch)
    check_limits(plan, max_output_pixels)
    if log is not None:
        log.info("%s", plan.describe())
    tile, px = plan.tile, plan.work[0] // plan.grid[0]
    ref = resize_bicubic(lr.float(), plan.out)  # exactly x scale: the model input and the colour reference
    canvas = pad_to(ref, plan.work)
    # normalised blend weights first: acc += f * (win / sum of wins) is exact where one tile covers
    win = gaussian_window(tile).to(lr.device)
    wsum = lr.new_zeros(plan.grid, dtype=torch.float32)
    for top in plan.rows:
        for left in plan.cols:
            wsum[top : top + tile, left : left + tile] += win
    acc = None
    step = tile_batch or len(plan.cols)
    bar = progress(total=plan.n_tiles, desc="varsr tiles", leave=False)
    for top in plan.rows:
        for j in range(0, len(plan.cols), step):  # tiles of a row are batched
            row = plan.cols[j : j + step]
            crops = torch.cat([canvas[..., top * px : (top + tile) * px, lf * px : (lf + tile) * px] for lf in row])
            f = generate_fhat(
                model,
                vqvae,
                crops * 2 - 1,
                cfg=cfg,
                top_k=top_k,
                top_p=top_p,
                temperature=temperature,
                generator=generator,
                fastvar=fastvar,
                refiner_temperature=refiner_temperature,
            )
            if acc is None:
                acc = torch.zeros(1, f.shape[1], *plan.grid, device=f.device, dtype=torch.float32)
            for k, lf in enumerate(row):
                wk = win / wsum[top : top + tile, lf : lf + tile]
                acc[..., top : top + tile, lf : lf + tile] += f[k : k + 1].float() * wk
            bar.update(len(row))
    bar.close()
    img = decode_tiled(vqvae, acc, plan.decoder_tile or max(plan.grid), stats=decoder_stats)
    out = (img.float()[..., : plan.out[0], : plan.out[1]] + 1) / 2
    return apply_color_fix(out, ref, color_fix).clamp_(0, 1)


def _fit_pad(img: np.ndarray, S: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 HWC -> (1, 3, S, S) in [0, 1]: longer side resized to S (PIL bicubic, the official step
    for square inputs), then reflect/replicate padded; also the content size (h', w')."""
    h, w = img.shape[:2]
    hh, ww = max(1, round(h * S / max(h, w))), max(1, round(w * S / max(h, w)))
    im = Image.fromarray(img).resize((ww, hh), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255
    return pad_to(x, (S, S)), (hh, ww)


def restore_image(model, vqvae, img: np.ndarray, cfg, device, generator=None, on_scale=None, log=None) -> torch.Tensor:
    """One LR image (uint8 HWC) -> SR (1, 3, scale*h, scale*w) in [0, 1] per a `SampleRunConfig`.

    `cfg.tile`: auto (tiled when the output exceeds the model size on a side) | on | off.
    """
    h, w = img.shape[:2]
    if min(h, w) < MIN_LR_SIDE or img.ndim != 3:
        raise ImageRejected(f"input is {w}x{h} px; the minimum is {MIN_LR_SIDE}x{MIN_LR_SIDE} RGB")
    S = _core(model).cfg.image_size
    H, W = h * cfg.scale, w * cfg.scale
    limit = getattr(cfg, "max_output_pixels", None)
    if cfg.tile == "on" or (cfg.tile == "auto" and max(H, W) > S):
        lr = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float().div(255).to(device)
        return sample_tiled(
            model,
            vqvae,
            lr,
            scale=cfg.scale,
            cfg=cfg.tile_cfg,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            temperature=cfg.temperature,
            generator=generator,
            color_fix=cfg.color_fix,
            fastvar=cfg.fastvar,
            overlap=cfg.tile_overlap,
            decoder_tile=cfg.decoder_tile,
            refiner_temperature=cfg.refiner_temperature,
            tile_batch=getattr(cfg, "tile_batch", 4),
            decoder_stats=getattr(cfg, "decoder_stats", "exact"),
            max_output_pixels=limit,
            log=log,
        )
    if limit and H * W > limit:
        raise ImageRejected(
            f"output {W}x{H} = {H * W} px exceeds max_output_pixels={limit}; "
            f"set max_output_pixels={H * W} to run it anyway"
        )
    x, (hh, ww) = _fit_pad(img, S)
    square = (hh, ww) == (S, S)
    out = sample_sr(
        model,
        vqvae,
        x.to(device),
        cfg=cfg.cfg,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        generator=generator,
        color_fix=cfg.color_fix if square else "none",
        fastvar=cfg.fastvar,
        temperature=cfg.temperature,
        refiner_temperature=cfg.refiner_temperature,
        on_scale=on_scale,
    )
    if not square:  # colour statistics of the content only, not of the padding
        ref = x[..., :hh, :ww].to(out.device)
        out = apply_color_fix(out[..., :hh, :ww], ref, cfg.color_fix).clamp_(0, 1)
    return resize_bicubic(out, (H, W))
