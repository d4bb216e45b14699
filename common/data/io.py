"""Robust image reading/writing for every dataset in the repo.

`read_image` is the single entry point (the image-decoding gate) that turns *any* file a
dataset may contain into an ``uint8 (H, W, 3)`` RGB array, or raises `BadImageError` with a
one-line message naming the file.  Training sets (LSDIR, FFHQ, IQA negatives scraped from the
web) contain gray, palette, RGBA, 16-bit and CMYK files; converting them here means no dataset
worker ever crashes on one, and the conversions are the same everywhere (training, evaluation,
data prep, folder tools, web uploads).

Decompression bombs (a few MB of compressed zeros declaring 30000 x 30000 px) are refused from
the file header, before any decoder allocates: ``max_pixels`` (config key ``max_input_pixels``
of the folder tools and the web demo; default `DEFAULT_MAX_INPUT_PIXELS`, 8192^2, or the
``ARSR_MAX_INPUT_PIXELS`` environment variable for readers without a config key, e.g. training
data workers) bounds width x height for every format and bit depth, the 16-bit PNGs that
OpenCV decodes included (their size is read from the IHDR chunk), and `ImageTooLarge` says so.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# 8192^2: the largest output the samplers write by default (max_output_pixels), so they can read it back
DEFAULT_MAX_INPUT_PIXELS = int(os.environ.get("ARSR_MAX_INPUT_PIXELS", 8192 * 8192))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIL_OPEN = threading.Lock()  # guards the moment Pillow's own (process-wide) bomb limit is lifted


class BadImageError(ValueError):
    """A file that cannot be turned into an RGB image; ``str(err)`` is one line naming the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the decoder said
        super().__init__(f"bad image {self.path}: {self.reason}")


class ImageTooLarge(BadImageError):
    """The header declares more pixels than the limit; nothing was decoded (a folder run skips it)."""


def is_image_file(path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _png_ihdr(path: Path) -> tuple[int, int, int] | None:
    """(width, height, bit depth) from a PNG's IHDR chunk, or None for other files.

    PIL silently keeps only the high byte of 16-bit RGB PNGs, so those are decoded by OpenCV
    (and rounded properly, x / 257); OpenCV has no pixel limit of ours, so the size is read here.
    """
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) == 25 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return w, h, head[24]
    return None


def check_pixels(path, width: int, height: int, max_pixels: int | None) -> None:
    """Raise `ImageTooLarge` when width x height is above ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            path,
            f"too large: {width}x{height} = {width * height:,} px is over max_input_pixels={max_pixels} "
            "(read from the file header, nothing decoded); raise max_input_pixels to read it",
        )


def _open_header(p: Path) -> Image.Image:
    """``Image.open`` (header only, no pixel buffer yet) with our limit in place of Pillow's.

    Pillow refuses above 2 x ``Image.MAX_IMAGE_PIXELS`` with its own message and only warns below;
    lifting it for this call lets `check_pixels` apply the one configured limit to every format."""
    with _PIL_OPEN:
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(p)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    # Transparent pixels have arbitrary RGB (often black); a white backdrop is what a viewer
    # shows and avoids inventing dark halos around cut-out objects.
    rgb = rgba[..., :3].astype(np.float32)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgb * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _scale16(x: np.ndarray) -> np.ndarray:
    # round(x / 257) in integers (x / 257 is never a tie, 257 being odd): a quarter of float64's memory
    return ((x.astype(np.uint32) + 128) // 257).astype(np.uint8)


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


def read_image(path, max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS) -> np.ndarray:
    """Read ``path`` as ``uint8 (H, W, 3)`` RGB (EXIF orientation applied).

    Gray -> replicated, palette -> RGB, RGBA/LA -> composited on white, 16-bit -> round(x/257),
    CMYK -> RGB.  Missing, zero-byte, truncated or non-image files raise `BadImageError`; a
    header declaring more than ``max_pixels`` (None: no limit) raises `ImageTooLarge` before
    any decoder runs.
    """
    p = Path(path)
    if not p.is_file():
        raise BadImageError(p, "no such file")
    if p.stat().st_size == 0:
        raise BadImageError(p, "zero-byte file")
    try:
        ihdr = _png_ihdr(p)
        if ihdr is not None and ihdr[2] == 16:
            check_pixels(p, ihdr[0], ihdr[1], max_pixels)
            return np.ascontiguousarray(_read_16bit_png(p))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / palette warnings are not errors
            with _open_header(p) as im:
                check_pixels(p, *im.size, max_pixels)  # the header is parsed, no pixel buffer yet
                im.load()  # decode fully now so truncation is detected here, not later
                im = ImageOps.exif_transpose(im)
                arr = _pil_to_rgb(im)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(p, "not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as e:
        raise BadImageError(p, f"unreadable or truncated ({type(e).__name__}: {e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadImageError(p, f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def image_size(path) -> tuple[int, int]:
    """(width, height) from the header only (cheap); raises BadImageError like `read_image`."""
    p = Path(path)
    try:
        with _open_header(p) as im:
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
