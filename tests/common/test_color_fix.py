"""Colour-fix identities (pure.md §7.3) and AdaIN statistics (varsr.md §9)."""

from __future__ import annotations

import pytest
import torch

from common.color_fix import adain_color_fix, apply_color_fix, wavelet_color_fix, wavelet_decompose


@pytest.fixture
def imgs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 40, generator=g)
    ref = (0.3 + 0.4 * torch.rand(2, 3, 48, 40, generator=g)).clamp(0, 1)
    return x, ref


def test_wavelet_high_plus_low_is_input(imgs):
    x, _ = imgs
    high, low = wavelet_decompose(x.double(), levels=5)
    torch.testing.assert_close(high + low, x.double(), atol=1e-12, rtol=0)


def test_wavelet_fix_self_is_identity(imgs):
    x, _ = imgs
    torch.testing.assert_close(wavelet_color_fix(x, x), x, atol=1e-6, rtol=0)


def test_wavelet_low_band_of_constant_is_constant():
    # replicate padding + normalised kernel: a flat image has no high band at any dilation
    c = torch.full((1, 3, 20, 20), 0.25)
    high, low = wavelet_decompose(c)
    assert high.abs().max() < 1e-6 and (low - 0.25).abs().max() < 1e-6


def test_wavelet_takes_low_frequencies_from_ref(imgs):
    x, ref = imgs
    out = wavelet_color_fix(x, ref)
    # global colour (mean) follows the reference, fine detail follows x
    assert (out.mean((2, 3)) - ref.mean((2, 3))).abs().max() < 0.05
    hx, _ = wavelet_decompose(x)
    ho, _ = wavelet_decompose(out)
    assert torch.corrcoef(torch.stack([hx.flatten(), ho.flatten()]))[0, 1] > 0.9


def test_adain_matches_reference_statistics(imgs):
    x, ref = imgs
    x = 0.2 + 0.3 * x  # keep the result inside [0, 1] so the clamp is inactive
    out = adain_color_fix(x, ref)
    torch.testing.assert_close(out.mean((2, 3)), ref.mean((2, 3)), atol=1e-5, rtol=0)
    # std with the +1e-5 inside the sqrt, as in the official helper
    so = (out.flatten(2).var(-1) + 1e-5).sqrt()
    sr = (ref.flatten(2).var(-1) + 1e-5).sqrt()
    torch.testing.assert_close(so, sr, atol=1e-4, rtol=0)


def test_adain_closed_form_and_clamp():
    x = torch.tensor([0.0, 0.5, 1.0, 0.5]).view(1, 1, 2, 2).expand(1, 3, 2, 2).contiguous()
    ref = torch.full((1, 3, 4, 4), 0.9)
    ref[..., 0, 0] = 0.1
    out = adain_color_fix(x, ref)
    mx, sx = 0.5, (x.flatten(2).var(-1)[0, 0] + 1e-5).sqrt()
    mr, sr = ref.flatten(2).mean(-1)[0, 0], (ref.flatten(2).var(-1)[0, 0] + 1e-5).sqrt()
    expect = ((x - mx) / sx * sr + mr).clamp(0, 1)
    torch.testing.assert_close(out, expect)
    assert out.min() >= 0 and out.max() <= 1


def test_dispatch(imgs):
    x, ref = imgs
    assert apply_color_fix(x, ref, "none") is x
    torch.testing.assert_close(apply_color_fix(x, ref, "adain"), adain_color_fix(x, ref))
    with pytest.raises(ValueError, match="color_fix"):
        apply_color_fix(x, ref, "histogram")
