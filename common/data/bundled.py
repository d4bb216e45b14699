"""The embedded default dataset: scikit-image's bundled colour photos (no network needed).

Six CC0 / public-domain photos ship inside the scikit-image wheel (common.md §2.7). They are
the default training set of the tiny configs and the offline evaluation set of the tests, so
every pipeline can run end to end on a machine that cannot download anything. Excluded on
purpose: ``moon`` and ``stereo_motorcycle`` (licence not stated) and the pooch-fetched images
(need the network).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.data.io import write_image

# name -> (skimage.data loader name, licence/source) for the data card.
BUNDLED = {
    "astronaut": "NASA, public domain",
    "chelsea": "Stefan van der Walt, CC0",
    "coffee": "Rachel Michetti, CC0",
    "rocket": "SpaceX, public domain",
    "hubble_deep_field": "NASA, public domain",
    "retina": "Hakan Karabulut / Wikimedia, CC0",
}


def bundled_photos() -> list[tuple[str, np.ndarray]]:
    """[(name, uint8 (H, W, 3) RGB)] in a fixed order, straight from ``skimage.data``."""
    import skimage.data

    return [(name, np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])) for name in BUNDLED]


def fit_square(img: np.ndarray, size: int) -> np.ndarray:
    """Square ``size`` crop: resize the shorter side to ``size`` only when it is smaller
    (LANCZOS up-sampling), otherwise keep native pixels, then take the centre crop.

    Native pixels are kept when possible (retina and hubble give true 512 crops) because
    downsampling a photo changes its statistics, which matters for a super-resolution target.
    """
    h, w = img.shape[:2]
    if min(h, w) < size:
        s = size / min(h, w)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.LANCZOS))
        h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[top : top + size, left : left + size])


def write_bundled_dataset(out_dir, size: int = 512) -> Path:
    """Write ``out_dir/HR/<name>.png`` (size x size) for the six photos; returns ``out_dir``.

    Idempotent: existing files of the right size are kept, so tests can share one folder.
    """
    out = Path(out_dir)
    hr = out / "HR"
    hr.mkdir(parents=True, exist_ok=True)
    for name, img in bundled_photos():
        dst = hr / f"{name}.png"
        if dst.is_file():
            with Image.open(dst) as im:
                if im.size == (size, size):
                    continue
        write_image(dst, fit_square(img, size))
    return out


def bundled_pairs(size: int = 512, scale: int = 4) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, lr uint8 (size/scale)^2, hr uint8 size^2)] with a bicubic (PIL) down-sampled LR.

    A deterministic, degradation-free pair set for smoke tests of sampling/evaluation code.
    """
    out = []
    for name, img in bundled_photos():
        hr = fit_square(img, size)
        lr = np.asarray(Image.fromarray(hr).resize((size // scale, size // scale), Image.BICUBIC))
        out.append((name, lr, hr))
    return out
