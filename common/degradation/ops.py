"""Batched degradation primitives with basicsr semantics (spec common.md §1.4-1.5).

Each function works on a (B, C, H, W) float tensor on any device and takes per-sample
parameters as tensors/lists, so one call serves a whole batch.  basicsr's own versions are
the oracles in the tests; ours differ only in speed: kernels are cropped to their non-zero
support and large ones (incl. USM's 51x51) run as FFT products, JPEG's colour transforms are
elementwise instead of K=3 matmuls, and the Poisson "number of distinct values" is one
bincount for the batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- filtering


def crop_kernel_support(kernels: torch.Tensor) -> torch.Tensor:
    """Drop the all-zero border shared by a stack of centred odd kernels (..., k, k).

    A zero-padded kernel gives the same filter2D output after cropping, because reflect padding
    by a smaller radius reproduces exactly the samples the non-zero taps read.
    """
    k = kernels.shape[-1]
    c = k // 2
    nz = (kernels.reshape(-1, k, k) != 0).any(0)
    rows, cols = nz.any(1).nonzero(), nz.any(0).nonzero()
    if rows.numel() == 0:
        return kernels[..., c : c + 1, c : c + 1]
    half = int(max((rows - c).abs().max(), (cols - c).abs().max()))
    return kernels[..., c - half : c + half + 1, c - half : c + half + 1]


def _pad(x: torch.Tensor, p: tuple[int, int, int, int]) -> torch.Tensor:
    # torch 'reflect' needs pad < size; tiny images (which would crash the official code) fall
    # back to edge replication instead of failing mid-batch.
    if max(p[0], p[1]) < x.shape[-1] and max(p[2], p[3]) < x.shape[-2]:
        return F.pad(x, p, mode="reflect")
    return F.pad(x, p, mode="replicate")


# Above this (cropped) kernel size, and on images at least FFT_MIN_SIDE on each side, filter2d
# runs as an FFT product: its cost does not grow with k^2 (at k = 21 on 512^2 it is several
# times faster on CPU), at the price of ~1e-6 absolute float32 error instead of bit-equality.
FFT_MIN_KERNEL = 13
FFT_MIN_SIDE = 64


def _fft_size(n: int) -> int:
    """Smallest 5-smooth integer >= n (fast sizes for pocketfft / cuFFT)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _fft_correlate(xp: torch.Tensor, kernels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Valid cross-correlation of padded images (B,C,h+k-1,w+k-1) with (B|1,k,k) kernels via FFT.

    Circular convolution with the flipped kernel equals the correlation on every output index
    >= k-1, so zero-padding to a fast size and cropping the first k-1 rows/cols is exact maths.
    """
    k = kernels.shape[-1]
    size = (_fft_size(xp.shape[-2]), _fft_size(xp.shape[-1]))
    spec_k = torch.fft.rfft2(kernels.flip(-1, -2), s=size)
    y = torch.fft.irfft2(torch.fft.rfft2(xp, s=size) * spec_k[:, None], s=size)
    return y[..., k - 1 : k - 1 + h, k - 1 : k - 1 + w].contiguous()


def filter2d(x: torch.Tensor, kernels: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """basicsr ``filter2D``: reflect pad by k//2, cross-correlate; kernels (B,k,k) or (1,k,k).

    ``method``: "direct" (grouped conv, bit-equal to basicsr), "fft", or "auto" (FFT for large
    kernels on large images, see FFT_MIN_KERNEL).
    """
    if kernels.dim() == 2:
        kernels = kernels[None]
    kernels = crop_kernel_support(kernels.to(device=x.device, dtype=x.dtype))
    k = kernels.shape[-1]
    b, c, h, w = x.shape
    if kernels.shape[0] not in (1, b):
        raise ValueError(f"filter2d: {kernels.shape[0]} kernels for a batch of {b}")
    if k == 1:  # identity-like pulse: a per-sample multiply (1 for the identity sinc kernel)
        return x * kernels.view(-1, 1, 1, 1)
    xp = _pad(x, (k // 2,) * 4)
    if method == "fft" or (method == "auto" and k >= FFT_MIN_KERNEL and min(h, w) >= FFT_MIN_SIDE):
        return _fft_correlate(xp, kernels, h, w)
    # cuDNN may run convs in TF32 (PyTorch's default), ~1e-3 relative error: not for data synthesis.
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        if kernels.shape[0] == 1:
            out = F.conv2d(xp.reshape(b * c, 1, *xp.shape[-2:]), kernels.view(1, 1, k, k))
        else:
            weight = kernels.repeat_interleave(c, dim=0).view(b * c, 1, k, k)
            out = F.conv2d(xp.reshape(1, b * c, *xp.shape[-2:]), weight, groups=b * c)
    return out.view(b, c, h, w)


def usm_gaussian(radius: int = 50) -> torch.Tensor:
    """1-D kernel of OpenCV ``getGaussianKernel(radius|1, 0)``: sigma = 0.3((k-1)/2 - 1) + 0.8."""
    k = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    t = np.arange(k, dtype=np.float64) - (k - 1) / 2
    g = np.exp(-(t * t) / (2 * sigma * sigma))
    return torch.from_numpy((g / g.sum()).astype(np.float32))


def usm_sharp(x: torch.Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10.0) -> torch.Tensor:
    """basicsr ``USMSharp`` (spec §1.5): sharpen where |I - blur| exceeds threshold/255, softly masked."""
    g = usm_gaussian(radius).to(device=x.device, dtype=x.dtype)
    g2 = (g[:, None] * g[None, :])[None]  # the 51x51 kernel, as basicsr builds it from OpenCV's 1-D one
    # filter2d's "auto" runs this 51x51 kernel as an FFT product on real-size images: ~10x less
    # work than the direct conv; rounding can flip the threshold mask at isolated pixels (<1e-3 effect).
    residual = x - filter2d(x, g2)
    mask = (residual.abs() * 255 > threshold).to(x.dtype)
    soft = filter2d(mask, g2)
    sharp = torch.clamp(x + weight * residual, 0, 1)
    return soft * sharp + (1 - soft) * x


# ----------------------------------------------------------------------------- noise


def _gray(x: torch.Tensor) -> torch.Tensor:
    # torchvision rgb_to_grayscale weights (BT.601), which basicsr's Poisson gray branch uses.
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).to(x.dtype)


def gaussian_noise(
    x: torch.Tensor,
    sigma: torch.Tensor,
    gray: Sequence[bool],
    gens: Sequence[torch.Generator],
    shared_gray: bool = False,
) -> torch.Tensor:
    """Noise field N(0, (sigma/255)^2) per sample; gray samples get one channel broadcast to RGB.

    ``gens[i]`` drives sample i.  ``shared_gray`` reproduces the official batched quirk: one
    H x W gray field drawn once (from ``gens[0]``) and shared by every gray sample of the batch.
    """
    b, c, h, w = x.shape
    shared = None
    if shared_gray and any(gray):
        shared = torch.randn(1, h, w, generator=gens[0], device=x.device, dtype=x.dtype)
    fields = []
    for i in range(b):
        if gray[i]:
            f = (
                shared
                if shared is not None
                else torch.randn(1, h, w, generator=gens[i], device=x.device, dtype=x.dtype)
            )
            fields.append(f.expand(c, h, w))
        else:
            fields.append(torch.randn(c, h, w, generator=gens[i], device=x.device, dtype=x.dtype))
    sig = sigma.to(device=x.device, dtype=x.dtype).view(b, 1, 1, 1) / 255.0
    return torch.stack(fields) * sig


def _distinct_levels(q8: torch.Tensor) -> torch.Tensor:
    """Per-sample 2^ceil(log2(#distinct 8-bit values)) from one batched bincount."""
    b = q8.shape[0]
    idx = q8.reshape(b, -1).long() + 256 * torch.arange(b, device=q8.device)[:, None]
    counts = torch.bincount(idx.reshape(-1), minlength=256 * b).view(b, 256)
    n = (counts > 0).sum(1).double()
    return torch.exp2(torch.ceil(torch.log2(n)))


def poisson_noise(
    x: torch.Tensor, scale: torch.Tensor, gray: Sequence[bool], gens: Sequence[torch.Generator]
) -> torch.Tensor:
    """basicsr Poisson noise: on the 8-bit-quantised image (or its luminance for gray samples),
    noise = Poisson(x v) / v - x with v = 2^ceil(log2(#distinct values)), times ``scale``."""
    b, c, h, w = x.shape
    out = []
    gray_t = torch.tensor(list(gray), device=x.device)
    src = torch.where(gray_t.view(b, 1, 1, 1), _gray(x).expand(b, c, h, w), x)
    q = torch.clamp((src * 255.0).round(), 0, 255)
    levels = _distinct_levels(q[:, :1] if all(gray) else q).to(x.dtype)
    if any(gray) and not all(gray):  # gray samples count levels on their single luminance plane
        levels_gray = _distinct_levels(q[:, :1]).to(x.dtype)
        levels = torch.where(gray_t, levels_gray, levels)
    q = q / 255.0
    for i in range(b):
        xi = q[i, :1] if gray[i] else q[i]
        v = levels[i]
        n = torch.poisson(xi * v, generator=gens[i]) / v - xi
        out.append(n.expand(c, h, w))
    return torch.stack(out) * scale.to(device=x.device, dtype=x.dtype).view(b, 1, 1, 1)


# ----------------------------------------------------------------------------- JPEG

_STD_Y = [
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
]
_STD_C4 = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
_JPEG_CACHE: dict = {}


def _jpeg_consts(device: torch.device) -> dict:
    key = str(device)
    if key not in _JPEG_CACHE:
        # Tables are transposed exactly as in DiffJPEG (inherited from mlomnitz/DiffJPEG): its
        # 8x8 blocks are indexed [row, col] but the table is laid out [col, row].
        y = np.array(_STD_Y, dtype=np.float32).T
        cq = np.full((8, 8), 99, dtype=np.float32)
        cq[:4, :4] = np.array(_STD_C4, dtype=np.float32).T
        fwd = np.zeros((8, 8, 8, 8), dtype=np.float32)
        inv = np.zeros((8, 8, 8, 8), dtype=np.float32)
        for a, b_, u, v in itertools.product(range(8), repeat=4):
            fwd[a, b_, u, v] = math.cos((2 * a + 1) * u * math.pi / 16) * math.cos((2 * b_ + 1) * v * math.pi / 16)
            inv[a, b_, u, v] = math.cos((2 * u + 1) * a * math.pi / 16) * math.cos((2 * v + 1) * b_ * math.pi / 16)
        alpha = np.array([1.0 / np.sqrt(2)] + [1.0] * 7)
        t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).to(device)  # noqa: E731
        _JPEG_CACHE[key] = {
            "y": t(y),
            "c": t(cq),
            "fwd": t(fwd),
            "inv": t(inv),
            "scale": t(np.outer(alpha, alpha) * 0.25),
            "alpha": t(np.outer(alpha, alpha)),
            "rgb2ycc": t(np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]).T),
            "ycc2rgb": t(np.array([[1.0, 0.0, 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]]).T),
            "shift": t([0.0, 128.0, 128.0]),
        }
    return _JPEG_CACHE[key]


def quality_to_factor(quality: torch.Tensor) -> torch.Tensor:
    """IJG scaling of the quantisation tables, evaluated in float32 like DiffJPEG."""
    q = quality.float()
    return torch.where(q < 50, 5000.0 / q, 200.0 - q * 2) / 100.0


def _blocks(p: torch.Tensor) -> torch.Tensor:
    b, h, w = p.shape
    return p.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)


def _unblocks(p: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b = p.shape[0]
    return p.view(b, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h, w)


def _mix3(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """out[:, j] = x0 m[0,j] + x1 m[1,j] + x2 m[2,j], summed left to right in separate IEEE ops:
    the same values DiffJPEG's (B,H,W,3) x (3,3) tensordot produces, without its transposes."""
    return torch.stack([x[:, 0] * m[0, j] + x[:, 1] * m[1, j] + x[:, 2] * m[2, j] for j in range(3)], dim=1)


def _up2(p: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x (DiffJPEG's chroma upsampling)."""
    b, h, w = p.shape
    return p[:, :, None, :, None].expand(b, h, 2, w, 2).reshape(b, 2 * h, 2 * w)


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """basicsr ``DiffJPEG(differentiable=False)`` with a float quality per sample.

    Zero-pads to a multiple of 16, YCbCr (JPEG full range), 4:2:0 by 2x2 averaging, 8x8 DCT,
    true rounding against the scaled tables, and back; output clamped to [0, 1], padding cropped.
    """
    cst = _jpeg_consts(x.device)
    b, _, h, w = x.shape
    ph, pw = (-h) % 16, (-w) % 16
    xf = F.pad(x.float(), (0, pw, 0, ph)) * 255
    H, W = h + ph, w + pw
    ycc = _mix3(xf, cst["rgb2ycc"]) + cst["shift"].view(1, 3, 1, 1)
    y = ycc[:, 0]
    cbcr = F.avg_pool2d(ycc[:, 1:], kernel_size=2, stride=2)
    factor = quality_to_factor(quality.to(x.device)).view(b, 1, 1, 1)
    ty, tc = cst["y"] * factor, cst["c"] * factor  # (b,1,8,8) like DiffJPEG's expanded tables
    planes = [
        (_blocks(y), ty, H, W),
        (_blocks(cbcr[:, 0]), tc, H // 2, W // 2),
        (_blocks(cbcr[:, 1]), tc, H // 2, W // 2),
    ]
    rec = []
    for blk, table, ht, wd in planes:
        coef = cst["scale"] * torch.tensordot(blk - 128, cst["fwd"], dims=2)
        coef = torch.round(coef / table) * table
        pix = 0.25 * torch.tensordot(coef * cst["alpha"], cst["inv"], dims=2) + 128
        rec.append(_unblocks(pix, ht, wd))
    ycc = torch.stack([rec[0], _up2(rec[1]), _up2(rec[2])], dim=1) - cst["shift"].view(1, 3, 1, 1)
    rgb = torch.clamp(_mix3(ycc, cst["ycc2rgb"]), 0, 255) / 255
    return rgb[:, :, :h, :w].to(x.dtype)


# ----------------------------------------------------------------------------- misc


def quantize(x: torch.Tensor) -> torch.Tensor:
    """8-bit rounding as Real-ESRGAN: clamp(round(255 x), 0, 255) / 255."""
    return torch.clamp((x * 255.0).round(), 0, 255) / 255.0
