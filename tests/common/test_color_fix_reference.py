"""Colour fix against independent references (issue 15): AdaIN per channel written out in pure
Python (unbiased variance, +1e-5 inside the sqrt, reference of a different size), the wavelet fix
against a numpy second implementation, and per-image / per-channel statistics in a batch."""

from __future__ import annotations

import numpy as np
import torch

from common.color_fix import adain_color_fix, apply_color_fix, wavelet_color_fix

from .colorfix_reference import adain_channel, adain_np, wavelet_np


def test_adain_hand_numbers():
    # channel 0 of x: 0.2, 0.4, 0.6, 0.8 -> mean 0.5, unbiased var 0.2/3; ref: 0.1, 0.3, 0.5 (3 px)
    x = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64).view(1, 1, 2, 2)
    ref = torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64).view(1, 1, 1, 3)
    sx, sr = (0.2 / 3 + 1e-5) ** 0.5, (0.04 + 1e-5) ** 0.5  # ref: mean 0.3, unbiased var 0.08/2
    want = [(v - 0.5) / sx * sr + 0.3 for v in (0.2, 0.4, 0.6, 0.8)]
    # the fix computes in float32 (then casts back), hence 1e-6
    np.testing.assert_allclose(adain_color_fix(x, ref).flatten().tolist(), want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(adain_channel([0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.5]), want, atol=1e-15, rtol=0)


def test_adain_per_image_per_channel_against_python_reference():
    """Two images, three channels with very different casts; ref of another size (the resized LR)."""
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(2, 3, 6, 5, generator=g, dtype=torch.float64)
    cast = torch.tensor([[0.8, 0.2, 0.5], [0.3, 0.6, 0.9]], dtype=torch.float64)[..., None, None]
    ref = (cast + 0.15 * (torch.rand(2, 3, 4, 7, generator=g, dtype=torch.float64) - 0.5)).clamp(0, 1)
    out = adain_color_fix(x, ref)
    for b in range(2):
        want = adain_np(x[b].numpy(), ref[b].numpy())
        np.testing.assert_allclose(out[b].numpy(), want, atol=1e-6, rtol=0)
    # the output's channel means follow the reference, not x
    torch.testing.assert_close(out.mean((2, 3)), ref.mean((2, 3)), atol=1e-6, rtol=0)


def test_adain_clamps_to_unit_range():
    x = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64).view(1, 1, 2, 2)
    ref = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64).view(1, 1, 2, 2)
    out = adain_color_fix(x, ref).flatten().tolist()
    np.testing.assert_allclose(out, adain_channel([0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    assert out[-1] == 1.0  # unclamped: 0.5 + 1.5 * sqrt(1/3 + 1e-5) / sqrt(1/4 + 1e-5) > 1


def test_wavelet_against_numpy_second_implementation():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 24, 20, generator=g, dtype=torch.float64)
    ref = (torch.tensor([0.9, 0.1, 0.4], dtype=torch.float64)[:, None, None] + 0.2 * torch.rand(2, 3, 24, 20)).clamp(
        0, 1
    )
    out = wavelet_color_fix(x, ref)
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(), wavelet_np(x[b].numpy(), ref[b].numpy()), atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_color_fix(x, ref, "wavelet"), out, atol=0, rtol=0)
    torch.testing.assert_close(apply_color_fix(x, ref, "adain"), adain_color_fix(x, ref), atol=0, rtol=0)
