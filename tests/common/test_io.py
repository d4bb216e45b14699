"""read_image converts every odd-but-valid file and rejects broken ones with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common.data.io import BadImageError, read_image, to_tensor, to_uint8, write_image


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_rgb_png_roundtrip_exact(tmp_path, rgb):
    p = write_image(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_image(p), rgb)


def test_gray_replicated(tmp_path, rgb):
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], rgb[..., 0])


def test_rgba_composited_on_white(tmp_path, rgb):
    alpha = np.zeros((20, 30), np.uint8)
    alpha[:, 15:] = 255
    alpha[0, 0] = 128
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[:, 15:], rgb[:, 15:])  # opaque: unchanged
    assert (out[1:, :15] == 255).all()  # transparent: white
    expect = np.rint(rgb[0, 0] * (128 / 255) + 255 * (1 - 128 / 255))
    np.testing.assert_allclose(out[0, 0], expect, atol=1)


def test_16bit_gray_and_rgb(tmp_path):
    import cv2

    rng = np.random.default_rng(1)
    a16 = rng.integers(0, 65536, (8, 9, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), a16[..., ::-1])  # cv2 writes BGR
    cv2.imwrite(str(tmp_path / "g16.png"), a16[..., 0])
    expect = np.rint(a16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png"), expect)
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png"), np.repeat(expect[..., :1], 3, 2))


def test_cmyk_and_palette(tmp_path, rgb):
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 12  # JPEG-level agreement
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=256)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))


@pytest.mark.parametrize("kind", ["zero", "text", "truncated", "missing"])
def test_bad_files_raise_one_line(tmp_path, rgb, kind):
    p = tmp_path / "bad.png"
    if kind == "zero":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("not an image at all")
    elif kind == "truncated":
        write_image(tmp_path / "full.png", np.tile(rgb, (10, 10, 1)))
        data = (tmp_path / "full.png").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError) as ei:
        read_image(p)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg


def test_tensor_helpers(rgb):
    t = to_tensor(rgb)
    assert t.shape == (3, 20, 30) and t.dtype == torch.float32
    np.testing.assert_array_equal(to_uint8(t), rgb)
    np.testing.assert_array_equal(to_uint8(t[None]), rgb)
