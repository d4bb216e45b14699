"""Robust image reading/writing for every dataset in the repo.

`read_image` is the single entry point that turns *any* file a dataset may contain into an
``uint8 (H, W, 3)`` RGB array, or raises `BadImageError` with a one-line message naming the
file.  Training sets (LSDIR, FFHQ, IQA negatives scraped from the web) contain gray, palette,
RGBA, 16-bit and CMYK files; converting them here means no dataset worker ever crashes on
one, and the conversions are the same everywhere (training, evaluation, data prep).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class BadImageError(ValueError):
    """A file that cannot be turned into an RGB image; ``str(err)`` is one line naming the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the decoder said
        super().__init__(f"bad image {self.path}: {self.reason}")


def is_image_file(path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _png_bit_depth(path: Path) -> int:
    # PIL silently keeps only the high byte of 16-bit RGB PNGs; the IHDR bit depth (byte 24)
    # tells us when to decode with OpenCV instead and round properly (x / 257).
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n":
        return head[24]
    return 8


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    # Transparent pixels have arbitrary RGB (often black); a white backdrop is what a viewer
    # shows and avoids inventing dark halos around cut-out objects.
    rgb = rgba[..., :3].astype(np.float32)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgb * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _scale16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        g = np.asarray(im)
        g = _scale16(g) if g.max(initial=0) > 255 or mode.startswith("I;16") else g.astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        g = np.asarray(im, dtype=np.float64)
        scale = 255.0 if g.max(initial=0) <= 1.0 else 1.0  # float TIFFs are either [0,1] or [0,255]
        g = np.clip(np.rint(g * scale), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        return _composite_on_white(np.asarray(im.convert("RGBA")))
    if mode != "RGB":
        im = im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(im, dtype=np.uint8)


def _read_16bit_png(path: Path) -> np.ndarray:
    import cv2

    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise BadImageError(path, "OpenCV could not decode 16-bit PNG")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        rgba = _scale16(a[..., [2, 1, 0, 3]])
        return _composite_on_white(rgba)
    if a.shape[2] == 2:  # gray + alpha
        rgba = _scale16(a[..., [0, 0, 0, 1]])
        return _composite_on_white(rgba)
    return _scale16(a[..., ::-1])


def read_image(path) -> np.ndarray:
    """Read ``path`` as ``uint8 (H, W, 3)`` RGB (EXIF orientation applied).

    Gray -> replicated, palette -> RGB, RGBA/LA -> composited on white, 16-bit -> round(x/257),
    CMYK -> RGB.  Missing, zero-byte, truncated or non-image files raise `BadImageError`.
    """
    p = Path(path)
    if not p.is_file():
        raise BadImageError(p, "no such file")
    if p.stat().st_size == 0:
        raise BadImageError(p, "zero-byte file")
    try:
        if _png_bit_depth(p) == 16:
            return np.ascontiguousarray(_read_16bit_png(p))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / palette warnings are not errors
            with Image.open(p) as im:
                im.load()  # decode fully now so truncation is detected here, not later
                im = ImageOps.exif_transpose(im)
                arr = _pil_to_rgb(im)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(p, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadImageError(p, f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as e:
        raise BadImageError(p, f"unreadable or truncated ({type(e).__name__}: {e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadImageError(p, f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def image_size(path) -> tuple[int, int]:
    """(width, height) from the header only (cheap); raises BadImageError like `read_image`."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError(p, f"unreadable header ({type(e).__name__})") from None


def to_uint8(img) -> np.ndarray:
    """Tensor (3,H,W)/(1,3,H,W) in [0,1] or array (H,W,3) uint8/float[0,1] -> uint8 (H,W,3)."""
    if isinstance(img, torch.Tensor):
        t = img.detach().to("cpu", torch.float64)
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected a single image, got batch shape {tuple(t.shape)}")
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected (3,H,W) tensor, got {tuple(t.shape)}")
        t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
        return (t.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    return np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H,W,3) -> float32 (3,H,W) in [0,1]."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        raise ValueError(f"to_tensor expects uint8, got {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)


def write_image(path, img, **save_kwargs) -> Path:
    """Write an array or tensor (see `to_uint8`) as an 8-bit RGB file; format from the suffix.

    Written to a temporary name then renamed, so a killed job never leaves a truncated PNG that
    a later evaluation would silently read.
    """
    from common.checkpoint import atomic_write  # the repository's one all-or-nothing writer

    p = Path(path)
    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image extension for {p}")
    im = Image.fromarray(to_uint8(img))
    return atomic_write(p, lambda f: im.save(f, format=fmt, **save_kwargs))
