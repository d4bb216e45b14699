"""VARSR latent tiling at a size where the general case happens (issue 15): 3 x 5 tiles (interior,
border and a snapped last column), non-square, every tile returning a different latent.  The
blended latent is checked against the Gaussian-weighted average written out here (varsr.md 10),
a position covered by one tile carries exactly that tile's value, and each tile saw its own crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import varsr.tiling as tiling
from varsr.model import build_models
from varsr.tiling import plan_tiles, sample_tiled


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_models("tiny")  # 6 x 6 latent tokens per tile, 16 px per token, cvae 8


def window(n: int) -> np.ndarray:
    """w(r, c) = exp(-(r - n/2)^2 / (0.02 n^2)) * exp(-(c - (n-1)/2)^2 / (0.02 n^2))."""
    r = np.arange(n, dtype=np.float64)
    return np.outer(np.exp(-((r - n / 2) ** 2) / (0.02 * n * n)), np.exp(-((r - (n - 1) / 2) ** 2) / (0.02 * n * n)))


def test_blend_is_the_gaussian_weighted_average_of_distinct_tiles(tiny, monkeypatch):
    model, vqvae = tiny
    h, w = 64, 92  # x4 = 256 x 368 px = 16 x 23 tokens
    # crop means per channel encode where the crop came from: R = row position, G = column position
    ys, xs = torch.meshgrid(torch.arange(4 * h) / (4 * h), torch.arange(4 * w) / (4 * w), indexing="ij")
    lr = torch.nn.functional.interpolate(torch.stack([ys, xs, ys * 0 + 0.5])[None], size=(h, w), mode="area")
    calls, seen = [], {}

    def fake_generate(model, vqvae, crops, **kw):
        out = []
        for crop in crops:
            k = len(calls)
            calls.append(((crop + 1) / 2).mean((1, 2)))  # (R, G, B) means of this crop
            out.append(torch.full((8, 6, 6), float(k)) + torch.arange(8.0)[:, None, None] / 10)
        return torch.stack(out)

    def fake_decode(vqvae, f, tile, stats):
        seen["latent"] = f.clone()
        return torch.zeros(1, 3, f.shape[-2] * 16, f.shape[-1] * 16)

    monkeypatch.setattr(tiling, "generate_fhat", fake_generate)
    monkeypatch.setattr(tiling, "decode_tiled", fake_decode)
    plan = plan_tiles(h, w, model, vqvae)
    # literal geometry: stride 6 - 6 // 4 = 5 tokens, last tile snapped to the border
    assert (plan.grid, plan.rows, plan.cols) == ((16, 23), [0, 5, 10], [0, 5, 10, 15, 17])
    sample_tiled(model, vqvae, lr, color_fix="none", tile_batch=2)
    boxes = [(t, lf) for t in [0, 5, 10] for lf in [0, 5, 10, 15, 17]]  # row-major generation order
    assert len(calls) == len(boxes) == 15

    # each crop came from its own box of the canvas (R/G means ~ the box centre)
    for (t, lf), m in zip(boxes, calls):
        assert abs(m[0] - (t + 3) / 16) < 0.02 and abs(m[1] - (lf + 3) / 23) < 0.02, (t, lf, m)

    num, den = np.zeros((16, 23)), np.zeros((16, 23))
    win = window(6)
    for k, (t, lf) in enumerate(boxes):
        num[t : t + 6, lf : lf + 6] += win * k
        den[t : t + 6, lf : lf + 6] += win
    want = num / den
    got = seen["latent"][0].double().numpy()
    for c in range(8):
        np.testing.assert_allclose(got[c], want + c / 10, atol=1e-4, rtol=0)
    # a token covered by one tile only keeps that tile's latent exactly (corner and border tokens)
    assert got[0, 0, 0] == 0.0 and got[0, 15, 22] == 14.0 and got[0, 2, 7] == 1.0
    assert got[0, 15, 7] == 11.0 and got[0, 7, 0] == 5.0
    # a seam token shared by tiles 0 (its column 5) and 1 (its column 0): weights sum to 1
    assert math.isclose(got[0, 2, 5], win[2, 0] / (win[2, 5] + win[2, 0]), abs_tol=1e-5) and 0 < got[0, 2, 5] < 1
