"""Y-channel PSNR/SSIM against skimage and basicsr; NIQE offline against basicsr."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from common.data.bundled import bundled_photos, fit_square
from common.metrics import psnr_y, ssim_y


def _degrade(img: np.ndarray, seed: int) -> np.ndarray:
    """Blur + Gaussian noise + JPEG: a realistic SR error, not a constant offset."""
    rng = np.random.default_rng(seed)
    x = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.2)), np.float64)
    x = np.clip(np.rint(x + rng.normal(0, 6, x.shape)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=60)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="module")
def pairs():
    photos = dict(bundled_photos())
    out = []
    for i, name in enumerate(["astronaut", "chelsea", "retina"]):
        hr = fit_square(photos[name], 256)
        out.append((hr, _degrade(hr, i)))
    return out


def _y_skimage(img: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2ycbcr

    return rgb2ycbcr(img)[..., 0] / 255.0  # BT.601 studio-range Y, independent implementation


def test_psnr_ssim_match_skimage(pairs):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    for hr, sr in pairs:
        yh, ys = _y_skimage(hr), _y_skimage(sr)
        ref_p = peak_signal_noise_ratio(yh, ys, data_range=1.0)
        ref_s = structural_similarity(
            yh, ys, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert 20 < ref_p < 45  # a visible degradation, not a near-identity
        assert abs(float(psnr_y(sr, hr)) - ref_p) < 1e-4
        assert abs(float(ssim_y(sr, hr)) - ref_s) < 1e-5


def test_psnr_ssim_match_basicsr(pairs):
    from common.compat.basicsr import metrics

    m = metrics()
    for hr, sr in pairs:  # basicsr takes BGR uint8 HWC
        ref_p = m.calculate_psnr(sr[..., ::-1], hr[..., ::-1], crop_border=0, test_y_channel=True)
        ref_s = m.calculate_ssim(sr[..., ::-1], hr[..., ::-1], crop_border=0, test_y_channel=True)
        assert abs(float(psnr_y(sr, hr)) - ref_p) < 1e-4
        assert abs(float(ssim_y(sr, hr)) - ref_s) < 1e-5
        ref_p4 = m.calculate_psnr(sr[..., ::-1], hr[..., ::-1], crop_border=4, test_y_channel=True)
        assert abs(float(psnr_y(sr, hr, crop_border=4)) - ref_p4) < 1e-4


def test_tensor_batch_equals_uint8_single(pairs):
    hr = torch.stack([torch.from_numpy(h).permute(2, 0, 1) for h, _ in pairs]).double() / 255
    sr = torch.stack([torch.from_numpy(s).permute(2, 0, 1) for _, s in pairs]).double() / 255
    pb, sb = psnr_y(sr, hr), ssim_y(sr, hr)
    assert pb.shape == (3,) and sb.shape == (3,)
    for i, (h, s) in enumerate(pairs):
        assert abs(float(pb[i]) - float(psnr_y(s, h))) < 1e-9
        assert abs(float(sb[i]) - float(ssim_y(s, h))) < 1e-9
    assert float(ssim_y(hr[0], hr[0])) == pytest.approx(1.0, abs=1e-12)
    assert torch.isinf(psnr_y(hr[0], hr[0]))


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_y(torch.zeros(3, 16, 16), torch.zeros(3, 16, 17))


def test_niqe_offline_close_to_basicsr(tmp_path):
    from common.compat.basicsr import metrics
    from common.metrics import MetricStack

    img = dict(bundled_photos())["astronaut"]  # common.md §3.3: 3.0640 (pyiqa) vs 3.0646 (basicsr)
    stack = MetricStack(["niqe"], weights_dir=tmp_path)  # empty dir: params converted from basicsr's npz
    assert "basicsr" in stack.variants["niqe"]
    ours = float(stack.score(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)["niqe"][0])
    ref = metrics().calculate_niqe(img[..., ::-1], 0, input_order="HWC", convert_to="y")
    assert abs(ours - float(ref)) < 0.01 * float(ref), (ours, ref)
    assert (tmp_path / "niqe_pris_params_from_basicsr.mat").is_file()
