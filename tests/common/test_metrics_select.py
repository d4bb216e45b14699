"""Which metrics a sampling run scores: the selection less what needs a missing HR, NIQE as fallback."""

import numpy as np
from PIL import Image

from common.metrics.select import scorable_metrics


def _folder(tmp_path, side):
    d = tmp_path / f"sr{side}"
    d.mkdir()
    Image.fromarray(np.zeros((side, side + 8, 3), np.uint8)).save(d / "a.png")
    return d


def test_scorable_metrics(tmp_path):
    assert scorable_metrics(["psnr", "ssim", "lpips"], has_hr=True) == ["psnr", "ssim", "lpips"]
    assert scorable_metrics({"psnr": {}, "musiq": {}}, has_hr=False) == ["musiq"]  # the config group's dict
    assert scorable_metrics(["psnr", "ssim", "fid"], has_hr=False, out_dir=_folder(tmp_path, 96)) == ["niqe"]
    assert scorable_metrics(["psnr", "ssim"], has_hr=False, out_dir=_folder(tmp_path, 64)) == []  # < NIQE's 96 px
    assert scorable_metrics([], has_hr=False) == [] and scorable_metrics(None, has_hr=True) == []
