"""Real-ESRGAN x4 inference on any image size in bounded memory: halo tiles, cropped and pasted.

``RRDBNet`` is fully convolutional, so the output is exactly ``4 x`` the input on each side, whatever
its size or aspect ratio (nothing is resized, padded or squashed), down to 1 x 1 px. Large inputs are
cut into a grid of ``tile`` x ``tile`` LR cores; each core is run with ``tile_pad`` extra LR pixels of
real image context on every side (fewer at the image border, where the network's own zero padding is
exactly what the one-shot run sees) and only the core's ``4 x`` output is kept. No blending is
needed: every output pixel comes from exactly one tile. Memory is one output buffer plus one tile's
activations (the tile count only costs time); a progress bar advances per tile.

Accuracy: an output pixel differs from the one-shot result only through context beyond ``tile_pad``.
When ``tile_pad`` covers the receptive field (`receptive_radius`: 349 LR px for the 23-block model,
19 for one block) tiled equals one-shot up to float rounding everywhere. With the default pad (16 LR
px) the full model differs from one-shot only at the cores' seams, by at most a few 8-bit levels
(bound measured and asserted in ``tests/common/test_realesrgan.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from common.paths import ImageRejected

SCALE = 4
DEFAULT_TILE = 256  # LR px per tile core: 1024 px outputs, ~1.3 GB of activations (fp32)
DEFAULT_TILE_PAD = 32  # LR px of context on each side of a core (seam error falls fast up to here)


def tile_grid(h: int, w: int, tile: int, pad: int) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """``[(core (y0, y1, x0, x1), window (y0, y1, x0, x1))]`` in LR px, row-major; ``tile=0``: one tile."""
    if tile <= 0 or (h <= tile and w <= tile):
        return [((0, h, 0, w), (0, h, 0, w))]
    out = []
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            window = (max(y0 - pad, 0), min(y1 + pad, h), max(x0 - pad, 0), min(x1 + pad, w))
            if window == (0, h, 0, w):  # the context already spans the image: one run gives every core
                return [((0, h, 0, w), window)]
            out.append(((y0, y1, x0, x1), window))
    return out


def check_size(h: int, w: int, max_output_pixels: int | None, scale: int = SCALE) -> None:
    """Refuse empty inputs and outputs above the pixel limit, in one line naming the key."""
    if h < 1 or w < 1:
        raise ImageRejected(f"input is {w}x{h} px; the minimum is 1x1")
    if max_output_pixels and h * w * scale * scale > max_output_pixels:
        raise ImageRejected(
            f"output would be {w * scale}x{h * scale} = {h * w * scale * scale:,} px, above "
            f"max_output_pixels={max_output_pixels:,}; raise max_output_pixels or give a smaller input"
        )


def estimate_bytes(h: int, w: int, tile: int, pad: int, feat: int = 64) -> int:
    """Rough peak of one run: the fp32 output plus one tile's largest activations (input side (tile+2 pad),
    the 4x upsampled features counted three times: input, output and the nearest-upsampled copy)."""
    th, tw = (h, w) if tile <= 0 else (min(h, tile + 2 * pad), min(w, tile + 2 * pad))
    return 4 * (3 * h * w * SCALE * SCALE + 3 * feat * th * tw * SCALE * SCALE)


@torch.inference_mode()
def upscale(
    model: torch.nn.Module,
    lr: np.ndarray | torch.Tensor,
    tile: int = DEFAULT_TILE,
    tile_pad: int = DEFAULT_TILE_PAD,
    max_output_pixels: int | None = None,
    show_progress: bool = True,
    out_dtype: torch.dtype = torch.float32,
    only_tiles: list[int] | None = None,
) -> torch.Tensor:
    """LR (uint8 HWC array, or float (1, 3, h, w) in [0, 1]) -> SR (1, 3, 4h, 4w) on the CPU, clamped to [0, 1].

    ``out_dtype=torch.uint8`` quantises each tile as it lands (round to nearest), so a large image
    never holds a float copy of the whole output. ``tile=0`` runs the image in one piece. ``only_tiles``
    runs just those tile indices of the plan (benchmarks time part of a large plan; the rest stays zero).
    """
    from common.logging import progress

    if isinstance(lr, np.ndarray):
        lr = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None].float().div_(255)
    h, w = lr.shape[-2:]
    check_size(h, w, max_output_pixels)
    device = next(model.parameters()).device
    out = torch.zeros(1, 3, h * SCALE, w * SCALE, dtype=out_dtype)  # zeros: resident from the start, as measured
    grid = tile_grid(h, w, tile, tile_pad)
    grid = grid if only_tiles is None else [grid[i] for i in only_tiles]
    for (y0, y1, x0, x1), (wy0, wy1, wx0, wx1) in progress(grid, desc="realesrgan tiles", disable=not show_progress):
        sr = model(lr[..., wy0:wy1, wx0:wx1].to(device)).clamp_(0, 1)
        sr = sr[..., (y0 - wy0) * SCALE : (y1 - wy0) * SCALE, (x0 - wx0) * SCALE : (x1 - wx0) * SCALE]
        if out_dtype == torch.uint8:
            sr = sr.mul_(255).round_()
        out[..., y0 * SCALE : y1 * SCALE, x0 * SCALE : x1 * SCALE] = sr.to("cpu", out_dtype)
    return out


def plan_line(h: int, w: int, tile: int, pad: int) -> str:
    """The one line logged before a run: output size, tile count and estimated peak memory."""
    n, est = len(tile_grid(h, w, tile, pad)), estimate_bytes(h, w, tile, pad)
    tiles = f"{n} tile(s) of {tile} px (+{pad} px context)" if n > 1 else "one piece"
    return f"{w}x{h} -> {w * SCALE}x{h * SCALE}: {tiles}, ~{est / 2**30:.1f} GiB"


__all__ = [
    "DEFAULT_TILE",
    "DEFAULT_TILE_PAD",
    "SCALE",
    "check_size",
    "estimate_bytes",
    "plan_line",
    "tile_grid",
    "upscale",
]
