"""common.compat.basicsr: basicsr 1.4.2 imports on torchvision >= 0.17 through the shim."""

import sys

import torch


def test_shim_exposes_public_rgb_to_grayscale_and_basicsr_imports():
    from torchvision.transforms import functional as tvf

    from common.compat import basicsr as compat

    bs = compat.get_basicsr()
    assert bs.__version__ == "1.4.2"
    shim = sys.modules["torchvision.transforms.functional_tensor"]
    assert shim.rgb_to_grayscale is tvf.rgb_to_grayscale
    # the degradations module (the one that imports the removed name) is usable
    deg = compat.degradations()
    assert deg.rgb_to_grayscale is tvf.rgb_to_grayscale
    from common.compat.basicsr import basicsr as bs2  # the form the preamble documents

    assert bs2 is bs


def test_accessors_return_working_oracles():
    from common.compat import basicsr as compat

    x = torch.rand(2, 3, 32, 32)
    k = torch.zeros(1, 3, 3)
    k[0, 1, 1] = 1.0
    assert torch.equal(compat.filter2D(x, k), x)  # identity kernel
    out = compat.DiffJPEG(differentiable=False)(x, quality=torch.tensor([90.0, 90.0]))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert compat.USMSharp()(x).shape == x.shape
    assert hasattr(compat.metrics(), "calculate_psnr")
