"""Colour correction of SR outputs against the (upsampled) LR input.

Both autoregressive models drift in global colour; the papers correct it after decoding:
- VARSR: AdaIN per channel (varsr.md §9 step 4), σ = sqrt(unbiased var + 1e-5), clamp [0, 1].
- PURE: wavelet fix (pure.md §7.3): high frequencies of the SR + low frequencies of the LR,
  5 levels of a 3x3 binomial blur at dilations 1, 2, 4, 8, 16 with replicate padding.
The official code round-trips through PIL (truncating x255); we stay in float and leave
quantisation to whoever writes the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("adain", "wavelet", "none")


def _check(x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.dim() != 4 or ref.dim() != 4 or x.shape[:2] != ref.shape[:2]:
        raise ValueError(
            f"colour fix expects (B,C,H,W) tensors with equal B,C; got {tuple(x.shape)} and {tuple(ref.shape)}"
        )


def _mean_std(t: torch.Tensor, eps: float):
    flat = t.flatten(2)
    # Unbiased variance (torch.var default), as in the official AdaIN helper.
    return flat.mean(-1)[..., None, None], (flat.var(-1, unbiased=True) + eps).sqrt()[..., None, None]


def adain_color_fix(x: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-image, per-channel mean/std of ``x`` matched to ``ref`` (sizes may differ), clamped."""
    _check(x, ref)
    mx, sx = _mean_std(x.float(), eps)
    mr, sr = _mean_std(ref.float(), eps)
    return ((x.float() - mx) / sx * sr + mr).clamp(0, 1).to(x.dtype)


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device) / 16
    c = x.shape[1]
    xp = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(xp, k.expand(c, 1, 3, 3), groups=c, dilation=dilation)


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with high + low == x: low is ``levels`` successive dilated blurs
    (dilation 2**i), high accumulates what each blur removed."""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _blur(x, 2**i)
        high = high + (x - low)
        x = low
    return high, x


def wavelet_color_fix(x: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """High frequencies of ``x`` + low frequencies of ``ref`` (same size as ``x``), clamped."""
    _check(x, ref)
    if x.shape != ref.shape:
        raise ValueError(
            f"wavelet colour fix needs ref resized to the output size: {tuple(x.shape)} vs {tuple(ref.shape)}"
        )
    high, _ = wavelet_decompose(x.float(), levels)
    _, low = wavelet_decompose(ref.float(), levels)
    return (high + low).clamp(0, 1).to(x.dtype)


def apply_color_fix(x: torch.Tensor, ref: torch.Tensor, method: str = "adain") -> torch.Tensor:
    """Dispatch on ``method`` in COLOR_FIXES ("none" returns ``x`` unchanged)."""
    if method == "adain":
        return adain_color_fix(x, ref)
    if method == "wavelet":
        return wavelet_color_fix(x, ref)
    if method in ("none", None):
        return x
    raise ValueError(f"color_fix must be one of {COLOR_FIXES}, got {method!r}")
