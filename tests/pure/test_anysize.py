"""PURE at any size (issue 8): aspect-preserving fit, feathered tiles placed where they belong,
exact output sizes for non-square and tiny inputs, bounded (measured) memory, one-line refusal."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from common.peakmem import PeakMemory
from pure.processors import SamplingConfig
from pure.restore import Restorer, RestoreResult
from pure.tiling import check_limit, feather, fit_to_bucket, offsets, plan, restore_scaled


def lq_image(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_fit_keeps_the_aspect_ratio_and_is_the_official_resize_for_squares():
    sq = lq_image(0, 37, 37)
    x, box = fit_to_bucket(sq, 512, 32)
    ref = np.asarray(Image.fromarray(sq).resize((512, 512), Image.BICUBIC), dtype=np.float32) / 255
    assert box == (512, 512) and torch.equal(x, torch.from_numpy(ref).permute(2, 0, 1))
    for h, w in [(100, 300), (300, 100), (128, 1000), (50, 51)]:
        x, (hh, ww) = fit_to_bucket(lq_image(1, h, w), 512, 32)
        assert x.shape[1] % 32 == 0 and x.shape[2] % 32 == 0 and hh <= x.shape[1] and ww <= x.shape[2]
        assert abs(ww / hh - w / h) <= (w / h) * (1 / min(hh, ww) + 1e-9)  # aspect kept up to rounding
        assert max(hh / x.shape[1], ww / x.shape[2]) == 1  # fills the bucket along one side


def test_offsets_and_feather_closed_forms():
    assert offsets(4, 4, 1) == [0] and offsets(6, 4, 1) == [0, 2] and offsets(20, 4, 1) == [0, 3, 6, 9, 12, 15, 16]
    assert torch.allclose(feather(6, 2, True, False), torch.tensor([1 / 3, 2 / 3, 1, 1, 1, 1]))
    assert torch.equal(feather(5, 2, False, False), torch.ones(5))


class EchoRestorer:
    """Stand-in whose 'restoration' is the crop upscaled x4 (nearest): a correctly placed tile
    reproduces exactly its part of the nearest-upscaled LQ, a misplaced one does not."""

    resolution = 16

    def __init__(self):
        self.batches = []

    def kv_bytes_per_image(self):
        return 0

    def weight_bytes(self):
        return 0

    def restore_native(self, crops, generator=None):
        self.batches.append(len(crops))
        out = []
        for c in crops:
            x = torch.from_numpy(c).permute(2, 0, 1).float() / 255
            img = F.interpolate(x[None], scale_factor=4, mode="nearest")[0]
            out.append(RestoreResult(image=img, lq=x, ok=True, new_tokens=1, forwards=1))
        return out


def test_tiles_land_where_they_belong(one_thread):
    lq = lq_image(2, 6, 21)
    r = EchoRestorer()
    res = restore_scaled(r, lq, 4, tile_batch=5)
    want = F.interpolate(torch.from_numpy(lq).permute(2, 0, 1)[None].float() / 255, scale_factor=4, mode="nearest")[0]
    assert res.image.shape == (3, 24, 84) and res.tiles == 2 * 7
    torch.testing.assert_close(res.image, want, atol=1e-6, rtol=0)
    assert r.batches == [5, 5, 4] and res.new_tokens == 14


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (6, 20)])
def test_non_square_and_tiny_inputs_come_back_exactly_x4_in_bounded_memory(
    tiny_model, tiny_vq, test_tokenizer, hw, one_thread
):
    """Real tiny model + VQ: resolution 16 (2x2 patches of 8 px), so a tile is 4 LQ px; 6x20 is
    restored as 2 x 7 feathered tiles.  Memory bound from the tile: one batch of native restores
    (tiny model, 16 px images) and output-sized buffers stay far below 256 MiB; nothing grows with
    the tile count."""
    r = Restorer(
        tiny_model,
        tiny_vq,
        test_tokenizer,
        SamplingConfig(),
        resolution=16,
        max_new_tokens=80,
        image_only=True,
        scale=4,
        tile_batch=7,
    )
    with PeakMemory() as pm:
        (res,) = r.restore([lq_image(3, *hw)], torch.Generator().manual_seed(0))
    assert res.image.shape == (3, 4 * hw[0], 4 * hw[1]) and res.ok
    assert 0 <= float(res.image.min()) and float(res.image.max()) <= 1
    assert res.tiles == (14 if hw == (6, 20) else 1)
    assert pm.peak_delta < 12 * res.image.numel() * 4 + 256 * 2**20


def test_native_restore_keeps_aspect(tiny_model, tiny_vq, test_tokenizer, one_thread):
    r = Restorer(
        tiny_model, tiny_vq, test_tokenizer, SamplingConfig(), resolution=16, max_new_tokens=80, image_only=True
    )
    (res,) = r.restore([lq_image(4, 10, 40)], torch.Generator().manual_seed(0))
    assert res.image.shape == (3, 8, 32)  # the 32x8 bucket (aspect 4), not a squashed 16x16


def test_pixel_limit_refuses_in_one_line():
    p = plan(1000, 3000, 4, 512)
    with pytest.raises(ValueError) as e:
        check_limit(p, 10**6)
    assert "\n" not in str(e.value) and "max_output_pixels=48000000" in str(e.value)
    with pytest.raises(ValueError, match="minimum is 1x1"):
        plan(0, 3, 4, 512)
