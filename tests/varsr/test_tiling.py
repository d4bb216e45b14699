"""Tiled inference: tile offsets/window closed forms, arithmetic valid for every size, end to end."""

import math

import pytest
import torch

from varsr.model import build_models
from varsr.tiling import decode_tiled, gaussian_window, sample_tiled, tile_offsets, tiled_size


def test_tile_offsets_closed_form():
    assert tile_offsets(32) == [0]
    assert tile_offsets(48) == [0, 16]  # second tile snapped to the border
    assert tile_offsets(56) == [0, 24]
    assert tile_offsets(100) == [0, 24, 48, 68]
    with pytest.raises(ValueError):
        tile_offsets(31)


@pytest.mark.parametrize("lr_side", list(range(1, 400, 7)) + [128, 129, 255, 256, 1000])
def test_tile_arithmetic_every_size(lr_side):
    W, H = tiled_size(lr_side, max(1, lr_side // 2 + 3))
    assert W >= 512 and H >= 512 and W % 16 == 0 and H % 16 == 0
    for n in (H // 16, W // 16):
        offs = tile_offsets(n)
        covered = torch.zeros(n, dtype=torch.bool)
        for o in offs:
            assert 0 <= o <= n - 32
            covered[o : o + 32] = True
        assert covered.all()
        assert all(b - a <= 24 for a, b in zip(offs, offs[1:]))  # overlap >= 8 tokens


def test_gaussian_window():
    w = gaussian_window(32)
    r, c = 3, 20
    ref = math.exp(-((r - 16) ** 2) / (0.02 * 32 * 32)) * math.exp(-((c - 15.5) ** 2) / (0.02 * 32 * 32))
    assert w.shape == (32, 32) and w[r, c].item() == pytest.approx(ref, rel=1e-5)
    assert w[16].argmax().item() in (15, 16) and w[:, 15].argmax().item() == 16


def test_sample_tiled_end_to_end_and_decoder_tiling():
    torch.manual_seed(0)
    model, vqvae = build_models("tiny")
    model.eval()
    lr = torch.rand(1, 3, 30, 41)
    out = sample_tiled(model, vqvae, lr, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 120, 164) and out.min() >= 0 and out.max() <= 1
    f = torch.randn(1, 8, 8, 8)
    whole = vqvae.decode_fhat(f)
    tiled = decode_tiled(vqvae, f, tile=8)
    assert torch.equal(whole, tiled)  # fits in one tile -> exact
    tiled = decode_tiled(vqvae, f, tile=6, stats="estimate")
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
