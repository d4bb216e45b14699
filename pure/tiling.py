"""PURE at any size and aspect ratio: aspect-preserving fit and tiled restoration with feathering.

PURE's image block carries its own grid size (`<8804+h><8804+w>` in 32-px units), so the model
reads and writes non-square images; Lumina-mGPT trained it on aspect-ratio buckets of about
(resolution/32)^2 patches (49 sizes from 1024x256 to 256x1024 at 512).  So:

* Fit (`fit_to_bucket`): pick the bucket closest to the input's aspect ratio, resize the LQ to
  fit inside it without changing its aspect ratio (PIL bicubic, the README step; for a square
  input exactly the official resize to 512^2), pad the rest of the bucket (reflect, or replicate
  when the pad is larger than the image), restore, and crop the content box back.  Nothing is
  squashed; the padding is at most one patch row/column for most aspect ratios.
* Tiles (no published PURE code does this; our design): when `scale` x LQ is larger than a tile
  of `resolution` px, the LQ is cut into tiles of resolution/scale LQ px (128 for 512 and x4)
  overlapping by a quarter tile, the last row/column snapped to the border.  Every tile is
  restored by the fit path above (so its own colour fix ties it to its LQ), resized to exactly
  scale x its LQ size, and accumulated with separable linear feather weights that ramp over the
  overlap on interior edges only (weight 1 on the image border); the sum is divided by the
  summed weights.  Peak memory: the output and weight buffers plus one batch of tiles (the model's
  KV cache per tile is the same as for one 512 image); the tile count only costs time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.paths import ImageRejected  # a folder run skips and counts such an image
from pure.tokenizer.image import bucket_sizes, choose_bucket

MIN_SIDE = 1  # any image works: smaller inputs are resized up to the bucket


def fit_to_bucket(lq: np.ndarray, resolution: int, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 HWC -> ((3, bh, bw) in [0, 1] padded bucket, (hh, ww) content size at its top-left)."""
    h, w = lq.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageRejected(f"input is {w}x{h} px; the minimum is {MIN_SIDE}x{MIN_SIDE}")
    bw, bh = choose_bucket(w, h, bucket_sizes((resolution // patch) ** 2, patch))
    s = min(bw / w, bh / h)
    ww, hh = min(bw, max(1, round(w * s))), min(bh, max(1, round(h * s)))
    im = Image.fromarray(lq).resize((ww, hh), Image.BICUBIC) if (ww, hh) != (w, h) else Image.fromarray(lq)
    x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    ph, pw = bh - hh, bw - ww
    if ph or pw:
        mode = "reflect" if ph < hh and pw < ww else "replicate"
        x = F.pad(x[None], (0, pw, 0, ph), mode=mode)[0]
    return x, (hh, ww)


def offsets(n: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis (stride tile - overlap, last tile snapped to the border)."""
    if n <= tile:
        return [0]
    stride = max(1, tile - overlap)
    return [min(i * stride, n - tile) for i in range(math.ceil((n - tile) / stride) + 1)]


def feather(n: int, ramp: int, lo_edge: bool, hi_edge: bool) -> torch.Tensor:
    """1-D weights: linear ramp of `ramp` samples on interior edges (strictly positive), 1 elsewhere."""
    w = torch.ones(n)
    r = min(ramp, n)
    if r > 0:
        up = torch.arange(1, r + 1, dtype=torch.float32) / (r + 1)
        if lo_edge:
            w[:r] = torch.minimum(w[:r], up)
        if hi_edge:
            w[n - r :] = torch.minimum(w[n - r :], up.flip(0))
    return w


@dataclass
class PurePlan:
    """Where the tiles go (LQ px) and what it costs."""

    lq: tuple[int, int]  # (h, w)
    out: tuple[int, int]  # (H, W) = round(scale x LQ)
    tile: int  # LQ px per tile side (resolution / scale)
    rows: list[int]
    cols: list[int]
    overlap: int  # LQ px
    est_bytes: int = 0

    @property
    def n_tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    def describe(self) -> str:
        (h, w), (H, W) = self.lq, self.out
        return (
            f"{w}x{h} -> {W}x{H} ({W * H / 1e6:.2f} Mpx): {len(self.rows)}x{len(self.cols)} = {self.n_tiles} "
            f"tile(s) of {self.tile} LQ px, overlap {self.overlap}; est. peak memory "
            f"{self.est_bytes / 2**30:.2f} GiB; time ~ {self.n_tiles} x one native-size image"
        )


def plan(
    h: int,
    w: int,
    scale: float,
    resolution: int,
    overlap: int | None = None,
    kv_bytes_per_tile: int = 0,
    weight_bytes: int = 0,
) -> PurePlan:
    if min(h, w) < MIN_SIDE:
        raise ImageRejected(f"input is {w}x{h} px; the minimum is {MIN_SIDE}x{MIN_SIDE}")
    tile = max(1, round(resolution / scale))
    overlap = tile // 4 if overlap is None else overlap
    p = PurePlan(
        (h, w),
        (max(1, round(h * scale)), max(1, round(w * scale))),
        tile,
        offsets(h, tile, overlap),
        offsets(w, tile, overlap),
        overlap,
    )
    H, W = p.out
    p.est_bytes = 4 * (3 * H * W * 2 + H * W) + 4 * 3 * resolution * resolution * 8 + kv_bytes_per_tile + weight_bytes
    return p


def check_limit(p: PurePlan, max_output_pixels: int | None) -> None:
    H, W = p.out
    if max_output_pixels and H * W > max_output_pixels:
        raise ImageRejected(
            f"output {W}x{H} = {H * W} px exceeds max_output_pixels={max_output_pixels} "
            f"({p.n_tiles} tiles); set max_output_pixels={H * W} to run it anyway"
        )


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)


def restore_scaled(
    restorer,
    lq: np.ndarray,
    scale: float,
    generator=None,
    overlap: int | None = None,
    tile_batch: int = 1,
    max_output_pixels: int | None = None,
    log=None,
):
    """One LQ (uint8 HWC) -> RestoreResult whose image is exactly round(scale x LQ), tiled if needed.

    `restorer.restore_native` restores lists of crops; text fields come from the first tile and
    the token/forward counts are summed over tiles.
    """
    from common.logging import progress

    p = plan(
        *lq.shape[:2],
        scale,
        restorer.resolution,
        overlap,
        restorer.kv_bytes_per_image() * max(1, tile_batch),
        restorer.weight_bytes(),
    )
    check_limit(p, max_output_pixels)
    if p.n_tiles == 1:
        res = restorer.restore_native([lq], generator)[0]
        res.image = _resize(res.image, p.out)
        return res
    if log is not None:
        log.info("%s", p.describe())
    H, W = p.out
    out, wsum = torch.zeros(3, H, W), torch.zeros(1, H, W)
    boxes = [(t, lf) for t in p.rows for lf in p.cols]
    first, new_tokens, forwards, seconds, ok = None, 0, 0, 0.0, True
    bar = progress(total=len(boxes), desc="pure tiles", leave=False)
    for j in range(0, len(boxes), max(1, tile_batch)):
        chunk = boxes[j : j + max(1, tile_batch)]
        crops = [np.ascontiguousarray(lq[t : t + p.tile, lf : lf + p.tile]) for t, lf in chunk]
        for (t, lf), crop, res in zip(chunk, crops, restorer.restore_native(crops, generator)):
            # HR box of this tile: rounded edges of the scaled LQ box, so neighbours meet exactly
            y0, y1 = round(t * scale), round((t + crop.shape[0]) * scale)
            x0, x1 = round(lf * scale), round((lf + crop.shape[1]) * scale)
            if t + crop.shape[0] == lq.shape[0]:
                y1 = H
            if lf + crop.shape[1] == lq.shape[1]:
                x1 = W
            img = _resize(res.image.float().cpu(), (y1 - y0, x1 - x0))
            ramp = round(p.overlap * scale)
            wy = feather(y1 - y0, ramp, t > 0, y1 < H)
            wx = feather(x1 - x0, ramp, lf > 0, x1 < W)
            wgt = torch.outer(wy, wx)[None]
            out[:, y0:y1, x0:x1] += img * wgt
            wsum[:, y0:y1, x0:x1] += wgt
            first = first or res
            new_tokens, forwards, ok = new_tokens + res.new_tokens, forwards + res.forwards, ok and res.ok
            seconds += res.seconds
        bar.update(len(chunk))
    bar.close()
    first.image = (out / wsum).clamp_(0, 1)
    first.lq = _resize(torch.from_numpy(lq.copy()).permute(2, 0, 1).float() / 255, p.out)
    first.raw, first.ok, first.new_tokens, first.forwards, first.seconds = None, ok, new_tokens, forwards, seconds
    first.tiles = p.n_tiles
    return first
