"""PSNR / SSIM on the Y channel, the convention of every table we reproduce (common.md §3.1).

Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 with RGB in [0, 1] (BT.601 studio range),
computed in float64 like VARSR's evaluation and basicsr's ``calculate_psnr/ssim``.
PSNR uses data range 1 on Y in [0, 1] (identical to basicsr's 255-scale value). SSIM uses an
11x11 Gaussian window with sigma 1.5, no down-sampling, 'valid' filtering (basicsr's [5:-5]
crop), C1 = 0.01^2, C2 = 0.03^2. ``crop_border`` defaults to 0: the papers' convention (not
Real-ESRGAN's example validation, which crops 4 px and uses RGB).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _to_batch64(img) -> tuple[torch.Tensor, bool]:
    """Tensor (B,3,H,W)/(3,H,W) in [0,1] or uint8 array (H,W,3)/(B,H,W,3) -> float64 (B,3,H,W)."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise TypeError(f"numpy inputs must be uint8 HWC, got {img.dtype}")
        t = torch.from_numpy(np.array(img, copy=True)).to(torch.float64) / 255.0
        t = t.permute(2, 0, 1) if t.dim() == 3 else t.permute(0, 3, 1, 2)
    elif isinstance(img, torch.Tensor):
        t = img.detach().to("cpu", torch.float64)
    else:
        raise TypeError(f"expected a tensor or uint8 array, got {type(img).__name__}")
    single = t.dim() == 3
    t = t.unsqueeze(0) if single else t
    if t.dim() != 4 or t.shape[1] != 3:
        raise ValueError(f"expected RGB images (3 channels), got shape {tuple(t.shape)}")
    return t, single


def rgb_to_y(t: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> (B,1,H,W) BT.601 studio-range Y in [16/255, 235/255]."""
    w = torch.tensor(_Y_WEIGHTS, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    return (16.0 + (t * w).sum(1, keepdim=True)) / 255.0


def _prepare(sr, hr, crop_border: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    a, single = _to_batch64(sr)
    b, _ = _to_batch64(hr)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: sr {tuple(a.shape)} vs hr {tuple(b.shape)}")
    a, b = rgb_to_y(a), rgb_to_y(b)
    if crop_border:
        c = int(crop_border)
        a, b = a[..., c:-c, c:-c], b[..., c:-c, c:-c]
    return a, b, single


def psnr_y(sr, hr, crop_border: int = 0) -> torch.Tensor:
    """PSNR (dB) on Y; Tensor(B) for batches, a 0-d tensor for one image (inf if identical)."""
    a, b, single = _prepare(sr, hr, crop_border)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    out = 10.0 * torch.log10(1.0 / mse)
    return out[0] if single else out


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor) -> torch.Tensor:
    # The 11x11 Gaussian is separable: two 1-D passes in float64 are ~5x cheaper than one 2-D
    # pass and give the same 'valid' result (float64 convs have no fast CPU kernels).
    c = x.shape[1]
    g = _gaussian_1d().to(x.device)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim_y(sr, hr, crop_border: int = 0) -> torch.Tensor:
    """SSIM on Y (mean over the valid region); Tensor(B) or 0-d tensor like `psnr_y`."""
    a, b, single = _prepare(sr, hr, crop_border)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 after cropping, got {tuple(a.shape[-2:])}")
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b, aa, bb, ab = _filter_valid(torch.cat([a, b, a * a, b * b, a * b], dim=1)).unbind(1)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    out = ssim_map.flatten(1).mean(1)
    return out[0] if single else out
