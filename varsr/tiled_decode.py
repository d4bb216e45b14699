"""Memory-bounded VQVAE decoding of latents larger than the model size, without tile seams.

Why not plain overlap-and-blend (the previous decoder tiling)?  Every ResnetBlock of the decoder
starts with a GroupNorm, whose mean/variance are taken over the whole image.  A tile decoded on
its own normalises with its own statistics, so neighbouring tiles come out with slightly different
contrast/colour and the ramps only smear that difference into a visible band.

What we do instead (spec varsr.md section 10, "decoder tiling (GroupNorm-aware)"):

1. Global stage, exact: `post_quant_conv`, `conv_in`, the mid block and the blocks of the lowest
   level -- everything that contains attention -- run on the full latent.  They work at latent
   resolution (1/16 of the output side), so they cost output_pixels / 256 * channels floats,
   and attention there stays global, exactly as in the one-shot decode (queries in chunks, so
   the score matrix never exceeds 1 GiB).
2. Tiled stage: the remaining layers (up-sampling convs, ResnetBlocks of the higher levels,
   `norm_out`, `conv_out`) are local except for GroupNorm.  We run them tile by tile on the
   global-stage features, each tile widened by a halo of latent cells that covers the receptive
   field of those layers (about 7 latent cells for VAR's decoder), and keep only the tile's core.
   Every GroupNorm is applied with *global* statistics (per sample and group), the same for all
   tiles.  With identical statistics the tiled stage is a translation-equivariant local function,
   so the assembled image equals a one-shot decode that used those statistics -- no seams by
   construction (tested against a full decode given the exact statistics).
3. The global statistics are computed exactly, layer by layer: pass k runs every tile up to
   GroupNorm k (normalising layers < k with the statistics already known), sums x and x^2 of
   its input over the tile cores into per-(sample, group) moments, and stops there.  Layer k's
   input depends only on layers < k, so after K passes (K = GroupNorms in the tiled stage, 25 for
   VAR's decoder) every statistic equals the one-shot decode's, and the final pass reproduces the
   one-shot image up to float rounding.  Cost: about 8x the tiled-stage compute (the passes for
   early layers stop early), paid once per image and small next to generating the latent tiles.
   `stats="estimate"` is the cheap alternative: one pass that normalises each tile with its own
   statistics while summing the moments, then the final pass with those.  It is seam-free too
   (all tiles share the statistics) but only approximately equal to the one-shot decode; the
   naive "fixed-point" iteration between the two is not used because on untrained decoders
   stale statistics blow activations up before they converge (measured).

Peak memory: the global-stage tensors plus one (tile + 2 halo)^2 tile at full resolution plus the
output image; independent of how many tiles there are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Receptive field of the tiled stage of VAR's decoder: 7/2 + 7/4 + 7/8 + 7/16 < 7 latent cells (3x3 convs
# per level at 2x..16x); 8 leaves a margin (7 measured exact, 6 not).
DEFAULT_HALO = 8


class _Stop(Exception):
    """Raised inside a statistics pass once the target GroupNorm's moments are collected."""


class _Moments:
    """Per-GroupNorm statistics: fixed ones used to normalise, plus running sums being collected.

    `stats[k]` = (mean, var), each (B, G) float64, for the first len(stats) GroupNorms.  While
    collecting, `sums` holds [sum x, sum x^2, count] for GroupNorm `collect` (or, with
    collect=None, for every GroupNorm -- the one-pass estimate).
    """

    def __init__(self, stats: list | None = None, collect: int | None = None, per_tile: bool = False):
        self.stats, self.collect, self.per_tile = list(stats or []), collect, per_tile
        self.sums: dict[int, list] = {}

    def add(self, k: int, c: torch.Tensor) -> None:
        s, q = c.sum(-1), (c * c).sum(-1)
        if k in self.sums:
            acc = self.sums[k]
            acc[0], acc[1], acc[2] = acc[0] + s, acc[1] + q, acc[2] + c.shape[-1]
        else:
            self.sums[k] = [s, q, c.shape[-1]]

    def finish(self) -> list:
        """Collected sums -> [(mean, biased var)] in GroupNorm order."""
        return [(s / n, (q / n - (s / n) ** 2).clamp_min(0)) for _, (s, q, n) in sorted(self.sums.items())]


class _TileRun:
    """One tile through the tiled stage; GroupNorm either per tile or with fixed global stats."""

    def __init__(self, moments: _Moments, core: tuple[int, int, int, int], lat_hw: tuple[int, int]):
        self.m, self.core, self.lat_hw, self.k = moments, core, lat_hw, 0

    def norm(self, gn: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        G, k = gn.num_groups, self.k
        xf = x.float()
        if self.m.collect is None or self.m.collect == k:
            f = H // self.lat_hw[0]  # pixels per latent cell at this layer
            t0, t1, l0, l1 = self.core
            self.m.add(k, xf[..., t0 * f : t1 * f, l0 * f : l1 * f].reshape(B, G, -1).double())
            if self.m.collect == k:
                raise _Stop
        if k >= len(self.m.stats):
            if not self.m.per_tile:
                raise RuntimeError(f"no statistics for GroupNorm {k} of the tiled decoder")
            y = F.group_norm(xf, G, None, None, gn.eps)
        else:
            mean, var = (t.float()[..., None] for t in self.m.stats[k])
            y = ((xf.reshape(B, G, -1) - mean) * torch.rsqrt(var + gn.eps)).reshape(B, C, H, W)
        self.k += 1
        if gn.affine:
            y = y * gn.weight.float()[:, None, None] + gn.bias.float()[:, None, None]
        return y.to(x.dtype)

    def resblock(self, blk, x: torch.Tensor) -> torch.Tensor:
        h = blk.conv1(F.silu(self.norm(blk.norm1, x)))
        h = blk.conv2(F.silu(self.norm(blk.norm2, h)))
        return blk.nin_shortcut(x) + h

    def tail(self, dec, h: torch.Tensor) -> torch.Tensor:
        """Layers after the global stage (see module docstring), on one tile with its halo."""
        n = len(dec.up)
        h = dec.up[n - 1].upsample(h)
        for i in reversed(range(n - 1)):
            lvl = dec.up[i]
            for blk in lvl.block:
                h = self.resblock(blk, h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)
        return dec.conv_out(F.silu(self.norm(dec.norm_out, h)))


def num_norms(dec) -> int:
    """GroupNorms in the tiled stage: two per ResnetBlock of the levels above the lowest, + norm_out."""
    return 2 * sum(len(dec.up[i].block) for i in range(len(dec.up) - 1)) + 1


def attention_chunked(attn, x: torch.Tensor, max_bytes: int = 2**30) -> torch.Tensor:
    """`AttnBlock.forward` with the queries in chunks: the same single-head global attention, but the
    score matrix held at once is at most `max_bytes` (a 256^2-cell latent would need 17 GB)."""
    B, C, H, W = x.shape
    N = H * W
    q, k, v = (t.transpose(1, 2)[:, None] for t in attn.qkv(attn.norm(x)).reshape(B, 3, C, N).unbind(1))
    step = max(1, max_bytes // (4 * N * B))
    out = torch.cat([F.scaled_dot_product_attention(q[:, :, s : s + step], k, v) for s in range(0, N, step)], dim=2)
    return x + attn.proj_out(out[:, 0].transpose(1, 2).reshape(B, C, H, W))


def global_stage(vqvae, f_hat: torch.Tensor) -> torch.Tensor:
    """post_quant_conv -> conv_in -> mid -> lowest level's blocks (+ attention), on the full latent."""
    dec = vqvae.decoder
    top = dec.up[len(dec.up) - 1]
    if len(dec.up) < 2 or any(len(dec.up[i].attn) for i in range(len(dec.up) - 1)):
        raise ValueError("tiled decoding needs attention only at the lowest level (VAR's decoder layout)")
    h = dec.mid.block_1(dec.conv_in(vqvae.post_quant_conv(f_hat)))
    h = dec.mid.block_2(attention_chunked(dec.mid.attn_1, h))
    for i, blk in enumerate(top.block):
        h = blk(h)
        if len(top.attn):
            h = attention_chunked(top.attn[i], h)
    return h


def split_even(n: int, tile: int) -> list[tuple[int, int]]:
    """[0, n) cut into ceil(n / tile) near-equal consecutive ranges (each <= tile)."""
    k = max(1, math.ceil(n / tile))
    b = [round(i * n / k) for i in range(k + 1)]
    return list(zip(b[:-1], b[1:]))


def decoder_tiles(H: int, W: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Core rectangles (top, bottom, left, right) in latent cells, row-major."""
    return [(t0, t1, l0, l1) for t0, t1 in split_even(H, tile) for l0, l1 in split_even(W, tile)]


def _run_pass(vqvae, h: torch.Tensor, tiles, halo: int, moments: _Moments, out: torch.Tensor | None, bar=None) -> None:
    H, W = h.shape[-2:]
    for t0, t1, l0, l1 in tiles:
        a0, a1, b0, b1 = max(0, t0 - halo), min(H, t1 + halo), max(0, l0 - halo), min(W, l1 + halo)
        run = _TileRun(moments, (t0 - a0, t1 - a0, l0 - b0, l1 - b0), (a1 - a0, b1 - b0))
        try:
            img = run.tail(vqvae.decoder, h[..., a0:a1, b0:b1])
        except _Stop:
            img = None
        if out is not None:
            s = img.shape[-2] // (a1 - a0)
            out[..., t0 * s : t1 * s, l0 * s : l1 * s] = img[
                ..., (t0 - a0) * s : (t1 - a0) * s, (l0 - b0) * s : (l1 - b0) * s
            ].to(out.dtype)
        if bar is not None:
            bar.update(1)


def _compute_stats(vqvae, h: torch.Tensor, tiles, halo: int, mode: str, bar=None) -> list:
    if mode == "estimate":
        m = _Moments(per_tile=True)
        _run_pass(vqvae, h, tiles, halo, m, None, bar)
        return m.finish()
    if mode != "exact":
        raise ValueError(f"decoder statistics must be 'exact' or 'estimate', got {mode!r}")
    stats: list = []
    for k in range(num_norms(vqvae.decoder)):
        m = _Moments(stats, collect=k)
        _run_pass(vqvae, h, tiles, halo, m, None, bar)
        stats += m.finish()
    return stats


@torch.no_grad()
def decoder_stats(vqvae, f_hat: torch.Tensor) -> list:
    """Exact GroupNorm statistics of the tiled stage from a one-shot pass (tests / small latents)."""
    h = global_stage(vqvae, f_hat)
    m = _Moments(per_tile=True)
    _run_pass(vqvae, h, [(0, h.shape[-2], 0, h.shape[-1])], 0, m, None)
    return m.finish()


@torch.no_grad()
def decode_tiled(
    vqvae,
    f_hat: torch.Tensor,
    tile: int = 32,
    halo: int = DEFAULT_HALO,
    stats: str | list = "exact",
    progress_desc: str | None = "decode tiles",
) -> torch.Tensor:
    """Latent (B, Cvae, H, W) -> image (B, 3, 16H, 16W) in [-1, 1], decoded in tiles of `tile` cells.

    A latent that fits in one tile takes the one-shot `decode_fhat` (bit-identical).  `stats` is
    "exact" (default), "estimate", or a list from `decoder_stats` (see the module docstring).
    """
    from common.logging import progress

    H, W = f_hat.shape[-2:]
    if H <= tile and W <= tile:
        return vqvae.decode_fhat(f_hat)
    h = global_stage(vqvae, f_hat)
    tiles = decoder_tiles(H, W, tile)
    passes = 1 + ({"exact": num_norms(vqvae.decoder), "estimate": 1}.get(stats, 0) if isinstance(stats, str) else 0)
    bar = progress(total=passes * len(tiles), desc=progress_desc, leave=False, disable=progress_desc is None)
    if isinstance(stats, str):
        stats = _compute_stats(vqvae, h, tiles, halo, stats, bar)
    s = 2 ** (len(vqvae.decoder.up) - 1)  # up-sampling of the tiled stage relative to the latent
    out = torch.empty(f_hat.shape[0], 3, H * s, W * s, device=f_hat.device, dtype=torch.float32)
    _run_pass(vqvae, h, tiles, halo, _Moments(stats), out, bar)
    bar.close()
    return out.clamp_(-1, 1)


def tile_bytes(vqvae, tile: int, halo: int = DEFAULT_HALO, elem: int = 4) -> int:
    """Rough peak bytes of one decoder tile: ~10 fp32 tensors at the widest level's resolution (block
    input, normalised copy, activations, conv outputs, and the float64 core copy for the statistics);
    measured 2.4 GB for the tiny model's 64-cell tiles against 2.1 GB + buffers estimated."""
    dec = vqvae.decoder
    n, side = len(dec.up), tile + 2 * halo
    widest = max(dec.up[i].block[-1].conv2.out_channels * (side * 2 ** (n - 1 - i)) ** 2 for i in range(n - 1))
    return 10 * widest * elem
