"""Independent (numpy / pure Python) colour-fix references for tests, written from the specs, not
from `common.color_fix`: AdaIN (varsr.md section 9 step 4) and the wavelet fix (pure.md 7.3)."""

from __future__ import annotations

import statistics

import numpy as np

KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def adain_channel(x: list[float], ref: list[float], eps: float = 1e-5) -> list[float]:
    """One channel: (x - mean_x) / sigma_x * sigma_ref + mean_ref, sigma = sqrt(unbiased var + eps), clamp."""
    mx, mr = statistics.fmean(x), statistics.fmean(ref)
    sx, sr = (statistics.variance(x) + eps) ** 0.5, (statistics.variance(ref) + eps) ** 0.5
    return [min(1.0, max(0.0, (v - mx) / sx * sr + mr)) for v in x]


def adain_np(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(C, H, W) arrays, channel by channel through `adain_channel`."""
    out = [adain_channel(x[c].ravel().tolist(), ref[c].ravel().tolist()) for c in range(x.shape[0])]
    return np.array(out).reshape(x.shape)


def _blur(a: np.ndarray, d: int) -> np.ndarray:
    """(C, H, W): 3x3 binomial kernel at dilation d, replicate ('edge') padding, sum of shifted copies."""
    h, w = a.shape[-2:]
    p = np.pad(a, ((0, 0), (d, d), (d, d)), mode="edge")
    return sum(KERNEL[i, j] * p[:, i * d : i * d + h, j * d : j * d + w] for i in range(3) for j in range(3))


def wavelet_bands(x: np.ndarray, levels: int = 5) -> tuple[np.ndarray, np.ndarray]:
    high = np.zeros_like(x)
    for i in range(levels):
        low = _blur(x, 2**i)
        high, x = high + (x - low), low
    return high, x


def wavelet_np(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """High band of x + low band of ref, clamped to [0, 1]."""
    return np.clip(wavelet_bands(x)[0] + wavelet_bands(ref)[1], 0, 1)
