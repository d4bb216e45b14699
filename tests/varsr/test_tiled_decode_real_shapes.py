"""The tiled decoder where tiling really happens: a latent several tiles + halos wide whose tiles
differ (a left-to-right ramp), so per-tile GroupNorm statistics, a wrong halo or a misplaced core
all show. The reference is the one-shot decode of the whole latent."""

import pytest
import torch

from varsr.model import build_models
from varsr.tiled_decode import DEFAULT_HALO, decode_tiled, decoder_tiles


@pytest.mark.slow  # ~25 exact-statistics passes over 7 tiles
def test_tiled_decode_of_a_latent_wider_than_tile_plus_halo_equals_one_shot():
    torch.manual_seed(0)
    _, vqvae = build_models("tiny")
    vqvae.eval()
    H, W, tile = 1, 28, 4
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(-3, 3, W)[None, None, None, :]  # tiles see very different statistics
    f = torch.randn(1, vqvae.decoder.conv_in.in_channels, H, W, generator=g) * 0.5 + ramp
    tiles = decoder_tiles(H, W, tile)
    assert len(tiles) == 7 and tile + 2 * DEFAULT_HALO < W  # no tile (with its halo) sees the whole latent
    with torch.no_grad():
        full = vqvae.decode_fhat(f)
        tiled = decode_tiled(vqvae, f, tile=tile, progress_desc=None)
        estimate = decode_tiled(vqvae, f, tile=tile, stats="estimate", progress_desc=None)
    torch.testing.assert_close(tiled, full, atol=1e-4, rtol=0)
    # per-tile statistics are visibly different here (the exact mode is what removes the seams)
    assert (estimate - full).abs().max() > 1e-2
