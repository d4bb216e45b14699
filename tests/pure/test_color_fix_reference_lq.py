"""PURE's colour fix through `Restorer.restore` uses the LQ as its reference (issue 15): the result
equals an independent numpy fix of the decoded image against the LQ pixels (wavelet, the PURE
default, and AdaIN), and a strong colour cast in the LQ moves the output's means towards the LQ's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pure.processors import SamplingConfig
from pure.restore import Restorer

from ..common.colorfix_reference import adain_np, wavelet_np


@pytest.mark.parametrize("method,fix", [("wavelet", wavelet_np), ("adain", adain_np)])
def test_restore_fixes_against_the_lq(tiny_model, tiny_vq, test_tokenizer, one_thread, method, fix):
    rng = np.random.default_rng(0)
    cast = np.array([210, 40, 120], dtype=np.float64)
    lq = np.clip(cast + rng.normal(0, 12, (16, 16, 3)), 0, 255).astype(np.uint8)  # native bucket: no resize
    r = Restorer(
        tiny_model, tiny_vq, test_tokenizer, SamplingConfig(), resolution=16, max_new_tokens=80, image_only=True
    )
    r.color_fix = method
    (res,) = r.restore([lq], torch.Generator().manual_seed(0))
    assert res.ok and res.raw is not None and res.raw.shape == (3, 16, 16)
    ref = lq.transpose(2, 0, 1).astype(np.float64) / 255
    raw = res.raw.double().numpy()
    np.testing.assert_allclose(res.image.numpy(), fix(raw, ref), atol=1e-5, rtol=0)
    # not vacuous: the decoded image is far from the cast, the fixed one close to it
    means = ref.mean((1, 2))
    far = np.abs(raw.mean((1, 2)) - means).max()
    assert far > 0.1 and np.abs(res.image.numpy().mean((1, 2)) - means).max() < far / 2
