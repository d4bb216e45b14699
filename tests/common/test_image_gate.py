"""The image-decoding gate (issue 16, bad cases 1 and 2): the pixel limit is read from the header.

Decompression bombs are all-black PNGs written in milliseconds (`tests.folder_cases.zero_png`);
spies on the decoders (OpenCV's imread for 16-bit PNGs, Pillow's ``ImageFile.load`` for the rest)
pin that a refused file is never decoded, so no buffer of its declared size is ever allocated.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from common.data.io import DEFAULT_MAX_INPUT_PIXELS, ImageTooLarge, image_size, read_image
from tests.folder_cases import load_launcher, user_error, zero_png


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any decoder runs (OpenCV or Pillow)."""
    import cv2

    def boom(*a, **k):
        raise AssertionError("a decoder ran on a file the header check should have refused")

    monkeypatch.setattr(cv2, "imread", boom)
    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


def test_default_limit_is_8192_squared():
    assert DEFAULT_MAX_INPUT_PIXELS == 67108864


@pytest.mark.parametrize("bit_depth,channels", [(16, 3), (16, 1), (16, 4), (8, 3), (8, 1)])
def test_png_bomb_refused_from_the_header(tmp_path, no_decoding, bit_depth, channels):
    # issue 16 case 1: a 30000 x 30000 16-bit PNG is ~5 MB; OpenCV used to decode it (8.4-25 GB)
    bomb = zero_png(tmp_path / "bomb.png", 30000, 30000, bit_depth, channels)
    assert bomb.stat().st_size < 8 * 2**20
    with pytest.raises(ImageTooLarge) as e:
        read_image(bomb)
    msg = str(e.value)
    assert "30000x30000 = 900,000,000 px" in msg and "max_input_pixels=67108864" in msg and "\n" not in msg


@pytest.mark.parametrize("fmt", ["png", "jpg", "bmp", "tif", "webp", "ppm", "png16"])
def test_every_format_checks_the_limit_before_decoding(tmp_path, monkeypatch, fmt):
    rng = np.random.default_rng(0)
    path = tmp_path / f"x.{fmt.removesuffix('16')}"
    if fmt == "png16":
        import cv2

        cv2.imwrite(str(path), (rng.random((30, 40, 3)) * 65535).astype(np.uint16))
    else:
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(path)
    assert read_image(path, max_pixels=1200).shape == (30, 40, 3)  # exactly at the limit: read
    import cv2

    calls = []
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: calls.append("cv2"))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda *a, **k: calls.append("pil"))
    with pytest.raises(ImageTooLarge, match=r"40x30 = 1,200 px is over max_input_pixels=1199"):
        read_image(path, max_pixels=1199)
    assert calls == []  # refused from the header: no decoder ran
    assert read_image.__defaults__ == (DEFAULT_MAX_INPUT_PIXELS,)


def test_no_limit_and_header_size(tmp_path):
    p = zero_png(tmp_path / "big.png", 9000, 8000, 16, 1)  # 72 MP: over the default, read with None
    assert image_size(p) == (9000, 8000)
    with pytest.raises(ImageTooLarge):
        read_image(p)
    small = zero_png(tmp_path / "s.png", 300, 200, 16, 3)
    assert read_image(small, max_pixels=None).shape == (200, 300, 3)


def test_degrade_skips_a_12000_square_bomb_and_finishes_the_folder(tmp_path, capsys, caplog):
    # issue 16 case 2: degrade had no limit (9.7 GB, crash, the rest of the folder lost)
    hr, out = tmp_path / "hr", tmp_path / "out"
    rng = np.random.default_rng(1)
    for name in ("a", "c"):
        hr.mkdir(exist_ok=True)
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(hr / f"{name}.png")
    zero_png(hr / "b_bomb.png", 12000, 12000)  # 8-bit, 420 KB
    zero_png(hr / "d_bomb16.png", 30000, 30000, 16)
    degrade = load_launcher("degrade").main
    res = degrade([f"hr_dir={hr}", f"out_dir={out}", "device=cpu", "progress=false", "degradation=varsr_mild"])
    assert res["written"] == 2 and res["skipped"] == 2
    assert sorted(p.name for p in (out / "LR").iterdir()) == ["a.png", "c.png"]
    log = caplog.text + capsys.readouterr().out
    assert f"skipped {hr / 'b_bomb.png'}: too large: 12000x12000 = 144,000,000 px" in log
    assert f"skipped {hr / 'd_bomb16.png'}: too large: 30000x30000" in log
    # the one limit is configurable: lowered, the 64 x 64 images are over it too -> nothing readable
    line = user_error(capsys, degrade, [f"hr_dir={hr}", f"out_dir={tmp_path / 'o2'}", "max_input_pixels=100"])
    assert "none of the 4 input file(s) could be processed" in line and "max_input_pixels=100" in line
