"""Degradation primitives and kernel formulas against basicsr (the oracle, via common.compat)."""

import math

import numpy as np
import pytest
import torch

from common.compat import basicsr as bsr
from common.degradation import ops
from common.degradation.kernels import mixed_kernel, pad_kernel, sinc_kernel


@pytest.fixture(scope="module")
def deg():
    return bsr.degradations()


def _padded_kernels(b, ks, size=21, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.zeros(b, size, size)
    for i, s in enumerate(ks):
        p = (size - s) // 2
        v = torch.rand(s, s, generator=g)
        k[i, p : p + s, p : p + s] = v / v.sum()
    return k


def test_filter2d_matches_basicsr_per_sample_and_shared():
    x = torch.rand(3, 3, 40, 52)
    k = _padded_kernels(3, [7, 13, 21])
    assert torch.equal(ops.filter2d(x, k, method="direct"), bsr.filter2D(x, k))
    assert torch.equal(ops.filter2d(x, k[:1], method="direct"), bsr.filter2D(x, k[:1]))
    ident = torch.zeros(3, 21, 21)
    ident[:, 10, 10] = 1
    assert torch.equal(ops.filter2d(x, ident), bsr.filter2D(x, ident))


@pytest.mark.parametrize("shape", [(2, 3, 70, 97), (1, 3, 64, 64)])
def test_filter2d_fft_path_matches_basicsr(shape):
    x = torch.rand(*shape)
    k = _padded_kernels(shape[0], [21, 15][: shape[0]])
    assert ops.FFT_MIN_KERNEL <= 15 and min(shape[2:]) >= ops.FFT_MIN_SIDE  # "auto" takes the FFT path
    ref = bsr.filter2D(x, k)
    for method in ("fft", "auto"):
        assert torch.allclose(ops.filter2d(x, k, method=method), ref, atol=5e-6)
    assert torch.allclose(ops.filter2d(x, k[:1], method="fft"), bsr.filter2D(x, k[:1]), atol=5e-6)


def test_fft_sizes_are_5_smooth():
    assert [ops._fft_size(n) for n in (532, 64, 97, 1)] == [540, 64, 100, 1]


def test_crop_kernel_support_keeps_the_nonzero_core():
    k = _padded_kernels(2, [7, 11])
    c = ops.crop_kernel_support(k)
    assert c.shape[-1] == 11 and torch.isclose(c.sum(), k.sum())


@pytest.mark.parametrize("shape", [(2, 3, 40, 56), (1, 3, 72, 90)])  # direct conv / FFT path
def test_usm_matches_basicsr(shape):
    x = torch.rand(*shape)
    d = (ops.usm_sharp(x) - bsr.USMSharp()(x)).abs()
    # FFT rounding can flip the threshold mask at an isolated pixel (effect <= ~1e-3 there)
    assert d.max() < 2e-3 and d.mean() < 2e-6
    assert torch.equal(ops.usm_gaussian(50), torch.from_numpy(__import__("cv2").getGaussianKernel(51, 0)[:, 0]).float())


def test_jpeg_matches_diffjpeg_per_sample_quality():
    x = torch.rand(4, 3, 37, 50)  # not a multiple of 16: exercises padding and crop
    q = torch.tensor([12.5, 49.9, 50.0, 95.0])
    ref = bsr.DiffJPEG(differentiable=False)(x, quality=q.clone())
    out = ops.jpeg(x, q)
    assert torch.equal(out, ref)
    # batch composition does not change a sample's result
    assert torch.equal(ops.jpeg(x[1:2], q[1:2]), out[1:2])


@pytest.mark.parametrize("gray", [0.0, 1.0])
def test_gaussian_noise_same_field_as_basicsr(deg, gray):
    x = torch.rand(1, 3, 24, 24)
    sigma = torch.tensor([17.0])
    torch.manual_seed(123)
    ref = deg.generate_gaussian_noise_pt(x, sigma=sigma, gray_noise=torch.tensor([gray]))
    ours = ops.gaussian_noise(x, sigma, [bool(gray)], [torch.Generator().manual_seed(123)])
    assert torch.allclose(ours, ref, atol=1e-7)
    if gray:
        assert torch.equal(ours[:, 0], ours[:, 1]) and torch.equal(ours[:, 1], ours[:, 2])


@pytest.mark.parametrize("gray", [0.0, 1.0])
def test_poisson_noise_same_field_as_basicsr(deg, gray):
    x = torch.rand(1, 3, 24, 24) * 0.5
    scale = torch.tensor([1.7])
    torch.manual_seed(7)
    ref = deg.generate_poisson_noise_pt(x, scale=scale, gray_noise=torch.tensor([gray]))
    ours = ops.poisson_noise(x, scale, [bool(gray)], [torch.Generator().manual_seed(7)])
    assert torch.allclose(ours, ref, atol=1e-6)


def test_poisson_distinct_levels_match_unique():
    x = torch.clamp((torch.rand(3, 3, 16, 16) * 40).round(), 0, 255)
    x[1] = 5  # a flat image: one level -> v = 1
    lv = ops._distinct_levels(x)
    ref = [2 ** math.ceil(math.log2(len(torch.unique(x[i])))) for i in range(3)]
    assert lv.tolist() == ref


def test_shared_gray_quirk_reuses_one_field():
    x = torch.rand(3, 3, 16, 16)
    gens = [torch.Generator().manual_seed(1)] * 3
    n = ops.gaussian_noise(x, torch.tensor([10.0, 20.0, 5.0]), [True, True, False], gens, shared_gray=True)
    assert torch.allclose(n[1], 2 * n[0], atol=1e-6)  # same pattern, scaled by each sigma
    assert not torch.allclose(n[2, 0], n[2, 1])  # colour sample: independent channels


@pytest.mark.parametrize(
    "fam,sx,sy,theta,beta",
    [
        ("iso", 1.3, None, None, None),
        ("aniso", 0.7, 2.4, 0.9, None),
        ("generalized_iso", 1.1, None, None, 0.6),
        ("generalized_aniso", 2.0, 0.5, -2.1, 3.3),
        ("plateau_iso", 1.5, None, None, 1.0),
        ("plateau_aniso", 0.9, 2.8, 1.7, 1.8),
    ],
)
def test_kernel_formulas_match_basicsr(deg, fam, sx, sy, theta, beta):
    iso = "aniso" not in fam
    fn = {
        "iso": deg.bivariate_Gaussian,
        "aniso": deg.bivariate_Gaussian,
        "generalized_iso": deg.bivariate_generalized_Gaussian,
        "generalized_aniso": deg.bivariate_generalized_Gaussian,
        "plateau_iso": deg.bivariate_plateau,
        "plateau_aniso": deg.bivariate_plateau,
    }[fam]
    args = (15, sx, sy or sx, theta or 0.0) + ((beta,) if beta is not None else ())
    ref = fn(*args, isotropic=iso)
    ours = mixed_kernel(fam, 15, sx, sy or sx, theta or 0.0, beta)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert abs(ours.sum() - 1) < 1e-12


@pytest.mark.parametrize("wc,ks", [(math.pi / 3, 7), (2.0, 13), (math.pi, 21)])
def test_sinc_kernel_matches_circular_lowpass(deg, wc, ks):
    np.testing.assert_allclose(
        pad_kernel(sinc_kernel(wc, ks), 21), deg.circular_lowpass_kernel(wc, ks, pad_to=21), atol=1e-12
    )


def test_quantize_is_8bit():
    q = ops.quantize(torch.rand(2, 3, 8, 8) * 1.4 - 0.2)
    v = q * 255
    assert torch.allclose(v, v.round(), atol=1e-4) and q.min() >= 0 and q.max() <= 1
