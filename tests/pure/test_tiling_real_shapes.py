"""PURE tiling at a size where the general case happens (issue 15): 3 x 5 tiles of a non-square LQ
(interior, border, snapped last column), each tile restored to a different constant colour.  The
output is checked against the feathered average written out here (linear ramps of overlap x scale
px on interior edges only, weight 1 on the image border), and the aspect-ratio bucket fit at the
real 512-px resolution against literal buckets."""

from __future__ import annotations

import numpy as np
import torch

from pure.restore import RestoreResult
from pure.tiling import fit_to_bucket, plan, restore_scaled


class ConstantTiles:
    """Stand-in restorer: tile k (in call order) comes back as scale x its crop filled with k
    (channel c: k + c / 10); it also records the crops it was given."""

    resolution = 16  # x4 -> 4-px LQ tiles, overlap 1 LQ px, ramps of 4 HR px

    def __init__(self):
        self.crops = []

    def kv_bytes_per_image(self):
        return 0

    def weight_bytes(self):
        return 0

    def restore_native(self, crops, generator=None):
        out = []
        for c in crops:
            k = len(self.crops)
            self.crops.append(c)
            img = torch.full((3, 4 * c.shape[0], 4 * c.shape[1]), float(k)) + torch.arange(3.0)[:, None, None] / 10
            out.append(RestoreResult(image=img / 20, lq=img, ok=True, new_tokens=1, forwards=1))
        return out


def ramp_1d(n: int, ramp: int, lo: bool, hi: bool) -> np.ndarray:
    """i-th weight: min(1, (i+1)/(ramp+1)) after an interior low edge, min(1, (n-i)/(ramp+1)) before an
    interior high edge, 1 elsewhere."""
    i = np.arange(n, dtype=np.float64)
    w = np.ones(n)
    if lo:
        w = np.minimum(w, (i + 1) / (ramp + 1))
    if hi:
        w = np.minimum(w, (n - i) / (ramp + 1))
    return w


def test_feathered_blend_of_distinct_tiles_matches_the_closed_form(one_thread):
    lq = np.random.default_rng(0).integers(0, 256, (10, 15, 3), dtype=np.uint8)
    p = plan(10, 15, 4, 16)
    assert (p.tile, p.overlap, p.rows, p.cols, p.out) == (4, 1, [0, 3, 6], [0, 3, 6, 9, 11], (40, 60))
    r = ConstantTiles()
    res = restore_scaled(r, lq, 4, tile_batch=4)
    boxes = [(t, lf) for t in [0, 3, 6] for lf in [0, 3, 6, 9, 11]]
    assert res.tiles == 15 and len(r.crops) == 15
    for (t, lf), crop in zip(boxes, r.crops):  # each tile got its own LQ crop
        np.testing.assert_array_equal(crop, lq[t : t + 4, lf : lf + 4])

    num, den = np.zeros((40, 60)), np.zeros((40, 60))
    for k, (t, lf) in enumerate(boxes):
        wy = ramp_1d(16, 4, t > 0, t + 4 < 10)
        wx = ramp_1d(16, 4, lf > 0, lf + 4 < 15)
        num[4 * t : 4 * t + 16, 4 * lf : 4 * lf + 16] += np.outer(wy, wx) * k
        den[4 * t : 4 * t + 16, 4 * lf : 4 * lf + 16] += np.outer(wy, wx)
    got = res.image.double().numpy() * 20
    for c in range(3):
        np.testing.assert_allclose(got[c], num / den + c / 10, atol=1e-4, rtol=0)
    # border pixels covered by one tile take exactly that tile; an interior seam is a linear ramp
    assert got[0, 0, 0] == 0 and abs(got[0, 39, 59] - 14) < 1e-5 and abs(got[0, 20, 2] - 5) < 1e-5
    np.testing.assert_allclose(got[0, 2, 12:16], [1 / 5, 2 / 5, 3 / 5, 4 / 5], atol=1e-5)  # tile 0 -> 1


def test_bucket_fit_at_512_literal_buckets():
    # 300 x 100 (ratio 3): bucket 27 x 9 patches = 864 x 288, filled exactly
    x, box = fit_to_bucket(np.zeros((100, 300, 3), np.uint8), 512, 32)
    assert x.shape == (3, 288, 864) and box == (288, 864)
    # 500 x 120: bucket 1024 x 256 (ratio 4 keeps 0.96 of the image), content 1024 x 246, 10 rows reflected
    lq = np.random.default_rng(1).integers(0, 256, (120, 500, 3), dtype=np.uint8)
    x, box = fit_to_bucket(lq, 512, 32)
    assert x.shape == (3, 256, 1024) and box == (246, 1024)
    for i in range(10):
        assert torch.equal(x[:, 246 + i], x[:, 244 - i])
    # portrait 100 x 300 (a width and height swapped): 288 x 864, not the neighbour 288 x 896
    x, box = fit_to_bucket(np.zeros((300, 100, 3), np.uint8), 512, 32)
    assert x.shape == (3, 864, 288) and box == (864, 288)
